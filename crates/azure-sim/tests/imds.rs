//! IMDS face: Azure's checks, error texts and token fields, per node.

mod common;

use aadpodid_azure_sim::NodeRef;
use aadpodid_azure_sim::jwt::Decoded;
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn tokens_carry_imds_fields_as_strings_and_the_identity_in_their_claims() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let id = sim.create_user_assigned_identity("id-rg", "reader");
    attach(&sim, &vm_url(&sim, "vm1", "2024-11-01"), &[&id.id]).await;
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let http = client();
    let (status, v) = imds_token(
        &http,
        &imds.url(),
        &format!("api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&msi_res_id={}", id.id),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for k in [
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(v[k].is_string(), "{k} must be a string in {v}");
    }
    assert_eq!(v["resource"], "https://vault.azure.net");
    let d = Decoded::parse(v["access_token"].as_str().unwrap()).unwrap();
    d.verify_with_jwks(&sim.jwks()).unwrap();
    assert_eq!(d.claim_str("aud"), Some("https://vault.azure.net"));
    assert_eq!(d.claim_str("oid"), Some(id.principal_id.as_str()));
    assert_eq!(d.claim_str("appid"), Some(id.client_id.as_str()));
    assert_eq!(d.claim_str("tid"), Some(sim.tenant_id()));
    assert_eq!(d.claim_str("xms_mirid"), Some(id.id.as_str()));
    assert_eq!(d.claim_str("iss"), Some(format!("https://sts.windows.net/{}/", sim.tenant_id()).as_str()));
    assert_eq!(d.claim_time("exp").unwrap().to_string(), v["expires_on"].as_str().unwrap());
    // object_id and mi_res_id select too.
    for q in [format!("object_id={}", id.principal_id), format!("mi_res_id={}", id.id.to_uppercase())] {
        let (status, v) = imds_token(&http, &imds.url(), &format!("api-version=2018-02-01&resource=r&{q}")).await;
        assert_eq!((status, v["client_id"].as_str()), (200, Some(id.client_id.as_str())), "{q}");
    }
}

#[tokio::test]
async fn bad_requests_get_imds_status_codes_and_texts() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let a = sim.create_user_assigned_identity("id-rg", "a");
    let b = sim.create_user_assigned_identity("id-rg", "b");
    attach(&sim, &vm_url(&sim, "vm1", "2024-11-01"), &[&a.id, &b.id]).await;
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let http = client();
    let url = format!("{}/metadata/identity/oauth2/token", imds.url());

    let r = http.get(format!("{url}?api-version=2018-02-01&resource=r")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}));

    let r = http
        .get(format!("{url}?api-version=2018-02-01&resource=r"))
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let (status, v) = imds_token(&http, &imds.url(), "resource=r").await;
    assert_eq!(status, 400);
    assert!(v["newest-versions"].is_array(), "{v}");
    let (status, _) = imds_token(&http, &imds.url(), "api-version=1999-09-09&resource=r").await;
    assert_eq!(status, 400);

    let (status, v) = imds_token(&http, &imds.url(), "api-version=2018-02-01&resource=r").await;
    assert_eq!(status, 400);
    assert!(v["error_description"].as_str().unwrap().starts_with("Multiple user assigned identities exist"), "{v}");

    let (status, v) = imds_token(
        &http,
        &imds.url(),
        "api-version=2018-02-01&resource=r&client_id=00000000-0000-0000-0000-000000000000",
    )
    .await;
    assert_eq!((status, v["error_description"].as_str()), (400, Some("Identity not found")));

    let r = http.get(format!("{}/metadata/nothing", imds.url())).header("Metadata", "true").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn each_node_sees_only_its_own_vm_or_scale_set() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    sim.create_vm(RG, "vm2");
    let id = sim.create_user_assigned_identity("id-rg", "reader");
    attach(&sim, &vm_url(&sim, "vm1", "2024-11-01"), &[&id.id]).await;
    let on = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let off = sim.serve_imds(loopback(), NodeRef::vm("vm2")).unwrap();
    let http = client();
    let q = format!("api-version=2019-08-01&resource=r&client_id={}", id.client_id);
    assert_eq!(imds_token(&http, &on.url(), &q).await.0, 200);
    assert_eq!(imds_token(&http, &off.url(), &q).await.0, 400);
    off.stop();

    let meta: Value = http
        .get(format!("{}/metadata/instance?api-version=2021-02-01", on.url()))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["compute"]["name"], "vm1");
    assert_eq!(meta["compute"]["resourceGroupName"], RG);
    assert_eq!(meta["compute"]["subscriptionId"], sim.subscription_id());
    assert_eq!(meta["compute"]["vmScaleSetName"], "");
}

#[tokio::test]
async fn a_deleted_identity_is_not_found_even_while_still_attached() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let id = sim.create_user_assigned_identity("id-rg", "reader");
    attach(&sim, &vm_url(&sim, "vm1", "2024-11-01"), &[&id.id]).await;
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let http = client();
    let url = format!(
        "{}/subscriptions/{}/resourceGroups/id-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reader?api-version=2023-01-31",
        sim.arm_url(),
        sim.subscription_id()
    );
    assert_eq!(http.delete(&url).bearer_auth(sim.arm_token().unwrap()).send().await.unwrap().status(), 200);
    let (status, v) =
        imds_token(&http, &imds.url(), &format!("api-version=2018-02-01&resource=r&client_id={}", id.client_id)).await;
    assert_eq!((status, v["error_description"].as_str()), (400, Some("Identity not found")));
}

#[tokio::test]
async fn a_headerless_probe_is_answered_at_once_and_never_says_identity_not_found() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let http = client();
    let started = std::time::Instant::now();
    let r = http.get(format!("{}/metadata/identity/oauth2/token", imds.url())).send().await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains("Identity not found"), "{text}");
    let r = http
        .post(format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r", imds.url()))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = http.get(format!("{}/metadata/instance", imds.url())).header("Metadata", "true").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["newest-versions"].is_array());
}

#[tokio::test]
async fn escaped_and_other_case_spellings_of_the_token_path_reach_the_token_endpoint() {
    let sim = start().await;
    sim.create_vm(RG, "vm1");
    let id = sim.create_user_assigned_identity("id-rg", "reader");
    attach(&sim, &vm_url(&sim, "vm1", "2024-11-01"), &[&id.id]).await;
    let imds = sim.serve_imds(loopback(), NodeRef::vm("vm1")).unwrap();
    let http = client();
    for path in
        ["/metadata/identity/oauth2/%74oken", "/METADATA/Identity/oauth2%2Ftoken/", "/metadata./identity/oauth2/token"]
    {
        let r = http
            .get(format!("{}{path}?api-version=2018-02-01&resource=r&client_id={}", imds.url(), id.client_id))
            .header("Metadata", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.json::<Value>().await.unwrap()["access_token"].is_string(), "{path}");
    }
    let r = http.get(format!("{}/metadata/%zz", imds.url())).header("Metadata", "true").send().await.unwrap();
    assert_eq!(r.status(), 400, "a malformed escape");
}
