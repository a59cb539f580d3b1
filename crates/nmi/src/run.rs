//! Start-up and shutdown in the original's order (upstream §3.2): kubenet guard, watches and
//! their first sync, probe and metrics servers, the NMI listener, then the iptables loop that
//! marks `/healthz` Active after its first pass. On SIGTERM/SIGINT: remove the rules, wait,
//! exit. Wiring only; every decision lives in the other modules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aadpodid_azure::HttpOptions;
use aadpodid_azure::token::{AadClient, ImdsClient};
use aadpodid_runtime::{Health, LogFormat};
use anyhow::{Context, bail};
use tokio::sync::mpsc;

use crate::args::Args;
use crate::iptables::{self, Rules};
use crate::metrics::Metrics;
use crate::select::RetryPolicy;
use crate::server::{self, AppState, Config, Mode};
use crate::store::{KubeSecrets, KubeStore};
use crate::tokens::AzureTokens;

/// Runs NMI until a termination signal, then cleans up. An error is fatal (exit 1).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let format: LogFormat = args.log_format.parse()?;
    aadpodid_runtime::init_tracing(format, args.klog.v)?;
    let mode = parse_mode(&args.operation_mode)?;
    preflight(&args, mode)?;
    tracing::info!(node = %args.node, mode = ?mode, version = aadpodid_runtime::VERSION, "Starting NMI");

    let agent = aadpodid_runtime::user_agent("NMI", Some(&args.custom_user_agent));
    let client = aadpodid_runtime::kube_client(args.kubeconfig.as_deref(), &agent).await?;
    let (store, _watches) = KubeStore::start(&client, &args.node, mode, args.enable_scale_features);
    tokio::select! {
        ready = store.ready() => ready.context("watch caches stopped before their first sync")?,
        () = aadpodid_runtime::shutdown_signal() => return Ok(()),
    }
    tracing::info!("Watch caches synced");

    let metrics = Metrics::new()?;
    let health = Health::new();
    spawn_admin(&args, health.clone(), metrics.clone());
    let tokens = Arc::new(AzureTokens::new(
        ImdsClient::new(&format!("http://{}:{}", args.metadata_ip, args.metadata_port))?,
        AadClient::new(&http_options(&args)?)?,
        Arc::new(KubeSecrets(client)),
        metrics.clone(),
    ));
    let state = AppState::new(config(&args, mode), Arc::new(store), tokens, metrics);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<anyhow::Error>(4);
    spawn_listener(&args, state, fatal_tx.clone()).await?;
    spawn_iptables(&args, health, fatal_tx);

    let outcome = tokio::select! {
        () = aadpodid_runtime::shutdown_signal() => Ok(()),
        Some(err) = fatal_rx.recv() => Err(err),
    };
    shutdown(Duration::from_secs(args.termination_wait_sec)).await.and(outcome)
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
        mic_namespace: args.mic_namespace.clone(),
        retry: RetryPolicy {
            created: args.retry_attempts_for_created,
            assigned: args.retry_attempts_for_assigned,
            interval_secs: args.find_identity_retry_interval,
        },
        retry_interval: Duration::from_secs(args.find_identity_retry_interval),
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

/// Binds the NMI listener before any rule points at it, then serves in the background.
async fn spawn_listener(args: &Args, state: AppState, fatal: mpsc::Sender<anyhow::Error>) -> anyhow::Result<()> {
    let addr = SocketAddr::from((args.listen_address, args.nmi_port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "Listening");
    let limits = state.config.limits.clone();
    let router = server::router(state);
    tokio::spawn(async move {
        if let Err(err) = crate::listener::serve(listener, router, limits).await {
            let _ = fatal.send(anyhow::Error::new(err).context("NMI listener failed")).await;
        }
    });
    Ok(())
}

/// Installs the rules, marks the probe Active, then re-checks every interval. Any iptables
/// error is fatal, as in the original.
fn spawn_iptables(args: &Args, health: Health, fatal: mpsc::Sender<anyhow::Error>) {
    let rules = Rules::new(args.metadata_ip, args.metadata_port, args.listen_address, args.nmi_port);
    let period = Duration::from_secs(args.ipt_update_interval_sec.max(1));
    let conntrack = args.enable_conntrack_deletion.then_some((args.metadata_ip, args.metadata_port));
    tokio::spawn(async move {
        let result = iptables_loop(rules, period, conntrack, health).await;
        if let Err(err) = result {
            let _ = fatal.send(err).await;
        }
    });
}

async fn iptables_loop(
    rules: Rules,
    period: Duration,
    conntrack: Option<(std::net::Ipv4Addr, u16)>,
    health: Health,
) -> anyhow::Result<()> {
    let ipt = iptables::Iptables::default();
    rules.ensure(&ipt).await?;
    if let Some((ip, port)) = conntrack {
        iptables::delete_conntrack(ip, port).await?;
    }
    health.set_active(true);
    tracing::info!(chain = iptables::CHAIN, "iptables rules installed");
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if rules.ensure(&ipt).await? {
            tracing::warn!(chain = iptables::CHAIN, "iptables rules were altered; repaired");
        }
    }
}

/// The original's `handleTermination`: remove the rules, wait, report.
async fn shutdown(wait: Duration) -> anyhow::Result<()> {
    let cleaned = iptables::cleanup(&iptables::Iptables::default()).await;
    match &cleaned {
        Ok(()) => tracing::info!(chain = iptables::CHAIN, "iptables rules removed"),
        Err(error) => tracing::error!(%error, "Failed to remove iptables rules"),
    }
    tokio::time::sleep(wait).await;
    cleaned.context("removing iptables rules")
}
