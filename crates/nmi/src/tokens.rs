//! Where tokens come from: type 0 from the node's IMDS with the identity's
//! client ID, types 1 and 2 from Azure AD with the secret or certificate the identity
//! references, the bypass from IMDS with the caller's client ID or none. All through one
//! bounded token cache (ours, see `cache`), with the original's metrics. Service principal
//! credentials are used only as [`CredentialPolicy`] allows; every IMDS call is within the
//! node's budget (the IMDS client's limiter); error texts carry no full client or tenant ID.
//!
//! Never logs a token, secret, password or assertion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aadpodid_api::view::{IdentityType, redact_client_id};
use aadpodid_azure::token::{
    AadClient, ClientCertificate, IdentitySelector, ImdsClient, Token, TokenError, redact_ids,
};
use futures::future::BoxFuture;

use crate::cache::{CacheLimits, Classify, FailureKind, Grouped, Outcome, TokenCache};
use crate::metrics::{self, Metrics};
use crate::policy::{CredentialPolicy, SecretLocation};
use crate::select::IdentityView;
use crate::server::{TokenFailure, TokenSource};
use crate::token::TokenJson;

/// Longest `resource` a pod may ask for; real audiences are URIs far shorter.
pub const MAX_RESOURCE_LEN: usize = 512;
/// Longest `client_id` an excepted pod may ask the node's IMDS for (client IDs are GUIDs).
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Reads a Kubernetes Secret's data. Implemented over kube in `store`; faked in tests.
pub trait SecretReader: Send + Sync + 'static {
    fn secret_data<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Vec<u8>>, String>>;
}

/// Unix seconds now; injected so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The token source's settings, from flags.
#[derive(Clone)]
pub struct TokenSettings {
    pub policy: CredentialPolicy,
    pub cache: CacheLimits,
    pub clock: Clock,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self { policy: CredentialPolicy::default(), cache: CacheLimits::default(), clock: Arc::new(unix_now) }
    }
}

/// Who a token is for: everything that decides the principal (a group of cache entries).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Principal {
    Identity {
        namespace: String,
        name: String,
        kind: Option<i64>,
        client_id: String,
        tenant_id: String,
        ad_endpoint: String,
        aux_tenants: Vec<String>,
        secret: Option<(String, String)>,
    },
    /// The bypass: the node's IMDS with the caller's client ID, or none.
    Node(Option<String>),
}

/// Cache key: a principal and an audience.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    principal: Principal,
    resource: String,
}

impl Grouped for Key {
    type Group = Principal;
    fn group(&self) -> Principal {
        self.principal.clone()
    }
}

/// What a background refresh fetches from.
#[derive(Clone)]
enum Source {
    Identity(Box<IdentityView>),
    Node(Option<String>),
}

/// A failure as the cache keeps it: what the pod gets, and how it meets a cached token.
#[derive(Clone, Debug)]
struct Failure {
    kind: FailureKind,
    reply: TokenFailure,
}

impl Classify for Failure {
    fn kind(&self) -> FailureKind {
        self.kind
    }
}

impl Failure {
    /// A configuration problem (no client ID, bad certificate...): not a passing outage, so a
    /// cached token is not served through it; 503 as the original.
    fn config(text: String) -> Self {
        Self { kind: FailureKind::Refusal, reply: TokenFailure::Unavailable(text) }
    }

    /// The Secret could not be read: the API server may be down, so treated as unavailability.
    fn secret(text: &str) -> Self {
        Self { kind: FailureKind::Unavailable, reply: TokenFailure::Unavailable(redact_ids(text)) }
    }
}

/// The production token source.
pub struct AzureTokens {
    imds: ImdsClient,
    aad: AadClient,
    secrets: Arc<dyn SecretReader>,
    metrics: Metrics,
    policy: CredentialPolicy,
    cache: TokenCache<Key, Vec<TokenJson>, Failure, Source>,
    clock: Clock,
}

impl AzureTokens {
    /// `imds` should carry the node's limiter (`ImdsClient::with_limiter`).
    pub fn new(
        imds: ImdsClient,
        aad: AadClient,
        secrets: Arc<dyn SecretReader>,
        metrics: Metrics,
        settings: TokenSettings,
    ) -> Self {
        let cache = TokenCache::new(settings.cache);
        Self { imds, aad, secrets, metrics, policy: settings.policy, cache, clock: settings.clock }
    }

    /// One background pass: forgets dead entries and refreshes tokens in use that are due,
    /// one at a time (within the IMDS budget like any call). Returns how many were refreshed.
    pub async fn refresh_due(&self) -> usize {
        let now = (self.clock)();
        let held = self.cache.purge(now);
        let mut refreshed = 0;
        for (key, source) in self.cache.due(now) {
            let fetch = || self.fetch_source(&source, &key.resource);
            if self.cache.refresh(&key, || (self.clock)(), fetch).await {
                refreshed += 1;
            }
        }
        tracing::debug!(held, refreshed, "Token cache refresh pass");
        refreshed
    }

