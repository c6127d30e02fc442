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
//! - Except while a dropped seat may still be held: its tries wait at most
//!   [`RESUME_MAX`] (from [d/2, d] with d capped there) until the waits add
//!   up to the room's resume window. A link back after 12 s of Wi-Fi lost
//!   is then back in its seat within 2 s, and one back after 25 s still
//!   finds its seat; the doubling tries come at 11.4, 22.6 and 33.9 s on
//!   average, the last after the seat is gone. A failed connect costs a
//!   server next to nothing, and the window ends the quick tries.
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
/// The longest wait between two tries to resume a seat the room may still
/// hold.
pub const RESUME_MAX: Duration = Duration::from_secs(2);
/// How long the room holds a dropped seat.
pub const RESUME_WINDOW: Duration = Duration::from_millis(crate::limits::RESUME_WINDOW_MS);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    /// The waits handed out since the last reset.
    waited: Duration,
    rng: SplitMix,
}

impl Backoff {
    /// The client's policy ([`BASE`], capped at [`MAX`]); `seed` sets the
    /// jitter, so two clients don't retry in lockstep.
    pub fn new(seed: u64) -> Backoff {
        Backoff { base: BASE, max: MAX, attempt: 0, waited: Duration::ZERO, rng: SplitMix::new(seed) }
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
        let wait = self.draw(self.max);
        self.waited += wait;
        wait
    }

    /// The wait before trying to resume a seat whose socket dropped: the
    /// first in [0, base/2); later ones as [`Backoff::next_delay`], but
    /// capped at [`RESUME_MAX`] while the waits so far are within the
    /// room's [`RESUME_WINDOW`].
    pub fn next_resume_delay(&mut self) -> Duration {
        let wait = if self.attempt == 0 {
            self.attempt += 1;
            (self.base / 2).min(self.max).mul_f64(self.unit())
        } else if self.waited < RESUME_WINDOW {
            self.draw(self.max.min(RESUME_MAX))
        } else {
            self.draw(self.max)
        };
        self.waited += wait;
        wait
    }

    /// The wait before the next try after a socket was lost: as
    /// [`Backoff::next_resume_delay`] when there is a seat to resume,
    /// [`Backoff::next_delay`] when not.
    pub fn next_wait(&mut self, resuming: bool) -> Duration {
        if resuming { self.next_resume_delay() } else { self.next_delay() }
    }

    /// A wait in [d/2, d], d = base × 2ⁿ capped at `max`; counts the try.
    fn draw(&mut self, max: Duration) -> Duration {
        let cap = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(max);
        self.attempt += 1;
        cap.mul_f64(0.5 + 0.5 * self.unit())
    }

    /// A jitter draw in [0, 1), for waits that add to the backoff's.
    pub fn unit(&mut self) -> f64 {
        self.rng.unit()
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
        self.waited = Duration::ZERO;
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
    fn a_seat_that_may_still_be_held_is_tried_for_every_two_seconds_until_the_window_ends() {
        for seed in 0..50 {
            let mut b = Backoff::new(seed);
            let mut waits = vec![b.next_resume_delay()];
            let mut total = waits[0];
            while total < RESUME_WINDOW {
                let wait = b.next_resume_delay();
                assert!(wait <= RESUME_MAX, "seed {seed}: {wait:?} at {total:?}, within the window");
                total += wait;
                waits.push(wait);
            }
            // Still spread: not every client on the same 2 s beat.
            let late = &waits[waits.len() - 5..];
            assert!(late.iter().any(|w| *w < RESUME_MAX * 9 / 10), "seed {seed}: {late:?}");
            // Past the window the seat is gone: back to the doubling backoff.
            let after: Vec<Duration> = (0..3).map(|_| b.next_resume_delay()).collect();
            assert!(after.iter().all(|w| *w >= MAX / 2), "seed {seed}: {after:?} after the window");
            assert!(waits.len() >= 15, "seed {seed}: {} tries within the window", waits.len());
        }
        // A reset (back in the room) starts the window over.
        let mut b = Backoff::new(1);
        for _ in 0..40 {
            b.next_resume_delay();
        }
        b.reset();
        assert!(b.next_resume_delay() < BASE / 2);
        assert!(b.next_resume_delay() <= RESUME_MAX);
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
