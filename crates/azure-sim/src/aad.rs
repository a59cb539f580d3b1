//! The Azure AD face: client-credentials token endpoints (v1 `resource`, v2 `scope`) with a client secret,
//! a certificate assertion (RS256, `x5t`) or a federated assertion (e.g. a Kubernetes service-account
//! token checked against its issuer's JWKS); discovery documents and the JWKS.
//!
//! Never logs secrets, assertions or tokens; errors use AAD's JSON shape.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::faults::{Face, FaultKind};
use crate::jwt::{Decoded, rsa_from_cert_der, x5t, x5t_s256};
use crate::sim::{Simulator, Subject, unix_now};
use crate::state::{AppClient, FederatedCredential, JwksSource};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Clone)]
struct AadCtx {
    sim: Simulator,
    scheme: &'static str,
}

/// The Azure AD router for one listener.
pub(crate) fn router(sim: Simulator, scheme: &'static str) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/discovery/keys", get(keys))
        .route("/{tenant}/discovery/v2.0/keys", get(keys))
        .route("/{tenant}/v2.0/.well-known/openid-configuration", get(openid_v2))
        .route("/{tenant}/.well-known/openid-configuration", get(openid_v1))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
        .with_state(AadCtx { sim, scheme })
}

/// An AAD error: status, `error`, AADSTS code and description.
#[derive(Debug, Clone)]
pub(crate) struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
    retry_after: Option<u64>,
}

