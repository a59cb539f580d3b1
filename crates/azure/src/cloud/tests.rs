use std::collections::HashMap;
use std::io::Write as _;

use super::*;

const AZURE_JSON: &str = r#"{
    "cloud": "AzurePublicCloud",
    "tenantId": "tenant-1",
    "aadClientId": "11111111-2222-3333-4444-555555555555",
    "aadClientSecret": "s3cret",
    "subscriptionId": "sub-1",
    "resourceGroup": "MC_rg",
    "securityGroupName": "nsg",
    "vmType": "vmss",
    "useManagedIdentityExtension": false,
    "userAssignedIdentityID": "",
    "location": "westeurope",
    "cloudProviderBackoff": true
}"#;

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn azure_json_is_read_as_yaml_with_unknown_keys_ignored() {
    let file = write_temp(AZURE_JSON);
    let config = CloudConfig::from_file(file.path()).unwrap();
    assert_eq!(config.cloud, "AzurePublicCloud");
    assert_eq!(config.tenant_id, "tenant-1");
    assert_eq!(config.client_id, "11111111-2222-3333-4444-555555555555");
    assert_eq!(config.client_secret, "s3cret");
    assert_eq!(config.subscription_id, "sub-1");
    assert_eq!(config.resource_group, "MC_rg");
    assert_eq!(config.security_group_name, "nsg");
    assert_eq!(config.vm_type, "vmss");
    assert!(!config.use_managed_identity_extension);
}

#[test]
fn azure_json_also_parses_as_plain_yaml_with_msi() {
    let config = CloudConfig::from_yaml(
        "cloud: AzureStackCloud\nuseManagedIdentityExtension: true\nuserAssignedIdentityID: cid-1\nresourceGroup: rg\n",
    )
    .unwrap();
    assert!(config.use_managed_identity_extension);
    assert_eq!(config.user_assigned_identity_id, "cid-1");
    assert_eq!(config.resource_group, "rg");
    assert_eq!(config.tenant_id, "");
}

