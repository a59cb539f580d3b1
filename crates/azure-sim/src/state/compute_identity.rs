//! The `identity` property of a VM or scale set (an optional system-assigned identity and the attached
//! user-assigned ones) and ARM's rules for changing it with PUT and PATCH. These rules decide what the
//! original MIC and our own MIC can do to a node, and the errors they must handle, so they live apart
//! from the bookkeeping of writes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ApiError;
use super::identity::IdentityInfo;

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

    pub(super) fn to_json(&self, tenant_id: &str) -> Option<Value> {
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
enum IdentityType {
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
pub(super) struct IdentityPatch {
    ty: Option<IdentityType>,
    /// (resource ID as sent, true = attach `{}` / false = detach `null`).
    user: Vec<(String, bool)>,
}

impl IdentityPatch {
    /// Reads the `identity` member of a request body; `Ok(None)` when the body does not touch identities.
    pub(super) fn from_body(body: &Value) -> Result<Option<Self>, ApiError> {
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
fn is_identity_resource_id(id: &str) -> bool {
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
pub(super) fn apply_identity_patch(
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
fn identities_not_found(ids: &[String]) -> ApiError {
    ApiError::new(
        404,
        "FailedIdentityOperation",
        format!(
            "Identity operation failed: the user assigned identities '{}' were not found. Make sure the identities exist and are in the same tenant.",
            ids.join(",")
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::super::fixtures::*;
    use crate::state::ComputeKind;

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
}
