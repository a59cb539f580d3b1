//! The IMDS face of one node (a VM or a VMSS instance): `/metadata/identity/oauth2/token`,
//! `/metadata/instance` and `/metadata/versions`, with IMDS's checks and error texts. A token is issued
//! only for an identity whose attachment to the node's VM/VMSS has completed in ARM.
//!
//! Paths are read leniently, as a Windows HTTP server would, before routing ([`normalise_path`]):
//! escapes (including `%uXXXX`) decoded, `\` taken as `/`, dot segments, empty segments and
//! segments' trailing dots dropped, case ignored. A proxy in front of IMDS that routes on any other
//! reading is caught by this one.
//!
//! Parsing (`parse_token_query`, `normalise_path`) and selection (`select_identity`) are pure; the
//! handler is the shell.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::faults::{Face, FaultKind};
use crate::sim::{Simulator, Subject};
use crate::state::{ComputeKind, Identities, NodeRef};

/// IMDS api-versions accepted (the documented ones, 2017-03-01 to 2023-07-01).
pub const IMDS_API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
];
const NEWEST: [&str; 3] = ["2023-07-01", "2021-12-13", "2021-11-15"];

#[derive(Clone)]
struct ImdsCtx {
    sim: Simulator,
    node: NodeRef,
}

/// The IMDS router for one node: every path is normalised, then routed.
pub(crate) fn router(sim: Simulator, node: NodeRef) -> Router {
    let ctx = ImdsCtx { sim, node };
    let routes = Router::new()
        .route("/metadata/identity/oauth2/token", axum::routing::any(token))
        .route("/metadata/identity/oauth2/token/", axum::routing::any(token))
        .route("/metadata/instance", axum::routing::get(instance))
        .route("/metadata/instance/", axum::routing::get(instance))
        .route("/metadata/versions", axum::routing::get(versions))
        .fallback(|| async { ImdsError::not_found().into_response() })
        .with_state(ctx);
    Router::new().fallback_service(routes).layer(axum::middleware::from_fn(normalised))
}

/// Rewrites the request's path to its [`normalise_path`] form before the routes see it.
async fn normalised(mut req: Request, next: Next) -> Response {
    let path = match normalise_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    match target.parse::<axum::http::Uri>() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return ImdsError::BadRequest("Bad request. Malformed URI".into()).into_response(),
    }
    next.run(req).await
}

/// A request path read leniently: escapes decoded once (`%XX` and `%uXXXX`), `\` as `/`, empty
/// and `.` segments dropped, `..` applied, trailing dots of a segment dropped, lower case; a
/// trailing `/` kept. Invalid escapes, invalid UTF-8 and control characters are a 400.
pub fn normalise_path(raw: &str) -> Result<String, ImdsError> {
    let bad = || ImdsError::BadRequest("Bad request. Malformed URI".into());
    let decoded = decode_escapes(raw).ok_or_else(bad)?;
    if decoded.chars().any(char::is_control) {
        return Err(bad());
    }
    let slashed = decoded.replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    for seg in slashed.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => match s.trim_end_matches('.') {
                "" => {}
                kept => segments.push(kept.to_lowercase()),
            },
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    if slashed.ends_with('/') && out != "/" {
        out.push('/');
    }
    Ok(out)
}

/// `%XX` and IIS's `%uXXXX` decoded; `None` for a malformed escape or invalid UTF-8.
fn decode_escapes(raw: &str) -> Option<String> {
    let hex = |s: &[u8]| std::str::from_utf8(s).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
    let b = raw.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1).is_some_and(|c| c.eq_ignore_ascii_case(&b'u')) {
            let c = char::from_u32(hex(b.get(i + 2..i + 6)?)?)?;
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            i += 6;
        } else {
            out.push(u8::try_from(hex(b.get(i + 1..i + 3)?)?).ok()?);
            i += 3;
        }
    }
    String::from_utf8(out).ok()
}

