//! The cloud config MIC reads (azure.json or its environment-variable fallback) and the
//! autorest cloud environments it names. Pure parsing plus one file read; never logs the
//! client secret (its `Debug` is redacted).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable naming the Azure Stack environment JSON, as autorest reads it.
pub const ENVIRONMENT_FILEPATH_VAR: &str = "AZURE_ENVIRONMENT_FILEPATH";

// === CloudConfig ===

/// azure.json as the original parsed it (YAML, so JSON works; keys are case-sensitive and
/// unknown keys are ignored). Missing keys are empty.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CloudConfig {
    /// autorest environment name, see [`AzureEnvironment::from_name`].
    pub cloud: String,
    #[serde(rename = "tenantId")]
    pub tenant_id: String,
    /// Service principal client ID.
    #[serde(rename = "aadClientId")]
    pub client_id: String,
    /// Service principal secret.
    #[serde(rename = "aadClientSecret")]
    pub client_secret: String,
    #[serde(rename = "subscriptionId")]
    pub subscription_id: String,
    /// The resource group of every VM and VMSS call.
    #[serde(rename = "resourceGroup")]
    pub resource_group: String,
    /// Parsed, unused (as in the original).
    #[serde(rename = "securityGroupName")]
    pub security_group_name: String,
    /// Parsed, unused: VMSS-ness is decided per node from its providerID.
    #[serde(rename = "vmType")]
    pub vm_type: String,
    /// Use the node's managed identity (IMDS) instead of the service principal.
    #[serde(rename = "useManagedIdentityExtension")]
    pub use_managed_identity_extension: bool,
    /// With MSI: the client ID of the user-assigned identity to use; empty means system-assigned.
    #[serde(rename = "userAssignedIdentityID")]
    pub user_assigned_identity_id: String,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = aadpodid_api::view::redact_client_id;
        f.debug_struct("CloudConfig")
            .field("cloud", &self.cloud)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &redact(&self.client_id))
            .field("client_secret", &if self.client_secret.is_empty() { "" } else { "<redacted>" })
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("security_group_name", &self.security_group_name)
            .field("vm_type", &self.vm_type)
            .field("use_managed_identity_extension", &self.use_managed_identity_extension)
            .field("user_assigned_identity_id", &redact(&self.user_assigned_identity_id))
            .finish()
    }
}

impl CloudConfig {
    /// Reads and parses azure.json (`--cloudconfig`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CloudError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| CloudError::ReadConfig { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text).map_err(|reason| CloudError::ParseConfig { path: path.to_path_buf(), reason })
    }

    /// Parses azure.json text (YAML or JSON). An empty document is an all-empty config. The
    /// error says where the text is wrong, never what it says: the parser's own message quotes
    /// the text around the error, and azure.json holds the service principal's secret.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| match e.location() {
            Some(at) => {
                format!("not valid YAML or JSON for a cloud config at line {}, column {}", at.line(), at.column())
            }
            None => "not valid YAML or JSON for a cloud config (no line known)".to_owned(),
        })
    }

    /// The original's fallback when `--cloudconfig` is empty: `CLOUD`, `TENANT_ID`, `CLIENT_ID`,
    /// `CLIENT_SECRET`, `SUBSCRIPTION_ID`, `RESOURCE_GROUP`, `VM_TYPE`, `USE_MSI` (true iff it
    /// equals `true` ignoring case) and `USER_ASSIGNED_MSI_CLIENT_ID`. Pass
    /// `std::env::vars().collect()` in production.
    pub fn from_env_map(env: &HashMap<String, String>) -> Self {
        let get = |key: &str| env.get(key).cloned().unwrap_or_default();
        Self {
            cloud: get("CLOUD"),
            tenant_id: get("TENANT_ID"),
            client_id: get("CLIENT_ID"),
            client_secret: get("CLIENT_SECRET"),
            subscription_id: get("SUBSCRIPTION_ID"),
            resource_group: get("RESOURCE_GROUP"),
            security_group_name: String::new(),
            vm_type: get("VM_TYPE"),
            use_managed_identity_extension: get("USE_MSI").eq_ignore_ascii_case("true"),
            user_assigned_identity_id: get("USER_ASSIGNED_MSI_CLIENT_ID"),
        }
    }
}

// === AzureEnvironment ===

