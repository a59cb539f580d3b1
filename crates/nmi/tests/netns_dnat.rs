//! NMI's request path end to end on a real network path, without an API server: a node
//! namespace with the simulator's IMDS on 169.254.169.254:80 and NMI's iptables rules, pods
//! in their own namespaces calling 169.254.169.254 with real clients, NMI (in-process, its
//! listener inside the node) answering from a fixed pod/identity table.
//!
//! Needs root, `ip`, `iptables`, Python 3 with `azure-identity` (tests/python/requirements.txt).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aadpodid_api::{AssignedIdentityState, AzureIdentitySpec};
use aadpodid_azure::HttpOptions;
use aadpodid_azure::token::{AadClient, ImdsClient};
use aadpodid_azure_sim::seed::{self, Seed};
use aadpodid_azure_sim::{IdentityInfo, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_nmi::iptables::{self, Iptables, Rules};
use aadpodid_nmi::metrics::Metrics;
use aadpodid_nmi::select::RetryPolicy;
use aadpodid_nmi::server::{AppState, Config};
use aadpodid_nmi::tokens::{AzureTokens, TokenSettings};
use aadpodid_testkit::netns::{IMDS_IP, Node, Pod};
use aadpodid_testkit::require_root;
use serde_json::Value;
use support::{FixedNode, FixedSecrets, jwt_claims, require_tool};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/imds_client.py");
const NMI_PORT: u16 = 2579;

struct World {
    sim: RunningSim,
    node: Node,
    table: Arc<FixedNode>,
    ids: Vec<IdentityInfo>,
    pods: Vec<Pod>,
}

fn check_tools() {
    require_root();
    require_tool("ip", &["-V"], "apt-get install -y iproute2");
    require_tool("iptables", &["--version"], "apt-get install -y iptables");
    require_tool("python3", &["-c", "import azure.identity"], "pip install -r tests/python/requirements.txt");
}

/// Node + simulator + NMI + `pods` pod namespaces (pod i is `apps/pod-i`).
async fn world(pods: usize) -> World {
    world_with(pods, Config::default()).await
}

/// [`world`] with NMI's flags taken from `base` (its IMDS address and retries are the test's).
async fn world_with(pods: usize, base: Config) -> World {
    check_tools();
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator starts");
    let seed = Seed::parse(
        r#"{"identities": [{"resourceGroup": "rg", "name": "id-a"}, {"resourceGroup": "rg", "name": "id-b"}],
            "vmss": [{"resourceGroup": "rg", "name": "pool", "instances": 1, "userAssignedIdentities": ["id-a", "id-b"]}]}"#,
    )
    .expect("seed parses");
    let ids = seed::apply(&sim, &seed).expect("seed applies");
    let node = Node::create().expect("node namespace");
    let node_ref = NodeRef::vmss_instance("pool", 0).in_resource_group("rg");
    sim.serve_imds(node.imds_listener().expect("bind IMDS in node"), node_ref.clone()).expect("node IMDS");
    let host_imds = sim.serve_imds_on(SocketAddr::from(([127, 0, 0, 1], 0)), node_ref).expect("host IMDS");
    let table = Arc::new(FixedNode::default());
    start_nmi(&sim, &node, table.clone(), &host_imds.url(), base).await;
    let pods: Vec<Pod> = (0..pods).map(|_| node.add_pod().expect("pod namespace")).collect();
    for (i, pod) in pods.iter().enumerate() {
        table.add_pod("apps", &format!("pod-{i}"), IpAddr::V4(pod.ip));
    }
    World { sim, node, table, ids, pods }
}

