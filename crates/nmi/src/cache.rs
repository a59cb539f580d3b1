//! Token cache per (principal, resource): a deliberate difference from the original, which
//! called IMDS or Azure AD on every request.
//!
//! - A token is served while it has comfortably more life left than clients demand (they treat
//!   < 5 min as expired), with `expires_in` said from `expires_on` at the time it is served.
//! - Tokens in use (requested within `idle`) are refreshed in the background ahead of that
//!   point ([`TokenCache::due`], [`TokenCache::refresh`]), so a pod does not wait on Azure.
//! - Concurrent misses share one fetch (single flight), failures included.
//! - A failure is remembered for `failure_ttl`, so a pod hammering a failing principal does not
//!   hammer Azure. While the source is unavailable a still-valid token is served; a refusal
//!   (identity removed, secret revoked) drops the cached token at once and is what pods get.
//! - Bounded: at most `max_entries`, and `max_per_group` per principal, so a pod choosing many
//!   resources evicts its own principal's entries first; the least recently requested goes.
//!
//! Time is injected (`now` in Unix seconds); no clock is read here.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::token::TokenJson;

/// Serve no later than this many seconds before expiry (MSAL and SDKs drop tokens with under
/// 5 minutes left; 10 keeps every served token comfortably usable).
const MAX_SERVE_MARGIN_SECS: u64 = 600;
/// Refresh tokens in use from this many seconds before expiry (ahead of the serve margin, so a
/// background pass every few seconds always finds them first).
const MAX_REFRESH_MARGIN_SECS: u64 = 900;

/// Something with an expiry in Unix seconds.
pub trait Expiring {
    fn expires_on(&self) -> u64;
    /// The value as served from the cache at `now` (a token says its remaining life).
    fn served_at(self, now: u64) -> Self;
}

impl Expiring for TokenJson {
    fn expires_on(&self) -> u64 {
        crate::token::expires_on_secs(self)
    }

    fn served_at(mut self, now: u64) -> Self {
        let expires_on = self.expires_on();
        if expires_on > 0 {
            self.expires_in = expires_on.saturating_sub(now).to_string();
        }
        self
    }
}

impl<T: Expiring> Expiring for Vec<T> {
    fn expires_on(&self) -> u64 {
        self.iter().map(Expiring::expires_on).min().unwrap_or(0)
    }

    fn served_at(self, now: u64) -> Self {
        self.into_iter().map(|t| t.served_at(now)).collect()
    }
}

/// How a failure meets a cached value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The source said no (identity removed, secret revoked, bad credentials): the cached
    /// value is dropped; the refusal is remembered and answered.
    Refusal,
    /// The source is unavailable for now (unreachable, 5xx, timeouts): a cached value still
    /// valid is served meanwhile; the failure is remembered.
    Unavailable,
    /// This node's own budget for the source is spent; nothing was asked, nothing remembered,
    /// a valid cached value is served.
    Throttled,
}

/// Classifies a fetch's error.
pub trait Classify {
    fn kind(&self) -> FailureKind;
}

/// Keys of one principal form a group, bounded on its own.
pub trait Grouped {
    type Group: Eq;
    fn group(&self) -> Self::Group;
}

/// The cache's bounds and timings, from flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub max_per_group: usize,
    /// Seconds a failure is answered from memory.
    pub failure_ttl: u64,
    /// Seconds without a request after which an entry is no longer refreshed.
    pub idle: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self { max_entries: 2048, max_per_group: 64, failure_ttl: 5, idle: 7200 }
    }
}

/// How a value was obtained, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache, still fresh.
    Cached,
    /// Just fetched upstream.
    Fetched,
    /// Upstream unavailable; a cached value that has not expired yet was served.
    Stale,
}

#[derive(Clone)]
struct Stored<V> {
    value: V,
    fetched_at: u64,
}

impl<V: Expiring> Stored<V> {
    fn margin(&self, max: u64, num: u64, den: u64) -> u64 {
        let lifetime = self.value.expires_on().saturating_sub(self.fetched_at);
        (lifetime.saturating_mul(num) / den).min(max)
    }

