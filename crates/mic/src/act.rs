//! Carrying out a [`Plan`]: the only module that writes to the API server and calls ARM.
//! It decides nothing: every choice was made by `decide`; this module reports what happened.
//!
//! Per VM or scale set, in parallel: write new and changed AzureAssignedIdentities with status
//! `Created` (one request each), make one ARM identity change, then mark them `Assigned` (one
//! patch each) or, on an ARM error, mark only those whose identity is on the node. Deletions
//! patch `Unassigned` and drop the finalizer in one request, then delete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use aadpodid_api::names::{ASSIGNED_IDENTITY_FINALIZER, NODENAME_LABEL};
use aadpodid_api::{
    AssignedIdentityState, AzureAssignedIdentity, AzureAssignedIdentitySpec, AzureAssignedIdentityStatus,
    AzureIdentity, AzureIdentityBinding,
};
use aadpodid_azure::arm::{Arm, ArmError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::decide::{Desired, Plan, Removal, TargetPlan, Update};
use crate::events::{EventType, Recorder, pod_reference, reason, redact_guids, reference};
use crate::metrics::Metrics;
use crate::view::{AssignedView, VmTarget, normalise_resource_id};

/// Everything `apply` talks to.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    /// ARM, behind the leadership gate.
    pub arm: Arc<dyn Arm>,
    pub events: Recorder,
    pub metrics: Metrics,
    /// `--createDeleteBatch`: concurrent API-server writes per VM or scale set.
    pub batch: usize,
}

/// An object this cycle wrote, so the loop can wait for its cache to show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Present { namespace: String, name: String, resource_version: String },
    Gone { namespace: String, name: String },
}

/// What `apply` did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub written: Vec<Written>,
    pub assigned: usize,
    pub deleted: usize,
    pub failed: usize,
    pub arm_writes: usize,
    pub api_writes: usize,
    /// The longest `Retry-After` ARM asked for this cycle.
    pub retry_after: Option<std::time::Duration>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.written.extend(other.written);
        self.assigned += other.assigned;
        self.deleted += other.deleted;
        self.failed += other.failed;
        self.arm_writes += other.arm_writes;
        self.api_writes += other.api_writes;
        self.retry_after = self.retry_after.max(other.retry_after);
    }
}

/// Pod UIDs by (namespace, name), so events can be attached to pods.
pub type PodUids = BTreeMap<(String, String), String>;

/// Carries out the plan; targets in parallel, orphans without ARM.
pub async fn apply(plan: Plan, ctx: &Ctx, pods: &PodUids) -> Outcome {
    let mut out = Outcome::default();
    for d in &plan.conflicts {
        report_conflict(ctx, d).await;
    }
    let mut orphans = buffered(plan.orphans.iter().map(|o| delete_one(ctx, o, false).boxed()), ctx.batch);
    while let Some(o) = orphans.next().await {
        out.merge(o);
    }
    let targets =
        plan.targets.iter().filter(|(_, t)| !t.is_empty()).map(|(target, t)| apply_target(ctx, target, t, pods));
    for o in futures::future::join_all(targets).await {
        out.merge(o);
    }
    out
}

/// Tells a pod that one of its identities is not assigned because the object name belongs to
/// another assignment. Once per pod, identity and name; nothing of the other assignment is named.
async fn report_conflict(ctx: &Ctx, d: &Desired) {
    tracing::warn!(assigned = %d.name, pod = %d.pod, namespace = %d.pod_namespace, identity = %d.identity.name,
        "Assigned identity name already used by another assignment; not assigned");
    let msg = format!(
        "Identity {} is not assigned to pod {}: the assigned identity name {} is already used by another assignment",
        d.identity.name, d.pod, d.name
    );
    let pod = pod_reference(&d.pod, &d.pod_namespace, Some(&d.pod_uid));
    ctx.events.publish_once(&pod, EventType::Warning, reason::BINDING_APPLY_ERROR, msg).await;
}

