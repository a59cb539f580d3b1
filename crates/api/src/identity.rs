//! AzureIdentity: an Azure identity that pods may assume.

use k8s_openapi::api::core::v1::SecretReference;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::legacy::prefer;
use crate::lenient::int_or_absent;

/// Object metadata embedded in spec and status by the original's Go types; the schema prunes
/// its content, so only an empty object survives a round trip. Kept so such objects decode.
pub type EmbeddedMeta = serde_json::Map<String, serde_json::Value>;

/// An identity on Azure: `type` 0 is a user-assigned managed identity, 1 a service principal
/// with a client secret, 2 a service principal with a PKCS#12 certificate.
///
/// Every field is optional because the CRD schema requires none; [`crate::view`] checks them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentity",
    plural = "azureidentities",
    namespaced,
    status = "AzureIdentityStatus",
    schema = "disabled",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"ClientID","type":"string","jsonPath":".spec.clientID"}"#,
    printcolumn = r#"{"name":"ClientID (pre-1.6)","type":"string","jsonPath":".spec.ClientID","description":"The pre-1.6 spelling, read when clientID is absent."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC."}"#
)]
#[serde(from = "AzureIdentitySpecWire")]
pub struct AzureIdentitySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EmbeddedMeta>,
    /// Raw identity type; `None` means 0, as the original omits 0 when it writes.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<i64>,
    /// ARM ID of the user-assigned identity (type 0).
    #[serde(rename = "resourceID", skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Client (application) ID, for every type.
    #[serde(rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Secret holding the service principal's credential (types 1 and 2).
    #[serde(rename = "clientPassword", skip_serializing_if = "Option::is_none")]
    pub client_password: Option<SecretReference>,
    /// Primary tenant of the service principal (types 1 and 2).
    #[serde(rename = "tenantID", skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Further tenants to fetch tokens from (type 1).
    #[serde(rename = "auxiliaryTenantIDs", skip_serializing_if = "Option::is_none")]
    pub auxiliary_tenant_ids: Option<Vec<String>>,
    /// Declared by the original and never read by it; kept for round trips.
    #[serde(rename = "adResourceID", skip_serializing_if = "Option::is_none")]
    pub ad_resource_id: Option<String>,
    /// Azure AD authority for types 1 and 2; empty means `https://login.microsoftonline.com/`.
    #[serde(rename = "adEndpoint", skip_serializing_if = "Option::is_none")]
    pub ad_endpoint: Option<String>,
    /// Declared by the original and never read by it; kept for round trips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// Never written by the original; kept so objects that carry it round-trip.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AzureIdentityStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EmbeddedMeta>,
    #[serde(
        rename = "availableReplicas",
        default,
        deserialize_with = "int_or_absent",
        skip_serializing_if = "Option::is_none"
    )]
    pub available_replicas: Option<i32>,
}

/// Both casings as they may arrive; merged into [`AzureIdentitySpec`].
#[derive(Deserialize)]
struct AzureIdentitySpecWire {
    #[serde(default)]
    metadata: Option<EmbeddedMeta>,
    #[serde(rename = "type", default)]
    type_: Option<i64>,
    #[serde(rename = "resourceID", default)]
    resource_id: Option<String>,
    #[serde(rename = "ResourceID", default)]
    legacy_resource_id: Option<String>,
    #[serde(rename = "clientID", default)]
    client_id: Option<String>,
    #[serde(rename = "ClientID", default)]
    legacy_client_id: Option<String>,
    #[serde(rename = "clientPassword", default)]
    client_password: Option<SecretReference>,
    #[serde(rename = "ClientPassword", default)]
    legacy_client_password: Option<SecretReference>,
    #[serde(rename = "tenantID", default)]
    tenant_id: Option<String>,
    #[serde(rename = "TenantID", default)]
    legacy_tenant_id: Option<String>,
    #[serde(rename = "auxiliaryTenantIDs", default)]
    auxiliary_tenant_ids: Option<Vec<String>>,
    #[serde(rename = "adResourceID", default)]
    ad_resource_id: Option<String>,
    #[serde(rename = "adEndpoint", default)]
    ad_endpoint: Option<String>,
    #[serde(default, deserialize_with = "int_or_absent")]
    replicas: Option<i32>,
}

impl From<AzureIdentitySpecWire> for AzureIdentitySpec {
    fn from(w: AzureIdentitySpecWire) -> Self {
        Self {
            metadata: w.metadata,
            type_: w.type_,
            resource_id: prefer(w.resource_id, w.legacy_resource_id),
            client_id: prefer(w.client_id, w.legacy_client_id),
            client_password: prefer(w.client_password, w.legacy_client_password),
            tenant_id: prefer(w.tenant_id, w.legacy_tenant_id),
            auxiliary_tenant_ids: w.auxiliary_tenant_ids,
            ad_resource_id: w.ad_resource_id,
            ad_endpoint: w.ad_endpoint,
            replicas: w.replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_legacy_capitalised_names() {
        let spec: AzureIdentitySpec = serde_json::from_value(json!({
            "type": 0,
            "ResourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id",
            "ClientID": "00000000-0000-0000-0000-000000000001",
            "TenantID": "t",
            "ClientPassword": {"name": "sp", "namespace": "default"},
        }))
        .unwrap();
        assert_eq!(spec.client_id.as_deref(), Some("00000000-0000-0000-0000-000000000001"));
        assert_eq!(spec.tenant_id.as_deref(), Some("t"));
        assert_eq!(spec.client_password.unwrap().name.as_deref(), Some("sp"));
        assert!(spec.resource_id.unwrap().ends_with("/id"));
    }

    #[test]
    fn writes_only_lower_camel() {
        let spec: AzureIdentitySpec =
            serde_json::from_value(json!({"type": 1, "ClientID": "c", "clientID": "winner"})).unwrap();
        let out = serde_json::to_value(&spec).unwrap();
        assert_eq!(out, json!({"type": 1, "clientID": "winner"}));
    }

    #[test]
    fn a_bad_type_still_decodes_so_one_object_cannot_break_a_watch() {
        let spec: AzureIdentitySpec = serde_json::from_value(json!({"type": 7})).unwrap();
        assert_eq!(spec.type_, Some(7));
    }
}
