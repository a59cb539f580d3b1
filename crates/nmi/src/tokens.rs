//! Where tokens come from (upstream §3.8): type 0 from the node's IMDS with the identity's
//! client ID, types 1 and 2 from Azure AD with the secret or certificate the identity
//! references, the bypass from IMDS with the caller's client ID or none. All through the
//! token cache (ours), with the original's metrics.
//!
//! Never logs a token, secret, password or assertion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aadpodid_api::view::{IdentityType, redact_client_id};
use aadpodid_azure::token::{AadClient, ClientCertificate, IdentitySelector, ImdsClient, Token, TokenError};
use futures::future::BoxFuture;

use crate::cache::{Outcome, TokenCache};
use crate::metrics::{self, Metrics};
use crate::select::IdentityView;
use crate::server::{TokenFailure, TokenSource};
use crate::token::TokenJson;

/// Reads a Kubernetes Secret's data. Implemented over kube in `store`; faked in tests.
pub trait SecretReader: Send + Sync + 'static {
    fn secret_data<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Vec<u8>>, String>>;
}

/// Cache key: everything that decides which principal and audience a token is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct IdentityKey {
    namespace: String,
    name: String,
    kind: Option<i64>,
    client_id: String,
    tenant_id: String,
    ad_endpoint: String,
    aux_tenants: Vec<String>,
    resource: String,
}

/// The production token source.
pub struct AzureTokens {
    imds: ImdsClient,
    aad: AadClient,
    secrets: Arc<dyn SecretReader>,
    metrics: Metrics,
    identity_cache: TokenCache<IdentityKey, Vec<TokenJson>>,
    node_cache: TokenCache<(Option<String>, String), TokenJson>,
}

impl AzureTokens {
    pub fn new(imds: ImdsClient, aad: AadClient, secrets: Arc<dyn SecretReader>, metrics: Metrics) -> Self {
        Self { imds, aad, secrets, metrics, identity_cache: TokenCache::new(), node_cache: TokenCache::new() }
    }

