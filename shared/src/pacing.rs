//! When to send a pose so that it reaches the room just before a tick.
//!
//! A room ticks on a fixed grid, `phase + n · period` (a late tick delays
//! only itself), and broadcasts what changed right after each tick. A pose
//! sent at a random moment waits 0–50 ms at 20 Hz for the next tick (25 ms
//! on average, ~50 ms at the 99th percentile), before anyone sees it. A
//! client that sends its pose just before the tick takes that wait out:
//! others see its movement sooner. The clients learn the grid from when
//! the deltas arrive and the tick numbers they carry; nothing more in the
//! protocol is needed for it.
//!
//! [`TickGrid`] places the grid: each delta carries its tick number, and
//! tick `n`'s delta arrives at `origin + n · period` plus a lateness that
//! is never negative, so the least `arrival − n · period` over the last
//! few seconds, modulo the period, is where the promptest deltas arrive.
//! [`PosePacer`] turns it into the next send time, a lead before the tick
//! ([`SendLead`]). Used by the client's network thread
//! and by `plaza-load`'s simulated users.

/// No grid before this many deltas.
const MIN_OBSERVATIONS: u64 = 8;
/// Deltas whose least value is the grid (about 13 s at 20 Hz). Long, so
/// that a busy spell in which even the promptest deltas come late (the end
/// of a ramp of joins) still has a prompt delta from before it in the
/// window. The grid never moves while a socket is in a room, save for a
/// clock step, followed within the window (a step back at once, unless
/// the ticker skipped a point within it).
pub const GRID_WINDOW: u64 = 256;

/// Where a room's ticks fall on the clock, from when its deltas arrive and
/// the tick numbers they carry.
///
/// Tick `n`'s delta arrives at `origin + n · period + lateness`, and the
/// lateness (the tick's own work, the fan-out, the trip down, our own
/// scheduling) is never negative. So `arrival − n · period` is least for
/// the promptest deltas, and its least value over the last `window`
/// deltas, modulo the period, is the grid. A late delta raises only its
/// own value, however late it is; a grid that moved (a clock stepped) is
/// followed within the window. A room whose ticker skipped a
/// point (a tick over a period late) numbers one tick for two points: the
/// values step up by a period, the same modulo the period.
///
/// Until session 20 this was a histogram of `arrival mod period`, whose
/// estimate was the end of the longest quiet run. A delta more than half
/// a period late looks early modulo the period: in a busy spell those
/// filled the quiet bins before the ticks and put 10–50% of users' grids
/// 5–17 ms early (docs/benchmarks.md), and old arrivals took 100 s to fade.
#[derive(Debug, Clone)]
pub struct TickGrid {
    period_us: u64,
    window: u64,
    seen: u64,
    /// (observation number, `arrival − tick · period`), rising from the
    /// front: the front is the window's least (a monotonic queue).
    least: std::collections::VecDeque<(u64, i128)>,
}

impl TickGrid {
    /// A grid of `period_us`, from the last `window` deltas.
    pub fn new(period_us: u64, window: u64) -> Self {
        TickGrid { period_us: period_us.max(1), window: window.max(1), seen: 0, least: std::collections::VecDeque::new() }
    }

    /// Tick `tick`'s delta arrived at `arrival_us` (Unix µs).
    pub fn observe(&mut self, arrival_us: u64, tick: u64) {
        let value = i128::from(arrival_us) - i128::from(tick) * i128::from(self.period_us);
        while self.least.back().is_some_and(|&(_, v)| v >= value) {
            self.least.pop_back();
        }
        self.least.push_back((self.seen, value));
        self.seen += 1;
        while self.least.front().is_some_and(|&(at, _)| at + self.window < self.seen) {
            self.least.pop_front();
        }
    }

    /// The grid's phase (µs into the period), once enough deltas were seen.
    pub fn phase_us(&self) -> Option<u64> {
        if self.seen < MIN_OBSERVATIONS {
            return None;
        }
        let &(_, least) = self.least.front()?;
        Some(least.rem_euclid(i128::from(self.period_us)) as u64)
    }
}

/// How far `a_us` comes after `b_us` modulo `period_us`, in `[0, period)`.
fn after_modulo(a_us: u64, b_us: u64, period_us: u64) -> u64 {
    (a_us % period_us + period_us - b_us % period_us) % period_us
}

