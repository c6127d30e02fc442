//! The server under load: either embedded (started in this process on
//! 127.0.0.1, any free port) or remote (`--server URL`), and how its CPU and
//! memory are read.
//!
//! The embedded server runs on its own tokio runtime whose threads are named
//! `plaza-server`, so its CPU time can be told apart from the load tool's by
//! summing `/proc/self/task/*/stat` over those threads (plus sqlx's SQLite
//! worker). Memory cannot be split: `rss_mb` is then the whole process's,
//! load tool included. A remote server's numbers come from its `/metrics`
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Thread name of the embedded server's runtime.
pub const SERVER_THREAD: &str = "plaza-server";
/// Thread name of the load tool's runtime (set by `main`).
pub const LOAD_THREAD: &str = "plaza-load";
/// Threads counted as the embedded server's (by their name's start; Linux
/// keeps 15 characters of a thread's name).
const SERVER_THREAD_PREFIXES: [&str; 2] = [SERVER_THREAD, "sqlx-sqlite"];
/// How long the embedded server gets to drain and stop.
const STOP_WAIT: Duration = Duration::from_secs(10);
const METRICS_TIMEOUT: Duration = Duration::from_millis(900);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("can't bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("can't start the embedded server's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the embedded server did not come up: {0}")]
    NotUp(String),
}

/// The embedded server; stopped by [`EmbeddedServer::stop`] (or on drop,
/// without waiting).
#[derive(Debug)]
pub struct EmbeddedServer {
    pub addr: SocketAddr,
    /// Kept for restarts: a new server gets the same store and secret.
    config: plaza_server::ServerConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn with_access_ttl(config: plaza_server::ServerConfig, access_ttl: Option<Duration>) -> plaza_server::ServerConfig {
    match access_ttl {
        Some(access_ttl) => plaza_server::ServerConfig { access_ttl, ..config },
        None => config,
    }
}

/// How long one restart took.
#[derive(Debug, Clone, Copy)]
pub struct RestartTimes {
    /// From the stop signal until the old server was gone (its drain, its
    /// 1001 closes, its sockets closed).
    pub stopped: Duration,
    /// From the stop signal until the new one listened.
    pub down: Duration,
}

impl EmbeddedServer {
    /// Starts `plaza_server::run` with [`plaza_server::ServerConfig::ephemeral`]
    /// (in-memory SQLite, a random token secret) on its own runtime;
    /// `access_ttl` replaces the server's access-token lifetime.
    pub fn start(access_ttl: Option<Duration>) -> Result<Self, ServerError> {
        Self::start_with(with_access_ttl(plaza_server::ServerConfig::ephemeral(), access_ttl), "127.0.0.1:0".parse().expect("an address"))
    }

    /// For runs that restart it: the store is a SQLite file in `dir`, so
    /// rooms and chat history outlive each restart, as they do for a server
    /// with a data directory.
    pub fn start_persistent(dir: &std::path::Path, access_ttl: Option<Duration>) -> Result<Self, ServerError> {
        let config = plaza_server::ServerConfig { database_url: format!("sqlite://{}", dir.join("plaza.db").display()), ..plaza_server::ServerConfig::ephemeral() };
        Self::start_with(with_access_ttl(config, access_ttl), "127.0.0.1:0".parse().expect("an address"))
    }

    fn start_with(config: plaza_server::ServerConfig, bind: SocketAddr) -> Result<Self, ServerError> {
        let listener = listen(bind).map_err(|e| ServerError::Bind(bind, e))?;
        let addr = listener.local_addr().map_err(|e| ServerError::Bind(bind, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(SERVER_THREAD).build().map_err(ServerError::Runtime)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (up_tx, up_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let run_config = config.clone();
        let thread = std::thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = up_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = up_tx.send(Ok(()));
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    if let Err(e) = plaza_server::run(run_config, listener, shutdown).await {
                        tracing::error!(cause = %e, "the embedded server failed");
                    }
                });
                // Sockets the server could not close in time die here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(ServerError::Runtime)?;
        match up_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(EmbeddedServer { addr, config, stop: Some(stop), thread: Some(thread) }),
            Ok(Err(e)) => Err(ServerError::NotUp(e)),
            Err(e) => Err(ServerError::NotUp(e.to_string())),
        }
    }

