//! Token cache per (identity, resource): a deliberate difference from the original, which
//! called IMDS or Azure AD on every request. A token is served while it has comfortably more
//! life left than clients demand (they treat < 5 min as expired), refreshed ahead of that,
//! fetched once for concurrent misses (single flight), and served stale until it really
//! expires when the upstream fails.
//!
//! Time is injected (`now` in Unix seconds); no clock or runtime is read here.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use crate::token::TokenJson;

/// Refresh no later than this many seconds before expiry (MSAL and SDKs drop tokens with
/// under 5 minutes left; 10 keeps every served token comfortably usable).
const MAX_REFRESH_MARGIN_SECS: u64 = 600;

/// Something with an expiry in Unix seconds.
pub trait Expiring {
    fn expires_on(&self) -> u64;
}

impl Expiring for TokenJson {
    fn expires_on(&self) -> u64 {
        crate::token::expires_on_secs(self)
    }
}

impl<T: Expiring> Expiring for Vec<T> {
    fn expires_on(&self) -> u64 {
        self.iter().map(Expiring::expires_on).min().unwrap_or(0)
    }
}

/// How a value was obtained, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache, still fresh.
    Cached,
    /// Just fetched upstream.
    Fetched,
    /// Upstream failed; a cached value that has not expired yet was served.
    Stale,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    fetched_at: u64,
}

impl<V: Expiring> Entry<V> {
    /// Fresh while the remaining life exceeds min(half the lifetime, 10 min).
    fn is_fresh(&self, now: u64) -> bool {
        let expires = self.value.expires_on();
        let margin = (expires.saturating_sub(self.fetched_at) / 2).min(MAX_REFRESH_MARGIN_SECS);
        now.saturating_add(margin) < expires
    }

    fn is_alive(&self, now: u64) -> bool {
        now < self.value.expires_on()
    }
}

type Slot<V> = Arc<tokio::sync::Mutex<Option<Entry<V>>>>;

/// The cache. Cheap to share behind an `Arc`.
pub struct TokenCache<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K, V> Default for TokenCache<K, V> {
    fn default() -> Self {
        Self { slots: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone, V: Expiring + Clone> TokenCache<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, key: &K) -> Slot<V> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(key.clone()).or_default().clone()
    }

