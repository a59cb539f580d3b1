use std::collections::BTreeMap;
use std::sync::Arc;

use aadpodid_api::names::BEHAVIOR_ANNOTATION;
use aadpodid_api::{
    AzureAssignedIdentity, AzureAssignedIdentitySpec, AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding,
    AzureIdentityBindingSpec, AzureIdentitySpec,
};

use super::*;
use crate::view::{NodeIndex, PodView, VmTarget, assigned_view, binding_view, identity_index};

const SUB: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities";

fn mk_pod(ns: &str, name: &str, node: &str, selector: &str) -> PodView {
    PodView {
        name: name.into(),
        namespace: ns.into(),
        node: node.into(),
        selector: selector.into(),
        uid: format!("uid-{name}"),
    }
}

fn mk_identity(ns: &str, name: &str, type_: i64, client: &str) -> Arc<AzureIdentity> {
    let mut id = AzureIdentity::new(
        name,
        AzureIdentitySpec {
            type_: Some(type_),
            resource_id: (type_ == 0).then(|| format!("{SUB}/{name}")),
            client_id: Some(client.into()),
            ..Default::default()
        },
    );
    id.metadata.namespace = Some(ns.into());
    id.metadata.resource_version = Some("1".into());
    Arc::new(id)
}

fn namespaced(id: Arc<AzureIdentity>) -> Arc<AzureIdentity> {
    let mut id = (*id).clone();
    id.metadata.annotations = Some([(BEHAVIOR_ANNOTATION.to_owned(), "namespaced".to_owned())].into());
    Arc::new(id)
}

fn mk_binding(ns: &str, name: &str, identity: &str, selector: &str) -> Arc<BindingView> {
    let mut b = AzureIdentityBinding::new(
        name,
        AzureIdentityBindingSpec {
            azure_identity: Some(identity.into()),
            selector: Some(selector.into()),
            ..Default::default()
        },
    );
    b.metadata.namespace = Some(ns.into());
    b.metadata.resource_version = Some("1".into());
    Arc::new(binding_view(&Arc::new(b)).unwrap())
}

fn index(ids: &[Arc<AzureIdentity>]) -> IdentityIndex {
    identity_index(ids).0
}

fn vmss_nodes(vmss: &str, nodes: &[&str]) -> NodeIndex {
    nodes.iter().map(|n| ((*n).to_owned(), VmTarget::Vmss(vmss.into()))).collect()
}

fn vm_nodes(nodes: &[&str]) -> NodeIndex {
    nodes.iter().map(|n| ((*n).to_owned(), VmTarget::Vm((*n).into()))).collect()
}

/// The object MIC would have written for `d`, in `state`.
fn stored(d: &Desired, state: &str) -> AssignedView {
    let mut a = AzureAssignedIdentity::new(
        &d.name.0,
        AzureAssignedIdentitySpec {
            azure_identity_ref: Some(Box::new((*d.identity.object).clone())),
            azure_binding_ref: Some(Box::new((*d.binding.object).clone())),
            pod: Some(d.pod.clone()),
            pod_namespace: Some(d.pod_namespace.clone()),
            node_name: Some(d.node.clone()),
            ..Default::default()
        },
    );
    a.metadata.namespace = Some(d.namespace.clone());
    a.status = Some(AzureAssignedIdentityStatus { status: Some(state.into()), ..Default::default() });
    assigned_view(&Arc::new(a))
}

fn current_of(items: impl IntoIterator<Item = AssignedView>) -> Vec<AssignedView> {
    items.into_iter().collect()
}

fn names(d: &DesiredSet) -> Vec<&str> {
    d.values().map(|d| d.name.0.as_str()).collect()
}

fn rid(name: &str) -> String {
    format!("{SUB}/{name}").to_ascii_lowercase()
}

// === desired ===

#[test]
fn pod_whose_label_equals_a_selector_gets_the_bindings_identity_in_default() {
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_binding("apps", "b", "myid", "sel")],
        &index(&[mk_identity("apps", "myid", 0, "c1")]),
        Mode::default(),
    );
    assert_eq!(names(&d), ["demo-apps-myid"]);
    let one = d.values().next().unwrap();
    assert_eq!((one.namespace.as_str(), one.node.as_str(), one.pod_uid.as_str()), ("default", "n1", "uid-demo"));
}

#[test]
fn selector_is_compared_as_an_exact_string() {
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "Sel"), mk_pod("apps", "x", "n1", "sel,other")],
        &[mk_binding("apps", "b", "myid", "sel")],
        &index(&[mk_identity("apps", "myid", 0, "c1")]),
        Mode::default(),
    );
    assert!(d.is_empty());
}

