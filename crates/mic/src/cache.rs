//! The watch caches MIC decides from: pods (stripped to the few fields MIC reads), nodes
//! (provider ID only), and the three CRDs it uses. Every change wakes the loop; nothing here
//! decides or writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadpodid_api::names::POD_LABEL_KEY;
use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::act::{PodUids, Written};
use crate::view::{self, AssignedName, AssignedView, BindingView, NodeIndex, PodView};

/// Read handles onto the watch caches.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub identities: Store<AzureIdentity>,
    pub bindings: Store<AzureIdentityBinding>,
    pub assigned: Store<AzureAssignedIdentity>,
}

/// Keeps only what MIC reads of a pod: identity, the `aadpodidbinding` label and the node.
pub fn strip_pod(pod: &mut Pod) {
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(POD_LABEL_KEY).cloned());
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let meta = &mut pod.metadata;
    meta.labels = label.map(|v| [(POD_LABEL_KEY.to_owned(), v)].into());
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    pod.spec = Some(PodSpec { node_name: node, ..Default::default() });
    pod.status = None;
}

/// Keeps only a node's name and provider ID.
pub fn strip_node(node: &mut Node) {
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.clone());
    node.metadata = kube::api::ObjectMeta {
        name: node.metadata.name.take(),
        resource_version: node.metadata.resource_version.take(),
        uid: node.metadata.uid.take(),
        ..Default::default()
    };
    node.spec = Some(NodeSpec { provider_id, ..Default::default() });
    node.status = None;
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    strip: fn(&mut K),
    wake: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(strip).reflect(writer);
    let task = tokio::spawn(drive(stream, wake, K::kind(&()).into_owned()));
    (reader, task)
}

async fn drive<K>(stream: impl Stream<Item = watcher::Result<watcher::Event<K>>>, wake: Arc<Notify>, kind: String) {
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => wake.notify_one(),
            Err(error) => tracing::warn!(%error, kind = %kind, "Watch failed; retrying"),
        }
    }
}

/// Starts the five watches; `wake` is notified on every change.
pub fn start(client: &Client, wake: &Arc<Notify>) -> (Caches, Vec<JoinHandle<()>>) {
    let pods_cfg = watcher::Config::default().labels(POD_LABEL_KEY).any_semantic();
    let (pods, t1) = spawn_watch(Api::<Pod>::all(client.clone()), pods_cfg, strip_pod, wake.clone());
    let cfg = watcher::Config::default().any_semantic();
    let (nodes, t2) = spawn_watch(Api::<Node>::all(client.clone()), cfg.clone(), strip_node, wake.clone());
    let (identities, t3) = spawn_watch(Api::all(client.clone()), cfg.clone(), strip_meta, wake.clone());
    let (bindings, t4) = spawn_watch(Api::all(client.clone()), cfg.clone(), strip_meta, wake.clone());
    let (assigned, t5) = spawn_watch(Api::all(client.clone()), cfg, strip_meta, wake.clone());
    (Caches { pods, nodes, identities, bindings, assigned }, vec![t1, t2, t3, t4, t5])
}

/// Everything one cycle decides from, read out of the caches.
pub struct Snapshot {
    pub pods: Vec<PodView>,
    pub bindings: Vec<Arc<BindingView>>,
    pub identities: view::IdentityIndex,
    pub current: BTreeMap<AssignedName, AssignedView>,
    pub nodes: NodeIndex,
    pub pod_uids: PodUids,
}

impl Caches {
    /// Waits until every cache has its first full list.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.identities.wait_until_ready().await?;
        self.bindings.wait_until_ready().await?;
        self.assigned.wait_until_ready().await
    }

    /// Reads the caches into views; invalid identities and bindings are logged and skipped.
    pub fn snapshot(&self) -> Snapshot {
        let pods: Vec<PodView> = self.pods.state().iter().filter_map(|p| view::pod_view(p)).collect();
        let pod_uids = pods.iter().map(|p| ((p.namespace.clone(), p.name.clone()), p.uid.clone())).collect();
        let (identities, invalid) = view::identity_index(self.identities.state().iter());
        for (key, error) in invalid {
            tracing::debug!(identity = %key, %error, "Ignoring azure identity");
        }
        let bindings = self.bindings.state().iter().filter_map(|b| view::binding_view(b).ok()).map(Arc::new).collect();
        let current = self.assigned.state().iter().map(view::assigned_view).map(|a| (a.name.clone(), a)).collect();
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

    #[test]
    fn stripped_pod_keeps_only_what_mic_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {"aadpodidbinding": "sel", "app": "x"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        strip_pod(&mut pod);
        let v = view::pod_view(&pod).unwrap();
        assert_eq!((v.name.as_str(), v.node.as_str(), v.selector.as_str(), v.uid.as_str()), ("p", "n1", "sel", "u"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap().len(), 1);
        assert!(pod.status.is_none() && pod.metadata.annotations.is_none());
        assert!(pod.spec.unwrap().containers.is_empty());
    }
}
