//! The readiness gate in front of the NMI router. NMI's rules redirect pods' IMDS traffic
//! before its watch caches have synced (so no pod ever reaches the node's IMDS while NMI
//! starts), but until they have, NMI cannot tell which pod is calling. Until then token,
//! host-token and proxied requests get 503 with `Retry-After`, a status every Azure SDK and
//! the legacy AppAuthentication client retry; nothing is proxied to the real IMDS. Requests
//! that need no cache keep their usual answers (header-less probes get the usual 400, so a
//! client's IMDS probe behaves as against a ready NMI).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::errors::NmiError;
use crate::query::{self, Route};

/// Seconds a client is asked to wait while the caches sync (usually well under a second).
/// Clients that honour it retry about five times, so 5 s leaves them some 25 s in all.
pub const NOT_READY_RETRY_AFTER_SECS: u64 = 5;

/// The body of the not-ready answer.
pub const NOT_READY_BODY: &str =
    "NMI is not ready: its caches of this node's pods and identities have not synced yet; retry later\n";

/// Whether every watch cache has had its first full list. Set once by `run`, read per request.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the gate needs: readiness, and the two flags that decide a request's route and probe answer.
#[derive(Clone, Debug)]
pub struct Gate {
    pub readiness: Readiness,
    pub block_instance_metadata: bool,
    pub metadata_header_required: bool,
}

/// What happens to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the router.
    Pass,
    /// 400: the `Metadata` header is missing (the same answer a ready NMI gives).
    MetadataHeaderRequired,
    /// 503 + `Retry-After`: the caches have not synced.
    NotReady,
}

/// The gate's decision. Answers that read no cache and reach no IMDS pass at any time;
/// everything that needs the caches or the real IMDS waits for readiness.
pub fn verdict(ready: bool, route: &Route, metadata_header_ok: bool) -> Verdict {
    if ready {
        return Verdict::Pass;
    }
    match route {
        Route::Redirect(_) | Route::InvalidRequest | Route::InstanceBlocked => Verdict::Pass,
        Route::Token | Route::Proxy if !metadata_header_ok => Verdict::MetadataHeaderRequired,
        Route::Token | Route::Proxy | Route::HostToken => Verdict::NotReady,
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(gate, guard)` around the router.
pub async fn guard(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let ready = gate.readiness.is_ready();
    if ready {
        return next.run(req).await;
    }
    let route = query::route(req.uri().path(), req.uri().query(), gate.block_instance_metadata);
    let header_ok = query::check_metadata_header(req.headers(), gate.metadata_header_required).is_ok();
    match verdict(ready, &route, header_ok) {
        Verdict::Pass => next.run(req).await,
        Verdict::MetadataHeaderRequired => NmiError::MetadataHeaderRequired.into_response(),
        Verdict::NotReady => {
            tracing::debug!(path = req.uri().path(), "Not ready: caches not synced");
            not_ready()
        }
    }
}

/// 503, `Retry-After`, plain text as NMI's other refusals.
pub fn not_ready() -> Response {
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, NOT_READY_BODY).into_response();
    let headers = res.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(NOT_READY_RETRY_AFTER_SECS));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use rstest::rstest;
    use tower::ServiceExt;

    #[rstest]
    #[case::token(Route::Token, true, Verdict::NotReady)]
    #[case::proxy(Route::Proxy, true, Verdict::NotReady)]
    #[case::host_token(Route::HostToken, true, Verdict::NotReady)]
    #[case::host_token_needs_no_header(Route::HostToken, false, Verdict::NotReady)]
    #[case::token_probe(Route::Token, false, Verdict::MetadataHeaderRequired)]
    #[case::proxy_probe(Route::Proxy, false, Verdict::MetadataHeaderRequired)]
    #[case::redirect(Route::Redirect("/metadata".into()), true, Verdict::Pass)]
    #[case::invalid(Route::InvalidRequest, true, Verdict::Pass)]
    #[case::blocked(Route::InstanceBlocked, true, Verdict::Pass)]
    fn before_sync_only_cache_free_answers_pass(#[case] route: Route, #[case] header: bool, #[case] want: Verdict) {
        assert_eq!(verdict(false, &route, header), want);
    }

    #[rstest]
    fn after_sync_everything_passes(
        #[values(Route::Token, Route::Proxy, Route::HostToken, Route::InvalidRequest)] route: Route,
        #[values(true, false)] header: bool,
    ) {
        assert_eq!(verdict(true, &route, header), Verdict::Pass);
    }

    fn gated(readiness: &Readiness) -> Router {
        let gate =
            Gate { readiness: readiness.clone(), block_instance_metadata: false, metadata_header_required: true };
        Router::new().fallback(|| async { "from the router" }).layer(axum::middleware::from_fn_with_state(gate, guard))
    }

    async fn call(router: Router, uri: &str, metadata: bool) -> (StatusCode, Option<String>, String) {
        let mut req = Request::get(uri);
        if metadata {
            req = req.header("Metadata", "true");
        }
        let res = router.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status();
        let retry_after = res.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, retry_after, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_router_is_reached_only_once_ready() {
        let readiness = Readiness::new();
        let token = "/metadata/identity/oauth2/token?resource=https://vault.azure.net";
        let (status, retry_after, body) = call(gated(&readiness), token, true).await;
        assert_eq!(
            (status, retry_after.as_deref(), body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("5"), NOT_READY_BODY)
        );
        let (status, _, body) = call(gated(&readiness), "/metadata/versions", true).await;
        assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, NOT_READY_BODY), "nothing is proxied");
        let (status, retry_after, body) = call(gated(&readiness), token, false).await;
        assert_eq!(
            (status, retry_after, body.as_str()),
            (StatusCode::BAD_REQUEST, None, crate::errors::METADATA_HEADER_BODY)
        );

        readiness.set_ready();
        let (status, _, body) = call(gated(&readiness), token, true).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "from the router"));
    }
}
