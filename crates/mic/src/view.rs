//! Checked, compact readings of the objects MIC watches: only the fields the decision reads.
//!
//! Parse, don't validate: a stored object becomes a view or a reason it is ignored. Pods are
//! kept as [`PodView`]s in the cache itself, so tens of thousands of pods cost a few hundred
//! bytes each. No I/O here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aadpodid_api::names::POD_LABEL_KEY;
use aadpodid_api::view::{
    IdentityType, InvalidBinding, InvalidIdentity, identity_type, is_namespaced, validate_binding, validate_identity,
};
use aadpodid_api::{AssignedIdentityState, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding};
pub use aadpodid_azure::arm::VmTarget;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

/// Name of an AzureAssignedIdentity: `<pod>-<podNamespace>-<identity>`. NMI and users know
/// assignments by it, so it stays, but it is ambiguous (pod `a-b` in `c` and pod `a` in `b-c`
/// give the same name): decisions key assignments by [`AssignmentKey`] instead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssignedName(pub String);

impl AssignedName {
    /// The original's naming, without truncation or hashing.
    pub fn new(pod: &str, pod_namespace: &str, identity: &str) -> Self {
        Self(aadpodid_api::names::assigned_identity_name(pod, pod_namespace, identity))
    }
}

/// What an assignment is: one pod and one identity, each by namespace and name. Two different
/// pairs never share a key, whatever their object names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssignmentKey {
    pub pod_namespace: String,
    pub pod: String,
    pub identity_namespace: String,
    pub identity: String,
}

/// A resource ID as ARM compares it: ignoring case and surrounding blanks.
pub fn normalise_resource_id(id: &str) -> String {
    id.trim().to_ascii_lowercase()
}

impl fmt::Display for AssignedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What MIC reads of a pod that carries the `aadpodidbinding` label and runs on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// Value of the `aadpodidbinding` label, matched against binding selectors.
    pub selector: String,
    pub uid: String,
}

/// `None` when the pod is not ours: no or empty `aadpodidbinding` label, or not scheduled.
/// The phase and a deletion timestamp are not checked, as in the original: a pod keeps its
/// identity until the pod object is gone.
pub fn pod_view(pod: &Pod) -> Option<PodView> {
    let selector = pod.labels().get(POD_LABEL_KEY).filter(|v| !v.is_empty())?;
    let node = pod.spec.as_ref()?.node_name.as_ref().filter(|n| !n.is_empty())?;
    Some(PodView {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        node: node.clone(),
        selector: selector.clone(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    })
}

/// A usable AzureIdentity with the fields the decision reads, and the full object, which each
/// AzureAssignedIdentity embeds as a copy.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityView {
    pub name: String,
    pub namespace: String,
    pub resource_version: String,
    pub kind: IdentityType,
    pub resource_id: String,
    pub client_id: String,
    /// Annotated `aadpodidentity.k8s.io/Behavior: namespaced`.
    pub namespaced: bool,
    pub object: Arc<AzureIdentity>,
}

/// Checks an AzureIdentity the way MIC does before using it.
pub fn identity_view(identity: &Arc<AzureIdentity>) -> Result<IdentityView, InvalidIdentity> {
    let kind = validate_identity(identity)?;
    Ok(IdentityView {
        name: identity.name_any(),
        namespace: identity.namespace().unwrap_or_default(),
        resource_version: identity.resource_version().unwrap_or_default(),
        kind,
        resource_id: identity.spec.resource_id.clone().unwrap_or_default(),
        client_id: identity.spec.client_id.clone().unwrap_or_default(),
        namespaced: is_namespaced(identity),
        object: Arc::clone(identity),
    })
}

/// Usable identities by (namespace, name), the way bindings look them up.
pub type IdentityIndex = BTreeMap<(String, String), Arc<IdentityView>>;

/// Builds the index; identities that fail validation are returned beside it, to be logged.
pub fn identity_index<'a>(
    identities: impl IntoIterator<Item = &'a Arc<AzureIdentity>>,
) -> (IdentityIndex, Vec<(String, InvalidIdentity)>) {
    let mut index = IdentityIndex::new();
    let mut invalid = Vec::new();
    for id in identities {
        match identity_view(id) {
            Ok(v) => {
                index.insert((v.namespace.clone(), v.name.clone()), Arc::new(v));
            }
            Err(e) => invalid.push((format!("{}/{}", id.namespace().unwrap_or_default(), id.name_any()), e)),
        }
    }
    (index, invalid)
}

/// An AzureIdentityBinding that can match pods.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingView {
    pub name: String,
    pub namespace: String,
    pub resource_version: String,
    pub selector: String,
    /// Name of the AzureIdentity, looked up in the binding's namespace.
    pub identity: String,
    pub object: Arc<AzureIdentityBinding>,
}

/// `Err` for a binding with no selector or no identity name: it matches nothing.
pub fn binding_view(binding: &Arc<AzureIdentityBinding>) -> Result<BindingView, InvalidBinding> {
    let (selector, identity) = validate_binding(binding)?;
    Ok(BindingView {
        name: binding.name_any(),
        namespace: binding.namespace().unwrap_or_default(),
        resource_version: binding.resource_version().unwrap_or_default(),
        selector: selector.to_owned(),
        identity: identity.to_owned(),
        object: Arc::clone(binding),
    })
}

