//! Start-up and shutdown, ordered so that pods never reach the node's IMDS while NMI runs:
//! kubenet guard; bind the listener; install the iptables rules (and delete conntrack entries);
//! probe and metrics servers; then the watches, with a readiness gate answering 503 until
//! they have synced (`/healthz` turns Active then). On SIGTERM/SIGINT NMI keeps serving through
//! the termination wait and removes the rules last, just before exit (or leaves them with
//! `--keep-rules-on-exit`). A fatal error leaves the rules, as the original's fatal exit does:
//! pods get connection refused until NMI is back. Wiring only; decisions live elsewhere.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aadpodid_azure::HttpOptions;
use aadpodid_azure::token::{AadClient, ImdsClient, ImdsLimiter};
use aadpodid_runtime::{Health, LogFormat};
use anyhow::{Context, anyhow, bail};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::args::Args;
use crate::gate::{self, Gate, Readiness};
use crate::iptables::{self, Iptables, Rules};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::select::{MicIdentity, RetryPolicy};
use crate::server::{self, AppState, Config, Mode};
use crate::store::{KubeSecrets, KubeStore};
use crate::tokens::{AzureTokens, TokenSettings};

/// How often cached tokens in use are checked for a background refresh.
const TOKEN_REFRESH_PERIOD: Duration = Duration::from_secs(10);

/// Runs NMI until a termination signal, then cleans up. An error is fatal (exit 1).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let format: LogFormat = args.log_format.parse()?;
    aadpodid_runtime::init_tracing(format, args.klog.v)?;
    let mode = parse_mode(&args.operation_mode)?;
    preflight(&args, mode)?;
    let token_settings = args.token_settings().map_err(anyhow::Error::msg)?;
    tracing::info!(node = %args.node, mode = ?mode, version = aadpodid_runtime::VERSION, "Starting NMI");
    let http = http_options(&args)?;
    let signal_rx = spawn_signal_listener();

    let listener = bind(&args).await?;
    let rules = Rules::new(args.metadata_ip, args.metadata_port, args.listen_address, args.nmi_port);
    install(&rules, args.enable_conntrack_deletion.then_some((args.metadata_ip, args.metadata_port))).await?;
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<anyhow::Error>(4);
    let period = args.ipt_update_period();
    let reconciler = Reconciler::spawn(rules, period, fatal_tx.clone());
    let outcome = match start(&args, mode, (http, token_settings), listener, fatal_tx).await {
        Ok(()) => tokio::select! {
            _ = signal_rx => Ok(()),
            Some(err) = fatal_rx.recv() => Err(err),
        },
        Err(err) => Err(err),
    };
    match outcome {
        Ok(()) => terminate(&args, reconciler, &mut fatal_rx).await,
        Err(err) => {
            tracing::error!(chain = iptables::CHAIN, "Fatal error; the iptables rules stay, so pods are refused");
            Err(err)
        }
    }
}

/// Listens for SIGTERM/SIGINT from the start, so a signal during start-up is not the default
/// (immediate) exit.
fn spawn_signal_listener() -> oneshot::Receiver<()> {
    let (signal_tx, signal_rx) = oneshot::channel();
    tokio::spawn(async move {
        aadpodid_runtime::shutdown_signal().await;
        let _ = signal_tx.send(());
    });
    signal_rx
}

