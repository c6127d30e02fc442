//! The network task against a real server, through a TCP proxy the test can
//! cut: sign in, join, a dropped connection resumed with the same seat, an
//! in-band token refresh, a draining server rejoined afresh, chat said
//! while away read back after the reconnect, poses paced to the room's
//! tick (and to the new room's after a move), and a server that takes no
//! hello from the upgrade's headers.

mod common;

use common::{RestartableServer, server};
use plaza_client::network::session::{self, SessionConfig};
use plaza_client::network::{ConnectionStatus, NetCommand, NetEvent, NetInput, Notice};
use plaza_shared::pose::Pose;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Forwards 127.0.0.1:<port> to the server; `cut` kills every open
/// connection without a goodbye (a network drop).
struct Proxy {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// While set, connections are accepted and closed at once (the network is down).
    down: Arc<AtomicBool>,
    /// While set, what the client sends is swallowed (a link dying one way).
    swallow: Arc<AtomicBool>,
    /// Connections opened before this count stop carrying anything either
    /// way and stay open (a link gone silent: Wi-Fi lost, a cable pulled).
    frozen_before: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    /// While set, the hello headers of upgrade requests are taken out (a
    /// server from before they existed never sees them); counts the lines.
    strip_hello: Arc<AtomicBool>,
    hello_lines_stripped: Arc<AtomicU64>,
}

/// Passes the request head from `from` to `to` without its hello headers
/// (plaza_shared::upgrade_hello), counting the lines taken out.
async fn strip_hello_headers(from: &mut TcpStream, to: &mut TcpStream, stripped: &AtomicU64) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let (request, rest) = head.split_at(end);
    let request = String::from_utf8_lossy(request);
    let mut kept = String::new();
    for line in request.split_inclusive("\r\n") {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if [plaza_shared::upgrade_hello::AUTHORIZATION, plaza_shared::upgrade_hello::RESUME, plaza_shared::upgrade_hello::JOIN].contains(&name.as_str()) {
            stripped.fetch_add(1, Ordering::SeqCst);
        } else {
            kept.push_str(line);
        }
    }
    to.write_all(kept.as_bytes()).await?;
    to.write_all(rest).await
}

/// Forwards `from` to `to` until either ends, or for good once `frozen`
/// (holding both open, carrying nothing).
async fn forward(mut from: impl AsyncReadExt + Unpin, mut to: impl AsyncWriteExt + Unpin, drop_it: impl Fn() -> bool, frozen: impl Fn() -> bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if frozen() {
            return std::future::pending().await;
        }
        if n == 0 {
            return Ok(());
        }
        if !drop_it() {
            to.write_all(&buf[..n]).await?;
        }
    }
}

