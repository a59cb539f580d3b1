//! The `mic` binary's command line: the original's flags are listed and start-up refusals exit 1.

mod support;

use std::process::{Command, Stdio};

use support::{DEADLINE, World, eventually};

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

/// Zero periods are brought into range instead of panicking (a zero tokio interval panics) or
/// spinning: the binary keeps running against a real API server and the simulator, assigns,
/// and its drift reconciler runs at the one-second floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_duration_flags_neither_panic_nor_stop_mic() {
    let w = World::new("zeroflags").await;
    let nodes = w.vmss_nodes("zeropool", 1).await;
    let id = w.identity("zero").await;
    w.binding("b", "zero", "zero").await;
    w.pod("demo", &nodes[0], "zero").await;
    let zeros = [
        "--syncRetryDuration=0s",
        "--identity-assignment-reconcile-interval=0s",
        "--leader-election-duration=0s",
        "--update-user-msi-retry-interval=0s",
        "--arm-poll-interval=0s",
        "--arm-max-retry-after=0s",
    ];
    let overridden = |a: &String| zeros.iter().any(|z| a.split('=').next() == z.split('=').next());
    let argv: Vec<String> = w.argv("mic-zero", &[]).into_iter().skip(1).filter(|a| !overridden(a)).collect();
    let stderr_path = w.sim.state_dir().join("mic-zero.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mic"))
        .args(&argv)
        .args(zeros)
        .envs(w.env_vars())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start mic");
    let name = w.assigned_name("demo", "zero");
    let mut alive = |what: &str| {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("mic exited ({status}) while waiting for {what}:\n{log}");
        }
    };
    eventually("assigned by the binary", DEADLINE, || {
        alive("the assignment");
        async { (w.assigned_status(&name).await.as_deref() == Some("Assigned")).then_some(()) }
    })
    .await;
    assert!(w.vmss_has("zeropool", &id));
    w.detach_all_by_hand("zeropool").await;
    eventually("re-added by the drift reconciler", DEADLINE, || {
        alive("the drift reconciler");
        async { w.vmss_has("zeropool", &id).then_some(()) }
    })
    .await;
    alive("the end");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("Duration flag out of range"), "the adjustment is logged:\n{log}");
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

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let out = mic(&[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MIC stopped"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escape codes in piped logs:\n{stderr:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = mic(&["--log-format=json"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("MIC stopped")).unwrap_or_else(|| panic!("{stderr}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "ERROR", "{v}");
}
