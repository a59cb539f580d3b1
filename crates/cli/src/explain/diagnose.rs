//! The diagnosis: MIC's pairing (`aadpodid_mic::decide::desired`) and NMI's answer
//! (`aadpodid_nmi::select`) replayed on a snapshot, each step a line marked ok or problem,
//! with the next step for every problem. Pure: no I/O; time comes in.

use std::sync::Arc;

use aadpodid_api::names::POD_LABEL_KEY;
use aadpodid_api::view::{InvalidIdentity, redact_client_id};
use aadpodid_api::{AssignedIdentityState, AzureAssignedIdentity};
use aadpodid_mic::decide::{Desired, DesiredSet, Mode, desired};
use aadpodid_mic::view::{
    AssignmentKey, BindingView, IdentityIndex, IdentityView, PodView, VmTarget, binding_view, identity_index,
    node_view, pod_view,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Snapshot;
use crate::similar::{Nearness, nearness, suggest};

/// How a line of the explanation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Ok,
    /// Keeps the pod from its identity: `explain` exits 1.
    Problem,
    /// Worth knowing, not a fault (e.g. ARM could not be read).
    Warn,
    Info,
}

/// The explanation `explain pod` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub pod: String,
    pub lines: Vec<(Mark, String)>,
    pub events: Vec<String>,
    pub next_steps: Vec<String>,
}

impl Explanation {
    /// No problem found: the pod gets its identity.
    pub fn healthy(&self) -> bool {
        self.lines.iter().all(|(m, _)| *m != Mark::Problem)
    }

    pub(super) fn add(&mut self, mark: Mark, text: impl Into<String>) {
        self.lines.push((mark, text.into()));
    }

    pub(super) fn problem(&mut self, text: impl Into<String>, next: impl Into<String>) {
        self.add(Mark::Problem, text);
        let next = next.into();
        if !self.next_steps.contains(&next) {
            self.next_steps.push(next);
        }
    }
}

/// Views of the snapshot, built once with MIC's own readers.
struct Ctx {
    pod: Option<PodView>,
    label: Option<String>,
    bindings: Vec<Arc<BindingView>>,
    index: IdentityIndex,
    invalid: Vec<(String, InvalidIdentity)>,
    mode: Mode,
    desired: DesiredSet,
    target: Option<VmTarget>,
}

impl Ctx {
    fn new(s: &Snapshot) -> Self {
        let pod = pod_view(&s.pod);
        let bindings: Vec<Arc<BindingView>> =
            s.bindings.iter().filter_map(|b| binding_view(&Arc::new(b.clone())).ok()).map(Arc::new).collect();
        let identities: Vec<_> = s.identities.iter().cloned().map(Arc::new).collect();
        let (index, invalid) = identity_index(&identities);
        let mode = Mode { force_namespaced: s.settings.force_namespaced };
        let desired =
            pod.as_ref().map(|p| desired(std::slice::from_ref(p), &bindings, &index, mode)).unwrap_or_default();
        Self {
            label: s.pod.labels().get(POD_LABEL_KEY).cloned(),
            target: s.node.as_ref().map(|n| node_view(n).1),
            pod,
            bindings,
            index,
            invalid,
            mode,
            desired,
        }
    }
}

/// Explains the pod of `s`.
pub fn diagnose(s: &Snapshot, now: Timestamp) -> Explanation {
    let pod_key = format!("{}/{}", s.pod.namespace().unwrap_or_default(), s.pod.name_any());
    let mut x = Explanation { pod: pod_key, lines: Vec::new(), events: Vec::new(), next_steps: Vec::new() };
    let ctx = Ctx::new(s);
    pod_lines(&mut x, s, &ctx);
    settings_line(&mut x, s);
    label_lines(&mut x, s, &ctx);
    for b in ctx.bindings.iter().filter(|b| Some(&b.selector) == ctx.label.as_ref()) {
        binding_lines(&mut x, s, &ctx, b);
    }
    near_misses(&mut x, s, &ctx);
    super::render::nmi_lines(&mut x, s, &ctx_nmi(&ctx));
    x.events = super::render::events(&s.events, now);
    x
}

/// What the NMI part needs of the MIC views.
pub(super) struct NmiCtx {
    pub(super) has_bindings: bool,
}

fn ctx_nmi(ctx: &Ctx) -> NmiCtx {
    NmiCtx { has_bindings: ctx.bindings.iter().any(|b| Some(&b.selector) == ctx.label.as_ref()) }
}

fn pod_lines(x: &mut Explanation, s: &Snapshot, ctx: &Ctx) {
    let spec = s.pod.spec.as_ref();
    let node = spec.and_then(|p| p.node_name.clone()).filter(|n| !n.is_empty());
    let phase = s.pod.status.as_ref().and_then(|st| st.phase.clone()).unwrap_or_else(|| "no phase".to_owned());
    match (&node, &ctx.target) {
        (None, _) => x.problem(
            format!("pod {} is not scheduled to a node ({phase}): MIC assigns identities to nodes", x.pod),
            "wait until the pod is scheduled (`kubectl describe pod` says why it is not)",
        ),
        (Some(n), Some(t)) => x.add(Mark::Info, format!("pod {} on node {n} ({t}), {phase}", x.pod)),
        (Some(n), None) => x.problem(
            format!("pod {} is on node {n}, which has no Node object", x.pod),
            "the node is gone: the pod will be rescheduled",
        ),
    }
}

