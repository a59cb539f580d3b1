//! Bounds on what callers can make NMI hold: connections (node-wide and per pod), requests in
//! flight, each pod's request rate, how long a request head may take to arrive and how long a
//! kept-alive connection may sit idle. One pod going over its share gets 429s or refused
//! connections; the other pods on the node are still served.
//!
//! Pure: every decision takes the time as an argument. The listener (`listener`) and the
//! request shell (`server`) apply them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The request path's bounds, from the flags. The defaults never limit an SDK that works
/// against a VM's real IMDS (which allows 20 token requests a second for the whole VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's start (or, kept alive, its next request's first byte) to the end
    /// of the request's head.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections on the node; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one source address (one pod); more are closed at once.
    pub max_connections_per_pod: usize,
    /// Requests being answered at once on the node; more get 503 with `Retry-After: 1`.
    pub max_requests_in_flight: usize,
    /// Each source address's request rate; more get 429 with `Retry-After`.
    pub pod_rate: Rate,
    /// Largest request body the proxy forwards (IMDS requests have none or a small JSON one).
    pub max_body_bytes: usize,
    /// The proxy's whole call to IMDS, and the time a request body may take to arrive.
    pub proxy_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            max_connections_per_pod: 128,
            max_requests_in_flight: 512,
            pod_rate: Rate { per_second: 100, burst: 300 },
            max_body_bytes: 64 * 1024,
            proxy_timeout: Duration::from_secs(30),
        }
    }
}

/// A token bucket's shape: `burst` requests at once, refilled at `per_second`. Zero
/// `per_second` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

// === Per-pod request rate ===

/// Addresses tracked at most; full (idle) buckets are dropped first, then newcomers share one.
const MAX_TRACKED_ADDRESSES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per source address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by addresses that arrive while the table is full of active ones.
    overflow: Option<Bucket>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self { rate, buckets: HashMap::new(), overflow: None }
    }

    /// Takes one request from `ip`'s bucket, or says how long until one is available.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate.per_second == 0 {
            return Ok(());
        }
        let rate = self.rate;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            self.buckets.retain(|_, b| refilled(*b, rate, now).tokens < f64::from(rate.burst));
        }
        let bucket = if self.buckets.len() < MAX_TRACKED_ADDRESSES || self.buckets.contains_key(&ip) {
            self.buckets.entry(ip).or_insert(Bucket { tokens: f64::from(rate.burst), at: now })
        } else {
            self.overflow.get_or_insert(Bucket { tokens: f64::from(rate.burst), at: now })
        };
        *bucket = refilled(*bucket, rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / f64::from(rate.per_second)))
        }
    }

    /// Addresses with a bucket of their own (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

fn refilled(b: Bucket, rate: Rate, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    let tokens = (b.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
    Bucket { tokens, at: now.max(b.at) }
}

/// `Retry-After` in whole seconds, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

// === Connections ===

/// Open connections, node-wide and by source address.
#[derive(Debug)]
pub struct ConnectionSlots {
    max_total: usize,
    max_per_address: usize,
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl ConnectionSlots {
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Self { max_total, max_per_address, total: 0, by_address: HashMap::new() }
    }

    /// Takes a slot for a new connection from `ip`, if both caps allow it.
    pub fn try_open(&mut self, ip: IpAddr) -> bool {
        let mine = self.by_address.get(&ip).copied().unwrap_or(0);
        if self.total >= self.max_total || mine >= self.max_per_address {
            return false;
        }
        self.total += 1;
        self.by_address.insert(ip, mine + 1);
        true
    }

    /// Gives back a slot taken by [`ConnectionSlots::try_open`].
    pub fn close(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_address.get_mut(&ip) {
            *n -= 1;
            self.total = self.total.saturating_sub(1);
            if *n == 0 {
                self.by_address.remove(&ip);
            }
        }
    }

    pub fn open(&self) -> usize {
        self.total
    }
}

// === Request heads and idle connections ===

/// Which part of the request cycle a connection is in, as seen from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request after an answer.
    Idle { since: Instant },
    /// Reading a request head that started at `since`; `scan` tracks its end (`\n`, optional `\r`, `\n`).
    Head { since: Instant, scan: HeadScan },
    /// The head is complete; the request is being answered. No deadline: an answer may take
    /// as long as the identity wait.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadScan {
    /// Only line breaks so far (servers skip empty lines before a request line).
    Blank,
    Text,
    AfterLf,
    AfterLfCr,
}

/// The deadline of a connection's next read: the idle timeout while waiting for a request,
/// the header read timeout from a request's first byte until its head is complete.
#[derive(Clone, Debug)]
pub struct HeadClock {
    header: Duration,
    idle: Duration,
    phase: Phase,
}

impl HeadClock {
    /// A new connection: its first request head must be complete within the header timeout
    /// (a client connects to send a request; only kept-alive connections may idle).
    pub fn new(now: Instant, header: Duration, idle: Duration) -> Self {
        Self { header, idle, phase: Phase::Head { since: now, scan: HeadScan::Blank } }
    }

    /// Bytes read from the client.
    pub fn on_read(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            self.phase = match self.phase {
                Phase::Idle { .. } => Phase::Head { since: now, scan: scan(HeadScan::Blank, b) },
                Phase::Head { scan: s, .. } if is_head_end(s, b) => Phase::Busy,
                Phase::Head { since, scan: s } => Phase::Head { since, scan: scan(s, b) },
                Phase::Busy => return,
            };
        }
    }

    /// Bytes written to the client: an answer, so the next read starts a new request.
    pub fn on_write(&mut self, now: Instant) {
        self.phase = Phase::Idle { since: now };
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since } => Some(since + self.idle),
            Phase::Head { since, .. } => Some(since + self.header),
            Phase::Busy => None,
        }
    }
}

