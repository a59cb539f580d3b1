//! The cluster and Azure a MIC benchmark size runs in: a private apiserver, one simulator with the
//! plan's scale sets and identities, the nodes; per run the identities, bindings and pods, the
//! watch that times convergence, and the clean-up that gives the next run a fresh state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aadpodid_api::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
};
use aadpodid_azure_sim::{Counters, IdentityInfo, RunningSim, SimConfig, Simulator};
use aadpodid_testkit::ControlPlane;
use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Container, Event as KubeEvent, Namespace, Node, NodeSpec, Pod, PodSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;

use super::plan::{ARM_TIMING, Plan};
use super::process::Files;

/// Resource group of the nodes' VMs and scale sets (azure.json `resourceGroup`).
const NODE_RG: &str = "node-rg";
/// Resource group of the user-assigned identities.
const ID_RG: &str = "bench-id-rg";
/// Namespace of the pods, identities and bindings.
pub(super) const NS: &str = "mic-bench";
/// Where both MICs put AzureAssignedIdentities (not namespaced mode).
const ASSIGNED_NS: &str = "default";
/// Concurrent API requests when creating or cleaning up objects.
const CONCURRENCY: usize = 32;
const SP_CLIENT: &str = "mic-bench-sp";
const SP_SECRET: &str = "mic-bench-secret";

/// One size's apiserver, simulator and files.
pub(super) struct World {
    pub(super) plan: Plan,
    // Field order is drop order: the simulator and files go before the apiserver.
    pub(super) sim: RunningSim,
    pub(super) files: Files,
    identities: Vec<IdentityInfo>,
    pub(super) client: Client,
    _log_dir: tempfile::TempDir,
    _cp: ControlPlane,
}

impl World {
    /// A private apiserver with the CRDs and the plan's nodes, and a simulator with its scale
    /// sets and identities and the ARM timing of [`ARM_TIMING`].
    pub(super) async fn new(plan: Plan) -> anyhow::Result<Self> {
        let cp = ControlPlane::start().await.context("starting kube-apiserver")?;
        let client = cp.client();
        aadpodid_testkit::install_crds(&client).await.context("installing CRDs")?;
        let cfg = SimConfig { arm_latency: ARM_TIMING.latency, lro_duration: ARM_TIMING.lro, ..SimConfig::default() };
        let sim = Simulator::start(cfg).await.context("starting the Azure simulator")?;
        sim.register_service_principal_secret(SP_CLIENT, SP_SECRET);
        let env_file = sim.write_azure_stack_environment(true)?;
        let azure_json = sim.state_dir().join("azure.json");
        let azure = serde_json::json!({
            "cloud": "AzureStackCloud", "tenantId": sim.tenant_id(), "subscriptionId": sim.subscription_id(),
            "aadClientId": SP_CLIENT, "aadClientSecret": SP_SECRET, "resourceGroup": NODE_RG, "vmType": "vmss",
        });
        std::fs::write(&azure_json, azure.to_string()).context("writing azure.json")?;
        let log_dir = tempfile::Builder::new().prefix("mic-bench-").tempdir()?;
        let files = Files {
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            azure_json,
            env_file,
            ca_pem: sim.ca_cert_pem_path().to_path_buf(),
            log_dir: log_dir.path().to_path_buf(),
        };
        let identities =
            (0..plan.identities).map(|j| sim.create_user_assigned_identity(ID_RG, &format!("bench-id-{j}"))).collect();
        let world = Self { plan, sim, files, identities, client, _log_dir: log_dir, _cp: cp };
        world.create_nodes().await?;
        let nsobj = Namespace { metadata: named(NS), ..Default::default() };
        Api::<Namespace>::all(world.client.clone()).create(&PostParams::default(), &nsobj).await?;
        Ok(world)
    }

