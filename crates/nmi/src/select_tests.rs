use super::*;
use aadpodid_api::AzurePodIdentityExceptionSpec;
use rstest::rstest;

use AssignedIdentityState::{Assigned, Created, Legacy, Unassigned};

const POD: (&str, &str) = ("apps", "demo");

fn mk_id(ns: &str, name: &str, client_id: &str) -> IdentityView {
    IdentityView {
        namespace: ns.into(),
        name: name.into(),
        spec: AzureIdentitySpec {
            client_id: Some(client_id.into()),
            resource_id: Some(format!(
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            )),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn mk_assigned(state: AssignedIdentityState, name: &str, client_id: &str) -> AssignedView {
    AssignedView { state, identity: mk_id("default", name, client_id) }
}

fn by_client(c: &str) -> IdentityRequest {
    IdentityRequest { client_id: Some(c.into()), ..Default::default() }
}

fn names(step: Step) -> Vec<String> {
    match step {
        Step::Found(ids) => ids.into_iter().map(|i| i.name).collect(),
        other => panic!("expected Found, got {other:?}"),
    }
}

const RETRY: RetryPolicy = RetryPolicy { created: 16, assigned: 4, interval_secs: 5 };

#[test]
fn unspecified_request_takes_all_assigned_identities() {
    let a = [mk_assigned(Assigned, "a", "ca"), mk_assigned(Assigned, "b", "cb"), mk_assigned(Created, "c", "cc")];
    assert_eq!(names(standard_step(POD, &a, &IdentityRequest::default(), 0, RETRY)), ["a", "b"]);
}

#[test]
fn legacy_identities_without_status_win_over_assigned() {
    let a = [mk_assigned(Assigned, "a", "ca"), mk_assigned(Legacy, "old", "co")];
    assert_eq!(names(standard_step(POD, &a, &IdentityRequest::default(), 0, RETRY)), ["old"]);
}

#[rstest]
#[case::nothing_bound_early(vec![], 15, Step::Wait)]
#[case::created_waits_past_the_created_budget(vec![mk_assigned(Created, "a", "ca")], 19, Step::Wait)]
#[case::unassigned_is_ignored(vec![mk_assigned(Unassigned, "a", "ca")], 3, Step::Wait)]
fn the_loop_waits_while_assignment_may_still_come(
    #[case] assigned: Vec<AssignedView>,
    #[case] attempt: u32,
    #[case] expected: Step,
) {
    assert_eq!(standard_step(POD, &assigned, &IdentityRequest::default(), attempt, RETRY), expected);
}

#[test]
fn nothing_created_gives_up_after_the_created_attempts() {
    let Step::GiveUp(text) = standard_step(POD, &[], &IdentityRequest::default(), 16, RETRY) else { panic!() };
    assert_eq!(
        text,
        "getting assigned identities for pod apps/demo in CREATED state failed after 16 attempts, retry duration [5]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    );
}

#[test]
fn stuck_in_created_gives_up_when_the_loop_runs_out() {
    let a = [mk_assigned(Created, "a", "ca")];
    let Step::GiveUp(text) = standard_step(POD, &a, &IdentityRequest::default(), 20, RETRY) else { panic!() };
    assert!(text.contains("in ASSIGNED state failed after 20 attempts"), "{text}");
}

#[test]
fn specified_client_id_matches_ignoring_case_in_the_loop() {
    let a = [mk_assigned(Assigned, "a", "AAAA-1111"), mk_assigned(Assigned, "b", "bbbb-2222")];
    assert_eq!(names(standard_step(POD, &a, &by_client("aaaa-1111"), 0, RETRY)), ["a", "b"]);
}

#[test]
fn specified_identity_still_created_keeps_waiting() {
    let a = [mk_assigned(Assigned, "a", "ca"), mk_assigned(Created, "b", "cb")];
    assert_eq!(standard_step(POD, &a, &by_client("cb"), 17, RETRY), Step::Wait);
}

#[test]
fn specified_identity_not_bound_gives_up_with_a_redacted_prefix() {
    let a = [mk_assigned(Assigned, "a", "aaaa-1111-2222")];
    let Step::GiveUp(text) = standard_step(POD, &a, &by_client("ffff-1111-9999"), 16, RETRY) else { panic!() };
    assert!(text.starts_with("clientID in request: ffff##### REDACTED #####9999, getting assigned"), "{text}");
    assert!(!text.contains("ffff-1111-9999"));
}

#[test]
fn resource_id_matches_ignoring_case_in_the_loop() {
    let a = [mk_assigned(Assigned, "MyId", "c")];
    let req = IdentityRequest { resource_id: Some(a[0].identity.resource_id().to_lowercase()), ..Default::default() };
    assert_eq!(names(standard_step(POD, &a, &req, 0, RETRY)), ["MyId"]);
}

#[test]
fn unspecified_pick_is_sorted_by_namespace_then_name() {
    let ids = vec![mk_id("b", "x", "1"), mk_id("a", "z", "2"), mk_id("a", "y", "3")];
    let got = pick_identity(ids, &IdentityRequest::default(), "apps", false).unwrap();
    assert_eq!((got.namespace.as_str(), got.name.as_str()), ("a", "y"));
}

#[test]
fn final_pick_compares_client_ids_exactly() {
    let ids = vec![mk_id("default", "a", "AAAA")];
    let err = pick_identity(ids.clone(), &by_client("aaaa"), "apps", false).unwrap_err();
    assert_eq!(err, "no azure identity found for request clientID aaaa");
    assert_eq!(pick_identity(ids, &by_client("AAAA"), "apps", false).unwrap().name, "a");
}

#[test]
fn namespaced_mode_drops_identities_of_other_namespaces_without_panicking() {
    let ids = vec![mk_id("default", "a", "ca")];
    assert!(pick_identity(ids.clone(), &IdentityRequest::default(), "apps", true).is_err());
    let mut annotated = ids;
    annotated[0].namespaced = true;
    assert!(pick_identity(annotated, &IdentityRequest::default(), "apps", false).is_err());
}

#[test]
fn object_id_selects_when_known() {
    let mut ids = vec![mk_id("apps", "a", "ca"), mk_id("apps", "b", "cb")];
    ids[1].object_id = Some("OID-B".into());
    let req = IdentityRequest { object_id: Some("oid-b".into()), ..Default::default() };
    assert_eq!(pick_identity(ids.clone(), &req, "apps", false).unwrap().name, "b");
    let unknown = IdentityRequest { object_id: Some("oid-a".into()), ..Default::default() };
    assert_eq!(
        pick_identity(ids, &unknown, "apps", false).unwrap_err(),
        "no azure identity found for request objectID oid-a"
    );
}

fn mk_pod(ip: &str, phase: &str) -> PodView {
    PodView {
        namespace: "apps".into(),
        name: format!("p-{ip}-{phase}"),
        ip: ip.parse().ok(),
        phase: phase.into(),
        ..Default::default()
    }
}

#[test]
fn pod_lookup_needs_exactly_one_live_pod() {
    let ip: IpAddr = "10.244.0.5".parse().unwrap();
    assert_eq!(match_pod(&[], ip).unwrap_err(), "pod list is empty");
    assert_eq!(match_pod(&[mk_pod("10.244.0.5", "Succeeded")], ip).unwrap_err(), "pod list is empty");
    let one = [mk_pod("10.244.0.5", "Running"), mk_pod("10.244.0.6", "Running"), mk_pod("10.244.0.5", "Failed")];
    assert_eq!(match_pod(&one, ip).unwrap().name, "p-10.244.0.5-Running");
    let two = [mk_pod("10.244.0.5", "Running"), mk_pod("10.244.0.5", "Pending")];
    assert!(match_pod(&two, ip).unwrap_err().contains("more than one"));
}

fn mk_exception(labels: &[(&str, &str)]) -> AzurePodIdentityException {
    let pod_labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    AzurePodIdentityException::new("e", AzurePodIdentityExceptionSpec { pod_labels: Some(pod_labels) })
}

#[test]
fn exceptions_and_mic_pods_bypass_selection() {
    let mut pod = mk_pod("10.244.0.5", "Running");
    pod.labels.insert("app".into(), "MIC".into());
    assert!(is_bypassed(&pod, &[mk_exception(&[("app", "mic")])], "default"));
    assert!(!is_bypassed(&pod, &[mk_exception(&[("app", "other")])], "default"));
    pod.replicaset = Some("mic-7f9".into());
    assert!(!is_bypassed(&pod, &[], "default"), "MIC namespace differs");
    assert!(is_bypassed(&pod, &[], "APPS"), "namespace compared ignoring case");
    pod.replicaset = Some("release-mic-7f9".into());
    assert!(!is_bypassed(&pod, &[], "apps"));
}

fn mk_binding(ns: &str, selector: &str, identity: &str) -> BindingView {
    BindingView {
        namespace: ns.into(),
        name: format!("{identity}-binding"),
        selector: selector.into(),
        identity: identity.into(),
    }
}

#[test]
fn managed_mode_uses_bindings_and_identities_of_the_pods_namespace() {
    let mut pod = mk_pod("10.244.0.5", "Running");
    pod.labels.insert("aadpodidbinding".into(), "sel".into());
    let bindings = [mk_binding("apps", "sel", "b"), mk_binding("apps", "sel", "a"), mk_binding("other", "sel", "c")];
    let ids = [mk_id("apps", "b", "cb"), mk_id("apps", "a", "ca"), mk_id("other", "c", "cc"), mk_id("apps", "d", "cd")];
    assert_eq!(managed_select(&pod, &bindings, &ids, &IdentityRequest::default()).unwrap().name, "a");
    assert_eq!(managed_select(&pod, &bindings, &ids, &by_client("cb")).unwrap().name, "b");
    assert!(managed_select(&pod, &bindings, &ids, &by_client("cc")).is_err(), "other namespace");
    assert!(managed_select(&pod, &bindings, &ids, &by_client("cd")).is_err(), "not bound");
}

#[test]
fn managed_mode_unlabelled_pod_matches_only_an_empty_selector() {
    let pod = mk_pod("10.244.0.5", "Running");
    let ids = [mk_id("apps", "a", "ca")];
    assert!(managed_select(&pod, &[mk_binding("apps", "sel", "a")], &ids, &IdentityRequest::default()).is_err());
    assert!(managed_select(&pod, &[mk_binding("apps", "", "a")], &ids, &IdentityRequest::default()).is_ok());
}
