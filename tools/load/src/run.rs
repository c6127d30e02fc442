//! One load run from start to end: the server (embedded or remote), the
//! rooms, the users (started over the ramp), the phases (run, stop sending,
//! close), and the numbers that come out.

use crate::cli::RunConfig;
use crate::collect::{BATCH_QUEUE, Collected, Collector, Counters};
use crate::delivery::{ReceiverLog, SenderLog, account_chats, account_poses};
use crate::histogram::{Histogram, round3};
use crate::names::{UserKey, room_name, run_tag, user_name};
use crate::proxy::{Proxy, StatsSnapshot};
use crate::report::{AnomalyCounts, FaultStats, LoadToolStats, RestartRecord, RestartStats, RunResult, ServerStats};
use crate::server::{EmbeddedServer, Sampler, SeatCounts, ServerError};
use crate::user::{self, Env, Phase, Plan, RoomClocks, SentPoses, UserReport};
use plaza_shared::limits::DEFAULT_ROOM_CAPACITY;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// After the run stops sending, users keep reading this long (deltas in
/// flight) before they close.
pub const DRAIN: Duration = Duration::from_secs(1);
// (`--drain` overrides it; this is its default.)
/// Users get this long after the close to finish; then they are aborted.
const FINISH_WAIT: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_WAIT: Duration = Duration::from_secs(5);
/// How long a remote server gets, after the users closed, to be back to
/// its idle gauges.
const SETTLE_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("no HTTP client: {0}")]
    Http(String),
    #[error("{0} does not answer GET /health: {1}")]
    Unreachable(String, String),
    #[error("can't create room {0}: {1}")]
    CreateRoom(String, String),
    #[error("the collector failed: {0}")]
    Collector(String),
    #[error("can't start the fault proxy: {0}")]
    Proxy(std::io::Error),
    #[error("can't make {0} for the restarted server's store: {1}")]
    Store(String, String),
}

