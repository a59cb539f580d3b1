//! The ARM face: VMs and VMSS (GET/PUT/PATCH with identities, long-running writes polled through
//! `Azure-AsyncOperation`), user-assigned identities (PUT/GET/DELETE), subscriptions, and the admin API
//! under `/admin`. Paths are matched case-insensitively, as ARM does.
//!
//! Order of checks per request: fault injection, bearer token, api-version, subscription, then the
//! operation. Never logs tokens; never panics on bad input.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::faults::{Face, FaultKind};
use crate::sim::{Simulator, unix_now};
use crate::state::{ApiError, ComputeKind, State, WriteRequest};

/// api-versions accepted for `Microsoft.Compute` (VMs, VMSS, operations).
pub const COMPUTE_API_VERSIONS: &[&str] = &[
    "2017-03-30",
    "2017-12-01",
    "2018-04-01",
    "2018-06-01",
    "2018-10-01",
    "2019-03-01",
    "2019-07-01",
    "2019-12-01",
    "2020-06-01",
    "2020-12-01",
    "2021-03-01",
    "2021-04-01",
    "2021-07-01",
    "2021-11-01",
    "2022-03-01",
    "2022-08-01",
    "2022-11-01",
    "2023-03-01",
    "2023-07-01",
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-04-01",
];
/// api-versions accepted for `Microsoft.ManagedIdentity`.
pub const MSI_API_VERSIONS: &[&str] = &[
    "2015-08-31-preview",
    "2018-11-30",
    "2021-09-30-preview",
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
];
/// api-versions accepted for `/subscriptions`.
pub const SUBSCRIPTION_API_VERSIONS: &[&str] = &[
    "2014-04-01",
    "2015-01-01",
    "2016-06-01",
    "2018-06-01",
    "2019-06-01",
    "2019-11-01",
    "2020-01-01",
    "2021-01-01",
    "2022-12-01",
];

#[derive(Clone)]
struct ArmCtx {
    sim: Simulator,
    scheme: &'static str,
}

/// The ARM router for one listener (`scheme` is `http` or `https`, used in async-operation URLs).
pub(crate) fn router(sim: Simulator, scheme: &'static str) -> Router {
    let ctx = ArmCtx { sim: sim.clone(), scheme };
    Router::new().nest("/admin", crate::admin::router(sim)).fallback(move |req: Request| {
        let ctx = ctx.clone();
        async move { dispatch(ctx, req).await }
    })
}

/// What a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    ListSubscriptions,
    Subscription { sub: String },
    Compute { sub: String, rg: String, kind: ComputeKind, name: String },
    Identity { sub: String, rg: String, name: String },
    Operation { sub: String, id: String },
    Unknown,
}

fn classify(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    match l.as_slice() {
        ["subscriptions"] => Route::ListSubscriptions,
        ["subscriptions", _] => Route::Subscription { sub: segs[1].to_owned() },
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", t, _]
            if *t == "virtualmachines" || *t == "virtualmachinescalesets" =>
        {
            let kind = if *t == "virtualmachines" { ComputeKind::Vm } else { ComputeKind::Vmss };
            Route::Compute { sub: segs[1].to_owned(), rg: segs[3].to_owned(), kind, name: segs[7].to_owned() }
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.managedidentity",
            "userassignedidentities",
            _,
        ] => Route::Identity { sub: segs[1].to_owned(), rg: segs[3].to_owned(), name: segs[7].to_owned() },
        ["subscriptions", _, "providers", "microsoft.compute", "locations", _, "operations", _] => {
            Route::Operation { sub: segs[1].to_owned(), id: segs[7].to_owned() }
        }
        _ => Route::Unknown,
    }
}