    async fn create_nodes(&self) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let sub = self.sim.subscription_id().to_owned();
        let nodes = (0..self.plan.nodes()).map(|n| {
            let (s, i) = self.plan.node_slot(n);
            let provider = format!(
                "azure:///subscriptions/{sub}/resourceGroups/{NODE_RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/{i}",
                self.plan.scale_set(s)
            );
            Node {
                metadata: named(&self.plan.node_name(n)),
                spec: Some(NodeSpec { provider_id: Some(provider), ..Default::default() }),
                status: None,
            }
        });
        for_each_concurrent(nodes, |node| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &node).await.map(drop) }
        })
        .await
        .context("creating nodes")
    }

    /// A fresh Azure state for a run: scale sets without identities, no faults, zero counters.
    pub(super) fn reset_azure(&self) {
        self.sim.clear_faults();
        for s in 0..self.plan.scale_sets {
            let name = self.plan.scale_set(s);
            self.sim.delete_vmss(NODE_RG, &name);
            self.sim.create_vmss(NODE_RG, &name, self.plan.nodes_per_scale_set as u32);
        }
        self.sim.reset_counters();
    }

    /// One AzureIdentity (type 0) and one binding (selector `sel-<j>`) per identity.
    pub(super) async fn create_identities_and_bindings(&self) -> anyhow::Result<()> {
        let ids: Api<AzureIdentity> = Api::namespaced(self.client.clone(), NS);
        let bindings: Api<AzureIdentityBinding> = Api::namespaced(self.client.clone(), NS);
        for_each_concurrent(self.identities.iter().enumerate(), |(j, info)| {
            let (ids, bindings) = (ids.clone(), bindings.clone());
            let id = AzureIdentity {
                metadata: named_in(&format!("id-{j}"), NS),
                spec: AzureIdentitySpec {
                    type_: Some(0),
                    resource_id: Some(info.id.clone()),
                    client_id: Some(info.client_id.clone()),
                    ..Default::default()
                },
                status: None,
            };
            let binding = AzureIdentityBinding {
                metadata: named_in(&format!("binding-{j}"), NS),
                spec: AzureIdentityBindingSpec {
                    azure_identity: Some(format!("id-{j}")),
                    selector: Some(format!("sel-{j}")),
                    ..Default::default()
                },
                status: None,
            };
            async move {
                ids.create(&PostParams::default(), &id).await?;
                bindings.create(&PostParams::default(), &binding).await.map(drop)
            }
        })
        .await
        .context("creating identities and bindings")
    }

    /// Creates every pod of the plan (on its node, labelled for its identity's binding).
    pub(super) async fn create_pods(&self) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let pods = (0..self.plan.pods).map(|p| Pod {
            metadata: ObjectMeta {
                labels: Some([("aadpodidbinding".to_owned(), format!("sel-{}", self.plan.identity_of(p)))].into()),
                ..named_in(&format!("pod-{p}"), NS)
            },
            spec: Some(PodSpec {
                node_name: Some(self.plan.node_name(self.plan.node_of(p))),
                containers: vec![Container { name: "app".into(), image: Some("app".into()), ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        });
        for_each_concurrent(pods, |pod| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod).await.map(drop) }
        })
        .await
        .context("creating pods")
    }

    /// Removes every pod, assigned identity (finalizers stripped), binding, identity and event a
    /// run left, and waits until they are gone. The MIC must be stopped first.
    pub(super) async fn clean(&self) -> anyhow::Result<()> {
        let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        let lp = ListParams::default();
        Api::<Pod>::namespaced(self.client.clone(), NS).delete_collection(&dp, &lp).await?;
        let assigned: Api<AzureAssignedIdentity> = Api::namespaced(self.client.clone(), ASSIGNED_NS);
        let with_finalizers = assigned.list(&lp).await?.items.into_iter().filter(|a| !a.finalizers().is_empty());
        let strip = serde_json::json!({"metadata": {"finalizers": null}});
        for_each_concurrent(with_finalizers, |a| {
            let (assigned, strip) = (assigned.clone(), &strip);
            async move {
                let patched = assigned.patch(&a.name_any(), &PatchParams::default(), &Patch::Merge(strip)).await;
                patched.map(drop).or_else(ignore_not_found)
            }
        })
        .await?;
        assigned.delete_collection(&dp, &lp).await?;
        Api::<AzureIdentityBinding>::namespaced(self.client.clone(), NS).delete_collection(&dp, &lp).await?;
        Api::<AzureIdentity>::namespaced(self.client.clone(), NS).delete_collection(&dp, &lp).await?;
        Api::<KubeEvent>::namespaced(self.client.clone(), NS).delete_collection(&dp, &lp).await?;
        let start = Instant::now();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        while !(assigned.list_metadata(&lp).await?.items.is_empty() && pods.list_metadata(&lp).await?.items.is_empty())
        {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "clean-up did not finish within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Starts watching AzureAssignedIdentities; the receiver holds how many are `Assigned`. Returns
    /// once the initial list is in, so no event of the run is missed.
    pub(super) async fn watch_assigned(&self) -> anyhow::Result<(watch::Receiver<usize>, AbortOnDrop)> {
        let api: Api<AzureAssignedIdentity> = Api::namespaced(self.client.clone(), ASSIGNED_NS);
        let (tx, rx) = watch::channel(0usize);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut status: HashMap<String, bool> = HashMap::new();
            let mut ready = Some(ready_tx);
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a)) => {
                        status.insert(a.name_any(), is_assigned(&a));
                    }
                    Ok(watcher::Event::Delete(a)) => {
                        status.remove(&a.name_any());
                    }
                    Ok(watcher::Event::Init) => status.clear(),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Err(e) => eprintln!("bench mic: AzureAssignedIdentity watch error: {e}"),
                }
                let _ = tx.send(status.values().filter(|&&a| a).count());
            }
        });
        let task = AbortOnDrop(task);
        tokio::time::timeout(Duration::from_secs(30), ready_rx).await.context("watch not started")??;
        Ok((rx, task))
    }

    /// API-server writes (POST/PUT/PATCH/DELETE) on AzureAssignedIdentities so far, from the
    /// apiserver's own `apiserver_request_total`.
    pub(super) async fn assigned_writes(&self) -> anyhow::Result<u64> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.client.request_text(req).await?;
        Ok(count_writes(&text, "azureassignedidentities"))
    }

    /// A snapshot of the simulator's counters.
    pub(super) fn counters(&self) -> Counters {
        self.sim.counters()
    }
}