/// The first grid point (`phase + n · period`) at or after `t_us`.
pub fn tick_at_or_after(t_us: u64, phase_us: u64, period_us: u64) -> u64 {
    t_us + after_modulo(phase_us, t_us, period_us)
}

/// How early before the (arrival) grid a pose should leave: the round
/// trip, plus room for the server to read it in time, plus how late our
/// own timer fires. How irregularly deltas arrive after the grid (the path,
/// the server's scheduling, our own) is the best guide to how late our
/// pose may be read: its spread over the last few seconds
/// ([`robust_spread`], [`LEAD_DEVIATIONS`] of it), at least
/// [`MIN_MARGIN_US`]. The timer's part is its smoothed mean plus as many
/// deviations.
#[derive(Debug, Clone)]
pub struct SendLead {
    /// Lateness, smoothed: the margin without a grace ([`SendLead::without_server_grace`]).
    arrival: Spread,
    /// The latest deltas' lateness (µs), oldest first ([`LATENESS_WINDOW`]):
    /// the margin with a grace.
    recent_lateness: std::collections::VecDeque<f64>,
    /// Their spread, recomputed every few deltas ([`robust_spread`]).
    robust_spread_us: f64,
    since_spread: u32,
    timer: Spread,
    deviations: f64,
    /// Whether the margin also covers the mean lateness ([`SendLead::without_server_grace`]).
    mean_lateness: bool,
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
/// Deltas whose lateness gives the spread against a server with a grace
/// (about 3 s at 20 Hz): a busy spell leaves the lead that much after it.
/// A smoothed variance (the mean's, [`LEAD_ALPHA`]) took 10 s and more to
/// forget one: in a 1,800-user ladder step the lead's p50 sat at 15–26 ms
/// for 8 s after a 2 s spike (session 20).
const LATENESS_WINDOW: usize = 64;
/// Recompute the windowed spread after this many deltas.
const SPREAD_EVERY: u32 = 4;
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
        SendLead {
            arrival: Spread { mean_us: 2_000.0, var_us2: 1_000.0 * 1_000.0 },
            recent_lateness: std::collections::VecDeque::with_capacity(LATENESS_WINDOW),
            robust_spread_us: 1_000.0,
            since_spread: 0,
            timer: Spread { mean_us: 500.0, var_us2: 500.0 * 500.0 },
            deviations,
            mean_lateness: false,
        }
    }

    /// For a server whose ticks never wait for a late pose (the socket.io
    /// baseline `plaza-load` drives): [`LEAD_DEVIATIONS_WITHOUT_GRACE`]
    /// deviations, and the mean lateness too. Its one Node thread reads a
    /// pose only once it is done with what came before, the last tick's
    /// fan-out included, so there the mean counts: socket.io batching at
    /// 400 and 480 users read p99 34–36 and 40–44 ms with it, 40–60 and
    /// 65 ms without (two alternating ladders each, session 20).
    pub fn without_server_grace() -> Self {
        SendLead { mean_lateness: true, ..SendLead::with_deviations(LEAD_DEVIATIONS_WITHOUT_GRACE) }
    }

    /// A delta arrived `arrival_us`, with the grid at `phase_us` into each `period_us`.
    pub fn observe(&mut self, arrival_us: u64, phase_us: u64, period_us: u64) {
        if period_us == 0 {
            return;
        }
        let late = after_modulo(arrival_us, phase_us, period_us) as f64;
        // Arrivals just before the grid are early ones of the next tick, not very late ones.
        let late = if late > period_us as f64 * 0.75 { 0.0 } else { late };
        // Each margin keeps only what it uses.
        if self.mean_lateness {
            self.arrival.add(late);
            return;
        }
        if self.recent_lateness.len() == LATENESS_WINDOW {
            self.recent_lateness.pop_front();
        }
        self.recent_lateness.push_back(late);
        self.since_spread += 1;
        if self.since_spread >= SPREAD_EVERY {
            self.since_spread = 0;
            if let Some(spread) = robust_spread(&self.recent_lateness) {
                self.robust_spread_us = spread;
            }
        }
    }

    /// Our send timer fired `late_us` after the instant it was set for.
    pub fn timer_fired(&mut self, late_us: u64) {
        self.timer.add(late_us as f64);
    }

    /// The lead for a round trip of `rtt_us`: all of it, and a margin of
    /// at most half a period. (A lead over a period is fine: the slot is
    /// the same modulo the period.)
    ///
    /// All of the round trip, because the grid is learnt from when deltas
    /// *arrive*: it lies one trip down after the room's ticks, and a pose
    /// takes one trip up. Half of it (as before session 20) landed every
    /// pose half a round trip after the tick it aimed at, where it waited
    /// for the next one: at 20 ms each way (`--latency 20ms`), others saw a
    /// user's move at p50 78 ms instead of 49.
    ///
    /// The margin is the spread of how late deltas arrive, not their mean
    /// lateness: the mean is mostly the tick's own work and the fan-out to
    /// every member, which come after the tick and don't delay reading our
    /// pose before it; the spread is how irregular the path and the
    /// server's scheduling are, which does. Traced at 2,000 users (session
    /// 20), poses needed a lead of 4–15 ms (p99) to make their tick while
    /// the mean lateness had pushed the lead to 15–30 ms, all of it added
    /// to what everyone saw.
    pub fn lead_us(&self, rtt_us: u64, period_us: u64) -> u64 {
        let arrival = if self.mean_lateness { self.arrival.high(self.deviations) } else { self.deviations * self.robust_spread_us };
        let margin = arrival.max(MIN_MARGIN_US as f64) + self.timer.high(self.deviations).max(0.0);
        rtt_us + (margin as u64).min(period_us / 2)
    }
}