#[test]
fn azure_json_keys_are_case_sensitive() {
    let config = CloudConfig::from_yaml(r#"{"TenantId": "x", "resourcegroup": "y"}"#).unwrap();
    assert_eq!(config, CloudConfig::default());
}

#[test]
fn empty_azure_json_is_an_empty_config_and_broken_json_is_an_error() {
    assert_eq!(CloudConfig::from_yaml("  \n").unwrap(), CloudConfig::default());
    let file = write_temp(r#"{"cloud": "#);
    let err = CloudConfig::from_file(file.path()).unwrap_err();
    assert!(matches!(err, CloudError::ParseConfig { .. }), "{err}");
    let missing = CloudConfig::from_file("/nonexistent/azure.json").unwrap_err();
    assert!(matches!(missing, CloudError::ReadConfig { .. }), "{missing}");
}

#[test]
fn cloud_config_debug_redacts_the_secret_and_client_ids() {
    let config = CloudConfig::from_yaml(AZURE_JSON).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains("11111111-2222-3333-4444-555555555555"), "{shown}");
    assert!(shown.contains("1111##### REDACTED #####5555"), "{shown}");
}

#[test]
fn environment_variables_fill_the_config_when_there_is_no_file() {
    let env: HashMap<String, String> = [
        ("CLOUD", "AzureUSGovernment"),
        ("TENANT_ID", "t"),
        ("CLIENT_ID", "c"),
        ("CLIENT_SECRET", "s"),
        ("SUBSCRIPTION_ID", "sub"),
        ("RESOURCE_GROUP", "rg"),
        ("VM_TYPE", "standard"),
        ("USE_MSI", "TRUE"),
        ("USER_ASSIGNED_MSI_CLIENT_ID", "uami"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = CloudConfig::from_env_map(&env);
    assert_eq!(
        (config.cloud.as_str(), config.tenant_id.as_str(), config.client_id.as_str(), config.client_secret.as_str()),
        ("AzureUSGovernment", "t", "c", "s")
    );
    assert_eq!((config.subscription_id.as_str(), config.resource_group.as_str()), ("sub", "rg"));
    assert_eq!(config.vm_type, "standard");
    assert!(config.use_managed_identity_extension);
    assert_eq!(config.user_assigned_identity_id, "uami");
}

#[test]
fn use_msi_is_true_only_for_true_ignoring_case() {
    for (value, expected) in [("true", true), ("True", true), ("1", false), ("yes", false), ("", false)] {
        let env = HashMap::from([("USE_MSI".to_owned(), value.to_owned())]);
        assert_eq!(CloudConfig::from_env_map(&env).use_managed_identity_extension, expected, "{value:?}");
    }
    assert!(!CloudConfig::from_env_map(&HashMap::new()).use_managed_identity_extension);
}

#[test]
fn known_cloud_names_resolve_case_insensitively_with_aliases() {
    let no_env = |_: &str| None;
    let public = AzureEnvironment::from_name("azurepubliccloud", no_env).unwrap();
    assert_eq!(public.name, "AzurePublicCloud");
    assert_eq!(public.resource_manager_endpoint, "https://management.azure.com/");
    assert_eq!(public.active_directory_endpoint, "https://login.microsoftonline.com/");
    assert_eq!(public.service_management_endpoint, "https://management.core.windows.net/");
    assert_eq!(public.token_audience, "https://management.azure.com/");
    assert_eq!(public.management_resource(), "https://management.azure.com/");
    assert_eq!(AzureEnvironment::from_name("AzureCloud", no_env).unwrap(), public);
    let gov = AzureEnvironment::from_name("AZUREUSGOVERNMENT", no_env).unwrap();
    assert_eq!(gov.resource_manager_endpoint, "https://management.usgovcloudapi.net/");
    assert_eq!(gov.active_directory_endpoint, "https://login.microsoftonline.us/");
    assert_eq!(AzureEnvironment::from_name("AzureUSGovernmentCloud", no_env).unwrap(), gov);
    let china = AzureEnvironment::from_name("AzureChinaCloud", no_env).unwrap();
    assert_eq!(china.resource_manager_endpoint, "https://management.chinacloudapi.cn/");
    let german = AzureEnvironment::from_name("AzureGermanCloud", no_env).unwrap();
    assert_eq!(german.active_directory_endpoint, "https://login.microsoftonline.de/");
    assert_eq!(german.publish_settings_url, "https://manage.microsoftazure.de/publishsettings/index");
}

#[test]
fn empty_or_unknown_cloud_names_are_errors() {
    for name in ["", "AzureMoonCloud", "public"] {
        let err = AzureEnvironment::from_name(name, |_| None).unwrap_err();
        assert!(matches!(err, CloudError::UnknownCloud(_)), "{name}: {err}");
    }
}

#[test]
fn azure_stack_reads_the_environment_file_with_autorest_field_names() {
    let file = write_temp(
        r#"{
        "name": "AzureStackCloud",
        "managementPortalURL": "https://portal.local/",
        "resourceManagerEndpoint": "https://127.0.0.1:4443/",
        "activeDirectoryEndpoint": "https://127.0.0.1:4444/",
        "serviceManagementEndpoint": "https://127.0.0.1:4443/",
        "tokenAudience": "https://management.local/",
        "keyVaultDNSSuffix": "vault.local",
        "resourceIdentifiers": {"keyVault": "https://vault.local", "graph": "https://graph.local/"},
        "extraField": 1
    }"#,
    );
    let path = file.path().to_string_lossy().into_owned();
    let env =
        AzureEnvironment::from_name("azurestackcloud", |key| (key == ENVIRONMENT_FILEPATH_VAR).then(|| path.clone()))
            .unwrap();
    assert_eq!(env.name, "AzureStackCloud");
    assert_eq!(env.management_portal_url, "https://portal.local/");
    assert_eq!(env.resource_manager_endpoint, "https://127.0.0.1:4443/");
    assert_eq!(env.active_directory_endpoint, "https://127.0.0.1:4444/");
    assert_eq!(env.token_audience, "https://management.local/");
    assert_eq!(env.key_vault_dns_suffix, "vault.local");
    assert_eq!(env.resource_identifiers.key_vault, "https://vault.local");
    assert_eq!(env.management_resource(), "https://127.0.0.1:4443/");
}

#[test]
fn azure_stack_without_or_with_a_bad_file_is_an_error() {
    assert!(matches!(AzureEnvironment::from_name("AzureStackCloud", |_| None), Err(CloudError::NoStackFile)));
    let missing = AzureEnvironment::from_name("AzureStackCloud", |_| Some("/nonexistent.json".to_owned()));
    assert!(matches!(missing, Err(CloudError::ReadEnvironment { .. })));
    let file = write_temp("not json");
    let bad = AzureEnvironment::from_file(file.path()).unwrap_err();
    assert!(matches!(bad, CloudError::ParseEnvironment { .. }), "{bad}");
}

#[test]
fn environment_json_round_trips_with_autorest_names() {
    let public = AzureEnvironment::from_name("AzurePublicCloud", |_| None).unwrap();
    let json = serde_json::to_value(&public).unwrap();
    for key in [
        "managementPortalURL",
        "resourceManagerEndpoint",
        "activeDirectoryEndpoint",
        "sqlDatabaseDNSSuffix",
        "cosmosDBDNSSuffix",
        "tokenAudience",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    assert_eq!(json["resourceIdentifiers"]["keyVault"], "https://vault.azure.net");
    let back: AzureEnvironment = serde_json::from_value(json).unwrap();
    assert_eq!(back, public);
}

#[test]
fn yaml_1_1_booleans_are_accepted_like_go_yaml_v2() {
    for (text, expected) in
        [("True", true), ("TRUE", true), ("yes", true), ("on", true), ("false", false), ("No", false), ("off", false)]
    {
        let config = CloudConfig::from_yaml(&format!("useManagedIdentityExtension: {text}\n")).unwrap();
        assert_eq!(config.use_managed_identity_extension, expected, "{text}");
    }
}

#[test]
fn numeric_looking_scalars_are_read_as_their_text() {
    let config = CloudConfig::from_yaml("subscriptionId: 00123\nresourceGroup: 42\n").unwrap();
    assert_eq!((config.subscription_id.as_str(), config.resource_group.as_str()), ("00123", "42"));
}

/// azure.json holds the service principal's secret: a parse error names the place, never the text.
#[test]
fn a_parse_error_never_echoes_the_file() {
    let secret = "Sup3r-S3cret-Value";
    for text in [
        format!("{{\"aadClientSecret\": \"{secret}\",\n \"useManagedIdentityExtension\": tru e,\n}}"),
        format!("{{\"aadClientSecret\": \"{secret}\", \"useManagedIdentityExtension\": \"{secret}\"}}"),
        format!("{{\"aadClientSecret\": \"{secret}\"\n\"tenantId\": \"t\"}}"),
        format!("aadClientSecret: {secret}\n  bad: [indent\n"),
        format!("{{\"aadClientSecret\": [\"{secret}\"]}}"),
    ] {
        let file = write_temp(&text);
        let err = CloudConfig::from_file(file.path()).unwrap_err();
        let shown = format!("{err} / {err:?} / {:?}", std::error::Error::source(&err));
        assert!(matches!(err, CloudError::ParseConfig { .. }), "{shown}");
        assert!(!shown.contains("S3cret"), "the error echoes the file: {shown}");
        assert!(shown.contains("line "), "the error says where: {shown}");
    }
}
