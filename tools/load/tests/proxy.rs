//! The fault proxy on real sockets: latency, order under jitter and loss,
//! tcp-mode stalls, message-mode drops on a real WebSocket, resets, a short
//! load run through it, and the command line. Timing is only checked from
//! below (a delay can't come early), never from above, except for a
//! generous bound on the reset.

use futures_util::{SinkExt, StreamExt};
use plaza_load::proxy::{LossMode, Proxy, ProxyConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const MS: Duration = Duration::from_millis(1);

/// A server that sends back everything it gets, on 127.0.0.1.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr) -> ProxyConfig {
    let mut c = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), upstream.to_string());
    c.seed = 42;
    c
}

/// Writes `message` and reads it back; the time that took.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
    let started = Instant::now();
    stream.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.expect("an answer within 5 s").unwrap();
    assert_eq!(back, message);
    started.elapsed()
}

#[tokio::test]
async fn latency_is_added_each_way() {
    let mut c = config(echo_server().await);
    c.latency = 100 * MS;
    let proxy = Proxy::start(c).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    for _ in 0..2 {
        let rtt = round_trip(&mut stream, b"ping").await;
        assert!(rtt >= 200 * MS, "a round trip took {rtt:?}, less than twice the latency");
    }
    drop(stream);
    let stats = proxy.stop().await;
    assert_eq!((stats.total, stats.open), (1, 0));
    assert_eq!((stats.bytes_up, stats.bytes_down), (8, 8));
    assert_eq!(stats.stalled, 0);
}

/// 1 MB of patterned bytes there and back, read while they are written.
async fn echo_megabyte(addr: SocketAddr) {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // Uneven writes, so segments and reads fall anywhere.
        for piece in sent.chunks(7_777) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(8), r.read_to_end(&mut back)).await.expect("1 MB back within 8 s").unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back changed or out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_complete_and_in_order_under_jitter_and_tcp_loss() {
    let mut c = config(echo_server().await);
    c.latency = 10 * MS;
    c.jitter = 10 * MS;
    c.loss = 0.1;
    let proxy = Proxy::start(c).await.unwrap();
    echo_megabyte(proxy.addr()).await;
    let stats = proxy.stop().await;
    assert_eq!((stats.bytes_up, stats.bytes_down), (1_000_000, 1_000_000));
    // At least 2 × 691 segments of 1448 bytes at 10 %.
    assert!(stats.stalled > 50, "{stats:?}");
}

#[tokio::test]
async fn every_lost_segment_waits_the_rto() {
    let mut c = config(echo_server().await);
    c.loss = 1.0;
    let rto = c.rto();
    assert_eq!(rto, 200 * MS);
    let proxy = Proxy::start(c).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    for k in 0..3u8 {
        // Each way one segment, each stalled.
        let rtt = round_trip(&mut stream, &[k; 10]).await;
        assert!(rtt >= 2 * rto, "round trip {k} took {rtt:?}");
    }
    // A message of several segments: every one stalled, still in order.
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let rtt = round_trip(&mut stream, &big).await;
    assert!(rtt >= 2 * rto, "{rtt:?}");
    drop(stream);
    let stats = proxy.stop().await;
    assert!(stats.stalled >= 6 + 8, "{stats:?}");
}

/// A WebSocket server: reads the client's messages until it gets `go`, then
/// sends `n` numbered binary messages with a ping after every tenth, and
/// closes. Returns how many messages it received before `go`.
async fn ws_server(n: u32) -> (SocketAddr, tokio::task::JoinHandle<u32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut got = 0;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) if t.as_str() == "go" => break,
                Message::Binary(_) => got += 1,
                _ => {}
            }
        }
        for i in 0..n {
            ws.send(Message::Binary(i.to_be_bytes().to_vec().into())).await.unwrap();
            if i % 10 == 9 {
                ws.send(Message::Ping(vec![1, 2].into())).await.unwrap();
            }
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        got
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_drops_whole_messages_and_keeps_the_socket_working() {
    let (upstream, server) = ws_server(200).await;
    let mut c = config(upstream);
    c.latency = 5 * MS;
    c.loss = 0.3;
    c.loss_mode = LossMode::Message;
    let proxy = Proxy::start(c).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr())).await.expect("the handshake passes the proxy");
    // Client → server: masked frames, the same odds. `go` may be dropped
    // too, so it is sent until the server answers.
    for _ in 0..50 {
        ws.send(Message::Binary(vec![0; 3].into())).await.unwrap();
    }
    let mut received = Vec::new();
    let (mut pings, mut gos) = (0, 0u64);
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(8);
    while !closed {
        if received.is_empty() {
            ws.send(Message::Text("go".into())).await.unwrap();
            gos += 1;
        }
        let next = tokio::time::timeout(Duration::from_millis(100), ws.next());
        match tokio::time::timeout_at(deadline, next).await.expect("the server's messages within 8 s") {
            Err(_) => continue,
            Ok(Some(Ok(Message::Binary(b)))) => received.push(u32::from_be_bytes(b[..4].try_into().unwrap())),
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => closed = true,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("the WebSocket broke: {e}"),
        }
    }
    drop(ws);
    let got_up = server.await.unwrap();
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates: {received:?}");
    assert_eq!(pings, 20, "control frames always pass");
    let stats = proxy.stop().await;
    let down_dropped = 200 - received.len() as u64;
    assert!((20..=100).contains(&down_dropped), "{down_dropped} of 200 dropped at 30 %");
    assert!((5..=30).contains(&(50 - got_up)), "{got_up} of 50 arrived upstream at 30 %");
    // Down 200, up 50 and the `go`s, of which at least one arrived.
    assert_eq!(stats.messages, 250 + gos, "{stats:?}");
    let counted = down_dropped + u64::from(50 - got_up);
    assert!((counted..counted + gos).contains(&stats.dropped), "{stats:?}; {counted} seen dropped, {gos} go");
}

