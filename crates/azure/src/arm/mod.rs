//! ARM calls MIC makes on nodes: read a VM's or scale set's identities and attach/detach
//! user-assigned identities exactly as the original did: delta PATCHes of at
//! most 150 entries, long-running operations awaited, `Retry-After` blocking per operation,
//! pruning of identities ARM rejects. The resource group always comes from the cloud config.
//!
//! [`plan`] is pure; [`ArmClient`] is the only place with I/O. Never logs a token.

mod client;
mod credential;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

pub use client::{API_VERSION, ArmClient, ArmOptions, IDENTITY_API_VERSION, UserAssignedIdentity};
pub use credential::{ArmCredential, ArmTokenProvider, StaticToken, TokenSource};
pub use plan::{Change, IdentityPatch, IdentityType, MAX_IDENTITIES_PER_REQUEST};

use crate::token::TokenError;

// === VmTarget ===

/// The ARM resource that carries a node's identities.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmTarget {
    /// A standalone VM, by name.
    Vm(String),
    /// A scale set, by name: identities apply to every instance.
    Vmss(String),
}

impl fmt::Display for VmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vm(name) => write!(f, "vm {name}"),
            Self::Vmss(name) => write!(f, "vmss {name}"),
        }
    }
}

/// A node `spec.providerID` that is neither empty nor an ARM resource ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse {0}: invalid resource ID format")]
pub struct InvalidProviderId(pub String);

static NESTED_RESOURCE_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)subscriptions/(.+)/resourceGroups/(.+)/providers/(.+?)/(.+?)/(.+?)/(.+)")
        .expect("constant pattern compiles")
});
static RESOURCE_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)subscriptions/(.+)/resourceGroups/(.+)/providers/(.+?)/(.+?)/(.+)")
        .expect("constant pattern compiles")
});

impl VmTarget {
    /// Reads a node's `spec.providerID` (`azure:///subscriptions/<s>/resourceGroups/<rg>/providers/
    /// Microsoft.Compute/virtualMachineScaleSets/<vmss>/virtualMachines/<i>` → `Vmss(<vmss>)`,
    /// `.../virtualMachines/<vm>` → `Vm(<vm>)`). `None` when the ID is empty, unreadable or of
    /// another type: the caller then uses the node name as the VM name, as the original did.
    pub fn from_provider_id(provider_id: &str) -> Option<Self> {
        Self::parse_provider_id(provider_id).ok().flatten()
    }

    /// Like [`VmTarget::from_provider_id`] but an unreadable non-empty ID is an error, as in the
    /// original's `isVMSS`.
    pub fn parse_provider_id(provider_id: &str) -> Result<Option<Self>, InvalidProviderId> {
        if provider_id.is_empty() {
            return Ok(None);
        }
        let captures = NESTED_RESOURCE_ID
            .captures(provider_id)
            .or_else(|| RESOURCE_ID.captures(provider_id))
            .ok_or_else(|| InvalidProviderId(provider_id.to_owned()))?;
        let resource_type = captures.get(4).map_or("", |m| m.as_str());
        let name = captures.get(5).map_or("", |m| m.as_str());
        // Go's path.Base: the last element of the matched name.
        let name = name.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(InvalidProviderId(provider_id.to_owned()));
        }
        Ok(if resource_type.eq_ignore_ascii_case("virtualMachineScaleSets") {
            Some(Self::Vmss(name))
        } else if resource_type.eq_ignore_ascii_case("virtualMachines") {
            Some(Self::Vm(name))
        } else {
            None
        })
    }

    /// The VM or scale-set name.
    pub fn name(&self) -> &str {
        match self {
            Self::Vm(name) | Self::Vmss(name) => name,
        }
    }

    /// Whether this is a scale set.
    pub fn is_vmss(&self) -> bool {
        matches!(self, Self::Vmss(_))
    }

    fn resource_type(&self) -> &'static str {
        match self {
            Self::Vm(_) => "virtualMachines",
            Self::Vmss(_) => "virtualMachineScaleSets",
        }
    }

    fn read_operation(&self) -> ArmOperation {
        if self.is_vmss() { ArmOperation::VmssGet } else { ArmOperation::VmGet }
    }

    fn write_operation(&self) -> ArmOperation {
        if self.is_vmss() { ArmOperation::VmssUpdate } else { ArmOperation::VmUpdate }
    }
}

// === ArmOperation and observer ===

/// The four ARM operations the original measured and throttled separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArmOperation {
    VmGet,
    VmUpdate,
    VmssGet,
    VmssUpdate,
}

