//! Per-socket rate limit: a token bucket (60 messages a second, bursts to
//! 120) drops the excess and reports it at most once a second; more than
//! 240 messages within any 2 s is a flood and closes the socket (4008).
//! Room changes and voice offers have buckets of their own ([`join_bucket`]:
//! 3 at once, then one a second; [`voice_offer_bucket`]: one a second).
//!
//! [`Interval`]: at most one event per key (a user) within a gap, for HTTP
//! routes such as telemetry (one report a second per user); and, with
//! [`Interval::mark`] and [`Interval::wait_left`], a cooldown: a user the
//! server closed for abuse waits the gap before its next hello is taken.

use plaza_shared::limits::{FLOOD_MESSAGES, FLOOD_WINDOW_MS, JOIN_BURST, JOIN_EVERY_MS, RATE_BURST, RATE_PER_SECOND};
use plaza_shared::voice::OFFER_EVERY_MS;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Over the rate: drop it; `report` is true at most once a second.
    Dropped { report: bool },
    /// Over the flood limit: close.
    Flood,
}

/// A token bucket: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled: Option<Instant>,
}

impl Bucket {
    pub fn new(burst: u32, per_second: f64) -> Bucket {
        Bucket { tokens: f64::from(burst), burst: f64::from(burst), per_second, refilled: None }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(then) = self.refilled {
            self.tokens = (self.tokens + now.duration_since(then).as_secs_f64() * self.per_second).min(self.burst);
        }
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

/// A socket's room changes: [`JOIN_BURST`] at once, then one every
/// [`JOIN_EVERY_MS`].
pub fn join_bucket() -> Bucket {
    Bucket::new(JOIN_BURST, 1000.0 / JOIN_EVERY_MS as f64)
}

/// A socket's voice offers: one every [`OFFER_EVERY_MS`] (each builds a
/// peer connection).
pub fn voice_offer_bucket() -> Bucket {
    Bucket::new(1, 1000.0 / OFFER_EVERY_MS as f64)
}

#[derive(Debug)]
pub struct Limiter {
    bucket: Bucket,
    last_report: Option<Instant>,
    /// Arrival times within the flood window (at most FLOOD_MESSAGES + 1).
    recent: VecDeque<Instant>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    pub fn new() -> Self {
        Limiter { bucket: Bucket::new(RATE_BURST, f64::from(RATE_PER_SECOND)), last_report: None, recent: VecDeque::new() }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        let window = Duration::from_millis(FLOOD_WINDOW_MS);
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() as u32 > FLOOD_MESSAGES {
            return Admission::Flood;
        }
        if self.bucket.take(now) {
            return Admission::Allowed;
        }
        let report = self.last_report.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if report {
            self.last_report = Some(now);
        }
        Admission::Dropped { report }
    }
}

/// At most one admitted event per key within `gap`. Refused attempts don't
/// count. Keys whose last event is older than the gap are forgotten when the
/// map grows, so it holds about as many keys as were active within one gap.
#[derive(Debug)]
pub struct Interval<K> {
    gap: Duration,
    last: HashMap<K, Instant>,
    /// Prune when the map reaches this size (doubles with the live keys).
    prune_at: usize,
}

impl<K: Eq + Hash + Clone> Interval<K> {
    pub fn new(gap: Duration) -> Self {
        Interval { gap, last: HashMap::new(), prune_at: 1024 }
    }

    /// True (and remembered) when `key`'s last admitted event is at least
    /// `gap` before `now`, or it has none.
    pub fn admit<Q>(&mut self, key: &Q, now: Instant) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if self.wait_left(key, now).is_some() {
            return false;
        }
        match self.last.get_mut(key) {
            Some(then) => *then = now,
            None => self.mark(key.to_owned(), now),
        }
        true
    }

    /// Remembers an event of `key` at `now`, whatever came before: its next
    /// one waits the gap from here.
    pub fn mark(&mut self, key: K, now: Instant) {
        if self.last.len() >= self.prune_at {
            let gap = self.gap;
            self.last.retain(|_, then| now.saturating_duration_since(*then) < gap);
            self.prune_at = (self.last.len() * 2).max(1024);
        }
        self.last.insert(key, now);
    }

    /// What is left of the gap after `key`'s last event, if any.
    pub fn wait_left<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let then = self.last.get(key)?;
        self.gap.checked_sub(now.saturating_duration_since(*then)).filter(|left| !left.is_zero())
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_changes_come_three_at_once_then_one_a_second() {
        let mut joins = join_bucket();
        let t0 = Instant::now();
        assert!((0..3).all(|_| joins.take(t0)), "three at once");
        assert!(!joins.take(t0), "the fourth waits");
        assert!(!joins.take(t0 + Duration::from_millis(900)), "not before a second");
        assert!(joins.take(t0 + Duration::from_millis(1_000)));
        assert!(!joins.take(t0 + Duration::from_millis(1_010)));
        // Long quiet fills it back to three, no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| joins.take(later)).count(), 3);
    }

    #[test]
    fn one_event_per_key_per_gap_and_old_keys_are_forgotten() {
        let mut l: Interval<String> = Interval::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(l.admit("ada", t0));
        assert!(!l.admit("ada", t0 + Duration::from_millis(999)), "within the gap");
        assert!(l.admit("bob", t0), "per key");
        assert!(l.admit("ada", t0 + Duration::from_millis(1000)), "the refused attempt didn't count");
        assert!(!l.admit("ada", t0 + Duration::from_millis(1500)));
        // Thousands of one-off keys don't pile up.
        for i in 0..5000u32 {
            assert!(l.admit(&format!("u{i}"), t0 + Duration::from_secs(10 + u64::from(i))));
        }
        assert!(l.len() <= 2048, "{}", l.len());
    }

    #[test]
    fn a_marked_key_waits_its_time_others_not_at_all_and_ended_waits_are_forgotten() {
        let mut c: Interval<String> = Interval::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.mark("eve".into(), t0);
        assert_eq!(c.wait_left("eve", t0 + Duration::from_secs(3)), Some(Duration::from_secs(7)));
        assert_eq!(c.wait_left("ada", t0), None, "per key");
        assert_eq!(c.wait_left("eve", t0 + Duration::from_secs(10)), None, "over");
        // Barred again later: the new wait counts.
        c.mark("eve".into(), t0 + Duration::from_secs(20));
        assert_eq!(c.wait_left("eve", t0 + Duration::from_secs(25)), Some(Duration::from_secs(5)));
        for i in 0..5000u64 {
            c.mark(format!("u{i}"), t0 + Duration::from_secs(100 + 20 * i));
        }
        assert!(c.len() <= 2048, "{}", c.len());
    }

    #[test]
    fn bursts_to_120_then_drops_reporting_once_a_second() {
        let mut l = Limiter::new();
        let t0 = Instant::now();
        for i in 0..120 {
            assert_eq!(l.admit(t0), Admission::Allowed, "message {i}");
        }
        assert_eq!(l.admit(t0), Admission::Dropped { report: true });
        assert_eq!(l.admit(t0), Admission::Dropped { report: false });
        // 100 ms later six tokens have come back.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..6 {
            assert_eq!(l.admit(t1), Admission::Allowed);
        }
        assert_eq!(l.admit(t1), Admission::Dropped { report: false });
        assert_eq!(l.admit(t0 + Duration::from_millis(1100)), Admission::Allowed);
    }

    #[test]
    fn a_steady_60_per_second_is_never_dropped() {
        let mut l = Limiter::new();
        let t0 = Instant::now();
        for i in 0..600u64 {
            let at = t0 + Duration::from_micros(i * 16_667);
            assert_eq!(l.admit(at), Admission::Allowed, "message {i}");
        }
    }

    #[test]
    fn more_than_240_within_2_s_is_a_flood() {
        let mut l = Limiter::new();
        let t0 = Instant::now();
        let mut verdicts = Vec::new();
        for i in 0..241u64 {
            verdicts.push(l.admit(t0 + Duration::from_millis(i * 8)));
        }
        assert!(verdicts[..240].iter().all(|v| *v != Admission::Flood));
        assert!(verdicts[..240].iter().any(|v| matches!(v, Admission::Dropped { .. })));
        assert_eq!(verdicts[240], Admission::Flood);
        // Spread over more than 2 s, the same count is no flood.
        let mut l = Limiter::new();
        assert!((0..241u64).all(|i| l.admit(t0 + Duration::from_millis(i * 9)) != Admission::Flood));
    }
}
