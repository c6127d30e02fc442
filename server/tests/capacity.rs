//! The connection budgets: a WebSocket over `--max-connections`, and any
//! connection over what the open-file limit holds, get a quick `503
//! server_full` with `Retry-After`, and the place comes back when a
//! connection ends. One test: the gauges are the process's, one server's.

mod common;

use common::*;
use plaza_shared::codec::Subprotocol;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Sends `request` on a new connection and reads until the server closes
/// it (bounded): `(status, head, body)`.
async fn exchange(server: &TestServer, request: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out)).await.expect("the server closes a refused connection").unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head[9..12].parse().unwrap(), head.to_ascii_lowercase(), body.to_owned())
}

/// A WebSocket upgrade request (asking to close after the answer).
const UPGRADE: &str = "GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade, close\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
                       sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-protocol: plaza.v1.bin\r\n\r\n";

/// A WebSocket, or the status it was refused with.
async fn try_socket(server: &TestServer) -> Result<(), u16> {
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "plaza.v1.bin".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            drop(ws);
            Ok(())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The value of one series in the exposition text.
fn series(text: &str, name: &str) -> f64 {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit_once(' ')).and_then(|(_, v)| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn assert_server_full(status: u16, head: &str, body: &str) {
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("retry-after: 5"), "{head}");
    let error: serde_json::Value = serde_json::from_str(body).expect("a JSON error");
    assert_eq!(error["error"]["code"], "server_full", "{body}");
}

/// Polls `ok` for up to 5 s.
async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !ok().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_either_budget_a_connection_is_told_server_full_and_the_place_comes_back_when_one_ends() {
    let config = plaza_server::ServerConfig { max_connections: 2, max_tcp_connections: 4, ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    let (_, _, before) = server.http("GET", "/metrics", "", &[]).await;
    let (first, _) = server.client("first", Subprotocol::Binary).await;
    let (_second, _) = server.client("second", Subprotocol::Json).await;

    // A third WebSocket is over --max-connections: routed, told why.
    let (status, head, body) = exchange(&server, UPGRADE).await;
    assert_server_full(status, &head, &body);
    assert!(body.contains("limit of 2 connections"), "{body}");
    // HTTP is not a WebSocket: health (and sign-ins) go on.
    assert_eq!(server.http("GET", "/health", "", &[]).await.0, 200);

    // Two idle connections fill the descriptor budget (4 with the sockets).
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let health = "GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    eventually("the listener counts the idle connections", async || exchange(&server, health).await.0 == 503).await;
    // Over the descriptor budget the answer is canned: written before the
    // request is read, and the connection is closed after it.
    let (status, head, body) = exchange(&server, health).await;
    assert_server_full(status, &head, &body);
    assert!(head.contains("connection: close"), "{head}");

    drop(idle);
    eventually("the descriptor budget comes back", async || exchange(&server, health).await.0 == 200).await;
    // The first socket leaves: its place is free once its task ends.
    assert_eq!(try_socket(&server).await, Err(503));
    drop(first);
    eventually("the WebSocket place comes back", async || try_socket(&server).await.is_ok()).await;

    let (_, _, after) = server.http("GET", "/metrics", "", &[]).await;
    let counted = |reason: &str| {
        let name = format!(r#"plaza_connections_refused_total{{reason="{reason}"}}"#);
        series(&after, &name) - series(&before, &name)
    };
    assert!(counted("max_connections") >= 2.0, "the upgrade and the socket refused: {}", counted("max_connections"));
    assert!(counted("open_files") >= 2.0, "{}", counted("open_files"));
    assert_eq!(counted("draining"), 0.0);
    assert_eq!(series(&after, "plaza_ws_connection_limit"), 2.0);
    assert_eq!(series(&after, "plaza_tcp_connection_limit"), 4.0);
    let open = series(&after, "plaza_tcp_connections");
    assert!((1.0..=3.0).contains(&open), "the scrape, the second socket and maybe one closing: {open}");
}
