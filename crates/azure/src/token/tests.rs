use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use sha1::{Digest, Sha1};

use super::*;

fn mk_token() -> Token {
    Token {
        access_token: "eyJ.secret.sig".into(),
        refresh_token: String::new(),
        expires_in: "3599".into(),
        expires_on: "1700003599".into(),
        not_before: "1700000000".into(),
        resource: "https://vault.azure.net".into(),
        token_type: "Bearer".into(),
        client_id: None,
    }
}

/// An RSA key and self-signed certificate as (cert DER, PKCS#8 key DER).
pub(crate) fn mk_rsa_cert() -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sp.example".to_owned()]).unwrap().self_signed(&key).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

pub(crate) fn mk_pfx(cert_der: &[u8], key_der: &[u8], password: &str) -> Vec<u8> {
    let chain = p12_keystore::PrivateKeyChain::new(
        b"key-1".as_slice(),
        p12_keystore::PrivateKey::from_der(key_der).unwrap(),
        [p12_keystore::Certificate::from_der(cert_der).unwrap()],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("sp", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    store.writer(password).write().unwrap()
}

#[test]
fn token_serialises_every_field_as_a_string_in_imds_order_without_unknown_client_id() {
    let json = serde_json::to_string(&mk_token()).unwrap();
    assert_eq!(
        json,
        r#"{"access_token":"eyJ.secret.sig","refresh_token":"","expires_in":"3599","expires_on":"1700003599","not_before":"1700000000","resource":"https://vault.azure.net","token_type":"Bearer"}"#
    );
}

#[test]
fn token_serialises_client_id_when_known() {
    let token = Token { client_id: Some("cid".into()), ..mk_token() };
    let value: serde_json::Value = serde_json::to_value(&token).unwrap();
    assert_eq!(value["client_id"], "cid");
}

#[test]
fn token_reads_numbers_nulls_and_missing_fields_leniently_and_ignores_unknown_fields() {
    let token: Token = serde_json::from_str(
        r#"{"access_token":"a","expires_in":3599,"expires_on":1700003599,"not_before":null,"token_type":"Bearer","client_id":"c","ext_expires_in":"1"}"#,
    )
    .unwrap();
    assert_eq!(token.expires_in, "3599");
    assert_eq!(token.expires_on, "1700003599");
    assert_eq!(token.not_before, "");
    assert_eq!(token.refresh_token, "");
    assert_eq!(token.client_id.as_deref(), Some("c"));
}

#[test]
fn token_debug_never_shows_the_access_token() {
    let shown = format!("{:?}", Token { refresh_token: "refresh-secret".into(), ..mk_token() });
    assert!(!shown.contains("eyJ.secret.sig"), "{shown}");
    assert!(!shown.contains("refresh-secret"), "{shown}");
    assert!(shown.contains("<redacted>"));
    assert!(shown.contains("1700003599"));
}

#[test]
fn expires_on_reads_the_formats_adal_reads() {
    let at = |s: &str| Token { expires_on: s.into(), ..Token::default() }.expires_on_unix();
    assert_eq!(at("1700003599"), Some(1_700_003_599));
    assert_eq!(at(" 1700003599.25 "), Some(1_700_003_599));
    assert_eq!(at("11/14/2023 22:13:19 +00:00"), Some(1_700_000_000 - 1));
    assert_eq!(at("11/14/2023 10:13:19 PM +00:00"), Some(1_700_000_000 - 1));
    assert_eq!(at("1/2/2006 12:04:05 AM +00:00"), Some(1_136_160_245));
    assert_eq!(at("2023-11-14T22:13:19Z"), Some(1_700_000_000 - 1));
    assert_eq!(at(""), None);
    assert_eq!(at("tomorrow"), None);
    assert_eq!(at("11/14/2023 22:13:19 +02:00"), None);
    assert_eq!(at("13/40/2023 22:13:19 +00:00"), None);
}

#[test]
fn expires_at_and_freshness_follow_expires_on() {
    let token = mk_token();
    assert_eq!(token.expires_at(), Some(UNIX_EPOCH + Duration::from_secs(1_700_003_599)));
    let before = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(token.is_fresh(before, Duration::from_secs(300)));
    assert!(!token.is_fresh(before, Duration::from_secs(3600)));
    assert!(!Token::default().is_fresh(before, Duration::ZERO));
}

#[test]
fn normalize_rewrites_dates_to_unix_seconds_and_falls_back_to_expires_in() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000);
    let mut dated = Token { expires_on: "11/14/2023 22:13:19 +00:00".into(), ..Token::default() };
    dated.normalize_expires_on(now);
    assert_eq!(dated.expires_on, "1699999999");
    let mut missing = Token { expires_in: "3600".into(), ..Token::default() };
    missing.normalize_expires_on(now);
    assert_eq!(missing.expires_on, "4600");
    let mut nothing = Token::default();
    nothing.normalize_expires_on(now);
    assert_eq!(nothing.expires_on, "");
}

