//! ARM face: identity PATCH/PUT flows, long-running operations, IMDS following ARM, errors and auth.

mod common;

use std::time::Duration;

use aadpodid_azure_sim::{NodeRef, SimConfig};
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn attaching_two_identities_with_one_patch_then_detaching_one_is_what_imds_serves() {
    let sim = start_with(SimConfig { lro_duration: Duration::from_millis(400), ..SimConfig::default() }).await;
    sim.create_vmss(RG, "pool", 2);
    let a = sim.create_user_assigned_identity("id-rg", "alpha");
    let b = sim.create_user_assigned_identity("id-rg", "beta");
    let imds = sim.serve_imds(loopback(), NodeRef::vmss_instance("pool", 1)).unwrap();
    let http = client();
    let token = sim.arm_token().unwrap();
    let url = vmss_url(&sim, "pool", "2019-12-01");

    let r = http
        .patch(&url)
        .bearer_auth(&token)
        .json(&json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}, b.id.clone(): {}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let op = r.headers()["azure-asyncoperation"].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["properties"]["provisioningState"], "Updating");
    assert_eq!(body["identity"]["userAssignedIdentities"][&a.id]["clientId"], a.client_id.as_str());
    // Not applied yet: IMDS does not know the identity while the operation runs.
    let (status, err) = imds_token(
        &http,
        &imds.url(),
        &format!("api-version=2018-02-01&resource=https://vault.azure.net&client_id={}", a.client_id),
    )
    .await;
    assert_eq!((status, err["error_description"].as_str()), (400, Some("Identity not found")));

    let (done, polls) = poll(&http, &op, &token).await;
    assert_eq!(done["status"], "Succeeded");
    assert!(polls >= 2, "the client had to poll at least once while InProgress");
    for id in [&a, &b] {
        let (status, tok) = imds_token(
            &http,
            &imds.url(),
            &format!("api-version=2018-02-01&resource=https://vault.azure.net&client_id={}", id.client_id),
        )
        .await;
        assert_eq!(status, 200, "{tok}");
        assert_eq!(tok["client_id"], id.client_id.as_str());
    }

    // Detach alpha (with different casing, as ARM compares IDs case-insensitively).
    let r = http
        .patch(&url)
        .bearer_auth(&token)
        .json(&json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.to_uppercase(): null}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let op = r.headers()["azure-asyncoperation"].to_str().unwrap().to_owned();
    assert_eq!(poll(&http, &op, &token).await.0["status"], "Succeeded");
    let (status, _) =
        imds_token(&http, &imds.url(), &format!("api-version=2018-02-01&resource=r&client_id={}", a.client_id)).await;
    assert_eq!(status, 400);
    let (status, tok) = imds_token(&http, &imds.url(), "api-version=2018-02-01&resource=https://vault.azure.net").await;
    assert_eq!(status, 200, "the only identity left is the default: {tok}");
    assert_eq!(tok["client_id"], b.client_id.as_str());

    let got: Value = http.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["properties"]["provisioningState"], "Succeeded");
    assert_eq!(got["identity"]["userAssignedIdentities"].as_object().unwrap().len(), 1);
    assert_eq!(sim.arm_writes("vmss", "pool"), 2);
    assert_eq!(sim.vmss_identities(RG, "pool").unwrap().user_ids(), vec![b.id.clone()]);
}