/// Resource IDs of data-plane services in one cloud (autorest's `ResourceIdentifier`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResourceIdentifiers {
    pub graph: String,
    pub key_vault: String,
    pub datalake: String,
    pub batch: String,
    pub operational_insights: String,
    pub storage: String,
}

/// One cloud's endpoints with autorest's field names, so an Azure Stack environment file
/// written for the original (and the simulator's) works unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AzureEnvironment {
    pub name: String,
    #[serde(rename = "managementPortalURL")]
    pub management_portal_url: String,
    #[serde(rename = "publishSettingsURL")]
    pub publish_settings_url: String,
    pub service_management_endpoint: String,
    /// ARM base URL; MIC's VM/VMSS calls and (as in the original) the ARM token resource.
    pub resource_manager_endpoint: String,
    /// Azure AD authority for the service principal token.
    pub active_directory_endpoint: String,
    pub gallery_endpoint: String,
    pub key_vault_endpoint: String,
    pub graph_endpoint: String,
    pub service_bus_endpoint: String,
    pub batch_management_endpoint: String,
    pub storage_endpoint_suffix: String,
    #[serde(rename = "sqlDatabaseDNSSuffix")]
    pub sql_database_dns_suffix: String,
    #[serde(rename = "trafficManagerDNSSuffix")]
    pub traffic_manager_dns_suffix: String,
    #[serde(rename = "keyVaultDNSSuffix")]
    pub key_vault_dns_suffix: String,
    pub service_bus_endpoint_suffix: String,
    #[serde(rename = "serviceManagementVMDNSSuffix")]
    pub service_management_vm_dns_suffix: String,
    #[serde(rename = "resourceManagerVMDNSSuffix")]
    pub resource_manager_vm_dns_suffix: String,
    #[serde(rename = "containerRegistryDNSSuffix")]
    pub container_registry_dns_suffix: String,
    #[serde(rename = "cosmosDBDNSSuffix")]
    pub cosmos_db_dns_suffix: String,
    /// The ARM audience autorest's newer clients use; equal to the ARM endpoint in public clouds.
    pub token_audience: String,
    pub api_management_host_management_suffix: String,
    pub resource_identifiers: ResourceIdentifiers,
}

struct Known {
    name: &'static str,
    portal: &'static str,
    publish_settings: &'static str,
    service_management: &'static str,
    resource_manager: &'static str,
    active_directory: &'static str,
    key_vault: &'static str,
    graph: &'static str,
    storage_suffix: &'static str,
    key_vault_suffix: &'static str,
}

const PUBLIC: Known = Known {
    name: "AzurePublicCloud",
    portal: "https://manage.windowsazure.com/",
    publish_settings: "https://manage.windowsazure.com/publishsettings/index",
    service_management: "https://management.core.windows.net/",
    resource_manager: "https://management.azure.com/",
    active_directory: "https://login.microsoftonline.com/",
    key_vault: "https://vault.azure.net/",
    graph: "https://graph.windows.net/",
    storage_suffix: "core.windows.net",
    key_vault_suffix: "vault.azure.net",
};
const US_GOVERNMENT: Known = Known {
    name: "AzureUSGovernmentCloud",
    portal: "https://manage.windowsazure.us/",
    publish_settings: "https://manage.windowsazure.us/publishsettings/index",
    service_management: "https://management.core.usgovcloudapi.net/",
    resource_manager: "https://management.usgovcloudapi.net/",
    active_directory: "https://login.microsoftonline.us/",
    key_vault: "https://vault.usgovcloudapi.net/",
    graph: "https://graph.windows.net/",
    storage_suffix: "core.usgovcloudapi.net",
    key_vault_suffix: "vault.usgovcloudapi.net",
};
const CHINA: Known = Known {
    name: "AzureChinaCloud",
    portal: "https://manage.chinacloudapi.com/",
    publish_settings: "https://manage.chinacloudapi.com/publishsettings/index",
    service_management: "https://management.core.chinacloudapi.cn/",
    resource_manager: "https://management.chinacloudapi.cn/",
    active_directory: "https://login.chinacloudapi.cn/",
    key_vault: "https://vault.azure.cn/",
    graph: "https://graph.chinacloudapi.cn/",
    storage_suffix: "core.chinacloudapi.cn",
    key_vault_suffix: "vault.azure.cn",
};
const GERMAN: Known = Known {
    name: "AzureGermanCloud",
    portal: "http://portal.microsoftazure.de/",
    publish_settings: "https://manage.microsoftazure.de/publishsettings/index",
    service_management: "https://management.core.cloudapi.de/",
    resource_manager: "https://management.microsoftazure.de/",
    active_directory: "https://login.microsoftonline.de/",
    key_vault: "https://vault.microsoftazure.de/",
    graph: "https://graph.cloudapi.de/",
    storage_suffix: "core.cloudapi.de",
    key_vault_suffix: "vault.microsoftazure.de",
};