impl Proxy {
    async fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (down, swallow): (Arc<AtomicBool>, Arc<AtomicBool>) = Default::default();
        let (frozen_before, opened): (Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
        let (strip_hello, hello_lines_stripped): (Arc<AtomicBool>, Arc<AtomicU64>) = Default::default();
        let (tasks, is_down, swallowing, freezes, count) = (open.clone(), down.clone(), swallow.clone(), frozen_before.clone(), opened.clone());
        let (stripping, stripped) = (strip_hello.clone(), hello_lines_stripped.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let number = count.fetch_add(1, Ordering::SeqCst) + 1;
                let (swallowing, freezes, stripped) = (swallowing.clone(), freezes.clone(), stripped.clone());
                let strip = stripping.load(Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(server).await else { return };
                    let mut inbound = inbound;
                    if strip && strip_hello_headers(&mut inbound, &mut outbound, &stripped).await.is_err() {
                        return;
                    }
                    let ((from_client, to_client), (from_server, to_server)) = (inbound.into_split(), outbound.into_split());
                    let frozen = || freezes.load(Ordering::SeqCst) >= number;
                    tokio::select! {
                        _ = forward(from_client, to_server, || swallowing.load(Ordering::SeqCst), frozen) => {}
                        _ = forward(from_server, to_client, || false, frozen) => {}
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        });
        Proxy { addr, open, down, swallow, frozen_before, opened, strip_hello, hello_lines_stripped }
    }

    /// From now on the proxy plays a server that takes no hello from the
    /// upgrade's headers.
    fn strip_hello_headers(&self) {
        self.strip_hello.store(true, Ordering::SeqCst);
    }

    /// Every open connection goes silent both ways (at its next read);
    /// new ones carry on.
    fn freeze(&self) {
        self.frozen_before.store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn swallow(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones until [`Proxy::up`].
    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut();
    }

    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn cut(&self) {
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

struct Client {
    poses: tokio::sync::watch::Sender<Option<Pose>>,
    events: mpsc::Receiver<NetEvent>,
    commands: mpsc::Sender<NetCommand>,
}

impl Client {
    fn start(server: String, room: &str) -> Client {
        Client::start_with(SessionConfig::new(server, room, "Tester"))
    }

    /// Through `proxy` into `room`, taking `silence_limit` of silence for a dead link.
    fn through(proxy: &Proxy, room: &str, silence_limit: Duration) -> Client {
        Client::start_with(SessionConfig { silence_limit, ..SessionConfig::new(format!("http://{}", proxy.addr), room, "Tester") })
    }

    fn start_with(config: SessionConfig) -> Client {
        let (commands, command_rx) = mpsc::channel(64);
        let (poses, pose_rx) = tokio::sync::watch::channel(None);
        let (event_tx, events) = mpsc::channel(256);
        tokio::spawn(session::run(config, NetInput { commands: command_rx, pose: pose_rx, voice: None }, event_tx));
        Client { poses, events, commands }
    }

    /// Says `text` as chat `id` and waits until the server has stored it.
    async fn say(&mut self, id: &str, text: &str) {
        self.commands.send(NetCommand::Chat { id: id.into(), text: text.into() }).await.unwrap();
        self.until(Duration::from_secs(10), |e| matches!(e, NetEvent::ChatAck(acked) if acked == id)).await;
    }

    /// The next chat history page (after a join), and what came before it.
    async fn history(&mut self, wait: Duration) -> (Vec<String>, Vec<NetEvent>) {
        let (NetEvent::ChatHistory(page), before) = self.until(wait, |e| matches!(e, NetEvent::ChatHistory(_))).await else { unreachable!() };
        (page.into_iter().map(|m| m.text).collect(), before)
    }

    /// Every event for `wait`.
    async fn for_a_while(&mut self, wait: Duration) -> Vec<NetEvent> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            seen.push(event.expect("the network task stopped"));
        }
        seen
    }

    /// Events until `want` matches one (within `wait`); returns it and what came before.
    async fn until(&mut self, wait: Duration, want: impl Fn(&NetEvent) -> bool) -> (NetEvent, Vec<NetEvent>) {
        let mut before = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if want(&e) => return (e, before),
                Ok(Some(e)) => before.push(e),
                Ok(None) => panic!("the network task stopped; saw {before:?}"),
                Err(_) => panic!("not within {wait:?}; saw {before:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_dropped_connection_resumes_the_same_seat_and_the_token_is_refreshed_in_band() {
    // 92 s tokens: the client refreshes 90 s ahead, so about 2 s in.
    let config = plaza_server::ServerConfig { access_ttl: Duration::from_secs(92), ..plaza_server::ServerConfig::ephemeral() };
    let (addr, _stop) = server(config).await;
    let proxy = Proxy::start(addr).await;
    let mut client = Client::start(format!("http://{}", proxy.addr), "resume-room");

    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    client.poses.send(Some(Pose { p: [1.0, 0.0, 2.0], ..Pose::default() })).unwrap();

    // The in-band refresh, then the socket still answers pings.
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::TokenRefreshed)).await;
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Rtt(_))).await;

    proxy.cut();
    let (_, before) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    let notices: Vec<&Notice> = before.iter().filter_map(|e| if let NetEvent::Notice(n) = e { Some(n) } else { None }).collect();
    assert!(matches!(notices.first(), Some(Notice::Reconnecting { attempt: 1 })), "{before:?}");
    assert!(notices.contains(&&Notice::Reconnected { resumed: true }), "resumed: {before:?}");
    assert!(before.iter().any(|e| matches!(e, NetEvent::Status(ConnectionStatus::Reconnecting { .. }))));
    let status = before.iter().rev().find_map(|e| if let NetEvent::Status(s) = e { Some(s.clone()) } else { None });
    assert!(matches!(status, Some(ConnectionStatus::InRoom { .. })), "{status:?}");
}

/// A server from before the hello could ride in the upgrade request (the
/// proxy takes the headers out): the client sends its hello frame, gets in,
/// and a dropped socket still resumes its seat.
#[tokio::test]
async fn a_server_that_takes_no_hello_from_the_upgrade_gets_the_hello_frame_and_resumes_work() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    proxy.strip_hello_headers();
    let mut client = Client::start(format!("http://{}", proxy.addr), "older-room");
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    proxy.cut();
    let (_, before) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    assert!(before.iter().any(|e| matches!(e, NetEvent::Notice(Notice::Reconnected { resumed: true }))), "the seat resumed: {before:?}");
    // Authorization and Plaza-Join on both sockets, Plaza-Resume on the
    // second: the client offered them, and got in without them.
    assert_eq!(proxy.hello_lines_stripped.load(Ordering::SeqCst), 5);
}

