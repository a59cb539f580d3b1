//! The loop: level-triggered cycles rebuilt from the caches, woken by watch events and
//! coalesced (a quiet period, bounded by a maximum wait), plus the `--syncRetryDuration`
//! ticker; the drift reconciler on its own ticker. Leadership gates only the writes: a
//! standby keeps its caches warm and decides, but never acts. A leader that stops leading in
//! the middle of a cycle abandons it at once (every write is gated as well, see `gate`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadpodid_api::AssignedIdentityState;
use aadpodid_runtime::Health;
use tokio::sync::Notify;

use crate::act::{self, Ctx};
use crate::arm::ArmSource;
use crate::cache::Caches;
use crate::decide::{self, Immutable, Mode};
use crate::events::redact_guids;
use crate::gate::{GatedArm, LeaderView};
use crate::upgrade::{TypeUpgrade, UpgradeError};
use crate::view::VmTarget;

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

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("watch caches stopped before they were ready")]
    CachesStopped,
    #[error("leader election stopped")]
    LeaderGone,
    #[error("on becoming leader")]
    Elected(#[source] UpgradeError),
}

/// The running controller.
pub struct Controller {
    cfg: LoopConfig,
    caches: Caches,
    wake: Arc<Notify>,
    ctx: Ctx,
    /// Rebuilds the ARM client when the cloud config file changes (checked before each cycle).
    arm_source: Option<ArmSource>,
    /// Run once when this replica becomes leader, before it acts.
    upgrade: Option<TypeUpgrade>,
    leader: LeaderView,
    /// `/healthz`: Active once this replica leads and has run its first cycle's preparations.
    health: Health,
    /// Set once the on-elected work has run; nothing is written before.
    is_elected: bool,
    /// When to retry after a failed cycle, and the backoff that led there.
    retry: Option<(Instant, Duration)>,
}

/// The shortest period of the loop's tickers (a zero period is not a period).
const MIN_PERIOD: Duration = Duration::from_millis(100);
/// The first wait after a failed cycle; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest wait for ARM's `Retry-After` before the next cycle (the ARM client caps it too).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(600);

