//! Tokens as IMDS and NMI speak them, and the clients that fetch them: [`ImdsClient`] (the
//! node's managed identities) and [`AadClient`] (Azure AD v1 client credentials, secret or
//! certificate). No caching here (NMI and the ARM client cache on top); never logs a token,
//! secret or assertion.

mod aad;
mod cert;
mod imds;
mod limit;
mod redact;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

pub use aad::{AadClient, DEFAULT_AUTHORITY, token_url};
pub use cert::ClientCertificate;
pub use imds::{DEFAULT_IMDS_URL, IMDS_API_VERSION, IdentitySelector, ImdsClient, RetryPolicy, is_retriable_status};
pub use limit::{ImdsLimiter, ImdsLimits, ImdsPermit, RateWindow};
pub use redact::redact_ids;

use crate::http::BuildError;

// === Token ===

/// An access token in the IMDS / ADAL v1 JSON shape that NMI returns to pods: every value is a
/// string, empty values are still emitted. `client_id` is our addition (real IMDS sends it too);
/// it is omitted when unknown.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    #[serde(default, deserialize_with = "lenient_string")]
    pub access_token: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub refresh_token: String,
    /// Seconds of validity as received.
    #[serde(default, deserialize_with = "lenient_string")]
    pub expires_in: String,
    /// Expiry as Unix seconds (decimal string), after [`Token::normalize_expires_on`].
    #[serde(default, deserialize_with = "lenient_string")]
    pub expires_on: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub not_before: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub resource: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub token_type: String,
    /// The client ID of the identity the token was issued to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_string")]
    pub client_id: Option<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &redacted(&self.access_token))
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("expires_in", &self.expires_in)
            .field("expires_on", &self.expires_on)
            .field("not_before", &self.not_before)
            .field("resource", &self.resource)
            .field("token_type", &self.token_type)
            .field("client_id", &self.client_id.as_deref().map(aadpodid_api::view::redact_client_id))
            .finish()
    }
}

fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

impl Token {
    /// `expires_on` as Unix seconds, accepting the formats ADAL accepts: Unix seconds (possibly
    /// fractional), `1/2/2006 15:04:05 +00:00`, `1/2/2006 3:04:05 PM +00:00`, and RFC 3339.
    pub fn expires_on_unix(&self) -> Option<i64> {
        parse_expires_on(&self.expires_on)
    }

    /// When the token expires, if `expires_on` is readable.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.expires_on_unix()?).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }

    /// Whether the token is still valid `margin` after `now`; unknown expiry counts as expired.
    pub fn is_fresh(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires_at().is_some_and(|at| now.checked_add(margin).is_some_and(|limit| at > limit))
    }

    /// Rewrites `expires_on` to Unix seconds, as ADAL does, so callers (and msal-node, which
    /// prefers `expires_on`) always see one format. Falls back to `now + expires_in`.
    pub fn normalize_expires_on(&mut self, now: SystemTime) {
        if let Some(secs) = self.expires_on_unix() {
            self.expires_on = secs.to_string();
            return;
        }
        let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if let Ok(expires_in) = self.expires_in.trim().parse::<u64>() {
            self.expires_on = now_secs.saturating_add(expires_in).to_string();
        }
    }
}

fn parse_expires_on(value: &str) -> Option<i64> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<i64>() {
        return Some(secs);
    }
    if let Ok(secs) = value.parse::<f64>() {
        // Saturating float-to-int cast; tokens expire long before i64 overflows.
        return secs.is_finite().then_some(secs as i64);
    }
    parse_adal_date(value)
}

