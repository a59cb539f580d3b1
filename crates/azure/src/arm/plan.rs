//! Pure decisions of the identity update: the delta over lower-cased IDs,
//! the identity-type transitions, the 150-entry chunks, bad-identity extraction from ARM error
//! text and `Retry-After` parsing. No I/O, no clock (time comes in as an argument).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use regex::Regex;
use serde_json::{Value, json};

/// ARM's limit of user-assigned identities per PATCH, as the original's `truncate.go`.
pub const MAX_IDENTITIES_PER_REQUEST: usize = 150;

/// The `identity.type` of a VM or scale set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityType {
    /// `None`, also what a missing identity or an unknown type means.
    None,
    SystemAssigned,
    UserAssigned,
    /// `SystemAssigned, UserAssigned`.
    SystemAssignedUserAssigned,
}

impl IdentityType {
    /// Reads ARM's spelling, ignoring case and spaces; empty or unknown is `None`.
    pub fn parse(value: &str) -> Self {
        let squashed: String = value.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
        match squashed.as_str() {
            "systemassigned" => Self::SystemAssigned,
            "userassigned" => Self::UserAssigned,
            "systemassigned,userassigned" | "userassigned,systemassigned" => Self::SystemAssignedUserAssigned,
            _ => Self::None,
        }
    }

    /// ARM's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::SystemAssigned => "SystemAssigned",
            Self::UserAssigned => "UserAssigned",
            Self::SystemAssignedUserAssigned => "SystemAssigned, UserAssigned",
        }
    }

    /// Whether the resource has a system-assigned identity.
    pub fn has_system(self) -> bool {
        matches!(self, Self::SystemAssigned | Self::SystemAssignedUserAssigned)
    }

    /// The type after user-assigned identities remain attached (the original's
    /// `getUpdatedResourceIdentityType`).
    fn with_user(self) -> Self {
        if self.has_system() { Self::SystemAssignedUserAssigned } else { Self::UserAssigned }
    }

    /// The type once no user-assigned identity remains. The original turned a plain
    /// `SystemAssigned` into `None` here (dropping the system identity); we keep it.
    fn without_user(self) -> Self {
        if self.has_system() { Self::SystemAssigned } else { Self::None }
    }
}

/// One entry of the `userAssignedIdentities` delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// `"<id>": {}`
    Add,
    /// `"<id>": null`
    Remove,
}

/// The identity PATCH to send: the new type and the delta (lower-cased IDs). An empty delta
/// means `userAssignedIdentities` is omitted (no user identity remains).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPatch {
    pub identity_type: IdentityType,
    pub delta: BTreeMap<String, Change>,
}

impl IdentityPatch {
    /// The PATCH bodies, one per chunk of at most `max` delta entries (removals first, then
    /// additions, each sorted), or a single body without `userAssignedIdentities`.
    pub fn bodies(&self, max: usize) -> Vec<Value> {
        chunks(&self.delta, max).iter().map(|chunk| self.body(chunk)).collect()
    }

    /// The PATCH body for one chunk of the delta.
    pub fn body(&self, chunk: &BTreeMap<String, Change>) -> Value {
        if chunk.is_empty() {
            return json!({"identity": {"type": self.identity_type.as_str()}});
        }
        let ids: serde_json::Map<String, Value> = chunk
            .iter()
            .map(|(id, change)| {
                (
                    id.clone(),
                    match change {
                        Change::Add => json!({}),
                        Change::Remove => Value::Null,
                    },
                )
            })
            .collect();
        json!({"identity": {"type": self.identity_type.as_str(), "userAssignedIdentities": ids}})
    }
}

/// Splits a delta into chunks of at most `max` entries, removals first. An empty delta is one
/// empty chunk (the type-only PATCH).
pub fn chunks(delta: &BTreeMap<String, Change>, max: usize) -> Vec<BTreeMap<String, Change>> {
    let max = max.max(1);
    let ordered: Vec<(&String, &Change)> = delta
        .iter()
        .filter(|(_, c)| **c == Change::Remove)
        .chain(delta.iter().filter(|(_, c)| **c == Change::Add))
        .collect();
    if ordered.is_empty() {
        return vec![BTreeMap::new()];
    }
    ordered.chunks(max).map(|part| part.iter().map(|(id, c)| ((*id).clone(), **c)).collect()).collect()
}

/// The original's `SetUserIdentities`: given the current type and attached IDs, decide the
/// PATCH for `add` and `remove` (IDs compared lower-cased; removals applied first, so an ID in
/// both lists is added). `None` means nothing to send.
pub fn plan_update(
    current: IdentityType,
    attached: &[String],
    add: &[String],
    remove: &[String],
) -> Option<IdentityPatch> {
    let mut wanted: BTreeMap<String, bool> = BTreeMap::new();
    for id in remove {
        wanted.insert(id.to_lowercase(), false);
    }
    for id in add {
        wanted.insert(id.to_lowercase(), true);
    }
    let mut on_node: std::collections::BTreeSet<String> = attached.iter().map(|id| id.to_lowercase()).collect();
    let mut delta = BTreeMap::new();
    for (id, add) in wanted {
        let exists = on_node.contains(&id);
        if exists && !add {
            on_node.remove(&id);
            delta.insert(id, Change::Remove);
        } else if !exists && add {
            on_node.insert(id.clone());
            delta.insert(id, Change::Add);
        }
    }
    if on_node.is_empty() {
        return Some(IdentityPatch { identity_type: current.without_user(), delta: BTreeMap::new() });
    }
    (!delta.is_empty()).then(|| IdentityPatch { identity_type: current.with_user(), delta })
}

// === Bad identities ===

/// ARM error codes after which the original retried without the identities named in the text.
const BAD_IDENTITY_CODES: [&str; 2] = ["LinkedAuthorizationFailed", "FailedIdentityOperation"];

static BAD_IDENTITIES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"'(,?(?i)/subscriptions/[a-zA-Z0-9_-]+/resourcegroups/[a-zA-Z0-9_-]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[a-zA-Z0-9_-]+)+'",
    )
    .expect("constant pattern compiles")
});

/// Whether an ARM error text is one the original retried after pruning identities.
pub fn is_bad_identity_error(message: &str) -> bool {
    BAD_IDENTITY_CODES.iter().any(|code| message.contains(code))
}

/// The identity IDs named in the first single-quoted, comma-separated list of an ARM error
/// text (e.g. `... on the linked scope(s) '<id>,<id>' or the linked scope(s) are invalid`),
/// each checked like an AzureIdentity's `resourceID`.
pub fn extract_bad_identities(message: &str) -> Vec<String> {
    let Some(found) = BAD_IDENTITIES.find(message) else { return Vec::new() };
    found
        .as_str()
        .trim_matches('\'')
        .split(',')
        .filter(|id| aadpodid_api::view::validate_resource_id(id).is_ok())
        .map(str::to_owned)
        .collect()
}

// === Retry-After ===

/// `Retry-After` as ARM sends it: positive whole seconds or an RFC 1123 date (in the past or
/// unreadable means no wait), as the original's `getRetryAfter`. A number too large for `u64`
/// reads as the longest wait; callers cap it with [`retry_after_within`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    let at = SystemTime::from(at);
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// [`parse_retry_after`], honoured up to `cap`: a server must not be able to stall us (or
/// overflow a deadline) with an absurd wait.
pub fn retry_after_within(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    parse_retry_after(value, now).map(|wait| wait.min(cap))
}