impl ArmOperation {
    /// The `operation_type` label of `cloud_provider_operations_*`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VmGet => "vm_get",
            Self::VmUpdate => "vm_update",
            Self::VmssGet => "vmss_get",
            Self::VmssUpdate => "vmss_update",
        }
    }

    /// The client name in the original's throttling messages (`VMSSUpdate client throttled ...`).
    pub fn client_name(self) -> &'static str {
        match self {
            Self::VmGet => "VMGet",
            Self::VmUpdate => "VMUpdate",
            Self::VmssGet => "VMSSGet",
            Self::VmssUpdate => "VMSSUpdate",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::VmGet => 0,
            Self::VmUpdate => 1,
            Self::VmssGet => 2,
            Self::VmssUpdate => 3,
        }
    }
}

impl fmt::Display for ArmOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.client_name())
    }
}

/// Receives one observation per ARM operation (a GET, or a whole identity update including its
/// chunks and long-running operations), so MIC can record `cloud_provider_operations_duration_seconds`
/// on success and `cloud_provider_operations_errors_count` on failure.
pub trait ArmObserver: Send + Sync {
    fn observe(&self, operation: ArmOperation, elapsed: Duration, ok: bool);
}

// === NodeIdentities ===

/// What a VM or scale set currently carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentities {
    /// `identity.type` (`None` when the resource has no identity block).
    pub identity_type: Option<IdentityType>,
    /// User-assigned identity resource IDs, lower-cased and sorted.
    pub user_assigned: Vec<String>,
    /// ARM's own client ID of each user-assigned identity, by lower-cased resource ID (absent
    /// when ARM reports none). This, not what an AzureIdentity claims, says which identity it is.
    pub client_ids: BTreeMap<String, String>,
    /// The system-assigned identity's principal ID, if any.
    pub principal_id: Option<String>,
    /// The system-assigned identity's tenant ID, if any.
    pub tenant_id: Option<String>,
    /// `properties.provisioningState`.
    pub provisioning_state: Option<String>,
}

/// What an identity update must do on a resource, decided from its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateDecision {
    /// The resource already looks as wanted: no PATCH.
    NoChange,
    /// Send this PATCH (in chunks).
    Patch(IdentityPatch),
    /// A change is needed but the resource is being deleted: refuse, no PATCH.
    Deleting,
}

impl NodeIdentities {
    /// Whether ARM reports the resource as being deleted.
    pub fn is_deleting(&self) -> bool {
        self.provisioning_state.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("Deleting"))
    }

    /// The original's order: compute the delta first (no change means success even while
    /// deleting), then refuse a resource in `Deleting`.
    pub fn decide_update(&self, add: &[String], remove: &[String]) -> UpdateDecision {
        let current = self.identity_type.unwrap_or(IdentityType::None);
        match plan::plan_update(current, &self.user_assigned, add, remove) {
            None => UpdateDecision::NoChange,
            Some(_) if self.is_deleting() => UpdateDecision::Deleting,
            Some(patch) => UpdateDecision::Patch(patch),
        }
    }

    /// Splits `remove` into what may be detached and what must stay: an attached identity whose
    /// client ID, as ARM reports it, is protected stays whatever the caller believes it is. While
    /// anything is protected, an attached identity ARM reports no client ID for stays too: it
    /// cannot be told apart from a protected one.
    pub fn split_removals(&self, remove: &[String], protected: &ProtectedClientIds) -> Removals {
        let mut out = Removals::default();
        for id in remove {
            let key = id.to_lowercase();
            let keep = !protected.is_empty()
                && self.has_user_assigned(&key)
                && self.client_ids.get(&key).is_none_or(|client_id| protected.contains(client_id));
            if keep { out.kept.push(id.clone()) } else { out.allowed.push(id.clone()) }
        }
        out
    }

    /// Whether `id` (any case) is attached.
    pub fn has_user_assigned(&self, id: &str) -> bool {
        let id = id.to_lowercase();
        self.user_assigned.binary_search(&id).is_ok()
    }
}

// === Protected identities ===

/// Client IDs whose identities an update never detaches from a VM or scale set (the cluster
/// identity and `--immutable-user-msis`), compared ignoring case. Its `Debug` shows only how
/// many there are: client IDs are not logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProtectedClientIds(BTreeSet<String>);

impl ProtectedClientIds {
    /// Blank entries are ignored.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(client_ids: I) -> Self {
        Self(client_ids.into_iter().map(|s| s.as_ref().trim().to_lowercase()).filter(|s| !s.is_empty()).collect())
    }

    /// Whether `client_id` (any case, surrounding blanks ignored) is protected.
    pub fn contains(&self, client_id: &str) -> bool {
        self.0.contains(&client_id.trim().to_lowercase())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for ProtectedClientIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProtectedClientIds({} client IDs)", self.0.len())
    }
}

/// [`NodeIdentities::split_removals`]: the IDs to detach, and the protected ones kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removals {
    pub allowed: Vec<String>,
    pub kept: Vec<String>,
}

