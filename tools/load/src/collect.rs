//! The collector: one task that owns the latency histograms. Users send it
//! batches of samples over a bounded channel; each second it closes the
//! seconds that can no longer change (p50/p99 per second), samples the
//! server's CPU and memory, and prints the progress line. It stops when
//! every user has dropped its sender.

use crate::histogram::{Histogram, round3};
use crate::server::{ResourceSample, Sampler};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Capacity of the channel from users to the collector.
pub const BATCH_QUEUE: usize = 1024;
/// A batch is flushed at the latest after this long, or when it holds
/// [`BATCH_MAX`] samples.
pub const BATCH_EVERY: Duration = Duration::from_millis(250);
pub const BATCH_MAX: usize = 2048;
/// Resource points cover at least this long (s).
const MIN_POINT_S: f64 = 0.5;
/// Seconds stay open this long for late batches before they are summarized.
const SECOND_LATENESS: u32 = 2;

/// Latency samples (µs) of pose arrivals, all within one second of the run.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub second: u32,
    pub e2e_us: Vec<u32>,
    pub net_us: Vec<u32>,
    /// The same poses as `e2e_us`, timed to their frame's arrival at this
    /// tool's socket (crate::stamped) instead of to when it was read.
    pub at_socket_us: Vec<u32>,
    /// Paced users' poses sent in this second ([`PacingSample`]).
    pub pacing: Vec<PacingSample>,
}

/// How a paced user timed one pose: the lead it sent it by, and how far
/// its grid was from the room's (learnt from all the room's deltas).
#[derive(Debug, Clone, Copy)]
pub struct PacingSample {
    pub lead_us: u32,
    /// Positive: the user's grid is later than the room's.
    pub grid_offset_us: i32,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.e2e_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.e2e_us.is_empty() && self.net_us.is_empty() && self.pacing.is_empty()
    }

    /// An empty batch with room for `n` samples (a user's next batch is
    /// about as big as its last: growing three vectors from nothing for
    /// each one was 2% of the tool's CPU at 2,000 users).
    pub fn with_capacity(n: usize) -> Self {
        Batch { second: 0, e2e_us: Vec::with_capacity(n), net_us: Vec::with_capacity(n), at_socket_us: Vec::with_capacity(n), pacing: Vec::new() }
    }
}

/// Live numbers for the progress line, shared by every user.
#[derive(Debug, Default)]
pub struct Counters {
    /// Users in their room now.
    pub in_room: AtomicU64,
    pub msgs_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub poses_sent: AtomicU64,
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SecondPoint {
    /// Seconds since the start of the run.
    pub s: u32,
    /// Poses received in this second.
    pub poses: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Paced users' send lead (see [`PacingSample`]); 0 when none.
    pub lead_p50_ms: f64,
    pub lead_p99_ms: f64,
    /// The 99th percentile of how far paced users' grids were from their
    /// room's, either way; and the share of sends by a grid over 2 ms late.
    pub grid_offset_p99_ms: f64,
    pub grid_late_pct: f64,
}

/// The lead and grid offsets of a run's paced sends.
#[derive(Debug, Default)]
pub struct PacingHistograms {
    pub lead: Histogram,
    /// Absolute offsets.
    pub grid_offset: Histogram,
    /// Sends by a grid more than [`GRID_LATE_US`] later than the room's.
    pub grid_late: u64,
}

/// A grid this much later than the room's lands poses after the tick
/// unless the lead covers it.
pub const GRID_LATE_US: i32 = 2_000;

impl PacingHistograms {
    fn record(&mut self, sample: PacingSample) {
        self.lead.record(u64::from(sample.lead_us));
        self.grid_offset.record(u64::from(sample.grid_offset_us.unsigned_abs()));
        self.grid_late += u64::from(sample.grid_offset_us > GRID_LATE_US);
    }

    pub fn late_pct(&self) -> f64 {
        let n = self.grid_offset.count();
        if n == 0 { 0.0 } else { round3(100.0 * self.grid_late as f64 / n as f64) }
    }

