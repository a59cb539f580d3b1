//! Names, labels and annotations that the original defines and that manifests, users and
//! other tools depend on. Changing any of these breaks compatibility.

/// Pod label whose value is matched, by exact string equality, against a binding's selector.
pub const POD_LABEL_KEY: &str = "aadpodidbinding";

/// Label MIC puts on every AzureAssignedIdentity; NMI watches only its own node's objects by it.
pub const NODENAME_LABEL: &str = "nodename";

/// Finalizer MIC adds on create and strips after the identity has left the node.
pub const ASSIGNED_IDENTITY_FINALIZER: &str = "azureassignedidentity.finalizers.aadpodidentity.k8s.io";

/// Annotation on an AzureIdentity that restricts it to pods and bindings of its own namespace.
pub const BEHAVIOR_ANNOTATION: &str = "aadpodidentity.k8s.io/Behavior";
/// Value of [`BEHAVIOR_ANNOTATION`] that turns namespaced behaviour on.
pub const BEHAVIOR_NAMESPACED: &str = "namespaced";

/// Namespace of AzureAssignedIdentities when neither MIC nor the identity is namespaced.
pub const DEFAULT_ASSIGNED_NAMESPACE: &str = "default";

/// The original's AzureAssignedIdentity name: `<pod>-<podNamespace>-<identity>`.
///
/// There is no truncation or hashing, as in the original: names longer than the API server
/// allows are rejected by it, and the rejection surfaces as a `binding apply error` event.
pub fn assigned_identity_name(pod: &str, pod_namespace: &str, identity: &str) -> String {
    format!("{pod}-{pod_namespace}-{identity}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_name_joins_pod_namespace_and_identity() {
        assert_eq!(assigned_identity_name("demo-7c9", "apps", "myidentity"), "demo-7c9-apps-myidentity");
    }
}
