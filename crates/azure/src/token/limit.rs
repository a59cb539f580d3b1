//! A node-wide budget for IMDS calls. Azure's IMDS allows a VM 20 managed-identity requests per
//! second and 5 at a time, shared by everything on the node; past that it answers 429. The
//! limiter keeps every attempt of one client (one per node) under both, waiting a bounded time
//! for room and otherwise failing fast with [`TokenError::Throttled`], so pods are told to come
//! back instead of queueing without bound.
//!
//! [`RateWindow`] is the pure decision (time passed in); [`ImdsLimiter`] the async shell.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::TokenError;

const WINDOW: Duration = Duration::from_secs(1);

/// The limits, from flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImdsLimits {
    /// Calls in progress at once (IMDS: 5).
    pub max_concurrent: usize,
    /// Calls started within any one second (IMDS: 20).
    pub max_per_second: usize,
    /// How long an attempt may wait for room before it is refused.
    pub max_wait: Duration,
}

impl Default for ImdsLimits {
    fn default() -> Self {
        Self { max_concurrent: 5, max_per_second: 20, max_wait: Duration::from_secs(1) }
    }
}

/// The per-second budget. IMDS counts requests as they arrive, and a request arrives at some
/// point between being sent and its answer; so a call holds its place in the budget from when
/// it is sent until one second after it ends. Then any `limit + 1` calls that reach IMDS within
/// one second would all have held a place when the last of them was sent, which is refused:
/// IMDS never sees more than `limit` in a second, whatever the network delays.
#[derive(Debug)]
pub struct RateWindow {
    limit: usize,
    in_flight: usize,
    ended: VecDeque<Instant>,
}

/// How long to wait before asking again when every place is held by calls still in progress.
const BUSY_WAIT: Duration = Duration::from_millis(50);

impl RateWindow {
    pub fn new(limit: usize) -> Self {
        Self { limit: limit.max(1), in_flight: 0, ended: VecDeque::new() }
    }

    /// Takes a place for a call sent at `now`, or says how long until one frees up.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while self.ended.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
            self.ended.pop_front();
        }
        if self.in_flight + self.ended.len() < self.limit {
            self.in_flight += 1;
            return Ok(());
        }
        Err(self.ended.front().map_or(BUSY_WAIT, |oldest| (*oldest + WINDOW).saturating_duration_since(now)))
    }

    /// The call admitted earlier ended at `now`; its place frees up a second later.
    pub fn end(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.ended.push_back(now);
    }
}

/// Shared by every IMDS call of a node's NMI. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ImdsLimiter {
    concurrency: Arc<Semaphore>,
    window: Arc<Mutex<RateWindow>>,
    max_wait: Duration,
}

/// Room for one IMDS call; released when dropped (its per-second place a second later).
#[derive(Debug)]
pub struct ImdsPermit {
    _permit: OwnedSemaphorePermit,
    window: Arc<Mutex<RateWindow>>,
}

impl Drop for ImdsPermit {
    fn drop(&mut self) {
        self.window.lock().unwrap_or_else(PoisonError::into_inner).end(Instant::now());
    }
}

impl ImdsLimiter {
    pub fn new(limits: ImdsLimits) -> Self {
        Self {
            concurrency: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            window: Arc::new(Mutex::new(RateWindow::new(limits.max_per_second))),
            max_wait: limits.max_wait,
        }
    }