#[test]
fn binding_in_one_namespace_serves_pods_of_every_namespace_when_not_namespaced() {
    let d = desired(
        &[mk_pod("other", "demo", "n1", "sel")],
        &[mk_binding("apps", "b", "myid", "sel")],
        &index(&[mk_identity("apps", "myid", 0, "c1")]),
        Mode::default(),
    );
    assert_eq!(names(&d), ["demo-other-myid"]);
}

#[test]
fn identity_is_looked_up_in_the_bindings_namespace_only() {
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_binding("apps", "b", "myid", "sel")],
        &index(&[mk_identity("other", "myid", 0, "c1")]),
        Mode::default(),
    );
    assert!(d.is_empty());
}

#[test]
fn several_bindings_to_one_identity_give_one_assignment_from_the_first_binding() {
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_binding("apps", "zz", "myid", "sel"), mk_binding("apps", "aa", "myid", "sel")],
        &index(&[mk_identity("apps", "myid", 0, "c1")]),
        Mode::default(),
    );
    assert_eq!(names(&d), ["demo-apps-myid"]);
    assert_eq!(d.values().next().unwrap().binding.name, "aa");
}

#[test]
fn several_identities_for_one_pod_give_one_assignment_each() {
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_binding("apps", "b1", "id1", "sel"), mk_binding("apps", "b2", "id2", "sel")],
        &index(&[mk_identity("apps", "id1", 0, "c1"), mk_identity("apps", "id2", 1, "c2")]),
        Mode::default(),
    );
    assert_eq!(names(&d), ["demo-apps-id1", "demo-apps-id2"]);
}

#[test]
fn same_identity_name_in_two_namespaces_keeps_the_lexically_smaller_namespace() {
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_binding("zeta", "b", "myid", "sel"), mk_binding("alpha", "b", "myid", "sel")],
        &index(&[mk_identity("zeta", "myid", 0, "c-zeta"), mk_identity("alpha", "myid", 0, "c-alpha")]),
        Mode::default(),
    );
    assert_eq!(names(&d), ["demo-apps-myid", "demo-apps-myid"], "two pairs, one object name");
    let p = plan(&d, &[], &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.creates.len(), 1);
    assert_eq!(t.creates[0].identity.client_id, "c-alpha");
    assert_eq!(p.conflicts[0].identity.client_id, "c-zeta");
}

#[test]
fn force_namespaced_pairs_only_within_one_namespace_and_writes_there() {
    let ids = index(&[mk_identity("apps", "myid", 0, "c1")]);
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    let mode = Mode { force_namespaced: true };
    let other = desired(&[mk_pod("other", "demo", "n1", "sel")], &bindings, &ids, mode);
    assert!(other.is_empty());
    let same = desired(&[mk_pod("apps", "demo", "n1", "sel")], &bindings, &ids, mode);
    assert_eq!(same.values().next().unwrap().namespace, "apps");
}

#[test]
fn namespaced_annotation_on_the_identity_acts_like_force_namespaced() {
    let ids = index(&[namespaced(mk_identity("apps", "myid", 0, "c1"))]);
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    assert!(desired(&[mk_pod("other", "demo", "n1", "sel")], &bindings, &ids, Mode::default()).is_empty());
    let same = desired(&[mk_pod("apps", "demo", "n1", "sel")], &bindings, &ids, Mode::default());
    assert_eq!(same.values().next().unwrap().namespace, "apps");
}

#[test]
fn user_assigned_identity_with_an_invalid_resource_id_is_ignored() {
    let mut bad = (*mk_identity("apps", "myid", 0, "c1")).clone();
    bad.spec.resource_id = Some("/subscriptions/s/whatever".into());
    let (ids, invalid) = identity_index(&[Arc::new(bad)]);
    assert_eq!(invalid.len(), 1);
    let d = desired(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_binding("apps", "b", "myid", "sel")],
        &ids,
        Mode::default(),
    );
    assert!(d.is_empty());
}

// === plan ===

fn one(pods: &[PodView], ids: &[Arc<AzureIdentity>], bindings: &[Arc<BindingView>]) -> DesiredSet {
    desired(pods, bindings, &index(ids), Mode::default())
}