/// Runs futures `batch` at a time, each made only when a slot frees: a kube request's future is
/// kilobytes, and a burst can hold thousands of objects. Boxed, so the caller's future stays
/// `Send` without naming the iterator's closure types.
fn buffered<'a, T: 'a>(
    futures: impl Iterator<Item = BoxFuture<'a, T>> + Send + 'a,
    batch: usize,
) -> futures::stream::BoxStream<'a, T> {
    stream::iter(futures).buffer_unordered(batch.max(1)).boxed()
}

// === Pending ===

/// An object in state `Created` waiting for its identity to reach the node.
struct Pending {
    namespace: String,
    name: String,
    pod: String,
    pod_namespace: String,
    pod_uid: Option<String>,
    node: String,
    binding: ObjectReference,
    binding_name: String,
    user_assigned: bool,
    resource_id: String,
    kind: Kind,
    started: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Update,
    Retry,
}

impl Pending {
    fn of_desired(d: &Desired, kind: Kind, started: Instant) -> Self {
        Self {
            namespace: d.namespace.clone(),
            name: d.name.0.clone(),
            pod: d.pod.clone(),
            pod_namespace: d.pod_namespace.clone(),
            pod_uid: Some(d.pod_uid.clone()),
            node: d.node.clone(),
            binding: reference(&*d.binding.object),
            binding_name: d.binding.name.clone(),
            user_assigned: d.identity.kind.needs_node_assignment(),
            resource_id: d.identity.resource_id.clone(),
            kind,
            started,
        }
    }

    fn of_retry(a: &AssignedView, pods: &PodUids, started: Instant) -> Self {
        Self {
            namespace: a.namespace.clone(),
            name: a.name.0.clone(),
            pod: a.pod.clone(),
            pod_namespace: a.pod_namespace.clone(),
            pod_uid: pods.get(&(a.pod_namespace.clone(), a.pod.clone())).cloned(),
            node: a.node.clone(),
            binding: binding_reference(a),
            binding_name: a.binding_name.clone(),
            user_assigned: a.is_user_assigned(),
            resource_id: a.resource_id.clone(),
            kind: Kind::Retry,
            started,
        }
    }

    fn pod_ref(&self) -> ObjectReference {
        pod_reference(&self.pod, &self.pod_namespace, self.pod_uid.as_deref())
    }
}

fn binding_reference(a: &AssignedView) -> ObjectReference {
    match a.object.spec.azure_binding_ref.as_deref() {
        Some(b) => reference(b),
        None => ObjectReference {
            api_version: Some(aadpodid_api::API_VERSION.into()),
            kind: Some("AzureIdentityBinding".into()),
            name: Some(a.binding_name.clone()),
            namespace: Some(a.binding_namespace.clone()),
            ..Default::default()
        },
    }
}

fn api(ctx: &Ctx, namespace: &str) -> Api<AzureAssignedIdentity> {
    Api::namespaced(ctx.client.clone(), namespace)
}

// === Per target ===

async fn apply_target(ctx: &Ctx, target: &VmTarget, t: &TargetPlan, pods: &PodUids) -> Outcome {
    let started = Instant::now();
    tracing::info!(%target, creates = t.creates.len(), updates = t.updates.len(), retries = t.retries.len(),
        deletes = t.deletes.len(), add = t.add.len(), remove = t.remove.len(), "Processing node");
    let mut out = Outcome::default();
    let mut pending = write_pending(ctx, t, started, &mut out).await;
    pending.extend(t.retries.iter().map(|r| Pending::of_retry(r, pods, started)));
    if !t.needs_arm() {
        finish(ctx, pending, &t.deletes, None, &mut out).await;
        return out;
    }
    let add: Vec<String> = t.add.iter().cloned().collect();
    let remove: Vec<String> = t.remove.iter().cloned().collect();
    let call = Instant::now();
    let result = ctx.arm.update_user_msi(target, &add, &remove).await;
    out.arm_writes += 1;
    match result {
        Ok(()) => {
            tracing::info!(%target, add = add.len(), remove = remove.len(), duration_ms = call.elapsed().as_millis() as u64, "Updated identities on node");
            finish(ctx, pending, &t.deletes, None, &mut out).await;
        }
        Err(error) => {
            out.retry_after = out.retry_after.max(error.retry_after());
            tracing::error!(%target, error = %redact_guids(&error.to_string()), add = add.len(), remove = remove.len(), duration_ms = call.elapsed().as_millis() as u64, "Updating identities on node failed");
            match ctx.arm.identities(target).await {
                Ok(ids) => {
                    let on_node: BTreeSet<String> =
                        ids.user_assigned.iter().map(|i| normalise_resource_id(i)).collect();
                    finish(ctx, pending, &t.deletes, Some((&on_node, &error)), &mut out).await;
                }
                Err(get_error) => {
                    tracing::error!(%target, error = %redact_guids(&get_error.to_string()), "Getting identities of node failed");
                    out.failed += pending.len() + t.deletes.len();
                }
            }
        }
    }
    out
}

