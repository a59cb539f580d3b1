//! # aadpodid-sandbox: the getting-started walkthrough on real parts, on one machine
//!
//! ```text
//!  kube-apiserver + etcd (testkit) ◄── helm install pod-identity charts/aad-pod-identity (aad-broker)
//!        ▲  ▲                          kubectl apply -f identityconfig/ · kubectl apply -f <pod>.yaml
//!        │  └── mic ×replicas (host processes, SA aad-pod-identity-mic token) ──► ARM (simulator, HTTPS)
//!        └───── nmi per node (node netns, SA aad-pod-identity-nmi token, iptables DNAT)
//!                 ▲ 169.254.169.254:80 from pod netns          └──► node IMDS (simulator, in the node netns)
//!         pod netns: python3 azure-identity ManagedIdentityCredential
//! ```
//!
//! Two nodes: a VMSS instance and a standalone VM of the simulator, each a network namespace
//! with a Node object whose `spec.providerID` points at it. MIC and NMI are our binaries, run
//! with the args and environment of the chart's installed Deployment and DaemonSet (resolved as
//! the kubelet would), plus only what a kubelet-less machine needs: a kubeconfig holding the
//! service account's TokenRequest token, the simulator's root CA, free probe/metrics ports for
//! the MIC replicas on the host, a stand-in for the kubelet-config host file and a short ARM
//! poll interval (the simulator's operations finish at once).
//!
//! [`Sandbox`] is driven by the `sandbox` binary (`bash hack/sandbox.sh`) and by the chart
//! install test (`tests/chart_install.rs`), which adds the RBAC audit and `helm uninstall`.
//! Needs root, `ip`, `iptables`, `curl`, `setpriv` and Python with azure-identity
//! (`hack/setup.sh` installs them).

pub mod kubelet;
pub mod node;
pub mod oci;
mod pods;
pub mod runc;
mod workload;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aadpodid_api::AzureAssignedIdentity;
use aadpodid_azure_sim::{IdentityInfo, ImdsHandle, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_testkit::netns::{Node as NetNode, Pod as NetPod};
use aadpodid_testkit::{ControlPlane, EgressProxy, EgressTarget, Options, Tools, repo_root};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub use workload::Proc;

/// The Helm release name of the walkthrough.
pub const RELEASE: &str = "pod-identity";
/// The namespace the walkthrough installs into and keeps its identities in.
pub const NAMESPACE: &str = "aad-broker";
/// The chart, relative to the repository root.
pub const CHART: &str = "charts/aad-pod-identity";
/// The walkthrough's resource group, for the identity and (as it advises) the cluster nodes.
pub const RESOURCE_GROUP: &str = "myresourcegroup";
/// The walkthrough's identity name, also the AzureIdentity name and the binding's selector.
pub const IDENTITY: &str = "myidentity";
/// The resource the walkthrough's pod asks a token for (an Azure SQL database).
pub const TOKEN_SCOPE: &str = "https://database.windows.net/.default";
/// Namespace of the walkthrough's pods.
pub const POD_NAMESPACE: &str = "default";

/// The chart needs an image repository; nothing pulls from it here (`.example` never resolves).
const SANDBOX_IMAGES: &str = "registry.example/aadpodid";
const VMSS: &str = "aks-nodepool1-vmss";
const VM: &str = "aks-standalone-vm-0";
/// The chart's cluster credential (adminsecret): a service principal registered in the simulator.
const MIC_SP_CLIENT_ID: &str = "6a3c1f0e-2b4d-4e5f-8a9b-0c1d2e3f4a5b";
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// What the pod's SDK prints: a summary of the token, never the token itself.
const TOKEN_CLIENT: &str = r#"
import base64, json, sys
from azure.identity import ManagedIdentityCredential
tok = ManagedIdentityCredential().get_token(sys.argv[1])
p = tok.token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
print(json.dumps({"length": len(tok.token), "expires_on": tok.expires_on,
                  "oid": claims.get("oid"), "appid": claims.get("appid"), "aud": claims.get("aud")}))
"#;

/// A failed step, named as the walkthrough names it.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct Error {
    /// The step, e.g. `helm install`.
    pub step: String,
    /// What went wrong.
    pub detail: String,
}

fn fail(step: &str) -> impl FnOnce(String) -> Error + '_ {
    move |detail| Error { step: step.to_owned(), detail }
}

/// Where our binaries are and how to install the chart.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `mic` binary.
    pub mic_bin: PathBuf,
    /// The `nmi` binary.
    pub nmi_bin: PathBuf,
    /// The `aadpodid` binary, run at the end of the walk (`aadpodid explain pod`).
    pub cli_bin: PathBuf,
    /// Start the apiserver with an audit log at level Metadata (the RBAC test reads it).
    pub audit: bool,
    /// Extra `--set key=value` pairs for `helm install`.
    pub helm_set: Vec<String>,
}

impl Config {
    /// `AADPODID_MIC_BIN`/`AADPODID_NMI_BIN`, else `mic`/`nmi` next to the running executable
    /// (or one directory up, for test executables in `target/<profile>/deps`).
    pub fn locate() -> Result<Self, Error> {
        let exe = std::env::current_exe().map_err(|e| fail("locating binaries")(e.to_string()))?;
        let find = |var: &str, name: &str| -> Result<PathBuf, Error> {
            if let Some(p) = std::env::var_os(var) {
                return Ok(PathBuf::from(p));
            }
            let dirs = [exe.parent(), exe.parent().and_then(Path::parent)];
            dirs.into_iter().flatten().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
                fail("locating binaries")(format!(
                    "no `{name}` next to {} (run `cargo build -p aadpodid-mic -p aadpodid-nmi -p aadpodid-cli`, or set {var})",
                    exe.display()
                ))
            })
        };
        Ok(Self {
            mic_bin: find("AADPODID_MIC_BIN", "mic")?,
            nmi_bin: find("AADPODID_NMI_BIN", "nmi")?,
            cli_bin: find("AADPODID_CLI_BIN", "aadpodid")?,
            audit: false,
            helm_set: Vec::new(),
        })
    }
}

