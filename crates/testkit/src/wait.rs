//! Waiting for a condition with a deadline, instead of sleeping a fixed time.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::api::Api;
use kube::runtime::wait::{self, Condition};
use serde::de::DeserializeOwned;

use crate::Error;

/// Watches `name` until `cond` holds, or fails after `deadline`; returns the object as it was
/// when the condition held (`None` if the condition held for an absent object).
pub async fn await_condition<K>(
    api: Api<K>,
    name: &str,
    cond: impl Condition<K>,
    deadline: Duration,
) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let what = format!("{} {name}", K::kind(&K::DynamicType::default()));
    match tokio::time::timeout(deadline, wait::await_condition(api, name, cond)).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(source)) => Err(Error::Wait { what, source }),
        Err(_) => Err(Error::Timeout { what, deadline }),
    }
}

/// Calls `probe` every 100 ms until it returns `Some`, or fails after `deadline`; for
/// conditions that are not one object's state (kubectl output, an HTTP endpoint).
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout { what: what.to_owned(), deadline });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`poll_until`] for a test: polls `check` every 100 ms and panics with `what` after
/// `deadline` (a failed wait is a failed test, never a skip).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(what, deadline, check).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {deadline:?} waiting for: {what}"),
    }
}
