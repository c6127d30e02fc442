//! A link that goes silent in a busy room, for real: the server and the
//! member on two network namespaces joined by a veth pair, and the member's
//! end of the link taken down (nothing delivered, nothing acknowledged, no
//! reset: Wi-Fi lost). The member's queue fills and the room gives up on it
//! before its client has given up on the silence; its seat must still be
//! there for the resume. Before session 21 the room closed it with 4009 and
//! let the seat go, 7.6 s into the silence, and the resume got a new
//! session (docs/benchmarks.md).
//!
//! Needs root (network namespaces); without it the test says so and passes
//! nothing off as checked.

mod common;

use common::{Client, http_over, room_users_in, server_closes_in};
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// Two namespaces and a veth pair between them, removed on drop.
struct Link {
    server_ns: String,
    member_ns: String,
    member_end: String,
}

const SERVER_IP: &str = "10.231.0.1";
const MEMBER_IP: &str = "10.231.0.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

impl Link {
    fn new() -> Result<Link, String> {
        let id = std::process::id();
        let link = Link { server_ns: format!("pzsl-s{id}"), member_ns: format!("pzsl-m{id}"), member_end: format!("pzm{id}") };
        let server_end = format!("pzs{id}");
        ip(&["netns", "add", &link.server_ns])?;
        ip(&["netns", "add", &link.member_ns])?;
        ip(&["link", "add", &server_end, "type", "veth", "peer", "name", &link.member_end])?;
        ip(&["link", "set", &server_end, "netns", &link.server_ns])?;
        ip(&["link", "set", &link.member_end, "netns", &link.member_ns])?;
        ip(&["-n", &link.server_ns, "addr", "add", &format!("{SERVER_IP}/24"), "dev", &server_end])?;
        ip(&["-n", &link.member_ns, "addr", "add", &format!("{MEMBER_IP}/24"), "dev", &link.member_end])?;
        ip(&["-n", &link.server_ns, "link", "set", &server_end, "up"])?;
        ip(&["-n", &link.member_ns, "link", "set", &link.member_end, "up"])?;
        Ok(link)
    }

    /// The member's end down (`false`) or up again: while it is down,
    /// nothing crosses and nothing says so.
    fn member_end_up(&self, up: bool) {
        ip(&["-n", &self.member_ns, "link", "set", &self.member_end, if up { "up" } else { "down" }]).unwrap();
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it makes live
    /// there.
    fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network)).expect("setns");
            f()
        })
        .join()
        .unwrap()
    }

    async fn member_connect(&self, addr: SocketAddr) -> tokio::net::TcpStream {
        let ns = self.member_ns.clone();
        // The thread that enters the namespace blocks: off the runtime.
        let connect = move || Link::inside(&ns, move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect from the member's namespace"));
        let stream = tokio::task::spawn_blocking(connect).await.unwrap();
        stream.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(stream).unwrap()
    }

    async fn http(&self, addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let (status, _, body) = http_over(self.member_connect(addr).await, method, path, body, &[]).await;
        (status, body)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The veth pair goes with its namespaces.
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.member_ns]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_link_goes_silent_keeps_its_seat_for_its_resume() {
    let link = match Link::new() {
        Ok(link) => link,
        Err(e) => {
            eprintln!("SKIPPED: needs network namespaces (root): {e}");
            return;
        }
    };
    // The server listens inside its namespace.
    let listener = Link::inside(&link.server_ns, || std::net::TcpListener::bind((SERVER_IP, 0)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = plaza_server::ServerConfig { bots: 24, bots_room: "busy".into(), ..plaza_server::ServerConfig::ephemeral() };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plaza_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rooms) = link.http(addr, "GET", "/api/v1/rooms", "").await;
        if room_users_in(&rooms, "busy") == Some(24) {
            break;
        }
        assert!(Instant::now() < deadline, "the bots never filled the room: {rooms}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, guest) = link.http(addr, "POST", "/api/v1/auth/guest", r#"{"name":"Roamer"}"#).await;
    assert_eq!(status, 200, "{guest}");
    let guest: serde_json::Value = serde_json::from_str(&guest).unwrap();
    let token = guest["access_token"].as_str().unwrap().to_owned();
    let mut member = Client::over(link.member_connect(addr).await, Subprotocol::Json).await;
    let welcome = member.hello(&token, None).await;
    member.send(&ClientMessage::Join(Join { room: "busy".into() })).await;
    let ServerMessage::Joined(joined) = member.recv().await else { panic!("joined expected") };
    member.next_delta().await;

    // Silence, longer than the room takes to give up on a full queue (3 s
    // of queue, then 40 missed ticks) and than the client's 8 s.
    link.member_end_up(false);
    tokio::time::sleep(Duration::from_secs(12)).await;
    link.member_end_up(true);
    // The old socket is left as it is: a client that gave up on it.

    let (_, metrics) = link.http(addr, "GET", "/metrics", "").await;
    assert_eq!(server_closes_in(&metrics, "silent_link"), 1.0, "the room let the silent socket go as silent:\n{metrics}");
    assert_eq!(server_closes_in(&metrics, "too_slow"), 0.0, "and did not close it as a slow reader");

    let mut back = Client::over(link.member_connect(addr).await, Subprotocol::Json).await;
    let again = back.hello(&token, Some(&welcome.session)).await;
    assert_eq!(again.session, welcome.session, "the seat was held: the same session");
    let ServerMessage::Joined(state) = back.recv().await else { panic!("the room's state expected after a resume") };
    assert_eq!(state.you, joined.you, "the same avatar");
    assert_eq!(state.avatars.len(), 24, "the bots, not itself");
}
