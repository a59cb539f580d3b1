//! Leader election over two locks, held together: a `coordination.k8s.io/v1` Lease, and the
//! original's Endpoints lock (annotation `control-plane.alpha.kubernetes.io/leader` holding
//! client-go's `LeaderElectionRecord`), so an original MIC still running during a rolling
//! upgrade never acts at the same time as ours. We lead only while holding both.
//!
//! client-go's timing: a holder is presumed alive until `leaseDuration` has passed since we
//! last saw its record change (our own clock, never the record's timestamps); we retry every
//! `retry`, and give up leadership when we could not renew for `renew_deadline`.
//! Locks are always taken in the same order (Endpoints, then Lease), so two of our replicas
//! cannot each hold one lock and wait forever for the other.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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
    /// Lease duration; renew deadline is half of it, retry period a quarter (as the original).
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
    observed: Option<(Record, Instant)>,
}

impl Lock {
    fn new(kind: Kind) -> Self {
        Self { kind, observed: None }
    }

    /// client-go's `tryAcquireOrRenew`: true when we hold the lock afterwards.
    async fn try_acquire_or_renew(&mut self, client: &Client, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some((current, rv)) = get(client, cfg, self.kind).await? else {
            let record = fresh(cfg, now, 0);
            return match create(client, cfg, self.kind, &record).await {
                Ok(()) => {
                    self.observed = Some((record, Instant::now()));
                    Ok(true)
                }
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        if self.observed.as_ref().is_none_or(|(r, _)| *r != current) {
            self.observed = Some((current.clone(), Instant::now()));
        }
        let held_by_other = !current.holder_identity.is_empty() && current.holder_identity != cfg.identity;
        let lease = Duration::from_secs(u64::try_from(current.lease_duration_seconds.max(1)).unwrap_or(1));
        if held_by_other && self.observed.as_ref().is_some_and(|(_, at)| at.elapsed() < lease) {
            return Ok(false);
        }
        let record = if held_by_other || current.holder_identity.is_empty() {
            fresh(cfg, now, current.leader_transitions + 1)
        } else {
            Record { renew_time: Some(Time(now)), lease_duration_seconds: secs(cfg.duration), ..current }
        };
        match update(client, cfg, self.kind, &record, rv).await {
            Ok(()) => {
                self.observed = Some((record, Instant::now()));
                Ok(true)
            }
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn fresh(cfg: &LeaderConfig, now: Timestamp, transitions: i32) -> Record {
    Record {
        holder_identity: cfg.identity.clone(),
        lease_duration_seconds: secs(cfg.duration),
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
/// original does) or `leading_tx` has no receivers. `leading_tx` says whether we lead now.
pub async fn run(client: Client, cfg: LeaderConfig, leading_tx: watch::Sender<bool>) -> Result<(), LeaderError> {
    let retry = cfg.duration / 4;
    let renew_deadline = cfg.duration / 2;
    let mut endpoints = Lock::new(Kind::Endpoints);
    let mut lease = Lock::new(Kind::Lease);
    let mut last_renew: Option<Instant> = None;
    let mut tick = tokio::time::interval(retry.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let held = hold_both(&client, &cfg, &mut endpoints, &mut lease).await;
        let leading = *leading_tx.borrow();
        if held {
            last_renew = Some(Instant::now());
            if !leading {
                tracing::info!(identity = %cfg.identity, lock = %format!("{}/{}", cfg.namespace, cfg.name), "Became leader");
                if leading_tx.send(true).is_err() {
                    return Err(LeaderError::Stopped);
                }
            }
        } else if leading && last_renew.is_none_or(|t| t.elapsed() >= renew_deadline) {
            tracing::error!(identity = %cfg.identity, "Lost leader lease");
            let _ = leading_tx.send(false);
            return Err(LeaderError::Lost(renew_deadline));
        }
        if leading_tx.is_closed() {
            return Err(LeaderError::Stopped);
        }
    }
}

async fn hold_both(client: &Client, cfg: &LeaderConfig, endpoints: &mut Lock, lease: &mut Lock) -> bool {
    match endpoints.try_acquire_or_renew(client, cfg).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(error) => {
            tracing::warn!(%error, "Acquiring or renewing the Endpoints lock failed");
            return false;
        }
    }
    match lease.try_acquire_or_renew(client, cfg).await {
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