#[test]
fn only_a_refused_request_is_a_refusal() {
    assert!(TokenError::Refused { status: 400, body: "Identity not found".into() }.is_refusal());
    assert!(!TokenError::Certificate("bad".into()).is_refusal());
    assert!(!TokenError::InvalidRequest("bad".into()).is_refusal());
    let json = serde_json::from_str::<Token>("not json").unwrap_err();
    assert!(!TokenError::InvalidResponse(json).is_refusal());
}

#[test]
fn adal_retry_policy_pauses_2_6_14_30_60_seconds_then_stays_capped() {
    let policy = RetryPolicy::adal();
    assert_eq!(policy.attempts, 5);
    let pauses: Vec<u64> = (1..=6).map(|n| policy.delay_after(n).as_secs()).collect();
    assert_eq!(pauses, [2, 6, 14, 30, 60, 60]);
    assert_eq!(RetryPolicy::immediate(3).delay_after(2), Duration::ZERO);
    assert_eq!(RetryPolicy::none().attempts, 1);
}

#[test]
fn retriable_statuses_are_the_ones_adal_retries() {
    let retried: Vec<u16> = (100..600).filter(|s| is_retriable_status(*s)).collect();
    let expected: Vec<u16> = [404, 408, 410, 429].into_iter().chain((500..=508).chain([510, 511])).collect();
    assert_eq!(retried, expected);
}

#[test]
fn token_url_joins_authority_and_tenant_like_adal() {
    let url = |a: &str| token_url(a, "tenant-1").map(|u| u.to_string());
    assert_eq!(url("").unwrap(), "https://login.microsoftonline.com/tenant-1/oauth2/token?api-version=1.0");
    assert_eq!(
        url("https://login.microsoftonline.com/").unwrap(),
        "https://login.microsoftonline.com/tenant-1/oauth2/token?api-version=1.0"
    );
    assert_eq!(url("https://aad.local:8443").unwrap(), "https://aad.local:8443/tenant-1/oauth2/token?api-version=1.0");
    assert_eq!(url("https://aad.local/base/").unwrap(), "https://aad.local/base/tenant-1/oauth2/token?api-version=1.0");
    // Go's reference resolution replaces the last segment when there is no trailing slash.
    assert_eq!(url("https://aad.local/base").unwrap(), "https://aad.local/tenant-1/oauth2/token?api-version=1.0");
    assert!(matches!(url("not a url"), Err(TokenError::InvalidRequest(_))));
    assert!(matches!(url("ftp://aad.local/"), Err(TokenError::InvalidRequest(_))));
    assert!(matches!(token_url("", ""), Err(TokenError::InvalidRequest(_))));
    assert!(matches!(token_url("", "a/b"), Err(TokenError::InvalidRequest(_))));
}

