//! Kubernetes Events as the original's client-go recorder writes them: core/v1 Events named
//! `<object>.<hex nanos>`, source component `aadpodidentity.k8s.io`, with client-go's spam
//! filter (a burst of 25 per object, then one per 5 minutes) so a burst of assignments on one
//! binding cannot flood the API server. Sent in the background from a bounded queue; best
//! effort: a failed or overflowing event is logged, never retried.
//!
//! Events are read by whoever may read a namespace's events, so every message is scrubbed here:
//! GUIDs (client, principal, tenant and subscription IDs) are redacted and Azure resource IDs
//! replaced, whatever the caller put in (error texts from the API server or ARM included).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aadpodid_runtime::decoded::OnUndecodable;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::gate::LeaderView;

/// The original's event source component.
pub const COMPONENT: &str = "aadpodidentity.k8s.io";

/// The original's reason strings (with spaces).
pub mod reason {
    pub const BINDING_APPLIED: &str = "binding applied";
    pub const BINDING_APPLY_ERROR: &str = "binding apply error";
    pub const BINDING_REMOVED: &str = "binding removed";
    pub const BINDING_REMOVE_ERROR: &str = "binding remove error";
    pub const STATUS_UPDATE_ERROR: &str = "status update error";
}

/// Ours: an object of ours that MIC cannot read and therefore ignores.
pub const INVALID_OBJECT: &str = "InvalidObject";

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

const BURST: f64 = 25.0;
const REFILL: Duration = Duration::from_secs(300);
/// Objects whose buckets are remembered, as client-go's spam filter's LRU cache; without a
/// bound, every pod ever seen would keep an entry for the life of the process.
const MAX_TRACKED: usize = 4096;

/// Events waiting to be sent, as client-go's broadcaster queues them: a burst of assignments
/// must not wait for its events, and a slow API server must not grow MIC without bound.
const QUEUE: usize = 1000;
/// Events sent at once by the sender task.
const SEND_CONCURRENCY: usize = 8;

/// Records Events: checks and builds them at once, and leaves the sending to a background task
/// ([`Recorder::new`]), so the assignment path never waits for them. Clone-cheap.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Event>,
    host: String,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    /// Events already recorded by [`Recorder::publish_once`], with when.
    once: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Recorder {
    /// A recorder, and the task that sends what it records through `client` (run it, e.g.
    /// spawned; when it stops, events are dropped). Events beyond the queue are dropped, as
    /// client-go drops them, with a debug line.
    pub fn new(client: Client, host: impl Into<String>) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let recorder = Self { queue, host: host.into(), buckets: Arc::default(), once: Arc::default() };
        (recorder, send_events(client, rx))
    }

    /// Records an event on `object` unless the same one (object, reason and message) was
    /// recorded before: for a state that every cycle finds again, such as a name conflict.
    pub async fn publish_once(&self, object: &ObjectReference, kind: EventType, reason: &str, message: String) {
        let key = format!("{}\n{reason}\n{message}", object_key(object));
        let new = match self.once.lock() {
            Ok(mut once) => remember(&mut once, key, Instant::now()),
            Err(_) => true,
        };
        if new {
            self.publish(object, kind, reason, message).await;
        }
    }

    /// Takes a token from the object's bucket; false means the event is dropped, as
    /// client-go's spam filter does.
    fn admit(&self, key: &str) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else { return true };
        admit(&mut buckets, key, Instant::now())
    }

    /// Records an event on `object`.
    pub async fn publish(&self, object: &ObjectReference, kind: EventType, reason: &str, message: String) {
        let name = object.name.clone().unwrap_or_default();
        let namespace = object.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let key = object_key(object);
        if !self.admit(&key) {
            tracing::debug!(object = %key, reason, "Event dropped by the spam filter");
            return;
        }
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_owned()),
            message: Some(scrub(&message)),
            type_: Some(kind.as_str().to_owned()),
            source: Some(EventSource { component: Some(COMPONENT.to_owned()), host: Some(self.host.clone()) }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.host.clone()),
            ..Default::default()
        };
        if self.queue.try_send(event).is_err() {
            tracing::debug!(object = %key, reason, "Event dropped: the event queue is full");
        }
    }
}