/// How widely `lateness` spreads: half the distance from its 16th to its
/// 84th percentile (one deviation, for a normal spread), which a rare
/// straggler moves little. `None` below 8 values.
fn robust_spread(lateness: &std::collections::VecDeque<f64>) -> Option<f64> {
    if lateness.len() < 8 {
        return None;
    }
    // On the stack: it runs every few deltas for every user.
    let mut values = [0.0; LATENESS_WINDOW];
    let n = lateness.len().min(LATENESS_WINDOW);
    for (slot, &late) in values.iter_mut().zip(lateness.iter().skip(lateness.len() - n)) {
        *slot = late;
    }
    let values = &mut values[..n];
    let rank = |q: f64| ((n - 1) as f64 * q).round() as usize;
    let high = *values.select_nth_unstable_by(rank(0.84), f64::total_cmp).1;
    let low = *values.select_nth_unstable_by(rank(0.16), f64::total_cmp).1;
    Some((high - low) / 2.0)
}

/// The first send instant at or after `after_us` that lands a pose
/// `lead_us` before a tick of the arrival grid.
pub fn slot_at_or_after(after_us: u64, phase_us: u64, period_us: u64, lead_us: u64) -> u64 {
    if period_us == 0 {
        return after_us;
    }
    // Slots are the grid shifted back by the lead.
    let slot_phase = after_modulo(phase_us, lead_us, period_us);
    tick_at_or_after(after_us, slot_phase, period_us)
}

/// A client's pose pacing: it hands over its newest pose whenever it
/// changes, and sends it at the next slot, at most one a tick. Until the
/// grid is known (no deltas yet: alone in the room), a pose goes out at
/// most once a period, at once when the last one was long ago.
#[derive(Debug, Clone)]
pub struct PosePacer {
    period_us: u64,
    grid: TickGrid,
    lead: SendLead,
    /// The latest ping round trips (µs), oldest first.
    round_trips: std::collections::VecDeque<u64>,
    /// Their median, kept as they come (it is read for every pose sent).
    rtt_us: u64,
    last_sent_us: Option<u64>,
    /// Deltas on the grid not yet taught to the lead ([`LEAD_WARMUP_DELTAS`]).
    warmup_left: u32,
    /// The room whose grid this is.
    room: Option<String>,
}

/// The first deltas after the grid is found (about 3 s at 20 Hz) don't
/// teach the lead. A pacer starts with each socket, and a new socket often
/// comes with a busy server: after a restart everyone comes back at once,
/// and for a second or two the deltas come late, some by more than a
/// period. Learnt from, they kept the lead near half a period for 5–10 s
/// after the deltas were on time again (its variance forgets slowly):
/// p99 near a whole tick for 10–20 s (docs/benchmarks.md, session 13).
pub const LEAD_WARMUP_DELTAS: u32 = 60;

