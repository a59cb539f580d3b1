//! The simulated Azure, as plain data and pure transitions: time comes in as an argument, nothing here
//! does I/O, sleeps or logs secrets, so every ARM and Azure AD rule can be tested without a server.
//!
//! ARM has two views of a VM's identities: the *model* (what ARM GETs show as soon as a write is
//! accepted) and the *applied* set (what the node's IMDS can issue tokens for). A write queues a
//! pending operation; the applied set catches up when the operation's due time has passed
//! (`State::settle`). Writes queue behind each other per VM/VMSS.
//!
//! One `State` holds everything, because some changes cross concerns (creating a user-assigned
//! identity also registers it as an Azure AD client); its methods are split by what they touch:
//! - `compute`: VMs, scale sets and the long-running operations that change them;
//! - `compute_identity`: the `identity` property of a VM or scale set and ARM's rules for changing it;
//! - `identity`: user-assigned identity resources;
//! - `node`: how an IMDS node names the VM or scale-set instance it runs on;
//! - `directory`: the Azure AD side, apps and managed identities with their credentials.

use std::collections::BTreeMap;

mod compute;
mod compute_identity;
mod directory;
mod identity;
mod node;

pub use compute::ComputeKind;
pub(crate) use compute::WriteRequest;
pub use compute_identity::{AttachedIdentity, Identities, SystemIdentity};
pub use directory::JwksSource;
pub(crate) use directory::{AppClient, FederatedCredential};
pub use identity::IdentityInfo;
pub use node::NodeRef;

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

/// The whole simulated world.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) tenant_id: String,
    pub(crate) subscription_id: String,
    pub(crate) location: String,
    computes: BTreeMap<(ComputeKind, String, String), compute::Compute>,
    identities: BTreeMap<String, IdentityInfo>,
    clients: BTreeMap<String, AppClient>,
    ops: BTreeMap<String, compute::AsyncOp>,
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
}

/// A small world the unit tests of several submodules start from.
#[cfg(test)]
mod fixtures {
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::{ApiError, ComputeKind, IdentityInfo, State, WriteRequest};

    pub(super) const SUB: &str = "00000000-0000-0000-0000-000000000001";

    pub(super) fn world() -> (State, IdentityInfo, IdentityInfo) {
        let mut s = State::new("tid", SUB, "westus2");
        s.ensure_compute(ComputeKind::Vmss, "rg", "ss", 2);
        let a = s.create_identity("rg", "a", None, None);
        let b = s.create_identity("rg", "b", None, None);
        (s, a, b)
    }

    pub(super) fn vmss_patch(body: &Value) -> WriteRequest<'_> {
        WriteRequest { kind: ComputeKind::Vmss, resource_group: "rg", name: "ss", body, put: false, fail: None }
    }

    pub(super) fn patch(s: &mut State, body: Value, now: Instant) -> Result<Value, ApiError> {
        s.write_compute(&vmss_patch(&body), now, Duration::ZERO).map(|(v, _)| v)
    }
}
