//! Every way an NMI request can fail, and the one exhaustive mapping to the wire: the
//! original's status codes and texts, which clients' retry logic reads.
//!
//! Never logs (a response-logging layer does) and never carries a token, secret or assertion.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// The JSON body of the metadata-header rejection, byte for byte as the original (with `\n`).
pub const METADATA_HEADER_BODY: &str =
    "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n";

/// The JSON body of the forwarding-header rejection, in IMDS's error shape (never "Identity not
/// found", which .NET's probe reads as "no identity").
pub const FORWARDED_BODY: &str = "{\"error\":\"invalid_request\",\"error_description\":\"Request contains a forwarding header (X-Forwarded-For or Forwarded); requests through a proxy are refused\"}\n";

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NmiError {
    #[error("Required metadata header not specified")]
    MetadataHeaderRequired,
    #[error("request remote address is empty")]
    RemoteAddressEmpty,
    #[error("request remote address is not from a host")]
    NotFromHost,
    #[error("parameter resource cannot be empty")]
    ResourceEmpty,
    #[error("missing 'podname' and 'podns' from request header")]
    HostHeadersMissing,
    #[error("Invalid request")]
    InvalidRequest,
    #[error("Request blocked by AAD Pod Identity NMI")]
    InstanceBlocked,
    /// Zero or several pods with the caller's IP.
    #[error("{0}")]
    PodLookup(String),
    /// The pod's identity could not be determined (404, or 503 + `Retry-After: 20`).
    #[error("{message}")]
    IdentityNotFound { message: String, retry_after: bool },
    /// IMDS or Azure AD answered with a refusal (the original's `TokenRefreshError`).
    #[error("{0}")]
    TokenRefused(String),
    /// The token source could not be reached or configured (the original's "health check" errors).
    #[error("{0}")]
    TokenUnavailable(String),
    /// The exception/MIC bypass failed; the original answers 403 whatever the cause.
    #[error("{0}")]
    BypassFailed(String),
    /// The real IMDS could not be reached by the proxy.
    #[error("{0}")]
    Proxy(String),
    /// This node's IMDS budget is spent (ours; IMDS itself answers 429 past its limits).
    #[error("{message}")]
    Throttled { message: String, retry_after_secs: u64 },
    /// `X-Forwarded-For` or `Forwarded` present: IMDS refuses relayed requests.
    #[error("Request contains a forwarding header (X-Forwarded-For or Forwarded)")]
    Forwarded,
    /// The caller (pod) went over its request rate; it may retry after this many seconds.
    #[error("Too many requests from this pod")]
    TooManyRequests { retry_after_secs: u64 },
    /// Too many requests in flight on the node; retry after a second.
    #[error("NMI is busy")]
    Overloaded,
    /// A request body larger than the proxy accepts.
    #[error("Request body too large")]
    BodyTooLarge,
    /// A request body that did not arrive in time.
    #[error("Request body not received in time")]
    BodyTimeout,
}

impl NmiError {
    /// The status the original answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MetadataHeaderRequired
            | Self::ResourceEmpty
            | Self::HostHeadersMissing
            | Self::InvalidRequest
            | Self::Forwarded => StatusCode::BAD_REQUEST,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::InstanceBlocked | Self::TokenRefused(_) | Self::BypassFailed(_) => StatusCode::FORBIDDEN,
            Self::IdentityNotFound { retry_after: false, .. } => StatusCode::NOT_FOUND,
            Self::IdentityNotFound { retry_after: true, .. } | Self::TokenUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RemoteAddressEmpty | Self::NotFromHost | Self::PodLookup(_) | Self::Proxy(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for NmiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            Self::MetadataHeaderRequired => json_error(status, METADATA_HEADER_BODY),
            Self::Forwarded => json_error(status, FORWARDED_BODY),
            Self::IdentityNotFound { retry_after: true, .. } => {
                with_retry_after(text_error(status, &self.to_string()), HeaderValue::from_static("20"))
            }
            Self::Throttled { retry_after_secs, .. } => {
                with_retry_after(text_error(status, &self.to_string()), HeaderValue::from(retry_after_secs.max(1)))
            }
            Self::TooManyRequests { retry_after_secs } => {
                with_retry_after(text_error(status, &self.to_string()), HeaderValue::from(retry_after_secs.max(1)))
            }
            Self::Overloaded => with_retry_after(text_error(status, &self.to_string()), HeaderValue::from_static("1")),
            Self::RemoteAddressEmpty
            | Self::NotFromHost
            | Self::ResourceEmpty
            | Self::HostHeadersMissing
            | Self::InvalidRequest
            | Self::InstanceBlocked
            | Self::PodLookup(_)
            | Self::IdentityNotFound { retry_after: false, .. }
            | Self::TokenRefused(_)
            | Self::TokenUnavailable(_)
            | Self::BypassFailed(_)
            | Self::Proxy(_)
            | Self::BodyTooLarge
            | Self::BodyTimeout => text_error(status, &self.to_string()),
        }
    }
}