impl AadError {
    fn new(status: u16, error: &'static str, code: u32, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            error,
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn missing(param: &str) -> Self {
        Self::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }

    fn invalid_assertion(code: u32, description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", code, description)
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let now = std::time::SystemTime::now();
        let timestamp = humantime::format_rfc3339_seconds(now).to_string().replace('T', " ");
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {}",
            self.code,
            self.description,
            humantime::format_rfc3339_millis(now)
        );
        let body = json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string())
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

fn aad_fault_response(kind: &FaultKind) -> Response {
    match kind {
        FaultKind::Throttle { retry_after } => {
            let mut e = AadError::new(
                429,
                "temporarily_unavailable",
                50196,
                "The server terminated an operation because it encountered a client request loop. Please retry later.",
            );
            e.retry_after = Some(retry_after.as_secs().max(1));
            e.into_response()
        }
        FaultKind::Status { code } => AadError::new(
            *code,
            if *code >= 500 { "temporarily_unavailable" } else { "invalid_request" },
            90033,
            format!("A transient error has occurred (injected status {code}). Please try again."),
        )
        .into_response(),
        FaultKind::Down => crate::server::sever(),
        FaultKind::FailOperation { message, .. } => {
            AadError::new(500, "server_error", 90033, message.clone()).into_response()
        }
        FaultKind::Latency { .. } => {
            AadError::new(500, "server_error", 90033, "latency is not an answer").into_response()
        }
    }
}

fn base_url(ctx: &AadCtx, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("{}://{host}", ctx.scheme)
}

fn check_tenant(sim: &Simulator, tenant: &str) -> Result<(), AadError> {
    if tenant.eq_ignore_ascii_case(sim.tenant_id()) {
        Ok(())
    } else {
        Err(AadError::new(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ))
    }
}

async fn keys(State(ctx): State<AadCtx>) -> Response {
    if let Some(f) = ctx.sim.gate(Face::Aad, "keys", None).await {
        return aad_fault_response(&f);
    }
    axum::Json(ctx.sim.jwks()).into_response()
}

async fn openid_v2(State(ctx): State<AadCtx>, Path(tenant): Path<String>, headers: HeaderMap) -> Response {
    openid(ctx, tenant, headers, true).await
}

async fn openid_v1(State(ctx): State<AadCtx>, Path(tenant): Path<String>, headers: HeaderMap) -> Response {
    openid(ctx, tenant, headers, false).await
}

async fn openid(ctx: AadCtx, tenant: String, headers: HeaderMap, v2: bool) -> Response {
    if let Some(f) = ctx.sim.gate(Face::Aad, "openid_configuration", None).await {
        return aad_fault_response(&f);
    }
    if let Err(e) = check_tenant(&ctx.sim, &tenant) {
        return e.into_response();
    }
    let base = base_url(&ctx, &headers);
    let t = ctx.sim.tenant_id();
    let (oauth, keys, issuer) = if v2 {
        (format!("{base}/{t}/oauth2/v2.0"), format!("{base}/{t}/discovery/v2.0/keys"), format!("{base}/{t}/v2.0"))
    } else {
        (format!("{base}/{t}/oauth2"), format!("{base}/{t}/discovery/keys"), ctx.sim.issuer())
    };
    axum::Json(json!({
        "token_endpoint": format!("{oauth}/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        "jwks_uri": keys,
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{oauth}/authorize"),
        "device_authorization_endpoint": format!("{oauth}/devicecode"),
        "end_session_endpoint": format!("{oauth}/logout"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }))
    .into_response()
}

async fn token_v1(
    State(ctx): State<AadCtx>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    token(ctx, tenant, headers, body, false).await
}

async fn token_v2(
    State(ctx): State<AadCtx>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    token(ctx, tenant, headers, body, true).await
}

/// The client-credentials form, once read.
struct TokenForm {
    client_id: String,
    audience: String,
    credential: Credential,
}

enum Credential {
    Secret(String),
    Assertion(String),
}

fn read_form(body: &[u8], v2: bool) -> Result<TokenForm, AadError> {
    let mut fields = std::collections::BTreeMap::<String, String>::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        fields.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    let grant = get("grant_type").ok_or_else(|| AadError::missing("grant_type"))?;
    if grant != "client_credentials" {
        return Err(AadError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let client_id = get("client_id").ok_or_else(|| AadError::missing("client_id"))?;
    let audience = if v2 {
        let scope = get("scope").ok_or_else(|| AadError::missing("scope"))?;
        let first = scope.split_whitespace().find(|s| s.ends_with("/.default")).ok_or_else(|| {
            AadError::new(
                400,
                "invalid_scope",
                1002012,
                format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            )
        })?;
        first.trim_end_matches("/.default").to_owned()
    } else {
        get("resource").ok_or_else(|| AadError::missing("resource"))?
    };
    let credential = match (get("client_secret"), get("client_assertion")) {
        (Some(s), _) => Credential::Secret(s),
        (None, Some(a)) => {
            if get("client_assertion_type").as_deref() != Some(JWT_BEARER) {
                return Err(AadError::new(
                    400,
                    "invalid_request",
                    50027,
                    "Invalid client_assertion_type: expected urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                ));
            }
            Credential::Assertion(a)
        }
        (None, None) => {
            return Err(AadError::new(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };
    Ok(TokenForm { client_id, audience, credential })
}

async fn token(ctx: AadCtx, tenant: String, headers: HeaderMap, body: axum::body::Bytes, v2: bool) -> Response {
    if let Some(f) = ctx.sim.gate(Face::Aad, "token", None).await {
        return aad_fault_response(&f);
    }
    match issue(&ctx, &tenant, &headers, &body, v2).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(status = e.status.as_u16(), code = e.code, "AAD token request rejected");
            e.into_response()
        }
    }
}

async fn issue(ctx: &AadCtx, tenant: &str, headers: &HeaderMap, body: &[u8], v2: bool) -> Result<Response, AadError> {
    check_tenant(&ctx.sim, tenant)?;
    let form = read_form(body, v2)?;
    let client = ctx.sim.state().client(&form.client_id).cloned().ok_or_else(|| {
        AadError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                form.client_id,
                ctx.sim.tenant_id()
            ),
        )
    })?;
    let appidacr = match &form.credential {
        Credential::Secret(s) => {
            if !client.secrets.iter().any(|x| x == s) {
                return Err(AadError::new(
                    401,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                        client.client_id
                    ),
                ));
            }
            "1"
        }
        Credential::Assertion(a) => {
            let endpoints = token_endpoints(ctx, headers, tenant);
            verify_assertion(&ctx.sim, &client, a, &endpoints).await?;
            "2"
        }
    };
    let subject = Subject {
        object_id: client.object_id.clone(),
        client_id: client.client_id.clone(),
        appidacr,
        mi_resource_id: client.managed_identity_id.clone(),
    };
    let minted = ctx
        .sim
        .mint(&subject, &form.audience, ctx.sim.inner.aad_token_lifetime)
        .map_err(|e| AadError::new(500, "server_error", 90033, format!("signing failed: {e}")))?;
    tracing::info!(client_id = %redact_client_id(&client.client_id), audience = %form.audience, v2, "AAD token issued");
    let body = if v2 {
        json!({"token_type": "Bearer", "expires_in": minted.expires_in, "ext_expires_in": minted.expires_in, "access_token": minted.token})
    } else {
        json!({
            "token_type": "Bearer",
            "expires_in": minted.expires_in.to_string(),
            "ext_expires_in": minted.expires_in.to_string(),
            "expires_on": minted.expires_on.to_string(),
            "not_before": minted.not_before.to_string(),
            "resource": form.audience,
            "access_token": minted.token,
        })
    };
    Ok(axum::Json(body).into_response())
}

/// Client IDs in logs: the first characters and `#####`, as the original redacts them.
pub(crate) fn redact_client_id(id: &str) -> String {
    let keep: String = id.chars().take(8).collect();
    format!("{keep}##### REDACTED #####")
}

fn token_endpoints(ctx: &AadCtx, headers: &HeaderMap, tenant: &str) -> Vec<String> {
    let base = base_url(ctx, headers);
    let mut v = Vec::new();
    for b in [base, "https://login.microsoftonline.com".to_owned()] {
        v.push(format!("{b}/{tenant}/oauth2/token"));
        v.push(format!("{b}/{tenant}/oauth2/v2.0/token"));
    }
    v
}

fn audiences(d: &Decoded) -> Vec<String> {
    match d.claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn check_times(d: &Decoded) -> Result<(), AadError> {
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    let expired = d.claim_time("exp").is_none_or(|exp| exp + 300 < now);
    let early = d.claim_time("nbf").is_some_and(|nbf| nbf > now + 300);
    if expired || early {
        return Err(AadError::invalid_assertion(700024, "Client assertion is not within its valid time range."));
    }
    Ok(())
}

async fn verify_assertion(
    sim: &Simulator,
    client: &AppClient,
    assertion: &str,
    endpoints: &[String],
) -> Result<(), AadError> {
    let decoded = Decoded::parse(assertion)
        .map_err(|_| AadError::invalid_assertion(50027, "JWT token is invalid or malformed."))?;
    let thumb = decoded.header_str("x5t").or_else(|| decoded.header_str("x5t#S256")).map(str::to_owned);
    if let Some(thumb) = thumb.filter(|_| !client.certificates.is_empty()) {
        return verify_certificate_assertion(client, &decoded, &thumb, endpoints);
    }
    let iss = decoded.claim_str("iss").unwrap_or("").to_owned();
    let sub = decoded.claim_str("sub").unwrap_or("").to_owned();
    let auds = audiences(&decoded);
    let cred: Option<FederatedCredential> = client
        .federated
        .iter()
        .find(|c| c.issuer == iss && c.subject == sub && auds.iter().any(|a| c.audiences.contains(a)))
        .cloned();
    let Some(cred) = cred else {
        return Err(AadError::new(
            400,
            "invalid_request",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                auds.join(",")
            ),
        ));
    };
    let jwks = match &cred.jwks {
        JwksSource::Inline(v) => v.clone(),
        JwksSource::Url(u) => fetch_jwks(sim, u).await?,
    };
    decoded
        .verify_with_jwks(&jwks)
        .map_err(|_| AadError::invalid_assertion(700027, "Client assertion failed signature validation."))?;
    check_times(&decoded)
}

async fn fetch_jwks(sim: &Simulator, url: &str) -> Result<Value, AadError> {
    let unavailable = |why: String| {
        AadError::new(
            400,
            "invalid_client",
            7000272,
            format!("Unable to retrieve the signing keys of the federated issuer: {why}"),
        )
    };
    let resp = sim.inner.http.get(url).send().await.map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("HTTP {}", resp.status())));
    }
    resp.json::<Value>().await.map_err(|e| unavailable(e.to_string()))
}

fn verify_certificate_assertion(
    client: &AppClient,
    decoded: &Decoded,
    thumb: &str,
    endpoints: &[String],
) -> Result<(), AadError> {
    // msal sends x5t base64url *with* padding; AAD accepts both.
    let bare = thumb.trim_end_matches('=');
    let cert = client.certificates.iter().find(|c| x5t(c) == bare || x5t_s256(c) == bare).ok_or_else(|| {
        AadError::invalid_assertion(
            700027,
            format!("Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '{thumb}']"),
        )
    })?;
    let key = rsa_from_cert_der(cert)
        .map_err(|_| AadError::invalid_assertion(700027, "Client assertion failed signature validation."))?;
    decoded.verify(&key).map_err(|_| {
        AadError::invalid_assertion(
            700027,
            "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]",
        )
    })?;
    let iss = decoded.claim_str("iss").unwrap_or("");
    let sub = decoded.claim_str("sub").unwrap_or("");
    if !iss.eq_ignore_ascii_case(&client.client_id) || !sub.eq_ignore_ascii_case(&client.client_id) {
        return Err(AadError::invalid_assertion(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let auds = audiences(decoded);
    let norm = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
    if !auds.iter().any(|a| endpoints.iter().any(|e| norm(e) == norm(a))) {
        return Err(AadError::invalid_assertion(
            700016,
            format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://aka.ms/certCreds. Audience: '{}'.",
                auds.join(",")
            ),
        ));
    }
    check_times(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_needs_grant_type_client_and_a_credential() {
        assert_eq!(read_form(b"", false).err().unwrap().code, 900144);
        assert_eq!(read_form(b"grant_type=password", false).err().unwrap().code, 70003);
        assert_eq!(read_form(b"grant_type=client_credentials&client_id=x", false).err().unwrap().code, 900144);
        let e = read_form(b"grant_type=client_credentials&client_id=x&resource=r", false).err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (401, 7000218));
        let e = read_form(b"grant_type=client_credentials&client_id=x&scope=r&client_secret=s", true).err().unwrap();
        assert_eq!(e.code, 1002012);
        let f = read_form(
            b"grant_type=client_credentials&client_id=x&scope=https%3A%2F%2Fvault.azure.net%2F.default&client_secret=s",
            true,
        )
        .unwrap();
        assert_eq!(f.audience, "https://vault.azure.net");
    }
}
