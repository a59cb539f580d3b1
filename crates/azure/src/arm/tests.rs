use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::plan::*;
use super::*;

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn delta(entries: &[(&str, Change)]) -> BTreeMap<String, Change> {
    entries.iter().map(|(id, c)| ((*id).to_owned(), *c)).collect()
}

fn uami(n: usize) -> String {
    format!("/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/id-{n:03}")
}

// --- provider IDs ---

#[test]
fn vmss_provider_id_names_the_scale_set() {
    let id = "azure:///subscriptions/fakeSub/resourceGroups/fakeGroup/providers/Microsoft.Compute/virtualMachineScaleSets/node4/virtualMachines/0";
    assert_eq!(VmTarget::from_provider_id(id), Some(VmTarget::Vmss("node4".into())));
}

#[test]
fn vm_provider_id_names_the_vm() {
    let id =
        "azure:///subscriptions/fakeSub/resourceGroups/fakeGroup/providers/Microsoft.Compute/virtualMachines/node3";
    assert_eq!(VmTarget::from_provider_id(id), Some(VmTarget::Vm("node3".into())));
}

#[test]
fn provider_id_matching_is_case_insensitive() {
    let id = "azure:///SUBSCRIPTIONS/s/RESOURCEGROUPS/rg/providers/microsoft.compute/virtualmachinescalesets/pool/virtualmachines/7";
    assert_eq!(VmTarget::from_provider_id(id), Some(VmTarget::Vmss("pool".into())));
}

#[test]
fn empty_provider_id_is_none_and_garbage_is_an_error() {
    assert_eq!(VmTarget::parse_provider_id(""), Ok(None));
    assert_eq!(VmTarget::from_provider_id(""), None);
    for bad in ["asdf", "/subscriptions/asdf/resourceGroups/qwery", "kind://node-1"] {
        assert!(VmTarget::parse_provider_id(bad).is_err(), "{bad}");
        assert_eq!(VmTarget::from_provider_id(bad), None, "{bad}");
    }
}

#[test]
fn provider_ids_of_other_resource_types_are_not_targets() {
    let other =
        "/subscriptions/asdf/resourceGroups/qwerty/providers/testCompute/myComputeObjectType/testComputeResource";
    assert_eq!(VmTarget::parse_provider_id(other), Ok(None));
}

#[test]
fn targets_know_their_name_kind_and_operations() {
    let vmss = VmTarget::Vmss("pool".into());
    assert_eq!((vmss.name(), vmss.is_vmss(), vmss.to_string()), ("pool", true, "vmss pool".to_owned()));
    assert_eq!(vmss.read_operation(), ArmOperation::VmssGet);
    assert_eq!(VmTarget::Vm("n".into()).write_operation(), ArmOperation::VmUpdate);
    let labels: Vec<&str> =
        [ArmOperation::VmGet, ArmOperation::VmUpdate, ArmOperation::VmssGet, ArmOperation::VmssUpdate]
            .iter()
            .map(|o| o.as_str())
            .collect();
    assert_eq!(labels, ["vm_get", "vm_update", "vmss_get", "vmss_update"]);
}

#[test]
fn throttled_error_reads_like_the_original() {
    let err = ArmError::Throttled { operation: ArmOperation::VmssUpdate, retry_after: Duration::from_secs(3) };
    assert_eq!(err.to_string(), "VMSSUpdate client throttled, retry after: 3s");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
}

// --- identity types ---

#[test]
fn identity_types_parse_arm_spellings() {
    assert_eq!(IdentityType::parse("SystemAssigned, UserAssigned"), IdentityType::SystemAssignedUserAssigned);
    assert_eq!(IdentityType::parse("systemassigned,userassigned"), IdentityType::SystemAssignedUserAssigned);
    assert_eq!(IdentityType::parse("UserAssigned"), IdentityType::UserAssigned);
    assert_eq!(IdentityType::parse("SystemAssigned"), IdentityType::SystemAssigned);
    assert_eq!(IdentityType::parse("None"), IdentityType::None);
    assert_eq!(IdentityType::parse(""), IdentityType::None);
    assert_eq!(IdentityType::SystemAssignedUserAssigned.as_str(), "SystemAssigned, UserAssigned");
}

// --- delta and type transitions ---

#[test]
fn adding_to_a_bare_node_sends_user_assigned_with_the_new_ids() {
    let patch = plan_update(IdentityType::None, &[], &ids(&["/A", "/B"]), &[]).unwrap();
    assert_eq!(patch.identity_type, IdentityType::UserAssigned);
    assert_eq!(patch.delta, delta(&[("/a", Change::Add), ("/b", Change::Add)]));
}

