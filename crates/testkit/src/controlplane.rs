//! One etcd + kube-apiserver pair on free loopback ports in a temporary directory.
//!
//! Owns the processes, the PKI files, the kubeconfig and the directory; dropping a
//! [`ControlPlane`] kills and reaps both processes, then removes the directory.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::certs::Pki;
use crate::process::Proc;
use crate::{Error, Tools};

/// Prefix of every control-plane directory under the system temp dir.
const DIR_PREFIX: &str = "aadpodid-cp-";
/// Generous: a loaded 2-core machine may take a while to bootstrap RBAC and priority levels.
const APISERVER_DEADLINE: Duration = Duration::from_secs(120);
const ETCD_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// File name of the audit log inside the control-plane directory.
const AUDIT_LOG: &str = "audit.log";
/// Every request at level Metadata, recorded once it completed (or, for watches, started).
const AUDIT_POLICY: &str =
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n";

/// The `kubernetes` Service's ClusterIP: the first address of `--service-cluster-ip-range`.
pub const KUBERNETES_SERVICE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 1);

/// How to start a private control plane; the default is what [`ControlPlane::start`] does.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write an apiserver audit log at level `Metadata` ([`ControlPlane::audit_log_path`]).
    pub audit_metadata: bool,
    /// Keep the `ServiceAccount` admission plugin on, so pods get their service account's token
    /// volume; only for clusters where a controller manager creates the default accounts and
    /// publishes `kube-root-ca.crt` (the sandbox's kubelet nodes).
    pub service_account_admission: bool,
    /// `EgressSelectorConfiguration` YAML ([`crate::EgressProxy::selector_config`]): the
    /// API server reaches pods (`pods/proxy`) through that proxy.
    pub egress_selector: Option<String>,
}

/// A running kube-apiserver backed by its own etcd. See the crate docs for what it lacks.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: the apiserver goes before its etcd, the directory last.
    apiserver: Proc,
    etcd: Proc,
    tools: Tools,
    config: kube::Config,
    server_url: String,
    ca_pem: String,
    issuer: String,
    kubeconfig_path: PathBuf,
    dir: tempfile::TempDir,
}

/// Free loopback ports for etcd's client and peer URLs and the apiserver.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
}

impl ControlPlane {
    /// Starts a private control plane (a few seconds; the first run may build the tools).
    ///
    /// Retries with new ports when another process took a free port before our child bound it.
    pub async fn start() -> Result<Self, Error> {
        let tools = tokio::task::spawn_blocking(Tools::locate)
            .await
            .map_err(|e| Error::Io { what: "locating tools".to_owned(), source: std::io::Error::other(e) })??;
        Self::start_with(tools).await
    }

    /// Starts a private control plane from the given binaries (for testing other builds).
    pub async fn start_with(tools: Tools) -> Result<Self, Error> {
        Self::start_with_options(tools, Options::default()).await
    }

    /// Starts a private control plane whose apiserver writes an audit log at level `Metadata`
    /// (who did what to which resource; no bodies) to [`ControlPlane::audit_log_path`], e.g. to
    /// check that a component's RBAC rules are all used.
    pub async fn start_audited() -> Result<Self, Error> {
        let tools = tokio::task::spawn_blocking(Tools::locate)
            .await
            .map_err(|e| Error::Io { what: "locating tools".to_owned(), source: std::io::Error::other(e) })??;
        Self::start_with_options(tools, Options { audit_metadata: true, ..Options::default() }).await
    }

