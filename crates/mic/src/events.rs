//! Kubernetes Events as the original's client-go recorder writes them: core/v1 Events named
//! `<object>.<hex nanos>`, source component `aadpodidentity.k8s.io`, with client-go's spam
//! filter (a burst of 25 per object, then one per 5 minutes) so a burst of assignments on one
//! binding cannot flood the API server. Best effort: a failed event is logged, never retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Writes Events; clone-cheap.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    host: String,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl Recorder {
    pub fn new(client: Client, host: impl Into<String>) -> Self {
        Self { client, host: host.into(), buckets: Arc::default() }
    }

    /// Takes a token from the object's bucket; false means the event is dropped, as
    /// client-go's spam filter does.
    fn admit(&self, key: &str) -> bool {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return true };
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() / REFILL.as_secs_f64()).min(BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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
