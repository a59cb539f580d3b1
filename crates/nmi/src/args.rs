//! NMI's command line: the original's flag spellings and defaults, a
//! compatibility contract since DaemonSets pass them. Go's `-name` and `--bool=false` forms
//! are accepted after `aadpodid_runtime::goflags::normalize_args`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{Limits, Rate};

/// The iptables check period: at least a second (zero cannot be ticked), at most a day.
const IPT_PERIOD: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86400));
/// The longest pause between identity lookups, and the longest wait at termination.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// Flags of the `nmi` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "nmi", version, about = "NMI, the Node Managed Identity daemon of AAD Pod Identity")]
// pflag lets a repeated flag override the earlier one; manifests and wrappers rely on it.
#[command(args_override_self = true)]
pub struct Args {
    /// Address NMI listens on; the iptables DNAT target (0.0.0.0 means 127.0.0.1 there).
    #[arg(long = "nmi-listen-address", default_value = "127.0.0.1")]
    pub listen_address: Ipv4Addr,
    /// Port NMI listens on.
    #[arg(long = "nmi-port", default_value_t = 2579)]
    pub nmi_port: u16,
    /// IP address of the instance metadata service.
    #[arg(long = "metadata-ip", default_value = "169.254.169.254")]
    pub metadata_ip: Ipv4Addr,
    /// Port of the instance metadata service.
    #[arg(long = "metadata-port", default_value_t = 80)]
    pub metadata_port: u16,
    /// Name of the node NMI runs on (usually `$(NODE_NAME)`).
    #[arg(long = "node", default_value = "")]
    pub node: String,
    /// Seconds between iptables checks.
    #[arg(long = "ipt-update-interval-sec", default_value_t = 60)]
    pub ipt_update_interval_sec: u64,
    /// Only use identities and bindings of the pod's own namespace.
    #[arg(long = "forceNamespaced", env = "FORCENAMESPACED", num_args = 0..=1, default_missing_value = "true",
        require_equals = true, default_value = "false")]
    pub force_namespaced: bool,
    /// Namespace of MIC pods, which get node tokens directly.
    #[arg(long = "MICNamespace", default_value = "default")]
    pub mic_namespace: String,
    /// Service account MIC runs as: a pod in `--MICNamespace` gets node tokens directly only
    /// with this account (and a ReplicaSet named `mic…`). Empty turns that short-cut off.
    #[arg(long = "mic-service-account", default_value = crate::select::DEFAULT_MIC_SERVICE_ACCOUNT,
        value_parser = mic_service_account)]
    pub mic_service_account: String,
    /// Port of `/healthz`.
    #[arg(long = "http-probe-port", default_value_t = 8080)]
    pub http_probe_port: u16,
    /// Attempts to wait for an AzureAssignedIdentity to be created.
    #[arg(long = "retry-attempts-for-created", default_value_t = 16)]
    pub retry_attempts_for_created: u32,
    /// Further attempts to wait for a created AzureAssignedIdentity to be assigned.
    #[arg(long = "retry-attempts-for-assigned", default_value_t = 4)]
    pub retry_attempts_for_assigned: u32,
    /// Seconds between those attempts.
    #[arg(long = "find-identity-retry-interval", default_value_t = 5)]
    pub find_identity_retry_interval: u64,
    /// Accepted for compatibility; profiling endpoints are never exposed.
    #[arg(long = "enableProfile", num_args = 0..=1, default_missing_value = "true", require_equals = true,
        default_value = "false")]
    pub enable_profile: bool,
    /// Watch only this node's AzureAssignedIdentities (label `nodename`).
    #[arg(long = "enableScaleFeatures", num_args = 0..=1, default_missing_value = "true", require_equals = true,
        default_value = "true")]
    pub enable_scale_features: bool,
    /// Answer 403 to `/metadata/instance` requests.
    #[arg(long = "block-instance-metadata", num_args = 0..=1, default_missing_value = "true", require_equals = true,
        default_value = "false")]
    pub block_instance_metadata: bool,
    /// Require `Metadata: true` as IMDS does.
    #[arg(long = "metadata-header-required", num_args = 0..=1, default_missing_value = "true",
        require_equals = true, default_value = "true")]
    pub metadata_header_required: bool,
    /// Port of `/metrics`.
    #[arg(long = "prometheus-port", default_value_t = 9090)]
    pub prometheus_port: u16,
    /// `standard` (with MIC) or `managed` (bindings read directly).
    #[arg(long = "operation-mode", default_value = "standard")]
    pub operation_mode: String,
    /// Run even where the kubelet uses kubenet.
    #[arg(long = "allow-network-plugin-kubenet", num_args = 0..=1, default_missing_value = "true",
        require_equals = true, default_value = "false")]
    pub allow_network_plugin_kubenet: bool,
    /// Kubelet defaults file read by the kubenet guard.
    #[arg(long = "kubelet-config", default_value = "/etc/default/kubelet")]
    pub kubelet_config: PathBuf,
    /// Answer 503 with `Retry-After: 20` instead of 404 while no identity is found.
    #[arg(long = "set-retry-after-header", num_args = 0..=1, default_missing_value = "true",
        require_equals = true, default_value = "false")]
    pub set_retry_after_header: bool,
    /// Delete conntrack entries to IMDS after the first rule install (needs `conntrack`).
    #[arg(long = "enable-conntrack-deletion", num_args = 0..=1, default_missing_value = "true",
        require_equals = true, default_value = "false")]
    pub enable_conntrack_deletion: bool,
    /// `text` or `json`.
    #[arg(long = "log-format", default_value = "text")]
    pub log_format: String,
    /// Appended to the User-Agent.
    #[arg(long = "custom-user-agent", default_value = "")]
    pub custom_user_agent: String,
    /// Kubeconfig; otherwise in-cluster configuration.
    #[arg(long = "kubeconfig", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds NMI keeps serving after SIGTERM/SIGINT before it removes the rules and exits
    /// (the original waits 10 s too, but after removing the rules).
    #[arg(long = "termination-wait-sec", env = "NMI_TERMINATION_WAIT_SEC", default_value_t = 10, hide = true)]
    pub termination_wait_sec: u64,
    /// Leave the iptables rules in place on exit, so that until NMI is back pods' IMDS
    /// connections are refused instead of reaching the node's IMDS (and every identity on it).
    /// Uninstalling then leaves the rules on the nodes; remove them by hand.
    #[arg(long = "keep-rules-on-exit", num_args = 0..=1, default_missing_value = "true", require_equals = true,
        default_value = "false")]
    pub keep_rules_on_exit: bool,
    /// PEM file of extra root CAs for Azure AD (e.g. a simulator's); not in the original.
    #[arg(long = "extra-root-ca-file", env = "AADPODID_EXTRA_ROOT_CA_FILE", hide = true)]
    pub extra_root_ca_file: Option<PathBuf>,
    /// Namespaces whose Secrets any service principal identity may use (comma-separated);
    /// otherwise only the identity's own namespace. Not in the original.
    #[arg(long = "allowed-secret-namespaces", value_delimiter = ',')]
    pub allowed_secret_namespaces: Vec<String>,
    /// Azure AD endpoints besides the known clouds' that identities may name as `adEndpoint`
    /// (comma-separated URLs; e.g. Azure Stack's). Not in the original.
    #[arg(long = "allowed-ad-endpoints", value_delimiter = ',')]
    pub allowed_ad_endpoints: Vec<String>,
    /// Most tokens (identity x resource) cached on this node. Not in the original.
    #[arg(long = "token-cache-max-entries", default_value_t = 2048)]
    pub token_cache_max_entries: usize,
    /// Most resources cached per identity. Not in the original.
    #[arg(long = "token-cache-max-per-identity", default_value_t = 64)]
    pub token_cache_max_per_identity: usize,
    /// Seconds a token failure is answered without asking Azure again. Not in the original.
    #[arg(long = "token-failure-cache-sec", default_value_t = 5)]
    pub token_failure_cache_sec: u64,
    /// Cached tokens requested within this many seconds are refreshed ahead of expiry in the
    /// background. Not in the original.
    #[arg(long = "token-refresh-idle-sec", default_value_t = 7200)]
    pub token_refresh_idle_sec: u64,
    /// Most IMDS token calls in progress at once from this node (IMDS allows 5). Not in the original.
    #[arg(long = "imds-max-concurrent", default_value_t = 5)]
    pub imds_max_concurrent: usize,
    /// Most IMDS token calls started per second from this node (IMDS allows 20). Not in the original.
    #[arg(long = "imds-max-per-second", default_value_t = 20)]
    pub imds_max_per_second: usize,
    /// Milliseconds a token request may wait for room under those limits before a 429. Not in
    /// the original.
    #[arg(long = "imds-queue-wait-ms", default_value_t = 1000)]
    pub imds_queue_wait_ms: u64,
    // Bounds on the listener (not in the original, which has none). The defaults never limit an
    // SDK that works against a VM's real IMDS.
    /// Seconds a request head may take to arrive, from the connection's start (or the request's
    /// first byte on a kept-alive connection); a slower client is disconnected. SDKs send a head
    /// in one write.
    #[arg(long = "header-read-timeout-sec", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_sec: u64,
    /// Seconds a kept-alive connection may wait for its next request before it is closed; longer
    /// than the SDKs' own idle pool timeouts (60–90 s), so clients close first.
    #[arg(long = "idle-timeout-sec", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_sec: u64,
    /// Open connections on this node; more are closed at once.
    #[arg(long = "max-connections", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections from one pod (source address); more are closed at once, and the pod's
    /// other connections and every other pod are unaffected.
    #[arg(long = "max-connections-per-pod", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_pod: u32,
    /// Requests being answered at once on this node (a request may wait up to the identity
    /// assignment wait); more get 503 with `Retry-After: 1`, which SDKs retry.
    #[arg(long = "max-requests-in-flight", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_in_flight: u32,
    /// Requests per second one pod (source address) may sustain; more get 429 with
    /// `Retry-After`, which SDKs retry. 0 disables the limit. Real IMDS allows a whole VM 20.
    #[arg(long = "pod-requests-per-second", default_value_t = 100)]
    pub pod_requests_per_second: u32,
    /// Requests one pod may send at once above its rate (a start-up burst of probes and tokens).
    #[arg(long = "pod-request-burst", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub pod_request_burst: u32,
    /// Largest request body forwarded to IMDS, in bytes; larger ones get 413. IMDS requests have
    /// none or a small JSON one.
    #[arg(long = "max-request-body-bytes", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_body_bytes: u32,
    /// Seconds the proxy waits for IMDS's whole answer to a forwarded request (and for the
    /// request's body); then 500, as for an unreachable IMDS.
    #[arg(long = "imds-proxy-timeout-sec", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub imds_proxy_timeout_sec: u64,
    #[command(flatten)]
    pub klog: aadpodid_runtime::goflags::KlogArgs,
}

