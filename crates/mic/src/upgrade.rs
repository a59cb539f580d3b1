//! The original's one-time "type upgrade", run when MIC becomes leader: rewrite every
//! AzureIdentity, AzureIdentityBinding and AzurePodIdentityException in lower camel case
//! (our types read both casings and write only lower camel), point every
//! AzureAssignedIdentity's embedded copies at the rewritten objects, and record the upgrade
//! in the ConfigMap so it never runs again. A failure is fatal, as in the original; an object
//! our types cannot read is left as it is (with a warning), not a failure.

use std::collections::BTreeMap;

use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use aadpodid_runtime::decoded;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the upgrade marker lives.
#[derive(Clone, Debug)]
pub struct UpgradeConfig {
    /// `$MIC_POD_NAMESPACE`.
    pub namespace: String,
    /// `--config-map-name`.
    pub config_map: String,
    /// `--type-upgrade-status-key`.
    pub key: String,
    /// Written as the key's value.
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("reading config map {0}")]
    ConfigMap(#[source] kube::Error),
    #[error("rewriting {kind} objects")]
    Rewrite {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("recording the upgrade in config map {0}")]
    Record(String, #[source] kube::Error),
}

type Rewritten<K> = BTreeMap<(String, String), K>;

/// The type upgrade as MIC runs it on becoming leader: `--enable-type-upgrade` decides whether
/// it runs at all.
#[derive(Clone)]
pub struct TypeUpgrade {
    pub client: Client,
    pub cfg: UpgradeConfig,
    pub enabled: bool,
}

impl TypeUpgrade {
    /// Upgrades once (recorded in the ConfigMap) when enabled.
    pub async fn run(&self) -> Result<(), UpgradeError> {
        if !self.enabled {
            return Ok(());
        }
        upgrade_if_required(&self.client, &self.cfg).await
    }
}

/// Runs the upgrade unless the ConfigMap already records it.
pub async fn upgrade_if_required(client: &Client, cfg: &UpgradeConfig) -> Result<(), UpgradeError> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.namespace);
    let cm = cms.get_opt(&cfg.config_map).await.map_err(UpgradeError::ConfigMap)?;
    if cm.as_ref().and_then(|c| c.data.as_ref()).is_some_and(|d| d.contains_key(&cfg.key)) {
        return Ok(());
    }
    tracing::info!(config_map = %cfg.config_map, "Upgrading AAD Pod Identity objects to the current field casing");
    let ids: Rewritten<AzureIdentity> = rewrite_all(client, "AzureIdentity").await?;
    let bindings: Rewritten<AzureIdentityBinding> = rewrite_all(client, "AzureIdentityBinding").await?;
    let _: Rewritten<AzurePodIdentityException> = rewrite_all(client, "AzurePodIdentityException").await?;
    repoint_assigned(client, &ids, &bindings).await?;
    record(&cms, cm.is_some(), cfg).await?;
    tracing::info!(identities = ids.len(), bindings = bindings.len(), "Type upgrade done");
    Ok(())
}

async fn rewrite_all<K>(client: &Client, kind: &'static str) -> Result<Rewritten<K>, UpgradeError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let err = |source| UpgradeError::Rewrite { kind, source };
    let mut out = BTreeMap::new();
    for obj in decoded::list_all::<K>(client.clone()).await.map_err(err)? {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        let mut obj = obj;
        obj.meta_mut().managed_fields = None;
        let new = api.replace(&name, &PostParams::default(), &obj).await.map_err(err)?;
        out.insert((ns, name), new);
    }
    Ok(out)
}

async fn repoint_assigned(
    client: &Client,
    ids: &Rewritten<AzureIdentity>,
    bindings: &Rewritten<AzureIdentityBinding>,
) -> Result<(), UpgradeError> {
    let err = |source| UpgradeError::Rewrite { kind: "AzureAssignedIdentity", source };
    for mut a in decoded::list_all::<AzureAssignedIdentity>(client.clone()).await.map_err(err)? {
        let key = |m: &ObjectMeta| (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default());
        let id = a.spec.azure_identity_ref.as_ref().and_then(|r| ids.get(&key(&r.metadata))).cloned();
        let binding = a.spec.azure_binding_ref.as_ref().and_then(|r| bindings.get(&key(&r.metadata))).cloned();
        if let Some(mut id) = id {
            id.metadata.managed_fields = None;
            a.spec.azure_identity_ref = Some(Box::new(id));
        }
        if let Some(mut b) = binding {
            b.metadata.managed_fields = None;
            a.spec.azure_binding_ref = Some(Box::new(b));
        }
        let api: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), &a.namespace().unwrap_or_default());
        a.metadata.managed_fields = None;
        // Rewritten even when the refs are unchanged, so legacy casing inside them goes too.
        api.replace(&a.name_any(), &PostParams::default(), &a).await.map_err(err)?;
    }
    Ok(())
}

async fn record(cms: &Api<ConfigMap>, exists: bool, cfg: &UpgradeConfig) -> Result<(), UpgradeError> {
    let err = |e| UpgradeError::Record(cfg.config_map.clone(), e);
    if exists {
        let patch = serde_json::json!({"data": {cfg.key.clone(): cfg.version.clone()}});
        cms.patch(&cfg.config_map, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(err)?;
    } else {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cfg.config_map.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            data: Some([(cfg.key.clone(), cfg.version.clone())].into()),
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.map_err(err)?;
    }
    Ok(())
}