/// An IMDS error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImdsError {
    /// 400 `{"error":"invalid_request","error_description":...}` (identity endpoint).
    InvalidRequest(String),
    /// 400 for the api-version problems, with `newest-versions`.
    ApiVersion(String),
    /// 400 `{"error": "Bad request. ..."}` (instance endpoint).
    BadRequest(String),
    /// 404 for unknown paths.
    NotFound,
    /// 405 for methods other than GET.
    MethodNotAllowed,
    /// An injected status (429 with `Retry-After`, 5xx).
    Injected {
        /// Status code.
        status: u16,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// The node is not (or no longer) a VM/VMSS instance in ARM.
    NodeGone,
    /// Token signing failed.
    Internal(String),
}

impl ImdsError {
    fn not_found() -> Self {
        ImdsError::NotFound
    }
}

impl IntoResponse for ImdsError {
    fn into_response(self) -> Response {
        let (status, body, retry) = match self {
            ImdsError::InvalidRequest(d) => (400, json!({"error": "invalid_request", "error_description": d}), None),
            ImdsError::ApiVersion(e) => (400, json!({"error": e, "newest-versions": NEWEST}), None),
            ImdsError::BadRequest(e) => (400, json!({"error": e}), None),
            ImdsError::NotFound => (404, json!({"error": "Not found"}), None),
            ImdsError::MethodNotAllowed => (405, json!({"error": "Method not allowed"}), None),
            ImdsError::Injected { status, retry_after } => {
                let text = if status == 429 { "Too many requests" } else { "Internal error" };
                (status, json!({"error": "temporarily_unavailable", "error_description": text}), retry_after)
            }
            ImdsError::NodeGone => (
                404,
                json!({"error": "Not found", "error_description": "This VM is not known to the simulated ARM"}),
                None,
            ),
            ImdsError::Internal(e) => (500, json!({"error": "unknown_error", "error_description": e}), None),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp =
            (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response();
        if let Some(s) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

fn imds_fault(kind: &FaultKind) -> Response {
    match kind {
        FaultKind::Throttle { retry_after } => {
            ImdsError::Injected { status: 429, retry_after: Some(retry_after.as_secs().max(1)) }.into_response()
        }
        FaultKind::Status { code } => ImdsError::Injected { status: *code, retry_after: None }.into_response(),
        FaultKind::Down => crate::server::sever(),
        FaultKind::FailOperation { .. } => ImdsError::Injected { status: 500, retry_after: None }.into_response(),
        FaultKind::Latency { .. } => ImdsError::Internal("latency is not an answer".into()).into_response(),
    }
}

/// Which identity a token request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// No selector: the system-assigned identity, or the only user-assigned one.
    Default,
    /// `client_id`.
    ClientId(String),
    /// `object_id` (or `principal_id`).
    ObjectId(String),
    /// `msi_res_id` (or `mi_res_id`).
    ResourceId(String),
}

/// A parsed token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenQuery {
    /// The audience asked for.
    pub resource: String,
    /// The identity asked for.
    pub selector: Selector,
}

fn common_checks(headers: &HeaderMap) -> Result<(), ImdsError> {
    if headers.contains_key("x-forwarded-for") {
        return Err(ImdsError::InvalidRequest(
            "Request contains X-Forwarded-For header; requests through a proxy are rejected".into(),
        ));
    }
    let metadata = headers.get("metadata").and_then(|v| v.to_str().ok());
    if metadata != Some("true") {
        return Err(ImdsError::InvalidRequest("Required metadata header not specified".into()));
    }
    Ok(())
}

fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ImdsError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(p, _)| p.eq_ignore_ascii_case(k)) {
            return Err(ImdsError::InvalidRequest(format!("Duplicate query parameter '{k}' in request")));
        }
    }
    Ok(pairs)
}

fn check_api_version(pairs: &[(String, String)]) -> Result<(), ImdsError> {
    match pairs.iter().find(|(k, _)| k == "api-version") {
        None => Err(ImdsError::ApiVersion(
            "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds".into(),
        )),
        Some((_, v)) if IMDS_API_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(_) => Err(ImdsError::ApiVersion(
            "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds".into(),
        )),
    }
}