fn settings_line(x: &mut Explanation, s: &Snapshot) {
    let st = &s.settings;
    let mode = if st.managed { "NMI in managed mode (no MIC)" } else { "standard mode (MIC and NMI)" };
    x.add(Mark::Info, format!("{mode}; forceNamespaced={} ({})", st.force_namespaced, st.source));
}

fn label_lines(x: &mut Explanation, s: &Snapshot, ctx: &Ctx) {
    match ctx.label.as_deref() {
        Some(v) if !v.is_empty() => {
            x.add(Mark::Info, format!("label {POD_LABEL_KEY}={v}"));
            if !ctx.bindings.iter().any(|b| b.selector == v) {
                let near = suggest(v, ctx.bindings.iter().map(|b| b.selector.as_str()));
                let hint = near.map(|n| format!(" (nearest selector: {n:?})")).unwrap_or_default();
                x.problem(
                    format!("no AzureIdentityBinding has selector {v:?}{hint}"),
                    format!("create a binding with `selector: {v}` (aadpodid scaffold writes one), or relabel the pod with an existing selector"),
                );
            }
        }
        _ => {
            let selectors: Vec<&str> = ctx.bindings.iter().map(|b| b.selector.as_str()).collect();
            let known = if selectors.is_empty() {
                "no binding exists yet".to_owned()
            } else {
                format!("selectors in use: {}", selectors.join(", "))
            };
            let near_key = s
                .pod
                .labels()
                .keys()
                .any(|k| matches!(nearness(k, POD_LABEL_KEY), Some(Nearness::CaseOnly | Nearness::Typo(_))));
            if !near_key {
                x.problem(
                    format!("the pod has no {POD_LABEL_KEY} label, so no binding can select it ({known})"),
                    format!("label the pod template `{POD_LABEL_KEY}: <selector>` with a binding's selector"),
                );
            }
        }
    }
}

/// Bindings whose selector nearly matches the label value, and labels whose key nearly is
/// `aadpodidbinding`: the typos that cost people hours.
fn near_misses(x: &mut Explanation, s: &Snapshot, ctx: &Ctx) {
    let label = ctx.label.as_deref().unwrap_or_default();
    for b in &ctx.bindings {
        if !label.is_empty()
            && let Some(n @ (Nearness::CaseOnly | Nearness::Typo(_))) = nearness(label, &b.selector)
        {
            x.problem(
                format!("AzureIdentityBinding {}/{} has selector {:?}, {n} from the pod's label value {label:?}: selectors match exactly", b.namespace, b.name, b.selector),
                format!("make the pod label `{POD_LABEL_KEY}: {}` (or the binding's selector) identical", b.selector),
            );
        }
    }
    for (k, v) in s.pod.labels() {
        if let Some(n @ (Nearness::CaseOnly | Nearness::Typo(_))) = nearness(k, POD_LABEL_KEY) {
            let hits: Vec<String> = ctx
                .bindings
                .iter()
                .filter(|b| &b.selector == v)
                .map(|b| format!("{}/{}", b.namespace, b.name))
                .collect();
            let by =
                if hits.is_empty() { String::new() } else { format!(" (binding {} selects {v:?})", hits.join(", ")) };
            x.problem(
                format!("the pod has label {k}={v}: the key is {n} from `{POD_LABEL_KEY}`{by}"),
                format!("rename the label key `{k}` to `{POD_LABEL_KEY}`"),
            );
        }
    }
}

fn binding_lines(x: &mut Explanation, s: &Snapshot, ctx: &Ctx, b: &Arc<BindingView>) {
    x.add(
        Mark::Ok,
        format!("AzureIdentityBinding {}/{} selects the pod (selector {:?})", b.namespace, b.name, b.selector),
    );
    let key = (b.namespace.clone(), b.identity.clone());
    let Some(identity) = ctx.index.get(&key) else {
        return identity_missing(x, s, ctx, b);
    };
    let client = redact_client_id(&identity.client_id);
    x.add(
        Mark::Ok,
        format!(
            "AzureIdentity {}/{} found: type {}, clientID {client}",
            identity.namespace,
            identity.name,
            identity.kind.as_int()
        ),
    );
    let Some(d) = ctx.desired.values().find(|d| d.binding.namespace == b.namespace && d.binding.name == b.name) else {
        return not_paired(x, ctx, b, identity);
    };
    if s.settings.managed {
        return;
    }
    x.add(Mark::Ok, format!("MIC pairs them: AzureAssignedIdentity {}/{}", d.namespace, d.name));
    assigned_lines(x, s, d);
    if identity.kind.needs_node_assignment() {
        super::render::arm_lines(x, s, identity);
    }
}

