//! MIC's cloud provider: the cloud config (azure.json or the environment fallback), the ARM
//! client built from it (in `aadpodid-azure`), its metrics observer, and reloading when the
//! config file changes (its modification time is checked before each cycle). Never logs a
//! secret: configs are logged through their redacting `Debug`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aadpodid_azure::HttpOptions;
use aadpodid_azure::arm::{
    Arm, ArmClient, ArmCredential, ArmError, ArmObserver, ArmOperation, ArmOptions, ArmTokenProvider,
    ProtectedClientIds,
};
use aadpodid_azure::cloud::{AzureEnvironment, CloudConfig, CloudError};
use aadpodid_azure::token::{AadClient, DEFAULT_IMDS_URL, ImdsClient, RetryPolicy, TokenError};

use crate::args::Args;
use crate::env::Env;
use crate::metrics::Metrics;

/// Why the cloud provider could not be initialised (fatal at start-up, as in the original).
#[derive(Debug, thiserror::Error)]
pub enum ArmSetupError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("reading the extra root CA {0}")]
    RootCa(PathBuf, #[source] std::io::Error),
    #[error("building token clients")]
    Token(#[from] TokenError),
    #[error("building the ARM client")]
    Arm(#[from] ArmError),
}

/// Records each ARM operation in the original's cloud-provider metrics.
struct Observer(Metrics);

impl ArmObserver for Observer {
    fn observe(&self, operation: ArmOperation, elapsed: Duration, ok: bool) {
        tracing::info!(operation = operation.as_str(), ok, duration_ms = elapsed.as_millis() as u64, "ARM call");
        self.0.cloud_call(operation.as_str(), elapsed.as_secs_f64(), ok);
    }
}

/// What the ARM client is built from, besides the cloud config.
#[derive(Clone)]
struct Settings {
    cloudconfig: Option<PathBuf>,
    env: HashMap<String, String>,
    http: HttpOptions,
    options: ArmOptions,
    /// `--immutable-user-msis`.
    immutable: Vec<String>,
}

/// The current ARM client and how to rebuild it.
pub struct ArmSource {
    settings: Settings,
    config: CloudConfig,
    current: Arc<dyn Arm>,
    modified: Option<SystemTime>,
}

impl ArmSource {
    /// Reads the cloud config and builds the client; an error is fatal at start-up.
    pub fn load(args: &Args, env: &Env, metrics: &Metrics) -> Result<Self, ArmSetupError> {
        let http = match args.extra_root_ca_file.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => {
                HttpOptions::with_root_ca_pem(std::fs::read(p).map_err(|e| ArmSetupError::RootCa(p.clone(), e))?)
            }
            None => HttpOptions::default(),
        };
        let options = ArmOptions {
            http: http.clone(),
            poll_interval: args.arm_poll(),
            max_retries: args.update_user_msi_max_retry,
            retry_interval: args.update_retry_pause(),
            max_retry_after: args.arm_retry_after_cap(),
            observer: Some(Arc::new(Observer(metrics.clone()))),
            ..ArmOptions::default()
        };
        let cloudconfig = Some(PathBuf::from(&args.cloudconfig)).filter(|p| !p.as_os_str().is_empty());
        let immutable = args.immutable_user_msis.split(',').map(str::to_owned).collect();
        let env = env.vars.clone().into_iter().collect();
        let settings = Settings { cloudconfig, env, http, options, immutable };
        let modified = settings.cloudconfig.as_ref().and_then(mtime);
        let (config, current) = build(&settings)?;
        Ok(Self { settings, config, current, modified })
    }

    /// The cluster identity (`userAssignedIdentityID`), never removed from nodes.
    pub fn cluster_identity(&self) -> Option<String> {
        Some(self.config.user_assigned_identity_id.clone()).filter(|s| !s.is_empty())
    }

    /// The client to use now.
    pub fn current(&self) -> Arc<dyn Arm> {
        Arc::clone(&self.current)
    }

    /// A new client when the config file's modification time changed since the last look and
    /// the new config builds; `None` otherwise (and always when the config comes from the
    /// environment). A config that does not build keeps the previous client.
    pub fn reload(&mut self) -> Option<Arc<dyn Arm>> {
        let path = self.settings.cloudconfig.as_ref()?;
        let now = mtime(path);
        if now == self.modified {
            return None;
        }
        self.modified = now;
        match build(&self.settings) {
            Ok((config, arm)) => {
                tracing::info!(config = ?config, "Cloud config reloaded");
                self.config = config;
                self.current = Arc::clone(&arm);
                Some(arm)
            }
            Err(error) => {
                tracing::error!(error = %error, "Reloading the cloud config failed; keeping the previous client");
                None
            }
        }
    }
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// What the ARM client never detaches, judged by ARM's own client IDs: the immutable client IDs
/// and the cluster identity of this config (so a reloaded config protects its own).
fn protected(immutable: &[String], config: &CloudConfig) -> ProtectedClientIds {
    ProtectedClientIds::new(immutable.iter().map(String::as_str).chain([config.user_assigned_identity_id.as_str()]))
}

fn build(s: &Settings) -> Result<(CloudConfig, Arc<dyn Arm>), ArmSetupError> {
    let config = match &s.cloudconfig {
        Some(path) => CloudConfig::from_file(path)?,
        None => CloudConfig::from_env_map(&s.env),
    };
    let environment = AzureEnvironment::from_name(&config.cloud, |k| s.env.get(k).cloned())?;
    let credential = ArmCredential::from_cloud_config(&config, &environment);
    let imds = ImdsClient::with_options(DEFAULT_IMDS_URL, &s.http, RetryPolicy::adal())?;
    let tokens = ArmTokenProvider::new(credential, environment.management_resource(), AadClient::new(&s.http)?, imds);
    let options = ArmOptions { protected: protected(&s.immutable, &config), ..s.options.clone() };
    let client = ArmClient::new(&config, &environment, Arc::new(tokens), options)?;
    tracing::info!(config = ?config, arm = %environment.resource_manager_endpoint, "Cloud provider initialised");
    Ok((config, Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const THEIRS: &str = "/subscriptions/0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/theirs";
    const PRINCIPAL: &str = "9a8b7c6d-1111-2222-3333-444455556666";

    #[test]
    fn the_cluster_identity_and_the_immutable_ones_are_protected_and_blanks_are_not() {
        let config = CloudConfig { user_assigned_identity_id: "Kubelet-Client".into(), ..CloudConfig::default() };
        let immutable: Vec<String> = "a-client,,B-Client".split(',').map(str::to_owned).collect();
        let p = protected(&immutable, &config);
        assert_eq!(p.len(), 3);
        assert!(p.contains("kubelet-client") && p.contains("A-CLIENT") && p.contains("b-client"));
        let none = protected(&[String::new()], &CloudConfig::default());
        assert!(none.is_empty(), "an empty flag and no cluster identity protect nothing");
    }

    #[test]
    fn arm_failures_show_events_no_identity_and_logs_no_client_id() {
        let message = format!("The client '{PRINCIPAL}' has no access over scope '{THEIRS}'");
        let http =
            || ArmError::Http { status: 403, code: "LinkedAuthorizationFailed".into(), message: message.clone() };
        for (e, public) in [
            (http(), "ARM answered HTTP 403: LinkedAuthorizationFailed"),
            (
                ArmError::BadIdentities { ids: vec![THEIRS.into()], source: Box::new(http()) },
                "ARM rejected 1 of the identities: ARM answered HTTP 403: LinkedAuthorizationFailed",
            ),
            (
                ArmError::OperationFailed { status: "Failed".into(), code: "X".into(), message: message.clone() },
                "ARM operation Failed: X",
            ),
        ] {
            assert_eq!(e.summary(), public, "what events say");
            let logged = crate::events::redact_guids(&e.to_string());
            assert!(!logged.contains(PRINCIPAL), "{logged}");
            assert!(logged.contains("9a8b##### REDACTED #####6666"), "{logged}");
        }
    }
}