#[tokio::test]
async fn removing_all_user_identities_with_type_none_and_system_assigned_round_trips() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let a = sim.create_user_assigned_identity("id-rg", "alpha");
    let http = client();
    let token = sim.arm_token().unwrap();
    let url = vm_url(&sim, "vm1", "2024-07-01");
    let body: Value = http
        .patch(&url)
        .bearer_auth(&token)
        .json(&json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {a.id.clone(): {}}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["identity"]["type"], "SystemAssigned, UserAssigned");
    assert_eq!(body["identity"]["tenantId"], sim.tenant_id());
    let principal = body["identity"]["principalId"].as_str().unwrap().to_owned();
    let body: Value = http
        .patch(&url)
        .bearer_auth(&token)
        .json(&json!({"identity": {"type": "SystemAssigned"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["identity"]["type"], "SystemAssigned");
    assert_eq!(body["identity"]["principalId"], principal.as_str(), "the system identity survives");
    let body: Value = http
        .patch(&url)
        .bearer_auth(&token)
        .json(&json!({"identity": {"type": "None"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("identity").is_none());
}

#[tokio::test]
async fn unknown_identities_fail_with_ids_the_original_mic_can_extract() {
    let sim = start().await;
    sim.create_vmss(RG, "pool", 1);
    let good = sim.create_user_assigned_identity("id-rg", "good");
    let http = client();
    let token = sim.arm_token().unwrap();
    let bad1 = format!(
        "/subscriptions/{}/resourcegroups/id-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ghost1",
        sim.subscription_id()
    );
    let bad2 = format!(
        "/subscriptions/{}/resourcegroups/id-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ghost2",
        sim.subscription_id()
    );
    let r = http
        .patch(vmss_url(&sim, "pool", "2019-12-01"))
        .bearer_auth(&token)
        .json(&json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {good.id.clone(): {}, bad1.clone(): {}, bad2.clone(): {}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "FailedIdentityOperation");
    let message = body["error"]["message"].as_str().unwrap();
    // The original MIC takes the single-quoted, comma-separated resource IDs out of the message.
    let re = regex::Regex::new(
        r"(?i)'(/subscriptions/[^']+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^']+)'",
    )
    .unwrap();
    let mut extracted: Vec<String> =
        re.captures_iter(message).flat_map(|c| c[1].split(',').map(str::to_owned).collect::<Vec<_>>()).collect();
    extracted.sort();
    assert_eq!(extracted, vec![bad1, bad2]);
    assert!(sim.vmss_identities(RG, "pool").unwrap().user.is_empty(), "a failed write changes nothing");
}

#[tokio::test]
async fn bad_input_gets_arm_error_shapes_never_a_crash() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let http = client();
    let token = sim.arm_token().unwrap();
    let base = format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/vm1",
        sim.arm_url(),
        sim.subscription_id()
    );
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.get(&base), 400, "MissingApiVersionParameter"),
        (http.get(format!("{base}?api-version=2099-01-01")), 400, "InvalidApiVersionParameter"),
        (http.get(vm_url(&sim, "nope", "2019-12-01")), 404, "ResourceNotFound"),
        (http.patch(vm_url(&sim, "nope", "2019-12-01")).body("{}"), 404, "ResourceNotFound"),
        (http.patch(format!("{base}?api-version=2019-12-01")).body("{not json"), 400, "InvalidRequestContent"),
        (http.patch(format!("{base}?api-version=2019-12-01")).body("[1,2]"), 400, "InvalidRequestContent"),
        (
            http.patch(format!("{base}?api-version=2019-12-01")).body(r#"{"identity":{"type":"UserAssigned","userAssignedIdentities":{"bogus":{}}}}"#),
            400,
            "LinkedInvalidPropertyId",
        ),
        (
            http.get(format!("{}/subscriptions/00000000-0000-0000-0000-000000000000?api-version=2020-01-01", sim.arm_url())),
            404,
            "SubscriptionNotFound",
        ),
        (
            http.get(format!(
                "{}/subscriptions/{}/resourceGroups/x/providers/Microsoft.ManagedIdentity/userAssignedIdentities/none?api-version=2023-01-31",
                sim.arm_url(),
                sim.subscription_id()
            )),
            404,
            "ResourceNotFound",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.bearer_auth(&token).header("content-type", "application/json").send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn arm_requires_a_bearer_token_for_the_management_audience() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    sim.register_service_principal_secret("app-1", "s3cret");
    let http = client();
    let url = vm_url(&sim, "vm1", "2019-12-01");
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "AuthenticationFailed");
    let r = http.get(&url).bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "InvalidAuthenticationToken");

    let vault = secret_token(&sim, &http, "app-1", "s3cret", "https://vault.azure.net").await;
    let r = http.get(&url).bearer_auth(vault).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "InvalidAuthenticationTokenAudience");
    for resource in ["https://management.azure.com/", "https://management.azure.com"] {
        let arm = secret_token(&sim, &http, "app-1", "s3cret", resource).await;
        assert_eq!(http.get(&url).bearer_auth(arm).send().await.unwrap().status(), 200, "{resource}");
    }
}

#[tokio::test]
async fn arm_accepts_its_own_url_under_its_extra_certificate_names_as_audience() {
    // MIC asks for a token for `resourceManagerEndpoint`; clients that reach ARM by another
    // name of its certificate (the sandbox's nodes: a cloud IP) ask for that URL.
    for (names, want) in [(vec!["203.0.113.10".to_owned()], 200), (Vec::new(), 401)] {
        let sim = start_with(SimConfig { tls_names: names.clone(), ..SimConfig::default() }).await;
        sim.create_vm(RG, "vm1");
        sim.register_service_principal_secret("app-1", "s3cret");
        let http = client();
        let port = sim.arm_https_url().rsplit_once(':').map(|(_, p)| p.trim_end_matches('/').to_owned()).unwrap();
        let token = secret_token(&sim, &http, "app-1", "s3cret", &format!("https://203.0.113.10:{port}/")).await;
        let r = http.get(vm_url(&sim, "vm1", "2019-12-01")).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), want, "tls_names {names:?}");
    }
}

