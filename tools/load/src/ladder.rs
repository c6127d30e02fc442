//! `plaza-load ladder`: the same scenario stepped up, user count by user
//! count, against Plaza and against the socket.io baseline peers, in one
//! invocation on one machine; each target's capacity is the most users it
//! served with p99 end-to-end latency within the limit and nothing lost.
//! Writes `ladder.json` and `ladder.html`, plus every step's own
//! `result.json` and `report.html` under `<out>/<target>/<users>/`.

use crate::cli::RunConfig;
use crate::peer::{Peer, PeerMode};
use crate::report::{RunResult, esc, line_chart_over};
use crate::wire::Wire;
use plaza_shared::codec::Subprotocol;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pause between steps, so the previous step's sockets are gone.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Plaza's server, embedded in this process, binary subprotocol
    Plaza,
    /// socket.io, every pose relayed at once
    SocketioRelay,
    /// socket.io, room changes batched at 20 Hz
    SocketioBatch,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Plaza => "plaza",
            Target::SocketioRelay => "socketio-relay",
            Target::SocketioBatch => "socketio-batch",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Target::Plaza => "#1f77b4",
            Target::SocketioRelay => "#d62728",
            Target::SocketioBatch => "#ff7f0e",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LadderConfig {
    pub targets: Vec<Target>,
    /// Users per step, rising.
    pub steps: Vec<u64>,
    pub users_per_room: u32,
    pub rate_hz: f64,
    pub send_at: crate::cli::SendAt,
    pub step_duration: Duration,
    pub ramp: Duration,
    pub p99_limit_ms: f64,
    /// A target stops climbing after a step whose p99 is above this.
    pub stop_above_ms: f64,
    /// Runs of each step; a step reads the median of its runs.
    pub repeat: u32,
    pub peer_dir: PathBuf,
    pub out: PathBuf,
    pub progress: bool,
}

/// One step of one target: with `--repeat`, the median of its runs (the
/// sums of what they lost, and every run must have served).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub target: Target,
    pub users: u64,
    pub rooms: u32,
    /// Each run's p99, in the order they ran.
    pub runs_p99_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// None for the relay, which has no tick to wait for.
    pub net_p99_ms: Option<f64>,
    /// p99 to the delta's arrival at the load tool's socket: the p99 less
    /// the load tool's own lateness in reading.
    pub at_socket_p99_ms: f64,
    pub max_ms: f64,
    pub join_p99_ms: f64,
    pub lost: u64,
    pub misrouted: u64,
    pub errors: u64,
    pub passed: bool,
    pub failure: String,
    pub pose_rate_hz: f64,
    pub server_cpu_pct: f64,
    pub server_rss_mb: f64,
    pub load_cpu_pct: f64,
    pub machine_busy_pct: f64,
    pub saturated: bool,
    pub down_bytes_per_user_s: f64,
    /// The run passed (nothing lost or misrouted, no errors) and everyone
    /// got in: within any limit its p99 meets.
    pub served: bool,
    pub within_limit: bool,
}

