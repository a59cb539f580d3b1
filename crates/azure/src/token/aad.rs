//! Azure AD v1 client credentials (`<authority><tenant>/oauth2/token?api-version=1.0`), as adal
//! did for the original: client secret, client certificate assertion, and the multi-tenant
//! form (primary plus auxiliary tenants). Never logs the secret or the assertion.

use std::time::SystemTime;

use tracing::debug;
use url::Url;

use super::{ClientCertificate, Token, TokenError, read_token_response};
use crate::http::HttpOptions;

/// adal's default authority, used when an identity names no `adEndpoint`.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The v1 token URL for `tenant_id` under `authority`, resolved like adal (Go's `url.Parse`
/// reference resolution): `https://host/` + `t` gives `https://host/t/oauth2/token?api-version=1.0`;
/// an authority without a trailing slash has its last path segment replaced. An empty authority
/// means [`DEFAULT_AUTHORITY`]. The tenant must look like a tenant (a GUID or a domain name:
/// letters, digits, `.`, `-`, `_`) and the URL always stays on the authority's host: a tenant
/// such as `http:evil.example` would otherwise resolve to another server.
pub fn token_url(authority: &str, tenant_id: &str) -> Result<Url, TokenError> {
    let authority = if authority.trim().is_empty() { DEFAULT_AUTHORITY } else { authority.trim() };
    let tenant_id = tenant_id.trim();
    let tenant_like = tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if tenant_id.is_empty() || !tenant_like || tenant_id.chars().all(|c| c == '.') {
        return Err(TokenError::InvalidRequest(format!("invalid tenant ID {tenant_id:?}")));
    }
    let base = Url::parse(authority)
        .map_err(|e| TokenError::InvalidRequest(format!("invalid authority {authority:?}: {e}")))?;
    if !matches!(base.scheme(), "https" | "http") {
        return Err(TokenError::InvalidRequest(format!("authority {authority:?} is not an http(s) URL")));
    }
    let mut url = base
        .join(&format!("{tenant_id}/oauth2/token"))
        .map_err(|e| TokenError::InvalidRequest(format!("invalid authority {authority:?}: {e}")))?;
    if url.origin() != base.origin() {
        return Err(TokenError::InvalidRequest(format!("tenant ID {tenant_id:?} leaves the authority {authority:?}")));
    }
    url.set_query(Some("api-version=1.0"));
    Ok(url)
}

/// Azure AD v1 token client. Cheap to clone; one per process is enough.
#[derive(Clone, Debug)]
pub struct AadClient {
    http: reqwest::Client,
}

impl AadClient {
    /// A client with the given transport settings (e.g. the simulator's CA as an extra root).
    pub fn new(options: &HttpOptions) -> Result<Self, TokenError> {
        Ok(Self { http: options.build(false)? })
    }

    /// `grant_type=client_credentials` with a client secret.
    pub async fn client_secret_token(
        &self,
        authority: &str,
        tenant_id: &str,
        client_id: &str,
        secret: &str,
        resource: &str,
    ) -> Result<Token, TokenError> {
        let url = token_url(authority, tenant_id)?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("resource", resource),
        ];
        self.post(url, &form, client_id, resource).await
    }

    /// `grant_type=client_credentials` with an RS256 client assertion signed by `certificate`.
    pub async fn client_certificate_token(
        &self,
        authority: &str,
        tenant_id: &str,
        client_id: &str,
        certificate: &ClientCertificate,
        resource: &str,
    ) -> Result<Token, TokenError> {
        let url = token_url(authority, tenant_id)?;
        // The documented audience is the token endpoint without query (adal sent the query too;
        // Azure AD accepts both).
        let mut audience = url.clone();
        audience.set_query(None);
        let jti = uuid::Uuid::new_v4().to_string();
        let assertion = certificate.assertion(client_id, audience.as_str(), SystemTime::now(), &jti)?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
            ("resource", resource),
        ];
        self.post(url, &form, client_id, resource).await
    }

    /// adal's multi-tenant service principal token: the primary tenant's token first, then one
    /// per auxiliary tenant, same client and secret. Any failure fails the whole call.
    pub async fn multi_tenant_secret_tokens(
        &self,
        authority: &str,
        tenant_id: &str,
        aux_tenant_ids: &[String],
        client_id: &str,
        secret: &str,
        resource: &str,
    ) -> Result<Vec<Token>, TokenError> {
        let mut tokens = Vec::with_capacity(aux_tenant_ids.len() + 1);
        for tenant in std::iter::once(tenant_id).chain(aux_tenant_ids.iter().map(String::as_str)) {
            tokens.push(self.client_secret_token(authority, tenant, client_id, secret, resource).await?);
        }
        Ok(tokens)
    }

    async fn post(
        &self,
        url: Url,
        form: &[(&str, &str)],
        client_id: &str,
        resource: &str,
    ) -> Result<Token, TokenError> {
        let redacted = aadpodid_api::view::redact_client_id(client_id);
        let response =
            self.http.post(url).form(form).send().await.map_err(|e| TokenError::Transport(e.without_url()))?;
        let mut token = read_token_response(response).await.inspect_err(|error| {
            debug!(client_id = %redacted, resource, %error, "Azure AD token request failed");
        })?;
        if token.client_id.is_none() {
            token.client_id = Some(client_id.to_owned());
        }
        debug!(client_id = %redacted, resource, "Got token from Azure AD");
        Ok(token)
    }
}