impl Args {
    /// `--ipt-update-interval-sec`, within one second and one day.
    pub fn ipt_update_period(&self) -> Duration {
        Duration::from_secs(self.ipt_update_interval_sec).clamp(IPT_PERIOD.0, IPT_PERIOD.1)
    }

    /// `--find-identity-retry-interval` (zero is allowed: retry at once), at most five minutes.
    pub fn find_identity_retry_pause(&self) -> Duration {
        Duration::from_secs(self.find_identity_retry_interval).min(MAX_PAUSE)
    }

    /// `--termination-wait-sec`, at most five minutes.
    pub fn termination_wait(&self) -> Duration {
        Duration::from_secs(self.termination_wait_sec).min(MAX_PAUSE)
    }

    /// The token source's settings: credential policy and cache bounds (the policy's flags are
    /// checked here, at start-up).
    pub fn token_settings(&self) -> Result<crate::tokens::TokenSettings, String> {
        let policy = crate::policy::CredentialPolicy::new(&self.allowed_secret_namespaces, &self.allowed_ad_endpoints)?;
        let cache = crate::cache::CacheLimits {
            max_entries: self.token_cache_max_entries,
            max_per_group: self.token_cache_max_per_identity,
            failure_ttl: self.token_failure_cache_sec,
            idle: self.token_refresh_idle_sec,
        };
        Ok(crate::tokens::TokenSettings { policy, cache, ..Default::default() })
    }

