//! The binary's JSON logs: one object a line, with the ids that matter.

mod common;

use common::*;
use std::io::Read;

#[tokio::test]
async fn log_lines_are_json_with_request_user_room_and_session_ids() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("plaza-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plaza-server"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--log-format", "json", "--data-dir"])
        .arg(&dir)
        .env("PLAZA_TOKEN_SECRET", "log-test-secret-0123456789abcdef")
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let remote = RemoteServer { addr: format!("127.0.0.1:{port}").parse().unwrap() };
    remote.wait_up().await;
    let probe = TestServer { addr: remote.addr, stop: None };
    let (status, _, _) = probe.http("POST", "/api/v1/auth/guest", r#"{"name":"Logger"}"#, &[("x-request-id", "req-for-the-log-test")]).await;
    assert_eq!(status, 200);
    let (mut c, joined) = probe.member("Logger", plaza_shared::codec::Subprotocol::Json, "logroom").await;
    c.send(&plaza_shared::messages::ClientMessage::Leave).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{out}");
    for line in &lines {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(line.get(key).is_some(), "`{key}` missing: {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l["request_id"] == "req-for-the-log-test" && l["message"] == "guest signed in" && l["user_id"].is_string()),
        "a guest sign-in line with the request id: {out}"
    );
    let join = lines.iter().find(|l| l["message"] == "joined room").unwrap_or_else(|| panic!("no join line: {out}"));
    assert_eq!(join["room_id"], joined.room.as_str());
    assert!(join["user_id"].as_str().is_some_and(|u| u.starts_with("u_")), "{join}");
    assert!(join["session_id"].as_str().is_some_and(|s| !s.is_empty()), "{join}");
    assert!(!out.contains("log-test-secret") && !out.contains("access_token"), "no secrets in logs");
}
