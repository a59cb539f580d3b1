use super::*;
use futures::executor::block_on;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Clone, Debug, PartialEq)]
struct Tok(u64, &'static str);

impl Expiring for Tok {
    fn expires_on(&self) -> u64 {
        self.0
    }
    fn served_at(self, _now: u64) -> Self {
        self
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Fail(FailureKind, &'static str);

impl Classify for Fail {
    fn kind(&self) -> FailureKind {
        self.0
    }
}

/// (principal, resource); the principal is the group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key(&'static str, &'static str);

impl Grouped for Key {
    type Group = &'static str;
    fn group(&self) -> &'static str {
        self.0
    }
}

type Cache<V = Tok> = TokenCache<Key, V, Fail, &'static str>;

const K: Key = Key("id", "r");

struct Clock(AtomicU64);

impl Clock {
    fn at(t: u64) -> Self {
        Self(AtomicU64::new(t))
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, t: u64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

fn cache() -> Cache {
    TokenCache::new(CacheLimits::default())
}

/// One request for `key` at the clock's time, answered by `result` if the source is asked;
/// counts the asks.
fn get<V: Expiring + Clone>(
    cache: &Cache<V>,
    key: &Key,
    clock: &Clock,
    calls: &AtomicUsize,
    result: Result<V, Fail>,
) -> Result<(V, Outcome), Fail> {
    block_on(cache.get(
        key,
        "source",
        || clock.now(),
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { result }
        },
    ))
}

fn refused() -> Result<Tok, Fail> {
    Err(Fail(FailureKind::Refusal, "HTTP 400 Identity not found"))
}

fn unavailable() -> Result<Tok, Fail> {
    Err(Fail(FailureKind::Unavailable, "HTTP 503"))
}

#[test]
fn a_fresh_token_is_served_from_the_cache() {
    let (cache, clock, calls) = (cache(), Clock::at(1000), AtomicUsize::new(0));
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(4600, "a"))), Ok((Tok(4600, "a"), Outcome::Fetched)));
    clock.set(3000);
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(9999, "b"))), Ok((Tok(4600, "a"), Outcome::Cached)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_request_fetches_once_a_token_is_ten_minutes_from_expiry() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &K, &clock, &calls, Ok(Tok(3600, "a"))).unwrap();
    clock.set(3000);
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(7200, "b"))), Ok((Tok(7200, "b"), Outcome::Fetched)));
}

#[test]
fn short_lived_tokens_are_served_until_half_life() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &K, &clock, &calls, Ok(Tok(60, "a"))).unwrap();
    clock.set(29);
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(90, "b"))).unwrap().1, Outcome::Cached);
    clock.set(31);
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(91, "b"))).unwrap().1, Outcome::Fetched);
}

#[test]
fn a_valid_token_is_served_while_the_source_is_unavailable_until_it_expires() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &K, &clock, &calls, Ok(Tok(3600, "a"))).unwrap();
    clock.set(3500);
    assert_eq!(get(&cache, &K, &clock, &calls, unavailable()), Ok((Tok(3600, "a"), Outcome::Stale)));
    clock.set(3600);
    assert_eq!(get(&cache, &K, &clock, &calls, unavailable()), Err(Fail(FailureKind::Unavailable, "HTTP 503")));
}

#[test]
fn a_refusal_is_never_masked_by_a_cached_token() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &K, &clock, &calls, Ok(Tok(3600, "a"))).unwrap();
    clock.set(3500);
    assert_eq!(get(&cache, &K, &clock, &calls, refused()), refused().map(|t| (t, Outcome::Fetched)));
    clock.set(3503);
    let remembered = get(&cache, &K, &clock, &calls, Ok(Tok(9000, "b")));
    assert_eq!(remembered, refused().map(|t| (t, Outcome::Fetched)), "answered from memory within the failure TTL");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    clock.set(3510);
    let after = get(&cache, &K, &clock, &calls, unavailable());
    assert_eq!(after, unavailable().map(|t| (t, Outcome::Fetched)), "the dropped token does not come back as stale");
}