    /// Stops the server as SIGTERM stops `plaza-server` (drain, 1001 to
    /// every socket, wait for them), then starts a new one on the same
    /// address with the same store and token secret.
    pub async fn restart(&mut self) -> Result<RestartTimes, ServerError> {
        let started = Instant::now();
        self.stop_and_wait().await;
        let stopped = started.elapsed();
        // The old listener is closed once its thread is gone; the port may
        // still be held a moment by connections closing.
        let mut tries = 0;
        let fresh = loop {
            match Self::start_with(self.config.clone(), self.addr) {
                Ok(fresh) => break fresh,
                Err(ServerError::Bind(_, e)) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        *self = fresh;
        Ok(RestartTimes { stopped, down: started.elapsed() })
    }

    async fn stop_and_wait(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(STOP_WAIT, joined).await.is_err() {
                tracing::warn!("the embedded server did not stop within {STOP_WAIT:?}");
            }
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the server to stop and waits (at most 10 s) for it.
    pub async fn stop(mut self) {
        self.stop_and_wait().await;
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A listener as `plaza-server`'s (tokio's `bind`: address reuse, a
/// backlog of 1024). std's `bind` keeps 128 pending connections, and when
/// users all come back at once after a restart, the SYNs beyond that are
/// dropped and retried a second later.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// CPU time used so far and resident memory, at `at`.
#[derive(Debug, Clone, Copy)]
pub struct ResourceSample {
    pub at: Instant,
    /// The server's CPU seconds so far.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// This tool's own CPU seconds so far (its `plaza-load` threads), to
    /// tell when the load generator, not the server, is the bottleneck.
    pub load_cpu_seconds: f64,
    /// The whole machine's CPU ticks so far, busy and in all (`/proc/stat`).
    pub machine_busy_ticks: u64,
    pub machine_total_ticks: u64,
}

/// Where the server's CPU and memory come from.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// The embedded server's threads in `/proc/self`.
    InProcess,
    /// `GET {base}/metrics`.
    Remote { http: reqwest::Client, base: String },
}

impl Sampler {
    pub async fn sample(&self) -> Option<ResourceSample> {
        let at = Instant::now();
        let threads = proc_thread_cpu();
        let load_cpu_seconds = threads.map_or(0.0, |t| t.load);
        let (machine_busy_ticks, machine_total_ticks) = std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_machine_cpu(&s)).unwrap_or((0, 0));
        match self {
            Sampler::InProcess => {
                let threads = threads?;
                Some(ResourceSample { at, cpu_seconds: threads.server, rss_bytes: proc_rss()?, load_cpu_seconds, machine_busy_ticks, machine_total_ticks })
            }
            Sampler::Remote { http, base } => {
                let text = tokio::time::timeout(METRICS_TIMEOUT, async { http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await })
                    .await
                    .ok()?
                    .ok()?;
                let (cpu_seconds, rss_bytes) = parse_process_metrics(&text)?;
                Some(ResourceSample { at, cpu_seconds, rss_bytes, load_cpu_seconds, machine_busy_ticks, machine_total_ticks })
            }
        }
    }

    /// Words for the report: where the numbers come from.
    pub fn describe(&self) -> String {
        match self {
            Sampler::InProcess => "embedded server: CPU of its threads (/proc/self/task); RSS is the whole process, load tool included".into(),
            Sampler::Remote { base, .. } => format!("{base}/metrics: process_cpu_seconds_total, process_resident_memory_bytes"),
        }
    }
}

/// Linux's clock ticks per second for /proc times (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

/// (utime + stime in ticks, thread name) from a `/proc/…/stat` line.
pub fn parse_stat(stat: &str) -> Option<(u64, &str)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) sit at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, name))
}

/// CPU seconds of this process's threads, by owner.
#[derive(Debug, Clone, Copy, Default)]
struct ThreadCpu {
    /// The embedded server's threads.
    server: f64,
    /// The load tool's runtime threads.
    load: f64,
}

fn proc_thread_cpu() -> Option<ThreadCpu> {
    let (mut server, mut load) = (0u64, 0u64);
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((ticks, name)) = parse_stat(&stat) else { continue };
        if SERVER_THREAD_PREFIXES.iter().any(|p| name.starts_with(p)) {
            server += ticks;
        } else if name.starts_with(LOAD_THREAD) {
            load += ticks;
        }
    }
    Some(ThreadCpu { server: server as f64 / TICKS_PER_S, load: load as f64 / TICKS_PER_S })
}

