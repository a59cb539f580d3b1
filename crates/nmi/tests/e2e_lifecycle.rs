//! NMI must never fail open: from its start to its exit, a pod's request to 169.254.169.254 is
//! answered by NMI (or refused), never by the node's IMDS, which hands any identity on the
//! node to whoever asks. The `nmi` binary in a node namespace with real iptables, the real API
//! server (testkit), the simulator's IMDS behind a tap that records which sources reach it,
//! pods in their own namespaces.
//!
//! Needs root, `ip`, `iptables`, `curl` and Python 3 with azure-identity.

mod support;

use std::time::{Duration, Instant};

use aadpodid_api::AzureIdentitySpec;
use aadpodid_azure_sim::seed::{self, Seed};
use aadpodid_azure_sim::{IdentityInfo, NodeRef, RunningSim, SimConfig, Simulator};
use aadpodid_nmi::gate::NOT_READY_BODY;
use aadpodid_nmi::iptables::{CHAIN, Rules};
use aadpodid_testkit::TempNamespace;
use aadpodid_testkit::netns::{IMDS_IP, Node, Pod};
use aadpodid_testkit::require_root;
use serde_json::Value;
use support::cluster::{Nmi, NodeSetup, assign, create_pod, prepare_node};
use support::lifecycle::{HeldRelay, ImdsTap, Prober, Reply, get};
use support::{jwt_claims, require_tool};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/imds_client.py");
const OWN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

struct Env {
    client: kube::Client,
    ns: TempNamespace,
    _sim: RunningSim,
    ids: Vec<IdentityInfo>,
    node: Node,
    setup: NodeSetup,
    tap: ImdsTap,
}

/// A node whose VMSS carries two identities, `pod-0` with `id-a` assigned.
async fn env() -> (Env, Pod) {
    require_root();
    require_tool("ip", &["-V"], "apt-get install -y iproute2");
    require_tool("iptables", &["--version"], "apt-get install -y iptables");
    require_tool("curl", &["--version"], "apt-get install -y curl");
    require_tool("python3", &["-c", "import azure.identity"], "pip install -r tests/python/requirements.txt");
    let cp = aadpodid_testkit::shared();
    let client = cp.client();
    aadpodid_testkit::install_crds(&client).await.expect("CRDs install");
    let ns = TempNamespace::create(&client, "nmi-life").await.expect("namespace");
    let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
    let seed = Seed::parse(
        r#"{"identities": [{"resourceGroup": "rg", "name": "id-a"}, {"resourceGroup": "rg", "name": "id-b"}],
            "vmss": [{"resourceGroup": "rg", "name": "pool", "instances": 1, "userAssignedIdentities": ["id-a", "id-b"]}]}"#,
    )
    .unwrap();
    let ids = seed::apply(&sim, &seed).unwrap();
    let node = Node::create().expect("node namespace");
    let node_ref = NodeRef::vmss_instance("pool", 0).in_resource_group("rg");
    let imds = sim.serve_imds_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), node_ref).unwrap();
    let tap = ImdsTap::start(&node, imds.addr());
    let setup = prepare_node(&node, cp.kubeconfig_path(), cp.server_url(), &sim.aad_https_url(), sim.ca_cert_pem());
    let env = Env { client, ns, _sim: sim, ids, node, setup, tap };
    let pod = env.node.add_pod().unwrap();
    create_pod(&env.client, env.ns.name(), "pod-0", &env.setup.node_name, &pod, "pod-0").await;
    let spec = AzureIdentitySpec {
        client_id: Some(env.ids[0].client_id.clone()),
        resource_id: Some(env.ids[0].id.clone()),
        ..Default::default()
    };
    assign(&env.client, env.ns.name(), "pod-0", &env.setup.node_name, ("id-a", spec), "Assigned").await;
    (env, pod)
}

impl Env {
    /// Starts `nmi` with `flags`; no wait for an identity that is not the pod's, so refusals
    /// are immediate.
    fn start(&self, flags: &[&str]) -> Nmi {
        let mut all = vec!["--retry-attempts-for-created=0"];
        all.extend_from_slice(flags);
        self.setup.start_nmi(&self.node, &all)
    }

    /// A token request naming `id-b`, which is on the node but not the pod's: NMI refuses it,
    /// the node's IMDS would hand it out.
    fn other(&self) -> String {
        format!("{OWN}&client_id={}", self.ids[1].client_id)
    }

    fn expected_rules(&self) -> Vec<String> {
        Rules::new(IMDS_IP, 80, std::net::Ipv4Addr::LOCALHOST, 2579).expected_listing()
    }

