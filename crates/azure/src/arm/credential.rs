//! Bearer tokens for ARM: the service principal of azure.json or the node's managed identity,
//! cached until five minutes before expiry with a single flight for concurrent callers.
//! Never logs the token or the secret.

use std::fmt;
use std::time::{Duration, SystemTime};

use tracing::info;

use crate::cloud::{AzureEnvironment, CloudConfig};
use crate::http::HttpOptions;
use crate::token::{AadClient, IdentitySelector, ImdsClient, RetryPolicy, Token, TokenError};

/// Anything that hands out ARM bearer tokens.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync {
    /// A currently valid access token for ARM.
    async fn bearer_token(&self) -> Result<String, TokenError>;
}

/// A fixed token, for tests and tools.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait::async_trait]
impl TokenSource for StaticToken {
    async fn bearer_token(&self) -> Result<String, TokenError> {
        Ok(self.0.clone())
    }
}

/// How MIC authenticates to ARM.
#[derive(Clone, PartialEq, Eq)]
pub enum ArmCredential {
    /// azure.json's `aadClientId`/`aadClientSecret` in `tenantId`, at the environment's authority.
    ServicePrincipal { authority: String, tenant_id: String, client_id: String, client_secret: String },
    /// IMDS; `client_id` selects a user-assigned identity, `None` the system-assigned one.
    ManagedIdentity { client_id: Option<String> },
}

impl fmt::Debug for ArmCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = aadpodid_api::view::redact_client_id;
        match self {
            Self::ServicePrincipal { authority, tenant_id, client_id, .. } => f
                .debug_struct("ServicePrincipal")
                .field("authority", authority)
                .field("tenant_id", tenant_id)
                .field("client_id", &redact(client_id))
                .field("client_secret", &"<redacted>")
                .finish(),
            Self::ManagedIdentity { client_id } => {
                f.debug_struct("ManagedIdentity").field("client_id", &client_id.as_deref().map(redact)).finish()
            }
        }
    }
}

impl ArmCredential {
    /// The original's choice: MSI when `useManagedIdentityExtension`, with
    /// `userAssignedIdentityID` if set; otherwise the service principal.
    pub fn from_cloud_config(config: &CloudConfig, environment: &AzureEnvironment) -> Self {
        if config.use_managed_identity_extension {
            let client_id = Some(config.user_assigned_identity_id.clone()).filter(|id| !id.is_empty());
            return Self::ManagedIdentity { client_id };
        }
        Self::ServicePrincipal {
            authority: environment.active_directory_endpoint.clone(),
            tenant_id: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
        }
    }
}

/// Refresh this long before expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A [`TokenSource`] that fetches with an [`ArmCredential`] and caches the token.
pub struct ArmTokenProvider {
    credential: ArmCredential,
    resource: String,
    aad: AadClient,
    imds: ImdsClient,
    cache: tokio::sync::Mutex<Option<Token>>,
}

impl fmt::Debug for ArmTokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmTokenProvider")
            .field("credential", &self.credential)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl ArmTokenProvider {
    /// Tokens for `resource` (normally [`AzureEnvironment::management_resource`]).
    pub fn new(credential: ArmCredential, resource: impl Into<String>, aad: AadClient, imds: ImdsClient) -> Self {
        let credential_kind = match &credential {
            ArmCredential::ServicePrincipal { .. } => "service principal",
            ArmCredential::ManagedIdentity { client_id: None } => "system-assigned identity",
            ArmCredential::ManagedIdentity { client_id: Some(_) } => "user-assigned identity",
        };
        info!(credential = credential_kind, "ARM authentication configured");
        Self { credential, resource: resource.into(), aad, imds, cache: tokio::sync::Mutex::new(None) }
    }

    /// The original MIC's wiring in one call: the credential azure.json names, tokens for the
    /// environment's management resource, Azure AD over `http` and IMDS at `imds_url` (normally
    /// [`crate::token::DEFAULT_IMDS_URL`]) with adal's retries.
    pub fn from_cloud_config(
        config: &CloudConfig,
        environment: &AzureEnvironment,
        http: &HttpOptions,
        imds_url: &str,
    ) -> Result<Self, TokenError> {
        let imds = ImdsClient::with_options(imds_url, http, RetryPolicy::adal())?;
        Ok(Self::new(
            ArmCredential::from_cloud_config(config, environment),
            environment.management_resource(),
            AadClient::new(http)?,
            imds,
        ))
    }

    async fn fetch(&self) -> Result<Token, TokenError> {
        match &self.credential {
            ArmCredential::ServicePrincipal { authority, tenant_id, client_id, client_secret } => {
                self.aad.client_secret_token(authority, tenant_id, client_id, client_secret, &self.resource).await
            }
            ArmCredential::ManagedIdentity { client_id } => {
                let selector = client_id.clone().map_or(IdentitySelector::SystemAssigned, IdentitySelector::ClientId);
                self.imds.token(&self.resource, &selector).await
            }
        }
    }
}

#[async_trait::async_trait]
impl TokenSource for ArmTokenProvider {
    async fn bearer_token(&self) -> Result<String, TokenError> {
        // Holding the async lock across the fetch makes concurrent misses share one request.
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.as_ref().filter(|t| t.is_fresh(SystemTime::now(), REFRESH_MARGIN)) {
            return Ok(token.access_token.clone());
        }
        let token = self.fetch().await?;
        let bearer = token.access_token.clone();
        *cache = Some(token);
        Ok(bearer)
    }
}
