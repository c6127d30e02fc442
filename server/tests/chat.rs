//! Chat: stored before it is acknowledged, broadcast to the room, in the
//! history, and still there after the server is killed.

mod common;

use common::postgres::Postgres;
use common::*;
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use std::time::Duration;

#[tokio::test]
async fn chat_is_acked_then_broadcast_to_everyone_with_the_sender_stamped() {
    acked_then_broadcast(&TestServer::start().await).await;
}

#[tokio::test]
async fn chat_limits_and_history_limits_are_checked() {
    limits_checked(&TestServer::start().await).await;
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9() {
    acknowledged_survive_kill_9(None).await;
}

/// The same chat tests on PostgreSQL (a fresh cluster on loopback).
#[tokio::test]
async fn chat_on_postgres() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let config = plaza_server::ServerConfig { database_url: pg.url.clone(), ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    acked_then_broadcast(&server).await;
    limits_checked(&server).await;
    drop(server);
    acknowledged_survive_kill_9(Some(&pg.url)).await;
    // It really was Postgres that kept them.
    let stored: u64 = pg.query("SELECT count(*) FROM chat_messages").parse().unwrap();
    assert!(stored > 10, "{stored} rows in Postgres");
    let grants: u64 = pg.query("SELECT count(*) FROM refresh_tokens").parse().unwrap();
    assert!(grants >= 1, "{grants} refresh tokens in Postgres");
    // Instances sharing a new database that start at once (a cluster's
    // first start) each make the schema; Postgres's CREATE … IF NOT EXISTS
    // run twice at once fails one of them unless they take turns.
    for round in 0..6 {
        pg.query(&format!("CREATE DATABASE at_once_{round}"));
        let url = format!("{}/at_once_{round}", pg.url.rsplit_once('/').unwrap().0);
        let opened = futures_util::future::join_all((0..4).map(|_| plaza_server::store::Store::connect(&url))).await;
        for (i, store) in opened.into_iter().enumerate() {
            let store = store.unwrap_or_else(|e| panic!("round {round}, instance {i}: {e}"));
            store.insert_room(&format!("r{i}"), &format!("room {i}"), 40).await.unwrap();
        }
    }
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

async fn acked_then_broadcast(server: &TestServer) {
    for protocol in [Subprotocol::Binary, Subprotocol::Json] {
        let room = format!("cafe-{}", protocol.name());
        let (mut ada, joined) = server.member("Ada", protocol, &room).await;
        let (mut bob, _) = server.member("Bob", protocol, &room).await;
        let (mut eve, _) = server.member("Eve", protocol, "elsewhere").await;
        ada.send(&ClientMessage::Chat(ChatSend { id: "m-1".into(), text: "hello, plaza!".into() })).await;
        let mut acked = false;
        let mut echoed = None;
        while echoed.is_none() {
            match ada.recv().await {
                ServerMessage::ChatAck(a) => {
                    assert_eq!(a.id, "m-1");
                    acked = true;
                }
                ServerMessage::Chat(c) => {
                    assert!(acked, "the ack comes before the broadcast");
                    echoed = Some(c);
                }
                _ => {}
            }
        }
        let mine = echoed.unwrap();
        let seen = loop {
            if let ServerMessage::Chat(c) = bob.recv().await {
                break c;
            }
        };
        assert_eq!(seen, mine);
        assert_eq!(seen.room, joined.room);
        assert_eq!(seen.name, "Ada");
        assert!(seen.from.starts_with("u_"));
        while let Some(msg) = eve.try_recv(Duration::from_millis(200)).await {
            assert!(!matches!(msg, ServerMessage::Chat(_)), "chat never leaves its room");
        }
        let (status, _, body) = server.http("GET", &format!("/api/v1/rooms/{}/chat?limit=10", joined.room), "", &[]).await;
        assert_eq!(status, 200, "{body}");
        let history: Vec<ChatMessage> = serde_json::from_str(&body).unwrap();
        assert_eq!(history, vec![mine]);
    }
}

async fn limits_checked(server: &TestServer) {
    let (mut c, joined) = server.member("Ada", Subprotocol::Json, "limits").await;
    c.send(&ClientMessage::Chat(ChatSend { id: "m".into(), text: "x".repeat(501) })).await;
    let ServerMessage::Error(e) = c.recv().await else { panic!("error expected") };
    assert_eq!(e.code, ErrorCode::TooLong);
    for bad in ["0", "201", "ten", "-1"] {
        let (status, _, body) = server.http("GET", &format!("/api/v1/rooms/{}/chat?limit={bad}", joined.room), "", &[]).await;
        assert_eq!(status, 400, "limit={bad}: {body}");
        assert!(body.contains("1–200"), "{body}");
    }
    let (status, _, _) = server.http("GET", "/api/v1/rooms/r_nope/chat", "", &[]).await;
    assert_eq!(status, 404);
    let (mut lonely, _) = server.client("Lonely", Subprotocol::Json).await;
    lonely.send(&ClientMessage::Chat(ChatSend { id: "m".into(), text: "anyone?".into() })).await;
    let ServerMessage::Error(e) = lonely.recv().await else { panic!("error expected") };
    assert_eq!(e.code, ErrorCode::NotInRoom);
}

/// A chat storm, `kill -9`, restart on the same database: every message
/// that was acknowledged is in the history, and a refresh token handed out
/// before still works (once). SQLite in a temp data dir when
/// `database_url` is `None`.
async fn acknowledged_survive_kill_9(database_url: Option<&str>) {
    let backend = if database_url.is_some() { "pg" } else { "sqlite" };
    let dir = std::env::temp_dir().join(format!("plaza-kill9-{backend}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_plaza-server"));
        match database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        command
            .args(["--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&dir)
            .env("PLAZA_TOKEN_SECRET", "kill-nine-test-secret-0123456789")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let remote = RemoteServer { addr };
    let mut child = start();
    remote.wait_up().await;
    let (mut c, joined) = remote.member("Storm").await;
    let signed_in = remote.guest("Bo").await;
    let mut acked = Vec::new();
    for i in 0..200 {
        c.send(&ClientMessage::Chat(ChatSend { id: format!("m{i}"), text: format!("message {i}") })).await;
        // Read whatever has arrived so far without waiting.
        while let Some(msg) = c.try_recv(Duration::from_millis(1)).await {
            if let ServerMessage::ChatAck(a) = msg {
                acked.push(a.id);
            }
        }
    }
    // Kill it mid-storm: some messages are acked, some may not be.
    child.kill().unwrap();
    child.wait().unwrap();
    while let Some(msg) = c.try_recv(Duration::from_millis(50)).await {
        if let ServerMessage::ChatAck(a) = msg {
            acked.push(a.id);
        }
    }
    assert!(acked.len() > 10, "the storm got going: {} acks", acked.len());

    let mut child = start();
    remote.wait_up().await;
    let (status, _, body) = remote.http_get(&format!("/api/v1/rooms/{}/chat?limit=200", joined.room)).await;
    let refresh = format!(r#"{{"refresh_token":"{}"}}"#, signed_in["refresh_token"].as_str().unwrap());
    let (refreshed, _, fresh) = remote.http("POST", "/api/v1/auth/refresh", &refresh).await;
    let (again, _, _) = remote.http("POST", "/api/v1/auth/refresh", &refresh).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 200, "the room and its history outlive the restart: {body}");
    let history: Vec<ChatMessage> = serde_json::from_str(&body).unwrap();
    let stored: std::collections::HashSet<&str> = history.iter().map(|m| m.id.as_str()).collect();
    for id in &acked {
        assert!(stored.contains(id.as_str()), "acknowledged {id} was lost");
    }
    assert_eq!(refreshed, 200, "a refresh token outlives the crash: {fresh}");
    let fresh: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    assert_eq!(fresh["user_id"], signed_in["user_id"]);
    assert_eq!(again, 401, "and works once");
}
