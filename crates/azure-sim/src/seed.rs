//! The seed document: VMs, VMSS, user-assigned identities, app registrations and federated credentials
//! to create at start (`azure-sim serve --seed FILE`, YAML or JSON) or later (`POST /admin/seed`).
//!
//! ```yaml
//! vms:
//!   - { resourceGroup: node-rg, name: node-1, userAssignedIdentities: [mic-identity] }
//! vmss:
//!   - { resourceGroup: node-rg, name: pool-1, instances: 2, systemAssigned: true }
//! identities:
//!   - { resourceGroup: id-rg, name: keyvault-reader, clientId: 11111111-1111-1111-1111-111111111111 }
//! servicePrincipals:
//!   - { clientId: 22222222-2222-2222-2222-222222222222, secret: s3cret }
//! federatedCredentials:
//!   - { clientId: 1111..., issuer: "https://kubernetes.default.svc", subject: "system:serviceaccount:ns:sa", jwks: "https://..." }
//! ```

use std::time::Instant;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sim::{SimError, Simulator};
use crate::state::{ComputeKind, IdentityInfo, WriteRequest};

/// A seed document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Standalone VMs.
    #[serde(default)]
    pub vms: Vec<SeedCompute>,
    /// Scale sets.
    #[serde(default)]
    pub vmss: Vec<SeedCompute>,
    /// User-assigned identities (created before any VM/VMSS attaches them).
    #[serde(default)]
    pub identities: Vec<SeedIdentity>,
    /// App registrations with secrets and/or certificates.
    #[serde(default)]
    pub service_principals: Vec<SeedServicePrincipal>,
    /// Federated identity credentials.
    #[serde(default)]
    pub federated_credentials: Vec<SeedFederated>,
}

/// A VM or VMSS to create, with identities attached from the start.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedCompute {
    /// Resource group.
    pub resource_group: String,
    /// Name.
    pub name: String,
    /// VMSS capacity (instances `0..n`); ignored for VMs.
    #[serde(default = "one")]
    pub instances: u32,
    /// Enable the system-assigned identity.
    #[serde(default)]
    pub system_assigned: bool,
    /// User-assigned identities to attach: names of seeded identities or full resource IDs.
    #[serde(default)]
    pub user_assigned_identities: Vec<String>,
}

fn one() -> u32 {
    1
}

/// A user-assigned identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedIdentity {
    /// Resource group.
    pub resource_group: String,
    /// Name.
    pub name: String,
    /// Fixed client ID (random if absent).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Fixed principal ID (random if absent).
    #[serde(default)]
    pub principal_id: Option<String>,
}

/// An app registration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedServicePrincipal {
    /// Client (application) ID.
    pub client_id: String,
    /// A client secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM certificate (RSA key) whose assertions are accepted.
    #[serde(default)]
    pub certificate_pem: Option<String>,
}

/// A federated identity credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedFederated {
    /// Client ID of the app or user-assigned identity.
    pub client_id: String,
    /// Expected `iss` of assertions.
    pub issuer: String,
    /// Expected `sub` of assertions.
    pub subject: String,
    /// JWKS document (JSON text) or URL.
    pub jwks: String,
}

impl Seed {
    /// Parses YAML (JSON is YAML too).
    pub fn parse(text: &str) -> Result<Self, SimError> {
        serde_saphyr::from_str(text).map_err(|e| SimError::Invalid(format!("seed: {e}")))
    }
}

/// The DER bytes of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, SimError> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = pem.find(begin).ok_or_else(|| SimError::Invalid("no PEM certificate".into()))? + begin.len();
    let stop = pem[start..].find(end).ok_or_else(|| SimError::Invalid("unterminated PEM certificate".into()))? + start;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| SimError::Invalid(format!("PEM base64: {e}")))
}

/// Applies a seed document to the simulator.
pub fn apply(sim: &Simulator, seed: &Seed) -> Result<Vec<IdentityInfo>, SimError> {
    let mut created = Vec::new();
    for i in &seed.identities {
        let info = match (&i.client_id, &i.principal_id) {
            (None, None) => sim.create_user_assigned_identity(&i.resource_group, &i.name),
            (c, p) => {
                let c = c.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let p = p.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                sim.create_user_assigned_identity_with_ids(&i.resource_group, &i.name, &c, &p)
            }
        };
        created.push(info);
    }
    for sp in &seed.service_principals {
        if let Some(s) = &sp.secret {
            sim.register_service_principal_secret(&sp.client_id, s);
        }
        if let Some(pem) = &sp.certificate_pem {
            sim.register_service_principal_certificate(&sp.client_id, &pem_to_der(pem)?)?;
        }
        if sp.secret.is_none() && sp.certificate_pem.is_none() {
            sim.state().ensure_client(&sp.client_id);
        }
    }
    for f in &seed.federated_credentials {
        sim.register_federated_credential(&f.client_id, &f.issuer, &f.subject, &f.jwks)?;
    }
    for (kind, list) in [(ComputeKind::Vm, &seed.vms), (ComputeKind::Vmss, &seed.vmss)] {
        for c in list {
            seed_compute(sim, kind, c, &created)?;
        }
    }
    Ok(created)
}

fn seed_compute(
    sim: &Simulator,
    kind: ComputeKind,
    c: &SeedCompute,
    identities: &[IdentityInfo],
) -> Result<(), SimError> {
    let instances = if kind == ComputeKind::Vm { 1 } else { c.instances };
    sim.state().ensure_compute(kind, &c.resource_group, &c.name, instances);
    if !c.system_assigned && c.user_assigned_identities.is_empty() {
        return Ok(());
    }
    let mut map = Map::new();
    for id in &c.user_assigned_identities {
        let full =
            if id.starts_with('/') {
                id.clone()
            } else {
                identities.iter().find(|i| i.name.eq_ignore_ascii_case(id)).map(|i| i.id.clone()).ok_or_else(|| {
                    SimError::Invalid(format!("seed: identity {id:?} is not among the seeded identities"))
                })?
            };
        map.insert(full, json!({}));
    }
    let ty = match (c.system_assigned, map.is_empty()) {
        (true, false) => "SystemAssigned, UserAssigned",
        (true, true) => "SystemAssigned",
        _ => "UserAssigned",
    };
    let body = json!({"identity": {"type": ty, "userAssignedIdentities": Value::Object(map)}});
    sim.state()
        .write_compute(
            &WriteRequest {
                kind,
                resource_group: &c.resource_group,
                name: &c.name,
                body: &body,
                put: false,
                fail: None,
            },
            Instant::now(),
            std::time::Duration::ZERO,
        )
        .map_err(|e| SimError::Invalid(format!("seed: {}: {}", e.code, e.message)))?;
    Ok(())
}