/// Sends queued events, [`SEND_CONCURRENCY`] at a time, until every recorder is gone. Best
/// effort: a failed event is logged, never retried.
async fn send_events(client: Client, mut rx: mpsc::Receiver<Event>) {
    let queued = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    queued
        .for_each_concurrent(SEND_CONCURRENCY, |event| {
            let client = client.clone();
            async move {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client, &namespace);
                if let Err(error) = api.create(&PostParams::default(), &event).await {
                    let object = object_key(&event.involved_object);
                    tracing::warn!(%error, %object, reason = event.reason.as_deref(), "Failed to record event");
                }
            }
        })
        .await;
}

/// `kind/namespace/name/uid`: one object, for the spam filter and [`Recorder::publish_once`].
fn object_key(object: &ObjectReference) -> String {
    format!(
        "{}/{}/{}/{}",
        object.kind.as_deref().unwrap_or_default(),
        object.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default"),
        object.name.as_deref().unwrap_or_default(),
        object.uid.as_deref().unwrap_or_default()
    )
}

/// Adds `key`; false when it was there. Keeps at most [`MAX_TRACKED`] keys, forgetting the
/// oldest (a forgotten event may be recorded once more).
fn remember(seen: &mut HashMap<String, Instant>, key: String, now: Instant) -> bool {
    if seen.contains_key(&key) {
        return false;
    }
    seen.insert(key, now);
    while seen.len() > MAX_TRACKED {
        let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) else { break };
        seen.remove(&oldest);
    }
    true
}

/// What an event may say: [`redact_guids`], and every Azure resource ID (from `/subscriptions/`
/// to the next blank, quote or bracket) replaced by `<resource ID>`. A resource ID names a
/// subscription, a resource group and an identity, possibly of another namespace.
pub fn scrub(text: &str) -> String {
    const MARK: &str = "/subscriptions/";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = lower[rest..].find(MARK) {
        let start = rest + found;
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | ',' | ';' | ')' | ']' | '}' | '>'))
            .map_or(text.len(), |n| start + n);
        out.push_str(&text[rest..start]);
        out.push_str("<resource ID>");
        rest = end;
    }
    out.push_str(&text[rest..]);
    redact_guids(&out)
}

