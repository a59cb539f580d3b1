//! The plain settings of a simulator: how to start one ([`SimConfig`]), the timing knobs that can change
//! while it runs ([`Timing`]) and the URLs it ends up serving on ([`Endpoints`]). They sit apart from the
//! handle and from start-up so that both, and the faces, can use them without depending on each other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The tenant used when none is configured.
pub const DEFAULT_TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The subscription used when none is configured.
pub const DEFAULT_SUBSCRIPTION_ID: &str = "2a1b3c4d-0000-4000-8000-00000000a51e";

/// How to start the simulator. `Default` gives loopback listeners on free ports, no ARM latency and
/// instant long-running operations (what most tests want).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// ARM over plain HTTP.
    pub arm_http_addr: SocketAddr,
    /// ARM over HTTPS.
    pub arm_https_addr: SocketAddr,
    /// Azure AD over plain HTTP.
    pub aad_http_addr: SocketAddr,
    /// Azure AD over HTTPS.
    pub aad_https_addr: SocketAddr,
    /// Tenant ID.
    pub tenant_id: String,
    /// Subscription ID.
    pub subscription_id: String,
    /// Region of everything created.
    pub location: String,
    /// Where to write `ca.pem` (and, on request, the Azure Stack environment file); `None` = a temporary
    /// directory removed with the [`RunningSim`](crate::RunningSim).
    pub state_dir: Option<PathBuf>,
    /// Extra names (IP addresses or DNS names) for the HTTPS certificate, e.g. an address reachable from
    /// node network namespaces.
    pub tls_names: Vec<String>,
    /// Added to every ARM call (benchmarks: 1–2 s is realistic; tests: zero).
    pub arm_latency: Duration,
    /// How long a VM/VMSS write stays `InProgress` before its identities are applied.
    pub lro_duration: Duration,
    /// Lifetime of Azure AD tokens.
    pub aad_token_lifetime: Duration,
    /// Lifetime of IMDS (managed identity) tokens.
    pub imds_token_lifetime: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            arm_http_addr: lo,
            arm_https_addr: lo,
            aad_http_addr: lo,
            aad_https_addr: lo,
            tenant_id: DEFAULT_TENANT_ID.to_owned(),
            subscription_id: DEFAULT_SUBSCRIPTION_ID.to_owned(),
            location: "westus2".to_owned(),
            state_dir: None,
            tls_names: Vec::new(),
            arm_latency: Duration::ZERO,
            lro_duration: Duration::ZERO,
            aad_token_lifetime: Duration::from_secs(3599),
            imds_token_lifetime: Duration::from_secs(86399),
        }
    }
}

/// Timing knobs that can change while the simulator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    /// Added to every ARM call.
    #[serde(with = "duration_ms")]
    pub arm_latency: Duration,
    /// How long writes stay `InProgress`.
    #[serde(with = "duration_ms")]
    pub lro_duration: Duration,
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The URLs a running simulator serves on (set once its listeners are bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// ARM, plain HTTP, no trailing slash.
    pub arm_http: String,
    /// ARM, HTTPS.
    pub arm_https: String,
    /// Azure AD, plain HTTP.
    pub aad_http: String,
    /// Azure AD, HTTPS.
    pub aad_https: String,
}
