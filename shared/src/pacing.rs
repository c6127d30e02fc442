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
//! again) is followed. [`PosePacer`] turns it into the next send time, a
//! lead before the tick ([`SendLead`]). Used by the client's network thread
//! and by `plaza-load`'s simulated users.

/// Bins over one tick period.
const BINS: usize = 100;
/// No estimate before this many deltas.
const MIN_OBSERVATIONS: u64 = 8;
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
        if self.observed.is_multiple_of(FADE_EVERY) {
            self.bins.iter_mut().for_each(|b| *b /= 2);
        }
    }

    /// The grid's phase (µs into the period), once enough deltas were seen
    /// and their arrivals leave a gap to find.
    pub fn phase_us(&mut self) -> Option<u64> {
        if self.observed < MIN_OBSERVATIONS {
            return None;
        }
        // Young estimates are redone with every arrival; then now and then.
        if self.cached.is_none() || self.observed < 4 * u64::from(RECOMPUTE_EVERY) || self.since >= RECOMPUTE_EVERY {
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

/// How early before the tick a pose should leave: half the round trip to
/// get there, plus room for the server to read it in time, plus how late
/// our own timer fires. The delay with which deltas arrive after the grid
/// (the server's fan-out, our own scheduling) is the best guide to how late
/// our pose may be read. Each part is its smoothed mean plus one
/// deviation ([`LEAD_DEVIATIONS`]).
#[derive(Debug, Clone)]
pub struct SendLead {
    arrival: Spread,
    timer: Spread,
    deviations: f64,
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

    fn high(&self, deviations: f64) -> f64 {
        self.mean_us + deviations * self.var_us2.sqrt()
    }
}

/// Deviations of lateness the lead allows for. A pose that misses its tick
/// waits a whole period more, but the room waits a few ms for a pose that
/// is due and late (the server's straggler grace), which catches most of
/// the few that one deviation lets through. Measured on 2 × 1,000 users
/// side by side (docs/benchmarks.md, session 8): three deviations sent
/// every pose 20 ms early on a busy machine, for nothing the grace didn't
/// already catch.
pub const LEAD_DEVIATIONS: f64 = 1.0;
/// The same for a server whose ticks never wait for a late pose (the
/// socket.io baseline `plaza-load` drives): there a pose a moment late
/// waits a whole tick, and the wider lead did better (600 users within p99
/// 60 ms against 400 with one deviation, in two alternating ladders).
pub const LEAD_DEVIATIONS_WITHOUT_GRACE: f64 = 3.0;

/// Weight of the newest arrival in the smoothed lateness.
const LEAD_ALPHA: f64 = 1.0 / 32.0;
/// The least margin kept for the server to read a pose.
pub const MIN_MARGIN_US: u64 = 3_000;

impl Default for SendLead {
    fn default() -> Self {
        SendLead::with_deviations(LEAD_DEVIATIONS)
    }
}

impl SendLead {
    /// Allowing `deviations` deviations of lateness.
    pub fn with_deviations(deviations: f64) -> Self {
        SendLead { arrival: Spread { mean_us: 2_000.0, var_us2: 1_000.0 * 1_000.0 }, timer: Spread { mean_us: 500.0, var_us2: 500.0 * 500.0 }, deviations }
    }

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

    /// The lead for a round trip of `rtt_us`: half of it, and a margin of
    /// at most half a period. (A lead over a period is fine: the slot is
    /// the same modulo the period.)
    pub fn lead_us(&self, rtt_us: u64, period_us: u64) -> u64 {
        let margin = self.arrival.high(self.deviations).max(MIN_MARGIN_US as f64) + self.timer.high(self.deviations).max(0.0);
        rtt_us / 2 + (margin as u64).min(period_us / 2)
    }
}

/// The first send instant at or after `after_us` that lands a pose
/// `lead_us` before a tick of the arrival grid.
pub fn slot_at_or_after(after_us: u64, phase_us: u64, period_us: u64, lead_us: u64) -> u64 {
    if period_us == 0 {
        return after_us;
    }
    // Slots are the grid shifted back by the lead.
    let slot_phase = (phase_us % period_us + period_us - lead_us % period_us) % period_us;
    tick_at_or_after(after_us, slot_phase, period_us)
}

/// A client's pose pacing: it hands over its newest pose whenever it
/// changes, and sends it at the next slot, at most one a tick. Until the
/// grid is known (no deltas yet: alone in the room), a pose goes out at
/// most once a period, at once when the last one was long ago.
#[derive(Debug, Clone)]
pub struct PosePacer {
    period_us: u64,
    phase: TickPhase,
    lead: SendLead,
    rtt_us: u64,
    last_sent_us: Option<u64>,
    /// Deltas on the grid not yet taught to the lead ([`LEAD_WARMUP_DELTAS`]).
    warmup_left: u32,
    /// The warm-up's grid, used until the clean one learnt after it is found.
    rough: Option<TickPhase>,
}

/// The first deltas after the grid is found (about 3 s at 20 Hz) find a
/// rough grid and don't teach the lead; then the grid is learnt again from
/// the deltas after them. A pacer starts with each socket, and a new
/// socket often comes with a busy server: after a restart everyone comes
/// back at once, and for a second or two the deltas come late, some by
/// more than a period. Learnt from, they kept the lead near half a period
/// for 5–10 s after the deltas were on time again (its variance forgets
/// slowly), and their arrivals stayed in the grid's histogram, where they
/// can hide where the ticks are: p99 near a whole tick for 10–20 s
/// (docs/benchmarks.md, session 13).
pub const LEAD_WARMUP_DELTAS: u32 = 60;

impl PosePacer {
    pub fn new(tick_hz: u32) -> Self {
        Self::with_lead(tick_hz, SendLead::default())
    }

    /// For a server whose ticks don't wait for late poses
    /// ([`LEAD_DEVIATIONS_WITHOUT_GRACE`]).
    pub fn without_server_grace(tick_hz: u32) -> Self {
        Self::with_lead(tick_hz, SendLead::with_deviations(LEAD_DEVIATIONS_WITHOUT_GRACE))
    }

    fn with_lead(tick_hz: u32, lead: SendLead) -> Self {
        let period_us = 1_000_000 / u64::from(tick_hz.max(1));
        PosePacer { period_us, phase: TickPhase::new(period_us), lead, rtt_us: 1_000, last_sent_us: None, warmup_left: LEAD_WARMUP_DELTAS, rough: None }
    }

    /// A delta arrived at `arrival_us` (Unix µs).
    pub fn delta_arrived(&mut self, arrival_us: u64) {
        self.phase.observe(arrival_us);
        // Until the grid is found (again, after the warm-up), nothing to learn.
        let Some(phase) = self.phase.phase_us() else { return };
        self.rough = None;
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            if self.warmup_left == 0 {
                self.rough = Some(std::mem::replace(&mut self.phase, TickPhase::new(self.period_us)));
            }
        } else {
            self.lead.observe(arrival_us, phase, self.period_us);
        }
    }

    fn grid_phase_us(&mut self) -> Option<u64> {
        match self.phase.phase_us() {
            Some(phase) => Some(phase),
            None => self.rough.as_mut().and_then(TickPhase::phase_us),
        }
    }

    /// The latest ping round trip.
    pub fn round_trip(&mut self, rtt_us: u64) {
        self.rtt_us = rtt_us;
    }

    /// When (Unix µs) a pose handed over at `now_us` should go out.
    pub fn next_send_us(&mut self, now_us: u64) -> u64 {
        let period = self.period_us;
        match (self.grid_phase_us(), self.last_sent_us) {
            // One slot a tick: never two in the same period.
            (Some(phase), last) => {
                let after = last.map_or(now_us, |l| now_us.max(l + period / 2));
                slot_at_or_after(after, phase, period, self.lead.lead_us(self.rtt_us, period))
            }
            (None, Some(last)) => now_us.max(last + period),
            (None, None) => now_us,
        }
    }

    /// The pose planned for `planned_us` went out at `now_us`. Only a
    /// lateness under a period is the timer's: a send held back for other
    /// reasons (not in the room yet) says nothing about it.
    pub fn sent(&mut self, planned_us: u64, now_us: u64) {
        let late = now_us.saturating_sub(planned_us);
        if late < self.period_us {
            self.lead.timer_fired(late);
        }
        self.last_sent_us = Some(now_us);
    }

    pub fn period_us(&self) -> u64 {
        self.period_us
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
    fn a_client_sends_its_newest_pose_at_the_slot_before_each_tick() {
        let period = 50_000;
        let mut pacer = PosePacer::new(20);
        let t0 = 1_000_000_000; // the grid: deltas arrive 12–13 ms into each period
        // Alone in the room: no grid, so at once, then at most once a period.
        assert_eq!(pacer.next_send_us(t0), t0);
        pacer.sent(t0, t0);
        assert_eq!(pacer.next_send_us(t0 + 10_000), t0 + period);
        for n in 0..100u64 {
            pacer.delta_arrived(t0 + n * period + 12_000 + (n % 4) * 250);
        }
        let now = t0 + 100 * period + 20_000;
        let at = pacer.next_send_us(now);
        let lead = pacer.lead.lead_us(pacer.rtt_us, period);
        assert!((3_000..10_000).contains(&lead), "{lead}");
        assert_eq!((at + lead) % period, 12_000, "a lead before the grid");
        assert!(at >= now && at < now + period, "{at}");
        pacer.sent(at, at);
        // A send held back for seconds is not the timer's lateness.
        let before = pacer.lead.lead_us(pacer.rtt_us, period);
        pacer.sent(0, at);
        assert_eq!(pacer.lead.lead_us(pacer.rtt_us, period), before);
        // A pose handed over right after: the next tick's slot, not this one.
        // (The lead moved a little: the timer was on time.)
        let next = pacer.next_send_us(at + 1_000);
        assert!(next.abs_diff(at + period) < 1_000, "{next} vs {}", at + period);
        assert_eq!(slot_at_or_after(t0, 12_000, period, 5_000), t0 + 7_000);
        assert_eq!(slot_at_or_after(t0 + 7_001, 12_000, period, 5_000), t0 + 57_000);
    }

    #[test]
    fn without_a_server_grace_the_lead_allows_three_deviations_instead_of_one() {
        let period = 50_000;
        let (mut graced, mut ungraced) = (PosePacer::new(20), PosePacer::without_server_grace(20));
        for n in 0..500u64 {
            // Deltas 2–8 ms after a grid at 12 ms, our timer on time.
            let arrival = 1_000_000_000 + n * period + 12_000 + 2_000 + (n % 7) * 1_000;
            for pacer in [&mut graced, &mut ungraced] {
                pacer.delta_arrived(arrival);
                pacer.sent(arrival, arrival);
            }
        }
        let (one, three) = (graced.lead.lead_us(1_000, period), ungraced.lead.lead_us(1_000, period));
        // The grid is seen where arrivals start (14 ms), so lateness is
        // 0–6 ms: about 3 ± 2 ms. Half the round trip, plus one deviation
        // of it is about 5.5 ms; three, about 9.5 ms.
        assert!((4_500..6_500).contains(&one), "{one}");
        assert!(three > one + 3_000 && three < one + 6_000, "{three} vs {one}");
    }

    #[test]
    fn a_burst_of_late_deltas_on_a_new_socket_does_not_stay_in_the_lead() {
        let period = 50_000;
        let tick = |n: u64| 1_000_000_000 + n * period + 12_000;
        // What a calm room's deltas teach: a few ms.
        let mut calm = PosePacer::new(20);
        for n in 0..400u64 {
            calm.delta_arrived(tick(n) + 300 + (n % 5) * 200);
        }
        let calm_lead = calm.lead.lead_us(1_000, period);
        // A restarted server: 2 s of deltas up to 30 ms late (a few on
        // time, so the grid is found), then calm again for 2 s.
        let mut rejoined = PosePacer::new(20);
        for n in 0..40u64 {
            let late = if n % 4 == 0 { 300 } else { 3_000 + (n * 7_919 % 27_000) };
            rejoined.delta_arrived(tick(n) + late);
        }
        for n in 40..80u64 {
            rejoined.delta_arrived(tick(n) + 300 + (n % 5) * 200);
        }
        let lead = rejoined.lead.lead_us(1_000, period);
        assert!(lead <= calm_lead + 1_000, "{lead} vs {calm_lead} in a calm room");
        // The same burst later in a socket's life is learnt from: the lead
        // follows a server that stays busy.
        for n in 80..120u64 {
            rejoined.delta_arrived(tick(n) + 3_000 + (n * 7_919 % 27_000));
        }
        assert!(rejoined.lead.lead_us(1_000, period) > calm_lead + 10_000);
    }

    #[test]
    fn the_grid_is_learnt_again_after_a_stormy_start() {
        let period = 50_000;
        let tick = |n: u64| 1_000_000_000 + n * period + 12_000;
        let mut pacer = PosePacer::new(20);
        // A restarted server taking everyone back: deltas up to 2.4 periods
        // late, for as long as the warm-up lasts.
        let mut x = 7u64;
        for n in 0..(8 + u64::from(LEAD_WARMUP_DELTAS)) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            pacer.delta_arrived(tick(n) + (x >> 33) % 120_000);
        }
        assert!(pacer.rough.is_some(), "the warm-up's grid is kept for now");
        // Then calm: the clean grid takes over once found, and it is the ticks'.
        for n in 68..108u64 {
            pacer.delta_arrived(tick(n) + 300 + (n % 4) * 200);
        }
        assert!(pacer.rough.is_none());
        let phase = pacer.grid_phase_us().expect("a grid");
        assert!((11_500..=12_300).contains(&phase), "{phase}");
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
        assert!(busy > 15_000 && busy <= 25_500, "{busy}");
        // A timer that fires late moves the send earlier by as much, and more.
        let mut slow_timer = SendLead::default();
        for n in 0..500u64 {
            slow_timer.observe(n * period + 12_000 + 300 + (n % 5) * 100, 12_000, period);
            slow_timer.timer_fired(3_000 + (n % 3) * 500);
        }
        let slow = slow_timer.lead_us(1_000, period);
        assert!(slow >= calm + 2_500, "{slow} vs {calm}");
        // Half the round trip, however long, and a margin of at most half a period.
        let mut wild = SendLead::default();
        for n in 0..500u64 {
            wild.observe(n * period + 12_000 + (n % 2) * 30_000, 12_000, period);
        }
        assert_eq!(wild.lead_us(1_000_000, period), 500_000 + 25_000);
    }
}
