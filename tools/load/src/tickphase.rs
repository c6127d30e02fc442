//! Where a room's ticks fall on the clock, learnt from when its deltas
//! arrive, so that the end-to-end latency of a pose can be split into the
//! wait for the next tick (0–50 ms at 20 Hz, by design) and the rest (the
//! server's fan-out, the network and our own decoding): "net" latency.
//!
//! A room ticks on a fixed grid: tick instants are `phase + n · period` (a
//! late tick delays only itself). Every delta arrives a little after its
//! tick and carries its number, so the least `arrival − tick · period`
//! over the room's recent deltas, modulo the period, is the grid
//! ([`TickGrid`], the pacer's estimator, fed by every member of the room).
//! It includes the fastest delivery (in process, well under a
//! millisecond), so net latency is slightly low.
//!
//! The tick that carried a delta came after the newest pose in it reached
//! the room. The grid is learnt from arrivals, so it lies a trip down after
//! the ticks; `t` is whole milliseconds and the pose still has to travel up
//! to the server. So the tick's grid point is taken as the first at or
//! after `t + margin` (the caller's margin: 1 ms plus the ping round trip);
//! when that lands after the delta's arrival, which no tick can, the grid
//! point before it is taken instead. [`Split::net_us`] is `arrival − grid
//! point`: the caller adds the round trip back for what the server and the
//! network add.

pub use plaza_shared::pacing::{GRID_WINDOW, TickGrid, tick_at_or_after};

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