/// Redacts every GUID in `text` as client IDs are redacted everywhere (first and last four
/// characters kept): client, principal, tenant and subscription IDs all look alike.
pub fn redact_guids(text: &str) -> String {
    const LEN: usize = 36;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i + LEN <= bytes.len() {
        let bounded = (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes.get(i + LEN).is_none_or(|b| !b.is_ascii_alphanumeric());
        if bounded && is_guid(&bytes[i..i + LEN]) {
            out.push_str(&text[copied..i]);
            out.push_str(&aadpodid_api::view::redact_client_id(&text[i..i + LEN]));
            i += LEN;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_guid(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(k, c)| if matches!(k, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// One object's token bucket: (tokens, last update).
type Bucket = (f64, Instant);

fn refilled((tokens, last): Bucket, now: Instant) -> f64 {
    (tokens + now.duration_since(last).as_secs_f64() / REFILL.as_secs_f64()).min(BURST)
}

/// Takes a token from `key`'s bucket, then keeps the map within [`MAX_TRACKED`]: buckets that
/// have refilled completely go first (a full bucket is the same as none), then the least
/// recently used.
fn admit(buckets: &mut HashMap<String, Bucket>, key: &str, now: Instant) -> bool {
    let bucket = buckets.entry(key.to_owned()).or_insert((BURST, now));
    let tokens = refilled(*bucket, now);
    let admitted = tokens >= 1.0;
    *bucket = (if admitted { tokens - 1.0 } else { tokens }, now);
    if buckets.len() > MAX_TRACKED {
        buckets.retain(|_, b| refilled(*b, now) < BURST);
    }
    while buckets.len() > MAX_TRACKED {
        let Some(oldest) = buckets.iter().filter(|(k, _)| *k != key).min_by_key(|(_, (_, last))| *last) else { break };
        let oldest = oldest.0.clone();
        buckets.remove(&oldest);
    }
    admitted
}

/// Puts a Warning Event on each object the watches leave out because it does not decode, so
/// its owner sees why it has no effect. Only the leader writes, and the watches (hence the
/// reports) start before the election is won: reports made meanwhile wait, one per object (the
/// latest), and go out once this replica leads. The returned task does the writing; the
/// callback never waits for the API server.
pub fn undecodable_reporter(recorder: Recorder, leader: LeaderView) -> (OnUndecodable, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::channel::<(ObjectReference, String)>(REPORT_QUEUE);
    let report: OnUndecodable = Arc::new(move |object: &ObjectReference, error: &str| {
        let message = format!("Ignored by aad-pod-identity: the object cannot be read ({error}). Fix or delete it.");
        if tx.try_send((object.clone(), message)).is_err() {
            tracing::debug!(object = %object_key(object), "Undecodable-object report dropped: queue full");
        }
    });
    (report, publish_reports(recorder, leader, rx))
}

/// Reports queued between the callback and the writer.
const REPORT_QUEUE: usize = 1024;

async fn publish_reports(
    recorder: Recorder,
    mut leader: LeaderView,
    mut rx: mpsc::Receiver<(ObjectReference, String)>,
) {
    let mut waiting = PendingReports::default();
    loop {
        tokio::select! {
            report = rx.recv() => {
                let Some((object, message)) = report else { return };
                if leader.is_leading() {
                    recorder.publish(&object, EventType::Warning, INVALID_OBJECT, message).await;
                } else {
                    waiting.hold(object, message);
                }
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                if leader.is_leading() {
                    for (object, message) in waiting.take() {
                        recorder.publish(&object, EventType::Warning, INVALID_OBJECT, message).await;
                    }
                }
            }
        }
    }
}

/// Reports held until this replica leads: the latest per object, at most [`MAX_TRACKED`]
/// objects (a newer object beyond that is dropped, as the spam filter would drop it).
#[derive(Default)]
struct PendingReports {
    order: Vec<String>,
    by_object: HashMap<String, (ObjectReference, String)>,
}

impl PendingReports {
    fn hold(&mut self, object: ObjectReference, message: String) {
        let key = object_key(&object);
        if let Some(held) = self.by_object.get_mut(&key) {
            *held = (object, message);
        } else if self.by_object.len() < MAX_TRACKED {
            self.order.push(key.clone());
            self.by_object.insert(key, (object, message));
        }
    }

    /// Everything held, oldest first.
    fn take(&mut self) -> Vec<(ObjectReference, String)> {
        let mut by_object = std::mem::take(&mut self.by_object);
        std::mem::take(&mut self.order).into_iter().filter_map(|key| by_object.remove(&key)).collect()
    }
}

/// A reference to any object we hold, for an event.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(object.name_any()),
        namespace: object.namespace(),
        uid: object.uid(),
        resource_version: object.resource_version(),
        ..Default::default()
    }
}

/// A reference to a pod known only by name, namespace and (if still known) UID.
pub fn pod_reference(name: &str, namespace: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: uid.filter(|u| !u.is_empty()).map(str::to_owned),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectReference {
        ObjectReference { kind: Some("AzureIdentity".into()), name: Some(name.into()), ..Default::default() }
    }

    #[tokio::test]
    async fn publishing_never_waits_for_the_api_server_and_the_queue_is_bounded() {
        let unreachable = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let (recorder, _sender_not_running) = Recorder::new(Client::try_from(unreachable).unwrap(), "test");
        let burst = async {
            for n in 0..QUEUE + 50 {
                recorder.publish(&object(&n.to_string()), EventType::Normal, "r", "m".into()).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), burst).await.expect("publish returns at once");
        assert_eq!(recorder.queue.capacity(), 0, "the queue holds {QUEUE}; the rest were dropped");
    }

    #[test]
    fn reports_held_for_the_leader_keep_the_latest_per_object_in_order() {
        let mut held = PendingReports::default();
        held.hold(object("a"), "first".into());
        held.hold(object("b"), "only".into());
        held.hold(object("a"), "second".into());
        let out: Vec<_> = held.take().into_iter().map(|(o, m)| (o.name.unwrap(), m)).collect();
        assert_eq!(out, [("a".to_owned(), "second".to_owned()), ("b".to_owned(), "only".to_owned())]);
        assert!(held.take().is_empty(), "taking empties the list");
        for n in 0..MAX_TRACKED + 10 {
            held.hold(object(&n.to_string()), String::new());
        }
        assert_eq!(held.take().len(), MAX_TRACKED, "the list is bounded");
    }

    #[test]
    fn a_burst_of_25_then_one_per_refill_period() {
        let mut buckets = HashMap::new();
        let t0 = Instant::now();
        assert!((0..25).all(|_| admit(&mut buckets, "b", t0)));
        assert!(!admit(&mut buckets, "b", t0), "the 26th event of a burst is dropped");
        assert!(!admit(&mut buckets, "b", t0 + REFILL / 2));
        assert!(admit(&mut buckets, "b", t0 + REFILL + REFILL / 2), "a token has refilled");
        assert!(admit(&mut buckets, "other", t0), "buckets are per object");
    }

    #[test]
    fn events_never_carry_a_guid_or_a_resource_id() {
        let text = "The client '9a8b7c6d-1111-2222-3333-444455556666' has no access to scope \
            '/subscriptions/0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/theirs', \
            nor to /SUBSCRIPTIONS/s/x (ID 12345678-1234-1234-1234-1234567890ab).";
        let out = scrub(text);
        assert_eq!(
            out,
            "The client '9a8b##### REDACTED #####6666' has no access to scope '<resource ID>', \
            nor to <resource ID> (ID 1234##### REDACTED #####90ab)."
        );
        assert_eq!(
            scrub("binding b applied on node n1 for pod p-ns-id"),
            "binding b applied on node n1 for pod p-ns-id"
        );
        assert_eq!(redact_guids("x9a8b7c6d-1111-2222-3333-444455556666"), "x9a8b7c6d-1111-2222-3333-444455556666");
        assert_eq!(scrub("naïve /subscriptions/ü"), "naïve <resource ID>");
    }

    #[test]
    fn publish_once_remembers_a_bounded_number_of_events() {
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        assert!(remember(&mut seen, "a".into(), t0));
        assert!(!remember(&mut seen, "a".into(), t0 + REFILL), "the same event is recorded once");
        for i in 0..MAX_TRACKED {
            remember(&mut seen, format!("k{i}"), t0 + Duration::from_millis(1 + i as u64));
        }
        assert_eq!(seen.len(), MAX_TRACKED);
        assert!(remember(&mut seen, "a".into(), t0 + REFILL), "the oldest was forgotten");
    }

    #[test]
    fn the_map_stays_bounded() {
        let mut buckets = HashMap::new();
        let t0 = Instant::now();
        for i in 0..2 * MAX_TRACKED {
            admit(&mut buckets, &format!("pod-{i}"), t0 + Duration::from_millis(1 + i as u64));
        }
        assert_eq!(buckets.len(), MAX_TRACKED);
        assert!(buckets.contains_key(&format!("pod-{}", 2 * MAX_TRACKED - 1)), "the newest is kept");
        assert!(!buckets.contains_key("pod-0"), "the least recently used went first");

        // Once everything has refilled, a new object drops all the full buckets at once.
        let later = t0 + REFILL * 30;
        for i in 0..=MAX_TRACKED {
            buckets.insert(format!("old-{i}"), (BURST - 1.0, t0));
        }
        admit(&mut buckets, "new", later);
        assert_eq!(buckets.len(), 1, "only the bucket just used is left: {}", buckets.len());
    }
}
