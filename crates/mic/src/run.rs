//! Wiring: flags and environment in, servers, leader election, caches and the loop out.
//! Decides nothing; every piece it starts lives in its own module.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aadpodid_runtime::{Health, KubeTimeouts, metrics_router, probe_router, serve};
use anyhow::{Context, bail};
use tokio::sync::{Notify, watch};

use crate::act::Ctx;
use crate::args::Args;
use crate::controller::{Controller, LoopConfig, LoopError};
use crate::decide::{Immutable, Mode};
use crate::env::Env;
use crate::events::{self, Recorder};
use crate::gate::{self, GatedArm, LeaderPublisher, LeaderView, WriteGateLayer};
use crate::leader::{self, LeaderConfig};
use crate::lease::Timing;
use crate::metrics::Metrics;
use crate::upgrade::{TypeUpgrade, UpgradeConfig};
use crate::{arm, cache};

/// Runs MIC until SIGTERM/SIGINT, a lost leadership or a fatal error.
pub async fn run(args: Args) -> anyhow::Result<()> {
    run_until(args, Env::from_process(), aadpodid_runtime::shutdown_signal()).await
}

/// Runs MIC with an explicit environment until `shutdown` completes.
pub async fn run_until(
    args: Args,
    env: Env,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(namespace) = env.get("MIC_POD_NAMESPACE").map(str::to_owned) else {
        bail!("MIC_POD_NAMESPACE must be set to the namespace MIC runs in");
    };
    if args.version {
        println!("MIC Version: {v} - NMI Version: {v} - Commit: - Date:", v = aadpodid_runtime::VERSION);
        return Ok(());
    }
    if args.enable_scale_features {
        tracing::info!("--enableScaleFeatures is deprecated and has no effect on MIC");
    }
    for (flag, given, used) in args.adjusted_durations() {
        tracing::warn!(
            flag,
            given_ms = given.as_millis() as u64,
            used_ms = used.as_millis() as u64,
            "Duration flag out of range; using the nearest allowed value"
        );
    }
    let clients = Clients::build(&args).await?;
    let metrics = Metrics::new().context("registering metrics")?;
    let source = arm::ArmSource::load(&args, &env, &metrics).context("initialising the cloud provider")?;
    let immutable =
        Immutable::new(args.immutable_user_msis.split(',').map(str::to_owned).chain(source.cluster_identity()));
    let health = Health::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_servers(&args, &health, &metrics, &shutdown_rx);

    let cfg = LeaderConfig {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_name.clone(),
        identity: args.leader_election_instance.clone(),
        duration: args.leader_election_duration,
    };
    let mut election = tokio::spawn(leader::run(clients.lease.clone(), cfg, clients.publisher));
    let _abort_election = AbortOnDrop(election.abort_handle());

    let wake = Arc::new(Notify::new());
    let (recorder, event_sender) = Recorder::new(clients.write.clone(), args.leader_election_instance.clone());
    let _abort_event_sender = AbortOnDrop(tokio::spawn(event_sender).abort_handle());
    let (report_undecodable, reporter) = events::undecodable_reporter(recorder.clone(), clients.leader.clone());
    let _abort_reporter = AbortOnDrop(tokio::spawn(reporter).abort_handle());
    let (caches, watches) = cache::start(&clients.watch, &wake, &report_undecodable);
    let _abort_watches: Vec<AbortOnDrop> = watches.iter().map(|w| AbortOnDrop(w.abort_handle())).collect();
    let force_namespaced = args.force_namespaced || env.get("FORCENAMESPACED") == Some("true");
    let cfg = LoopConfig {
        mode: Mode { force_namespaced },
        immutable,
        resync: args.sync_period(),
        drift_every: args.reconcile_period(),
        ..LoopConfig::default()
    };
    let ctx = Ctx {
        client: clients.write.clone(),
        arm: GatedArm::wrap(source.current(), clients.leader.clone()),
        events: recorder,
        metrics,
        batch: usize::try_from(args.create_delete_batch.max(1)).unwrap_or(20),
    };
    let controller = Controller::new(cfg, caches, wake, ctx, clients.leader)
        .with_arm_source(source)
        .with_type_upgrade(type_upgrade(&args, clients.write, namespace))
        .with_health(health);
    let result = tokio::select! {
        r = controller.run() => match r {
            // The election ended (its publisher is gone): its own outcome says why.
            Err(LoopError::LeaderGone) => election_outcome((&mut election).await),
            r => r.context("controller loop"),
        },
        r = &mut election => election_outcome(r),
        () = shutdown => { tracing::info!("Shutting down"); Ok(()) }
    };
    let _ = shutdown_tx.send(true);
    result
}

fn election_outcome(r: Result<Result<(), leader::LeaderError>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(Err(e)) => Err(anyhow::Error::new(e)),
        Ok(Ok(())) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("leader election task")),
    }
}

/// MIC's Kubernetes clients, one connection pool each: watches may stay silent for minutes,
/// requests may not, and the election's own requests must fail within its renew deadline.
/// Every write goes through `write`, which sends it only while this replica leads.
struct Clients {
    watch: kube::Client,
    write: kube::Client,
    lease: kube::Client,
    publisher: LeaderPublisher,
    leader: LeaderView,
}

impl Clients {
    async fn build(args: &Args) -> anyhow::Result<Self> {
        let ua = aadpodid_runtime::user_agent("MIC", Some(args.custom_user_agent.as_str()).filter(|s| !s.is_empty()));
        let kubeconfig = PathBuf::from(&args.kubeconfig);
        let config = aadpodid_runtime::kube_config(Some(kubeconfig.as_path()), &ua)
            .await
            .context("building the Kubernetes client")?;
        let build = |timeouts: KubeTimeouts| {
            kube::client::ClientBuilder::try_from(timeouts.apply(config.clone()))
                .context("building the Kubernetes client")
        };
        let (publisher, leader) = gate::channel();
        let renew_deadline = Timing::from_duration(args.leader_election_duration).renew_deadline;
        Ok(Self {
            watch: build(KubeTimeouts::WATCH)?.build(),
            write: build(KubeTimeouts::REQUEST)?.with_layer(&WriteGateLayer(leader.clone())).build(),
            lease: build(KubeTimeouts::within(renew_deadline))?.build(),
            publisher,
            leader,
        })
    }
}

/// Stops a spawned task when MIC stops, however it stops (including a dropped future in tests).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn_servers(args: &Args, health: &Health, metrics: &Metrics, shutdown: &watch::Receiver<bool>) {
    let servers = [
        (args.http_probe_port, probe_router(health.clone()), "probe"),
        (args.prometheus_port, metrics_router(metrics.registry.clone()), "metrics"),
    ];
    for (port, router, what) in servers {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let mut rx = shutdown.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(error) = serve(addr, router, stop).await {
                tracing::error!(%error, %addr, server = what, "Server failed");
            }
        });
    }
}

fn type_upgrade(args: &Args, client: kube::Client, namespace: String) -> TypeUpgrade {
    let cfg = UpgradeConfig {
        namespace,
        config_map: args.config_map_name.clone(),
        key: args.type_upgrade_status_key.clone(),
        version: aadpodid_runtime::VERSION.to_owned(),
    };
    TypeUpgrade { client, cfg, enabled: args.enable_type_upgrade }
}