#[test]
fn adding_next_to_a_system_identity_keeps_it() {
    let patch = plan_update(IdentityType::SystemAssigned, &[], &ids(&["/a"]), &[]).unwrap();
    assert_eq!(patch.identity_type, IdentityType::SystemAssignedUserAssigned);
}

#[test]
fn only_the_delta_is_sent_and_existing_ids_are_untouched() {
    let patch =
        plan_update(IdentityType::UserAssigned, &ids(&["/X", "/y"]), &ids(&["/x", "/z"]), &ids(&["/y"])).unwrap();
    assert_eq!(patch.identity_type, IdentityType::UserAssigned);
    assert_eq!(patch.delta, delta(&[("/y", Change::Remove), ("/z", Change::Add)]));
}

#[test]
fn nothing_to_change_sends_no_patch() {
    assert_eq!(plan_update(IdentityType::UserAssigned, &ids(&["/a"]), &ids(&["/A"]), &[]), None);
    assert_eq!(plan_update(IdentityType::UserAssigned, &ids(&["/a"]), &[], &ids(&["/missing"])), None);
}

#[test]
fn an_id_both_added_and_removed_ends_up_added() {
    let patch = plan_update(IdentityType::None, &[], &ids(&["/a"]), &ids(&["/A"])).unwrap();
    assert_eq!(patch.delta, delta(&[("/a", Change::Add)]));
    assert_eq!(plan_update(IdentityType::UserAssigned, &ids(&["/a"]), &ids(&["/a"]), &ids(&["/a"])), None);
}

#[test]
fn removing_the_last_user_identity_omits_the_map_and_falls_back_to_none() {
    let patch = plan_update(IdentityType::UserAssigned, &ids(&["/a"]), &[], &ids(&["/A"])).unwrap();
    assert_eq!(patch, IdentityPatch { identity_type: IdentityType::None, delta: BTreeMap::new() });
    assert_eq!(patch.bodies(150), vec![json!({"identity": {"type": "None"}})]);
}

#[test]
fn removing_the_last_user_identity_keeps_the_system_identity() {
    let patch = plan_update(IdentityType::SystemAssignedUserAssigned, &ids(&["/a"]), &[], &ids(&["/a"])).unwrap();
    assert_eq!(patch.identity_type, IdentityType::SystemAssigned);
    assert!(patch.delta.is_empty());
    // The original would have sent None here and dropped the system identity.
    let stale = plan_update(IdentityType::SystemAssigned, &[], &[], &ids(&["/gone"])).unwrap();
    assert_eq!(stale.identity_type, IdentityType::SystemAssigned);
}

#[test]
fn patch_body_maps_adds_to_objects_and_removes_to_null() {
    let patch = IdentityPatch {
        identity_type: IdentityType::SystemAssignedUserAssigned,
        delta: delta(&[("/a", Change::Add), ("/b", Change::Remove)]),
    };
    assert_eq!(
        patch.bodies(150),
        vec![json!({"identity": {"type": "SystemAssigned, UserAssigned",
                                  "userAssignedIdentities": {"/a": {}, "/b": null}}})]
    );
}

// --- chunking ---

#[test]
fn deltas_are_cut_into_chunks_of_at_most_150_removals_first() {
    let mut big = BTreeMap::new();
    for n in 0..320 {
        big.insert(uami(n), if n % 4 == 0 { Change::Remove } else { Change::Add });
    }
    let parts = chunks(&big, MAX_IDENTITIES_PER_REQUEST);
    assert_eq!(parts.iter().map(BTreeMap::len).collect::<Vec<_>>(), [150, 150, 20]);
    assert_eq!(parts[0].values().filter(|c| **c == Change::Remove).count(), 80, "all removals go first");
    let rejoined: BTreeMap<String, Change> = parts.into_iter().flatten().collect();
    assert_eq!(rejoined, big);
}

#[test]
fn exactly_150_is_one_chunk_and_empty_is_one_type_only_chunk() {
    let full: BTreeMap<String, Change> = (0..150).map(|n| (uami(n), Change::Add)).collect();
    assert_eq!(chunks(&full, 150).len(), 1);
    assert_eq!(chunks(&BTreeMap::new(), 150), vec![BTreeMap::new()]);
    assert_eq!(chunks(&full, 0).len(), 150, "a zero limit is treated as one");
}

