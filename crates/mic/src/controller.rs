//! The loop: level-triggered cycles rebuilt from the caches, woken by watch events and
//! coalesced (a quiet period, bounded by a maximum wait), plus the `--syncRetryDuration`
//! ticker; the drift reconciler on its own ticker. Leadership gates only the writes: a
//! standby keeps its caches warm and decides, but never acts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadpodid_api::AssignedIdentityState;
use tokio::sync::{Notify, watch};

use crate::act::{self, Ctx, NodeIdentities};
use crate::cache::Caches;
use crate::decide::{self, Immutable, Mode};
use crate::view::NodeTarget;

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub mode: Mode,
    pub immutable: Immutable,
    /// `--syncRetryDuration`: a full cycle at least this often.
    pub resync: Duration,
    /// `--identity-assignment-reconcile-interval`.
    pub drift_every: Duration,
    /// A burst of events is coalesced until this long passes without one...
    pub quiet: Duration,
    /// ...but never for longer than this.
    pub max_wait: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            immutable: Immutable::default(),
            resync: Duration::from_secs(3600),
            drift_every: Duration::from_secs(180),
            quiet: Duration::from_millis(200),
            max_wait: Duration::from_secs(1),
        }
    }
}

/// Replaces the ARM client when the cloud config changes (checked before each cycle).
pub type Reload = Box<dyn FnMut() -> Option<Arc<dyn NodeIdentities>> + Send + Sync>;

/// Hook run once when this replica becomes leader, before it acts (the type upgrade).
pub type OnElected = Box<dyn FnMut() -> act::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("watch caches stopped before they were ready")]
    CachesStopped,
    #[error("leader election stopped")]
    LeaderGone,
    #[error("on becoming leader: {0}")]
    Elected(String),
}

/// The running controller.
pub struct Controller {
    pub cfg: LoopConfig,
    pub caches: Caches,
    pub wake: Arc<Notify>,
    pub ctx: Ctx,
    pub reload: Option<Reload>,
    pub on_elected: Option<OnElected>,
    pub leading_rx: watch::Receiver<bool>,
    /// Told when this replica starts doing its job (leading and syncing), for `/healthz`.
    pub set_active: Arc<dyn Fn(bool) + Send + Sync>,
    /// Set once the on-elected hook has run; nothing is written before.
    pub is_elected: bool,
    /// When to retry after a failed cycle, and the backoff that led there.
    pub retry: Option<(Instant, Duration)>,
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

impl Controller {
    /// Runs until leadership is gone for good or a fatal error.
    pub async fn run(mut self) -> Result<(), LoopError> {
        self.caches.ready().await.map_err(|_| LoopError::CachesStopped)?;
        tracing::info!("Caches synced");
        let mut resync = tokio::time::interval(self.cfg.resync);
        let mut drift = tokio::time::interval(self.cfg.drift_every);
        drift.reset();
        let mut cycles: u64 = 0;
        loop {
            let retry = self.retry.map(|(at, _)| at);
            tokio::select! {
                () = self.wake.notified() => self.debounce().await,
                () = sleep_until(retry), if retry.is_some() => {}
                _ = resync.tick() => {}
                _ = drift.tick() => {
                    if self.leading() && self.is_elected { self.reconcile_drift().await; }
                    continue;
                }
                changed = self.leading_rx.changed() => {
                    changed.map_err(|_| LoopError::LeaderGone)?;
                }
            }
            if self.leading() && !self.is_elected {
                self.elected().await?;
            }
            cycles += 1;
            self.cycle(cycles).await;
        }
    }

    fn leading(&self) -> bool {
        *self.leading_rx.borrow()
    }

    async fn elected(&mut self) -> Result<(), LoopError> {
        self.is_elected = true;
        self.ctx.metrics.new_leader_election_count.inc();
        if let Some(hook) = self.on_elected.as_mut() {
            hook().await.map_err(LoopError::Elected)?;
        }
        (self.set_active)(true);
        Ok(())
    }

    async fn debounce(&self) {
        let start = Instant::now();
        while start.elapsed() < self.cfg.max_wait {
            let left = self.cfg.max_wait.saturating_sub(start.elapsed()).min(self.cfg.quiet);
            if tokio::time::timeout(left, self.wake.notified()).await.is_err() {
                return;
            }
        }
    }