/// The middle value (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Step {
    /// A step from its runs (at least one).
    fn from_runs(target: Target, limit_ms: f64, runs: &[RunResult]) -> Step {
        let of = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
        let first = &runs[0];
        let served = runs.iter().all(|r| r.passed && r.users_joined == r.users);
        let p99_ms = of(|r| r.latency_ms.p99);
        Step {
            target,
            users: first.users,
            rooms: first.rooms,
            runs_p99_ms: runs.iter().map(|r| r.latency_ms.p99).collect(),
            p50_ms: of(|r| r.latency_ms.p50),
            p99_ms,
            net_p99_ms: (target != Target::SocketioRelay).then(|| of(|r| r.latency_net_ms.p99)),
            at_socket_p99_ms: of(|r| r.latency_at_socket_ms.p99),
            max_ms: runs.iter().map(|r| r.latency_ms.max).fold(0.0, f64::max),
            join_p99_ms: of(|r| r.join_ms.p99),
            lost: runs.iter().map(|r| r.lost).sum(),
            misrouted: runs.iter().map(|r| r.misrouted).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            passed: runs.iter().all(|r| r.passed),
            failure: runs.iter().find(|r| !r.passed).map_or_else(String::new, |r| r.failure.clone()),
            pose_rate_hz: of(|r| r.pose_rate_hz),
            server_cpu_pct: of(|r| r.server.cpu_pct),
            server_rss_mb: runs.iter().map(|r| r.server.rss_mb).fold(0.0, f64::max),
            load_cpu_pct: of(|r| r.load_tool.cpu_pct),
            machine_busy_pct: of(|r| r.load_tool.machine_busy_pct),
            saturated: runs.iter().filter(|r| r.load_tool.saturated).count() * 2 > runs.len(),
            down_bytes_per_user_s: of(|r| r.down_bytes_per_user_s),
            served,
            within_limit: served && p99_ms <= limit_ms,
        }
    }

    /// The step in one line, as the ladder prints it.
    fn line(&self) -> String {
        format!(
            "{:<15} {:>6} users  p99 {:>8.1} ms (net {:>7}, at socket {:>7.1})  lost {} errors {}  server {:>4.0}%  load tool {:>4.0}%  machine {:>3.0}%  {}",
            self.target.name(),
            self.users,
            self.p99_ms,
            self.net_p99_ms.map_or_else(|| "-".to_owned(), |n| format!("{n:.1}")),
            self.at_socket_p99_ms,
            self.lost,
            self.errors,
            self.server_cpu_pct,
            self.load_cpu_pct,
            self.machine_busy_pct,
            if self.within_limit { "ok" } else { "over" }
        )
    }

    /// What ran out first at this step, in words.
    fn bottleneck(&self, cores: u32) -> String {
        let server_full = match self.target {
            // Node runs JavaScript on one thread (a little more with its
            // I/O and GC threads); Plaza's runtime uses every core.
            // (Means over a step, ramp included, so a little below full.)
            Target::SocketioRelay | Target::SocketioBatch => self.server_cpu_pct >= 75.0,
            Target::Plaza => self.server_cpu_pct >= 75.0 * f64::from(cores),
        };
        // Past four-fifths busy, threads queue for the cores.
        let machine_full = self.saturated || self.machine_busy_pct >= 80.0;
        match (server_full, machine_full) {
            (true, _) => format!("the server ({:.0}% of a core)", self.server_cpu_pct),
            (false, true) => format!("the machine ({:.0}% busy; server {:.0}%, load tool {:.0}% of a core)", self.machine_busy_pct, self.server_cpu_pct, self.load_cpu_pct),
            (false, false) => format!("neither CPU (server {:.0}%, load tool {:.0}% of a core): queueing", self.server_cpu_pct, self.load_cpu_pct),
        }
    }
}

/// A target's capacity: the most users within the limit.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub target: Target,
    /// 0: not even the first step.
    pub users: u64,
    /// false: the ladder ended before this target crossed the limit, so the
    /// real capacity is at least `users`.
    pub crossed: bool,
    /// Users at the first step over the limit, and what ran out there.
    pub crossed_at: Option<u64>,
    pub bottleneck: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LadderResult {
    pub users_per_room: u32,
    pub rate_hz: f64,
    pub step_duration_s: f64,
    pub p99_limit_ms: f64,
    /// Runs of each step (`--repeat`).
    pub repeat: u32,
    pub cores: u32,
    pub steps: Vec<Step>,
    pub capacity: Vec<Capacity>,
    /// Plaza's capacity over the best socket.io variant's, when both ran,
    /// and that variant served the first step and crossed the limit within
    /// the ladder (else its capacity, and so the ratio, is unknown).
    pub ratio: Option<f64>,
    /// true when Plaza never crossed the limit: the ratio is a lower bound.
    pub ratio_is_lower_bound: bool,
    /// The same capacities and ratio at other p99 limits
    /// ([`RATIO_LIMITS_MS`] and the ladder's own): how much the ratio
    /// depends on the limit chosen.
    pub by_limit: Vec<RatioAt>,
    pub interrupted: bool,
}

/// Limits the ratio is also read at, besides `--p99-limit-ms`.
pub const RATIO_LIMITS_MS: [f64; 5] = [30.0, 45.0, 60.0, 100.0, 150.0];

impl RatioAt {
    /// `2.7x`, `>= 2.7x`, or `–` when the baseline's capacity is unknown.
    pub fn ratio_text(&self) -> String {
        self.ratio.map_or_else(|| "–".to_owned(), |r| format!("{}{r:.1}x", if self.ratio_is_lower_bound { ">= " } else { "" }))
    }
}

