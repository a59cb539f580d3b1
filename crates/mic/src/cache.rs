//! The watch caches MIC decides from: pods (kept as [`PodView`]s), nodes (provider ID only),
//! and the three CRDs it uses (embedded copies in AzureAssignedIdentities trimmed). Every
//! change wakes the loop; nothing here decides or writes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aadpodid_api::names::POD_LABEL_KEY;
use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzureIdentitySpec};
use aadpodid_runtime::decoded::{self, OnUndecodable};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod};
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::act::{PodUids, Written};
use crate::view::{self, AssignedView, BindingView, NodeIndex, PodView};

/// Read handles onto the watch caches.
#[derive(Clone)]
pub struct Caches {
    pub pods: PodStore,
    pub nodes: Store<Node>,
    pub identities: Store<AzureIdentity>,
    pub bindings: Store<AzureIdentityBinding>,
    pub assigned: Store<AzureAssignedIdentity>,
}

/// The watches stopped before every cache had its first full list.
#[derive(Debug, thiserror::Error)]
#[error("a watch stopped before its cache was ready")]
pub struct CachesStopped;

/// MIC's pods: those with the `aadpodidbinding` label that run on a node, as [`PodView`]s by
/// (namespace, name). A view is a few hundred bytes; a cached `Pod`, even stripped, is over
/// 2 KiB, and MIC holds every labelled pod of the cluster.
#[derive(Clone)]
pub struct PodStore {
    pods: Arc<RwLock<PodMap>>,
    ready: watch::Receiver<bool>,
}

type PodMap = BTreeMap<(String, String), PodView>;

impl PodStore {
    /// Every pod, in (namespace, name) order.
    pub fn views(&self) -> Vec<PodView> {
        self.pods.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    async fn wait_until_ready(&self) -> Result<(), CachesStopped> {
        self.ready.clone().wait_for(|ready| *ready).await.map(|_| ()).map_err(|_| CachesStopped)
    }
}

/// Applies watch events to a [`PodStore`]: a relist is collected aside and replaces the store
/// when complete, as kube's reflector does.
struct PodWriter {
    pods: Arc<RwLock<PodMap>>,
    ready: watch::Sender<bool>,
    relist: Option<PodMap>,
}

fn pod_store() -> (PodStore, PodWriter) {
    let pods = Arc::new(RwLock::new(PodMap::new()));
    let (tx, rx) = watch::channel(false);
    (PodStore { pods: Arc::clone(&pods), ready: rx }, PodWriter { pods, ready: tx, relist: None })
}

impl PodWriter {
    fn apply(&mut self, event: &watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist = Some(PodMap::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(relist) = self.relist.as_mut() {
                    upsert(relist, pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take()
                    && let Ok(mut pods) = self.pods.write()
                {
                    *pods = relist;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(pod) => {
                if let Ok(mut pods) = self.pods.write() {
                    upsert(&mut pods, pod);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Ok(mut pods) = self.pods.write() {
                    pods.remove(&pod_key(pod));
                }
            }
        }
    }
}

fn pod_key(pod: &Pod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// A pod that lost its label value or its node is no longer MIC's.
fn upsert(pods: &mut PodMap, pod: &Pod) {
    match view::pod_view(pod) {
        Some(v) => {
            pods.insert(pod_key(pod), v);
        }
        None => {
            pods.remove(&pod_key(pod));
        }
    }
}

/// Keeps only a node's name and provider ID.
pub fn strip_node(node: &mut Node) {
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.clone());
    keep_names_only(&mut node.metadata);
    node.spec = Some(NodeSpec { provider_id, ..Default::default() });
    node.status = None;
}

/// Keeps what MIC reads of an AzureAssignedIdentity: its own metadata (an update keeps it, a
/// deletion edits its finalizers), spec and status, but of the embedded identity and binding
/// only what names them and the identity's type, resource ID and client ID. The copies are
/// most of the object, and MIC holds one object per pod and identity.
pub fn strip_assigned(a: &mut AzureAssignedIdentity) {
    a.metadata.managed_fields = None;
    if let Some(id) = a.spec.azure_identity_ref.as_deref_mut() {
        keep_names_only(&mut id.metadata);
        let spec = std::mem::take(&mut id.spec);
        id.spec = AzureIdentitySpec {
            type_: spec.type_,
            resource_id: spec.resource_id,
            client_id: spec.client_id,
            ..Default::default()
        };
        id.status = None;
    }
    if let Some(b) = a.spec.azure_binding_ref.as_deref_mut() {
        keep_names_only(&mut b.metadata);
        b.spec = Default::default();
        b.status = None;
    }
}

/// What names an object: what events and the decision's `match` read of embedded copies and
/// nodes.
fn keep_names_only(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..Default::default()
    };
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Caches `events`: a typed watch for nodes, [`decoded::watch`] for the custom resources.
fn spawn_watch<K>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    strip: fn(&mut K),
    wake: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = events.modify(strip).reflect(writer);
    let task = tokio::spawn(drive(stream, wake, K::kind(&()).into_owned(), |_| {}));
    (reader, task)
}

fn spawn_pod_watch(api: Api<Pod>, config: watcher::Config, wake: Arc<Notify>) -> (PodStore, JoinHandle<()>) {
    let (reader, mut writer) = pod_store();
    let stream = watcher(api, config).default_backoff();
    let task = tokio::spawn(drive(stream, wake, "Pod".to_owned(), move |ev| writer.apply(ev)));
    (reader, task)
}

/// Runs a watch: `apply` sees each event first, then the loop is woken (not during a relist).
async fn drive<K>(
    stream: impl Stream<Item = watcher::Result<watcher::Event<K>>>,
    wake: Arc<Notify>,
    kind: String,
    mut apply: impl FnMut(&watcher::Event<K>),
) {
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                apply(&ev);
                if !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    wake.notify_one();
                }
            }
            Err(error) => tracing::warn!(%error, kind = %kind, "Watch failed; retrying"),
        }
    }
}

