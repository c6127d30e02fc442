//! Prometheus metrics (`GET /metrics`). One process-wide recorder; every
//! server in the process (tests start many) reports into it.
//!
//! Names are the contract's, all prefixed `plaza_`, with no user or room ids
//! as label values.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const ROOMS_ACTIVE: &str = "plaza_rooms_active";
pub const ROOM_USERS: &str = "plaza_room_users";
pub const WS_CONNECTIONS: &str = "plaza_ws_connections";
/// `--max-connections` (crate::capacity).
pub const WS_CONNECTION_LIMIT: &str = "plaza_ws_connection_limit";
/// Open TCP connections, HTTP and WebSocket, and the most the open-file
/// limit lets in (crate::capacity).
pub const TCP_CONNECTIONS: &str = "plaza_tcp_connections";
pub const TCP_CONNECTION_LIMIT: &str = "plaza_tcp_connection_limit";
pub const CONNECTIONS_REFUSED: &str = "plaza_connections_refused_total";
pub const WS_MESSAGES: &str = "plaza_ws_messages_total";
pub const WS_BYTES: &str = "plaza_ws_bytes_total";
pub const WS_DROPPED: &str = "plaza_ws_dropped_total";
/// Sockets the server closed, by `reason` ([`CLOSE_REASONS`], from the
/// close code): who gets kicked for being slow, flooding or sending junk.
pub const WS_SERVER_CLOSES: &str = "plaza_ws_server_closes_total";
pub const RATE_LIMITED: &str = "plaza_rate_limited_total";
/// Seats a room held for a resume: the socket dropped without a close, or
/// its link went silent (crate::rooms::RESUME_WINDOW).
pub const SEATS_HELD: &str = "plaza_seats_held_total";
/// Hellos that asked to resume a session, by `outcome`
/// ([`RESUME_OUTCOMES`]): the seat taken back, or gone (a new session).
pub const SEAT_RESUMES: &str = "plaza_seat_resumes_total";
/// Held seats let go because no socket came back for them in time.
pub const SEATS_EXPIRED: &str = "plaza_seats_expired_total";
/// Instances sharing rooms (`--redis-url`, crate::bus): rooms this
/// instance runs for all of them (holds the lease of), leases lost to
/// another instance, rooms taken over from an instance that stopped
/// answering, Redis commands that failed, and sockets relayed to the
/// instance running their room (crate::relay).
pub const ROOM_LEASES: &str = "plaza_room_leases";
pub const ROOM_LEASES_LOST: &str = "plaza_room_leases_lost_total";
pub const ROOM_TAKEOVERS: &str = "plaza_room_takeovers_total";
pub const REDIS_ERRORS: &str = "plaza_redis_errors_total";
pub const WS_RELAYED: &str = "plaza_ws_relayed";
/// Relays to a room's instance that could not be opened, by `reason`
/// ([`RELAY_FAILURE_REASONS`]).
pub const RELAY_FAILURES: &str = "plaza_relay_failures_total";
pub const AUTH_DURATION: &str = "plaza_auth_duration_seconds";
pub const JOIN_DURATION: &str = "plaza_join_duration_seconds";
pub const TICK_DURATION: &str = "plaza_tick_duration_seconds";
/// Ticks that waited for a streaming member's late pose, by whether it came
/// within the grace (`outcome`: [`TICK_WAIT_OUTCOMES`]).
pub const TICK_WAITS: &str = "plaza_tick_waits_total";
pub const VOICE_BYTES: &str = "plaza_voice_bytes_total";
pub const VOICE_STREAMS: &str = "plaza_voice_streams";
/// RTP packets the SFU took from talkers (`in`) and forwarded (`out`).
pub const VOICE_PACKETS: &str = "plaza_voice_packets_total";
/// Packets missing from talkers' uplinks: gaps in the RTP sequence
/// numbers as the SFU receives them (crate::voice::SequenceGaps).
pub const VOICE_PACKETS_LOST: &str = "plaza_voice_packets_lost_total";
/// Voice peers by how they went (`outcome`: [`VOICE_CALL_OUTCOMES`]).
pub const VOICE_CALLS: &str = "plaza_voice_calls_total";
/// Client telemetry (see [`crate::telemetry`]).
pub const CLIENT_FRAME: &str = "plaza_client_frame_seconds";
pub const CLIENT_FPS: &str = "plaza_client_fps";
pub const CLIENT_OVER_BUDGET: &str = "plaza_client_frames_over_budget_total";
pub const CLIENT_REPORTS: &str = "plaza_client_reports_total";
pub const CLIENT_REPORTS_DROPPED: &str = "plaza_client_reports_dropped_total";
/// Frames of others' voices clients heard, by `outcome`
/// ([`VOICE_FRAME_OUTCOMES`]).
pub const CLIENT_VOICE_FRAMES: &str = "plaza_client_voice_frames_total";
/// Each report's mean playout delay and largest jitter, seconds.
pub const CLIENT_VOICE_DELAY: &str = "plaza_client_voice_delay_seconds";
pub const CLIENT_VOICE_JITTER: &str = "plaza_client_voice_jitter_seconds";
/// Microphone frames sent and skipped (`outcome`: [`MIC_FRAME_OUTCOMES`]).
pub const CLIENT_VOICE_MIC_FRAMES: &str = "plaza_client_voice_mic_frames_total";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// When the process started (Unix seconds): a restart shows as a change,
/// a crash loop as many (the `PlazaRestarting` alert).
pub const PROCESS_START: &str = "process_start_time_seconds";
/// Open file descriptors and the soft limit on them: sockets, voice's UDP
/// sockets and the database share the one budget (crate::capacity).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Always 1, labelled with the build's `version` and `commit`
/// ([`crate::build`]): which build each instance runs, through a deploy.
pub const BUILD_INFO: &str = "plaza_build_info";
/// Tasks alive on the server's tokio runtime: back to its idle level after
/// the users leave, or something leaks (the soak checks it).
pub const RUNTIME_TASKS: &str = "plaza_runtime_alive_tasks";
/// HTTP requests answered, by `route` (the pattern, never an id), `method`
/// and `status` class (`2xx` … `5xx`): the HTTP side of the error rate.
pub const HTTP_REQUESTS: &str = "plaza_http_requests_total";

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns its handle.
pub fn init() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ROOM_USERS.into()), &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 60.0, 100.0, 200.0]))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLIENT_FPS.into()), &crate::telemetry::FPS_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLIENT_VOICE_DELAY.into()), &crate::telemetry::VOICE_DELAY_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLIENT_VOICE_JITTER.into()), &crate::telemetry::VOICE_JITTER_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if something else installed a recorder first; then
        // that one gets the numbers and /metrics shows only process stats.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be incomplete");
        }
        describe();
        register_zeros();
        metrics::gauge!(BUILD_INFO, "version" => crate::build::VERSION, "commit" => crate::build::COMMIT).set(1.0);
        // Histogram samples wait in the recorder until drained: drain them
        // every few seconds even when nobody scrapes.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
        if let Err(e) = spawned {
            tracing::warn!(cause = %e, "no metrics upkeep thread; histograms are drained at scrapes only");
        }
        handle.clone()
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(ROOMS_ACTIVE, "rooms with at least one member");
    describe_histogram!(ROOM_USERS, "members per active room, sampled each second");
    describe_gauge!(WS_CONNECTIONS, "open WebSocket connections");
    describe_gauge!(WS_CONNECTION_LIMIT, "most WebSocket connections at once (--max-connections)");
    describe_gauge!(TCP_CONNECTIONS, "open TCP connections, HTTP and WebSocket");
    describe_gauge!(TCP_CONNECTION_LIMIT, "most TCP connections the open-file limit lets in");
    describe_counter!(CONNECTIONS_REFUSED, "connections refused or not accepted, by reason");
    describe_counter!(WS_MESSAGES, "WebSocket messages by direction and type");
    describe_counter!(WS_BYTES, "WebSocket payload bytes by direction");
    describe_counter!(WS_DROPPED, "messages not delivered, by reason");
    describe_counter!(WS_SERVER_CLOSES, "sockets the server closed, by reason (from the close code)");
    describe_counter!(RATE_LIMITED, "client messages dropped by the rate limit");
    describe_counter!(SEATS_HELD, "seats held for a resume: the socket dropped, or its link went silent");
    describe_counter!(SEAT_RESUMES, "hellos that asked to resume a session, by whether its seat was still held");
    describe_counter!(SEATS_EXPIRED, "held seats let go: no socket came back for them within the resume window");
    describe_histogram!(AUTH_DURATION, "time to issue or check a token, seconds");
    describe_histogram!(JOIN_DURATION, "time from join to joined, seconds");
    describe_histogram!(TICK_DURATION, "time one room tick takes, seconds");
    describe_counter!(TICK_WAITS, "room ticks that waited for a late pose, by whether it came in time");
    describe_counter!(VOICE_BYTES, "voice RTP bytes by direction");
    describe_gauge!(VOICE_STREAMS, "voice streams forwarded by the SFU");
    describe_counter!(VOICE_PACKETS, "voice RTP packets the SFU took from talkers (in) and forwarded (out)");
    describe_counter!(VOICE_PACKETS_LOST, "voice packets missing from talkers' uplinks (RTP sequence gaps)");
    describe_counter!(VOICE_CALLS, "voice peers that connected, and that ended without ever connecting");
    describe_histogram!(CLIENT_FPS, "mean frame rate of each client telemetry report");
    describe_counter!(CLIENT_OVER_BUDGET, "client frames slower than the platform's frame budget");
    describe_counter!(CLIENT_REPORTS, "client telemetry reports accepted");
    describe_counter!(CLIENT_REPORTS_DROPPED, "client telemetry reports the clients say they dropped");
    describe_counter!(CLIENT_VOICE_FRAMES, "20 ms frames of others' voices clients heard, by outcome");
    describe_histogram!(CLIENT_VOICE_DELAY, "mean voice playout delay of each client telemetry report, seconds");
    describe_histogram!(CLIENT_VOICE_JITTER, "largest voice jitter of each client telemetry report, seconds");
    describe_counter!(CLIENT_VOICE_MIC_FRAMES, "client microphone frames sent, and skipped for a late voice thread");
    describe_gauge!(ROOM_LEASES, "rooms this instance runs for every instance (holds the Redis lease of)");
    describe_counter!(ROOM_LEASES_LOST, "room leases lost to another instance (missed renewals)");
    describe_counter!(ROOM_TAKEOVERS, "rooms taken over from an instance that stopped answering");
    describe_counter!(REDIS_ERRORS, "Redis commands that failed");
    describe_gauge!(WS_RELAYED, "WebSockets relayed to the instance that runs their room");
    describe_counter!(RELAY_FAILURES, "relays to a room's instance that could not be opened, by reason");
    describe_gauge!(RUNTIME_TASKS, "tasks alive on the server's tokio runtime");
    describe_gauge!(BUILD_INFO, "always 1; the labels say which build this process runs");
    describe_counter!(HTTP_REQUESTS, "HTTP answers by route pattern, method and status class");
}

