//! The CI scenario: the real binary, a tiny load against the embedded
//! server, and what it must report. No timing assertions: latency numbers
//! are only checked to exist.

use std::path::PathBuf;
use std::process::Command;

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plaza-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plaza-load"))
}

const CONTRACT_KEYS: [&str; 16] = [
    "users",
    "rooms",
    "rate_hz",
    "duration_s",
    "latency_ms",
    "join_ms",
    "auth_ms",
    "expected",
    "received",
    "lost",
    "misrouted",
    "errors",
    "reconnects",
    "down_bytes_per_user_s",
    "server",
    "chat",
];

fn run_scenario(name: &str, protocol: &str) -> (serde_json::Value, PathBuf, std::process::Output) {
    let out = out_dir(name);
    let output = load()
        .args(["run", "--rooms", "2", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--ramp", "0.5", "--chat-every", "1", "--quiet"])
        .args(["--protocol", protocol])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("plaza-load runs");
    let json = std::fs::read_to_string(out.join("result.json")).unwrap_or_else(|e| {
        panic!("no result.json ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    });
    (serde_json::from_str(&json).expect("result.json is JSON"), out, output)
}

/// `plaza-load run ARGS --quiet` into its own folder; its result.json,
/// once the run passed.
fn run_passing(name: &str, args: &[&str]) -> (serde_json::Value, PathBuf, std::process::Output) {
    let out = out_dir(name);
    let output = load().arg("run").args(args).arg("--quiet").arg("--out").arg(&out).output().expect("plaza-load runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let json = std::fs::read_to_string(out.join("result.json")).unwrap_or_else(|e| panic!("no result.json ({e}); stderr:\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(&json).expect("result.json is JSON");
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}\nresult: {r:#}", output.status.code());
    (r, out, output)
}

fn check(name: &str, protocol: &str) {
    let (r, out, output) = run_scenario(name, protocol);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}\nresult: {r:#}", output.status.code());
    for key in CONTRACT_KEYS {
        assert!(r.get(key).is_some(), "result.json lacks {key}");
    }
    for key in ["p50", "p95", "p99", "max"] {
        assert!(r["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
    for key in ["p50", "p99"] {
        assert!(r["join_ms"][key].is_number(), "join_ms.{key}");
        assert!(r["auth_ms"][key].is_number(), "auth_ms.{key}");
    }
    assert!(r["server"]["cpu_pct"].is_number() && r["server"]["rss_mb"].is_number());
    assert_eq!(r["users"], 10);
    assert_eq!(r["rooms"], 2);
    assert_eq!(r["users_joined"], 10);
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["misrouted"], 0, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["chat"]["lost"], 0, "{r:#}");
    let received = r["received"].as_u64().unwrap();
    let expected = r["expected"].as_u64().unwrap();
    assert!(received > 0, "{r:#}");
    assert!(expected > 0, "{r:#}");
    assert!(r["latency_ms"]["count"].as_u64().unwrap() > 0);
    // Every pose timed to its read is also timed to its arrival at the
    // socket, which can only be earlier.
    let at_socket = &r["latency_at_socket_ms"];
    assert_eq!(at_socket["count"], r["latency_ms"]["count"], "{r:#}");
    for key in ["p50", "p99", "max"] {
        assert!(at_socket[key].as_f64().unwrap() <= r["latency_ms"][key].as_f64().unwrap(), "latency_at_socket_ms.{key}: {r:#}");
    }
    assert!(r["join_ms"]["count"].as_u64().unwrap() == 10);
    // From the connect, every user's join is timed too, and it holds the
    // join's own wait.
    assert_eq!(r["connect_join_ms"]["count"], 10, "{r:#}");
    assert!(r["connect_join_ms"]["min"].as_f64().unwrap() >= r["join_ms"]["min"].as_f64().unwrap(), "{r:#}");
    // Every user pings as it joins, so it paces by a real round trip from
    // the start: with the default --ping-every 5, longer than this run,
    // a first ping at a random moment would leave some users without one.
    assert!(r["rtt_ms"]["count"].as_u64().unwrap() >= 10, "a pong for every user: {r:#}");
    // Paced users (the default) report the lead they sent by: at least
    // the least margin, at most the round trip and half a period.
    assert_eq!(r["send_at"], "tick");
    let lead = &r["pacing"]["lead_ms"];
    assert!(lead["count"].as_u64().unwrap() > 0, "paced sends: {r:#}");
    assert!(lead["min"].as_f64().unwrap() >= 3.0 && lead["max"].as_f64().unwrap() <= 25.0 + r["rtt_ms"]["max"].as_f64().unwrap() + 1.0, "lead: {r:#}");
    assert_eq!(r["pacing"]["grid_offset_ms"]["count"], lead["count"]);
    assert!(r["chat"]["acked"].as_u64().unwrap() > 0, "chats every second for 3 s: {r:#}");
    assert!(r["down_bytes_per_user_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["server"]["in_process"], true);
    assert_eq!(r["passed"], true);
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<svg"), "the report has charts");
    assert!(html.contains("send lead and grid error"), "the report shows the pacing");
    assert!(!html.contains("<script") && !html.contains("http-equiv"), "self-contained, no scripts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("lost 0 misrouted 0"), "{stdout}");
}

#[test]
fn a_short_binary_run_delivers_everything() {
    check("bin", "bin");
}

#[test]
fn a_short_json_run_delivers_everything() {
    check("json", "json");
}

/// `--voice`: every user also talks through the SFU. Two rooms, so a frame
/// heard across rooms would show as misrouted.
#[test]
fn a_short_voice_run_hears_its_own_room_through_the_sfu() {
    let (r, out, output) = run_passing("voice", &["--rooms", "2", "--users-per-room", "4", "--rate", "10", "--duration", "4", "--ramp", "0.5", "--chat-every", "0", "--voice"]);
    let v = &r["voice"];
    assert_eq!(v["offered"], 8, "{v:#}");
    assert_eq!(v["connected"], 8, "every peer came up on loopback: {v:#}");
    assert_eq!(v["failed"], 0, "{v:#}");
    assert_eq!(v["misrouted"], 0, "{v:#}");
    let (sent, heard) = (v["frames_sent"].as_u64().unwrap(), v["frames_heard"].as_u64().unwrap());
    // Four users a room, all within earshot of each other: each frame is
    // heard by the three others, less the start of each peer's connection.
    assert!(sent > 8 * 50, "about 3 s of frames from 8 users: {v:#}");
    assert!(heard > sent && heard <= 3 * sent, "heard {heard} of {sent} sent ×3 listeners: {v:#}");
    assert!(v["latency_ms"]["count"].as_u64().unwrap() == heard, "{v:#}");
    // Loopback loses next to nothing; holes from the slots changing while
    // users join are not loss (docs/load.md).
    assert!(v["lost"].as_u64().unwrap() * 100 <= heard, "{v:#}");
    assert_eq!(v["dropped_by_load_tool"], 0, "{v:#}");
    assert_eq!(r["lost"], 0, "poses still all delivered: {r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<h2>Voice</h2>"), "the report has a voice section");
    let seconds = v["timeline"].as_array().expect("a voice timeline");
    assert!(seconds.len() >= 2, "voice latency second by second: {v:#}");
    assert_eq!(seconds.iter().map(|p| p["frames"].as_u64().unwrap()).sum::<u64>(), heard, "every frame heard is in one second");
    assert!(html[html.find("<h2>Voice</h2>").unwrap()..].contains("voice latency per second"), "the voice section has its chart");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("plaza-load voice: 8 of 8 peers connected (0 failed)"), "{stdout}");
}

/// `--restart-every`: the embedded server restarts twice under the users,
/// and everyone comes back to their room with nothing acknowledged lost.
#[test]
fn a_run_through_two_server_restarts_brings_everyone_back() {
    // Tokens that last 67 s are warned about 7 s in: each user refreshes
    // between the restarts, with a refresh token the first server issued.
    let (r, out, output) = run_passing("restart", &["--rooms", "2", "--users-per-room", "4", "--rate", "10", "--duration", "14", "--ramp", "0.5", "--chat-every", "1", "--restart-every", "5s", "--access-ttl", "67s"]);
    let x = &r["restarts"];
    let done = x["done"].as_array().expect("the restarts done");
    assert_eq!(done.len(), 2, "at 5 s and 10 s: {x:#}");
    for d in done {
        assert!(d["down_ms"].as_f64().unwrap() >= d["stopped_ms"].as_f64().unwrap(), "{x:#}");
    }
    // Every user's socket was closed with 1001 at each restart, and each
    // came back to its room every time.
    assert_eq!(x["drained_sockets"], 16, "{x:#}");
    assert_eq!(x["back_ms"]["count"], 16, "{x:#}");
    assert_eq!(x["still_away"], 0, "{x:#}");
    assert_eq!(r["errors"], 0, "a restart is not an error, nor is refreshing after one: {r:#}");
    assert!(r["token_refreshes"].as_u64().unwrap() >= 8, "every user refreshed after the first restart: {r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["misrouted"], 0, "{r:#}");
    // Chats acknowledged before a restart are in the store after it.
    assert!(r["chat"]["acked"].as_u64().unwrap() > 50, "{r:#}");
    assert_eq!(r["chat"]["lost"], 0, "{r:#}");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<h2>Server restarts</h2>"), "the report has a restarts section");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("plaza-load restarts: 2 "), "{stdout}");
}

/// `--hostile`: a client that stops reading, one that floods, one that
/// sends junk, one that sends an oversized message and one that never
/// finishes its upgrade request, in each room beside the users. The server
/// closes each with its code (the last: the connection, at its 10 s
/// request-head deadline), counts the closes, and the users lose nothing.
#[test]
fn hostile_clients_are_closed_with_their_codes_and_the_users_beside_them_lose_nothing() {
    let (r, out, output) = run_passing("hostile", &["--rooms", "1", "--users-per-room", "20", "--rate", "20", "--duration", "30", "--ramp", "1", "--chat-every", "2", "--hostile", "5"]);
    let kinds = r["hostile"]["kinds"].as_array().expect("the hostile kinds");
    let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(names, ["stall", "flood", "junk", "oversize", "slowloris"], "{r:#}");
    for k in kinds {
        let ended = k["closed_as_expected"].as_u64().unwrap() + k["ended_without_close_frame"].as_u64().unwrap();
        assert!(ended >= 1, "every kind was closed at least once: {k:#}");
        assert_eq!(k["closed_otherwise"], serde_json::json!({}), "{k:#}");
        assert_eq!(k["left_open"], 0, "{k:#}");
        if !k["expected_close"].is_null() {
            assert!(k["server_closes"].as_f64().unwrap() >= ended as f64, "the server counted its closes: {k:#}");
        }
    }
    // The half-open connection lasted the request-head deadline, no less.
    assert!(kinds[4]["ended_after_ms"]["min"].as_f64().unwrap() >= 9_000.0, "{:#}", kinds[4]);
    // Those that read see their close frame, and the junk its errors.
    for kind in [2, 3] {
        assert!(kinds[kind]["closed_as_expected"].as_u64().unwrap() >= 1, "{:#}", kinds[kind]);
        assert_eq!(kinds[kind]["ended_without_close_frame"], 0, "{:#}", kinds[kind]);
    }
    assert!(kinds[2]["error_replies"].as_u64().unwrap() >= 9 * kinds[2]["closed_as_expected"].as_u64().unwrap(), "{:#}", kinds[2]);
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["misrouted"], 0, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["chat"]["lost"], 0, "{r:#}");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<h2>Hostile clients (5 a room)</h2>"), "the report has a hostile section");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("plaza-load hostile: 5 a room; stall "), "{stdout}");
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for args in [
        vec!["run", "--rooms", "0", "--users-per-room", "5", "--rate", "10", "--duration", "3"],
        vec!["run", "--rooms", "1", "--users-per-room", "201", "--rate", "10", "--duration", "3"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "31", "--duration", "3"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "0"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--protocol", "xml"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--server", "ftp://x"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--ramp", "3"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--voice", "--protocol", "socketio", "--server", "http://127.0.0.1:1"],
        vec!["run", "--rooms", "60", "--users-per-room", "40", "--rate", "1", "--duration", "3", "--voice"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--voice-talk", "30"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--voice", "--voice-talk", "0"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "3", "--voice", "--voice-talk", "101"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--restart-every", "2s"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--restart-every", "40s"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--restart-every", "10s", "--server", "http://127.0.0.1:1"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--access-ttl", "60s"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--access-ttl", "90s", "--server", "http://127.0.0.1:1"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--hostile", "41"],
        vec!["run", "--rooms", "1", "--users-per-room", "180", "--rate", "10", "--duration", "30", "--hostile", "21"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--hostile", "4", "--protocol", "socketio", "--server", "http://127.0.0.1:1"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--silence-every", "20s"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--silence-every", "500ms", "--drain", "10"],
        vec!["run", "--rooms", "1", "--users-per-room", "5", "--rate", "10", "--duration", "30", "--silence-limit", "0.5"],
    ] {
        let output = load().args(&args).output().expect("plaza-load runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.lines().next().is_some_and(|l| l.starts_with("error:")), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unreachable_server_fails_cleanly() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = out_dir("unreachable");
    let output = load()
        .args(["run", "--rooms", "1", "--users-per-room", "1", "--rate", "1", "--duration", "1", "--quiet", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("plaza-load runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/health"));
}

// The server tests' throwaway Redis, shared rather than copied.
#[path = "../../../server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

/// The most sockets either instance relayed while `run` ran (their
/// `/metrics`, every 50 ms).
fn most_relayed_during<T>(runtime: &tokio::runtime::Runtime, urls: &[String], run: impl FnOnce() -> T) -> (T, f64) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, handle, urls) = (done.clone(), runtime.handle().clone(), urls.to_vec());
        std::thread::spawn(move || {
            let mut most = 0f64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for url in &urls {
                    let text = handle.block_on(async { reqwest::get(format!("{url}/metrics")).await.ok()?.text().await.ok() });
                    if let Some(relayed) = text.and_then(|t| plaza_load::server::metric_value(&t, plaza_server::metrics::WS_RELAYED)) {
                        most = most.max(relayed);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            most
        })
    };
    let out = run();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.join().unwrap())
}

/// nginx running deploy/balancer/nginx.conf with its two upstreams swapped
/// for `urls`' (what `make cluster` runs); stopped on drop.
struct Balancer {
    url: String,
    child: std::process::Child,
}

impl Balancer {
    fn start(urls: &[String], dir: &std::path::Path) -> Balancer {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/balancer/nginx.conf")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = shipped
            .replace("plaza-server-1:7878", urls[0].trim_start_matches("http://"))
            .replace("plaza-server-2:7878", urls[1].trim_start_matches("http://"))
            .replace("listen 7878;", &format!("listen 127.0.0.1:{port};"));
        assert_ne!(conf, shipped, "the shipped config names its upstreams as this test expects");
        std::fs::write(dir.join("balancer.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("balancer.conf"))
            .arg("-e")
            .arg(dir.join("balancer.log"))
            .arg("-g")
            .arg(format!("daemon off; pid {};", dir.join("balancer.pid").display()))
            .spawn()
            .unwrap_or_else(|e| panic!("nginx didn't start ({e}); run tools/setup.sh"));
        Balancer { url: format!("http://127.0.0.1:{port}"), child }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // TERM to the master, which stops its workers (a KILL would leave
        // them listening).
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Waits for `url`'s /health (a started instance or the balancer); panics
/// with `stopped()`'s words once that says it is gone.
fn wait_for_health(runtime: &tokio::runtime::Runtime, url: &str, mut stopped: impl FnMut() -> Option<String>) {
    let started = std::time::Instant::now();
    while !runtime.block_on(async { reqwest::get(format!("{url}/health")).await.is_ok_and(|r| r.status().is_success()) }) {
        if let Some(why) = stopped() {
            panic!("{url} stopped: {why}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{url} didn't answer /health in 20 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `--also-server`: users spread over two instances sharing rooms through
/// Redis, every room with members at both; nothing lost or misrouted
/// through the relay. Then the same users through the balancer, which
/// routes by room: still nothing lost, and nobody relayed.
#[test]
fn users_spread_over_two_instances_lose_nothing() {
    let redis = redis::Redis::start();
    let dir = out_dir("cluster-store");
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut stops = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = plaza_server::ServerConfig {
            token_secret: b"one secret for the cluster".to_vec(),
            database_url: format!("sqlite://{}", dir.join("plaza.db").display()),
            redis_url: Some(redis.url.clone()),
            advertise_url: url.clone(),
            ..plaza_server::ServerConfig::ephemeral()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(plaza_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        stops.push((stop, server));
        urls.push(url);
    }
    // Both started at once, on one new store file; one that failed to
    // start says why here, not as the load tool's refused logins.
    for ((_, server), url) in stops.iter_mut().zip(&urls) {
        wait_for_health(&runtime, url, || server.is_finished().then(|| format!("{:?}", runtime.block_on(&mut *server))));
    }
    // Through the balancer first, while the rooms are new: each starts at
    // the instance its members are routed to. (A room keeps running where
    // it first ran, so the spread run after finds them placed.)
    let args = ["--rooms", "2", "--users-per-room", "4", "--rate", "10", "--duration", "3", "--ramp", "0.5", "--chat-every", "1"];
    let mut balancer = Balancer::start(&urls, &dir);
    wait_for_health(&runtime, &balancer.url.clone(), || balancer.child.try_wait().ok().flatten().map(|status| format!("nginx exited ({status}); see {}", dir.join("balancer.log").display())));
    let ((r, _, _), relayed) = most_relayed_during(&runtime, &urls, || run_passing("balanced", &[&args[..], &["--server", &balancer.url]].concat()));
    assert_eq!((r["users"].as_u64(), r["lost"].as_u64(), r["misrouted"].as_u64(), r["errors"].as_u64()), (Some(8), Some(0), Some(0), Some(0)), "{r:#}");
    assert!(r["received"].as_u64().unwrap() > 0 && r["chat"]["received"].as_u64().unwrap_or(0) > 0, "{r:#}");
    assert_eq!(relayed, 0.0, "routed by room, every member reaches its room's instance");

    let ((r, _, _), relayed) = most_relayed_during(&runtime, &urls, || run_passing("cluster", &[&args[..], &["--server", &urls[0], "--also-server", &urls[1]]].concat()));
    assert_eq!((r["users"].as_u64(), r["lost"].as_u64(), r["misrouted"].as_u64(), r["errors"].as_u64()), (Some(8), Some(0), Some(0), Some(0)), "{r:#}");
    assert!(r["received"].as_u64().unwrap() > 0);
    assert!(r["chat"]["received"].as_u64().unwrap_or(0) > 0, "chat crossed the relay: {r:#}");
    assert!(relayed >= 1.0, "spread, members reach their rooms through the relay (most relayed at once: {relayed})");
    drop(balancer);
    drop(stops);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn also_server_needs_a_cluster_to_spread_over() {
    for (args, says) in [
        (vec!["--also-server", "http://127.0.0.1:9"], "--also-server needs --server"),
        (vec!["--server", "http://127.0.0.1:9", "--also-server", "http://127.0.0.1:9", "--latency", "50ms"], "without the fault proxy"),
        (vec!["--server", "http://127.0.0.1:9", "--also-server", "ftp://x"], "must start with http://"),
    ] {
        let output = load().args(["run", "--rooms", "1", "--users-per-room", "2", "--rate", "10", "--duration", "2"]).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
