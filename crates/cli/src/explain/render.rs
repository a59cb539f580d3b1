//! NMI's answer, the ARM check and the Events as explanation lines, and the printed form.

use std::fmt;

use aadpodid_api::view::redact_client_id;
use aadpodid_mic::view::IdentityView;
use aadpodid_nmi::query::IdentityRequest;
use aadpodid_nmi::select::{self, BindingView, RetryPolicy, Step};
use aadpodid_nmi::store;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Snapshot;
use super::diagnose::{Explanation, Mark, NmiCtx};

/// What NMI does with a token request from the pod that names no identity.
pub(super) fn nmi_lines(x: &mut Explanation, s: &Snapshot, ctx: &NmiCtx) {
    let pod = store::pod_view(&s.pod);
    if !nmi_finds_pod(x, &pod) {
        return;
    }
    let mic = s.settings.nmi.as_ref().and_then(|n| n.mic.clone());
    if select::is_bypassed(&pod, &s.exceptions, mic.as_ref()) {
        let names: Vec<String> = s.exceptions.iter().filter(|e| e.matches(&pod.labels)).map(|e| e.name_any()).collect();
        let text = format!(
            "NMI answers with the node's own identity: the pod matches AzurePodIdentityException {}",
            names.join(", ")
        );
        if ctx.has_bindings {
            return x.problem(
                text,
                "remove the exception's label from the pod (or the exception) to get the bound identity",
            );
        }
        return x.add(Mark::Info, text);
    }
    let req = IdentityRequest::default();
    let answer = if s.settings.managed { managed_answer(s, &pod, &req) } else { standard_answer(s, &pod, &req) };
    match answer {
        Ok(id) => x.add(
            Mark::Ok,
            format!(
                "NMI answers a token request with AzureIdentity {}/{} (clientID {})",
                id.namespace,
                id.name,
                redact_client_id(id.client_id())
            ),
        ),
        Err(text) => x.problem(
            format!("NMI has no identity for the pod: {text}"),
            "fix the problems above; NMI follows MIC's AzureAssignedIdentities",
        ),
    }
}

/// NMI finds the calling pod by its source IP; a pod it cannot find gets nothing.
fn nmi_finds_pod(x: &mut Explanation, pod: &select::PodView) -> bool {
    if pod.host_network {
        x.problem(
            "the pod uses the host network: its IP is the node's, so NMI cannot tell it apart",
            "run the pod without hostNetwork to give it an identity",
        );
        return false;
    }
    let Some(ip) = pod.ip else {
        x.problem(
            "the pod has no IP yet: NMI finds pods by the source IP of their requests",
            "wait until the pod runs",
        );
        return false;
    };
    if let Err(text) = select::match_pod(std::slice::from_ref(pod), ip) {
        x.problem(
            format!("NMI does not serve the pod ({}, IP {ip}): {text}", pod.phase),
            "only Pending or Running pods that are not being deleted get tokens",
        );
        return false;
    }
    true
}

fn standard_answer(s: &Snapshot, pod: &select::PodView, req: &IdentityRequest) -> Result<select::IdentityView, String> {
    let assigned: Vec<select::AssignedView> = s
        .assigned
        .iter()
        .filter(|a| a.spec.pod.as_deref() == Some(&pod.name) && a.spec.pod_namespace.as_deref() == Some(&pod.namespace))
        .filter_map(store::assigned_view)
        .collect();
    let retry = s.settings.nmi.as_ref().map_or_else(RetryPolicy::default, |n| n.retry);
    match select::standard_step((&pod.namespace, &pod.name), &assigned, req, 0, retry) {
        Step::Found(ids) => select::pick_identity(ids, req, &pod.namespace, s.settings.force_namespaced),
        Step::Wait => Err(format!(
            "none of its AzureAssignedIdentities is Assigned; NMI retries for up to {} s, then answers 404",
            u64::from(retry.created + retry.assigned) * retry.interval_secs
        )),
        Step::GiveUp(text) => Err(text),
    }
}