/// The room's history comes after every join: what was said before we
/// came, and after a reconnect what was said while we were away (the dead
/// socket never carried it).
#[tokio::test]
async fn chat_said_while_away_comes_back_with_the_history_after_the_reconnect() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    let mut other = Client::start(format!("http://{addr}"), "away-room");
    other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    other.say("b1", "before you came").await;

    let mut client = Client::start(format!("http://{}", proxy.addr), "away-room");
    let (first, before) = client.history(Duration::from_secs(10)).await;
    assert!(before.iter().any(|e| matches!(e, NetEvent::Joined(_))), "the history follows the join: {before:?}");
    assert_eq!(first, ["before you came"]);

    proxy.down();
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Notice(Notice::Reconnecting { .. }))).await;
    other.say("b2", "while you were away").await;
    proxy.up();
    let (second, before) = client.history(Duration::from_secs(30)).await;
    assert!(before.iter().any(|e| matches!(e, NetEvent::Notice(Notice::Reconnected { resumed: true }))), "the seat resumed: {before:?}");
    assert!(!before.iter().any(|e| matches!(e, NetEvent::Chat(c) if c.id == "b2")), "the cut socket could not have carried it");
    assert_eq!(second, ["before you came", "while you were away"]);
}

/// A chat the dying socket swallowed (no ack came) is sent again once the
/// client is back in the room, and reaches the room once.
#[tokio::test]
async fn a_chat_the_dead_socket_swallowed_is_sent_again_after_the_reconnect() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    let mut other = Client::start(format!("http://{addr}"), "resend-room");
    other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    let mut client = Client::start(format!("http://{}", proxy.addr), "resend-room");
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;

    proxy.swallow(true);
    client.commands.send(NetCommand::Chat { id: "c1".into(), text: "anyone there?".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.swallow(false);
    proxy.cut();
    let (_, before) = client.until(Duration::from_secs(30), |e| matches!(e, NetEvent::ChatAck(id) if id == "c1")).await;
    assert!(before.iter().any(|e| matches!(e, NetEvent::Notice(Notice::Reconnected { .. }))), "acked only after the reconnect: {before:?}");
    let (NetEvent::Chat(heard), _) = other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Chat(_))).await else { unreachable!() };
    assert_eq!(heard.text, "anyone there?");
    // Once: nothing more of it within a tick or two.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(event) = other.events.try_recv() {
        assert!(!matches!(&event, NetEvent::Chat(c) if c.id == "c1"), "heard twice");
    }
}

/// A chat lost on a socket that stays up (here the link drops it; the
/// server's store failing or the rate limit look the same: no ack) is sent
/// again on the same socket, and reaches the room once.
#[tokio::test]
async fn a_chat_with_no_ack_is_sent_again_on_the_same_socket() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    let mut other = Client::start(format!("http://{addr}"), "retry-room");
    other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    let mut client = Client::start(format!("http://{}", proxy.addr), "retry-room");
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;

    proxy.swallow(true);
    client.commands.send(NetCommand::Chat { id: "r1".into(), text: "hello again?".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.swallow(false);
    let (_, before) = client.until(Duration::from_secs(20), |e| matches!(e, NetEvent::ChatAck(id) if id == "r1")).await;
    assert!(!before.iter().any(|e| matches!(e, NetEvent::Notice(_) | NetEvent::Status(_))), "no reconnect was needed: {before:?}");
    let (NetEvent::Chat(heard), _) = other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Chat(_))).await else { unreachable!() };
    assert_eq!(heard.text, "hello again?");
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(event) = other.events.try_recv() {
        assert!(!matches!(&event, NetEvent::Chat(c) if c.id == "r1"), "heard twice");
    }
}

/// A chat the server never acknowledges fails after three tries, with a
/// reason the player can act on, instead of staying "sending" for good.
#[tokio::test]
async fn a_chat_never_acknowledged_fails_after_three_tries() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    // Swallowing what the client sends also swallows its pings: a silence
    // limit past the test's end keeps this socket, so the chat's tries all
    // go on it (as with a server that answers pings but stores nothing).
    let mut client = Client::through(&proxy, "lost-room", Duration::from_secs(60));
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;

    proxy.swallow(true);
    let sent = std::time::Instant::now();
    client.commands.send(NetCommand::Chat { id: "f1".into(), text: "into the void".into() }).await.unwrap();
    let (failed, before) = client.until(Duration::from_secs(25), |e| matches!(e, NetEvent::ChatFailed { id, .. } if id == "f1")).await;
    let NetEvent::ChatFailed { reason, .. } = failed else { unreachable!() };
    assert!(reason.contains("3 tries"), "{reason}");
    assert!(sent.elapsed() >= Duration::from_secs(14), "three waits of 5 s: {:?}", sent.elapsed());
    assert!(!before.iter().any(|e| matches!(e, NetEvent::ChatAck(_))), "{before:?}");
}

