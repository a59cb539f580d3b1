//! Shared pieces of MIC's integration tests: a real apiserver (testkit), the Azure simulator,
//! MIC running in-process with its own flags, and polling helpers (no fixed sleeps).

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aadpodid_api::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
};
use aadpodid_azure_sim::{IdentityInfo, RunningSim, SimConfig, Simulator};
use aadpodid_mic::Env;
use clap::Parser;
use k8s_openapi::api::core::v1::{Container, Namespace, Node, NodeSpec, Pod, PodSpec};
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

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("aadpodid_mic=info,aadpodid_azure=info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let cp = aadpodid_testkit::shared();
        let client = cp.client();
        aadpodid_testkit::install_crds(&client).await.expect("install CRDs");
        reset(&client).await;
        let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
        sim.register_service_principal_secret("mic-sp-client", "mic-sp-secret");
        let env_file = sim.write_azure_stack_environment(true).expect("environment file");
        let azure_json = sim.state_dir().join("azure.json");
        let cfg = serde_json::json!({
            "cloud": "AzureStackCloud", "tenantId": sim.tenant_id(), "subscriptionId": sim.subscription_id(),
            "aadClientId": "mic-sp-client", "aadClientSecret": "mic-sp-secret",
            "resourceGroup": RG, "vmType": "vmss",
        });
        std::fs::write(&azure_json, cfg.to_string()).expect("azure.json");
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

    /// MIC's command line for this world; `instance` names the replica.
    pub fn args(&self, instance: &str, extra: &[&str]) -> aadpodid_mic::args::Args {
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
        aadpodid_mic::args::Args::try_parse_from(argv).expect("MIC flags")
    }

    /// Starts MIC in this process with its own clients and tasks.
    pub fn start_mic(&self, instance: &str, extra: &[&str]) -> Mic {
        let args = self.args(instance, extra);
        let ports = (args.http_probe_port, args.prometheus_port);
        let env = Env {
            vars: BTreeMap::from([
                ("MIC_POD_NAMESPACE".to_owned(), "default".to_owned()),
                ("AZURE_ENVIRONMENT_FILEPATH".to_owned(), self.env_file.display().to_string()),
            ]),
        };
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
        let id = AzureIdentity {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(self.ns.clone()), ..Default::default() },
            spec: AzureIdentitySpec {
                type_: Some(0),
                resource_id: Some(info.id.clone()),
                client_id: Some(info.client_id.clone()),
                ..Default::default()
            },
            status: None,
        };
        Api::<AzureIdentity>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &id)
            .await
            .expect("create AzureIdentity");
        info
    }

    pub async fn binding(&self, name: &str, identity: &str, selector: &str) {
        let b = AzureIdentityBinding {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(self.ns.clone()), ..Default::default() },
            spec: AzureIdentityBindingSpec {
                azure_identity: Some(identity.into()),
                selector: Some(selector.into()),
                ..Default::default()
            },
            status: None,
        };
        Api::<AzureIdentityBinding>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &b)
            .await
            .expect("create AzureIdentityBinding");
    }

    pub async fn pod(&self, name: &str, node: &str, selector: &str) {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.ns.clone()),
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
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }

    pub async fn delete_pod(&self, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .expect("delete pod");
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
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
