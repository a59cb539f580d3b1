//! VMs and scale sets, and the long-running operations through which ARM writes reach them: a write
//! changes the model at once and the applied identities only when its operation is due, so clients
//! that poll `Azure-AsyncOperation` see the same timing as on Azure.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::compute_identity::{Identities, IdentityPatch, SystemIdentity, apply_identity_patch};
use super::{ApiError, State};

const ARM_RESOURCE_NOT_FOUND_FIX: &str = "For more details please go to https://aka.ms/ARMResourceNotFoundFix";

/// VM or virtual machine scale set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeKind {
    /// `Microsoft.Compute/virtualMachines`.
    Vm,
    /// `Microsoft.Compute/virtualMachineScaleSets`.
    Vmss,
}

impl ComputeKind {
    /// `"vm"` or `"vmss"`, as used in counter keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeKind::Vm => "vm",
            ComputeKind::Vmss => "vmss",
        }
    }
    /// The ARM resource type segment.
    pub fn arm_type(self) -> &'static str {
        match self {
            ComputeKind::Vm => "virtualMachines",
            ComputeKind::Vmss => "virtualMachineScaleSets",
        }
    }
}

/// A PUT or PATCH of a VM or VMSS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteRequest<'a> {
    pub(crate) kind: ComputeKind,
    pub(crate) resource_group: &'a str,
    pub(crate) name: &'a str,
    pub(crate) body: &'a Value,
    pub(crate) put: bool,
    /// Accept the write but fail its operation with this error (fault injection).
    pub(crate) fail: Option<&'a ApiError>,
}

/// A VM or a VMSS.
#[derive(Debug, Clone)]
pub(crate) struct Compute {
    pub(crate) kind: ComputeKind,
    pub(crate) resource_group: String,
    pub(crate) name: String,
    pub(crate) location: String,
    pub(crate) vm_id: String,
    pub(crate) instances: u32,
    pub(crate) tags: Map<String, Value>,
    pub(crate) model: Identities,
    pub(crate) applied: Identities,
    pending: VecDeque<Pending>,
    /// Shown instead of the computed `provisioningState` (e.g. `Deleting`, `Failed`).
    pub(crate) provisioning_override: Option<String>,
}

#[derive(Debug, Clone)]
struct Pending {
    due: Instant,
    identities: Identities,
}

impl Compute {
    fn new(kind: ComputeKind, resource_group: &str, name: &str, location: &str, instances: u32) -> Self {
        Self {
            kind,
            resource_group: resource_group.to_owned(),
            name: name.to_owned(),
            location: location.to_owned(),
            vm_id: uuid::Uuid::new_v4().to_string(),
            instances,
            tags: Map::new(),
            model: Identities::default(),
            applied: Identities::default(),
            pending: VecDeque::new(),
            provisioning_override: None,
        }
    }

    pub(crate) fn resource_id(&self, subscription: &str) -> String {
        format!(
            "/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.Compute/{}/{}",
            self.resource_group,
            self.kind.arm_type(),
            self.name
        )
    }

    fn settle(&mut self, now: Instant) {
        while self.pending.front().is_some_and(|p| p.due <= now) {
            if let Some(p) = self.pending.pop_front() {
                self.applied = p.identities;
            }
        }
    }