/// Reads a token request exactly as IMDS checks it: no `X-Forwarded-For`, `Metadata: true`, no duplicate
/// parameters, a known `api-version`, a `resource`, at most one identity selector.
pub fn parse_token_query(query: Option<&str>, headers: &HeaderMap) -> Result<TokenQuery, ImdsError> {
    common_checks(headers)?;
    let pairs = query_pairs(query)?;
    check_api_version(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(p, _)| p == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let resource =
        get("resource").ok_or_else(|| ImdsError::InvalidRequest("Required audience variable missing".into()))?;
    let mut selectors = Vec::new();
    if let Some(v) = get("client_id") {
        selectors.push(Selector::ClientId(v));
    }
    if let Some(v) = get("object_id").or_else(|| get("principal_id")) {
        selectors.push(Selector::ObjectId(v));
    }
    if let Some(v) = get("msi_res_id").or_else(|| get("mi_res_id")) {
        selectors.push(Selector::ResourceId(v));
    }
    if selectors.len() > 1 {
        return Err(ImdsError::InvalidRequest(
            "Only one of client_id, object_id and msi_res_id may be specified".into(),
        ));
    }
    Ok(TokenQuery { resource, selector: selectors.pop().unwrap_or(Selector::Default) })
}

/// The identity a token is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Client ID.
    pub client_id: String,
    /// Principal (object) ID.
    pub principal_id: String,
    /// The identity resource ID (`xms_mirid`): the user-assigned ID, or the VM/VMSS ID for system-assigned.
    pub resource_id: String,
}

/// Picks the identity a request asks for among the node's applied identities, as IMDS does.
pub fn select_identity(sel: &Selector, ids: &Identities, compute_id: &str) -> Result<Selected, ImdsError> {
    let not_found = || ImdsError::InvalidRequest("Identity not found".into());
    let user = |a: &crate::state::AttachedIdentity| Selected {
        client_id: a.client_id.clone(),
        principal_id: a.principal_id.clone(),
        resource_id: a.id.clone(),
    };
    let system = ids.system.as_ref().map(|s| Selected {
        client_id: s.client_id.clone(),
        principal_id: s.principal_id.clone(),
        resource_id: compute_id.to_owned(),
    });
    match sel {
        Selector::Default => {
            if let Some(s) = system {
                return Ok(s);
            }
            let mut it = ids.user.values();
            match (it.next(), it.next()) {
                (Some(only), None) => Ok(user(only)),
                (Some(_), Some(_)) => Err(ImdsError::InvalidRequest(
                    "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request".into(),
                )),
                (None, _) => Err(not_found()),
            }
        }
        Selector::ClientId(c) => {
            if let Some(s) = system.filter(|s| s.client_id.eq_ignore_ascii_case(c)) {
                return Ok(s);
            }
            ids.user.values().find(|a| a.client_id.eq_ignore_ascii_case(c)).map(user).ok_or_else(not_found)
        }
        Selector::ObjectId(o) => {
            if let Some(s) = system.filter(|s| s.principal_id.eq_ignore_ascii_case(o)) {
                return Ok(s);
            }
            ids.user.values().find(|a| a.principal_id.eq_ignore_ascii_case(o)).map(user).ok_or_else(not_found)
        }
        Selector::ResourceId(r) => ids.user.get(&r.to_ascii_lowercase()).map(user).ok_or_else(not_found),
    }
}

async fn token(State(ctx): State<ImdsCtx>, req: Request) -> Response {
    let _in_flight = ctx.sim.in_flight(Face::Imds, "imds_token");
    let node_name = ctx.node.node_name();
    if let Some(f) = ctx.sim.gate(Face::Imds, "imds_token", Some(&node_name)).await {
        return imds_fault(&f);
    }
    if req.method() != axum::http::Method::GET {
        return ImdsError::MethodNotAllowed.into_response();
    }
    match issue(&ctx, req.uri().query(), req.headers()) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            tracing::debug!(node = %node_name, error = ?e, "IMDS token request rejected");
            e.into_response()
        }
    }
}