#[tokio::test]
async fn a_reset_cuts_the_connection_within_its_window() {
    let mut c = config(echo_server().await);
    c.reset_every = Some(300 * MS);
    let proxy = Proxy::start(c).await.unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut stream, b"alive").await;
        let mut buf = [0u8; 16];
        let cut = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await.expect("cut within 3 s");
        let at = started.elapsed();
        match cut {
            Ok(0) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("{n} bytes nobody sent"),
        }
        // The proxy's window is [150, 450] ms from its accept, which comes
        // after our connect began.
        assert!(at >= 150 * MS, "cut after {at:?}");
        assert!(at < 450 * MS + Duration::from_secs(1), "cut after {at:?}");
    }
    let stats = proxy.stop().await;
    assert_eq!((stats.resets, stats.total, stats.open), (3, 3, 0), "{stats:?}");
}

/// A link gone silent carries nothing more either way and resets
/// nothing: the client's socket stays open, as with Wi-Fi lost.
#[tokio::test]
async fn a_silent_link_carries_nothing_and_resets_nothing() {
    let mut c = config(echo_server().await);
    c.silence_every = Some(300 * MS);
    let proxy = Proxy::start(c).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut stream, b"alive").await;
    // Past the window, [150, 450] ms from the accept.
    tokio::time::sleep(600 * MS).await;
    assert_eq!(proxy.stats().silenced, 1);
    stream.write_all(b"anyone?").await.expect("the socket still takes bytes");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(700), stream.read(&mut buf)).await;
    assert!(read.is_err(), "neither an echo nor an end may come: {read:?}");
    drop(stream);
    let stats = proxy.stop().await;
    assert_eq!((stats.silenced, stats.resets, stats.open), (1, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_resets_the_client() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxy = Proxy::start(config(SocketAddr::from(([127, 0, 0, 1], port)))).await.unwrap();
    // The reset can come before our connect has finished.
    if let Ok(mut stream) = TcpStream::connect(proxy.addr()).await {
        let mut buf = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while proxy.stats().upstream_failures == 0 {
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await
    .unwrap();
    let stats = proxy.stop().await;
    assert_eq!(stats.upstream_failures, 1);
}

/// An in-process server behind a proxy shaped by `shape`; the sender stops
/// the server.
async fn server_behind_proxy(shape: impl FnOnce(&mut ProxyConfig)) -> (Proxy, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plaza_server::run(plaza_server::ServerConfig::ephemeral(), listener, async {
        let _ = server_stopped.await;
    }));
    let mut c = config(server);
    shape(&mut c);
    (Proxy::start(c).await.unwrap(), stop_server)
}

/// A small binary run of one room through `proxy`.
fn run_through(proxy: &Proxy, name: &str, users_per_room: u32, duration: Duration) -> plaza_load::cli::RunConfig {
    plaza_load::cli::RunConfig { server: Some(format!("http://{}", proxy.addr())), ..run_through_proxy_of_its_own(name, users_per_room, duration) }
}

/// The same against an embedded server (set `faults` for its proxy).
fn run_through_proxy_of_its_own(name: &str, users_per_room: u32, duration: Duration) -> plaza_load::cli::RunConfig {
    plaza_load::cli::RunConfig {
        rooms: 1,
        users_per_room,
        rate_hz: 10.0,
        duration,
        ramp: Duration::from_millis(500),
        server: None,
        wire: plaza_load::wire::Wire::Plaza(plaza_shared::codec::Subprotocol::Binary),
        out: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plaza-load-{name}-{}", std::process::id())),
        chat_every: None,
        ping_every: Duration::from_secs(1),
        silence_limit: plaza_shared::liveness::SILENCE_LIMIT,
        send_at: Default::default(),
        drain: plaza_load::run::DRAIN,
        progress: false,
        faults: None,
        soak: None,
        voice: false,
        voice_talk: 1.0,
        vr_share: 0.0,
        hostile: 0,
        restart_every: None,
        access_ttl: None,
        also_servers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_through_a_lossy_proxy_loses_nothing() {
    let (proxy, stop_server) = server_behind_proxy(|c| {
        c.latency = 50 * MS;
        c.loss = 0.05;
    })
    .await;
    let run = plaza_load::cli::RunConfig { chat_every: Some(Duration::from_secs(1)), ..run_through(&proxy, "proxy", 4, Duration::from_secs(3)) };
    let r = plaza_load::run::run(&run).await.expect("the run is done");
    let stats = proxy.stop().await;
    let _ = stop_server.send(());
    let summary = format!(
        "{:?}; expected {} received {} lost {} misrouted {} errors {:?} chat {:?}; rtt {:?}; proxy {stats}",
        r.failure, r.expected, r.received, r.lost, r.misrouted, r.errors_by_kind, r.chat, r.rtt_ms
    );
    eprintln!("{summary}");
    assert_eq!(r.users_joined, 4, "{summary}");
    assert!(r.received > 0 && r.expected > 0, "{summary}");
    assert_eq!(r.lost, 0, "{summary}");
    assert_eq!(r.misrouted, 0, "{summary}");
    assert_eq!(r.chat.lost, 0, "{summary}");
    assert_eq!(r.errors, 0, "{summary}");
    assert!(stats.stalled > 0, "{summary}");
    // Latency was added: a ping's round trip crosses the proxy twice each way… at least twice 50 ms.
    assert!(r.rtt_ms.min >= 100.0, "{summary}; rtt {:?}", r.rtt_ms);
}

fn load() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plaza-load"))
}

#[test]
fn bad_proxy_flags_exit_2_with_one_line_naming_the_flag() {
    let base = ["proxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:7878"];
    for (extra, flag) in [
        (vec!["--latency", "500"], "--latency"),
        (vec!["--latency", "5x"], "--latency"),
        (vec!["--latency", "2m"], "--latency"),
        (vec!["--jitter=-1ms"], "--jitter"),
        (vec!["--loss", "5"], "--loss"),
        (vec!["--loss", "150%"], "--loss"),
        (vec!["--loss-mode", "udp"], "--loss-mode"),
        (vec!["--reset-every", "10ms"], "--reset-every"),
        (vec!["--seed", "x"], "--seed"),
        (vec!["--latency", "10ms", "--jitter", "20ms"], "--jitter"),
    ] {
        let output = load().args(base).args(&extra).output().expect("plaza-load runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:") && first.contains(flag), "{extra:?}: {stderr}");
    }
    for (args, flag) in [
        (vec!["proxy", "--listen", "localhost", "--upstream", "127.0.0.1:7878"], "--listen"),
        (vec!["proxy", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:7878"], "--upstream"),
        (vec!["proxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1"], "--upstream"),
    ] {
        let output = load().args(&args).output().expect("plaza-load runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.lines().next().is_some_and(|l| l.starts_with("error:") && l.contains(flag)), "{args:?}: {stderr}");
    }
}

#[test]
fn the_binary_proxies_counts_and_stops_on_ctrl_c() {
    // A std echo server, one connection.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = echo.accept() {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
        }
    });
    let mut child = load()
        .args(["proxy", "--listen", "127.0.0.1:0", "--latency", "20ms", "--loss", "0%", "--seed", "7", "--upstream"])
        .arg(upstream.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("plaza-load proxy starts");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("no {what} line"));
    let start = next("start");
    let addr: SocketAddr = start.split("listening on ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{start}"));
    assert!(start.contains("seed 7") && start.contains("latency 20ms"), "{start}");

    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    let counters = next("counters");
    assert!(counters.contains("connections 1 open / 1 total") && counters.contains("up 5 B") && counters.contains("down 5 B"), "{counters}");

    let interrupted = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running 8 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = rx.try_iter().collect();
    let last = rest.last().cloned().unwrap_or_default();
    assert!(last.contains("stopped after") && last.contains("1 total"), "{rest:?}");
    // The proxy closed our connection when it stopped.
    let mut buf = [0u8; 1];
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
}

/// Behind a slow link the last poses are still in flight when the run
/// stops sending: a drain longer than the delay reads them in, so nothing
/// counts as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_delay_counts_nothing_lost_behind_a_slow_link() {
    let (proxy, stop_server) = server_behind_proxy(|c| c.latency = 300 * MS).await;
    let run = plaza_load::cli::RunConfig {
        ramp: Duration::from_millis(200),
        // Each pose crosses the proxy twice (600 ms) plus up to a tick.
        drain: Duration::from_secs(2),
        // Signing in and joining take a few round trips (600 ms each) first.
        ..run_through(&proxy, "drain", 2, Duration::from_secs(6))
    };
    let r = plaza_load::run::run(&run).await.expect("the run is done");
    proxy.stop().await;
    let _ = stop_server.send(());
    assert!(r.received > 0, "poses arrived: {:?}", r.failure);
    assert_eq!((r.lost, r.misrouted), (0, 0), "{:?}", r.failure);
}