/// Every metric `/metrics` shows from start-up: the contract's and the
/// server's own (the `process_*` series are added at each scrape, on Linux;
/// `plaza_client_frame_seconds` by [`crate::telemetry::render_frames`]).
pub const ALL: [&str; 47] = [
    ROOMS_ACTIVE,
    ROOM_USERS,
    WS_CONNECTIONS,
    WS_CONNECTION_LIMIT,
    TCP_CONNECTIONS,
    TCP_CONNECTION_LIMIT,
    CONNECTIONS_REFUSED,
    WS_MESSAGES,
    WS_BYTES,
    WS_DROPPED,
    WS_SERVER_CLOSES,
    RATE_LIMITED,
    SEATS_HELD,
    SEAT_RESUMES,
    SEATS_EXPIRED,
    ROOM_LEASES,
    ROOM_LEASES_LOST,
    ROOM_TAKEOVERS,
    REDIS_ERRORS,
    WS_RELAYED,
    RELAY_FAILURES,
    AUTH_DURATION,
    JOIN_DURATION,
    TICK_DURATION,
    TICK_WAITS,
    VOICE_BYTES,
    VOICE_STREAMS,
    VOICE_PACKETS,
    VOICE_PACKETS_LOST,
    VOICE_CALLS,
    CLIENT_FRAME,
    CLIENT_FPS,
    CLIENT_OVER_BUDGET,
    CLIENT_REPORTS,
    CLIENT_REPORTS_DROPPED,
    CLIENT_VOICE_FRAMES,
    CLIENT_VOICE_DELAY,
    CLIENT_VOICE_JITTER,
    CLIENT_VOICE_MIC_FRAMES,
    PROCESS_CPU,
    PROCESS_RSS,
    PROCESS_START,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    BUILD_INFO,
    RUNTIME_TASKS,
    HTTP_REQUESTS,
];