    /// Fresh while the remaining life exceeds min(half the lifetime, 10 min).
    fn is_fresh(&self, now: u64) -> bool {
        now.saturating_add(self.margin(MAX_SERVE_MARGIN_SECS, 1, 2)) < self.value.expires_on()
    }

    /// Due for a refresh once the remaining life is under min(3/4 of the lifetime, 15 min).
    fn refresh_due(&self, now: u64) -> bool {
        now.saturating_add(self.margin(MAX_REFRESH_MARGIN_SECS, 3, 4)) >= self.value.expires_on()
    }

    fn is_alive(&self, now: u64) -> bool {
        now < self.value.expires_on()
    }
}

/// One entry's state; every decision about it is a method here.
struct State<V, E, S> {
    value: Option<Stored<V>>,
    failure: Option<(E, u64)>,
    last_requested: u64,
    source: S,
}

impl<V: Expiring + Clone, E: Classify + Clone, S> State<V, E, S> {
    fn recent_failure(&self, now: u64, ttl: u64) -> Option<&E> {
        self.failure.as_ref().filter(|(_, at)| now < at.saturating_add(ttl)).map(|(e, _)| e)
    }

    fn alive_value(&self, now: u64) -> Option<V> {
        self.value.as_ref().filter(|v| v.is_alive(now)).map(|v| v.value.clone().served_at(now))
    }

    /// The answer without asking the source, if there is one.
    fn answer(&self, now: u64, ttl: u64) -> Option<Result<(V, Outcome), E>> {
        if let Some(v) = self.value.as_ref().filter(|v| v.is_fresh(now)) {
            return Some(Ok((v.value.clone().served_at(now), Outcome::Cached)));
        }
        let failure = self.recent_failure(now, ttl)?;
        Some(match (failure.kind(), self.alive_value(now)) {
            (FailureKind::Unavailable | FailureKind::Throttled, Some(v)) => Ok((v, Outcome::Stale)),
            (FailureKind::Refusal, _) | (FailureKind::Unavailable | FailureKind::Throttled, None) => {
                Err(failure.clone())
            }
        })
    }

    /// Records what the source answered and says what to serve.
    fn settle(&mut self, result: Result<V, E>, now: u64) -> Result<(V, Outcome), E> {
        let error = match result {
            Ok(value) => {
                if value.expires_on() > now {
                    self.value = Some(Stored { value: value.clone(), fetched_at: now });
                }
                self.failure = None;
                return Ok((value, Outcome::Fetched));
            }
            Err(error) => error,
        };
        let kind = error.kind();
        match kind {
            FailureKind::Refusal => self.value = None,
            FailureKind::Unavailable | FailureKind::Throttled => {}
        }
        if kind != FailureKind::Throttled {
            self.failure = Some((error.clone(), now));
        }
        match (kind, self.alive_value(now)) {
            (FailureKind::Unavailable | FailureKind::Throttled, Some(v)) => Ok((v, Outcome::Stale)),
            (FailureKind::Refusal, _) | (FailureKind::Unavailable | FailureKind::Throttled, None) => Err(error),
        }
    }

    fn is_due(&self, now: u64, limits: &CacheLimits) -> bool {
        let in_use = now.saturating_sub(self.last_requested) <= limits.idle;
        let due = self.value.as_ref().is_some_and(|v| v.refresh_due(now));
        in_use && due && self.recent_failure(now, limits.failure_ttl).is_none()
    }

    /// Nothing left worth keeping: no valid value and no failure to remember.
    fn is_dead(&self, now: u64, ttl: u64) -> bool {
        self.alive_value(now).is_none() && self.recent_failure(now, ttl).is_none()
    }
}

struct Slot<V, E, S> {
    state: Mutex<State<V, E, S>>,
    /// Held while the source is asked: one fetch per entry at a time.
    flight: tokio::sync::Mutex<()>,
}

