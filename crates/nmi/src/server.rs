//! The HTTP shell: the original's routes (token, host token, instance block, proxy), each a
//! short sequence of pure steps (`query`, `select`) and two injected effects: what is on this
//! node ([`NodeState`]) and where tokens come from ([`TokenSource`]).
//!
//! Must never import kube (the store implements [`NodeState`]) and never log a token.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aadpodid_api::AzurePodIdentityException;
use aadpodid_api::view::redact_client_id;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::errors::NmiError;
use crate::limits::{self, Limits, RateLimiter};
use crate::metrics::{self, Metrics};
use crate::query::{self, IdentityRequest, Route, TokenQuery};
use crate::select::{self, AssignedView, BindingView, IdentityView, MicIdentity, PodView, RetryPolicy, Step};
use crate::token::TokenJson;

// === Injected effects ===

/// What NMI knows about its node, from watch caches. Reads are synchronous and cheap.
pub trait NodeState: Send + Sync + 'static {
    /// The pods on this node with `ip` in `status.podIP` or `status.podIPs`, in any phase (a
    /// request's candidates; filtering before building views keeps a request's cost flat in
    /// the number of pods on the node).
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodView>;
    fn pod(&self, namespace: &str, name: &str) -> Option<PodView>;
    /// AzurePodIdentityExceptions of a namespace.
    fn exceptions(&self, namespace: &str) -> Vec<AzurePodIdentityException>;
    /// Standard mode: the AzureAssignedIdentities of one pod.
    fn assigned(&self, namespace: &str, pod: &str) -> Vec<AssignedView>;
    /// Managed mode: bindings of a namespace.
    fn bindings(&self, namespace: &str) -> Vec<BindingView>;
    /// Managed mode: identities of a namespace.
    fn identities(&self, namespace: &str) -> Vec<IdentityView>;
}

/// Why no token could be had; decides 403 or 503 as the original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFailure {
    /// IMDS or Azure AD answered with a refusal (non-200): 403.
    Refused(String),
    /// Transport, secret, certificate or configuration trouble: 503.
    Unavailable(String),
    /// This node's IMDS budget is spent (ours): 429 with `Retry-After`.
    Throttled { message: String, retry_after_secs: u64 },
}

/// Where tokens come from (IMDS and Azure AD, cached). Implemented in `tokens`.
pub trait TokenSource: Send + Sync + 'static {
    /// Tokens for an identity: one, or primary plus auxiliary tenants for a service principal.
    fn identity_tokens<'a>(
        &'a self,
        identity: &'a IdentityView,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TokenJson>, TokenFailure>>;
    /// The bypass: a token from the node's IMDS for `client_id`, or the system-assigned identity.
    fn node_token<'a>(
        &'a self,
        client_id: Option<&'a str>,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<TokenJson, TokenFailure>>;
}

// === Configuration and state ===

/// How identities are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// AzureAssignedIdentities written by MIC.
    Standard,
    /// Bindings and identities directly; no MIC.
    Managed,
}

/// Request-path settings, from the flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub force_namespaced: bool,
    /// Who MIC is, for the short-cut to the node's token; `None` turns it off.
    pub mic: Option<MicIdentity>,
    pub retry: RetryPolicy,
    pub retry_interval: Duration,
    pub metadata_header_required: bool,
    pub set_retry_after_header: bool,
    pub block_instance_metadata: bool,
    /// `http://<metadata-ip>:<metadata-port>`, for the proxy.
    pub imds_base: String,
    /// `<metadata-ip>:<metadata-port>`, the Host header the proxy sets.
    pub imds_host: String,
    /// Pod lookup: retries after the first attempt (4) and their spacing (300 ms).
    pub pod_lookup_retries: u32,
    pub pod_lookup_interval: Duration,
    /// Connection, rate, time and size bounds.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Standard,
            force_namespaced: false,
            mic: MicIdentity::from_flags(true, "default", select::DEFAULT_MIC_SERVICE_ACCOUNT),
            retry: RetryPolicy::default(),
            retry_interval: Duration::from_secs(5),
            metadata_header_required: true,
            set_retry_after_header: false,
            block_instance_metadata: false,
            imds_base: "http://169.254.169.254:80".into(),
            imds_host: "169.254.169.254:80".into(),
            pod_lookup_retries: 4,
            pod_lookup_interval: Duration::from_millis(300),
            limits: Limits::default(),
        }
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub node: Arc<dyn NodeState>,
    pub tokens: Arc<dyn TokenSource>,
    pub metrics: Metrics,
    proxy: reqwest::Client,
    /// Principal IDs learnt from tokens' `oid` claims, by client ID (ours, for `object_id`).
    object_ids: Arc<RwLock<HashMap<String, String>>>,
    /// Each pod's request rate.
    rates: Arc<Mutex<RateLimiter>>,
    /// Requests being answered on the node.
    in_flight: Arc<Semaphore>,
}