/// (busy, total) ticks of all CPUs from `/proc/stat`'s `cpu` line.
pub fn parse_machine_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = field(3) + field(4);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    (v.len() >= 4).then_some((busy, busy + idle))
}

/// The whole process's resident memory.
fn proc_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The first series of metric `name` (with or without labels) in
/// Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let series = series.trim();
        (series == name || series.strip_prefix(name).is_some_and(|rest| rest.starts_with('{'))).then(|| value.trim().parse::<f64>().ok()).flatten()
    })
}

/// The value of one series, labels and all (`name{label="value"}`), from
/// Prometheus text.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name.trim() == series).then(|| value.trim().parse::<f64>().ok()).flatten()
    })
}

/// What the server says became of seats whose sockets dropped (its
/// `plaza_seats_held_total`, `plaza_seat_resumes_total{outcome}` and
/// `plaza_seats_expired_total`), over a run: read before and after, so a
/// shared server's other traffic counts too.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeatCounts {
    pub held: f64,
    pub resumed: f64,
    pub seat_gone: f64,
    pub expired: f64,
}

impl SeatCounts {
    /// From Prometheus text; `None` from a server without them (an older
    /// Plaza, the socket.io peers).
    pub fn parse(text: &str) -> Option<SeatCounts> {
        use plaza_server::metrics as m;
        Some(SeatCounts {
            held: series_value(text, m::SEATS_HELD)?,
            resumed: series_value(text, &format!("{}{{outcome=\"{}\"}}", m::SEAT_RESUMES, m::RESUMED))?,
            seat_gone: series_value(text, &format!("{}{{outcome=\"{}\"}}", m::SEAT_RESUMES, m::SEAT_GONE))?,
            expired: series_value(text, m::SEATS_EXPIRED)?,
        })
    }

    /// `GET {base}/metrics`, parsed.
    pub async fn scrape(http: &reqwest::Client, base: &str) -> Option<SeatCounts> {
        SeatCounts::parse(&metrics_text(http, base).await?)
    }

    /// What was counted since `before`; `None` when a count went back (the
    /// server restarted between the two reads).
    pub fn since(&self, before: &SeatCounts) -> Option<SeatCounts> {
        let d = SeatCounts { held: self.held - before.held, resumed: self.resumed - before.resumed, seat_gone: self.seat_gone - before.seat_gone, expired: self.expired - before.expired };
        [d.held, d.resumed, d.seat_gone, d.expired].iter().all(|v| *v >= 0.0).then_some(d)
    }
}

