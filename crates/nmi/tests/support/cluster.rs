//! The `nmi` binary on a namespace node against the real API server (testkit) and the Azure
//! simulator: kubeconfig and Azure AD made reachable inside the node by relays, pods created
//! with `spec.nodeName` and their IP/phase set through the status subresource, and
//! AzureAssignedIdentities written as MIC would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aadpodid_api::{
    AzureAssignedIdentity, AzureAssignedIdentitySpec, AzureAssignedIdentityStatus, AzureIdentity, AzureIdentitySpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use aadpodid_testkit::netns::{Node, Pod as NetPod};

/// The running `nmi` process inside a node, with its log file.
pub struct Nmi {
    pub pid: u32,
    pub log: PathBuf,
}

/// Where the node's services are and how NMI is started there.
pub struct NodeSetup {
    pub node_name: String,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    /// Azure AD's HTTPS base as NMI sees it (`https://127.0.0.1:<port>/`).
    pub aad_in_node: String,
    pub ca_file: PathBuf,
    /// The API server as the test process reaches it, and its relay inside the node.
    pub api_addr: SocketAddr,
    pub api_relay: SocketAddr,
}

/// Relays the API server and the simulator's Azure AD into the node and writes a kubeconfig
/// pointing at the relay.
pub fn prepare_node(
    node: &Node,
    kubeconfig: &std::path::Path,
    server_url: &str,
    aad_https: &str,
    ca_pem: &str,
) -> NodeSetup {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let api_addr: SocketAddr = server_url.trim_start_matches("https://").parse().expect("apiserver host:port");
    let relay = node.ns.forward(SocketAddr::from(([127, 0, 0, 1], 0)), api_addr).expect("apiserver relay");
    let text = std::fs::read_to_string(kubeconfig).unwrap().replace(server_url, &format!("https://{relay}"));
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, text).unwrap();
    let aad_addr: SocketAddr =
        aad_https.trim_start_matches("https://").trim_end_matches('/').parse().expect("aad host:port");
    let aad_relay = node.ns.forward(SocketAddr::from(([127, 0, 0, 1], 0)), aad_addr).expect("aad relay");
    let ca_file = dir.path().join("sim-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    NodeSetup {
        node_name: format!("nmi-node-{}-{n}", std::process::id()),
        kubeconfig,
        dir,
        aad_in_node: format!("https://{aad_relay}/"),
        ca_file,
        api_addr,
        api_relay: relay,
    }
}

