//! The sandbox on real nodes (`sandbox --kubelet`): MIC and NMI run from the images
//! `hack/images.sh` built, placed by the unchanged chart through a real scheduler, controller
//! manager and kubelets, with the chart's securityContext, volumes and probes.
//!
//! ```text
//!  host: kube-apiserver + etcd (ServiceAccount admission on), scheduler, controller manager,
//!        Azure simulator (ARM/AAD on 127.0.0.1, certificate also for the cloud IP)
//!  two node netns (a VMSS instance, a VM), each: containerd + kubelet (crate::node), IMDS,
//!        relays for the API server and for ARM/AAD on the cloud IP
//!        pods: NMI (DaemonSet, hostNetwork), MIC (Deployment), SDK Deployments (python3)
//! ```
//!
//! What the sandbox adds to the images: the simulator's CA in the CA bundle (one more layer,
//! images `aadpodid-sandbox/{mic,nmi}`, chosen with `--set image.repository=aadpodid-sandbox`),
//! as a private cloud's clients trust its CA; the real cloud's is in the bundle already.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aadpodid_azure_sim::{IdentityInfo, ImdsHandle, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_testkit::netns::Node as NetNode;
use aadpodid_testkit::{ControlPlane, Options, Tools, repo_root};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

use crate::node::{Controllers, KubeletNode, NodePlace, NodeTools};
use crate::{CHART, Error, IDENTITY, NAMESPACE, POD_NAMESPACE, RELEASE, RESOURCE_GROUP, TOKEN_SCOPE, fail, note, say};

/// Where the nodes reach ARM and Azure AD: an address of the documentation range put on each
/// node's `lo`, relayed to the simulator; the pods reach it through their node.
pub const CLOUD_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The chart's `image.repository` for the sandbox's images (ours plus the simulator's CA).
pub const SANDBOX_REPOSITORY: &str = "aadpodid-sandbox";
/// The second identity and its selector: each pod must get only its own.
pub const OTHER_IDENTITY: &str = "myotheridentity";

const VMSS: &str = "aks-nodepool1-vmss";
const VM: &str = "aks-standalone-vm-0";
const MIC_SP_CLIENT_ID: &str = "6a3c1f0e-2b4d-4e5f-8a9b-0c1d2e3f4a5b";
/// Real pods start slower than processes: image unpacking, sandboxes, probes, on a busy machine.
const DEADLINE: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(500);

/// The pods' program: asks IMDS (through NMI) for a token every two seconds and prints a
/// summary line (never the token).
const SDK_LOOP: &str = r#"
import base64, json, sys, time
from azure.identity import ManagedIdentityCredential
while True:
    try:
        tok = ManagedIdentityCredential().get_token(sys.argv[1])
        p = tok.token.split(".")[1]
        c = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        print(json.dumps({"ok": True, "appid": c.get("appid"), "oid": c.get("oid"), "aud": c.get("aud")}), flush=True)
    except Exception as e:
        print(json.dumps({"ok": False, "error": str(e)[:200]}), flush=True)
    time.sleep(2)
"#;

/// The running kubelet-mode sandbox. Field order is drop order.
pub struct KubeletSandbox {
    nodes: Vec<KubeletNode>,
    nets: Vec<(NetNode, ImdsHandle)>,
    controllers: Controllers,
    sim: RunningSim,
    cp: ControlPlane,
    client: kube::Client,
    identities: Vec<IdentityInfo>,
    mic_sp_secret: String,
    env_file: PathBuf,
    tag: String,
    dir: tempfile::TempDir,
}

/// What a pod's SDK printed last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkResult {
    /// A token for this `appid` (client ID).
    Token {
        /// The `appid` claim.
        appid: String,
    },
    /// The SDK's error.
    Failed(String),
}

