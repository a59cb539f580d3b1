//! User-assigned identity resources (`Microsoft.ManagedIdentity/userAssignedIdentities`), as
//! `az identity create` and ARM show them. Each one is also an Azure AD client, so creating or deleting
//! one touches the directory too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::State;
use super::directory::AppClient;

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

impl State {
    fn identity_id(&self, rg: &str, name: &str) -> String {
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
}