// --- bad identities (fixtures from the original's tests) ---

#[test]
fn bad_identity_is_extracted_from_a_linked_scope_message() {
    let message = "on the linked scope(s) '/subscriptions/xxxxxxxx-1234-5678-xxxx-xxxxxxxxxxxx/resourcegroups/rg-1234/providers/Microsoft.ManagedIdentity/userAssignedIdentities/user-id-1' or the linked scope(s) are invalid";
    assert_eq!(
        extract_bad_identities(message),
        [
            "/subscriptions/xxxxxxxx-1234-5678-xxxx-xxxxxxxxxxxx/resourcegroups/rg-1234/providers/Microsoft.ManagedIdentity/userAssignedIdentities/user-id-1"
        ]
    );
}

#[test]
fn several_bad_identities_are_split_on_commas() {
    let message = "on the linked scope(s) '/subscriptions/xxxxxxxx-1234-5678-xxxx-xxxxxxxxxxxx/resourcegroups/rg-1234/providers/Microsoft.ManagedIdentity/userAssignedIdentities/user-id-1,/subscriptions/xxxxxxxx-4321-8765-xxxx-xxxxxxxxxxxx/resourcegroups/rg-4567/providers/Microsoft.ManagedIdentity/userAssignedIdentities/user-id-2' or the linked scope(s) are invalid";
    assert_eq!(
        extract_bad_identities(message),
        [
            "/subscriptions/xxxxxxxx-1234-5678-xxxx-xxxxxxxxxxxx/resourcegroups/rg-1234/providers/Microsoft.ManagedIdentity/userAssignedIdentities/user-id-1",
            "/subscriptions/xxxxxxxx-4321-8765-xxxx-xxxxxxxxxxxx/resourcegroups/rg-4567/providers/Microsoft.ManagedIdentity/userAssignedIdentities/user-id-2",
        ]
    );
}

#[test]
fn messages_without_quoted_identities_yield_none() {
    assert!(extract_bad_identities("error message").is_empty());
    assert!(extract_bad_identities("").is_empty());
    assert!(extract_bad_identities("'/subscriptions/s/resourcegroups/rg/providers/Other.Thing/x/y'").is_empty());
}

#[test]
fn only_the_two_arm_codes_trigger_pruning() {
    assert!(is_bad_identity_error("ARM answered HTTP 403: LinkedAuthorizationFailed: ..."));
    assert!(is_bad_identity_error("long-running operation Failed: FailedIdentityOperation: ..."));
    assert!(!is_bad_identity_error("ARM answered HTTP 403: AuthorizationFailed: ..."));
}

// --- Retry-After ---

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // Tue, 14 Nov 2023 22:13:20 GMT
    assert_eq!(parse_retry_after("180", now), Some(Duration::from_secs(180)));
    assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
    assert_eq!(parse_retry_after("Tue, 14 Nov 2023 22:16:20 GMT", now), Some(Duration::from_secs(180)));
    assert_eq!(parse_retry_after("0", now), None);
    assert_eq!(parse_retry_after("-3", now), None);
    assert_eq!(parse_retry_after("Tue, 14 Nov 2023 22:10:20 GMT", now), None, "a past date is no wait");
    assert_eq!(parse_retry_after("14 Nov 23 22:16 UTC", now), None, "RFC 822 is not accepted, as in the original");
    assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
}

#[test]
fn absurd_retry_after_values_are_capped_or_ignored() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let cap = Duration::from_secs(300);
    let within = |v: &str| retry_after_within(v, now, cap);
    assert_eq!(within("18446744073709551615"), Some(cap));
    assert_eq!(within("99999999999999999999999999"), Some(cap), "beyond u64 is the longest wait");
    assert_eq!(within("Fri, 31 Dec 9999 23:59:59 GMT"), Some(cap));
    assert_eq!(within("120"), Some(Duration::from_secs(120)));
    for ignored in ["-1", "-18446744073709551615", "1.5", "1e9", "+", "", "5s", "Mon, 01 Jan 0001 00:00:00 GMT"] {
        assert_eq!(within(ignored), None, "{ignored:?}");
    }
}

// --- NodeIdentities ---

#[test]
fn node_identities_answer_membership_ignoring_case() {
    let node = NodeIdentities { user_assigned: ids(&["/a", "/b"]), ..Default::default() };
    assert!(node.has_user_assigned("/B"));
    assert!(!node.has_user_assigned("/c"));
}