    /// This node's IMDS budget.
    pub fn imds_limits(&self) -> aadpodid_azure::token::ImdsLimits {
        aadpodid_azure::token::ImdsLimits {
            max_concurrent: self.imds_max_concurrent,
            max_per_second: self.imds_max_per_second,
            max_wait: Duration::from_millis(self.imds_queue_wait_ms),
        }
    }

    /// The listener's and the request path's bounds.
    pub fn limits(&self) -> Limits {
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_sec),
            idle_timeout: Duration::from_secs(self.idle_timeout_sec),
            max_connections: count(self.max_connections),
            max_connections_per_pod: count(self.max_connections_per_pod),
            max_requests_in_flight: count(self.max_requests_in_flight),
            pod_rate: Rate { per_second: self.pod_requests_per_second, burst: self.pod_request_burst },
            max_body_bytes: count(self.max_request_body_bytes),
            proxy_timeout: Duration::from_secs(self.imds_proxy_timeout_sec),
        }
    }
}

/// Refuses `default`: every pod of a namespace may run as it, so it would not tell MIC apart.
fn mic_service_account(value: &str) -> Result<String, String> {
    if value == "default" {
        return Err("every pod may run as `default`; give MIC its own service account, or except it with an \
                    AzurePodIdentityException"
            .to_owned());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(aadpodid_runtime::goflags::normalize_args(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_the_originals() {
        let a = parse(&["nmi"]);
        assert_eq!((a.listen_address, a.nmi_port), (Ipv4Addr::LOCALHOST, 2579));
        assert_eq!((a.metadata_ip, a.metadata_port), (Ipv4Addr::new(169, 254, 169, 254), 80));
        assert_eq!((a.ipt_update_interval_sec, a.http_probe_port, a.prometheus_port), (60, 8080, 9090));
        assert_eq!(
            (a.retry_attempts_for_created, a.retry_attempts_for_assigned, a.find_identity_retry_interval),
            (16, 4, 5)
        );
        assert!(a.enable_scale_features && a.metadata_header_required);
        assert!(!a.block_instance_metadata && !a.set_retry_after_header && !a.allow_network_plugin_kubenet);
        assert_eq!(a.operation_mode, "standard");
        assert_eq!(a.kubelet_config, PathBuf::from("/etc/default/kubelet"));
        assert_eq!(a.termination_wait_sec, 10);
        assert_eq!(a.mic_service_account, "aad-pod-id-mic-service-account");
        assert!(!a.keep_rules_on_exit, "the rules are removed on exit unless asked otherwise");
    }

    #[test]
    fn the_mic_service_account_may_be_empty_but_not_default() {
        assert_eq!(parse(&["nmi", "--mic-service-account="]).mic_service_account, "");
        assert_eq!(
            parse(&["nmi", "--mic-service-account=aad-pod-identity-mic"]).mic_service_account,
            "aad-pod-identity-mic"
        );
        let err = Args::try_parse_from(["nmi", "--mic-service-account=default"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn keep_rules_on_exit_takes_go_bool_forms() {
        assert!(parse(&["nmi", "--keep-rules-on-exit"]).keep_rules_on_exit);
        assert!(parse(&["nmi", "-keep-rules-on-exit=true"]).keep_rules_on_exit);
        assert!(!parse(&["nmi", "--keep-rules-on-exit=false"]).keep_rules_on_exit);
    }

    #[test]
    fn manifest_command_lines_parse() {
        let a = parse(&[
            "nmi",
            "--node=aks-1",
            "--http-probe-port=8085",
            "--operation-mode=managed",
            "--forceNamespaced=true",
            "-metadata-header-required=false",
            "--enableScaleFeatures=false",
            "--logtostderr",
            "-v=2",
            "--MICNamespace=kube-system",
            "--block-instance-metadata",
        ]);
        assert_eq!(a.node, "aks-1");
        assert_eq!(a.http_probe_port, 8085);
        assert!(a.force_namespaced && a.block_instance_metadata);
        assert!(!a.metadata_header_required && !a.enable_scale_features);
        assert_eq!(a.mic_namespace, "kube-system");
    }

    #[test]
    fn zero_and_huge_interval_flags_are_brought_into_range() {
        let zero = parse(&["nmi", "--ipt-update-interval-sec=0", "--find-identity-retry-interval=0"]);
        assert_eq!(zero.ipt_update_period(), Duration::from_secs(1));
        assert_eq!(zero.find_identity_retry_pause(), Duration::ZERO);
        let max = u64::MAX.to_string();
        let huge = parse(&[
            "nmi",
            &format!("--ipt-update-interval-sec={max}"),
            &format!("--find-identity-retry-interval={max}"),
            &format!("--termination-wait-sec={max}"),
        ]);
        assert_eq!(huge.ipt_update_period(), Duration::from_secs(86400));
        assert_eq!(huge.find_identity_retry_pause(), MAX_PAUSE);
        assert_eq!(huge.termination_wait(), MAX_PAUSE);
        let defaults = parse(&["nmi"]);
        assert_eq!(defaults.ipt_update_period(), Duration::from_secs(60));
        assert_eq!(defaults.find_identity_retry_pause(), Duration::from_secs(5));
        assert_eq!(defaults.termination_wait(), Duration::from_secs(10));
        assert!(Args::try_parse_from(["nmi", "--ipt-update-interval-sec=-1"]).is_err());
    }

    #[test]
    fn token_limits_default_to_imds_own_and_lists_split_on_commas() {
        let a = parse(&["nmi"]);
        assert!(a.allowed_secret_namespaces.is_empty() && a.allowed_ad_endpoints.is_empty());
        assert_eq!((a.imds_max_concurrent, a.imds_max_per_second, a.imds_queue_wait_ms), (5, 20, 1000));
        assert_eq!((a.token_cache_max_entries, a.token_cache_max_per_identity), (2048, 64));
        assert_eq!((a.token_failure_cache_sec, a.token_refresh_idle_sec), (5, 7200));
        let a = parse(&[
            "nmi",
            "--allowed-secret-namespaces=shared,infra",
            "-allowed-ad-endpoints=https://adfs.local/,https://127.0.0.1:4444/",
        ]);
        assert_eq!(a.allowed_secret_namespaces, ["shared", "infra"]);
        assert_eq!(a.allowed_ad_endpoints, ["https://adfs.local/", "https://127.0.0.1:4444/"]);
    }

    #[test]
    fn limit_flags_default_to_the_documented_limits_and_can_be_set() {
        assert_eq!(parse(&["nmi"]).limits(), Limits::default());
        let a = parse(&[
            "nmi",
            "--header-read-timeout-sec=3",
            "--idle-timeout-sec=7",
            "--max-connections=10",
            "--max-connections-per-pod=2",
            "--max-requests-in-flight=5",
            "--pod-requests-per-second=0",
            "--pod-request-burst=4",
            "--max-request-body-bytes=100",
            "--imds-proxy-timeout-sec=9",
        ]);
        let l = a.limits();
        assert_eq!((l.header_read_timeout, l.idle_timeout), (Duration::from_secs(3), Duration::from_secs(7)));
        assert_eq!((l.max_connections, l.max_connections_per_pod, l.max_requests_in_flight), (10, 2, 5));
        assert_eq!(l.pod_rate, Rate { per_second: 0, burst: 4 });
        assert_eq!((l.max_body_bytes, l.proxy_timeout), (100, Duration::from_secs(9)));
        let zero = Args::try_parse_from(["nmi", "--max-connections-per-pod=0"]).unwrap_err();
        assert_eq!(zero.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn a_repeated_flag_overrides_the_earlier_one_like_pflag() {
        assert_eq!(parse(&["nmi", "--nmi-port=1", "--nmi-port=2"]).nmi_port, 2);
    }

    #[test]
    fn unknown_flags_are_rejected_like_pflag() {
        let err = Args::try_parse_from(["nmi", "--host-ip=10.0.0.1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
