//! NMI's token sources against the in-process Azure simulator (no root, no API server): which
//! credentials NMI will use, how refusals and outages meet the cache, the node-wide IMDS limits
//! and what error texts carry.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aadpodid_api::AzureIdentitySpec;
use aadpodid_azure::HttpOptions;
use aadpodid_azure::token::{AadClient, ImdsClient, ImdsLimiter, ImdsLimits, RetryPolicy};
use aadpodid_azure_sim::seed::{self, Seed};
use aadpodid_azure_sim::{Face, Fault, FaultKind, IdentityInfo, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_nmi::metrics::Metrics;
use aadpodid_nmi::policy::CredentialPolicy;
use aadpodid_nmi::select::IdentityView;
use aadpodid_nmi::server::{TokenFailure, TokenSource};
use aadpodid_nmi::tokens::{AzureTokens, SecretReader, TokenSettings};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::SecretReference;

const VAULT: &str = "https://vault.azure.net";
const SP_CLIENT: &str = "5b0c4d2e-7f1a-4c3b-9d8e-0a1b2c3d4e5f";
const SP_SECRET: &str = "sp-secret-value";

/// Secrets in memory that count every read.
#[derive(Default)]
struct CountingSecrets {
    data: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    reads: AtomicUsize,
}

impl CountingSecrets {
    fn with(namespace: &str, name: &str, secret: &str) -> Self {
        let mut data = BTreeMap::new();
        data.insert((namespace.into(), name.into()), [("clientSecret".to_owned(), secret.as_bytes().to_vec())].into());
        Self { data, reads: AtomicUsize::new(0) }
    }
}

impl SecretReader for CountingSecrets {
    fn secret_data<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Vec<u8>>, String>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let found = self.data.get(&(namespace.into(), name.into())).cloned();
        Box::pin(async move { found.ok_or_else(|| format!("secrets \"{name}\" not found")) })
    }
}

struct World {
    sim: RunningSim,
    ids: Vec<IdentityInfo>,
    imds_url: String,
    /// The token source's clock (Unix seconds), moved by tests.
    clock: Arc<AtomicU64>,
}

/// The simulator with `n` user-assigned identities attached to one VMSS instance whose IMDS
/// listens on loopback.
async fn world(n: usize) -> World {
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator starts");
    let names: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
    let identities: Vec<_> =
        names.iter().map(|name| serde_json::json!({"resourceGroup": "rg", "name": name})).collect();
    let seed = serde_json::json!({
        "identities": identities,
        "vmss": [{"resourceGroup": "rg", "name": "pool", "instances": 1, "userAssignedIdentities": names}],
    });
    let ids = seed::apply(&sim, &Seed::parse(&seed.to_string()).expect("seed parses")).expect("seed applies");
    let node = NodeRef::vmss_instance("pool", 0).in_resource_group("rg");
    let imds = sim.serve_imds_on(SocketAddr::from(([127, 0, 0, 1], 0)), node).expect("IMDS listens");
    sim.register_service_principal_secret(SP_CLIENT, SP_SECRET);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    World { imds_url: imds.url(), sim, ids, clock: Arc::new(AtomicU64::new(now)) }
}

impl World {
    /// The production token source on this world, with the default IMDS limits, the given
    /// credential policy and the world's clock.
    fn tokens_with(&self, secrets: Arc<CountingSecrets>, policy: CredentialPolicy) -> AzureTokens {
        let limiter = ImdsLimiter::new(ImdsLimits::default());
        let imds = ImdsClient::new(&self.imds_url).unwrap().with_retry(RetryPolicy::none()).with_limiter(limiter);
        let aad = AadClient::new(&HttpOptions::with_root_ca_pem(self.sim.ca_cert_pem().as_bytes().to_vec())).unwrap();
        let clock = self.clock.clone();
        let settings =
            TokenSettings { policy, clock: Arc::new(move || clock.load(Ordering::SeqCst)), ..Default::default() };
        AzureTokens::new(imds, aad, secrets, Metrics::new().unwrap(), settings)
    }

