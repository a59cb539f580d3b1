//! The autorest (go-autorest `azure.Environment`) JSON document that the original MIC reads for
//! `cloud: AzureStackCloud` through `AZURE_ENVIRONMENT_FILEPATH`, pointed at the simulator.
//! Pure: builds JSON, writes nothing.

use serde_json::{Value, json};

/// The environment document for an ARM base URL and an Azure AD authority host.
/// `activeDirectoryEndpoint` and `resourceManagerEndpoint` end with `/` as autorest expects;
/// `tokenAudience` is the public-cloud ARM audience, which the simulator's ARM accepts.
pub fn azure_stack_environment(arm_url: &str, aad_url: &str) -> Value {
    let arm = format!("{}/", arm_url.trim_end_matches('/'));
    let aad = format!("{}/", aad_url.trim_end_matches('/'));
    json!({
        "name": "AzureStackCloud",
        "managementPortalURL": arm,
        "publishSettingsURL": arm,
        "serviceManagementEndpoint": "https://management.core.windows.net/",
        "resourceManagerEndpoint": arm,
        "activeDirectoryEndpoint": aad,
        "galleryEndpoint": arm,
        "keyVaultEndpoint": "https://vault.azure.net/",
        "managedHSMEndpoint": "https://managedhsm.azure.net/",
        "graphEndpoint": "https://graph.windows.net/",
        "serviceBusEndpoint": "https://servicebus.windows.net/",
        "batchManagementEndpoint": "https://batch.core.windows.net/",
        "microsoftGraphEndpoint": "https://graph.microsoft.com/",
        "storageEndpointSuffix": "core.windows.net",
        "cosmosDBDNSSuffix": "documents.azure.com",
        "mariaDBDNSSuffix": "mariadb.database.azure.com",
        "mySqlDatabaseDNSSuffix": "mysql.database.azure.com",
        "postgresqlDatabaseDNSSuffix": "postgres.database.azure.com",
        "sqlDatabaseDNSSuffix": "database.windows.net",
        "trafficManagerDNSSuffix": "trafficmanager.net",
        "keyVaultDNSSuffix": "vault.azure.net",
        "managedHSMDNSSuffix": "managedhsm.azure.net",
        "serviceBusEndpointSuffix": "servicebus.windows.net",
        "serviceManagementVMDNSSuffix": "cloudapp.net",
        "resourceManagerVMDNSSuffix": "cloudapp.azure.com",
        "containerRegistryDNSSuffix": "azurecr.io",
        "tokenAudience": "https://management.azure.com/",
        "apiManagementHostNameSuffix": "azure-api.net",
        "synapseEndpointSuffix": "dev.azuresynapse.net",
        "datalakeSuffix": "azuredatalakestore.net",
        "resourceIdentifiers": {
            "graph": "https://graph.windows.net/",
            "keyVault": "https://vault.azure.net",
            "datalake": "https://datalake.azure.net/",
            "batch": "https://batch.core.windows.net/",
            "operationalInsights": "https://api.loganalytics.io",
            "ossRDBMS": "https://ossrdbms-aad.database.windows.net",
            "storage": "https://storage.azure.com/",
            "synapse": "https://dev.azuresynapse.net",
            "serviceBus": "https://servicebus.azure.net/",
            "sqlDatabase": "https://database.windows.net/",
            "cosmosDB": "https://cosmos.azure.com",
            "managedHSM": "https://managedhsm.azure.net",
            "microsoftGraph": "https://graph.microsoft.com/"
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_end_with_a_slash() {
        let v = super::azure_stack_environment("https://127.0.0.1:1", "https://127.0.0.1:2/");
        assert_eq!(v["resourceManagerEndpoint"], "https://127.0.0.1:1/");
        assert_eq!(v["activeDirectoryEndpoint"], "https://127.0.0.1:2/");
        assert_eq!(v["name"], "AzureStackCloud");
    }
}