fn identity_missing(x: &mut Explanation, s: &Snapshot, ctx: &Ctx, b: &BindingView) {
    let wanted = format!("{}/{}", b.namespace, b.identity);
    if let Some((_, err)) = ctx.invalid.iter().find(|(k, _)| *k == wanted) {
        return x.problem(
            format!("AzureIdentity {wanted} is invalid, MIC ignores it: {err}"),
            format!("fix AzureIdentity {wanted} (`aadpodid check` on its YAML shows how)"),
        );
    }
    let elsewhere: Vec<String> =
        s.identities.iter().filter(|i| i.name_any() == b.identity).map(|i| i.namespace().unwrap_or_default()).collect();
    let same_ns = s
        .identities
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(&b.namespace))
        .map(|i| i.name_any())
        .collect::<Vec<_>>();
    let near = suggest(&b.identity, same_ns.iter().map(String::as_str))
        .map(|n| format!("; did you mean {n:?}?"))
        .unwrap_or_default();
    let there = if elsewhere.is_empty() {
        String::new()
    } else {
        format!(
            " (one exists in namespace {}: a binding only sees identities of its own namespace)",
            elsewhere.join(", ")
        )
    };
    x.problem(
        format!("AzureIdentity {wanted} named by the binding does not exist{there}{near}"),
        format!("create AzureIdentity {} in namespace {} (az identity create … -o json | aadpodid scaffold -n {}), or fix the binding's azureIdentity", b.identity, b.namespace, b.namespace),
    );
}

/// Why MIC does not pair a binding that selects the pod with an identity that exists: tried
/// again without namespaced behaviour; if that pairs them, namespacing is the reason.
fn not_paired(x: &mut Explanation, ctx: &Ctx, b: &Arc<BindingView>, identity: &Arc<IdentityView>) {
    let Some(pod) = ctx.pod.as_ref() else { return };
    let relaxed = Arc::new(IdentityView { namespaced: false, ..(**identity).clone() });
    let index: IdentityIndex = [((b.namespace.clone(), b.identity.clone()), relaxed)].into();
    let without = desired(std::slice::from_ref(pod), std::slice::from_ref(b), &index, Mode { force_namespaced: false });
    if without.is_empty() {
        let key = AssignmentKey {
            pod_namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            identity_namespace: identity.namespace.clone(),
            identity: identity.name.clone(),
        };
        let other =
            ctx.desired.get(&key).map(|d| format!("{}/{}", d.binding.namespace, d.binding.name)).unwrap_or_default();
        return x.problem(
            format!(
                "MIC does not pair binding {}/{}: binding {other} already pairs the pod with AzureIdentity {}/{} (the first binding in namespace/name order wins)",
                b.namespace, b.name, identity.namespace, identity.name
            ),
            "one binding per identity and selector is enough; delete the duplicate",
        );
    }
    let why = if ctx.mode.force_namespaced {
        "MIC runs with forceNamespaced".to_owned()
    } else {
        format!(
            "AzureIdentity {}/{} is annotated aadpodidentity.k8s.io/Behavior: namespaced",
            identity.namespace, identity.name
        )
    };
    x.problem(
        format!(
            "MIC does not pair them: {why}, so pod ({}), binding ({}) and identity ({}) must share one namespace",
            pod.namespace, b.namespace, identity.namespace
        ),
        format!(
            "create the AzureIdentity and its binding in namespace {}, or turn namespaced behaviour off",
            pod.namespace
        ),
    );
}

fn assigned_lines(x: &mut Explanation, s: &Snapshot, d: &Desired) {
    let found: Option<&AzureAssignedIdentity> = s.assigned.iter().find(|a| a.name_any() == d.name.0);
    let Some(a) = found else {
        return x.problem(
            format!("AzureAssignedIdentity {}/{} does not exist (yet): MIC has not created it", d.namespace, d.name),
            "check that MIC runs and one replica leads (`aadpodid doctor`), then MIC's logs",
        );
    };
    let node = a.spec.node_name.clone().unwrap_or_default();
    if node != d.node {
        x.problem(
            format!("AzureAssignedIdentity {} records node {node:?}, the pod runs on {}", d.name, d.node),
            "wait one MIC cycle: MIC rewrites it; if it stays, check MIC's logs",
        );
    }
    match a.state() {
        AssignedIdentityState::Assigned | AssignedIdentityState::Legacy => {
            x.add(Mark::Ok, format!("AzureAssignedIdentity {} is Assigned on node {node}", d.name));
        }
        AssignedIdentityState::Created => x.problem(
            format!("AzureAssignedIdentity {} is Created: MIC has not yet put the identity on the node's VM or scale set", d.name),
            "see the Events below and MIC's logs: MIC's identity needs Managed Identity Operator on the identity and Virtual Machine Contributor on the node resource group",
        ),
        AssignedIdentityState::Unassigned => x.problem(format!("AzureAssignedIdentity {} is Unassigned: MIC is removing it", d.name), "wait for MIC to delete and recreate it; check MIC's logs if it stays"),
        AssignedIdentityState::Unknown => x.problem(format!("AzureAssignedIdentity {} has an unknown status", d.name), "delete it; MIC recreates it"),
    }
}

#[cfg(test)]
#[path = "diagnose_tests.rs"]
mod tests;