/// `run` with faults puts its own proxy in between: connections cut
/// mid-run resume their seats, the state comes back, the resent chats get
/// through, and the cut sockets are not counted as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_resets_resumes_every_user_and_loses_nothing() {
    let mut faults = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), "");
    faults.latency = 20 * MS;
    faults.loss = 0.02;
    faults.reset_every = Some(Duration::from_millis(1500));
    faults.seed = 7;
    let run = plaza_load::cli::RunConfig {
        rooms: 1,
        users_per_room: 4,
        rate_hz: 10.0,
        duration: Duration::from_secs(6),
        ramp: Duration::from_millis(300),
        server: None,
        wire: plaza_load::wire::Wire::Plaza(plaza_shared::codec::Subprotocol::Binary),
        out: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plaza-load-resets-{}", std::process::id())),
        chat_every: Some(Duration::from_secs(1)),
        ping_every: Duration::from_secs(1),
        silence_limit: plaza_shared::liveness::SILENCE_LIMIT,
        send_at: Default::default(),
        drain: Duration::from_secs(1),
        progress: false,
        faults: Some(faults),
        soak: None,
        voice: false,
        voice_talk: 1.0,
        vr_share: 0.0,
        hostile: 0,
        restart_every: None,
        access_ttl: None,
        also_servers: Vec::new(),
    };
    let r = plaza_load::run::run(&run).await.expect("the run is done");
    assert!(r.passed, "{}", r.failure);
    let f = r.faults.as_ref().expect("fault counters in the result");
    assert!(f.proxy.resets >= 4, "the proxy cut connections: {}", f.proxy);
    // (Cuts near the end, after sending stopped, are not reconnected.)
    assert!(f.drops_from_resets > 0 && r.reconnects > 0, "{} reconnects, {} cut", r.reconnects, f.drops_from_resets);
    assert!(r.resumed > 0, "seats were resumed");
    // The server's own count agrees (at least: other tests in this process
    // share its recorder): an operator sees the same resumes.
    let seats = r.server_seats.expect("the server's seat counts in the result");
    assert!(seats.resumed >= r.resumed as f64 && seats.held >= 1.0, "{seats:?} against {} resumed", r.resumed);
    assert!(r.restore_ms.count > 0 && r.restore_ms.max > 0.0, "restore times measured: {:?}", r.restore_ms);
    assert!(r.outage_ms.min >= r.restore_ms.min, "an outage includes its restore");
    assert_eq!((r.lost, r.misrouted, r.chat.lost), (0, 0, 0));
    assert!(r.chat.received > 0);
    assert_eq!(r.users_joined, 4);
}

