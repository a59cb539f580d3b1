//! Shared helpers for the simulator's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use aadpodid_azure_sim::{RunningSim, SimConfig, Simulator};
use serde_json::{Value, json};

pub const RG: &str = "node-rg";

pub async fn start() -> RunningSim {
    Simulator::start(SimConfig::default()).await.expect("simulator starts")
}

pub async fn start_with(cfg: SimConfig) -> RunningSim {
    Simulator::start(cfg).await.expect("simulator starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

pub fn vmss_url(sim: &RunningSim, name: &str, api: &str) -> String {
    format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}?api-version={api}",
        sim.arm_url(),
        sim.subscription_id()
    )
}

pub fn vm_url(sim: &RunningSim, name: &str, api: &str) -> String {
    format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}?api-version={api}",
        sim.arm_url(),
        sim.subscription_id()
    )
}

/// Attaches user-assigned identities to the VM or scale set at `url` (an ARM resource URL with its
/// api-version) with one PATCH, as MIC does, and checks ARM accepted it. With the default zero LRO
/// duration the node's IMDS knows them as soon as this returns.
pub async fn attach(sim: &RunningSim, url: &str, ids: &[&str]) {
    let map: serde_json::Map<String, Value> = ids.iter().map(|i| ((*i).to_owned(), json!({}))).collect();
    let r = client()
        .patch(url)
        .bearer_auth(sim.arm_token().unwrap())
        .json(&json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": map}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// An access token for `resource` from the simulator's Azure AD, for a service principal registered
/// with a client secret: what a client with its own credentials (rather than the built-in
/// [`Simulator::arm_token`]) presents to ARM.
pub async fn secret_token(
    sim: &RunningSim,
    http: &reqwest::Client,
    client_id: &str,
    secret: &str,
    resource: &str,
) -> String {
    let aad = format!("{}/{}/oauth2/token", sim.aad_url(), sim.tenant_id());
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("resource", resource),
    ];
    let v: Value = http.post(&aad).form(&form).send().await.unwrap().json().await.unwrap();
    v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_owned()
}

/// Polls an Azure-AsyncOperation URL until it leaves InProgress; returns the final body and the poll count.
pub async fn poll(http: &reqwest::Client, url: &str, token: &str) -> (Value, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut polls = 0;
    loop {
        polls += 1;
        let v: Value = http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        if v["status"] != "InProgress" {
            return (v, polls);
        }
        assert!(Instant::now() < deadline, "operation never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs an IMDS token; returns (status, body).
pub async fn imds_token(http: &reqwest::Client, base: &str, query: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}/metadata/identity/oauth2/token?{query}"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub fn loopback() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}
