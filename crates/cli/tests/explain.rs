//! `aadpodid explain pod` against a real kube-apiserver (testkit) and, for the ARM check, the
//! Azure simulator: the four classic failures (label typo, missing identity, namespacing,
//! identity not on the node) and a healthy pod, each found and explained with a next step.
//! Names carry the test's namespace: explain reads bindings of every namespace, and tests run
//! in parallel on one control plane.

use std::path::PathBuf;
use std::sync::Arc;

use aadpodid_azure::HttpOptions;
use aadpodid_azure::arm::{Arm, ArmClient, ArmOptions, StaticToken, VmTarget};
use aadpodid_azure::cloud::{AzureEnvironment, CloudConfig};
use aadpodid_azure_sim::{IdentityInfo, RunningSim, SimConfig, Simulator};
use aadpodid_cli::args::ExplainPodArgs;
use aadpodid_cli::explain::{Explanation, explain_pod};
use aadpodid_testkit::{install_crds, shared, with_temp_ns};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const RG: &str = "rg-explain";

fn args(pod: &str, ns: &str) -> ExplainPodArgs {
    ExplainPodArgs {
        name: pod.to_owned(),
        namespace: Some(ns.to_owned()),
        force_namespaced: None,
        azure_json: None,
        azure_environment_file: None,
        extra_root_ca_file: None,
        events: 10,
    }
}

/// Server-side applies one of our objects (or a Node or Pod) from JSON, as `kubectl apply` would.
async fn apply(client: &kube::Client, obj: Value) {
    let (group, version) = obj["apiVersion"].as_str().unwrap().split_once('/').unwrap_or(("", "v1"));
    let kind = obj["kind"].as_str().unwrap();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "AzureIdentity" => "azureidentities",
        "AzureIdentityBinding" => "azureidentitybindings",
        "AzureAssignedIdentity" => "azureassignedidentities",
        "AzurePodIdentityException" => "azurepodidentityexceptions",
        other => panic!("no plural for {other}"),
    };
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_owned();
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.patch(&name, &PatchParams::apply("explain-test").force(), &Patch::Apply(&obj)).await.unwrap();
}

fn identity(ns: &str, name: &str, id: &str, client_id: &str) -> Value {
    json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": 0, "ResourceID": id, "ClientID": client_id}})
}

fn binding(ns: &str, name: &str, identity: &str, selector: &str) -> Value {
    json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"AzureIdentity": identity, "Selector": selector}})
}

fn resource_id(name: &str) -> String {
    format!(
        "/subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// A Node (a VMSS instance) and a Running pod on it with an IP and labels.
async fn node_and_pod(client: &kube::Client, ns: &str, pod: &str, labels: Value, provider_id: &str) -> String {
    let node = format!("node-{ns}");
    let n: Node =
        serde_json::from_value(json!({"metadata": {"name": node}, "spec": {"providerID": provider_id}})).unwrap();
    let _ = Api::<Node>::all(client.clone()).create(&PostParams::default(), &n).await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "example.invalid/app"}]},
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &p).await.unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.9.7", "podIPs": [{"ip": "10.244.9.7"}]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    node
}

fn vmss_provider_id(sub: &str, vmss: &str) -> String {
    format!(
        "azure:///subscriptions/{sub}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/0"
    )
}

/// An AzureAssignedIdentity as MIC writes it, in state `state`.
async fn assigned(client: &kube::Client, ns: &str, pod: &str, node: &str, id: &Value, state: &str) {
    let name = format!("{pod}-{ns}-{}", id["metadata"]["name"].as_str().unwrap());
    apply(
        client,
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "metadata": {"name": name, "namespace": "default", "labels": {"nodename": node}},
            "spec": {"pod": pod, "podNamespace": ns, "nodename": node, "azureIdentityRef": id},
            "status": {"status": state}}),
    )
    .await;
}

async fn explain(client: &kube::Client, a: &ExplainPodArgs) -> Explanation {
    let x = explain_pod(client, "default", a).await.unwrap();
    println!("{x}");
    x
}

fn text(x: &Explanation) -> String {
    x.to_string()
}

