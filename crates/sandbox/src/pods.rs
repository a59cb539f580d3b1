//! The kubelet's report of the MIC and NMI processes: a Pod object per replica, from the
//! workload's template (labels, owner, node; Running and Ready), and an egress route from the
//! pod's address and probe port to where the process really listens. The API server's pod
//! proxy (`kubectl get --raw …/pods/<pod>:<port>/proxy/healthz`, `aadpodid doctor`) then
//! reaches MIC and NMI as on a cluster.

use std::net::{Ipv4Addr, SocketAddr};

use aadpodid_testkit::{EgressProxy, EgressTarget};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// One replica as its Pod object shows it.
pub(crate) struct ComponentPod<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) node: &'a str,
    /// The pod's IP (for NMI, on the host network, the node's).
    pub(crate) ip: Ipv4Addr,
    /// The probe port the template declares, which the pod proxy is asked for.
    pub(crate) probe_port: u16,
    /// Where the process's probe really listens.
    pub(crate) target: EgressTarget,
}

/// The owner reference a workload's pods carry.
pub(crate) fn owned_by<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        ..Default::default()
    }
}

/// Creates the Pod (replacing one left from a stopped replica), reports it Running and Ready,
/// and routes its probe port.
pub(crate) async fn report(
    client: &kube::Client,
    egress: &EgressProxy,
    template: &PodTemplateSpec,
    owner: OwnerReference,
    pod: &ComponentPod<'_>,
) -> Result<(), String> {
    let mut spec = template.spec.clone().ok_or("the pod template has no spec")?;
    spec.node_name = Some(pod.node.to_owned());
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(pod.name.to_owned());
    meta.namespace = Some(pod.namespace.to_owned());
    meta.owner_references = Some(vec![owner]);
    let object = Pod { metadata: meta, spec: Some(spec), status: None };
    let api = Api::<Pod>::namespaced(client.clone(), pod.namespace);
    api.create(&PostParams::default(), &object).await.map_err(|e| format!("Pod {}: {e}", pod.name))?;
    let ip = pod.ip.to_string();
    let ready = |t: &str| json!({"type": t, "status": "True"});
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [ready("Initialized"), ready("ContainersReady"), ready("Ready"), ready("PodScheduled")],
    }});
    api.patch_status(pod.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| format!("Pod {} status: {e}", pod.name))?;
    egress.route(SocketAddr::from((pod.ip, pod.probe_port)), pod.target.clone());
    Ok(())
}

/// Deletes the Pod objects of the chart's workloads (grace 0: no kubelet confirms), as the
/// garbage collector would once their Deployment and DaemonSet go.
pub(crate) async fn remove_all(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let lp = kube::api::ListParams::default().labels("app.kubernetes.io/name=aad-pod-identity");
    let dp = kube::api::DeleteParams::default().grace_period(0);
    api.delete_collection(&dp, &lp).await.map(drop).map_err(|e| format!("deleting MIC and NMI pods: {e}"))
}
