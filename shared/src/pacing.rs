//! When to send a pose so that it reaches the room just before a tick.
//!
//! A room ticks on a fixed grid, `phase + n · period` (a late tick delays
//! only itself), and broadcasts what changed right after each tick. A pose
//! sent at a random moment waits 0–50 ms at 20 Hz for the next tick (25 ms
//! on average, ~50 ms at the 99th percentile), before anyone sees it. A
//! client that sends its pose just before the tick takes that wait out:
//! others see its movement sooner. The clients learn the grid from when
//! the deltas arrive; nothing in the protocol is needed for it.
//!
//! [`TickPhase`] estimates the grid: every delta arrives a little after its
//! tick, so the arrival times modulo the period cluster just after the
//! phase, and no delta arrives just before it. The estimate is the start of
//! the cluster: the end of the longest run of (nearly) empty bins in a
//! histogram of `arrival mod period`. Old arrivals fade (the histogram is
//! halved now and then), so a room whose grid moved (it emptied and started
//! again) is followed. [`send_instant`] turns the estimate into the next
//! send time. Used by the client's network thread and by `plaza-load`.

/// Bins over one tick period.
const BINS: usize = 100;
/// No estimate before this many deltas.
const MIN_OBSERVATIONS: u64 = 20;
/// Recompute the estimate after this many new observations.
const RECOMPUTE_EVERY: u32 = 32;
/// Halve the histogram after this many observations, so old arrivals fade.
const FADE_EVERY: u64 = 2048;

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
        if self.observed % FADE_EVERY == 0 {
            self.bins.iter_mut().for_each(|b| *b /= 2);
        }
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

/// The first bin after the longest circular run of quiet bins: the least
/// filled, or within a sixteenth of the fullest above them (what is left of
/// a grid the room no longer ticks on, as it fades).
fn estimate(bins: &[u32; BINS]) -> Option<usize> {
    let low = *bins.iter().min()?;
    let peak = *bins.iter().max()?;
    let quiet = low + (peak - low) / 16;
    if bins.iter().all(|&c| c <= quiet) {
        return None; // no structure at all
    }
    let (mut best_len, mut best_end) = (0, 0);
    let mut run = 0;
    for i in 0..2 * BINS {
        if bins[i % BINS] <= quiet {
            run += 1;
            if run > best_len && run <= BINS {
                best_len = run;
                best_end = i % BINS;
            }
        } else {
            run = 0;
        }
    }
    // The sparse first arrivals (under the quiet mark) belong to the
    // cluster: step back over them to the truly least-filled bins.
    let mut start = (best_end + 1) % BINS;
    for _ in 0..BINS / 10 {
        let before = (start + BINS - 1) % BINS;
        if bins[before] == low {
            break;
        }
        start = before;
    }
    Some(start)
}

/// The first grid point (`phase + n · period`) at or after `t_us`.
pub fn tick_at_or_after(t_us: u64, phase_us: u64, period_us: u64) -> u64 {
    let offset = (phase_us % period_us + period_us - t_us % period_us) % period_us;
    t_us + offset
}

/// The Unix µs at which to send the next pose, or `None` when it can't be
/// placed (a zero period): of the instants that land a pose `lead_us`
/// before a tick of the arrival grid (`phase_us` into each `period_us`),
/// the one nearest `every_us` from `now_us`, and never less than 1 ms
/// ahead. `lead_us` is the round trip (the grid is the deltas' arrivals,
/// which come half a round trip after the tick; the pose needs the other
/// half) plus a margin for the server to read it.
pub fn send_instant(now_us: u64, every_us: u64, phase_us: u64, period_us: u64, lead_us: u64) -> Option<u64> {
    if period_us == 0 {
        return None;
    }
    let (period, phase, lead) = (i128::from(period_us), i128::from(phase_us % period_us), i128::from(lead_us));
    let target = i128::from(now_us) + i128::from(every_us);
    // Send instants are phase + k · period − lead; take the k nearest target.
    let k = (target + lead - phase + period / 2).div_euclid(period);
    let mut at = phase + k * period - lead;
    let earliest = i128::from(now_us) + 1_000;
    while at < earliest {
        at += period;
    }
    u64::try_from(at).ok()
}

/// How early before the tick a pose should leave: half the round trip to
/// get there, plus room for the server to read it in time, plus how late
/// our own timer fires. The delay with which deltas arrive after the grid
/// (the server's fan-out, our own scheduling) is the best guide to how late
/// our pose may be read. Each part is its smoothed mean plus three
/// deviations: a pose that misses its tick waits a whole period more.
#[derive(Debug, Clone)]
pub struct SendLead {
    arrival: Spread,
    timer: Spread,
}

/// A smoothed mean and variance.
#[derive(Debug, Clone, Copy)]
struct Spread {
    mean_us: f64,
    var_us2: f64,
}

