use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use aadpodid_api::{AssignedIdentityState, AzureIdentitySpec, AzurePodIdentityExceptionSpec};
use axum::extract::connect_info::MockConnectInfo;
use http_body_util::BodyExt;
use tower::ServiceExt;

const POD_IP: &str = "10.244.1.5";

// === Fakes ===

#[derive(Default)]
struct FakeNode {
    pods: Mutex<Vec<PodView>>,
    assigned: Mutex<Vec<AssignedView>>,
    exceptions: Mutex<Vec<AzurePodIdentityException>>,
    bindings: Mutex<Vec<BindingView>>,
    identities: Mutex<Vec<IdentityView>>,
    assigned_reads: AtomicUsize,
}

impl NodeState for FakeNode {
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodView> {
        self.pods.lock().unwrap().iter().filter(|p| p.ip == Some(ip)).cloned().collect()
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<PodView> {
        self.pods.lock().unwrap().iter().find(|p| p.namespace == namespace && p.name == name).cloned()
    }
    fn exceptions(&self, namespace: &str) -> Vec<AzurePodIdentityException> {
        let all = self.exceptions.lock().unwrap().clone();
        all.into_iter().filter(|e| e.metadata.namespace.as_deref() == Some(namespace)).collect()
    }
    fn assigned(&self, _namespace: &str, _pod: &str) -> Vec<AssignedView> {
        self.assigned_reads.fetch_add(1, Ordering::SeqCst);
        self.assigned.lock().unwrap().clone()
    }
    fn bindings(&self, namespace: &str) -> Vec<BindingView> {
        self.bindings.lock().unwrap().iter().filter(|b| b.namespace == namespace).cloned().collect()
    }
    fn identities(&self, namespace: &str) -> Vec<IdentityView> {
        self.identities.lock().unwrap().iter().filter(|i| i.namespace == namespace).cloned().collect()
    }
}

#[derive(Default)]
struct FakeTokens {
    fail: Mutex<Option<TokenFailure>>,
    node_calls: Mutex<Vec<Option<String>>>,
}

fn mk_token(client_id: &str, resource: &str) -> TokenJson {
    TokenJson {
        access_token: mk_jwt(client_id),
        expires_in: "3599".into(),
        expires_on: "4102444800".into(),
        not_before: "1700000000".into(),
        resource: resource.into(),
        token_type: "Bearer".into(),
        client_id: Some(client_id.into()),
        ..Default::default()
    }
}

fn mk_jwt(client_id: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.token-for-{client_id}", b64("{}".into()), b64(format!(r#"{{"oid":"oid-{client_id}"}}"#)))
}

impl TokenSource for FakeTokens {
    fn identity_tokens<'a>(
        &'a self,
        identity: &'a IdentityView,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TokenJson>, TokenFailure>> {
        let fail = self.fail.lock().unwrap().clone();
        Box::pin(async move {
            if let Some(f) = fail {
                return Err(f);
            }
            let mut out = vec![mk_token(identity.client_id(), resource)];
            for tenant in identity.spec.auxiliary_tenant_ids.iter().flatten() {
                out.push(mk_token(&format!("{}@{tenant}", identity.client_id()), resource));
            }
            Ok(out)
        })
    }
    fn node_token<'a>(
        &'a self,
        client_id: Option<&'a str>,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<TokenJson, TokenFailure>> {
        self.node_calls.lock().unwrap().push(client_id.map(str::to_owned));
        let fail = self.fail.lock().unwrap().clone();
        Box::pin(async move { fail.map_or_else(|| Ok(mk_token(client_id.unwrap_or("system"), resource)), Err) })
    }
}

// === Helpers ===

struct Harness {
    node: Arc<FakeNode>,
    tokens: Arc<FakeTokens>,
    state: AppState,
}

fn fast_config() -> Config {
    Config {
        retry: RetryPolicy { created: 2, assigned: 2, interval_secs: 0 },
        retry_interval: Duration::from_millis(5),
        pod_lookup_interval: Duration::from_millis(1),
        ..Config::default()
    }
}

