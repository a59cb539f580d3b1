//! The decision: which AzureAssignedIdentities must exist, and what to create, update, delete
//! and attach or detach on which VM or scale set to get there.
//!
//! Pure: no clients, no clock, no randomness. Everything it needs comes in as views; what it
//! decides goes out as a [`Plan`] that `act` carries out without second-guessing.
//!
//! ```text
//! pods, bindings, identities --desired--> Desired set --plan(current, nodes)--> Plan
//! ```
//!
//! A [`Plan`] holds, per VM or scale set, the objects to write and the identities to attach and
//! detach; splitting an update into ARM's 150-identity requests is the ARM client's business.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aadpodid_api::AssignedIdentityState;
use aadpodid_api::view::IdentityType;

use crate::view::{
    AssignedName, AssignedView, AssignmentKey, BindingView, IdentityIndex, IdentityView, NodeIndex, PodView, VmTarget,
    normalise_resource_id,
};

/// How MIC runs, as far as the decision is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// `--forceNamespaced` / `FORCENAMESPACED=true`: every identity behaves as namespaced.
    pub force_namespaced: bool,
}

/// One (pod, identity) pair that must be recorded as an AzureAssignedIdentity.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub name: AssignedName,
    /// Namespace of the AzureAssignedIdentity: `default`, or the identity's when namespaced.
    pub namespace: String,
    pub pod: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub node: String,
    pub identity: Arc<IdentityView>,
    pub binding: Arc<BindingView>,
}

impl Desired {
    /// The original's `match`: same binding and identity (by name and resourceVersion), same
    /// pod, namespace and node. Anything else is an update of the existing object.
    pub fn matches(&self, current: &AssignedView) -> bool {
        self.binding.name == current.binding_name
            && self.binding.resource_version == current.binding_resource_version
            && self.identity.name == current.identity_name
            && self.identity.resource_version == current.identity_resource_version
            && self.pod == current.pod
            && self.pod_namespace == current.pod_namespace
            && self.node == current.node
    }

    fn is_user_assigned(&self) -> bool {
        self.identity.kind == IdentityType::UserAssignedMsi
    }

    /// The pair, whatever its object is named.
    pub fn key(&self) -> AssignmentKey {
        AssignmentKey {
            pod_namespace: self.pod_namespace.clone(),
            pod: self.pod.clone(),
            identity_namespace: self.identity.namespace.clone(),
            identity: self.identity.name.clone(),
        }
    }
}

/// The desired set: one entry per (pod, identity) pair.
pub type DesiredSet = BTreeMap<AssignmentKey, Desired>;

/// The desired set: every scheduled labelled pod × every binding whose selector equals the
/// label value (bindings of all namespaces, in (namespace, name) order) × the identity the
/// binding names in its own namespace. Namespaced identities (or `force_namespaced`) pair only
/// within one namespace. Several bindings giving one pair: the first binding wins. Pairs whose
/// object names collide are all kept here; [`plan`] decides which one gets the name.
pub fn desired(pods: &[PodView], bindings: &[Arc<BindingView>], identities: &IdentityIndex, mode: Mode) -> DesiredSet {
    let mut sorted: Vec<&Arc<BindingView>> = bindings.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut by_selector: BTreeMap<&str, Vec<&Arc<BindingView>>> = BTreeMap::new();
    for b in sorted {
        by_selector.entry(b.selector.as_str()).or_default().push(b);
    }
    let mut out = BTreeMap::new();
    for pod in pods {
        for binding in by_selector.get(pod.selector.as_str()).into_iter().flatten() {
            let Some(identity) = identities.get(&(binding.namespace.clone(), binding.identity.clone())) else {
                continue;
            };
            if let Some(d) = pair(pod, binding, identity, mode) {
                out.entry(d.key()).or_insert(d);
            }
        }
    }
    out
}

fn pair(pod: &PodView, binding: &Arc<BindingView>, identity: &Arc<IdentityView>, mode: Mode) -> Option<Desired> {
    let namespaced = mode.force_namespaced || identity.namespaced;
    if namespaced && !(identity.namespace == binding.namespace && binding.namespace == pod.namespace) {
        return None;
    }
    let namespace = if namespaced {
        identity.namespace.clone()
    } else {
        aadpodid_api::names::DEFAULT_ASSIGNED_NAMESPACE.to_owned()
    };
    Some(Desired {
        name: AssignedName::new(&pod.name, &pod.namespace, &identity.name),
        namespace,
        pod: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
        pod_uid: pod.uid.clone(),
        node: pod.node.clone(),
        identity: Arc::clone(identity),
        binding: Arc::clone(binding),
    })
}

/// Client IDs that are never detached: `--immutable-user-msis` plus the cluster identity.
/// Compared ignoring case (the original lower-cases only one side; a documented difference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Immutable(BTreeSet<String>);

