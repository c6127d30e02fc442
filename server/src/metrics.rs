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
pub const WS_MESSAGES: &str = "plaza_ws_messages_total";
pub const WS_BYTES: &str = "plaza_ws_bytes_total";
pub const WS_DROPPED: &str = "plaza_ws_dropped_total";
pub const RATE_LIMITED: &str = "plaza_rate_limited_total";
pub const AUTH_DURATION: &str = "plaza_auth_duration_seconds";
pub const JOIN_DURATION: &str = "plaza_join_duration_seconds";
pub const TICK_DURATION: &str = "plaza_tick_duration_seconds";
pub const VOICE_BYTES: &str = "plaza_voice_bytes_total";
pub const VOICE_STREAMS: &str = "plaza_voice_streams";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Tasks alive on the server's tokio runtime: back to its idle level after
/// the users leave, or something leaks (the soak checks it).
pub const RUNTIME_TASKS: &str = "plaza_runtime_alive_tasks";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns its handle.
pub fn init() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ROOM_USERS.into()), &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 60.0, 100.0, 200.0]))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if something else installed a recorder first; then
        // that one gets the numbers and /metrics shows only process stats.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be incomplete");
        }
        describe();
        handle.clone()
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(ROOMS_ACTIVE, "rooms with at least one member");
    describe_histogram!(ROOM_USERS, "members per active room, sampled each second");
    describe_gauge!(WS_CONNECTIONS, "open WebSocket connections");
    describe_counter!(WS_MESSAGES, "WebSocket messages by direction and type");
    describe_counter!(WS_BYTES, "WebSocket payload bytes by direction");
    describe_counter!(WS_DROPPED, "messages not delivered, by reason");
    describe_counter!(RATE_LIMITED, "client messages dropped by the rate limit");
    describe_histogram!(AUTH_DURATION, "time to issue or check a token, seconds");
    describe_histogram!(JOIN_DURATION, "time from join to joined, seconds");
    describe_histogram!(TICK_DURATION, "time one room tick takes, seconds");
    describe_counter!(VOICE_BYTES, "voice RTP bytes by direction");
    describe_gauge!(VOICE_STREAMS, "voice streams forwarded by the SFU");
    describe_gauge!(PROCESS_CPU, "CPU time used by the process, seconds");
    describe_gauge!(PROCESS_RSS, "resident memory of the process, bytes");
    describe_gauge!(RUNTIME_TASKS, "tasks alive on the server's tokio runtime");
    // Voice has no SFU yet: show the series at zero rather than not at all.
    for direction in ["in", "out"] {
        metrics::counter!(VOICE_BYTES, "direction" => direction).absolute(0);
    }
    metrics::gauge!(VOICE_STREAMS).set(0.0);
    metrics::gauge!(ROOMS_ACTIVE).set(0.0);
    metrics::gauge!(WS_CONNECTIONS).set(0.0);
}

/// The exposition text, with process CPU and memory read now.
pub fn render() -> String {
    let handle = init();
    if let Some((cpu, rss)) = process_stats() {
        // A gauge: metrics' counters are integers, CPU time is fractional.
        metrics::gauge!(PROCESS_CPU).set(cpu);
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_TASKS).set(runtime.metrics().num_alive_tasks() as f64);
    }
    handle.run_upkeep();
    handle.render()
}

/// (CPU seconds, resident bytes) from /proc on Linux.
fn process_stats() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(((utime + stime) / ticks_per_s, pages * 4096))
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_stats_are_read_from_proc() {
        let (cpu, rss) = super::process_stats().expect("Linux /proc");
        assert!(cpu >= 0.0);
        assert!(rss > 1_000_000, "{rss}");
    }
}