impl Spread {
    fn add(&mut self, x: f64) {
        let diff = x - self.mean_us;
        self.mean_us += LEAD_ALPHA * diff;
        self.var_us2 = (1.0 - LEAD_ALPHA) * (self.var_us2 + LEAD_ALPHA * diff * diff);
    }

    fn high(&self) -> f64 {
        self.mean_us + 3.0 * self.var_us2.sqrt()
    }
}

/// Weight of the newest arrival in the smoothed lateness.
const LEAD_ALPHA: f64 = 1.0 / 32.0;
/// The least margin kept for the server to read a pose.
pub const MIN_MARGIN_US: u64 = 3_000;

impl Default for SendLead {
    fn default() -> Self {
        SendLead { arrival: Spread { mean_us: 2_000.0, var_us2: 1_000.0 * 1_000.0 }, timer: Spread { mean_us: 500.0, var_us2: 500.0 * 500.0 } }
    }
}

impl SendLead {
    /// A delta arrived `arrival_us`, with the grid at `phase_us` into each `period_us`.
    pub fn observe(&mut self, arrival_us: u64, phase_us: u64, period_us: u64) {
        if period_us == 0 {
            return;
        }
        let late = ((arrival_us % period_us + period_us - phase_us % period_us) % period_us) as f64;
        // Arrivals just before the grid are early ones of the next tick, not very late ones.
        let late = if late > period_us as f64 * 0.75 { 0.0 } else { late };
        self.arrival.add(late);
    }

    /// Our send timer fired `late_us` after the instant it was set for.
    pub fn timer_fired(&mut self, late_us: u64) {
        self.timer.add(late_us as f64);
    }

    /// The lead for a round trip of `rtt_us`, at most half a period.
    pub fn lead_us(&self, rtt_us: u64, period_us: u64) -> u64 {
        let margin = self.arrival.high().max(MIN_MARGIN_US as f64) + self.timer.high().max(0.0);
        (rtt_us / 2 + margin as u64).min(period_us / 2)
    }
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
    fn old_arrivals_fade_so_a_moved_grid_is_followed() {
        let period = 50_000;
        let mut p = TickPhase::new(period);
        for n in 0..4_000u64 {
            p.observe(n * period + 12_000 + (n * 37 % 2_000));
        }
        assert!((11_500..=12_500).contains(&p.phase_us().unwrap()));
        // The room emptied and ticks at 30 ms now.
        for n in 4_000..20_000u64 {
            p.observe(n * period + 30_000 + (n * 37 % 2_000));
        }
        let phase = p.phase_us().unwrap();
        assert!((29_500..=30_500).contains(&phase), "{phase}");
    }

    #[test]
    fn the_pose_goes_out_a_lead_before_the_tick_nearest_a_period_from_now() {
        // Arrival grid at 12 ms into each 50 ms; lead 6 ms: send at 6 ms.
        let now = 1_000_000_000; // 0 ms into its period
        assert_eq!(send_instant(now, 50_000, 12_000, 50_000, 6_000), Some(1_000_056_000));
        // Just sent on the grid: the next one is a period later.
        assert_eq!(send_instant(1_000_056_000, 50_000, 12_000, 50_000, 6_000), Some(1_000_106_000));
        // At 10 Hz, every other tick.
        assert_eq!(send_instant(1_000_056_000, 100_000, 12_000, 50_000, 6_000), Some(1_000_156_000));
        // A lead longer than the period still gives an instant ahead.
        let at = send_instant(now, 50_000, 12_000, 50_000, 120_000).unwrap();
        assert!(at >= now + 1_000 && (at + 120_000 - 12_000) % 50_000 == 0, "{at}");
        assert_eq!(send_instant(now, 50_000, 0, 0, 0), None);
    }

    #[test]
    fn the_lead_grows_with_how_late_deltas_arrive() {
        let period = 50_000;
        let mut calm = SendLead::default();
        let mut busy = SendLead::default();
        for n in 0..500u64 {
            calm.observe(n * period + 12_000 + 300 + (n % 5) * 100, 12_000, period);
            busy.observe(n * period + 12_000 + (n % 10) * 2_000, 12_000, period);
        }
        let (calm, busy) = (calm.lead_us(1_000, period), busy.lead_us(1_000, period));
        assert!((3_000..=5_500).contains(&calm), "{calm}");
        assert!(busy > 15_000 && busy <= 25_000, "{busy}");
        // A timer that fires late moves the send earlier by as much, and more.
        let mut slow_timer = SendLead::default();
        for n in 0..500u64 {
            slow_timer.observe(n * period + 12_000 + 300 + (n % 5) * 100, 12_000, period);
            slow_timer.timer_fired(3_000 + (n % 3) * 500);
        }
        let slow = slow_timer.lead_us(1_000, period);
        assert!(slow >= calm + 2_500, "{slow} vs {calm}");
        // Never more than half a period, whatever the round trip.
        assert_eq!(SendLead::default().lead_us(400_000, period), 25_000);
    }
}
