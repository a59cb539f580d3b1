//! The simulated Azure: VMs, scale sets, user-assigned identities, app registrations (service principals)
//! and long-running operations. Plain data and pure transitions; time comes in as an argument.
//!
//! ARM has two views of a VM's identities: the *model* (what ARM GETs show as soon as a write is
//! accepted) and the *applied* set (what the node's IMDS can issue tokens for). A write queues a
//! pending operation; the applied set catches up when the operation's due time has passed
//! (`State::settle`). Writes queue behind each other per VM/VMSS.
//! This module never does I/O, never sleeps and never logs secrets.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

const ARM_RESOURCE_NOT_FOUND_FIX: &str = "For more details please go to https://aka.ms/ARMResourceNotFoundFix";

/// An ARM-style error: status, `error.code`, `error.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into() }
    }
}

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

/// A user-assigned identity as created by `az identity create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityInfo {
    /// ARM resource ID, `/subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`.
    pub id: String,
    /// Name of the identity.
    pub name: String,
    /// Resource group it lives in.
    pub resource_group: String,
    /// Client (application) ID: what `client_id` selects at IMDS and what tokens carry as `appid`.
    pub client_id: String,
    /// Principal (object) ID: what `object_id` selects and tokens carry as `oid`.
    pub principal_id: String,
    /// Tenant of the identity.
    pub tenant_id: String,
    /// Azure region.
    pub location: String,
}

impl IdentityInfo {
    /// The JSON `az identity create -o json` prints (and ARM returns, flattened).
    pub fn az_json(&self) -> Value {
        json!({
            "clientId": self.client_id,
            "id": self.id,
            "location": self.location,
            "name": self.name,
            "principalId": self.principal_id,
            "resourceGroup": self.resource_group,
            "systemData": null,
            "tags": {},
            "tenantId": self.tenant_id,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        })
    }

    /// The ARM GET/PUT body (`properties` nested), as the ManagedIdentity RP returns it.
    pub fn arm_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "location": self.location,
            "tags": {},
            "properties": {
                "tenantId": self.tenant_id,
                "principalId": self.principal_id,
                "clientId": self.client_id,
            },
        })
    }
}

/// A user-assigned identity attached to a VM or VMSS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedIdentity {
    /// The resource ID as the client sent it when attaching.
    pub id: String,
    /// Principal (object) ID.
    pub principal_id: String,
    /// Client ID.
    pub client_id: String,
}

/// The system-assigned identity of a VM or VMSS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemIdentity {
    /// Principal (object) ID.
    pub principal_id: String,
    /// Client ID (not shown by ARM, used by IMDS tokens as `appid`).
    pub client_id: String,
}

/// The identities of a VM or VMSS: an optional system-assigned one and user-assigned ones keyed by
/// lowercased resource ID (ARM compares identity IDs case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identities {
    /// The system-assigned identity, if enabled.
    pub system: Option<SystemIdentity>,
    /// User-assigned identities by lowercased resource ID.
    pub user: BTreeMap<String, AttachedIdentity>,
}

impl Identities {
    /// ARM's `identity.type` for this set.
    pub fn type_str(&self) -> &'static str {
        match (self.system.is_some(), self.user.is_empty()) {
            (true, false) => "SystemAssigned, UserAssigned",
            (true, true) => "SystemAssigned",
            (false, false) => "UserAssigned",
            (false, true) => "None",
        }
    }

    /// The user-assigned resource IDs as sent when attached.
    pub fn user_ids(&self) -> Vec<String> {
        self.user.values().map(|a| a.id.clone()).collect()
    }

    /// Whether the user-assigned identity `id` is attached (case-insensitive).
    pub fn has_user(&self, id: &str) -> bool {
        self.user.contains_key(&id.to_ascii_lowercase())
    }

    fn to_json(&self, tenant_id: &str) -> Option<Value> {
        if self.system.is_none() && self.user.is_empty() {
            return None;
        }
        let mut identity = Map::new();
        identity.insert("type".into(), json!(self.type_str()));
        if let Some(sys) = &self.system {
            identity.insert("principalId".into(), json!(sys.principal_id));
            identity.insert("tenantId".into(), json!(tenant_id));
        }
        if !self.user.is_empty() {
            let map: Map<String, Value> = self
                .user
                .values()
                .map(|a| (a.id.clone(), json!({"principalId": a.principal_id, "clientId": a.client_id})))
                .collect();
            identity.insert("userAssignedIdentities".into(), Value::Object(map));
        }
        Some(Value::Object(identity))
    }
}

