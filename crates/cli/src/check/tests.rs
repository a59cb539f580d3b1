use super::*;

const FLAT: &str = "apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
name: myidentity
type: 0
ResourceID: /subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/myidentity
ClientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
";

const NESTED: &str = "apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: myidentity
spec:
  type: 0
  ResourceID: /subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/myidentity
  ClientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
";

fn one(text: &str) -> DocReport {
    let mut reports = check_text("f.yaml", text);
    assert_eq!(reports.len(), 1, "{reports:?}");
    reports.remove(0)
}

fn messages(r: &DocReport) -> String {
    r.findings.iter().map(|f| format!("{:?}: {}\n", f.severity, f.message)).collect()
}

#[test]
fn the_flat_walkthrough_yaml_names_what_is_missing_and_is_corrected() {
    let r = one(FLAT);
    assert!(r.has_errors());
    let text = messages(&r);
    assert!(text.contains("missing its `metadata:`/`spec:` nesting"), "{text}");
    assert!(text.contains("`name` must be under `metadata:`"), "{text}");
    assert!(text.contains("`type`, `ResourceID`, `ClientID` under `spec:`"), "{text}");
    assert_eq!(r.corrected.as_deref(), Some(NESTED));
    assert_eq!(r.findings.len(), 1, "the corrected document has no further problem: {text}");
}

#[test]
fn the_flat_yaml_that_kubectl_rejects_as_a_yaml_error_is_corrected_too() {
    let broken = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\n  name: myidentity-binding\n  AzureIdentity: myidentity\n  Selector: myapp\n";
    assert!(serde_saphyr::from_str::<Value>(broken).is_err(), "YAML rejects it, as kubectl does");
    let r = one(broken);
    let text = messages(&r);
    assert!(text.contains("YAML error"), "{text}");
    assert_eq!(
        r.corrected.as_deref(),
        Some(
            "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata:\n  name: myidentity-binding\nspec:\n  AzureIdentity: myidentity\n  Selector: myapp\n"
        )
    );
}

#[test]
fn nested_values_keep_their_structure_when_corrected() {
    let flat = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nname: sp\ntype: 1\nClientID: 11111111-2222-4333-8444-555555555555\nTenantID: t\nClientPassword:\n  name: sp-secret\n  namespace: default\n";
    let r = one(flat);
    let fixed = r.corrected.clone().unwrap();
    assert!(fixed.contains("spec:\n  type: 1\n"), "{fixed}");
    assert!(fixed.contains("  ClientPassword:\n    name: sp-secret\n    namespace: default\n"), "{fixed}");
    assert!(fixed.contains("metadata:\n  name: sp\n"), "{fixed}");
}

#[test]
fn a_well_formed_document_in_either_casing_is_ok() {
    assert!(one(NESTED).findings.is_empty());
    let camel = NESTED.replace("ResourceID", "resourceID").replace("ClientID", "clientID");
    assert!(one(&camel).findings.is_empty());
}

#[test]
fn the_example_identityconfig_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/identityconfig");
    let reports = check_paths(&[dir]).unwrap();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(r.findings.is_empty(), "{r}");
    }
}

#[test]
fn a_field_typo_is_an_error_with_a_suggestion() {
    let doc = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata:\n  name: b\nspec:\n  AzureIdentity: x\n  Selecter: x\n";
    let text = messages(&one(doc));
    assert!(text.contains("unknown field spec.Selecter (did you mean \"Selector\"?)"), "{text}");
}

#[test]
fn mic_s_checks_apply() {
    let bad_id = NESTED.replace("/subscriptions/", "/subscription/");
    assert!(messages(&one(&bad_id)).contains("invalid resource id"));
    let no_selector = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata:\n  name: b\nspec:\n  azureIdentity: x\n";
    assert!(messages(&one(no_selector)).contains("spec.selector is empty"));
    let bad_label = no_selector.replace("azureIdentity: x", "azureIdentity: x\n  selector: my app");
    assert!(messages(&one(&bad_label)).contains("cannot be a label value"));
    let sp = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata:\n  name: sp\nspec:\n  type: 1\n  clientID: 11111111-2222-4333-8444-555555555555\n";
    let text = messages(&one(sp));
    assert!(text.contains("spec.tenantID is empty") && text.contains("spec.clientPassword.name is empty"), "{text}");
}

#[test]
fn wrong_api_version_and_bad_names_are_errors() {
    let doc = NESTED
        .replace("aadpodidentity.k8s.io/v1", "aadpodidentity.k8s.io/v1beta1")
        .replace("name: myidentity", "name: My_Identity");
    let text = messages(&one(&doc));
    assert!(text.contains("apiVersion \"aadpodidentity.k8s.io/v1beta1\" must be"), "{text}");
    assert!(text.contains("metadata.name \"My_Identity\""), "{text}");
}

#[test]
fn other_kinds_are_noted_not_checked() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n";
    let r = one(pod);
    assert!(!r.has_errors());
    assert!(r.to_string().contains("ok"));
}

#[test]
fn a_binding_naming_an_identity_not_checked_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id.yaml"), NESTED).unwrap();
    let binding = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata:\n  name: b\nspec:\n  azureIdentity: myidentty\n  selector: s\n";
    std::fs::write(dir.path().join("b.yaml"), binding).unwrap();
    let reports = check_paths(&[dir.path().to_path_buf()]).unwrap();
    let text: String = reports.iter().map(|r| r.to_string()).collect();
    assert!(
        text.contains("\"myidentty\" is not among the AzureIdentities checked (did you mean \"myidentity\"?)"),
        "{text}"
    );
}