    /// Starts a private control plane from the given binaries with `options`.
    pub async fn start_with_options(tools: Tools, options: Options) -> Result<Self, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(tools.clone(), &options).await {
                Err(e) if attempt < 3 && is_port_clash(&e) => continue,
                other => return other,
            }
        }
    }

    async fn start_once(tools: Tools, options: &Options) -> Result<Self, Error> {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(Error::io("creating the control-plane directory"))?;
        write(&dir.path().join("owner.pid"), &std::process::id().to_string())?;
        let pki = tokio::task::spawn_blocking(Pki::generate).await.map_err(|e| Error::Io {
            what: "generating certificates".to_owned(),
            source: std::io::Error::other(e),
        })??;
        write_pki(dir.path(), &pki)?;
        let ports = free_ports()?;

        let mut etcd = Proc::spawn("etcd", &tools.etcd, &etcd_args(dir.path(), &ports), dir.path().join("etcd.log"))?;
        wait_for_port(&mut etcd, ports.etcd_client, ETCD_DEADLINE).await?;

        let issuer = format!("https://127.0.0.1:{}", ports.apiserver);
        let mut args = apiserver_args(dir.path(), &ports, &issuer);
        if options.service_account_admission {
            args.retain(|a| a != DISABLE_SA_ADMISSION);
        }
        if options.audit_metadata {
            let policy = dir.path().join("audit-policy.yaml");
            write(&policy, AUDIT_POLICY)?;
            args.push(format!("--audit-policy-file={}", policy.display()));
            args.push(format!("--audit-log-path={}", dir.path().join(AUDIT_LOG).display()));
        }
        if let Some(egress) = &options.egress_selector {
            let file = dir.path().join("egress-selector.yaml");
            write(&file, egress)?;
            args.push(format!("--egress-selector-config-file={}", file.display()));
        }
        let mut apiserver =
            Proc::spawn("kube-apiserver", &tools.kube_apiserver, &args, dir.path().join("apiserver.log"))?;

        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let kubeconfig_path = dir.path().join("kubeconfig");
        write(&kubeconfig_path, &kubeconfig_yaml(&server_url, &pki))?;
        let kubeconfig = Kubeconfig::read_from(&kubeconfig_path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        wait_for_readyz(&mut apiserver, &config).await?;

        Ok(Self { apiserver, etcd, tools, config, server_url, ca_pem: pki.ca_cert, issuer, kubeconfig_path, dir })
    }

    /// A new client for the current Tokio runtime; call it inside each test.
    ///
    /// # Panics
    /// Outside a Tokio runtime (kube spawns its request buffer on the current runtime).
    pub fn client(&self) -> kube::Client {
        // The same config already served /readyz at start, so building from it cannot fail.
        kube::Client::try_from(self.config.clone()).expect("client config was verified at start-up")
    }

    /// The kubeconfig (admin in `system:masters`) for kubectl, helm and binaries under test.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA that signed the serving and admin certificates.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The service-account token issuer (`iss`), `https://127.0.0.1:<port>`; its JWKS is at
    /// `/openid/v1/jwks` on the apiserver.
    pub fn service_account_issuer(&self) -> &str {
        &self.issuer
    }

    /// The binaries this control plane runs, plus kubectl and helm of the same build.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Where the audit log is written (JSON lines, one `audit.k8s.io/v1` Event each); the file
    /// exists only for a control plane started with [`Options::audit_metadata`].
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.path().join(AUDIT_LOG)
    }

    /// A file of the control plane's PKI: `ca.crt`, `sa.key` (the service-account signing key
    /// a controller manager needs), `sa.pub`, `admin.crt`, `admin.key`.
    pub fn pki_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("pki").join(name)
    }

    /// The temporary directory holding logs, PKI, etcd data and the kubeconfig.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the apiserver's and etcd's logs, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "== {} ==\n{}\n== {} ==\n{}",
            self.apiserver.log.display(),
            self.apiserver.tail(),
            self.etcd.log.display(),
            self.etcd.tail()
        )
    }

    /// Runs the real kubectl against this control plane, as a user would (blocking).
    ///
    /// # Panics
    /// When kubectl cannot be started at all; a failing kubectl is reported in the `Output`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().unwrap_or_else(|e| panic!("running {}: {e}", self.tools.kubectl.display()))
    }

    /// The kubectl command line with `--kubeconfig`, a private discovery cache and a request
    /// timeout, to extend (stdin, env) before running.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tools.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            // A wedged apiserver fails the test instead of hanging it.
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }
}

/// The control plane shared by every test in this test binary, started on first use.
///
/// Blocking; it starts on a thread of its own so it can be called from any test, async or
/// not. Its processes die with the test process (see the crate docs).
///
/// # Panics
/// When the control plane cannot start; every test that asks gets the same message.
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(ControlPlane::start()).map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("control-plane start-up panicked".to_owned()))
    });
    match started {
        Ok(cp) => cp,
        Err(e) => panic!("the shared control plane failed to start: {e}"),
    }
}

fn is_port_clash(e: &Error) -> bool {
    match e {
        Error::Exited { tail, .. } | Error::NotReady { tail, .. } => tail.contains("address already in use"),
        _ => false,
    }
}

