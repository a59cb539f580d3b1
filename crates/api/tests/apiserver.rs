//! The four kinds on a real kube-apiserver, written with kubectl as a user would and read back
//! through our types. One control plane for this binary, one namespace per test.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aadpodid_api::view::{InvalidBinding, InvalidIdentity, validate_binding, validate_identity};
use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use aadpodid_testkit::{install_crds, poll_until, shared, with_temp_ns};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;

// === kubectl as a user runs it ===

fn kubectl(args: &[&str]) -> Output {
    shared().kubectl(args)
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply -n <ns> -f <file>` with `yaml` written to a real file.
fn apply(ns: &str, yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()])
}

/// The stored object as kubectl shows it, to see exactly which field names were kept.
fn get_json(ns: &str, resource: &str, name: &str) -> Value {
    let out = kubectl(&["get", "-n", ns, resource, name, "-o", "json"]);
    serde_json::from_str(&stdout_of(&out, "kubectl get -o json")).unwrap()
}

/// Every YAML document in a file, parsed locally through `T`, as a kubectl user's tooling would.
fn parse_docs<T: DeserializeOwned>(yaml: &str) -> Vec<T> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

/// CRDs installed, then `f(client, namespace)`.
async fn with_crds<F, Fut>(f: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        f(client, ns).await;
    })
    .await;
}

fn spec_json<K: serde::Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).unwrap()["spec"].clone()
}

// === manifests ===

fn all_kinds_legacy(ns: &str) -> String {
    format!(
        r#"apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentity
metadata:
  name: msi
spec:
  type: 0
  ResourceID: /subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/msi
  ClientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
---
apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentity
metadata:
  name: sp
  annotations:
    aadpodidentity.k8s.io/Behavior: namespaced
spec:
  type: 1
  ClientID: 11111111-2222-4333-8444-555555555555
  TenantID: 99999999-8888-4777-8666-555555555555
  ClientPassword:
    name: sp-secret
    namespace: {ns}
  auxiliaryTenantIDs: ["aaaaaaaa-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-000000000002"]
  adEndpoint: https://login.microsoftonline.us/
  adResourceID: https://management.usgovcloudapi.net/
  replicas: 1
---
apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentityBinding
metadata:
  name: msi-binding
spec:
  AzureIdentity: msi
  Selector: myapp
  weight: 3
---
apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzurePodIdentityException
metadata:
  name: kube-state-metrics
spec:
  PodLabels:
    app: custom-ksm
    component: metrics
---
apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureAssignedIdentity
metadata:
  name: myapp-{ns}-msi
spec:
  pod: myapp
  podNamespace: {ns}
  nodename: node-1
  replicas: 1
  azureIdentityRef:
    apiVersion: aadpodidentity.k8s.io/v1
    kind: AzureIdentity
    metadata:
      name: msi
      namespace: {ns}
    spec:
      type: 0
      ResourceID: /subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/msi
      ClientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
  azureBindingRef:
    apiVersion: aadpodidentity.k8s.io/v1
    kind: AzureIdentityBinding
    metadata:
      name: msi-binding
      namespace: {ns}
    spec:
      AzureIdentity: msi
      Selector: myapp
status:
  status: Assigned
  availableReplicas: 1
"#
    )
}

/// The same objects in the current lower camel case.
fn all_kinds_camel(ns: &str) -> String {
    all_kinds_legacy(ns)
        .replace(" ResourceID:", " resourceID:")
        .replace(" ClientID:", " clientID:")
        .replace(" TenantID:", " tenantID:")
        .replace(" ClientPassword:", " clientPassword:")
        .replace(" AzureIdentity: msi", " azureIdentity: msi")
        .replace(" Selector:", " selector:")
        .replace(" PodLabels:", " podLabels:")
}

// === tests ===

/// Reads every object of kind `K` in `ns` and compares it with the same manifest parsed
/// locally: the apiserver kept every field, with the same meaning.
async fn assert_round_trip<K>(client: &Client, ns: &str, yaml: &str)
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    let kind = K::kind(&());
    let local: Vec<Value> = parse_docs(yaml);
    let local = local.into_iter().filter(|doc| doc["kind"] == kind.as_ref()).collect::<Vec<_>>();
    assert!(!local.is_empty(), "the manifest has a {kind}");
    for doc in local {
        let expected: K = serde_json::from_value(doc).unwrap();
        let name = expected.meta().name.clone().unwrap();
        let stored = api.get(&name).await.unwrap();
        assert_eq!(spec_json(&stored), spec_json(&expected), "{kind} {name}: spec survives");
        let status = |o: &K| serde_json::to_value(o).unwrap()["status"].clone();
        assert_eq!(status(&stored), status(&expected), "{kind} {name}: status survives");
        let mut annotations = stored.meta().annotations.clone().unwrap_or_default();
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        let expected_annotations = expected.meta().annotations.clone().unwrap_or_default();
        assert_eq!(annotations, expected_annotations, "{kind} {name}: annotations survive");
    }
}

async fn round_trip_all_kinds(client: Client, ns: String, yaml: String) {
    stdout_of(&apply(&ns, &yaml), "kubectl apply");
    assert_round_trip::<AzureIdentity>(&client, &ns, &yaml).await;
    assert_round_trip::<AzureIdentityBinding>(&client, &ns, &yaml).await;
    assert_round_trip::<AzurePodIdentityException>(&client, &ns, &yaml).await;
    assert_round_trip::<AzureAssignedIdentity>(&client, &ns, &yaml).await;
}

#[tokio::test]
async fn all_four_kinds_in_the_legacy_casing_round_trip_through_kubectl() {
    with_crds(|client, ns| async move {
        let yaml = all_kinds_legacy(&ns);
        round_trip_all_kinds(client.clone(), ns.clone(), yaml).await;

        let sp = Api::<AzureIdentity>::namespaced(client, &ns).get("sp").await.unwrap();
        assert_eq!(sp.spec.client_id.as_deref(), Some("11111111-2222-4333-8444-555555555555"));
        assert_eq!(sp.spec.tenant_id.as_deref(), Some("99999999-8888-4777-8666-555555555555"));
        assert_eq!(sp.spec.client_password.as_ref().and_then(|s| s.name.as_deref()), Some("sp-secret"));
        assert!(aadpodid_api::view::is_namespaced(&sp));
    })
    .await;
}

#[tokio::test]
async fn all_four_kinds_in_lower_camel_case_round_trip_through_kubectl() {
    with_crds(|client, ns| async move {
        round_trip_all_kinds(client, ns.clone(), all_kinds_camel(&ns)).await;
    })
    .await;
}

#[tokio::test]
async fn both_casings_mean_the_same_thing() {
    with_crds(|client, ns| async move {
        let legacy_ns = ns.clone();
        stdout_of(&apply(&legacy_ns, &all_kinds_legacy(&ns)), "kubectl apply legacy");
        let legacy = Api::<AzureIdentity>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
        let camel_ns = aadpodid_testkit::TempNamespace::create(&client, "camel").await.unwrap();
        // The camel manifest names the legacy namespace, so both read back identically.
        stdout_of(&apply(camel_ns.name(), &all_kinds_camel(&ns)), "kubectl apply camel");
        let camel = Api::<AzureIdentity>::namespaced(client.clone(), camel_ns.name())
            .list(&ListParams::default())
            .await
            .unwrap();
        let specs =
            |l: &kube::core::ObjectList<AzureIdentity>| l.items.iter().map(|i| i.spec.clone()).collect::<Vec<_>>();
        assert_eq!(specs(&legacy), specs(&camel));
        assert_eq!(legacy.items.len(), 2);

        let bindings = |n: &str| {
            let api = Api::<AzureIdentityBinding>::namespaced(client.clone(), n);
            async move { api.get("msi-binding").await.unwrap().spec }
        };
        assert_eq!(bindings(&ns).await, bindings(camel_ns.name()).await);
        camel_ns.delete().await;
    })
    .await;
}

#[tokio::test]
async fn capitalised_names_survive_a_write() {
    with_crds(|client, ns| async move {
        stdout_of(&apply(&ns, &all_kinds_legacy(&ns)), "kubectl apply");
        // A write that does not touch spec: a label, as `kubectl label` does it.
        stdout_of(&kubectl(&["label", "-n", &ns, "azureidentity", "msi", "team=payments"]), "kubectl label");
        stdout_of(
            &kubectl(&["label", "-n", &ns, "azureidentitybinding", "msi-binding", "team=payments"]),
            "kubectl label",
        );

        let stored = get_json(&ns, "azureidentity", "msi");
        assert_eq!(stored["metadata"]["labels"]["team"], "payments");
        assert!(stored["spec"]["ResourceID"].as_str().unwrap().ends_with("/userAssignedIdentities/msi"));
        assert_eq!(stored["spec"]["ClientID"], "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f");
        assert!(stored["spec"].get("resourceID").is_none(), "the apiserver does not rename fields");
        let binding = get_json(&ns, "azureidentitybinding", "msi-binding");
        assert_eq!(binding["spec"]["AzureIdentity"], "msi");
        assert_eq!(binding["spec"]["Selector"], "myapp");
        let assigned = get_json(&ns, "azureassignedidentity", &format!("myapp-{ns}-msi"));
        assert_eq!(assigned["spec"]["azureIdentityRef"]["spec"]["ClientID"], "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f");

        let ids = Api::<AzureIdentity>::namespaced(client.clone(), &ns);
        let msi = ids.get("msi").await.unwrap();
        assert_eq!(msi.spec.client_id.as_deref(), Some("0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f"));
        assert_eq!(validate_identity(&msi), Ok(aadpodid_api::view::IdentityType::UserAssignedMsi));

        // A full write through our types stores lower camel with the same meaning.
        let replaced = ids.replace("msi", &PostParams::default(), &msi).await.unwrap();
        assert_eq!(replaced.spec, msi.spec);
        let stored = get_json(&ns, "azureidentity", "msi");
        assert_eq!(stored["spec"]["clientID"], "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f");
        assert!(stored["spec"].get("ClientID").is_none());
    })
    .await;
}

#[tokio::test]
async fn the_identityconfig_folder_applies_as_the_walkthrough_does() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    with_crds(|client, ns| async move {
        let dir = examples.join("identityconfig");
        let out = kubectl(&["apply", "-f", dir.to_str().unwrap(), "-n", &ns]);
        let printed = stdout_of(&out, "kubectl apply -f identityconfig/");
        assert!(printed.contains("azureidentity.aadpodidentity.k8s.io/myidentity created"), "{printed}");
        assert!(printed.contains("azureidentitybinding.aadpodidentity.k8s.io/myidentity-binding created"), "{printed}");

        let file = std::fs::read_to_string(dir.join("myidentity-aad-identity.yml")).unwrap();
        let local: AzureIdentity = parse_docs(&file).remove(0);
        let stored = Api::<AzureIdentity>::namespaced(client.clone(), &ns).get("myidentity").await.unwrap();
        assert_eq!(stored.spec, local.spec);
        assert!(stored.spec.resource_id.as_deref().unwrap().ends_with("/userAssignedIdentities/myidentity"));
        assert_eq!(validate_identity(&stored), Ok(aadpodid_api::view::IdentityType::UserAssignedMsi));

        let file = std::fs::read_to_string(dir.join("myidentity-aad-identity-binding.yml")).unwrap();
        let local: AzureIdentityBinding = parse_docs(&file).remove(0);
        let stored =
            Api::<AzureIdentityBinding>::namespaced(client.clone(), &ns).get("myidentity-binding").await.unwrap();
        assert_eq!(stored.spec, local.spec);
        assert_eq!(validate_binding(&stored), Ok(("myidentity", "myidentity")));

        let pod = examples.join("pod.yaml");
        stdout_of(&kubectl(&["apply", "-f", pod.to_str().unwrap(), "-n", &ns]), "kubectl apply pod.yaml");
        let pod = Api::<Pod>::namespaced(client.clone(), &ns).get("myapp").await.unwrap();
        assert_eq!(pod.metadata.labels.unwrap()[aadpodid_api::names::POD_LABEL_KEY], "myidentity");

        // Step 5 of the walkthrough, with the kind spelled as old tutorials spell it.
        let out = kubectl(&["get", "AzureAssignedIdentities", "--all-namespaces"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    })
    .await;
}

#[tokio::test]
async fn bad_input_is_reported_clearly_and_never_panics() {
    with_crds(|client, ns| async move {
        let yaml = r#"apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: type-seven
spec:
  type: 7
  clientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: not-an-identity
spec:
  type: 0
  ResourceID: /subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm
  ClientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: no-selector
spec:
  AzureIdentity: type-seven
"#;
        stdout_of(&apply(&ns, yaml), "kubectl apply");

        // One bad object must not break a list (and so a watch) of all of them.
        let ids = Api::<AzureIdentity>::namespaced(client.clone(), &ns);
        assert_eq!(ids.list(&ListParams::default()).await.unwrap().items.len(), 2);

        let err = validate_identity(&ids.get("type-seven").await.unwrap()).unwrap_err();
        assert_eq!(err, InvalidIdentity::Type(7));
        assert!(err.to_string().starts_with("spec.type: 7 is not a valid identity type"), "{err}");

        let err = validate_identity(&ids.get("not-an-identity").await.unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid resource id: \"/subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm\", \
             must match /subscriptions/<subid>/resourcegroups/<resourcegroup>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
        );

        let binding =
            Api::<AzureIdentityBinding>::namespaced(client.clone(), &ns).get("no-selector").await.unwrap();
        let err = validate_binding(&binding).unwrap_err();
        assert_eq!(err, InvalidBinding::MissingSelector);
        assert!(err.to_string().starts_with("spec.selector is empty"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_type_that_is_not_a_number_is_rejected_at_apply_time() {
    with_crds(|_client, ns| async move {
        let out = apply(
            &ns,
            "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata:\n  name: words\nspec:\n  type: seven\n",
        );
        assert!(!out.status.success(), "the schema types spec.type as an integer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("spec.type") && stderr.contains("integer"), "{stderr}");
    })
    .await;
}

#[tokio::test]
async fn a_misspelt_field_is_rejected_at_apply_time() {
    with_crds(|_client, ns| async move {
        let out = apply(
            &ns,
            "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata:\n  name: typo\nspec:\n  AzureIdentity: x\n  Selecter: x\n",
        );
        assert!(!out.status.success(), "kubectl validates fields strictly against the schema");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(r#"unknown field "spec.Selecter""#), "{stderr}");
    })
    .await;
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    with_crds(|client, ns| async move {
        stdout_of(&apply(&ns, &all_kinds_camel(&ns)), "kubectl apply");
        // The list is served from the watch cache; wait until it has our objects.
        let assigned = Api::<AzureAssignedIdentity>::namespaced(client, &ns);
        poll_until("the assigned identity to be listed", Duration::from_secs(30), || {
            let assigned = assigned.clone();
            async move { (!assigned.list(&ListParams::default()).await.ok()?.items.is_empty()).then_some(()) }
        })
        .await
        .unwrap();

        let out = kubectl(&["get", "azureidentities,azureidentitybindings,azureassignedidentities", "-A"]);
        let table = stdout_of(&out, "kubectl get");
        let header =
            |word: &str| table.lines().any(|l| l.starts_with("NAMESPACE") && l.split_whitespace().any(|c| c == word));
        for column in ["NAME", "TYPE", "CLIENTID", "AGE", "AZUREIDENTITY", "SELECTOR"] {
            assert!(header(column), "column {column} in:\n{table}");
        }
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("{ns} ")) && l.contains(name))
                .unwrap_or_else(|| panic!("a row for {name} in:\n{table}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        let msi = row("azureidentity.aadpodidentity.k8s.io/msi");
        assert_eq!(msi[2..4], ["0", "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f"]);
        let sp = row("azureidentity.aadpodidentity.k8s.io/sp");
        assert_eq!(sp[2..4], ["1", "11111111-2222-4333-8444-555555555555"]);
        let binding = row("azureidentitybinding.aadpodidentity.k8s.io/msi-binding");
        assert_eq!(binding[2..4], ["msi", "myapp"]);
        row(&format!("azureassignedidentity.aadpodidentity.k8s.io/myapp-{ns}-msi"));
    })
    .await;
}

/// The cell under `header` in the row whose first column is `name`, from a `kubectl get` table
/// (columns start where their header starts; headers may contain spaces).
fn cell(table: &str, name: &str, header: &str) -> String {
    let head = table.lines().next().unwrap_or_default();
    let start = head.find(header).unwrap_or_else(|| panic!("column {header} in:\n{table}"));
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("a row for {name} in:\n{table}"));
    row.get(start..).unwrap_or_default().split("   ").next().unwrap_or_default().trim().to_owned()
}

#[tokio::test]
async fn kubectl_get_shows_the_legacy_fields_and_who_holds_which_identity() {
    with_crds(|client, ns| async move {
        stdout_of(&apply(&ns, &all_kinds_legacy(&ns)), "kubectl apply");
        let assigned = Api::<AzureAssignedIdentity>::namespaced(client, &ns);
        poll_until("the assigned identity to be listed", Duration::from_secs(30), || {
            let assigned = assigned.clone();
            async move { (!assigned.list(&ListParams::default()).await.ok()?.items.is_empty()).then_some(()) }
        })
        .await
        .unwrap();

        let ids = stdout_of(&kubectl(&["get", "azureidentities", "-n", &ns]), "kubectl get azureidentities");
        assert_eq!(cell(&ids, "msi", "CLIENTID (PRE-1.6)"), "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f", "{ids}");
        let bindings =
            stdout_of(&kubectl(&["get", "azureidentitybindings", "-n", &ns]), "kubectl get azureidentitybindings");
        assert_eq!(cell(&bindings, "msi-binding", "AZUREIDENTITY (PRE-1.6)"), "msi", "{bindings}");
        assert_eq!(cell(&bindings, "msi-binding", "SELECTOR (PRE-1.6)"), "myapp", "{bindings}");

        let out = kubectl(&["get", "azureassignedidentities", "-n", &ns]);
        let table = stdout_of(&out, "kubectl get azureassignedidentities");
        let name = format!("myapp-{ns}-msi");
        let got: Vec<String> =
            ["POD", "PODNAMESPACE", "IDENTITY", "NODE", "STATE"].iter().map(|h| cell(&table, &name, h)).collect();
        assert_eq!(got, ["myapp", ns.as_str(), "msi", "node-1", "Assigned"], "{table}");
    })
    .await;
}
