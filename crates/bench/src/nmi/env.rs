//! The node the NMI benchmark runs on: a private kube-apiserver, the Azure simulator with its
//! IMDS served at 169.254.169.254:80 inside a network-namespace node, Pod objects on that node
//! with distinct pod IPs (a few of them real pod namespaces that send the load), and
//! AzureAssignedIdentities written as MIC would. Every NMI under test (ours, the original) is
//! started in the same node against the same objects, one at a time.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadpodid_api::AzureIdentitySpec;
use aadpodid_api::{AzureAssignedIdentity, AzureAssignedIdentitySpec, AzureAssignedIdentityStatus, AzureIdentity};
use aadpodid_azure_sim::seed::{self, Seed};
use aadpodid_azure_sim::{IdentityInfo, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_testkit::ControlPlane;
use aadpodid_testkit::netns::{Node, Pod as NetPod};
use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Kubernetes namespace of every benchmark object.
const NS: &str = "bench-nmi";
/// The probe port both NMIs are given (`/healthz` says `Active` once the rules are in).
const PROBE_PORT: u16 = 8085;

/// The benchmark's node and cluster; dropping it stops everything.
pub(crate) struct Env {
    /// The node namespace (dropped first: kills any NMI left running).
    pub(crate) node: Node,
    /// A pod with one identity (`ids[0]`).
    pub(crate) one: Arc<NetPod>,
    /// A pod with every identity assigned.
    pub(crate) all: Arc<NetPod>,
    /// The identities attached to the node, in order.
    pub(crate) ids: Vec<IdentityInfo>,
    node_name: String,
    kubeconfig: PathBuf,
    pub(crate) dir: tempfile::TempDir,
    _sim: RunningSim,
    _cp: ControlPlane,
}

/// An NMI process under test.
pub(crate) struct NmiProcess {
    pub(crate) pid: u32,
    log: PathBuf,
}

impl Env {
    /// Starts the cluster and simulator and creates `pods` Pod objects on the node (two of them
    /// real pod namespaces) and `identities` identities (the second load pod has them all,
    /// every other pod one of them in turn).
    pub(crate) async fn start(pods: usize, identities: usize) -> anyhow::Result<Self> {
        let cp = ControlPlane::start().await.context("starting kube-apiserver")?;
        let client = cp.client();
        aadpodid_testkit::install_crds(&client).await.context("installing the CRDs")?;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;

        let sim = Simulator::start(SimConfig::default()).await.context("starting the simulator")?;
        let ids = seed_identities(&sim, identities)?;
        let node = Node::create().context("creating the node namespace")?;
        let node_ref = NodeRef::vmss_instance("pool", 0).in_resource_group("rg");
        sim.serve_imds(node.imds_listener()?, node_ref).context("serving IMDS in the node")?;

        let dir = tempfile::tempdir()?;
        let kubeconfig = relay_kubeconfig(&node, &cp, dir.path())?;
        let node_name = format!("bench-node-{}", std::process::id());
        let one = Arc::new(node.add_pod()?);
        let all = Arc::new(node.add_pod()?);
        let objects = Objects { client: client.clone(), node_name: node_name.clone(), ids: ids.clone() };
        objects.pod("load-one", one.ip).await?;
        objects.assign("load-one", &ids[0]).await?;
        objects.pod("load-all", all.ip).await?;
        for id in &ids {
            objects.assign("load-all", id).await?;
        }
        let others = pods.saturating_sub(2);
        futures::stream::iter(0..others)
            .map(|k| objects.idle_pod(k))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .context("creating the idle pods")?;
        Ok(Self { node, one, all, ids, node_name, kubeconfig, dir, _sim: sim, _cp: cp })
    }

    /// Starts `binary` (ours or the original `nmi`) in the node in standard mode, logging to a
    /// file, and waits until its probe says `Active` (its iptables rules are in).
    pub(crate) async fn start_nmi(&self, binary: &Path, tag: &str, extra_args: &[&str]) -> anyhow::Result<NmiProcess> {
        let log = self.dir.path().join(format!("{tag}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = self.node.ns.command(binary);
        cmd.args([
            format!("--node={}", self.node_name),
            "--operation-mode=standard".to_owned(),
            "--allow-network-plugin-kubenet".to_owned(),
            format!("--http-probe-port={PROBE_PORT}"),
        ])
        .args(extra_args)
        .env("KUBECONFIG", &self.kubeconfig)
        .env("NMI_TERMINATION_WAIT_SEC", "0")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
        let pid = self.node.ns.spawn(&mut cmd).with_context(|| format!("starting {}", binary.display()))?;
        let nmi = NmiProcess { pid, log };
        self.wait_active(&nmi).await?;
        Ok(nmi)
    }

    async fn wait_active(&self, nmi: &NmiProcess) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{PROBE_PORT}/healthz");
        loop {
            let out = self.node.ns.run("curl", &["-s", "--max-time", "2", &url])?;
            if out.stdout == b"Active" {
                return Ok(());
            }
            if let Some(status) = self.node.ns.try_wait(nmi.pid) {
                bail!("NMI exited ({status}) before becoming Active; log tail:\n{}", nmi.log_tail());
            }
            if Instant::now() > deadline {
                bail!("NMI not Active after 60 s; log tail:\n{}", nmi.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills an NMI (SIGKILL, so neither cleans up on its own schedule) and removes its chain.
    pub(crate) async fn stop_nmi(&self, nmi: NmiProcess) {
        if let Some(mut child) = self.node.ns.take_child(nmi.pid) {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        super::floor::remove_dnat(&self.node);
    }
}

impl NmiProcess {
    /// The last lines of its log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn seed_identities(sim: &Simulator, count: usize) -> anyhow::Result<Vec<IdentityInfo>> {
    let names: Vec<String> = (0..count).map(|i| format!("id-{i}")).collect();
    let identities: Vec<_> = names.iter().map(|n| json!({"resourceGroup": "rg", "name": n})).collect();
    let doc = json!({
        "identities": identities,
        "vmss": [{"resourceGroup": "rg", "name": "pool", "instances": 1, "userAssignedIdentities": names}],
    });
    let seed = Seed::parse(&doc.to_string())?;
    Ok(seed::apply(sim, &seed)?)
}

/// Relays the API server into the node and writes a kubeconfig that points at the relay.
fn relay_kubeconfig(node: &Node, cp: &ControlPlane, dir: &Path) -> anyhow::Result<PathBuf> {
    let api: SocketAddr = cp.server_url().trim_start_matches("https://").parse().context("apiserver host:port")?;
    let relay = node.ns.forward(SocketAddr::from(([127, 0, 0, 1], 0)), api)?;
    let text = std::fs::read_to_string(cp.kubeconfig_path())?.replace(cp.server_url(), &format!("https://{relay}"));
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Writes Pod objects and assignments.
struct Objects {
    client: kube::Client,
    node_name: String,
    ids: Vec<IdentityInfo>,
}

impl Objects {
    /// A Running pod on the node with `ip` as its pod IP.
    async fn pod(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"aadpodidbinding": name}},
            "spec": {"nodeName": self.node_name, "containers": [{"name": "app", "image": "example.invalid/app"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let status =
            json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }

    /// Pod `k` of those that send no load: an address outside the load pods' range, one identity.
    async fn idle_pod(&self, k: usize) -> anyhow::Result<()> {
        let name = format!("idle-{k}");
        let ip = Ipv4Addr::new(10, 245, u8::try_from(k / 250)?, u8::try_from(k % 250 + 1)?);
        self.pod(&name, ip).await?;
        self.assign(&name, &self.ids[k % self.ids.len()]).await
    }

    /// An Assigned AzureAssignedIdentity of a user-assigned (type 0) identity, as MIC writes it.
    async fn assign(&self, pod: &str, id: &IdentityInfo) -> anyhow::Result<()> {
        let spec = AzureIdentitySpec {
            client_id: Some(id.client_id.clone()),
            resource_id: Some(id.id.clone()),
            ..Default::default()
        };
        let mut identity = AzureIdentity::new(&id.name, spec);
        identity.metadata.namespace = Some(NS.to_owned());
        let spec = AzureAssignedIdentitySpec {
            pod: Some(pod.to_owned()),
            pod_namespace: Some(NS.to_owned()),
            node_name: Some(self.node_name.clone()),
            azure_identity_ref: Some(Box::new(identity)),
            ..Default::default()
        };
        let name = aadpodid_api::names::assigned_identity_name(pod, NS, &id.name);
        let mut aai = AzureAssignedIdentity::new(&name, spec);
        aai.metadata.namespace = Some(NS.to_owned());
        aai.metadata.labels = Some([("nodename".to_owned(), self.node_name.clone())].into());
        aai.status = Some(AzureAssignedIdentityStatus { status: Some("Assigned".to_owned()), ..Default::default() });
        Api::<AzureAssignedIdentity>::namespaced(self.client.clone(), NS).create(&PostParams::default(), &aai).await?;
        Ok(())
    }
}
