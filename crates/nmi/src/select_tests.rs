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
    let one = [mk_pod("10.244.0.5", "Running"), mk_pod("10.244.0.6", "Running"), mk_pod("10.244.0.5", "Failed")];
    assert_eq!(match_pod(&one, ip).unwrap().name, "p-10.244.0.5-Running");
    let two = [mk_pod("10.244.0.5", "Running"), mk_pod("10.244.0.5", "Pending")];
    assert!(match_pod(&two, ip).unwrap_err().contains("more than one"));
}

fn terminating(mut pod: PodView) -> PodView {
    pod.terminating = true;
    pod
}

#[rstest]
#[case::succeeded(mk_pod("10.244.0.5", "Succeeded"))]
#[case::failed(mk_pod("10.244.0.5", "Failed"))]
#[case::unknown_phase(mk_pod("10.244.0.5", "Unknown"))]
#[case::running_but_deleted(terminating(mk_pod("10.244.0.5", "Running")))]
#[case::pending_but_deleted(terminating(mk_pod("10.244.0.5", "Pending")))]
fn a_pod_being_deleted_or_finished_never_answers_for_its_ip(#[case] old: PodView) {
    let ip: IpAddr = "10.244.0.5".parse().unwrap();
    let err = match_pod(std::slice::from_ref(&old), ip).unwrap_err();
    assert!(err.starts_with("pod list is empty"), "{err}");
    assert!(!err.contains(&old.name), "the old pod is not named to the caller: {err}");
    let mut new = mk_pod("10.244.0.5", "Running");
    new.name = "new".into();
    assert_eq!(match_pod(&[old.clone(), new.clone()], ip).unwrap().name, "new", "the new pod with the IP");
    assert_eq!(match_pod(&[new, old], ip).unwrap().name, "new", "in either cache order");
}

#[test]
fn two_live_pods_with_one_ip_get_no_guess() {
    // The old pod's deletion has not reached the cache yet: neither may be served.
    let ip: IpAddr = "10.244.0.5".parse().unwrap();
    let (mut old, mut new) = (mk_pod("10.244.0.5", "Running"), mk_pod("10.244.0.5", "Running"));
    (old.name, new.name) = ("old".into(), "new".into());
    let err = match_pod(&[old, new], ip).unwrap_err();
    assert_eq!(err, "found more than one pod with ip 10.244.0.5, expected exactly one");
}

#[test]
fn host_network_pods_never_match_by_ip() {
    let ip: IpAddr = "10.0.0.4".parse().unwrap();
    let mut host = mk_pod("10.0.0.4", "Running");
    host.host_network = true;
    assert_eq!(match_pod(std::slice::from_ref(&host), ip).unwrap_err(), "pod list is empty");
    let pods = [host.clone(), host];
    assert_eq!(match_pod(&pods, ip).unwrap_err(), "pod list is empty", "several on the node IP: still none");
}

fn dual_stack(ips: &[&str]) -> PodView {
    let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    PodView { ip: ips.first().copied(), ips, ..mk_pod("", "Running") }
}

#[rstest]
#[case::v4_primary_by_v4(&["10.244.0.5", "fd00::5"], "10.244.0.5")]
#[case::v4_primary_by_v6(&["10.244.0.5", "fd00::5"], "fd00::5")]
#[case::v6_primary_by_v4(&["fd00::5", "10.244.0.5"], "10.244.0.5")]
#[case::v6_primary_by_v6(&["fd00::5", "10.244.0.5"], "fd00::5")]
#[case::v4_mapped_caller(&["10.244.0.5"], "::ffff:10.244.0.5")]
#[case::v4_mapped_caller_v6_primary(&["fd00::5", "10.244.0.5"], "::ffff:10.244.0.5")]
fn dual_stack_pods_are_found_by_any_of_their_ips(#[case] ips: &[&str], #[case] caller: &str) {
    let pods = [dual_stack(ips), mk_pod("10.244.0.6", "Running")];
    assert_eq!(match_pod(&pods, caller.parse().unwrap()).unwrap().ips, dual_stack(ips).ips);
}

#[test]
fn pod_ips_alone_are_enough_and_other_addresses_do_not_match() {
    let mut pod = dual_stack(&["fd00::5", "10.244.0.5"]);
    pod.ip = None;
    assert!(pod.has_ip("10.244.0.5".parse().unwrap()));
    for other in ["10.244.0.50", "fd00::50", "::ffff:10.244.0.50", "::10.244.0.5"] {
        assert!(!pod.has_ip(other.parse().unwrap()), "{other}");
    }
}

fn mk_exception(labels: &[(&str, &str)]) -> AzurePodIdentityException {
    let pod_labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    AzurePodIdentityException::new("e", AzurePodIdentityExceptionSpec { pod_labels: Some(pod_labels) })
}

#[test]
fn exceptions_bypass_selection() {
    let mut pod = mk_pod("10.244.0.5", "Running");
    pod.labels.insert("app".into(), "MIC".into());
    assert!(is_bypassed(&pod, &[mk_exception(&[("app", "mic")])], None));
    assert!(!is_bypassed(&pod, &[mk_exception(&[("app", "other")])], None));
}

const MIC_SA: &str = "aad-pod-id-mic-service-account";

fn mic_pod(namespace: &str, replicaset: &str, service_account: &str) -> PodView {
    PodView {
        namespace: namespace.into(),
        replicaset: Some(replicaset.into()),
        service_account: service_account.into(),
        ..mk_pod("10.244.0.9", "Running")
    }
}

#[test]
fn mic_is_its_namespace_service_account_and_replicaset() {
    let mic = MicIdentity::from_flags(true, "default", MIC_SA).unwrap();
    assert!(is_bypassed(&mic_pod("default", "mic-7f9", MIC_SA), &[], Some(&mic)));
    assert!(is_bypassed(&mic_pod("Default", "mic-7f9", MIC_SA), &[], Some(&mic)), "namespace ignoring case");
    assert!(!is_bypassed(&mic_pod("apps", "mic-7f9", MIC_SA), &[], Some(&mic)), "another namespace");
    assert!(!is_bypassed(&mic_pod("default", "release-mic-7f9", MIC_SA), &[], Some(&mic)), "not a mic… ReplicaSet");
    let mut orphan = mic_pod("default", "mic-7f9", MIC_SA);
    orphan.replicaset = None;
    assert!(!is_bypassed(&orphan, &[], Some(&mic)), "no ReplicaSet");
}

#[rstest]
#[case::no_service_account("")]
#[case::the_namespace_default("default")]
#[case::another_account("microservice")]
#[case::case_differs("AAD-POD-ID-MIC-SERVICE-ACCOUNT")]
fn a_look_alike_mic_with_another_service_account_is_not_mic(#[case] service_account: &str) {
    let mic = MicIdentity::from_flags(true, "default", MIC_SA).unwrap();
    for rs in ["mic-7f9", "microservice-7f9", "mic"] {
        assert!(!is_bypassed(&mic_pod("default", rs, service_account), &[], Some(&mic)), "{rs} {service_account}");
    }
}

#[rstest]
#[case::managed_mode(false, MIC_SA)]
#[case::empty_service_account(true, "")]
#[case::shared_default_account(true, "default")]
fn the_mic_short_cut_can_be_off(#[case] standard: bool, #[case] service_account: &str) {
    assert_eq!(MicIdentity::from_flags(standard, "default", service_account), None);
    let pod = mic_pod("default", "mic-7f9", service_account);
    assert!(!is_bypassed(&pod, &[], MicIdentity::from_flags(standard, "default", service_account).as_ref()));
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
