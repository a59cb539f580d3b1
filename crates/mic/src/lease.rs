//! The lease rules, pure and with time passed in: when we may write a lock record, when our
//! leadership ends, and how long one acquire-or-renew attempt may take.
//!
//! Safety argument. Another replica may take a lock only once `lease` has passed since it last
//! saw the record change (its own clock). Our renewal's write reaches the API server after we
//! *started* the attempt, so the other replica saw it at that moment or later. We therefore
//! lead only until `attempt start + renew_deadline`, and `renew_deadline` is half of `lease`:
//! we stop writing at least `lease / 2` before anyone else may start. That margin absorbs clock
//! rate differences, scheduling pauses and the one-second precision of the Endpoints record
//! (a client-go replica compares the record text, so two renewals within one second look like
//! one to it).

use std::time::Duration;

// Tokio's clock, so tests can pause it; on a running runtime it is the monotonic clock.
use tokio::time::Instant;

/// The shortest lease we run with: a quarter of it (the retry period) is one second, so every
/// renewal changes the Endpoints record's second-precision `renewTime`.
pub const MIN_LEASE: Duration = Duration::from_secs(4);
/// The longest lease we run with (a lease is written in whole seconds as an `i32`).
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// The election's periods, all derived from `--leader-election-duration` as the original did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a record stays valid after it last changed; written into the record.
    pub lease: Duration,
    /// A leader that could not renew for this long stops acting (half the lease).
    pub renew_deadline: Duration,
    /// Pause between attempts (a quarter of the lease).
    pub retry: Duration,
}

impl Timing {
    /// The lease is whole seconds within [`MIN_LEASE`, `MAX_LEASE`] (what the record can carry
    /// and what other replicas will use); the deadline and retry period follow from it.
    pub fn from_duration(duration: Duration) -> Self {
        let lease = Duration::from_secs(duration.clamp(MIN_LEASE, MAX_LEASE).as_secs());
        Self { lease, renew_deadline: lease / 2, retry: lease / 4 }
    }

    /// The lease as written into a record.
    pub fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease.as_secs()).unwrap_or(i32::MAX)
    }
}

/// A lock's record as we last read it, and when we first saw it in that form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub holder: String,
    /// The holder's lease in seconds, as written in the record.
    pub lease_seconds: i32,
    /// Changes with every write to the lock object (the record, or anything else on it).
    pub version: String,
    /// Our clock when this version was first seen.
    pub seen_at: Instant,
}

/// What we may do with a lock we just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// We hold it: write a renewed record.
    Renew,
    /// Free, or its holder's lease ran out: write a fresh record naming us.
    Take,
    /// Someone else holds it and may still be alive.
    Wait,
}

/// Keeps the earlier sighting while the object is unchanged, so an unchanged record ages.
pub fn observe(previous: Option<&Observed>, holder: &str, lease_seconds: i32, version: &str, now: Instant) -> Observed {
    match previous {
        Some(p) if p.holder == holder && p.lease_seconds == lease_seconds && p.version == version => p.clone(),
        _ => Observed { holder: holder.to_owned(), lease_seconds, version: version.to_owned(), seen_at: now },
    }
}

/// client-go's rule: a record held by someone else may be taken only once its lease has passed
/// since we first saw it in its current form; an empty holder means released.
pub fn verdict(observed: &Observed, me: &str, now: Instant) -> Verdict {
    if observed.holder.is_empty() {
        return Verdict::Take;
    }
    if observed.holder == me {
        return Verdict::Renew;
    }
    let lease = Duration::from_secs(u64::try_from(observed.lease_seconds.max(1)).unwrap_or(1));
    if now.saturating_duration_since(observed.seen_at) >= lease { Verdict::Take } else { Verdict::Wait }
}

/// When one attempt must be given up: a leader cannot use an answer that comes after its
/// leadership ended; a follower gives up after one renew deadline.
pub fn attempt_deadline(leading_until: Option<Instant>, started: Instant, timing: &Timing) -> Instant {
    leading_until.unwrap_or_else(|| later(started, timing.renew_deadline))
}

/// What an attempt's result means for our leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// We lead until this instant unless renewed again.
    Leading(Instant),
    /// We do not lead.
    Follower,
    /// We led and could not renew before our deadline: stop for good.
    Lost,
}

/// Decides our leadership after an attempt that started at `started` and ended at `now`.
/// `held` says whether the attempt renewed or took both locks.
pub fn after_attempt(
    leading_until: Option<Instant>,
    held: bool,
    started: Instant,
    now: Instant,
    timing: &Timing,
) -> Next {
    if leading_until.is_some_and(|until| now >= until) {
        return Next::Lost;
    }
    let renewed_until = later(started, timing.renew_deadline);
    match (held, leading_until) {
        (true, _) if now < renewed_until => Next::Leading(renewed_until),
        (_, Some(until)) => Next::Leading(until),
        (_, None) => Next::Follower,
    }
}

/// Whether a leadership that ends at `until` is still in force at `now`.
pub fn is_leading(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|until| now < until)
}