fn harness(config: Config) -> Harness {
    let node = Arc::new(FakeNode::default());
    let tokens = Arc::new(FakeTokens::default());
    node.pods.lock().unwrap().push(PodView {
        namespace: "apps".into(),
        name: "demo".into(),
        ip: POD_IP.parse().ok(),
        phase: "Running".into(),
        labels: [("aadpodidbinding".to_owned(), "demo".to_owned())].into(),
        ..Default::default()
    });
    let state = AppState::new(config, node.clone(), tokens.clone(), Metrics::new().unwrap());
    Harness { node, tokens, state }
}

fn mk_identity(ns: &str, name: &str, client_id: &str) -> IdentityView {
    IdentityView {
        namespace: ns.into(),
        name: name.into(),
        spec: AzureIdentitySpec { client_id: Some(client_id.into()), ..Default::default() },
        ..Default::default()
    }
}

impl Harness {
    fn assign(&self, state: AssignedIdentityState, name: &str, client_id: &str) {
        self.node.assigned.lock().unwrap().push(AssignedView { state, identity: mk_identity("apps", name, client_id) });
    }

    async fn call(&self, from: &str, req: http::Request<Body>) -> (StatusCode, http::HeaderMap, String) {
        let peer: SocketAddr = format!("{from}:40000").parse().unwrap();
        let res = router(self.state.clone()).layer(MockConnectInfo(peer)).oneshot(req).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (status, headers, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, http::HeaderMap, String) {
        self.call(POD_IP, get_req(uri, true)).await
    }
}

fn get_req(uri: &str, metadata: bool) -> http::Request<Body> {
    let mut b = http::Request::get(uri);
    if metadata {
        b = b.header("Metadata", "true");
    }
    b.body(Body::empty()).unwrap()
}

const TOKEN_URI: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";

// === Token endpoint ===

#[tokio::test]
async fn assigned_identity_gets_an_imds_shaped_token() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let (status, headers, body) = h.get(TOKEN_URI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["access_token"].as_str().unwrap().ends_with(".token-for-client-a"));
    assert_eq!(v["resource"], "https://vault.azure.net");
    assert_eq!(v["expires_on"], "4102444800");
    assert_eq!(v["client_id"], "client-a");
    for field in ["refresh_token", "expires_in", "not_before", "token_type"] {
        assert!(v[field].is_string(), "{field} must be a string");
    }
}