/// NMI's router served inside the node namespace on 127.0.0.1:2579, plus its rules there.
/// Its own IMDS calls go to the simulator on the host's loopback (as host-network calls would).
async fn start_nmi(sim: &RunningSim, node: &Node, table: Arc<FixedNode>, imds_url: &str, base: Config) {
    let metrics = Metrics::new().unwrap();
    let aad = AadClient::new(&HttpOptions::with_root_ca_pem(sim.ca_cert_pem().as_bytes().to_vec())).unwrap();
    let secrets = Arc::new(FixedSecrets::default());
    let tokens =
        AzureTokens::new(ImdsClient::new(imds_url).unwrap(), aad, secrets, metrics.clone(), TokenSettings::default());
    let host = imds_url.trim_start_matches("http://").to_owned();
    let config = Config {
        retry: RetryPolicy { created: 2, assigned: 2, interval_secs: 0 },
        retry_interval: Duration::from_millis(100),
        imds_base: imds_url.to_owned(),
        imds_host: host,
        ..base
    };
    let state = AppState::new(config, table, Arc::new(tokens), metrics);
    let listener = node.ns.bind(SocketAddr::from(([127, 0, 0, 1], NMI_PORT))).expect("bind NMI in node");
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let limits = state.config.limits.clone();
    tokio::spawn(aadpodid_nmi::listener::serve(listener, aadpodid_nmi::server::router(state), limits));
    rules().ensure(&Iptables::in_netns(node.ns.name())).await.expect("rules install");
}

fn rules() -> Rules {
    Rules::new(IMDS_IP, 80, Ipv4Addr::LOCALHOST, NMI_PORT)
}

fn ua_spec(id: &IdentityInfo) -> AzureIdentitySpec {
    AzureIdentitySpec {
        type_: Some(0),
        client_id: Some(id.client_id.clone()),
        resource_id: Some(id.id.clone()),
        ..Default::default()
    }
}