    /// The run's summary; `None` without paced sends.
    pub fn stats(&self) -> Option<crate::report::PacingStats> {
        (!self.lead.is_empty()).then(|| crate::report::PacingStats { lead_ms: self.lead.summary_ms(), grid_offset_ms: self.grid_offset.summary_ms(), grid_late_pct: self.late_pct() })
    }
}

/// Server resources at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ResourcePoint {
    pub s: f64,
    /// The server's CPU, percent of one core.
    pub cpu_pct: f64,
    /// This tool's own CPU, percent of one core.
    pub load_cpu_pct: f64,
    /// The whole machine's CPU, percent of all cores (every process).
    pub machine_busy_pct: f64,
    pub rss_mb: f64,
    pub users_in_room: u64,
    pub msgs_in_per_s: f64,
}

#[derive(Debug, Default)]
pub struct Collected {
    pub e2e: Histogram,
    pub net: Histogram,
    pub at_socket: Histogram,
    pub pacing: PacingHistograms,
    pub seconds: Vec<SecondPoint>,
    pub resources: Vec<ResourcePoint>,
    /// Server CPU time (s) and wall time (s) between the first and the last sample.
    pub cpu_seconds: f64,
    pub load_cpu_seconds: f64,
    pub wall_seconds: f64,
    /// The whole machine's mean busy share (all processes), percent of all cores.
    pub machine_busy_pct: f64,
    pub peak_rss_bytes: u64,
}

impl Collected {
    /// Mean server CPU over the run, percent of one core.
    pub fn cpu_pct(&self) -> f64 {
        if self.wall_seconds > 0.0 { round3(100.0 * self.cpu_seconds / self.wall_seconds) } else { 0.0 }
    }

    /// Mean CPU of this tool over the run, percent of one core.
    pub fn load_cpu_pct(&self) -> f64 {
        if self.wall_seconds > 0.0 { round3(100.0 * self.load_cpu_seconds / self.wall_seconds) } else { 0.0 }
    }
}

/// Machine busy share between two samples, percent of all cores.
fn busy_pct(a: ResourceSample, b: ResourceSample) -> f64 {
    let total = b.machine_total_ticks.saturating_sub(a.machine_total_ticks);
    let busy = b.machine_busy_ticks.saturating_sub(a.machine_busy_ticks);
    if total == 0 { 0.0 } else { round3(100.0 * busy as f64 / total as f64) }
}

/// A second still taking samples.
#[derive(Debug, Default)]
struct OpenSecond {
    e2e: Histogram,
    pacing: PacingHistograms,
}

pub struct Collector {
    epoch: Instant,
    counters: Arc<Counters>,
    sampler: Sampler,
    progress: bool,
    /// Planned length of the run (for the progress line).
    planned_s: u64,
    users: u64,
    out: Collected,
    open: BTreeMap<u32, OpenSecond>,
    first: Option<ResourceSample>,
    last: Option<ResourceSample>,
    last_msgs: u64,
}

impl Collector {
    pub fn new(epoch: Instant, counters: Arc<Counters>, sampler: Sampler, progress: bool, planned_s: u64, users: u64) -> Self {
        Collector { epoch, counters, sampler, progress, planned_s, users, out: Collected::default(), open: BTreeMap::new(), first: None, last: None, last_msgs: 0 }
    }

    fn add(&mut self, batch: Batch) {
        let second = self.open.entry(batch.second).or_default();
        for &sample in &batch.pacing {
            second.pacing.record(sample);
            self.out.pacing.record(sample);
        }
        for &v in &batch.e2e_us {
            second.e2e.record(u64::from(v));
            self.out.e2e.record(u64::from(v));
        }
        for &v in &batch.net_us {
            self.out.net.record(u64::from(v));
        }
        for &v in &batch.at_socket_us {
            self.out.at_socket.record(u64::from(v));
        }
    }