/// `status` label values of `plaza_http_requests_total`.
pub const HTTP_STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The status class label of an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        500.. => "5xx",
        400..=499 => "4xx",
        300..=399 => "3xx",
        _ => "2xx",
    }
}

/// `type` label values of `plaza_ws_messages_total{direction="in"}`.
pub const WS_TYPES_IN: [&str; 8] = plaza_shared::messages::ClientMessage::TYPE_NAMES;
/// ... and `direction="out"`.
pub const WS_TYPES_OUT: [&str; 9] = plaza_shared::messages::ServerMessage::TYPE_NAMES;
/// `reason` label values of `plaza_ws_dropped_total`.
pub const DROP_REASONS: [&str; 4] = ["rate_limited", "room_queue_full", "slow_consumer", "voice_slow_listener"];
/// `reason` label values of `plaza_ws_server_closes_total`, one per close
/// code the server sends ([`close_reason`]).
pub const CLOSE_REASONS: [&str; 10] = ["idle", "draining", "invalid_messages", "too_large", "bad_hello", "bad_token", "rate_limited", "too_slow", SILENT_LINK, "other"];
/// The `reason` of a socket let go without a close frame: its queue
/// stayed full and its link had gone silent (crate::peer_link); its seat is
/// held for a resume.
pub const SILENT_LINK: &str = "silent_link";

