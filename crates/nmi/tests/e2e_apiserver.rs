//! The `nmi` binary end to end: real API server (testkit), Azure simulator, a node network
//! namespace with NMI's own iptables rules, pod namespaces calling 169.254.169.254 with real
//! SDKs (Python azure-identity, Node @azure/identity, the Azure CLI when installed).
//!
//! Needs root, `ip`, `iptables`, `curl`, `openssl`, Python 3 with azure-identity, and for the
//! Node test `npm ci` in tests/node.

mod support;

use std::process::Stdio;
use std::time::Duration;

use aadpodid_api::AzureIdentitySpec;
use aadpodid_azure_sim::seed::{self, Seed};
use aadpodid_azure_sim::{Face, Fault, FaultKind, IdentityInfo, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_nmi::iptables::{CHAIN, Rules};
use aadpodid_testkit::TempNamespace;
use aadpodid_testkit::netns::{IMDS_IP, Node, Pod};
use aadpodid_testkit::require_root;
use k8s_openapi::api::core::v1::{Secret, SecretReference};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::cluster::{NodeSetup, assign, create_pod, create_pod_from, prepare_node, set_pod_status, set_state};
use support::{jwt_claims, require_tool};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/imds_client.py");
const NODE_CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/node");
const TOKEN_PATH: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

struct Env {
    client: kube::Client,
    ns: TempNamespace,
    sim: RunningSim,
    ids: Vec<IdentityInfo>,
    node: Node,
    setup: NodeSetup,
}

async fn env() -> Env {
    require_root();
    require_tool("ip", &["-V"], "apt-get install -y iproute2");
    require_tool("iptables", &["--version"], "apt-get install -y iptables");
    require_tool("curl", &["--version"], "apt-get install -y curl");
    require_tool("python3", &["-c", "import azure.identity"], "pip install -r tests/python/requirements.txt");
    let cp = aadpodid_testkit::shared();
    let client = cp.client();
    aadpodid_testkit::install_crds(&client).await.expect("CRDs install");
    let ns = TempNamespace::create(&client, "nmi").await.expect("namespace");
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
    let seed = Seed::parse(
        r#"{"identities": [{"resourceGroup": "rg", "name": "id-a"}, {"resourceGroup": "rg", "name": "id-b"}],
            "vmss": [{"resourceGroup": "rg", "name": "pool", "instances": 1, "userAssignedIdentities": ["id-a", "id-b"]}]}"#,
    )
    .unwrap();
    let ids = seed::apply(&sim, &seed).unwrap();
    let node = Node::create().expect("node namespace");
    let node_ref = NodeRef::vmss_instance("pool", 0).in_resource_group("rg");
    sim.serve_imds(node.imds_listener().unwrap(), node_ref).unwrap();
    let setup = prepare_node(&node, cp.kubeconfig_path(), cp.server_url(), &sim.aad_https_url(), sim.ca_cert_pem());
    Env { client, ns, sim, ids, node, setup }
}

impl Env {
    async fn pod(&self, name: &str) -> Pod {
        let net = self.node.add_pod().unwrap();
        create_pod(&self.client, self.ns.name(), name, &self.setup.node_name, &net, name).await;
        net
    }

    async fn assign(&self, pod: &str, identity: &str, spec: AzureIdentitySpec, state: &str) {
        assign(&self.client, self.ns.name(), pod, &self.setup.node_name, (identity, spec), state).await;
    }
}

fn ua_spec(id: &IdentityInfo) -> AzureIdentitySpec {
    AzureIdentitySpec { client_id: Some(id.client_id.clone()), resource_id: Some(id.id.clone()), ..Default::default() }
}