    /// Waits (at most the configured time) for a free slot and a start within the rate, in
    /// arrival order; [`TokenError::Throttled`] says when to come back otherwise.
    pub async fn acquire(&self) -> Result<ImdsPermit, TokenError> {
        let deadline = Instant::now() + self.max_wait;
        let acquired = tokio::time::timeout_at(deadline, self.concurrency.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = acquired else {
            return Err(TokenError::Throttled { retry_after: Duration::from_secs(1) });
        };
        loop {
            let now = Instant::now();
            let wait = match self.window.lock().unwrap_or_else(PoisonError::into_inner).admit(now) {
                Ok(()) => return Ok(ImdsPermit { _permit: permit, window: self.window.clone() }),
                Err(wait) => wait,
            };
            if now + wait > deadline {
                return Err(TokenError::Throttled { retry_after: whole_seconds(wait) });
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// `Retry-After` is whole seconds; never advise less than one.
fn whole_seconds(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_holds_its_place_from_sent_until_a_second_after_it_ends() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = RateWindow::new(3);
        assert_eq!(w.admit(ms(0)), Ok(()));
        assert_eq!(w.admit(ms(10)), Ok(()));
        assert_eq!(w.admit(ms(20)), Ok(()));
        assert_eq!(w.admit(ms(30)), Err(BUSY_WAIT), "all three still in progress");
        w.end(ms(400));
        assert_eq!(w.admit(ms(500)), Err(Duration::from_millis(900)), "until a second after the first ended");
        assert_eq!(w.admit(ms(1400)), Ok(()));
        w.end(ms(1500));
        w.end(ms(1600));
        w.end(ms(1700));
        assert_eq!(w.admit(ms(2000)), Err(Duration::from_millis(500)));
        assert_eq!(w.admit(ms(2500)), Ok(()));
    }

    /// Calls sent as fast as the window allows, each reaching the server after its own delay
    /// (anywhere between being sent and ending): no second of arrivals holds more than the limit.
    #[test]
    fn no_second_of_arrivals_holds_more_than_the_limit_whatever_the_delays() {
        let (t0, limit) = (Instant::now(), 4);
        let mut w = RateWindow::new(limit);
        let (mut now, mut arrivals, mut running) = (t0, Vec::new(), Vec::<(Instant, Instant)>::new());
        for i in 0..5000u64 {
            let mut ended: Vec<Instant> = running.iter().map(|(end, _)| *end).filter(|end| *end <= now).collect();
            ended.sort();
            ended.into_iter().for_each(|end| w.end(end));
            running.retain(|(end, _)| *end > now);
            match w.admit(now) {
                Ok(()) => {
                    let took = Duration::from_millis(5 + (i * 37) % 400);
                    let delay = Duration::from_millis((i * 53) % (5 + (i * 37) % 400));
                    arrivals.push(now + delay);
                    running.push((now + took, now));
                }
                Err(wait) => now += wait.min(Duration::from_millis(7)),
            }
        }
        arrivals.sort();
        for (i, first) in arrivals.iter().enumerate() {
            let within = arrivals[i..].iter().take_while(|a| a.duration_since(*first) < WINDOW).count();
            assert!(within <= limit, "{within} arrivals within a second");
        }
        assert!(arrivals.len() > 100, "the simulation made progress: {}", arrivals.len());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), Duration::from_secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(1500)), Duration::from_secs(2));
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_concurrency_cap_a_call_waits_then_is_throttled() {
        let limiter =
            ImdsLimiter::new(ImdsLimits { max_concurrent: 2, max_per_second: 100, max_wait: Duration::from_secs(1) });
        let (a, b) = (limiter.acquire().await.unwrap(), limiter.acquire().await.unwrap());
        let started = Instant::now();
        let third = limiter.acquire().await;
        assert!(matches!(third, Err(TokenError::Throttled { retry_after }) if retry_after == Duration::from_secs(1)));
        assert_eq!(started.elapsed(), Duration::from_secs(1), "waited the configured time");
        drop(a);
        assert!(limiter.acquire().await.is_ok(), "a released slot is reused");
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_rate_a_call_waits_for_the_window_within_its_budget() {
        let limiter = ImdsLimiter::new(ImdsLimits {
            max_concurrent: 10,
            max_per_second: 2,
            max_wait: Duration::from_millis(1500),
        });
        let started = Instant::now();
        for _ in 0..4 {
            drop(limiter.acquire().await.unwrap());
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1), "the third and fourth waited for the next second");
        let zero_wait =
            ImdsLimiter::new(ImdsLimits { max_concurrent: 10, max_per_second: 1, max_wait: Duration::ZERO });
        drop(zero_wait.acquire().await.unwrap());
        assert!(matches!(zero_wait.acquire().await, Err(TokenError::Throttled { .. })));
    }
}
