//! Shared pieces of MIC's integration tests: a real apiserver (testkit), the Azure simulator,
//! MIC running in-process with its own flags, and polling helpers (no fixed sleeps).

#![allow(dead_code, unreachable_pub)]

pub mod relay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aadpodid_api::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
};
use aadpodid_azure_sim::{IdentityInfo, RunningSim, SimConfig, Simulator};
use aadpodid_mic::Env;
use clap::Parser;
use k8s_openapi::api::core::v1::{Container, Event, Namespace, Node, NodeSpec, Pod, PodSpec};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use tokio::sync::{Mutex, MutexGuard, oneshot};

pub const RG: &str = "node-rg";
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Tests in one binary share one apiserver; MIC watches every namespace, so they run one at a time.
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

pub use aadpodid_testkit::eventually;

/// The apiserver, the simulator and the files MIC reads.
pub struct World {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub sim: RunningSim,
    pub azure_json: PathBuf,
    pub env_file: PathBuf,
    pub ns: String,
    pub tag: String,
}

impl World {
    /// A clean cluster state (no leftovers of earlier tests), a fresh simulator, a namespace.
    pub async fn new(tag: &str) -> World {
        Self::new_on(aadpodid_testkit::shared(), tag).await
    }

    /// [`World::new`] on a given control plane.
    pub async fn new_on(cp: &aadpodid_testkit::ControlPlane, tag: &str) -> World {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("aadpodid_mic=info,aadpodid_azure=info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let client = cp.client();
        aadpodid_testkit::install_crds(&client).await.expect("install CRDs");
        reset(&client).await;
        let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
        sim.register_service_principal_secret("mic-sp-client", "mic-sp-secret");
        let env_file = sim.write_azure_stack_environment(true).expect("environment file");
        let azure_json = write_azure_json(&sim, "mic-sp-client", "mic-sp-secret");
        let ns = format!("mic-{tag}");
        let nsapi: Api<Namespace> = Api::all(client.clone());
        let nsobj =
            Namespace { metadata: ObjectMeta { name: Some(ns.clone()), ..Default::default() }, ..Default::default() };
        let _ = nsapi.create(&PostParams::default(), &nsobj).await;
        World {
            client,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            sim,
            azure_json,
            env_file,
            ns,
            tag: tag.to_owned(),
        }
    }

    /// Names `client_id` as the cluster identity (`userAssignedIdentityID`) in azure.json; the
    /// credential stays the service principal.
    pub fn set_cluster_identity(&self, client_id: &str) {
        let text = std::fs::read_to_string(&self.azure_json).expect("read azure.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&text).expect("azure.json is JSON");
        cfg["userAssignedIdentityID"] = serde_json::Value::from(client_id);
        std::fs::write(&self.azure_json, cfg.to_string()).expect("write azure.json");
    }

    /// MIC's command line for this world; `instance` names the replica.
    pub fn args(&self, instance: &str, extra: &[&str]) -> aadpodid_mic::args::Args {
        aadpodid_mic::args::Args::try_parse_from(self.argv(instance, extra)).expect("MIC flags")
    }

    /// The environment MIC needs in this world.
    pub fn env_vars(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("MIC_POD_NAMESPACE".to_owned(), "default".to_owned()),
            ("AZURE_ENVIRONMENT_FILEPATH".to_owned(), self.env_file.display().to_string()),
        ])
    }

    /// A service principal of its own for one replica, registered in the simulator, and the
    /// azure.json naming it: the simulator then counts that replica's ARM calls apart.
    pub fn own_credential(&self, client_id: &str) -> PathBuf {
        let secret = format!("{client_id}-secret");
        self.sim.register_service_principal_secret(client_id, &secret);
        write_azure_json(&self.sim, client_id, &secret)
    }

