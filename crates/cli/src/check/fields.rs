//! The field names the CRD schemas declare, in both casings, and the shape checks kubectl's
//! strict validation would make (unknown fields, names), with suggestions for typos.

use serde_json::Value;

use super::Finding;
use crate::similar::suggest;

/// The kinds users write by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Identity,
    Binding,
    Exception,
}

/// Keys of `metadata` users write; anything else there is the API server's.
const METADATA_KEYS: &[&str] = &["name", "namespace", "labels", "annotations", "generateName"];
const IDENTITY_KEYS: &[&str] = &[
    "type",
    "resourceID",
    "ResourceID",
    "clientID",
    "ClientID",
    "clientPassword",
    "ClientPassword",
    "tenantID",
    "TenantID",
    "auxiliaryTenantIDs",
    "adResourceID",
    "adEndpoint",
    "replicas",
    "metadata",
];
const BINDING_KEYS: &[&str] = &["azureIdentity", "AzureIdentity", "selector", "Selector", "weight", "metadata"];
const EXCEPTION_KEYS: &[&str] = &["podLabels", "PodLabels", "metadata"];
/// Pairs of (current, pre-1.6) spellings; the current one wins when both are set.
const CASINGS: &[(&str, &str)] = &[
    ("resourceID", "ResourceID"),
    ("clientID", "ClientID"),
    ("clientPassword", "ClientPassword"),
    ("tenantID", "TenantID"),
    ("azureIdentity", "AzureIdentity"),
    ("selector", "Selector"),
    ("podLabels", "PodLabels"),
];

impl Kind {
    /// Our hand-written kinds; `None` for anything else.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "AzureIdentity" => Some(Self::Identity),
            "AzureIdentityBinding" => Some(Self::Binding),
            "AzurePodIdentityException" => Some(Self::Exception),
            _ => None,
        }
    }

    /// The `spec` keys the CRD schema declares (both casings).
    pub fn spec_keys(self) -> &'static [&'static str] {
        match self {
            Self::Identity => IDENTITY_KEYS,
            Self::Binding => BINDING_KEYS,
            Self::Exception => EXCEPTION_KEYS,
        }
    }

    /// A `spec` key of this kind (not `metadata`, which exists at both levels).
    pub fn is_spec_key(self, key: &str) -> bool {
        key != "metadata" && self.spec_keys().contains(&key)
    }
}

/// A key users put under `metadata:`.
pub(crate) fn is_metadata_key(key: &str) -> bool {
    METADATA_KEYS.contains(&key)
}

/// apiVersion, metadata.name, and the spec's field names.
pub(super) fn check_shape(value: &Value, kind: Kind) -> Vec<Finding> {
    let mut out = Vec::new();
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api_version != aadpodid_api::API_VERSION {
        out.push(Finding::error(format!(
            "apiVersion {api_version:?} must be {:?} (the only version served)",
            aadpodid_api::API_VERSION
        )));
    }
    match value.pointer("/metadata/name").and_then(Value::as_str) {
        None | Some("") => out.push(Finding::error("metadata.name is missing")),
        Some(name) => out.extend(name_problem(name).map(|p| Finding::error(format!("metadata.name {name:?} {p}")))),
    }
    let Some(spec) = value.get("spec").and_then(Value::as_object) else {
        out.push(Finding::error("spec is missing"));
        return out;
    };
    for key in spec.keys().filter(|k| !kind.spec_keys().contains(&k.as_str())) {
        let hint = suggest(key, kind.spec_keys().iter().copied()).map(|s| format!(" (did you mean {s:?}?)"));
        out.push(Finding::error(format!(
            "unknown field spec.{key}{}: kubectl rejects it, and the API server would drop it",
            hint.unwrap_or_default()
        )));
    }
    for (current, legacy) in CASINGS {
        if let (Some(c), Some(l)) = (spec.get(*current), spec.get(*legacy))
            && c != l
        {
            out.push(Finding::warning(format!("spec.{current} and spec.{legacy} differ: spec.{current} wins")));
        }
    }
    out
}

/// Why `name` cannot be an object name (an RFC 1123 subdomain), if it cannot.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.len() > 253 {
        return Some("is longer than 253 characters");
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if !name.chars().all(ok_char) {
        return Some("may hold only lower-case letters, digits, '-' and '.'");
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Some("must start and end with a letter or digit");
    }
    None
}

/// Why `value` cannot be a label value, if it cannot.
pub(crate) fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.len() > 63 {
        return Some("longer than 63 characters");
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if !value.chars().all(ok_char) {
        return Some("only letters, digits, '-', '_' and '.' are allowed");
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !value.is_empty() && (!alnum(value.chars().next()) || !alnum(value.chars().last())) {
        return Some("it must start and end with a letter or digit");
    }
    None
}
