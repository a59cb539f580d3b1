//! The probe and metrics HTTP servers. `/healthz` answers 200 always, with the body the
//! original's e2e tests and dashboards read: `Active` once this replica does its job
//! (MIC: leading and syncing; NMI: iptables rules installed and watch caches synced),
//! `Not Active` before.
//! No pprof or other debug handlers are exposed (a deliberate difference, for security).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

/// Whether this replica is doing its job; shared between the worker and the probe server.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_active(&self, active: bool) {
        self.0.store(active, Ordering::Release);
    }

    pub fn is_active(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// `GET /healthz`: 200 with `Active` or `Not Active`, like the original.
pub fn probe_router(health: Health) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(health)
}

async fn healthz(State(health): State<Health>) -> &'static str {
    if health.is_active() { "Active" } else { "Not Active" }
}

/// `GET /metrics` in the Prometheus text format, names exactly as registered.
pub fn metrics_router(registry: Registry) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(registry)
}

async fn metrics(State(registry): State<Registry>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_owned())], body),
        Err(err) => {
            tracing::warn!(error = %err, "Failed to encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain".to_owned())], Vec::new())
        }
    }
}

/// Serves `router` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn body_of(router: Router, uri: &str) -> (StatusCode, String) {
        let res = router.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_says_not_active_until_the_worker_is_active() {
        let health = Health::new();
        assert_eq!(body_of(probe_router(health.clone()), "/healthz").await, (StatusCode::OK, "Not Active".into()));
        health.set_active(true);
        assert_eq!(body_of(probe_router(health), "/healthz").await, (StatusCode::OK, "Active".into()));
    }

    #[tokio::test]
    async fn metrics_keep_counter_names_without_a_total_suffix() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("aadpodidentity_mic_cycle_count", "number of sync cycles").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let (status, body) = body_of(metrics_router(registry), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("aadpodidentity_mic_cycle_count 1"), "{body}");
        assert!(!body.contains("_total"), "{body}");
    }

    #[tokio::test]
    async fn no_debug_handlers_are_exposed() {
        let (status, _) = body_of(probe_router(Health::new()), "/debug/pprof/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