/// `identity.type` values ARM accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityType {
    None,
    System,
    User,
    Both,
}

impl IdentityType {
    fn parse(s: &str) -> Option<Self> {
        let norm: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
        match norm.as_str() {
            "none" => Some(Self::None),
            "systemassigned" => Some(Self::System),
            "userassigned" => Some(Self::User),
            "systemassigned,userassigned" | "userassigned,systemassigned" => Some(Self::Both),
            _ => None,
        }
    }
}

/// The `identity` block of a PUT or PATCH body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct IdentityPatch {
    pub(crate) ty: Option<IdentityType>,
    /// (resource ID as sent, true = attach `{}` / false = detach `null`).
    pub(crate) user: Vec<(String, bool)>,
}

impl IdentityPatch {
    /// Reads the `identity` member of a request body; `Ok(None)` when the body does not touch identities.
    pub(crate) fn from_body(body: &Value) -> Result<Option<Self>, ApiError> {
        let Some(identity) = body.get("identity") else { return Ok(None) };
        if identity.is_null() {
            return Ok(None);
        }
        let Some(obj) = identity.as_object() else {
            return Err(invalid_content("identity must be an object"));
        };
        let ty = match obj.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(IdentityType::parse(s).ok_or_else(|| {
                ApiError::new(
                    400,
                    "InvalidParameter",
                    format!("The value '{s}' of parameter 'identity.type' is invalid."),
                )
            })?),
            Some(_) => return Err(invalid_content("identity.type must be a string")),
        };
        let mut user = Vec::new();
        match obj.get("userAssignedIdentities") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (id, v) in map {
                    match v {
                        Value::Null => user.push((id.clone(), false)),
                        Value::Object(_) => user.push((id.clone(), true)),
                        _ => return Err(invalid_content("userAssignedIdentities values must be objects or null")),
                    }
                }
            }
            Some(_) => return Err(invalid_content("identity.userAssignedIdentities must be an object")),
        }
        Ok(Some(Self { ty, user }))
    }
}

fn invalid_content(detail: &str) -> ApiError {
    ApiError::new(
        400,
        "InvalidRequestContent",
        format!("The request content was invalid and could not be deserialized: {detail}."),
    )
}

/// Whether `id` has the shape of a user-assigned identity resource ID.
pub(crate) fn is_identity_resource_id(id: &str) -> bool {
    let segs: Vec<&str> = id.trim_matches('/').split('/').collect();
    segs.len() == 8
        && segs[0].eq_ignore_ascii_case("subscriptions")
        && segs[2].eq_ignore_ascii_case("resourceGroups")
        && segs[4].eq_ignore_ascii_case("providers")
        && segs[5].eq_ignore_ascii_case("Microsoft.ManagedIdentity")
        && segs[6].eq_ignore_ascii_case("userAssignedIdentities")
        && segs.iter().all(|s| !s.is_empty())
}

