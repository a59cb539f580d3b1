//! The `mic` binary's command line: the original's flags are listed and start-up refusals exit 1.

use std::process::Command;

fn mic(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mic"));
    cmd.args(args).env_remove("MIC_POD_NAMESPACE").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mic")
}

#[test]
fn help_lists_the_originals_flags() {
    let out = mic(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kubeconfig",
        "--cloudconfig",
        "--forceNamespaced",
        "--syncRetryDuration",
        "--leader-election-instance",
        "--leader-election-namespace",
        "--leader-election-name",
        "--leader-election-duration",
        "--http-probe-port",
        "--prometheus-port",
        "--enableProfile",
        "--enableScaleFeatures",
        "--createDeleteBatch",
        "--clientQps",
        "--immutable-user-msis",
        "--config-map-name",
        "--type-upgrade-status-key",
        "--enable-type-upgrade",
        "--update-user-msi-max-retry",
        "--update-user-msi-retry-interval",
        "--identity-assignment-reconcile-interval",
        "--log-format",
        "--custom-user-agent",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn missing_mic_pod_namespace_is_fatal() {
    let out = mic(&["--logtostderr", "-v=2"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MIC_POD_NAMESPACE"));
}

#[test]
fn unknown_log_format_is_fatal() {
    let out = mic(&["--log-format=xml"], &[("MIC_POD_NAMESPACE", "default")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}

/// azure.json holds the service principal's secret: MIC's exit message never quotes it.
#[test]
fn a_malformed_cloud_config_is_fatal_without_echoing_the_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .expect("kubeconfig");
    let azure_json = dir.path().join("azure.json");
    let secret = "Sup3r-S3cret-Value";
    std::fs::write(
        &azure_json,
        format!("{{\"aadClientSecret\": \"{secret}\",\n \"useManagedIdentityExtension\": tru e,\n}}"),
    )
    .expect("azure.json");
    let out = mic(
        &[&format!("--kubeconfig={}", kubeconfig.display()), &format!("--cloudconfig={}", azure_json.display())],
        &[("MIC_POD_NAMESPACE", "default")],
    );
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("cloud config"), "{stderr}");
    assert!(!stderr.contains("S3cret") && !stdout.contains("S3cret"), "{stdout}\n{stderr}");
}