/// Which kind of Azure compute backs a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// An instance of a virtual machine scale set.
    Vmss,
    /// A standalone virtual machine.
    Vm,
}

/// A node: a network namespace serving the simulator's IMDS, and a Node object.
pub struct SandboxNode {
    /// The Node object's name.
    pub name: String,
    /// VMSS instance or VM.
    pub kind: NodeKind,
    /// `spec.providerID`.
    pub provider_id: String,
    /// The network namespace.
    pub net: NetNode,
    imds: ImdsHandle,
}

/// A pod: a Pod object with `spec.nodeName` and `status.podIP`, and its network namespace.
pub struct SandboxPod {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Index into [`Sandbox::nodes`].
    pub node: usize,
    /// The pod's network namespace and IP.
    pub net: NetPod,
}

/// What the pod's SDK got: never the token itself.
#[derive(Debug, Clone)]
pub struct TokenSummary {
    /// Length of the access token.
    pub length: u64,
    /// `expires_on`, seconds since the epoch.
    pub expires_on: u64,
    /// The `oid` claim (the identity's principal ID).
    pub oid: String,
    /// The `appid` claim (the identity's client ID).
    pub appid: String,
    /// The `aud` claim.
    pub aud: String,
}

/// A MIC replica: the process and its probe port.
struct MicReplica {
    pod_name: String,
    probe_port: u16,
    proc: Proc,
}

/// The running sandbox. Dropping it kills every process and deletes every namespace; prefer
/// [`Sandbox::shutdown`], which stops MIC and NMI with SIGTERM first (NMI removes its rules).
pub struct Sandbox {
    // Field order is drop order: pods and processes before nodes, nodes before the simulator
    // and the control plane, the directory last.
    pods: Vec<SandboxPod>,
    nmis: Vec<Proc>,
    mics: Vec<MicReplica>,
    nodes: Vec<SandboxNode>,
    sim: RunningSim,
    cp: ControlPlane,
    egress: EgressProxy,
    client: kube::Client,
    cfg: Config,
    identity: Option<IdentityInfo>,
    mic_sp_secret: String,
    env_file: PathBuf,
    dir: tempfile::TempDir,
}

/// Prints a command as a user would type it.
fn say(cmd: &str) {
    println!("\n$ {cmd}");
}

/// Prints what the sandbox does in place of a cluster component.
fn note(text: &str) {
    println!("  # {text}");
}