/// ADAL's `1/2/2006 15:04:05 +00:00` and `1/2/2006 3:04:05 PM +00:00` (App Service MSI), or RFC 3339.
fn parse_adal_date(value: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(value, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let mut parts = value.split_whitespace();
    let date = parts.next()?;
    let clock = parts.next()?;
    let mut rest: Vec<&str> = parts.collect();
    let offset = rest.pop()?;
    let meridiem = rest.pop();
    if !rest.is_empty() || offset != "+00:00" {
        return None;
    }
    let mut d = date.split('/').map(|p| p.parse::<u32>().ok());
    let (month, day, year) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.split(':').map(|p| p.parse::<u32>().ok());
    let (mut hour, minute, second) = (c.next()??, c.next()??, c.next()??);
    match meridiem {
        Some("PM") if hour < 12 => hour += 12,
        Some("AM") if hour == 12 => hour = 0,
        Some("AM" | "PM") | None => {}
        Some(_) => return None,
    }
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let clock =
        time::Time::from_hms(u8::try_from(hour).ok()?, u8::try_from(minute).ok()?, u8::try_from(second).ok()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp())
}

/// JSON scalars we accept where a string is expected: IMDS look-alikes send numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Self::Str(s) => s,
            Self::Int(i) => i.to_string(),
            Self::UInt(u) => u.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string).unwrap_or_default())
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string))
}

// === TokenError ===

/// Why no token came back. NMI maps [`TokenError::is_refusal`] to 403 (the original's adal
/// `TokenRefreshError`: IMDS or Azure AD answered non-200) and everything else to 503.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// IMDS or Azure AD answered with a non-200 status after any retries.
    #[error("token request refused with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    /// The endpoint could not be reached or the connection failed.
    #[error("failed to send the token request")]
    Transport(#[source] reqwest::Error),
    /// A 200 whose body is not a token.
    #[error("token endpoint answered with an invalid body")]
    InvalidResponse(#[source] serde_json::Error),
    /// The PKCS#12 bundle or its key cannot be used for a client assertion.
    #[error("invalid client certificate: {0}")]
    Certificate(String),
    /// The request could not be built (bad authority URL, empty tenant, ...).
    #[error("invalid token request: {0}")]
    InvalidRequest(String),
    /// The HTTP client could not be built (bad extra root CA, ...).
    #[error("failed to build the token client")]
    Client(#[from] BuildError),
    /// This node's own IMDS budget is spent (see [`ImdsLimiter`]); nothing was sent.
    #[error("too many IMDS token requests on this node; retry after {}s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
}

impl TokenError {
    /// True when the token endpoint itself said no (NMI answers 403); false for everything the
    /// original called a health-check error (NMI answers 503).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Refused { .. } => true,
            Self::Transport(_)
            | Self::InvalidResponse(_)
            | Self::Certificate(_)
            | Self::InvalidRequest(_)
            | Self::Client(_)
            | Self::Throttled { .. } => false,
        }
    }

    /// True when the endpoint is unavailable for now (unreachable, timed out, 404/408/410/429/5xx
    /// as IMDS uses them, an unreadable 200, or this node's own IMDS budget) rather than saying
    /// no to this identity (400, 401, 403, a bad certificate or request). A cache may keep
    /// serving a valid token through the former, never through the latter.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused { status, .. } => is_retriable_status(*status),
            Self::Transport(_) | Self::InvalidResponse(_) | Self::Throttled { .. } => true,
            Self::Certificate(_) | Self::InvalidRequest(_) | Self::Client(_) => false,
        }
    }
}

/// Reads a token response: non-200 is a refusal (its body summarised without identity IDs), a
/// 200 must be token JSON.
async fn read_token_response(response: reqwest::Response) -> Result<Token, TokenError> {
    let status = response.status();
    let body = response.text().await.map_err(|e| TokenError::Transport(e.without_url()))?;
    if status != reqwest::StatusCode::OK {
        return Err(TokenError::Refused { status: status.as_u16(), body: redact::summarize_error_body(&body) });
    }
    let mut token: Token = serde_json::from_str(&body).map_err(TokenError::InvalidResponse)?;
    token.normalize_expires_on(SystemTime::now());
    Ok(token)
}

#[cfg(test)]
mod tests;