/// When to run the next cycle after one with `failed` failures: an exponential backoff (1 s
/// doubling to 60 s), never earlier than ARM's `Retry-After` (itself capped), `None` after a
/// clean cycle. Returns the instant and the backoff that led there.
pub fn next_retry(
    previous_backoff: Option<Duration>,
    failed: usize,
    retry_after: Option<Duration>,
    now: Instant,
) -> Option<(Instant, Duration)> {
    if failed == 0 {
        return None;
    }
    let backoff = previous_backoff.map_or(FIRST_BACKOFF, |b| b.saturating_mul(2).clamp(FIRST_BACKOFF, MAX_BACKOFF));
    let wait = backoff.max(retry_after.unwrap_or_default().min(MAX_RETRY_WAIT));
    Some((now.checked_add(wait).unwrap_or(now), backoff))
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

impl Controller {
    /// A controller deciding from `caches`, woken by `wake`, acting through `ctx` while
    /// `leader` says so; no config reload, no type upgrade, its own health flag.
    pub fn new(cfg: LoopConfig, caches: Caches, wake: Arc<Notify>, ctx: Ctx, leader: LeaderView) -> Self {
        Self {
            cfg,
            caches,
            wake,
            ctx,
            arm_source: None,
            upgrade: None,
            leader,
            health: Health::new(),
            is_elected: false,
            retry: None,
        }
    }

    /// Re-reads the cloud config from `source` when its file changes; new clients are gated
    /// by the same leadership as the first.
    pub fn with_arm_source(mut self, source: ArmSource) -> Self {
        self.arm_source = Some(source);
        self
    }

    /// Runs the type upgrade once this replica leads, before anything else.
    pub fn with_type_upgrade(mut self, upgrade: TypeUpgrade) -> Self {
        self.upgrade = Some(upgrade);
        self
    }

    /// Reports Active on `health` once leading.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Runs until leadership is gone for good or a fatal error.
    pub async fn run(mut self) -> Result<(), LoopError> {
        self.caches.ready().await.map_err(|_| LoopError::CachesStopped)?;
        tracing::info!("Caches synced");
        let mut resync = tokio::time::interval(self.cfg.resync.max(MIN_PERIOD));
        let mut drift = tokio::time::interval(self.cfg.drift_every.max(MIN_PERIOD));
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
                changed = self.leader.changed() => {
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
        self.leader.is_leading()
    }

    async fn elected(&mut self) -> Result<(), LoopError> {
        self.is_elected = true;
        self.ctx.metrics.new_leader_election_count.inc();
        if let Some(upgrade) = &self.upgrade {
            upgrade.run().await.map_err(LoopError::Elected)?;
        }
        self.health.set_active(true);
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
        if let Some(new) = self.arm_source.as_mut().and_then(ArmSource::reload) {
            tracing::info!("Cloud config changed; ARM client re-initialised");
            self.ctx.arm = GatedArm::wrap(new, self.leader.clone());
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
        let Ok(outcome) = self.leader.while_leading(act::apply(plan, &self.ctx, &snap.pod_uids)).await else {
            tracing::warn!(cycle = n, "Leadership lost during the cycle; abandoned its remaining writes");
            self.retry = None;
            return;
        };
        self.retry = next_retry(self.retry.map(|(_, b)| b), outcome.failed, outcome.retry_after, Instant::now());
        if let Some((at, _)) = self.retry {
            let retry_in_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64;
            tracing::warn!(failed = outcome.failed, retry_in_ms, "Cycle had failures; retrying");
        }
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

    fn record_cycle(&self, started: Instant) {
        self.ctx.metrics.cycle_count.inc();
        self.ctx.metrics.cycle_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Re-adds identities missing on Azure while this replica leads; abandoned if it stops.
    async fn reconcile_drift(&self) {
        if self.leader.while_leading(self.readd_missing()).await.is_err() {
            tracing::warn!("Leadership lost during the drift reconciler; abandoned it");
        }
    }

    /// Re-adds every `Assigned` user-assigned identity missing on its VM or scale set.
    /// Never removes. A node that cannot be resolved aborts the run, as in the original.
    async fn readd_missing(&self) {
        let snap = self.caches.snapshot();
        let mut want: BTreeMap<&VmTarget, BTreeSet<String>> = BTreeMap::new();
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
                Ok(have) => have.user_assigned.iter().map(|i| i.to_ascii_lowercase()).collect(),
                Err(error) => {
                    tracing::warn!(%target, error = %redact_guids(&error.to_string()), "Drift reconciler: reading identities failed");
                    continue;
                }
            };
            let missing: Vec<String> = ids.difference(&have).cloned().collect();
            if missing.is_empty() {
                continue;
            }
            tracing::info!(%target, missing = missing.len(), "Drift reconciler: re-adding identities missing on Azure");
            if let Err(error) = self.ctx.arm.update_user_msi(target, &missing, &[]).await {
                tracing::error!(%target, error = %redact_guids(&error.to_string()), "Drift reconciler: re-adding identities failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn retry_waits_back_off_and_honour_retry_after_within_a_cap() {
        let now = Instant::now();
        let wait = |prev, failed, ra| next_retry(prev, failed, ra, now).map(|(at, b)| (at - now, b));
        assert_eq!(wait(None, 0, Some(30 * S)), None, "a clean cycle needs no retry");
        assert_eq!(wait(None, 1, None), Some((S, S)));
        assert_eq!(wait(Some(S), 1, None), Some((2 * S, 2 * S)));
        assert_eq!(wait(Some(40 * S), 1, None), Some((60 * S, 60 * S)));
        assert_eq!(wait(Some(60 * S), 1, None), Some((60 * S, 60 * S)));
        assert_eq!(wait(None, 1, Some(30 * S)), Some((30 * S, S)));
        assert_eq!(wait(None, 3, Some(MAX_RETRY_WAIT * 2)), Some((MAX_RETRY_WAIT, S)));
    }

    #[test]
    fn absurd_retry_after_and_backoff_values_never_panic() {
        let now = Instant::now();
        for ra in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::ZERO] {
            for prev in [None, Some(Duration::MAX), Some(Duration::ZERO)] {
                let (at, backoff) = next_retry(prev, 1, Some(ra), now).expect("a retry");
                assert!(at - now >= FIRST_BACKOFF && at - now <= MAX_RETRY_WAIT, "{ra:?} {prev:?}");
                assert!((FIRST_BACKOFF..=MAX_BACKOFF).contains(&backoff));
            }
        }
    }
}