#[tokio::test]
async fn the_resumed_joined_keeps_the_avatar_id() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    let mut client = Client::start(format!("http://{}", proxy.addr), "seat-room");
    let (NetEvent::Joined(first), _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await else { unreachable!() };
    proxy.cut();
    let (NetEvent::Joined(second), _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await else { unreachable!() };
    assert_eq!(second.you, first.you, "the same seat");
    assert_eq!(second.room, first.room);
}

/// A link gone silent both ways without a reset (Wi-Fi lost, a cable
/// pulled): TCP would keep the socket for many minutes. The client takes
/// it for dead after its silence limit, opens a new one and resumes its
/// seat.
#[tokio::test]
async fn a_link_gone_silent_is_noticed_and_the_seat_resumed_on_a_new_socket() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    let mut client = Client::through(&proxy, "silent-room", Duration::from_secs(2));
    let (NetEvent::Joined(first), _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await else { unreachable!() };
    client.poses.send(Some(Pose { p: [1.0, 0.0, 2.0], ..Pose::default() })).unwrap();
    // Alone in the room no deltas come, only answers to the pings the
    // silence sends: a quiet link that is alive stays up.
    let quiet = client.for_a_while(Duration::from_secs(3)).await;
    assert!(quiet.iter().filter(|e| matches!(e, NetEvent::Rtt(_))).count() >= 2, "probes answered: {quiet:?}");
    assert!(!quiet.iter().any(|e| matches!(e, NetEvent::Status(ConnectionStatus::Reconnecting { .. }))), "{quiet:?}");

    proxy.freeze();
    let (NetEvent::Joined(second), before) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await else { unreachable!() };
    assert_eq!(second.you, first.you, "the same seat, resumed");
    let reason = before.iter().find_map(|e| if let NetEvent::Status(ConnectionStatus::Reconnecting { reason, .. }) = e { Some(reason.clone()) } else { None });
    assert_eq!(reason.as_deref(), Some("nothing from the server for 2 s"), "{before:?}");
    assert!(before.iter().any(|e| matches!(e, NetEvent::Notice(Notice::Reconnected { resumed: true }))), "{before:?}");
}

#[tokio::test]
async fn a_draining_server_is_rejoined_afresh_once_it_is_back() {
    let mut server = RestartableServer::start(plaza_server::ServerConfig { drain_grace: Duration::from_millis(50), ..plaza_server::ServerConfig::ephemeral() }).await;
    let mut client = Client::start(server.base(), "drain-room");
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    server.stop().await;
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Notice(Notice::ServerRestarting))).await;
    // The server comes back on the same port (same secret: tokens stay good).
    server.restart().await;
    let (_, before) = client.until(Duration::from_secs(30), |e| matches!(e, NetEvent::Joined(_))).await;
    assert!(before.iter().any(|e| matches!(e, NetEvent::Notice(Notice::Reconnected { resumed: false }))), "rejoined afresh: {before:?}");
}