    fn rules_in_place(&self) -> bool {
        let chain = self.node.iptables_list(CHAIN).map(|l| l.lines().map(str::to_owned).collect::<Vec<_>>());
        let jump = self.node.iptables_list("PREROUTING").is_ok_and(|l| l.contains("-j aad-metadata"));
        chain.is_ok_and(|c| c == self.expected_rules()) && jump
    }
}

/// azure-identity's `ManagedIdentityCredential` in `pod` (a blocking child process).
fn python_sdk(pod: &Pod) -> impl Future<Output = Value> + use<> {
    let mut cmd = pod.command("python3");
    cmd.arg(CLIENT).args(["sdk", "https://vault.azure.net"]).env_remove("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    cmd.stdin(std::process::Stdio::null());
    async move {
        let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("not JSON: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The `appid` of the token in a 200 reply.
fn appid(reply: &Reply) -> String {
    let Reply::Http { status: 200, body, .. } = reply else { panic!("no token: {reply:?}") };
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    jwt_claims(v["access_token"].as_str().unwrap())["appid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_the_watches_sync_pods_get_503_and_never_the_node_imds() {
    let (e, pod) = env().await;
    let relay = HeldRelay::start(&e.node.ns, e.setup.api_addr);
    let kubeconfig = format!("--kubeconfig={}", e.setup.kubeconfig_via(relay.addr).display());
    let nmi = e.start(&[&kubeconfig]);
    aadpodid_testkit::poll_until("NMI's watches dialling the API server", Duration::from_secs(30), || async {
        (relay.accepted() > 0).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}; log:\n{}", nmi.log_text()));

    for path in [OWN, &e.other(), "/metadata/instance?api-version=2021-02-01"] {
        let reply = get(&pod, path).await;
        let want = Reply::Http { status: 503, retry_after: Some("5".into()), body: NOT_READY_BODY.into() };
        assert_eq!(reply, want, "{path} before the caches sync; log:\n{}", nmi.log_text());
    }
    assert_eq!(nmi.healthz(&e.node), "Not Active", "Active only once the caches have synced");
    assert!(e.tap.hits_from(pod.ip).is_empty(), "the pod reached the node's IMDS while NMI was starting");

    let not_ready = || nmi.log_text().matches("Not ready: caches not synced").count();
    let before = not_ready();
    let sdk = tokio::spawn(python_sdk(&pod));
    aadpodid_testkit::poll_until("the SDK's first request answered 503", Duration::from_secs(30), || async {
        (not_ready() > before).then_some(())
    })
    .await
    .unwrap();
    relay.release();
    nmi.wait_active(&e.node).await;
    let out = sdk.await.unwrap();
    assert_eq!(out["ok"], true, "the SDK retries through the 503s: {out}");
    assert_eq!(jwt_claims(out["token"].as_str().unwrap())["appid"], e.ids[0].client_id.as_str());
    assert_eq!(appid(&get(&pod, OWN).await), e.ids[0].client_id, "once synced, the pod's own identity");
    assert_eq!(get(&pod, &e.other()).await.status(), Some(404), "and never another");
    assert!(e.tap.hits_from(pod.ip).is_empty(), "the pod never reached the node's IMDS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_answers_through_the_termination_wait_and_removes_the_rules_on_exit() {
    let (e, pod) = env().await;
    // The loop below asks as fast as NMI answers: far above a pod's request rate.
    let nmi = e.start(&["--termination-wait-sec=6", "--pod-requests-per-second=0"]);
    nmi.wait_active(&e.node).await;
    nmi.signal("TERM");
    let signalled = Instant::now();
    aadpodid_testkit::poll_until("NMI handling SIGTERM", Duration::from_secs(5), || async {
        nmi.log_text().contains("Shutting down").then_some(())
    })
    .await
    .unwrap();

    let mut answered = 0;
    while signalled.elapsed() < Duration::from_secs(3) {
        assert_eq!(appid(&get(&pod, OWN).await), e.ids[0].client_id, "log:\n{}", nmi.log_text());
        assert_eq!(get(&pod, &e.other()).await.status(), Some(404), "NMI, not the node's IMDS, answers");
        answered += 1;
    }
    assert!(answered > 0 && nmi.running(&e.node), "requests were made during the wait");
    assert!(e.tap.hits_from(pod.ip).is_empty(), "the pod reached the node's IMDS during the termination wait");

    let log = nmi.log.clone();
    let status = nmi.wait_exit(&e.node).await;
    assert!(status.success(), "clean exit; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    assert!(e.node.iptables_list(CHAIN).is_err(), "chain removed on exit");
    assert!(!e.node.iptables_list("PREROUTING").unwrap().contains("aad-metadata"), "jump removed on exit");
    assert_eq!(get(&pod, &e.other()).await.status(), Some(200), "without NMI or rules, the node's IMDS answers");
    assert_eq!(e.tap.hits_from(pod.ip).len(), 1, "and the tap sees it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_rules_on_exit_refuses_pods_after_exit() {
    let (e, pod) = env().await;
    let nmi = e.start(&["--keep-rules-on-exit"]);
    nmi.wait_active(&e.node).await;
    assert_eq!(appid(&get(&pod, OWN).await), e.ids[0].client_id);
    let log = nmi.log.clone();
    let status = nmi.signal_and_wait(&e.node, "TERM").await;
    assert!(status.success(), "clean exit; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());

    assert!(e.rules_in_place(), "rules left in place");
    assert_eq!(get(&pod, OWN).await, Reply::Refused, "fail closed: nothing listens where the rules point");
    assert_eq!(get(&pod, &e.other()).await, Reply::Refused);
    assert!(e.tap.hits_from(pod.ip).is_empty(), "the pod never reached the node's IMDS");
}

/// What one NMI-to-NMI swap looked like from a pod probing every 5 ms.
struct Swap {
    replies: Vec<(Instant, Reply)>,
    hits: Vec<Instant>,
}

impl Swap {
    /// First to last connection of the pod that reached the node's IMDS.
    fn open_window(&self) -> Duration {
        match (self.hits.first(), self.hits.last()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }

    fn count(&self, pred: impl Fn(&Reply) -> bool) -> usize {
        self.replies.iter().filter(|(_, r)| pred(r)).count()
    }
}

/// Stops one NMI (termination wait 0) and starts the next at once, as a DaemonSet rolling
/// update does (minus the kubelet's own delay), probing from `pod` throughout.
async fn swap(e: &Env, pod: &Pod, flags: &[&str]) -> Swap {
    let first = e.start(flags);
    first.wait_active(&e.node).await;
    let hits_before = e.tap.hits_from(pod.ip).len();
    let prober = Prober::start(pod, &e.other(), Duration::from_millis(5));
    aadpodid_testkit::poll_until("probes under way", Duration::from_secs(10), || async {
        (prober.made() >= 10).then_some(())
    })
    .await
    .unwrap();
    assert!(first.signal_and_wait(&e.node, "TERM").await.success());
    let second = e.start(flags);
    second.wait_active(&e.node).await;
    let replies = prober.stop().await;
    let hits = e.tap.hits_from(pod.ip).split_off(hits_before);
    assert!(second.signal_and_wait(&e.node, "TERM").await.success());
    Swap { replies, hits }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_reaches_the_node_imds_only_between_exit_and_start_and_never_with_kept_rules() {
    let (e, pod) = env().await;
    let open = swap(&e, &pod, &[]).await;
    let leaked = open.count(|r| r.status() == Some(200));
    eprintln!(
        "rules removed at exit: {} probes, {} reached the node's IMDS over {:?}, {} refused, {} answered by NMI",
        open.replies.len(),
        open.hits.len(),
        open.open_window(),
        open.count(|r| *r == Reply::Refused),
        open.count(|r| matches!(r.status(), Some(404 | 503))),
    );
    assert_eq!(leaked, open.hits.len(), "every probe that got a token went around NMI");
    assert!(open.open_window() < Duration::from_secs(2), "the gap is process exit to start: {:?}", open.open_window());

    let closed = swap(&e, &pod, &["--keep-rules-on-exit"]).await;
    eprintln!(
        "rules kept at exit: {} probes, {} reached the node's IMDS, {} refused, {} cut at exit, {} answered by NMI",
        closed.replies.len(),
        closed.hits.len(),
        closed.count(|r| *r == Reply::Refused),
        closed.count(|r| matches!(r, Reply::Failed(_))),
        closed.count(|r| matches!(r.status(), Some(404 | 503))),
    );
    assert!(closed.hits.is_empty(), "with the rules kept, no probe reaches the node's IMDS");
    // A connection the old NMI had accepted (or queued) when it exited is cut: fail closed too.
    let stray: Vec<_> =
        closed.replies.iter().filter(|(_, r)| matches!(r.status(), Some(s) if s != 404 && s != 503)).collect();
    assert!(stray.is_empty(), "only NMI's refusals and 503s, refused or cut connections: {stray:?}");
}