#[test]
fn new_pair_is_created_and_its_identity_attached() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let p = plan(&d, &[], &vmss_nodes("pool", &["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vmss("pool".into())];
    assert_eq!(t.creates.len(), 1);
    assert_eq!(t.add.iter().collect::<Vec<_>>(), [&rid("myid")]);
    assert!(t.remove.is_empty());
}

#[test]
fn assigned_pair_that_still_matches_needs_nothing() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Assigned")));
    let p = plan(&d, &cur, &vmss_nodes("pool", &["n1"]), &Immutable::default());
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn pair_still_created_is_retried_every_cycle() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Created")));
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!((t.creates.len(), t.retries.len()), (0, 1));
    assert!(t.add.contains(&rid("myid")));
}

#[test]
fn binding_edit_rewrites_the_object_and_keeps_the_identity_attached() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let pods = [mk_pod("apps", "demo", "n1", "sel")];
    let old = one(&pods, &ids, &[mk_binding("apps", "b", "myid", "sel")]);
    let cur = current_of(old.values().map(|x| stored(x, "Assigned")));
    let mut edited = (*mk_binding("apps", "b", "myid", "sel")).clone();
    edited.resource_version = "2".into();
    let d = one(&pods, &ids, &[Arc::new(edited)]);
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.updates.len(), 1);
    assert!(t.add.contains(&rid("myid")));
    assert!(t.remove.is_empty(), "an ID both added and removed ends up added");
}

#[test]
fn pod_moved_to_another_vm_detaches_from_the_old_vm_and_attaches_to_the_new() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    let old = one(&[mk_pod("apps", "demo", "n1", "sel")], &ids, &bindings);
    let cur = current_of(old.values().map(|x| stored(x, "Assigned")));
    let d = one(&[mk_pod("apps", "demo", "n2", "sel")], &ids, &bindings);
    let p = plan(&d, &cur, &vm_nodes(&["n1", "n2"]), &Immutable::default());
    assert!(p.targets[&VmTarget::Vm("n1".into())].remove.contains(&rid("myid")));
    let n2 = &p.targets[&VmTarget::Vm("n2".into())];
    assert!(n2.add.contains(&rid("myid")));
    assert_eq!(n2.updates.len(), 1);
}

#[test]
fn deleted_pod_is_unassigned_when_nobody_else_on_the_vm_needs_the_identity() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Assigned")));
    let p = plan(&BTreeMap::new(), &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert!(t.deletes[0].unassign);
    assert!(t.remove.contains(&rid("myid")));
}

#[test]
fn deleted_pod_keeps_the_identity_while_another_pod_on_the_same_node_needs_it() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    let before = one(&[mk_pod("apps", "a", "n1", "sel"), mk_pod("apps", "b", "n1", "sel")], &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Assigned")));
    let d = one(&[mk_pod("apps", "b", "n1", "sel")], &ids, &bindings);
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.deletes.len(), 1);
    assert!(!t.deletes[0].unassign);
    assert!(!t.needs_arm());
}

#[test]
fn pod_on_other_vmss_instance_keeps_identity_attached() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    let before = one(&[mk_pod("apps", "a", "n1", "sel"), mk_pod("apps", "b", "n2", "sel")], &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Assigned")));
    let d = one(&[mk_pod("apps", "b", "n2", "sel")], &ids, &bindings);
    let p = plan(&d, &cur, &vmss_nodes("pool", &["n1", "n2"]), &Immutable::default());
    assert!(!p.targets[&VmTarget::Vmss("pool".into())].needs_arm());
}

#[test]
fn pod_on_another_standalone_vm_does_not_keep_the_identity_on_this_vm() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    let before = one(&[mk_pod("apps", "a", "n1", "sel"), mk_pod("apps", "b", "n2", "sel")], &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Assigned")));
    let d = one(&[mk_pod("apps", "b", "n2", "sel")], &ids, &bindings);
    let p = plan(&d, &cur, &vm_nodes(&["n1", "n2"]), &Immutable::default());
    assert!(p.targets[&VmTarget::Vm("n1".into())].remove.contains(&rid("myid")));
}

#[test]
fn deleting_the_binding_or_the_identity_removes_the_assignment() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let pods = [mk_pod("apps", "demo", "n1", "sel")];
    let d = one(&pods, &ids, &[mk_binding("apps", "b", "myid", "sel")]);
    let cur = current_of(d.values().map(|x| stored(x, "Assigned")));
    for now in [one(&pods, &ids, &[]), one(&pods, &[], &[mk_binding("apps", "b", "myid", "sel")])] {
        let p = plan(&now, &cur, &vm_nodes(&["n1"]), &Immutable::default());
        let t = &p.targets[&VmTarget::Vm("n1".into())];
        assert_eq!(t.deletes.len(), 1);
        assert!(t.remove.contains(&rid("myid")));
    }
}

