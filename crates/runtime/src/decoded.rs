//! Watches that decode each object on its own.
//!
//! The API server stores whatever a custom resource's schema allows: an `int32` field holding
//! 2^31 (it checks the type, not the range), an object without `spec`. Our types may not hold
//! such an object, and kube's watcher decodes a list page or a watch event as a whole, so one
//! of them would fail every list of its kind and freeze the cache built on it. Here every
//! object is decoded by itself: one that does not decode is logged, reported to the caller
//! and left out of the cache (a modification into one reads as a deletion, so nothing stale
//! stays behind). The watch itself never fails because of an object's content.

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::Value;

/// One listed or watched object: a `K`, or what names it and why it is not one.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    Valid(K),
    Invalid(Box<Undecodable>),
}

/// An object the API server holds that our types cannot read.
#[derive(Clone, Debug, Default)]
pub struct Undecodable {
    pub metadata: ObjectMeta,
    /// Where and what, without the offending value (which is the object's content):
    /// `spec.replicas: invalid value, expected i32`.
    pub error: String,
}

/// Told about each object a watch leaves out, with the reason, after it is logged. It runs
/// inside the watch, so it must not block (spawn anything that waits).
pub type OnUndecodable = Arc<dyn Fn(&ObjectReference, &str) + Send + Sync>;

/// Reports nothing beyond the warning every left-out object is logged with.
pub fn log_only() -> OnUndecodable {
    Arc::new(|_, _| {})
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    /// Never fails on well-formed JSON: the object goes through a `Value`, one at a time, so a
    /// list page costs no more memory than its typed objects plus the largest single object.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(decode(&value))
    }
}

/// Decodes one object; on failure decodes it a second time to say where.
pub fn decode<K: DeserializeOwned>(value: &Value) -> Decoded<K> {
    match K::deserialize(value) {
        Ok(object) => Decoded::Valid(object),
        Err(_) => {
            let metadata = value.get("metadata").and_then(|m| ObjectMeta::deserialize(m).ok()).unwrap_or_default();
            let error = match serde_path_to_error::deserialize::<_, K>(value) {
                Ok(_) => "malformed value".to_owned(),
                Err(e) => located(&e.path().to_string(), &e.into_inner().to_string()),
            };
            Decoded::Invalid(Box::new(Undecodable { metadata, error }))
        }
    }
}

fn located(path: &str, message: &str) -> String {
    let what = redact(message);
    if path == "." { what } else { format!("{path}: {what}") }
}

/// Keeps serde's kind of error and what was expected, drops the value that was found: `invalid
/// value: integer `2147483648`, expected i32` becomes `invalid value, expected i32`. Messages
/// of another shape may quote content, so only `missing field` (a field name) is kept.
pub fn redact(message: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if let Some(rest) = message.strip_prefix(kind) {
            return match rest.rfind(", expected ") {
                Some(at) => format!("{kind}, {}", &rest[at + 2..]),
                None => kind.to_owned(),
            };
        }
    }
    if message.starts_with("missing field `") {
        return message.to_owned();
    }
    "malformed value".to_owned()
}

impl<K: Resource> Resource for Decoded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Valid(object) => object.meta(),
            Self::Invalid(bad) => &bad.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Valid(object) => object.meta_mut(),
            Self::Invalid(bad) => &mut bad.metadata,
        }
    }
}

/// Watches every `K` in the cluster (with kube's default backoff), decoding each object on
/// its own; see the module documentation. The stream feeds `reflect` like kube's own.
pub fn watch<K>(
    client: Client,
    config: watcher::Config,
    report: OnUndecodable,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Default + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let api: Api<Decoded<K>> = Api::all(client);
    watcher(api, config)
        .default_backoff()
        .filter_map(move |item| future::ready(item.map(|event| typed(event, &report)).transpose()))
}

/// Lists every `K` in the cluster (one request, no paging), leaving out with a warning each
/// object that does not decode, so one such object cannot fail a one-off pass over all.
pub async fn list_all<K>(client: Client) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<Decoded<K>> = Api::all(client);
    let list = api.list(&kube::api::ListParams::default()).await?;
    let keep = |item| match item {
        Decoded::Valid(object) => Some(object),
        Decoded::Invalid(bad) => {
            left_out::<K>(&bad, &log_only());
            None
        }
    };
    Ok(list.items.into_iter().filter_map(keep).collect())
}

/// An event on decoded objects as an event on `K`: an undecodable object is skipped in a
/// relist and deleted otherwise, and reported either way (except when it is being deleted).
pub fn typed<K>(event: watcher::Event<Decoded<K>>, report: &OnUndecodable) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + Default,
{
    use watcher::Event;
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(Decoded::Valid(object)) => Event::InitApply(object),
        Event::Apply(Decoded::Valid(object)) => Event::Apply(object),
        Event::Delete(Decoded::Valid(object)) => Event::Delete(object),
        Event::InitApply(Decoded::Invalid(bad)) => {
            left_out::<K>(&bad, report);
            return None;
        }
        Event::Apply(Decoded::Invalid(bad)) => {
            left_out::<K>(&bad, report);
            Event::Delete(placeholder(bad.metadata))
        }
        Event::Delete(Decoded::Invalid(bad)) => Event::Delete(placeholder(bad.metadata)),
    })
}

/// A `K` that only names the object, enough for a cache to remove it.
fn placeholder<K: Resource + Default>(metadata: ObjectMeta) -> K {
    let mut object = K::default();
    *object.meta_mut() = metadata;
    object
}