fn issue(ctx: &ImdsCtx, query: Option<&str>, headers: &HeaderMap) -> Result<Value, ImdsError> {
    let q = parse_token_query(query, headers)?;
    let (selected, still_registered) = {
        let s = ctx.sim.settled();
        let compute = s.node_compute(&ctx.node).ok_or(ImdsError::NodeGone)?;
        let compute_id = compute.resource_id(&s.subscription_id);
        let selected = select_identity(&q.selector, &compute.applied, &compute_id)?;
        let registered = compute.applied.system.as_ref().is_some_and(|sys| sys.client_id == selected.client_id)
            || s.identity_by_id(&selected.resource_id).is_some_and(|i| i.client_id == selected.client_id);
        (selected, registered)
    };
    if !still_registered {
        // Deleted (or deleted and re-created) identities are not found, as on Azure.
        return Err(ImdsError::InvalidRequest("Identity not found".into()));
    }
    let subject = Subject {
        object_id: selected.principal_id.clone(),
        client_id: selected.client_id.clone(),
        appidacr: "2",
        mi_resource_id: Some(selected.resource_id.clone()),
    };
    let minted = ctx
        .sim
        .mint(&subject, &q.resource, ctx.sim.inner.imds_token_lifetime)
        .map_err(|e| ImdsError::Internal(e.to_string()))?;
    tracing::info!(node = %ctx.node.node_name(), resource = %q.resource, "IMDS token issued");
    Ok(json!({
        "access_token": minted.token,
        "client_id": selected.client_id,
        "expires_in": minted.expires_in.to_string(),
        "expires_on": minted.expires_on.to_string(),
        "ext_expires_in": minted.expires_in.to_string(),
        "not_before": minted.not_before.to_string(),
        "resource": q.resource,
        "token_type": "Bearer",
    }))
}

async fn instance(State(ctx): State<ImdsCtx>, req: Request) -> Response {
    if let Some(f) = ctx.sim.gate(Face::Imds, "instance", Some(&ctx.node.node_name())).await {
        return imds_fault(&f);
    }
    let headers = req.headers();
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return ImdsError::BadRequest("Bad request. Required metadata header not specified".into()).into_response();
    }
    if headers.contains_key("x-forwarded-for") {
        return ImdsError::BadRequest("Bad request. Request contains X-Forwarded-For header".into()).into_response();
    }
    let pairs = match query_pairs(req.uri().query()).and_then(|p| check_api_version(&p).map(|()| p)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let _ = pairs;
    let s = ctx.sim.settled();
    let Some(c) = s.node_compute(&ctx.node) else { return ImdsError::NodeGone.into_response() };
    let (name, vmss, instance_rid) = match (&ctx.node, c.kind) {
        (NodeRef::VmssInstance { vmss, instance, .. }, ComputeKind::Vmss) => (
            format!("{vmss}_{instance}"),
            vmss.clone(),
            format!("{}/virtualMachines/{instance}", c.resource_id(&s.subscription_id)),
        ),
        _ => (c.name.clone(), String::new(), c.resource_id(&s.subscription_id)),
    };
    let compute = json!({
        "azEnvironment": "AzurePublicCloud",
        "location": c.location,
        "name": name,
        "osType": "Linux",
        "provider": "Microsoft.Compute",
        "resourceGroupName": c.resource_group,
        "resourceId": instance_rid,
        "subscriptionId": s.subscription_id,
        "tags": "",
        "tagsList": [],
        "vmId": c.vm_id,
        "vmScaleSetName": vmss,
        "vmSize": "Standard_DS2_v2",
        "zone": "",
    });
    axum::Json(json!({"compute": compute, "network": {"interface": []}})).into_response()
}

