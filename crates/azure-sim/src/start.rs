//! Bringing a simulator up: the CA and HTTPS certificate for the run, the ARM and Azure AD listeners
//! (plain and TLS) and their servers, per-node IMDS servers, and [`RunningSim`], which owns them all and
//! stops them when dropped. This is the only module that knows both the handle and the faces' routers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::task::AbortHandle;

use crate::config::{Endpoints, SimConfig};
use crate::sim::{SimError, Simulator};
use crate::state::NodeRef;
use crate::tls::TlsMaterial;

impl Simulator {
    /// Starts ARM and Azure AD on their HTTP and HTTPS listeners. Must be called inside a Tokio runtime.
    pub async fn start(cfg: SimConfig) -> Result<RunningSim, SimError> {
        RunningSim::start(cfg).await
    }

    /// Serves a node's IMDS on `listener` (which may have been bound inside another network namespace).
    /// The server runs until the [`RunningSim`] is dropped or the returned handle is stopped.
    pub fn serve_imds(&self, listener: std::net::TcpListener, node: NodeRef) -> Result<ImdsHandle, SimError> {
        let addr = listener.local_addr().map_err(|e| SimError::Bind { addr: "imds".into(), source: e })?;
        listener.set_nonblocking(true).map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
        let _guard = self.runtime().enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
        let router = crate::imds::router(self.clone(), node.clone());
        let task = self.runtime().spawn(crate::server::serve(listener, router, None));
        let abort = task.abort_handle();
        self.track_imds(abort.clone());
        tracing::info!(%addr, node = %node.node_name(), "IMDS serving");
        Ok(ImdsHandle { addr, node, abort })
    }

    /// Binds `addr` on this thread's network namespace and serves a node's IMDS there.
    pub fn serve_imds_on(&self, addr: SocketAddr, node: NodeRef) -> Result<ImdsHandle, SimError> {
        let listener =
            std::net::TcpListener::bind(addr).map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
        self.serve_imds(listener, node)
    }
}

/// A running IMDS instance.
#[derive(Debug, Clone)]
pub struct ImdsHandle {
    addr: SocketAddr,
    node: NodeRef,
    abort: AbortHandle,
}

impl ImdsHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://<addr>`: the value for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The node it serves.
    pub fn node(&self) -> &NodeRef {
        &self.node
    }
    /// Stops serving.
    pub fn stop(&self) {
        self.abort.abort();
    }
}

/// A started simulator: the listeners and the [`Simulator`] handle (through `Deref`). Dropping it stops
/// every server, IMDS instances included, and removes its temporary directory.
pub struct RunningSim {
    sim: Simulator,
    tasks: Vec<AbortHandle>,
    tls: TlsMaterial,
    state_dir: PathBuf,
    ca_path: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim").field("endpoints", &self.sim.endpoints()).finish_non_exhaustive()
    }
}

impl std::ops::Deref for RunningSim {
    type Target = Simulator;
    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.sim.abort_all_imds();
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), SimError> {
    let l =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
    let local = l.local_addr().map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
    Ok((l, local))
}

fn url_of(scheme: &str, addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    match addr {
        SocketAddr::V6(_) if !addr.ip().is_unspecified() => format!("{scheme}://[{host}]:{}", addr.port()),
        _ => format!("{scheme}://{host}:{}", addr.port()),
    }
}

impl RunningSim {
    async fn start(cfg: SimConfig) -> Result<Self, SimError> {
        let sim = Simulator::new(&cfg)?;
        let (state_dir, tempdir) = match &cfg.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| SimError::Write { path: d.clone(), source: e })?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("azure-sim-")
                    .tempdir()
                    .map_err(|e| SimError::Write { path: std::env::temp_dir(), source: e })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let tls = crate::tls::generate(&cfg.tls_names)?;
        let ca_path = state_dir.join("ca.pem");
        std::fs::write(&ca_path, &tls.ca_pem).map_err(|e| SimError::Write { path: ca_path.clone(), source: e })?;

        let (arm_http, arm_http_addr) = bind(cfg.arm_http_addr).await?;
        let (arm_https, arm_https_addr) = bind(cfg.arm_https_addr).await?;
        let (aad_http, aad_http_addr) = bind(cfg.aad_http_addr).await?;
        let (aad_https, aad_https_addr) = bind(cfg.aad_https_addr).await?;
        sim.set_endpoints(Endpoints {
            arm_http: url_of("http", arm_http_addr),
            arm_https: url_of("https", arm_https_addr),
            aad_http: url_of("http", aad_http_addr),
            aad_https: url_of("https", aad_https_addr),
        });
        let cfg_tls = Some(tls.server_config.clone());
        let arm_router = |scheme| crate::arm::router(sim.clone(), scheme);
        let aad_router = |scheme| crate::aad::router(sim.clone(), scheme);
        let tasks = vec![
            tokio::spawn(crate::server::serve(arm_http, arm_router("http"), None)).abort_handle(),
            tokio::spawn(crate::server::serve(arm_https, arm_router("https"), cfg_tls.clone())).abort_handle(),
            tokio::spawn(crate::server::serve(aad_http, aad_router("http"), None)).abort_handle(),
            tokio::spawn(crate::server::serve(aad_https, aad_router("https"), cfg_tls)).abort_handle(),
        ];
        tracing::info!(endpoints = ?sim.endpoints(), tenant = %sim.tenant_id(), "Azure simulator started");
        Ok(Self { sim, tasks, tls, state_dir, ca_path, _tempdir: tempdir })
    }

    /// The [`Simulator`] handle (also reachable through `Deref`).
    pub fn sim(&self) -> &Simulator {
        &self.sim
    }
    /// ARM over HTTP, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn arm_url(&self) -> String {
        self.sim.endpoints().arm_http
    }
    /// ARM over HTTPS (certificate signed by [`Self::ca_cert_pem`]).
    pub fn arm_https_url(&self) -> String {
        self.sim.endpoints().arm_https
    }
    /// Azure AD over HTTP: the authority host; token URLs are `<this>/<tenant>/oauth2/token`.
    pub fn aad_url(&self) -> String {
        self.sim.endpoints().aad_http
    }
    /// Azure AD over HTTPS.
    pub fn aad_https_url(&self) -> String {
        self.sim.endpoints().aad_https
    }
    /// Path of the CA certificate (PEM) that signed the HTTPS certificate.
    pub fn ca_cert_pem_path(&self) -> &Path {
        &self.ca_path
    }
    /// The CA certificate (PEM).
    pub fn ca_cert_pem(&self) -> &str {
        &self.tls.ca_pem
    }
    /// The CA certificate (DER), e.g. for `reqwest::Certificate::from_der`.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.tls.ca_der
    }
    /// The directory holding `ca.pem` and environment files.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Writes an autorest Azure Stack environment file (for `cloud: AzureStackCloud` with
    /// `AZURE_ENVIRONMENT_FILEPATH`) pointing at the HTTPS (or, with `https = false`, HTTP) listeners,
    /// and returns its path (`<state dir>/azurestackcloud.json`).
    pub fn write_azure_stack_environment(&self, https: bool) -> Result<PathBuf, SimError> {
        let e = self.sim.endpoints();
        let (arm, aad) = if https { (e.arm_https, e.aad_https) } else { (e.arm_http, e.aad_http) };
        let doc = crate::envfile::azure_stack_environment(&arm, &aad);
        let path = self.state_dir.join("azurestackcloud.json");
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| SimError::Write { path: path.clone(), source: e })?;
        Ok(path)
    }
}