/// Everything written through `tracing` while it lives, as plain text without colour.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Installed as the global subscriber, once for this test binary: a thread-scoped one
    /// misses events whose callsites other tests' threads registered first.
    fn global() -> Self {
        static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Self::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("only this test sets a subscriber");
            logs
        })
        .clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The audit lines whose caller is `ip` (other tests run at the same time).
    fn audit_lines(&self, ip: &str) -> Vec<String> {
        let caller = format!("caller={ip} ");
        self.text()
            .lines()
            .filter(|l| l.contains("aadpodid_nmi::audit") && l.contains(&caller))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn every_token_decision_is_one_audit_line_without_the_token() {
    const AUDITED_IP: &str = "10.244.77.7";
    const UNKNOWN_IP: &str = "10.244.77.8";
    let logs = CapturedLogs::global();
    let h = harness(fast_config());
    h.node.pods.lock().unwrap()[0].ip = AUDITED_IP.parse().ok();
    h.assign(AssignedIdentityState::Assigned, "id-a", "9a8b7c6d-1111-2222-3333-444455556666");
    let (status, _, body) = h.call(AUDITED_IP, get_req(TOKEN_URI, true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = h.call(AUDITED_IP, get_req(&format!("{TOKEN_URI}&client_id=someone-else"), true)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = h.call(UNKNOWN_IP, get_req(TOKEN_URI, true)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    let lines = logs.audit_lines(AUDITED_IP);
    assert_eq!(lines.len(), 2, "one line per request: {lines:#?}");
    let served = &lines[0];
    for field in [
        " INFO ",
        "request_id=",
        "pod=\"apps/demo\"",
        "identity=\"id-a\"",
        "client_id=\"9a8b##### REDACTED #####6666\"",
        "resource=\"https://vault.azure.net\"",
        "outcome=\"served\"",
        "status=200",
        "latency_ms=",
    ] {
        assert!(served.contains(field), "{field} missing from {served}");
    }
    let refused = &lines[1];
    assert!(refused.contains(" WARN ") && refused.contains("outcome=\"refused\"") && refused.contains("status=404"));
    assert!(refused.contains("pod=\"apps/demo\"") && refused.contains("reason="), "{refused}");
    let unknown = logs.audit_lines(UNKNOWN_IP);
    assert_eq!(unknown.len(), 1, "{unknown:#?}");
    assert!(unknown[0].contains("status=500") && !unknown[0].contains("pod="), "{}", unknown[0]);
    let request_id = |l: &String| l.split("request_id=").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let ids: std::collections::HashSet<_> = lines.iter().chain(&unknown).map(request_id).collect();
    assert_eq!(ids.len(), 3, "request ids are distinct");
    let everything = logs.text();
    assert!(!everything.contains("token-for-"), "no token is ever logged");
    assert!(!everything.contains("1111-2222-3333"), "no full client ID is ever logged");
}

#[tokio::test]
async fn trailing_slash_and_capitalised_first_segment_are_served() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    for uri in ["/metadata/identity/oauth2/token/?resource=r", "/METADATA/identity/oauth2/token?resource=r"] {
        assert_eq!(h.get(uri).await.0, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn missing_metadata_header_is_refused_with_the_json_body_and_no_token() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let (status, headers, body) = h.call(POD_IP, get_req(TOKEN_URI, false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json; charset=utf-8");
    assert_eq!(body, crate::errors::METADATA_HEADER_BODY);
}

#[tokio::test]
async fn a_bare_probe_is_answered_at_once() {
    let h = harness(fast_config());
    let started = Instant::now();
    let (status, _, _) = h.call(POD_IP, get_req("/metadata/identity/oauth2/token", false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn missing_resource_is_400() {
    let h = harness(fast_config());
    let (status, _, body) = h.get("/metadata/identity/oauth2/token?api-version=2018-02-01").await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "parameter resource cannot be empty\n"));
}

#[tokio::test]
async fn unknown_caller_ip_is_500_after_the_pod_lookup_retries() {
    let h = harness(fast_config());
    let (status, _, body) = h.call("10.244.9.9", get_req(TOKEN_URI, true)).await;
    assert_eq!((status, body.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "pod list is empty\n"));
    let failures = h.state.metrics.kubernetes_errors.with_label_values(&[metrics::GET_POD_LIST]).get();
    assert_eq!(failures, 5, "one attempt and four retries");
}

#[tokio::test]
async fn pod_without_binding_gets_404_after_the_retries_and_no_token() {
    let h = harness(fast_config());
    let (status, _, body) = h.get(TOKEN_URI).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("in CREATED state failed after 2 attempts"), "{body}");
    assert!(!body.contains("token-for"));
    assert_eq!(h.node.assigned_reads.load(Ordering::SeqCst), 3, "attempts 0, 1 and 2");
}

#[tokio::test]
async fn retry_after_flag_turns_404_into_503_with_retry_after() {
    let h = harness(Config { set_retry_after_header: true, ..fast_config() });
    let (status, headers, _) = h.get(TOKEN_URI).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "20");
}

#[tokio::test]
async fn asking_for_another_identity_is_404() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let (status, _, body) = h.get(&format!("{TOKEN_URI}&client_id=client-of-another-pod")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!body.contains("token-for"));
}

#[tokio::test]
async fn identity_still_created_is_served_once_assigned() {
    let h = harness(Config { retry: RetryPolicy { created: 50, assigned: 50, interval_secs: 0 }, ..fast_config() });
    h.assign(AssignedIdentityState::Created, "id-a", "client-a");
    let node = h.node.clone();
    let flip = tokio::spawn(async move {
        while node.assigned_reads.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        node.assigned.lock().unwrap()[0].state = AssignedIdentityState::Assigned;
    });
    let (status, _, body) = h.get(TOKEN_URI).await;
    flip.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(h.node.assigned_reads.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn token_refusal_is_403_and_unavailability_503() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    *h.tokens.fail.lock().unwrap() = Some(TokenFailure::Refused("Identity not found".into()));
    assert_eq!(h.get(TOKEN_URI).await.0, StatusCode::FORBIDDEN);
    *h.tokens.fail.lock().unwrap() = Some(TokenFailure::Unavailable("connection refused".into()));
    assert_eq!(h.get(TOKEN_URI).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let busy = TokenFailure::Throttled { message: "too many".into(), retry_after_secs: 1 };
    *h.tokens.fail.lock().unwrap() = Some(busy);
    assert_eq!(h.get(TOKEN_URI).await.0, StatusCode::TOO_MANY_REQUESTS, "this node's IMDS budget is spent");
}

#[tokio::test]
async fn auxiliary_tenants_give_a_json_array() {
    let h = harness(fast_config());
    let mut id = mk_identity("apps", "sp", "client-sp");
    id.spec.auxiliary_tenant_ids = Some(vec!["t2".into()]);
    h.node.assigned.lock().unwrap().push(AssignedView { state: AssignedIdentityState::Assigned, identity: id });
    let (status, _, body) = h.get(TOKEN_URI).await;
    assert_eq!(status, StatusCode::OK);
    let v: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1]["client_id"], "client-sp@t2");
}

#[tokio::test]
async fn excepted_pod_gets_a_node_token_with_its_client_id() {
    let h = harness(fast_config());
    let mut exception = AzurePodIdentityException::new(
        "e",
        AzurePodIdentityExceptionSpec { pod_labels: Some([("aadpodidbinding".to_owned(), "DEMO".to_owned())].into()) },
    );
    exception.metadata.namespace = Some("apps".into());
    h.node.exceptions.lock().unwrap().push(exception);
    let (status, _, _) = h.get(&format!("{TOKEN_URI}&client_id=node-client")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.tokens.node_calls.lock().unwrap().as_slice(), [Some("node-client".to_owned())]);
    *h.tokens.fail.lock().unwrap() = Some(TokenFailure::Unavailable("down".into()));
    assert_eq!(h.get(TOKEN_URI).await.0, StatusCode::FORBIDDEN, "bypass errors are always 403");
    *h.tokens.fail.lock().unwrap() = Some(TokenFailure::Throttled { message: "busy".into(), retry_after_secs: 3 });
    let (status, headers, _) = h.get(TOKEN_URI).await;
    assert_eq!((status, headers[http::header::RETRY_AFTER].to_str().unwrap()), (StatusCode::TOO_MANY_REQUESTS, "3"));
}

#[tokio::test]
async fn managed_mode_reads_bindings_directly() {
    let h = harness(Config { mode: Mode::Managed, force_namespaced: true, ..fast_config() });
    h.node.bindings.lock().unwrap().push(BindingView {
        namespace: "apps".into(),
        name: "b".into(),
        selector: "demo".into(),
        identity: "id-m".into(),
    });
    h.node.identities.lock().unwrap().push(mk_identity("apps", "id-m", "client-m"));
    let (status, _, body) = h.get(TOKEN_URI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("token-for-client-m"));
    assert_eq!(h.get(&format!("{TOKEN_URI}&client_id=other")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn object_id_is_learnt_from_the_pods_own_tokens() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let (status, _, body) = h.get(&format!("{TOKEN_URI}&object_id=unknown-oid")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("objectID in request: unknown-oid"), "{body}");
    h.assign(AssignedIdentityState::Assigned, "id-b", "client-b");
    let (status, _, body) = h.get(&format!("{TOKEN_URI}&object_id=OID-CLIENT-B")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(".token-for-client-b"), "{body}");
}

#[tokio::test]
async fn other_identity_paths_are_invalid_and_instance_can_be_blocked() {
    let h = harness(Config { block_instance_metadata: true, ..fast_config() });
    let (status, _, body) = h.get("/metadata/identity/x/oauth2/token").await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "Invalid request\n"));
    let (status, _, body) = h.get("/Metadata/instance/compute?api-version=2021-02-01").await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "Request blocked by AAD Pod Identity NMI\n"));
    let (status, headers, _) = h.get("//metadata/instance").await;
    assert_eq!(
        (status, &headers[header::LOCATION]),
        (StatusCode::MOVED_PERMANENTLY, &HeaderValue::from_static("/metadata/instance"))
    );
}

#[tokio::test]
async fn token_requests_are_measured_with_the_originals_labels() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    h.get(TOKEN_URI).await;
    let labels = ["/metadata/identity/oauth2/token", "200", "apps", "https://vault.azure.net"];
    assert_eq!(h.state.metrics.nmi_operations.with_label_values(&labels).get_sample_count(), 1);
}

// === Host endpoint ===

fn host_req(ns: Option<&str>, name: Option<&str>) -> http::Request<Body> {
    let mut b = http::Request::get("/host/token/?resource=https%3A%2F%2Fvault.azure.net");
    if let Some(ns) = ns {
        b = b.header("podns", ns);
    }
    if let Some(name) = name {
        b = b.header("podname", name);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn host_endpoint_needs_pod_headers_and_a_local_caller() {
    let h = harness(fast_config());
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let (status, _, body) = h.call("127.0.0.1", host_req(Some("apps"), None)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "missing 'podname' and 'podns' from request header\n")
    );
    let (status, _, _) = h.call(POD_IP, host_req(Some("apps"), Some("demo"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, body) = h.call("127.0.0.1", host_req(Some("apps"), Some("demo"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["clientid"], "client-a");
    assert!(v["token"]["access_token"].as_str().unwrap().ends_with(".token-for-client-a"));
}

// === Proxy ===

/// What the fake IMDS saw: `METHOD path?query host=<Host>` per request.
type Seen = Arc<Mutex<Vec<String>>>;

async fn fake_imds() -> (String, Seen, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let record = record.clone();
        async move {
            let h = req.headers();
            let line = format!(
                "{} {} host={} xff={}",
                req.method(),
                req.uri(),
                h.get(header::HOST).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default(),
                h.contains_key("x-forwarded-for"),
            );
            record.lock().unwrap().push(line.clone());
            (StatusCode::IM_A_TEAPOT, [("x-imds", "yes")], line)
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr.to_string(), seen, task)
}

fn proxied_to(addr: &str, config: Config) -> Config {
    Config { imds_base: format!("http://{addr}"), imds_host: addr.to_owned(), ..config }
}

#[tokio::test]
async fn other_paths_are_proxied_with_the_imds_host() {
    let (addr, seen, task) = fake_imds().await;
    let h = harness(proxied_to(&addr, fast_config()));
    let (status, headers, body) = h.get("/metadata/instance?api-version=2021-02-01").await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(headers["x-imds"], "yes");
    assert_eq!(body, format!("GET /metadata/instance?api-version=2021-02-01 host={addr} xff=false"));
    assert_eq!(h.call(POD_IP, get_req("/doesnotexist", false)).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(seen.lock().unwrap().len(), 1);
    task.abort();
}

#[rstest::rstest]
#[case::x_forwarded_for("X-Forwarded-For", "1.2.3.4")]
#[case::x_forwarded_for_any_case("x-FORWARDED-for", "")]
#[case::forwarded("Forwarded", "for=192.0.2.60;proto=http")]
#[tokio::test]
async fn forwarded_requests_are_refused_with_400_as_imds_does(#[case] name: &str, #[case] value: &str) {
    let (addr, seen, task) = fake_imds().await;
    let h = harness(proxied_to(&addr, fast_config()));
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    for uri in ["/metadata/instance?api-version=2021-02-01", TOKEN_URI] {
        let req = http::Request::get(uri).header("Metadata", "true").header(name, value).body(Body::empty()).unwrap();
        let (status, headers, body) = h.call(POD_IP, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json; charset=utf-8");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "invalid_request", "{body}");
        assert!(!body.contains("Identity not found") && !body.contains("token-for"), "{body}");
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing reaches IMDS: {:?}", seen.lock().unwrap());
    let req = http::Request::get("/metadata/instance?api-version=2021-02-01")
        .header("Metadata", "true")
        .header("X-Forwarded-Host", "example.com")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.call(POD_IP, req).await.0, StatusCode::IM_A_TEAPOT, "other X-Forwarded-* headers pass");
    task.abort();
}

/// Encoded spellings of the token path: each is the token endpoint, served for the caller's own identity.
#[rstest::rstest]
#[case::escaped_letter("/metadata/identity/oauth2/%74oken")]
#[case::escaped_lower_hex_letters("/metadata/%69dentity/oauth2/tok%65n")]
#[case::escaped_slashes("/metadata%2Fidentity%2Foauth2%2Ftoken")]
#[case::escaped_slashes_lower_hex("/metadata%2fidentity%2foauth2%2ftoken/")]
#[case::every_byte_escaped("/%6D%65%74%61%64%61%74%61/%69%64%65%6E%74%69%74%79/%6F%61%75%74%68%32/%74%6F%6B%65%6E")]
#[case::first_segment_any_case("/METADATA/identity/oauth2/%74oken")]
#[tokio::test]
async fn encoded_token_paths_are_the_token_endpoint_never_the_proxy(#[case] path: &str) {
    let (addr, seen, task) = fake_imds().await;
    let h = harness(proxied_to(&addr, fast_config()));
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let query = "?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
    let (status, _, body) = h.get(&format!("{path}{query}&client_id=client-of-another-pod")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another identity is refused: {body}");
    let (status, _, body) = h.get(&format!("{path}{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(".token-for-client-a"), "{body}");
    assert!(seen.lock().unwrap().is_empty(), "proxied: {:?}", seen.lock().unwrap());
    task.abort();
}

/// Paths a lenient server could take for the token or instance endpoint, or that decode ambiguously:
/// refused (400) or blocked (403), never proxied.
#[rstest::rstest]
#[case::other_case_identity("/metadata/Identity/oauth2/token", 400)]
#[case::all_caps("/METADATA/IDENTITY/OAUTH2/TOKEN", 400)]
#[case::backslashes("/metadata\\identity/oauth2/token", 400)]
#[case::escaped_backslash("/metadata%5Cidentity%5Coauth2%5Ctoken", 400)]
#[case::double_escaped_slash("/metadata%252Fidentity%252Foauth2%252Ftoken", 400)]
#[case::semicolon_param("/metadata;x=1/identity/oauth2/token", 400)]
#[case::nul("/metadata/identity/oauth2/token%00", 400)]
#[case::nul_in_segment("/metadata%00/identity/oauth2/token", 400)]
#[case::invalid_utf8("/metadata/identity/oauth2/%FFtoken", 400)]
#[case::overlong_slash("/metadata%C0%AFidentity%C0%AFoauth2%C0%AFtoken", 400)]
#[case::percent_u("/metadata/identity/oauth2/%u0074oken", 400)]
#[case::truncated_escape("/metadata/identity/oauth2/token%2", 400)]
#[case::bad_escape("/metadata/identity/oauth2/%zztoken", 400)]
#[case::encoded_dot_dot_is_cleaned("/metadata/x/%2e%2e/identity/oauth2/token", 301)]
#[case::instance_escaped("/metadata/%69nstance?api-version=2021-02-01", 403)]
#[case::instance_other_case("/metadata/Instance/compute", 403)]
#[case::instance_escaped_slash("/metadata%2Finstance", 403)]
#[case::instance_semicolon("/metadata;/instance", 400)]
#[case::instance_backslash("/metadata\\instance", 400)]
#[tokio::test]
async fn ambiguous_paths_are_never_proxied(#[case] path: &str, #[case] status: u16) {
    let (addr, seen, task) = fake_imds().await;
    let h = harness(proxied_to(&addr, Config { block_instance_metadata: true, ..fast_config() }));
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let (got, _, body) = h.get(path).await;
    assert_eq!(got.as_u16(), status, "{path}: {body}");
    assert!(!body.contains("token-for"), "{body}");
    assert!(seen.lock().unwrap().is_empty(), "proxied: {:?}", seen.lock().unwrap());
    task.abort();
}

#[tokio::test]
async fn the_proxy_forwards_the_decoded_path_it_routed_on() {
    let (addr, seen, task) = fake_imds().await;
    let h = harness(proxied_to(&addr, fast_config()));
    let (status, _, body) = h.get("/metadata/%69nstance/compute%2FvmId?api-version=2021-02-01&format=text").await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT, "{body}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [format!("GET /metadata/instance/compute/vmId?api-version=2021-02-01&format=text host={addr} xff=false")]
    );
    task.abort();
}

#[tokio::test]
async fn absolute_form_targets_route_on_their_path_and_never_choose_the_upstream() {
    let (addr, seen, task) = fake_imds().await;
    let h = harness(proxied_to(&addr, Config { block_instance_metadata: true, ..fast_config() }));
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    let token = "http://169.254.169.254/metadata/identity/oauth2/%74oken?resource=r&client_id=client-of-another-pod";
    let req = http::Request::get(token).header("Metadata", "true").header("Host", "evil.example").body(Body::empty());
    assert_eq!(h.call(POD_IP, req.unwrap()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.get("http://evil.example:8080/metadata/%69nstance").await.0, StatusCode::FORBIDDEN);
    let req = http::Request::get("http://evil.example:8080/metadata/versions?x=1")
        .header("Metadata", "true")
        .header("Host", "evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.call(POD_IP, req).await.0, StatusCode::IM_A_TEAPOT);
    assert_eq!(seen.lock().unwrap().clone(), [format!("GET /metadata/versions?x=1 host={addr} xff=false")]);
    task.abort();
}

#[tokio::test]
async fn unreachable_imds_is_500() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let h = harness(Config { imds_base: format!("http://{addr}"), imds_host: addr.to_string(), ..fast_config() });
    assert_eq!(h.get("/metadata/versions").await.0, StatusCode::INTERNAL_SERVER_ERROR);
}

fn with_limits(config: Config, limits: Limits) -> Config {
    Config { limits, ..config }
}

#[tokio::test]
async fn proxied_bodies_are_bounded_in_size_and_in_time() {
    let (addr, seen, task) = fake_imds().await;
    let limits = Limits { max_body_bytes: 64, proxy_timeout: Duration::from_millis(300), ..Limits::default() };
    let h = harness(with_limits(proxied_to(&addr, fast_config()), limits));
    let post = |body: Body| {
        http::Request::post("/metadata/scheduledevents?api-version=2020-07-01")
            .header("Metadata", "true")
            .body(body)
            .unwrap()
    };
    let (status, _, body) = h.call(POD_IP, post(Body::from(vec![b'x'; 65]))).await;
    assert_eq!((status, body.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large\n"));
    let never = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let started = Instant::now();
    let (status, _, _) = h.call(POD_IP, post(Body::from_stream(never))).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(seen.lock().unwrap().is_empty(), "nothing forwarded: {:?}", seen.lock().unwrap());
    assert_eq!(h.call(POD_IP, post(Body::from(vec![b'x'; 64]))).await.0, StatusCode::IM_A_TEAPOT);
    task.abort();
}

#[tokio::test]
async fn a_silent_imds_is_500_after_the_proxy_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let limits = Limits { proxy_timeout: Duration::from_millis(300), ..Limits::default() };
    let h = harness(with_limits(proxied_to(&addr, fast_config()), limits));
    let started = Instant::now();
    assert_eq!(h.get("/metadata/instance?api-version=2021-02-01").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    silent.abort();
}

#[tokio::test]
async fn a_pod_over_its_rate_gets_429_and_another_pod_is_served() {
    let limits = Limits { pod_rate: crate::limits::Rate { per_second: 1, burst: 2 }, ..Limits::default() };
    let h = harness(with_limits(fast_config(), limits));
    h.assign(AssignedIdentityState::Assigned, "id-a", "client-a");
    h.node.pods.lock().unwrap().push(PodView {
        namespace: "apps".into(),
        name: "other".into(),
        ip: "10.244.1.6".parse().ok(),
        phase: "Running".into(),
        ..Default::default()
    });
    assert_eq!(h.get(TOKEN_URI).await.0, StatusCode::OK);
    assert_eq!(h.get(TOKEN_URI).await.0, StatusCode::OK);
    let (status, headers, body) = h.get(TOKEN_URI).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(!body.contains("token-for"));
    assert_eq!(h.call("10.244.1.6", get_req(TOKEN_URI, true)).await.0, StatusCode::OK, "its own budget");
}

#[tokio::test]
async fn imds_redirects_go_back_to_the_caller_unfollowed() {
    let (elsewhere, seen_elsewhere, other) = fake_imds().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let location = format!("http://{elsewhere}/metadata/identity/oauth2/token?resource=r");
    let app = Router::new().fallback(move || {
        let location = location.clone();
        async move { (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]) }
    });
    let redirecting = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let h = harness(proxied_to(&addr, fast_config()));
    let (status, headers, _) = h.get("/metadata/versions").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert!(headers[header::LOCATION].to_str().unwrap().starts_with(&format!("http://{elsewhere}/")));
    assert!(seen_elsewhere.lock().unwrap().is_empty(), "NMI never follows IMDS's redirects");
    redirecting.abort();
    other.abort();
}