/// Everything after the rules: probe and metrics servers, the watches, and the listener
/// behind the readiness gate. Never waits on the API server.
async fn start(
    args: &Args,
    mode: Mode,
    (http, token_settings): (HttpOptions, TokenSettings),
    listener: TcpListener,
    fatal_tx: mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let health = Health::new();
    spawn_admin(args, health.clone(), metrics.clone());
    let agent = aadpodid_runtime::user_agent("NMI", Some(&args.custom_user_agent));
    let client = aadpodid_runtime::kube_client(args.kubeconfig.as_deref(), &agent).await?;
    let (store, _watches) = KubeStore::start(&client, &args.node, mode, args.enable_scale_features);
    let readiness = Readiness::new();
    spawn_sync(store.clone(), readiness.clone(), health, fatal_tx.clone());
    let imds = ImdsClient::new(&format!("http://{}:{}", args.metadata_ip, args.metadata_port))?
        .with_limiter(ImdsLimiter::new(args.imds_limits()));
    let tokens = Arc::new(AzureTokens::new(
        imds,
        AadClient::new(&http)?,
        Arc::new(KubeSecrets(client)),
        metrics.clone(),
        token_settings,
    ));
    tokens.spawn_refresher(TOKEN_REFRESH_PERIOD);
    let state = AppState::new(config(args, mode), Arc::new(store), tokens, metrics);
    let gate = Gate {
        readiness,
        block_instance_metadata: args.block_instance_metadata,
        metadata_header_required: args.metadata_header_required,
    };
    let router = server::router(state).layer(axum::middleware::from_fn_with_state(gate, gate::guard));
    serve(listener, router, args.limits(), fatal_tx);
    Ok(())
}

fn parse_mode(mode: &str) -> anyhow::Result<Mode> {
    match mode.to_lowercase().as_str() {
        "standard" => Ok(Mode::Standard),
        "managed" => Ok(Mode::Managed),
        other => bail!("operation mode {other} is not supported: use standard or managed"),
    }
}

/// The kubenet guard and the managed-mode requirement, before anything starts.
fn preflight(args: &Args, mode: Mode) -> anyhow::Result<()> {
    if !args.allow_network_plugin_kubenet {
        let path = &args.kubelet_config;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        iptables::kubenet_guard(&text).map_err(anyhow::Error::msg)?;
    }
    if mode == Mode::Managed && !args.force_namespaced {
        bail!("managed mode not intialized in force namespaced mode");
    }
    if args.enable_profile {
        tracing::warn!("--enableProfile is accepted but profiling endpoints are never exposed");
    }
    Ok(())
}

fn http_options(args: &Args) -> anyhow::Result<HttpOptions> {
    Ok(match &args.extra_root_ca_file {
        Some(path) => HttpOptions::with_root_ca_pem(
            std::fs::read(path).with_context(|| format!("reading --extra-root-ca-file {}", path.display()))?,
        ),
        None => HttpOptions::default(),
    })
}

fn config(args: &Args, mode: Mode) -> Config {
    Config {
        mode,
        force_namespaced: args.force_namespaced,
        mic: MicIdentity::from_flags(mode == Mode::Standard, &args.mic_namespace, &args.mic_service_account),
        retry: RetryPolicy {
            created: args.retry_attempts_for_created,
            assigned: args.retry_attempts_for_assigned,
            interval_secs: args.find_identity_retry_interval,
        },
        retry_interval: args.find_identity_retry_pause(),
        metadata_header_required: args.metadata_header_required,
        set_retry_after_header: args.set_retry_after_header,
        block_instance_metadata: args.block_instance_metadata,
        imds_base: format!("http://{}:{}", args.metadata_ip, args.metadata_port),
        imds_host: format!("{}:{}", args.metadata_ip, args.metadata_port),
        limits: args.limits(),
        ..Config::default()
    }
}

/// `/healthz` on the probe port and `/metrics` on the Prometheus port, all interfaces.
fn spawn_admin(args: &Args, health: Health, metrics: Metrics) {
    let servers = [
        (args.http_probe_port, aadpodid_runtime::probe_router(health)),
        (args.prometheus_port, aadpodid_runtime::metrics_router(metrics.registry)),
    ];
    for (port, router) in servers {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        tokio::spawn(async move {
            if let Err(error) = aadpodid_runtime::serve(addr, router, std::future::pending()).await {
                tracing::error!(%error, %addr, "Admin server failed");
            }
        });
    }
}

/// Binds the NMI listener, before any rule points at it.
async fn bind(args: &Args) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((args.listen_address, args.nmi_port));
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "Listening");
    Ok(listener)
}