/// Applies an identity patch to `current`. `replace` is PUT semantics (start from no user identities),
/// otherwise PATCH semantics (`{}` attaches, `null` detaches, others untouched).
/// `lookup` resolves an identity resource ID (lowercased) to the registered identity.
pub(crate) fn apply_identity_patch(
    current: &Identities,
    patch: &IdentityPatch,
    replace: bool,
    lookup: impl Fn(&str) -> Option<IdentityInfo>,
    new_system: impl FnOnce() -> SystemIdentity,
) -> Result<Identities, ApiError> {
    let malformed: Vec<&str> =
        patch.user.iter().filter(|(id, _)| !is_identity_resource_id(id)).map(|(id, _)| id.as_str()).collect();
    if let Some(bad) = malformed.first() {
        return Err(ApiError::new(
            400,
            "LinkedInvalidPropertyId",
            format!(
                "Property id '{bad}' at path 'identity.userAssignedIdentities' is invalid. Expect fully qualified resource Id that start with '/subscriptions/{{subscriptionId}}' or '/providers/{{resourceProviderNamespace}}/'."
            ),
        ));
    }
    let mut user = if replace { BTreeMap::new() } else { current.user.clone() };
    let mut missing = Vec::new();
    for (id, attach) in &patch.user {
        let key = id.to_ascii_lowercase();
        if !attach {
            user.remove(&key);
            continue;
        }
        if let Some(existing) = current.user.get(&key) {
            user.insert(key, existing.clone());
            continue;
        }
        match lookup(&key) {
            Some(info) => {
                user.insert(
                    key,
                    AttachedIdentity { id: id.clone(), principal_id: info.principal_id, client_id: info.client_id },
                );
            }
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(identities_not_found(&missing));
    }
    let attaches = patch.user.iter().any(|(_, a)| *a);
    let ty = patch.ty.unwrap_or(match (current.system.is_some(), replace) {
        (true, _) => IdentityType::Both,
        (false, _) => IdentityType::User,
    });
    let keep_system = || current.system.clone().unwrap_or_else(new_system);
    let (system, user) = match ty {
        IdentityType::None | IdentityType::System if attaches => {
            return Err(ApiError::new(
                400,
                "InvalidParameter",
                "Parameter 'identity.userAssignedIdentities' can only be specified when 'identity.type' includes 'UserAssigned'.",
            ));
        }
        IdentityType::None => (None, BTreeMap::new()),
        IdentityType::System => (Some(keep_system()), BTreeMap::new()),
        IdentityType::User => (None, user),
        IdentityType::Both => (Some(keep_system()), user),
    };
    if matches!(ty, IdentityType::User | IdentityType::Both) && user.is_empty() {
        if patch.ty.is_none() {
            // Detaching the last user identity without naming a type: what remains is the system part.
            return Ok(Identities { system, user });
        }
        return Err(ApiError::new(
            400,
            "InvalidParameter",
            "Parameter 'identity.userAssignedIdentities' must contain at least one identity when 'identity.type' is 'UserAssigned'.",
        ));
    }
    Ok(Identities { system, user })
}

/// The `FailedIdentityOperation` error for identities that do not exist. The IDs appear single-quoted and
/// comma-separated, the way ARM quotes linked scopes, so the original MIC's extraction regex finds them.
pub(crate) fn identities_not_found(ids: &[String]) -> ApiError {
    ApiError::new(
        404,
        "FailedIdentityOperation",
        format!(
            "Identity operation failed: the user assigned identities '{}' were not found. Make sure the identities exist and are in the same tenant.",
            ids.join(",")
        ),
    )
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

/// A federated identity credential (workload identity federation) on an app or identity.
#[derive(Debug, Clone)]
pub(crate) struct FederatedCredential {
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) audiences: Vec<String>,
    /// A JWKS document, or the URL to fetch one from.
    pub(crate) jwks: JwksSource,
}

/// Where the keys that sign federated assertions come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document (`{"keys":[...]}`).
    Inline(Value),
    /// A URL serving a JWKS document (fetched on each assertion; TLS certificates are not verified,
    /// since issuers in test clusters use self-signed ones).
    Url(String),
}

impl JwksSource {
    /// Reads `jwks_json_or_url`: a JSON document if it parses as one, otherwise a URL.
    pub fn parse(jwks_json_or_url: &str) -> Result<Self, String> {
        let t = jwks_json_or_url.trim();
        if t.starts_with('{') {
            let v: Value = serde_json::from_str(t).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
            if v.get("keys").and_then(Value::as_array).is_none() {
                return Err("JWKS has no \"keys\" array".into());
            }
            Ok(Self::Inline(v))
        } else if t.starts_with("http://") || t.starts_with("https://") {
            Ok(Self::Url(t.to_owned()))
        } else {
            Err("expected a JWKS JSON document or an http(s) URL".into())
        }
    }
}

/// An application (service principal) or a managed identity that can authenticate to Azure AD.
#[derive(Debug, Clone)]
pub(crate) struct AppClient {
    pub(crate) client_id: String,
    pub(crate) object_id: String,
    pub(crate) secrets: Vec<String>,
    pub(crate) certificates: Vec<Vec<u8>>,
    pub(crate) federated: Vec<FederatedCredential>,
    /// Set for user-assigned identities: the resource ID (tokens carry it as `xms_mirid`).
    pub(crate) managed_identity_id: Option<String>,
}