async fn versions(State(ctx): State<ImdsCtx>) -> Response {
    if let Some(f) = ctx.sim.gate(Face::Imds, "versions", Some(&ctx.node.node_name())).await {
        return imds_fault(&f);
    }
    axum::Json(json!({"apiVersions": IMDS_API_VERSIONS})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AttachedIdentity, SystemIdentity};

    fn hdrs(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn ids(users: &[(&str, &str, &str)], system: bool) -> Identities {
        let mut i = Identities::default();
        for (id, c, p) in users {
            i.user.insert(
                id.to_ascii_lowercase(),
                AttachedIdentity { id: (*id).into(), client_id: (*c).into(), principal_id: (*p).into() },
            );
        }
        if system {
            i.system = Some(SystemIdentity { principal_id: "sp".into(), client_id: "sc".into() });
        }
        i
    }

    #[test]
    fn missing_metadata_header_and_proxies_are_rejected() {
        let q = Some("api-version=2018-02-01&resource=r");
        assert_eq!(
            parse_token_query(q, &HeaderMap::new()),
            Err(ImdsError::InvalidRequest("Required metadata header not specified".into()))
        );
        assert!(parse_token_query(q, &hdrs(&[("metadata", "True")])).is_err());
        assert!(parse_token_query(q, &hdrs(&[("metadata", "true"), ("x-forwarded-for", "1.2.3.4")])).is_err());
        assert!(parse_token_query(q, &hdrs(&[("metadata", "true")])).is_ok());
    }

    #[test]
    fn api_version_resource_duplicates_and_selectors_are_checked() {
        let h = hdrs(&[("metadata", "true")]);
        assert!(matches!(parse_token_query(Some("resource=r"), &h), Err(ImdsError::ApiVersion(_))));
        assert!(matches!(
            parse_token_query(Some("api-version=1999-01-01&resource=r"), &h),
            Err(ImdsError::ApiVersion(_))
        ));
        assert!(parse_token_query(Some("api-version=2018-02-01"), &h).is_err());
        assert!(parse_token_query(Some("api-version=2018-02-01&resource=r&resource=s"), &h).is_err());
        assert!(parse_token_query(Some("api-version=2018-02-01&resource=r&client_id=a&object_id=b"), &h).is_err());
        let q = parse_token_query(Some("api-version=2018-02-01&resource=r&mi_res_id=X"), &h).unwrap();
        assert_eq!(q.selector, Selector::ResourceId("X".into()));
    }

    #[test]
    fn paths_are_read_leniently_as_a_windows_server_would() {
        for (raw, expected) in [
            ("/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token"),
            ("/metadata/identity/oauth2/%74oken", "/metadata/identity/oauth2/token"),
            ("/metadata/identity/oauth2/%u0074oken", "/metadata/identity/oauth2/token"),
            ("/metadata%2Fidentity%2foauth2%2Ftoken/", "/metadata/identity/oauth2/token/"),
            ("/metadata\\identity\\oauth2\\token", "/metadata/identity/oauth2/token"),
            ("/METADATA/Identity/OAuth2/Token", "/metadata/identity/oauth2/token"),
            ("/metadata./identity/oauth2/token", "/metadata/identity/oauth2/token"),
            ("//metadata/x/../instance/./", "/metadata/instance/"),
            ("/metadata/%2e%2e/metadata/instance", "/metadata/instance"),
            ("/", "/"),
        ] {
            assert_eq!(normalise_path(raw).as_deref(), Ok(expected), "{raw}");
        }
        for raw in ["/metadata/%zz", "/metadata/%4", "/metadata/%FF", "/metadata/%00", "/metadata/%u00"] {
            assert!(normalise_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn selection_follows_imds_rules() {
        let two = ids(&[("/A", "ca", "pa"), ("/B", "cb", "pb")], false);
        assert!(
            matches!(select_identity(&Selector::Default, &two, "vm"), Err(ImdsError::InvalidRequest(m)) if m.contains("Multiple"))
        );
        assert_eq!(select_identity(&Selector::ClientId("CB".into()), &two, "vm").unwrap().resource_id, "/B");
        assert_eq!(select_identity(&Selector::ObjectId("pa".into()), &two, "vm").unwrap().client_id, "ca");
        assert_eq!(select_identity(&Selector::ResourceId("/a".into()), &two, "vm").unwrap().client_id, "ca");
        assert!(select_identity(&Selector::ClientId("zz".into()), &two, "vm").is_err());
        let with_system = ids(&[("/A", "ca", "pa"), ("/B", "cb", "pb")], true);
        assert_eq!(select_identity(&Selector::Default, &with_system, "vm").unwrap().client_id, "sc");
        let none = ids(&[], false);
        assert_eq!(
            select_identity(&Selector::Default, &none, "vm"),
            Err(ImdsError::InvalidRequest("Identity not found".into()))
        );
    }
}