fn operation_name(route: &Route, method: &Method) -> String {
    let verb = match *method {
        Method::GET => "get",
        Method::PATCH => "update",
        Method::PUT => "create_or_update",
        Method::DELETE => "delete",
        _ => "other",
    };
    match route {
        Route::ListSubscriptions => "subscriptions_list".into(),
        Route::Subscription { .. } => "subscription_get".into(),
        Route::Compute { kind, .. } => format!("{}_{verb}", kind.as_str()),
        Route::Identity { .. } => format!("identity_{verb}"),
        Route::Operation { .. } => "operation_get".into(),
        Route::Unknown => "unknown".into(),
    }
}

/// An ARM error response.
#[derive(Debug)]
pub(crate) struct ArmError {
    status: StatusCode,
    code: String,
    message: String,
    headers: Vec<(header::HeaderName, String)>,
}

impl ArmError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.to_owned(),
            message: message.into(),
            headers: Vec::new(),
        }
    }
    fn header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<ApiError> for ArmError {
    fn from(e: ApiError) -> Self {
        ArmError::new(e.status, &e.code, e.message)
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, json_body(&body)).into_response();
        add_arm_headers(resp.headers_mut());
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

fn json_body(v: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], v.to_string())
}

fn add_arm_headers(h: &mut HeaderMap) {
    let id = uuid::Uuid::new_v4().to_string();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-ms-request-id", v.clone());
        h.insert("x-ms-correlation-request-id", v);
    }
}

fn ok_json(status: StatusCode, v: &Value) -> Response {
    let mut resp = (status, json_body(v)).into_response();
    add_arm_headers(resp.headers_mut());
    resp
}

/// The response for an answering fault, in ARM's shape.
pub(crate) fn arm_fault_response(kind: &FaultKind) -> Response {
    match kind {
        FaultKind::Throttle { retry_after } => {
            let secs = retry_after.as_secs().max(1);
            ArmError::new(429, "TooManyRequests", "The request is being throttled as the limit has been reached for operation type - Write_30Min. For more information, see - https://aka.ms/computethrottling")
                .header(header::RETRY_AFTER, secs.to_string())
                .into_response()
        }
        FaultKind::Status { code } => {
            let c = match code {
                500 => "InternalServerError",
                502 => "BadGateway",
                503 => "ServiceUnavailable",
                504 => "GatewayTimeout",
                409 => "Conflict",
                _ => "InjectedFault",
            };
            ArmError::new(*code, c, format!("The simulator answered {code} as instructed by an injected fault."))
                .into_response()
        }
        FaultKind::Down => crate::server::sever(),
        FaultKind::FailOperation { code, message } => ArmError::new(500, code, message.clone()).into_response(),
        FaultKind::Latency { .. } => {
            ArmError::new(500, "InternalServerError", "latency is not an answer").into_response()
        }
    }
}

