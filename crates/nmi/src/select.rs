//! Which pod is calling and which identity it gets: the original's standard-mode retry rules
//! (as a pure step function, so the async loop only sleeps), its final pick, managed mode,
//! and the exception/MIC bypass.
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
    /// `status.podIP`.
    pub ip: Option<IpAddr>,
    /// `status.podIPs`: one address per family on dual-stack nodes, usually including `ip`.
    pub ips: Vec<IpAddr>,
    pub phase: String,
    /// `metadata.deletionTimestamp` is set: the pod is going away and its IP may already be
    /// another pod's.
    pub terminating: bool,
    pub labels: BTreeMap<String, String>,
    /// Name of the owning ReplicaSet, if any (for the MIC short-cut).
    pub replicaset: Option<String>,
    /// `spec.serviceAccountName`, empty when unset (for the MIC short-cut).
    pub service_account: String,
    pub host_network: bool,
}

impl PodView {
    /// Whether `ip` is one of the pod's addresses; an IPv4-mapped IPv6 address counts as the
    /// IPv4 address it carries, on either side.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ip.iter().chain(&self.ips).any(|own| own.to_canonical() == ip)
    }

    /// Whether the pod can be the one sending from its IP: Pending or Running, not being
    /// deleted, and not on the host network (whose IP is the node's, shared by every host
    /// process).
    fn may_own_ip(&self) -> bool {
        !self.terminating && !self.host_network && (self.phase == "Pending" || self.phase == "Running")
    }
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

/// The pod sending from `ip`; the texts become 500 bodies, which clients retry.
///
/// Only a pod that may own the IP counts ([`PodView::may_own_ip`]): a pod being deleted or
/// finished keeps its IP in `status` after the network gave it to a new pod, so matching it
/// would hand the new pod the old one's identity. Two candidates are never guessed between:
/// the caller waits (retries) until the watch shows which one has gone.
pub fn match_pod(pods: &[PodView], ip: IpAddr) -> Result<PodView, String> {
    let ip = ip.to_canonical();
    let holders = || pods.iter().filter(move |p| p.has_ip(ip) && !p.host_network);
    let mut found = holders().filter(|p| p.may_own_ip());
    match (found.next(), found.next()) {
        (Some(pod), None) => Ok(pod.clone()),
        (Some(_), Some(_)) => Err(format!("found more than one pod with ip {ip}, expected exactly one")),
        (None, _) if holders().next().is_some() => {
            Err(format!("pod list is empty: the pods with ip {ip} are being deleted or have finished"))
        }
        (None, _) => Err("pod list is empty".to_owned()),
    }
}

/// The service account of MIC in the original's plain manifests; the chart passes its own.
pub const DEFAULT_MIC_SERVICE_ACCOUNT: &str = "aad-pod-id-mic-service-account";

/// MIC as NMI recognises it for the short-cut (a token from the node's own IMDS identity).
///
/// Names and labels are chosen by whoever creates a workload, so they prove nothing: the pod
/// must also run as MIC's service account in MIC's namespace. Anyone who can start such a
/// pod can already act as MIC towards the API server; nobody else can pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MicIdentity {
    /// `--MICNamespace`, compared ignoring case as the original.
    pub namespace: String,
    /// `--mic-service-account`.
    pub service_account: String,
}

impl MicIdentity {
    /// `None` (no short-cut) in managed mode, where no MIC runs, or when the service account
    /// is empty: every pod of a namespace may run as its `default` account, so an empty or
    /// shared account could not tell MIC apart.
    pub fn from_flags(standard_mode: bool, namespace: &str, service_account: &str) -> Option<Self> {
        let usable = standard_mode && !service_account.is_empty() && service_account != "default";
        usable.then(|| Self { namespace: namespace.to_owned(), service_account: service_account.to_owned() })
    }

    /// MIC's namespace and service account, and an owning ReplicaSet named `mic…` as the
    /// original requires (the chart's MIC does not match that name and is excepted instead).
    pub fn matches(&self, pod: &PodView) -> bool {
        pod.namespace.eq_ignore_ascii_case(&self.namespace)
            && pod.service_account == self.service_account
            && pod.replicaset.as_deref().is_some_and(|rs| rs.starts_with("mic"))
    }
}

/// True when NMI fetches the token itself from IMDS: the pod matches an exception of its
/// namespace, or is MIC (`mic` is `None` when the short-cut is off).
pub fn is_bypassed(pod: &PodView, exceptions: &[AzurePodIdentityException], mic: Option<&MicIdentity>) -> bool {
    mic.is_some_and(|mic| mic.matches(pod)) || exceptions.iter().any(|e| e.matches(&pod.labels))
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
