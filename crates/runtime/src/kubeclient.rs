//! The Kubernetes client: `--kubeconfig` when given (as the original), otherwise the usual
//! inference (in-cluster service account, then `$KUBECONFIG`/`~/.kube/config`).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("reading kubeconfig {path}")]
    Read { path: String, source: kube::config::KubeconfigError },
    #[error("loading kubeconfig")]
    Load(#[source] kube::config::KubeconfigError),
    #[error("inferring the cluster configuration")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("invalid user agent {0:?}")]
    UserAgent(String),
    #[error("building the client")]
    Build(#[source] kube::Error),
}

/// Builds a client that identifies itself with `user_agent` (see [`crate::user_agent`]).
pub async fn kube_client(kubeconfig: Option<&Path>, user_agent: &str) -> Result<kube::Client, KubeClientError> {
    let mut config = match kubeconfig.filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|source| KubeClientError::Read { path: path.display().to_string(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(KubeClientError::Load)?
        }
        None => kube::Config::infer().await.map_err(KubeClientError::Infer)?,
    };
    let value = user_agent.parse().map_err(|_| KubeClientError::UserAgent(user_agent.to_owned()))?;
    config.headers.push((http::header::USER_AGENT, value));
    kube::Client::try_from(config).map_err(KubeClientError::Build)
}