impl<V, E, S> Slot<V, E, S> {
    fn state(&self) -> MutexGuard<'_, State<V, E, S>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Slots<K, V, E, S> = HashMap<K, Arc<Slot<V, E, S>>>;

/// The cache. Cheap to share behind an `Arc`.
pub struct TokenCache<K, V, E, S> {
    slots: Mutex<Slots<K, V, E, S>>,
    limits: CacheLimits,
}

impl<K, V, E, S> TokenCache<K, V, E, S>
where
    K: Eq + Hash + Clone + Grouped,
    V: Expiring + Clone,
    E: Classify + Clone,
    S: Clone,
{
    pub fn new(limits: CacheLimits) -> Self {
        let limits = CacheLimits {
            max_entries: limits.max_entries.max(1),
            max_per_group: limits.max_per_group.max(1),
            ..limits
        };
        Self { slots: Mutex::new(HashMap::new()), limits }
    }

    /// The cached value for `key`, or `fetch()`'s; `source` is what a background refresh
    /// fetches from later. Concurrent callers for one key wait for a single fetch.
    pub async fn get<F, Fut>(&self, key: &K, source: S, now: impl Fn() -> u64, fetch: F) -> Result<(V, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let ttl = self.limits.failure_ttl;
        let slot = self.slot(key, source, now());
        if let Some(answer) = slot.state().answer(now(), ttl) {
            return answer;
        }
        let _flight = slot.flight.lock().await;
        if let Some(answer) = slot.state().answer(now(), ttl) {
            return answer;
        }
        let result = fetch().await;
        slot.state().settle(result, now())
    }

    /// Entries in use whose token is due for a refresh, with their sources.
    pub fn due(&self, now: u64) -> Vec<(K, S)> {
        let slots = self.slots();
        slots
            .iter()
            .filter_map(|(key, slot)| {
                let state = slot.state();
                state.is_due(now, &self.limits).then(|| (key.clone(), state.source.clone()))
            })
            .collect()
    }

    /// Refreshes one entry in the background: skipped when it is gone, being fetched already,
    /// or no longer due. Does not count as a request. Returns whether the source was asked.
    pub async fn refresh<F, Fut>(&self, key: &K, now: impl Fn() -> u64, fetch: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(slot) = self.slots().get(key).cloned() else { return false };
        let Ok(_flight) = slot.flight.try_lock() else { return false };
        if !slot.state().is_due(now(), &self.limits) {
            return false;
        }
        let result = fetch().await;
        let _ = slot.state().settle(result, now());
        true
    }

    /// Drops entries with neither a valid value nor a failure to remember (and not being
    /// fetched). Returns how many are left.
    pub fn purge(&self, now: u64) -> usize {
        let ttl = self.limits.failure_ttl;
        let mut slots = self.slots();
        slots.retain(|_, slot| slot.flight.try_lock().is_err() || !slot.state().is_dead(now, ttl));
        slots.len()
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slots(&self) -> MutexGuard<'_, Slots<K, V, E, S>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key` (created, evicting if full), marked requested at `now`.
    fn slot(&self, key: &K, source: S, now: u64) -> Arc<Slot<V, E, S>> {
        let mut slots = self.slots();
        if let Some(slot) = slots.get(key) {
            let mut state = slot.state();
            state.last_requested = now;
            state.source = source;
            drop(state);
            return slot.clone();
        }
        self.make_room(&mut slots, &key.group(), now);
        let state = State { value: None, failure: None, last_requested: now, source };
        let slot = Arc::new(Slot { state: Mutex::new(state), flight: tokio::sync::Mutex::new(()) });
        slots.insert(key.clone(), slot.clone());
        slot
    }

    /// Evicts one entry when the group or the cache is full: an expired one first, else the
    /// least recently requested; within the group when the group is full.
    fn make_room(&self, slots: &mut Slots<K, V, E, S>, group: &K::Group, now: u64) {
        let in_group = slots.keys().filter(|k| k.group() == *group).count();
        let group_full = in_group >= self.limits.max_per_group;
        if !group_full && slots.len() < self.limits.max_entries {
            return;
        }
        let victim = slots
            .iter()
            .filter(|(k, _)| !group_full || k.group() == *group)
            .min_by_key(|(_, slot)| {
                let state = slot.state();
                (state.alive_value(now).is_some(), state.last_requested)
            })
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            slots.remove(&victim);
        }
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