use plaza_shared::errors::with_root_cause;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn wait_healthy(http: &reqwest::Client, base: &str) -> Result<(), RunError> {
    let deadline = Instant::now() + HEALTH_WAIT;
    loop {
        let last = match http.get(format!("{base}/health")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => with_root_cause(&e),
        };
        if Instant::now() >= deadline {
            return Err(RunError::Unreachable(base.to_owned(), last));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rooms above the default capacity are created up front (joined by id).
async fn create_rooms(http: &reqwest::Client, base: &str, tag: &str, rooms: u32, capacity: u32) -> Result<Vec<String>, RunError> {
    #[derive(serde::Deserialize)]
    struct Login {
        access_token: String,
    }
    #[derive(serde::Deserialize)]
    struct Room {
        id: String,
    }
    let err = |room: &str, e: String| RunError::CreateRoom(room.to_owned(), e);
    let login: Login = async { http.post(format!("{base}/api/v1/auth/guest")).json(&serde_json::json!({ "name": format!("{tag}-admin") })).send().await?.error_for_status()?.json().await }
        .await
        .map_err(|e: reqwest::Error| err("(login)", with_root_cause(&e)))?;
    let mut ids = Vec::new();
    for n in 1..=rooms {
        let name = room_name(n);
        let room: Room = async {
            http.post(format!("{base}/api/v1/rooms"))
                .bearer_auth(&login.access_token)
                .json(&serde_json::json!({ "name": name, "capacity": capacity }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e: reqwest::Error| err(&name, with_root_cause(&e)))?;
        ids.push(room.id);
    }
    Ok(ids)
}

/// Warns when the open-file limit is too low for this many sockets.
fn check_file_limit(sockets: u64) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let soft = limits.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse::<u64>().ok());
    if let Some(soft) = soft
        && soft < sockets + 64
    {
        tracing::warn!(soft, needed = sockets + 64, "the open-file limit is low for this many users; raise it with `ulimit -n`");
    }
}

/// Runs the load and returns the result (not yet written).
pub async fn run(cfg: &RunConfig) -> Result<RunResult, RunError> {
    let started_unix_ms = unix_ms();
    // Idle connections are let go before the server closes them.
    let pool_idle = Duration::from_millis(plaza_shared::limits::HTTP_POOL_IDLE_MS);
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).pool_idle_timeout(pool_idle).build().map_err(|e| RunError::Http(e.to_string()))?;
    // Watching the server: no idle connections kept, as each would be a
    // task on the server and spoil the back-to-idle check.
    let probe = reqwest::Client::builder().timeout(HTTP_TIMEOUT).pool_max_idle_per_host(0).build().map_err(|e| RunError::Http(e.to_string()))?;
    // A server restarted during the run keeps its store in a file, as a
    // server with a data directory does; removed after the run.
    let store_dir = match cfg.restart_every {
        Some(_) => {
            let dir = std::env::temp_dir().join(format!("plaza-load-{}-{}", std::process::id(), unix_ms()));
            std::fs::create_dir_all(&dir).map_err(|e| RunError::Store(dir.display().to_string(), e.to_string()))?;
            Some(TempDir(dir))
        }
        None => None,
    };
    let embedded = match (&cfg.server, &store_dir) {
        (None, Some(dir)) => Some(EmbeddedServer::start_persistent(&dir.0, cfg.access_ttl)?),
        (None, None) => Some(EmbeddedServer::start(cfg.access_ttl)?),
        (Some(_), _) => None,
    };
    let base = match (&embedded, &cfg.server) {
        (Some(server), _) => server.base_url(),
        (None, Some(url)) => url.clone(),
        (None, None) => unreachable!("one of the two is set"),
    };
    wait_healthy(&http, &base).await?;
    let proxy_sockets = if cfg.faults.is_some() { 2 } else { 0 };
    check_file_limit(cfg.users() * (if embedded.is_some() { 2 } else { 1 } + proxy_sockets));
    let sampler = if embedded.is_some() { Sampler::InProcess } else { Sampler::Remote { http: probe.clone(), base: base.clone() } };
    let before = match &sampler {
        Sampler::Remote { .. } => crate::server::scrape_gauges(&probe, &base).await,
        Sampler::InProcess => None,
    };
    let seats_before = SeatCounts::scrape(&probe, &base).await;
    // The users (HTTP and WebSocket) go through the fault proxy when there
    // is one; the server's numbers are still read directly.
    let proxy = match &cfg.faults {
        Some(faults) => {
            let upstream = base.trim_start_matches("http://").to_owned();
            let config = crate::proxy::ProxyConfig { upstream, ..faults.clone() };
            let proxy = Proxy::start(config).await.map_err(RunError::Proxy)?;
            tracing::info!(proxy = %proxy.addr(), faults = %faults.describe(), "users connect through the fault proxy");
            Some(proxy)
        }
        None => None,
    };
    let user_base = proxy.as_ref().map_or_else(|| base.clone(), |p| format!("http://{}", p.addr()));
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id());
    let tag = run_tag(seed);
    // Hostile clients take seats too.
    let capacity = cfg.users_per_room + cfg.hostile;
    let rooms: Vec<String> = if capacity > DEFAULT_ROOM_CAPACITY {
        create_rooms(&http, &base, &tag, cfg.rooms, capacity).await?
    } else {
        (1..=cfg.rooms).map(room_name).collect()
    };
    tracing::info!(%base, %tag, users = cfg.users(), rooms = cfg.rooms, "starting");

    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let gap_ms = (2500.0 / cfg.rate_hz).max(250.0) as u64;
    let env = Arc::new(Env {
        http: http.clone(),
        ws_url: cfg.wire.ws_url(&user_base.replacen("http://", "ws://", 1)),
        base: user_base,
        also: cfg.also_servers.iter().map(|base| (base.clone(), cfg.wire.ws_url(&base.replacen("http://", "ws://", 1)))).collect(),
        wire: cfg.wire,
        rate_hz: cfg.rate_hz,
        chat_every: cfg.chat_every,
        ping_every: cfg.ping_every,
        silence_limit: cfg.silence_limit,
        tag: tag.clone(),
        epoch,
        counters: counters.clone(),
        clocks: RoomClocks::new(cfg.rooms, cfg.users_per_room),
        sent: SentPoses::new(cfg.rooms, cfg.users_per_room),
        send_at: cfg.send_at,
        gap_ms,
        // A segment in flight when a socket is cut may have waited the
        // proxy's delay, its jitter and a loss stall.
        voice: cfg.voice.then(|| Arc::new(crate::voice::VoiceLoad::new(base.trim_start_matches("http://"), epoch, cfg.voice_talk))),
        vr_share: cfg.vr_share,
        grace_ms: user::GRACE_MS + cfg.faults.as_ref().map_or(0, |f| (f.latency + f.jitter + if f.loss > 0.0 { f.rto() } else { Duration::ZERO }).as_millis() as u64),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let (batch_tx, batch_rx) = mpsc::channel(BATCH_QUEUE);
    let planned_s = cfg.duration.as_secs();
    let collector = tokio::spawn(Collector::new(epoch, counters.clone(), sampler.clone(), cfg.progress, planned_s, cfg.users()).run(batch_rx));

    // Users are interleaved over rooms, so every room fills during the ramp.
    let total = cfg.users();
    let mut users = JoinSet::new();
    let mut jitter = plaza_shared::rng::SplitMix::new(seed);
    for i in 0..total {
        let key = UserKey { room: (i % u64::from(cfg.rooms)) as u32 + 1, user: (i / u64::from(cfg.rooms)) as u32 + 1 };
        let plan = Plan {
            key,
            name: user_name(&tag, key),
            room: rooms[key.room as usize - 1].clone(),
            // Evenly spread, each with a random offset within its slot.
            start: epoch + cfg.ramp.mul_f64((i as f64 + jitter.unit()) / total as f64),
            seed: seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        users.spawn(user::run(plan, env.clone(), phase_rx.clone(), batch_tx.clone()));
    }
    drop(batch_tx);
    let hostile = match cfg.hostile {
        0 => None,
        per_room => Some(crate::hostile::start(per_room, &rooms, env.clone(), phase_rx.clone(), base.clone()).await),
    };
    // The embedded server restarts on its own task while the users run.
    let (embedded, restarter) = match (embedded, cfg.restart_every) {
        (Some(server), Some(every)) => (None, Some(tokio::spawn(restart_loop(server, every, epoch, epoch + cfg.duration, phase_rx.clone())))),
        (embedded, _) => (embedded, None),
    };
    drop(phase_rx);

    let interrupted = tokio::select! {
        _ = tokio::time::sleep_until(epoch + cfg.duration) => false,
        _ = tokio::signal::ctrl_c() => {
            tracing::warn!("interrupted: stopping the users and writing what was measured");
            true
        }
    };
    let _ = phase_tx.send(Phase::Stop);
    tokio::time::sleep(cfg.drain).await;
    let _ = phase_tx.send(Phase::Close);

    let mut reports = Vec::with_capacity(total as usize);
    let mut stuck = 0u64;
    let deadline = Instant::now() + FINISH_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, users.join_next()).await {
            Ok(Some(Ok(report))) => reports.push(report),
            Ok(Some(Err(e))) => {
                tracing::error!(cause = %e, "a simulated user failed");
                stuck += 1;
            }
            Ok(None) => break,
            Err(_) => {
                stuck += users.len() as u64;
                tracing::error!(stuck = users.len(), "users still running {FINISH_WAIT:?} after the close; aborted");
                users.abort_all();
                while users.join_next().await.is_some() {}
                break;
            }
        }
    }
    let hostile = match hostile {
        Some(h) => Some(h.finish().await),
        None => None,
    };
    // Read before the embedded server stops (its counters live in this
    // process, so its restarts keep them).
    let seats = match (seats_before, SeatCounts::scrape(&probe, &base).await) {
        (Some(before), Some(after)) => after.since(&before),
        _ => None,
    };
    let voice = env.voice.clone();
    let collected = tokio::time::timeout(Duration::from_secs(10), collector)
        .await
        .map_err(|_| RunError::Collector("did not finish".into()))?
        .map_err(|e| RunError::Collector(e.to_string()))?;
    let proxy_stats = match proxy {
        Some(proxy) => Some(proxy.stop().await),
        None => None,
    };
    let mut restarts_done = Vec::new();
    let mut restart_failure = None;
    let embedded = match restarter {
        Some(task) => match task.await {
            Ok((server, done, failure)) => {
                restarts_done = done;
                restart_failure = failure;
                server
            }
            Err(e) => {
                restart_failure = Some(format!("the restart task failed: {e}"));
                None
            }
        },
        None => embedded,
    };
    if let Some(server) = embedded {
        server.stop().await;
    }
    drop(store_dir);
    let (after, settled_s) = match before {
        Some(idle) => {
            // The users' HTTP connections (kept alive in the pool) close now.
            drop(env);
            drop(http);
            settle(&probe, &base, &idle).await
        }
        None => (None, None),
    };
    let server = ServerStats {
        in_process: matches!(sampler, Sampler::InProcess),
        source: sampler.describe(),
        url: base,
        before,
        after,
        settled_s,
        ..ServerStats::default()
    };
    let faults = cfg.faults.as_ref().zip(proxy_stats).map(|(f, stats)| (f.describe(), stats));
    let mut result = summarize(cfg, &reports, stuck, collected, server, gap_ms, interrupted, faults);
    if let Some(voice) = voice {
        let voice = voice.result();
        if voice.misrouted > 0 {
            result.fail(&format!("{} voice frames heard from another room", voice.misrouted));
        }
        if voice.connected == 0 || voice.failed > 0 {
            result.fail(&format!("voice connected {} of {} offered, {} failed", voice.connected, voice.offered, voice.failed));
        }
        result.voice = Some(voice);
    }
    if let Some(seats) = seats {
        if seats.resumed < result.resumed as f64 {
            result.fail(&format!(
                "the server counted {} resumed seats (plaza_seat_resumes_total), fewer than the {} this run's users got back",
                seats.resumed, result.resumed
            ));
        }
        result.server_seats = Some(seats);
    }
    if let Some(hostile) = hostile {
        for failure in hostile.failures() {
            result.fail(&failure);
        }
        result.hostile = Some(hostile);
    }
    if let Some(restarts) = result.restarts.as_mut() {
        restarts.done = restarts_done;
    }
    if let Some(failure) = restart_failure {
        result.fail(&failure);
    }
    result.tag = tag;
    result.started_unix_ms = started_unix_ms;
    if let Some(limits) = cfg.soak {
        let verdict = crate::soak::judge(limits, &result.resources, cfg.ramp.as_secs_f64(), cfg.duration.as_secs_f64(), &result.server);
        if !verdict.passed {
            result.fail(&verdict.failure);
        }
        result.soak = Some(verdict);
    }
    Ok(result)
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// No restart this close to the end of the users' sending: they need a
/// moment to come back, and the run's delivery check after.
const RESTART_MARGIN: Duration = Duration::from_secs(3);

/// Restarts the embedded server every `every` while the users run; hands
/// the server back (`None` if a restart left none), with what each restart
/// took and why they stopped early, if they did.
async fn restart_loop(mut server: EmbeddedServer, every: Duration, epoch: Instant, end: Instant, mut phase: watch::Receiver<Phase>) -> (Option<EmbeddedServer>, Vec<RestartRecord>, Option<String>) {
    let mut done = Vec::new();
    let mut next = epoch + every;
    while next + RESTART_MARGIN <= end {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = phase.wait_for(|p| *p != Phase::Run) => break,
        }
        let at_s = round3(epoch.elapsed().as_secs_f64());
        tracing::info!(at_s, "restarting the embedded server");
        match server.restart().await {
            Ok(times) => {
                let ms = |d: Duration| round3(d.as_secs_f64() * 1000.0);
                tracing::info!(at_s, stopped_ms = ms(times.stopped), down_ms = ms(times.down), "the embedded server is back");
                done.push(RestartRecord { at_s, stopped_ms: ms(times.stopped), down_ms: ms(times.down) });
            }
            Err(e) => {
                let failure = format!("restart {} at {at_s} s failed: {e}", done.len() + 1);
                return (None, done, Some(failure));
            }
        }
        next += every;
    }
    (Some(server), done, None)
}

/// Waits (at most [`SETTLE_WAIT`]) for a remote server's gauges to be back
/// to `idle`; returns the last gauges read and, if they got there, when.
async fn settle(http: &reqwest::Client, base: &str, idle: &crate::server::ServerGauges) -> (Option<crate::server::ServerGauges>, Option<f64>) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < SETTLE_WAIT {
        if let Some(now) = crate::server::scrape_gauges(http, base).await {
            last = Some(now);
            if now.back_to(idle) {
                return (last, Some(round3(started.elapsed().as_secs_f64())));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (last, None)
}

/// Turns the users' reports and the collector's histograms into the result.
/// `interrupted`: users that had not started yet are not held against the run.
/// `faults`: the fault proxy's settings and counters; sockets it cut
/// (`dropped`, up to its reset count) are then expected, not errors.
#[allow(clippy::too_many_arguments)]
pub fn summarize(cfg: &RunConfig, reports: &[UserReport], stuck: u64, collected: Collected, mut server: ServerStats, gap_ms: u64, interrupted: bool, faults: Option<(String, StatsSnapshot)>) -> RunResult {
    let mut join = Histogram::new();
    let mut connect_join = Histogram::new();
    let mut auth = Histogram::new();
    let mut rtt = Histogram::new();
    let mut restore = Histogram::new();
    let mut outage = Histogram::new();
    let mut resumed = 0;
    let mut restores_over_2s = 0;
    let mut back_after_drain = Histogram::new();
    let (mut drained, mut restart_retries, mut still_away) = (0, 0, 0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut anomalies = AnomalyCounts { gap_ms, ..AnomalyCounts::default() };
    let mut token_refreshes = 0;
    let (mut misrouted, mut reconnects, mut bytes_in, mut bytes_out, mut in_room_us, mut joined, mut poses_sent, mut superseded) = (0, 0, 0, 0, 0, 0, 0, 0);
    for r in reports {
        r.join_us.iter().for_each(|&v| join.record(v));
        r.connect_join_us.iter().for_each(|&v| connect_join.record(v));
        r.auth_us.iter().for_each(|&v| auth.record(v));
        r.rtt_us.iter().for_each(|&v| rtt.record(v));
        r.restore_us.iter().for_each(|&v| restore.record(v));
        r.outage_us.iter().for_each(|&v| outage.record(v));
        resumed += r.resumed;
        drained += r.drained;
        restart_retries += r.restart_retries;
        still_away += u64::from(r.away_after_drain);
        r.back_after_drain_us.iter().for_each(|&v| back_after_drain.record(v));
        restores_over_2s += r.restore_us.iter().filter(|&&us| us > 2_000_000).count() as u64;
        for (kind, n) in &r.errors {
            *errors.entry(kind.clone()).or_default() += n;
        }
        misrouted += r.anomalies.misrouted + r.anomalies.own_avatar;
        anomalies.own_avatar += r.anomalies.own_avatar;
        anomalies.unknown_avatar += r.anomalies.unknown_avatar;
        anomalies.stale += r.anomalies.stale;
        anomalies.gaps += r.anomalies.gaps;
        anomalies.foreign += r.anomalies.foreign;
        reconnects += r.reconnects;
        token_refreshes += r.token_refreshes;
        bytes_in += r.bytes_in;
        bytes_out += r.bytes_out;
        in_room_us += r.in_room_us;
        joined += u64::from(r.receiver.from_ms.is_some());
        poses_sent += r.sender.poses.len() as u64;
        superseded += r.superseded;
    }
    for (kind, n) in [("unknown_avatar", anomalies.unknown_avatar), ("stale_pose", anomalies.stale), ("user_stuck", stuck)] {
        if n > 0 {
            *errors.entry(kind.into()).or_default() += n;
        }
    }
    let fault_stats = faults.map(|(describe, proxy)| {
        // A cut shows as a socket that drops, as a send that fails, or,
        // during the upgrade (a connect takes a round trip through the
        // proxy, two when its SYN is lost), as a connect that fails; a link
        // gone silent, as a user that heard nothing for its limit.
        let mut excuse = |kinds: &[&str], faults: u64| {
            let mut left = faults;
            for kind in kinds {
                let Some(n) = errors.get_mut(*kind) else { continue };
                let excused = (*n).min(left);
                *n -= excused;
                left -= excused;
                if *n == 0 {
                    errors.remove(*kind);
                }
            }
            faults - left
        };
        let drops_from_resets = excuse(&["dropped", "send", "connect"], proxy.resets);
        let silent_links = excuse(&["silent"], proxy.silenced);
        FaultStats { describe, proxy, drops_from_resets, silent_links }
    });
    let error_total: u64 = errors.values().sum();
    // The rate users achieved: a starved load tool sends fewer poses than asked.
    let rates: Vec<f64> = reports
        .iter()
        .filter_map(|r| {
            let (first, last) = (r.sender.poses.first()?, r.sender.poses.last()?);
            let span_s = (last - first) as f64 / 1000.0 + 1.0 / cfg.rate_hz;
            (r.sender.poses.len() > 1).then(|| r.sender.poses.len() as f64 / span_s)
        })
        .collect();
    let pose_rate_hz = if rates.is_empty() { 0.0 } else { round3(rates.iter().sum::<f64>() / rates.len() as f64) };
    if !rates.is_empty() && pose_rate_hz < 0.9 * cfg.rate_hz {
        tracing::warn!(asked = cfg.rate_hz, achieved = pose_rate_hz, "users sent fewer poses than asked: the load tool is short of CPU");
    }
    let senders: Vec<SenderLog> = reports.iter().map(|r| r.sender.clone()).collect();
    let receivers: Vec<ReceiverLog> = reports.iter().map(|r| r.receiver.clone()).collect();
    let poses = account_poses(&senders, &receivers);
    let chat = account_chats(&senders, &receivers);
    let in_room_s = in_room_us as f64 / 1e6;
    let per_user_s = |bytes: u64| if in_room_s > 0.0 { round3(bytes as f64 / in_room_s) } else { 0.0 };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let load_cpu = collected.load_cpu_pct();
    let load_tool = LoadToolStats {
        cpu_pct: load_cpu,
        cpu_pct_max: collected.resources.iter().map(|p| p.load_cpu_pct).fold(0.0, f64::max),
        cores,
        machine_busy_pct: collected.machine_busy_pct,
        // In process, the server's threads share the same cores.
        saturated: collected.machine_busy_pct > 90.0 || load_cpu + if server.in_process { collected.cpu_pct() } else { 0.0 } > 85.0 * f64::from(cores),
    };
    if load_tool.saturated {
        tracing::warn!(load_cpu_pct = load_cpu, machine_busy_pct = collected.machine_busy_pct, cores, "the machine's CPU was nearly all busy: latency measures the load tool (and anything else running) as much as the server");
    }
    server.cpu_pct = collected.cpu_pct();
    server.cpu_pct_max = collected.resources.iter().map(|p| p.cpu_pct).fold(0.0, f64::max);
    server.rss_mb = round3(collected.peak_rss_bytes as f64 / 1e6);
    if let Some(before) = server.before
        && joined > 0
    {
        server.rss_per_user_kb = Some(round3((server.rss_mb - before.rss_mb).max(0.0) * 1000.0 / joined as f64));
    }

    let mut reasons = Vec::new();
    if poses.lost > 0 {
        reasons.push(format!("{} poses lost ({} sender→receiver pairs)", poses.lost, poses.pairs_with_loss));
    }
    if misrouted > 0 {
        reasons.push(format!("{misrouted} misrouted"));
    }
    if chat.lost > 0 {
        reasons.push(format!("{} chat deliveries lost", chat.lost));
    }
    if error_total > 0 {
        let kinds: Vec<String> = errors.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        reasons.push(format!("{error_total} errors ({})", kinds.join(", ")));
    }
    if joined < cfg.users() && !interrupted {
        reasons.push(format!("only {joined} of {} users got into their room", cfg.users()));
    }
    if cfg.users_per_room > 1 && joined > 1 && poses.received == 0 {
        reasons.push("no pose was received at all".into());
    }
    if still_away > 0 && !interrupted {
        reasons.push(format!("{still_away} users were not back in their room after the server restarted"));
    }
    let restarts = (drained > 0 || cfg.restart_every.is_some()).then(|| RestartStats {
        every_s: cfg.restart_every.map(|d| round3(d.as_secs_f64())),
        done: Vec::new(),
        drained_sockets: drained,
        retries: restart_retries,
        back_ms: back_after_drain.summary_ms(),
        still_away,
    });

    RunResult {
        users: cfg.users(),
        rooms: cfg.rooms,
        rate_hz: cfg.rate_hz,
        duration_s: cfg.duration.as_secs_f64(),
        users_per_room: cfg.users_per_room,
        ramp_s: round3(cfg.ramp.as_secs_f64()),
        protocol: cfg.wire.name().into(),
        send_at: cfg.send_at.name().into(),
        users_joined: joined,
        latency_ms: collected.e2e.summary_ms(),
        latency_net_ms: collected.net.summary_ms(),
        latency_at_socket_ms: collected.at_socket.summary_ms(),
        pacing: collected.pacing.stats(),
        join_ms: join.summary_ms(),
        connect_join_ms: connect_join.summary_ms(),
        auth_ms: auth.summary_ms(),
        rtt_ms: rtt.summary_ms(),
        restore_ms: restore.summary_ms(),
        outage_ms: outage.summary_ms(),
        resumed,
        restores_over_2s,
        faults: fault_stats,
        restarts,
        voice: None,
        poses_sent,
        pose_rate_hz,
        expected: poses.expected,
        received: poses.received,
        superseded,
        lost: poses.lost,
        pairs_with_loss: poses.pairs_with_loss,
        misrouted,
        errors: error_total,
        errors_by_kind: errors,
        reconnects,
        token_refreshes,
        down_bytes_per_user_s: per_user_s(bytes_in),
        up_bytes_per_user_s: per_user_s(bytes_out),
        chat,
        anomalies,
        server,
        load_tool,
        interrupted,
        passed: reasons.is_empty(),
        failure: reasons.join("; "),
        timeline: collected.seconds,
        resources: collected.resources,
        ..RunResult::default()
    }
}