#[test]
fn failures_are_remembered_for_a_short_time_only() {
    let (cache, clock, calls) = (cache(), Clock::at(100), AtomicUsize::new(0));
    for _ in 0..50 {
        assert!(get(&cache, &K, &clock, &calls, unavailable()).is_err());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a hammering pod does not hammer the source");
    clock.set(105);
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(3600, "a"))).unwrap().1, Outcome::Fetched);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn this_nodes_own_throttling_is_not_remembered_and_serves_a_valid_token() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    let throttled = || Err(Fail(FailureKind::Throttled, "429"));
    assert_eq!(get(&cache, &K, &clock, &calls, throttled()), Err(Fail(FailureKind::Throttled, "429")));
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(3600, "a"))).unwrap().1, Outcome::Fetched);
    clock.set(3500);
    assert_eq!(get(&cache, &K, &clock, &calls, throttled()), Ok((Tok(3600, "a"), Outcome::Stale)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_cached_token_says_its_remaining_life() {
    let cache: Cache<TokenJson> = TokenCache::new(CacheLimits::default());
    let (clock, calls) = (Clock::at(1_000), AtomicUsize::new(0));
    let token = TokenJson { expires_on: "87400".into(), expires_in: "86400".into(), ..Default::default() };
    let (first, _) = get(&cache, &K, &clock, &calls, Ok(token.clone())).unwrap();
    assert_eq!(first.expires_in, "86400", "a fetched token as received");
    clock.set(73_000);
    let (cached, outcome) = get(&cache, &K, &clock, &calls, Ok(token)).unwrap();
    assert_eq!((cached.expires_in.as_str(), outcome), ("14400", Outcome::Cached), "fetched 20 h ago");
}

#[test]
fn tokens_in_use_are_due_for_refresh_before_requests_would_wait_and_idle_ones_are_not() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    let idle = Key("idle", "r");
    get(&cache, &K, &clock, &calls, Ok(Tok(86_400, "a"))).unwrap();
    get(&cache, &idle, &clock, &calls, Ok(Tok(86_400, "b"))).unwrap();
    clock.set(80_000);
    get(&cache, &K, &clock, &calls, Ok(Tok(0, "unused"))).unwrap();
    assert!(cache.due(85_000).is_empty(), "24 min left: not yet");
    let due = cache.due(85_600);
    assert_eq!(due, vec![(K, "source")], "15 min left and requested 1.5 h ago; the idle entry stays");
    assert!(Stored { value: Tok(86_400, "a"), fetched_at: 0 }.is_fresh(85_600), "requests are still served");
    assert!(cache.due(85_600 + 10).iter().all(|(k, _)| *k != idle));
}

#[test]
fn a_background_refresh_replaces_the_token_and_a_refused_one_drops_it() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &K, &clock, &calls, Ok(Tok(3600, "a"))).unwrap();
    clock.set(2800);
    let refreshed = block_on(cache.refresh(&K, || clock.now(), || async { Ok(Tok(6400, "b")) }));
    assert!(refreshed);
    assert!(!block_on(cache.refresh(&K, || clock.now(), || async { Ok(Tok(1, "never")) })), "no longer due");
    clock.set(3200);
    assert_eq!(get(&cache, &K, &clock, &calls, unavailable()), Ok((Tok(6400, "b"), Outcome::Cached)));
    clock.set(5700);
    assert!(block_on(cache.refresh(&K, || clock.now(), || async { refused() })));
    assert_eq!(get(&cache, &K, &clock, &calls, Ok(Tok(9000, "c"))), refused().map(|t| (t, Outcome::Fetched)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "requests never waited on the source");
}

#[test]
fn the_cache_is_bounded_and_evicts_expired_then_least_recently_requested_entries() {
    let limits = CacheLimits { max_entries: 3, ..CacheLimits::default() };
    let (cache, clock, calls): (Cache, _, _) = (TokenCache::new(limits), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &Key("a", "r"), &clock, &calls, Ok(Tok(50, "expiring"))).unwrap();
    clock.set(10);
    get(&cache, &Key("b", "r"), &clock, &calls, Ok(Tok(3600, "b"))).unwrap();
    clock.set(20);
    get(&cache, &Key("c", "r"), &clock, &calls, Ok(Tok(3600, "c"))).unwrap();
    clock.set(60);
    get(&cache, &Key("d", "r"), &clock, &calls, Ok(Tok(3600, "d"))).unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(get(&cache, &Key("b", "r"), &clock, &calls, Ok(Tok(0, "x"))).unwrap().1, Outcome::Cached, "a went");
    get(&cache, &Key("e", "r"), &clock, &calls, Ok(Tok(3600, "e"))).unwrap();
    assert_eq!(get(&cache, &Key("b", "r"), &clock, &calls, Ok(Tok(0, "x"))).unwrap().1, Outcome::Cached);
    assert_eq!(get(&cache, &Key("c", "r"), &clock, &calls, Ok(Tok(3600, "c2"))).unwrap().1, Outcome::Fetched);
    assert_eq!(cache.len(), 3);
}

