//! The `azure-sim` binary run stand-alone: `serve` with a seed file and IMDS instances (one of them
//! inside a network namespace at 169.254.169.254:80), and `identity create` against it.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_azure-sim");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Netns(String);

impl Netns {
    fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = |args: &[&str]| {
            let st =
                Command::new("ip").args(args).status().expect("the `ip` command (iproute2) is needed; run as root");
            assert!(st.success(), "ip {args:?} failed (this test needs root)");
        };
        ok(&["netns", "add", name]);
        ok(&["-n", name, "link", "set", "lo", "up"]);
        ok(&["-n", name, "addr", "add", "169.254.169.254/32", "dev", "lo"]);
        Netns(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn serve(args: &[&str]) -> (Killed, Value) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args([
            "--arm-http",
            "127.0.0.1:0",
            "--arm-https",
            "127.0.0.1:0",
            "--aad-http",
            "127.0.0.1:0",
            "--aad-https",
            "127.0.0.1:0",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("azure-sim starts");
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("no ready line ({e}): {line:?}"));
    (child, ready)
}

#[test]
fn serve_seeds_the_world_and_serves_imds_inside_a_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        "identities:\n  - { resourceGroup: id-rg, name: reader, clientId: 33333333-3333-3333-3333-333333333333 }\n\
         vms:\n  - { resourceGroup: node-rg, name: node-1, userAssignedIdentities: [reader] }\n",
    )
    .unwrap();
    let ns = Netns::create(&format!("azsim-test-{}", std::process::id()));
    let imds_ns = format!("vm:node-1@{}/169.254.169.254:80", ns.0);
    let state = dir.path().join("state");
    let (_child, ready) = serve(&[
        "--seed",
        seed.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--imds",
        &imds_ns,
        "--imds",
        "vm:node-1@127.0.0.1:0",
    ]);
    assert!(state.join("ca.pem").exists());
    let env: Value = serde_json::from_slice(&std::fs::read(state.join("azurestackcloud.json")).unwrap()).unwrap();
    assert_eq!(env["name"], "AzureStackCloud");

    // The namespaced IMDS answers at the real address, from inside the namespace.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "curl", "-s", "-m", "20", "-H", "Metadata: true"])
        .arg("http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net")
        .output()
        .expect("curl runs inside the namespace");
    let token: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(token["client_id"], "33333333-3333-3333-3333-333333333333", "{token}");

    let loopback = ready["imds"][1]["url"].as_str().unwrap();
    let out = Command::new("curl")
        .args(["-s", "-m", "20", "-H", "Metadata: true"])
        .arg(format!("{loopback}/metadata/instance?api-version=2021-02-01"))
        .output()
        .unwrap();
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["compute"]["name"], "node-1");

    let admin = ready["endpoints"]["armHttp"].as_str().unwrap();
    let out = Command::new(BIN)
        .args(["identity", "create", "-g", "id-rg", "-n", "writer", "-o", "json", "--admin-url", admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["name"], "writer");
    assert_eq!(created["resourceGroup"], "id-rg");
    assert_eq!(created["tenantId"], ready["tenantId"]);
    assert!(created["clientId"].as_str().is_some_and(|c| c.len() == 36));
}

#[test]
fn help_documents_the_sandbox() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in
        ["serve", "--imds", "169.254.169.254", "identity create", "AZURE_ENVIRONMENT_FILEPATH", "/admin/faults"]
    {
        assert!(text.contains(needle), "--help should mention {needle}");
    }
}