impl KubeletSandbox {
    /// Control plane, simulator, controllers and two kubelet nodes with the images imported.
    pub async fn start() -> Result<Self, Error> {
        let step = "start (kubelet nodes)";
        crate::require_root().map_err(fail(step))?;
        let tools = NodeTools::locate().map_err(fail(step))?;
        let archives = ["mic", "nmi", "pause", "sdk-python"]
            .map(crate::oci::archive)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail(step))?;
        let dir =
            tempfile::Builder::new().prefix("aadpodid-sandbox-").tempdir().map_err(|e| fail(step)(e.to_string()))?;
        let cp_tools = tokio::task::spawn_blocking(Tools::locate)
            .await
            .map_err(|e| fail(step)(e.to_string()))?
            .map_err(|e| fail(step)(e.to_string()))?;
        let options = Options { service_account_admission: true, ..Options::default() };
        let cp = ControlPlane::start_with_options(cp_tools, options)
            .await
            .map_err(|e| fail("control plane")(e.to_string()))?;
        let client = cp.client();
        let sim_config = SimConfig { tls_names: vec![CLOUD_IP.to_string()], ..SimConfig::default() };
        let sim = Simulator::start(sim_config).await.map_err(|e| fail("Azure simulator")(e.to_string()))?;
        let mic_sp_secret = uuid::Uuid::new_v4().to_string();
        sim.register_service_principal_secret(MIC_SP_CLIENT_ID, &mic_sp_secret);
        sim.create_vmss(RESOURCE_GROUP, VMSS, 1);
        sim.create_vm(RESOURCE_GROUP, VM);
        let env_file = write_cloud_environment(&sim, dir.path()).map_err(fail("Azure simulator"))?;
        let tag = crate::oci::Archive::open(&archives[0]).map_err(fail(step))?.reference;
        let tag = tag.rsplit_once(':').map(|(_, t)| t.to_owned()).unwrap_or_default();
        let images = sandbox_images(&archives, &sim, dir.path(), &tag).map_err(fail("images"))?;
        let controllers =
            Controllers::start(&cp, &tools, dir.path()).map_err(fail("scheduler and controller manager"))?;
        let mut sandbox = Self {
            nodes: Vec::new(),
            nets: Vec::new(),
            controllers,
            sim,
            cp,
            client,
            identities: Vec::new(),
            mic_sp_secret,
            env_file,
            tag,
            dir,
        };
        sandbox.start_nodes(&tools, &images).await?;
        Ok(sandbox)
    }

    async fn start_nodes(&mut self, tools: &NodeTools, images: &[PathBuf]) -> Result<(), Error> {
        let step = "kubelet nodes";
        let sub = self.sim.subscription_id().to_owned();
        let rg = format!("azure:///subscriptions/{sub}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute");
        let specs = [
            (
                format!("{VMSS}000000"),
                format!("{rg}/virtualMachineScaleSets/{VMSS}/virtualMachines/0"),
                NodeRef::vmss_instance(VMSS, 0),
                246,
            ),
            (VM.to_owned(), format!("{rg}/virtualMachines/{VM}"), NodeRef::vm(VM), 247),
        ];
        let api: SocketAddr =
            self.cp.server_url().trim_start_matches("https://").parse().map_err(|e| fail(step)(format!("{e}")))?;
        for (name, provider_id, node_ref, octet) in specs {
            let net = NetNode::create_with_pod_range(octet).map_err(|e| fail(step)(e.to_string()))?;
            let listener = net.imds_listener().map_err(|e| fail(step)(e.to_string()))?;
            let imds = self
                .sim
                .serve_imds(listener, node_ref.in_resource_group(RESOURCE_GROUP))
                .map_err(|e| fail(step)(e.to_string()))?;
            self.relay_cloud(&net, api).map_err(fail(step))?;
            let place = NodePlace {
                name: name.clone(),
                provider_id,
                netns: net.ns.name().to_owned(),
                node_ip: Ipv4Addr::new(10, octet, 0, 1),
                pod_subnet: format!("10.{octet}.128.0/24"),
                apiserver: api,
            };
            let node = KubeletNode::start(&self.cp, tools, &place).map_err(fail(step))?;
            for image in images {
                node.import(image).map_err(fail(step))?;
            }
            println!("sandbox: node {name}: kubelet + containerd in netns {}, images imported", net.ns.name());
            self.nets.push((net, imds));
            self.nodes.push(node);
        }
        self.wait_nodes_ready().await
    }

    /// The API server at its own address, ARM and Azure AD at the cloud IP, inside a node.
    fn relay_cloud(&self, net: &NetNode, api: SocketAddr) -> Result<(), String> {
        let ns = net.ns.name();
        crate::node::ip_addr_add(ns, CLOUD_IP)?;
        net.ns.forward(api, api).map_err(|e| format!("relay to the API server: {e}"))?;
        for url in [self.sim.arm_https_url(), self.sim.aad_https_url()] {
            let host: SocketAddr =
                url.trim_start_matches("https://").trim_end_matches('/').parse().map_err(|e| format!("{url}: {e}"))?;
            net.ns
                .forward(SocketAddr::from((CLOUD_IP, host.port())), host)
                .map_err(|e| format!("relay to {url}: {e}"))?;
        }
        Ok(())
    }

    async fn wait_nodes_ready(&self) -> Result<(), Error> {
        let step = "nodes Ready";
        let start = Instant::now();
        loop {
            let nodes = Api::<Node>::all(self.client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| fail(step)(e.to_string()))?;
            let ready = nodes
                .items
                .iter()
                .filter(|n| condition_true(n.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready"))
                .count();
            if ready == self.nodes.len() {
                say("kubectl get nodes");
                print!("{}", self.kubectl(&["get", "nodes", "-o", "wide"]).await.unwrap_or_default());
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(fail(step)(format!("{ready} of {} Ready\n{}", self.nodes.len(), self.log_tails(20))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs real kubectl as the admin.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::from(self.cp.kubectl_command(args));
        cmd.current_dir(self.dir.path()).kill_on_drop(true);
        crate::output(cmd, "kubectl").await
    }

    /// The walkthrough on real nodes: identities, helm install (MIC and NMI pods from the
    /// images), identityconfig, two SDK Deployments each getting only its own identity, and a
    /// deleted pod's replacement getting its identity again.
    pub async fn walkthrough(&mut self) -> Result<(), Error> {
        self.create_identities();
        self.helm_install().await?;
        self.wait_chart_pods().await?;
        self.apply_bindings().await?;
        let mine = self.identities[0].client_id.clone();
        let other = self.identities[1].client_id.clone();
        self.apply_sdk_deployment("myapp", IDENTITY).await?;
        self.apply_sdk_deployment("myotherapp", OTHER_IDENTITY).await?;
        let first = self.wait_token("myapp", &mine).await?;
        self.wait_token("myotherapp", &other).await?;
        say(&format!("kubectl delete pod {first}    # the Deployment replaces it"));
        Api::<Pod>::namespaced(self.client.clone(), POD_NAMESPACE)
            .delete(&first, &DeleteParams::default())
            .await
            .map_err(|e| fail("delete pod")(e.to_string()))?;
        let second = self.wait_token("myapp", &mine).await?;
        if second == first {
            return Err(fail("pod recreated")(format!("{first} was not replaced")));
        }
        self.wait_token("myotherapp", &other).await?;
        self.wait_unassigned(&first).await?;
        say("kubectl get azureassignedidentities -A");
        print!(
            "{}",
            self.kubectl(&["get", "azureassignedidentities", "-A"]).await.map_err(fail("assigned identities"))?
        );
        Ok(())
    }

    /// Waits until MIC removed the deleted pod's AzureAssignedIdentity.
    async fn wait_unassigned(&self, pod: &str) -> Result<(), Error> {
        let step = format!("MIC removes pod {pod}'s assignment");
        let api = Api::<aadpodid_api::AzureAssignedIdentity>::all(self.client.clone());
        let start = Instant::now();
        loop {
            let all = api.list(&ListParams::default()).await.map_err(|e| fail(&step)(e.to_string()))?;
            if !all.items.iter().any(|a| a.spec.pod.as_deref() == Some(pod)) {
                println!("pod {pod}: its AzureAssignedIdentity is gone");
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(fail(&step)(format!("still there\n{}", self.log_tails(20))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn create_identities(&mut self) {
        for name in [IDENTITY, OTHER_IDENTITY] {
            say(&format!("az identity create -g {RESOURCE_GROUP} -n {name} -o json"));
            let info = self.sim.create_user_assigned_identity(RESOURCE_GROUP, name);
            println!("{}", serde_json::to_string_pretty(&info.az_json()).unwrap_or_default());
            self.identities.push(info);
        }
    }

    async fn helm_install(&self) -> Result<(), Error> {
        let step = "helm install";
        let values = json!({
            "adminsecret": {
                "cloud": "AzureStackCloud", "subscriptionID": self.sim.subscription_id(),
                "resourceGroup": RESOURCE_GROUP, "vmType": "vmss", "tenantID": self.sim.tenant_id(),
                "clientID": MIC_SP_CLIENT_ID, "clientSecret": self.mic_sp_secret,
            },
            "mic": {"customCloud": {"enabled": true, "configPath": self.env_file}},
            "nmi": {"kubeletConfig": self.dir.path().join("kubelet-config")},
        });
        let values_path = self.dir.path().join("values.yaml");
        crate::write_private(&values_path, &values.to_string()).map_err(fail(step))?;
        let repo = format!("image.repository={SANDBOX_REPOSITORY}");
        let args = ["install", RELEASE, CHART, "--namespace", NAMESPACE, "--create-namespace", "-f"];
        say(&format!("helm {} values.yaml --set {repo}", args.join(" ")));
        note(
            "values: the simulator's tenant, subscription and service principal; its cloud environment file (ARM and Azure AD at the cloud IP)",
        );
        let helm_home = self.dir.path().join("helm");
        let mut cmd = tokio::process::Command::new(&self.cp.tools().helm);
        cmd.arg("--kubeconfig").arg(self.cp.kubeconfig_path()).args(args).arg(&values_path).args(["--set", &repo]);
        cmd.current_dir(repo_root())
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"));
        cmd.env("HELM_DATA_HOME", helm_home.join("data")).stdin(std::process::Stdio::null()).kill_on_drop(true);
        print!("{}", crate::output(cmd, "helm").await.map_err(fail(step))?);
        Ok(())
    }

    /// Waits for NMI on every node and every MIC replica to run.
    async fn wait_chart_pods(&self) -> Result<(), Error> {
        let step = "MIC and NMI pods";
        let start = Instant::now();
        let want = self.nodes.len() + 2;
        loop {
            let pods = self.pods(NAMESPACE, "app.kubernetes.io/instance=pod-identity").await.map_err(fail(step))?;
            let running = pods.iter().filter(|p| pod_running(p)).count();
            if running >= want {
                say(&format!("kubectl get pods -n {NAMESPACE} -o wide"));
                print!("{}", self.kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "wide"]).await.unwrap_or_default());
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                let listing = self.kubectl(&["get", "pods", "-A", "-o", "wide"]).await.unwrap_or_default();
                return Err(fail(step)(format!("{running} of {want} running\n{listing}\n{}", self.log_tails(30))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>, String> {
        let lp = ListParams::default().labels(selector);
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace).list(&lp).await.map_err(|e| e.to_string())?.items)
    }

    /// examples/identityconfig with myidentity's IDs, and the same pair for the other identity.
    async fn apply_bindings(&self) -> Result<(), Error> {
        let step = "kubectl apply -f identityconfig/";
        let dst = self.dir.path().join("identityconfig");
        std::fs::create_dir_all(&dst).map_err(|e| fail(step)(e.to_string()))?;
        let src = repo_root().join("examples/identityconfig");
        for entry in std::fs::read_dir(&src).map_err(|e| fail(step)(e.to_string()))?.flatten() {
            let text = std::fs::read_to_string(entry.path()).map_err(|e| fail(step)(e.to_string()))?;
            let (mine, other) = (
                with_identity(&text, &self.identities[0], IDENTITY),
                with_identity(&text, &self.identities[1], OTHER_IDENTITY),
            );
            let name = entry.file_name().to_string_lossy().into_owned();
            std::fs::write(dst.join(&name), mine).map_err(|e| fail(step)(e.to_string()))?;
            std::fs::write(dst.join(format!("other-{name}")), other).map_err(|e| fail(step)(e.to_string()))?;
        }
        say(&format!(
            "kubectl apply -f identityconfig/ -n {NAMESPACE}    # examples/identityconfig, for {IDENTITY} and {OTHER_IDENTITY}"
        ));
        print!("{}", self.kubectl(&["apply", "-f", "identityconfig/", "-n", NAMESPACE]).await.map_err(fail(step))?);
        Ok(())
    }

    async fn apply_sdk_deployment(&self, name: &str, selector: &str) -> Result<(), Error> {
        let step = format!("Deployment {name}");
        let image = format!("localhost/aadpodid/sdk-python:{}", self.tag);
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": POD_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name, "aadpodidbinding": selector}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "sdk", "image": image, "imagePullPolicy": "IfNotPresent",
                        "args": ["-c", SDK_LOOP, TOKEN_SCOPE],
                    }]},
                },
            },
        });
        let file = format!("{name}.json");
        std::fs::write(self.dir.path().join(&file), deployment.to_string()).map_err(|e| fail(&step)(e.to_string()))?;
        say(&format!(
            "kubectl apply -f {file}    # a Deployment labelled aadpodidbinding: {selector}, python3 azure-identity in {image}"
        ));
        print!("{}", self.kubectl(&["apply", "-f", &file]).await.map_err(fail(&step))?);
        Ok(())
    }

    /// Waits until the running pod of Deployment `app` printed a token for `client_id`; fails
    /// at once on a token for any other identity. The pod's name.
    async fn wait_token(&self, app: &str, client_id: &str) -> Result<String, Error> {
        let step = format!("token in a pod of {app}");
        let start = Instant::now();
        let mut last = String::from("no running pod yet");
        loop {
            let pods = self.pods(POD_NAMESPACE, &format!("app={app}")).await.map_err(fail(&step))?;
            for pod in pods.iter().filter(|p| pod_running(p) && p.metadata.deletion_timestamp.is_none()) {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match self.sdk_result(pod) {
                    Some(SdkResult::Token { appid }) if appid == client_id => {
                        println!("pod {name} on {}: token for appid {appid}", pod_node(pod));
                        return Ok(name);
                    }
                    Some(SdkResult::Token { appid }) => {
                        return Err(fail(&step)(format!("pod {name} got a token for {appid}, not {client_id}")));
                    }
                    Some(SdkResult::Failed(e)) => last = format!("{name}: {e}"),
                    None => last = format!("{name}: no output yet"),
                }
            }
            if start.elapsed() > DEADLINE {
                return Err(fail(&step)(format!("{last}\n{}", self.log_tails(30))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last line the pod's SDK printed.
    pub fn sdk_result(&self, pod: &Pod) -> Option<SdkResult> {
        let node = self.nodes.iter().find(|n| n.name == pod_node(pod))?;
        let name = pod.metadata.name.as_deref()?;
        let log = node.pod_log(POD_NAMESPACE, name, "sdk");
        parse_sdk_line(log.lines().rev().find(|l| l.contains(" stdout "))?)
    }

    /// Logs of the nodes, the controllers and the chart's pods, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = self.controllers.log_tails(lines);
        for node in &self.nodes {
            s += &node.log_tails(lines);
            for (pod, container) in [("aad-pod-identity-nmi", "nmi"), ("aad-pod-identity-mic", "mic")] {
                let log = node.pod_logs_matching(&format!("{NAMESPACE}_{pod}-"), container);
                s += &format!("== {container} pods on {} ==\n{}\n", node.name, head_and_tail(&log, lines));
            }
        }
        s
    }

    /// Everything to try while it stays up.
    pub fn stay_up_help(&self) -> String {
        format!(
            "\nThe sandbox (kubelet nodes) is up; Ctrl-C stops it.\n  kubeconfig: {}\n  kubectl:    {}\n  directory:  {}\n",
            self.cp.kubeconfig_path().display(),
            self.cp.tools().kubectl.display(),
            self.dir.path().display()
        )
    }
}

/// `kubectl logs` has no way in (the kubelets listen inside their nodes), so the lines come
/// from the kubelet's log files: `<time> stdout F <json>`.
pub fn parse_sdk_line(line: &str) -> Option<SdkResult> {
    let v: Value = serde_json::from_str(line.splitn(4, ' ').nth(3)?).ok()?;
    match v["ok"].as_bool()? {
        true => Some(SdkResult::Token { appid: v["appid"].as_str()?.to_owned() }),
        false => Some(SdkResult::Failed(v["error"].as_str().unwrap_or_default().to_owned())),
    }
}

fn with_identity(text: &str, id: &IdentityInfo, name: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("ResourceID:") {
                format!("  ResourceID: {}", id.id)
            } else if t.starts_with("ClientID:") {
                format!("  ClientID: {}", id.client_id)
            } else {
                l.replace(IDENTITY, name)
            }
        })
        .map(|l| l + "\n")
        .collect()
}

fn pod_node(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

fn pod_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn condition_true(conditions: Option<&Vec<k8s_openapi::api::core::v1::NodeCondition>>, kind: &str) -> bool {
    conditions.into_iter().flatten().any(|c| c.type_ == kind && c.status == "True")
}

/// The autorest environment file with ARM and Azure AD at the cloud IP (world-readable: MIC
/// runs as 65532 and reads it through a hostPath volume).
fn write_cloud_environment(sim: &RunningSim, dir: &Path) -> Result<PathBuf, String> {
    let port = |url: String| -> Result<u16, String> {
        url.trim_start_matches("https://")
            .trim_end_matches('/')
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .map_err(|e| format!("{url}: {e}"))
    };
    let arm = format!("https://{CLOUD_IP}:{}", port(sim.arm_https_url())?);
    let aad = format!("https://{CLOUD_IP}:{}/", port(sim.aad_https_url())?);
    let doc = aadpodid_azure_sim::envfile::azure_stack_environment(&arm, &aad);
    let path = dir.join("akscustom.json");
    std::fs::write(&path, doc.to_string()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// The archives to import: pause and the SDK as built; MIC and NMI with the simulator's CA
/// added to their bundle, as `docker.io/aadpodid-sandbox/<name>:<tag>`.
fn sandbox_images(archives: &[PathBuf], sim: &RunningSim, dir: &Path, tag: &str) -> Result<Vec<PathBuf>, String> {
    let bundle_path = "etc/ssl/certs/ca-certificates.crt";
    let ca = std::fs::read_to_string(sim.ca_cert_pem_path()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for archive in archives {
        let name = archive.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if name == "mic" || name == "nmi" {
            let bundle = crate::oci::Archive::open(archive)?.read_file(bundle_path)?;
            let derived = dir.join(format!("{name}-sandbox.tar"));
            let reference = format!("docker.io/{SANDBOX_REPOSITORY}/{name}:{tag}");
            let contents = [bundle.as_slice(), b"\n", ca.as_bytes()].concat();
            crate::oci::derive_with_file(archive, &derived, &reference, bundle_path, &contents)?;
            out.push(derived);
        } else {
            out.push(archive.clone());
        }
    }
    Ok(out)
}

/// The first lines of a log (how the process started) and its last `lines`, without repeats.
fn head_and_tail(log: &str, lines: usize) -> String {
    const HEAD: usize = 15;
    let all: Vec<&str> = log.lines().collect();
    if all.len() <= HEAD + lines {
        return all.join("\n");
    }
    let skipped = all.len() - HEAD - lines;
    format!("{}\n[… {skipped} lines …]\n{}", all[..HEAD].join("\n"), all[all.len() - lines..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_lines_parse_from_kubelet_logs() {
        let ok = r#"2026-01-01T00:00:00.1Z stdout F {"ok": true, "appid": "a1", "oid": "o", "aud": "x"}"#;
        assert_eq!(parse_sdk_line(ok), Some(SdkResult::Token { appid: "a1".to_owned() }));
        let err = r#"2026-01-01T00:00:00.1Z stdout F {"ok": false, "error": "no identity"}"#;
        assert_eq!(parse_sdk_line(err), Some(SdkResult::Failed("no identity".to_owned())));
        assert_eq!(parse_sdk_line("2026-01-01T00:00:00.1Z stderr F Traceback"), None);
    }
}
