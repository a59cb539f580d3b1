//! Leader election over two locks, held together: a `coordination.k8s.io/v1` Lease, and the
//! original's Endpoints lock (annotation `control-plane.alpha.kubernetes.io/leader` holding
//! client-go's `LeaderElectionRecord`), so an original MIC still running during a rolling
//! upgrade never acts at the same time as ours. We lead only while holding both.
//!
//! client-go's timing: a holder is presumed alive until `leaseDuration` has passed since we
//! last saw its record change (our own clock, never the record's timestamps); we retry every
//! `retry`. A leader leads only until `renew_deadline` after the start of its last successful
//! renewal, and each attempt is abandoned at that instant, so a hung connection cannot keep a
//! replica leading; the rules are in [`crate::lease`], the write gates in [`crate::gate`].
//! Locks are always taken in the same order (Endpoints, then Lease), so two of our replicas
//! cannot each hold one lock and wait forever for the other.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::gate::LeaderPublisher;
use crate::lease::{self, Next, Observed, Timing, Verdict};

/// Annotation carrying the record on the original's Endpoints lock.
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// Why leadership ended or could not be sought.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost leader lease: could not renew within {0:?}")]
    Lost(Duration),
    #[error("leader election stopped")]
    Stopped,
}

/// Where the locks live and who we are.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// `--leader-election-duration`; see [`Timing::from_duration`] for what is derived from it.
    pub duration: Duration,
}

/// client-go's `LeaderElectionRecord`, as stored in the Endpoints annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default)]
    pub holder_identity: String,
    #[serde(default)]
    pub lease_duration_seconds: i32,
    #[serde(default)]
    pub acquire_time: Option<Time>,
    #[serde(default)]
    pub renew_time: Option<Time>,
    #[serde(default)]
    pub leader_transitions: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Endpoints,
    Lease,
}

/// One lock and what we last observed on it.
struct Lock {
    kind: Kind,
    observed: Option<Observed>,
}

impl Lock {
    fn new(kind: Kind) -> Self {
        Self { kind, observed: None }
    }

