//! AzureAssignedIdentity: MIC's record that one pod holds one identity on one node.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::binding::AzureIdentityBinding;
use crate::identity::{AzureIdentity, EmbeddedMeta};
use crate::lenient::int_or_absent;

/// One (pod, identity) pair, named `<pod>-<podNamespace>-<identity>`, created and owned by MIC.
/// It embeds full copies of the identity and the binding, as the original does, so NMI can
/// answer from this object alone and MIC can tell when either changed (by resourceVersion).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureAssignedIdentity",
    plural = "azureassignedidentities",
    namespaced,
    status = "AzureAssignedIdentityStatus",
    schema = "disabled",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod"}"#,
    printcolumn = r#"{"name":"PodNamespace","type":"string","jsonPath":".spec.podNamespace"}"#,
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.azureIdentityRef.metadata.name"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodename"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC."}"#
)]
pub struct AzureAssignedIdentitySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EmbeddedMeta>,
    #[serde(rename = "azureIdentityRef", default, skip_serializing_if = "Option::is_none")]
    pub azure_identity_ref: Option<Box<AzureIdentity>>,
    #[serde(rename = "azureBindingRef", default, skip_serializing_if = "Option::is_none")]
    pub azure_binding_ref: Option<Box<AzureIdentityBinding>>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod namespace.
    #[serde(rename = "podNamespace", default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// Node the pod runs on; all lower case on the wire, as in the original.
    #[serde(rename = "nodename", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Declared by the original and never read by it; kept for round trips.
    #[serde(default, deserialize_with = "int_or_absent", skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// Where the assignment is in its lifecycle; see [`AssignedIdentityState`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AzureAssignedIdentityStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EmbeddedMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(
        rename = "availableReplicas",
        default,
        deserialize_with = "int_or_absent",
        skip_serializing_if = "Option::is_none"
    )]
    pub available_replicas: Option<i32>,
}

/// The `status.status` lifecycle: `Created` → `Assigned` → `Unassigned` → deleted.
///
/// ```text
///  (none) --create--> Created --ARM ok--> Assigned --pod/binding/identity gone--> Unassigned --> deleted
///                        ^                                       |
///                        +--------- ARM failed: stays, retried --+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AssignedIdentityState {
    /// No status: written by a MIC older than 1.5; NMI treats it like `Assigned`.
    Legacy,
    /// Recorded, but ARM has not yet confirmed the identity on the node.
    Created,
    /// The identity is on the node's VM or scale set; NMI may hand out tokens.
    Assigned,
    /// The identity was removed from the node; the object is about to be deleted.
    Unassigned,
    /// A status string this version does not know; treated as not usable.
    Unknown,
}

impl AssignedIdentityState {
    pub const CREATED: &'static str = "Created";
    pub const ASSIGNED: &'static str = "Assigned";
    pub const UNASSIGNED: &'static str = "Unassigned";

    /// Parses `status.status` as the original stores it.
    pub fn parse(status: Option<&str>) -> Self {
        match status {
            None | Some("") => Self::Legacy,
            Some(Self::CREATED) => Self::Created,
            Some(Self::ASSIGNED) => Self::Assigned,
            Some(Self::UNASSIGNED) => Self::Unassigned,
            Some(_) => Self::Unknown,
        }
    }

    /// The string written to `status.status`; `None` for states MIC never writes.
    pub fn as_status(self) -> Option<&'static str> {
        match self {
            Self::Created => Some(Self::CREATED),
            Self::Assigned => Some(Self::ASSIGNED),
            Self::Unassigned => Some(Self::UNASSIGNED),
            Self::Legacy | Self::Unknown => None,
        }
    }
}

impl AzureAssignedIdentity {
    /// Lifecycle state read from `status.status`.
    pub fn state(&self) -> AssignedIdentityState {
        AssignedIdentityState::parse(self.status.as_ref().and_then(|s| s.status.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_status_string() {
        for s in [AssignedIdentityState::Created, AssignedIdentityState::Assigned, AssignedIdentityState::Unassigned] {
            assert_eq!(AssignedIdentityState::parse(s.as_status()), s);
        }
        assert_eq!(AssignedIdentityState::parse(None), AssignedIdentityState::Legacy);
        assert_eq!(AssignedIdentityState::parse(Some("")), AssignedIdentityState::Legacy);
        assert_eq!(AssignedIdentityState::parse(Some("assigned")), AssignedIdentityState::Unknown);
    }
}