    /// Runs [`AzureTokens::refresh_due`] every `period` until the task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let tokens = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                tokens.refresh_due().await;
            }
        })
    }

    async fn fetch_source(&self, source: &Source, resource: &str) -> Result<Vec<TokenJson>, Failure> {
        match source {
            Source::Identity(id) => self.fetch_identity(id, resource).await,
            Source::Node(client_id) => self.fetch_node(client_id.as_deref(), resource).await.map(|t| vec![t]),
        }
    }

    async fn fetch_identity(&self, id: &IdentityView, resource: &str) -> Result<Vec<TokenJson>, Failure> {
        match identity_kind(id).map_err(Failure::config)? {
            IdentityType::UserAssignedMsi => {
                let client_id = id.client_id();
                if client_id.is_empty() {
                    return Err(Failure::config(format!("identity {}/{} has no clientID", id.namespace, id.name)));
                }
                let selector = IdentitySelector::ClientId(client_id.to_owned());
                let op = metrics::ADAL_TOKEN_MSI_USER_ASSIGNED;
                let token = self.measure(op, self.imds.token(resource, &selector)).await?;
                Ok(vec![token])
            }
            IdentityType::ServicePrincipal => self.secret_tokens(id, resource).await,
            IdentityType::ServicePrincipalCertificate => self.certificate_token(id, resource).await.map(|t| vec![t]),
        }
    }

    async fn fetch_node(&self, client_id: Option<&str>, resource: &str) -> Result<TokenJson, Failure> {
        let (selector, op) = match client_id {
            Some(c) => (IdentitySelector::ClientId(c.to_owned()), metrics::ADAL_TOKEN_MSI_USER_ASSIGNED),
            None => (IdentitySelector::SystemAssigned, metrics::ADAL_TOKEN_MSI),
        };
        self.measure(op, self.imds.token(resource, &selector)).await
    }

    async fn secret_tokens(&self, id: &IdentityView, resource: &str) -> Result<Vec<TokenJson>, Failure> {
        let data = self.read_secret(id).await?;
        let secret = client_secret(&data).ok_or_else(|| {
            Failure::config(format!("secret referenced by identity {}/{} has no data", id.namespace, id.name))
        })?;
        let (authority, tenant) = authority(id);
        let aux = id.spec.auxiliary_tenant_ids.clone().unwrap_or_default();
        let call = self.aad.multi_tenant_secret_tokens(authority, tenant, &aux, id.client_id(), &secret, resource);
        let started = Instant::now();
        let result = call.await;
        self.record(metrics::ADAL_TOKEN, started, result.is_ok());
        result.map_err(|e| failure(&e))
    }

    async fn certificate_token(&self, id: &IdentityView, resource: &str) -> Result<TokenJson, Failure> {
        let data = self.read_secret(id).await?;
        let der = data.get("certificate").map(Vec::as_slice).unwrap_or_default();
        let password =
            String::from_utf8_lossy(data.get("password").map(Vec::as_slice).unwrap_or_default()).into_owned();
        let cert = ClientCertificate::from_pkcs12(der, &password).map_err(|e| Failure::config(e.to_string()))?;
        let (authority, tenant) = authority(id);
        let call = self.aad.client_certificate_token(authority, tenant, id.client_id(), &cert, resource);
        self.measure(metrics::ADAL_TOKEN, call).await
    }

    /// Reads the identity's Secret, only where the policy allows (checked again here, as a
    /// background refresh reaches this without a request).
    async fn read_secret(&self, id: &IdentityView) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
        let SecretLocation { namespace, name } = self.policy.check(id).map_err(refusal)?;
        self.secrets.secret_data(&namespace, &name).await.map_err(|err| {
            self.metrics.kubernetes_errors.with_label_values(&[metrics::GET_SECRET]).inc();
            Failure::secret(&format!("failed to get Kubernetes secret {namespace}/{name}, err: {err}"))
        })
    }

    async fn measure(
        &self,
        operation: &str,
        call: impl Future<Output = Result<Token, TokenError>>,
    ) -> Result<TokenJson, Failure> {
        let started = Instant::now();
        let result = call.await;
        self.record(operation, started, result.is_ok());
        result.map_err(|e| failure(&e))
    }

    fn record(&self, operation: &str, started: Instant, ok: bool) {
        self.metrics.imds_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
        if !ok {
            self.metrics.imds_errors.with_label_values(&[operation]).inc();
        }
    }

    async fn cached(
        &self,
        key: Key,
        source: Source,
        fetch: impl Future<Output = Result<Vec<TokenJson>, Failure>>,
    ) -> Result<Vec<TokenJson>, TokenFailure> {
        let client_id = match &key.principal {
            Principal::Identity { client_id, .. } | Principal::Node(Some(client_id)) => client_id.as_str(),
            Principal::Node(None) => "",
        };
        let client_id = redact_client_id(client_id);
        let result = self.cache.get(&key, source, || (self.clock)(), || fetch).await;
        match &result {
            Ok((_, outcome)) => log_outcome(*outcome, &client_id, &key.resource),
            Err(failure) => {
                tracing::debug!(%client_id, resource = %key.resource, kind = ?failure.kind, "No token")
            }
        }
        result.map(|(tokens, _)| tokens).map_err(|f| f.reply)
    }
}