    async fn cycle(&mut self, n: u64) {
        let started = Instant::now();
        if let Some(new) = self.reload.as_mut().and_then(|r| r()) {
            tracing::info!("Cloud config changed; ARM client re-initialised");
            self.ctx.arm = new;
        }
        let snap = self.caches.snapshot();
        let desired = decide::desired(&snap.pods, &snap.bindings, &snap.identities, self.cfg.mode);
        let plan = decide::plan(&desired, &snap.current, &snap.nodes, &self.cfg.immutable);
        let leading = self.leading();
        tracing::debug!(
            cycle = n,
            leading,
            pods = snap.pods.len(),
            desired = desired.len(),
            current = snap.current.len(),
            targets = plan.targets.len(),
            orphans = plan.orphans.len(),
            waiting = plan.waiting.len(),
            "Planned"
        );
        if plan.is_empty() || !leading {
            self.retry = None;
            if n.is_multiple_of(1000) {
                self.record_cycle(started);
            }
            return;
        }
        let outcome = act::apply(plan, &self.ctx, &snap.pod_uids).await;
        self.schedule_retry(outcome.failed, outcome.retry_after);
        tracing::info!(
            cycle = n,
            assigned = outcome.assigned,
            deleted = outcome.deleted,
            failed = outcome.failed,
            arm_writes = outcome.arm_writes,
            api_writes = outcome.api_writes,
            duration_ms = started.elapsed().as_millis() as u64,
            "Sync cycle done"
        );
        self.record_cycle(started);
        if !self.caches.caught_up(&outcome.written, Duration::from_secs(10)).await {
            tracing::warn!("Cache did not show all writes within 10s");
        }
    }

    /// After failures, another cycle comes after an exponential backoff (1 s doubling to 60 s),
    /// never earlier than ARM's `Retry-After`; a clean cycle clears it.
    fn schedule_retry(&mut self, failed: usize, retry_after: Option<Duration>) {
        if failed == 0 {
            self.retry = None;
            return;
        }
        let backoff = self.retry.map_or(Duration::from_secs(1), |(_, b)| (b * 2).min(Duration::from_secs(60)));
        let wait = backoff.max(retry_after.unwrap_or_default());
        tracing::warn!(failed, retry_in_ms = wait.as_millis() as u64, "Cycle had failures; retrying");
        self.retry = Some((Instant::now() + wait, backoff));
    }

    fn record_cycle(&self, started: Instant) {
        self.ctx.metrics.cycle_count.inc();
        self.ctx.metrics.cycle_duration.observe(started.elapsed().as_secs_f64());
    }

    /// §2.8: re-adds every `Assigned` user-assigned identity missing on its VM or scale set.
    /// Never removes. A node that cannot be resolved aborts the run, as in the original.
    async fn reconcile_drift(&self) {
        let snap = self.caches.snapshot();
        let mut want: BTreeMap<&NodeTarget, BTreeSet<String>> = BTreeMap::new();
        for a in &snap.current {
            if a.state != AssignedIdentityState::Assigned || !a.is_user_assigned() {
                continue;
            }
            let Some(target) = snap.nodes.get(&a.node) else {
                tracing::warn!(node = %a.node, "Drift reconciler: node not found; skipping this run");
                return;
            };
            want.entry(target).or_default().insert(a.resource_id.to_ascii_lowercase());
        }
        for (target, ids) in want {
            let have: BTreeSet<String> = match self.ctx.arm.identities(target).await {
                Ok(have) => have.iter().map(|i| i.to_ascii_lowercase()).collect(),
                Err(error) => {
                    tracing::warn!(%target, %error, "Drift reconciler: reading identities failed");
                    continue;
                }
            };
            let missing: Vec<String> = ids.difference(&have).cloned().collect();
            if missing.is_empty() {
                continue;
            }
            tracing::info!(%target, missing = missing.len(), "Drift reconciler: re-adding identities missing on Azure");
            if let Err(error) = self.ctx.arm.update(target, &missing, &[]).await {
                tracing::error!(%target, %error, "Drift reconciler: re-adding identities failed");
            }
        }
    }
}