    /// The cached value for `key`, or `fetch()`'s. Concurrent callers for one key wait for a
    /// single fetch. `now` is read after the wait, so waiters judge freshness correctly.
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &K, now: impl Fn() -> u64, fetch: F) -> Result<(V, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = self.slot(key);
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_ref().filter(|e| e.is_fresh(now())) {
            return Ok((e.value.clone(), Outcome::Cached));
        }
        match fetch().await {
            Ok(value) => {
                let fetched_at = now();
                if value.expires_on() > fetched_at {
                    *entry = Some(Entry { value: value.clone(), fetched_at });
                }
                Ok((value, Outcome::Fetched))
            }
            Err(err) => match entry.as_ref().filter(|e| e.is_alive(now())) {
                Some(e) => Ok((e.value.clone(), Outcome::Stale)),
                None => Err(err),
            },
        }
    }

    /// Every value currently cached (for learning object IDs); expired ones included.
    pub fn values(&self) -> Vec<V> {
        let slots: Vec<Slot<V>> = self.slots.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        slots.iter().filter_map(|s| s.try_lock().ok().and_then(|e| e.as_ref().map(|e| e.value.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[derive(Clone, Debug, PartialEq)]
    struct Tok(u64, &'static str);
    impl Expiring for Tok {
        fn expires_on(&self) -> u64 {
            self.0
        }
    }

    struct Clock(AtomicU64);
    impl Clock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
        fn set(&self, t: u64) {
            self.0.store(t, Ordering::SeqCst);
        }
    }

    fn fetch_ok(v: Tok, calls: &AtomicUsize) -> impl Future<Output = Result<Tok, String>> + '_ {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(v) }
    }

    #[test]
    fn a_fresh_token_is_served_from_the_cache() {
        let (cache, clock, calls) = (TokenCache::new(), Clock(AtomicU64::new(1000)), AtomicUsize::new(0));
        let key = ("id", "r");
        let first = block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(4600, "a"), &calls)));
        assert_eq!(first, Ok((Tok(4600, "a"), Outcome::Fetched)));
        clock.set(3000);
        let second = block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(9999, "b"), &calls)));
        assert_eq!(second, Ok((Tok(4600, "a"), Outcome::Cached)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_token_is_refreshed_ten_minutes_before_expiry() {
        let (cache, clock, calls) = (TokenCache::new(), Clock(AtomicU64::new(0)), AtomicUsize::new(0));
        let key = ("id", "r");
        block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(3600, "a"), &calls))).unwrap();
        clock.set(3000);
        let got = block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(7200, "b"), &calls))).unwrap();
        assert_eq!(got, (Tok(7200, "b"), Outcome::Fetched));
    }

    #[test]
    fn short_lived_tokens_refresh_at_half_life() {
        let (cache, clock, calls) = (TokenCache::new(), Clock(AtomicU64::new(0)), AtomicUsize::new(0));
        let key = ("id", "r");
        block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(60, "a"), &calls))).unwrap();
        clock.set(29);
        assert_eq!(
            block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(90, "b"), &calls))).unwrap().1,
            Outcome::Cached
        );
        clock.set(31);
        assert_eq!(
            block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(91, "b"), &calls))).unwrap().1,
            Outcome::Fetched
        );
    }

    #[test]
    fn a_cached_token_is_served_while_upstream_fails_until_it_expires() {
        let (cache, clock, calls) = (TokenCache::new(), Clock(AtomicU64::new(0)), AtomicUsize::new(0));
        let key = ("id", "r");
        block_on(cache.get_or_fetch(&key, || clock.now(), || fetch_ok(Tok(3600, "a"), &calls))).unwrap();
        let failing = || async { Err::<Tok, _>("aad down".to_owned()) };
        clock.set(3500);
        assert_eq!(block_on(cache.get_or_fetch(&key, || clock.now(), failing)), Ok((Tok(3600, "a"), Outcome::Stale)));
        clock.set(3600);
        assert_eq!(block_on(cache.get_or_fetch(&key, || clock.now(), failing)), Err("aad down".to_owned()));
    }

    #[test]
    fn other_resources_and_identities_are_separate_entries() {
        let (cache, calls) = (TokenCache::new(), AtomicUsize::new(0));
        for key in [("a", "r1"), ("a", "r2"), ("b", "r1")] {
            let got = block_on(cache.get_or_fetch(&key, || 0, || fetch_ok(Tok(3600, "x"), &calls))).unwrap();
            assert_eq!(got.1, Outcome::Fetched);
        }
        assert_eq!(cache.values().len(), 3);
    }

    #[test]
    fn expired_or_unreadable_tokens_are_not_cached() {
        let (cache, calls) = (TokenCache::new(), AtomicUsize::new(0));
        block_on(cache.get_or_fetch(&("a", "r"), || 100, || fetch_ok(Tok(0, "x"), &calls))).unwrap();
        block_on(cache.get_or_fetch(&("a", "r"), || 100, || fetch_ok(Tok(0, "x"), &calls))).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(TokenCache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = futures::channel::oneshot::channel::<()>();
        let gate = futures::future::FutureExt::shared(gate_rx);
        let fetch = |calls: Arc<AtomicUsize>, gate: futures::future::Shared<_>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = gate.await;
            Ok::<_, String>(Tok(3600, "one"))
        };
        let a = cache.get_or_fetch(&("id", "r"), || 0, || fetch(calls.clone(), gate.clone()));
        let b = cache.get_or_fetch(&("id", "r"), || 0, || fetch(calls.clone(), gate.clone()));
        let open = async {
            gate_tx.send(()).unwrap();
            Ok::<_, String>((Tok(0, ""), Outcome::Cached))
        };
        let (ra, rb, _) = block_on(futures::future::join3(a, b, open));
        assert_eq!(ra.unwrap().1, Outcome::Fetched);
        assert_eq!(rb.unwrap(), (Tok(3600, "one"), Outcome::Cached));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
