//! Per-socket rate limit: a token bucket (60 messages a second, bursts to
//! 120) drops the excess and reports it at most once a second; more than
//! 240 messages within any 2 s is a flood and closes the socket (4008).

use plaza_shared::limits::{FLOOD_MESSAGES, FLOOD_WINDOW_MS, RATE_BURST, RATE_PER_SECOND};
use std::collections::VecDeque;
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

#[derive(Debug)]
pub struct Limiter {
    tokens: f64,
    refilled: Option<Instant>,
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
        Limiter { tokens: f64::from(RATE_BURST), refilled: None, last_report: None, recent: VecDeque::new() }
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
        if let Some(then) = self.refilled {
            let gained = now.duration_since(then).as_secs_f64() * f64::from(RATE_PER_SECOND);
            self.tokens = (self.tokens + gained).min(f64::from(RATE_BURST));
        }
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admission::Allowed;
        }
        let report = self.last_report.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if report {
            self.last_report = Some(now);
        }
        Admission::Dropped { report }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