fn json_error(status: StatusCode, body: &'static str) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    res
}

fn with_retry_after(mut res: Response, seconds: HeaderValue) -> Response {
    res.headers_mut().insert(header::RETRY_AFTER, seconds);
    res
}

/// Go's `http.Error`: plain text, `nosniff`, message plus a newline.
fn text_error(status: StatusCode, message: &str) -> Response {
    let mut res = (status, format!("{message}\n")).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parts(err: NmiError) -> (StatusCode, http::HeaderMap) {
        let res = err.into_response();
        (res.status(), res.headers().clone())
    }

    #[test]
    fn metadata_rejection_is_json_with_the_original_content_type() {
        let (status, headers) = parts(NmiError::MetadataHeaderRequired);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json; charset=utf-8");
        let v: serde_json::Value = serde_json::from_str(METADATA_HEADER_BODY).unwrap();
        assert_eq!(v["error"], "invalid_request");
        assert!(!METADATA_HEADER_BODY.contains("Identity not found"));
    }

    #[rstest]
    #[case(NmiError::ResourceEmpty, 400, "parameter resource cannot be empty")]
    #[case(NmiError::HostHeadersMissing, 400, "missing 'podname' and 'podns' from request header")]
    #[case(NmiError::InvalidRequest, 400, "Invalid request")]
    #[case(NmiError::InstanceBlocked, 403, "Request blocked by AAD Pod Identity NMI")]
    #[case(NmiError::RemoteAddressEmpty, 500, "request remote address is empty")]
    #[case(NmiError::NotFromHost, 500, "request remote address is not from a host")]
    #[case(NmiError::PodLookup("pod list is empty".into()), 500, "pod list is empty")]
    #[case(NmiError::IdentityNotFound { message: "none".into(), retry_after: false }, 404, "none")]
    #[case(NmiError::TokenRefused("aad said no".into()), 403, "aad said no")]
    #[case(NmiError::TokenUnavailable("down".into()), 503, "down")]
    #[case(NmiError::BypassFailed("x".into()), 403, "x")]
    #[case(NmiError::Proxy("x".into()), 500, "x")]
    #[case(NmiError::BodyTooLarge, 413, "Request body too large")]
    #[case(NmiError::BodyTimeout, 408, "Request body not received in time")]
    fn text_errors_have_the_original_status_and_text(#[case] err: NmiError, #[case] status: u16, #[case] text: &str) {
        assert_eq!(err.to_string(), text);
        let (got, headers) = parts(err);
        assert_eq!(got.as_u16(), status);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(headers.get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn throttling_is_429_with_the_advised_retry_after() {
        let (status, headers) = parts(NmiError::Throttled { message: "busy".into(), retry_after_secs: 2 });
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }

    #[test]
    fn identity_not_found_with_retry_after_is_503_and_twenty_seconds() {
        let (status, headers) = parts(NmiError::IdentityNotFound { message: "m".into(), retry_after: true });
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "20");
    }

    #[test]
    fn forwarded_requests_get_an_imds_shaped_json_400() {
        let (status, headers) = parts(NmiError::Forwarded);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json; charset=utf-8");
        let v: serde_json::Value = serde_json::from_str(FORWARDED_BODY).unwrap();
        assert_eq!(v["error"], "invalid_request");
        assert!(!FORWARDED_BODY.contains("Identity not found"));
    }

    #[rstest]
    #[case(NmiError::TooManyRequests { retry_after_secs: 3 }, 429, "3")]
    #[case(NmiError::TooManyRequests { retry_after_secs: 0 }, 429, "1")]
    #[case(NmiError::Overloaded, 503, "1")]
    fn limits_answer_with_retry_after(#[case] err: NmiError, #[case] status: u16, #[case] retry_after: &str) {
        let (got, headers) = parts(err);
        assert_eq!(got.as_u16(), status);
        assert_eq!(headers[header::RETRY_AFTER], retry_after);
    }
}