/// Starts the five watches; `wake` is notified on every change. Pods and nodes are built-in
/// kinds the API server validates fully, so they are decoded as whole lists; the custom
/// resources are decoded object by object, and `report` hears of each one left out.
pub fn start(client: &Client, wake: &Arc<Notify>, report: &OnUndecodable) -> (Caches, Vec<JoinHandle<()>>) {
    let pods_cfg = watcher::Config::default().labels(POD_LABEL_KEY).any_semantic();
    let (pods, t1) = spawn_pod_watch(Api::all(client.clone()), pods_cfg, wake.clone());
    let cfg = watcher::Config::default().any_semantic();
    let node_events = watcher(Api::<Node>::all(client.clone()), cfg.clone()).default_backoff();
    let (nodes, t2) = spawn_watch(node_events, strip_node, wake.clone());
    let (identities, t3) =
        spawn_watch(decoded::watch(client.clone(), cfg.clone(), report.clone()), strip_meta, wake.clone());
    let (bindings, t4) =
        spawn_watch(decoded::watch(client.clone(), cfg.clone(), report.clone()), strip_meta, wake.clone());
    let (assigned, t5) = spawn_watch(decoded::watch(client.clone(), cfg, report.clone()), strip_assigned, wake.clone());
    (Caches { pods, nodes, identities, bindings, assigned }, vec![t1, t2, t3, t4, t5])
}

/// Everything one cycle decides from, read out of the caches.
pub struct Snapshot {
    pub pods: Vec<PodView>,
    pub bindings: Vec<Arc<BindingView>>,
    pub identities: view::IdentityIndex,
    pub current: Vec<AssignedView>,
    pub nodes: NodeIndex,
    pub pod_uids: PodUids,
}

impl Caches {
    /// Waits until every cache has its first full list.
    pub async fn ready(&self) -> Result<(), CachesStopped> {
        self.pods.wait_until_ready().await?;
        self.nodes.wait_until_ready().await.map_err(|_| CachesStopped)?;
        self.identities.wait_until_ready().await.map_err(|_| CachesStopped)?;
        self.bindings.wait_until_ready().await.map_err(|_| CachesStopped)?;
        self.assigned.wait_until_ready().await.map_err(|_| CachesStopped)
    }

    /// Reads the caches into views; invalid identities and bindings are logged and skipped.
    pub fn snapshot(&self) -> Snapshot {
        let pods = self.pods.views();
        let pod_uids = pods.iter().map(|p| ((p.namespace.clone(), p.name.clone()), p.uid.clone())).collect();
        let (identities, invalid) = view::identity_index(self.identities.state().iter());
        for (key, error) in invalid {
            tracing::debug!(identity = %key, %error, "Ignoring azure identity");
        }
        let bindings = self.bindings.state().iter().filter_map(|b| view::binding_view(b).ok()).map(Arc::new).collect();
        let current = self.assigned.state().iter().map(view::assigned_view).collect();
        let nodes = self.nodes.state().iter().map(|n| view::node_view(n)).collect();
        Snapshot { pods, bindings, identities, current, nodes, pod_uids }
    }

