//! The IMDS token call as adal made it for the original: `GET /metadata/identity/oauth2/token`
//! with `api-version=2018-02-01`, `Metadata: true`, never through a proxy, retried on the
//! statuses adal retries. The response is passed through as a [`Token`].

use std::time::Duration;

use tracing::debug;
use url::Url;

use super::{ImdsLimiter, Token, TokenError, read_token_response};
use crate::http::HttpOptions;

/// Where IMDS lives on every Azure VM.
pub const DEFAULT_IMDS_URL: &str = "http://169.254.169.254";
/// The API version the original NMI always used, whatever the pod asked for.
pub const IMDS_API_VERSION: &str = "2018-02-01";
const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

/// Which of the node's managed identities to ask IMDS for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentitySelector {
    /// No selector: the node's system-assigned identity (or IMDS's own choice if it has one).
    SystemAssigned,
    /// `client_id=` a user-assigned identity's client ID.
    ClientId(String),
    /// `object_id=` an identity's object (principal) ID.
    ObjectId(String),
    /// `msi_res_id=` a user-assigned identity's ARM resource ID.
    ResourceId(String),
}

impl IdentitySelector {
    fn query_pair(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::SystemAssigned => None,
            Self::ClientId(id) => Some(("client_id", id)),
            Self::ObjectId(id) => Some(("object_id", id)),
            Self::ResourceId(id) => Some(("msi_res_id", id)),
        }
    }
}

/// How often and how patiently to retry a token call. `delays[i]` is the pause after the
/// `i+1`-th failed attempt; the last delay repeats if there are more attempts than delays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, at least one is always made.
    pub attempts: u32,
    /// Pauses between attempts.
    pub delays: Vec<Duration>,
}

impl RetryPolicy {
    /// adal v0.9's IMDS policy: 5 attempts, pauses of 2, 6, 14, 30 and 60 s (exponential, capped
    /// at 60 s). Unlike adal we do not pause after the last attempt.
    pub fn adal() -> Self {
        Self { attempts: 5, delays: [2, 6, 14, 30, 60].into_iter().map(Duration::from_secs).collect() }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        Self { attempts: 1, delays: Vec::new() }
    }

    /// `attempts` attempts without pauses, for tests.
    pub fn immediate(attempts: u32) -> Self {
        Self { attempts, delays: Vec::new() }
    }

    /// The pause after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.delays.get(index).or(self.delays.last()).copied().unwrap_or(Duration::ZERO)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::adal()
    }
}

/// The statuses adal retries for IMDS: 404, 408, 410, 429 and 500–511 except 509.
pub fn is_retriable_status(status: u16) -> bool {
    matches!(status, 404 | 408 | 410 | 429 | 500..=508 | 510 | 511)
}

/// Client for the node's IMDS token endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ImdsClient {
    http: reqwest::Client,
    endpoint: Url,
    retry: RetryPolicy,
    limiter: Option<ImdsLimiter>,
}

impl ImdsClient {
    /// A client for IMDS at `base_url` (scheme, host, port; e.g. [`DEFAULT_IMDS_URL`]) with the
    /// adal retry policy and default transport settings.
    pub fn new(base_url: &str) -> Result<Self, TokenError> {
        Self::with_options(base_url, &HttpOptions::default(), RetryPolicy::adal())
    }

    /// A client with explicit transport settings and retry policy.
    pub fn with_options(base_url: &str, http: &HttpOptions, retry: RetryPolicy) -> Result<Self, TokenError> {
        let base =
            Url::parse(base_url).map_err(|e| TokenError::InvalidRequest(format!("IMDS URL {base_url:?}: {e}")))?;
        let endpoint = base.join(TOKEN_PATH).map_err(|e| TokenError::InvalidRequest(format!("IMDS URL: {e}")))?;
        Ok(Self { http: http.build(true)?, endpoint, retry, limiter: None })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client with every attempt (retries included) within `limiter`'s budget; share
    /// one limiter by every IMDS client of a node.
    pub fn with_limiter(mut self, limiter: ImdsLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The token URL this client calls (without query).
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Fetches a token for `resource` from IMDS, retrying as the policy says. A final non-200
    /// is [`TokenError::Refused`]; an attempt the limiter has no room for ends the call with
    /// [`TokenError::Throttled`]. Dropping the future cancels the call and any pending retry.
    pub async fn token(&self, resource: &str, identity: &IdentitySelector) -> Result<Token, TokenError> {
        let url = self.token_url(resource, identity);
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let permit = match &self.limiter {
                Some(limiter) => Some(limiter.acquire().await.inspect_err(|error| {
                    debug!(%error, attempt, "No room for an IMDS call on this node");
                })?),
                None => None,
            };
            let outcome = self.http.get(url.clone()).header("Metadata", "true").send().await;
            let retriable = match &outcome {
                Ok(response) => is_retriable_status(response.status().as_u16()),
                Err(_) => true,
            };
            if !retriable || attempt >= attempts {
                let token = match outcome {
                    Ok(response) => read_token_response(response).await,
                    Err(error) => Err(TokenError::Transport(error.without_url())),
                };
                drop(permit);
                log_outcome(&token, identity, resource, attempt);
                return token;
            }
            drop(permit);
            let delay = self.retry.delay_after(attempt);
            match &outcome {
                Ok(response) => {
                    debug!(status = response.status().as_u16(), attempt, ?delay, "IMDS token request failed, retrying")
                }
                Err(error) => {
                    let error = super::redact_ids(&error.to_string());
                    debug!(%error, attempt, ?delay, "IMDS unreachable, retrying");
                }
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

impl ImdsClient {
    fn token_url(&self, resource: &str, identity: &IdentitySelector) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", IMDS_API_VERSION);
            if let Some((key, value)) = identity.query_pair() {
                query.append_pair(key, value);
            }
            query.append_pair("resource", resource);
        }
        url
    }
}

fn log_outcome(token: &Result<Token, TokenError>, identity: &IdentitySelector, resource: &str, attempts: u32) {
    let selector = match identity {
        IdentitySelector::SystemAssigned => "system-assigned".to_owned(),
        IdentitySelector::ClientId(id) => format!("client_id {}", aadpodid_api::view::redact_client_id(id)),
        IdentitySelector::ObjectId(id) => format!("object_id {}", aadpodid_api::view::redact_client_id(id)),
        IdentitySelector::ResourceId(id) => format!("msi_res_id {id}"),
    };
    match token {
        Ok(_) => debug!(identity = %selector, resource, attempts, "Got token from IMDS"),
        Err(error) => debug!(identity = %selector, resource, attempts, %error, "IMDS token request failed"),
    }
}
