//! The `nmi` command line as a process: help lists the original's flags, and the start-up
//! refusals (kubenet, managed mode without forceNamespaced, unknown mode) exit 1 with the
//! original's texts before anything is touched.

use std::process::{Command, Output};

fn nmi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nmi")).args(args).env_remove("KUBECONFIG").output().expect("nmi runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_the_originals_flags() {
    let out = nmi(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--nmi-listen-address",
        "--nmi-port",
        "--metadata-ip",
        "--metadata-port",
        "--node",
        "--ipt-update-interval-sec",
        "--forceNamespaced",
        "--MICNamespace",
        "--http-probe-port",
        "--retry-attempts-for-created",
        "--retry-attempts-for-assigned",
        "--find-identity-retry-interval",
        "--enableProfile",
        "--enableScaleFeatures",
        "--block-instance-metadata",
        "--metadata-header-required",
        "--prometheus-port",
        "--operation-mode",
        "--allow-network-plugin-kubenet",
        "--kubelet-config",
        "--set-retry-after-header",
        "--enable-conntrack-deletion",
        "--log-format",
        "--custom-user-agent",
        "--version",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn kubenet_nodes_are_refused_with_the_originals_text() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubelet");
    std::fs::write(&config, "KUBELET_FLAGS=--network-plugin=kubenet --max-pods=110\n").unwrap();
    let out = nmi(&[&format!("--kubelet-config={}", config.display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("AAD Pod Identity is not supported for Kubenet."), "{}", stderr(&out));
}

#[test]
fn unreadable_kubelet_config_is_fatal() {
    let out = nmi(&["--kubelet-config=/nonexistent/kubelet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/kubelet"), "{}", stderr(&out));
}

#[test]
fn managed_mode_needs_force_namespaced() {
    let out = nmi(&["--allow-network-plugin-kubenet", "-operation-mode=Managed"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("managed mode not intialized in force namespaced mode"), "{}", stderr(&out));
}

#[test]
fn unknown_operation_mode_is_fatal() {
    let out = nmi(&["--allow-network-plugin-kubenet", "--operation-mode=hybrid"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("operation mode hybrid is not supported"), "{}", stderr(&out));
}