/// Capacities and the ratio at one p99 limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioAt {
    pub p99_limit_ms: f64,
    /// Plaza's capacity; `plaza_crossed` false: at least this many.
    pub plaza_users: u64,
    pub plaza_crossed: bool,
    /// The socket.io variant with the most users within this limit.
    pub baseline: Option<Target>,
    pub baseline_users: u64,
    pub ratio: Option<f64>,
    pub ratio_is_lower_bound: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LadderError {
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error("step {target} at {users} users: {cause}")]
    Step { target: &'static str, users: u64, cause: String },
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

/// `run`: which of the step's runs (0-based); with `--repeat` above 1 each
/// run's reports go in a folder of its own, `run-1`, `run-2`, ….
fn step_config(cfg: &LadderConfig, target: Target, users: u64, run: u32, server: Option<String>) -> RunConfig {
    let step_dir = cfg.out.join(target.name()).join(users.to_string());
    let rooms = users.div_ceil(u64::from(cfg.users_per_room)).max(1) as u32;
    RunConfig {
        rooms,
        users_per_room: cfg.users_per_room,
        rate_hz: cfg.rate_hz,
        duration: cfg.step_duration,
        ramp: cfg.ramp,
        server,
        wire: if target == Target::Plaza { Wire::Plaza(Subprotocol::Binary) } else { Wire::SocketIo },
        out: if cfg.repeat > 1 { step_dir.join(format!("run-{}", run + 1)) } else { step_dir },
        chat_every: Some(Duration::from_secs(30)),
        ping_every: Duration::from_secs(5),
        silence_limit: plaza_shared::liveness::SILENCE_LIMIT,
        send_at: cfg.send_at,
        drain: Duration::from_secs(1),
        progress: cfg.progress,
        faults: None,
        soak: None,
        voice: false,
        voice_talk: 1.0,
        vr_share: 0.0,
        hostile: 0,
        restart_every: None,
        access_ttl: None,
        also_servers: Vec::new(),
    }
}

/// Climbs every target's ladder a rung at a time for all of them: each user
/// count runs against every target still climbing, back to back. This VM's
/// speed moves by the hour (docs/benchmarks.md), and one target's whole
/// ladder after another's measured the hour as much as the targets.
pub async fn ladder(cfg: &LadderConfig) -> Result<LadderResult, LadderError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mut steps = Vec::new();
    let mut interrupted = false;
    let mut climbing = cfg.targets.clone();
    for &users in &cfg.steps {
        let mut runs: Vec<(Target, Vec<RunResult>)> = climbing.iter().map(|&t| (t, Vec::new())).collect();
        for run in 0..cfg.repeat {
            for (target, done) in &mut runs {
                let target = *target;
                let peer = match target {
                    Target::Plaza => None,
                    Target::SocketioRelay => Some(Peer::start(&cfg.peer_dir, PeerMode::Relay)?),
                    Target::SocketioBatch => Some(Peer::start(&cfg.peer_dir, PeerMode::Batch)?),
                };
                let run_cfg = step_config(cfg, target, users, run, peer.as_ref().map(|p| p.base.clone()));
                tracing::info!(target = target.name(), users, run = run + 1, rooms = run_cfg.rooms, "ladder step");
                let result = crate::run::run(&run_cfg).await.map_err(|e| LadderError::Step { target: target.name(), users, cause: e.to_string() })?;
                drop(peer);
                crate::report::write(&run_cfg.out, &result)?;
                let this_run = Step::from_runs(target, cfg.p99_limit_ms, std::slice::from_ref(&result));
                let which = if cfg.repeat > 1 { format!("  (run {} of {})", run + 1, cfg.repeat) } else { String::new() };
                println!("plaza-load ladder: {}{which}", this_run.line());
                let stop_now = result.interrupted;
                done.push(result);
                if stop_now {
                    interrupted = true;
                    break;
                }
                tokio::time::sleep(SETTLE).await;
            }
            if interrupted {
                break;
            }
        }
        for (target, done) in runs {
            if done.is_empty() {
                continue;
            }
            let step = Step::from_runs(target, cfg.p99_limit_ms, &done);
            if done.len() > 1 {
                println!("plaza-load ladder: {}  (median of {} runs)", step.line(), done.len());
            }
            if !step.passed || step.p99_ms > cfg.stop_above_ms {
                climbing.retain(|&t| t != target);
            }
            steps.push(step);
        }
        if interrupted || climbing.is_empty() {
            break;
        }
    }
    // Reported target by target (stable: each target's steps stay in order).
    steps.sort_by_key(|s| cfg.targets.iter().position(|&t| t == s.target));
    Ok(summarize(cfg, cores, steps, interrupted))
}

