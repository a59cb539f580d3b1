//! What NMI watches: pods of this node (field selector `spec.nodeName`),
//! AzureAssignedIdentities (label `nodename=<node>` with scale features) in standard mode,
//! bindings and identities in managed mode, exceptions always; plus Secret reads for service
//! principals. Turns the caches into the plain views `server` and `select` work on.
//!
//! The only module besides `run` that talks to kube. Decides nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use aadpodid_api::names::NODENAME_LABEL;
use aadpodid_api::view::is_namespaced;
use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use aadpodid_runtime::decoded;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::select::{AssignedView, BindingView, IdentityView, PodView};
use crate::server::{Mode, NodeState};
use crate::tokens::SecretReader;

/// The watch caches of one node.
#[derive(Clone)]
pub struct KubeStore {
    pods: Store<Pod>,
    exceptions: Store<AzurePodIdentityException>,
    assigned: Option<Store<AzureAssignedIdentity>>,
    bindings: Option<Store<AzureIdentityBinding>>,
    identities: Option<Store<AzureIdentity>>,
}

/// Keeps only what NMI reads of a pod: name, namespace, labels, owner, deletion timestamp,
/// service account, IPs, phase, hostNetwork.
pub fn strip_pod(pod: &mut Pod) {
    let spec = pod.spec.take().unwrap_or_default();
    let status = pod.status.take().unwrap_or_default();
    let meta = &mut pod.metadata;
    meta.annotations = None;
    meta.managed_fields = None;
    meta.finalizers = None;
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        service_account_name: spec.service_account_name,
        ..Default::default()
    });
    pod.status =
        Some(PodStatus { pod_ip: status.pod_ip, pod_ips: status.pod_ips, phase: status.phase, ..Default::default() });
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Caches `events`: a typed watch for pods, [`decoded::watch`] for the custom resources.
fn spawn_watch<K>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    strip: fn(&mut K),
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = events.modify(strip).reflect(writer);
    (reader, tokio::spawn(drive(stream, K::kind(&()).into_owned())))
}

/// A custom resource watched object by object: one that does not decode is logged and left
/// out (NMI writes no Events; MIC puts one on the object).
fn crd_watch<K>(client: &Client, config: watcher::Config) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Default + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    spawn_watch(decoded::watch(client.clone(), config, decoded::log_only()), strip_meta)
}

async fn drive<K>(stream: impl Stream<Item = watcher::Result<watcher::Event<K>>>, kind: String) {
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        if let Err(error) = ev {
            tracing::warn!(%error, kind = %kind, "Watch failed; retrying");
        }
    }
}

impl KubeStore {
    /// Starts the watches for `node` in `mode`. `scale_features` limits AzureAssignedIdentities
    /// to this node's by label, as `--enableScaleFeatures` does.
    pub fn start(client: &Client, node: &str, mode: Mode, scale_features: bool) -> (Self, Vec<JoinHandle<()>>) {
        let pods_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}")).any_semantic();
        let cfg = watcher::Config::default().any_semantic();
        let (pods, t1) = spawn_watch(watcher(Api::all(client.clone()), pods_cfg).default_backoff(), strip_pod);
        let (exceptions, t2) = crd_watch(client, cfg.clone());
        let mut tasks = vec![t1, t2];
        let mut store = Self { pods, exceptions, assigned: None, bindings: None, identities: None };
        match mode {
            Mode::Standard => {
                let aai_cfg = if scale_features { cfg.labels(&format!("{NODENAME_LABEL}={node}")) } else { cfg };
                let (assigned, t) = crd_watch(client, aai_cfg);
                store.assigned = Some(assigned);
                tasks.push(t);
            }
            Mode::Managed => {
                let (bindings, t3) = crd_watch(client, cfg.clone());
                let (identities, t4) = crd_watch(client, cfg);
                store.bindings = Some(bindings);
                store.identities = Some(identities);
                tasks.extend([t3, t4]);
            }
        }
        (store, tasks)
    }

    /// Waits until every cache has its first full list (the original blocks on cache sync).
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.exceptions.wait_until_ready().await?;
        for store in self.assigned.iter() {
            store.wait_until_ready().await?;
        }
        for store in self.bindings.iter() {
            store.wait_until_ready().await?;
        }
        for store in self.identities.iter() {
            store.wait_until_ready().await?;
        }
        Ok(())
    }
}

/// A pod as NMI sees it.
pub fn pod_view(pod: &Pod) -> PodView {
    let (spec, status) = (pod.spec.as_ref(), pod.status.as_ref());
    PodView {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        ip: status.and_then(|s| parse_ip(s.pod_ip.as_deref())),
        ips: status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| parse_ip(Some(&i.ip)))
            .collect(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        labels: pod.labels().clone(),
        replicaset: pod.owner_references().iter().find(|o| o.kind == "ReplicaSet").map(|o| o.name.clone()),
        service_account: spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    }
}

