//! What operators rely on: draining, readiness, heartbeats, metrics.

mod common;

use common::*;
use plaza_shared::codec::Subprotocol;
use plaza_shared::limits::close;
use plaza_shared::messages::*;
use std::time::Duration;

#[tokio::test]
async fn shutdown_drains_ready_goes_503_then_sockets_close_1001() {
    let config = plaza_server::ServerConfig { drain_grace: Duration::from_millis(600), ..plaza_server::ServerConfig::ephemeral() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plaza_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let probe = TestServer { addr, stop: None };
    let (status, _, _) = probe.http("GET", "/ready", "", &[]).await;
    assert_eq!(status, 200);
    let (mut member, _) = probe.member("Ada", Subprotocol::Json, "lobby").await;
    member.send(&ClientMessage::Chat(ChatSend { id: "before".into(), text: "still here".into() })).await;

    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Draining: not ready, no new sockets, but the old one still works.
    let (status, _, body) = probe.http("GET", "/ready", "", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""status":"draining""#) && body.contains("reason"), "{body}");
    member.send(&ClientMessage::Ping(Ping { t: 7 })).await;
    let mut ponged = false;
    while let Some(msg) = member.try_recv(Duration::from_millis(300)).await {
        ponged |= matches!(msg, ServerMessage::Pong(Pong { t: 7, .. }));
    }
    assert!(ponged, "sockets keep working during the grace period");
    // After the grace period: 1001, and `run` returns.
    assert_eq!(member.ended(Duration::from_secs(3)).await, Ended::Closed(close::SERVER_DRAINING));
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("run returns").unwrap().unwrap();
}

#[tokio::test]
async fn ready_fails_when_the_store_is_gone() {
    let config = plaza_server::ServerConfig::ephemeral();
    let (state, _switches) = plaza_server::AppState::new(&config).await.unwrap();
    let store = state.store.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, plaza_server::http::router(state)).await });
    let probe = TestServer { addr, stop: None };
    assert_eq!(probe.http("GET", "/ready", "", &[]).await.0, 200);
    store.close().await;
    let (status, _, body) = probe.http("GET", "/ready", "", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""status":"unavailable""#) && body.contains("store"), "{body}");
    assert_eq!(probe.http("GET", "/health", "", &[]).await.0, 200, "health is only liveness");
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_heartbeat_timeout() {
    let config = plaza_server::ServerConfig { heartbeat_timeout: Duration::from_millis(400), ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    let (mut quiet, _) = server.member("Quiet", Subprotocol::Binary, "hb").await;
    let (mut chatty, _) = server.member("Chatty", Subprotocol::Binary, "hb").await;
    for i in 0..8 {
        chatty.send(&ClientMessage::Ping(Ping { t: i })).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(quiet.ended(Duration::from_secs(2)).await, Ended::Closed(1000));
    // The one that pinged is still there and saw the other leave.
    let mut saw_leave = false;
    while let Some(msg) = chatty.try_recv(Duration::from_millis(200)).await {
        if let ServerMessage::Delta(d) = msg {
            saw_leave |= !d.left.is_empty();
        }
    }
    assert!(saw_leave);
}

#[tokio::test]
async fn metrics_show_every_contract_series_moving() {
    let server = TestServer::start().await;
    let (_, _, before) = server.http("GET", "/metrics", "", &[]).await;
    let (mut a, _) = server.member("A", Subprotocol::Binary, "metrics").await;
    let (mut b, _) = server.member("B", Subprotocol::Json, "metrics").await;
    for i in 0..5 {
        a.send(&ClientMessage::Pose(PoseUpdate { t: i, pose: pose_at(i as f32, 0.0) })).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    b.send(&ClientMessage::Chat(ChatSend { id: "c1".into(), text: "hi".into() })).await;
    let _ = b.next_delta().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // a room-users sample
    let (status, head, text) = server.http("GET", "/metrics", "", &[]).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain"), "{head}");
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    for series in [
        "plaza_rooms_active",
        "plaza_room_users_count",
        "plaza_ws_connections",
        "plaza_ws_messages_total{direction=\"in\",type=\"pose\"}",
        "plaza_ws_messages_total{direction=\"out\",type=\"delta\"}",
        "plaza_ws_bytes_total{direction=\"in\"}",
        "plaza_ws_bytes_total{direction=\"out\"}",
        "plaza_auth_duration_seconds_count",
        "plaza_join_duration_seconds_count",
        "plaza_tick_duration_seconds_count",
    ] {
        let (then, now) = (value(&before, series), value(&text, series));
        assert!(now > then || (now > 0.0 && !before.contains(series)), "{series} did not move: {then} -> {now}\n{text}");
    }
    assert!(value(&text, "process_resident_memory_bytes") > 1e6, "process memory is reported");
    assert!(text.contains("process_cpu_seconds_total "), "process CPU is reported");
    // Every socket has its tasks; the count is live, not a constant.
    assert!(value(&text, "plaza_runtime_alive_tasks") >= 2.0, "runtime tasks are reported:\n{text}");
    // Voice: its series are there before anyone speaks.
    for present in ["plaza_voice_bytes_total", "plaza_voice_streams"] {
        assert!(text.contains(present), "{present} missing");
    }
    assert!(!text.contains("=\"u_") && !text.contains("=\"r_"), "no user or room ids as label values");
}

/// The real binary and a real SIGTERM: not ready during the grace period,
/// sockets closed with 1001, a clean exit, and the chat and the refresh
/// tokens handed out still there after a restart.
#[tokio::test]
async fn sigterm_drains_the_binary_and_nothing_stored_is_lost() {
    let dir = std::env::temp_dir().join(format!("plaza-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_plaza-server"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--drain-grace-s", "1", "--data-dir"])
            .arg(&dir)
            .env("PLAZA_TOKEN_SECRET", "sigterm-test-secret-0123456789ab")
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let remote = RemoteServer { addr: format!("127.0.0.1:{port}").parse().unwrap() };
    let mut child = start();
    remote.wait_up().await;
    let (mut member, joined) = remote.member("Ada").await;
    let before = remote.guest("Bo").await;
    member.send(&ClientMessage::Chat(ChatSend { id: "last-words".into(), text: "goodnight".into() })).await;
    loop {
        if let ServerMessage::ChatAck(_) = member.recv().await {
            break;
        }
    }

    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = remote.http_get("/ready").await;
    assert_eq!(status, 503, "draining after SIGTERM: {body}");
    assert_eq!(member.ended(Duration::from_secs(5)).await, Ended::Closed(close::SERVER_DRAINING));
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exited.success(), "a drain is a clean exit: {exited}");

    let mut child = start();
    remote.wait_up().await;
    let (status, _, body) = remote.http_get(&format!("/api/v1/rooms/{}/chat", joined.room)).await;
    let refresh = format!(r#"{{"refresh_token":"{}"}}"#, before["refresh_token"].as_str().unwrap());
    let (refreshed, _, fresh) = remote.http("POST", "/api/v1/auth/refresh", &refresh).await;
    let (again, _, _) = remote.http("POST", "/api/v1/auth/refresh", &refresh).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("last-words"), "the acknowledged message survived the restart: {body}");
    // Signed in before the restart: still the same user after it.
    assert_eq!(refreshed, 200, "a refresh token outlives a restart: {fresh}");
    let fresh: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    assert_eq!(fresh["user_id"], before["user_id"]);
    assert_eq!(again, 401, "and still works only once");
}