/// The last step before the first over `limit_ms` (a lucky step after a
/// failing one does not count), and that first step over.
fn capacity_at<'a>(mine: &[&'a Step], limit_ms: f64) -> (u64, Option<&'a Step>) {
    let first_over = mine.iter().position(|s| !(s.served && s.p99_ms <= limit_ms));
    let served = first_over.map_or(mine, |i| &mine[..i]);
    (served.last().map_or(0, |s| s.users), first_over.map(|i| mine[i]))
}

/// Plaza's capacity over the best baseline's, when the baseline served
/// the first step and crossed within the ladder (else its capacity, and so
/// the ratio, is unknown); and whether it is a lower bound (Plaza never
/// crossed).
fn ratio_of(plaza: Option<(u64, bool)>, best_baseline: Option<(u64, bool)>) -> (Option<f64>, bool) {
    let ratio = match (plaza, best_baseline) {
        (Some((p, _)), Some((b, true))) if b > 0 => Some(p as f64 / b as f64),
        _ => None,
    };
    (ratio, plaza.is_some_and(|(_, crossed)| !crossed))
}

pub fn summarize(cfg: &LadderConfig, cores: u32, steps: Vec<Step>, interrupted: bool) -> LadderResult {
    let by_target: Vec<(Target, Vec<&Step>)> = cfg.targets.iter().map(|&t| (t, steps.iter().filter(|s| s.target == t).collect())).collect();
    let capacity: Vec<Capacity> = by_target
        .iter()
        .map(|(target, mine)| {
            let (users, over) = capacity_at(mine, cfg.p99_limit_ms);
            Capacity {
                target: *target,
                users,
                crossed: over.is_some(),
                crossed_at: over.map(|s| s.users),
                bottleneck: over.map_or_else(|| "did not cross the limit within the ladder".to_owned(), |s| s.bottleneck(cores)),
            }
        })
        .collect();
    let mut limits: Vec<f64> = RATIO_LIMITS_MS.iter().copied().chain([cfg.p99_limit_ms]).collect();
    limits.sort_by(f64::total_cmp);
    limits.dedup();
    let by_limit = limits
        .into_iter()
        .map(|limit| {
            let at: Vec<(Target, u64, bool)> = by_target.iter().map(|(t, mine)| {
                let (users, over) = capacity_at(mine, limit);
                (*t, users, over.is_some())
            }).collect();
            let plaza = at.iter().find(|a| a.0 == Target::Plaza);
            let baseline = at.iter().filter(|a| a.0 != Target::Plaza).max_by_key(|a| a.1);
            let (ratio, ratio_is_lower_bound) = ratio_of(plaza.map(|a| (a.1, a.2)), baseline.map(|a| (a.1, a.2)));
            RatioAt {
                p99_limit_ms: limit,
                plaza_users: plaza.map_or(0, |a| a.1),
                plaza_crossed: plaza.is_some_and(|a| a.2),
                baseline: baseline.map(|a| a.0),
                baseline_users: baseline.map_or(0, |a| a.1),
                ratio,
                ratio_is_lower_bound,
            }
        })
        .collect::<Vec<RatioAt>>();
    // The headline is the ratio at the ladder's own limit.
    let headline = by_limit.iter().find(|at| at.p99_limit_ms == cfg.p99_limit_ms);
    let (ratio, ratio_is_lower_bound) = headline.map_or((None, false), |at| (at.ratio, at.ratio_is_lower_bound));
    LadderResult {
        users_per_room: cfg.users_per_room,
        rate_hz: cfg.rate_hz,
        step_duration_s: cfg.step_duration.as_secs_f64(),
        p99_limit_ms: cfg.p99_limit_ms,
        repeat: cfg.repeat,
        cores,
        steps,
        capacity,
        ratio,
        ratio_is_lower_bound,
        by_limit,
        interrupted,
    }
}