impl Immutable {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(client_ids: I) -> Self {
        Self(client_ids.into_iter().map(|s| s.as_ref().trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect())
    }

    pub fn contains(&self, client_id: &str) -> bool {
        self.0.contains(&client_id.to_ascii_lowercase())
    }
}

/// An existing object whose identity, binding, pod or node changed: rewritten in place.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub before: AssignedView,
    pub after: Desired,
}

/// An existing object that is no longer desired.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub assigned: AssignedView,
    /// Its identity is on this target's remove list (type 0, assigned, not immutable, unused).
    pub unassign: bool,
}

/// Everything to do on one VM or scale set in one cycle: at most one identity change on ARM.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetPlan {
    /// New objects, written with status `Created` before the ARM call.
    pub creates: Vec<Desired>,
    /// Changed objects, rewritten with status `Created` before the ARM call.
    pub updates: Vec<Update>,
    /// Objects still `Created` from an earlier cycle: the ARM call is retried for them.
    pub retries: Vec<AssignedView>,
    pub deletes: Vec<Removal>,
    /// Lower-cased resource IDs to attach.
    pub add: BTreeSet<String>,
    /// Lower-cased resource IDs to detach; never one that is also in `add`.
    pub remove: BTreeSet<String>,
}

impl TargetPlan {
    /// True when ARM must be called.
    pub fn needs_arm(&self) -> bool {
        !self.add.is_empty() || !self.remove.is_empty()
    }

    /// Number of objects this target touches.
    pub fn len(&self) -> usize {
        self.creates.len() + self.updates.len() + self.retries.len() + self.deletes.len()
    }

    /// True when nothing is to be done here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && !self.needs_arm()
    }
}

/// The result of [`plan`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub targets: BTreeMap<VmTarget, TargetPlan>,
    /// Objects on nodes that no longer exist: deleted without any ARM call.
    pub orphans: Vec<AssignedView>,
    /// Desired pairs on nodes not (yet) known, or whose object name is still held by an object
    /// deleted this cycle: nothing is created for them yet.
    pub waiting: Vec<AssignedName>,
    /// Desired pairs whose object name already belongs to another live pair (another pod or
    /// another identity): they get no assignment, and their pod is told.
    pub conflicts: Vec<Desired>,
}

impl Plan {
    /// True when the cycle has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty() && self.conflicts.is_empty() && self.targets.values().all(TargetPlan::is_empty)
    }
}

/// The diff: create what is desired and missing, retry what is still `Created`, rewrite what
/// changed, delete what is no longer desired; attach new type-0 identities, and detach an
/// identity only when no desired pair on the same VM (or any instance of the same scale set)
/// still uses its resource ID. Pairs are matched to objects by [`AssignmentKey`], never by
/// object name: an object name held by one pair is never rewritten for another. Objects on
/// vanished nodes become orphans.
pub fn plan(desired: &DesiredSet, current: &[AssignedView], nodes: &NodeIndex, immutable: &Immutable) -> Plan {
    let claims = Claims::new(desired, current);
    let users = Users::new(&claims.holders, nodes);
    let mut out = Plan { waiting: claims.deferred, conflicts: claims.conflicts, ..Plan::default() };
    for (d, own) in &claims.holders {
        let Some(target) = nodes.get(&d.node) else {
            out.waiting.push(d.name.clone());
            continue;
        };
        match own {
            None => out.target(target).creates.push((*d).clone()),
            Some(c) if d.matches(c) => {
                if c.state != AssignedIdentityState::Created {
                    continue;
                }
                out.target(target).retries.push((*c).clone());
            }
            Some(c) => {
                plan_detach(&mut out, c, &users, nodes, immutable);
                out.target(target).updates.push(Update { before: (*c).clone(), after: (*d).clone() });
            }
        }
        if d.is_user_assigned() {
            out.target(target).add.insert(normalise_resource_id(&d.identity.resource_id));
        }
    }
    for c in claims.leftovers {
        let Some(target) = nodes.get(&c.node) else {
            out.orphans.push(c.clone());
            continue;
        };
        let unassign = plan_detach(&mut out, c, &users, nodes, immutable);
        out.target(target).deletes.push(Removal { assigned: c.clone(), unassign });
    }
    for t in out.targets.values_mut() {
        t.remove = t.remove.difference(&t.add).cloned().collect();
    }
    out
}

impl Plan {
    fn target(&mut self, target: &VmTarget) -> &mut TargetPlan {
        self.targets.entry(target.clone()).or_default()
    }
}

