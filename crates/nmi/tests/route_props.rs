//! Property tests of NMI's request reading and routing. Random request targets (escaped, any
//! case, odd separators and bytes, absolute form), methods, headers and queries go through
//! `query::route` and through the whole router (with a pod that has an identity, a token source
//! that records what it issues, and a local upstream that records what is proxied).
//!
//! "How IMDS reads a path" is the simulator's lenient reading (`normalise_path`: escapes and
//! `%uXXXX` decoded, `\` as `/`, dot segments and trailing dots dropped, any case). Properties:
//! nothing panics; a token is only ever issued for a target IMDS would read as the token path, and
//! only for the pod's own identity; nothing IMDS would read as the token path or a blocked path is
//! ever proxied; what is proxied is exactly the path routed on, which IMDS reads unambiguously.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aadpodid_api::{AssignedIdentityState, AzureIdentitySpec};
use aadpodid_azure_sim::imds::normalise_path;
use aadpodid_nmi::limits::{Limits, Rate};
use aadpodid_nmi::metrics::Metrics;
use aadpodid_nmi::query::{self, Route};
use aadpodid_nmi::select::RetryPolicy;
use aadpodid_nmi::server::{self, AppState, Config};
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use support::{CountingTokens, FixedNode};
use tower::ServiceExt;

const POD_IP: &str = "10.244.1.5";
const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const INSTANCE_PATH: &str = "/metadata/instance";

// === Strategies ===

const WORDS: &[&str] = &[
    "metadata",
    "METADATA",
    "MetaData",
    "identity",
    "Identity",
    "oauth2",
    "OAuth2",
    "token",
    "Token",
    "tokenx",
    "instance",
    "Instance",
    "host",
    "versions",
    "compute",
    ".",
    "..",
    "...",
    "metadata.",
    "token.",
    "x",
    "",
];
const SEPARATORS: &[&str] = &[
    "/", "/", "/", "//", "\\", "%2F", "%2f", "%5C", "%5c", "%252F", "%252f", ";", "%3B", "/./", "/../", "%2e%2e", "%2E",
];
const ODD: &[&str] = &[
    "%00",
    "%FF",
    "%C0%AF",
    "%E0%80%AF",
    "%u0074",
    "%U002F",
    "%",
    "%4",
    "%zz",
    "%0A",
    "%0d",
    "%20",
    "%3F",
    "%23",
    "+",
    "@",
    ":",
    "~",
    "!",
    "'",
    "*",
    "%7E",
    "%E2%80%AE",
];

/// `s` with each character escaped (`%XX`, upper or lower hex) where `mask` says so.
fn escape_some(s: &str) -> impl Strategy<Value = String> + use<> {
    let chars: Vec<char> = s.chars().collect();
    proptest::collection::vec((any::<bool>(), any::<bool>()), chars.len()).prop_map(move |flags| {
        let mut out = String::new();
        for (c, (escape, lower)) in chars.iter().zip(flags) {
            match (escape, lower) {
                (true, true) => out.push_str(&format!("%{:02x}", u32::from(*c))),
                (true, false) => out.push_str(&format!("%{:02X}", u32::from(*c))),
                (false, _) => out.push(*c),
            }
        }
        out
    })
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_flat_map(escape_some),
        3 => proptest::sample::select(SEPARATORS).prop_map(str::to_owned),
        1 => proptest::sample::select(ODD).prop_map(str::to_owned),
        1 => "[a-zA-Z0-9._~-]{0,4}",
    ]
}

/// A request path: the token or instance path (some characters escaped) or none, then pieces.
fn path() -> impl Strategy<Value = String> {
    let start = prop_oneof![
        1 => Just(String::new()),
        3 => escape_some(&TOKEN_PATH[1..]).prop_map(|p| format!("/{p}")).boxed(),
        1 => escape_some(&INSTANCE_PATH[1..]).prop_map(|p| format!("/{p}")).boxed(),
    ];
    let rest = prop_oneof![
        2 => Just(String::new()),
        3 => proptest::collection::vec(piece(), 0..8).prop_map(|pieces| pieces.concat()),
    ];
    (start, rest).prop_map(|(start, rest)| {
        if start.is_empty() && !rest.starts_with('/') { format!("/{rest}") } else { format!("{start}{rest}") }
    })
}