/// Writes `ladder.json` and `ladder.html` into `dir`.
pub fn write(dir: &Path, r: &LadderResult) -> Result<(PathBuf, PathBuf), crate::report::ReportError> {
    crate::report::write_pair(dir, ("ladder.json", r), ("ladder.html", html(r)))
}

pub fn html(r: &LadderResult) -> String {
    let mut h = crate::report::page_head("plaza-load ladder");
    let _ = write!(
        h,
        r#"<p>{} users per room at {} Hz, {} s a step, on {} cores; limit: p99 end-to-end pose latency ≤ {} ms with nothing lost.{}</p>"#,
        r.users_per_room,
        r.rate_hz,
        r.step_duration_s,
        r.cores,
        r.p99_limit_ms,
        if r.repeat > 1 { format!(" Each step ran {} times: its latencies are the median of its runs', and it is within the limit only if every run lost nothing.", r.repeat) } else { String::new() }
    );
    h.push_str("<h2>Capacity</h2><table><tr><th>target</th><th>users within the limit</th><th>first step over</th><th>what ran out there</th></tr>");
    for c in &r.capacity {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            c.target.name(),
            if c.crossed { "" } else { "≥ " },
            c.users,
            c.crossed_at.map_or_else(|| "—".to_owned(), |u| u.to_string()),
            esc(&c.bottleneck)
        );
    }
    h.push_str("</table>");
    if let Some(ratio) = r.ratio {
        let _ = write!(h, "<p><b>Plaza's capacity over the best socket.io variant: {}{ratio:.1}×</b></p>", if r.ratio_is_lower_bound { "≥ " } else { "" });
    }
    h.push_str("<h2>The ratio at other limits</h2><table><tr><th>p99 limit</th><th>Plaza</th><th>best socket.io</th><th>ratio</th></tr>");
    for at in &r.by_limit {
        let _ = write!(
            h,
            "<tr><th>{:.0} ms</th><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            at.p99_limit_ms,
            if at.plaza_crossed { "" } else { "≥ " },
            at.plaza_users,
            at.baseline.map_or_else(|| "—".to_owned(), |b| format!("{} {}", b.name(), at.baseline_users)),
            at.ratio_text()
        );
    }
    h.push_str("</table>");
    let series = |f: fn(&Step) -> f64| -> Vec<crate::report::Series<'static>> {
        let mut targets: Vec<Target> = r.steps.iter().map(|s| s.target).collect();
        targets.dedup();
        targets.into_iter().map(|t| (t.name(), t.colour(), r.steps.iter().filter(|s| s.target == t).map(|s| (s.users as f64, f(s))).collect())).collect()
    };
    let mut p99 = series(|s| s.p99_ms);
    let max_users = r.steps.iter().map(|s| s.users).max().unwrap_or(0) as f64;
    p99.push(("limit", "#999999", vec![(0.0, r.p99_limit_ms), (max_users, r.p99_limit_ms)]));
    // Steps far over the limit would flatten the interesting part.
    let cap = r.p99_limit_ms * 5.0;
    let clipped: Vec<_> = p99.into_iter().map(|(n, c, pts)| (n, c, pts.into_iter().map(|(x, y)| (x, y.min(cap))).collect())).collect();
    h.push_str("<h2>p99 latency by users</h2>");
    h.push_str(&line_chart_over(&format!("p99 end-to-end pose latency (clipped at {cap:.0} ms)"), "users", "ms", &clipped));
    h.push_str("<h2>Server CPU by users</h2>");
    h.push_str(&line_chart_over("server CPU (socket.io: one thread)", "users", "% of one core", &series(|s| s.server_cpu_pct)));
    h.push_str("<h2>Steps</h2><table><tr><th>target</th><th>users</th><th>p50</th><th>p99</th><th>p99 net of tick</th><th>p99 at the load tool's socket</th><th>max</th><th>join p99</th><th>lost</th><th>errors</th><th>poses/s per user</th><th>server CPU %</th><th>server RSS MB</th><th>load tool CPU %</th><th>machine busy %</th><th>within</th>");
    if r.repeat > 1 {
        h.push_str("<th>p99 of each run</th>");
    }
    h.push_str("</tr>");
    for s in &r.steps {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td>",
            s.target.name(),
            s.users,
            s.p50_ms,
            s.p99_ms,
            s.net_p99_ms.map_or_else(|| "—".to_owned(), |n| format!("{n:.1}")),
            s.at_socket_p99_ms,
            s.max_ms,
            s.join_p99_ms,
            s.lost,
            s.errors,
            s.pose_rate_hz,
            s.server_cpu_pct,
            s.server_rss_mb,
            s.load_cpu_pct,
            s.machine_busy_pct,
            if s.within_limit { "yes" } else { "no" }
        );
        if r.repeat > 1 {
            let runs: Vec<String> = s.runs_p99_ms.iter().map(|p| format!("{p:.1}")).collect();
            let _ = write!(h, "<td>{}</td>", runs.join(", "));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><p class=\"note\">Every step is its own run (fresh server), with its full report under the target's folder. Plaza runs in this process (its RSS includes the load tool); the socket.io peers are Node processes read through their /metrics. Latency net of tick is shown only for targets with a tick (Plaza, socketio-batch). At the socket: p99 to when the delta reached the load tool's socket (the kernel's receive time), so the gap to p99 is the load tool reading late. The ratio is shown only when the best socket.io variant crossed the limit within the ladder.</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(target: Target, users: u64, p99: f64, passed: bool) -> Step {
        Step {
            target,
            users,
            rooms: 1,
            runs_p99_ms: vec![p99],
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            net_p99_ms: Some(p99),
            at_socket_p99_ms: p99,
            max_ms: p99,
            join_p99_ms: 1.0,
            lost: u64::from(!passed),
            misrouted: 0,
            errors: 0,
            passed,
            failure: String::new(),
            pose_rate_hz: 20.0,
            server_cpu_pct: 95.0,
            server_rss_mb: 50.0,
            load_cpu_pct: 50.0,
            machine_busy_pct: 70.0,
            saturated: false,
            down_bytes_per_user_s: 0.0,
            served: passed,
            within_limit: passed && p99 <= 60.0,
        }
    }

    fn config() -> LadderConfig {
        LadderConfig {
            targets: vec![Target::Plaza, Target::SocketioRelay, Target::SocketioBatch],
            steps: vec![100, 200, 400],
            users_per_room: 40,
            rate_hz: 20.0,
            send_at: Default::default(),
            step_duration: Duration::from_secs(10),
            ramp: Duration::from_secs(2),
            p99_limit_ms: 60.0,
            stop_above_ms: 180.0,
            repeat: 1,
            peer_dir: PathBuf::from("tools/peers/socketio"),
            out: PathBuf::from("target/x"),
            progress: false,
        }
    }

    fn run_result(users: u64, p99: f64, lost: u64) -> RunResult {
        let mut r = RunResult { users, users_joined: users, rooms: 1, lost, passed: lost == 0, ..RunResult::default() };
        r.latency_ms.p99 = p99;
        r.latency_ms.max = p99 * 2.0;
        r
    }

    #[test]
    fn a_repeated_step_reads_the_median_and_must_serve_in_every_run() {
        // One slow run of three does not put the step over.
        let step = Step::from_runs(Target::Plaza, 60.0, &[run_result(400, 20.0, 0), run_result(400, 95.0, 0), run_result(400, 30.0, 0)]);
        assert_eq!(step.p99_ms, 30.0);
        assert_eq!(step.runs_p99_ms, vec![20.0, 95.0, 30.0], "each run's, in the order they ran");
        assert_eq!(step.max_ms, 190.0, "the worst run's max");
        assert!(step.within_limit);
        // Two of three over: over.
        let step = Step::from_runs(Target::Plaza, 60.0, &[run_result(400, 70.0, 0), run_result(400, 20.0, 0), run_result(400, 65.0, 0)]);
        assert_eq!(step.p99_ms, 65.0);
        assert!(!step.within_limit);
        // A run that lost anything puts the step out, whatever its latency.
        let step = Step::from_runs(Target::Plaza, 60.0, &[run_result(400, 20.0, 0), run_result(400, 20.0, 3), run_result(400, 20.0, 0)]);
        assert_eq!(step.lost, 3);
        assert!(!step.served && !step.within_limit);
        // An even count takes the mean of the middle two.
        assert_eq!(Step::from_runs(Target::Plaza, 60.0, &[run_result(400, 20.0, 0), run_result(400, 40.0, 0)]).p99_ms, 30.0);
    }

    #[test]
    fn capacity_is_the_last_step_before_the_first_over_the_limit_and_the_ratio_uses_the_best_baseline() {
        let steps = vec![
            step(Target::Plaza, 100, 52.0, true),
            step(Target::Plaza, 200, 55.0, true),
            step(Target::Plaza, 400, 58.0, true),
            step(Target::SocketioRelay, 100, 70.0, true),
            step(Target::SocketioBatch, 100, 57.0, true),
            // Lost poses count as over, whatever the latency.
            step(Target::SocketioBatch, 200, 40.0, false),
            // A lucky step after a failure does not raise the capacity.
            step(Target::SocketioBatch, 400, 50.0, true),
        ];
        let r = summarize(&config(), 2, steps, false);
        let by = |t| r.capacity.iter().find(|c| c.target == t).unwrap().clone();
        assert_eq!((by(Target::Plaza).users, by(Target::Plaza).crossed), (400, false));
        assert_eq!((by(Target::SocketioRelay).users, by(Target::SocketioRelay).crossed_at), (0, Some(100)));
        assert_eq!((by(Target::SocketioBatch).users, by(Target::SocketioBatch).crossed_at), (100, Some(200)));
        assert_eq!(r.ratio, Some(4.0));
        assert!(r.ratio_is_lower_bound);
        assert!(by(Target::SocketioRelay).bottleneck.contains("the server"), "{}", by(Target::SocketioRelay).bottleneck);
        let page = html(&r);
        assert!(page.contains("≥ 4.0×"), "the ratio is shown as a lower bound");
        assert_eq!(page.matches("<svg").count(), 2);
    }

    #[test]
    fn the_ratio_is_read_at_each_limit_with_that_limits_best_baseline() {
        let steps = vec![
            step(Target::Plaza, 100, 12.0, true),
            step(Target::Plaza, 200, 13.0, true),
            step(Target::Plaza, 400, 90.0, true),
            step(Target::SocketioRelay, 100, 40.0, true),
            step(Target::SocketioRelay, 200, 400.0, true),
            step(Target::SocketioBatch, 100, 25.0, true),
            step(Target::SocketioBatch, 200, 50.0, true),
            step(Target::SocketioBatch, 400, 140.0, true),
        ];
        let r = summarize(&config(), 2, steps, false);
        let at = |limit: f64| r.by_limit.iter().find(|a| a.p99_limit_ms == limit).unwrap().clone();
        assert_eq!(r.by_limit.iter().map(|a| a.p99_limit_ms).collect::<Vec<_>>(), RATIO_LIMITS_MS.to_vec(), "the ladder's 60 ms is among them once");
        // 30 ms: Plaza 200, batching 100 (the relay is over at 100).
        assert_eq!((at(30.0).plaza_users, at(30.0).baseline, at(30.0).baseline_users, at(30.0).ratio), (200, Some(Target::SocketioBatch), 100, Some(2.0)));
        // 45 ms: the relay holds 100 too; batching still the best.
        assert_eq!(at(45.0).ratio, Some(2.0));
        // 60 ms: batching 200.
        assert_eq!((at(60.0).baseline_users, at(60.0).ratio), (200, Some(1.0)));
        assert_eq!(at(60.0).ratio, r.ratio, "the same as the headline at the ladder's limit");
        // 100 ms: Plaza 400 (never over: a lower bound), batching 200.
        assert_eq!((at(100.0).plaza_users, at(100.0).plaza_crossed, at(100.0).ratio_text()), (400, false, ">= 2.0x".to_owned()));
        // 150 ms: batching never crossed either: no ratio.
        assert_eq!((at(150.0).ratio, at(150.0).ratio_text()), (None, "–".to_owned()));
        assert!(html(&r).contains("The ratio at other limits"));
    }

    #[test]
    fn no_ratio_when_the_best_baseline_never_crossed() {
        let steps = vec![step(Target::Plaza, 100, 52.0, true), step(Target::SocketioBatch, 100, 50.0, true)];
        let r = summarize(&config(), 2, steps, false);
        assert_eq!(r.ratio, None, "the baseline's capacity is unknown");
    }

    #[test]
    fn no_ratio_when_no_baseline_served_the_first_step() {
        let steps = vec![step(Target::Plaza, 100, 52.0, true), step(Target::SocketioRelay, 100, 900.0, true), step(Target::SocketioBatch, 100, 700.0, true)];
        let r = summarize(&config(), 2, steps, false);
        assert_eq!(r.ratio, None);
    }
}
