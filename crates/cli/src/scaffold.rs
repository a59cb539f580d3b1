//! `aadpodid scaffold`: the AzureIdentity and AzureIdentityBinding for an identity made with
//! `az identity create -o json`, ready for `kubectl apply -f -`. Pure: text in, text out.

use serde_json::{Map, Value, json};

use crate::check::{self, Severity};

/// What to write besides the identity's own IDs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Value of the pods' `aadpodidbinding` label; default: the object name.
    pub selector: Option<String>,
    /// `metadata.namespace` of both objects; default: none (kubectl's namespace).
    pub namespace: Option<String>,
    /// Name of the AzureIdentity; default: the identity's name, made a valid object name.
    pub name: Option<String>,
    /// Write the pre-1.6 field names (`ResourceID`, `ClientID`, `AzureIdentity`, `Selector`).
    pub legacy_casing: bool,
}

/// Why no YAML could be written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScaffoldError {
    #[error("the input is not the JSON `az identity create -o json` prints: {0}")]
    NotJson(String),
    #[error("the input has no {0:?}: is it the output of `az identity create -o json` (or `az identity show`)?")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// The two objects as one YAML stream; the checks of `aadpodid check` must pass on it.
pub fn scaffold(az_json: &str, opts: &Options) -> Result<String, ScaffoldError> {
    let az: Value = serde_json::from_str(az_json).map_err(|e| ScaffoldError::NotJson(e.to_string()))?;
    let field =
        |k: &'static str| az.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).ok_or(ScaffoldError::Missing(k));
    let (resource_id, client_id, az_name) = (field("id")?, field("clientId")?, field("name")?);
    let name = opts.name.clone().unwrap_or_else(|| object_name(az_name));
    let selector = opts.selector.clone().unwrap_or_else(|| name.clone());
    let keys = if opts.legacy_casing {
        ["ResourceID", "ClientID", "AzureIdentity", "Selector"]
    } else {
        ["resourceID", "clientID", "azureIdentity", "selector"]
    };
    let identity = document(
        "AzureIdentity",
        &name,
        opts.namespace.as_deref(),
        json!({"type": 0, keys[0]: resource_id, keys[1]: client_id}),
    );
    let binding = document(
        "AzureIdentityBinding",
        &format!("{name}-binding"),
        opts.namespace.as_deref(),
        json!({keys[2]: name, keys[3]: selector}),
    );
    let mut out = format!(
        "# AzureIdentity and AzureIdentityBinding for {az_name}; pods labelled `aadpodidbinding: {selector}` get it.\n"
    );
    for doc in [identity, binding] {
        out.push_str("---\n");
        out.push_str(
            &serde_saphyr::to_string_with_options(&doc, plain_scalars())
                .map_err(|e| ScaffoldError::Invalid(e.to_string()))?,
        );
    }
    self_check(&out)?;
    Ok(out)
}

/// Long resource IDs stay on one line, as users paste them.
fn plain_scalars() -> serde_saphyr::SerializerOptions {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    options
}

fn document(kind: &str, name: &str, namespace: Option<&str>, spec: Value) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    if let Some(ns) = namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    json!({"apiVersion": aadpodid_api::API_VERSION, "kind": kind, "metadata": metadata, "spec": spec})
}

/// Azure allows upper case and `_` in identity names; object names do not.
fn object_name(az_name: &str) -> String {
    az_name.to_ascii_lowercase().replace('_', "-")
}

/// Refuses to print what `check` (and so MIC or kubectl) would reject.
fn self_check(yaml: &str) -> Result<(), ScaffoldError> {
    let errors: Vec<String> = check::check_text("scaffold", yaml)
        .into_iter()
        .flat_map(|r| r.findings)
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.message)
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(ScaffoldError::Invalid(errors.join("; "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZ: &str = r#"{
      "clientId": "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f",
      "id": "/subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/myresourcegroup/providers/Microsoft.ManagedIdentity/userAssignedIdentities/My_Identity",
      "location": "westeurope", "name": "My_Identity",
      "principalId": "7e6f5a4b-0c8d-4c3d-9e2f-1a0b9c8d7e6f", "resourceGroup": "myresourcegroup",
      "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "type": "Microsoft.ManagedIdentity/userAssignedIdentities"
    }"#;

    #[test]
    fn writes_an_identity_and_a_binding_that_check_accepts() {
        let out = scaffold(AZ, &Options { selector: Some("web".into()), ..Default::default() }).unwrap();
        assert!(out.contains("name: my-identity\n"), "{out}");
        assert!(out.contains("clientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f"), "{out}");
        assert!(out.contains("resourceID: /subscriptions/"), "{out}");
        assert!(out.contains("azureIdentity: my-identity\n") && out.contains("selector: web\n"), "{out}");
        assert!(!out.contains("namespace:"), "{out}");
        let docs = check::split_documents(&out);
        let id: aadpodid_api::AzureIdentity = serde_saphyr::from_str(&docs[0]).unwrap();
        assert_eq!(id.spec.type_, Some(0));
    }

    #[test]
    fn legacy_casing_and_namespace_are_written_on_request() {
        let opts = Options { namespace: Some("apps".into()), legacy_casing: true, ..Default::default() };
        let out = scaffold(AZ, &opts).unwrap();
        for want in
            ["ResourceID: ", "ClientID: ", "AzureIdentity: my-identity", "Selector: my-identity", "namespace: apps"]
        {
            assert!(out.contains(want), "{want} in {out}");
        }
    }

    #[test]
    fn input_that_is_not_az_output_is_refused_clearly() {
        assert!(matches!(scaffold("hello", &Options::default()), Err(ScaffoldError::NotJson(_))));
        assert_eq!(scaffold("{\"name\": \"x\"}", &Options::default()), Err(ScaffoldError::Missing("id")));
        let bad = Options { selector: Some("not a label".into()), ..Default::default() };
        let err = scaffold(AZ, &bad).unwrap_err().to_string();
        assert!(err.contains("cannot be a label value"), "{err}");
    }
}