    /// client-go's `tryAcquireOrRenew`: true when we hold the lock afterwards. The rule is
    /// [`lease::verdict`]; this only reads and writes.
    async fn try_acquire_or_renew(
        &mut self,
        client: &Client,
        cfg: &LeaderConfig,
        timing: &Timing,
    ) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some((current, rv)) = get(client, cfg, self.kind).await? else {
            let record = fresh(cfg, timing, now, 0);
            return match create(client, cfg, self.kind, &record).await {
                Ok(()) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let seen = lease::observe(
            self.observed.as_ref(),
            &current.holder_identity,
            current.lease_duration_seconds,
            &rv,
            Instant::now(),
        );
        let verdict = lease::verdict(&seen, &cfg.identity, Instant::now());
        self.observed = Some(seen);
        let record = match verdict {
            Verdict::Wait => return Ok(false),
            Verdict::Take => fresh(cfg, timing, now, current.leader_transitions + 1),
            Verdict::Renew => {
                Record { renew_time: Some(Time(now)), lease_duration_seconds: timing.lease_seconds(), ..current }
            }
        };
        match update(client, cfg, self.kind, &record, rv).await {
            Ok(()) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn fresh(cfg: &LeaderConfig, timing: &Timing, now: Timestamp, transitions: i32) -> Record {
    Record {
        holder_identity: cfg.identity.clone(),
        lease_duration_seconds: timing.lease_seconds(),
        acquire_time: Some(Time(now)),
        renew_time: Some(Time(now)),
        leader_transitions: transitions,
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

async fn get(client: &Client, cfg: &LeaderConfig, kind: Kind) -> Result<Option<(Record, String)>, kube::Error> {
    match kind {
        Kind::Endpoints => {
            let api: Api<Endpoints> = Api::namespaced(client.clone(), &cfg.namespace);
            Ok(api.get_opt(&cfg.name).await?.map(|ep| {
                let record = ep.annotations().get(LEADER_ANNOTATION).and_then(|a| serde_json::from_str(a).ok());
                (record.unwrap_or_default(), ep.resource_version().unwrap_or_default())
            }))
        }
        Kind::Lease => {
            let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
            Ok(api.get_opt(&cfg.name).await?.map(|l| {
                let rv = l.resource_version().unwrap_or_default();
                (lease_record(l.spec.unwrap_or_default()), rv)
            }))
        }
    }
}

fn lease_record(s: LeaseSpec) -> Record {
    Record {
        holder_identity: s.holder_identity.unwrap_or_default(),
        lease_duration_seconds: s.lease_duration_seconds.unwrap_or_default(),
        acquire_time: s.acquire_time.map(|t| Time(t.0)),
        renew_time: s.renew_time.map(|t| Time(t.0)),
        leader_transitions: s.lease_transitions.unwrap_or_default(),
    }
}

fn lease_spec(r: &Record) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(r.holder_identity.clone()),
        lease_duration_seconds: Some(r.lease_duration_seconds),
        acquire_time: r.acquire_time.as_ref().map(|t| MicroTime(t.0)),
        renew_time: r.renew_time.as_ref().map(|t| MicroTime(t.0)),
        lease_transitions: Some(r.leader_transitions),
        ..Default::default()
    }
}

fn meta(cfg: &LeaderConfig, kind: Kind, record: &Record, rv: Option<String>) -> ObjectMeta {
    let annotations = (kind == Kind::Endpoints)
        .then(|| serde_json::to_string(record).ok())
        .flatten()
        .map(|json| [(LEADER_ANNOTATION.to_owned(), json)].into());
    ObjectMeta {
        name: Some(cfg.name.clone()),
        namespace: Some(cfg.namespace.clone()),
        resource_version: rv,
        annotations,
        ..Default::default()
    }
}

async fn create(client: &Client, cfg: &LeaderConfig, kind: Kind, record: &Record) -> Result<(), kube::Error> {
    let pp = PostParams::default();
    match kind {
        Kind::Endpoints => {
            let ep = Endpoints { metadata: meta(cfg, kind, record, None), ..Default::default() };
            Api::<Endpoints>::namespaced(client.clone(), &cfg.namespace).create(&pp, &ep).await.map(|_| ())
        }
        Kind::Lease => {
            let l = Lease { metadata: meta(cfg, kind, record, None), spec: Some(lease_spec(record)) };
            Api::<Lease>::namespaced(client.clone(), &cfg.namespace).create(&pp, &l).await.map(|_| ())
        }
    }
}

async fn update(
    client: &Client,
    cfg: &LeaderConfig,
    kind: Kind,
    record: &Record,
    rv: String,
) -> Result<(), kube::Error> {
    let pp = PostParams::default();
    match kind {
        Kind::Endpoints => {
            let api = Api::<Endpoints>::namespaced(client.clone(), &cfg.namespace);
            // Keep whatever else is on the object; only the annotation is ours.
            let mut ep = api.get(&cfg.name).await?;
            if ep.resource_version().as_deref() != Some(rv.as_str()) {
                return Err(kube::Error::Api(Box::new(
                    kube::core::Status::failure("changed", "Conflict").with_code(409),
                )));
            }
            if let Ok(json) = serde_json::to_string(record) {
                ep.annotations_mut().insert(LEADER_ANNOTATION.to_owned(), json);
            }
            api.replace(&cfg.name, &pp, &ep).await.map(|_| ())
        }
        Kind::Lease => {
            let l = Lease { metadata: meta(cfg, kind, record, Some(rv)), spec: Some(lease_spec(record)) };
            Api::<Lease>::namespaced(client.clone(), &cfg.namespace).replace(&cfg.name, &pp, &l).await.map(|_| ())
        }
    }
}

/// Runs the election until leadership is lost (an error: the process should exit, as the
/// original does) or no [`crate::gate::LeaderView`] is left. Each attempt has a deadline
/// ([`lease::attempt_deadline`]); its outcome is judged by [`lease::after_attempt`].
pub async fn run(client: Client, cfg: LeaderConfig, publisher: LeaderPublisher) -> Result<(), LeaderError> {
    let timing = Timing::from_duration(cfg.duration);
    let mut locks = (Lock::new(Kind::Endpoints), Lock::new(Kind::Lease));
    let mut tick = tokio::time::interval(timing.retry);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let until = publisher.until();
        let started = Instant::now();
        let deadline = lease::attempt_deadline(until, started, &timing);
        let held = match tokio::time::timeout_at(deadline, hold_both(&client, &cfg, &timing, &mut locks)).await {
            Ok(held) => held,
            Err(_) => {
                let waited_ms = deadline.saturating_duration_since(started).as_millis() as u64;
                tracing::warn!(identity = %cfg.identity, waited_ms, "Acquiring or renewing the locks timed out");
                false
            }
        };
        match lease::after_attempt(until, held, started, Instant::now(), &timing) {
            Next::Leading(new_until) => {
                if until.is_none() {
                    tracing::info!(identity = %cfg.identity, lock = %format!("{}/{}", cfg.namespace, cfg.name), "Became leader");
                }
                if !publisher.publish(Some(new_until)) {
                    return Err(LeaderError::Stopped);
                }
            }
            Next::Follower => {
                if !publisher.publish(None) {
                    return Err(LeaderError::Stopped);
                }
            }
            Next::Lost => {
                tracing::error!(identity = %cfg.identity, renew_deadline_ms = timing.renew_deadline.as_millis() as u64, "Lost leader lease");
                publisher.publish(None);
                return Err(LeaderError::Lost(timing.renew_deadline));
            }
        }
    }
}

async fn hold_both(client: &Client, cfg: &LeaderConfig, timing: &Timing, locks: &mut (Lock, Lock)) -> bool {
    let (endpoints, lease) = locks;
    match endpoints.try_acquire_or_renew(client, cfg, timing).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(error) => {
            tracing::warn!(%error, "Acquiring or renewing the Endpoints lock failed");
            return false;
        }
    }
    match lease.try_acquire_or_renew(client, cfg, timing).await {
        Ok(held) => held,
        Err(error) => {
            tracing::warn!(%error, "Acquiring or renewing the Lease failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_serialises_like_client_go() {
        let t: Timestamp = "2024-01-02T03:04:05Z".parse().unwrap();
        let r = Record {
            holder_identity: "mic-1".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(Time(t)),
            renew_time: Some(Time(t)),
            leader_transitions: 2,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"holderIdentity":"mic-1","leaseDurationSeconds":15,"acquireTime":"2024-01-02T03:04:05Z","renewTime":"2024-01-02T03:04:05Z","leaderTransitions":2}"#
        );
    }

    #[test]
    fn client_go_records_are_read() {
        let r: Record = serde_json::from_str(
            r#"{"holderIdentity":"mic-abc","leaseDurationSeconds":15,"acquireTime":"2021-06-01T10:00:00Z","renewTime":"2021-06-01T10:05:00Z","leaderTransitions":0}"#,
        )
        .unwrap();
        assert_eq!(r.holder_identity, "mic-abc");
        assert_eq!(lease_record(lease_spec(&r)), r);
    }
}
