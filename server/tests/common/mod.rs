//! A real server on 127.0.0.1:0 and real WebSocket clients for tests.
#![allow(dead_code)]

pub mod postgres;
pub mod redis;
pub mod voice;

use futures_util::{SinkExt, StreamExt};
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub struct TestServer {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(plaza_server::ServerConfig::ephemeral()).await
    }

    pub async fn start_with(config: plaza_server::ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(plaza_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        TestServer { addr, stop: Some(stop) }
    }

    /// `(status, headers, body)` of a plain HTTP/1.1 request.
    pub async fn http(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        http_over(tokio::net::TcpStream::connect(self.addr).await.unwrap(), method, path, body, headers).await
    }

    pub async fn guest(&self, name: &str) -> serde_json::Value {
        let (status, _, body) = self.http("POST", "/api/v1/auth/guest", &format!(r#"{{"name":"{name}"}}"#), &[]).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub async fn token(&self, name: &str) -> String {
        self.guest(name).await["access_token"].as_str().unwrap().to_owned()
    }

    /// A client that said hello and got its welcome.
    pub async fn client(&self, name: &str, protocol: Subprotocol) -> (Client, Welcome) {
        let token = self.token(name).await;
        let mut c = Client::connect(self.addr, protocol).await;
        c.send(&ClientMessage::Hello(Hello { token, protocol: 1, resume: None })).await;
        match c.recv().await {
            ServerMessage::Welcome(w) => (c, w),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// A client in `room`, with the room's `joined`.
    /// Users in the room called `name`, from `GET /api/v1/rooms`.
    /// `plaza_ws_server_closes_total{reason}` now. The recorder is
    /// process-wide and tests run in parallel: compare with a value read
    /// before, as at least.
    pub async fn server_closes(&self, reason: &str) -> f64 {
        let (_, _, text) = self.http("GET", "/metrics", "", &[]).await;
        server_closes_in(&text, reason)
    }

    pub async fn room_users(&self, name: &str) -> Option<u64> {
        let (_, _, body) = self.http("GET", "/api/v1/rooms", "", &[]).await;
        room_users_in(&body, name)
    }

    pub async fn member(&self, name: &str, protocol: Subprotocol, room: &str) -> (Client, Joined) {
        let (mut c, _) = self.client(name, protocol).await;
        c.send(&ClientMessage::Join(Join { room: room.into() })).await;
        match c.recv().await {
            ServerMessage::Joined(j) => (c, j),
            other => panic!("expected joined, got {other:?}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server running as its own process (for kill -9 tests).
pub struct RemoteServer {
    pub addr: SocketAddr,
}

impl RemoteServer {
    /// Waits (up to 10 s) until `/health` answers.
    pub async fn wait_up(&self) {
        for _ in 0..200 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(self.addr).await
                && s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.is_ok()
            {
                let mut out = String::new();
                if s.read_to_string(&mut out).await.is_ok() && out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server at {} never came up", self.addr);
    }

    fn as_test(&self) -> TestServer {
        TestServer { addr: self.addr, stop: None }
    }

    pub async fn http_get(&self, path: &str) -> (u16, String, String) {
        self.as_test().http("GET", path, "", &[]).await
    }

    pub async fn member(&self, name: &str) -> (Client, Joined) {
        self.as_test().member(name, Subprotocol::Json, "storm").await
    }

    pub async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        self.as_test().http(method, path, body, &[]).await
    }

    pub async fn guest(&self, name: &str) -> serde_json::Value {
        self.as_test().guest(name).await
    }
}

/// `plaza_ws_server_closes_total{reason}` in a `/metrics` text (every
/// reason is there from the start, at 0).
pub fn server_closes_in(metrics: &str, reason: &str) -> f64 {
    let series = format!("plaza_ws_server_closes_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {series}in /metrics"))
}

/// Users in the room called `name`, from a `GET /api/v1/rooms` body.
pub fn room_users_in(rooms: &str, name: &str) -> Option<u64> {
    let rooms: Vec<serde_json::Value> = serde_json::from_str(rooms).unwrap();
    rooms.iter().find(|r| r["name"] == name).and_then(|r| r["users"].as_u64())
}

/// `(status, headers, body)` of a plain HTTP/1.1 request on `s`.
pub async fn http_over(mut s: tokio::net::TcpStream, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub protocol: Subprotocol,
}

/// How a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Client {
    pub async fn connect(addr: SocketAddr, protocol: Subprotocol) -> Client {
        Client::over(tokio::net::TcpStream::connect(addr).await.unwrap(), protocol).await
    }

    /// A client whose socket takes in only a few KiB before it stops the
    /// sender: not reading fills the server's side quickly.
    pub async fn connect_small_buffer(addr: SocketAddr, protocol: Subprotocol) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Client::over(socket.connect(addr).await.unwrap(), protocol).await
    }

    /// A client on a connection made elsewhere (another network namespace).
    pub async fn over(stream: tokio::net::TcpStream, protocol: Subprotocol) -> Client {
        Client::upgrade(stream, protocol, &[]).await.expect("upgrade").0
    }

    /// The upgrade with extra request headers; the client and the 101's
    /// headers, or the refusal's status and body.
    pub async fn upgrade(stream: tokio::net::TcpStream, protocol: Subprotocol, headers: &[(&str, &str)]) -> Result<(Client, axum::http::HeaderMap), (u16, String)> {
        let addr = stream.peer_addr().unwrap();
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", protocol.name().parse().unwrap());
        for (name, value) in headers {
            req.headers_mut().insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await {
            Ok((ws, response)) => {
                assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), protocol.name());
                Ok((Client { ws, protocol }, response.headers().clone()))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                Err((response.status().as_u16(), body))
            }
            Err(e) => panic!("upgrade: {e}"),
        }
    }

    /// Says hello (resuming `resume` if given) and returns the welcome.
    pub async fn hello(&mut self, token: &str, resume: Option<&str>) -> Welcome {
        self.send(&ClientMessage::Hello(Hello { token: token.into(), protocol: 1, resume: resume.map(Into::into) })).await;
        match self.recv().await {
            ServerMessage::Welcome(w) => w,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, msg: &ClientMessage) {
        let frame = match self.protocol {
            Subprotocol::Binary => Message::Binary(plaza_shared::codec::binary::encode_client(msg).into()),
            Subprotocol::Json => Message::Text(plaza_shared::codec::json::encode(msg).into()),
        };
        self.ws.send(frame).await.unwrap();
    }

    pub async fn send_raw(&mut self, frame: Message) {
        let _ = self.ws.send(frame).await;
    }

    /// Sends, saying whether the socket took it (false once the server has
    /// reset the connection).
    pub async fn try_send(&mut self, msg: &ClientMessage) -> bool {
        let frame = match self.protocol {
            Subprotocol::Binary => Message::Binary(plaza_shared::codec::binary::encode_client(msg).into()),
            Subprotocol::Json => Message::Text(plaza_shared::codec::json::encode(msg).into()),
        };
        self.ws.send(frame).await.is_ok()
    }

    /// The next message within 2 s (pings and pongs skipped).
    pub async fn recv(&mut self) -> ServerMessage {
        self.try_recv(Duration::from_secs(2)).await.expect("a message within 2 s")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match frame.ok()? {
                Message::Binary(b) => return Some(plaza_shared::codec::binary::decode_server(&b).expect("valid binary")),
                Message::Text(t) => return Some(plaza_shared::codec::json::decode(t.as_bytes()).expect("valid JSON")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until the socket ends (within `wait`), skipping messages.
    pub async fn ended(&mut self, wait: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("socket still open after {wait:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Ended::Dropped,
                Ok(Some(Ok(Message::Close(frame)))) => return Ended::Closed(frame.map(|f| u16::from(f.code)).unwrap_or(1005)),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next delta, skipping anything else, within 2 s.
    pub async fn next_delta(&mut self) -> Delta {
        loop {
            if let ServerMessage::Delta(d) = self.recv().await {
                return d;
            }
        }
    }
}

pub fn pose_at(x: f32, z: f32) -> plaza_shared::pose::Pose {
    plaza_shared::pose::Pose { p: [x, 0.0, z], r: [0.0, 0.0, 0.0, 1.0], head: None, hands: None }
}

pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}
