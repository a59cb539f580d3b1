//! Two MIC replicas against a real (audited) kube-apiserver and the Azure simulator, one of them
//! behind a relay that can partition it from the API server. Each replica has its own Azure
//! credential and user agent, so the simulator and the audit log tell their writes apart.

mod support;

use std::time::{Duration, Instant, SystemTime};

use aadpodid_testkit::ControlPlane;
use support::relay::Relay;
use support::{DEADLINE, World, eventually};

/// The renew deadline that follows from the 4 s lease every test MIC runs with (half of it).
const RENEW_DEADLINE: Duration = Duration::from_secs(2);

/// API-server writes (create, update, patch, delete) received from a user agent containing
/// `agent` at or after `since`, from the audit log: `(verb, resource, received)`.
fn api_writes_by(cp: &ControlPlane, agent: &str, since: SystemTime) -> Vec<(String, String, String)> {
    let log = std::fs::read_to_string(cp.audit_log_path()).unwrap_or_default();
    let since = k8s_openapi::jiff::Timestamp::try_from(since).expect("timestamp");
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| e["userAgent"].as_str().is_some_and(|ua| ua.contains(agent)))
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete")))
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .is_some_and(|t| t >= since)
        })
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (s(&e["verb"]), s(&e["objectRef"]["resource"]), s(&e["requestReceivedTimestamp"]))
        })
        .collect()
}

/// The API server's address, from its URL.
fn apiserver_addr(cp: &ControlPlane) -> std::net::SocketAddr {
    let url = url_host_port(cp.server_url());
    url.parse().expect("apiserver address")
}

fn url_host_port(url: &str) -> &str {
    url.trim_start_matches("https://").trim_end_matches('/')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_stops_writing_before_the_standby_takes_over() {
    let cp = ControlPlane::start_audited().await.expect("audited control plane");
    let w = World::new_on(&cp, "partition").await;
    let nodes = w.vmss_nodes("ptnpool", 1).await;
    let first_id = w.identity("first").await;
    let second_id = w.identity("second").await;
    w.binding("b1", "first", "first").await;
    w.binding("b2", "second", "second").await;

    let relay = Relay::start(apiserver_addr(&cp)).await;
    let via_relay = w.kubeconfig_via(relay.addr);
    let (cred_a, cred_b) = (w.own_credential("mic-a-sp"), w.own_credential("mic-b-sp"));
    // The first replica re-adds identities missing on Azure every second: after the partition
    // that is the write a replica still believing it leads would make.
    let argv_a = w.argv_with(
        "mic-a",
        &via_relay,
        &cred_a,
        &["--custom-user-agent=replica-a", "--identity-assignment-reconcile-interval=1s"],
    );
    let a = w.start_mic_argv(argv_a);
    eventually("replica a leading", DEADLINE, || async {
        (a.healthz().await.as_deref() == Some("Active")).then_some(())
    })
    .await;
    let argv_b = w.argv_with("mic-b", &w.kubeconfig, &cred_b, &["--custom-user-agent=replica-b"]);
    let b = w.start_mic_argv(argv_b);
    eventually("replica b standing by", DEADLINE, || async { b.healthz().await }).await;
    w.pod("before", &nodes[0], "first").await;
    w.wait_assigned(&w.assigned_name("before", "first")).await;
    assert!(w.vmss_has("ptnpool", &first_id));
    assert!(w.sim.counters().caller_writes("mic-a-sp") >= 1, "replica a made the assignment");
    assert_eq!(w.sim.counters().caller_writes("mic-b-sp"), 0, "replica b stood by");

    // Partition replica a from the API server (not from Azure).
    let frozen_at = SystemTime::now();
    let frozen = Instant::now();
    relay.freeze();
    let a_deadline = frozen + RENEW_DEADLINE;
    eventually("replica b takes over", DEADLINE, || async {
        (b.healthz().await.as_deref() == Some("Active")).then_some(())
    })
    .await;
    assert!(Instant::now() >= a_deadline, "b cannot lead before a's renew deadline");
    let a_arm_writes = w.sim.counters().caller_writes("mic-a-sp");

    // Work only a leader would do: an identity detached behind MIC's back (replica a's
    // reconciler would re-add it within a second) and new pods needing another identity,
    // before and after the partition heals.
    w.detach_all_by_hand("ptnpool").await;
    w.pod("after", &nodes[0], "second").await;
    w.wait_assigned(&w.assigned_name("after", "second")).await;
    assert!(w.vmss_has("ptnpool", &second_id), "replica b converged");
    let delivered = relay.bytes_to_server();
    relay.unfreeze();
    w.pod("healed", &nodes[0], "second").await;
    w.wait_assigned(&w.assigned_name("healed", "second")).await;

    assert_eq!(
        w.sim.counters().caller_writes("mic-a-sp"),
        a_arm_writes,
        "the partitioned replica wrote to ARM after its renew deadline"
    );
    assert!(!w.vmss_has("ptnpool", &first_id), "nobody re-added the detached identity");
    assert_eq!(relay.bytes_to_server(), delivered, "nothing reached the API server from the old leader once healed");
    let late = api_writes_by(&cp, "replica-a", frozen_at + RENEW_DEADLINE);
    assert!(late.is_empty(), "API writes by the partitioned replica after its renew deadline: {late:?}");
    let by_b = api_writes_by(&cp, "replica-b", frozen_at);
    assert!(by_b.iter().any(|(_, r, _)| r == "azureassignedidentities"), "replica b wrote: {by_b:?}");
    // The old leader stopped on losing leadership, as the original exits.
    let outcome = tokio::time::timeout(Duration::from_secs(10), a.join()).await.expect("replica a stopped");
    let error = format!("{:#}", outcome.expect_err("replica a stops with an error"));
    assert!(error.contains("lost leader lease"), "{error}");
    b.stop().await;
}
