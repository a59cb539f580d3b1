//! The control plane itself: start, serve, authenticate, issue service-account tokens, tear down.

use std::path::PathBuf;
use std::time::Duration;

use aadpodid_testkit::{ControlPlane, TempNamespace, poll_until, shared, with_temp_ns};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::Value;

fn pid_alive(pid: &str) -> bool {
    PathBuf::from("/proc").join(pid).exists()
}

/// Pids of processes whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<String> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            pids.push(name);
        }
    }
    pids
}

#[tokio::test]
async fn a_private_control_plane_serves_and_is_torn_down_on_drop() {
    let cp = ControlPlane::start().await.unwrap();
    let dir = cp.dir().to_path_buf();
    let dir_str = dir.display().to_string();
    let children = pids_mentioning(&dir_str);
    assert!(children.len() >= 2, "etcd and kube-apiserver run from {dir_str}: {children:?}");

    let client = cp.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "34"));

    let out = cp.kubectl(&["get", "--raw", "/readyz"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert!(cp.kubeconfig_path().starts_with(&dir));
    assert!(cp.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    drop(client);
    drop(cp);
    assert!(!dir.exists(), "the temp dir is removed");
    for pid in children {
        assert!(!pid_alive(&pid), "process {pid} was killed and reaped");
    }
}

#[tokio::test]
async fn namespaces_isolate_tests_on_the_shared_control_plane() {
    let (a, b) = with_temp_ns(|client, ns_a| async move {
        let ns_b = TempNamespace::create(&client, "other").await.unwrap();
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta { name: Some("x".into()), ..Default::default() },
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(client.clone(), &ns_a).create(&PostParams::default(), &cm).await.unwrap();
        let in_b = Api::<ConfigMap>::namespaced(client.clone(), ns_b.name()).get_opt("x").await.unwrap();
        let names = (ns_a.clone(), ns_b.name().to_owned());
        ns_b.delete().await;
        assert!(in_b.is_none(), "a ConfigMap in one namespace is not seen in another");
        names
    })
    .await;
    assert_ne!(a, b);
}

#[tokio::test]
async fn service_account_tokens_are_issued_and_the_issuer_publishes_its_keys() {
    let cp = shared();
    with_temp_ns(|client, ns| async move {
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta { name: Some("workload".into()), ..Default::default() },
            ..Default::default()
        };
        sas.create(&PostParams::default(), &sa).await.unwrap();
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec!["api://AzureADTokenExchange".into()],
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let issued: TokenRequest =
            sas.create_subresource("token", "workload", &PostParams::default(), &req).await.unwrap();
        let token = issued.status.unwrap().token;
        assert_eq!(token.split('.').count(), 3, "a compact JWS");

        let discovery: Value = serde_json::from_str(
            &client
                .request_text(http::Request::get("/.well-known/openid-configuration").body(vec![]).unwrap())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(discovery["issuer"], cp.service_account_issuer());
        assert_eq!(discovery["jwks_uri"], format!("{}/openid/v1/jwks", cp.service_account_issuer()));

        let jwks: Value = serde_json::from_str(
            &client.request_text(http::Request::get("/openid/v1/jwks").body(vec![]).unwrap()).await.unwrap(),
        )
        .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kty"], "RSA");
        assert_eq!(keys[0]["alg"], "RS256");

        let header = token.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], keys[0]["kid"], "the token is signed by the published key");
    })
    .await;
}

#[tokio::test]
async fn poll_until_gives_up_at_its_deadline() {
    let err = poll_until("never", Duration::from_millis(300), || async { None::<()> }).await.unwrap_err();
    assert!(err.to_string().contains("timed out after 300ms waiting for never"), "{err}");
}

#[tokio::test]
async fn a_failed_start_reports_the_log_tail_and_leaves_nothing_behind() {
    let fake = tempfile::tempdir().unwrap();
    let etcd = fake.path().join("etcd");
    std::fs::write(&etcd, "#!/bin/sh\necho 'etcd: simulated storage failure' >&2\nexit 3\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&etcd).status().unwrap();
    let real = shared().tools().clone();
    let tools = aadpodid_testkit::Tools { etcd, ..real };

    let err = ControlPlane::start_with(tools).await.unwrap_err().to_string();
    assert!(err.contains("etcd exited during start-up"), "{err}");
    assert!(err.contains("etcd: simulated storage failure"), "the log tail is in the error: {err}");
    let log = err.split_whitespace().find(|w| w.ends_with("etcd.log:")).unwrap().trim_end_matches(':');
    let dir = std::path::Path::new(log).parent().unwrap();
    assert!(dir.starts_with(std::env::temp_dir()) && !dir.exists(), "{} is removed", dir.display());
}

/// `pods/proxy` as on a real cluster: the API server dials the pod's IP through the egress
/// proxy, which reaches a server of this process; an unrouted pod address is a clean error.
#[tokio::test]
async fn the_pod_proxy_reaches_pods_through_the_egress_proxy() {
    use aadpodid_testkit::{EgressProxy, EgressTarget, Options, Tools};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let egress = EgressProxy::start().unwrap();
    let options = Options { egress_selector: Some(egress.selector_config()), ..Options::default() };
    let cp = ControlPlane::start_with_options(Tools::locate().unwrap(), options).await.unwrap();
    // Without kube's default retries: the unrouted case answers 503, retried for minutes otherwise.
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nActive").await;
        }
    });
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "example.invalid/c"}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status =
        serde_json::json!({"status": {"phase": "Running", "podIP": "10.250.0.2", "podIPs": [{"ip": "10.250.0.2"}]}});
    pods.patch_status("probe", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    egress.route("10.250.0.2:8080".parse().unwrap(), EgressTarget::Host(local));

    let get = |port: u16| {
        let req = http::Request::get(format!("/api/v1/namespaces/default/pods/probe:{port}/proxy/healthz"))
            .body(Vec::new())
            .unwrap();
        let client = client.clone();
        async move { client.request_text(req).await }
    };
    assert_eq!(get(8080).await.unwrap(), "Active");
    match get(9999).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 503, "{status:?}"),
        other => panic!("no route for that port: {other:?}"),
    }
}
