//! MIC's Prometheus metrics under the original's exported names (`aadpodidentity_*`, counters
//! without `_total`, durations in seconds). Owns the registry; never decides anything.

use prometheus::{CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, Opts, Registry};

const NAMESPACE: &str = "aadpodidentity";
const ASSIGNMENT_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0];
const CYCLE_BUCKETS: &[f64] = &[0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0];

/// The metrics MIC records; clone-cheap handles onto one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub addition_duration: Histogram,
    pub addition_count: IntCounter,
    pub deletion_duration: Histogram,
    pub deletion_count: IntCounter,
    pub update_duration: Histogram,
    pub update_count: IntCounter,
    pub cycle_duration: Histogram,
    pub cycle_count: IntCounter,
    pub new_leader_election_count: IntCounter,
    pub cloud_errors: CounterVec,
    pub cloud_duration: HistogramVec,
    pub kube_errors: CounterVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(registry: &Registry, name: &str, help: &str) -> Result<CounterVec, prometheus::Error> {
    let c = CounterVec::new(Opts::new(name, help).namespace(NAMESPACE), &["operation_type"])?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Registers every metric on a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let cloud_duration = HistogramVec::new(
            HistogramOpts::new("cloud_provider_operations_duration_seconds", "Duration of cloud provider operations")
                .namespace(NAMESPACE)
                .buckets(CYCLE_BUCKETS.to_vec()),
            &["operation_type"],
        )?;
        r.register(Box::new(cloud_duration.clone()))?;
        Ok(Self {
            addition_duration: histogram(
                &r,
                "assigned_identity_addition_duration_seconds",
                "Duration of assigned identity addition",
                ASSIGNMENT_BUCKETS,
            )?,
            addition_count: counter(
                &r,
                "assigned_identity_addition_count",
                "Total number of assigned identity additions",
            )?,
            deletion_duration: histogram(
                &r,
                "assigned_identity_deletion_duration_seconds",
                "Duration of assigned identity deletion",
                ASSIGNMENT_BUCKETS,
            )?,
            deletion_count: counter(
                &r,
                "assigned_identity_deletion_count",
                "Total number of assigned identity deletions",
            )?,
            update_duration: histogram(
                &r,
                "assigned_identity_update_duration_seconds",
                "Duration of assigned identity update",
                ASSIGNMENT_BUCKETS,
            )?,
            update_count: counter(&r, "assigned_identity_update_count", "Total number of assigned identity updates")?,
            cycle_duration: histogram(&r, "mic_cycle_duration_seconds", "Duration of mic sync cycles", CYCLE_BUCKETS)?,
            cycle_count: counter(&r, "mic_cycle_count", "Number of mic sync cycles")?,
            new_leader_election_count: counter(&r, "mic_new_leader_election_count", "Number of new leader elections")?,
            cloud_errors: counter_vec(
                &r,
                "cloud_provider_operations_errors_count",
                "Number of cloud provider operation errors",
            )?,
            kube_errors: counter_vec(
                &r,
                "kubernetes_api_operations_errors_count",
                "Number of kubernetes api operation errors",
            )?,
            cloud_duration,
            registry: r,
        })
    }

    /// Counts a failed API-server call by the original's operation type.
    pub fn kube_error(&self, operation: &str) {
        self.kube_errors.with_label_values(&[operation]).inc();
    }

    /// Records one ARM call: its duration on success, an error count on failure.
    pub fn cloud_call(&self, operation: &str, seconds: f64, ok: bool) {
        if ok {
            self.cloud_duration.with_label_values(&[operation]).observe(seconds);
        } else {
            self.cloud_errors.with_label_values(&[operation]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn exported_names_are_the_originals_without_total_suffix() {
        let m = Metrics::new().unwrap();
        m.cycle_count.inc();
        m.kube_error("assigned_identity_addition");
        m.cloud_call("vmss_update", 0.2, true);
        let mut out = Vec::new();
        TextEncoder::new().encode(&m.registry.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for name in [
            "aadpodidentity_mic_cycle_count 1",
            "aadpodidentity_kubernetes_api_operations_errors_count{operation_type=\"assigned_identity_addition\"} 1",
            "aadpodidentity_cloud_provider_operations_duration_seconds_count{operation_type=\"vmss_update\"} 1",
            "aadpodidentity_assigned_identity_addition_duration_seconds_bucket",
            "aadpodidentity_mic_new_leader_election_count 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(!text.contains("_total"));
    }
}