impl Sandbox {
    /// Starts the control plane, the simulator (ARM and Azure AD over HTTPS) and two nodes (a
    /// VMSS instance and a VM) with their IMDS and Node objects.
    pub async fn start(cfg: Config) -> Result<Self, Error> {
        let step = "start";
        require_root().map_err(fail(step))?;
        sweep_stale_netns();
        let dir =
            tempfile::Builder::new().prefix("aadpodid-sandbox-").tempdir().map_err(|e| fail(step)(e.to_string()))?;
        // The API server reaches the MIC and NMI pods (pod proxy) through this, as through
        // konnectivity on a managed cluster.
        let egress = EgressProxy::start().map_err(|e| fail("control plane")(format!("egress proxy: {e}")))?;
        let tools =
            tokio::task::spawn_blocking(Tools::locate).await.map_err(|e| fail("control plane")(e.to_string()))?;
        let options = Options {
            audit_metadata: cfg.audit,
            egress_selector: Some(egress.selector_config()),
            ..Options::default()
        };
        let cp = ControlPlane::start_with_options(tools.map_err(|e| fail("control plane")(e.to_string()))?, options)
            .await
            .map_err(|e| fail("control plane")(e.to_string()))?;
        let client = cp.client();
        let sim = Simulator::start(SimConfig::default()).await.map_err(|e| fail("Azure simulator")(e.to_string()))?;
        let mic_sp_secret = uuid::Uuid::new_v4().to_string();
        sim.register_service_principal_secret(MIC_SP_CLIENT_ID, &mic_sp_secret);
        let env_file = sim.write_azure_stack_environment(true).map_err(|e| fail("Azure simulator")(e.to_string()))?;
        sim.create_vmss(RESOURCE_GROUP, VMSS, 1);
        sim.create_vm(RESOURCE_GROUP, VM);

        let sub = sim.subscription_id().to_owned();
        let rg_path =
            format!("azure:///subscriptions/{sub}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute");
        let specs = [
            (
                NodeKind::Vmss,
                format!("{VMSS}000000"),
                format!("{rg_path}/virtualMachineScaleSets/{VMSS}/virtualMachines/0"),
                NodeRef::vmss_instance(VMSS, 0).in_resource_group(RESOURCE_GROUP),
                244,
            ),
            (
                NodeKind::Vm,
                VM.to_owned(),
                format!("{rg_path}/virtualMachines/{VM}"),
                NodeRef::vm(VM).in_resource_group(RESOURCE_GROUP),
                245,
            ),
        ];
        let api_addr: SocketAddr = cp
            .server_url()
            .trim_start_matches("https://")
            .parse()
            .map_err(|e| fail(step)(format!("apiserver address: {e}")))?;
        let aad_addr: SocketAddr = sim
            .aad_https_url()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| fail(step)(format!("Azure AD address: {e}")))?;
        let mut nodes = Vec::new();
        for (kind, name, provider_id, node_ref, octet) in specs {
            let step = "node network namespaces";
            let net = NetNode::create_with_pod_range(octet).map_err(|e| fail(step)(e.to_string()))?;
            let listener = net.imds_listener().map_err(|e| fail(step)(format!("IMDS listener: {e}")))?;
            let imds = sim.serve_imds(listener, node_ref).map_err(|e| fail(step)(e.to_string()))?;
            // The same loopback ports inside the node as outside: the kubeconfig and the
            // identities' Azure AD URL work unchanged there (hostNetwork pods see the node's).
            for addr in [api_addr, aad_addr] {
                net.ns.forward(addr, addr).map_err(|e| fail(step)(format!("relay to {addr}: {e}")))?;
            }
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
                "spec": {"providerID": provider_id},
            }))
            .map_err(|e| fail(step)(e.to_string()))?;
            Api::<Node>::all(client.clone())
                .create(&PostParams::default(), &node)
                .await
                .map_err(|e| fail("Node objects")(e.to_string()))?;
            nodes.push(SandboxNode { name, kind, provider_id, net, imds });
        }
        println!(
            "sandbox: control plane {} · Azure simulator ARM {} AAD {} · nodes {} (VMSS instance), {} (VM)",
            cp.server_url(),
            sim.arm_https_url(),
            sim.aad_https_url(),
            nodes[0].name,
            nodes[1].name
        );
        Ok(Self {
            pods: Vec::new(),
            nmis: Vec::new(),
            mics: Vec::new(),
            nodes,
            sim,
            cp,
            egress,
            client,
            cfg,
            identity: None,
            mic_sp_secret,
            env_file,
            dir,
        })
    }

    /// The admin client (system:masters).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The control plane (kubeconfig, kubectl, audit log).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The Azure simulator.
    pub fn sim(&self) -> &RunningSim {
        &self.sim
    }

    /// The sandbox's working directory (values, kubeconfigs, logs, identityconfig/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The nodes: index 0 the VMSS instance, 1 the VM.
    pub fn nodes(&self) -> &[SandboxNode] {
        &self.nodes
    }

    /// The pods created so far.
    pub fn pods(&self) -> &[SandboxPod] {
        &self.pods
    }

    /// The identity of step 1, once created.
    pub fn identity(&self) -> Option<&IdentityInfo> {
        self.identity.as_ref()
    }

    /// Runs the walkthrough: identity, helm install (MIC and NMI start under the chart's
    /// service accounts), identityconfig/, one pod per node getting a token through
    /// 169.254.169.254, and the assigned identities listed.
    pub async fn walkthrough(&mut self) -> Result<(), Error> {
        self.create_identity().await?;
        self.helm_install().await?;
        self.start_mic().await?;
        self.start_nmi().await?;
        self.apply_identityconfig().await?;
        for (node, pod) in [(0, "myapp"), (1, "myapp-on-vm")] {
            self.create_pod(node, pod, IDENTITY).await?;
            self.wait_assigned(POD_NAMESPACE, pod).await?;
            let expect = self.identity.clone().map(|i| (i.client_id, i.principal_id));
            let summary = self.token(pod).await?;
            if let Some((client_id, principal_id)) = expect
                && (summary.appid != client_id || summary.oid != principal_id)
            {
                return Err(fail("token in pod")(format!(
                    "pod {pod} got a token for appid {} oid {}, not myidentity's {client_id} / {principal_id}",
                    summary.appid, summary.oid
                )));
            }
        }
        self.show_assigned().await?;
        self.explain("myapp").await.map(drop)
    }

    /// `aadpodid explain pod <pod>`, with ARM checked through an azure.json made of the chart's
    /// adminsecret; fails unless it finds the pod healthy. Its report.
    pub async fn explain(&self, pod: &str) -> Result<String, Error> {
        let step = format!("aadpodid explain pod {pod}");
        let azure_json = self.dir().join("azure.json");
        let config = json!({"cloud": "AzureStackCloud", "tenantId": self.sim.tenant_id(),
            "subscriptionId": self.sim.subscription_id(), "aadClientId": MIC_SP_CLIENT_ID,
            "aadClientSecret": self.mic_sp_secret, "resourceGroup": RESOURCE_GROUP, "vmType": "vmss"});
        write_private(&azure_json, &config.to_string()).map_err(fail(&step))?;
        println!();
        note("azure.json: the chart's adminsecret as a file (not shown)");
        say(&format!("aadpodid explain pod {pod} -n {POD_NAMESPACE} --azure-json azure.json"));
        let mut cmd = tokio::process::Command::new(&self.cfg.cli_bin);
        cmd.arg("--kubeconfig").arg(self.cp.kubeconfig_path()).args(["explain", "pod", pod, "-n", POD_NAMESPACE]);
        cmd.arg("--azure-json").arg(&azure_json).arg("--azure-environment-file").arg(&self.env_file);
        cmd.env("AADPODID_EXTRA_ROOT_CA_FILE", self.sim.ca_cert_pem_path()).stdin(std::process::Stdio::null());
        cmd.kill_on_drop(true);
        let out = output(cmd, "aadpodid").await.map_err(fail(&step))?;
        print!("{out}");
        Ok(out)
    }

    /// Step 1: `az identity create -g myresourcegroup -n myidentity -o json`, against the simulator.
    pub async fn create_identity(&mut self) -> Result<IdentityInfo, Error> {
        say(&format!("az identity create -g {RESOURCE_GROUP} -n {IDENTITY} -o json"));
        let info = self.sim.create_user_assigned_identity(RESOURCE_GROUP, IDENTITY);
        println!("{}", serde_json::to_string_pretty(&info.az_json()).unwrap_or_default());
        self.identity = Some(info.clone());
        Ok(info)
    }

    /// Step 2: `helm install pod-identity charts/aad-pod-identity --namespace aad-broker
    /// --create-namespace`, with the cluster credential (adminsecret) and the simulator's cloud
    /// environment file (customCloud) as values.
    pub async fn helm_install(&mut self) -> Result<(), Error> {
        let step = "helm install";
        let values = json!({
            "adminsecret": {
                "cloud": "AzureStackCloud",
                "subscriptionID": self.sim.subscription_id(),
                "resourceGroup": RESOURCE_GROUP,
                "vmType": "vmss",
                "tenantID": self.sim.tenant_id(),
                "clientID": MIC_SP_CLIENT_ID,
                "clientSecret": self.mic_sp_secret,
            },
            "mic": {"customCloud": {"enabled": true, "configPath": self.env_file.display().to_string()}},
        });
        // JSON is YAML; the file holds the simulator's (fake) credential, so it is not printed.
        let values_path = self.dir().join("values.yaml");
        write_private(&values_path, &values.to_string()).map_err(fail(step))?;
        let mut args = vec![
            "install".to_owned(),
            RELEASE.to_owned(),
            CHART.to_owned(),
            "--namespace".to_owned(),
            NAMESPACE.to_owned(),
            "--create-namespace".to_owned(),
            "-f".to_owned(),
            values_path.display().to_string(),
            "--set".to_owned(),
            format!("image.repository={SANDBOX_IMAGES}"),
        ];
        for set in &self.cfg.helm_set {
            args.extend(["--set".to_owned(), set.clone()]);
        }
        say(&format!("helm {}", args.join(" ")));
        note(
            "values: adminsecret = the simulator's tenant, subscription and a service principal; mic.customCloud = its Azure Stack environment file",
        );
        note("image.repository: on a cluster, where hack/images.sh pushed the images; no kubelet pulls them here");
        let out = self.helm(&args).await.map_err(fail(step))?;
        print!("{out}");
        Ok(())
    }

    /// Runs the real helm against the control plane from the repository root.
    pub async fn helm(&self, args: &[String]) -> Result<String, String> {
        let helm_home = self.dir().join("helm");
        let mut cmd = tokio::process::Command::new(&self.cp.tools().helm);
        cmd.arg("--kubeconfig")
            .arg(self.cp.kubeconfig_path())
            .args(args)
            .current_dir(repo_root())
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        output(cmd, "helm").await
    }

    /// Runs the real kubectl as admin (`cwd` for relative file arguments).
    pub async fn kubectl(&self, args: &[&str], cwd: Option<&Path>) -> Result<String, String> {
        let mut cmd = self.cp.kubectl_command(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        output(cmd, "kubectl").await
    }

    /// A TokenRequest token for a service account, in a kubeconfig of its own.
    async fn service_account_kubeconfig(&self, sa: &str) -> Result<PathBuf, String> {
        say(&format!("kubectl create token {sa} -n {NAMESPACE} --duration=24h"));
        let token = self.kubectl(&["create", "token", sa, "-n", NAMESPACE, "--duration=24h"], None).await?;
        let path = self.dir().join(format!("{sa}.kubeconfig"));
        note(&format!("token (not shown) written into {}", path.display()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {sa}\n  user:\n    token: {token}\n\
             contexts:\n- name: {sa}\n  context:\n    cluster: sandbox\n    user: {sa}\n    namespace: {NAMESPACE}\n\
             current-context: {sa}\n",
            server = self.cp.server_url(),
            ca = B64.encode(self.cp.ca_pem()),
            token = token.trim(),
        );
        write_private(&path, &text)?;
        Ok(path)
    }

    /// Runs the chart's MIC Deployment: one process per replica, with the Deployment's args and
    /// environment, under its service account; waits until one replica leads.
    pub async fn start_mic(&mut self) -> Result<(), Error> {
        let step = "MIC (the chart's Deployment)";
        let name = format!("{}-mic", chart_name());
        let deploy = Api::<Deployment>::namespaced(self.client(), NAMESPACE)
            .get(&name)
            .await
            .map_err(|e| fail(step)(format!("the chart's Deployment {NAMESPACE}/{name}: {e}")))?;
        let owner = pods::owned_by(&deploy);
        let spec = deploy.spec.ok_or_else(|| fail(step)("Deployment without spec".to_owned()))?;
        let replicas = spec.replicas.unwrap_or(1).max(1);
        println!();
        note(&format!(
            "no kubelet here: Deployment {name} ({replicas} replicas) runs as local `mic` processes with its args and env"
        ));
        let mut kubeconfig = None;
        for i in 0..replicas {
            let pod_name = format!("{name}-{i}");
            let place = workload::PodPlace { namespace: NAMESPACE, name: &pod_name, node: &self.nodes[0].name };
            let mut launch = workload::resolve(&self.client, &spec.template, &place).await.map_err(fail(step))?;
            let kc = match &kubeconfig {
                Some(k) => k,
                None => kubeconfig
                    .insert(self.service_account_kubeconfig(&launch.service_account).await.map_err(fail(step))?),
            };
            let probe_port = free_port().map_err(fail(step))?;
            let metrics_port = free_port().map_err(fail(step))?;
            let mut args = launch.args.clone();
            workload::set_flag(&mut args, "--kubeconfig", &kc.display().to_string());
            workload::set_flag(&mut args, "--extra-root-ca-file", &self.sim.ca_cert_pem_path().display().to_string());
            workload::set_flag(&mut args, "--http-probe-port", &probe_port.to_string());
            workload::set_flag(&mut args, "--prometheus-port", &metrics_port.to_string());
            workload::set_flag(&mut args, "--arm-poll-interval", "200ms");
            // A pod's hostname is its name: MIC's default leader-election instance.
            launch.env.insert("HOSTNAME".to_owned(), pod_name.clone());
            note(&format!("mic {}", args.join(" ")));
            let log = self.dir().join(format!("{pod_name}.log"));
            let proc = Proc::spawn(format!("mic {pod_name}"), None, &self.cfg.mic_bin, &args, &launch.env, log)
                .map_err(fail(step))?;
            let declared = workload::flag_value(&launch.args, "--http-probe-port").and_then(|p| p.parse().ok());
            let pod = pods::ComponentPod {
                namespace: NAMESPACE,
                name: &pod_name,
                node: &self.nodes[0].name,
                ip: Ipv4Addr::new(10, 250, 0, u8::try_from(i + 2).unwrap_or(2)),
                probe_port: declared.unwrap_or(8080),
                target: EgressTarget::Host(SocketAddr::from((Ipv4Addr::LOCALHOST, probe_port))),
            };
            pods::report(&self.client, &self.egress, &spec.template, owner.clone(), &pod).await.map_err(fail(step))?;
            self.mics.push(MicReplica { pod_name, probe_port, proc });
        }
        let start = Instant::now();
        loop {
            for m in &mut self.mics {
                if let Some(status) = m.proc.exited() {
                    return Err(fail(step)(format!(
                        "{} exited ({status}); log:\n{}",
                        m.proc.what,
                        m.proc.log_tail(30)
                    )));
                }
            }
            if self.mic_leader().await.is_some() {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(fail(step)(format!("no MIC replica became leader (Active) within {DEADLINE:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The index of the MIC replica whose `/healthz` says `Active`.
    pub async fn mic_leader(&self) -> Option<usize> {
        for (i, m) in self.mics.iter().enumerate() {
            if m.proc.pid().is_some() && http_get(m.probe_port, "/healthz").await.as_deref() == Some("Active") {
                return Some(i);
            }
        }
        None
    }

    /// The MIC replicas' pod names (`HOSTNAME`, the leader-election identity).
    pub fn mic_pod_names(&self) -> Vec<String> {
        self.mics.iter().map(|m| m.pod_name.clone()).collect()
    }

    /// Stops MIC replica `index` with SIGTERM; its exit status.
    pub async fn stop_mic(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        self.mics.get_mut(index)?.proc.terminate(Duration::from_secs(10)).await
    }

    /// Stops the NMI of node `index` with SIGTERM (its Pod object stays, as for a crashed
    /// container); its exit status.
    pub async fn stop_nmi(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        self.nmis.get_mut(index)?.terminate(Duration::from_secs(10)).await
    }

    /// Runs the chart's NMI DaemonSet: one process per node, inside the node's network
    /// namespace, with the DaemonSet's args and environment, under its service account; waits
    /// until each is Active (iptables rules in place).
    pub async fn start_nmi(&mut self) -> Result<(), Error> {
        let step = "NMI (the chart's DaemonSet)";
        let name = format!("{}-nmi", chart_name());
        let ds = Api::<DaemonSet>::namespaced(self.client(), NAMESPACE)
            .get(&name)
            .await
            .map_err(|e| fail(step)(format!("the chart's DaemonSet {NAMESPACE}/{name}: {e}")))?;
        let owner = pods::owned_by(&ds);
        let spec = ds.spec.ok_or_else(|| fail(step)("DaemonSet without spec".to_owned()))?;
        println!();
        note(&format!("no kubelet here: DaemonSet {name} runs as one `nmi` process in each node's network namespace"));
        let mut kubeconfig = None;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let pod_name = format!("{name}-{}", node.name);
            let place = workload::PodPlace { namespace: NAMESPACE, name: &pod_name, node: &node.name };
            let mut launch = workload::resolve(&self.client, &spec.template, &place).await.map_err(fail(step))?;
            let kc = match &kubeconfig {
                Some(k) => k,
                None => kubeconfig
                    .insert(self.service_account_kubeconfig(&launch.service_account).await.map_err(fail(step))?),
            };
            let mut args = launch.args.clone();
            workload::set_flag(&mut args, "--kubeconfig", &kc.display().to_string());
            workload::set_flag(&mut args, "--extra-root-ca-file", &self.sim.ca_cert_pem_path().display().to_string());
            // The simulator's Azure AD is no known cloud's: identities may name it only if allowed.
            workload::set_flag(&mut args, "--allowed-ad-endpoints", &self.sim.aad_https_url());
            // The DaemonSet mounts the node's kubelet config (hostPath FileOrCreate); a stand-in.
            let kubelet_config = self.dir().join("kubelet-config");
            std::fs::write(&kubelet_config, "").map_err(|e| fail(step)(e.to_string()))?;
            workload::set_flag(&mut args, "--kubelet-config", &kubelet_config.display().to_string());
            // No kubelet drains endpoints here, so nothing to wait for on SIGTERM.
            launch.env.insert("NMI_TERMINATION_WAIT_SEC".to_owned(), "0".to_owned());
            note(&format!("ip netns exec {} nmi {}", node.net.ns.name(), args.join(" ")));
            let log = self.dir().join(format!("{pod_name}.log"));
            let proc = Proc::spawn(
                format!("nmi on {}", node.name),
                Some(node.net.ns.name()),
                &self.cfg.nmi_bin,
                &args,
                &launch.env,
                log,
            )
            .map_err(fail(step))?;
            let probe = workload::flag_value(&args, "--http-probe-port").unwrap_or("8080").to_owned();
            let pod = pods::ComponentPod {
                namespace: NAMESPACE,
                name: &pod_name,
                node: &node.name,
                ip: node.net.gateway(),
                probe_port: probe.parse().unwrap_or(8080),
                target: EgressTarget::Netns {
                    netns: node.net.ns.name().to_owned(),
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, probe.parse().unwrap_or(8080))),
                },
            };
            pods::report(&self.client, &self.egress, &spec.template, owner.clone(), &pod).await.map_err(fail(step))?;
            self.nmis.push(proc);
            self.wait_nmi_active(i, &probe).await?;
        }
        Ok(())
    }

    async fn wait_nmi_active(&mut self, i: usize, probe_port: &str) -> Result<(), Error> {
        let step = "NMI (the chart's DaemonSet)";
        let url = format!("http://127.0.0.1:{probe_port}/healthz");
        let start = Instant::now();
        loop {
            let node = &self.nodes[i];
            let mut curl = tokio::process::Command::from(node.net.ns.command("curl"));
            curl.args(["-s", "--max-time", "2", &url]).stdin(std::process::Stdio::null()).kill_on_drop(true);
            let out = curl.output().await.map_err(|e| fail(step)(format!("curl in {}: {e}", node.net.ns.name())))?;
            if String::from_utf8_lossy(&out.stdout) == "Active" {
                return Ok(());
            }
            let proc = &mut self.nmis[i];
            if let Some(status) = proc.exited() {
                return Err(fail(step)(format!("{} exited ({status}); log:\n{}", proc.what, proc.log_tail(30))));
            }
            if start.elapsed() > DEADLINE {
                return Err(fail(step)(format!("{} never became Active; log:\n{}", proc.what, proc.log_tail(30))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Step 3: the walkthrough's identityconfig/ (examples/identityconfig) with the identity of step 1,
    /// `kubectl apply -f identityconfig/ -n aad-broker`.
    pub async fn apply_identityconfig(&self) -> Result<(), Error> {
        let step = "kubectl apply -f identityconfig/";
        let id = self.identity.as_ref().ok_or_else(|| fail(step)("no identity: run step 1 first".to_owned()))?;
        let src = repo_root().join("examples/identityconfig");
        let dst = self.dir().join("identityconfig");
        std::fs::create_dir_all(&dst).map_err(|e| fail(step)(e.to_string()))?;
        let entries = std::fs::read_dir(&src).map_err(|e| fail(step)(format!("{}: {e}", src.display())))?;
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).map_err(|e| fail(step)(e.to_string()))?;
            let text: String = text
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("ResourceID:") {
                        format!("  ResourceID: {}", id.id)
                    } else if l.trim_start().starts_with("ClientID:") {
                        format!("  ClientID: {}", id.client_id)
                    } else {
                        l.to_owned()
                    }
                })
                .map(|l| l + "\n")
                .collect();
            std::fs::write(dst.join(entry.file_name()), text).map_err(|e| fail(step)(e.to_string()))?;
        }
        println!();
        note(&format!("{} holds examples/identityconfig with myidentity's id and clientId", dst.display()));
        say(&format!("kubectl apply -f identityconfig/ -n {NAMESPACE}"));
        let out = self
            .kubectl(&["apply", "-f", "identityconfig/", "-n", NAMESPACE], Some(self.dir()))
            .await
            .map_err(fail(step))?;
        print!("{out}");
        Ok(())
    }

    /// Step 4: a pod labelled `aadpodidbinding: <selector>` on node `node` (examples/pod.yaml
    /// with `spec.nodeName`), and the kubelet's part: its network namespace and `status.podIP`.
    pub async fn create_pod(&mut self, node: usize, name: &str, selector: &str) -> Result<(), Error> {
        let step = format!("pod {name}");
        let step = step.as_str();
        let node_name = self.nodes[node].name.clone();
        let example =
            std::fs::read_to_string(repo_root().join("examples/pod.yaml")).map_err(|e| fail(step)(e.to_string()))?;
        let yaml = example
            .replace("  name: myapp\n", &format!("  name: {name}\n"))
            .replace("aadpodidbinding: myidentity", &format!("aadpodidbinding: {selector}"))
            .replace("\nspec:\n", &format!("\nspec:\n  nodeName: {node_name}\n"));
        let file = format!("{name}.yaml");
        std::fs::write(self.dir().join(&file), yaml).map_err(|e| fail(step)(e.to_string()))?;
        say(&format!("kubectl apply -f {file}    # examples/pod.yaml as {name}, scheduled on {node_name}"));
        let out =
            self.kubectl(&["apply", "-f", &file, "-n", POD_NAMESPACE], Some(self.dir())).await.map_err(fail(step))?;
        print!("{out}");
        let net = self.nodes[node].net.add_pod().map_err(|e| fail(step)(format!("pod network namespace: {e}")))?;
        let status = json!({"status": {"phase": "Running", "podIP": net.ip.to_string(), "podIPs": [{"ip": net.ip.to_string()}]}});
        Api::<Pod>::namespaced(self.client(), POD_NAMESPACE)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| fail(step)(format!("setting status.podIP: {e}")))?;
        note(&format!("the kubelet's part: network namespace {} with IP {}, phase Running", net.ns.name(), net.ip));
        self.pods.push(SandboxPod { name: name.to_owned(), namespace: POD_NAMESPACE.to_owned(), node, net });
        Ok(())
    }

    /// Deletes a pod (grace period 0: no kubelet confirms) and its network namespace.
    pub async fn delete_pod(&mut self, name: &str) -> Result<(), Error> {
        let step = format!("delete pod {name}");
        let Some(i) = self.pods.iter().position(|p| p.name == name) else {
            return Err(fail(&step)("no such pod".to_owned()));
        };
        let pod = self.pods.remove(i);
        Api::<Pod>::namespaced(self.client(), &pod.namespace)
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .map_err(|e| fail(&step)(e.to_string()))?;
        Ok(())
    }

    /// Waits until MIC has an AzureAssignedIdentity for the pod in state Assigned; its name.
    pub async fn wait_assigned(&self, namespace: &str, pod: &str) -> Result<String, Error> {
        let step = format!("MIC assigns the identity to pod {pod}");
        let start = Instant::now();
        let mut last = String::from("no AzureAssignedIdentity yet");
        loop {
            for a in self.assigned_for(namespace, pod).await.map_err(fail(&step))? {
                let state = a.status.as_ref().and_then(|s| s.status.clone()).unwrap_or_default();
                let name = a.metadata.name.clone().unwrap_or_default();
                if state == "Assigned" {
                    return Ok(name);
                }
                last = format!("{name} is {state:?}");
            }
            if start.elapsed() > DEADLINE {
                return Err(fail(&step)(format!("not Assigned within {DEADLINE:?}: {last}\n{}", self.log_tails(20))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no AzureAssignedIdentity refers to the pod any more.
    pub async fn wait_unassigned(&self, namespace: &str, pod: &str) -> Result<(), Error> {
        let step = format!("MIC removes pod {pod}'s assignment");
        let start = Instant::now();
        while !self.assigned_for(namespace, pod).await.map_err(fail(&step))?.is_empty() {
            if start.elapsed() > DEADLINE {
                return Err(fail(&step)(format!("still there after {DEADLINE:?}\n{}", self.log_tails(20))));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    async fn assigned_for(&self, namespace: &str, pod: &str) -> Result<Vec<AzureAssignedIdentity>, String> {
        let all = Api::<AzureAssignedIdentity>::all(self.client())
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(all
            .items
            .into_iter()
            .filter(|a| a.spec.pod.as_deref() == Some(pod) && a.spec.pod_namespace.as_deref() == Some(namespace))
            .collect())
    }

    /// The pod's SDK (Python azure-identity `ManagedIdentityCredential`, no configuration)
    /// asks for a token for `https://database.windows.net/` through 169.254.169.254.
    pub async fn token(&self, pod: &str) -> Result<TokenSummary, Error> {
        self.token_for(pod, TOKEN_SCOPE).await
    }

    /// Like [`Sandbox::token`] for another scope.
    pub async fn token_for(&self, pod: &str, scope: &str) -> Result<TokenSummary, Error> {
        let step = format!("token in pod {pod}");
        let step = step.as_str();
        let p = self.pods.iter().find(|p| p.name == pod).ok_or_else(|| fail(step)("no such pod".to_owned()))?;
        say(&format!(
            "python3 -c 'from azure.identity import ManagedIdentityCredential; ManagedIdentityCredential().get_token(\"{scope}\")'    # in pod {pod} (netns {})",
            p.net.ns.name()
        ));
        let mut cmd = tokio::process::Command::from(p.net.command("python3"));
        cmd.args(["-c", TOKEN_CLIENT, scope])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), output(cmd, "python3"))
            .await
            .map_err(|_| fail(step)(format!("the SDK did not answer within 120 s\n{}", self.log_tails(20))))?
            .map_err(|e| fail(step)(format!("{e}\n{}", self.log_tails(20))))?;
        let v: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
            .map_err(|e| fail(step)(format!("unexpected SDK output ({e}): {out}")))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let summary = TokenSummary {
            length: v["length"].as_u64().unwrap_or_default(),
            expires_on: v["expires_on"].as_u64().unwrap_or_default(),
            oid: s("oid"),
            appid: s("appid"),
            aud: s("aud"),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let expiry = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(summary.expires_on));
        println!(
            "token: {} characters, aud {}, expires {expiry} (in {} s), oid {}, appid {}",
            summary.length,
            summary.aud,
            summary.expires_on.saturating_sub(now),
            summary.oid,
            summary.appid
        );
        Ok(summary)
    }

    /// `kubectl get azureassignedidentities --all-namespaces`, plus their states.
    pub async fn show_assigned(&self) -> Result<(), Error> {
        let step = "kubectl get azureassignedidentities";
        say("kubectl get azureassignedidentities --all-namespaces");
        print!(
            "{}",
            self.kubectl(&["get", "azureassignedidentities", "--all-namespaces"], None).await.map_err(fail(step))?
        );
        let columns = "NAMESPACE:.metadata.namespace,NAME:.metadata.name,POD:.spec.pod,POD-NAMESPACE:.spec.podNamespace,NODE:.spec.nodename,STATE:.status.status";
        say(&format!("kubectl get azureassignedidentities --all-namespaces -o custom-columns={columns}"));
        let out = self
            .kubectl(
                &["get", "azureassignedidentities", "--all-namespaces", "-o", &format!("custom-columns={columns}")],
                None,
            )
            .await
            .map_err(fail(step))?;
        print!("{out}");
        let assigned = out.lines().skip(1).filter(|l| l.split_whitespace().last() == Some("Assigned")).count();
        if assigned < self.pods.len() {
            return Err(fail(step)(format!("{assigned} entries Assigned, expected {}", self.pods.len())));
        }
        Ok(())
    }

    /// What to try while the sandbox stays up.
    pub fn stay_up_help(&self) -> String {
        let kubectl = self.cp.tools().kubectl.display().to_string();
        let kc = self.cp.kubeconfig_path().display();
        let mut s = format!(
            "\nThe sandbox is up. Ctrl-C (or SIGTERM) stops it and removes everything.\n\n  \
             kubeconfig (admin): {kc}\n  kubectl:            {kubectl}\n  working directory:  {}\n\n",
            self.dir().display()
        );
        for p in &self.pods {
            s += &format!(
                "  pod {}/{} on {}: netns {} IP {}\n",
                p.namespace,
                p.name,
                self.nodes[p.node].name,
                p.net.ns.name(),
                p.net.ip
            );
        }
        for n in &self.nodes {
            s += &format!("  node {} ({:?}, {}): netns {}\n", n.name, n.kind, n.provider_id, n.net.ns.name());
        }
        let pod_ns = self.pods.first().map_or("<pod netns>", |p| p.net.ns.name());
        s += &format!(
            "\nTry:\n  {kubectl} --kubeconfig {kc} get azureassignedidentities -A\n  \
             {cli} --kubeconfig {kc} doctor    # or: explain pod myapp\n  \
             ip netns exec {pod_ns} python3 -c 'from azure.identity import ManagedIdentityCredential as C; t = C().get_token(\"https://vault.azure.net/.default\"); print(len(t.token), t.expires_on)'\n  \
             ip netns exec {pod_ns} curl -s -H Metadata:true 'http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://database.windows.net/'\n  \
             ip netns exec {} iptables -t nat -S    # NMI's DNAT rules on a node\n  \
             curl -s {}/admin/state    # the simulator: which identities sit on which VM/VMSS\n\nLogs:\n",
            self.nodes[0].net.ns.name(),
            self.sim.arm_url().trim_end_matches('/'),
            cli = self.cfg.cli_bin.display(),
        );
        for p in self.mics.iter().map(|m| &m.proc).chain(&self.nmis) {
            s += &format!("  {}: {}\n", p.what, p.log.display());
        }
        s
    }

    /// The last lines of every MIC and NMI log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for p in self.mics.iter().map(|m| &m.proc).chain(&self.nmis) {
            s += &format!("== {} ({}) ==\n{}\n", p.what, p.log.display(), p.log_tail(lines));
        }
        s
    }

    /// Stops MIC and NMI with SIGTERM (NMI removes its iptables rules) and deletes their Pod
    /// objects, as a helm uninstall would; the exit statuses by process.
    pub async fn stop_components(&mut self) -> Vec<(String, Option<std::process::ExitStatus>)> {
        let grace = Duration::from_secs(10);
        let mut stopped = Vec::new();
        for p in self.nmis.iter_mut().chain(self.mics.iter_mut().map(|m| &mut m.proc)) {
            if p.pid().is_some() {
                let status = p.terminate(grace).await;
                stopped.push((p.what.clone(), status));
            }
        }
        if let Err(e) = pods::remove_all(&self.client, NAMESPACE).await {
            eprintln!("sandbox: {e}");
        }
        stopped
    }

    /// Stops everything: MIC and NMI with SIGTERM, then pods, nodes (network namespaces),
    /// the simulator and the control plane.
    /// Returns how each MIC and NMI process ended.
    pub async fn shutdown(mut self) -> Vec<(String, Option<std::process::ExitStatus>)> {
        let stopped = self.stop_components().await;
        for n in &self.nodes {
            n.imds.stop();
        }
        // Drop order does the rest (see the struct).
        stopped
    }
}

fn chart_name() -> &'static str {
    "aad-pod-identity"
}

async fn output(mut cmd: tokio::process::Command, what: &str) -> Result<String, String> {
    let out = cmd.output().await.map_err(|e| format!("running {what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{what} failed ({}):\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// A minimal `GET` on a loopback port; the body of a 200, else `None`.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fut).await.ok().flatten()
}

fn free_port() -> Result<u16, String> {
    aadpodid_testkit::free_port().map_err(|e| format!("finding a free port: {e}"))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Network namespaces, iptables and `ip netns exec` need root.
pub fn require_root() -> Result<(), String> {
    if aadpodid_testkit::is_root() {
        Ok(())
    } else {
        Err("the sandbox needs root (network namespaces, iptables): run it as root, e.g. `sudo bash hack/sandbox.sh`"
            .to_owned())
    }
}

/// Deletes `aadpodid-*-<pid>-<n>` network namespaces whose creating process is gone (a killed
/// earlier run); best-effort, never touches a live process's namespaces.
fn sweep_stale_netns() {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix("aadpodid-") else { continue };
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_n), Some(pid), Some(_prefix)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::process::Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