    /// The ARM JSON of this resource.
    pub(crate) fn to_json(&self, subscription: &str, tenant: &str) -> Value {
        let computed = if self.pending.is_empty() { "Succeeded" } else { "Updating" };
        let state = self.provisioning_override.as_deref().unwrap_or(computed);
        let mut v = json!({
            "id": self.resource_id(subscription),
            "name": self.name,
            "type": format!("Microsoft.Compute/{}", self.kind.arm_type()),
            "location": self.location,
            "tags": self.tags,
        });
        match self.kind {
            ComputeKind::Vm => {
                v["properties"] = json!({
                    "vmId": self.vm_id,
                    "hardwareProfile": {"vmSize": "Standard_DS2_v2"},
                    "osProfile": {"computerName": self.name, "adminUsername": "azureuser"},
                    "storageProfile": {"osDisk": {"osType": "Linux", "name": format!("{}_OsDisk", self.name)}},
                    "provisioningState": state,
                });
            }
            ComputeKind::Vmss => {
                v["sku"] = json!({"name": "Standard_DS2_v2", "tier": "Standard", "capacity": self.instances});
                v["properties"] = json!({
                    "uniqueId": self.vm_id,
                    "upgradePolicy": {"mode": "Manual"},
                    "orchestrationMode": "Uniform",
                    "overprovision": false,
                    "provisioningState": state,
                });
            }
        }
        if let Some(identity) = self.model.to_json(tenant) {
            v["identity"] = identity;
        }
        v
    }
}

/// An async operation as polled through `Azure-AsyncOperation`.
#[derive(Debug, Clone)]
pub(crate) struct AsyncOp {
    pub(crate) due: Instant,
    pub(crate) started: SystemTime,
    pub(crate) lro: Duration,
    /// Set when the operation ends `Failed`.
    pub(crate) failed: Option<ApiError>,
}

pub(super) fn ckey(kind: ComputeKind, rg: &str, name: &str) -> (ComputeKind, String, String) {
    (kind, rg.to_ascii_lowercase(), name.to_ascii_lowercase())
}

impl State {
    /// Applies every pending operation whose time has come.
    pub(crate) fn settle(&mut self, now: Instant) {
        for c in self.computes.values_mut() {
            c.settle(now);
        }
    }

    /// Creates a VM or VMSS if it does not exist (idempotent; an existing one keeps its identities).
    pub(crate) fn ensure_compute(&mut self, kind: ComputeKind, rg: &str, name: &str, instances: u32) -> &Compute {
        let location = self.location.clone();
        self.computes.entry(ckey(kind, rg, name)).or_insert_with(|| Compute::new(kind, rg, name, &location, instances))
    }

    pub(crate) fn compute(&self, kind: ComputeKind, rg: &str, name: &str) -> Option<&Compute> {
        self.computes.get(&ckey(kind, rg, name))
    }

    pub(crate) fn compute_mut(&mut self, kind: ComputeKind, rg: &str, name: &str) -> Option<&mut Compute> {
        self.computes.get_mut(&ckey(kind, rg, name))
    }

    /// Removes a VM or VMSS (its nodes' IMDS then answer 404).
    pub(crate) fn remove_compute(&mut self, kind: ComputeKind, rg: &str, name: &str) -> bool {
        self.computes.remove(&ckey(kind, rg, name)).is_some()
    }

    /// All VMs and VMSS (for the admin state dump).
    pub(crate) fn computes(&self) -> impl Iterator<Item = &Compute> {
        self.computes.values()
    }

    pub(crate) fn not_found(kind: ComputeKind, rg: &str, name: &str) -> ApiError {
        ApiError::new(
            404,
            "ResourceNotFound",
            format!(
                "The Resource 'Microsoft.Compute/{}/{name}' under resource group '{rg}' was not found. {ARM_RESOURCE_NOT_FOUND_FIX}",
                kind.arm_type()
            ),
        )
    }

