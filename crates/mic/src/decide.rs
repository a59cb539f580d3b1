//! The decision: which AzureAssignedIdentities must exist, and what to create, update, delete
//! and attach or detach on which VM or scale set to get there.
//!
//! Pure: no clients, no clock, no randomness. Everything it needs comes in as views; what it
//! decides goes out as a [`Plan`] that `act` carries out without second-guessing.
//!
//! ```text
//! pods, bindings, identities --desired--> Desired set --plan(current, nodes)--> Plan --batches--> ARM deltas
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aadpodid_api::AssignedIdentityState;
use aadpodid_api::view::IdentityType;

use crate::view::{
    AssignedName, AssignedView, BindingView, IdentityIndex, IdentityView, NodeIndex, NodeTarget, PodView,
};

/// The original's identity-patch limit: at most this many identities per ARM request.
pub const MAX_IDENTITIES_PER_REQUEST: usize = 150;

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
}

/// The desired set (§1.7): every scheduled labelled pod × every binding whose selector equals
/// the label value (bindings of all namespaces, in (namespace, name) order) × the identity the
/// binding names in its own namespace. Namespaced identities (or `force_namespaced`) pair only
/// within one namespace. On a name conflict the first pair wins, so the binding of the
/// lexically smaller namespace does.
pub fn desired(
    pods: &[PodView],
    bindings: &[Arc<BindingView>],
    identities: &IdentityIndex,
    mode: Mode,
) -> BTreeMap<AssignedName, Desired> {
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
                out.entry(d.name.clone()).or_insert(d);
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
    pub targets: BTreeMap<NodeTarget, TargetPlan>,
    /// Objects on nodes that no longer exist: deleted without any ARM call.
    pub orphans: Vec<AssignedView>,
    /// Desired pairs on nodes not (yet) known: nothing is created until the node appears.
    pub waiting: Vec<AssignedName>,
}

impl Plan {
    /// True when the cycle has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty() && self.targets.values().all(TargetPlan::is_empty)
    }
}

/// The diff (§2.4 steps 4–8): create what is desired and missing, retry what is still
/// `Created`, rewrite what changed, delete what is no longer desired; attach new type-0
/// identities, and detach an identity only when no other desired pair on the same VM (or any
/// instance of the same scale set) still needs it. Objects on vanished nodes become orphans.
pub fn plan(
    desired: &BTreeMap<AssignedName, Desired>,
    current: &BTreeMap<AssignedName, AssignedView>,
    nodes: &NodeIndex,
    immutable: &Immutable,
) -> Plan {
    let mut out = Plan::default();
    let users = Users::new(desired, nodes);
    for d in desired.values() {
        let Some(target) = nodes.get(&d.node) else {
            out.waiting.push(d.name.clone());
            continue;
        };
        match current.get(&d.name) {
            None => out.target(target).creates.push(d.clone()),
            Some(c) if d.matches(c) => {
                if c.state != AssignedIdentityState::Created {
                    continue;
                }
                out.target(target).retries.push(c.clone());
            }
            Some(c) => {
                plan_detach(&mut out, c, &users, nodes, immutable);
                out.target(target).updates.push(Update { before: c.clone(), after: d.clone() });
            }
        }
        if d.is_user_assigned() {
            out.target(target).add.insert(d.identity.resource_id.to_ascii_lowercase());
        }
    }
    for c in current.values().filter(|c| !desired.contains_key(&c.name)) {
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
    fn target(&mut self, target: &NodeTarget) -> &mut TargetPlan {
        self.targets.entry(target.clone()).or_default()
    }
}

/// Puts the identity of `c` on its target's remove list when the rules allow; returns whether.
fn plan_detach(out: &mut Plan, c: &AssignedView, users: &Users<'_>, nodes: &NodeIndex, immutable: &Immutable) -> bool {
    let Some(target) = nodes.get(&c.node) else { return false };
    let assigned = matches!(c.state, AssignedIdentityState::Assigned | AssignedIdentityState::Legacy);
    let detach = assigned && c.is_user_assigned() && !immutable.contains(&c.client_id) && !users.in_use(c, target);
    if detach {
        out.target(target).remove.insert(c.resource_id.to_ascii_lowercase());
    } else {
        out.target(target);
    }
    detach
}

/// One desired type-0 pair: its object name, node, and the node's VM or scale set.
type User<'a> = (&'a AssignedName, &'a str, Option<&'a NodeTarget>);

/// Who still needs which client ID where: desired type-0 pairs by client ID.
struct Users<'a> {
    by_client: BTreeMap<&'a str, Vec<User<'a>>>,
}

impl<'a> Users<'a> {
    fn new(desired: &'a BTreeMap<AssignedName, Desired>, nodes: &'a NodeIndex) -> Self {
        let mut by_client: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for d in desired.values().filter(|d| d.is_user_assigned()) {
            by_client.entry(d.identity.client_id.as_str()).or_default().push((
                &d.name,
                d.node.as_str(),
                nodes.get(&d.node),
            ));
        }
        Self { by_client }
    }

    /// In use when another desired pair (another object name) with the same client ID is on
    /// the same node, or on any node of the same scale set.
    fn in_use(&self, c: &AssignedView, target: &NodeTarget) -> bool {
        self.by_client.get(c.client_id.as_str()).into_iter().flatten().any(|(name, node, t)| {
            **name != c.name && (*node == c.node || (matches!(target, NodeTarget::Vmss(_)) && *t == Some(target)))
        })
    }
}

/// One ARM identity change: IDs to attach and to detach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityDelta {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl IdentityDelta {
    fn len(&self) -> usize {
        self.add.len() + self.remove.len()
    }
}

/// Splits a delta into requests of at most `max_per_request` identities (ARM's limit is
/// [`MAX_IDENTITIES_PER_REQUEST`]), removals first. An empty delta gives no request.
pub fn batches(delta: &IdentityDelta, max_per_request: usize) -> Vec<IdentityDelta> {
    let max = max_per_request.max(1);
    let mut out: Vec<IdentityDelta> = Vec::new();
    let entries = delta.remove.iter().map(|r| (false, r)).chain(delta.add.iter().map(|a| (true, a)));
    for (is_add, id) in entries {
        if out.last().is_none_or(|b| b.len() >= max) {
            out.push(IdentityDelta::default());
        }
        if let Some(b) = out.last_mut() {
            if is_add { b.add.push(id.clone()) } else { b.remove.push(id.clone()) }
        }
    }
    out
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
