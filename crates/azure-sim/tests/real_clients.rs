//! Real, unchanged clients against the simulator: Python azure-identity's ManagedIdentityCredential against
//! the IMDS face, and msal's ConfidentialClientApplication (secret and certificate) against the HTTPS AAD
//! face; the tokens' claims are verified with the JWKS by PyJWT.
//!
//! Needs `python3` with the packages of `tests/python/requirements.txt` (repo root). Missing ones FAIL the
//! test with the install command; they are never skipped.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use aadpodid_azure_sim::{NodeRef, RunningSim};
use common::*;
use serde_json::{Value, json};

const INSTALL: &str = "pip install -r tests/python/requirements.txt (from the repository root)";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

async fn require_python() {
    let out = tokio::process::Command::new("python3")
        .args(["-c", "import azure.identity, msal, jwt, cryptography, requests"])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("python3 is required for the real-client tests ({e}); install Python 3 and run {INSTALL}")
        });
    assert!(
        out.status.success(),
        "the real-client tests need the Python packages of tests/python/requirements.txt: run {INSTALL}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a script with extra environment variables; returns its last stdout line as JSON.
async fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script(name)).args(args).current_dir(script(""));
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Never let a developer's proxy settings route loopback traffic elsewhere.
    cmd.env("NO_PROXY", "127.0.0.1,localhost").env_remove("HTTPS_PROXY").env_remove("HTTP_PROXY");
    let out =
        tokio::time::timeout(Duration::from_secs(120), cmd.output()).await.expect("script finished in time").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"))
}

fn jwks_url(sim: &RunningSim) -> String {
    format!("{}/{}/discovery/v2.0/keys", sim.aad_https_url(), sim.tenant_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_identity_managed_identity_credential_gets_tokens_only_for_attached_identities() {
    require_python().await;
    let sim = start().await;
    sim.create_vmss(RG, "pool", 1);
    let attached = sim.create_user_assigned_identity("id-rg", "attached");
    let other = sim.create_user_assigned_identity("id-rg", "other");
    attach(&sim, &vmss_url(&sim, "pool", "2019-12-01"), &[&attached.id]).await;
    let imds = sim.serve_imds(loopback(), NodeRef::vmss_instance("pool", 0)).unwrap();
    let ca = sim.ca_cert_pem_path().to_string_lossy().into_owned();
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url()), ("REQUESTS_CA_BUNDLE", ca)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let issuer = sim.issuer();
    let jwks = jwks_url(&sim);

    let out = run(
        "imds_managed_identity.py",
        &[&attached.client_id, "https://vault.azure.net/.default", &jwks, &issuer],
        &env,
    )
    .await;
    assert_eq!(out["claims"]["oid"], attached.principal_id.as_str());
    assert_eq!(out["claims"]["appid"], attached.client_id.as_str());
    assert_eq!(out["claims"]["tid"], sim.tenant_id());
    assert_eq!(out["claims"]["xms_mirid"], attached.id.as_str());
    assert!(out["expires_on"].as_u64().unwrap() > 0);

    let out = run(
        "imds_managed_identity.py",
        &[&other.client_id, "https://vault.azure.net/.default", &jwks, &issuer, "--expect-unavailable"],
        &env,
    )
    .await;
    assert_eq!(out["unavailable"], true, "{out}");
    assert!(sim.counters().calls(aadpodid_azure_sim::Face::Imds, "imds_token") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msal_confidential_client_with_a_secret_and_with_a_certificate() {
    require_python().await;
    let sim = start().await;
    sim.register_service_principal_secret("11111111-aaaa-4aaa-8aaa-111111111111", "s3cret-value");
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "msal-client");
    let cert = params.self_signed(&key).unwrap();
    sim.register_service_principal_certificate("22222222-bbbb-4bbb-8bbb-222222222222", cert.der()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let thumbprint: String = {
        use sha1::Digest as _;
        sha1::Sha1::digest(cert.der()).iter().map(|b| format!("{b:02X}")).collect()
    };

    let authority = format!("{}/{}", sim.aad_https_url(), sim.tenant_id());
    let ca = sim.ca_cert_pem_path().to_string_lossy().into_owned();
    let env = [("REQUESTS_CA_BUNDLE", ca.as_str())];
    let issuer = sim.issuer();
    let jwks = jwks_url(&sim);
    let scope = "https://management.azure.com/.default";

    let out = run(
        "msal_confidential.py",
        &[&authority, "11111111-aaaa-4aaa-8aaa-111111111111", "secret", "s3cret-value", scope, &jwks, &issuer],
        &env,
    )
    .await;
    assert_eq!(out["claims"]["appid"], "11111111-aaaa-4aaa-8aaa-111111111111");
    assert_eq!(out["claims"]["aud"], "https://management.azure.com");
    assert_eq!(out["claims"]["appidacr"], "1");

    let key_arg = key_path.to_string_lossy().into_owned();
    let out = run(
        "msal_confidential.py",
        &[&authority, "22222222-bbbb-4bbb-8bbb-222222222222", "cert", &key_arg, &thumbprint, scope, &jwks, &issuer],
        &env,
    )
    .await;
    assert_eq!(out["claims"]["appid"], "22222222-bbbb-4bbb-8bbb-222222222222");
    assert_eq!(out["claims"]["appidacr"], "2");

    let out = run(
        "msal_confidential.py",
        &[&authority, "11111111-aaaa-4aaa-8aaa-111111111111", "secret", "wrong", scope, "--expect-error"],
        &env,
    )
    .await;
    assert_eq!(out["error"], "invalid_client", "{out}");
    assert_eq!(out["error_codes"], json!([7000215]));
    assert_eq!(out["has_token"], false);
}