/// The `reason` label of a close code the server sent.
pub fn close_reason(code: u16) -> &'static str {
    use plaza_shared::limits::close;
    match code {
        // The heartbeat timeout closes with a normal 1000.
        1000 => "idle",
        close::SERVER_DRAINING => "draining",
        close::POLICY => "invalid_messages",
        close::TOO_LARGE => "too_large",
        close::BAD_HELLO => "bad_hello",
        close::BAD_TOKEN => "bad_token",
        close::RATE_LIMITED => "rate_limited",
        close::TOO_SLOW => "too_slow",
        _ => "other",
    }
}

/// `reason` label values of `plaza_connections_refused_total`: a
/// WebSocket over `--max-connections`, a connection over the open-file
/// budget, a WebSocket while draining, and an accept that failed.
pub const REFUSE_REASONS: [&str; 4] = ["max_connections", "open_files", "draining", "accept_failed"];
/// `outcome` label values of `plaza_tick_waits_total`: the late pose came
/// within the grace, or the tick went without it.
pub const TICK_WAIT_OUTCOMES: [&str; 2] = ["arrived", "gave_up"];
/// `outcome` label values of `plaza_seat_resumes_total`: the session's
/// seat was still held and taken back, or it was gone (let go, expired, or
/// never this user's) and the socket got a new session.
pub const RESUME_OUTCOMES: [&str; 2] = [RESUMED, SEAT_GONE];
pub const RESUMED: &str = "resumed";
pub const SEAT_GONE: &str = "seat_gone";
/// `direction` label values (`plaza_ws_bytes_total`, `plaza_voice_bytes_total`,
/// `plaza_voice_packets_total`).
pub const DIRECTIONS: [&str; 2] = ["in", "out"];
/// Why a relay could not be opened: no connection (`unreachable`), an HTTP
/// refusal such as a full instance (`refused`), a close or an unexpected
/// answer after the upgrade (`closed`, `protocol`).
pub const RELAY_FAILURE_REASONS: [&str; 4] = ["unreachable", "refused", "closed", "protocol"];
/// `outcome` label values of `plaza_voice_calls_total`.
pub const VOICE_CALL_OUTCOMES: [&str; 2] = ["connected", "never_connected"];
/// `outcome` label values of `plaza_client_voice_frames_total`, as in
/// [`plaza_shared::telemetry::VoiceReport`].
pub const VOICE_FRAME_OUTCOMES: [&str; 4] = ["played", "recovered", "lost", "stalled"];
/// `outcome` label values of `plaza_client_voice_mic_frames_total`.
pub const MIC_FRAME_OUTCOMES: [&str; 2] = ["sent", "skipped"];