/// Runs the Python client in `ns` (a blocking child process, off the runtime's threads).
async fn python(ns: &aadpodid_testkit::netns::Namespace, args: &[&str], source: Option<Ipv4Addr>) -> Value {
    let mut cmd = ns.command("python3");
    cmd.arg(CLIENT).args(args).env_remove("AZURE_POD_IDENTITY_AUTHORITY_HOST").env_remove("MSI_ENDPOINT");
    if let Some(src) = source {
        cmd.env("SOURCE_ADDRESS", src.to_string());
    }
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("client output is not JSON: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

async fn raw(pod: &Pod, path: &str, headers: &[&str]) -> (u16, String) {
    let mut args = vec!["raw", path];
    args.extend_from_slice(headers);
    let out = python(&pod.ns, &args, None).await;
    assert_eq!(out["ok"], true, "{out}");
    (out["status"].as_u64().unwrap() as u16, out["body"].as_str().unwrap().to_owned())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_in_pods_gets_each_pods_own_identity_through_the_dnat() {
    let w = world(2).await;
    let (a, b) = (&w.ids[0], &w.ids[1]);
    w.table.assign(("apps", "pod-0"), AssignedIdentityState::Assigned, "id-a", ua_spec(a));
    w.table.assign(("apps", "pod-1"), AssignedIdentityState::Assigned, "id-b", ua_spec(b));

    for (pod, expected, client_id) in
        [(&w.pods[0], a, None), (&w.pods[0], a, Some(&a.client_id)), (&w.pods[1], b, None)]
    {
        let mut args = vec!["sdk", "https://vault.azure.net"];
        args.extend(client_id.map(String::as_str));
        let out = python(&pod.ns, &args, None).await;
        assert_eq!(out["ok"], true, "{out}");
        let claims = jwt_claims(out["token"].as_str().unwrap());
        assert_eq!(claims["appid"], expected.client_id.as_str(), "{claims}");
        assert_eq!(claims["oid"], expected.principal_id.as_str());
        assert_eq!(claims["aud"], "https://vault.azure.net");
        assert!(out["expires_on"].as_u64().unwrap() > now() + 3600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_authentication_shaped_requests_get_every_field_as_a_string() {
    let w = world(1).await;
    let a = &w.ids[0];
    w.table.assign(("apps", "pod-0"), AssignedIdentityState::Assigned, "id-a", ua_spec(a));
    let pod = &w.pods[0];

    let (status, body) = raw(pod, "/metadata/identity/oauth2/token", &[]).await;
    assert_eq!((status, body.as_str()), (400, aadpodid_nmi::errors::METADATA_HEADER_BODY), "the probe is answered");

    let path = "/metadata/identity/oauth2/token?resource=https://database.windows.net/&api-version=2018-02-01";
    let (status, body) = raw(pod, path, &["Metadata=true"]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    for field in ["access_token", "refresh_token", "expires_in", "expires_on", "not_before", "resource", "token_type"] {
        assert!(v[field].is_string(), "{field} must be a string: {v}");
    }
    assert_eq!(v["resource"], "https://database.windows.net/");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["client_id"], a.client_id.as_str());
    let expires_on: u64 = v["expires_on"].as_str().unwrap().parse().unwrap();
    let claims = jwt_claims(v["access_token"].as_str().unwrap());
    assert_eq!(claims["exp"].as_u64(), Some(expires_on));
    assert_eq!(claims["appid"], a.client_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_original_status_and_no_token() {
    let w = world(3).await;
    let (a, b) = (&w.ids[0], &w.ids[1]);
    w.table.assign(("apps", "pod-0"), AssignedIdentityState::Assigned, "id-a", ua_spec(a));
    w.table.assign(("apps", "pod-1"), AssignedIdentityState::Assigned, "id-b", ua_spec(b));
    let token_path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

    let (status, body) = raw(&w.pods[0], token_path, &[]).await;
    assert_eq!(status, 400, "no Metadata header: {body}");
    let (status, body) = raw(&w.pods[2], token_path, &["Metadata=true"]).await;
    assert_eq!(status, 404, "pod without identity: {body}");
    assert!(body.contains("in CREATED state failed after 2 attempts"), "{body}");
    let other = format!("{token_path}&client_id={}", b.client_id);
    let (status, body) = raw(&w.pods[0], &other, &["Metadata=true"]).await;
    assert_eq!(status, 404, "another pod's identity: {body}");
    assert!(!body.contains("access_token") && !body.contains("eyJ"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_source_addresses_get_no_token() {
    let w = world(2).await;
    w.table.assign(("apps", "pod-1"), AssignedIdentityState::Assigned, "id-b", ua_spec(&w.ids[1]));
    let token_path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    let attacker = &w.pods[0];
    let unknown = Ipv4Addr::new(10, 244, 0, 200);
    attacker.add_address(unknown).unwrap();
    let out = python(&attacker.ns, &["raw", token_path, "Metadata=true"], Some(unknown)).await;
    assert!(out["ok"] == false || out["status"] != 200, "an address no pod has: {out}");
    assert!(!out.to_string().contains("access_token"));

    let victim = w.pods[1].ip;
    attacker.add_address(victim).unwrap();
    let out = python(&attacker.ns, &["raw", token_path, "Metadata=true"], Some(victim)).await;
    assert!(out["ok"] == false || out["status"] != 200, "another pod's address must not get its token: {out}");
    assert!(!out.to_string().contains("access_token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_traffic_reaches_imds_directly() {
    let w = world(1).await;
    let b = &w.ids[1];
    let path = format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&client_id={}",
        b.client_id
    );
    let out = python(&w.node.ns, &["raw", &path, "Metadata=true"], None).await;
    assert_eq!(out["status"], 200, "node IMDS answers host-network callers: {out}");
    let (status, _) = raw(&w.pods[0], &path, &["Metadata=true"]).await;
    assert_eq!(status, 404, "pods go through NMI, which refuses an identity that is not theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_the_originals_never_duplicated_repaired_and_removed() {
    let w = world(0).await;
    let ipt = Iptables::in_netns(w.node.ns.name());
    let listing = w.node.iptables_list(iptables::CHAIN).unwrap();
    assert_eq!(listing.lines().collect::<Vec<_>>(), rules().expected_listing());
    assert!(!rules().ensure(&ipt).await.unwrap(), "a second pass changes nothing");
    let prerouting = w.node.iptables_list("PREROUTING").unwrap();
    assert_eq!(prerouting.lines().filter(|l| l.contains("-j aad-metadata")).count(), 1, "{prerouting}");
    assert!(prerouting.lines().nth(1).unwrap().ends_with("-j aad-metadata"), "jump at position 1: {prerouting}");

    let tamper = w.node.ns.run("iptables", &["-w", "-t", "nat", "-I", "aad-metadata", "1", "-j", "RETURN"]).unwrap();
    assert!(tamper.status.success());
    assert!(rules().ensure(&ipt).await.unwrap(), "an altered chain is repaired");
    assert_eq!(w.node.iptables_list(iptables::CHAIN).unwrap().lines().collect::<Vec<_>>(), rules().expected_listing());

    iptables::cleanup(&ipt).await.unwrap();
    assert!(w.node.iptables_list(iptables::CHAIN).is_err(), "chain removed");
    assert!(!w.node.iptables_list("PREROUTING").unwrap().contains("aad-metadata"), "jump removed");
    drop(w.sim);
}

const VAULT_TOKEN: &str = "?api-version=2018-02-01&resource=https://vault.azure.net";

/// Escaped, other-case and slash-escaped spellings of the token path, sent by a pod through the
/// DNAT: NMI serves each as the token endpoint (the pod's own identity only) or refuses it, so
/// the node's IMDS (which reads them all as its token path) never sees one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_token_paths_never_reach_the_node_imds() {
    let w = world(1).await;
    let (a, b) = (&w.ids[0], &w.ids[1]);
    w.table.assign(("apps", "pod-0"), AssignedIdentityState::Assigned, "id-a", ua_spec(a));
    let pod = &w.pods[0];
    for (path, expected) in [
        ("/metadata/identity/oauth2/%74oken", 404),
        ("/metadata%2Fidentity%2Foauth2%2Ftoken", 404),
        ("/METADATA/identity/oauth2/tok%65n/", 404),
        ("/metadata/Identity/oauth2/token", 400),
        ("/metadata%5Cidentity%5Coauth2%5Ctoken", 400),
        ("/metadata/identity/oauth2/%u0074oken", 400),
        ("/metadata./identity/oauth2/token", 400),
    ] {
        let target = format!("{path}{VAULT_TOKEN}&client_id={}", b.client_id);
        let (status, body) = raw(pod, &target, &["Metadata=true"]).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(!body.contains("access_token") && !body.contains("eyJ"), "{path}: {body}");
    }
    let (status, body) = raw(pod, &format!("/metadata/identity/oauth2/%74oken{VAULT_TOKEN}"), &["Metadata=true"]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwt_claims(v["access_token"].as_str().unwrap())["appid"], a.client_id.as_str(), "the pod's own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_block_covers_encoded_spellings() {
    let w = world_with(1, Config { block_instance_metadata: true, ..Config::default() }).await;
    let pod = &w.pods[0];
    for path in ["/metadata/instance", "/metadata/%69nstance", "/metadata%2Finstance", "/metadata/INSTANCE"] {
        let (status, body) = raw(pod, &format!("{path}?api-version=2021-02-01"), &["Metadata=true"]).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(!body.contains("compute"), "{path}: {body}");
    }
    let (status, body) = raw(pod, "/metadata/versions", &["Metadata=true"]).await;
    assert_eq!(status, 200, "other paths still reach IMDS: {body}");
}

/// A request relayed by a proxy (SSRF through an application in the pod) is refused with 400, as
/// the real IMDS refuses it, on the proxied paths and on the token path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_are_refused_as_imds_refuses_them() {
    let w = world(1).await;
    w.table.assign(("apps", "pod-0"), AssignedIdentityState::Assigned, "id-a", ua_spec(&w.ids[0]));
    let pod = &w.pods[0];
    let instance = "/metadata/instance?api-version=2021-02-01";
    let token = format!("/metadata/identity/oauth2/token{VAULT_TOKEN}");
    assert_eq!(raw(pod, instance, &["Metadata=true"]).await.0, 200, "reachable without the header");
    for (path, header) in [
        (instance, "X-Forwarded-For=10.1.2.3"),
        (instance, "Forwarded=for=10.1.2.3"),
        (token.as_str(), "X-Forwarded-For=10.1.2.3"),
    ] {
        let (status, body) = raw(pod, path, &["Metadata=true", header]).await;
        assert_eq!((status, body.as_str()), (400, aadpodid_nmi::errors::FORWARDED_BODY), "{path} {header}");
    }
}