/// Links that go silent (no reset) are noticed by the users after their
/// silence limit; each resumes its seat on a new socket and nothing is
/// lost. The sockets given up are not errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_silent_links_resumes_every_user_and_loses_nothing() {
    let mut faults = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), "");
    faults.silence_every = Some(Duration::from_secs(2));
    faults.seed = 11;
    let run = plaza_load::cli::RunConfig {
        silence_limit: Duration::from_secs(1),
        chat_every: Some(Duration::from_secs(1)),
        faults: Some(faults),
        server: None,
        ..run_through_proxy_of_its_own("silent", 4, Duration::from_secs(8))
    };
    let r = plaza_load::run::run(&run).await.expect("the run is done");
    assert!(r.passed, "{}", r.failure);
    let f = r.faults.as_ref().expect("fault counters in the result");
    assert!(f.proxy.silenced >= 4, "links went silent: {}", f.proxy);
    assert_eq!(f.proxy.resets, 0);
    assert!(f.silent_links > 0 && r.resumed > 0, "{} given up, {} resumed", f.silent_links, r.resumed);
    assert_eq!((r.lost, r.misrouted, r.chat.lost, r.errors), (0, 0, 0, 0), "{:?}", r.errors_by_kind);
    assert_eq!(r.users_joined, 4);
}