impl AppClient {
    fn new(client_id: &str, object_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            object_id: object_id.to_owned(),
            secrets: Vec::new(),
            certificates: Vec::new(),
            federated: Vec::new(),
            managed_identity_id: None,
        }
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

/// A node the IMDS face serves: a VM, or one instance of a VMSS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum NodeRef {
    /// A standalone VM, by name (in any resource group unless one is given).
    Vm {
        /// VM name.
        name: String,
        /// Resource group; `None` = the first VM with this name.
        #[serde(default)]
        resource_group: Option<String>,
    },
    /// One instance of a VMSS.
    VmssInstance {
        /// Scale set name.
        vmss: String,
        /// Instance ID (`0`, `1`, ...).
        instance: u32,
        /// Resource group; `None` = the first VMSS with this name.
        #[serde(default)]
        resource_group: Option<String>,
    },
}

impl NodeRef {
    /// A VM node.
    pub fn vm(name: impl Into<String>) -> Self {
        NodeRef::Vm { name: name.into(), resource_group: None }
    }
    /// A VMSS instance node.
    pub fn vmss_instance(vmss: impl Into<String>, instance: u32) -> Self {
        NodeRef::VmssInstance { vmss: vmss.into(), instance, resource_group: None }
    }
    /// Pins the node's resource group.
    pub fn in_resource_group(self, rg: impl Into<String>) -> Self {
        match self {
            NodeRef::Vm { name, .. } => NodeRef::Vm { name, resource_group: Some(rg.into()) },
            NodeRef::VmssInstance { vmss, instance, .. } => {
                NodeRef::VmssInstance { vmss, instance, resource_group: Some(rg.into()) }
            }
        }
    }
    /// The node's computer name: the VM name, or `<vmss>_<instance>` (as IMDS reports `compute.name`).
    pub fn node_name(&self) -> String {
        match self {
            NodeRef::Vm { name, .. } => name.clone(),
            NodeRef::VmssInstance { vmss, instance, .. } => format!("{vmss}_{instance}"),
        }
    }
}

impl std::str::FromStr for NodeRef {
    type Err = String;
    /// `vm:<name>` or `vmss:<name>:<instance>`; to pin the resource group put `<rg>/` before the name:
    /// `vm:rg/name`, `vmss:rg/name:0`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let split_rg = |x: &str| -> (Option<String>, String) {
            match x.split_once('/') {
                Some((rg, n)) => (Some(rg.to_owned()), n.to_owned()),
                None => (None, x.to_owned()),
            }
        };
        if let Some(rest) = s.strip_prefix("vm:") {
            let (resource_group, name) = split_rg(rest);
            if name.is_empty() {
                return Err("empty VM name".into());
            }
            return Ok(NodeRef::Vm { name, resource_group });
        }
        if let Some(rest) = s.strip_prefix("vmss:") {
            let (name, inst) = rest.rsplit_once(':').ok_or("expected vmss:<name>:<instance>")?;
            let instance = inst.parse::<u32>().map_err(|_| format!("bad instance id {inst:?}"))?;
            let (resource_group, vmss) = split_rg(name);
            if vmss.is_empty() {
                return Err("empty VMSS name".into());
            }
            return Ok(NodeRef::VmssInstance { vmss, instance, resource_group });
        }
        Err(format!("expected vm:<name> or vmss:<name>:<instance>, got {s:?}"))
    }
}

/// The whole simulated world.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) tenant_id: String,
    pub(crate) subscription_id: String,
    pub(crate) location: String,
    computes: BTreeMap<(ComputeKind, String, String), Compute>,
    identities: BTreeMap<String, IdentityInfo>,
    clients: BTreeMap<String, AppClient>,
    ops: BTreeMap<String, AsyncOp>,
}

fn ckey(kind: ComputeKind, rg: &str, name: &str) -> (ComputeKind, String, String) {
    (kind, rg.to_ascii_lowercase(), name.to_ascii_lowercase())
}