/// Serves the NMI router in the background, with the listener's bounds; a listener failure
/// is fatal.
fn serve(listener: TcpListener, router: axum::Router, limits: Limits, fatal_tx: mpsc::Sender<anyhow::Error>) {
    tokio::spawn(async move {
        if let Err(err) = crate::listener::serve(listener, router, limits).await {
            let _ = fatal_tx.send(anyhow::Error::new(err).context("NMI listener failed")).await;
        }
    });
}

/// Opens the gate and marks `/healthz` Active once every cache has synced (the rules are in
/// by then: they go in before the watches start).
fn spawn_sync(store: KubeStore, readiness: Readiness, health: Health, fatal_tx: mpsc::Sender<anyhow::Error>) {
    tokio::spawn(async move {
        match store.ready().await {
            Ok(()) => {
                readiness.set_ready();
                health.set_active(true);
                tracing::info!("Watch caches synced; serving tokens");
            }
            Err(_) => {
                let _ = fatal_tx.send(anyhow!("watch caches stopped before their first sync")).await;
            }
        }
    });
}

/// The first rule install, then (with `--enable-conntrack-deletion`) forgetting tracked
/// connections to IMDS so that pods' open connections are redirected too. Errors are fatal.
async fn install(rules: &Rules, conntrack: Option<(Ipv4Addr, u16)>) -> anyhow::Result<()> {
    rules.ensure(&Iptables::default()).await?;
    if let Some((ip, port)) = conntrack {
        iptables::delete_conntrack(ip, port).await?;
    }
    tracing::info!(chain = iptables::CHAIN, "iptables rules installed");
    Ok(())
}

/// The periodic rule check. Stopped between passes, so no pass runs after the clean-up.
struct Reconciler {
    stop_tx: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Reconciler {
    /// Re-checks every `period`; any iptables error is fatal, as in the original.
    fn spawn(rules: Rules, period: Duration, fatal_tx: mpsc::Sender<anyhow::Error>) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            if let Err(err) = reconcile(rules, period, stop_rx).await {
                let _ = fatal_tx.send(err).await;
            }
        });
        Self { stop_tx, task }
    }

    /// Stops the loop and waits for a pass in progress to finish.
    async fn stop(self) {
        let _ = self.stop_tx.send(());
        let _ = self.task.await;
    }
}

async fn reconcile(rules: Rules, period: Duration, mut stop_rx: oneshot::Receiver<()>) -> anyhow::Result<()> {
    let ipt = Iptables::default();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop_rx => return Ok(()),
            _ = ticker.tick() => {}
        }
        if rules.ensure(&ipt).await? {
            tracing::warn!(chain = iptables::CHAIN, "iptables rules were altered; repaired");
        }
    }
}

/// After SIGTERM/SIGINT: keep serving through the termination wait, stop the reconciler,
/// then remove the rules as the last step (unless `--keep-rules-on-exit`). The original
/// removes them first and then waits, leaving pods on the node's IMDS for the whole wait.
async fn terminate(
    args: &Args,
    reconciler: Reconciler,
    fatal_rx: &mut mpsc::Receiver<anyhow::Error>,
) -> anyhow::Result<()> {
    let wait = args.termination_wait();
    tracing::info!(wait_secs = wait.as_secs(), "Serving through the termination wait");
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        Some(err) = fatal_rx.recv() => return Err(err),
    }
    reconciler.stop().await;
    if args.keep_rules_on_exit {
        tracing::info!(chain = iptables::CHAIN, "Leaving the iptables rules in place (--keep-rules-on-exit)");
        return Ok(());
    }
    let cleaned = iptables::cleanup(&Iptables::default()).await;
    match &cleaned {
        Ok(()) => tracing::info!(chain = iptables::CHAIN, "iptables rules removed"),
        Err(error) => tracing::error!(%error, "Failed to remove iptables rules"),
    }
    cleaned.context("removing iptables rules")
}
