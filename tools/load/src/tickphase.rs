//! Where a room's ticks fall on the clock, learnt from when its deltas
//! arrive, so that the end-to-end latency of a pose can be split into the
//! wait for the next tick (0–50 ms at 20 Hz, by design) and the rest (the
//! server's fan-out, the network and our own decoding): "net" latency.
//!
//! A room ticks on a fixed grid: tick instants are `phase + n · period` (a
//! late tick delays only itself). Every delta arrives a little after its
//! tick, so the arrival times modulo the period cluster just after the
//! phase, and no delta arrives just before it. The estimate is the start of
//! the cluster: the end of the longest run of (nearly) empty bins in a
//! histogram of `arrival mod period`. It includes the fastest delivery (in
//! process, well under a millisecond), so net latency is slightly low.
//!
//! The tick that carried a delta came after the newest pose in it reached
//! the room. `t` is whole milliseconds and the pose still has to travel to
//! the server, so the tick is taken as the first grid point at or after
//! `t + margin` (margin: 1 ms plus half the ping round trip); when that
//! lands after the delta's arrival, which no tick can, the grid point before
//! it is taken instead. The wait of each pose in the delta is `tick − t`,
//! and its net latency is `arrival − tick`, the same for every pose of the
//! delta.

/// Bins over one tick period.
const BINS: usize = 100;
/// No estimate before this many deltas.
const MIN_OBSERVATIONS: u64 = 20;
/// Recompute the estimate after this many new observations.
const RECOMPUTE_EVERY: u32 = 32;

#[derive(Debug, Clone)]
pub struct TickPhase {
    period_us: u64,
    bins: [u32; BINS],
    observed: u64,
    since: u32,
    cached: Option<u64>,
}

impl TickPhase {
    pub fn new(period_us: u64) -> Self {
        TickPhase { period_us: period_us.max(BINS as u64), bins: [0; BINS], observed: 0, since: 0, cached: None }
    }

    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// A delta of this room arrived at `arrival_us` (Unix µs).
    pub fn observe(&mut self, arrival_us: u64) {
        let bin = ((arrival_us % self.period_us) * BINS as u64 / self.period_us) as usize;
        self.bins[bin.min(BINS - 1)] = self.bins[bin.min(BINS - 1)].saturating_add(1);
        self.observed += 1;
        self.since += 1;
    }

    /// The grid's phase (µs into the period), once enough deltas were seen
    /// and their arrivals leave a gap to find.
    pub fn phase_us(&mut self) -> Option<u64> {
        if self.observed < MIN_OBSERVATIONS {
            return None;
        }
        if self.cached.is_none() || self.since >= RECOMPUTE_EVERY {
            self.cached = estimate(&self.bins).map(|bin| bin as u64 * self.period_us / BINS as u64);
            self.since = 0;
        }
        self.cached
    }
}

/// The first bin after the longest circular run of the least-filled bins.
fn estimate(bins: &[u32; BINS]) -> Option<usize> {
    let low = *bins.iter().min()?;
    if bins.iter().all(|&c| c == low) {
        return None; // no structure at all
    }
    let (mut best_len, mut best_end) = (0, 0);
    let mut run = 0;
    for i in 0..2 * BINS {
        if bins[i % BINS] == low {
            run += 1;
            if run > best_len && run <= BINS {
                best_len = run;
                best_end = i % BINS;
            }
        } else {
            run = 0;
        }
    }
    Some((best_end + 1) % BINS)
}

/// The first grid point (`phase + n · period`) at or after `t_us`.
pub fn tick_at_or_after(t_us: u64, phase_us: u64, period_us: u64) -> u64 {
    let offset = (phase_us % period_us + period_us - t_us % period_us) % period_us;
    t_us + offset
}

/// The wait and net split of one delta's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The estimated tick instant (Unix µs).
    pub tick_us: u64,
    /// Arrival − tick (µs), the same for every pose in the delta.
    pub net_us: u64,
}

/// Splits a delta that arrived at `arrival_us` and whose newest pose was
/// sent at `newest_t_ms`, the pose taking up to `margin_us` to reach the room.
pub fn split(arrival_us: u64, newest_t_ms: u64, phase_us: u64, period_us: u64, margin_us: u64) -> Split {
    let mut tick_us = tick_at_or_after(newest_t_ms * 1000 + margin_us, phase_us, period_us);
    if tick_us > arrival_us && tick_us >= period_us {
        tick_us -= period_us; // no tick comes after its delta's arrival
    }
    Split { tick_us, net_us: arrival_us.saturating_sub(tick_us) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_is_where_arrivals_start_after_the_quiet_part() {
        let period = 50_000;
        let mut p = TickPhase::new(period);
        // Ticks at 12 ms into each period; deliveries 0.3–4 ms later.
        for n in 0..200u64 {
            let arrival = 1_000_000_000 + n * period + 12_000 + 300 + (n * 37 % 3_700);
            p.observe(arrival);
        }
        let phase = p.phase_us().expect("enough deltas");
        assert!((11_500..=12_300).contains(&phase), "{phase}");
    }

    #[test]
    fn the_phase_wraps_around_the_period() {
        let period = 50_000;
        let mut p = TickPhase::new(period);
        // Ticks at 49 ms; deliveries land on both sides of the period's end.
        for n in 0..200u64 {
            p.observe(n * period + 49_000 + 200 + (n * 53 % 2_500));
        }
        let phase = p.phase_us().expect("enough deltas");
        assert!((48_500..=49_200).contains(&phase), "{phase}");
    }

    #[test]
    fn too_few_or_shapeless_arrivals_give_no_phase() {
        let mut p = TickPhase::new(50_000);
        p.observe(1);
        assert_eq!(p.phase_us(), None);
        let mut flat = TickPhase::new(50_000);
        for i in 0..100u64 {
            flat.observe(i * 500);
        }
        assert_eq!(flat.phase_us(), None);
    }

    #[test]
    fn the_tick_is_the_first_grid_point_after_the_newest_pose() {
        assert_eq!(tick_at_or_after(1_000_010_000, 12_000, 50_000), 1_000_012_000);
        assert_eq!(tick_at_or_after(1_000_012_000, 12_000, 50_000), 1_000_012_000);
        assert_eq!(tick_at_or_after(1_000_013_000, 12_000, 50_000), 1_000_062_000);
        let s = split(1_000_015_500, 1_000_010, 12_000, 50_000, 1_000);
        assert_eq!(s, Split { tick_us: 1_000_012_000, net_us: 3_500 });
        // Sent 0.5 ms before a tick: it reached the room after it, so the
        // next tick carried it.
        let crossed = split(1_000_063_000, 1_000_011, 12_000, 50_000, 1_500);
        assert_eq!(crossed, Split { tick_us: 1_000_062_000, net_us: 1_000 });
        // The same pose, but its delta arrived before that next tick: it made
        // the earlier one after all.
        let made_it = split(1_000_013_000, 1_000_011, 12_000, 50_000, 1_500);
        assert_eq!(made_it, Split { tick_us: 1_000_012_000, net_us: 1_000 });
    }
}