#[tokio::test]
async fn a_label_typo_is_found_and_named() {
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        let selector = format!("frontend-{ns}");
        let typo = format!("frontnd-{ns}");
        apply(&client, identity(&ns, "web", &resource_id("web"), "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f")).await;
        apply(&client, binding(&ns, "web-binding", "web", &selector)).await;
        node_and_pod(&client, &ns, "app", json!({"aadpodidbinding": typo}), "").await;
        let x = explain(&client, &args("app", &ns)).await;
        assert!(!x.healthy());
        let t = text(&x);
        assert!(
            t.contains(&format!("no AzureIdentityBinding has selector {typo:?} (nearest selector: {selector:?})")),
            "{t}"
        );
        assert!(
            t.contains(&format!("has selector {selector:?}, one character apart from the pod's label value {typo:?}")),
            "{t}"
        );
        assert!(t.contains(&format!("make the pod label `aadpodidbinding: {selector}`")), "{t}");
    })
    .await;
}

#[tokio::test]
async fn a_label_key_typo_is_found_and_named() {
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        let selector = format!("api-{ns}");
        apply(&client, binding(&ns, "api-binding", "api", &selector)).await;
        node_and_pod(&client, &ns, "app", json!({"aadpodIdBinding": selector}), "").await;
        let t = text(&explain(&client, &args("app", &ns)).await);
        assert!(t.contains("the key is equal but for letter case from `aadpodidbinding`"), "{t}");
        assert!(t.contains("rename the label key `aadpodIdBinding` to `aadpodidbinding`"), "{t}");
    })
    .await;
}

#[tokio::test]
async fn a_missing_identity_is_found_even_when_it_lives_in_another_namespace() {
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        let selector = format!("payments-{ns}");
        apply(&client, binding(&ns, "payments-binding", "payments", &selector)).await;
        apply(
            &client,
            identity("default", "payments", &resource_id("payments"), "11111111-2222-4333-8444-555555555555"),
        )
        .await;
        node_and_pod(&client, &ns, "app", json!({"aadpodidbinding": selector}), "").await;
        let x = explain(&client, &args("app", &ns)).await;
        assert!(!x.healthy());
        let t = text(&x);
        assert!(t.contains(&format!("AzureIdentity {ns}/payments named by the binding does not exist")), "{t}");
        assert!(t.contains("one exists in namespace default"), "{t}");
        assert!(t.contains(&format!("create AzureIdentity payments in namespace {ns}")), "{t}");
    })
    .await;
}

#[tokio::test]
async fn force_namespaced_keeps_a_binding_of_another_namespace_from_the_pod() {
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        let pod_ns = aadpodid_testkit::TempNamespace::create(&client, "pods").await.unwrap();
        let selector = format!("shared-{ns}");
        apply(&client, identity(&ns, "shared", &resource_id("shared"), "22222222-2222-4333-8444-555555555555")).await;
        apply(&client, binding(&ns, "shared-binding", "shared", &selector)).await;
        node_and_pod(&client, pod_ns.name(), "app", json!({"aadpodidbinding": selector}), "").await;

        let relaxed = explain(&client, &ExplainPodArgs { force_namespaced: Some(false), ..args("app", pod_ns.name()) }).await;
        assert!(text(&relaxed).contains("MIC pairs them"), "{relaxed}");
        let forced = explain(&client, &ExplainPodArgs { force_namespaced: Some(true), ..args("app", pod_ns.name()) }).await;
        assert!(!forced.healthy());
        let t = text(&forced);
        assert!(t.contains("forceNamespaced=true (--force-namespaced)"), "{t}");
        assert!(
            t.contains(&format!("MIC runs with forceNamespaced, so pod ({}), binding ({ns}) and identity ({ns}) must share one namespace", pod_ns.name())),
            "{t}"
        );
        pod_ns.delete().await;
    })
    .await;
}

/// The simulator with a scale set and an identity, and an azure.json for it.
struct Azure {
    sim: RunningSim,
    azure_json: PathBuf,
    env_file: PathBuf,
    id: IdentityInfo,
}