/// An existing AzureAssignedIdentity, read through its embedded copies.
#[derive(Clone, Debug, PartialEq)]
pub struct AssignedView {
    pub name: AssignedName,
    pub namespace: String,
    pub resource_version: String,
    pub state: AssignedIdentityState,
    pub pod: String,
    pub pod_namespace: String,
    pub node: String,
    pub binding_name: String,
    pub binding_namespace: String,
    pub binding_resource_version: String,
    pub identity_name: String,
    pub identity_namespace: String,
    pub identity_resource_version: String,
    /// `None` when the embedded identity has an unknown type.
    pub kind: Option<IdentityType>,
    pub resource_id: String,
    pub client_id: String,
    pub object: Arc<AzureAssignedIdentity>,
}

impl AssignedView {
    /// True when this assignment put (or may have put) a user-assigned identity on its node.
    pub fn is_user_assigned(&self) -> bool {
        self.kind == Some(IdentityType::UserAssignedMsi)
    }

    /// The pair this object records, read from its spec (not from its name).
    pub fn key(&self) -> AssignmentKey {
        AssignmentKey {
            pod_namespace: self.pod_namespace.clone(),
            pod: self.pod.clone(),
            identity_namespace: self.identity_namespace.clone(),
            identity: self.identity_name.clone(),
        }
    }
}

/// Reads an AzureAssignedIdentity; missing fields read as empty, as the original's Go structs.
pub fn assigned_view(assigned: &Arc<AzureAssignedIdentity>) -> AssignedView {
    let spec = &assigned.spec;
    let id = spec.azure_identity_ref.as_deref();
    let binding = spec.azure_binding_ref.as_deref();
    AssignedView {
        name: AssignedName(assigned.name_any()),
        namespace: assigned.namespace().unwrap_or_default(),
        resource_version: assigned.resource_version().unwrap_or_default(),
        state: assigned.state(),
        pod: spec.pod.clone().unwrap_or_default(),
        pod_namespace: spec.pod_namespace.clone().unwrap_or_default(),
        node: spec.node_name.clone().unwrap_or_default(),
        binding_name: binding.map(ResourceExt::name_any).unwrap_or_default(),
        binding_namespace: binding.and_then(ResourceExt::namespace).unwrap_or_default(),
        binding_resource_version: binding.and_then(ResourceExt::resource_version).unwrap_or_default(),
        identity_name: id.map(ResourceExt::name_any).unwrap_or_default(),
        identity_namespace: id.and_then(ResourceExt::namespace).unwrap_or_default(),
        identity_resource_version: id.and_then(ResourceExt::resource_version).unwrap_or_default(),
        kind: id.and_then(|i| identity_type(i).ok()),
        resource_id: id.and_then(|i| i.spec.resource_id.clone()).unwrap_or_default(),
        client_id: id.and_then(|i| i.spec.client_id.clone()).unwrap_or_default(),
        object: Arc::clone(assigned),
    }
}

/// Node name → VM or VMSS, from `spec.providerID`; the only thing MIC reads of a node.
pub type NodeIndex = BTreeMap<String, VmTarget>;

/// A node whose provider ID names a scale set is a scale-set instance; any other node
/// (including one with an empty or unreadable provider ID) is a VM named like the node, as
/// the original assumes.
pub fn node_target(node_name: &str, provider_id: &str) -> VmTarget {
    match VmTarget::from_provider_id(provider_id) {
        Some(VmTarget::Vmss(scale_set)) => VmTarget::Vmss(scale_set),
        Some(VmTarget::Vm(_)) | None => VmTarget::Vm(node_name.to_owned()),
    }
}

/// Reads a node into its index entry.
pub fn node_view(node: &Node) -> (String, VmTarget) {
    let name = node.name_any();
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).unwrap_or_default();
    let target = node_target(&name, provider_id);
    (name, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn mk_pod(labels: &[(&str, &str)], node: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        pod.spec = Some(PodSpec { node_name: node.map(str::to_owned), ..Default::default() });
        pod
    }

    #[test]
    fn labelled_scheduled_pod_is_read() {
        let v = pod_view(&mk_pod(&[(POD_LABEL_KEY, "sel")], Some("n1"))).unwrap();
        assert_eq!(
            (v.name.as_str(), v.namespace.as_str(), v.node.as_str(), v.selector.as_str()),
            ("p", "ns", "n1", "sel")
        );
    }

    #[test]
    fn unscheduled_or_unlabelled_pods_are_not_ours() {
        assert_eq!(pod_view(&mk_pod(&[(POD_LABEL_KEY, "sel")], None)), None);
        assert_eq!(pod_view(&mk_pod(&[(POD_LABEL_KEY, "sel")], Some(""))), None);
        assert_eq!(pod_view(&mk_pod(&[(POD_LABEL_KEY, "")], Some("n1"))), None);
        assert_eq!(pod_view(&mk_pod(&[("app", "x")], Some("n1"))), None);
    }

    #[test]
    fn scale_set_instances_are_keyed_by_scale_set() {
        let id = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool1/virtualMachines/3";
        assert_eq!(node_target("aks-pool1-3", id), VmTarget::Vmss("pool1".into()));
    }

    #[test]
    fn vms_and_nodes_without_provider_id_are_keyed_by_node_name() {
        let id = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-7";
        assert_eq!(node_target("node-a", id), VmTarget::Vm("node-a".into()));
        assert_eq!(node_target("node-b", ""), VmTarget::Vm("node-b".into()));
    }
}