impl TokenSource for AzureTokens {
    fn identity_tokens<'a>(
        &'a self,
        identity: &'a IdentityView,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TokenJson>, TokenFailure>> {
        Box::pin(async move {
            check_resource(resource)?;
            if matches!(identity.spec.type_, Some(1 | 2)) {
                self.policy.check(identity).map_err(|text| TokenFailure::Refused(redact_ids(&text)))?;
            }
            let key = Key { principal: principal(identity), resource: resource.to_owned() };
            let source = Source::Identity(Box::new(identity.clone()));
            self.cached(key, source, self.fetch_identity(identity, resource)).await
        })
    }

    fn node_token<'a>(
        &'a self,
        client_id: Option<&'a str>,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<TokenJson, TokenFailure>> {
        Box::pin(async move {
            check_resource(resource)?;
            if let Some(c) = client_id.filter(|c| c.len() > MAX_CLIENT_ID_LEN || !c.chars().all(is_uri_char)) {
                let shown = redact_client_id(&c.chars().take(MAX_CLIENT_ID_LEN).collect::<String>());
                return Err(TokenFailure::Refused(format!("client_id {shown:?} is not a valid client ID")));
            }
            let owned = client_id.map(str::to_owned);
            let key = Key { principal: Principal::Node(owned.clone()), resource: resource.to_owned() };
            let fetch = async { self.fetch_node(client_id, resource).await.map(|t| vec![t]) };
            let tokens = self.cached(key, Source::Node(owned), fetch).await?;
            tokens.into_iter().next().ok_or_else(|| TokenFailure::Unavailable("no token".to_owned()))
        })
    }
}

/// A pod chooses `resource`; every distinct one may become a cache entry, so it is bounded in
/// length and to the characters of a URI. Azure would refuse anything else; so do we (403).
fn check_resource(resource: &str) -> Result<(), TokenFailure> {
    if resource.len() > MAX_RESOURCE_LEN {
        return Err(TokenFailure::Refused(format!("resource is longer than {MAX_RESOURCE_LEN} characters")));
    }
    if let Some(c) = resource.chars().find(|c| !is_uri_char(*c)) {
        return Err(TokenFailure::Refused(format!("resource contains {c:?}, which no resource URI holds")));
    }
    Ok(())
}

/// RFC 3986's unreserved and reserved characters, and `%`.
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// `spec.type` (absent means 0); an unknown type is a 503, as the original's "unsupported type".
fn identity_kind(id: &IdentityView) -> Result<IdentityType, String> {
    match id.spec.type_.unwrap_or(0) {
        0 => Ok(IdentityType::UserAssignedMsi),
        1 => Ok(IdentityType::ServicePrincipal),
        2 => Ok(IdentityType::ServicePrincipalCertificate),
        other => Err(format!("identity {}/{}: unsupported identity type {other}", id.namespace, id.name)),
    }
}

fn principal(id: &IdentityView) -> Principal {
    let secret = id
        .spec
        .client_password
        .as_ref()
        .map(|r| (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default()));
    Principal::Identity {
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        kind: id.spec.type_,
        client_id: id.client_id().to_owned(),
        tenant_id: id.spec.tenant_id.clone().unwrap_or_default(),
        ad_endpoint: id.spec.ad_endpoint.clone().unwrap_or_default(),
        aux_tenants: id.spec.auxiliary_tenant_ids.clone().unwrap_or_default(),
        secret,
    }
}

fn log_outcome(outcome: Outcome, client_id: &str, resource: &str) {
    match outcome {
        Outcome::Stale => tracing::warn!(%client_id, resource, "Token source unavailable; serving the cached token"),
        Outcome::Fetched => tracing::debug!(%client_id, resource, "Fetched token"),
        Outcome::Cached => tracing::debug!(%client_id, resource, "Served cached token"),
    }
}

