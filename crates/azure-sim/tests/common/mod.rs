//! Shared helpers for the simulator's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use aadpodid_azure_sim::{RunningSim, SimConfig, Simulator};
use serde_json::Value;

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