async fn dispatch(ctx: ArmCtx, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let route = classify(parts.uri.path());
    let op = operation_name(&route, &parts.method);
    let target = match &route {
        Route::Compute { name, .. } => Some(name.clone()),
        _ => None,
    };
    let is_write = op.ends_with("_update") || op.ends_with("_create_or_update");
    let mut fail = None;
    match ctx.sim.gate(Face::Arm, &op, target.as_deref()).await {
        Some(FaultKind::FailOperation { code, message }) if is_write && matches!(route, Route::Compute { .. }) => {
            fail = Some(ApiError::new(200, &code, message));
        }
        Some(fault) => return arm_fault_response(&fault),
        None => {}
    }
    match authenticate(&ctx.sim, &parts.headers) {
        Ok(appid) => ctx.sim.count_caller(&appid, &op),
        Err(e) => return e.into_response(),
    }
    let query = parts.uri.query().unwrap_or("");
    let api_version =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "api-version").map(|(_, v)| v.into_owned());
    let Ok(bytes) = axum::body::to_bytes(body, 4 << 20).await else {
        return ArmError::new(413, "RequestEntityTooLarge", "The request body is too large.").into_response();
    };
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1").to_owned();
    let base = format!("{}://{host}", ctx.scheme);
    let req = ArmRequest { method: parts.method, api_version, body: bytes.to_vec(), base, fail };
    match handle(&ctx.sim, route, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

struct ArmRequest {
    method: Method,
    api_version: Option<String>,
    body: Vec<u8>,
    base: String,
    fail: Option<ApiError>,
}

fn check_api_version(v: Option<&str>, supported: &[&str]) -> Result<String, ArmError> {
    let Some(v) = v else {
        return Err(ArmError::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    if supported.iter().any(|s| s.eq_ignore_ascii_case(v)) {
        return Ok(v.to_owned());
    }
    let list: Vec<&str> = supported.iter().rev().copied().collect();
    Err(ArmError::new(
        400,
        "InvalidApiVersionParameter",
        format!("The api-version '{v}' is invalid. The supported versions are '{}'.", list.join(",")),
    ))
}

fn check_subscription(sim: &Simulator, sub: &str) -> Result<(), ArmError> {
    if sub.eq_ignore_ascii_case(sim.subscription_id()) {
        Ok(())
    } else {
        Err(ArmError::new(404, "SubscriptionNotFound", format!("The subscription '{sub}' could not be found.")))
    }
}

fn method_not_allowed(method: &Method) -> ArmError {
    ArmError::new(405, "MethodNotAllowed", format!("The requested method '{method}' is not allowed for this resource."))
}

async fn handle(sim: &Simulator, route: Route, req: ArmRequest) -> Result<Response, ArmError> {
    match route {
        Route::ListSubscriptions => {
            check_api_version(req.api_version.as_deref(), SUBSCRIPTION_API_VERSIONS)?;
            Ok(ok_json(
                StatusCode::OK,
                &json!({"value": [subscription_json(sim)], "count": {"type": "Total", "value": 1}}),
            ))
        }
        Route::Subscription { sub } => {
            check_api_version(req.api_version.as_deref(), SUBSCRIPTION_API_VERSIONS)?;
            check_subscription(sim, &sub)?;
            Ok(ok_json(StatusCode::OK, &subscription_json(sim)))
        }
        Route::Compute { sub, rg, kind, name } => {
            let v = check_api_version(req.api_version.as_deref(), COMPUTE_API_VERSIONS)?;
            check_subscription(sim, &sub)?;
            compute(sim, &req, &rg, kind, &name, &v)
        }
        Route::Identity { sub, rg, name } => {
            check_api_version(req.api_version.as_deref(), MSI_API_VERSIONS)?;
            check_subscription(sim, &sub)?;
            identity(sim, &req, &rg, &name)
        }
        Route::Operation { sub, id } => {
            check_api_version(req.api_version.as_deref(), COMPUTE_API_VERSIONS)?;
            check_subscription(sim, &sub)?;
            operation(sim, &id)
        }
        Route::Unknown => {
            Err(ArmError::new(404, "NotFound", "The requested resource path is not served by this Azure simulator."))
        }
    }
}

fn subscription_json(sim: &Simulator) -> Value {
    json!({
        "id": format!("/subscriptions/{}", sim.subscription_id()),
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": sim.subscription_id(),
        "tenantId": sim.tenant_id(),
        "displayName": "Azure Simulator",
        "state": "Enabled",
        "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
    })
}

fn parse_body(body: &[u8]) -> Result<Value, ArmError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ArmError::new(
            400,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{e}'."),
        )
    })?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(ArmError::new(
            400,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: expected a JSON object.",
        ))
    }
}