/// Whether `ip` is in `status.podIP` or `status.podIPs` (read without building a view, so a
/// request's cost stays flat in the number of pods on the node).
fn has_ip(pod: &Pod, ip: IpAddr) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    let ip = ip.to_canonical();
    let listed = status.pod_ips.iter().flatten().map(|i| Some(i.ip.as_str()));
    std::iter::once(status.pod_ip.as_deref()).chain(listed).any(|s| parse_ip(s).is_some_and(|own| own == ip))
}

/// An address of the pod's status; IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn parse_ip(text: Option<&str>) -> Option<IpAddr> {
    text?.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// An AzureIdentity as NMI uses it.
pub fn identity_view(identity: &AzureIdentity) -> IdentityView {
    IdentityView {
        namespace: identity.namespace().unwrap_or_default(),
        name: identity.name_any(),
        namespaced: is_namespaced(identity),
        spec: identity.spec.clone(),
        object_id: None,
    }
}

/// An AzureAssignedIdentity of a pod; `None` when it carries no identity.
pub fn assigned_view(aai: &AzureAssignedIdentity) -> Option<AssignedView> {
    let identity = aai.spec.azure_identity_ref.as_deref()?;
    Some(AssignedView { state: aai.state(), identity: identity_view(identity) })
}

fn binding_view(b: &AzureIdentityBinding) -> BindingView {
    BindingView {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        selector: b.spec.selector.clone().unwrap_or_default(),
        identity: b.spec.azure_identity.clone().unwrap_or_default(),
    }
}