/// The round trip assumed before the first pong.
const FIRST_ROUND_TRIP_US: u64 = 1_000;
/// Round trips whose median the lead takes (25 s of the client's pings).
/// A median: one slow pong (a busy moment on either side, a lost segment
/// on the path) leaves it be, where a mean moved every pose that much
/// earlier for half a minute. Not the least: with jitter on the path the
/// lead must cover a pose's slower trips up, and the least sent poses late
/// (through the load tool's proxy at 20 ± 10 ms each way: 1.2% superseded
/// against 0.3%).
const ROUND_TRIPS_KEPT: usize = 5;

impl PosePacer {
    pub fn new(tick_hz: u32) -> Self {
        Self::with_lead(tick_hz, SendLead::default())
    }

    /// For a server whose ticks don't wait for late poses
    /// ([`LEAD_DEVIATIONS_WITHOUT_GRACE`]).
    pub fn without_server_grace(tick_hz: u32) -> Self {
        Self::with_lead(tick_hz, SendLead::without_server_grace())
    }

    fn with_lead(tick_hz: u32, lead: SendLead) -> Self {
        let period_us = 1_000_000 / u64::from(tick_hz.max(1));
        PosePacer { period_us, grid: TickGrid::new(period_us, GRID_WINDOW), lead, round_trips: std::collections::VecDeque::with_capacity(ROUND_TRIPS_KEPT), rtt_us: FIRST_ROUND_TRIP_US, last_sent_us: None, warmup_left: LEAD_WARMUP_DELTAS, room: None }
    }

    /// We are in room `room` now (its id). Each room ticks on a grid of its
    /// own: in another room than before, the grid is learnt afresh. The
    /// round trip and the lead stay (the same path to the same server).
    /// Kept, the old room's grid faded only after a minute or two of the
    /// new room's deltas, and poses aimed at it landed anywhere in the new
    /// room's period.
    pub fn joined(&mut self, room: &str) {
        if self.room.as_deref() == Some(room) {
            return;
        }
        if self.room.is_some() {
            self.grid = TickGrid::new(self.period_us, GRID_WINDOW);
        }
        self.room = Some(room.to_owned());
    }

    /// Tick `tick`'s delta arrived at `arrival_us` (Unix µs).
    pub fn delta_arrived(&mut self, arrival_us: u64, tick: u64) {
        self.grid.observe(arrival_us, tick);
        let Some(phase) = self.grid.phase_us() else { return };
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
        } else {
            self.lead.observe(arrival_us, phase, self.period_us);
        }
    }

    /// The grid the pacer sends by (µs into the period), once it has one.
    pub fn grid_phase_us(&self) -> Option<u64> {
        self.grid.phase_us()
    }

    /// A ping's round trip.
    pub fn round_trip(&mut self, rtt_us: u64) {
        if self.round_trips.len() == ROUND_TRIPS_KEPT {
            self.round_trips.pop_front();
        }
        self.round_trips.push_back(rtt_us);
        // The median (of two, the lower).
        let mut sorted = [0; ROUND_TRIPS_KEPT];
        let n = self.round_trips.len();
        for (slot, &rtt) in sorted.iter_mut().zip(&self.round_trips) {
            *slot = rtt;
        }
        sorted[..n].sort_unstable();
        self.rtt_us = sorted[(n - 1) / 2];
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

    /// How long before a tick a pose leaves now.
    pub fn lead_us(&self) -> u64 {
        self.lead.lead_us(self.rtt_us, self.period_us)
    }
}