/// `at + d`, or a far instant instead of overflowing.
pub fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).or_else(|| at.checked_add(Duration::from_secs(86400 * 365))).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing::from_duration(Duration::from_secs(15))
    }

    fn seen(holder: &str, at: Instant) -> Observed {
        Observed { holder: holder.into(), lease_seconds: 15, version: "1".into(), seen_at: at }
    }

    #[test]
    fn timing_follows_the_lease_in_whole_seconds_within_bounds() {
        let t = timing();
        assert_eq!((t.lease, t.renew_deadline, t.retry), (15 * S, 7500 * S / 1000, 3750 * S / 1000));
        assert_eq!(t.lease_seconds(), 15);
        for zeroish in [Duration::ZERO, Duration::from_millis(1), 3 * S] {
            assert_eq!(Timing::from_duration(zeroish).lease, MIN_LEASE, "{zeroish:?}");
        }
        assert_eq!(Timing::from_duration(Duration::from_millis(4900)).lease, 4 * S);
        assert_eq!(Timing::from_duration(Duration::MAX).lease, MAX_LEASE);
        assert!(Timing::from_duration(Duration::ZERO).retry > Duration::ZERO);
    }

    #[test]
    fn the_renew_deadline_ends_well_before_anyone_else_may_take_the_lock() {
        for secs in [0, 4, 5, 15, 60, 3600, u64::MAX] {
            let t = Timing::from_duration(Duration::from_secs(secs));
            assert!(t.renew_deadline < t.lease && t.lease - t.renew_deadline >= 2 * S, "{t:?}");
            assert!(t.retry > Duration::ZERO && t.retry < t.renew_deadline, "{t:?}");
        }
    }

    #[test]
    fn verdict_table() {
        let t0 = Instant::now();
        let cases = [
            (seen("", t0), t0, Verdict::Take),
            (seen("me", t0), t0, Verdict::Renew),
            (seen("me", t0), t0 + 100 * S, Verdict::Renew),
            (seen("other", t0), t0, Verdict::Wait),
            (seen("other", t0), t0 + 14 * S, Verdict::Wait),
            (seen("other", t0), t0 + 15 * S, Verdict::Take),
            (Observed { lease_seconds: 0, ..seen("other", t0) }, t0 + S, Verdict::Take),
            (Observed { lease_seconds: -5, ..seen("other", t0) }, t0, Verdict::Wait),
            // A clock that reads earlier than the sighting (never for Instant, but harmless).
            (seen("other", t0 + 10 * S), t0, Verdict::Wait),
        ];
        for (i, (observed, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(verdict(&observed, "me", now), want, "case {i}");
        }
    }

    #[test]
    fn an_unchanged_record_keeps_its_first_sighting_and_any_change_restarts_it() {
        let t0 = Instant::now();
        let first = observe(None, "other", 15, "1", t0);
        assert_eq!(first.seen_at, t0);
        assert_eq!(observe(Some(&first), "other", 15, "1", t0 + 9 * S).seen_at, t0);
        assert_eq!(observe(Some(&first), "other", 15, "2", t0 + 9 * S).seen_at, t0 + 9 * S);
        assert_eq!(observe(Some(&first), "other", 30, "1", t0 + 9 * S).seen_at, t0 + 9 * S);
        assert_eq!(observe(Some(&first), "new", 15, "1", t0 + 9 * S).seen_at, t0 + 9 * S);
    }

    #[test]
    fn after_attempt_table() {
        let t = timing();
        let t0 = Instant::now();
        let until = t0 + t.renew_deadline;
        let cases = [
            // (leading_until, held, started, now) -> next
            (None, false, t0, t0 + S, Next::Follower),
            (None, true, t0, t0 + S, Next::Leading(until)),
            // An acquisition answered after a whole deadline proves nothing.
            (None, true, t0, until, Next::Follower),
            (Some(until), true, t0 + 2 * S, t0 + 3 * S, Next::Leading(until + 2 * S)),
            // A failed renewal keeps the old deadline while it lasts...
            (Some(until), false, t0 + 2 * S, t0 + 3 * S, Next::Leading(until)),
            // ...and loses at it, even if the answer that came too late was a success.
            (Some(until), false, t0 + 2 * S, until, Next::Lost),
            (Some(until), true, t0 + 2 * S, until, Next::Lost),
            (Some(until), true, t0 + 2 * S, until + 100 * S, Next::Lost),
        ];
        for (i, (leading, held, started, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(after_attempt(leading, held, started, now, &t), want, "case {i}");
        }
    }

    #[test]
    fn attempts_end_at_the_leadership_deadline_or_one_renew_deadline_for_a_follower() {
        let t = timing();
        let t0 = Instant::now();
        assert_eq!(attempt_deadline(Some(t0 + S), t0, &t), t0 + S);
        assert_eq!(attempt_deadline(None, t0, &t), t0 + t.renew_deadline);
    }

    #[test]
    fn leadership_ends_strictly_at_its_deadline() {
        let t0 = Instant::now();
        assert!(is_leading(Some(t0 + S), t0));
        assert!(!is_leading(Some(t0), t0));
        assert!(!is_leading(None, t0));
        assert!(later(t0, Duration::MAX) > t0);
    }
}