/// A restart just when the token wants refreshing: the refresh that gets no
/// answer keeps the tokens, and the one after the restart (a new server,
/// the same store) keeps the player the same user.
#[tokio::test]
async fn a_refresh_across_a_restart_keeps_the_same_user() {
    let dir = std::env::temp_dir().join(format!("plaza-client-refresh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 92 s tokens: the client wants a refresh about 2 s in.
    let config = plaza_server::ServerConfig {
        access_ttl: Duration::from_secs(92),
        drain_grace: Duration::from_millis(50),
        database_url: format!("sqlite://{}", dir.join("plaza.db").display()),
        ..plaza_server::ServerConfig::ephemeral()
    };
    let mut server = RestartableServer::start(config).await;
    let mut client = Client::start(server.base(), "refresh-room");
    let (NetEvent::Welcome { user_id: first }, _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Welcome { .. })).await else { unreachable!() };
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    server.stop().await;
    // Down past the refresh's time: its tries get no answer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart().await;
    let (_, before) = client.until(Duration::from_secs(30), |e| matches!(e, NetEvent::TokenRefreshed)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let welcomes: Vec<&str> = before.iter().filter_map(|e| if let NetEvent::Welcome { user_id } = e { Some(user_id.as_str()) } else { None }).collect();
    assert!(!welcomes.is_empty(), "back in after the restart: {before:?}");
    assert!(welcomes.iter().all(|&id| id == first), "still {first} after the restart, not a new guest: {welcomes:?}");
}

#[tokio::test]
async fn a_pose_handed_over_every_frame_goes_out_once_a_tick_just_before_it() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let base = format!("http://{addr}");
    let mut sender = Client::start(base.clone(), "pace-room");
    let (NetEvent::Joined(joined), _) = sender.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await else { unreachable!() };
    let mut watcher = Client::start(base, "pace-room");
    watcher.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;

    // The watcher walks too: the sender learns the tick grid from the
    // deltas it gets, and with nobody else moving it gets none.
    let watcher_poses = watcher.poses.clone();
    let walker = tokio::spawn(async move {
        for i in 0..300u16 {
            if watcher_poses.send(Some(Pose { p: [0.0, 0.0, f32::from(i) * 0.01], ..Pose::default() })).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(16)).await;
        }
    });
    // 200 changed poses a second for 4 s (a fast frame rate): far over the
    // server's 60 messages a second if each went out.
    let poses = sender.poses.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..800u16 {
            if poses.send(Some(Pose { p: [f32::from(i) * 0.001, 0.0, 0.0], ..Pose::default() })).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (seen, phase) = watch_poses(&mut watcher, joined.you, Duration::from_secs(4)).await;
    feeder.abort();
    walker.abort();
    while let Ok(event) = sender.events.try_recv() {
        assert!(!matches!(event, NetEvent::ServerError(_)), "the server objected: {event:?}");
    }

    // One pose a tick at most, and about every tick one.
    assert!(seen.windows(2).all(|w| w[1].0 > w[0].0), "each delta carries a newer pose");
    // (The server keeps one pose a seat per tick; that the client sends no
    // more than one is what the absence of `rate_limited` above shows.)
    assert!((50..=85).contains(&seen.len()), "{} poses in 4 s at 20 ticks a second", seen.len());
    // Sent in the half period before the tick that carried them (a random
    // phase would put half of them there); the first second learns the grid.
    let (before_tick, settled) = sent_just_before_tick(&seen, phase.expect("the watcher's deltas show the tick grid"));
    eprintln!("paced: {} poses seen, {before_tick} of {settled} settled ones sent within 25 ms before the tick", seen.len());
    assert!(before_tick * 10 >= settled * 8, "{before_tick} of {settled} sent within 25 ms before the tick");
}

/// A client that walks about (a pose every 16 ms) and whose events nobody
/// reads, until the task is aborted: it gives the others in its room deltas
/// to learn the tick grid from.
fn walking(client: Client) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The whole client moves in: its command sender too, without which
        // the network task stops.
        let mut client = client;
        for i in 0u32.. {
            if client.poses.send(Some(Pose { p: [0.0, 0.0, (i % 500) as f32 * 0.01], ..Pose::default() })).is_err() {
                return;
            }
            let step = tokio::time::sleep(Duration::from_millis(16));
            tokio::pin!(step);
            loop {
                tokio::select! {
                    _ = &mut step => break,
                    event = client.events.recv() => if event.is_none() { return },
                }
            }
        }
    })
}

/// Where the ticks of `client`'s room fall (µs past the epoch, modulo the
/// 50 ms period), from the deltas it gets for `wait`.
async fn tick_phase(client: &mut Client, wait: Duration) -> Option<u64> {
    let mut grid = plaza_shared::pacing::TickGrid::new(50_000, plaza_shared::pacing::GRID_WINDOW);
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, client.events.recv()).await {
        if let NetEvent::Delta(delta) = event {
            grid.observe(unix_us(), delta.tick);
        }
    }
    grid.phase_us()
}

/// What `watcher` sees of avatar `sender` for `wait`: (its `t` in ms, our
/// arrival in µs) per delta that carries it, and where the ticks of the
/// watcher's room fall.
async fn watch_poses(watcher: &mut Client, sender: plaza_shared::messages::AvatarId, wait: Duration) -> (Vec<(u64, u64)>, Option<u64>) {
    let mut seen = Vec::new();
    let mut grid = plaza_shared::pacing::TickGrid::new(50_000, plaza_shared::pacing::GRID_WINDOW);
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, watcher.events.recv()).await {
        if let NetEvent::Delta(delta) = event {
            let arrival = unix_us();
            grid.observe(arrival, delta.tick);
            if let Some(t) = delta.avatars.iter().find(|a| a.id == sender).and_then(|a| a.t) {
                seen.push((t, arrival));
            }
        }
    }
    (seen, grid.phase_us())
}

