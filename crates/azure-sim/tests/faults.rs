//! Fault injection reaches clients with the right status codes and headers; counters count.

mod common;

use std::time::{Duration, Instant};

use aadpodid_azure_sim::{Face, Fault, FaultKind, NodeRef};
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn an_injected_429_reaches_the_client_with_retry_after_then_calls_succeed() {
    let sim = start().await;
    sim.create_vmss(RG, "pool", 1);
    sim.inject(Fault::new(Face::Arm, FaultKind::throttle(Duration::from_secs(7))).operation("vmss_update").times(1));
    let http = client();
    let token = sim.arm_token().unwrap();
    let url = vmss_url(&sim, "pool", "2019-12-01");
    let get = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status(), 200, "other operations are not affected");
    let r = http.patch(&url).bearer_auth(&token).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyRequests");
    let r = http.patch(&url).bearer_auth(&token).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200, "the fault was for one call");
    let c = sim.counters();
    assert_eq!(c.calls(Face::Arm, "vmss_update"), 2, "faulted calls are counted as calls");
    assert_eq!(c.arm_writes("vmss", "pool"), 1, "only the call that got through is a write");
    assert_eq!(c.arm_reads("vmss", "pool"), 1);
}

#[tokio::test]
async fn injected_5xx_reach_each_face_in_its_own_error_shape() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    sim.register_service_principal_secret("app", "pw");
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    sim.inject(Fault::new(Face::Arm, FaultKind::status(503)).times(1));
    sim.inject(Fault::new(Face::Aad, FaultKind::status(500)).operation("token").times(1));
    sim.inject(Fault::new(Face::Imds, FaultKind::throttle(Duration::from_secs(2))).target("vm1").times(1));
    let http = client();
    let r = http.get(vm_url(&sim, "vm1", "2019-12-01")).bearer_auth(sim.arm_token().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "ServiceUnavailable");
    let r = http
        .post(format!("{}/{}/oauth2/token", sim.aad_url(), sim.tenant_id()))
        .form(&[("grant_type", "client_credentials"), ("client_id", "app"), ("client_secret", "pw"), ("resource", "r")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(body["error_codes"].as_array().is_some_and(|c| !c.is_empty()), "{body}");
    let r = http
        .get(format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r", imds.url()))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert!(sim.faults().is_empty(), "every counted fault was used up");
}

#[tokio::test]
async fn a_face_that_is_down_closes_connections_without_answering() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    sim.inject(Fault::new(Face::Arm, FaultKind::Down).operation("vm_get").times(2));
    let http = client();
    let url = vm_url(&sim, "vm1", "2019-12-01");
    let token = sim.arm_token().unwrap();
    for _ in 0..2 {
        let err = http.get(&url).bearer_auth(&token).send().await.expect_err("no answer while down");
        assert!(!err.is_status());
    }
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), 200, "back up after two calls");
}

#[tokio::test]
async fn latency_faults_and_configured_arm_latency_delay_answers() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let http = client();
    let url = vm_url(&sim, "vm1", "2019-12-01");
    let token = sim.arm_token().unwrap();
    sim.inject(Fault::new(Face::Arm, FaultKind::latency(Duration::from_millis(300))).times(1));
    let t = Instant::now();
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    sim.set_arm_latency(Duration::from_millis(250));
    let t = Instant::now();
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn the_admin_api_seeds_injects_and_counts() {
    let sim = start().await;
    let http = client();
    let admin = format!("{}/admin", sim.arm_url());
    let seed = "vmss:\n  - { resourceGroup: node-rg, name: pool, instances: 3, userAssignedIdentities: [mic] }\nidentities:\n  - { resourceGroup: id-rg, name: mic, clientId: 11111111-1111-1111-1111-111111111111 }\n";
    let r = http.post(format!("{admin}/seed")).body(seed).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let ids = sim.vmss_identities(RG, "pool").unwrap();
    assert_eq!(ids.user.values().next().unwrap().client_id, "11111111-1111-1111-1111-111111111111");

    let r = http
        .post(format!("{admin}/identities"))
        .json(&json!({"resourceGroup": "id-rg", "name": "reader"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    for k in ["clientId", "principalId", "tenantId", "id", "name", "resourceGroup", "location", "type"] {
        assert!(created.get(k).is_some(), "{k} missing from {created}");
    }

    let fault = json!({"face": "arm", "operation": "vmss_get", "kind": {"type": "status", "code": 500}, "count": 1});
    assert_eq!(http.post(format!("{admin}/faults")).json(&fault).send().await.unwrap().status(), 201);
    let token = sim.arm_token().unwrap();
    assert_eq!(http.get(vmss_url(&sim, "pool", "2019-12-01")).bearer_auth(&token).send().await.unwrap().status(), 500);
    let counters: Value = http.get(format!("{admin}/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counters["calls"]["arm/vmss_get"], 1);
    assert_eq!(http.delete(format!("{admin}/counters")).send().await.unwrap().status(), 204);
    assert_eq!(sim.counters().face_total(Face::Arm), 0);
    let bad = http.post(format!("{admin}/faults")).body("{nope").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let timing =
        http.put(format!("{admin}/timing")).json(&json!({"armLatency": 0, "lroDuration": 1500})).send().await.unwrap();
    assert_eq!(timing.status(), 200);
    assert_eq!(sim.timing().lro_duration, Duration::from_millis(1500));
}