/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`) from
/// Prometheus text.
pub fn parse_process_metrics(text: &str) -> Option<(f64, u64)> {
    let cpu = metric_value(text, plaza_server::metrics::PROCESS_CPU)?;
    let rss = metric_value(text, plaza_server::metrics::PROCESS_RSS)?;
    Some((cpu, rss.max(0.0) as u64))
}

/// A remote server's gauges at one moment: what must come back to idle
/// after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ServerGauges {
    pub rss_mb: f64,
    pub connections: f64,
    /// Tasks alive on its runtime (`plaza_runtime_alive_tasks`; absent on
    /// servers that don't report it).
    pub tasks: Option<f64>,
    /// Rooms it keeps (`GET /api/v1/rooms`): each has its task for good, so
    /// rooms a run created add to the idle task count.
    pub rooms: Option<f64>,
}

impl ServerGauges {
    pub fn parse(text: &str) -> Option<ServerGauges> {
        Some(ServerGauges {
            rss_mb: metric_value(text, plaza_server::metrics::PROCESS_RSS)? / 1e6,
            connections: metric_value(text, plaza_server::metrics::WS_CONNECTIONS)?,
            tasks: metric_value(text, plaza_server::metrics::RUNTIME_TASKS),
            rooms: None,
        })
    }

    /// Tasks idle would have now: `idle`'s, plus one per room created since.
    pub fn idle_tasks(&self, idle: &ServerGauges) -> Option<f64> {
        let new_rooms = self.rooms.zip(idle.rooms).map_or(0.0, |(now, then)| (now - then).max(0.0));
        idle.tasks.map(|t| t + new_rooms)
    }

    /// No connections and no more tasks than idle (see [`Self::idle_tasks`]).
    pub fn back_to(&self, idle: &ServerGauges) -> bool {
        self.connections == 0.0 && self.tasks.zip(self.idle_tasks(idle)).is_none_or(|(now, then)| now <= then)
    }
}

/// `GET {base}/metrics`, if it answers in time.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> Option<String> {
    tokio::time::timeout(METRICS_TIMEOUT, async { http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await }).await.ok()?.ok()
}

/// `GET {base}/metrics`, parsed.
pub async fn scrape_gauges(http: &reqwest::Client, base: &str) -> Option<ServerGauges> {
    let text = metrics_text(http, base).await?;
    let mut gauges = ServerGauges::parse(&text)?;
    let rooms = tokio::time::timeout(METRICS_TIMEOUT, async { http.get(format!("{base}/api/v1/rooms")).send().await?.error_for_status()?.json::<Vec<serde_json::Value>>().await }).await;
    gauges.rooms = rooms.ok().and_then(Result::ok).map(|r| r.len() as f64);
    Some(gauges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "4242 (plaza server) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some((280, "plaza server")));
    }

    #[test]
    fn process_series_are_found_in_prometheus_text() {
        let text = "# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total gauge\nprocess_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 104857600\nplaza_ws_connections 3\n";
        assert_eq!(parse_process_metrics(text), Some((12.5, 104_857_600)));
        assert_eq!(parse_process_metrics("plaza_ws_connections 3\n"), None);
    }

    #[test]
    fn gauges_come_back_to_idle_only_without_connections_or_extra_tasks() {
        let text = "process_resident_memory_bytes 52000000\nplaza_ws_connections 0\nplaza_runtime_alive_tasks 9\n";
        let idle = ServerGauges::parse(text).expect("parsed");
        assert_eq!(idle, ServerGauges { rss_mb: 52.0, connections: 0.0, tasks: Some(9.0), rooms: None });
        assert!(ServerGauges { tasks: Some(8.0), ..idle }.back_to(&idle));
        assert!(!ServerGauges { tasks: Some(10.0), ..idle }.back_to(&idle), "a leaked task");
        assert!(!ServerGauges { connections: 1.0, ..idle }.back_to(&idle));
        // A server without the task gauge is judged on connections alone.
        assert!(ServerGauges { tasks: None, ..idle }.back_to(&idle));
        // Rooms are kept for good, each with its task.
        let idle = ServerGauges { rooms: Some(3.0), ..idle };
        assert!(ServerGauges { tasks: Some(11.0), rooms: Some(5.0), ..idle }.back_to(&idle));
        assert!(!ServerGauges { tasks: Some(12.0), rooms: Some(5.0), ..idle }.back_to(&idle));
    }

    #[test]
    fn seat_counts_are_read_by_their_labels_and_taken_over_a_run() {
        let text = |held: u32, resumed: u32, gone: u32, expired: u32| {
            format!(
                "# TYPE plaza_seats_held_total counter\nplaza_seats_held_total {held}\nplaza_seat_resumes_total{{outcome=\"seat_gone\"}} {gone}\nplaza_seat_resumes_total{{outcome=\"resumed\"}} {resumed}\nplaza_seats_expired_total {expired}\n"
            )
        };
        let before = SeatCounts::parse(&text(3, 2, 1, 0)).expect("all four");
        assert_eq!(before, SeatCounts { held: 3.0, resumed: 2.0, seat_gone: 1.0, expired: 0.0 }, "each outcome by its own label");
        let after = SeatCounts::parse(&text(10, 8, 1, 1)).unwrap();
        assert_eq!(after.since(&before), Some(SeatCounts { held: 7.0, resumed: 6.0, seat_gone: 0.0, expired: 1.0 }));
        assert_eq!(before.since(&after), None, "a count that went back: the server restarted");
        assert_eq!(SeatCounts::parse("plaza_seats_held_total 1\n"), None, "an older server without them");
    }

    #[test]
    fn machine_cpu_is_busy_over_total() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_cpu(stat), Some((160, 980)));
        assert_eq!(parse_machine_cpu("intr 1 2\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        assert!(proc_thread_cpu().is_some());
        assert!(proc_rss().expect("Linux /proc") > 0);
    }
}