/// Of the poses `seen` after the first second (when the grid and the lead
/// are learnt), how many were sent in the 25 ms before a tick of the grid
/// at `phase` (a random phase would put half there), and of how many.
fn sent_just_before_tick(seen: &[(u64, u64)], phase: u64) -> (usize, usize) {
    let Some(&(_, first)) = seen.first() else { return (0, 0) };
    let settled: Vec<u64> = seen.iter().filter(|(_, arrival)| *arrival > first + 1_000_000).map(|(t, _)| *t * 1000).collect();
    let before_tick = settled.iter().filter(|&&t| (phase + 50_000 - t % 50_000) % 50_000 <= 25_000).count();
    (before_tick, settled.len())
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Each room ticks on a grid of its own. A client that moves to another
/// room learns that room's grid and sends its poses just before its ticks.
/// The rooms are picked so that the old room's grid would put them 28–42
/// ms before the new room's ticks, where the check below fails (until
/// session 20 the client kept the old grid for a minute or two).
#[tokio::test]
async fn after_moving_rooms_poses_go_just_before_the_new_rooms_ticks() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let base = format!("http://{addr}");
    let mut sender = Client::start(base.clone(), "relearn-from");
    sender.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    let mut first_walker = Client::start(base.clone(), "relearn-from");
    first_walker.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
    let _first_walker = walking(first_walker);
    let poses = sender.poses.clone();
    // A new pose every 5 ms until the end (a fast frame rate).
    let feeder = tokio::spawn(async move {
        for i in 0u32.. {
            if poses.send(Some(Pose { p: [(i % 500) as f32 * 0.01, 0.0, 0.0], ..Pose::default() })).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Two seconds in the first room: its grid is learnt (by the client, and
    // by the test from the same deltas).
    let from_phase = tick_phase(&mut sender, Duration::from_secs(2)).await.expect("the first room's grid");

    let mut tries = 0;
    let (to_room, mut watcher, _second_walker, apart) = loop {
        tries += 1;
        assert!(tries <= 20, "no room ticking 28–42 ms after the first in 20 tries");
        let name = format!("relearn-to-{tries}");
        let mut watcher = Client::start(base.clone(), &name);
        watcher.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
        let mut walker = Client::start(base.clone(), &name);
        walker.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;
        let walker = walking(walker);
        let phase = tick_phase(&mut watcher, Duration::from_millis(1_200)).await.expect("the second room's grid");
        let apart = (phase + 50_000 - from_phase) % 50_000;
        if (28_000..=42_000).contains(&apart) {
            break (name, watcher, walker, apart);
        }
        walker.abort();
    };
    while sender.events.try_recv().is_ok() {}

    sender.commands.send(NetCommand::JoinRoom { room: to_room.clone() }).await.unwrap();
    let (NetEvent::Joined(joined), _) = sender.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(j) if j.room_name == to_room)).await else { unreachable!() };
    let (seen, phase) = watch_poses(&mut watcher, joined.you, Duration::from_secs(3)).await;
    feeder.abort();
    let (before_tick, settled) = sent_just_before_tick(&seen, phase.expect("the new room's grid"));
    eprintln!("rooms' ticks {} ms apart ({tries} tries): {before_tick} of {settled} settled poses sent within 25 ms before the new room's tick", apart / 1000);
    assert!(settled >= 20, "the sender's poses reached the new room: {settled} settled");
    assert!(before_tick * 10 >= settled * 8, "{before_tick} of {settled} sent within 25 ms before the new room's tick");
}

#[tokio::test]
async fn a_full_server_is_waited_out_as_it_asks_and_then_joined() {
    let config = plaza_server::ServerConfig { max_connections: 1, ..plaza_server::ServerConfig::ephemeral() };
    let (addr, _stop) = server(config).await;
    let base = format!("http://{addr}");
    let mut first = Client::start(base.clone(), "full-server");
    first.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await;

    let mut second = Client::start(base, "full-server");
    let (notice, before) = second.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Notice(Notice::ServerBusy { .. }))).await;
    let NetEvent::Notice(Notice::ServerBusy { retry_in }) = notice else { unreachable!() };
    assert!(retry_in >= Duration::from_secs(5), "the server's Retry-After is honoured: {retry_in:?}");
    assert!(!before.iter().any(|e| matches!(e, NetEvent::Joined(_))), "{before:?}");
    let (status, _) = second.until(Duration::from_secs(2), |e| matches!(e, NetEvent::Status(ConnectionStatus::Reconnecting { .. }))).await;
    let NetEvent::Status(ConnectionStatus::Reconnecting { reason, retry_in: status_retry, .. }) = status else { unreachable!() };
    assert_eq!((reason.as_str(), status_retry), (plaza_client::network::connection::SERVER_FULL, retry_in));

    // The first leaves; the second gets in at its next try.
    let waited = std::time::Instant::now();
    drop(first);
    second.until(Duration::from_secs(20), |e| matches!(e, NetEvent::Joined(_))).await;
    assert!(waited.elapsed() >= retry_in.saturating_sub(Duration::from_millis(500)), "not before it was asked to: {:?}", waited.elapsed());
}

