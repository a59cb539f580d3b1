//! MIC against a real kube-apiserver and the Azure simulator. Tests run one at a time (MIC
//! watches every namespace); each starts from a clean cluster and a fresh simulator.

mod support;

use std::time::Duration;

use aadpodid_azure_sim::{Face, Fault, FaultKind, NodeRef};
use support::{DEADLINE, World, apiserver_writes, eventually, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walkthrough_assigns_the_identity_on_the_vmss_and_imds_issues_its_token() {
    let _serial = serial().await;
    let w = World::new("seed").await;
    let nodes = w.vmss_nodes("seedpool", 2).await;
    let id = w.identity("myidentity").await;
    w.binding("myidentity-binding", "myidentity", "myapp").await;
    w.pod("demo", &nodes[0], "myapp").await;
    let mic = w.start_mic("mic-seed", &[]);

    let name = w.assigned_name("demo", "myidentity");
    assert_eq!(name, "demo-mic-seed-myidentity");
    w.wait_assigned(&name).await;
    assert!(w.vmss_has("seedpool", &id), "the scale set carries the identity");
    let a = w.assigned().await.pop().expect("one assigned identity");
    assert_eq!(a.metadata.labels.as_ref().and_then(|l| l.get("nodename")).map(String::as_str), Some(nodes[0].as_str()));
    assert_eq!(
        a.metadata.finalizers.as_deref(),
        Some(&["azureassignedidentity.finalizers.aadpodidentity.k8s.io".to_owned()][..])
    );
    assert_eq!(a.status.as_ref().and_then(|s| s.available_replicas), Some(1));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let imds = w.sim.serve_imds(listener, NodeRef::vmss_instance("seedpool", 0)).expect("imds");
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/&client_id={}",
        imds.url(),
        id.client_id
    );
    let resp = reqwest::Client::new().get(url).header("Metadata", "true").send().await.expect("imds call");
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    let body: serde_json::Value = resp.json().await.expect("token json");
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    eventually("healthz Active", DEADLINE, || async {
        (mic.healthz().await.as_deref() == Some("Active")).then_some(())
    })
    .await;
    let additions = mic.metric("aadpodidentity_assigned_identity_addition_count").await;
    assert_eq!(additions, Some(1.0));
    mic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_deletion_detaches_from_the_vmss_only_when_no_other_pod_there_needs_it() {
    let _serial = serial().await;
    let w = World::new("podvmss").await;
    let nodes = w.vmss_nodes("delpool", 2).await;
    let id = w.identity("shared").await;
    w.binding("b", "shared", "app").await;
    w.pod("one", &nodes[0], "app").await;
    w.pod("two", &nodes[1], "app").await;
    let _mic = w.start_mic("mic-podvmss", &[]);
    let (one, two) = (w.assigned_name("one", "shared"), w.assigned_name("two", "shared"));
    w.wait_assigned(&one).await;
    w.wait_assigned(&two).await;

    w.delete_pod("one").await;
    w.wait_gone(&one).await;
    assert!(w.vmss_has("delpool", &id), "pod two on another instance still needs it");
    assert_eq!(w.assigned_status(&two).await.as_deref(), Some("Assigned"));

    w.delete_pod("two").await;
    w.wait_gone(&two).await;
    eventually("identity detached from the VMSS", DEADLINE, || async { (!w.vmss_has("delpool", &id)).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_deletion_on_standard_vms_detaches_from_that_vm_only() {
    let _serial = serial().await;
    let w = World::new("podvm").await;
    let vm1 = w.vm_node("vm-a").await;
    let vm2 = w.vm_node("vm-b").await;
    let id = w.identity("shared").await;
    w.binding("b", "shared", "app").await;
    w.pod("one", &vm1, "app").await;
    w.pod("two", &vm2, "app").await;
    let _mic = w.start_mic("mic-podvm", &[]);
    let (one, two) = (w.assigned_name("one", "shared"), w.assigned_name("two", "shared"));
    w.wait_assigned(&one).await;
    w.wait_assigned(&two).await;
    assert!(w.vm_has("vm-a", &id) && w.vm_has("vm-b", &id));

    w.delete_pod("one").await;
    w.wait_gone(&one).await;
    eventually("identity detached from vm-a", DEADLINE, || async { (!w.vm_has("vm-a", &id)).then_some(()) }).await;
    assert!(w.vm_has("vm-b", &id), "vm-b keeps it for pod two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_binding_or_the_identity_removes_the_assignment_and_detaches() {
    let _serial = serial().await;
    let w = World::new("crd").await;
    let nodes = w.vmss_nodes("crdpool", 1).await;
    let first = w.identity("first").await;
    let second = w.identity("second").await;
    w.binding("b1", "first", "app").await;
    w.binding("b2", "second", "app").await;
    w.pod("demo", &nodes[0], "app").await;
    let _mic = w.start_mic("mic-crd", &[]);
    let (a1, a2) = (w.assigned_name("demo", "first"), w.assigned_name("demo", "second"));
    w.wait_assigned(&a1).await;
    w.wait_assigned(&a2).await;

    let bindings: kube::Api<aadpodid_api::AzureIdentityBinding> = kube::Api::namespaced(w.client.clone(), &w.ns);
    bindings.delete("b1", &Default::default()).await.expect("delete binding");
    w.wait_gone(&a1).await;
    eventually("first detached", DEADLINE, || async { (!w.vmss_has("crdpool", &first)).then_some(()) }).await;

    let ids: kube::Api<aadpodid_api::AzureIdentity> = kube::Api::namespaced(w.client.clone(), &w.ns);
    ids.delete("second", &Default::default()).await.expect("delete identity");
    w.wait_gone(&a2).await;
    eventually("second detached", DEADLINE, || async { (!w.vmss_has("crdpool", &second)).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_pods_on_five_nodes_of_one_vmss_need_few_arm_writes() {
    let _serial = serial().await;
    let w = World::new("burst").await;
    let nodes = w.vmss_nodes("burstpool", 5).await;
    let id = w.identity("burst").await;
    w.binding("b", "burst", "burst").await;
    let mic = w.start_mic("mic-burst", &[]);
    eventually("MIC leading", DEADLINE, || async { (mic.healthz().await.as_deref() == Some("Active")).then_some(()) })
        .await;
    w.sim.reset_counters();
    let aai_before = apiserver_writes(&w.client, "azureassignedidentities").await;
    let events_before = apiserver_writes(&w.client, "events").await;

    let creates = (0..50).map(|i| {
        let w = &w;
        let node = nodes[i % 5].clone();
        async move { w.pod(&format!("p{i}"), &node, "burst").await }
    });
    futures::future::join_all(creates).await;
    for i in 0..50 {
        w.wait_assigned(&w.assigned_name(&format!("p{i}"), "burst")).await;
    }
    assert!(w.vmss_has("burstpool", &id));
    let arm_writes = w.sim.counters().arm_writes("vmss", "burstpool");
    let aai_writes = apiserver_writes(&w.client, "azureassignedidentities").await - aai_before;
    let event_writes = apiserver_writes(&w.client, "events").await - events_before;
    println!(
        "50 pods: ARM writes {arm_writes}, AzureAssignedIdentity writes {aai_writes}, event writes {event_writes}"
    );
    assert!(arm_writes <= 3, "ARM writes: {arm_writes}");
    assert_eq!(w.assigned().await.len(), 50);
    assert!(aai_writes <= 105, "AzureAssignedIdentity writes: {aai_writes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_arm_converges_without_duplicates() {
    let _serial = serial().await;
    let w = World::new("throttle").await;
    let nodes = w.vmss_nodes("thrpool", 2).await;
    let id = w.identity("thr").await;
    w.binding("b", "thr", "thr").await;
    w.sim.inject(Fault::new(Face::Arm, FaultKind::throttle(Duration::from_secs(2))).operation("vmss_update").times(1));
    for i in 0..4 {
        w.pod(&format!("t{i}"), &nodes[i % 2], "thr").await;
    }
    let _mic = w.start_mic("mic-throttle", &[]);
    for i in 0..4 {
        w.wait_assigned(&w.assigned_name(&format!("t{i}"), "thr")).await;
    }
    assert!(w.vmss_has("thrpool", &id));
    assert!(w.sim.counters().calls(Face::Arm, "vmss_update") >= 2, "the throttled write was retried");
    let all = w.assigned().await;
    assert_eq!(all.len(), 4, "one object per pod");
    let ids = w.sim.vmss_identities(support::RG, "thrpool").expect("vmss").user_ids();
    assert_eq!(ids.len(), 1, "the identity is attached once: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_retry_after_from_arm_neither_panics_nor_stops_mic() {
    let _serial = serial().await;
    let w = World::new("retryafter").await;
    let pool = w.vmss_nodes("rapool", 1).await;
    let vm = w.vm_node("ravm").await;
    let id = w.identity("ra").await;
    w.binding("b", "ra", "ra").await;
    let forever = Duration::from_secs(u64::MAX);
    w.sim.inject(Fault::new(Face::Arm, FaultKind::throttle(forever)).operation("vmss_update").times(1));
    w.pod("throttled", &pool[0], "ra").await;
    w.pod("first", &vm, "ra").await;
    let mic = w.start_mic("mic-retryafter", &[]);

    // One cycle meets `Retry-After: 18446744073709551615` on the scale set and succeeds on the VM.
    w.wait_assigned(&w.assigned_name("first", "ra")).await;
    eventually("the scale-set update was throttled", DEADLINE, || async {
        (w.sim.counters().calls(Face::Arm, "vmss_update") >= 1).then_some(())
    })
    .await;
    assert_eq!(w.assigned_status(&w.assigned_name("throttled", "ra")).await.as_deref(), Some("Created"));
    // MIC keeps working: later events are handled.
    w.pod("second", &vm, "ra").await;
    w.wait_assigned(&w.assigned_name("second", "ra")).await;
    assert!(w.vm_has("ravm", &id));
    assert!(!mic.task.is_finished(), "MIC is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_writes_and_the_standby_takes_over_when_it_dies() {
    let _serial = serial().await;
    let w = World::new("leader").await;
    let nodes = w.vmss_nodes("ldrpool", 1).await;
    let _id = w.identity("ldr").await;
    w.binding("b", "ldr", "ldr").await;
    let first = w.start_mic("mic-first", &[]);
    eventually("first MIC leading", DEADLINE, || async {
        (first.healthz().await.as_deref() == Some("Active")).then_some(())
    })
    .await;
    let second = w.start_mic("mic-second", &[]);
    eventually("second MIC serving", DEADLINE, || async { second.healthz().await }).await;
    w.pod("before", &nodes[0], "ldr").await;
    w.wait_assigned(&w.assigned_name("before", "ldr")).await;
    assert_eq!(second.healthz().await.as_deref(), Some("Not Active"));
    assert_eq!(second.metric("aadpodidentity_assigned_identity_addition_count").await, Some(0.0));
    assert_eq!(first.metric("aadpodidentity_assigned_identity_addition_count").await, Some(1.0));
    let eps: kube::Api<k8s_openapi::api::core::v1::Endpoints> = kube::Api::namespaced(w.client.clone(), "default");
    let ep = eps.get("mic-leader").await.expect("endpoints lock");
    let record = ep.metadata.annotations.unwrap_or_default()["control-plane.alpha.kubernetes.io/leader"].clone();
    assert!(record.contains("\"holderIdentity\":\"mic-first\""), "{record}");
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(w.client.clone(), "default");
    let lease = leases.get("mic-leader").await.expect("lease lock");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("mic-first"));

    first.kill();
    w.pod("after", &nodes[0], "ldr").await;
    w.wait_assigned(&w.assigned_name("after", "ldr")).await;
    assert_eq!(second.healthz().await.as_deref(), Some("Active"));
    assert_eq!(second.metric("aadpodidentity_assigned_identity_addition_count").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mid_way_leaves_no_duplicate_or_orphan() {
    let _serial = serial().await;
    let w = World::new("restart").await;
    let nodes = w.vmss_nodes("rstpool", 3).await;
    let id = w.identity("rst").await;
    w.binding("b", "rst", "rst").await;
    w.sim.set_lro_duration(Duration::from_millis(1500));
    for i in 0..12 {
        w.pod(&format!("r{i}"), &nodes[i % 3], "rst").await;
    }
    let first = w.start_mic("mic-rst-1", &[]);
    eventually("some assigned identities created", DEADLINE, || async {
        (!w.assigned().await.is_empty()).then_some(())
    })
    .await;
    first.kill();
    let second = w.start_mic("mic-rst-2", &[]);
    for i in 0..12 {
        w.wait_assigned(&w.assigned_name(&format!("r{i}"), "rst")).await;
    }
    assert_eq!(w.assigned().await.len(), 12, "no duplicates");
    for i in 0..12 {
        w.delete_pod(&format!("r{i}")).await;
    }
    eventually("all assigned identities gone", DEADLINE, || async { w.assigned().await.is_empty().then_some(()) })
        .await;
    eventually("identity left the VMSS", DEADLINE, || async { (!w.vmss_has("rstpool", &id)).then_some(()) }).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vanished_node_loses_its_assignments_without_any_arm_call() {
    let _serial = serial().await;
    let w = World::new("nodegone").await;
    let nodes = w.vmss_nodes("gonepool", 1).await;
    let id = w.identity("gone").await;
    w.binding("b", "gone", "gone").await;
    w.pod("demo", &nodes[0], "gone").await;
    let _mic = w.start_mic("mic-nodegone", &[]);
    let name = w.assigned_name("demo", "gone");
    w.wait_assigned(&name).await;
    let writes = w.sim.counters().arm_writes("vmss", "gonepool");

    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(w.client.clone());
    api.delete(&nodes[0], &Default::default()).await.expect("delete node");
    // No pod GC here: do what the controller-manager does after a node goes away.
    w.delete_pod("demo").await;
    w.wait_gone(&name).await;
    assert_eq!(w.sim.counters().arm_writes("vmss", "gonepool"), writes, "no ARM write for a vanished node");
    assert!(w.vmss_has("gonepool", &id), "the original leaves the scale set alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_reconciler_re_adds_an_identity_removed_behind_mics_back() {
    let _serial = serial().await;
    let w = World::new("drift").await;
    let nodes = w.vmss_nodes("driftpool", 1).await;
    let id = w.identity("drift").await;
    w.binding("b", "drift", "drift").await;
    w.pod("demo", &nodes[0], "drift").await;
    let _mic = w.start_mic("mic-drift", &["--identity-assignment-reconcile-interval=2s"]);
    w.wait_assigned(&w.assigned_name("demo", "drift")).await;
    assert!(w.vmss_has("driftpool", &id));

    let url = format!(
        "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/driftpool?api-version=2019-12-01",
        w.sim.arm_url(),
        w.sim.subscription_id(),
        support::RG
    );
    let token = w.sim.arm_token().expect("arm token");
    let resp = reqwest::Client::new()
        .patch(url)
        .bearer_auth(token)
        .json(&serde_json::json!({"identity": {"type": "None"}}))
        .send()
        .await
        .expect("manual unassign");
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
    eventually("identity detached by hand", DEADLINE, || async { (!w.vmss_has("driftpool", &id)).then_some(()) }).await;
    eventually("identity re-added by the reconciler", DEADLINE, || async {
        w.vmss_has("driftpool", &id).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_arm_rejects_stays_created_while_the_valid_one_is_assigned() {
    let _serial = serial().await;
    let w = World::new("badid").await;
    let nodes = w.vmss_nodes("badpool", 1).await;
    let good = w.identity("good").await;
    let mut missing = w.identity("placeholder").await;
    missing.id = missing.id.replace("placeholder", "does-not-exist");
    let bad = aadpodid_api::AzureIdentity {
        metadata: kube::api::ObjectMeta {
            name: Some("bad".into()),
            namespace: Some(w.ns.clone()),
            ..Default::default()
        },
        spec: aadpodid_api::AzureIdentitySpec {
            type_: Some(0),
            resource_id: Some(missing.id.clone()),
            client_id: Some("00000000-0000-0000-0000-00000000bad0".into()),
            ..Default::default()
        },
        status: None,
    };
    kube::Api::<aadpodid_api::AzureIdentity>::namespaced(w.client.clone(), &w.ns)
        .create(&Default::default(), &bad)
        .await
        .expect("create bad identity");
    w.binding("b-good", "good", "app").await;
    w.binding("b-bad", "bad", "app").await;
    w.pod("demo", &nodes[0], "app").await;
    let _mic = w.start_mic("mic-badid", &["--update-user-msi-retry-interval=100ms"]);

    w.wait_assigned(&w.assigned_name("demo", "good")).await;
    assert!(w.vmss_has("badpool", &good));
    let bad_name = w.assigned_name("demo", "bad");
    assert_eq!(w.assigned_status(&bad_name).await.as_deref(), Some("Created"));
    let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::namespaced(w.client.clone(), &w.ns);
    eventually("binding apply error event on b-bad", DEADLINE, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("binding apply error")
                    && e.involved_object.name.as_deref() == Some("b-bad")
                    && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("aadpodidentity.k8s.io")
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn type_upgrade_rewrites_legacy_casing_once_and_records_it() {
    let _serial = serial().await;
    let w = World::new("upgrade").await;
    let nodes = w.vmss_nodes("uppool", 1).await;
    let info = w.sim.create_user_assigned_identity("id-rg", "upgrade-legacy");
    let gvk = kube::api::GroupVersionKind::gvk("aadpodidentity.k8s.io", "v1", "AzureIdentity");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "azureidentities");
    let dynapi: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(w.client.clone(), &w.ns, &ar);
    let legacy: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "legacy", "namespace": w.ns},
        "spec": {"type": 0, "ResourceID": info.id, "ClientID": info.client_id}
    }))
    .expect("legacy object");
    dynapi.create(&Default::default(), &legacy).await.expect("create legacy identity");
    w.binding("b", "legacy", "legacy").await;
    w.pod("demo", &nodes[0], "legacy").await;
    let cm_name = format!("aad-pod-identity-config-{}", w.tag);
    let _mic = w.start_mic("mic-upgrade", &["--enable-type-upgrade=true", &format!("--config-map-name={cm_name}")]);

    w.wait_assigned(&w.assigned_name("demo", "legacy")).await;
    let obj = dynapi.get("legacy").await.expect("get identity");
    assert_eq!(obj.data["spec"]["resourceID"], serde_json::json!(info.id), "{:?}", obj.data);
    assert!(obj.data["spec"].get("ResourceID").is_none(), "legacy key removed: {:?}", obj.data);
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(w.client.clone(), "default");
    let cm = cms.get(&cm_name).await.expect("config map");
    assert!(cm.data.unwrap_or_default().contains_key("type-upgrade-status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixing_the_cloud_config_file_is_picked_up_without_a_restart() {
    let _serial = serial().await;
    let w = World::new("reload").await;
    let nodes = w.vmss_nodes("rldpool", 1).await;
    let id = w.identity("rld").await;
    w.binding("b", "rld", "rld").await;
    let good = std::fs::read_to_string(&w.azure_json).expect("azure.json");
    std::fs::write(&w.azure_json, good.replace("mic-sp-secret", "wrong-secret")).expect("break azure.json");
    w.pod("demo", &nodes[0], "rld").await;
    let _mic = w.start_mic("mic-reload", &[]);
    let name = w.assigned_name("demo", "rld");
    eventually("assigned identity created", DEADLINE, || async { w.assigned_status(&name).await }).await;
    assert_eq!(w.assigned_status(&name).await.as_deref(), Some("Created"), "ARM refuses the wrong secret");
    assert!(!w.vmss_has("rldpool", &id));

    std::fs::write(&w.azure_json, good).expect("fix azure.json");
    w.wait_assigned(&name).await;
    assert!(w.vmss_has("rldpool", &id));
}

// === Cross-namespace safety ===

/// The pod's events of `reason` in its namespace.
async fn pod_events(w: &World, ns: &str, pod: &str, reason: &str) -> Vec<k8s_openapi::api::core::v1::Event> {
    let all = w.events_in(ns).await;
    all.into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some(pod))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_colliding_name_in_another_namespace_cannot_take_over_an_assignment() {
    let _serial = serial().await;
    let w = World::new("coll").await;
    let nodes = w.vmss_nodes("collpool", 1).await;
    let victim = w.identity("x").await;
    w.binding("bv", "x", "v").await;
    w.pod("a", &nodes[0], "v").await;
    let _mic = w.start_mic("mic-coll", &[]);
    // Pod `a` in `mic-coll` and pod `a-mic` in `coll` both give `a-mic-coll-x`; `coll` sorts first.
    let name = w.assigned_name("a", "x");
    assert_eq!(name, "a-mic-coll-x");
    w.wait_assigned(&name).await;
    let before = w.assigned_object(&name).await.expect("victim's assigned identity");

    let evil = "coll";
    w.namespace(evil).await;
    let thief = w.sim.create_user_assigned_identity("id-rg", "coll-thief");
    w.identity_in(evil, "x", &thief.id, &thief.client_id).await;
    w.binding_in(evil, "bt", "x", "t").await;
    w.pod_in(evil, "a-mic", &nodes[0], "t").await;

    let outcome = eventually("a conflict event on the colliding pod, or a takeover", DEADLINE, || async {
        let now = w.assigned_object(&name).await;
        if now.as_ref().map(|a| &a.spec.pod) != Some(&before.spec.pod) || w.vmss_has("collpool", &thief) {
            return Some("taken over");
        }
        let events = pod_events(&w, evil, "a-mic", "binding apply error").await;
        (!events.is_empty()).then_some("refused")
    })
    .await;
    assert_eq!(outcome, "refused");
    let after = w.assigned_object(&name).await.expect("victim's assigned identity");
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "not rewritten");
    assert_eq!((after.spec.pod_namespace.as_deref(), after.spec.pod.as_deref()), (Some(w.ns.as_str()), Some("a")));
    assert!(w.vmss_has("collpool", &victim), "the victim keeps its identity");
    assert!(!w.vmss_has("collpool", &thief), "the colliding pod gets nothing");
    let event = &pod_events(&w, evil, "a-mic", "binding apply error").await[0];
    let message = event.message.clone().unwrap_or_default();
    assert!(message.contains(&name), "{message}");
    let lower = message.to_ascii_lowercase();
    assert!(!lower.contains(&victim.id.to_ascii_lowercase()) && !message.contains(&victim.client_id), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_namespace_naming_the_same_resource_id_cannot_detach_it() {
    let _serial = serial().await;
    let w = World::new("detach").await;
    let nodes = w.vmss_nodes("detpool", 1).await;
    let id = w.identity("id").await;
    w.binding("b", "id", "good").await;
    w.pod("app", &nodes[0], "good").await;
    let evil = "mic-detach-evil";
    w.namespace(evil).await;
    w.identity_in(evil, "id", &id.id, "00000000-0000-0000-0000-00000000e0e0").await;
    w.binding_in(evil, "b", "id", "evil").await;
    w.pod_in(evil, "x", &nodes[0], "evil").await;
    let _mic = w.start_mic("mic-detach", &[]);
    let evil_name = format!("x-{evil}-id");
    w.wait_assigned(&w.assigned_name("app", "id")).await;
    w.wait_assigned(&evil_name).await;

    w.delete_pod_in(evil, "x").await;
    w.wait_gone(&evil_name).await;
    assert!(w.vmss_has("detpool", &id), "the good pod still needs the identity");
    assert_eq!(w.assigned_status(&w.assigned_name("app", "id")).await.as_deref(), Some("Assigned"));
}

/// A namespace names the cluster identity's and an immutable identity's resource IDs with
/// made-up client IDs, gets them "assigned" (they are on the scale set already) and deletes its
/// pod: both stay on the scale set, because ARM's own client IDs for them are protected. The
/// pod's third, ordinary identity is detached, so the removal path did run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_client_ids_cannot_detach_the_cluster_identity_or_an_immutable_one() {
    let _serial = serial().await;
    let w = World::new("immut").await;
    let nodes = w.vmss_nodes("immpool", 1).await;
    let kubelet = w.sim.create_user_assigned_identity(support::RG, "immpool-agentpool");
    let pinned = w.sim.create_user_assigned_identity("id-rg", "immut-pinned");
    w.set_cluster_identity(&kubelet.client_id);
    w.attach_by_hand("virtualMachineScaleSets", "immpool", &kubelet.id).await;
    w.attach_by_hand("virtualMachineScaleSets", "immpool", &pinned.id).await;
    assert!(w.vmss_has("immpool", &kubelet) && w.vmss_has("immpool", &pinned));

    let evil = "mic-immut-evil";
    w.namespace(evil).await;
    w.identity_in(evil, "kubelet", &kubelet.id, "00000000-0000-0000-0000-00000000e0e1").await;
    w.identity_in(evil, "pinned", &pinned.id, "00000000-0000-0000-0000-00000000e0e2").await;
    let own = w.sim.create_user_assigned_identity("id-rg", "immut-own");
    w.identity_in(evil, "own", &own.id, &own.client_id).await;
    for id in ["kubelet", "pinned", "own"] {
        w.binding_in(evil, &format!("b-{id}"), id, "evil").await;
    }
    w.pod_in(evil, "x", &nodes[0], "evil").await;
    let immutable = format!("--immutable-user-msis={}", pinned.client_id.to_ascii_uppercase());
    let _mic = w.start_mic("mic-immut", &[&immutable]);
    let names: Vec<String> = ["kubelet", "pinned", "own"].iter().map(|id| format!("x-{evil}-{id}")).collect();
    for name in &names {
        w.wait_assigned(name).await;
    }
    assert!(w.vmss_has("immpool", &own));

    w.delete_pod_in(evil, "x").await;
    for name in &names {
        w.wait_gone(name).await;
    }
    eventually("ARM operations done", DEADLINE, || async { w.sim.all_operations_done().then_some(()) }).await;
    assert!(!w.vmss_has("immpool", &own), "the pod's ordinary identity is detached");
    assert!(w.vmss_has("immpool", &kubelet), "the cluster identity stays on the scale set");
    assert!(w.vmss_has("immpool", &pinned), "the immutable identity stays on the scale set");
}

// === Assignments left `Created` ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_created_assignment_left_by_a_killed_mic_is_detached_once_its_pod_is_gone() {
    let _serial = serial().await;
    let w = World::new("killed").await;
    let nodes = w.vmss_nodes("killpool", 1).await;
    let vm = w.vm_node("kill-vm").await;
    let id = w.identity("id").await;
    let binding = w.binding("b", "id", "app").await;
    let identity: kube::Api<aadpodid_api::AzureIdentity> = kube::Api::namespaced(w.client.clone(), &w.ns);
    let identity = identity.get("id").await.expect("identity");
    let on_vmss = w.pod_in(&w.ns, "s", &nodes[0], "app").await;
    let on_vm = w.pod_in(&w.ns, "v", &vm, "app").await;
    // What a MIC killed between its ARM write and marking the objects `Assigned` leaves behind.
    w.attach_by_hand("virtualMachineScaleSets", "killpool", &id.id).await;
    w.attach_by_hand("virtualMachines", &vm, &id.id).await;
    let a1 = w.created_assignment(&on_vmss, &identity, &binding).await;
    let a2 = w.created_assignment(&on_vm, &identity, &binding).await;
    assert!(w.vmss_has("killpool", &id) && w.vm_has(&vm, &id));
    w.delete_pod("s").await;
    w.delete_pod("v").await;

    let _mic = w.start_mic("mic-killed", &[]);
    w.wait_gone(&a1).await;
    w.wait_gone(&a2).await;
    eventually("identity left the VMSS", DEADLINE, || async { (!w.vmss_has("killpool", &id)).then_some(()) }).await;
    eventually("identity left the VM", DEADLINE, || async { (!w.vm_has(&vm, &id)).then_some(()) }).await;
}

// === What Events say ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arm_errors_in_events_carry_no_client_id_and_no_other_namespaces_identity() {
    let _serial = serial().await;
    let w = World::new("evtext").await;
    let nodes = w.vmss_nodes("evpool", 1).await;
    w.identity("mine").await;
    w.binding("b", "mine", "mine").await;
    w.pod("app", &nodes[0], "mine").await;
    let other = "mic-evtext-other";
    w.namespace(other).await;
    let theirs = w.sim.create_user_assigned_identity("id-rg", "evtext-theirs");
    w.identity_in(other, "theirs", &theirs.id, &theirs.client_id).await;
    w.binding_in(other, "b", "theirs", "theirs").await;
    w.pod_in(other, "app", &nodes[0], "theirs").await;
    // ARM relays text naming a principal and a resource of someone else, as LinkedAuthorizationFailed does.
    let principal = "9a8b7c6d-1111-2222-3333-444455556666";
    let message = format!(
        "The client '{principal}' with object id '{principal}' does not have authorization to perform action \
         'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' over scope '{}'",
        theirs.id
    );
    let code = "LinkedAuthorizationFailed".to_owned();
    w.sim.inject(Fault::new(Face::Arm, FaultKind::FailOperation { code, message }).operation("vmss_update"));
    let _mic = w.start_mic("mic-evtext", &["--update-user-msi-max-retry=1"]);

    let events = eventually("binding apply error on our pod", DEADLINE, || async {
        let e = pod_events(&w, &w.ns, "app", "binding apply error").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    let ours = w.events_in(&w.ns).await;
    assert!(!events.is_empty());
    for e in &ours {
        let text = e.message.clone().unwrap_or_default();
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains(&theirs.id.to_ascii_lowercase()), "another namespace's identity: {text}");
        assert!(!lower.contains("evtext-theirs"), "another namespace's identity: {text}");
        assert!(!text.contains(principal), "a full client ID: {text}");
        assert!(!text.contains(&theirs.client_id), "a full client ID: {text}");
    }
}

/// The API server keeps what a CRD's schema allows, which our types may not hold: an `int32`
/// field holding 2^31 (read as absent), an object without `spec` (left out, with an Event on
/// it). Neither may stop the watch of its kind, and an object edited into one that does not
/// decode leaves the cache as if deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_our_types_cannot_hold_never_stop_the_watches() {
    use aadpodid_api::{AzureIdentity, AzureIdentityBinding};
    use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
    use serde_json::json;

    let _serial = serial().await;
    let w = World::new("malformed").await;
    let nodes = w.vmss_nodes("oddpool", 1).await;
    let good = w.identity("good").await;
    let big = w.identity("big").await;
    let identities = support::raw_api::<AzureIdentity>(&w.client, &w.ns);
    let replicas = json!({"spec": {"replicas": 2_147_483_648u64}});
    identities.patch("big", &PatchParams::default(), &Patch::Merge(&replicas)).await.expect("replicas 2^31");
    w.binding("b-good", "good", "good").await;
    w.binding("b-big", "big", "big").await;
    let bindings = support::raw_api::<AzureIdentityBinding>(&w.client, &w.ns);
    let no_spec: DynamicObject = serde_json::from_value(json!({
        "apiVersion": aadpodid_api::API_VERSION, "kind": "AzureIdentityBinding", "metadata": {"name": "no-spec"}
    }))
    .expect("object");
    bindings.create(&PostParams::default(), &no_spec).await.expect("the API server takes a binding without spec");
    w.pod("demo", &nodes[0], "good").await;
    w.pod("wide", &nodes[0], "big").await;
    let _mic = w.start_mic("mic-malformed", &[]);

    let (demo, wide) = (w.assigned_name("demo", "good"), w.assigned_name("wide", "big"));
    w.wait_assigned(&demo).await;
    w.wait_assigned(&wide).await;
    assert!(w.vmss_has("oddpool", &good) && w.vmss_has("oddpool", &big));
    let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::namespaced(w.client.clone(), &w.ns);
    let message = eventually("an InvalidObject event on the binding without spec", DEADLINE, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let on = &e.involved_object;
            (e.reason.as_deref() == Some("InvalidObject")
                && on.kind.as_deref() == Some("AzureIdentityBinding")
                && on.name.as_deref() == Some("no-spec")
                && on.uid.is_some()
                && e.type_.as_deref() == Some("Warning"))
            .then_some(e.message.unwrap_or_default())
        })
    })
    .await;
    assert!(message.contains("missing field `spec`"), "{message}");

    identities.patch("good", &PatchParams::default(), &Patch::Merge(&json!({"spec": null}))).await.expect("edit");
    w.wait_gone(&demo).await;
    eventually("good detached", DEADLINE, || async { (!w.vmss_has("oddpool", &good)).then_some(()) }).await;
    assert_eq!(w.assigned_status(&wide).await.as_deref(), Some("Assigned"), "the other identity is untouched");
}

/// The one-time type upgrade lists every object of our kinds; one it cannot read is left as
/// it is instead of failing the upgrade (which is fatal to MIC).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn type_upgrade_leaves_objects_it_cannot_read_alone() {
    use aadpodid_api::{AzureAssignedIdentity, AzurePodIdentityException};
    use kube::api::{DynamicObject, PostParams};
    use serde_json::json;

    let _serial = serial().await;
    let w = World::new("upbad").await;
    let nodes = w.vmss_nodes("upbadpool", 1).await;
    w.identity("good").await;
    w.binding("b", "good", "app").await;
    w.pod("demo", &nodes[0], "app").await;
    let no_spec = |kind: &str, ns: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": aadpodid_api::API_VERSION, "kind": kind,
            "metadata": {"name": "no-spec", "namespace": ns}}))
        .expect("object")
    };
    let pp = PostParams::default();
    let exceptions = support::raw_api::<AzurePodIdentityException>(&w.client, &w.ns);
    exceptions.create(&pp, &no_spec("AzurePodIdentityException", &w.ns)).await.expect("exception without spec");
    let assigned = support::raw_api::<AzureAssignedIdentity>(&w.client, "default");
    assigned.create(&pp, &no_spec("AzureAssignedIdentity", "default")).await.expect("assignment without spec");
    let cm_name = format!("aad-pod-identity-config-{}", w.tag);
    let _mic = w.start_mic("mic-upbad", &["--enable-type-upgrade=true", &format!("--config-map-name={cm_name}")]);

    w.wait_assigned(&w.assigned_name("demo", "good")).await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(w.client.clone(), "default");
    let cm = cms.get(&cm_name).await.expect("the upgrade is recorded");
    assert!(cm.data.unwrap_or_default().contains_key("type-upgrade-status"));
    let untouched = assigned.get("no-spec").await.expect("left in place");
    assert!(untouched.data.get("spec").is_none(), "{:?}", untouched.data);
}