impl From<&Known> for AzureEnvironment {
    fn from(k: &Known) -> Self {
        Self {
            name: k.name.to_owned(),
            management_portal_url: k.portal.to_owned(),
            publish_settings_url: k.publish_settings.to_owned(),
            service_management_endpoint: k.service_management.to_owned(),
            resource_manager_endpoint: k.resource_manager.to_owned(),
            active_directory_endpoint: k.active_directory.to_owned(),
            key_vault_endpoint: k.key_vault.to_owned(),
            graph_endpoint: k.graph.to_owned(),
            storage_endpoint_suffix: k.storage_suffix.to_owned(),
            key_vault_dns_suffix: k.key_vault_suffix.to_owned(),
            token_audience: k.resource_manager.to_owned(),
            resource_identifiers: ResourceIdentifiers {
                graph: k.graph.to_owned(),
                key_vault: k.key_vault.trim_end_matches('/').to_owned(),
                storage: "https://storage.azure.com/".to_owned(),
                ..ResourceIdentifiers::default()
            },
            ..Self::default()
        }
    }
}

impl AzureEnvironment {
    /// autorest's `EnvironmentFromName`: `AzurePublicCloud`, `AzureUSGovernmentCloud`,
    /// `AzureChinaCloud`, `AzureGermanCloud` (case-insensitive; `AzureCloud` and
    /// `AzureUSGovernment` are accepted aliases), or `AzureStackCloud`, which reads the JSON
    /// file named by [`ENVIRONMENT_FILEPATH_VAR`] as looked up by `lookup`. Anything else,
    /// including an empty name, is an error.
    pub fn from_name(name: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CloudError> {
        let known = match name.trim().to_ascii_uppercase().as_str() {
            "AZURESTACKCLOUD" => {
                let path = lookup(ENVIRONMENT_FILEPATH_VAR).filter(|p| !p.is_empty()).ok_or(CloudError::NoStackFile)?;
                return Self::from_file(path);
            }
            "AZUREPUBLICCLOUD" | "AZURECLOUD" => &PUBLIC,
            "AZUREUSGOVERNMENTCLOUD" | "AZUREUSGOVERNMENT" => &US_GOVERNMENT,
            "AZURECHINACLOUD" => &CHINA,
            "AZUREGERMANCLOUD" => &GERMAN,
            _ => return Err(CloudError::UnknownCloud(name.to_owned())),
        };
        Ok(known.into())
    }

    /// [`AzureEnvironment::from_name`] with the process environment as lookup.
    pub fn from_name_with_process_env(name: &str) -> Result<Self, CloudError> {
        Self::from_name(name, |key| std::env::var(key).ok())
    }

    /// autorest's `EnvironmentFromFile`: an environment JSON with autorest's field names.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CloudError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| CloudError::ReadEnvironment { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|e| CloudError::ParseEnvironment {
            path: path.to_path_buf(),
            reason: format!("{:?} error at line {}, column {}", e.classify(), e.line(), e.column()),
        })
    }

    /// The resource (audience) of ARM bearer tokens. The original asked for the ARM endpoint
    /// itself (`https://management.azure.com/`); so do we.
    pub fn management_resource(&self) -> &str {
        &self.resource_manager_endpoint
    }
}

// === CloudError ===

/// Why the cloud config or environment could not be loaded (fatal at start-up).
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("failed to read cloud config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse cloud config {path}: {reason}")]
    ParseConfig { path: PathBuf, reason: String },
    #[error(
        "there is no cloud environment matching the name {0:?} (expected AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, AzureGermanCloud or AzureStackCloud)"
    )]
    UnknownCloud(String),
    #[error("cloud AzureStackCloud needs {ENVIRONMENT_FILEPATH_VAR} to name an environment JSON file")]
    NoStackFile,
    #[error("failed to read Azure environment file {path}")]
    ReadEnvironment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse Azure environment file {path}: {reason}")]
    ParseEnvironment { path: PathBuf, reason: String },
}

#[cfg(test)]
mod tests;
