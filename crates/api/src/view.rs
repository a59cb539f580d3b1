//! Checked readings of the stored objects: what MIC and NMI may rely on, or a clear error
//! naming the field. Stored objects stay lenient (see the crate docs); these checks decide.

use std::sync::LazyLock;

use regex::Regex;

use crate::names::{BEHAVIOR_ANNOTATION, BEHAVIOR_NAMESPACED};
use crate::{AzureIdentity, AzureIdentityBinding};

/// What kind of credential an AzureIdentity stands for (`spec.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityType {
    /// 0: a user-assigned managed identity, attached to nodes by MIC; tokens come from IMDS.
    UserAssignedMsi,
    /// 1: a service principal whose client secret is in `clientPassword`; tokens from Azure AD.
    ServicePrincipal,
    /// 2: a service principal with a PKCS#12 certificate (`certificate`, `password` keys).
    ServicePrincipalCertificate,
}

impl IdentityType {
    /// The integer stored in `spec.type`.
    pub fn as_int(self) -> i64 {
        match self {
            Self::UserAssignedMsi => 0,
            Self::ServicePrincipal => 1,
            Self::ServicePrincipalCertificate => 2,
        }
    }

    /// Only user-assigned identities live on VMs and scale sets; the others need no ARM call.
    pub fn needs_node_assignment(self) -> bool {
        self == Self::UserAssignedMsi
    }
}

/// Why an AzureIdentity cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdentity {
    #[error(
        "spec.type: {0} is not a valid identity type (0 user-assigned managed identity, 1 service principal with secret, 2 service principal with certificate)"
    )]
    Type(i64),
    /// The original's text, kept verbatim: users and their alerts search logs for it.
    #[error(
        "invalid resource id: {0:?}, must match /subscriptions/<subid>/resourcegroups/<resourcegroup>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
    )]
    ResourceId(String),
}

/// Why an AzureIdentityBinding matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBinding {
    #[error(
        "spec.selector is empty: the binding matches no pod (set it to the value of the pods' aadpodidbinding label)"
    )]
    MissingSelector,
    #[error("spec.azureIdentity is empty: the binding names no AzureIdentity")]
    MissingIdentity,
}

static RESOURCE_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)/subscriptions/(.+?)/resourcegroups/(.+?)/providers/Microsoft.ManagedIdentity/userAssignedIdentities/(.+)")
        .expect("constant pattern compiles")
});

/// The original's type-0 check: its pattern, case-insensitive and unanchored, and its text.
pub fn validate_resource_id(resource_id: &str) -> Result<(), InvalidIdentity> {
    if RESOURCE_ID.is_match(resource_id) { Ok(()) } else { Err(InvalidIdentity::ResourceId(resource_id.to_owned())) }
}

/// Reads `spec.type`; absent means 0, as the original omits 0 when it writes.
pub fn identity_type(identity: &AzureIdentity) -> Result<IdentityType, InvalidIdentity> {
    match identity.spec.type_.unwrap_or(0) {
        0 => Ok(IdentityType::UserAssignedMsi),
        1 => Ok(IdentityType::ServicePrincipal),
        2 => Ok(IdentityType::ServicePrincipalCertificate),
        other => Err(InvalidIdentity::Type(other)),
    }
}

/// The checks MIC applies before it acts on an identity: a known type and, for type 0, a
/// resource ID that is an ARM ID of a user-assigned identity.
pub fn validate_identity(identity: &AzureIdentity) -> Result<IdentityType, InvalidIdentity> {
    let kind = identity_type(identity)?;
    if kind == IdentityType::UserAssignedMsi {
        validate_resource_id(identity.spec.resource_id.as_deref().unwrap_or_default())?;
    }
    Ok(kind)
}

/// Selector and identity name of a binding, both required for it to match anything.
pub fn validate_binding(binding: &AzureIdentityBinding) -> Result<(&str, &str), InvalidBinding> {
    let selector = binding.spec.selector.as_deref().filter(|s| !s.is_empty()).ok_or(InvalidBinding::MissingSelector)?;
    let identity =
        binding.spec.azure_identity.as_deref().filter(|s| !s.is_empty()).ok_or(InvalidBinding::MissingIdentity)?;
    Ok((selector, identity))
}