#[test]
fn one_principal_with_many_resources_evicts_only_its_own_entries() {
    let limits = CacheLimits { max_entries: 100, max_per_group: 2, ..CacheLimits::default() };
    let (cache, clock, calls): (Cache, _, _) = (TokenCache::new(limits), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &Key("victim", "r"), &clock, &calls, Ok(Tok(3600, "v"))).unwrap();
    for resource in ["r1", "r2", "r3", "r4", "r5"] {
        get(&cache, &Key("greedy", resource), &clock, &calls, Ok(Tok(3600, "g"))).unwrap();
    }
    assert_eq!(cache.len(), 3, "two of the greedy principal's and the victim's");
    let victim = get(&cache, &Key("victim", "r"), &clock, &calls, Ok(Tok(0, "x")));
    assert_eq!(victim.unwrap().1, Outcome::Cached);
}

#[test]
fn purge_keeps_valid_tokens_and_remembered_failures_only() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    get(&cache, &Key("a", "r"), &clock, &calls, Ok(Tok(100, "a"))).unwrap();
    get(&cache, &Key("b", "r"), &clock, &calls, Ok(Tok(3600, "b"))).unwrap();
    get(&cache, &Key("c", "r"), &clock, &calls, unavailable()).unwrap_err();
    assert_eq!(cache.purge(3), 3);
    assert_eq!(cache.purge(100), 1, "a expired and c's failure is forgotten");
}

#[test]
fn other_resources_and_principals_are_separate_entries() {
    let (cache, clock, calls) = (cache(), Clock::at(0), AtomicUsize::new(0));
    for key in [Key("a", "r1"), Key("a", "r2"), Key("b", "r1")] {
        assert_eq!(get(&cache, &key, &clock, &calls, Ok(Tok(3600, "x"))).unwrap().1, Outcome::Fetched);
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn expired_or_unreadable_tokens_are_not_cached() {
    let (cache, clock, calls) = (cache(), Clock::at(100), AtomicUsize::new(0));
    get(&cache, &K, &clock, &calls, Ok(Tok(0, "x"))).unwrap();
    get(&cache, &K, &clock, &calls, Ok(Tok(0, "x"))).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Two requests for one key while the source is held: one fetch, both answered by it.
type Answer = Result<(Tok, Outcome), Fail>;

fn shared_fetch(result: Result<Tok, Fail>) -> (Answer, Answer, usize) {
    let cache = Arc::new(cache());
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate_tx, gate_rx) = futures::channel::oneshot::channel::<()>();
    let gate = futures::future::FutureExt::shared(gate_rx);
    let fetch = |calls: Arc<AtomicUsize>, gate: futures::future::Shared<_>, result: Result<Tok, Fail>| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        let _ = gate.await;
        result
    };
    let a = cache.get(&K, "s", || 0, || fetch(calls.clone(), gate.clone(), result.clone()));
    let b = cache.get(&K, "s", || 0, || fetch(calls.clone(), gate.clone(), result.clone()));
    let open = async {
        gate_tx.send(()).unwrap();
    };
    let (ra, rb, ()) = block_on(futures::future::join3(a, b, open));
    (ra, rb, calls.load(Ordering::SeqCst))
}

#[test]
fn concurrent_misses_share_one_fetch_and_one_failure() {
    let (a, b, calls) = shared_fetch(Ok(Tok(3600, "one")));
    assert_eq!((a.unwrap().1, b.unwrap(), calls), (Outcome::Fetched, (Tok(3600, "one"), Outcome::Cached), 1));
    let (a, b, calls) = shared_fetch(refused());
    assert_eq!((a.is_err(), b, calls), (true, refused().map(|t| (t, Outcome::Fetched)), 1));
}
