//! `aadpodid doctor` on the sandbox: the chart installed with `helm install`, MIC and NMI
//! running under its service accounts with their Pod objects, their `/healthz` read through
//! the API server's pod proxy. Healthy first; then a stopped NMI and an outdated CRD are found.
//!
//! Needs root (network namespaces, iptables), the control-plane tools, and fresh `mic`, `nmi`
//! and `aadpodid` binaries (`cargo build -p aadpodid-mic -p aadpodid-nmi -p aadpodid-cli`).

use aadpodid_cli::args::{DoctorArgs, KubeArgs};
use aadpodid_cli::doctor::{DoctorReport, doctor};
use aadpodid_cli::explain::Mark;
use aadpodid_sandbox::{Config, Sandbox};

fn lines(r: &DoctorReport, mark: Mark) -> Vec<&str> {
    r.lines.iter().filter(|(m, _)| *m == mark).map(|(_, t)| t.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_a_healthy_install_then_a_stopped_nmi_and_an_outdated_crd() {
    if let Err(e) = aadpodid_sandbox::require_root() {
        panic!("this test must run as root and is never skipped: {e}");
    }
    let cfg = Config::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut sb = Sandbox::start(cfg).await.unwrap_or_else(|e| panic!("{e}"));
    sb.helm_install().await.unwrap_or_else(|e| panic!("{e}"));
    sb.start_mic().await.unwrap_or_else(|e| panic!("{e}\n{}", sb.log_tails(20)));
    sb.start_nmi().await.unwrap_or_else(|e| panic!("{e}\n{}", sb.log_tails(20)));
    let kube = KubeArgs { kubeconfig: Some(sb.control_plane().kubeconfig_path().to_path_buf()), context: None };
    let (client, _) = aadpodid_cli::kube_client(&kube).await.unwrap();
    let args = DoctorArgs { probe_timeout: 5 };

    let report = doctor(&client, &args).await.unwrap();
    println!("{report}");
    assert!(report.healthy(), "{report}");
    let ok = lines(&report, Mark::Ok).join("\n");
    assert_eq!(ok.matches("is current").count(), 4, "{report}");
    assert!(ok.contains("MIC leader aad-broker/aad-pod-identity-mic-") && ok.contains("and is Active"), "{report}");
    for node in sb.nodes() {
        assert!(
            ok.contains(&format!(
                "node {}: NMI aad-pod-identity-nmi-{} Ready, iptables rules installed (Active)",
                node.name, node.name
            )),
            "{report}"
        );
    }

    let vm = sb.nodes()[1].name.clone();
    let status = sb.stop_nmi(1).await.expect("NMI was running");
    assert!(status.success(), "{status}");
    let report = doctor(&client, &args).await.unwrap();
    println!("{report}");
    assert!(!report.healthy());
    let problems = lines(&report, Mark::Problem);
    assert_eq!(problems.len(), 1, "{report}");
    assert!(
        problems[0].starts_with(&format!(
            "node {vm}: NMI aad-pod-identity-nmi-{vm} (Ready) does not answer /healthz on port 8085"
        )),
        "{report}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aadpodid"))
        .arg("--kubeconfig")
        .arg(sb.control_plane().kubeconfig_path())
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));

    let drop_columns = r#"[{"op": "remove", "path": "/spec/versions/0/additionalPrinterColumns"}]"#;
    let crd = "crd/azureassignedidentities.aadpodidentity.k8s.io";
    sb.kubectl(&["patch", crd, "--type=json", "-p", drop_columns], None).await.unwrap();
    let report = doctor(&client, &args).await.unwrap();
    let problems = lines(&report, Mark::Problem).join("\n");
    assert!(
        problems.contains("CRD azureassignedidentities.aadpodidentity.k8s.io differs from this build's"),
        "{report}"
    );

    sb.shutdown().await;
}