    /// Waits (up to `deadline`) until the assigned-identity cache shows every write, so the
    /// next cycle does not redo work the cache has not caught up with yet.
    pub async fn caught_up(&self, written: &[Written], deadline: Duration) -> bool {
        let start = Instant::now();
        let mut last: BTreeMap<(&str, &str), Option<&str>> = BTreeMap::new();
        for w in written {
            match w {
                Written::Present { namespace, name, resource_version } => {
                    last.insert((namespace, name), Some(resource_version));
                }
                Written::Gone { namespace, name } => {
                    last.insert((namespace, name), None);
                }
            }
        }
        loop {
            let behind = last.iter().any(|((ns, name), rv)| {
                let cached = self.assigned.get(&ObjectRef::new(name).within(ns));
                match (rv, cached) {
                    (Some(rv), Some(obj)) => obj.metadata.resource_version.as_deref() != Some(*rv),
                    (Some(_), None) => true,
                    (None, cached) => cached.is_some(),
                }
            });
            if !behind {
                return true;
            }
            if start.elapsed() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_pod(name: &str, label: Option<&str>, node: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "labels": label.map(|l| serde_json::json!({"aadpodidbinding": l, "app": "x"})).unwrap_or_default()},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    fn names(store: &PodStore) -> Vec<String> {
        store.views().into_iter().map(|v| v.name).collect()
    }

    #[tokio::test]
    async fn pod_store_keeps_labelled_scheduled_pods_as_views() {
        let (store, mut writer) = pod_store();
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(mk_pod("b", Some("sel"), Some("n1"))));
        writer.apply(&watcher::Event::InitApply(mk_pod("a", Some("sel"), Some("n2"))));
        writer.apply(&watcher::Event::InitApply(mk_pod("pending", Some("sel"), None)));
        assert!(names(&store).is_empty(), "a relist shows only once complete");
        writer.apply(&watcher::Event::InitDone);
        store.wait_until_ready().await.unwrap();
        assert_eq!(names(&store), ["a", "b"], "(namespace, name) order; unscheduled pods are not ours");
        let a = &store.views()[0];
        assert_eq!((a.node.as_str(), a.selector.as_str(), a.uid.as_str()), ("n2", "sel", "uid-a"));

        writer.apply(&watcher::Event::Apply(mk_pod("pending", Some("sel"), Some("n1"))));
        writer.apply(&watcher::Event::Apply(mk_pod("b", Some(""), Some("n1"))));
        assert_eq!(names(&store), ["a", "pending"], "scheduled now; an empty label value is not ours");
        writer.apply(&watcher::Event::Delete(mk_pod("a", Some("sel"), Some("n2"))));
        assert_eq!(names(&store), ["pending"]);

        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(mk_pod("c", Some("sel"), Some("n1"))));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(names(&store), ["c"], "a relist replaces what was there");
    }

    #[tokio::test]
    async fn pod_store_readiness_fails_when_its_watch_is_gone() {
        let (store, writer) = pod_store();
        drop(writer);
        assert!(store.wait_until_ready().await.is_err());
    }

    #[test]
    fn stripped_assigned_identity_reads_the_same() {
        let mut a: AzureAssignedIdentity = serde_json::from_value(serde_json::json!({
            "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "metadata": {"name": "p-ns-id", "namespace": "default", "resourceVersion": "9",
                "labels": {"nodename": "n1"}, "finalizers": ["azureassignedidentity.finalizers.aadpodidentity.k8s.io"]},
            "spec": {
                "azureIdentityRef": {"metadata": {"name": "id", "namespace": "ns", "uid": "u1", "resourceVersion": "3",
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}, "labels": {"a": "b"}},
                    "spec": {"type": 0, "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id",
                        "clientID": "c1", "tenantID": "t"}},
                "azureBindingRef": {"metadata": {"name": "b", "namespace": "ns", "uid": "u2", "resourceVersion": "4",
                    "annotations": {"x": "y"}}, "spec": {"azureIdentity": "id", "selector": "sel"}},
                "pod": "p", "podNamespace": "ns", "nodename": "n1"},
            "status": {"status": "Assigned", "availableReplicas": 1}
        }))
        .unwrap();
        let before = view::assigned_view(&Arc::new(a.clone()));
        strip_assigned(&mut a);
        let after = view::assigned_view(&Arc::new(a.clone()));
        assert_eq!(AssignedView { object: Arc::clone(&before.object), ..after }, before);
        let binding = a.spec.azure_binding_ref.as_deref().unwrap();
        assert_eq!(crate::events::reference(binding).uid.as_deref(), Some("u2"), "events still name the binding");
        assert!(binding.metadata.annotations.is_none() && binding.spec.selector.is_none());
        let identity = a.spec.azure_identity_ref.as_deref().unwrap();
        assert!(identity.metadata.annotations.is_none() && identity.spec.tenant_id.is_none());
        assert_eq!(a.metadata.finalizers.as_ref().unwrap().len(), 1, "the object's own metadata is kept");
    }
}