fn left_out<K: Resource<DynamicType = ()>>(bad: &Undecodable, report: &OnUndecodable) {
    let reference = reference::<K>(&bad.metadata);
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = reference.namespace.as_deref().unwrap_or_default(),
        name = reference.name.as_deref().unwrap_or_default(),
        error = %bad.error,
        "Ignoring an object that cannot be decoded"
    );
    report(&reference, &bad.error);
}

/// A reference to an object of kind `K` known only by its metadata, for an Event.
pub fn reference<K: Resource<DynamicType = ()>>(metadata: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: metadata.name.clone(),
        namespace: metadata.namespace.clone(),
        uid: metadata.uid.clone(),
        resource_version: metadata.resource_version.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::{ObjectList, WatchEvent};
    use serde_json::json;

    use super::*;

    fn cm(name: &str, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "7"},
            "data": data})
    }

    fn name(event: &watcher::Event<ConfigMap>) -> (&'static str, String) {
        let (what, object) = match event {
            watcher::Event::Apply(o) => ("apply", o),
            watcher::Event::InitApply(o) => ("init-apply", o),
            watcher::Event::Delete(o) => ("delete", o),
            watcher::Event::Init | watcher::Event::InitDone => return ("marker", String::new()),
        };
        (what, object.metadata.name.clone().unwrap_or_default())
    }

    /// (kind/namespace/name, error) of each report.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    fn recorder() -> (OnUndecodable, Seen) {
        let seen: Seen = Arc::default();
        let sink = Arc::clone(&seen);
        let report: OnUndecodable = Arc::new(move |r: &ObjectReference, error: &str| {
            let key = format!(
                "{}/{}/{}",
                r.kind.as_deref().unwrap(),
                r.namespace.as_deref().unwrap(),
                r.name.as_deref().unwrap()
            );
            sink.lock().unwrap().push((key, error.to_owned()));
        });
        (report, seen)
    }

    #[test]
    fn one_bad_object_leaves_the_rest_of_a_list_page_readable() {
        let page = json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "9"},
            "items": [cm("a", json!({"k": "v"})), cm("bad", json!({"k": 2147483648u64, "secret": "hunter2"})), cm("c", json!({}))]});
        let list: ObjectList<Decoded<ConfigMap>> = serde_json::from_value(page).unwrap();
        let kinds: Vec<_> = list.items.iter().map(|d| matches!(d, Decoded::Valid(_))).collect();
        assert_eq!(kinds, [true, false, true]);
        let Decoded::Invalid(bad) = &list.items[1] else { unreachable!() };
        assert_eq!(bad.metadata.name.as_deref(), Some("bad"));
        assert_eq!(bad.metadata.uid.as_deref(), Some("uid-bad"));
        assert_eq!(bad.error, "data.k: invalid type, expected a string");
    }

    #[test]
    fn watch_events_decode_whichever_key_comes_first() {
        for text in [
            r#"{"type":"MODIFIED","object":{"metadata":{"name":"bad"},"data":{"k":1}}}"#,
            r#"{"object":{"metadata":{"name":"bad"},"data":{"k":1}},"type":"MODIFIED"}"#,
        ] {
            let event: WatchEvent<Decoded<ConfigMap>> = serde_json::from_str(text).unwrap();
            let WatchEvent::Modified(Decoded::Invalid(bad)) = event else { panic!("{text}") };
            assert_eq!(bad.metadata.name.as_deref(), Some("bad"));
        }
    }

    #[test]
    fn a_bad_object_is_skipped_in_a_relist_removed_when_modified_and_reported() {
        let (report, seen) = recorder();
        let good = || decode::<ConfigMap>(&cm("good", json!({"k": "v"})));
        let bad = || decode::<ConfigMap>(&cm("bad", json!({"k": [1]})));
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(good()),
            watcher::Event::InitApply(bad()),
            watcher::Event::InitDone,
            watcher::Event::Apply(bad()),
            watcher::Event::Apply(good()),
            watcher::Event::Delete(bad()),
            watcher::Event::Delete(good()),
        ];
        let out: Vec<_> = events.into_iter().filter_map(|e| typed(e, &report)).collect();
        let got: Vec<_> = out.iter().map(name).collect();
        let want = [
            ("marker", ""),
            ("init-apply", "good"),
            ("marker", ""),
            ("delete", "bad"),
            ("apply", "good"),
            ("delete", "bad"),
            ("delete", "good"),
        ];
        assert_eq!(got, want.map(|(w, n)| (w, n.to_owned())));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "reported when listed and when modified, not when deleted: {seen:?}");
        assert!(
            seen.iter()
                .all(|(key, error)| key == "ConfigMap/ns/bad" && error == "data.k: invalid type, expected a string")
        );
    }

    #[test]
    fn errors_never_quote_the_value_found() {
        let cases = [
            ("invalid value: integer `2147483648`, expected i32", "invalid value, expected i32"),
            ("invalid type: string \"s3cr3t, expected x\", expected i64", "invalid type, expected i64"),
            ("invalid length 3, expected 2", "invalid length, expected 2"),
            ("missing field `spec`", "missing field `spec`"),
            ("unknown variant `s3cr3t`, expected one of `A`", "malformed value"),
            ("anything else s3cr3t", "malformed value"),
        ];
        for (message, want) in cases {
            assert_eq!(redact(message), want, "{message}");
        }
        assert_eq!(located(".", "missing field `spec`"), "missing field `spec`");
    }
}