/// How far grid `phase_us` is from `reference_us`, signed: positive when
/// it is later (within ± half a period).
pub fn phase_offset_us(phase_us: u64, reference_us: u64, period_us: u64) -> i64 {
    if period_us == 0 {
        return 0;
    }
    let ahead = after_modulo(phase_us, reference_us, period_us);
    if ahead > period_us / 2 { ahead as i64 - period_us as i64 } else { ahead as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grid fed tick `n` at `arrival(n)` for `ticks`.
    fn grid_of(ticks: std::ops::Range<u64>, arrival: impl Fn(u64) -> u64) -> TickGrid {
        let mut grid = TickGrid::new(50_000, GRID_WINDOW);
        for n in ticks {
            grid.observe(arrival(n), n);
        }
        grid
    }

    #[test]
    fn the_grid_is_where_the_promptest_deltas_arrive() {
        let period = 50_000;
        // Ticks at 12 ms into each period; deliveries 0.3–4 ms later.
        let grid = grid_of(0..200, |n| 1_000_000_000 + n * period + 12_000 + 300 + (n % 8) * 500);
        assert_eq!(grid.phase_us(), Some(12_300));
        // Ticks at 49 ms: deliveries land on both sides of the period's end.
        let wrapped = grid_of(0..200, |n| n * period + 49_000 + 200 + (n % 6) * 500);
        assert_eq!(wrapped.phase_us(), Some(49_200));
        // Too few deltas: no grid yet.
        assert_eq!(grid_of(0..3, |n| n * period).phase_us(), None);
    }

    #[test]
    fn deltas_late_by_more_than_half_a_period_do_not_move_the_grid() {
        let period = 50_000;
        // A busy spell: every other delta 26–48 ms late (modulo the period,
        // 2–24 ms *before* the tick), the rest 1–3 ms.
        let late = |n: u64| if n.is_multiple_of(2) { 26_000 + (n * 7_919 % 22_000) } else { 1_000 + (n % 5) * 500 };
        let grid = grid_of(0..400, |n| 1_000_000_000 + n * period + 12_000 + late(n));
        assert_eq!(grid.phase_us(), Some(13_000));
        // Even when the late ones are all there is for a while, the grid
        // is never put before the ticks, only after them.
        let late_only = grid_of(0..100, |n| 1_000_000_000 + n * period + 12_000 + 30_000 + n % 7 * 1_000);
        assert_eq!(late_only.phase_us(), Some(42_000));
    }

    #[test]
    fn a_moved_grid_is_followed_within_the_window_and_a_skipped_tick_changes_nothing() {
        let period = 50_000;
        let mut grid = grid_of(0..200, |n| n * period + 12_000 + (n % 4) * 500);
        assert_eq!(grid.phase_us(), Some(12_000));
        // The ticker skipped a point: tick 200 comes at grid point 201.
        for n in 200..300u64 {
            grid.observe((n + 1) * period + 12_000 + (n % 4) * 500, n);
        }
        assert_eq!(grid.phase_us(), Some(12_000));
        // The clock stepped 18 ms back: followed at once, since it lowers every value.
        let mut grid = grid_of(0..300, |n| n * period + 12_000 + (n % 4) * 500);
        for n in 300..310u64 {
            grid.observe(n * period - 6_000 + (n % 4) * 500, n);
        }
        assert_eq!(grid.phase_us(), Some(44_000));
        // And forward 20 ms: followed once the window has passed.
        for n in 310..(310 + GRID_WINDOW + 1) {
            grid.observe(n * period + 14_000 + (n % 3) * 500, n);
        }
        assert_eq!(grid.phase_us(), Some(14_000));
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
            pacer.delta_arrived(t0 + n * period + 12_000 + (n % 4) * 250, n);
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
    fn without_a_server_grace_the_lead_allows_the_mean_lateness_and_three_deviations() {
        let period = 50_000;
        let (mut graced, mut ungraced) = (PosePacer::new(20), PosePacer::without_server_grace(20));
        for n in 0..500u64 {
            // Deltas 2–8 ms after a grid at 12 ms, our timer on time.
            let arrival = 1_000_000_000 + n * period + 12_000 + 2_000 + (n % 7) * 1_000;
            for pacer in [&mut graced, &mut ungraced] {
                pacer.delta_arrived(arrival, n);
                pacer.sent(arrival, arrival);
            }
        }
        let (one, three) = (graced.lead.lead_us(1_000, period), ungraced.lead.lead_us(1_000, period));
        // The grid is seen where arrivals start (14 ms), so lateness is
        // 0–6 ms: 3 ms on average, a deviation of 2 ms. The round trip plus
        // the least margin (3 ms) is about 4 ms; without a grace, the mean
        // and three deviations (9 ms) make it about 10 ms.
        assert!((3_900..5_000).contains(&one), "{one}");
        assert!(three > one + 5_000 && three < one + 7_000, "{three} vs {one}");
    }

    #[test]
    fn a_burst_of_late_deltas_on_a_new_socket_does_not_stay_in_the_lead() {
        let period = 50_000;
        let tick = |n: u64| 1_000_000_000 + n * period + 12_000;
        // What a calm room's deltas teach: a few ms.
        let mut calm = PosePacer::new(20);
        for n in 0..400u64 {
            calm.delta_arrived(tick(n) + 300 + (n % 5) * 200, n);
        }
        let calm_lead = calm.lead.lead_us(1_000, period);
        // A restarted server: 2 s of deltas up to 30 ms late (a few on
        // time, so the grid is found), then calm again for 2 s.
        let mut rejoined = PosePacer::new(20);
        for n in 0..40u64 {
            let late = if n % 4 == 0 { 300 } else { 3_000 + (n * 7_919 % 27_000) };
            rejoined.delta_arrived(tick(n) + late, n);
        }
        for n in 40..80u64 {
            rejoined.delta_arrived(tick(n) + 300 + (n % 5) * 200, n);
        }
        let lead = rejoined.lead.lead_us(1_000, period);
        assert!(lead <= calm_lead + 1_000, "{lead} vs {calm_lead} in a calm room");
        // The same burst later in a socket's life is learnt from: the lead
        // follows a server that stays busy.
        for n in 80..120u64 {
            rejoined.delta_arrived(tick(n) + 3_000 + (n * 7_919 % 27_000), n);
        }
        assert!(rejoined.lead.lead_us(1_000, period) > calm_lead + 3_000);
    }

    #[test]
    fn a_grid_offset_is_signed_and_wraps_at_half_a_period() {
        assert_eq!(phase_offset_us(14_000, 12_000, 50_000), 2_000);
        assert_eq!(phase_offset_us(1_000, 49_000, 50_000), 2_000, "across the period's end");
        assert_eq!(phase_offset_us(49_000, 1_000, 50_000), -2_000);
        assert_eq!(phase_offset_us(40_000, 10_000, 50_000), -20_000, "nearer the other way round");
    }

    #[test]
    fn a_stormy_start_leaves_no_trace_in_the_grid() {
        let period = 50_000;
        let tick = |n: u64| 1_000_000_000 + n * period + 12_000;
        let mut pacer = PosePacer::new(20);
        // A restarted server taking everyone back: deltas up to 2.4 periods late.
        let mut x = 7u64;
        for n in 0..(8 + u64::from(LEAD_WARMUP_DELTAS)) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            pacer.delta_arrived(tick(n) + 2_000 + (x >> 33) % 120_000, n);
        }
        // Then calm: the grid is the ticks' at once (the promptest deltas).
        for n in 68..72u64 {
            pacer.delta_arrived(tick(n) + 300 + (n % 4) * 200, n);
        }
        let phase = pacer.grid_phase_us().expect("a grid");
        assert!((12_300..=12_900).contains(&phase), "{phase}");
    }

    #[test]
    fn the_lead_grows_with_how_irregularly_deltas_arrive_not_with_how_late() {
        let period = 50_000;
        let taught = |late: &dyn Fn(u64) -> u64| {
            let mut lead = SendLead::default();
            for n in 0..500u64 {
                lead.observe(n * period + 12_000 + late(n), 12_000, period);
            }
            lead.lead_us(1_000, period)
        };
        let calm = taught(&|n| 300 + (n % 5) * 100);
        // The round trip, the least margin and the timer's initial guess.
        assert!((4_500..=5_500).contains(&calm), "{calm}");
        // Every delta 10 ms late (a slow fan-out): the same lead.
        let late = taught(&|n| 10_000 + (n % 5) * 100);
        assert!(late.abs_diff(calm) < 200, "{late} vs {calm}");
        // Deltas 0–18 ms late: a deviation of about 5.7 ms.
        let irregular = taught(&|n| (n % 10) * 2_000);
        assert!(irregular > calm + 2_000 && irregular < calm + 4_500, "{irregular} vs {calm}");
        // A timer that fires late moves the send earlier by as much, and more.
        let mut slow_timer = SendLead::default();
        for n in 0..500u64 {
            slow_timer.observe(n * period + 12_000 + 300 + (n % 5) * 100, 12_000, period);
            slow_timer.timer_fired(3_000 + (n % 3) * 500);
        }
        let slow = slow_timer.lead_us(1_000, period);
        assert!(slow >= calm + 2_500, "{slow} vs {calm}");
        // The round trip, however long, and a margin of at most half a period.
        let mut wild = SendLead::with_deviations(3.0);
        for n in 0..500u64 {
            wild.observe(n * period + 12_000 + (n % 2) * 30_000, 12_000, period);
        }
        assert_eq!(wild.lead_us(1_000_000, period), 1_000_000 + 25_000);
    }

    #[test]
    fn a_busy_spell_leaves_the_lead_within_a_window_of_deltas() {
        let period = 50_000;
        let mut lead = SendLead::default();
        let calm = |n: u64| n * period + 12_000 + 300 + (n % 5) * 200;
        for n in 0..200u64 {
            lead.observe(calm(n), 12_000, period);
        }
        let before = lead.lead_us(1_000, period);
        // 2 s of deltas 0–30 ms late: the lead widens…
        for n in 200..240u64 {
            lead.observe(n * period + 12_000 + (n * 7_919 % 30_000), 12_000, period);
        }
        assert!(lead.lead_us(1_000, period) > before + 5_000);
        // …and is back once the window holds calm deltas only.
        for n in 240..(240 + LATENESS_WINDOW as u64) {
            lead.observe(calm(n), 12_000, period);
        }
        assert_eq!(lead.lead_us(1_000, period), before);
        // A rare straggler moves it little.
        lead.observe(400 * period + 12_000 + 35_000, 12_000, period);
        for n in 401..404u64 {
            lead.observe(calm(n), 12_000, period);
        }
        assert_eq!(lead.lead_us(1_000, period), before);
    }

    #[test]
    fn the_lead_takes_the_whole_round_trip_its_median() {
        let period = 50_000;
        let t0 = 1_000_000_000;
        let mut pacer = PosePacer::new(20);
        for n in 0..100u64 {
            pacer.delta_arrived(t0 + n * period + 12_000 + (n % 4) * 250, n);
        }
        let margin = pacer.lead_us() - FIRST_ROUND_TRIP_US;
        // The first pong is taken as it is: 40 ms.
        pacer.round_trip(40_000);
        assert_eq!(pacer.lead_us(), 40_000 + margin);
        // The pose leaves a round trip and the margin before the grid: it
        // lands at the room the margin before the tick.
        let at = pacer.next_send_us(t0 + 100 * period);
        assert_eq!((at + 40_000 + margin) % period, 12_000);
        // One slow pong moves nothing; a path that got slower does.
        pacer.round_trip(400_000);
        assert_eq!(pacer.lead_us(), 40_000 + margin);
        pacer.round_trip(42_000);
        assert_eq!(pacer.lead_us(), 42_000 + margin);
        for _ in 0..3 {
            pacer.round_trip(80_000);
        }
        assert_eq!(pacer.lead_us(), 80_000 + margin);
    }

    #[test]
    fn another_room_is_another_grid() {
        let period = 50_000;
        let t0 = 1_000_000_000;
        let mut pacer = PosePacer::new(20);
        pacer.joined("room-a");
        for n in 0..400u64 {
            pacer.delta_arrived(t0 + n * period + 12_000 + (n % 4) * 250, n);
        }
        assert_eq!(pacer.grid_phase_us(), Some(12_000));
        // The same room again (a resumed seat): the grid stays.
        pacer.joined("room-a");
        assert_eq!(pacer.grid_phase_us(), Some(12_000));
        // Room b ticks at 37 ms: after a few of its deltas, its grid is used.
        pacer.joined("room-b");
        assert_eq!(pacer.grid_phase_us(), None, "no grid until room b's deltas show it");
        for n in 400..420u64 {
            pacer.delta_arrived(t0 + n * period + 37_000 + (n % 4) * 250, n);
        }
        assert_eq!(pacer.grid_phase_us(), Some(37_000));
    }
}