async fn azure(vmss: &str) -> Azure {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.register_service_principal_secret("explain-sp", "explain-secret");
    let env_file = sim.write_azure_stack_environment(true).unwrap();
    let azure_json = sim.state_dir().join("azure.json");
    let cfg = json!({"cloud": "AzureStackCloud", "tenantId": sim.tenant_id(), "subscriptionId": sim.subscription_id(),
        "aadClientId": "explain-sp", "aadClientSecret": "explain-secret", "resourceGroup": RG, "vmType": "vmss"});
    std::fs::write(&azure_json, cfg.to_string()).unwrap();
    sim.create_vmss(RG, vmss, 1);
    let id = sim.create_user_assigned_identity(RG, "myidentity");
    Azure { sim, azure_json, env_file, id }
}

impl Azure {
    fn args(&self, pod: &str, ns: &str) -> ExplainPodArgs {
        ExplainPodArgs {
            azure_json: Some(self.azure_json.clone()),
            azure_environment_file: Some(self.env_file.clone()),
            extra_root_ca_file: Some(self.sim.ca_cert_pem_path().to_path_buf()),
            ..args(pod, ns)
        }
    }

    /// Attaches the identity to the scale set as MIC would.
    async fn attach(&self, vmss: &str) {
        let config = CloudConfig::from_file(&self.azure_json).unwrap();
        let env = AzureEnvironment::from_file(&self.env_file).unwrap();
        let http = HttpOptions::with_root_ca_pem(self.sim.ca_cert_pem().as_bytes().to_vec());
        let token = Arc::new(StaticToken(self.sim.arm_token().unwrap()));
        let arm = ArmClient::new(&config, &env, token, ArmOptions { http, ..ArmOptions::default() }).unwrap();
        arm.update_user_msi(&VmTarget::Vmss(vmss.to_owned()), std::slice::from_ref(&self.id.id), &[]).await.unwrap();
    }
}

#[tokio::test]
async fn an_identity_missing_from_the_node_is_found_on_arm_and_a_healthy_pod_says_so() {
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        let vmss = format!("vmss-{ns}");
        let az = azure(&vmss).await;
        let selector = format!("myapp-{ns}");
        let id = identity(&ns, "myidentity", &az.id.id, &az.id.client_id);
        apply(&client, id.clone()).await;
        apply(&client, binding(&ns, "myidentity-binding", "myidentity", &selector)).await;
        let provider = vmss_provider_id(az.sim.subscription_id(), &vmss);
        let node = node_and_pod(&client, &ns, "app", json!({"aadpodidbinding": selector}), &provider).await;
        let mut stored = id.clone();
        stored["metadata"]["resourceVersion"] = json!("1");
        assigned(&client, &ns, "app", &node, &stored, "Assigned").await;

        let x = explain(&client, &az.args("app", &ns)).await;
        assert!(!x.healthy());
        let t = text(&x);
        assert!(t.contains(&format!("ARM: the identity is NOT attached to vmss {vmss} although MIC paired it")), "{t}");
        assert!(t.contains(&format!("AzureAssignedIdentity app-{ns}-myidentity is Assigned on node {node}")), "{t}");

        az.attach(&vmss).await;
        let x = explain(&client, &az.args("app", &ns)).await;
        let t = text(&x);
        assert!(x.healthy(), "{t}");
        assert!(t.contains(&format!("ARM: the identity is attached to vmss {vmss}")), "{t}");
        assert!(t.contains(&format!("NMI answers a token request with AzureIdentity {ns}/myidentity")), "{t}");
        assert!(t.contains(&format!("Healthy: pod {ns}/app gets its identity from NMI.")), "{t}");
    })
    .await;
}

#[test]
fn the_binary_exits_1_for_an_unhealthy_pod_and_2_when_the_pod_is_missing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = rt.block_on(async {
        let client = shared().client();
        install_crds(&client).await.unwrap();
        let ns = aadpodid_testkit::TempNamespace::create(&client, "bin").await.unwrap();
        node_and_pod(&client, ns.name(), "app", json!({}), "").await;
        ns.name().to_owned()
    });
    let run = |pod: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aadpodid"))
            .args(["--kubeconfig", shared().kubeconfig_path().to_str().unwrap(), "explain", "pod", pod, "-n", &ns])
            .output()
            .unwrap()
    };
    let out = run("app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the pod has no aadpodidbinding label"), "{stdout}");
    let out = run("nope");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pod {ns}/nope not found")));
}
