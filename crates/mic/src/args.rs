//! MIC's command line: the original's flag spellings and defaults, a compatibility contract
//! (existing manifests pass them). Go's `flag` syntax (`-name`, `--bool=false`) is accepted
//! after `aadpodid_runtime::goflags::normalize_args`.

use std::time::Duration;

/// Parses a Go `time.Duration` string (`3600s`, `1h30m`, `1.5s`, `300ms`, `0`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {s:?} (use Go syntax such as 3600s, 3m, 1h30m, 500ms)");
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A duration flag's accepted range: a zero period cannot be ticked (tokio panics on it) and a
/// huge one overflows deadlines, so values outside are raised or lowered (with a warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
}

/// One day: no period or pause of MIC's is useful beyond it.
const DAY: Duration = Duration::from_secs(86400);

/// `--syncRetryDuration`.
pub const SYNC_PERIOD: Bounds = Bounds { min: Duration::from_secs(1), max: DAY };
/// `--identity-assignment-reconcile-interval` (each run reads every VM and scale set from ARM).
pub const RECONCILE_PERIOD: Bounds = Bounds { min: Duration::from_secs(1), max: DAY };
/// `--update-user-msi-retry-interval` (zero is a valid pause).
pub const UPDATE_RETRY_PAUSE: Bounds = Bounds { min: Duration::ZERO, max: Duration::from_secs(300) };
/// `--arm-poll-interval` (zero would poll ARM in a busy loop).
pub const ARM_POLL: Bounds = Bounds { min: Duration::from_millis(100), max: Duration::from_secs(300) };
/// `--arm-max-retry-after`.
pub const ARM_RETRY_AFTER_CAP: Bounds = Bounds { min: Duration::from_secs(1), max: Duration::from_secs(3600) };

impl Bounds {
    /// The value within bounds, and whether it had to be changed.
    pub fn apply(self, value: Duration) -> (Duration, bool) {
        let bounded = value.clamp(self.min, self.max);
        (bounded, bounded != value)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "mic".to_owned())
}