#[tokio::test]
async fn user_assigned_identities_are_created_like_az_identity_create() {
    let sim = start().await;
    let http = client();
    let token = sim.arm_token().unwrap();
    let url = format!(
        "{}/subscriptions/{}/resourceGroups/id-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reader?api-version=2023-01-31",
        sim.arm_url(),
        sim.subscription_id()
    );
    let r = http.put(&url).bearer_auth(&token).json(&json!({"location": "westus2"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["properties"]["tenantId"], sim.tenant_id());
    let again: Value = http.put(&url).bearer_auth(&token).json(&json!({})).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["properties"]["clientId"], created["properties"]["clientId"], "PUT is idempotent");
    let got: Value = http.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["id"], created["id"]);
    let info = sim.identity("id-rg", "reader").unwrap();
    assert_eq!(info.client_id, got["properties"]["clientId"].as_str().unwrap());

    let subs: Value = http
        .get(format!("{}/subscriptions?api-version=2022-12-01", sim.arm_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(subs["value"][0]["subscriptionId"], sim.subscription_id());
    assert_eq!(subs["value"][0]["tenantId"], sim.tenant_id());
}

#[tokio::test]
async fn https_listeners_serve_with_the_run_ca() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(sim.ca_cert_pem_path()).unwrap()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let url = format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/vm1?api-version=2023-09-01",
        sim.arm_https_url(),
        sim.subscription_id()
    );
    let r = http.get(&url).bearer_auth(sim.arm_token().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let keys: Value =
        http.get(format!("{}/common/discovery/keys", sim.aad_https_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys["keys"][0]["kty"], "RSA");
    let untrusting = reqwest::Client::new();
    assert!(untrusting.get(&url).send().await.is_err(), "the certificate is not publicly trusted");
    let env = sim.write_azure_stack_environment(true).unwrap();
    let doc: Value = serde_json::from_slice(&std::fs::read(env).unwrap()).unwrap();
    assert_eq!(doc["resourceManagerEndpoint"], format!("{}/", sim.arm_https_url()));
}

#[tokio::test]
async fn a_failed_operation_is_reported_by_polling_and_changes_nothing() {
    use aadpodid_azure_sim::{Face, Fault, FaultKind};
    let sim = start_with(SimConfig { lro_duration: Duration::from_millis(200), ..SimConfig::default() }).await;
    sim.create_vmss(RG, "pool", 1);
    let a = sim.create_user_assigned_identity("id-rg", "alpha");
    sim.inject(
        Fault::new(
            Face::Arm,
            FaultKind::FailOperation { code: "InternalExecutionError".into(), message: "boom".into() },
        )
        .operation("vmss_update")
        .times(1),
    );
    let http = client();
    let token = sim.arm_token().unwrap();
    let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}}}});
    let r = http.patch(vmss_url(&sim, "pool", "2019-12-01")).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "the write itself is accepted");
    let op = r.headers()["azure-asyncoperation"].to_str().unwrap().to_owned();
    let (done, _) = poll(&http, &op, &token).await;
    assert_eq!(done["status"], "Failed");
    assert_eq!(done["error"]["code"], "InternalExecutionError");
    assert!(sim.vmss_identities(RG, "pool").unwrap().user.is_empty());
}

#[tokio::test]
async fn provisioning_state_can_be_forced_and_deleted_vms_disappear() {
    use aadpodid_azure_sim::ComputeKind;
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let http = client();
    let token = sim.arm_token().unwrap();
    assert!(sim.set_provisioning_state(ComputeKind::Vm, RG, "vm1", Some("Deleting")));
    let v: Value =
        http.get(vm_url(&sim, "vm1", "2019-12-01")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["properties"]["provisioningState"], "Deleting");
    assert!(sim.delete_vm(RG, "vm1"));
    assert_eq!(http.get(vm_url(&sim, "vm1", "2019-12-01")).bearer_auth(&token).send().await.unwrap().status(), 404);
    let (status, _) = imds_token(&http, &imds.url(), "api-version=2018-02-01&resource=r").await;
    assert_eq!(status, 404);
}