    /// Summarizes the seconds before `before`.
    fn close_seconds(&mut self, before: u32) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= before {
                break;
            }
            let (s, open) = entry.remove_entry();
            let summary = open.e2e.summary_ms();
            let lead = open.pacing.lead.summary_ms();
            self.out.seconds.push(SecondPoint {
                s,
                poses: open.e2e.count(),
                p50_ms: summary.p50,
                p99_ms: summary.p99,
                max_ms: summary.max,
                lead_p50_ms: lead.p50,
                lead_p99_ms: lead.p99,
                grid_offset_p99_ms: open.pacing.grid_offset.summary_ms().p99,
                grid_late_pct: open.pacing.late_pct(),
            });
        }
    }

    async fn sample(&mut self) {
        let Some(sample) = self.sampler.sample().await else { return };
        let users_in_room = Counters::get(&self.counters.in_room);
        let msgs = Counters::get(&self.counters.msgs_in);
        if let Some(last) = self.last {
            let wall = sample.at.duration_since(last.at).as_secs_f64();
            // A restarted server's CPU starts again from zero: what it has
            // used is then all new (as Prometheus reads a counter reset).
            let server_cpu = if sample.cpu_seconds >= last.cpu_seconds { sample.cpu_seconds - last.cpu_seconds } else { sample.cpu_seconds };
            self.out.cpu_seconds += server_cpu;
            // CPU time comes in 10 ms ticks: a short interval says nothing.
            if wall >= MIN_POINT_S {
                let cpu_pct = 100.0 * server_cpu / wall;
                self.out.resources.push(ResourcePoint {
                    s: round3(sample.at.duration_since(self.epoch).as_secs_f64()),
                    cpu_pct: round3(cpu_pct),
                    load_cpu_pct: round3(100.0 * (sample.load_cpu_seconds - last.load_cpu_seconds).max(0.0) / wall),
                    machine_busy_pct: busy_pct(last, sample),
                    rss_mb: round3(sample.rss_bytes as f64 / 1e6),
                    users_in_room,
                    msgs_in_per_s: round3(msgs.saturating_sub(self.last_msgs) as f64 / wall),
                });
            }
        }
        self.last_msgs = msgs;
        self.out.peak_rss_bytes = self.out.peak_rss_bytes.max(sample.rss_bytes);
        self.first.get_or_insert(sample);
        self.last = Some(sample);
    }

    fn progress_line(&self) {
        if !self.progress {
            return;
        }
        let elapsed = self.epoch.elapsed().as_secs();
        let rate = self.out.resources.last().map_or(0.0, |r| r.msgs_in_per_s);
        let p99 = self.out.e2e.percentile(99.0).map_or("-".to_owned(), |v| format!("{:.1} ms", v as f64 / 1000.0));
        let cpu = self.out.resources.last().map_or("-".to_owned(), |r| format!("{:.0}%", r.cpu_pct));
        let line = format!(
            "plaza-load [{elapsed:>4}s/{}s] in room {}/{} · {rate:.0} msg/s in · latency p99 {p99} · server cpu {cpu} · errors {} · reconnects {}",
            self.planned_s,
            Counters::get(&self.counters.in_room),
            self.users,
            Counters::get(&self.counters.errors),
            Counters::get(&self.counters.reconnects),
        );
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    /// Runs until every sender of `rx` is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> Collected {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => self.add(batch),
                    None => break,
                },
                _ = every_second.tick() => {
                    let now = self.epoch.elapsed().as_secs() as u32;
                    self.close_seconds(now.saturating_sub(SECOND_LATENESS));
                    self.sample().await;
                    self.progress_line();
                }
            }
        }
        self.close_seconds(u32::MAX);
        self.sample().await;
        if let (Some(first), Some(last)) = (self.first, self.last) {
            self.out.load_cpu_seconds = (last.load_cpu_seconds - first.load_cpu_seconds).max(0.0);
            self.out.machine_busy_pct = busy_pct(first, last);
            self.out.wall_seconds = last.at.duration_since(first.at).as_secs_f64();
        }
        self.out
    }
}
