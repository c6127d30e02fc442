//! Every metric exists from start-up, at zero until used, with every label
//! combination the server can emit, so dashboards and alerts never query a
//! missing series. One test in its own binary: nothing else in this process
//! has touched the recorder.

mod common;

use common::*;
use plaza_server::metrics as m;

/// The contract's list (shared/contract.md, "Metrics"), kept here on its own
/// so a name dropped from the server's list fails this test.
const CONTRACT: [&str; 19] = [
    "plaza_rooms_active",
    "plaza_room_users",
    "plaza_ws_connections",
    "plaza_ws_messages_total",
    "plaza_ws_bytes_total",
    "plaza_ws_dropped_total",
    "plaza_rate_limited_total",
    "plaza_auth_duration_seconds",
    "plaza_join_duration_seconds",
    "plaza_tick_duration_seconds",
    "plaza_voice_bytes_total",
    "plaza_voice_streams",
    "plaza_client_frame_seconds",
    "plaza_client_fps",
    "plaza_client_frames_over_budget_total",
    "plaza_client_reports_total",
    "plaza_client_reports_dropped_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];

#[tokio::test]
async fn a_fresh_server_lists_every_metric_and_series_at_zero() {
    let server = TestServer::start().await;
    let (status, _, text) = server.http("GET", "/metrics", "", &[]).await;
    assert_eq!(status, 200);
    let samples: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            (series, value.parse().unwrap_or_else(|_| panic!("bad value in {l}")))
        })
        .collect();
    let has = |series: &str| samples.iter().any(|(s, _)| *s == series);
    let type_of = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("# TYPE {name} "))).map(str::to_owned);

    for name in CONTRACT.iter().chain(m::ALL.iter()) {
        let kind = type_of(name).unwrap_or_else(|| panic!("no `# TYPE {name}` in /metrics:\n{text}"));
        let sample = if kind == "histogram" { format!("{name}_count") } else { (*name).to_owned() };
        assert!(samples.iter().any(|(s, _)| *s == sample || s.starts_with(&format!("{sample}{{"))), "{name} ({kind}) has no sample:\n{text}");
    }
    assert_eq!(type_of("process_cpu_seconds_total").as_deref(), Some("counter"));
    assert_eq!(type_of("process_resident_memory_bytes").as_deref(), Some("gauge"));
    let rss = samples.iter().find(|(s, _)| *s == "process_resident_memory_bytes").unwrap().1;
    assert!(rss > 1e6, "resident memory {rss}");

    // Every label combination, at zero.
    let mut series = Vec::new();
    for t in m::WS_TYPES_IN {
        series.push(format!("plaza_ws_messages_total{{direction=\"in\",type=\"{t}\"}}"));
    }
    for t in m::WS_TYPES_OUT {
        series.push(format!("plaza_ws_messages_total{{direction=\"out\",type=\"{t}\"}}"));
    }
    for d in ["in", "out"] {
        series.push(format!("plaza_ws_bytes_total{{direction=\"{d}\"}}"));
        series.push(format!("plaza_voice_bytes_total{{direction=\"{d}\"}}"));
    }
    for r in ["rate_limited", "room_queue_full", "slow_consumer"] {
        series.push(format!("plaza_ws_dropped_total{{reason=\"{r}\"}}"));
    }
    for o in ["arrived", "gave_up"] {
        series.push(format!("plaza_tick_waits_total{{outcome=\"{o}\"}}"));
    }
    for o in ["resumed", "seat_gone"] {
        series.push(format!("plaza_seat_resumes_total{{outcome=\"{o}\"}}"));
    }
    series.push("plaza_seats_held_total".into());
    series.push("plaza_seats_expired_total".into());
    for r in ["max_connections", "open_files", "draining", "accept_failed"] {
        series.push(format!("plaza_connections_refused_total{{reason=\"{r}\"}}"));
    }
    for p in ["desktop", "vr", "mobile"] {
        series.push(format!("plaza_client_reports_total{{platform=\"{p}\"}}"));
        series.push(format!("plaza_client_reports_dropped_total{{platform=\"{p}\"}}"));
        for q in ["low", "medium", "high", "ultra"] {
            series.push(format!("plaza_client_frames_over_budget_total{{preset=\"{q}\",platform=\"{p}\"}}"));
            for h in ["plaza_client_frame_seconds", "plaza_client_fps"] {
                series.push(format!("{h}_count{{preset=\"{q}\",platform=\"{p}\"}}"));
                series.push(format!("{h}_bucket{{preset=\"{q}\",platform=\"{p}\",le=\"+Inf\"}}"));
            }
        }
    }
    for (method, route) in plaza_server::http::ROUTES {
        for status in m::HTTP_STATUS_CLASSES {
            series.push(format!("plaza_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"));
        }
    }
    for s in &series {
        assert!(has(s), "{s} missing:\n{text}");
    }
    assert_eq!(samples.iter().filter(|(s, _)| s.starts_with("plaza_client_frame_seconds_bucket{preset=\"high\",platform=\"vr\"")).count(), 15, "14 bounds and +Inf");
    assert!(has("plaza_client_frame_seconds_bucket{preset=\"high\",platform=\"vr\",le=\"0.0139\"}"), "buckets in seconds:\n{text}");

    // promtool (Debian's prometheus package, which `make test` installs for
    // the alert tests) lints the exposition when it is there.
    match std::process::Command::new("promtool").args(["check", "metrics"]).stdin(std::process::Stdio::piped()).output_with_stdin(&text) {
        Some(out) => assert!(out.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        None => eprintln!("promtool not found: exposition lint skipped"),
    }

    // Nothing used yet: every plaza_ sample is zero, but for the live task
    // count, the limits and the one TCP connection that is this scrape.
    let config = plaza_server::ServerConfig::ephemeral();
    let value = |name: &str| samples.iter().find(|(s, _)| *s == name).map(|(_, v)| *v);
    assert_eq!(value(m::WS_CONNECTION_LIMIT), Some(config.max_connections as f64));
    assert_eq!(value(m::TCP_CONNECTION_LIMIT), Some(config.max_tcp_connections as f64));
    assert_eq!(value(m::TCP_CONNECTIONS), Some(1.0));
    // Which build: one series, 1, with the crate's version.
    let builds: Vec<_> = samples.iter().filter(|(s, _)| s.starts_with("plaza_build_info{")).collect();
    let build = format!("plaza_build_info{{version=\"{}\",commit=\"{}\"}}", plaza_server::build::VERSION, plaza_server::build::COMMIT);
    assert_eq!(builds, [&(build.as_str(), 1.0)]);
    // The process: started in the last hour, some files open, a limit above them.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = value(m::PROCESS_START).expect("start time");
    assert!(started <= now + 1.0 && started > now - 3_600.0, "started at {started}, now {now}");
    let (open, max) = (value(m::PROCESS_OPEN_FDS).expect("open fds"), value(m::PROCESS_MAX_FDS).expect("fd limit"));
    assert!(open >= 4.0 && max > open, "{open} of {max} files open");
    let moved: Vec<_> = samples
        .iter()
        .filter(|(s, v)| s.starts_with("plaza_") && *v != 0.0)
        .filter(|(s, _)| ![m::RUNTIME_TASKS, m::WS_CONNECTION_LIMIT, m::TCP_CONNECTION_LIMIT, m::TCP_CONNECTIONS, m::BUILD_INFO].iter().any(|name| s.starts_with(name)))
        .collect();
    assert!(moved.is_empty(), "non-zero on a fresh server: {moved:?}");
}

trait WithStdin {
    fn output_with_stdin(&mut self, input: &str) -> Option<std::process::Output>;
}

impl WithStdin for std::process::Command {
    /// Runs with `input` on stdin; `None` when the program isn't installed.
    fn output_with_stdin(&mut self, input: &str) -> Option<std::process::Output> {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().ok()?;
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write to promtool");
        Some(child.wait_with_output().expect("promtool runs"))
    }
}