    /// A copy of the kubeconfig that reaches the API server through `addr` (e.g. a relay).
    pub fn kubeconfig_via(&self, addr: std::net::SocketAddr) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("read kubeconfig");
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().trim_matches('"').to_owned())
            .expect("server in kubeconfig");
        let path = self.sim.state_dir().join(format!("kubeconfig-{}", addr.port()));
        std::fs::write(&path, text.replace(&server, &format!("https://{addr}"))).expect("write kubeconfig");
        path
    }

    /// [`World::argv`] with another kubeconfig and cloud config.
    pub fn argv_with(
        &self,
        instance: &str,
        kubeconfig: &std::path::Path,
        azure_json: &std::path::Path,
        extra: &[&str],
    ) -> Vec<String> {
        let mut argv = self.argv(instance, extra);
        argv[1] = format!("--kubeconfig={}", kubeconfig.display());
        argv[2] = format!("--cloudconfig={}", azure_json.display());
        argv
    }

    /// MIC's command line (program name first), for the binary or [`World::args`].
    pub fn argv(&self, instance: &str, extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "mic".into(),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--cloudconfig={}", self.azure_json.display()),
            format!("--extra-root-ca-file={}", self.sim.ca_cert_pem_path().display()),
            format!("--leader-election-name=mic-{}", self.tag),
            format!("--leader-election-instance={instance}"),
            "--leader-election-duration=4s".into(),
            format!("--http-probe-port={}", free_port()),
            format!("--prometheus-port={}", free_port()),
            "--arm-poll-interval=100ms".into(),
        ];
        if !extra.iter().any(|e| e.starts_with("--enable-type-upgrade")) {
            argv.push("--enable-type-upgrade=false".into());
        }
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv
    }

    /// Starts MIC in this process with its own clients and tasks.
    pub fn start_mic(&self, instance: &str, extra: &[&str]) -> Mic {
        Self::start_args(self.args(instance, extra), self.env_vars())
    }

    /// Starts MIC in this process from a full command line (see [`World::argv_with`]).
    pub fn start_mic_argv(&self, argv: Vec<String>) -> Mic {
        let args = aadpodid_mic::args::Args::try_parse_from(argv).expect("MIC flags");
        Self::start_args(args, self.env_vars())
    }

    fn start_args(args: aadpodid_mic::args::Args, vars: BTreeMap<String, String>) -> Mic {
        let ports = (args.http_probe_port, args.prometheus_port);
        let env = Env { vars };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(aadpodid_mic::run_until(args, env, async move {
            let _ = stop_rx.await;
        }));
        Mic { task, stop: Some(stop_tx), probe_port: ports.0, metrics_port: ports.1 }
    }

    pub fn vmss_provider_id(&self, vmss: &str, i: u32) -> String {
        format!(
            "azure:///subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/{i}",
            self.sim.subscription_id()
        )
    }

    pub fn vm_provider_id(&self, vm: &str) -> String {
        format!(
            "azure:///subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{vm}",
            self.sim.subscription_id()
        )
    }

    /// A VMSS in the simulator and one Node per instance (`<vmss>-<i>`).
    pub async fn vmss_nodes(&self, vmss: &str, n: u32) -> Vec<String> {
        self.sim.create_vmss(RG, vmss, n);
        let mut names = Vec::new();
        for i in 0..n {
            let name = format!("{vmss}-{i}");
            create_node(&self.client, &name, &self.vmss_provider_id(vmss, i)).await;
            names.push(name);
        }
        names
    }

    /// A standalone VM in the simulator and its Node (same name).
    pub async fn vm_node(&self, vm: &str) -> String {
        self.sim.create_vm(RG, vm);
        create_node(&self.client, vm, &self.vm_provider_id(vm)).await;
        vm.to_owned()
    }

    /// An Azure identity (type 0) in the simulator and its AzureIdentity in the test namespace.
    pub async fn identity(&self, name: &str) -> IdentityInfo {
        let info = self.sim.create_user_assigned_identity("id-rg", &format!("{}-{name}", self.tag));
        self.identity_in(&self.ns, name, &info.id, &info.client_id).await;
        info
    }

    /// An AzureIdentity (type 0) in `ns` naming any resource and client ID (nothing in the simulator).
    pub async fn identity_in(&self, ns: &str, name: &str, resource_id: &str, client_id: &str) -> AzureIdentity {
        let id = AzureIdentity {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.to_owned()), ..Default::default() },
            spec: AzureIdentitySpec {
                type_: Some(0),
                resource_id: Some(resource_id.to_owned()),
                client_id: Some(client_id.to_owned()),
                ..Default::default()
            },
            status: None,
        };
        Api::<AzureIdentity>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &id)
            .await
            .expect("create AzureIdentity")
    }

    /// A namespace besides the test's own (left in place; `reset` empties it).
    pub async fn namespace(&self, ns: &str) {
        let nsapi: Api<Namespace> = Api::all(self.client.clone());
        let nsobj = Namespace {
            metadata: ObjectMeta { name: Some(ns.to_owned()), ..Default::default() },
            ..Default::default()
        };
        let _ = nsapi.create(&PostParams::default(), &nsobj).await;
    }

    pub async fn binding(&self, name: &str, identity: &str, selector: &str) -> AzureIdentityBinding {
        self.binding_in(&self.ns, name, identity, selector).await
    }

    pub async fn binding_in(&self, ns: &str, name: &str, identity: &str, selector: &str) -> AzureIdentityBinding {
        let b = AzureIdentityBinding {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.to_owned()), ..Default::default() },
            spec: AzureIdentityBindingSpec {
                azure_identity: Some(identity.into()),
                selector: Some(selector.into()),
                ..Default::default()
            },
            status: None,
        };
        Api::<AzureIdentityBinding>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &b)
            .await
            .expect("create AzureIdentityBinding")
    }

    pub async fn pod(&self, name: &str, node: &str, selector: &str) {
        self.pod_in(&self.ns, name, node, selector).await;
    }

    pub async fn pod_in(&self, ns: &str, name: &str, node: &str, selector: &str) -> Pod {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.to_owned()),
                labels: Some([("aadpodidbinding".to_owned(), selector.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container { name: "app".into(), image: Some("app".into()), ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        };
        Api::<Pod>::namespaced(self.client.clone(), ns).create(&PostParams::default(), &pod).await.expect("create pod")
    }

    pub async fn delete_pod(&self, name: &str) {
        self.delete_pod_in(&self.ns, name).await;
    }

    /// Deletes a pod and waits until it is gone.
    pub async fn delete_pod_in(&self, ns: &str, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .expect("delete pod");
        let what = format!("pod {ns}/{name} deleted");
        eventually(&what, DEADLINE, || async { api.get_opt(name).await.ok()?.is_none().then_some(()) }).await;
    }

    /// One AzureAssignedIdentity in `default`, `None` when absent.
    pub async fn assigned_object(&self, name: &str) -> Option<AzureAssignedIdentity> {
        let api: Api<AzureAssignedIdentity> = Api::namespaced(self.client.clone(), "default");
        api.get_opt(name).await.expect("get assigned identity")
    }

    /// Writes the AzureAssignedIdentity MIC writes before its ARM call (status `Created`), in
    /// `default`, as a MIC killed right after that call would leave it.
    pub async fn created_assignment(
        &self,
        pod: &Pod,
        identity: &AzureIdentity,
        binding: &AzureIdentityBinding,
    ) -> String {
        let (pod_name, pod_ns) = (pod.name_any(), pod.namespace().unwrap_or_default());
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let name = format!("{pod_name}-{pod_ns}-{}", identity.name_any());
        let obj: AzureAssignedIdentity = serde_json::from_value(serde_json::json!({
            "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "metadata": {"name": name, "namespace": "default", "labels": {"nodename": node},
                "finalizers": ["azureassignedidentity.finalizers.aadpodidentity.k8s.io"]},
            "spec": {"azureIdentityRef": identity, "azureBindingRef": binding,
                "pod": pod_name, "podNamespace": pod_ns, "nodename": node},
            "status": {"status": "Created", "availableReplicas": 1}
        }))
        .expect("assigned identity");
        Api::<AzureAssignedIdentity>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &obj)
            .await
            .expect("create assigned identity");
        name
    }

    /// Attaches an identity to a VM or scale set through ARM, as MIC's ARM write would.
    pub async fn attach_by_hand(&self, kind: &str, name: &str, resource_id: &str) {
        let url = format!(
            "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/{kind}/{name}?api-version=2019-12-01",
            self.sim.arm_url(),
            self.sim.subscription_id(),
        );
        let token = self.sim.arm_token().expect("arm token");
        let body =
            serde_json::json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {resource_id: {}}}});
        let resp = reqwest::Client::new().patch(url).bearer_auth(token).json(&body).send().await.expect("attach");
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
        eventually("ARM operations done", DEADLINE, || async { self.sim.all_operations_done().then_some(()) }).await;
    }

    /// The events recorded in `ns`.
    pub async fn events_in(&self, ns: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default()
    }

    pub fn assigned_name(&self, pod: &str, identity: &str) -> String {
        format!("{pod}-{}-{identity}", self.ns)
    }

    /// Status of one AzureAssignedIdentity in `default`, `None` when absent.
    pub async fn assigned_status(&self, name: &str) -> Option<String> {
        let api: Api<AzureAssignedIdentity> = Api::namespaced(self.client.clone(), "default");
        let a = api.get_opt(name).await.expect("get assigned identity")?;
        Some(a.status.and_then(|s| s.status).unwrap_or_default())
    }

    /// Every AzureAssignedIdentity for this test's pods.
    pub async fn assigned(&self) -> Vec<AzureAssignedIdentity> {
        let api: Api<AzureAssignedIdentity> = Api::all(self.client.clone());
        let all = api.list(&ListParams::default()).await.expect("list assigned identities");
        all.items.into_iter().filter(|a| a.spec.pod_namespace.as_deref() == Some(self.ns.as_str())).collect()
    }

    pub async fn wait_assigned(&self, name: &str) {
        let what = format!("{name} Assigned");
        eventually(&what, DEADLINE, || async {
            (self.assigned_status(name).await.as_deref() == Some("Assigned")).then_some(())
        })
        .await;
    }

    pub async fn wait_gone(&self, name: &str) {
        let what = format!("{name} deleted");
        eventually(&what, DEADLINE, || async { self.assigned_status(name).await.is_none().then_some(()) }).await;
    }

    /// Detaches every identity from a scale set through ARM, as someone outside MIC would.
    pub async fn detach_all_by_hand(&self, vmss: &str) {
        let url = format!(
            "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}?api-version=2019-12-01",
            self.sim.arm_url(),
            self.sim.subscription_id(),
        );
        let token = self.sim.arm_token().expect("arm token");
        let resp = reqwest::Client::new()
            .patch(url)
            .bearer_auth(token)
            .json(&serde_json::json!({"identity": {"type": "None"}}))
            .send()
            .await
            .expect("manual unassign");
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
        eventually("identities detached by hand", DEADLINE, || async {
            self.sim.vmss_identities(RG, vmss).is_some_and(|i| i.user_ids().is_empty()).then_some(())
        })
        .await;
    }

    pub fn vmss_has(&self, vmss: &str, id: &IdentityInfo) -> bool {
        self.sim.vmss_identities(RG, vmss).is_some_and(|i| i.has_user(&id.id))
    }

    pub fn vm_has(&self, vm: &str, id: &IdentityInfo) -> bool {
        self.sim.vm_identities(RG, vm).is_some_and(|i| i.has_user(&id.id))
    }
}