impl NodeSetup {
    /// A kubeconfig like [`NodeSetup::kubeconfig`] but reaching the API server through `relay`
    /// (an address inside the node).
    pub fn kubeconfig_via(&self, relay: SocketAddr) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let path = self.dir.path().join(format!("kubeconfig-{}", relay.port()));
        std::fs::write(&path, text.replace(&format!("https://{}", self.api_relay), &format!("https://{relay}")))
            .unwrap();
        path
    }

    /// Starts `nmi` in the node with the test's fast retry settings plus `extra` flags.
    pub fn start_nmi(&self, node: &Node, extra: &[&str]) -> Nmi {
        let log = self.dir.path().join(format!("nmi-{}.log", rand_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = node.ns.command(env!("CARGO_BIN_EXE_nmi"));
        cmd.args([
            format!("--node={}", self.node_name),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--allow-network-plugin-kubenet".into(),
            "--http-probe-port=8085".into(),
            "--retry-attempts-for-created=2".into(),
            "--retry-attempts-for-assigned=3".into(),
            "--find-identity-retry-interval=1".into(),
            "--ipt-update-interval-sec=1".into(),
            format!("--extra-root-ca-file={}", self.ca_file.display()),
        ])
        .args(extra)
        .env("NMI_TERMINATION_WAIT_SEC", "0")
        .env("RUST_LOG", "info,aadpodid_nmi=debug")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
        let pid = node.ns.spawn(&mut cmd).expect("nmi starts");
        Nmi { pid, log }
    }
}

fn rand_suffix() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

impl Nmi {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/healthz` in the node until it says `Active`.
    pub async fn wait_active(&self, node: &Node) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = node.ns.run("curl", &["-s", "--max-time", "2", "http://127.0.0.1:8085/healthz"]).unwrap();
            if String::from_utf8_lossy(&out.stdout) == "Active" {
                return;
            }
            if let Some(status) = node.ns.try_wait(self.pid) {
                panic!("NMI exited ({status}) before becoming Active; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "NMI never became Active; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the exit status.
    pub async fn signal_and_wait(self, node: &Node, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        self.wait_exit(node).await
    }

    /// Sends a signal (`TERM`, `KILL`) without waiting.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid.to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(self, node: &Node) -> std::process::ExitStatus {
        let mut child = node.ns.take_child(self.pid).expect("our child");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap()
    }

    /// Whether the process is still running.
    pub fn running(&self, node: &Node) -> bool {
        node.ns.try_wait(self.pid).is_none()
    }

    /// The body of `/healthz` in the node (empty when nothing answers).
    pub fn healthz(&self, node: &Node) -> String {
        let out = node.ns.run("curl", &["-s", "--max-time", "2", "http://127.0.0.1:8085/healthz"]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A pod on `node_name` in `ns`, Running with the network pod's IP.
pub async fn create_pod(client: &kube::Client, ns: &str, name: &str, node_name: &str, net: &NetPod, label: &str) {
    let pod = json!({
        "metadata": {"name": name, "labels": {"aadpodidbinding": label}},
        "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": "example.invalid/app"}]},
    });
    create_pod_from(client, ns, pod).await;
    set_pod_status(client, ns, name, "Running", &net.ip.to_string()).await;
}

/// A pod from its JSON (no status: no IP yet, as before the kubelet reports it).
pub async fn create_pod_from(client: &kube::Client, ns: &str, pod: Value) {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
}

/// Sets a pod's phase and IP (`podIP` and `podIPs`) as the kubelet would.
pub async fn set_pod_status(client: &kube::Client, ns: &str, name: &str, phase: &str, ip: &str) {
    let status = json!({"status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods.delete(name, &DeleteParams::default().grace_period(0)).await;
}

/// An AzureAssignedIdentity as MIC writes it (label `nodename`, embedded identity).
pub async fn assign(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    node_name: &str,
    identity: (&str, AzureIdentitySpec),
    state: &str,
) {
    let mut id = AzureIdentity::new(identity.0, identity.1);
    id.metadata.namespace = Some(ns.to_owned());
    let spec = AzureAssignedIdentitySpec {
        pod: Some(pod.to_owned()),
        pod_namespace: Some(ns.to_owned()),
        node_name: Some(node_name.to_owned()),
        azure_identity_ref: Some(Box::new(id)),
        ..Default::default()
    };
    let name = aadpodid_api::names::assigned_identity_name(pod, ns, identity.0);
    let mut aai = AzureAssignedIdentity::new(&name, spec);
    aai.metadata.namespace = Some(ns.to_owned());
    aai.metadata.labels = Some([("nodename".to_owned(), node_name.to_owned())].into());
    aai.status = Some(AzureAssignedIdentityStatus { status: Some(state.to_owned()), ..Default::default() });
    Api::<AzureAssignedIdentity>::namespaced(client.clone(), ns).create(&PostParams::default(), &aai).await.unwrap();
}

/// Moves an AzureAssignedIdentity to another state (written through the main resource, as
/// the original's CRD has no status subresource).
pub async fn set_state(client: &kube::Client, ns: &str, pod: &str, identity: &str, state: &str) {
    let name = aadpodid_api::names::assigned_identity_name(pod, ns, identity);
    let patch = json!({"status": {"status": state}});
    let api = Api::<AzureAssignedIdentity>::namespaced(client.clone(), ns);
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// An AzureIdentity and a binding selecting pods labelled `selector` (managed mode's inputs).
pub async fn bind(client: &kube::Client, ns: &str, identity: (&str, AzureIdentitySpec), selector: &str) {
    let mut id = AzureIdentity::new(identity.0, identity.1);
    id.metadata.namespace = Some(ns.to_owned());
    Api::<AzureIdentity>::namespaced(client.clone(), ns).create(&PostParams::default(), &id).await.unwrap();
    let binding: aadpodid_api::AzureIdentityBinding = serde_json::from_value(json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": format!("{}-binding", identity.0), "namespace": ns},
        "spec": {"azureIdentity": identity.0, "selector": selector},
    }))
    .unwrap();
    Api::<aadpodid_api::AzureIdentityBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// An AzurePodIdentityException for pods with these labels.
pub async fn except(client: &kube::Client, ns: &str, name: &str, labels: Value) {
    let exception: aadpodid_api::AzurePodIdentityException = serde_json::from_value(json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podLabels": labels},
    }))
    .unwrap();
    Api::<aadpodid_api::AzurePodIdentityException>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &exception)
        .await
        .unwrap();
}

/// One of our kinds in `ns` as plain JSON, to write objects our types cannot hold.
pub fn raw_api<K: kube::Resource<DynamicType = ()>>(client: &kube::Client, ns: &str) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &kube::api::ApiResource::erase::<K>(&()))
}

/// An object of kind `K` named `name` in `ns` with no `spec`: the schema requires none, so
/// the API server takes it, but our types need one.
pub async fn create_without_spec<K: kube::Resource<DynamicType = ()>>(client: &kube::Client, ns: &str, name: &str) {
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": {"name": name, "namespace": ns}
    }))
    .unwrap();
    raw_api::<K>(client, ns).create(&PostParams::default(), &object).await.unwrap();
}
