//! The admin API, served under `/admin` on both ARM listeners without authentication: seeding, fault
//! injection, counters, timing and a state dump. This is how the sandbox, the benchmarks and
//! `azure-sim identity create` drive a running simulator. It is a test control plane: never expose it
//! beyond the machine.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Timing;
use crate::faults::Fault;
use crate::seed::{Seed, pem_to_der};
use crate::sim::Simulator;

/// The admin router (state already applied).
pub(crate) fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/state", get(state))
        .route("/seed", post(seed))
        .route("/vms", post(create_vm))
        .route("/vmss", post(create_vmss))
        .route("/identities", post(create_identity))
        .route("/service-principals", post(create_sp))
        .route("/federated-credentials", post(create_federated))
        .route("/faults", get(list_faults).post(add_fault).delete(clear_faults))
        .route("/counters", get(counters).delete(reset_counters))
        .route("/timing", get(get_timing).put(put_timing))
        .fallback(|| async { bad(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(sim)
}

fn bad(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": "AdminError", "message": msg.into()}}))).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

async fn info(State(sim): State<Simulator>) -> Response {
    Json(json!({
        "tenantId": sim.tenant_id(),
        "subscriptionId": sim.subscription_id(),
        "location": sim.location(),
        "endpoints": sim.endpoints(),
        "timing": sim.timing(),
        "jwks": sim.jwks(),
    }))
    .into_response()
}

async fn state(State(sim): State<Simulator>) -> Response {
    let s = sim.settled();
    let computes: Vec<Value> = s
        .computes()
        .map(|c| {
            json!({
                "kind": c.kind.as_str(),
                "resourceGroup": c.resource_group,
                "name": c.name,
                "instances": c.instances,
                "model": c.model,
                "applied": c.applied,
                "done": c.model == c.applied,
            })
        })
        .collect();
    let identities: Vec<Value> = s.identities().map(|i| i.az_json()).collect();
    Json(json!({"computes": computes, "identities": identities})).into_response()
}

async fn seed(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let seed = match Seed::parse(&text) {
        Ok(s) => s,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match crate::seed::apply(&sim, &seed) {
        Ok(ids) => Json(json!({"identities": ids.iter().map(|i| i.az_json()).collect::<Vec<_>>()})).into_response(),
        Err(e) => bad(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputeReq {
    resource_group: String,
    name: String,
    #[serde(default)]
    instances: Option<u32>,
}

async fn create_vm(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    match parse::<ComputeReq>(&body) {
        Ok(r) => {
            sim.create_vm(&r.resource_group, &r.name);
            (StatusCode::CREATED, Json(json!({"resourceGroup": r.resource_group, "name": r.name}))).into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

async fn create_vmss(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    match parse::<ComputeReq>(&body) {
        Ok(r) => {
            let n = r.instances.unwrap_or(1);
            sim.create_vmss(&r.resource_group, &r.name, n);
            (StatusCode::CREATED, Json(json!({"resourceGroup": r.resource_group, "name": r.name, "instances": n})))
                .into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityReq {
    resource_group: String,
    name: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    principal_id: Option<String>,
}

async fn create_identity(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    let r = match parse::<IdentityReq>(&body) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let info = match (r.client_id, r.principal_id) {
        (None, None) => sim.create_user_assigned_identity(&r.resource_group, &r.name),
        (c, p) => sim.create_user_assigned_identity_with_ids(
            &r.resource_group,
            &r.name,
            &c.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            &p.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        ),
    };
    (StatusCode::CREATED, Json(info.az_json())).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpReq {
    client_id: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    certificate_pem: Option<String>,
}

async fn create_sp(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    let r = match parse::<SpReq>(&body) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    if let Some(s) = &r.secret {
        sim.register_service_principal_secret(&r.client_id, s);
    }
    if let Some(pem) = &r.certificate_pem {
        let registered = pem_to_der(pem).and_then(|der| sim.register_service_principal_certificate(&r.client_id, &der));
        if let Err(e) = registered {
            return bad(StatusCode::BAD_REQUEST, e.to_string());
        }
    }
    let object_id = sim.state().ensure_client(&r.client_id);
    (StatusCode::CREATED, Json(json!({"clientId": r.client_id, "objectId": object_id}))).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FederatedReq {
    client_id: String,
    issuer: String,
    subject: String,
    jwks: Value,
}

async fn create_federated(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    let r = match parse::<FederatedReq>(&body) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let jwks = match &r.jwks {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match sim.register_federated_credential(&r.client_id, &r.issuer, &r.subject, &jwks) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => bad(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn list_faults(State(sim): State<Simulator>) -> Response {
    Json(sim.faults()).into_response()
}

async fn add_fault(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    match parse::<Fault>(&body) {
        Ok(f) => {
            sim.inject(f);
            StatusCode::CREATED.into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

async fn clear_faults(State(sim): State<Simulator>) -> Response {
    sim.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn counters(State(sim): State<Simulator>) -> Response {
    Json(sim.counters()).into_response()
}

async fn reset_counters(State(sim): State<Simulator>) -> Response {
    sim.reset_counters();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_timing(State(sim): State<Simulator>) -> Response {
    Json(sim.timing()).into_response()
}

async fn put_timing(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    match parse::<Timing>(&body) {
        Ok(t) => {
            sim.set_timing(t);
            Json(t).into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}