/// Which desired pair holds which object, and which object name.
struct Claims<'a> {
    /// Desired pairs that keep (with their object) or get an object this cycle.
    holders: Vec<(&'a Desired, Option<&'a AssignedView>)>,
    /// Desired pairs whose name belongs to another live pair.
    conflicts: Vec<Desired>,
    /// Desired pairs whose name is held by an object that is deleted this cycle.
    deferred: Vec<AssignedName>,
    /// Objects no desired pair keeps, in (namespace, name) order.
    leftovers: Vec<&'a AssignedView>,
}

impl<'a> Claims<'a> {
    /// An existing object belongs to the pair its spec names (when several name one pair, the
    /// one where the pair's object belongs, then the first in (namespace, name) order). A pair
    /// without one takes its name only when no object holds it and no earlier pair (in key
    /// order) took it this cycle: the first owner keeps a name, never a later one.
    fn new(desired: &'a DesiredSet, current: &'a [AssignedView]) -> Self {
        let mut keyed: Vec<(AssignmentKey, &AssignedView)> = current.iter().map(|c| (c.key(), c)).collect();
        let away = |(k, c): &(AssignmentKey, &AssignedView)| desired.get(k).is_none_or(|d| d.namespace != c.namespace);
        keyed.sort_by(|a, b| (away(a), &a.1.namespace, &a.1.name).cmp(&(away(b), &b.1.namespace, &b.1.name)));
        let mut taken: BTreeMap<(&str, &AssignedName), &AssignmentKey> = BTreeMap::new();
        let mut own: BTreeMap<&AssignmentKey, &AssignedView> = BTreeMap::new();
        let mut leftovers = Vec::new();
        for (k, c) in &keyed {
            taken.insert((c.namespace.as_str(), &c.name), k);
            match own.entry(k) {
                Entry::Vacant(e) => {
                    e.insert(c);
                }
                Entry::Occupied(_) => leftovers.push(*c),
            }
        }
        let mut claims = Self { holders: Vec::new(), conflicts: Vec::new(), deferred: Vec::new(), leftovers };
        for (key, d) in desired {
            if let Some(c) = own.get(key) {
                claims.holders.push((d, Some(*c)));
                continue;
            }
            match taken.entry((d.namespace.as_str(), &d.name)) {
                Entry::Vacant(e) => {
                    e.insert(key);
                    claims.holders.push((d, None));
                }
                Entry::Occupied(e) if desired.contains_key(*e.get()) => claims.conflicts.push(d.clone()),
                Entry::Occupied(_) => claims.deferred.push(d.name.clone()),
            }
        }
        claims.leftovers.extend(own.into_iter().filter(|(k, _)| !desired.contains_key(*k)).map(|(_, c)| c));
        claims.leftovers.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        claims
    }
}

/// Puts the identity of `c` on its target's remove list when the rules allow; returns whether.
/// A `Created` object counts: its ARM write may have happened before MIC stopped, and removing
/// an identity that is not there changes nothing.
fn plan_detach(out: &mut Plan, c: &AssignedView, users: &Users<'_>, nodes: &NodeIndex, immutable: &Immutable) -> bool {
    let Some(target) = nodes.get(&c.node) else { return false };
    let state = matches!(
        c.state,
        AssignedIdentityState::Assigned | AssignedIdentityState::Legacy | AssignedIdentityState::Created
    );
    let detach = state && c.is_user_assigned() && !immutable.contains(&c.client_id) && !users.in_use(c, target);
    if detach {
        out.target(target).remove.insert(normalise_resource_id(&c.resource_id));
    } else {
        out.target(target);
    }
    detach
}

/// Who still needs which identity where: the nodes (and their VM or scale set) of the desired
/// type-0 pairs that hold an object, by normalised resource ID. Never by client ID: a client ID
/// is whatever string an AzureIdentity claims, and ARM attaches by resource ID.
struct Users<'a> {
    by_resource: BTreeMap<String, Vec<(&'a str, Option<&'a VmTarget>)>>,
}

impl<'a> Users<'a> {
    fn new(holders: &[(&'a Desired, Option<&'a AssignedView>)], nodes: &'a NodeIndex) -> Self {
        let mut by_resource: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for (d, _) in holders.iter().filter(|(d, _)| d.is_user_assigned()) {
            by_resource
                .entry(normalise_resource_id(&d.identity.resource_id))
                .or_default()
                .push((d.node.as_str(), nodes.get(&d.node)));
        }
        Self { by_resource }
    }

    /// In use when a desired pair with the same resource ID is on the same node, or on any
    /// node of the same scale set.
    fn in_use(&self, c: &AssignedView, target: &VmTarget) -> bool {
        let vmss = matches!(target, VmTarget::Vmss(_));
        self.by_resource
            .get(&normalise_resource_id(&c.resource_id))
            .into_iter()
            .flatten()
            .any(|(node, t)| *node == c.node || (vmss && *t == Some(target)))
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