/// A MIC running in this process.
pub struct Mic {
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
    pub probe_port: u16,
    pub metrics_port: u16,
}

impl Mic {
    /// Kills it abruptly, like a crashed process: nothing is released.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits for it to stop on its own and returns how it ended.
    pub async fn join(mut self) -> anyhow::Result<()> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(anyhow::Error::new(e).context("MIC task")),
        }
    }

    /// Asks it to stop and waits.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        self.task.abort();
    }

    pub async fn healthz(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/healthz", self.probe_port);
        reqwest::get(url).await.ok()?.text().await.ok()
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for Mic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write_azure_json(sim: &RunningSim, client_id: &str, secret: &str) -> PathBuf {
    let path = sim.state_dir().join(format!("azure-{client_id}.json"));
    let cfg = serde_json::json!({
        "cloud": "AzureStackCloud", "tenantId": sim.tenant_id(), "subscriptionId": sim.subscription_id(),
        "aadClientId": client_id, "aadClientSecret": secret,
        "resourceGroup": RG, "vmType": "vmss",
    });
    std::fs::write(&path, cfg.to_string()).expect("azure.json");
    path
}

pub fn free_port() -> u16 {
    aadpodid_testkit::free_port().expect("free port")
}

async fn create_node(client: &Client, name: &str, provider_id: &str) {
    let node = Node {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(NodeSpec { provider_id: Some(provider_id.into()), ..Default::default() }),
        status: None,
    };
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.expect("create node");
}

/// Removes what earlier tests left: labelled pods, nodes, bindings, identities and assigned
/// identities (finalizers stripped). Read as plain JSON: a test may leave objects our types
/// cannot hold.
pub async fn reset(client: &Client) {
    let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    let pods: Api<Pod> = Api::all(client.clone());
    for p in pods.list(&ListParams::default().labels("aadpodidbinding")).await.expect("list pods") {
        let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
        let _ = api.delete(&p.name_any(), &dp).await;
    }
    let aais = raw_all::<AzureAssignedIdentity>(client);
    for a in aais.list(&ListParams::default()).await.expect("list assigned") {
        let api = raw_api::<AzureAssignedIdentity>(client, &a.namespace().unwrap_or_default());
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        let _ = api.patch(&a.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
        let _ = api.delete(&a.name_any(), &dp).await;
    }
    delete_all::<AzureIdentityBinding>(client, &dp).await;
    delete_all::<AzureIdentity>(client, &dp).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete_collection(&dp, &ListParams::default()).await;
}

async fn delete_all<K: kube::Resource<DynamicType = ()>>(client: &Client, dp: &DeleteParams) {
    for o in raw_all::<K>(client).list(&ListParams::default()).await.expect("list") {
        let _ = raw_api::<K>(client, &o.namespace().unwrap_or_default()).delete(&o.name_any(), dp).await;
    }
}

/// One of our kinds in `ns` as plain JSON, to write and read objects our types cannot hold.
pub fn raw_api<K: kube::Resource<DynamicType = ()>>(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()))
}

fn raw_all<K: kube::Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ApiResource::erase::<K>(&()))
}

/// API-server write requests on a resource so far, from the apiserver's own metrics.
pub async fn apiserver_writes(client: &Client, resource: &str) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(req).await.unwrap_or_default();
    let needle = format!("resource=\"{resource}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains(&needle))
        .filter(|l| ["\"POST\"", "\"PUT\"", "\"PATCH\"", "\"DELETE\""].iter().any(|v| l.contains(&format!("verb={v}"))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
