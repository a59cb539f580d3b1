//! The original's NMI metrics: exact names, labels and buckets, counters
//! without `_total` (hence the `prometheus` crate). A labelled series appears on first use,
//! as the original's OpenCensus views did.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

const NMI_BUCKETS: &[f64] =
    &[0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
const IMDS_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0];

/// `operation_type` of the Kubernetes error counter for pod lookups.
pub const GET_POD_LIST: &str = "get_pod_list";
/// `operation_type` of the Kubernetes error counter for secret reads.
pub const GET_SECRET: &str = "get_secret";
/// `operation_type` for the system-assigned bypass token.
pub const ADAL_TOKEN_MSI: &str = "adal_token_msi";
/// `operation_type` for user-assigned identity tokens.
pub const ADAL_TOKEN_MSI_USER_ASSIGNED: &str = "adal_token_msi_userassignedid";
/// `operation_type` for service principal tokens.
pub const ADAL_TOKEN: &str = "adal_token";

/// Most label sets `aadpodidentity_nmi_operations_duration_seconds` keeps. Its path and
/// resource labels are whatever a pod sends, so without a bound any pod could grow NMI's memory
/// (and every Prometheus scrape) without limit; past it, new paths and resources are recorded
/// as [`OVERFLOW_LABEL`] (a deliberate difference from the original).
pub const MAX_OPERATION_SERIES: usize = 1000;
/// The path and resource label of operations recorded past [`MAX_OPERATION_SERIES`].
pub const OVERFLOW_LABEL: &str = "other";

/// NMI's metric families, registered on one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Token and host handler latency by path, status, namespace and resource; record through
    /// [`Metrics::observe_operation`], which bounds the label sets.
    pub nmi_operations: HistogramVec,
    /// Hashes of the label sets recorded so far (a collision only admits a set early).
    operation_series: Arc<Mutex<HashSet<u64>>>,
    series_hasher: RandomState,
    pub kubernetes_errors: IntCounterVec,
    pub imds_errors: IntCounterVec,
    pub imds_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let nmi_operations = HistogramVec::new(
            HistogramOpts::new("aadpodidentity_nmi_operations_duration_seconds", "Duration of NMI token operations")
                .buckets(NMI_BUCKETS.to_vec()),
            &["operation_type", "status_code", "namespace", "resource"],
        )?;
        let kubernetes_errors = IntCounterVec::new(
            Opts::new("aadpodidentity_kubernetes_api_operations_errors_count", "Kubernetes API operation errors"),
            &["operation_type"],
        )?;
        let imds_errors = IntCounterVec::new(
            Opts::new("aadpodidentity_imds_operations_errors_count", "IMDS and Azure AD token errors"),
            &["operation_type"],
        )?;
        let imds_duration = HistogramVec::new(
            HistogramOpts::new(
                "aadpodidentity_imds_operations_duration_seconds",
                "Duration of IMDS and Azure AD token calls",
            )
            .buckets(IMDS_BUCKETS.to_vec()),
            &["operation_type"],
        )?;
        registry.register(Box::new(nmi_operations.clone()))?;
        registry.register(Box::new(kubernetes_errors.clone()))?;
        registry.register(Box::new(imds_errors.clone()))?;
        registry.register(Box::new(imds_duration.clone()))?;
        Ok(Self {
            registry,
            nmi_operations,
            operation_series: Arc::default(),
            series_hasher: RandomState::new(),
            kubernetes_errors,
            imds_errors,
            imds_duration,
        })
    }

    /// Records one token or host operation, with path and resource folded into
    /// [`OVERFLOW_LABEL`] once [`MAX_OPERATION_SERIES`] label sets exist.
    pub fn observe_operation(&self, path: &str, status: &str, namespace: &str, resource: &str, seconds: f64) {
        let key = self.series_hasher.hash_one((path, status, namespace, resource));
        let admitted = {
            let mut series = self.operation_series.lock().unwrap_or_else(PoisonError::into_inner);
            series.contains(&key) || (series.len() < MAX_OPERATION_SERIES && series.insert(key))
        };
        let (path, resource) = if admitted { (path, resource) } else { (OVERFLOW_LABEL, OVERFLOW_LABEL) };
        self.nmi_operations.with_label_values(&[path, status, namespace, resource]).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn names_are_the_originals_and_counters_have_no_total_suffix() {
        let m = Metrics::new().unwrap();
        m.kubernetes_errors.with_label_values(&[GET_POD_LIST]).inc();
        m.nmi_operations.with_label_values(&["/metadata/identity/oauth2/token", "200", "apps", "r"]).observe(0.1);
        let mut out = Vec::new();
        TextEncoder::new().encode(&m.registry.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("aadpodidentity_kubernetes_api_operations_errors_count{operation_type=\"get_pod_list\"} 1")
        );
        assert!(text.contains("aadpodidentity_nmi_operations_duration_seconds_bucket"));
        assert!(!text.contains("_total"));
        assert!(!text.contains("aadpodidentity_imds_operations_errors_count{"), "unused series stay hidden");
    }

    fn operation_series(m: &Metrics) -> Vec<Vec<(String, String)>> {
        let families = m.registry.gather();
        let family = families.iter().find(|f| f.name() == "aadpodidentity_nmi_operations_duration_seconds").unwrap();
        family
            .get_metric()
            .iter()
            .map(|metric| metric.get_label().iter().map(|l| (l.name().to_owned(), l.value().to_owned())).collect())
            .collect()
    }

    #[test]
    fn pod_chosen_paths_and_resources_cannot_grow_the_series_without_bound() {
        let m = Metrics::new().unwrap();
        for i in 0..MAX_OPERATION_SERIES + 500 {
            let resource = format!("https://r{i}.example/");
            m.observe_operation("/metadata/identity/oauth2/token", "200", "apps", &resource, 0.01);
        }
        // A known label set keeps its own series after the bound is reached.
        m.observe_operation("/metadata/identity/oauth2/token", "200", "apps", "https://r0.example/", 0.01);
        m.observe_operation("/metadata/identity/oauth2/tokenXYZ", "404", "apps", "https://new.example/", 0.01);

        let series = operation_series(&m);
        assert_eq!(series.len(), MAX_OPERATION_SERIES + 2, "the bound plus one overflow series per status");
        let overflow: Vec<_> = series
            .iter()
            .filter(|labels| labels.contains(&("resource".to_owned(), OVERFLOW_LABEL.to_owned())))
            .collect();
        assert_eq!(overflow.len(), 2);
        assert!(
            overflow.iter().all(|labels| labels.contains(&("operation_type".to_owned(), OVERFLOW_LABEL.to_owned())))
        );
        let r0 = series
            .iter()
            .find(|labels| labels.contains(&("resource".to_owned(), "https://r0.example/".to_owned())))
            .unwrap();
        assert!(r0.contains(&("namespace".to_owned(), "apps".to_owned())));
    }
}
