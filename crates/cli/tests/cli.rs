//! The binaries offline: help with examples, shell completion, `check` and `scaffold` on files
//! and pipes with their exit codes, and `check`'s corrected walkthrough YAML accepted by a
//! real API server (`kubectl apply`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use aadpodid_testkit::{install_crds, shared, with_temp_ns};

fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn aadpodid(args: &[&str], stdin: Option<&str>) -> Output {
    run(env!("CARGO_BIN_EXE_aadpodid"), args, stdin)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const FLAT: &str = "apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
name: myidentity
type: 0
ResourceID: /subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/myidentity
ClientID: 0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
  name: myidentity-binding
  AzureIdentity: myidentity
  Selector: myapp
";

#[test]
fn help_shows_examples_and_exit_codes_for_both_names() {
    let out = aadpodid(&["--help"], None);
    let text = stdout(&out);
    assert!(out.status.success());
    for want in ["explain pod myapp", "aadpodid scaffold --selector", "Exit codes: 0", "kubectl aadpodid"] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let plugin = run(env!("CARGO_BIN_EXE_kubectl-aadpodid"), &["explain", "pod", "--help"], None);
    let text = stdout(&plugin);
    assert!(text.contains("Usage: kubectl aadpodid explain pod"), "{text}");
    assert!(text.contains("--azure-json"), "{text}");
}

#[test]
fn completion_scripts_name_the_subcommands() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef aadpodid"), ("fish", "complete -c aadpodid")] {
        let out = aadpodid(&["completion", shell], None);
        let text = stdout(&out);
        assert!(out.status.success() && text.contains(marker), "{shell}:\n{text}");
        for sub in ["explain", "scaffold", "check", "doctor"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
}

#[test]
fn check_exits_0_on_the_examples_and_1_on_flat_yaml_with_the_correction() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/identityconfig");
    let out = aadpodid(&["check", examples.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    let out = aadpodid(&["check", "-"], Some(FLAT));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "<stdin>#1 (AzureIdentity/myidentity): error: AzureIdentity is missing its `metadata:`/`spec:` nesting"
        ),
        "{text}"
    );
    assert!(text.contains("<stdin>#2 (AzureIdentityBinding/myidentity-binding): error:"), "{text}");
    assert!(text.contains("mapping values are not allowed"), "the YAML error kubectl shows is named:\n{text}");
    assert!(text.contains("Corrected document"), "{text}");

    let missing = aadpodid(&["check", "/nonexistent/file.yaml"], None);
    assert_eq!(missing.status.code(), Some(2));
}

/// The documents after each "Corrected document" line of `check`'s output.
fn corrected(text: &str) -> String {
    text.split("Corrected document (save it and `kubectl apply -f` it):\n")
        .skip(1)
        .map(|part| part.lines().take_while(|l| !l.starts_with("<stdin>")).collect::<Vec<_>>().join("\n") + "\n")
        .collect()
}

#[tokio::test]
async fn checks_corrected_yaml_and_scaffolds_output_apply_with_kubectl() {
    with_temp_ns(|client, ns| async move {
        install_crds(&client).await.unwrap();
        let fixed = corrected(&stdout(&aadpodid(&["check", "-"], Some(FLAT))));
        let again = aadpodid(&["check", "-"], Some(&fixed));
        assert_eq!(again.status.code(), Some(0), "the correction passes check:\n{fixed}\n{}", stdout(&again));
        let apply = |yaml: &str| {
            let mut cmd = shared().kubectl_command(&["apply", "-n", &ns, "-f", "-"]);
            let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        };
        let out = apply(&fixed);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout(&out).contains("azureidentitybinding.aadpodidentity.k8s.io/myidentity-binding created"));

        let az = r#"{"clientId": "3a9d1c2e-5b4f-4e6a-8c7d-9e0f1a2b3c4d", "id": "/subscriptions/6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders", "name": "orders"}"#;
        for legacy in [false, true] {
            let mut args = vec!["scaffold", "--selector", "orders-app"];
            if legacy {
                args.push("--legacy-casing");
            }
            let yaml = stdout(&aadpodid(&args, Some(az)));
            let out = apply(&yaml);
            assert!(out.status.success(), "{yaml}\n{}", String::from_utf8_lossy(&out.stderr));
            let id = kube::Api::<aadpodid_api::AzureIdentity>::namespaced(client.clone(), &ns).get("orders").await.unwrap();
            assert_eq!(id.spec.client_id.as_deref(), Some("3a9d1c2e-5b4f-4e6a-8c7d-9e0f1a2b3c4d"));
            let b = kube::Api::<aadpodid_api::AzureIdentityBinding>::namespaced(client.clone(), &ns).get("orders-binding").await.unwrap();
            assert_eq!(aadpodid_api::view::validate_binding(&b), Ok(("orders-app", "orders")));
        }
    })
    .await;
}
