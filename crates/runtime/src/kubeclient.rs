//! The Kubernetes client: `--kubeconfig` when given (as the original), otherwise the usual
//! inference (in-cluster service account, then `$KUBECONFIG`/`~/.kube/config`). Every client
//! has connect, read and write timeouts, so a hung API-server connection fails instead of
//! blocking forever.

use std::path::Path;
use std::time::Duration;

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

/// Timeouts of one client's connections. The read timeout counts from the last byte written
/// or read, so it bounds a silent server, not a long answer that keeps flowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

impl KubeTimeouts {
    /// For a client that watches: a watch may be silent until the API server ends it (kube's
    /// watcher asks for 290 s), so reads may wait a little longer than that.
    pub const WATCH: Self =
        Self { connect: Duration::from_secs(10), read: Duration::from_secs(300), write: Duration::from_secs(30) };
    /// For a client that only sends requests: the API server answers or gives up within its
    /// own 60 s request timeout.
    pub const REQUEST: Self =
        Self { connect: Duration::from_secs(10), read: Duration::from_secs(70), write: Duration::from_secs(30) };

    /// Every timeout at `limit` (e.g. a leader election's renew deadline).
    pub fn within(limit: Duration) -> Self {
        Self { connect: limit, read: limit, write: limit }
    }

    /// `config` with these timeouts.
    pub fn apply(self, mut config: kube::Config) -> kube::Config {
        config.connect_timeout = Some(self.connect);
        config.read_timeout = Some(self.read);
        config.write_timeout = Some(self.write);
        // Count the read timeout from the request, not from when a pooled connection went idle.
        config.reset_reader_on_write = true;
        config
    }
}

/// The configuration a client is built from, identifying itself with `user_agent` (see
/// [`crate::user_agent`]); no timeouts yet (see [`KubeTimeouts::apply`]).
pub async fn kube_config(kubeconfig: Option<&Path>, user_agent: &str) -> Result<kube::Config, KubeClientError> {
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
    Ok(config)
}

/// A client with `timeouts` (see [`kube_config`]).
pub async fn kube_client_with(
    kubeconfig: Option<&Path>,
    user_agent: &str,
    timeouts: KubeTimeouts,
) -> Result<kube::Client, KubeClientError> {
    let config = timeouts.apply(kube_config(kubeconfig, user_agent).await?);
    kube::Client::try_from(config).map_err(KubeClientError::Build)
}

/// A client for watching and requests, with [`KubeTimeouts::WATCH`].
pub async fn kube_client(kubeconfig: Option<&Path>, user_agent: &str) -> Result<kube::Client, KubeClientError> {
    kube_client_with(kubeconfig, user_agent, KubeTimeouts::WATCH).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_reads_outlast_the_api_servers_watch_timeout_and_requests_its_request_timeout() {
        assert!(KubeTimeouts::WATCH.read > Duration::from_secs(290));
        assert!(KubeTimeouts::REQUEST.read > Duration::from_secs(60));
        let config = KubeTimeouts::within(Duration::from_secs(7)).apply(kube::Config::new("http://x".parse().unwrap()));
        assert_eq!(
            (config.connect_timeout, config.read_timeout, config.write_timeout),
            (Some(Duration::from_secs(7)), Some(Duration::from_secs(7)), Some(Duration::from_secs(7)))
        );
        assert!(config.reset_reader_on_write);
    }

    /// A server that accepts and reads but never answers: the request must fail by the read
    /// timeout instead of hanging.
    #[tokio::test]
    async fn a_silent_api_server_fails_the_request_within_the_read_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let dir = std::env::temp_dir().join(format!("kubeclient-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        );
        std::fs::write(&path, kubeconfig).unwrap();
        let timeouts = KubeTimeouts { read: Duration::from_millis(500), ..KubeTimeouts::REQUEST };
        let client = kube_client_with(Some(&path), "test", timeouts).await.unwrap();
        let started = std::time::Instant::now();
        let req = http::Request::get("/version").body(Vec::new()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(20), client.request_text(req)).await;
        assert!(matches!(outcome, Ok(Err(_))), "the request failed instead of hanging: {outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let _ = std::fs::remove_dir_all(dir);
    }
}