#[test]
fn a_tenant_id_can_never_move_the_token_request_to_another_server() {
    for tenant in ["http:evil.example", "https:evil.example", "evil.example:443", "..", "t enant", "t%2fx", "t\\x"] {
        let url = token_url("https://login.microsoftonline.com/", tenant);
        assert!(matches!(url, Err(TokenError::InvalidRequest(_))), "{tenant}: {url:?}");
    }
    for tenant in ["72f988bf-86f1-41af-91ab-2d7cd011db47", "contoso.onmicrosoft.com", "common", "adfs"] {
        let url = token_url("https://login.microsoftonline.com/", tenant).unwrap();
        assert_eq!(url.host_str(), Some("login.microsoftonline.com"), "{tenant}");
    }
}

#[test]
fn transient_failures_are_unavailability_and_the_rest_say_no() {
    let refused = |status| TokenError::Refused { status, body: String::new() };
    for status in [404, 408, 410, 429, 500, 502, 503, 504] {
        assert!(refused(status).is_transient(), "{status}");
    }
    for status in [400, 401, 403] {
        assert!(!refused(status).is_transient(), "{status}");
    }
    assert!(TokenError::Throttled { retry_after: Duration::from_secs(1) }.is_transient());
    assert!(!TokenError::Throttled { retry_after: Duration::from_secs(1) }.is_refusal());
    assert!(!TokenError::Certificate("bad".into()).is_transient());
    assert!(!TokenError::InvalidRequest("bad".into()).is_transient());
}

#[test]
fn client_assertion_is_an_rs256_jwt_that_verifies_with_the_certificate_key() {
    let (cert_der, key_der) = mk_rsa_cert();
    let cert = ClientCertificate::from_der(&cert_der, &key_der).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let aud = "https://aad.local/t/oauth2/token?api-version=1.0";
    let jwt = cert.assertion("client-1", aud, now, "jti-1").unwrap();

    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let thumbprint = URL_SAFE_NO_PAD.encode(Sha1::digest(&cert_der));
    assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": thumbprint}));
    assert_eq!(
        claims,
        serde_json::json!({"aud": aud, "iss": "client-1", "sub": "client-1", "jti": "jti-1",
                           "nbf": 1_700_000_000u64, "exp": 1_700_000_600u64})
    );

    let signature = Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
    let verifier = VerifyingKey::<sha2::Sha256>::new(cert.public_key());
    let signed = format!("{}.{}", parts[0], parts[1]);
    verifier.verify(signed.as_bytes(), &signature).unwrap();
    assert!(verifier.verify(b"tampered", &signature).is_err());
}

#[test]
fn pkcs12_bundle_decodes_to_its_certificate_and_rsa_key() {
    let (cert_der, key_der) = mk_rsa_cert();
    let pfx = mk_pfx(&cert_der, &key_der, "pfx-pass");
    let cert = ClientCertificate::from_pkcs12(&pfx, "pfx-pass").unwrap();
    assert_eq!(cert.cert_der(), cert_der.as_slice());
    assert_eq!(cert.x5t(), URL_SAFE_NO_PAD.encode(Sha1::digest(&cert_der)));
    let shown = format!("{cert:?}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn pkcs12_with_a_wrong_password_is_a_certificate_error() {
    let (cert_der, key_der) = mk_rsa_cert();
    let pfx = mk_pfx(&cert_der, &key_der, "right");
    let err = ClientCertificate::from_pkcs12(&pfx, "wrong").unwrap_err();
    assert!(matches!(err, TokenError::Certificate(_)), "{err:?}");
    assert!(!err.is_refusal());
}

#[test]
fn pkcs12_with_an_ec_key_is_rejected_as_not_rsa() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ec.example".to_owned()]).unwrap().self_signed(&key).unwrap();
    let pfx = mk_pfx(cert.der(), &key.serialize_der(), "p");
    let err = ClientCertificate::from_pkcs12(&pfx, "p").unwrap_err();
    assert!(err.to_string().contains("not RSA"), "{err}");
}

#[test]
fn garbage_is_not_a_pkcs12_bundle() {
    assert!(matches!(ClientCertificate::from_pkcs12(b"garbage", ""), Err(TokenError::Certificate(_))));
    assert!(matches!(ClientCertificate::from_pkcs12(&[], ""), Err(TokenError::Certificate(_))));
}