fn scan(state: HeadScan, b: u8) -> HeadScan {
    match (state, b) {
        (HeadScan::Blank, b'\r' | b'\n') => HeadScan::Blank,
        (_, b'\n') => HeadScan::AfterLf,
        (HeadScan::AfterLf, b'\r') => HeadScan::AfterLfCr,
        _ => HeadScan::Text,
    }
}

/// A line feed right after a line feed (and an optional carriage return) ends a head; blank
/// lines before any text stay [`HeadScan::Blank`] and never do.
fn is_head_end(state: HeadScan, b: u8) -> bool {
    b == b'\n' && matches!(state, HeadScan::AfterLf | HeadScan::AfterLfCr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_pod_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Rate { per_second: 10, burst: 3 });
        for _ in 0..3 {
            assert_eq!(rl.check(A, t0), Ok(()));
        }
        let wait = rl.check(A, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(rl.check(B, t0), Ok(()), "another pod has its own bucket");
        assert_eq!(rl.check(A, t0 + secs(0.1)), Ok(()), "one token after 1/rate");
        assert!(rl.check(A, t0 + secs(0.1)).is_err());
        for _ in 0..3 {
            assert_eq!(rl.check(A, t0 + secs(10.0)), Ok(()), "refilled up to the burst");
        }
        assert!(rl.check(A, t0 + secs(10.0)).is_err(), "never beyond the burst");
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Rate { per_second: 0, burst: 0 });
        assert!((0..10_000).all(|_| rl.check(A, t0).is_ok()));
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn tracked_addresses_are_bounded_idle_ones_dropped_first() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Rate { per_second: 1, burst: 2 });
        let ip = |i: usize| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).unwrap()));
        for i in 0..MAX_TRACKED_ADDRESSES {
            rl.check(ip(i), t0).unwrap();
        }
        assert_eq!(rl.tracked(), MAX_TRACKED_ADDRESSES);
        rl.check(ip(MAX_TRACKED_ADDRESSES), t0).unwrap();
        rl.check(ip(MAX_TRACKED_ADDRESSES + 1), t0).unwrap();
        assert!(rl.check(ip(MAX_TRACKED_ADDRESSES + 2), t0).is_err(), "newcomers share one bucket while all are busy");
        assert_eq!(rl.tracked(), MAX_TRACKED_ADDRESSES);
        rl.check(ip(MAX_TRACKED_ADDRESSES + 3), t0 + secs(5.0)).unwrap();
        assert_eq!(rl.tracked(), 1, "refilled buckets are dropped to make room");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(secs(0.01)), 1);
        assert_eq!(retry_after_secs(secs(1.0)), 1);
        assert_eq!(retry_after_secs(secs(1.5)), 2);
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let mut slots = ConnectionSlots::new(3, 2);
        assert!(slots.try_open(A) && slots.try_open(A));
        assert!(!slots.try_open(A), "per address");
        assert!(slots.try_open(B));
        assert!(!slots.try_open(B), "in total");
        slots.close(A);
        assert!(slots.try_open(B));
        slots.close(IpAddr::V4(std::net::Ipv4Addr::new(1, 1, 1, 1)));
        assert_eq!(slots.open(), 3, "closing an address with no slot changes nothing");
    }

    fn clock(t0: Instant) -> HeadClock {
        HeadClock::new(t0, Duration::from_secs(10), Duration::from_secs(120))
    }

    #[test]
    fn a_new_connection_has_the_header_deadline_from_its_start() {
        let t0 = Instant::now();
        let mut c = clock(t0);
        assert_eq!(c.deadline(), Some(t0 + secs(10.0)));
        c.on_read(b"GET / HT", t0 + secs(1.0));
        c.on_read(b"TP/1.1\r\nHost: x\r\n", t0 + secs(5.0));
        assert_eq!(c.deadline(), Some(t0 + secs(10.0)), "bytes do not extend the head's deadline");
        c.on_read(b"\r\n", t0 + secs(6.0));
        assert_eq!(c.deadline(), None, "no deadline while the answer is prepared");
    }

    #[test]
    fn a_kept_alive_connection_has_the_idle_deadline_then_the_header_deadline() {
        let t0 = Instant::now();
        let mut c = clock(t0);
        c.on_read(b"GET / HTTP/1.1\r\n\r\n", t0);
        c.on_write(t0 + secs(90.0));
        assert_eq!(c.deadline(), Some(t0 + secs(210.0)), "idle after the answer");
        c.on_read(b"G", t0 + secs(200.0));
        assert_eq!(c.deadline(), Some(t0 + secs(210.0)), "the next head's own deadline");
        c.on_read(b"ET / HTTP/1.1\r\n\r\n", t0 + secs(209.0));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn bare_line_feeds_end_a_head_but_leading_blank_lines_do_not() {
        let t0 = Instant::now();
        let mut c = clock(t0);
        c.on_read(b"\r\n\r\n\n\n", t0 + secs(3.0));
        assert_eq!(c.deadline(), Some(t0 + secs(10.0)), "blank lines never end a head");
        c.on_read(b"GET / HTTP/1.1\nHost: x\n\n", t0);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn a_head_split_anywhere_is_recognised() {
        let head = b"GET /metadata/identity/oauth2/token HTTP/1.1\r\nMetadata: true\r\n\r\n";
        let t0 = Instant::now();
        for split in 0..head.len() {
            let mut c = clock(t0);
            c.on_read(&head[..split], t0);
            c.on_read(&head[split..], t0);
            assert_eq!(c.deadline(), None, "split at {split}");
        }
        let mut c = clock(t0);
        for b in &head[..head.len() - 1] {
            c.on_read(std::slice::from_ref(b), t0);
        }
        assert!(c.deadline().is_some(), "one byte short");
    }
}