impl State {
    pub(crate) fn new(tenant_id: &str, subscription_id: &str, location: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
            location: location.to_owned(),
            computes: BTreeMap::new(),
            identities: BTreeMap::new(),
            clients: BTreeMap::new(),
            ops: BTreeMap::new(),
        }
    }

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

    /// Finds the VM or VMSS a node belongs to.
    pub(crate) fn node_compute(&self, node: &NodeRef) -> Option<&Compute> {
        let (kind, name, rg) = match node {
            NodeRef::Vm { name, resource_group } => (ComputeKind::Vm, name, resource_group),
            NodeRef::VmssInstance { vmss, resource_group, .. } => (ComputeKind::Vmss, vmss, resource_group),
        };
        let c = match rg {
            Some(rg) => self.computes.get(&ckey(kind, rg, name)),
            None => self.computes.values().find(|c| c.kind == kind && c.name.eq_ignore_ascii_case(name)),
        }?;
        match node {
            NodeRef::VmssInstance { instance, .. } if *instance >= c.instances => None,
            _ => Some(c),
        }
    }

    // === identities ===

    pub(crate) fn identity_id(&self, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
            self.subscription_id
        )
    }

    /// Creates a user-assigned identity, or returns the existing one (`az identity create` is idempotent).
    pub(crate) fn create_identity(
        &mut self,
        rg: &str,
        name: &str,
        client_id: Option<&str>,
        principal_id: Option<&str>,
    ) -> IdentityInfo {
        let id = self.identity_id(rg, name);
        let key = id.to_ascii_lowercase();
        if let Some(existing) = self.identities.get(&key) {
            return existing.clone();
        }
        let info = IdentityInfo {
            id: id.clone(),
            name: name.to_owned(),
            resource_group: rg.to_owned(),
            client_id: client_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
            principal_id: principal_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
            tenant_id: self.tenant_id.clone(),
            location: self.location.clone(),
        };
        let client = self
            .clients
            .entry(info.client_id.to_ascii_lowercase())
            .or_insert_with(|| AppClient::new(&info.client_id, &info.principal_id));
        client.managed_identity_id = Some(id);
        self.identities.insert(key, info.clone());
        info
    }

    pub(crate) fn identity(&self, rg: &str, name: &str) -> Option<&IdentityInfo> {
        self.identities.get(&self.identity_id(rg, name).to_ascii_lowercase())
    }

    pub(crate) fn identity_by_id(&self, id: &str) -> Option<&IdentityInfo> {
        self.identities.get(&id.to_ascii_lowercase())
    }

    pub(crate) fn identities(&self) -> impl Iterator<Item = &IdentityInfo> {
        self.identities.values()
    }

    /// Deletes a user-assigned identity; attached copies on VMs stay but IMDS no longer finds it.
    pub(crate) fn delete_identity(&mut self, rg: &str, name: &str) -> bool {
        let key = self.identity_id(rg, name).to_ascii_lowercase();
        match self.identities.remove(&key) {
            Some(info) => {
                self.clients.remove(&info.client_id.to_ascii_lowercase());
                true
            }
            None => false,
        }
    }

    // === app clients ===

    pub(crate) fn client(&self, client_id: &str) -> Option<&AppClient> {
        self.clients.get(&client_id.to_ascii_lowercase())
    }

    fn client_mut(&mut self, client_id: &str) -> &mut AppClient {
        self.clients
            .entry(client_id.to_ascii_lowercase())
            .or_insert_with(|| AppClient::new(client_id, &uuid::Uuid::new_v4().to_string()))
    }

    pub(crate) fn add_secret(&mut self, client_id: &str, secret: &str) {
        let c = self.client_mut(client_id);
        if !c.secrets.iter().any(|s| s == secret) {
            c.secrets.push(secret.to_owned());
        }
    }

    pub(crate) fn remove_secret(&mut self, client_id: &str, secret: &str) -> bool {
        let Some(c) = self.clients.get_mut(&client_id.to_ascii_lowercase()) else { return false };
        let before = c.secrets.len();
        c.secrets.retain(|s| s != secret);
        c.secrets.len() < before
    }

    pub(crate) fn add_certificate(&mut self, client_id: &str, cert_der: Vec<u8>) {
        let c = self.client_mut(client_id);
        if !c.certificates.contains(&cert_der) {
            c.certificates.push(cert_der);
        }
    }

    pub(crate) fn add_federated(&mut self, client_id: &str, cred: FederatedCredential) {
        self.client_mut(client_id).federated.push(cred);
    }

    /// Ensures an app client exists (no credentials) and returns its object ID.
    pub(crate) fn ensure_client(&mut self, client_id: &str) -> String {
        self.client_mut(client_id).object_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn world() -> (State, IdentityInfo, IdentityInfo) {
        let mut s = State::new("tid", SUB, "westus2");
        s.ensure_compute(ComputeKind::Vmss, "rg", "ss", 2);
        let a = s.create_identity("rg", "a", None, None);
        let b = s.create_identity("rg", "b", None, None);
        (s, a, b)
    }

    fn vmss_patch(body: &Value) -> WriteRequest<'_> {
        WriteRequest { kind: ComputeKind::Vmss, resource_group: "rg", name: "ss", body, put: false, fail: None }
    }

    fn patch(s: &mut State, body: Value, now: Instant) -> Result<Value, ApiError> {
        s.write_compute(&vmss_patch(&body), now, Duration::ZERO).map(|(v, _)| v)
    }

    #[test]
    fn patch_attaches_with_empty_objects_and_detaches_with_null_case_insensitively() {
        let (mut s, a, b) = world();
        let now = Instant::now();
        let v = patch(
            &mut s,
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}, b.id.clone(): {}}}}),
            now,
        )
        .unwrap();
        assert_eq!(v["identity"]["type"], "UserAssigned");
        assert_eq!(v["identity"]["userAssignedIdentities"][&a.id]["clientId"], a.client_id.as_str());
        let upper = a.id.to_ascii_uppercase();
        patch(&mut s, json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {upper: null}}}), now)
            .unwrap();
        let c = s.compute(ComputeKind::Vmss, "RG", "SS").unwrap();
        assert_eq!(c.applied.user_ids(), vec![b.id.clone()]);
    }

    #[test]
    fn unknown_identity_fails_with_quoted_ids_and_changes_nothing() {
        let (mut s, a, _) = world();
        let ghost = format!(
            "/subscriptions/{SUB}/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ghost"
        );
        let err = patch(
            &mut s,
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}, ghost.clone(): {}}}}),
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!((err.status, err.code.as_str()), (404, "FailedIdentityOperation"));
        assert!(err.message.contains(&format!("'{ghost}'")), "{}", err.message);
        assert!(s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().model.user.is_empty());
    }

    #[test]
    fn removing_the_last_user_identity_keeps_the_system_identity() {
        let (mut s, a, _) = world();
        let now = Instant::now();
        patch(
            &mut s,
            json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {a.id.clone(): {}}}}),
            now,
        )
        .unwrap();
        let principal = s.compute(ComputeKind::Vmss, "rg", "ss").unwrap().model.system.clone().unwrap().principal_id;
        let v = patch(&mut s, json!({"identity": {"type": "SystemAssigned"}}), now).unwrap();
        assert_eq!(v["identity"]["type"], "SystemAssigned");
        assert_eq!(v["identity"]["principalId"], principal.as_str());
        assert!(v["identity"].get("userAssignedIdentities").is_none());
        let v = patch(&mut s, json!({"identity": {"type": "None"}}), now).unwrap();
        assert!(v.get("identity").is_none());
    }

    #[test]
    fn user_assigned_with_nothing_left_is_rejected() {
        let (mut s, a, _) = world();
        let now = Instant::now();
        patch(&mut s, json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): {}}}}), now)
            .unwrap();
        let err = patch(
            &mut s,
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): null}}}),
            now,
        )
        .unwrap_err();
        assert_eq!(err.code, "InvalidParameter");
    }

    #[test]
    fn malformed_identity_ids_and_bodies_are_400s() {
        let (mut s, _, _) = world();
        let now = Instant::now();
        for body in [
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {"not-an-id": {}}}}),
            json!({"identity": {"type": "Sometimes"}}),
            json!({"identity": "x"}),
            json!({"identity": {"userAssignedIdentities": []}}),
        ] {
            let err = patch(&mut s, body.clone(), now).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
        }
    }

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

    #[test]
    fn node_refs_parse_from_flags() {
        assert_eq!("vm:node1".parse::<NodeRef>().unwrap(), NodeRef::vm("node1"));
        assert_eq!("vmss:rg/ss:3".parse::<NodeRef>().unwrap(), NodeRef::vmss_instance("ss", 3).in_resource_group("rg"));
        assert!("vmss:ss".parse::<NodeRef>().is_err());
        assert!("node1".parse::<NodeRef>().is_err());
    }

    #[test]
    fn a_vmss_instance_beyond_capacity_is_not_a_node() {
        let (s, _, _) = world();
        assert!(s.node_compute(&NodeRef::vmss_instance("ss", 1)).is_some());
        assert!(s.node_compute(&NodeRef::vmss_instance("ss", 2)).is_none());
    }
}
