//! When to try again after a socket ended: the desktop client's policy, and
//! the load tool's simulated users' too, so that the reconnects it measures
//! are the ones players get.
//!
//! - A socket that dropped while the server holds its seat (a reset, a link
//!   given up as silent) tries again at once, after a random wait in
//!   [0, base/2): every millisecond of that wait is a frozen world, and the
//!   seat is waiting. The spread still keeps a crowd that lost the same link
//!   from arriving in one instant.
//! - Every other try, and every try after the first, waits a random time in
//!   [d/2, d] with d = base × 2ⁿ for the n-th try, capped: a server that is
//!   down or refusing is not hammered, and clients that failed together
//!   drift apart.
//!
//! Its user resets it once back in the room (the client on `joined`, the
//! load tool when the state is back).

use crate::rng::SplitMix;
use std::time::Duration;

/// The first try's scale: a drop's first try within a quarter second, any
/// other first try within half a second.
pub const BASE: Duration = Duration::from_millis(500);
/// The longest wait the desktop client makes between two tries.
pub const MAX: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix,
}

impl Backoff {
    /// The client's policy ([`BASE`], capped at [`MAX`]); `seed` sets the
    /// jitter, so two clients don't retry in lockstep.
    pub fn new(seed: u64) -> Backoff {
        Backoff { base: BASE, max: MAX, attempt: 0, rng: SplitMix::new(seed) }
    }

    /// The same, with another cap (the load tool's runs are short).
    pub fn with_max(mut self, max: Duration) -> Backoff {
        self.max = max;
        self
    }

    /// Tries made since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next try: in [d/2, d], d = base × 2ⁿ, capped.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt += 1;
        cap.mul_f64(0.5 + 0.5 * self.unit())
    }

    /// The wait before trying to resume a seat whose socket dropped: the
    /// first in [0, base/2), later ones as [`Backoff::next_delay`].
    pub fn next_resume_delay(&mut self) -> Duration {
        if self.attempt > 0 {
            return self.next_delay();
        }
        self.attempt += 1;
        (self.base / 2).min(self.max).mul_f64(self.unit())
    }

    /// A jitter draw in [0, 1), for waits that add to the backoff's.
    pub fn unit(&mut self) -> f64 {
        self.rng.unit()
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_double_with_jitter_up_to_a_cap_and_reset() {
        let mut b = Backoff::new(42);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let cap = (BASE * (1 << n)).min(MAX);
            assert!(*d >= cap / 2 && *d <= cap, "try {n}: {d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        assert!(delays[9] >= MAX / 2, "capped at 15 s, never below half of it");
        // Two clients with different seeds don't retry in lockstep.
        let mut other = Backoff::new(7);
        let theirs: Vec<Duration> = (0..10).map(|_| other.next_delay()).collect();
        assert_ne!(delays, theirs);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn a_dropped_seat_is_resumed_within_a_quarter_second_then_backs_off() {
        let mut firsts = Vec::new();
        for seed in 0..200 {
            let mut b = Backoff::new(seed);
            let first = b.next_resume_delay();
            assert!(first < BASE / 2, "seed {seed}: first resume after {first:?}");
            firsts.push(first);
            // The resume failed: the next tries back off as any other.
            let second = b.next_resume_delay();
            assert!(second >= BASE && second <= BASE * 2, "seed {seed}: second try after {second:?}");
            let third = b.next_delay();
            assert!(third >= BASE * 2 && third <= BASE * 4, "seed {seed}: third try after {third:?}");
        }
        // Spread over the whole quarter second, not bunched at one end: a
        // crowd that lost the same link doesn't return in one instant.
        let below = firsts.iter().filter(|d| **d < BASE / 4).count();
        assert!((60..=140).contains(&below), "{below} of 200 in the first half of the window");
        assert!(firsts.iter().any(|d| *d < BASE / 20) && firsts.iter().any(|d| *d > BASE / 2 - BASE / 20));
    }

    #[test]
    fn a_lower_cap_bounds_every_wait() {
        let mut b = Backoff::new(3).with_max(Duration::from_secs(2));
        assert!(b.next_resume_delay() < BASE / 2);
        for _ in 0..12 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
    }
}