fn query() -> impl Strategy<Value = Option<String>> {
    let key = proptest::sample::select(vec!["client_id", "%63lient_id", "CLIENT_ID", "msi_res_id", "object_id"]);
    let value = proptest::sample::select(vec!["client-a", "client-b", "CLIENT-B", "%63lient-b", ""]);
    let selector = proptest::option::of((key, value).prop_map(|(k, v)| format!("&{k}={v}")));
    let resource = prop_oneof![
        3 => Just("resource=https%3A%2F%2Fvault.azure.net"),
        1 => proptest::sample::select(vec!["resource=", "%72esource=r", "RESOURCE=r"]),
    ];
    proptest::option::weighted(
        0.85,
        (resource, selector).prop_map(|(r, s)| format!("api-version=2018-02-01&{r}{}", s.unwrap_or_default())),
    )
}

#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    authority: Option<&'static str>,
    path: String,
    query: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
}

fn request() -> impl Strategy<Value = Req> {
    let method =
        proptest::sample::select(vec!["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "CONNECT"]);
    let authority =
        proptest::option::weighted(0.2, proptest::sample::select(vec!["169.254.169.254", "evil.example:8080"]));
    let header = proptest::sample::select(vec![
        ("metadata", "true"),
        ("Metadata", "true"),
        ("Metadata", "True"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Forwarded-Host", "evil.example"),
        ("Host", "evil.example"),
        ("podns", "apps"),
        ("podname", "demo"),
    ]);
    let headers = proptest::collection::vec(header, 0..4);
    let metadata = proptest::bool::weighted(0.75);
    (method, authority, path(), query(), headers, metadata).prop_map(
        |(method, authority, path, query, mut headers, md)| {
            if md {
                headers.push(("Metadata", "true"));
            }
            Req { method, authority, path, query, headers }
        },
    )
}

impl Req {
    fn target(&self) -> String {
        let q = self.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default();
        match self.authority {
            Some(a) => format!("http://{a}{}{q}", self.path),
            None => format!("{}{q}", self.path),
        }
    }

    /// The request, or `None` when `http` itself refuses the target (it never reaches NMI).
    fn build(&self) -> Option<http::Request<Body>> {
        let uri: http::Uri = self.target().parse().ok()?;
        let mut b = http::Request::builder().method(self.method).uri(uri);
        for (k, v) in &self.headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).ok()
    }
}

/// IMDS's reading of a raw path, lower case; `None` when IMDS would refuse it (400).
fn imds_reads(raw: &str) -> Option<String> {
    normalise_path(raw).ok()
}

fn reads_as(raw: &str, prefix: &str) -> bool {
    imds_reads(raw).is_some_and(|p| p.starts_with(prefix))
}

// === Properties of the pure routing ===

#[test]
fn routing_never_sends_a_token_or_blocked_path_anywhere_but_its_handler() {
    let mut runner =
        TestRunner::new(RunnerConfig { cases: 4000, failure_persistence: None, ..RunnerConfig::default() });
    let strategy = (path(), any::<bool>());
    runner
        .run(&strategy, |(raw, block)| {
            match query::route(&raw, None, block) {
                Route::Token => {
                    prop_assert!(reads_as(&raw, TOKEN_PATH), "{raw} routed to the token handler");
                }
                Route::Proxy => {
                    let Some(p) = query::decode_path(&raw) else {
                        return Err(TestCaseError::fail("proxied, not decoded"));
                    };
                    let (seen, lower) = (imds_reads(&p), p.to_lowercase());
                    prop_assert_eq!(seen.as_deref(), Some(lower.as_str()), "IMDS reads {} unambiguously", p);
                    prop_assert!(!reads_as(&p, TOKEN_PATH), "{raw} proxied as {p}");
                    prop_assert!(!(block && reads_as(&p, INSTANCE_PATH)), "{raw} proxied as {p} while blocked");
                }
                Route::Redirect(to) => {
                    prop_assert!(query::decode_path(&to).is_some(), "redirects to a plain path: {to}");
                }
                Route::HostToken | Route::InvalidRequest | Route::InstanceBlocked => {}
            }
            Ok(())
        })
        .unwrap();
}

// === Properties of the whole router ===

struct World {
    state: AppState,
    tokens: Arc<CountingTokens>,
    proxied: Arc<Mutex<Vec<String>>>,
}

/// A pod with identity `client-a`, a recording token source, a recording upstream; no rate limit.
async fn world() -> World {
    let node = Arc::new(FixedNode::default());
    node.add_pod("apps", "demo", POD_IP.parse().unwrap());
    let spec = AzureIdentitySpec { client_id: Some("client-a".into()), ..Default::default() };
    node.assign(("apps", "demo"), AssignedIdentityState::Assigned, "id-a", spec);
    let proxied = Arc::new(Mutex::new(Vec::new()));
    let upstream = upstream(proxied.clone()).await;
    let tokens = Arc::new(CountingTokens::default());
    let config = Config {
        block_instance_metadata: true,
        retry: RetryPolicy { created: 1, assigned: 1, interval_secs: 0 },
        retry_interval: Duration::from_millis(1),
        pod_lookup_retries: 0,
        imds_base: format!("http://{upstream}"),
        imds_host: upstream.to_string(),
        limits: Limits { pod_rate: Rate { per_second: 0, burst: 1 }, ..Limits::default() },
        ..Config::default()
    };
    let state = AppState::new(config, node, tokens.clone(), Metrics::new().unwrap());
    World { state, tokens, proxied }
}

async fn upstream(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(req.uri().path().to_owned());
            "upstream"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[test]
fn no_request_but_a_token_path_yields_a_token_and_none_is_proxied() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let w = rt.block_on(world());
    let peer: SocketAddr = SocketAddr::new(POD_IP.parse::<IpAddr>().unwrap(), 40000);
    let mut runner = TestRunner::new(RunnerConfig { cases: 600, failure_persistence: None, ..RunnerConfig::default() });
    let (sent, with_token, with_proxy) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&request(), |req| {
            let Some(built) = req.build() else { return Ok(()) };
            sent.fetch_add(1, Ordering::Relaxed);
            let raw_path = built.uri().path().to_owned();
            let (issued_before, proxied_before) = (w.tokens.issued(), w.proxied.lock().unwrap().len());
            let router = server::router(w.state.clone()).layer(MockConnectInfo(peer));
            let res = rt.block_on(router.oneshot(built)).unwrap();
            let _ = rt.block_on(axum::body::to_bytes(res.into_body(), usize::MAX));
            let issued = w.tokens.issued_for.lock().unwrap()[issued_before..].to_vec();
            let proxied = w.proxied.lock().unwrap()[proxied_before..].to_vec();
            with_token.fetch_add(usize::from(!issued.is_empty()), Ordering::Relaxed);
            with_proxy.fetch_add(usize::from(!proxied.is_empty()), Ordering::Relaxed);
            if !issued.is_empty() {
                prop_assert!(reads_as(&raw_path, TOKEN_PATH), "a token for {}", req.target());
                prop_assert!(issued.iter().all(|c| c == "client-a"), "only the pod's own identity: {issued:?}");
            }
            let routed = query::decode_path(&raw_path);
            for seen in &proxied {
                prop_assert_eq!(Some(seen.as_str()), routed.as_deref(), "{}", req.target());
                prop_assert!(!reads_as(seen, TOKEN_PATH) && !reads_as(seen, INSTANCE_PATH), "proxied {seen}");
                prop_assert!(
                    !reads_as(&raw_path, TOKEN_PATH) && !reads_as(&raw_path, INSTANCE_PATH),
                    "{}",
                    req.target()
                );
                let forwarded = req.headers.iter().any(|(k, _)| matches!(*k, "X-Forwarded-For" | "Forwarded"));
                prop_assert!(!forwarded, "a forwarded request was proxied: {:?}", req);
            }
            Ok(())
        })
        .unwrap();
    let (sent, with_token, with_proxy) = (sent.into_inner(), with_token.into_inner(), with_proxy.into_inner());
    eprintln!("{sent} requests sent, {with_token} got a token, {with_proxy} were proxied");
    assert!(sent >= 500 && with_token >= 20 && with_proxy >= 10, "the generator reaches every outcome");
}