/// The original MIC's flags, spelled exactly as it spells them.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "mic",
    about = "Managed Identity Controller: assigns Azure identities to pods' nodes",
    disable_version_flag = true
)]
pub struct Args {
    /// Path to the kubeconfig file; empty means in-cluster configuration.
    #[arg(long = "kubeconfig", default_value = "")]
    pub kubeconfig: String,
    /// Path to the cloud config (azure.json); empty means the environment variables.
    #[arg(long = "cloudconfig", default_value = "")]
    pub cloudconfig: String,
    /// Pair pods, bindings and identities only within one namespace (also env FORCENAMESPACED=true).
    #[arg(long = "forceNamespaced", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "false")]
    pub force_namespaced: bool,
    /// Print the version and exit.
    #[arg(long = "version", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "false")]
    pub version: bool,
    /// Period of the unconditional full sync.
    #[arg(long = "syncRetryDuration", default_value = "3600s", value_parser = parse_go_duration)]
    pub sync_retry_duration: Duration,
    /// Leader election holder identity (default: the host name).
    #[arg(long = "leader-election-instance", default_value_t = hostname())]
    pub leader_election_instance: String,
    /// Namespace of the leader election locks.
    #[arg(long = "leader-election-namespace", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader election locks (Endpoints and Lease).
    #[arg(long = "leader-election-name", default_value = "aad-pod-identity-mic")]
    pub leader_election_name: String,
    /// Lease duration; renew deadline is half of it, retry period a quarter.
    #[arg(long = "leader-election-duration", default_value = "15s", value_parser = parse_go_duration)]
    pub leader_election_duration: Duration,
    /// Port of the /healthz probe.
    #[arg(long = "http-probe-port", default_value = "8080")]
    pub http_probe_port: u16,
    /// Port of /metrics.
    #[arg(long = "prometheus-port", default_value = "8888")]
    pub prometheus_port: u16,
    /// Accepted for compatibility; profiling is not exposed.
    #[arg(long = "enableProfile", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "false")]
    pub enable_profile: bool,
    /// Deprecated no-op for MIC, as in the original.
    #[arg(long = "enableScaleFeatures", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "false")]
    pub enable_scale_features: bool,
    /// Maximum concurrent API-server writes per VM or scale set.
    #[arg(long = "createDeleteBatch", default_value = "20")]
    pub create_delete_batch: i64,
    /// Accepted for compatibility (the original's client-go QPS and burst); MIC coalesces
    /// events and writes each object at most twice per change instead of throttling.
    #[arg(long = "clientQps", default_value = "5")]
    pub client_qps: f64,
    /// Comma-separated client IDs never removed from VMs or scale sets.
    #[arg(long = "immutable-user-msis", default_value = "")]
    pub immutable_user_msis: String,
    /// ConfigMap recording the type upgrade.
    #[arg(long = "config-map-name", default_value = "aad-pod-identity-config")]
    pub config_map_name: String,
    /// Key in that ConfigMap.
    #[arg(long = "type-upgrade-status-key", default_value = "type-upgrade-status")]
    pub type_upgrade_status_key: String,
    /// Rewrite pre-1.6 objects in the current casing when becoming leader.
    #[arg(long = "enable-type-upgrade", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "true")]
    pub enable_type_upgrade: bool,
    /// Retries of one identity update after erroneous identities are pruned.
    #[arg(long = "update-user-msi-max-retry", default_value = "2")]
    pub update_user_msi_max_retry: u32,
    /// Pause between those retries.
    #[arg(long = "update-user-msi-retry-interval", default_value = "1s", value_parser = parse_go_duration)]
    pub update_user_msi_retry_interval: Duration,
    /// Period of the drift reconciler that re-adds identities missing on Azure.
    #[arg(long = "identity-assignment-reconcile-interval", default_value = "3m", value_parser = parse_go_duration)]
    pub identity_assignment_reconcile_interval: Duration,
    /// `text` or `json`.
    #[arg(long = "log-format", default_value = "text")]
    pub log_format: String,
    /// Appended to the user agent.
    #[arg(long = "custom-user-agent", default_value = "")]
    pub custom_user_agent: String,
    /// Extra trusted root CA (PEM) for ARM and Azure AD, e.g. the Azure simulator's.
    #[arg(long = "extra-root-ca-file", env = "AADPODID_EXTRA_ROOT_CA_FILE", hide = true)]
    pub extra_root_ca_file: Option<std::path::PathBuf>,
    /// Pause between polls of a long-running ARM operation without `Retry-After`.
    #[arg(long = "arm-poll-interval", default_value = "5s", value_parser = parse_go_duration, hide = true)]
    pub arm_poll_interval: Duration,
    /// The longest wait an ARM `Retry-After` header can impose; longer asks are cut to it.
    #[arg(long = "arm-max-retry-after", default_value = "5m", value_parser = parse_go_duration, hide = true)]
    pub arm_max_retry_after: Duration,
    #[command(flatten)]
    pub klog: aadpodid_runtime::goflags::KlogArgs,
}

impl Args {
    /// `--syncRetryDuration` within [`SYNC_PERIOD`].
    pub fn sync_period(&self) -> Duration {
        SYNC_PERIOD.apply(self.sync_retry_duration).0
    }

    /// `--identity-assignment-reconcile-interval` within [`RECONCILE_PERIOD`].
    pub fn reconcile_period(&self) -> Duration {
        RECONCILE_PERIOD.apply(self.identity_assignment_reconcile_interval).0
    }

    /// `--update-user-msi-retry-interval` within [`UPDATE_RETRY_PAUSE`].
    pub fn update_retry_pause(&self) -> Duration {
        UPDATE_RETRY_PAUSE.apply(self.update_user_msi_retry_interval).0
    }

    /// `--arm-poll-interval` within [`ARM_POLL`].
    pub fn arm_poll(&self) -> Duration {
        ARM_POLL.apply(self.arm_poll_interval).0
    }

    /// `--arm-max-retry-after` within [`ARM_RETRY_AFTER_CAP`].
    pub fn arm_retry_after_cap(&self) -> Duration {
        ARM_RETRY_AFTER_CAP.apply(self.arm_max_retry_after).0
    }

