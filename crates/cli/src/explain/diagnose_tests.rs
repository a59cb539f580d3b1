//! The diagnosis on in-memory snapshots: the cases the integration tests do not reach.

use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use serde_json::json;

use super::super::{Settings, Snapshot};
use super::*;

const ID: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web";

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn snapshot(labels: serde_json::Value, host_network: bool) -> Snapshot {
    let pod: Pod = from(json!({
        "metadata": {"name": "app", "namespace": "apps", "labels": labels},
        "spec": {"nodeName": "n1", "hostNetwork": host_network, "containers": []},
        "status": {"phase": "Running", "podIP": "10.244.0.9"},
    }));
    let identity: AzureIdentity =
        from(json!({"metadata": {"name": "web", "namespace": "apps", "resourceVersion": "7"},
        "spec": {"type": 0, "resourceID": ID, "clientID": "0c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e6f"}}));
    let binding: AzureIdentityBinding = from(json!({"metadata": {"name": "web-binding", "namespace": "apps"},
        "spec": {"azureIdentity": "web", "selector": "web"}}));
    let assigned: AzureAssignedIdentity = from(json!({"metadata": {"name": "app-apps-web", "namespace": "default"},
        "spec": {"pod": "app", "podNamespace": "apps", "nodename": "n1", "azureIdentityRef": identity},
        "status": {"status": "Assigned"}}));
    Snapshot {
        pod,
        node: Some(from::<Node>(json!({"metadata": {"name": "n1"}}))),
        bindings: vec![binding],
        identities: vec![identity],
        assigned: vec![assigned],
        exceptions: Vec::new(),
        events: Vec::new(),
        settings: Settings { force_namespaced: false, source: "test".into(), managed: false, nmi: None },
        arm: None,
    }
}

fn now() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

#[test]
fn a_bound_assigned_pod_is_healthy() {
    let x = diagnose(&snapshot(json!({"aadpodidbinding": "web"}), false), now());
    assert!(x.healthy(), "{x}");
    assert!(x.to_string().contains("NMI answers a token request with AzureIdentity apps/web"), "{x}");
}

#[test]
fn an_exception_hides_the_bound_identity() {
    let mut s = snapshot(json!({"aadpodidbinding": "web", "app": "metrics"}), false);
    s.exceptions = vec![from::<AzurePodIdentityException>(json!({"metadata": {"name": "ksm", "namespace": "apps"},
        "spec": {"podLabels": {"app": "metrics"}}}))];
    let x = diagnose(&s, now());
    assert!(!x.healthy());
    assert!(x.to_string().contains("the pod matches AzurePodIdentityException ksm"), "{x}");
}

#[test]
fn a_host_network_pod_cannot_be_told_apart() {
    let x = diagnose(&snapshot(json!({"aadpodidbinding": "web"}), true), now());
    assert!(!x.healthy());
    assert!(x.to_string().contains("uses the host network"), "{x}");
}

#[test]
fn a_created_assignment_makes_nmi_wait() {
    let mut s = snapshot(json!({"aadpodidbinding": "web"}), false);
    s.assigned[0].status =
        Some(aadpodid_api::AzureAssignedIdentityStatus { status: Some("Created".into()), ..Default::default() });
    let t = diagnose(&s, now()).to_string();
    assert!(t.contains("is Created: MIC has not yet put the identity"), "{t}");
    assert!(t.contains("NMI retries for up to 100 s, then answers 404"), "{t}");
}

#[test]
fn managed_mode_answers_from_bindings_without_mic() {
    let mut s = snapshot(json!({"aadpodidbinding": "web"}), false);
    s.assigned.clear();
    s.settings.managed = true;
    let x = diagnose(&s, now());
    assert!(x.healthy(), "{x}");
    assert!(!x.to_string().contains("MIC pairs them"), "{x}");
}

#[test]
fn an_event_written_on_pod_and_binding_is_shown_once() {
    let ev = |kind: &str, at: &str| -> Event {
        from(json!({"metadata": {"name": format!("e-{kind}")}, "involvedObject": {"kind": kind, "name": "x"},
            "type": "Normal", "reason": "binding applied", "message": "Binding b applied", "lastTimestamp": at}))
    };
    let lines = super::super::render::events(
        &[ev("Pod", "2025-12-31T23:59:00Z"), ev("AzureIdentityBinding", "2025-12-31T23:59:30Z")],
        now(),
    );
    assert_eq!(lines, ["30s ago Normal binding applied AzureIdentityBinding/x: Binding b applied"]);
}