#[test]
fn a_deleting_resource_refuses_changes_but_not_no_ops() {
    let deleting = NodeIdentities {
        identity_type: Some(IdentityType::UserAssigned),
        user_assigned: ids(&["/a"]),
        provisioning_state: Some("deleting".into()),
        ..Default::default()
    };
    assert!(deleting.is_deleting());
    assert_eq!(deleting.decide_update(&ids(&["/b"]), &[]), UpdateDecision::Deleting);
    assert_eq!(deleting.decide_update(&ids(&["/A"]), &[]), UpdateDecision::NoChange);
    let healthy = NodeIdentities { provisioning_state: Some("Succeeded".into()), ..deleting };
    assert!(matches!(healthy.decide_update(&ids(&["/b"]), &[]), UpdateDecision::Patch(_)));
}

#[test]
fn a_resource_without_identity_block_is_planned_like_type_none() {
    let bare = NodeIdentities::default();
    let UpdateDecision::Patch(patch) = bare.decide_update(&ids(&["/a"]), &[]) else { panic!("expected a patch") };
    assert_eq!(patch.identity_type, IdentityType::UserAssigned);
}

// --- protected identities ---

const KUBELET: &str =
    "/subscriptions/s/resourcegroups/mc/providers/microsoft.managedidentity/userassignedidentities/agentpool";
const PINNED: &str =
    "/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/pinned";
const APP: &str = "/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/app";

/// A scale set carrying the cluster identity, a pinned identity and an app identity, with the
/// client IDs ARM reports for them.
fn carrying_three() -> NodeIdentities {
    let mut user_assigned = ids(&[KUBELET, PINNED, APP]);
    user_assigned.sort();
    NodeIdentities {
        identity_type: Some(IdentityType::UserAssigned),
        user_assigned,
        client_ids: [(KUBELET, "aaaa-kubelet"), (PINNED, "bbbb-pinned"), (APP, "cccc-app")]
            .iter()
            .map(|(id, c)| ((*id).to_owned(), (*c).to_owned()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn protected_identities_are_recognised_by_arms_client_id_not_the_callers_claim() {
    let node = carrying_three();
    let protected = ProtectedClientIds::new(["AAAA-KUBELET", " bbbb-pinned ", ""]);
    let remove = ids(&[&KUBELET.to_uppercase(), PINNED, APP]);
    let split = node.split_removals(&remove, &protected);
    assert_eq!(split.kept, ids(&[&KUBELET.to_uppercase(), PINNED]));
    assert_eq!(split.allowed, ids(&[APP]));
    let UpdateDecision::Patch(patch) = node.decide_update(&[], &split.allowed) else { panic!("expected a patch") };
    assert_eq!(patch.delta, delta(&[(APP, Change::Remove)]));
    assert_eq!(patch.identity_type, IdentityType::UserAssigned, "the protected ones stay, so the type does");
}

#[test]
fn nothing_protected_or_nothing_attached_removes_as_asked() {
    let node = carrying_three();
    let remove = ids(&[KUBELET, "/not/attached"]);
    let split = node.split_removals(&remove, &ProtectedClientIds::default());
    assert_eq!((split.allowed, split.kept), (remove.clone(), vec![]));
    let split = node.split_removals(&ids(&["/not/attached"]), &ProtectedClientIds::new(["aaaa-kubelet"]));
    assert_eq!(split.allowed, ids(&["/not/attached"]), "nothing to detach; the PATCH planner ignores it");
}

#[test]
fn an_attached_identity_without_a_client_id_from_arm_is_kept_while_anything_is_protected() {
    let mut node = carrying_three();
    node.client_ids.remove(APP);
    let split = node.split_removals(&ids(&[APP]), &ProtectedClientIds::new(["aaaa-kubelet"]));
    assert_eq!((split.allowed, split.kept), (vec![], ids(&[APP])));
    let split = node.split_removals(&ids(&[APP]), &ProtectedClientIds::default());
    assert_eq!(split.allowed, ids(&[APP]));
}

#[test]
fn protected_client_ids_are_not_shown_in_debug_output() {
    let protected = ProtectedClientIds::new(["aaaa-kubelet", "bbbb-pinned"]);
    let text = format!("{protected:?} {:?}", ArmOptions { protected: protected.clone(), ..ArmOptions::default() });
    assert!(!text.contains("kubelet") && !text.contains("pinned"), "{text}");
    assert!(text.contains("2 client IDs"), "{text}");
    assert!(protected.contains("AAAA-Kubelet") && !protected.contains("cccc-app"));
}
