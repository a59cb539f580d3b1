//! Shared `reqwest` client construction: extra trusted roots (the simulator's CA), timeouts,
//! proxy policy. Owns no state; never logs.

use std::time::Duration;

/// Transport settings shared by the token and ARM clients.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// PEM of extra root CAs to trust besides the built-in roots, e.g. the Azure simulator's CA.
    pub extra_root_ca_pem: Option<Vec<u8>>,
    /// Limit for a whole request, connect to last byte.
    pub timeout: Duration,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { extra_root_ca_pem: None, timeout: Duration::from_secs(60), connect_timeout: Duration::from_secs(10) }
    }
}

impl HttpOptions {
    /// The defaults plus one extra trusted root CA bundle (PEM).
    pub fn with_root_ca_pem(pem: impl Into<Vec<u8>>) -> Self {
        Self { extra_root_ca_pem: Some(pem.into()), ..Self::default() }
    }

    /// Builds a client; `no_proxy` is for link-local endpoints (IMDS) that a proxy must never see.
    pub(crate) fn build(&self, no_proxy: bool) -> Result<reqwest::Client, BuildError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(USER_AGENT);
        if no_proxy {
            builder = builder.no_proxy();
        }
        if let Some(pem) = &self.extra_root_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(BuildError::RootCa)?;
            if certs.is_empty() {
                return Err(BuildError::EmptyRootCa);
            }
            builder = builder.tls_certs_merge(certs);
        }
        builder.build().map_err(BuildError::Client)
    }
}

/// Sent on every request, so server logs can tell us from the original.
pub(crate) const USER_AGENT: &str = concat!("aad-pod-identity-rs/", env!("CARGO_PKG_VERSION"));

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("extra root CA is not valid PEM")]
    RootCa(#[source] reqwest::Error),
    #[error("extra root CA PEM holds no certificate")]
    EmptyRootCa,
    #[error("failed to build the HTTP client")]
    Client(#[source] reqwest::Error),
}