/// True when the identity carries `aadpodidentity.k8s.io/Behavior: namespaced`.
pub fn is_namespaced(identity: &AzureIdentity) -> bool {
    identity.metadata.annotations.as_ref().and_then(|a| a.get(BEHAVIOR_ANNOTATION)).map(String::as_str)
        == Some(BEHAVIOR_NAMESPACED)
}

/// The original's `RedactClientID`: first 4 and last 4 characters around a marker, so logs can
/// tell identities apart without carrying a full client ID.
pub fn redact_client_id(client_id: &str) -> String {
    let chars: Vec<char> = client_id.chars().collect();
    if chars.len() < 8 || chars[..4].iter().chain(&chars[chars.len() - 4..]).any(|c| c.is_whitespace()) {
        return client_id.to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}##### REDACTED #####{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AzureIdentityBindingSpec, AzureIdentitySpec};
    use rstest::rstest;

    const GOOD: &str =
        "/subscriptions/sub/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/myidentity";

    fn identity(type_: Option<i64>, resource_id: Option<&str>) -> AzureIdentity {
        AzureIdentity::new(
            "id",
            AzureIdentitySpec { type_, resource_id: resource_id.map(str::to_owned), ..Default::default() },
        )
    }

    #[rstest]
    #[case::canonical(GOOD, true)]
    #[case::any_case(
        "/SUBSCRIPTIONS/s/resourceGroups/rg/providers/microsoft.managedidentity/userassignedidentities/x",
        true
    )]
    #[case::unanchored(
        "prefix/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x",
        true
    )]
    #[case::empty("", false)]
    #[case::a_vm_not_an_identity(
        "/subscriptions/s/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
        false
    )]
    #[case::no_name(
        "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/",
        false
    )]
    fn resource_id_pattern_is_the_originals(#[case] id: &str, #[case] valid: bool) {
        assert_eq!(validate_resource_id(id).is_ok(), valid, "{id}");
    }

    #[test]
    fn resource_id_error_text_is_the_originals() {
        assert_eq!(
            validate_resource_id("").unwrap_err().to_string(),
            r#"invalid resource id: "", must match /subscriptions/<subid>/resourcegroups/<resourcegroup>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"#
        );
    }

    #[test]
    fn unknown_type_is_an_error_naming_the_field() {
        let err = validate_identity(&identity(Some(7), None)).unwrap_err();
        assert_eq!(err, InvalidIdentity::Type(7));
        assert!(err.to_string().starts_with("spec.type: 7 is not a valid identity type"));
    }

    #[test]
    fn absent_type_means_user_assigned_and_needs_a_resource_id() {
        assert_eq!(validate_identity(&identity(None, Some(GOOD))), Ok(IdentityType::UserAssignedMsi));
        assert!(matches!(validate_identity(&identity(None, None)), Err(InvalidIdentity::ResourceId(_))));
    }

    #[test]
    fn service_principals_need_no_resource_id() {
        assert_eq!(validate_identity(&identity(Some(1), None)), Ok(IdentityType::ServicePrincipal));
        assert_eq!(validate_identity(&identity(Some(2), None)), Ok(IdentityType::ServicePrincipalCertificate));
        assert!(!IdentityType::ServicePrincipal.needs_node_assignment());
    }

    #[test]
    fn binding_without_selector_is_rejected() {
        let b = AzureIdentityBinding::new(
            "b",
            AzureIdentityBindingSpec { azure_identity: Some("id".into()), ..Default::default() },
        );
        assert_eq!(validate_binding(&b), Err(InvalidBinding::MissingSelector));
    }

    #[test]
    fn namespaced_annotation_is_read() {
        let mut id = identity(None, Some(GOOD));
        assert!(!is_namespaced(&id));
        id.metadata.annotations = Some([(BEHAVIOR_ANNOTATION.to_owned(), "namespaced".to_owned())].into());
        assert!(is_namespaced(&id));
    }

    #[test]
    fn client_ids_are_redacted_like_the_original() {
        assert_eq!(redact_client_id("aaaa-bbbb-cccc-dddd"), "aaaa##### REDACTED #####dddd");
        assert_eq!(redact_client_id("short"), "short");
    }
}