async fn output_json(mut cmd: std::process::Command) -> Value {
    cmd.stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("not JSON: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}

async fn python(pod: &Pod, args: &[&str]) -> Value {
    let mut cmd = pod.command("python3");
    cmd.arg(CLIENT).args(args).env_remove("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    output_json(cmd).await
}

async fn raw(pod: &Pod, path: &str, metadata: bool) -> (u64, String) {
    let mut args = vec!["raw", path];
    if metadata {
        args.push("Metadata=true");
    }
    let out = python(pod, &args).await;
    assert_eq!(out["ok"], true, "{out}");
    (out["status"].as_u64().unwrap(), out["body"].as_str().unwrap().to_owned())
}

fn assert_token_for(out: &Value, client_id: &str) {
    assert_eq!(out["ok"], true, "{out}");
    let claims = jwt_claims(out["token"].as_str().unwrap());
    assert_eq!(claims["appid"], client_id, "{claims}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_mode_binary_serves_each_pod_its_own_identity_and_waits_for_assignment() {
    let e = env().await;
    let (a, b) = (&e.ids[0], &e.ids[1]);
    let p0 = e.pod("pod-0").await;
    let p1 = e.pod("pod-1").await;
    let p2 = e.pod("pod-2").await;
    e.assign("pod-0", "id-a", ua_spec(a), "Assigned").await;
    e.assign("pod-1", "id-b", ua_spec(b), "Created").await;
    let nmi = e.setup.start_nmi(&e.node, &["--retry-attempts-for-assigned=20"]);
    nmi.wait_active(&e.node).await;

    let waiting = {
        let p1_cmd = {
            let mut cmd = p1.command("python3");
            cmd.arg(CLIENT).args(["sdk", "https://vault.azure.net"]);
            cmd
        };
        tokio::spawn(output_json(p1_cmd))
    };
    assert_token_for(&python(&p0, &["sdk", "https://vault.azure.net"]).await, &a.client_id);
    assert_token_for(&python(&p0, &["sdk", "https://vault.azure.net", &a.client_id]).await, &a.client_id);
    let seen_waiting =
        aadpodid_testkit::poll_until("NMI waiting for pod-1's identity", Duration::from_secs(30), || {
            let log = nmi.log_text();
            async move {
                log.lines().any(|l| l.contains("Waiting for an assigned identity") && l.contains("pod-1")).then_some(())
            }
        });
    seen_waiting.await.expect("the request for pod-1 waits while its identity is Created");
    set_state(&e.client, e.ns.name(), "pod-1", "id-b", "Assigned").await;
    assert_token_for(&waiting.await.unwrap(), &b.client_id);

    let (status, body) = raw(&p2, TOKEN_PATH, true).await;
    assert_eq!(status, 404, "no identity: {body}");
    assert!(body.contains("CREATED state failed after 2 attempts"), "{body}");
    let (status, body) = raw(&p0, &format!("{TOKEN_PATH}&client_id={}", b.client_id), true).await;
    assert_eq!(status, 404, "another pod's identity: {body}");
    assert!(!body.contains("access_token"));
    let (status, body) = raw(&p0, TOKEN_PATH, false).await;
    assert_eq!((status, body.as_str()), (400, aadpodid_nmi::errors::METADATA_HEADER_BODY));
    let path = "/metadata/identity/oauth2/token?resource=https://database.windows.net/&api-version=2018-02-01";
    let (status, body) = raw(&p0, path, true).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["resource"].as_str(), v["token_type"].as_str()),
        (Some("https://database.windows.net/"), Some("Bearer"))
    );
    let exp = jwt_claims(v["access_token"].as_str().unwrap())["exp"].as_u64().unwrap();
    assert_eq!(v["expires_on"].as_str().unwrap().parse::<u64>().unwrap(), exp);

    let (status, body) = raw(&p0, &format!("{TOKEN_PATH}&object_id={}", a.principal_id), true).await;
    assert_eq!(status, 200, "object_id selects the pod's identity by principal ID (ours): {body}");
    let (status, _) = raw(&p0, &format!("{TOKEN_PATH}&object_id={}", b.principal_id), true).await;
    assert_eq!(status, 404, "another pod's principal ID");

    let out = e.node.ns.run("curl", &["-s", "http://127.0.0.1:9090/metrics"]).unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(metrics.contains("aadpodidentity_nmi_operations_duration_seconds_bucket{"), "{metrics}");
    assert!(metrics.contains("status_code=\"404\""), "{metrics}");
    assert!(metrics.contains(
        "aadpodidentity_imds_operations_duration_seconds_count{operation_type=\"adal_token_msi_userassignedid\"}"
    ));
    assert!(!metrics.contains("_total"), "counters keep the original names");
    drop(e.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_never_assigned_gets_the_originals_error_after_its_retries() {
    let e = env().await;
    let p0 = e.pod("pod-0").await;
    e.assign("pod-0", "id-a", ua_spec(&e.ids[0]), "Created").await;
    let nmi = e.setup.start_nmi(&e.node, &["--retry-attempts-for-assigned=1", "--set-retry-after-header=false"]);
    nmi.wait_active(&e.node).await;
    let (status, body) = raw(&p0, TOKEN_PATH, true).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("in ASSIGNED state failed after 3 attempts"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_in_a_pod_gets_a_token() {
    let e = env().await;
    require_tool("node", &["--version"], "apt-get install -y nodejs npm");
    assert!(
        std::path::Path::new(NODE_CLIENT_DIR).join("node_modules/@azure/identity").exists(),
        "@azure/identity is missing; run: (cd tests/node && npm ci)"
    );
    let p0 = e.pod("pod-0").await;
    e.assign("pod-0", "id-a", ua_spec(&e.ids[0]), "Assigned").await;
    let nmi = e.setup.start_nmi(&e.node, &[]);
    nmi.wait_active(&e.node).await;
    let mut cmd = p0.command("node");
    cmd.current_dir(NODE_CLIENT_DIR).args(["imds_client.js", "https://vault.azure.net"]);
    assert_token_for(&output_json(cmd).await, &e.ids[0].client_id);
}

/// A PKCS#12 bundle (password `pw`) and the DER certificate, made with openssl.
fn make_pfx(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    require_tool("openssl", &["version"], "apt-get install -y openssl");
    let sh = |script: &str| {
        let ok = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap().success();
        assert!(ok, "{script}");
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout k.pem -out c.pem -subj /CN=sp -days 2 2>/dev/null");
    sh("openssl pkcs12 -export -inkey k.pem -in c.pem -out c.pfx -passout pass:pw");
    sh("openssl x509 -in c.pem -outform der -out c.der");
    (std::fs::read(dir.join("c.pfx")).unwrap(), std::fs::read(dir.join("c.der")).unwrap())
}

async fn secret(e: &Env, name: &str, data: Value) -> SecretReference {
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
    Api::<Secret>::namespaced(e.client.clone(), e.ns.name()).create(&PostParams::default(), &s).await.unwrap();
    SecretReference { name: Some(name.into()), namespace: Some(e.ns.name().into()) }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_principals_get_aad_tokens_and_cached_ones_survive_an_aad_outage() {
    let e = env().await;
    let (sp1, sp2) = ("11111111-0000-0000-0000-000000000001", "11111111-0000-0000-0000-000000000002");
    e.sim.register_service_principal_secret(sp1, "s3cret");
    let (pfx, der) = make_pfx(e.setup.dir.path());
    e.sim.register_service_principal_certificate(sp2, &der).unwrap();
    let sp_spec = |kind: i64, client_id: &str, secret: SecretReference| AzureIdentitySpec {
        type_: Some(kind),
        client_id: Some(client_id.into()),
        tenant_id: Some(e.sim.tenant_id().into()),
        ad_endpoint: Some(e.setup.aad_in_node.clone()),
        client_password: Some(secret),
        ..Default::default()
    };
    let s1 = secret(&e, "sp-secret", json!({"clientSecret": b64(b"s3cret")})).await;
    let s2 = secret(&e, "sp-cert", json!({"certificate": b64(&pfx), "password": b64(b"pw")})).await;
    let p0 = e.pod("pod-0").await;
    let p1 = e.pod("pod-1").await;
    e.assign("pod-0", "sp-1", sp_spec(1, sp1, s1), "Assigned").await;
    e.assign("pod-1", "sp-2", sp_spec(2, sp2, s2), "Assigned").await;
    let nmi = e.setup.start_nmi(&e.node, &[&format!("--allowed-ad-endpoints={}", e.setup.aad_in_node)]);
    nmi.wait_active(&e.node).await;

    let (status, body) = raw(&p0, TOKEN_PATH, true).await;
    assert_eq!(status, 200, "secret: {body}\n{}", nmi.log_text());
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwt_claims(first["access_token"].as_str().unwrap())["appid"], sp1);
    let (status, body) = raw(&p1, TOKEN_PATH, true).await;
    assert_eq!(status, 200, "certificate: {body}\n{}", nmi.log_text());
    assert_eq!(
        jwt_claims(serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap())["appid"],
        sp2
    );

    e.sim.inject(Fault::new(Face::Aad, FaultKind::status(503)));
    let (status, body) = raw(&p0, TOKEN_PATH, true).await;
    assert_eq!(status, 200, "cached token while AAD is down: {body}");
    let again: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["access_token"], first["access_token"]);
    let other = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com/";
    let (status, body) = raw(&p0, other, true).await;
    assert_eq!(status, 403, "new resource while AAD refuses: {body}");
    assert!(!body.contains("s3cret"));
    assert!(!nmi.log_text().contains("s3cret"), "the secret must never be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_principal_credentials_outside_the_policy_are_neither_read_nor_sent() {
    let e = env().await;
    let sp = "11111111-0000-0000-0000-000000000003";
    e.sim.register_service_principal_secret(sp, "s3cret");
    let victim = TempNamespace::create(&e.client, "victim").await.expect("namespace");
    let data = json!({"clientSecret": b64(b"s3cret")});
    let own = secret(&e, "sp-secret", data.clone()).await;
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "victim-secret"}, "data": data})).unwrap();
    Api::<Secret>::namespaced(e.client.clone(), victim.name()).create(&PostParams::default(), &s).await.unwrap();
    let elsewhere = SecretReference { name: Some("victim-secret".into()), namespace: Some(victim.name().into()) };
    // The same Azure AD reached through a second relay: an endpoint the operator did not allow.
    let aad: std::net::SocketAddr =
        e.setup.aad_in_node.trim_start_matches("https://").trim_end_matches('/').parse().unwrap();
    let other_relay = e.node.ns.forward(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), aad).unwrap();
    let spec = |ad_endpoint: String, secret: SecretReference| AzureIdentitySpec {
        type_: Some(1),
        client_id: Some(sp.into()),
        tenant_id: Some(e.sim.tenant_id().into()),
        ad_endpoint: Some(ad_endpoint),
        client_password: Some(secret),
        ..Default::default()
    };
    let (p0, p1, p2) = (e.pod("pod-0").await, e.pod("pod-1").await, e.pod("pod-2").await);
    e.assign("pod-0", "sp-elsewhere", spec(e.setup.aad_in_node.clone(), elsewhere), "Assigned").await;
    e.assign("pod-1", "sp-other-aad", spec(format!("https://{other_relay}/"), own.clone()), "Assigned").await;
    e.assign("pod-2", "sp-ok", spec(e.setup.aad_in_node.clone(), own), "Assigned").await;
    let nmi = e.setup.start_nmi(&e.node, &[&format!("--allowed-ad-endpoints={}", e.setup.aad_in_node)]);
    nmi.wait_active(&e.node).await;

    let (status, body) = raw(&p0, TOKEN_PATH, true).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only from the identity's own namespace"), "{body}");
    let (status, body) = raw(&p1, TOKEN_PATH, true).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("adEndpoint") && body.contains("--allowed-ad-endpoints"), "{body}");
    assert_eq!(e.sim.counters().calls(Face::Aad, "token"), 0, "Azure AD received nothing");
    let (status, body) = raw(&p2, TOKEN_PATH, true).await;
    assert_eq!(status, 200, "the identity's own Secret to an allowed endpoint: {body}");
    assert_eq!(e.sim.counters().calls(Face::Aad, "token"), 1);
    assert!(!nmi.log_text().contains("s3cret"), "the secret is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_one_set_of_rules_and_sigterm_removes_them() {
    let e = env().await;
    let expected = Rules::new(IMDS_IP, 80, std::net::Ipv4Addr::LOCALHOST, 2579).expected_listing();
    let nmi = e.setup.start_nmi(&e.node, &[]);
    nmi.wait_active(&e.node).await;
    let status = nmi.signal_and_wait(&e.node, "KILL").await;
    assert!(!status.success());
    assert_eq!(e.node.iptables_list(CHAIN).unwrap().lines().collect::<Vec<_>>(), expected, "rules outlive a crash");

    let nmi = e.setup.start_nmi(&e.node, &[]);
    nmi.wait_active(&e.node).await;
    assert_eq!(e.node.iptables_list(CHAIN).unwrap().lines().collect::<Vec<_>>(), expected, "not duplicated");
    let jumps = e.node.iptables_list("PREROUTING").unwrap();
    assert_eq!(jumps.lines().filter(|l| l.contains("-j aad-metadata")).count(), 1, "{jumps}");
    let metrics = e.node.ns.run("curl", &["-s", "http://127.0.0.1:9090/metrics"]).unwrap();
    assert_eq!(metrics.status.code(), Some(0), "metrics served on 9090");

    let log = nmi.log.clone();
    let status = nmi.signal_and_wait(&e.node, "TERM").await;
    assert!(status.success(), "clean exit; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    assert!(e.node.iptables_list(CHAIN).is_err(), "chain removed");
    assert!(!e.node.iptables_list("PREROUTING").unwrap().contains("aad-metadata"), "jump removed");
}

/// `az` from `AADPODID_AZ`, else from PATH; the test fails with the install command otherwise.
fn az_program() -> String {
    let az = std::env::var("AADPODID_AZ").unwrap_or_else(|_| "az".to_owned());
    require_tool(
        &az,
        &["version", "-o", "none"],
        "python3 -m venv /opt/az && /opt/az/bin/pip install azure-cli==2.91.0 (then PATH=/opt/az/bin:$PATH or AADPODID_AZ=/opt/az/bin/az)",
    );
    az
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_logs_in_with_the_pods_identity_and_gets_tokens() {
    let e = env().await;
    let az = az_program();
    let p0 = e.pod("pod-0").await;
    e.assign("pod-0", "id-a", ua_spec(&e.ids[0]), "Assigned").await;
    let nmi = e.setup.start_nmi(&e.node, &[]);
    nmi.wait_active(&e.node).await;
    let arm: std::net::SocketAddr =
        e.sim.arm_https_url().trim_start_matches("https://").trim_end_matches('/').parse().unwrap();
    let arm_in_pod = p0.ns.forward(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), arm).unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let mut cmd = p0.command(&az);
        cmd.args(&args)
            .env("AZURE_CONFIG_DIR", config_dir.path())
            .env("REQUESTS_CA_BUNDLE", e.sim.ca_cert_pem_path())
            .env("AZURE_CORE_COLLECT_TELEMETRY", "false")
            .env_remove("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .stdin(Stdio::null());
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("az runs");
            let (stdout, stderr) =
                (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
            assert!(out.status.success(), "az {args:?} failed:\n{stdout}\n{stderr}");
            stdout
        }
    };
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    run(words(&format!(
        "cloud register -n AadpodidSim --skip-endpoint-discovery --endpoint-resource-manager https://{arm_in_pod}/ \
         --endpoint-active-directory https://login.microsoftonline.com \
         --endpoint-active-directory-resource-id https://management.core.windows.net/ \
         --endpoint-active-directory-graph-resource-id https://graph.windows.net/"
    )))
    .await;
    run(words("cloud set -n AadpodidSim")).await;
    let login: Value = serde_json::from_str(&run(words("login --identity -o json")).await).unwrap();
    assert_eq!(login[0]["id"], e.sim.subscription_id(), "{login}");
    assert_eq!(login[0]["user"]["type"], "servicePrincipal", "{login}");
    let token: Value =
        serde_json::from_str(&run(words("account get-access-token --resource https://vault.azure.net -o json")).await)
            .unwrap();
    let claims = jwt_claims(token["accessToken"].as_str().unwrap());
    assert_eq!(claims["appid"], e.ids[0].client_id.as_str(), "{claims}");
    assert_eq!(claims["aud"], "https://vault.azure.net");
    assert_eq!(token["tenant"], e.sim.tenant_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_mode_exceptions_host_endpoint_and_proxy() {
    let e = env().await;
    let (a, b) = (&e.ids[0], &e.ids[1]);
    let p0 = e.pod("pod-0").await;
    let p1 = e.pod("pod-1").await;
    support::cluster::bind(&e.client, e.ns.name(), ("id-a", ua_spec(a)), "pod-0").await;
    support::cluster::except(&e.client, e.ns.name(), "skip-pod-1", json!({"aadpodidbinding": "POD-1"})).await;
    let nmi =
        e.setup.start_nmi(&e.node, &["--operation-mode=managed", "--forceNamespaced", "--block-instance-metadata"]);
    nmi.wait_active(&e.node).await;

    assert_token_for(&python(&p0, &["sdk", "https://vault.azure.net"]).await, &a.client_id);
    let (status, _) = raw(&p0, &format!("{TOKEN_PATH}&client_id={}", b.client_id), true).await;
    assert_eq!(status, 404, "managed mode: only the bound identity");

    let (status, body) = raw(&p1, &format!("{TOKEN_PATH}&client_id={}", b.client_id), true).await;
    assert_eq!(status, 200, "an excepted pod gets the node's token for its client_id: {body}");
    let (status, _) = raw(&p1, TOKEN_PATH, true).await;
    assert_eq!(status, 403, "no system-assigned identity on the node: the bypass answers 403");

    let host = "http://127.0.0.1:2579/host/token/?resource=https://vault.azure.net";
    let podns = format!("podns: {}", e.ns.name());
    let out = e.node.ns.run("curl", &["-s", "-H", &podns, "-H", "podname: pod-0", host]).unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["clientid"], a.client_id.as_str());
    assert_eq!(jwt_claims(v["token"]["access_token"].as_str().unwrap())["appid"], a.client_id.as_str());

    let (status, body) = raw(&p0, "/metadata/instance?api-version=2021-02-01", true).await;
    assert_eq!((status, body.as_str()), (403, "Request blocked by AAD Pod Identity NMI\n"));
    let (status, body) = raw(&p0, "/metadata/versions", true).await;
    assert_eq!(status, 200, "proxied to the node's IMDS: {body}");
}

impl Env {
    /// A Running pod owned by ReplicaSet `replicaset` and running as `service_account`.
    async fn owned_pod(&self, name: &str, replicaset: &str, service_account: &str) -> Pod {
        let net = self.node.add_pod().unwrap();
        let owner = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
            "uid": "5d1c0b6e-0000-4000-8000-000000000001", "controller": true});
        let pod = json!({
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": {"nodeName": self.setup.node_name, "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "example.invalid/app"}]},
        });
        create_pod_from(&self.client, self.ns.name(), pod).await;
        set_pod_status(&self.client, self.ns.name(), name, "Running", &net.ip.to_string()).await;
        net
    }
}

