//! End to end: `az identity create -o json | aadpodid scaffold | kubectl apply -f -` on the
//! sandbox (the chart installed, MIC and NMI running), then a pod with the scaffolded selector
//! gets a token for that identity through 169.254.169.254, and `aadpodid explain` agrees.
//!
//! Needs root and fresh `mic`, `nmi` and `aadpodid` binaries, as the sandbox does.

use std::io::Write;
use std::process::{Command, Stdio};

use aadpodid_sandbox::{Config, POD_NAMESPACE, Sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffolded_yaml_applies_and_gives_the_pod_a_token() {
    if let Err(e) = aadpodid_sandbox::require_root() {
        panic!("this test must run as root and is never skipped: {e}");
    }
    let mut sb =
        Sandbox::start(Config::locate().unwrap_or_else(|e| panic!("{e}"))).await.unwrap_or_else(|e| panic!("{e}"));
    let identity = sb.create_identity().await.unwrap_or_else(|e| panic!("{e}"));
    sb.helm_install().await.unwrap_or_else(|e| panic!("{e}"));
    sb.start_mic().await.unwrap_or_else(|e| panic!("{e}\n{}", sb.log_tails(20)));
    sb.start_nmi().await.unwrap_or_else(|e| panic!("{e}\n{}", sb.log_tails(20)));

    let mut child = Command::new(env!("CARGO_BIN_EXE_aadpodid"))
        .args(["scaffold", "--selector", "scaffolded", "--namespace", POD_NAMESPACE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(identity.az_json().to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    std::fs::write(sb.dir().join("scaffolded.yaml"), &yaml).unwrap();
    let applied =
        sb.kubectl(&["apply", "-f", "scaffolded.yaml"], Some(sb.dir())).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(applied.contains("azureidentitybinding.aadpodidentity.k8s.io/myidentity-binding created"), "{applied}");

    sb.create_pod(0, "scaffolded-app", "scaffolded").await.unwrap_or_else(|e| panic!("{e}"));
    sb.wait_assigned(POD_NAMESPACE, "scaffolded-app").await.unwrap_or_else(|e| panic!("{e}"));
    let token = sb.token("scaffolded-app").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (token.appid.as_str(), token.oid.as_str()),
        (identity.client_id.as_str(), identity.principal_id.as_str())
    );
    let report = sb.explain("scaffolded-app").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("Healthy: pod default/scaffolded-app gets its identity from NMI."), "{report}");
    sb.shutdown().await;
}