/// Authority (`adEndpoint`, or the azure crate's default when empty) and tenant.
fn authority(id: &IdentityView) -> (&str, &str) {
    (id.spec.ad_endpoint.as_deref().unwrap_or_default(), id.spec.tenant_id.as_deref().unwrap_or_default())
}

/// The client secret of a type-1 identity. The original takes the first value of
/// `secret.data` in Go's random map order; we make that deterministic: the `clientSecret` key
/// when present, else the first key in sorted order.
pub fn client_secret(data: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    let value = data.get("clientSecret").or_else(|| data.values().next())?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// A credential policy refusal: 403, and any cached token for the identity is dropped.
fn refusal(text: String) -> Failure {
    Failure { kind: FailureKind::Refusal, reply: TokenFailure::Refused(redact_ids(&text)) }
}

/// An IMDS or Azure AD failure: 403 for the endpoint's refusals, 429 for this node's IMDS
/// budget, 503 for the rest, as the original; cached tokens are served only through the
/// transient ones.
fn failure(err: &TokenError) -> Failure {
    let kind = match err {
        TokenError::Throttled { .. } => FailureKind::Throttled,
        other if other.is_transient() => FailureKind::Unavailable,
        _ => FailureKind::Refusal,
    };
    let text = error_text(err);
    let reply = match err {
        TokenError::Throttled { retry_after } => {
            TokenFailure::Throttled { message: text, retry_after_secs: retry_after.as_secs().max(1) }
        }
        other if other.is_refusal() => TokenFailure::Refused(text),
        _ => TokenFailure::Unavailable(text),
    };
    Failure { kind, reply }
}

/// The error with its sources, so a 503 body says why (connection refused, bad PFX...), with
/// every GUID (client, tenant, object IDs) redacted.
fn error_text(err: &TokenError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    redact_ids(&text)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn client_secret_prefers_the_documented_key_then_sorted_order() {
        assert_eq!(client_secret(&data(&[("a", "x"), ("clientSecret", "s")])).as_deref(), Some("s"));
        assert_eq!(client_secret(&data(&[("zeta", "z"), ("alpha", "a")])).as_deref(), Some("a"));
        assert_eq!(client_secret(&BTreeMap::new()), None);
    }

    #[test]
    fn refusals_are_403_outages_503_and_only_outages_keep_a_cached_token() {
        let refused = failure(&TokenError::Refused { status: 400, body: "Identity not found".into() });
        assert!(matches!(&refused.reply, TokenFailure::Refused(t) if t.contains("Identity not found")));
        assert_eq!(refused.kind, FailureKind::Refusal);
        let down = failure(&TokenError::Refused { status: 503, body: String::new() });
        assert!(matches!(down.reply, TokenFailure::Refused(_)), "any answer but 200 is a 403, as the original");
        assert_eq!(down.kind, FailureKind::Unavailable);
        let bad = failure(&TokenError::InvalidRequest("invalid tenant ID".into()));
        assert_eq!((matches!(bad.reply, TokenFailure::Unavailable(_)), bad.kind), (true, FailureKind::Refusal));
        let busy = failure(&TokenError::Throttled { retry_after: Duration::from_secs(2) });
        assert!(matches!(busy.reply, TokenFailure::Throttled { retry_after_secs: 2, .. }));
        assert_eq!(busy.kind, FailureKind::Throttled);
    }

    #[test]
    fn error_texts_carry_no_full_client_or_tenant_id() {
        let body =
            "AADSTS700016: app '5b0c4d2e-7f1a-4c3b-9d8e-0a1b2c3d4e5f' not in '72f988bf-86f1-41af-91ab-2d7cd011db47'";
        let failed = failure(&TokenError::Refused { status: 400, body: body.into() });
        let TokenFailure::Refused(text) = failed.reply else { panic!("a refusal") };
        assert!(text.contains("AADSTS700016") && text.contains("5b0c##### REDACTED #####4e5f"), "{text}");
        assert!(!text.contains("5b0c4d2e-7f1a") && !text.contains("72f988bf-86f1"), "{text}");
    }

    #[test]
    fn pod_chosen_resources_are_bounded_to_uris() {
        assert!(check_resource("https://vault.azure.net").is_ok());
        assert!(check_resource("api://5b0c4d2e-7f1a-4c3b-9d8e-0a1b2c3d4e5f/.default").is_ok());
        assert!(check_resource(&format!("https://{}", "a".repeat(MAX_RESOURCE_LEN))).is_err());
        for bad in ["https://vault azure.net", "https://vault.azure.net\n", "https://välja.example", "a\u{0}b"] {
            assert!(matches!(check_resource(bad), Err(TokenFailure::Refused(_))), "{bad:?}");
        }
    }
}