    /// As an operator allowing the simulator's Azure AD (`--allowed-ad-endpoints`).
    fn tokens(&self, secrets: Arc<CountingSecrets>) -> AzureTokens {
        self.tokens_with(secrets, self.allowing(&[]))
    }

    fn allowing(&self, namespaces: &[&str]) -> CredentialPolicy {
        let namespaces: Vec<String> = namespaces.iter().map(|n| (*n).to_owned()).collect();
        CredentialPolicy::new(&namespaces, &[self.sim.aad_https_url()]).unwrap()
    }

    fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    fn sp_identity(&self, namespace: &str, secret: (&str, &str), ad_endpoint: &str) -> IdentityView {
        IdentityView {
            namespace: namespace.into(),
            name: "sp".into(),
            spec: AzureIdentitySpec {
                type_: Some(1),
                client_id: Some(SP_CLIENT.into()),
                tenant_id: Some(self.sim.tenant_id().into()),
                ad_endpoint: Some(ad_endpoint.into()),
                client_password: Some(SecretReference {
                    namespace: Some(secret.0.into()),
                    name: Some(secret.1.into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn aad_calls(&self) -> u64 {
        self.sim.counters().calls(Face::Aad, "token")
    }

    fn imds_calls(&self) -> u64 {
        self.sim.counters().calls(Face::Imds, "imds_token")
    }
}

fn msi_identity(id: &IdentityInfo) -> IdentityView {
    IdentityView {
        namespace: "apps".into(),
        name: id.name.clone(),
        spec: AzureIdentitySpec {
            type_: Some(0),
            client_id: Some(id.client_id.clone()),
            resource_id: Some(id.id.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_another_namespace_is_never_read_nor_sent() {
    let w = world(0).await;
    let secrets = Arc::new(CountingSecrets::with("kube-system", "victim", SP_SECRET));
    let tokens = w.tokens(secrets.clone());
    let id = w.sp_identity("apps", ("kube-system", "victim"), &w.sim.aad_https_url());

    for _ in 0..2 {
        match tokens.identity_tokens(&id, VAULT).await {
            Err(TokenFailure::Refused(text)) => {
                assert!(text.contains("\"kube-system\"") && text.contains("own namespace"), "{text}")
            }
            other => panic!("a cross-namespace Secret must be refused: {other:?}"),
        }
    }
    assert_eq!(secrets.reads.load(Ordering::SeqCst), 0, "the Secret is never read");
    assert_eq!(w.aad_calls(), 0, "Azure AD never receives it");

    let allowing = w.tokens_with(secrets.clone(), w.allowing(&["kube-system"]));
    allowing.identity_tokens(&id, VAULT).await.expect("an operator can allow a namespace");
    assert_eq!((secrets.reads.load(Ordering::SeqCst), w.aad_calls()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_endpoint_outside_the_clouds_never_receives_the_secret() {
    let w = world(0).await;
    let secrets = Arc::new(CountingSecrets::with("apps", "sp-secret", SP_SECRET));
    let tokens = w.tokens_with(secrets.clone(), CredentialPolicy::default());
    let id = w.sp_identity("apps", ("apps", "sp-secret"), &w.sim.aad_https_url());

    match tokens.identity_tokens(&id, VAULT).await {
        Err(TokenFailure::Refused(text)) => {
            assert!(text.contains("adEndpoint") && text.contains("--allowed-ad-endpoints"), "{text}")
        }
        other => panic!("an unknown Azure AD endpoint must be refused: {other:?}"),
    }
    let mut escaping = w.sp_identity("apps", ("apps", "sp-secret"), "");
    escaping.spec.tenant_id =
        Some(format!("http:{}", w.sim.aad_url().trim_start_matches("http://").trim_end_matches('/')));
    match tokens.identity_tokens(&escaping, VAULT).await {
        Err(TokenFailure::Refused(text)) => assert!(text.contains("invalid tenant ID"), "{text}"),
        other => panic!("a tenant ID naming another server must be refused: {other:?}"),
    }
    assert_eq!(secrets.reads.load(Ordering::SeqCst), 0, "the Secret is never read");
    assert_eq!(w.aad_calls(), 0, "the endpoint never receives the secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_secret_or_deleted_identity_is_refused_not_masked_by_the_cache() {
    let w = world(1).await;
    let secrets = Arc::new(CountingSecrets::with("apps", "sp-secret", SP_SECRET));
    let tokens = w.tokens(secrets);
    let sp = w.sp_identity("apps", ("apps", "sp-secret"), &w.sim.aad_https_url());
    let msi = msi_identity(&w.ids[0]);
    tokens.identity_tokens(&sp, VAULT).await.expect("a service principal token (1 h)");
    tokens.identity_tokens(&msi, VAULT).await.expect("a managed identity token (24 h)");

    w.sim.revoke_service_principal_secret(SP_CLIENT, SP_SECRET);
    w.advance(3100);
    match tokens.identity_tokens(&sp, VAULT).await {
        Err(TokenFailure::Refused(text)) => assert!(text.contains("AADSTS7000215"), "{text}"),
        other => panic!("a revoked secret is refused once its token needs renewing: {other:?}"),
    }
    w.sim.register_service_principal_secret(SP_CLIENT, SP_SECRET);
    let remembered = tokens.identity_tokens(&sp, VAULT).await;
    assert!(matches!(remembered, Err(TokenFailure::Refused(_))), "remembered briefly: {remembered:?}");
    w.advance(5);
    tokens.identity_tokens(&sp, VAULT).await.expect("asked again after the failure TTL");

    assert!(w.sim.delete_user_assigned_identity("rg", &w.ids[0].name));
    w.advance(24 * 3600 - 3105 - 500);
    match tokens.identity_tokens(&msi, VAULT).await {
        Err(TokenFailure::Refused(text)) => assert!(text.contains("Identity not found"), "{text}"),
        other => panic!("a deleted identity is refused once its token needs renewing: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_the_cached_token_without_hammering_azure() {
    let w = world(1).await;
    let secrets = Arc::new(CountingSecrets::with("apps", "sp-secret", SP_SECRET));
    let tokens = w.tokens(secrets);
    let sp = w.sp_identity("apps", ("apps", "sp-secret"), &w.sim.aad_https_url());
    let first = tokens.identity_tokens(&sp, VAULT).await.unwrap();
    w.sim.inject(Fault::new(Face::Aad, FaultKind::status(503)));
    w.advance(3100);
    let before = w.aad_calls();
    for _ in 0..20 {
        let served = tokens.identity_tokens(&sp, VAULT).await.expect("the cached token while Azure AD is down");
        assert_eq!(served[0].access_token, first[0].access_token);
        assert!(served[0].expires_in.parse::<u64>().unwrap() < 600, "says its remaining life");
    }
    assert_eq!(w.aad_calls() - before, 1, "one call per failure TTL, not one per request");

    w.sim.inject(Fault::new(Face::Imds, FaultKind::status(500)));
    for _ in 0..20 {
        let failed = tokens.identity_tokens(&msi_identity(&w.ids[0]), VAULT).await;
        assert!(matches!(failed, Err(TokenFailure::Refused(_))), "nothing cached: the original's 403: {failed:?}");
    }
    assert_eq!(w.imds_calls(), 1, "a pod hammering a failing identity does not hammer IMDS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_use_are_refreshed_in_the_background_and_say_their_remaining_life() {
    let w = world(2).await;
    let tokens = w.tokens(Arc::default());
    let (used, idle) = (msi_identity(&w.ids[0]), msi_identity(&w.ids[1]));
    let first = tokens.identity_tokens(&used, VAULT).await.unwrap();
    let idle_first = tokens.identity_tokens(&idle, VAULT).await.unwrap();
    assert_eq!(first[0].expires_in, "86399");

    w.advance(20 * 3600);
    let cached = tokens.identity_tokens(&used, VAULT).await.unwrap();
    assert_eq!(cached[0].access_token, first[0].access_token);
    let left: u64 = cached[0].expires_in.parse().unwrap();
    assert!((14_399..=14_460).contains(&left), "a token fetched 20 h ago has 4 h left, not 24: {left}");

    w.advance(4 * 3600 - 2400);
    tokens.identity_tokens(&used, VAULT).await.expect("still cached 40 min before expiry");
    assert_eq!(tokens.refresh_due().await, 0, "not due yet");
    w.advance(1600);
    assert_eq!(tokens.refresh_due().await, 1, "the token in use; the idle one is not refreshed");
    assert_eq!(w.imds_calls(), 3);
    w.sim.inject(Fault::new(Face::Imds, FaultKind::Down));
    let served = tokens.identity_tokens(&used, VAULT).await.expect("served without asking IMDS");
    assert_ne!(served[0].access_token, first[0].access_token, "the refreshed token");
    assert_eq!(w.imds_calls(), 3, "the request did not wait on IMDS");
    let idle_now = tokens.identity_tokens(&idle, VAULT).await.expect("still fresh enough to serve");
    assert_eq!(idle_now[0].access_token, idle_first[0].access_token, "the idle one was not refreshed");
    assert!(idle_now[0].expires_in.parse::<u64>().unwrap() < 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_texts_carry_no_full_client_or_tenant_id() {
    let w = world(1).await;
    let secrets = Arc::new(CountingSecrets::with("apps", "sp-secret", "not-the-secret"));
    let tokens = w.tokens(secrets.clone());
    let id = w.sp_identity("apps", ("apps", "sp-secret"), &w.sim.aad_https_url());
    let text = match tokens.identity_tokens(&id, VAULT).await {
        Err(TokenFailure::Refused(text)) => text,
        other => panic!("a wrong secret is refused: {other:?}"),
    };
    assert!(text.contains("AADSTS7000215"), "the reason stays readable: {text}");
    assert!(!text.contains(SP_CLIENT), "no full client ID: {text}");
    assert!(!text.contains(w.sim.tenant_id()), "no full tenant ID: {text}");
    assert!(!text.contains("not-the-secret"));

    w.sim.inject(Fault::new(Face::Imds, FaultKind::Down));
    let unreachable = tokens.identity_tokens(&msi_identity(&w.ids[0]), VAULT).await;
    let text = format!("{unreachable:?}");
    assert!(matches!(unreachable, Err(TokenFailure::Unavailable(_))), "{text}");
    assert!(!text.contains(&w.ids[0].client_id), "no full client ID in transport errors: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_many_identities_stays_within_imds_limits() {
    let w = world(40).await;
    let tokens = Arc::new(w.tokens(Arc::default()));
    let warm = msi_identity(&w.ids[0]);
    tokens.identity_tokens(&warm, VAULT).await.expect("a token to cache before the burst");
    w.sim.inject(Fault::new(Face::Imds, FaultKind::latency(Duration::from_millis(150))));
    w.sim.reset_counters();

    let burst: Vec<_> = w.ids[1..]
        .iter()
        .map(|id| {
            let (tokens, id) = (tokens.clone(), msi_identity(id));
            tokio::spawn(async move { tokens.identity_tokens(&id, VAULT).await })
        })
        .collect();
    let cached = tokio::time::timeout(Duration::from_millis(100), tokens.identity_tokens(&warm, VAULT)).await;
    assert!(matches!(cached, Ok(Ok(_))), "a cached token is served at once during the burst: {cached:?}");
    let mut results = Vec::new();
    for task in burst {
        results.push(task.await.unwrap());
    }

    let counters = w.sim.counters();
    let (concurrent, per_second) =
        (counters.peak_concurrent(Face::Imds, "imds_token"), counters.peak_per_second(Face::Imds, "imds_token"));
    assert!(concurrent <= 5, "IMDS saw {concurrent} calls at once");
    assert!(per_second <= 20, "IMDS saw {per_second} calls within one second");
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert!(served >= 5, "the node still gets tokens: {served}");
    for result in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(result, TokenFailure::Throttled { retry_after_secs: 1.., .. }),
            "over the budget: 429 with Retry-After, nothing else: {result:?}"
        );
    }
    println!("burst of {}: {served} served, IMDS peaks {concurrent} at once, {per_second}/s", results.len());
}