/// Registers every series the server can emit, at zero, so dashboards and
/// alerts never query a missing one (once per process, from [`init`]; adding
/// zero leaves any value already there).
fn register_zeros() {
    use metrics::{counter, gauge, histogram};
    use plaza_shared::quality::{Platform, QualityPreset};
    for t in WS_TYPES_IN {
        counter!(WS_MESSAGES, "direction" => "in", "type" => t).increment(0);
    }
    for t in WS_TYPES_OUT {
        counter!(WS_MESSAGES, "direction" => "out", "type" => t).increment(0);
    }
    for direction in DIRECTIONS {
        counter!(WS_BYTES, "direction" => direction).increment(0);
        counter!(VOICE_BYTES, "direction" => direction).increment(0);
        counter!(VOICE_PACKETS, "direction" => direction).increment(0);
    }
    counter!(VOICE_PACKETS_LOST).increment(0);
    for outcome in VOICE_CALL_OUTCOMES {
        counter!(VOICE_CALLS, "outcome" => outcome).increment(0);
    }
    for reason in DROP_REASONS {
        counter!(WS_DROPPED, "reason" => reason).increment(0);
    }
    counter!(RATE_LIMITED).increment(0);
    counter!(SEATS_HELD).increment(0);
    counter!(SEATS_EXPIRED).increment(0);
    for name in [ROOM_LEASES_LOST, ROOM_TAKEOVERS, REDIS_ERRORS] {
        counter!(name).increment(0);
    }
    for reason in RELAY_FAILURE_REASONS {
        counter!(RELAY_FAILURES, "reason" => reason).increment(0);
    }
    for outcome in RESUME_OUTCOMES {
        counter!(SEAT_RESUMES, "outcome" => outcome).increment(0);
    }
    for outcome in TICK_WAIT_OUTCOMES {
        counter!(TICK_WAITS, "outcome" => outcome).increment(0);
    }
    for reason in CLOSE_REASONS {
        counter!(WS_SERVER_CLOSES, "reason" => reason).increment(0);
    }
    for reason in REFUSE_REASONS {
        counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    for (method, route) in crate::http::ROUTES {
        for status in HTTP_STATUS_CLASSES {
            counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status).increment(0);
        }
    }
    for name in [ROOMS_ACTIVE, WS_CONNECTIONS, WS_CONNECTION_LIMIT, TCP_CONNECTIONS, TCP_CONNECTION_LIMIT, VOICE_STREAMS, RUNTIME_TASKS, ROOM_LEASES, WS_RELAYED] {
        gauge!(name).increment(0.0);
    }
    for name in [ROOM_USERS, AUTH_DURATION, JOIN_DURATION, TICK_DURATION] {
        let _ = histogram!(name);
    }
    for platform in Platform::ALL.map(Platform::as_str) {
        counter!(CLIENT_REPORTS, "platform" => platform).increment(0);
        counter!(CLIENT_REPORTS_DROPPED, "platform" => platform).increment(0);
        for outcome in VOICE_FRAME_OUTCOMES {
            counter!(CLIENT_VOICE_FRAMES, "platform" => platform, "outcome" => outcome).increment(0);
        }
        for outcome in MIC_FRAME_OUTCOMES {
            counter!(CLIENT_VOICE_MIC_FRAMES, "platform" => platform, "outcome" => outcome).increment(0);
        }
        let _ = histogram!(CLIENT_VOICE_DELAY, "platform" => platform);
        let _ = histogram!(CLIENT_VOICE_JITTER, "platform" => platform);
        for preset in QualityPreset::ALL.map(QualityPreset::as_str) {
            let _ = histogram!(CLIENT_FPS, "preset" => preset, "platform" => platform);
            counter!(CLIENT_OVER_BUDGET, "preset" => preset, "platform" => platform).increment(0);
        }
    }
}

