//! AzureIdentityBinding: ties pods labelled `aadpodidbinding: <selector>` to an AzureIdentity.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::identity::EmbeddedMeta;
use crate::legacy::prefer;
use crate::lenient::int_or_absent;

/// Binds the AzureIdentity named `azureIdentity`, in the binding's own namespace, to every pod
/// whose `aadpodidbinding` label equals `selector` exactly (not a label-selector expression).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentityBinding",
    plural = "azureidentitybindings",
    namespaced,
    status = "AzureIdentityBindingStatus",
    schema = "disabled",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"AzureIdentity","type":"string","jsonPath":".spec.azureIdentity"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector"}"#,
    printcolumn = r#"{"name":"AzureIdentity (pre-1.6)","type":"string","jsonPath":".spec.AzureIdentity","description":"The pre-1.6 spelling, read when azureIdentity is absent."}"#,
    printcolumn = r#"{"name":"Selector (pre-1.6)","type":"string","jsonPath":".spec.Selector","description":"The pre-1.6 spelling, read when selector is absent."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC."}"#
)]
#[serde(from = "AzureIdentityBindingSpecWire")]
pub struct AzureIdentityBindingSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EmbeddedMeta>,
    /// Name of an AzureIdentity in this binding's namespace.
    #[serde(rename = "azureIdentity", skip_serializing_if = "Option::is_none")]
    pub azure_identity: Option<String>,
    /// Value of the pod label `aadpodidbinding` this binding matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Declared by the original and never read by it; kept for round trips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// Never written by the original; kept so objects that carry it round-trip.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AzureIdentityBindingStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EmbeddedMeta>,
    #[serde(
        rename = "availableReplicas",
        default,
        deserialize_with = "int_or_absent",
        skip_serializing_if = "Option::is_none"
    )]
    pub available_replicas: Option<i32>,
}

#[derive(Deserialize)]
struct AzureIdentityBindingSpecWire {
    #[serde(default)]
    metadata: Option<EmbeddedMeta>,
    #[serde(rename = "azureIdentity", default)]
    azure_identity: Option<String>,
    #[serde(rename = "AzureIdentity", default)]
    legacy_azure_identity: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(rename = "Selector", default)]
    legacy_selector: Option<String>,
    #[serde(default, deserialize_with = "int_or_absent")]
    weight: Option<i64>,
}

impl From<AzureIdentityBindingSpecWire> for AzureIdentityBindingSpec {
    fn from(w: AzureIdentityBindingSpecWire) -> Self {
        Self {
            metadata: w.metadata,
            azure_identity: prefer(w.azure_identity, w.legacy_azure_identity),
            selector: prefer(w.selector, w.legacy_selector),
            weight: w.weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_casings_and_writes_lower_camel() {
        let spec: AzureIdentityBindingSpec =
            serde_json::from_value(json!({"AzureIdentity": "myidentity", "Selector": "myapp"})).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), json!({"azureIdentity": "myidentity", "selector": "myapp"}));
    }
}