    async fn fetch_identity(&self, id: &IdentityView, resource: &str) -> Result<Vec<TokenJson>, TokenFailure> {
        match identity_kind(id)? {
            IdentityType::UserAssignedMsi => {
                let client_id = id.client_id();
                if client_id.is_empty() {
                    return Err(TokenFailure::Unavailable(format!(
                        "identity {}/{} has no clientID",
                        id.namespace, id.name
                    )));
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

    async fn secret_tokens(&self, id: &IdentityView, resource: &str) -> Result<Vec<TokenJson>, TokenFailure> {
        let data = self.read_secret(id).await?;
        let secret = client_secret(&data).ok_or_else(|| {
            TokenFailure::Unavailable(format!("secret referenced by identity {}/{} has no data", id.namespace, id.name))
        })?;
        let (authority, tenant) = authority(id);
        let aux = id.spec.auxiliary_tenant_ids.clone().unwrap_or_default();
        let call = self.aad.multi_tenant_secret_tokens(authority, tenant, &aux, id.client_id(), &secret, resource);
        let started = Instant::now();
        let result = call.await;
        self.record(metrics::ADAL_TOKEN, started, result.is_ok());
        result.map_err(failure)
    }

    async fn certificate_token(&self, id: &IdentityView, resource: &str) -> Result<TokenJson, TokenFailure> {
        let data = self.read_secret(id).await?;
        let der = data.get("certificate").map(Vec::as_slice).unwrap_or_default();
        let password =
            String::from_utf8_lossy(data.get("password").map(Vec::as_slice).unwrap_or_default()).into_owned();
        let cert =
            ClientCertificate::from_pkcs12(der, &password).map_err(|e| TokenFailure::Unavailable(e.to_string()))?;
        let (authority, tenant) = authority(id);
        let call = self.aad.client_certificate_token(authority, tenant, id.client_id(), &cert, resource);
        self.measure(metrics::ADAL_TOKEN, call).await
    }

    async fn read_secret(&self, id: &IdentityView) -> Result<BTreeMap<String, Vec<u8>>, TokenFailure> {
        let reference = id.spec.client_password.clone().unwrap_or_default();
        let ns = reference.namespace.unwrap_or_default();
        let name = reference.name.unwrap_or_default();
        self.secrets.secret_data(&ns, &name).await.map_err(|err| {
            self.metrics.kubernetes_errors.with_label_values(&[metrics::GET_SECRET]).inc();
            TokenFailure::Unavailable(format!("failed to get Kubernetes secret {ns}/{name}, err: {err}"))
        })
    }

    async fn measure(
        &self,
        operation: &str,
        call: impl Future<Output = Result<Token, TokenError>>,
    ) -> Result<TokenJson, TokenFailure> {
        let started = Instant::now();
        let result = call.await;
        self.record(operation, started, result.is_ok());
        result.map_err(failure)
    }

    fn record(&self, operation: &str, started: Instant, ok: bool) {
        self.metrics.imds_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
        if !ok {
            self.metrics.imds_errors.with_label_values(&[operation]).inc();
        }
    }
}

impl TokenSource for AzureTokens {
    fn identity_tokens<'a>(
        &'a self,
        identity: &'a IdentityView,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TokenJson>, TokenFailure>> {
        Box::pin(async move {
            let key = identity_key(identity, resource);
            let fetch = || self.fetch_identity(identity, resource);
            let (tokens, outcome) = self.identity_cache.get_or_fetch(&key, unix_now, fetch).await?;
            log_outcome(outcome, identity.client_id(), resource);
            Ok(tokens)
        })
    }

    fn node_token<'a>(
        &'a self,
        client_id: Option<&'a str>,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<TokenJson, TokenFailure>> {
        Box::pin(async move {
            let (selector, op) = match client_id {
                Some(c) => (IdentitySelector::ClientId(c.to_owned()), metrics::ADAL_TOKEN_MSI_USER_ASSIGNED),
                None => (IdentitySelector::SystemAssigned, metrics::ADAL_TOKEN_MSI),
            };
            let key = (client_id.map(str::to_owned), resource.to_owned());
            let fetch = || self.measure(op, self.imds.token(resource, &selector));
            let (token, outcome) = self.node_cache.get_or_fetch(&key, unix_now, fetch).await?;
            log_outcome(outcome, client_id.unwrap_or_default(), resource);
            Ok(token)
        })
    }
}

/// `spec.type` (absent means 0); an unknown type is a 503, as the original's "unsupported type".
fn identity_kind(id: &IdentityView) -> Result<IdentityType, TokenFailure> {
    match id.spec.type_.unwrap_or(0) {
        0 => Ok(IdentityType::UserAssignedMsi),
        1 => Ok(IdentityType::ServicePrincipal),
        2 => Ok(IdentityType::ServicePrincipalCertificate),
        other => Err(TokenFailure::Unavailable(format!(
            "identity {}/{}: unsupported identity type {other}",
            id.namespace, id.name
        ))),
    }
}

fn identity_key(id: &IdentityView, resource: &str) -> IdentityKey {
    IdentityKey {
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        kind: id.spec.type_,
        client_id: id.client_id().to_owned(),
        tenant_id: id.spec.tenant_id.clone().unwrap_or_default(),
        ad_endpoint: id.spec.ad_endpoint.clone().unwrap_or_default(),
        aux_tenants: id.spec.auxiliary_tenant_ids.clone().unwrap_or_default(),
        resource: resource.to_owned(),
    }
}

fn log_outcome(outcome: Outcome, client_id: &str, resource: &str) {
    let client_id = redact_client_id(client_id);
    match outcome {
        Outcome::Stale => tracing::warn!(%client_id, resource, "Token source failed; serving the cached token"),
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

fn failure(err: TokenError) -> TokenFailure {
    let text = error_text(&err);
    if err.is_refusal() { TokenFailure::Refused(text) } else { TokenFailure::Unavailable(text) }
}

/// The error with its sources, so a 503 body says why (connection refused, bad PFX...).
fn error_text(err: &TokenError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
    fn refusals_are_403_and_the_rest_503() {
        let refused = TokenError::Refused { status: 400, body: "Identity not found".into() };
        assert!(matches!(failure(refused), TokenFailure::Refused(t) if t.contains("Identity not found")));
        let bad = TokenError::InvalidRequest("invalid tenant ID".into());
        assert!(matches!(failure(bad), TokenFailure::Unavailable(_)));
    }
}
