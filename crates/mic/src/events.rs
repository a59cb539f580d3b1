//! Kubernetes Events as the original's client-go recorder writes them: core/v1 Events named
//! `<object>.<hex nanos>`, source component `aadpodidentity.k8s.io`, with client-go's spam
//! filter (a burst of 25 per object, then one per 5 minutes) so a burst of assignments on one
//! binding cannot flood the API server. Best effort: a failed event is logged, never retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aadpodid_runtime::decoded::OnUndecodable;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};

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

/// Writes Events; clone-cheap.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    host: String,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl Recorder {
    pub fn new(client: Client, host: impl Into<String>) -> Self {
        Self { client, host: host.into(), buckets: Arc::default() }
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
        let key = format!(
            "{}/{namespace}/{name}/{}",
            object.kind.as_deref().unwrap_or_default(),
            object.uid.as_deref().unwrap_or_default()
        );
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
            message: Some(message),
            type_: Some(kind.as_str().to_owned()),
            source: Some(EventSource { component: Some(COMPONENT.to_owned()), host: Some(self.host.clone()) }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.host.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, object = %key, reason, "Failed to record event");
        }
    }
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
/// its owner sees why it has no effect. Spawned: the watch must not wait for the API server.
pub fn undecodable_reporter(recorder: Recorder) -> OnUndecodable {
    Arc::new(move |object: &ObjectReference, error: &str| {
        let recorder = recorder.clone();
        let object = object.clone();
        let message = format!("Ignored by aad-pod-identity: the object cannot be read ({error}). Fix or delete it.");
        tokio::spawn(async move { recorder.publish(&object, EventType::Warning, INVALID_OBJECT, message).await });
    })
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
