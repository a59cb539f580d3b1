//! MIC against a real kube-apiserver and the Azure simulator. Tests run one at a time (MIC
//! watches every namespace); each starts from a clean cluster and a fresh simulator.

mod support;

use std::time::Duration;

use aadpodid_azure_sim::{Face, Fault, FaultKind, NodeRef};
use support::{DEADLINE, World, apiserver_writes, eventually, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_flow_assigns_the_identity_on_the_vmss_and_imds_issues_its_token() {
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