impl NodeState for KubeStore {
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodView> {
        self.pods.state().iter().filter(|p| has_ip(p, ip)).map(|p| pod_view(p)).collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PodView> {
        self.pods.get(&reflector::ObjectRef::new(name).within(namespace)).map(|p| pod_view(&p))
    }

    fn exceptions(&self, namespace: &str) -> Vec<AzurePodIdentityException> {
        let all = self.exceptions.state();
        all.iter().filter(|e| e.namespace().as_deref() == Some(namespace)).map(|e| (**e).clone()).collect()
    }

    fn assigned(&self, namespace: &str, pod: &str) -> Vec<AssignedView> {
        let Some(store) = &self.assigned else { return Vec::new() };
        let of_pod = |a: &&Arc<AzureAssignedIdentity>| {
            a.spec.pod.as_deref() == Some(pod) && a.spec.pod_namespace.as_deref() == Some(namespace)
        };
        store.state().iter().filter(of_pod).filter_map(|a| assigned_view(a)).collect()
    }

    fn bindings(&self, namespace: &str) -> Vec<BindingView> {
        let Some(store) = &self.bindings else { return Vec::new() };
        store.state().iter().filter(|b| b.namespace().as_deref() == Some(namespace)).map(|b| binding_view(b)).collect()
    }

    fn identities(&self, namespace: &str) -> Vec<IdentityView> {
        let Some(store) = &self.identities else { return Vec::new() };
        let all = store.state();
        all.iter().filter(|i| i.namespace().as_deref() == Some(namespace)).map(|i| identity_view(i)).collect()
    }
}

/// Secret reads straight from the API server, uncached, as the original (`secrets: get`).
pub struct KubeSecrets(pub Client);

impl SecretReader for KubeSecrets {
    fn secret_data<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Vec<u8>>, String>> {
        Box::pin(async move {
            let secret: Secret =
                Api::namespaced(self.0.clone(), namespace).get(name).await.map_err(|e| e.to_string())?;
            Ok(secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aadpodid_api::{AzureAssignedIdentitySpec, AzureAssignedIdentityStatus, AzureIdentitySpec};
    use k8s_openapi::api::core::v1::PodIP;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use kube::runtime::reflector::store::Writer;

    fn mk_pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("demo-abc".into());
        pod.metadata.namespace = Some("apps".into());
        pod.metadata.labels = Some([("aadpodidbinding".to_owned(), "demo".to_owned())].into());
        pod.metadata.annotations = Some([("big".to_owned(), "x".repeat(100))].into());
        pod.metadata.owner_references =
            Some(vec![OwnerReference { kind: "ReplicaSet".into(), name: "mic-123".into(), ..Default::default() }]);
        pod.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            host_network: Some(true),
            service_account_name: Some("mic-sa".into()),
            containers: vec![Default::default()],
            ..Default::default()
        });
        pod.status = Some(status("Running", &["10.244.0.7", "fd00::7"]));
        pod
    }

    /// A status with `podIP` the first address and `podIPs` all of them.
    fn status(phase: &str, ips: &[&str]) -> PodStatus {
        PodStatus {
            pod_ip: ips.first().map(|ip| (*ip).to_owned()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).to_owned() }).collect()),
            phase: Some(phase.into()),
            host_ip: Some("10.0.0.4".into()),
            ..Default::default()
        }
    }

    #[test]
    fn stripped_pod_keeps_what_nmi_reads() {
        let mut pod = mk_pod();
        strip_pod(&mut pod);
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.status.as_ref().unwrap().host_ip.is_none() && pod.spec.as_ref().unwrap().containers.is_empty());
        let view = pod_view(&pod);
        assert_eq!(view.ip, "10.244.0.7".parse().ok());
        assert_eq!(view.ips, ["10.244.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
        assert_eq!(view.phase, "Running");
        assert_eq!(view.replicaset.as_deref(), Some("mic-123"));
        assert_eq!(view.service_account, "mic-sa");
        assert!(view.host_network);
        assert!(!view.terminating);
        assert_eq!(view.labels["aadpodidbinding"], "demo");
    }

    #[test]
    fn a_deleted_pod_is_seen_as_terminating() {
        let mut pod = mk_pod();
        pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        strip_pod(&mut pod);
        assert!(pod_view(&pod).terminating);
    }

    fn mk_aai(name: &str, pod: &str, status: &str) -> AzureAssignedIdentity {
        let mut id = AzureIdentity::new("id", AzureIdentitySpec { client_id: Some("c".into()), ..Default::default() });
        id.metadata.namespace = Some("default".into());
        let spec = AzureAssignedIdentitySpec {
            pod: Some(pod.into()),
            pod_namespace: Some("apps".into()),
            azure_identity_ref: Some(Box::new(id)),
            ..Default::default()
        };
        let mut aai = AzureAssignedIdentity::new(name, spec);
        aai.metadata.namespace = Some("default".into());
        aai.status = Some(AzureAssignedIdentityStatus { status: Some(status.into()), ..Default::default() });
        aai
    }

    #[test]
    fn assigned_identities_are_those_of_the_pod() {
        let mut writer: Writer<AzureAssignedIdentity> = Writer::default();
        for aai in [mk_aai("a", "demo", "Assigned"), mk_aai("b", "other", "Assigned"), mk_aai("c", "demo", "Created")] {
            writer.apply_watcher_event(&watcher::Event::Apply(aai));
        }
        let (pods, _) = reflector::store::<Pod>();
        let (exceptions, _) = reflector::store();
        let store =
            KubeStore { pods, exceptions, assigned: Some(writer.as_reader()), bindings: None, identities: None };
        let mut got: Vec<_> = store.assigned("apps", "demo").into_iter().map(|a| a.state).collect();
        got.sort();
        assert_eq!(got, [aadpodid_api::AssignedIdentityState::Created, aadpodid_api::AssignedIdentityState::Assigned]);
        assert!(store.bindings("apps").is_empty(), "no binding watch in standard mode");
    }

    #[test]
    fn a_requests_candidates_are_the_pods_with_its_ip_in_any_phase() {
        let mut writer: Writer<Pod> = Writer::default();
        let with = |name: &str, phase: &str, ips: &[&str]| {
            let mut pod = mk_pod();
            pod.metadata.name = Some(name.into());
            pod.status = Some(status(phase, ips));
            pod
        };
        for pod in [
            with("a", "Running", &["10.244.0.7"]),
            with("b", "Running", &["10.244.0.8"]),
            with("c", "Succeeded", &["10.244.0.7"]),
            with("v6-first", "Running", &["fd00::9", "10.244.0.9"]),
            with("no-ip", "Pending", &[]),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(pod));
        }
        let (exceptions, _) = reflector::store();
        let store =
            KubeStore { pods: writer.as_reader(), exceptions, assigned: None, bindings: None, identities: None };
        let names = |ip: &str| {
            let mut names: Vec<_> = store.pods_with_ip(ip.parse().unwrap()).into_iter().map(|p| p.name).collect();
            names.sort();
            names
        };
        assert_eq!(names("10.244.0.7"), ["a", "c"]);
        assert!(names("10.244.0.10").is_empty());
        assert_eq!(names("10.244.0.9"), ["v6-first"], "by the second address of a dual-stack pod");
        assert_eq!(names("fd00::9"), ["v6-first"]);
        assert_eq!(names("::ffff:10.244.0.9"), ["v6-first"], "an IPv4-mapped caller");
    }
}
