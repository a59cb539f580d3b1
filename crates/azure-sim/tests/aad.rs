//! Azure AD face: client credentials with secrets, certificate assertions and federated assertions.

mod common;

use aadpodid_azure_sim::jwt::{Decoded, SigningKey};
use common::*;
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn post(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http.post(url).form(form).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn client_secret_works_on_v1_and_v2_with_their_response_shapes() {
    let sim = start().await;
    sim.register_service_principal_secret("app-1", "s3cret");
    let http = client();
    let v1 = format!("{}/{}/oauth2/token", sim.aad_url(), sim.tenant_id());
    let v2 = format!("{}/{}/oauth2/v2.0/token", sim.aad_url(), sim.tenant_id());
    let (s, v) = post(
        &http,
        &v1,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "s3cret"),
            ("resource", "https://vault.azure.net"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for k in ["expires_in", "expires_on", "not_before", "ext_expires_in", "resource", "token_type", "access_token"] {
        assert!(v[k].is_string(), "v1 {k} is a string: {v}");
    }
    let d = Decoded::parse(v["access_token"].as_str().unwrap()).unwrap();
    d.verify_with_jwks(&sim.jwks()).unwrap();
    assert_eq!(d.claim_str("aud"), Some("https://vault.azure.net"));
    assert_eq!(d.claim_str("appid"), Some("app-1"));
    assert!(d.claim_str("oid").is_some() && d.claim_time("nbf").is_some() && d.claim_time("iat").is_some());

    let (s, v) = post(
        &http,
        &v2,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "s3cret"),
            ("scope", "https://vault.azure.net/.default"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["expires_in"].is_u64() && v["ext_expires_in"].is_u64(), "v2 numbers: {v}");
    assert_eq!(
        Decoded::parse(v["access_token"].as_str().unwrap()).unwrap().claim_str("aud"),
        Some("https://vault.azure.net")
    );
}

/// (URL, form, status, `error`, AADSTS code).
type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str, u64);

#[tokio::test]
async fn wrong_secret_unknown_client_and_unknown_tenant_get_aad_errors() {
    let sim = start().await;
    sim.register_service_principal_secret("app-1", "s3cret");
    let http = client();
    let v1 = format!("{}/{}/oauth2/token", sim.aad_url(), sim.tenant_id());
    let cases: Vec<Case<'_>> = vec![
        (
            v1.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "app-1"),
                ("client_secret", "nope"),
                ("resource", "r"),
            ],
            401,
            "invalid_client",
            7000215,
        ),
        (
            v1.clone(),
            vec![("grant_type", "client_credentials"), ("client_id", "who"), ("client_secret", "x"), ("resource", "r")],
            400,
            "unauthorized_client",
            700016,
        ),
        (v1.clone(), vec![("client_id", "app-1")], 400, "invalid_request", 900144),
        (
            format!("{}/not-my-tenant/oauth2/token", sim.aad_url()),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "app-1"),
                ("client_secret", "s3cret"),
                ("resource", "r"),
            ],
            400,
            "invalid_request",
            90002,
        ),
    ];
    for (url, form, status, error, code) in cases {
        let (s, v) = post(&http, &url, &form).await;
        assert_eq!((s, v["error"].as_str()), (status, Some(error)), "{v}");
        assert_eq!(v["error_codes"], json!([code]));
        assert!(v["error_description"].as_str().unwrap().starts_with(&format!("AADSTS{code}:")));
        for k in ["timestamp", "trace_id", "correlation_id"] {
            assert!(v[k].is_string(), "{k}");
        }
    }
}

fn assertion(key: &SigningKey, iss: &str, sub: &str, aud: &str) -> String {
    let t = now();
    key.sign(&json!({"iss": iss, "sub": sub, "aud": aud, "exp": t + 600, "nbf": t - 10, "iat": t - 10, "jti": "j"}))
        .unwrap()
}

#[tokio::test]
async fn certificate_assertions_are_verified_against_the_registered_certificate() {
    let sim = start().await;
    let cert_key = SigningKey::generate().unwrap();
    sim.register_service_principal_certificate("app-c", cert_key.certificate_der()).unwrap();
    let http = client();
    let endpoint = format!("{}/{}/oauth2/v2.0/token", sim.aad_url(), sim.tenant_id());
    let good = assertion(&cert_key, "app-c", "app-c", &endpoint);
    let form = |a: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", "app-c".to_owned()),
            ("scope", "https://management.azure.com/.default".to_owned()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned()),
            ("client_assertion", a.to_owned()),
        ]
    };
    let r = http.post(&endpoint).form(&form(&good)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let arm_token = v["access_token"].as_str().unwrap();
    let vm = vm_url(&sim, "none", "2019-12-01");
    assert_eq!(http.get(vm).bearer_auth(arm_token).send().await.unwrap().status(), 404, "the token is accepted by ARM");

    // Same x5t, signature from another key.
    let other = SigningKey::generate().unwrap();
    let forged = assertion(&other, "app-c", "app-c", &endpoint);
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_sig = forged.rsplit('.').next().unwrap();
    parts[2] = forged_sig;
    let bad = parts.join(".");
    let r = http.post(&endpoint).form(&form(&bad)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["error"].as_str(), v["error_codes"][0].as_u64()), (Some("invalid_client"), Some(700027)));
    // An unregistered certificate.
    let r = http.post(&endpoint).form(&form(&forged)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Garbage.
    let r = http.post(&endpoint).form(&form("garbage")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Wrong audience.
    let r = http
        .post(&endpoint)
        .form(&form(&assertion(&cert_key, "app-c", "app-c", "https://elsewhere/token")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn federated_assertions_are_matched_by_issuer_and_subject_and_verified_with_the_jwks() {
    let sim = start().await;
    let id = sim.create_user_assigned_identity("id-rg", "workload");
    let issuer_key = SigningKey::generate().unwrap();
    let issuer = "https://oidc.cluster.local";
    let jwks = json!({"keys": [issuer_key.jwk(issuer)]}).to_string();
    sim.register_federated_credential(&id.client_id, issuer, "system:serviceaccount:ns:sa", &jwks).unwrap();
    let http = client();
    let endpoint = format!("{}/{}/oauth2/v2.0/token", sim.aad_url(), sim.tenant_id());
    let send = |a: String| {
        let http = http.clone();
        let endpoint = endpoint.clone();
        let client_id = id.client_id.clone();
        async move {
            let r = http
                .post(&endpoint)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", "https://vault.azure.net/.default"),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_assertion", a.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) =
        send(assertion(&issuer_key, issuer, "system:serviceaccount:ns:sa", "api://AzureADTokenExchange")).await;
    assert_eq!(s, 200, "{v}");
    let d = Decoded::parse(v["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(d.claim_str("oid"), Some(id.principal_id.as_str()));
    let (s, v) =
        send(assertion(&issuer_key, issuer, "system:serviceaccount:ns:other", "api://AzureADTokenExchange")).await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (400, Some(70021)));
    let imposter = SigningKey::generate().unwrap();
    let (s, v) = send(assertion(&imposter, issuer, "system:serviceaccount:ns:sa", "api://AzureADTokenExchange")).await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));
}

#[tokio::test]
async fn discovery_documents_point_at_this_authority() {
    let sim = start().await;
    let http = client();
    let v: Value = http
        .get(format!("{}/{}/v2.0/.well-known/openid-configuration", sim.aad_url(), sim.tenant_id()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["token_endpoint"], format!("{}/{}/oauth2/v2.0/token", sim.aad_url(), sim.tenant_id()));
    let keys: Value = http.get(v["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys, sim.jwks());
}
