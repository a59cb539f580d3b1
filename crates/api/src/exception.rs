//! AzurePodIdentityException: pods whose IMDS calls NMI answers with the node's own identity.

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::legacy::prefer;

/// A pod in this namespace is excepted when any of its labels equals (ignoring case of the
/// value) any entry of `podLabels`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzurePodIdentityException",
    plural = "azurepodidentityexceptions",
    namespaced,
    status = "AzurePodIdentityExceptionStatus",
    schema = "disabled",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(from = "AzurePodIdentityExceptionSpecWire")]
pub struct AzurePodIdentityExceptionSpec {
    #[serde(rename = "podLabels", skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
}

/// Unused by the original; kept so objects that carry it round-trip.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AzurePodIdentityExceptionStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Deserialize)]
struct AzurePodIdentityExceptionSpecWire {
    #[serde(rename = "podLabels", default)]
    pod_labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "PodLabels", default)]
    legacy_pod_labels: Option<BTreeMap<String, String>>,
}

impl From<AzurePodIdentityExceptionSpecWire> for AzurePodIdentityExceptionSpec {
    fn from(w: AzurePodIdentityExceptionSpecWire) -> Self {
        Self { pod_labels: prefer(w.pod_labels, w.legacy_pod_labels) }
    }
}

impl AzurePodIdentityException {
    /// The original's `IsPodExcepted` rule for one exception: any key present on the pod with a
    /// value equal ignoring case.
    pub fn matches(&self, pod_labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .pod_labels
            .iter()
            .flatten()
            .any(|(k, v)| pod_labels.get(k).is_some_and(|pv| pv.to_lowercase() == v.to_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn any_one_label_matching_ignoring_case_excepts_the_pod() {
        let ex = AzurePodIdentityException::new(
            "mic",
            AzurePodIdentityExceptionSpec { pod_labels: Some(labels(&[("app", "MIC"), ("component", "x")])) },
        );
        assert!(ex.matches(&labels(&[("app", "mic")])));
        assert!(!ex.matches(&labels(&[("app", "nmi")])));
        assert!(!ex.matches(&labels(&[("MIC", "app")])));
    }

    #[test]
    fn reads_legacy_pod_labels() {
        let spec: AzurePodIdentityExceptionSpec =
            serde_json::from_value(serde_json::json!({"PodLabels": {"app": "mic"}})).unwrap();
        assert_eq!(spec.pod_labels.unwrap()["app"], "mic");
    }
}