fn compute(
    sim: &Simulator,
    req: &ArmRequest,
    rg: &str,
    kind: ComputeKind,
    name: &str,
    api_version: &str,
) -> Result<Response, ArmError> {
    match req.method {
        Method::GET => {
            sim.count_target(kind, name, false);
            let s = sim.settled();
            let c = s.compute(kind, rg, name).ok_or_else(|| State::not_found(kind, rg, name))?;
            Ok(ok_json(StatusCode::OK, &c.to_json(&s.subscription_id, &s.tenant_id)))
        }
        Method::PATCH | Method::PUT => {
            sim.count_target(kind, name, true);
            let body = parse_body(&req.body)?;
            let put = req.method == Method::PUT;
            let lro = sim.timing().lro_duration;
            let existed = sim.state().compute(kind, rg, name).is_some();
            let (json, op_id) = {
                let mut s = sim.state();
                let w = WriteRequest { kind, resource_group: rg, name, body: &body, put, fail: req.fail.as_ref() };
                let r = s.write_compute(&w, Instant::now(), lro);
                let location = s.location.clone();
                r.map(|(j, id)| (j, (id, location)))?
            };
            let (op_id, location) = op_id;
            tracing::info!(kind = kind.as_str(), resource_group = rg, name, put, "ARM write accepted");
            let url = format!(
                "{}/subscriptions/{}/providers/Microsoft.Compute/locations/{location}/operations/{op_id}?api-version={api_version}",
                req.base,
                sim.subscription_id()
            );
            let status = if put && !existed { StatusCode::CREATED } else { StatusCode::OK };
            let mut resp = ok_json(status, &json);
            if let Ok(v) = HeaderValue::from_str(&url) {
                resp.headers_mut().insert("azure-asyncoperation", v);
            }
            if !lro.is_zero() {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(lro)));
            }
            Ok(resp)
        }
        ref m => Err(method_not_allowed(m)),
    }
}

fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn operation(sim: &Simulator, id: &str) -> Result<Response, ArmError> {
    let s = sim.settled();
    let op = s
        .op(id)
        .ok_or_else(|| ArmError::new(404, "ResourceNotFound", format!("The operation '{id}' was not found.")))?;
    let started = humantime::format_rfc3339_millis(op.started).to_string();
    let now = Instant::now();
    if now < op.due {
        let mut resp = ok_json(StatusCode::OK, &json!({"startTime": started, "status": "InProgress", "name": id}));
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(op.due - now).max(1)));
        return Ok(resp);
    }
    let end = humantime::format_rfc3339_millis(op.started + op.lro).to_string();
    if let Some(err) = &op.failed {
        let body = json!({"startTime": started, "endTime": end, "status": "Failed", "name": id,
            "error": {"code": err.code, "message": err.message}});
        return Ok(ok_json(StatusCode::OK, &body));
    }
    Ok(ok_json(StatusCode::OK, &json!({"startTime": started, "endTime": end, "status": "Succeeded", "name": id})))
}