/// The counters every WebSocket message bumps: the payload bytes in and
/// out, poses in and deltas out, 160,000 times a second at 2,000 users.
/// As `metrics` counters those were two atomic adds each on a cache line
/// that both cores share and pass back and forth, the server's busiest
/// function in a profile (docs/benchmarks.md, session 13). Here each
/// thread adds to a slot of its own; a scrape sums the slots into the
/// recorder.
pub mod hot {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Threads beyond this share slots (still correct, just shared).
    const SLOTS: usize = 16;

    /// One cache line (two, against the adjacent-line prefetcher) a slot.
    #[repr(align(128))]
    struct Slot(AtomicU64);

    pub struct Counter {
        slots: [Slot; SLOTS],
    }

    impl Default for Counter {
        fn default() -> Self {
            Counter::new()
        }
    }

    pub static BYTES_IN: Counter = Counter::new();
    pub static BYTES_OUT: Counter = Counter::new();
    pub static POSES_IN: Counter = Counter::new();
    pub static DELTAS_OUT: Counter = Counter::new();

    static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }

    impl Counter {
        pub const fn new() -> Self {
            Counter { slots: [const { Slot(AtomicU64::new(0)) }; SLOTS] }
        }

        pub fn add(&self, n: u64) {
            let slot = SLOT.with(|s| *s);
            self.slots[slot].0.fetch_add(n, Ordering::Relaxed);
        }

        pub fn total(&self) -> u64 {
            self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
        }
    }

    /// Into the recorder, before it renders.
    pub(super) fn publish() {
        use super::{WS_BYTES, WS_MESSAGES};
        metrics::counter!(WS_BYTES, "direction" => "in").absolute(BYTES_IN.total());
        metrics::counter!(WS_BYTES, "direction" => "out").absolute(BYTES_OUT.total());
        metrics::counter!(WS_MESSAGES, "direction" => "in", "type" => "pose").absolute(POSES_IN.total());
        metrics::counter!(WS_MESSAGES, "direction" => "out", "type" => "delta").absolute(DELTAS_OUT.total());
    }
}

/// The exposition text, with process CPU and memory read now.
pub fn render() -> String {
    let handle = init();
    hot::publish();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_TASKS).set(runtime.metrics().num_alive_tasks() as f64);
    }
    handle.run_upkeep();
    let mut text = handle.render();
    crate::telemetry::render_frames(&mut text);
    if let Some(p) = ProcessStats::read() {
        // Written here rather than through the recorder: `metrics` counters
        // are integers, and the standard names want the standard types.
        p.write(&mut text);
    }
    text
}

/// The standard process metrics (the names Prometheus's own client
/// libraries use), read from /proc on Linux.
#[derive(Debug)]
struct ProcessStats {
    cpu_s: f64,
    rss_bytes: u64,
    start_unix_s: f64,
    open_fds: u64,
    max_fds: Option<u64>,
}