/// Writes creates (POST) and updates (PUT) with status `Created`; returns the ones written.
async fn write_pending(ctx: &Ctx, t: &TargetPlan, started: Instant, out: &mut Outcome) -> Vec<Pending> {
    let creates = t.creates.iter().map(|d| create_one(ctx, d, started).boxed());
    let updates = t.updates.iter().map(|u| update_one(ctx, u, started).boxed());
    let mut results = buffered(creates.chain(updates), ctx.batch);
    let mut written = Vec::new();
    while let Some((p, res)) = results.next().await {
        out.api_writes += 1;
        match res {
            Ok(w) => {
                out.written.push(w);
                written.push(p);
            }
            Err(error) => {
                out.failed += 1;
                let op = if p.kind == Kind::Create { "assigned_identity_addition" } else { "assigned_identity_update" };
                ctx.metrics.kube_error(op);
                tracing::error!(error = %redact_guids(&error.to_string()), assigned = %p.name, "Writing assigned identity failed");
                let msg = format!("Creating assigned identity for pod {} resulted in error {error}", p.name);
                warn_both(ctx, &p, reason::BINDING_APPLY_ERROR, msg).await;
            }
        }
    }
    written
}

/// A write's pending object and what the API server answered (only what the cache check needs
/// of the returned object is kept).
type WriteResult = (Pending, Result<Written, kube::Error>);

async fn create_one(ctx: &Ctx, d: &Desired, started: Instant) -> WriteResult {
    let obj = new_object(d, None);
    let res = api(ctx, &d.namespace).create(&PostParams::default(), &obj).await;
    (Pending::of_desired(d, Kind::Create, started), res.map(|o| present(&o)))
}

async fn update_one(ctx: &Ctx, u: &Update, started: Instant) -> WriteResult {
    let obj = new_object(&u.after, Some(&u.before.object));
    let res = api(ctx, &u.before.namespace).replace(&u.before.name.0, &PostParams::default(), &obj).await;
    (Pending::of_desired(&u.after, Kind::Update, started), res.map(|o| present(&o)))
}

fn present(obj: &AzureAssignedIdentity) -> Written {
    Written::Present {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        resource_version: obj.resource_version().unwrap_or_default(),
    }
}

async fn warn_both(ctx: &Ctx, p: &Pending, why: &str, msg: String) {
    ctx.events.publish(&p.binding, EventType::Warning, why, msg.clone()).await;
    ctx.events.publish(&p.pod_ref(), EventType::Warning, why, msg).await;
}

/// The full object MIC writes: embedded copies of identity and binding, the `nodename` label,
/// the finalizer and status `Created`. For an update, the old object's metadata is kept
/// (resourceVersion for optimistic concurrency, and its namespace: it is rewritten where it is)
/// with the new label.
pub fn new_object(d: &Desired, before: Option<&AzureAssignedIdentity>) -> AzureAssignedIdentity {
    let mut obj = AzureAssignedIdentity::new(
        &d.name.0,
        AzureAssignedIdentitySpec {
            metadata: None,
            azure_identity_ref: Some(Box::new(embedded_identity(&d.identity.object))),
            azure_binding_ref: Some(Box::new(embedded_binding(&d.binding.object))),
            pod: Some(d.pod.clone()),
            pod_namespace: Some(d.pod_namespace.clone()),
            node_name: Some(d.node.clone()),
            replicas: None,
        },
    );
    match before {
        Some(b) => {
            obj.metadata = b.metadata.clone();
            obj.metadata.managed_fields = None;
        }
        None => obj.metadata.namespace = Some(d.namespace.clone()),
    }
    obj.metadata.labels.get_or_insert_default().insert(NODENAME_LABEL.to_owned(), d.node.clone());
    let finalizers = obj.metadata.finalizers.get_or_insert_default();
    if !finalizers.iter().any(|f| f == ASSIGNED_IDENTITY_FINALIZER) {
        finalizers.push(ASSIGNED_IDENTITY_FINALIZER.to_owned());
    }
    obj.status = Some(AzureAssignedIdentityStatus {
        metadata: None,
        status: Some(AssignedIdentityState::CREATED.to_owned()),
        available_replicas: Some(1),
    });
    obj
}