fn identity(sim: &Simulator, req: &ArmRequest, rg: &str, name: &str) -> Result<Response, ArmError> {
    let not_found = || {
        ArmError::new(
            404,
            "ResourceNotFound",
            format!(
                "The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    };
    match req.method {
        Method::GET => {
            let info = sim.identity(rg, name).ok_or_else(not_found)?;
            Ok(ok_json(StatusCode::OK, &info.arm_json()))
        }
        Method::PUT => {
            let body = parse_body(&req.body)?;
            let existed = sim.identity(rg, name).is_some();
            let info = sim.state().create_identity(rg, name, None, None);
            let mut v = info.arm_json();
            if let Some(tags) = body.get("tags") {
                v["tags"] = tags.clone();
            }
            Ok(ok_json(if existed { StatusCode::OK } else { StatusCode::CREATED }, &v))
        }
        Method::DELETE => {
            let deleted = sim.state().delete_identity(rg, name);
            Ok(ok_json(if deleted { StatusCode::OK } else { StatusCode::NO_CONTENT }, &json!({})))
        }
        ref m => Err(method_not_allowed(m)),
    }
}

// === authentication ===

/// Checks the bearer token; returns its `appid` (empty when absent).
fn authenticate(sim: &Simulator, headers: &HeaderMap) -> Result<String, ArmError> {
    let challenge = format!(
        "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"The authentication failed because of missing 'Authorization' header.\"",
        sim.endpoints().aad_https,
        sim.tenant_id()
    );
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(ArmError::new(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )
        .header(header::WWW_AUTHENTICATE, challenge));
    };
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => t.trim(),
        _ => {
            return Err(ArmError::new(
                401,
                "AuthenticationFailedInvalidHeader",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            )
            .header(header::WWW_AUTHENTICATE, challenge));
        }
    };
    let invalid = || {
        ArmError::new(401, "InvalidAuthenticationToken", "The access token is invalid.")
            .header(header::WWW_AUTHENTICATE, challenge.replace("missing 'Authorization' header", "an invalid token"))
    };
    let decoded = sim.inner.key.verify_own(token).map_err(|_| invalid())?;
    if decoded.claim_str("iss") != Some(sim.issuer().as_str()) {
        return Err(invalid());
    }
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    if decoded.claim_time("exp").is_none_or(|exp| exp <= now) {
        return Err(ArmError::new(
            401,
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.",
        ));
    }
    if decoded.claim_time("nbf").is_some_and(|nbf| nbf > now + 300) {
        return Err(invalid());
    }
    let aud = decoded.claim_str("aud").unwrap_or("");
    if !arm_audience_ok(sim, aud) {
        return Err(ArmError::new(
            401,
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'."
            ),
        ));
    }
    Ok(decoded.claim_str("appid").unwrap_or_default().to_owned())
}

/// ARM accepts the public-cloud management audiences, and its own base URLs (the original MIC asks for a
/// token for `resourceManagerEndpoint`), also under the extra names of its certificate
/// ([`crate::SimConfig::tls_names`], e.g. an address clients in network namespaces reach it by).
fn arm_audience_ok(sim: &Simulator, aud: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('/').to_ascii_lowercase().replace("://localhost:", "://127.0.0.1:");
    let aud = norm(aud);
    let e = sim.endpoints();
    let mut allowed = vec![
        "https://management.azure.com".to_owned(),
        "https://management.core.windows.net".to_owned(),
        e.arm_http.clone(),
        e.arm_https.clone(),
    ];
    for base in [&e.arm_http, &e.arm_https] {
        if let Some((scheme, port)) =
            base.split_once("://").and_then(|(s, rest)| rest.rsplit_once(':').map(|(_, p)| (s, p)))
        {
            allowed.extend(sim.inner.tls_names.iter().map(|name| format!("{scheme}://{name}:{port}")));
        }
    }
    allowed.iter().any(|a| norm(a) == aud)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_classify_case_insensitively() {
        let r = classify("/subscriptions/S/resourcegroups/RG/providers/microsoft.compute/VirtualMachineScaleSets/ss");
        assert_eq!(r, Route::Compute { sub: "S".into(), rg: "RG".into(), kind: ComputeKind::Vmss, name: "ss".into() });
        assert_eq!(classify("/subscriptions"), Route::ListSubscriptions);
        assert_eq!(classify("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d"), Route::Unknown);
        assert!(matches!(
            classify("/subscriptions/s/providers/Microsoft.Compute/locations/westus2/operations/abc"),
            Route::Operation { .. }
        ));
    }

    #[test]
    fn api_version_is_required_and_checked() {
        assert_eq!(check_api_version(None, COMPUTE_API_VERSIONS).unwrap_err().code, "MissingApiVersionParameter");
        assert_eq!(
            check_api_version(Some("2099-01-01"), COMPUTE_API_VERSIONS).unwrap_err().code,
            "InvalidApiVersionParameter"
        );
        for v in ["2019-12-01", "2023-09-01", "2024-07-01", "2024-11-01"] {
            assert!(check_api_version(Some(v), COMPUTE_API_VERSIONS).is_ok());
        }
    }
}