/// Clock ticks a second in /proc's times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        // Linux 6.2 and later give the count as the directory's size, in a
        // fraction of a millisecond; listing it took 9 ms at 10,000 sockets,
        // a worker stalled at every scrape. Older kernels say 0: list it.
        let open_fds = match std::fs::metadata("/proc/self/fd").ok()?.len() {
            0 => std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            counted => counted,
        };
        Self::parse(&stat, &status, &boot, &limits, open_fds)
    }

    fn parse(stat: &str, status: &str, boot: &str, limits: &str, open_fds: u64) -> Option<ProcessStats> {
        // Fields after the command name (which may hold spaces and
        // parentheses), from the third (state) on.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
        let (utime, stime, start) = (ticks(14)?, ticks(15)?, ticks(22)?);
        // VmRSS is in kB whatever the page size.
        let rss_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        let boot_s: f64 = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
        // "Max open files  <soft>  <hard>  files"; "unlimited" has no number.
        let max_fds = limits.lines().find_map(|l| l.strip_prefix("Max open files")).and_then(|l| l.split_whitespace().next()?.parse().ok());
        Some(ProcessStats { cpu_s: (utime + stime) / TICKS_PER_S, rss_bytes: rss_kb * 1024, start_unix_s: boot_s + start / TICKS_PER_S, open_fds, max_fds })
    }

    fn write(&self, text: &mut String) {
        use std::fmt::Write;
        let mut metric = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
            let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
        };
        metric(PROCESS_CPU, "counter", "Total user and system CPU time spent in seconds.", &self.cpu_s);
        metric(PROCESS_RSS, "gauge", "Resident memory size in bytes.", &self.rss_bytes);
        metric(PROCESS_START, "gauge", "Start time of the process since unix epoch in seconds.", &self.start_unix_s);
        metric(PROCESS_OPEN_FDS, "gauge", "Number of open file descriptors.", &self.open_fds);
        if let Some(max) = self.max_fds {
            metric(PROCESS_MAX_FDS, "gauge", "Maximum number of open file descriptors.", &max);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hot_counters_add_up_across_threads() {
        let counter = super::hot::Counter::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..1_000).for_each(|_| counter.add(3)));
            }
        });
        counter.add(1);
        assert_eq!(counter.total(), 12_001);
    }

    #[test]
    fn process_stats_are_read_from_proc() {
        let p = super::ProcessStats::read().expect("Linux /proc");
        assert!(p.cpu_s >= 0.0);
        assert!(p.rss_bytes > 1_000_000, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(p.start_unix_s <= now + 1.0 && p.start_unix_s > now - 3_600.0, "this test started in the last hour: {p:?}");
        assert!(p.open_fds >= 3, "{p:?}");
        assert!(p.max_fds.is_some_and(|max| max >= p.open_fds), "{p:?}");
    }

    #[test]
    fn process_stats_parse_a_command_name_with_spaces_and_an_unlimited_fd_limit() {
        // `(plaza ) x)`: the name is what lies between the first '(' and the last ')'.
        let stat = "42 (plaza ) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000000 500 18446744073709551615";
        let status = "Name:\tplaza\nVmRSS:\t   2048 kB\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            unlimited            unlimited            files\n";
        let p = super::ProcessStats::parse(stat, status, boot, limits, 7).expect("parses");
        assert_eq!((p.cpu_s, p.rss_bytes, p.open_fds, p.max_fds), (3.0, 2048 * 1024, 7, None));
        assert!((p.start_unix_s - 1_700_000_123.45).abs() < 1e-3, "boot time plus 12,345 ticks: {p:?}");
        let limited = limits.replace("unlimited            unlimited", "1024                 4096     ");
        assert_eq!(super::ProcessStats::parse(stat, status, boot, &limited, 7).unwrap().max_fds, Some(1024));
        assert!(super::ProcessStats::parse(stat, status, boot, "", 7).is_some_and(|p| p.max_fds.is_none()), "no limits file, the rest still");
        let mut text = String::new();
        p.write(&mut text);
        assert!(text.contains("\nprocess_start_time_seconds 1700000123.45"), "{text}");
        assert!(!text.contains("process_max_fds"), "no limit, no series: {text}");
    }
}