fn embedded_identity(id: &AzureIdentity) -> AzureIdentity {
    let mut id = id.clone();
    id.metadata.managed_fields = None;
    id
}

fn embedded_binding(b: &AzureIdentityBinding) -> AzureIdentityBinding {
    let mut b = b.clone();
    b.metadata.managed_fields = None;
    b
}

// === Finishing ===

/// After the ARM call: `on_node` is `None` on success, or the node's identities and the error.
async fn finish(
    ctx: &Ctx,
    pending: Vec<Pending>,
    deletes: &[Removal],
    on_node: Option<(&BTreeSet<String>, &ArmError)>,
    out: &mut Outcome,
) {
    let assigns = pending.into_iter().map(|p| assign_one(ctx, p, on_node).boxed());
    let dels = deletes.iter().map(|r| remove_one(ctx, r, on_node).boxed());
    let merged = |mut acc: Outcome, o: Outcome| async move {
        acc.merge(o);
        acc
    };
    let (a, d) = futures::join!(
        buffered(assigns, ctx.batch).fold(Outcome::default(), merged),
        buffered(dels, ctx.batch).fold(Outcome::default(), merged)
    );
    out.merge(a);
    out.merge(d);
}

/// What one assignment does once the node's ARM update is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Carry on: mark it `Assigned`, or delete it.
    Proceed,
    /// Keep it as it is (`Created`, or not deleted) and report the ARM error.
    Hold,
}

/// The update's effect on one assignment, from what ARM reports on the VM or scale set after
/// a failed update (`on_node`: `None` when the update succeeded). An assignment whose identity
/// the node carries anyway (or that needs none) is assigned; a removal whose identity is still
/// attached is kept, so the next cycle detaches it again.
pub fn settle(attach: bool, needs_node: bool, on_node: Option<bool>) -> Settle {
    let Some(present) = on_node.filter(|_| needs_node) else { return Settle::Proceed };
    if present == attach { Settle::Proceed } else { Settle::Hold }
}

fn on_node_has(on_node: Option<(&BTreeSet<String>, &ArmError)>, resource_id: &str) -> Option<bool> {
    on_node.map(|(ids, _)| ids.contains(&normalise_resource_id(resource_id)))
}

/// Marks one pending object `Assigned`, unless the ARM call failed and its identity is not on
/// the node: then it stays `Created` with a `binding apply error`.
async fn assign_one(ctx: &Ctx, p: Pending, on_node: Option<(&BTreeSet<String>, &ArmError)>) -> Outcome {
    let mut o = Outcome::default();
    match (settle(true, p.user_assigned, on_node_has(on_node, &p.resource_id)), on_node) {
        (Settle::Hold, Some((_, error))) => {
            o.failed += 1;
            let msg = format!(
                "Applying binding {} node {} for pod {} resulted in error {}",
                p.binding_name,
                p.node,
                p.name,
                error.summary()
            );
            tracing::error!(assigned = %p.name, node = %p.node, "Identity not on node after failed update; stays Created");
            warn_both(ctx, &p, reason::BINDING_APPLY_ERROR, msg).await;
        }
        (Settle::Hold | Settle::Proceed, _) => mark_assigned(ctx, &p, &mut o).await,
    }
    o
}