// === ArmError ===

/// Why an ARM call failed; the variants are what MIC acts on.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// A `Retry-After` from an earlier failure (or this 429) blocks this operation until it passes.
    #[error("{operation} client throttled, retry after: {retry_after:?}")]
    Throttled { operation: ArmOperation, retry_after: Duration },
    /// The VM or scale set does not exist.
    #[error("{target} not found in resource group {resource_group}")]
    NotFound { target: VmTarget, resource_group: String },
    /// The resource is being deleted; the original refused to PATCH it.
    #[error("failed to update identities for {target} in {resource_group}, it is in Deleting provisioning state")]
    Deleting { target: VmTarget, resource_group: String },
    /// ARM answered with an error status.
    #[error("ARM answered HTTP {status}: {code}: {message}")]
    Http { status: u16, code: String, message: String },
    /// A long-running operation ended in `Failed` or `Canceled`.
    #[error("long-running operation {status}: {code}: {message}")]
    OperationFailed { status: String, code: String, message: String },
    /// A long-running operation did not finish in time.
    #[error("long-running operation did not finish within {0:?}")]
    OperationTimeout(Duration),
    /// ARM could not be reached.
    #[error("failed to send request to ARM: {0}")]
    Transport(#[source] reqwest::Error),
    /// ARM answered 2xx with a body we cannot read.
    #[error("invalid ARM response: {0}")]
    InvalidResponse(String),
    /// No bearer token for ARM.
    #[error("failed to get a token for ARM: {0}")]
    Auth(#[source] TokenError),
    /// ARM rejected some identities (`LinkedAuthorizationFailed`, `FailedIdentityOperation`);
    /// the others were retried without them. `source` is the original error, always returned.
    #[error("identities {ids:?} were rejected: {source}")]
    BadIdentities {
        ids: Vec<String>,
        #[source]
        source: Box<ArmError>,
    },
    /// The client cannot be built from the given config.
    #[error("invalid ARM client configuration: {0}")]
    Config(String),
    /// The caller withdrew the write before it was sent or before ARM answered (MIC: no longer
    /// the leader); ARM may or may not have applied it.
    #[error("ARM write not sent or abandoned: {0}")]
    Abandoned(String),
}

impl ArmError {
    /// The `Retry-After` wait, if this error is a throttle.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            Self::BadIdentities { source, .. } => source.retry_after(),
            Self::NotFound { .. }
            | Self::Deleting { .. }
            | Self::Http { .. }
            | Self::OperationFailed { .. }
            | Self::OperationTimeout(_)
            | Self::Transport(_)
            | Self::InvalidResponse(_)
            | Self::Auth(_)
            | Self::Config(_)
            | Self::Abandoned(_) => None,
        }
    }

    /// The error's kind and ARM's error code, naming no identity: what an Event may say. Never
    /// ARM's message or the rejected IDs: one update carries every namespace's identities on a
    /// VM or scale set, and ARM's text can name any of them, and principals' client IDs.
    pub fn summary(&self) -> String {
        match self {
            Self::Throttled { retry_after, .. } => format!("ARM throttled the update, retry after {retry_after:?}"),
            Self::NotFound { target, .. } => format!("{target} not found"),
            Self::Deleting { target, .. } => format!("{target} is being deleted"),
            Self::Http { status, code, .. } => format!("ARM answered HTTP {status}: {code}"),
            Self::OperationFailed { status, code, .. } => format!("ARM operation {status}: {code}"),
            Self::OperationTimeout(after) => format!("ARM operation did not finish within {after:?}"),
            Self::Transport(_) => "ARM could not be reached".to_owned(),
            Self::InvalidResponse(_) => "ARM answered with an invalid response".to_owned(),
            Self::Auth(_) => "no token for ARM".to_owned(),
            Self::BadIdentities { ids, source } => {
                format!("ARM rejected {} of the identities: {}", ids.len(), source.summary())
            }
            Self::Config(_) => "invalid ARM client configuration".to_owned(),
            Self::Abandoned(reason) => format!("ARM write not sent or abandoned: {reason}"),
        }
    }
}

// === Arm ===

/// What MIC's act layer needs from ARM, as a trait object (`&dyn Arm`) so it can be swapped.
#[async_trait::async_trait]
pub trait Arm: Send + Sync {
    /// The identities on a VM or scale set.
    async fn identities(&self, target: &VmTarget) -> Result<NodeIdentities, ArmError>;
    /// Attaches `add` and detaches `remove`. Both empty is a no-op. An identity whose
    /// client ID ARM reports as protected ([`ArmOptions::protected`]) is never detached.
    async fn update_user_msi(&self, target: &VmTarget, add: &[String], remove: &[String]) -> Result<(), ArmError>;
}

#[cfg(test)]
mod tests;
