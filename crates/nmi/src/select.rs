//! Which pod is calling and which identity it gets: the original's standard-mode retry rules
//! (as a pure step function, so the async loop only sleeps), its final pick, managed mode,
//! and the exception/MIC bypass (upstream §3.6, §3.6b, §3.7).
//!
//! Pure: no kube, no clock, no I/O. Never hands out an identity that is not the pod's own.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aadpodid_api::view::redact_client_id;
use aadpodid_api::{AssignedIdentityState, AzureIdentitySpec, AzurePodIdentityException};

use crate::query::IdentityRequest;

// === Views ===

/// What NMI keeps of a pod on its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub ip: Option<IpAddr>,
    pub phase: String,
    pub labels: BTreeMap<String, String>,
    /// Name of the owning ReplicaSet, if any (for the MIC short-circuit).
    pub replicaset: Option<String>,
    pub host_network: bool,
}

/// An AzureIdentity as NMI uses it: where it lives, and its spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityView {
    pub namespace: String,
    pub name: String,
    /// Carries the `aadpodidentity.k8s.io/Behavior: namespaced` annotation.
    pub namespaced: bool,
    pub spec: AzureIdentitySpec,
    /// Principal (object) ID when NMI knows it (ours only, for `object_id`).
    pub object_id: Option<String>,
}

impl IdentityView {
    pub fn client_id(&self) -> &str {
        self.spec.client_id.as_deref().unwrap_or_default()
    }

    pub fn resource_id(&self) -> &str {
        self.spec.resource_id.as_deref().unwrap_or_default()
    }

    fn sort_key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

/// An AzureAssignedIdentity of the calling pod: its state and the identity it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct AssignedView {
    pub state: AssignedIdentityState,
    pub identity: IdentityView,
}

/// An AzureIdentityBinding: its namespace, selector and identity name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingView {
    pub namespace: String,
    pub name: String,
    pub selector: String,
    pub identity: String,
}

/// The original's retry settings for standard mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `--retry-attempts-for-created` (16).
    pub created: u32,
    /// `--retry-attempts-for-assigned` (4).
    pub assigned: u32,
    /// `--find-identity-retry-interval` in seconds (5); only used in error texts here.
    pub interval_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { created: 16, assigned: 4, interval_secs: 5 }
    }
}

// === Pod lookup ===

/// The single Pending or Running pod with this IP; the texts become 500 bodies.
pub fn match_pod(pods: &[PodView], ip: IpAddr) -> Result<PodView, String> {
    let mut found = pods.iter().filter(|p| p.ip == Some(ip) && (p.phase == "Pending" || p.phase == "Running"));
    match (found.next(), found.next()) {
        (Some(pod), None) => Ok(pod.clone()),
        (None, _) => Err("pod list is empty".to_owned()),
        (Some(_), Some(_)) => Err(format!("found more than one pod with ip {ip}, expected exactly one")),
    }
}

/// True when NMI fetches the token itself from IMDS: the pod matches an exception of its
/// namespace, or looks like MIC (namespace `--MICNamespace`, ReplicaSet name starting `mic`).
pub fn is_bypassed(pod: &PodView, exceptions: &[AzurePodIdentityException], mic_namespace: &str) -> bool {
    let is_mic = pod.namespace.eq_ignore_ascii_case(mic_namespace)
        && pod.replicaset.as_deref().is_some_and(|rs| rs.starts_with("mic"));
    is_mic || exceptions.iter().any(|e| e.matches(&pod.labels))
}

// === Standard mode ===

/// One decision of the standard-mode retry loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// These identities (one status group) may serve the request.
    Found(Vec<IdentityView>),
    /// Nothing usable yet: sleep the retry interval and look again.
    Wait,
    /// Give up with this text (404, or 503 with `Retry-After`).
    GiveUp(String),
}