/// Deletes one object, unless the ARM call failed and the identity it should have detached is
/// still on the node: then it is kept with a `binding remove error`.
async fn remove_one(ctx: &Ctx, r: &Removal, on_node: Option<(&BTreeSet<String>, &ArmError)>) -> Outcome {
    let a = &r.assigned;
    match (settle(false, r.unassign, on_node_has(on_node, &a.resource_id)), on_node) {
        (Settle::Hold, Some((_, error))) => {
            let msg = format!(
                "Binding {} removal from node {} for pod {} resulted in error {}",
                a.binding_name,
                a.node,
                a.pod,
                error.summary()
            );
            tracing::error!(assigned = %a.name, node = %a.node, "Identity still on node after failed update; kept");
            ctx.events.publish(&binding_reference(a), EventType::Warning, reason::BINDING_REMOVE_ERROR, msg).await;
            Outcome { failed: 1, ..Default::default() }
        }
        (Settle::Hold | Settle::Proceed, _) => delete_one(ctx, &r.assigned, true).await,
    }
}

async fn mark_assigned(ctx: &Ctx, p: &Pending, o: &mut Outcome) {
    let patch = json!({"status": {"status": AssignedIdentityState::ASSIGNED}});
    o.api_writes += 1;
    match api(ctx, &p.namespace).patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(obj) => {
            o.written.push(present(&obj));
            o.assigned += 1;
            let secs = p.started.elapsed().as_secs_f64();
            match p.kind {
                Kind::Create | Kind::Retry => {
                    ctx.metrics.addition_count.inc();
                    ctx.metrics.addition_duration.observe(secs);
                }
                Kind::Update => {
                    ctx.metrics.update_count.inc();
                    ctx.metrics.update_duration.observe(secs);
                }
            }
            tracing::info!(assigned = %p.name, pod = %p.pod, namespace = %p.pod_namespace, node = %p.node, "Assigned identity");
            let msg = format!("Binding {} applied on node {} for pod {}", p.binding_name, p.node, p.name);
            ctx.events.publish(&p.binding, EventType::Normal, reason::BINDING_APPLIED, msg.clone()).await;
            ctx.events.publish(&p.pod_ref(), EventType::Normal, reason::BINDING_APPLIED, msg).await;
        }
        Err(error) => {
            o.failed += 1;
            ctx.metrics.kube_error("update_azure_assigned_identity_status");
            tracing::error!(error = %redact_guids(&error.to_string()), assigned = %p.name, "Updating assigned identity status failed");
            let msg = format!(
                "Updating assigned identity {} status to {} for pod {} failed with error {error}",
                p.name,
                AssignedIdentityState::ASSIGNED,
                p.pod
            );
            let obj_ref = assigned_reference(&p.namespace, &p.name);
            ctx.events.publish(&obj_ref, EventType::Warning, reason::STATUS_UPDATE_ERROR, msg).await;
        }
    }
}