#[test]
fn immutable_client_ids_are_never_detached_whatever_their_case() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "Client-ABC")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Assigned")));
    let p = plan(&BTreeMap::new(), &cur, &vm_nodes(&["n1"]), &Immutable::new(["client-abc"]));
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.deletes.len(), 1);
    assert!(!t.needs_arm());
}

#[test]
fn service_principals_need_no_arm_change_either_way() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "sp", 1, "c1")],
        &[mk_binding("apps", "b", "sp", "sel")],
    );
    let created = plan(&d, &[], &vm_nodes(&["n1"]), &Immutable::default());
    let t = &created.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.creates.len(), 1);
    assert!(!t.needs_arm());
    let cur = current_of(d.values().map(|x| stored(x, "Assigned")));
    let deleted = plan(&BTreeMap::new(), &cur, &vm_nodes(&["n1"]), &Immutable::default());
    assert!(!deleted.targets[&VmTarget::Vm("n1".into())].needs_arm());
}

#[test]
fn assignments_on_a_vanished_node_are_orphans_deleted_without_arm() {
    let d = one(
        &[mk_pod("apps", "demo", "gone", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Assigned")));
    let p = plan(&BTreeMap::new(), &cur, &vm_nodes(&["n1"]), &Immutable::default());
    assert_eq!(p.orphans.len(), 1);
    assert!(p.targets.is_empty());
}

#[test]
fn pods_on_unknown_nodes_wait_for_the_node() {
    let d = one(
        &[mk_pod("apps", "demo", "new", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let p = plan(&d, &[], &vm_nodes(&["n1"]), &Immutable::default());
    assert_eq!(p.waiting.len(), 1);
    assert!(p.is_empty());
}

#[test]
fn fifty_pods_on_five_nodes_of_one_scale_set_make_one_target_with_one_identity() {
    let pods: Vec<PodView> = (0..50).map(|i| mk_pod("apps", &format!("p{i}"), &format!("n{}", i % 5), "sel")).collect();
    let d = one(&pods, &[mk_identity("apps", "myid", 0, "c1")], &[mk_binding("apps", "b", "myid", "sel")]);
    let p = plan(&d, &[], &vmss_nodes("pool", &["n0", "n1", "n2", "n3", "n4"]), &Immutable::default());
    assert_eq!(p.targets.len(), 1);
    let t = &p.targets[&VmTarget::Vmss("pool".into())];
    assert_eq!((t.creates.len(), t.add.len()), (50, 1));
}

// === cross-namespace safety ===

/// An identity in `ns` with an explicit resource ID (another namespace may name the same one).
fn identity_with(ns: &str, name: &str, resource_id: &str, client: &str) -> Arc<AzureIdentity> {
    let mut id = (*mk_identity(ns, name, 0, client)).clone();
    id.spec.resource_id = Some(resource_id.into());
    Arc::new(id)
}

#[test]
fn a_colliding_name_from_another_namespace_never_takes_over_an_assignment() {
    // Pod `a-b` in `c` and pod `a` in `b-c` both give the name `a-b-c-x`.
    let victim_id = identity_with("c", "x", &format!("{SUB}/victim"), "c-victim");
    let victim =
        one(&[mk_pod("c", "a-b", "n1", "v")], std::slice::from_ref(&victim_id), &[mk_binding("c", "bv", "x", "v")]);
    let cur = current_of(victim.values().map(|x| stored(x, "Assigned")));
    let d = one(
        &[mk_pod("b-c", "a", "n1", "t"), mk_pod("c", "a-b", "n1", "v")],
        &[identity_with("b-c", "x", &format!("{SUB}/thief"), "c-thief"), victim_id],
        &[mk_binding("b-c", "bt", "x", "t"), mk_binding("c", "bv", "x", "v")],
    );
    let p = plan(&d, &cur, &vmss_nodes("pool", &["n1"]), &Immutable::default());
    let t = p.targets.get(&VmTarget::Vmss("pool".into())).cloned().unwrap_or_default();
    assert!(t.updates.is_empty(), "the existing object is not rewritten: {:?}", t.updates);
    assert!(t.deletes.is_empty() && t.creates.is_empty(), "{t:?}");
    assert!(t.remove.is_empty(), "the victim's identity stays attached");
    assert!(!t.add.contains(&rid("thief")), "the colliding pod gets nothing");
}

#[test]
fn another_namespaces_assignment_of_the_same_resource_id_cannot_detach_it() {
    // Namespace `evil` names the victim's resource ID with another client ID, on the same node.
    let rid_victim = format!("{SUB}/victim");
    let ids = [identity_with("good", "id", &rid_victim, "c-good"), identity_with("evil", "id", &rid_victim, "c-evil")];
    let bindings = [mk_binding("good", "b", "id", "g"), mk_binding("evil", "b", "id", "e")];
    let pods = [mk_pod("good", "app", "n1", "g"), mk_pod("evil", "x", "n1", "e")];
    let before = one(&pods, &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Assigned")));
    let d = one(&pods[..1], &ids, &bindings);
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.deletes.len(), 1, "the evil pod's object goes");
    assert!(!t.deletes[0].unassign);
    assert!(t.remove.is_empty(), "the good pod still needs the identity: {:?}", t.remove);
}

#[test]
fn resource_ids_are_compared_ignoring_case_when_deciding_use() {
    let upper = format!("{SUB}/Shared").to_ascii_uppercase();
    let ids = [identity_with("a", "id", &format!("{SUB}/shared"), "c1"), identity_with("b", "id", &upper, "c1")];
    let bindings = [mk_binding("a", "b", "id", "s"), mk_binding("b", "b", "id", "s2")];
    let pods = [mk_pod("a", "one", "n1", "s"), mk_pod("b", "two", "n1", "s2")];
    let before = one(&pods, &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Assigned")));
    let d = one(&pods[1..], &ids, &bindings);
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    assert!(!p.targets[&VmTarget::Vm("n1".into())].needs_arm(), "the same identity in another case is in use");
}

#[test]
fn a_shared_client_id_with_another_resource_id_does_not_keep_an_identity_attached() {
    let ids = [
        identity_with("a", "id", &format!("{SUB}/mine"), "same"),
        identity_with("b", "id", &format!("{SUB}/theirs"), "same"),
    ];
    let bindings = [mk_binding("a", "b", "id", "s"), mk_binding("b", "b", "id", "s2")];
    let pods = [mk_pod("a", "one", "n1", "s"), mk_pod("b", "two", "n1", "s2")];
    let before = one(&pods, &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Assigned")));
    let d = one(&pods[1..], &ids, &bindings);
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    assert!(p.targets[&VmTarget::Vm("n1".into())].remove.contains(&rid("mine")));
}

// === assignments left `Created` ===

#[test]
fn created_assignment_of_a_deleted_pod_is_detached() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Created")));
    let p = plan(&BTreeMap::new(), &cur, &vmss_nodes("pool", &["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vmss("pool".into())];
    assert!(t.deletes[0].unassign, "the ARM write may have happened before MIC died");
    assert!(t.remove.contains(&rid("myid")));
}

#[test]
fn created_assignment_keeps_the_identity_while_another_pod_on_the_scale_set_needs_it() {
    let ids = [mk_identity("apps", "myid", 0, "c1")];
    let bindings = [mk_binding("apps", "b", "myid", "sel")];
    let before = one(&[mk_pod("apps", "a", "n1", "sel"), mk_pod("apps", "b", "n2", "sel")], &ids, &bindings);
    let cur = current_of(before.values().map(|x| stored(x, "Created")));
    let d = one(&[mk_pod("apps", "b", "n2", "sel")], &ids, &bindings);
    let p = plan(&d, &cur, &vmss_nodes("pool", &["n1", "n2"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vmss("pool".into())];
    assert!(!t.deletes[0].unassign);
    assert!(t.remove.is_empty());
}

#[test]
fn created_assignment_of_an_immutable_identity_is_never_detached() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "cluster-id")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let cur = current_of(d.values().map(|x| stored(x, "Created")));
    let p = plan(&BTreeMap::new(), &cur, &vm_nodes(&["n1"]), &Immutable::new(["CLUSTER-ID"]));
    assert!(!p.targets[&VmTarget::Vm("n1".into())].needs_arm());
}

// === object-name collisions ===

#[test]
fn the_colliding_pair_is_reported_as_a_conflict() {
    let victim_id = identity_with("c", "x", &format!("{SUB}/victim"), "c-victim");
    let victim =
        one(&[mk_pod("c", "a-b", "n1", "v")], std::slice::from_ref(&victim_id), &[mk_binding("c", "bv", "x", "v")]);
    let cur = current_of(victim.values().map(|x| stored(x, "Assigned")));
    let d = one(
        &[mk_pod("b-c", "a", "n1", "t"), mk_pod("c", "a-b", "n1", "v")],
        &[identity_with("b-c", "x", &format!("{SUB}/thief"), "c-thief"), victim_id],
        &[mk_binding("b-c", "bt", "x", "t"), mk_binding("c", "bv", "x", "v")],
    );
    let p = plan(&d, &cur, &vmss_nodes("pool", &["n1"]), &Immutable::default());
    let conflicts: Vec<_> = p.conflicts.iter().map(|c| (c.pod_namespace.as_str(), c.pod.as_str())).collect();
    assert_eq!(conflicts, [("b-c", "a")]);
    assert!(!p.is_empty(), "a conflict is reported even when nothing else is to do");
}

#[test]
fn with_no_object_yet_the_first_pair_in_key_order_gets_the_name() {
    let d = one(
        &[mk_pod("c", "a-b", "n1", "v"), mk_pod("b-c", "a", "n1", "t")],
        &[mk_identity("c", "x", 0, "c1"), mk_identity("b-c", "x", 0, "c2")],
        &[mk_binding("c", "bv", "x", "v"), mk_binding("b-c", "bt", "x", "t")],
    );
    assert_eq!(d.len(), 2, "both pairs are desired");
    let p = plan(&d, &[], &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.creates.len(), 1);
    assert_eq!((t.creates[0].pod_namespace.as_str(), t.creates[0].name.0.as_str()), ("b-c", "a-b-c-x"));
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].pod_namespace, "c");
}

#[test]
fn an_existing_assignment_keeps_its_name_against_an_identity_of_a_smaller_namespace() {
    let pods = [mk_pod("apps", "demo", "n1", "sel")];
    let ids = [mk_identity("alpha", "myid", 0, "c-alpha"), mk_identity("zeta", "myid", 0, "c-zeta")];
    let zeta = one(&pods, &ids, &[mk_binding("zeta", "b", "myid", "sel")]);
    let cur = current_of(zeta.values().map(|x| stored(x, "Assigned")));
    let d = one(&pods, &ids, &[mk_binding("alpha", "b", "myid", "sel"), mk_binding("zeta", "b", "myid", "sel")]);
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    assert!(p.targets.values().all(|t| t.updates.is_empty() && !t.needs_arm()), "{p:?}");
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].identity.namespace, "alpha");
}

#[test]
fn a_name_held_by_a_departing_pair_is_freed_first_and_taken_in_the_next_cycle() {
    let old =
        one(&[mk_pod("c", "a-b", "n1", "v")], &[mk_identity("c", "x", 0, "c1")], &[mk_binding("c", "bv", "x", "v")]);
    let cur = current_of(old.values().map(|x| stored(x, "Assigned")));
    let d = one(
        &[mk_pod("b-c", "a", "n1", "t")],
        &[mk_identity("b-c", "x", 0, "c2")],
        &[mk_binding("b-c", "bt", "x", "t")],
    );
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!((t.creates.len(), t.updates.len(), t.deletes.len()), (0, 0, 1), "never rewritten for another pair");
    assert!(p.conflicts.is_empty(), "the name is free once the old pair is gone: {:?}", p.conflicts);
    assert_eq!(p.waiting, [AssignedName("a-b-c-x".into())]);
    let next = plan(&d, &[], &vm_nodes(&["n1"]), &Immutable::default());
    assert_eq!(next.targets[&VmTarget::Vm("n1".into())].creates.len(), 1);
}

#[test]
fn a_second_object_for_the_same_pair_is_deleted_without_detaching() {
    let d = one(
        &[mk_pod("apps", "demo", "n1", "sel")],
        &[mk_identity("apps", "myid", 0, "c1")],
        &[mk_binding("apps", "b", "myid", "sel")],
    );
    let kept = stored(d.values().next().unwrap(), "Assigned");
    let mut copy = (*kept.object).clone();
    copy.metadata.namespace = Some("apps".into());
    let cur = vec![assigned_view(&Arc::new(copy)), kept];
    let p = plan(&d, &cur, &vm_nodes(&["n1"]), &Immutable::default());
    let t = &p.targets[&VmTarget::Vm("n1".into())];
    assert_eq!(t.deletes.len(), 1);
    assert_eq!(t.deletes[0].assigned.namespace, "apps", "the one where the pair's object belongs is kept");
    assert!(!t.deletes[0].unassign && !t.needs_arm());
}