#[tokio::test]
async fn a_server_that_is_not_there_is_named_with_the_plain_cause() {
    // A port nothing listens on: bound, then let go.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let server = format!("http://{addr}");
    let mut client = Client::start(server.clone(), "nowhere");
    let (NetEvent::Notice(Notice::Disconnected { reason }), _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Notice(Notice::Disconnected { .. }))).await else { unreachable!() };
    assert!(reason.starts_with(&format!("can't reach {server} (")), "{reason}");
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    assert!(!reason.contains("error sending request"), "{reason}");
}

/// The room list, from the server's `GET /api/v1/rooms`.
async fn rooms(client: &mut Client) -> Vec<plaza_shared::messages::RoomSummary> {
    client.commands.send(NetCommand::ListRooms).await.unwrap();
    let (NetEvent::Rooms(rooms), _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Rooms(_))).await else { unreachable!() };
    rooms.expect("the rooms are read")
}

/// The next `InRoom` status: the room's name.
async fn in_room(client: &mut Client) -> (String, Vec<NetEvent>) {
    let (NetEvent::Status(ConnectionStatus::InRoom { room_name, .. }), before) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Status(ConnectionStatus::InRoom { .. }))).await else {
        unreachable!()
    };
    (room_name, before)
}

/// A room of one, with someone in it: `name` is full.
async fn full_room(addr: SocketAddr, name: &str) -> Client {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let token: serde_json::Value = http.post(format!("{base}/api/v1/auth/guest")).json(&serde_json::json!({"name": "Owner"})).send().await.unwrap().json().await.unwrap();
    let created = http.post(format!("{base}/api/v1/rooms")).bearer_auth(token["access_token"].as_str().unwrap()).json(&serde_json::json!({"name": name, "capacity": 1})).send().await.unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let mut owner = Client::start(base, name);
    assert_eq!(in_room(&mut owner).await.0, name);
    owner
}

/// The settings panel's room list and Join: the client goes to another
/// room on the same socket (a new one by name), is back where it was when
/// the one it picked is full, and chats where it is.
#[tokio::test]
async fn a_player_moves_between_rooms_and_is_back_where_it_was_when_one_is_full() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let _owner = full_room(addr, "tiny").await;
    let mut client = Client::start(format!("http://{addr}"), "lobby");
    assert_eq!(in_room(&mut client).await.0, "lobby");
    let listed = rooms(&mut client).await;
    let summary = |rooms: &[plaza_shared::messages::RoomSummary], name: &str| rooms.iter().find(|r| r.name == name).cloned();
    assert_eq!(summary(&listed, "lobby").map(|r| r.users), Some(1), "{listed:?}");
    assert!(summary(&listed, "tiny").is_some_and(|r| r.is_full()), "{listed:?}");

    // A new room by name: made, and joined on the same socket.
    client.commands.send(NetCommand::JoinRoom { room: "garden".into() }).await.unwrap();
    let (name, before) = in_room(&mut client).await;
    assert_eq!(name, "garden");
    assert!(before.iter().any(|e| matches!(e, NetEvent::Status(ConnectionStatus::Joining { room }) if room == "garden")), "{before:?}");
    assert!(!before.iter().any(|e| matches!(e, NetEvent::Notice(Notice::Reconnecting { .. }))), "no reconnect: {before:?}");
    let listed = rooms(&mut client).await;
    assert_eq!((summary(&listed, "garden").map(|r| r.users), summary(&listed, "lobby").map(|r| r.users)), (Some(1), Some(0)), "moved: {listed:?}");

    // A full room: said, and back in the garden.
    client.commands.send(NetCommand::JoinRoom { room: "tiny".into() }).await.unwrap();
    let (name, before) = in_room(&mut client).await;
    assert_eq!(name, "garden", "back where it was");
    let notice = before.iter().find_map(|e| if let NetEvent::Notice(n @ Notice::RoomFull { .. }) = e { Some(n.clone()) } else { None });
    let Some(Notice::RoomFull { room, back_in, .. }) = &notice else { panic!("no notice of the full room: {before:?}") };
    assert_eq!((room.as_str(), back_in.as_deref()), ("tiny", Some("garden")));
    assert!(notice.unwrap().text().contains("You are back in garden"));
    client.say("g1", "hello garden").await;
}