impl AppState {
    pub fn new(config: Config, node: Arc<dyn NodeState>, tokens: Arc<dyn TokenSource>, metrics: Metrics) -> Self {
        // IMDS must never be reached through an HTTP proxy, and its redirects go back to the
        // caller (who asks again, through NMI's routing) instead of being followed here.
        let proxy = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.limits.proxy_timeout)
            .build()
            .unwrap_or_default();
        let rates = Arc::new(Mutex::new(RateLimiter::new(config.limits.pod_rate)));
        let in_flight = Arc::new(Semaphore::new(config.limits.max_requests_in_flight));
        Self { config: Arc::new(config), node, tokens, metrics, proxy, object_ids: Arc::default(), rates, in_flight }
    }
}

/// The NMI listener's router. Every path goes through the original's route table.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(state): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let _permit = match admit(&state, peer.ip()) {
        Ok(permit) => permit,
        Err(err) => return err.into_response(),
    };
    // Decoded once: the path routed on is the path measured and the path forwarded.
    let Some(path) = query::decode_path(req.uri().path()) else { return NmiError::InvalidRequest.into_response() };
    match query::route_decoded(&path, req.uri().query(), state.config.block_instance_metadata) {
        Route::Redirect(to) => redirect(&to),
        Route::Token => {
            let (parts, _) = req.into_parts();
            measured(&state, &path, peer, parts.uri.query(), token(&state, peer, &parts)).await
        }
        Route::HostToken => {
            let (parts, _) = req.into_parts();
            measured(&state, &path, peer, parts.uri.query(), host_token(&state, peer, &parts)).await
        }
        Route::InvalidRequest => NmiError::InvalidRequest.into_response(),
        Route::InstanceBlocked => NmiError::InstanceBlocked.into_response(),
        Route::Proxy => proxy(&state, &path, req).await.unwrap_or_else(IntoResponse::into_response),
    }
}

/// The pod's rate, then the node's requests in flight; the permit is held until the answer.
fn admit(state: &AppState, ip: IpAddr) -> Result<OwnedSemaphorePermit, NmiError> {
    let checked = state.rates.lock().unwrap_or_else(PoisonError::into_inner).check(ip, Instant::now());
    if let Err(wait) = checked {
        tracing::debug!(%ip, "Request refused: over the pod's request rate");
        return Err(NmiError::TooManyRequests { retry_after_secs: limits::retry_after_secs(wait) });
    }
    state.in_flight.clone().try_acquire_owned().map_err(|_| {
        tracing::debug!(%ip, "Request refused: too many requests in flight");
        NmiError::Overloaded
    })
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(location) => (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into_response(),
        Err(_) => NmiError::InvalidRequest.into_response(),
    }
}

/// Runs a token or host handler, records the original's histogram, and writes the request's
/// audit line.
async fn measured(
    state: &AppState,
    path: &str,
    peer: SocketAddr,
    query: Option<&str>,
    handler: impl Future<Output = (Audit, Result<Response, NmiError>)>,
) -> Response {
    let started = Instant::now();
    let (audit, result) = handler.await;
    let resource = query::parse_token_query(query).map(|q| q.resource).unwrap_or_default();
    let (response, refusal) = match result {
        Ok(res) => (res, None),
        Err(err) => {
            let reason = err.to_string();
            (err.into_response(), Some(reason))
        }
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let namespace = audit.pod.as_ref().map(|(ns, _)| ns.as_str()).unwrap_or_default();
    state.metrics.observe_operation(path, &status.to_string(), namespace, &resource, elapsed.as_secs_f64());
    audit.write(&AuditOutcome {
        path,
        caller: peer.ip(),
        resource: &resource,
        status,
        refusal: refusal.as_deref(),
        elapsed,
    });
    response
}

/// Who asked and for which identity, as far as the handler got: the audit line's subject.
#[derive(Debug, Default)]
struct Audit {
    /// (namespace, name) of the calling pod, once found.
    pod: Option<(String, String)>,
    /// The identity chosen for the pod, with its client ID (redacted when written).
    identity: Option<(String, String)>,
    /// Where the token came from when not from the pod's own identity.
    source: Option<&'static str>,
}

/// How a token request ended.
struct AuditOutcome<'a> {
    path: &'a str,
    caller: IpAddr,
    resource: &'a str,
    status: u16,
    /// The refusal's message (never a token: errors carry none).
    refusal: Option<&'a str>,
    elapsed: Duration,
}