fn etcd_args(dir: &Path, p: &Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", p.etcd_client);
    let peer = format!("http://127.0.0.1:{}", p.etcd_peer);
    vec![
        "--name=testkit".to_owned(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=testkit={peer}"),
        // Test data need not survive a power cut; fsync would dominate on a shared disk.
        "--unsafe-no-fsync=true".to_owned(),
        "--log-level=warn".to_owned(),
    ]
}

const DISABLE_SA_ADMISSION: &str = "--disable-admission-plugins=ServiceAccount";

/// envtest's flags plus what a loopback-only 1.34 apiserver needs.
fn apiserver_args(dir: &Path, p: &Ports, issuer: &str) -> Vec<String> {
    let pki = dir.join("pki");
    let f = |name: &str| pki.join(name).display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", p.etcd_client),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", f("apiserver.crt")),
        format!("--tls-private-key-file={}", f("apiserver.key")),
        format!("--client-ca-file={}", f("ca.crt")),
        format!("--secure-port={}", p.apiserver),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        // No controller-manager maintains the kubernetes Endpoints, and loopback ones are invalid.
        "--endpoint-reconciler-type=none".to_owned(),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--allow-privileged=true".to_owned(),
        "--authorization-mode=RBAC".to_owned(),
        // No controller creates default service accounts, so the plugin would reject every pod.
        DISABLE_SA_ADMISSION.to_owned(),
        format!("--service-account-issuer={issuer}"),
        format!("--service-account-key-file={}", f("sa.pub")),
        format!("--service-account-signing-key-file={}", f("sa.key")),
    ]
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(Error::io(format!("writing {}", path.display())))
}

fn write_pki(dir: &Path, pki: &Pki) -> Result<(), Error> {
    let d = dir.join("pki");
    std::fs::create_dir_all(&d).map_err(Error::io(format!("creating {}", d.display())))?;
    for (name, pem) in [
        ("ca.crt", &pki.ca_cert),
        ("apiserver.crt", &pki.serving_cert),
        ("apiserver.key", &pki.serving_key),
        ("admin.crt", &pki.admin_cert),
        ("admin.key", &pki.admin_key),
        ("sa.key", &pki.sa_private_key),
        ("sa.pub", &pki.sa_public_key),
    ] {
        write(&d.join(name), pem)?;
    }
    Ok(())
}

fn kubeconfig_yaml(server: &str, pki: &Pki) -> String {
    let ca = B64.encode(&pki.ca_cert);
    let cert = B64.encode(&pki.admin_cert);
    let key = B64.encode(&pki.admin_key);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testkit\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
         contexts:\n- name: testkit\n  context:\n    cluster: testkit\n    user: admin\n    namespace: default\n\
         current-context: testkit\n"
    )
}

/// Holds all three listeners at once so the ports differ, then frees them for the children.
fn free_ports() -> Result<Ports, Error> {
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::io("binding a free loopback port"));
    let (a, b, c) = (bind()?, bind()?, bind()?);
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(Error::io("reading a bound port"));
    Ok(Ports { etcd_client: port(&a)?, etcd_peer: port(&b)?, apiserver: port(&c)? })
}

async fn wait_for_port(proc: &mut Proc, port: u16, deadline: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if TcpStream::connect_timeout(&addr, POLL).is_ok() {
            return Ok(());
        }
        check_alive(proc, start, deadline)?;
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_for_readyz(proc: &mut Proc, config: &kube::Config) -> Result<(), Error> {
    let client = kube::Client::try_from(config.clone())?;
    let start = Instant::now();
    loop {
        let req = http::Request::get("/readyz").body(Vec::new()).map_err(|e| Error::Io {
            what: "building the /readyz request".to_owned(),
            source: std::io::Error::other(e),
        })?;
        if matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok") {
            return Ok(());
        }
        check_alive(proc, start, APISERVER_DEADLINE)?;
        tokio::time::sleep(POLL).await;
    }
}

fn check_alive(proc: &mut Proc, start: Instant, deadline: Duration) -> Result<(), Error> {
    if let Some(status) = proc.exited() {
        return Err(Error::Exited { what: proc.what, status, log: proc.log.clone(), tail: proc.tail() });
    }
    if start.elapsed() > deadline {
        return Err(Error::NotReady { what: proc.what, deadline, log: proc.log.clone(), tail: proc.tail() });
    }
    Ok(())
}

/// Removes directories left by earlier test processes (statics are never dropped), judged by
/// the owner pid each one records. Best-effort.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Ok(pid) = std::fs::read_to_string(entry.path().join("owner.pid")) else { continue };
        let alive = Path::new("/proc").join(pid.trim()).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