/// The JWT's `appid` when the response is a 200 token; `None` for any other answer.
fn served_appid(status: u64, body: &str) -> Option<String> {
    (status == 200).then(|| {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("token JSON: {body}"));
        jwt_claims(v["access_token"].as_str().unwrap())["appid"].as_str().unwrap().to_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_alike_mic_with_another_service_account_gets_no_node_token() {
    let e = env().await;
    let b = &e.ids[1];
    let mic = e.owned_pod("mic-7d9f5-abcde", "mic-7d9f5", "aad-pod-id-mic-service-account").await;
    let fake = e.owned_pod("mic-lookalike-5c6b-fghij", "mic-lookalike-5c6b", "app").await;
    let mic_namespace = format!("--MICNamespace={}", e.ns.name());
    let nmi = e.setup.start_nmi(&e.node, &[&mic_namespace]);
    nmi.wait_active(&e.node).await;
    let path = format!("{TOKEN_PATH}&client_id={}", b.client_id);

    let (status, body) = raw(&mic, &path, true).await;
    assert_eq!(served_appid(status, &body).as_deref(), Some(b.client_id.as_str()), "MIC: the node's token: {body}");
    let (status, body) = raw(&fake, &path, true).await;
    assert_eq!(status, 404, "a mic-… ReplicaSet with another service account is an ordinary pod: {body}");
    assert!(!body.contains("access_token"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_ip_never_serves_the_previous_pods_identity() {
    let e = env().await;
    let (a, b) = (&e.ids[0], &e.ids[1]);
    let (ns, node) = (e.ns.name(), e.setup.node_name.as_str());
    let owned_net = e.pod("old").await;
    let (net, ip) = (&owned_net, owned_net.ip.to_string());
    e.assign("old", "id-a", ua_spec(a), "Assigned").await;
    let nmi = e.setup.start_nmi(&e.node, &[]);
    nmi.wait_active(&e.node).await;
    let (status, body) = raw(net, TOKEN_PATH, true).await;
    assert_eq!(served_appid(status, &body).as_deref(), Some(a.client_id.as_str()), "{body}");

    // Deleted: with no kubelet to confirm, it stays Terminating, Running, with its IP.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(e.client.clone(), ns);
    pods.delete("old", &kube::api::DeleteParams::default()).await.unwrap();
    let deleting = |name: &'static str| {
        aadpodid_testkit::poll_until(name, Duration::from_secs(30), move || async move {
            let (status, body) = raw(net, TOKEN_PATH, true).await;
            (status == 500).then_some(body)
        })
    };
    let body = deleting("NMI refusing the terminating pod").await.expect("a terminating pod is not served");
    assert!(body.contains("pod list is empty"), "{body}");

    // The IP goes to a new pod, which NMI sees before the kubelet reports its IP.
    let new = json!({"metadata": {"name": "new"},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "example.invalid/app"}]}});
    create_pod_from(&e.client, ns, new).await;
    e.assign("new", "id-b", ua_spec(b), "Assigned").await;
    let (status, body) = raw(net, TOKEN_PATH, true).await;
    assert_eq!(status, 500, "a retryable error, never the old pod's identity: {body}");
    set_pod_status(&e.client, ns, "new", "Running", &ip).await;
    let served = aadpodid_testkit::poll_until("the new pod served", Duration::from_secs(30), move || async move {
        let (status, body) = raw(net, TOKEN_PATH, true).await;
        assert!(status == 200 || status == 500, "{status}: {body}");
        served_appid(status, &body)
    });
    assert_eq!(served.await.expect("the new pod gets its identity"), b.client_id, "the new pod's own identity");

    // A finished pod keeps its IP in status too: the next pod with that IP is served its own.
    set_pod_status(&e.client, ns, "new", "Succeeded", &ip).await;
    deleting("NMI refusing the finished pod").await.expect("a finished pod is not served");
    e.assign("newer", "id-a", ua_spec(a), "Assigned").await;
    create_pod(&e.client, ns, "newer", node, net, "newer").await;
    let served = aadpodid_testkit::poll_until("the newer pod served", Duration::from_secs(30), move || async move {
        let (status, body) = raw(net, TOKEN_PATH, true).await;
        assert!(status == 200 || status == 500, "{status}: {body}");
        served_appid(status, &body)
    });
    assert_eq!(served.await.expect("the newer pod gets its identity"), a.client_id, "not the finished pod's");
}

/// Managed mode reads bindings and identities itself. Objects the API server takes but our
/// types cannot hold as such (an identity whose int32 `replicas` holds 2^31, a binding and an
/// exception without `spec`) must not keep NMI from becoming ready or from serving the rest,
/// and an identity edited into one stops being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_mode_serves_around_objects_our_types_cannot_hold() {
    use aadpodid_api::{AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
    use kube::api::{Patch, PatchParams};
    use support::cluster::{bind, create_without_spec, raw_api};

    let e = env().await;
    let (a, b) = (&e.ids[0], &e.ids[1]);
    let ns = e.ns.name();
    let p0 = e.pod("pod-0").await;
    let p1 = e.pod("pod-1").await;
    bind(&e.client, ns, ("id-a", ua_spec(a)), "pod-0").await;
    bind(&e.client, ns, ("id-b", ua_spec(b)), "pod-1").await;
    let identities = raw_api::<AzureIdentity>(&e.client, ns);
    let replicas = json!({"spec": {"replicas": 2_147_483_648u64}});
    identities.patch("id-b", &PatchParams::default(), &Patch::Merge(&replicas)).await.unwrap();
    create_without_spec::<AzureIdentityBinding>(&e.client, ns, "no-spec").await;
    create_without_spec::<AzurePodIdentityException>(&e.client, ns, "no-spec").await;
    let nmi = e.setup.start_nmi(&e.node, &["--operation-mode=managed", "--forceNamespaced"]);
    nmi.wait_active(&e.node).await;

    assert_token_for(&python(&p0, &["sdk", "https://vault.azure.net"]).await, &a.client_id);
    assert_token_for(&python(&p1, &["sdk", "https://vault.azure.net"]).await, &b.client_id);
    let log = nmi.log_text();
    let skipped =
        |kind: &str| log.lines().any(|l| l.contains("cannot be decoded") && l.contains(kind) && l.contains("no-spec"));
    assert!(skipped("AzureIdentityBinding") && skipped("AzurePodIdentityException"), "{log}");

    identities.patch("id-a", &PatchParams::default(), &Patch::Merge(&json!({"spec": null}))).await.unwrap();
    let refused = aadpodid_testkit::poll_until("id-a no longer served", Duration::from_secs(60), || async {
        let (status, _) = raw(&p0, TOKEN_PATH, true).await;
        (status != 200).then_some(status)
    });
    assert_eq!(refused.await.expect("the edited identity leaves NMI's cache"), 404);
    assert_token_for(&python(&p1, &["sdk", "https://vault.azure.net"]).await, &b.client_id);
}