/// Numbers token requests on this node; with the process's start time, unique across restarts.
static REQUEST_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_request_id() -> String {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let boot = *BOOT
        .get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let n = REQUEST_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{boot:x}-{n}")
}

impl Audit {
    /// One line per token decision, target `aadpodid_nmi::audit`: request id, caller IP, pod,
    /// identity and redacted client ID, resource, outcome and latency. Never the token.
    fn write(&self, outcome: &AuditOutcome<'_>) {
        let pod = self.pod.as_ref().map(|(ns, name)| format!("{ns}/{name}"));
        let (identity, client_id) = match &self.identity {
            Some((name, client_id)) => (Some(name.as_str()), Some(redact_client_id(client_id))),
            None => (None, None),
        };
        let outcome_word = if outcome.refusal.is_none() { "served" } else { "refused" };
        let latency_ms = u64::try_from(outcome.elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Some(reason) = outcome.refusal {
            tracing::warn!(target: "aadpodid_nmi::audit", request_id = %next_request_id(), caller = %outcome.caller,
                pod = pod.as_deref(), identity, client_id = client_id.as_deref(), source = self.source,
                path = outcome.path, resource = outcome.resource, outcome = outcome_word, status = outcome.status,
                reason, latency_ms, "Token request");
        } else {
            tracing::info!(target: "aadpodid_nmi::audit", request_id = %next_request_id(), caller = %outcome.caller,
                pod = pod.as_deref(), identity, client_id = client_id.as_deref(), source = self.source,
                path = outcome.path, resource = outcome.resource, outcome = outcome_word, status = outcome.status,
                latency_ms, "Token request");
        }
    }
}

// === Token endpoint ===

async fn token(state: &AppState, peer: SocketAddr, req: &Parts) -> (Audit, Result<Response, NmiError>) {
    let mut audit = Audit::default();
    let early = (|| {
        query::check_metadata_header(&req.headers, state.config.metadata_header_required)?;
        query::check_not_forwarded(&req.headers)?;
        let ip = caller_ipv4(peer).ok_or(NmiError::RemoteAddressEmpty)?;
        Ok::<_, NmiError>((ip, query::parse_token_query(req.uri.query())?))
    })();
    let (ip, q) = match early {
        Ok(v) => v,
        Err(err) => return (audit, Err(err)),
    };
    let pod = match find_pod(state, ip).await {
        Ok(pod) => pod,
        Err(err) => return (audit, Err(err)),
    };
    audit.pod = Some((pod.namespace.clone(), pod.name.clone()));
    let result = token_for_pod(state, &pod, &q, &mut audit).await;
    (audit, result)
}

async fn token_for_pod(
    state: &AppState,
    pod: &PodView,
    q: &TokenQuery,
    audit: &mut Audit,
) -> Result<Response, NmiError> {
    let exceptions = state.node.exceptions(&pod.namespace);
    if select::is_bypassed(pod, &exceptions, state.config.mic.as_ref()) {
        audit.source = Some("node IMDS (excepted pod)");
        let client_id = q.identity.client_id.as_deref();
        let token = state.tokens.node_token(client_id, &q.resource).await.map_err(|e| match e {
            TokenFailure::Refused(m) | TokenFailure::Unavailable(m) => NmiError::BypassFailed(m),
            TokenFailure::Throttled { message, retry_after_secs } => NmiError::Throttled { message, retry_after_secs },
        })?;
        return Ok(json_response(&token));
    }
    let identity = identities(state, (&pod.namespace, &pod.name), &q.identity, &q.resource)
        .await
        .map_err(|message| NmiError::IdentityNotFound { message, retry_after: state.config.set_retry_after_header })?;
    audit.identity = Some((identity.name.clone(), identity.client_id().to_owned()));
    let tokens = fetch_tokens(state, &identity, &q.resource).await?;
    Ok(match tokens.as_slice() {
        [one] => json_response(one),
        many => json_response(&many),
    })
}

/// The caller's IPv4 address; the original parses `RemoteAddr` up to the first `:`.
fn caller_ipv4(peer: SocketAddr) -> Option<IpAddr> {
    match peer.ip() {
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
    }
}

/// The pod with the caller's IP: one attempt plus the original's 4 retries, 300 ms apart.
async fn find_pod(state: &AppState, ip: IpAddr) -> Result<PodView, NmiError> {
    let mut attempt = 0;
    loop {
        match select::match_pod(&state.node.pods_with_ip(ip), ip) {
            Ok(pod) => return Ok(pod),
            Err(text) => {
                state.metrics.kubernetes_errors.with_label_values(&[metrics::GET_POD_LIST]).inc();
                if attempt >= state.config.pod_lookup_retries {
                    return Err(NmiError::PodLookup(text));
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(state.config.pod_lookup_interval).await;
    }
}

/// The pod's identity for this request, by mode; the error text becomes a 404 (or 503).
async fn identities(
    state: &AppState,
    pod: (&str, &str),
    req: &IdentityRequest,
    resource: &str,
) -> Result<IdentityView, String> {
    match state.config.mode {
        Mode::Managed => {
            let (ns, name) = pod;
            let view = state.node.pod(ns, name).ok_or_else(|| format!("pod {ns}/{name} not found on this node"))?;
            let ids = with_object_ids(state, state.node.identities(ns));
            select::managed_select(&view, &state.node.bindings(ns), &ids, req)
        }
        Mode::Standard => {
            if req.object_id.is_some() {
                learn_object_ids(state, pod, resource).await;
            }
            standard_identities(state, pod, req).await
        }
    }
}

/// The standard-mode loop: only sleeps; every decision is `select::standard_step`. Dropped
/// (and so cancelled) when the client goes away, as the original's context.
async fn standard_identities(
    state: &AppState,
    pod: (&str, &str),
    req: &IdentityRequest,
) -> Result<IdentityView, String> {
    let cfg = &state.config;
    let mut attempt = 0;
    loop {
        let assigned = state.node.assigned(pod.0, pod.1);
        let assigned: Vec<AssignedView> = assigned
            .into_iter()
            .map(|mut a| {
                a.identity = with_object_id(state, a.identity);
                a
            })
            .collect();
        match select::standard_step(pod, &assigned, req, attempt, cfg.retry) {
            Step::Found(candidates) => return select::pick_identity(candidates, req, pod.0, cfg.force_namespaced),
            Step::GiveUp(text) => return Err(text),
            Step::Wait => {
                tracing::debug!(namespace = pod.0, pod = pod.1, attempt, "Waiting for an assigned identity");
                tokio::time::sleep(cfg.retry_interval).await;
                attempt += 1;
            }
        }
    }
}

fn with_object_ids(state: &AppState, ids: Vec<IdentityView>) -> Vec<IdentityView> {
    ids.into_iter().map(|id| with_object_id(state, id)).collect()
}

fn with_object_id(state: &AppState, mut id: IdentityView) -> IdentityView {
    if id.object_id.is_none() {
        let known = state.object_ids.read().unwrap_or_else(PoisonError::into_inner);
        id.object_id = known.get(&id.client_id().to_ascii_lowercase()).cloned();
    }
    id
}

/// For `object_id` requests: fetch (cached) tokens of the pod's usable identities whose
/// principal ID is not known yet, and learn it from their `oid` claim.
async fn learn_object_ids(state: &AppState, pod: (&str, &str), resource: &str) {
    for a in state.node.assigned(pod.0, pod.1) {
        let usable = matches!(
            a.state,
            aadpodid_api::AssignedIdentityState::Assigned | aadpodid_api::AssignedIdentityState::Legacy
        );
        if usable && with_object_id(state, a.identity.clone()).object_id.is_none() {
            let _ = fetch_tokens(state, &a.identity, resource).await;
        }
    }
}

async fn fetch_tokens(state: &AppState, identity: &IdentityView, resource: &str) -> Result<Vec<TokenJson>, NmiError> {
    let tokens = state.tokens.identity_tokens(identity, resource).await.map_err(|e| match e {
        TokenFailure::Refused(m) => NmiError::TokenRefused(m),
        TokenFailure::Unavailable(m) => NmiError::TokenUnavailable(m),
        TokenFailure::Throttled { message, retry_after_secs } => NmiError::Throttled { message, retry_after_secs },
    })?;
    if let Some(oid) = tokens.first().and_then(crate::token::object_id) {
        let mut known = state.object_ids.write().unwrap_or_else(PoisonError::into_inner);
        known.insert(identity.client_id().to_ascii_lowercase(), oid);
    }
    Ok(tokens)
}

fn json_response<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => NmiError::TokenUnavailable(format!("failed to encode the token response: {err}")).into_response(),
    }
}

// === Host endpoint ===

async fn host_token(state: &AppState, peer: SocketAddr, req: &Parts) -> (Audit, Result<Response, NmiError>) {
    let mut audit = Audit { source: Some("host endpoint"), ..Audit::default() };
    let (ns, name) = match query::host_pod_headers(&req.headers) {
        Ok(v) => v,
        Err(err) => return (audit, Err(err)),
    };
    let result = host_token_for(state, peer, req, (&ns, &name), &mut audit).await;
    audit.pod = Some((ns, name));
    (audit, result)
}

async fn host_token_for(
    state: &AppState,
    peer: SocketAddr,
    req: &Parts,
    pod: (&str, &str),
    audit: &mut Audit,
) -> Result<Response, NmiError> {
    if peer.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        return Err(NmiError::NotFromHost);
    }
    let q = query::parse_token_query(req.uri.query())?;
    let identity = identities(state, pod, &q.identity, &q.resource)
        .await
        .map_err(|message| NmiError::IdentityNotFound { message, retry_after: false })?;
    audit.identity = Some((identity.name.clone(), identity.client_id().to_owned()));
    let tokens = fetch_tokens(state, &identity, &q.resource).await?;
    let first = tokens.into_iter().next().unwrap_or_default();
    Ok(json_response(&serde_json::json!({ "token": first, "clientid": identity.client_id() })))
}

// === Proxy ===

/// Hop-by-hop headers, and the Host header the proxy sets itself.
const DROPPED_REQUEST_HEADERS: &[header::HeaderName] = &[
    header::HOST,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::UPGRADE,
    header::TE,
    header::PROXY_AUTHORIZATION,
];
const DROPPED_RESPONSE_HEADERS: &[header::HeaderName] =
    &[header::CONNECTION, header::TRANSFER_ENCODING, header::CONTENT_LENGTH, header::UPGRADE];

/// IMDS's largest answers (the instance document) are a few KiB.
const MAX_UPSTREAM_BODY: usize = 8 << 20;

/// Forwards a request to IMDS with `path`, the decoded path it was routed on (never the raw
/// one), its query as sent, and IMDS's own Host header.
async fn proxy(state: &AppState, path: &str, req: Request) -> Result<Response, NmiError> {
    query::check_metadata_header(req.headers(), state.config.metadata_header_required)?;
    query::check_not_forwarded(req.headers())?;
    if req.method() == Method::CONNECT {
        return Err(NmiError::InvalidRequest);
    }
    let url = match req.uri().query() {
        Some(q) => format!("{}{path}?{q}", state.config.imds_base),
        None => format!("{}{path}", state.config.imds_base),
    };
    let (parts, body) = req.into_parts();
    let body = read_body(body, &state.config.limits).await?;
    let mut headers = parts.headers;
    for name in DROPPED_REQUEST_HEADERS {
        headers.remove(name);
    }
    if let Ok(host) = HeaderValue::from_str(&state.config.imds_host) {
        headers.insert(header::HOST, host);
    }
    let upstream = state.proxy.request(parts.method, url).headers(headers).body(body).send().await;
    let mut upstream =
        upstream.map_err(|e| NmiError::Proxy(format!("failed to reach the instance metadata service: {e}")))?;
    let status = upstream.status();
    let mut out_headers = std::mem::take(upstream.headers_mut());
    for name in DROPPED_RESPONSE_HEADERS {
        out_headers.remove(name);
    }
    let bytes = read_upstream(upstream).await?;
    let mut res = Response::new(Body::from(bytes));
    *res.status_mut() = status;
    *res.headers_mut() = out_headers;
    Ok(res)
}

/// The request body, at most `max_body_bytes`, arriving within the proxy timeout.
async fn read_body(body: Body, limits: &Limits) -> Result<axum::body::Bytes, NmiError> {
    let read = tokio::time::timeout(limits.proxy_timeout, axum::body::to_bytes(body, limits.max_body_bytes));
    match read.await {
        Err(_elapsed) => Err(NmiError::BodyTimeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            let source = err.into_inner();
            if source.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(NmiError::BodyTooLarge)
            } else {
                Err(NmiError::InvalidRequest)
            }
        }
    }
}

async fn read_upstream(mut upstream: reqwest::Response) -> Result<Vec<u8>, NmiError> {
    let mut out = Vec::new();
    while let Some(chunk) =
        upstream.chunk().await.map_err(|e| NmiError::Proxy(format!("reading the instance metadata answer: {e}")))?
    {
        if out.len() + chunk.len() > MAX_UPSTREAM_BODY {
            return Err(NmiError::Proxy("the instance metadata answer is too large".into()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