/// A spawned task that ends with its owner, also when a run fails half-way.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_assigned(a: &AzureAssignedIdentity) -> bool {
    a.status.as_ref().and_then(|s| s.status.as_deref()) == Some("Assigned")
}

/// Sums `apiserver_request_total` samples of write verbs on `resource`.
pub(super) fn count_writes(metrics: &str, resource: &str) -> u64 {
    let needle = format!("resource=\"{resource}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains(&needle))
        .filter(|l| ["POST", "PUT", "PATCH", "DELETE"].iter().any(|v| l.contains(&format!("verb=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        _ => Err(e),
    }
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), ..Default::default() }
}

fn named_in(name: &str, ns: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), namespace: Some(ns.to_owned()), ..Default::default() }
}

/// Runs `f` over `items`, [`CONCURRENCY`] at a time; the first error wins.
async fn for_each_concurrent<I, F, Fut>(items: I, f: F) -> Result<(), kube::Error>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    futures::stream::iter(items).map(f).buffer_unordered(CONCURRENCY).try_collect::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_write_verbs_of_the_resource() {
        let metrics = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",group="aadpodidentity.k8s.io",resource="azureassignedidentities",scope="resource",subresource="",verb="POST",version="v1"} 100
apiserver_request_total{code="200",component="apiserver",group="aadpodidentity.k8s.io",resource="azureassignedidentities",scope="resource",subresource="",verb="PATCH",version="v1"} 98
apiserver_request_total{code="409",component="apiserver",group="aadpodidentity.k8s.io",resource="azureassignedidentities",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",group="aadpodidentity.k8s.io",resource="azureassignedidentities",scope="cluster",subresource="",verb="LIST",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 100
"#;
        assert_eq!(count_writes(metrics, "azureassignedidentities"), 200);
        assert_eq!(count_writes(metrics, "pods"), 100);
        assert_eq!(count_writes(metrics, "nodes"), 0);
    }
}