/// A room that is full when the client starts: it stays connected, says
/// so, and joins the room picked next.
#[tokio::test]
async fn a_full_room_at_the_start_leaves_the_player_connected_to_pick_another() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let _owner = full_room(addr, "tiny").await;
    let mut client = Client::start(format!("http://{addr}"), "tiny");
    let (NetEvent::Status(ConnectionStatus::NoRoom { reason }), _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Status(ConnectionStatus::NoRoom { .. }))).await else {
        unreachable!()
    };
    assert!(reason.contains("can't join tiny") && reason.contains("full"), "{reason}");
    assert!(ConnectionStatus::NoRoom { reason }.label().contains("pick one in Settings (F1)"));
    client.until(Duration::from_secs(5), |e| matches!(e, NetEvent::Notice(Notice::RoomFull { back_in: None, .. }))).await;
    // Still connected: it answers pings, and takes the next room.
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Rtt(_))).await;
    client.commands.send(NetCommand::JoinRoom { room: "plaza".into() }).await.unwrap();
    assert_eq!(in_room(&mut client).await.0, "plaza");
}

/// Chat typed while the connection is down is not lost: it goes out once
/// the client is back in the room, and is acknowledged.
#[tokio::test]
async fn chat_typed_while_reconnecting_goes_out_once_back() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let proxy = Proxy::start(addr).await;
    let mut client = Client::start(format!("http://{}", proxy.addr), "away-chat");
    in_room(&mut client).await;
    proxy.down();
    client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Notice(Notice::Reconnecting { .. }))).await;
    client.commands.send(NetCommand::Chat { id: "w1".into(), text: "typed while away".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.up();
    let (_, before) = client.until(Duration::from_secs(30), |e| matches!(e, NetEvent::ChatAck(id) if id == "w1")).await;
    assert!(!before.iter().any(|e| matches!(e, NetEvent::ChatFailed { .. })), "{before:?}");
}

/// Picks made faster than the server takes room changes: they wait their
/// turn, the newest replacing those not made yet, and none is refused.
#[tokio::test]
async fn quick_picks_go_at_the_servers_pace_and_the_last_one_wins() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let mut client = Client::start(format!("http://{addr}"), "pick-0");
    assert_eq!(in_room(&mut client).await.0, "pick-0");
    for room in ["pick-1", "pick-2", "pick-3", "pick-4", "pick-5"] {
        client.commands.send(NetCommand::JoinRoom { room: room.into() }).await.unwrap();
    }
    let mut rooms_joined = Vec::new();
    let mut seen = Vec::new();
    while rooms_joined.last().map(String::as_str) != Some("pick-5") {
        let (NetEvent::Joined(j), before) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Joined(_))).await else { unreachable!() };
        rooms_joined.push(j.room_name);
        seen.extend(before);
    }
    assert!(rooms_joined.len() <= 2, "the picks in between were never made: {rooms_joined:?}");
    assert!(!seen.iter().any(|e| matches!(e, NetEvent::ServerError(_))), "nothing refused: {seen:?}");
    // Back to a room right away, and once more: paced, not refused.
    client.commands.send(NetCommand::JoinRoom { room: "pick-0".into() }).await.unwrap();
    let (name, before) = in_room(&mut client).await;
    assert_eq!(name, "pick-0");
    assert!(!before.iter().any(|e| matches!(e, NetEvent::ServerError(_))), "{before:?}");
}

/// Another name: the client signs in again under it and rejoins the same
/// room; the others see the old name leave and the new one arrive.
#[tokio::test]
async fn a_new_name_signs_in_again_and_rejoins_the_room_under_it() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let mut other = Client::start(format!("http://{addr}"), "names");
    in_room(&mut other).await;
    let mut client = Client::start(format!("http://{addr}"), "names");
    let (NetEvent::Welcome { user_id: first }, _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Welcome { .. })).await else { unreachable!() };
    in_room(&mut client).await;
    let (NetEvent::Delta(d), _) = other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Delta(d) if !d.joined.is_empty())).await else { unreachable!() };
    let old_avatar = d.joined[0].id;
    assert_eq!(d.joined[0].name, "Tester");

    client.commands.send(NetCommand::Rename { name: "Ada Lovelace".into() }).await.unwrap();
    let (NetEvent::Welcome { user_id: second }, _) = client.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Welcome { .. })).await else { unreachable!() };
    assert_ne!(second, first, "a new sign-in");
    let (name, before) = in_room(&mut client).await;
    assert_eq!(name, "names", "the same room");
    assert!(!before.iter().any(|e| matches!(e, NetEvent::Notice(_))), "no reconnect to tell of: {before:?}");
    let (NetEvent::Delta(d), seen) = other.until(Duration::from_secs(10), |e| matches!(e, NetEvent::Delta(d) if d.joined.iter().any(|a| a.name == "Ada Lovelace"))).await else { unreachable!() };
    let left = seen.iter().chain(std::iter::once(&NetEvent::Delta(d))).any(|e| matches!(e, NetEvent::Delta(d) if d.left.contains(&old_avatar)));
    assert!(left, "the old name left");
}