    /// A PUT or PATCH of a VM/VMSS. Returns the resource JSON (the model, `Updating` while pending)
    /// and the async operation id to poll.
    pub(crate) fn write_compute(
        &mut self,
        w: &WriteRequest<'_>,
        now: Instant,
        lro: Duration,
    ) -> Result<(Value, String), ApiError> {
        let WriteRequest { kind, resource_group: rg, name, body, put, fail } = *w;
        self.settle(now);
        if let Some(err) = fail {
            let compute = self.computes.get(&ckey(kind, rg, name)).ok_or_else(|| Self::not_found(kind, rg, name))?;
            let json = compute.to_json(&self.subscription_id, &self.tenant_id);
            let op_id = uuid::Uuid::new_v4().to_string();
            let op = AsyncOp { due: now + lro, started: SystemTime::now(), lro, failed: Some(err.clone()) };
            self.ops.insert(op_id.clone(), op);
            return Ok((json, op_id));
        }
        let patch = IdentityPatch::from_body(body)?;
        let key = ckey(kind, rg, name);
        if !self.computes.contains_key(&key) {
            if !put {
                return Err(Self::not_found(kind, rg, name));
            }
            let instances = body.pointer("/sku/capacity").and_then(Value::as_u64).unwrap_or(1);
            let loc = body.get("location").and_then(Value::as_str).unwrap_or(&self.location).to_owned();
            let mut c = Compute::new(kind, rg, name, &loc, u32::try_from(instances).unwrap_or(u32::MAX));
            c.location = loc;
            self.computes.insert(key.clone(), c);
        }
        let identities = &self.identities;
        let compute = self.computes.get_mut(&key).ok_or_else(|| Self::not_found(kind, rg, name))?;
        let new_model = match &patch {
            Some(p) => apply_identity_patch(
                &compute.model,
                p,
                put,
                |id| identities.get(id).cloned(),
                || SystemIdentity {
                    principal_id: uuid::Uuid::new_v4().to_string(),
                    client_id: uuid::Uuid::new_v4().to_string(),
                },
            )?,
            None if put => Identities::default(),
            None => compute.model.clone(),
        };
        if let Some(tags) = body.get("tags").and_then(Value::as_object) {
            compute.tags = tags.clone();
        }
        compute.model = new_model.clone();
        let start = compute.pending.back().map_or(now, |p| p.due.max(now));
        let due = start + lro;
        if lro.is_zero() && compute.pending.is_empty() {
            compute.applied = new_model;
        } else {
            compute.pending.push_back(Pending { due, identities: new_model });
        }
        let op_id = uuid::Uuid::new_v4().to_string();
        self.ops.insert(op_id.clone(), AsyncOp { due, started: SystemTime::now(), lro, failed: None });
        let json = compute.to_json(&self.subscription_id, &self.tenant_id);
        Ok((json, op_id))
    }

    pub(crate) fn op(&self, id: &str) -> Option<&AsyncOp> {
        self.ops.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn identity_changes_reach_the_applied_set_only_when_the_operation_is_due() {
        let (mut s, a, _) = world();
        let t0 = Instant::now();
        let lro = Duration::from_secs(5);
        let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}}}});
        let (v, op) = s.write_compute(&vmss_patch(&body), t0, lro).unwrap();
        assert_eq!(v["properties"]["provisioningState"], "Updating");
        assert!(s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().applied.user.is_empty());
        s.settle(t0 + Duration::from_secs(4));
        assert!(s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().applied.user.is_empty());
        s.settle(t0 + lro);
        assert!(s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().applied.has_user(&a.id));
        assert_eq!(s.op(&op).unwrap().due, t0 + lro);
    }

    #[test]
    fn writes_to_one_scale_set_queue_behind_each_other() {
        let (mut s, a, b) = world();
        let t0 = Instant::now();
        let lro = Duration::from_secs(5);
        let first = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}}}});
        let second = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {b.id.clone(): {}}}});
        s.write_compute(&vmss_patch(&first), t0, lro).unwrap();
        let (v, op2) = s.write_compute(&vmss_patch(&second), t0 + Duration::from_secs(1), lro).unwrap();
        assert_eq!(v["identity"]["userAssignedIdentities"].as_object().unwrap().len(), 2, "the model has both at once");
        assert_eq!(s.op(&op2).unwrap().due, t0 + lro + lro, "the second starts when the first ends");
        s.settle(t0 + lro);
        let applied = &s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().applied;
        assert!(applied.has_user(&a.id) && !applied.has_user(&b.id));
        s.settle(t0 + lro + lro);
        assert!(s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().applied.has_user(&b.id));
    }
}