/// True for a 404 from the API server.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn assigned_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(aadpodid_api::API_VERSION.into()),
        kind: Some("AzureAssignedIdentity".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// Deletes one object: one patch (status `Unassigned` when `unassigned`, our finalizer
/// dropped), then DELETE. NotFound counts as done.
async fn delete_one(ctx: &Ctx, a: &AssignedView, unassigned: bool) -> Outcome {
    let started = Instant::now();
    let mut o = Outcome::default();
    let api = api(ctx, &a.namespace);
    let finalizers: Vec<&String> =
        a.object.metadata.finalizers.iter().flatten().filter(|f| *f != ASSIGNED_IDENTITY_FINALIZER).collect();
    let mut patch = json!({"metadata": {"finalizers": finalizers}});
    if unassigned {
        patch["status"] = json!({"status": AssignedIdentityState::UNASSIGNED});
    }
    o.api_writes += 2;
    let res = match api.patch(&a.name.0, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => api.delete(&a.name.0, &DeleteParams::default()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let binding = binding_reference(a);
    match res {
        Err(e) if !is_not_found(&e) => {
            o.failed += 1;
            ctx.metrics.kube_error("assigned_identity_deletion");
            tracing::error!(error = %redact_guids(&e.to_string()), assigned = %a.name, "Removing assigned identity failed");
            let msg = format!(
                "Removing assigned identity binding {} node {} for pod {} resulted in error {e}",
                a.binding_name, a.node, a.name
            );
            ctx.events.publish(&binding, EventType::Warning, reason::BINDING_REMOVE_ERROR, msg).await;
        }
        _ => {
            o.deleted += 1;
            o.written.push(Written::Gone { namespace: a.namespace.clone(), name: a.name.0.clone() });
            ctx.metrics.deletion_count.inc();
            ctx.metrics.deletion_duration.observe(started.elapsed().as_secs_f64());
            tracing::info!(assigned = %a.name, pod = %a.pod, node = %a.node, "Removed assigned identity");
            let msg = format!("Binding {} removed from node {} for pod {}", a.binding_name, a.node, a.pod);
            ctx.events.publish(&binding, EventType::Normal, reason::BINDING_REMOVED, msg).await;
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_assignment_does_after_the_nodes_arm_update() {
        use Settle::{Hold, Proceed};
        // (attach, needs the node, identity on the node after a failed update, expected)
        let table = [
            (true, true, None, Proceed),
            (true, true, Some(true), Proceed),
            (true, true, Some(false), Hold),
            (true, false, Some(false), Proceed),
            (false, true, None, Proceed),
            (false, true, Some(true), Hold),
            (false, true, Some(false), Proceed),
            (false, false, Some(true), Proceed),
        ];
        for (attach, needs_node, on_node, expected) in table {
            assert_eq!(settle(attach, needs_node, on_node), expected, "{attach} {needs_node} {on_node:?}");
        }
    }
    use crate::view::{binding_view, identity_view};
    use aadpodid_api::{AzureIdentityBindingSpec, AzureIdentitySpec};

    fn mk_desired() -> Desired {
        let mut id = AzureIdentity::new("myid", AzureIdentitySpec { type_: Some(1), ..Default::default() });
        id.metadata.namespace = Some("apps".into());
        let mut b = AzureIdentityBinding::new(
            "b",
            AzureIdentityBindingSpec {
                azure_identity: Some("myid".into()),
                selector: Some("s".into()),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some("apps".into());
        Desired {
            name: crate::view::AssignedName::new("p", "apps", "myid"),
            namespace: "default".into(),
            pod: "p".into(),
            pod_namespace: "apps".into(),
            pod_uid: "u".into(),
            node: "n1".into(),
            identity: Arc::new(identity_view(&Arc::new(id)).unwrap()),
            binding: Arc::new(binding_view(&Arc::new(b)).unwrap()),
        }
    }

    #[test]
    fn new_object_is_the_originals_shape() {
        let v = serde_json::to_value(new_object(&mk_desired(), None)).unwrap();
        assert_eq!(v["metadata"]["name"], "p-apps-myid");
        assert_eq!(v["metadata"]["namespace"], "default");
        assert_eq!(v["metadata"]["labels"]["nodename"], "n1");
        assert_eq!(v["metadata"]["finalizers"][0], ASSIGNED_IDENTITY_FINALIZER);
        assert_eq!(v["status"], json!({"status": "Created", "availableReplicas": 1}));
        assert_eq!(v["spec"]["nodename"], "n1");
        assert_eq!(v["spec"]["podNamespace"], "apps");
        assert_eq!(v["spec"]["azureIdentityRef"]["kind"], "AzureIdentity");
        assert_eq!(v["spec"]["azureBindingRef"]["apiVersion"], "aadpodidentity.k8s.io/v1");
    }

    #[test]
    fn update_keeps_the_old_metadata_and_refreshes_the_node_label() {
        let mut before = new_object(&mk_desired(), None);
        before.metadata.resource_version = Some("42".into());
        let mut d = mk_desired();
        d.node = "n2".into();
        let after = new_object(&d, Some(&before));
        assert_eq!(after.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(after.metadata.labels.unwrap()["nodename"], "n2");
        assert_eq!(after.metadata.finalizers.unwrap().len(), 1);
    }

    #[test]
    fn update_rewrites_the_object_where_it_is() {
        let mut before = new_object(&mk_desired(), None);
        before.metadata.namespace = Some("apps".into());
        let after = new_object(&mk_desired(), Some(&before));
        assert_eq!(after.metadata.namespace.as_deref(), Some("apps"), "a PUT names the namespace it is sent to");
    }
}