/// The original's `listPodIDsWithRetry`, one attempt (0-based) at a time. `attempt` equal to
/// `created + assigned` means the loop has run out: the ASSIGNED-state error.
pub fn standard_step(
    pod: (&str, &str),
    assigned: &[AssignedView],
    req: &IdentityRequest,
    attempt: u32,
    retry: RetryPolicy,
) -> Step {
    let (ns, name) = pod;
    let total = retry.created.saturating_add(retry.assigned);
    if attempt >= total {
        return Step::GiveUp(state_error(ns, name, "ASSIGNED", total, retry.interval_secs));
    }
    let group = |state| assigned.iter().filter(move |a| a.state == state);
    let wanted = |a: &&AssignedView| req.is_unspecified() || loosely_matches(&a.identity, req);
    for state in [AssignedIdentityState::Legacy, AssignedIdentityState::Assigned] {
        if group(state).any(|a| wanted(&a)) {
            return Step::Found(group(state).map(|a| a.identity.clone()).collect());
        }
    }
    let created = group(AssignedIdentityState::Created).any(|a| wanted(&a));
    if !created && attempt >= retry.created {
        let text = state_error(ns, name, "CREATED", retry.created, retry.interval_secs);
        if req.is_unspecified() {
            return Step::GiveUp(text);
        }
        let asked = match (&req.client_id, &req.object_id) {
            (None, Some(oid)) => format!("objectID in request: {oid}"),
            (client, _) => format!("clientID in request: {}", redact_client_id(client.as_deref().unwrap_or_default())),
        };
        return Step::GiveUp(format!("{asked}, {text}"));
    }
    Step::Wait
}

fn state_error(ns: &str, name: &str, state: &str, attempts: u32, interval: u64) -> String {
    format!(
        "getting assigned identities for pod {ns}/{name} in {state} state failed after {attempts} attempts, retry duration [{interval}]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    )
}

/// The retry loop's comparison: client or resource ID ignoring case (object ID: ours).
fn loosely_matches(id: &IdentityView, req: &IdentityRequest) -> bool {
    let eq = |want: &Option<String>, have: Option<&str>| {
        want.as_deref().zip(have).is_some_and(|(w, h)| !h.is_empty() && w.eq_ignore_ascii_case(h))
    };
    eq(&req.client_id, Some(id.client_id()))
        || eq(&req.resource_id, Some(id.resource_id()))
        || eq(&req.object_id, id.object_id.as_deref())
}

/// The original's `GetIdentities` after the loop: namespaced filter, then the first identity
/// (ours: sorted by namespace/name) or the one matching exactly. Errors are 404 texts.
pub fn pick_identity(
    mut candidates: Vec<IdentityView>,
    req: &IdentityRequest,
    pod_namespace: &str,
    force_namespaced: bool,
) -> Result<IdentityView, String> {
    candidates.retain(|id| !(force_namespaced || id.namespaced) || id.namespace == pod_namespace);
    candidates.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let found = if req.is_unspecified() {
        candidates.into_iter().next()
    } else {
        candidates.into_iter().find(|id| exactly_matches(id, req))
    };
    found.ok_or_else(|| format!("no azure identity found for request {}", req.describe()))
}

/// The final comparison: exact and case-sensitive, as the original (object ID ignores case).
fn exactly_matches(id: &IdentityView, req: &IdentityRequest) -> bool {
    let nonempty = |s: &str| !s.is_empty();
    req.client_id.as_deref().is_some_and(|c| nonempty(c) && c == id.client_id())
        || req.resource_id.as_deref().is_some_and(|r| nonempty(r) && r == id.resource_id())
        || req.object_id.as_deref().zip(id.object_id.as_deref()).is_some_and(|(w, h)| w.eq_ignore_ascii_case(h))
}

// === Managed mode ===

/// Managed mode: bindings of the pod's namespace whose selector equals the pod's
/// `aadpodidbinding` label (missing = ""), their identities in that namespace, and the first
/// that matches (sorted by name). No retries.
pub fn managed_select(
    pod: &PodView,
    bindings: &[BindingView],
    identities: &[IdentityView],
    req: &IdentityRequest,
) -> Result<IdentityView, String> {
    let label = pod.labels.get(aadpodid_api::names::POD_LABEL_KEY).map(String::as_str).unwrap_or_default();
    let names: Vec<&str> = bindings
        .iter()
        .filter(|b| b.namespace == pod.namespace && b.selector == label)
        .map(|b| b.identity.as_str())
        .collect();
    let mut matched: Vec<&IdentityView> =
        identities.iter().filter(|id| id.namespace == pod.namespace && names.contains(&id.name.as_str())).collect();
    matched.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    matched.into_iter().find(|id| req.is_unspecified() || exactly_matches(id, req)).cloned().ok_or_else(|| {
        format!("no azure identity found for pod {}/{} and request {}", pod.namespace, pod.name, req.describe())
    })
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