fn managed_answer(s: &Snapshot, pod: &select::PodView, req: &IdentityRequest) -> Result<select::IdentityView, String> {
    let bindings: Vec<BindingView> = s
        .bindings
        .iter()
        .map(|b| BindingView {
            namespace: b.namespace().unwrap_or_default(),
            name: b.name_any(),
            selector: b.spec.selector.clone().unwrap_or_default(),
            identity: b.spec.azure_identity.clone().unwrap_or_default(),
        })
        .collect();
    let identities: Vec<select::IdentityView> = s.identities.iter().map(store::identity_view).collect();
    select::managed_select(pod, &bindings, &identities, req)
}

/// Whether ARM has the identity on the node's VM or scale set (type 0 only).
pub(super) fn arm_lines(x: &mut Explanation, s: &Snapshot, identity: &IdentityView) {
    let Some(arm) = &s.arm else {
        return x.add(Mark::Info, "not checked on ARM (pass --azure-json to see whether the identity is on the node)");
    };
    match &arm.user_assigned {
        Ok(ids) if ids.iter().any(|i| i.eq_ignore_ascii_case(&identity.resource_id)) => {
            x.add(Mark::Ok, format!("ARM: the identity is attached to {}", arm.target));
        }
        Ok(_) => x.problem(
            format!("ARM: the identity is NOT attached to {} although MIC paired it", arm.target),
            "MIC re-adds missing identities every --identity-assignment-reconcile-interval (3m); if it stays missing, read MIC's logs for ARM errors",
        ),
        Err(e) => x.add(Mark::Warn, format!("ARM: could not read {}: {e}", arm.target)),
    }
}

/// The most recent events, oldest first, as `age type reason object: message`.
pub(super) fn events(events: &[Event], now: Timestamp) -> Vec<String> {
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| when(e));
    // MIC writes the same event on the pod and on the binding: show it once, at its latest.
    let mut seen = std::collections::BTreeSet::new();
    let mut latest_first: Vec<&Event> =
        sorted.into_iter().rev().filter(|e| seen.insert((&e.reason, &e.message))).collect();
    latest_first.reverse();
    latest_first
        .iter()
        .map(|e| {
            let age = when(e).map(|t| format!("{}s ago", now.duration_since(t).as_secs().max(0))).unwrap_or_default();
            let obj = format!(
                "{}/{}",
                e.involved_object.kind.as_deref().unwrap_or_default(),
                e.involved_object.name.as_deref().unwrap_or_default()
            );
            format!(
                "{age} {} {} {obj}: {}",
                e.type_.as_deref().unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default().trim()
            )
        })
        .collect()
}

impl Explanation {
    /// The Events section keeps the last `n`.
    pub fn keep_events(&mut self, n: usize) {
        let skip = self.events.len().saturating_sub(n);
        self.events.drain(..skip);
    }
}

/// Marked lines, one a line: `ok`, `PROBLEM`, `warning` or blank.
pub fn write_lines(f: &mut fmt::Formatter<'_>, lines: &[(Mark, String)]) -> fmt::Result {
    for (mark, text) in lines {
        let tag = match mark {
            Mark::Ok => "ok     ",
            Mark::Problem => "PROBLEM",
            Mark::Warn => "warning",
            Mark::Info => "       ",
        };
        writeln!(f, "{tag} {text}")?;
    }
    Ok(())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.lines)?;
        if !self.events.is_empty() {
            writeln!(f, "\nRecent events:")?;
            for e in &self.events {
                writeln!(f, "  {e}")?;
            }
        }
        if self.healthy() {
            writeln!(f, "\nHealthy: pod {} gets its identity from NMI.", self.pod)
        } else {
            writeln!(f, "\nNext steps:")?;
            for (i, step) in self.next_steps.iter().enumerate() {
                writeln!(f, "  {}. {step}", i + 1)?;
            }
            Ok(())
        }
    }
}
