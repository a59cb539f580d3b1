//! The Azure AD side: apps (service principals) and managed identities as clients, with the secrets,
//! certificates and federated credentials their token requests are checked against.

use serde_json::Value;

use super::State;

/// A federated identity credential (workload identity federation) on an app or identity.
#[derive(Debug, Clone)]
pub(crate) struct FederatedCredential {
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) audiences: Vec<String>,
    /// A JWKS document, or the URL to fetch one from.
    pub(crate) jwks: JwksSource,
}

/// Where the keys that sign federated assertions come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document (`{"keys":[...]}`).
    Inline(Value),
    /// A URL serving a JWKS document (fetched on each assertion; TLS certificates are not verified,
    /// since issuers in test clusters use self-signed ones).
    Url(String),
}

impl JwksSource {
    /// Reads `jwks_json_or_url`: a JSON document if it parses as one, otherwise a URL.
    pub fn parse(jwks_json_or_url: &str) -> Result<Self, String> {
        let t = jwks_json_or_url.trim();
        if t.starts_with('{') {
            let v: Value = serde_json::from_str(t).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
            if v.get("keys").and_then(Value::as_array).is_none() {
                return Err("JWKS has no \"keys\" array".into());
            }
            Ok(Self::Inline(v))
        } else if t.starts_with("http://") || t.starts_with("https://") {
            Ok(Self::Url(t.to_owned()))
        } else {
            Err("expected a JWKS JSON document or an http(s) URL".into())
        }
    }
}

/// An application (service principal) or a managed identity that can authenticate to Azure AD.
#[derive(Debug, Clone)]
pub(crate) struct AppClient {
    pub(crate) client_id: String,
    pub(crate) object_id: String,
    pub(crate) secrets: Vec<String>,
    pub(crate) certificates: Vec<Vec<u8>>,
    pub(crate) federated: Vec<FederatedCredential>,
    /// Set for user-assigned identities: the resource ID (tokens carry it as `xms_mirid`).
    pub(crate) managed_identity_id: Option<String>,
}

impl AppClient {
    pub(super) fn new(client_id: &str, object_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            object_id: object_id.to_owned(),
            secrets: Vec::new(),
            certificates: Vec::new(),
            federated: Vec::new(),
            managed_identity_id: None,
        }
    }
}

impl State {
    pub(crate) fn client(&self, client_id: &str) -> Option<&AppClient> {
        self.clients.get(&client_id.to_ascii_lowercase())
    }

    fn client_mut(&mut self, client_id: &str) -> &mut AppClient {
        self.clients
            .entry(client_id.to_ascii_lowercase())
            .or_insert_with(|| AppClient::new(client_id, &uuid::Uuid::new_v4().to_string()))
    }

    pub(crate) fn add_secret(&mut self, client_id: &str, secret: &str) {
        let c = self.client_mut(client_id);
        if !c.secrets.iter().any(|s| s == secret) {
            c.secrets.push(secret.to_owned());
        }
    }

    pub(crate) fn remove_secret(&mut self, client_id: &str, secret: &str) -> bool {
        let Some(c) = self.clients.get_mut(&client_id.to_ascii_lowercase()) else { return false };
        let before = c.secrets.len();
        c.secrets.retain(|s| s != secret);
        c.secrets.len() < before
    }

    pub(crate) fn add_certificate(&mut self, client_id: &str, cert_der: Vec<u8>) {
        let c = self.client_mut(client_id);
        if !c.certificates.contains(&cert_der) {
            c.certificates.push(cert_der);
        }
    }

    pub(crate) fn add_federated(&mut self, client_id: &str, cred: FederatedCredential) {
        self.client_mut(client_id).federated.push(cred);
    }

    /// Ensures an app client exists (no credentials) and returns its object ID.
    pub(crate) fn ensure_client(&mut self, client_id: &str) -> String {
        self.client_mut(client_id).object_id.clone()
    }
}