    /// The duration flags whose values are out of range: (flag, given, used). The lease is
    /// bounded by [`crate::lease::Timing::from_duration`].
    pub fn adjusted_durations(&self) -> Vec<(&'static str, Duration, Duration)> {
        let lease = crate::lease::Timing::from_duration(self.leader_election_duration).lease;
        let flags = [
            ("syncRetryDuration", self.sync_retry_duration, SYNC_PERIOD.apply(self.sync_retry_duration)),
            (
                "identity-assignment-reconcile-interval",
                self.identity_assignment_reconcile_interval,
                RECONCILE_PERIOD.apply(self.identity_assignment_reconcile_interval),
            ),
            (
                "update-user-msi-retry-interval",
                self.update_user_msi_retry_interval,
                UPDATE_RETRY_PAUSE.apply(self.update_user_msi_retry_interval),
            ),
            ("arm-poll-interval", self.arm_poll_interval, ARM_POLL.apply(self.arm_poll_interval)),
            ("arm-max-retry-after", self.arm_max_retry_after, ARM_RETRY_AFTER_CAP.apply(self.arm_max_retry_after)),
            (
                "leader-election-duration",
                self.leader_election_duration,
                (lease, lease != self.leader_election_duration),
            ),
        ];
        flags
            .into_iter()
            .filter(|(_, _, (_, changed))| *changed)
            .map(|(f, given, (used, _))| (f, given, used))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Args {
        let argv = aadpodid_runtime::goflags::normalize_args(std::iter::once("mic").chain(args.iter().copied()));
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_the_originals() {
        let a = parse(&[]);
        assert_eq!(a.sync_retry_duration, Duration::from_secs(3600));
        assert_eq!((a.http_probe_port, a.prometheus_port), (8080, 8888));
        assert_eq!(a.leader_election_duration, Duration::from_secs(15));
        assert_eq!(
            (a.leader_election_namespace.as_str(), a.leader_election_name.as_str()),
            ("default", "aad-pod-identity-mic")
        );
        assert_eq!((a.create_delete_batch, a.client_qps, a.update_user_msi_max_retry), (20, 5.0, 2));
        assert_eq!(a.identity_assignment_reconcile_interval, Duration::from_secs(180));
        assert!(a.enable_type_upgrade && !a.force_namespaced);
        assert_eq!(a.config_map_name, "aad-pod-identity-config");
    }

    #[test]
    fn manifest_style_go_flags_are_accepted() {
        let a = parse(&[
            "--cloudconfig=/etc/kubernetes/azure.json",
            "--logtostderr",
            "-v=2",
            "-forceNamespaced",
            "--syncRetryDuration=30s",
            "--enable-type-upgrade=false",
            "--immutable-user-msis=a,b",
        ]);
        assert_eq!(a.cloudconfig, "/etc/kubernetes/azure.json");
        assert!(a.force_namespaced && !a.enable_type_upgrade);
        assert_eq!(a.sync_retry_duration, Duration::from_secs(30));
    }

    #[test]
    fn zero_and_huge_durations_are_brought_into_range() {
        let a = parse(&[
            "--syncRetryDuration=0s",
            "--identity-assignment-reconcile-interval=0s",
            "--leader-election-duration=0s",
            "--update-user-msi-retry-interval=0s",
            "--arm-poll-interval=0s",
            "--arm-max-retry-after=0s",
        ]);
        assert_eq!(a.sync_period(), Duration::from_secs(1));
        assert_eq!(a.reconcile_period(), Duration::from_secs(1));
        assert_eq!(a.update_retry_pause(), Duration::ZERO);
        assert_eq!(a.arm_poll(), Duration::from_millis(100));
        assert_eq!(a.arm_retry_after_cap(), Duration::from_secs(1));
        let changed: Vec<&str> = a.adjusted_durations().iter().map(|(f, _, _)| *f).collect();
        assert_eq!(
            changed,
            [
                "syncRetryDuration",
                "identity-assignment-reconcile-interval",
                "arm-poll-interval",
                "arm-max-retry-after",
                "leader-election-duration"
            ]
        );
        let huge = parse(&["--syncRetryDuration=9999999h", "--update-user-msi-retry-interval=9999999h"]);
        assert_eq!(huge.sync_period(), DAY);
        assert_eq!(huge.update_retry_pause(), Duration::from_secs(300));
        assert!(parse(&[]).adjusted_durations().is_empty(), "the defaults are in range");
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("").is_err());
        for bad in ["-1s", "18446744073709551616000h", "1e9s", "s", "1x"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
