//! Instances sharing rooms through Redis (`--redis-url`): two servers in
//! this process, one Redis, one store. A room runs on one instance; a
//! socket at the other is relayed there.

mod common;

use common::redis::Redis;
use common::{Client, Ended, TestServer, pose_at};
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use std::time::Duration;

/// One cluster's shared pieces: Redis, a store file, the token secret.
struct Cluster {
    redis: Redis,
    database_url: String,
    secret: Vec<u8>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("plaza-instances-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cluster { redis: Redis::start(), database_url: format!("sqlite://{}", dir.join("plaza.db").display()), secret: b"a secret every instance shares".to_vec(), _dir: TempDir(dir) }
    }

    /// An instance, advertised at its own address.
    async fn instance(&self) -> TestServer {
        self.instance_with(|config| config).await
    }

    /// An instance whose config `tune` changes first.
    async fn instance_with(&self, tune: impl FnOnce(plaza_server::ServerConfig) -> plaza_server::ServerConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = plaza_server::ServerConfig {
            token_secret: self.secret.clone(),
            database_url: self.database_url.clone(),
            redis_url: Some(self.redis.url.clone()),
            advertise_url: format!("http://{addr}"),
            ..plaza_server::ServerConfig::ephemeral()
        };
        let config = tune(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(plaza_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let server = TestServer { addr, stop: Some(stop) };
        wait_ready(&server).await;
        server
    }

    fn owner_of(&self, room_id: &str) -> Option<String> {
        self.redis.get(&format!("plaza:room:{room_id}:owner"))
    }
}

/// A series' value in a `/metrics` text (`series` with its labels and a
/// trailing space).
fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("{series} in /metrics"))
}

async fn wait_ready(server: &TestServer) {
    for _ in 0..100 {
        if let Ok(stream) = tokio::net::TcpStream::connect(server.addr).await
            && common::http_over(stream, "GET", "/ready", "", &[]).await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("instance at {} not ready within 5 s", server.addr);
}

/// A user signed in at `server`, said hello and joined `room` there.
async fn member(server: &TestServer, name: &str, protocol: Subprotocol, room: &str) -> (Client, Welcome, Joined, String) {
    let token = server.token(name).await;
    let mut c = Client::connect(server.addr, protocol).await;
    let welcome = c.hello(&token, None).await;
    c.send(&ClientMessage::Join(Join { room: room.into() })).await;
    match c.recv().await {
        ServerMessage::Joined(j) => (c, welcome, j, token),
        other => panic!("expected joined, got {other:?}"),
    }
}

/// Reads deltas until one puts `avatar` at x.
async fn sees_at(c: &mut Client, avatar: AvatarId, x: f32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "avatar {avatar} never seen at x = {x}");
        let d = c.next_delta().await;
        let poses = d.avatars.iter().map(|a| (a.id, a.pose.p[0])).chain(d.joined.iter().map(|j| (j.id, j.pose.p[0])));
        if poses.into_iter().any(|(id, at)| id == avatar && (at - x).abs() < 0.01) {
            return;
        }
    }
}

#[tokio::test]
async fn members_at_two_instances_share_one_room_its_moves_and_its_chat() {
    let cluster = Cluster::new("share");
    let (a, b) = (cluster.instance().await, cluster.instance().await);
    let (mut ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "hall").await;
    assert!(at_a.avatars.is_empty());
    let owner = cluster.owner_of(&at_a.room).expect("the room's lease is in Redis");

    // Bo signs in at the other instance, on JSON: relayed to the owner.
    let (mut bo, bo_welcome, at_b, _) = member(&b, "Bo", Subprotocol::Json, "hall").await;
    assert_eq!(at_b.room, at_a.room, "one room, not a copy per instance");
    assert_eq!(at_b.avatars.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["Ada"], "the full state comes from the room's instance");
    assert_eq!(cluster.owner_of(&at_a.room).as_deref(), Some(owner.as_str()), "the lease stayed with the first instance");

    bo.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(4.0, 1.0) })).await;
    sees_at(&mut ada, at_b.you, 4.0).await;
    ada.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(-2.0, 1.0) })).await;
    sees_at(&mut bo, at_a.you, -2.0).await;

    // Each instance's history read once before the chat (a copy of the
    // room that kept its first read would stay stale).
    for server in [&a, &b] {
        let (status, _, _) = server.http("GET", &format!("/api/v1/rooms/{}/chat", at_a.room), "", &[]).await;
        assert_eq!(status, 200);
    }
    // Chat through the relay: stored once, acknowledged, heard by both.
    bo.send(&ClientMessage::Chat(ChatSend { id: "m1".into(), text: "hello from b".into() })).await;
    let (mut acked, mut heard_b) = (false, false);
    while !(acked && heard_b) {
        match bo.recv().await {
            ServerMessage::ChatAck(ack) => acked = ack.id == "m1",
            ServerMessage::Chat(c) => heard_b = c.text == "hello from b" && c.from == bo_welcome.user_id,
            _ => {}
        }
    }
    loop {
        if let ServerMessage::Chat(c) = ada.recv().await {
            assert_eq!((c.text.as_str(), c.name.as_str()), ("hello from b", "Bo"));
            break;
        }
    }
    for server in [&a, &b] {
        let (_, _, history) = server.http("GET", &format!("/api/v1/rooms/{}/chat", at_a.room), "", &[]).await;
        assert_eq!(history.matches("hello from b").count(), 1, "stored once, and either instance has it: {history}");
    }

    // A ping is answered at Bo's own instance, once.
    bo.send(&ClientMessage::Ping(Ping { t: 77 })).await;
    let mut pongs = 0;
    while let Some(msg) = bo.try_recv(Duration::from_millis(400)).await {
        pongs += u32::from(matches!(msg, ServerMessage::Pong(p) if p.t == 77));
    }
    assert_eq!(pongs, 1);

    // Bo leaves cleanly: Ada hears it at once.
    bo.ws.close(None).await.unwrap();
    loop {
        if ada.next_delta().await.left.contains(&at_b.you) {
            break;
        }
    }
}

#[tokio::test]
async fn a_dropped_relayed_socket_resumes_its_seat_at_either_instance() {
    let cluster = Cluster::new("resume");
    let (a, b) = (cluster.instance().await, cluster.instance().await);
    let (mut ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "plaza-r").await;
    for (attempt, back_at) in [&b, &a].into_iter().enumerate() {
        let (bo, welcome, seat, token) = member(&b, &format!("Bo{attempt}"), Subprotocol::Binary, "plaza-r").await;
        drop(bo); // a network drop: no close frame
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut back = Client::connect(back_at.addr, Subprotocol::Binary).await;
        let resumed = back.hello(&token, Some(&welcome.session)).await;
        assert_eq!(resumed.session, welcome.session, "resumed (attempt {attempt}, at {})", back_at.addr);
        let ServerMessage::Joined(state) = back.recv().await else { panic!("the full state follows the welcome") };
        assert_eq!((state.you, state.room.as_str()), (seat.you, at_a.room.as_str()), "the same seat in the same room");
        back.send(&ClientMessage::Pose(PoseUpdate { t: 2, pose: pose_at(6.0 + attempt as f32, 0.0) })).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            assert!(tokio::time::Instant::now() < deadline);
            let d = ada.next_delta().await;
            assert!(!d.left.contains(&seat.you), "no leave for the others while the seat waits");
            if d.avatars.iter().any(|a| a.id == seat.you && (a.pose.p[0] - (6.0 + attempt as f32)).abs() < 0.01) {
                break;
            }
        }
        back.ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn a_draining_owner_gives_up_its_rooms_and_they_start_again_where_users_return() {
    let cluster = Cluster::new("drain");
    let (mut a, b) = (cluster.instance().await, cluster.instance().await);
    let (_ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "lobby").await;
    let a_instance = cluster.owner_of(&at_a.room).unwrap();
    let (mut bo, _, _, token) = member(&b, "Bo", Subprotocol::Binary, "lobby").await;

    let _ = a.stop.take().unwrap().send(()); // SIGTERM, in effect
    assert_eq!(bo.ended(Duration::from_secs(5)).await, Ended::Closed(1001), "the relayed member is told to reconnect");
    assert_eq!(cluster.owner_of(&at_a.room), None, "the lease is given up at once, not left to expire");

    let mut again = Client::connect(b.addr, Subprotocol::Binary).await;
    again.hello(&token, None).await;
    again.send(&ClientMessage::Join(Join { room: "lobby".into() })).await;
    let ServerMessage::Joined(j) = again.recv().await else { panic!("joined") };
    assert_eq!(j.room, at_a.room, "the same room, by name");
    let owner = cluster.owner_of(&j.room).unwrap();
    assert_ne!(owner, a_instance, "running on the instance that stayed");
}

#[tokio::test]
async fn a_room_whose_instance_stopped_answering_is_taken_over() {
    let cluster = Cluster::new("takeover");
    let b = cluster.instance().await;
    // A room made, then its instance gone without a drain: its lease and
    // address still in Redis, nothing listening there.
    let (mut first, _, made, _) = member(&b, "Ada", Subprotocol::Binary, "atrium").await;
    first.ws.close(None).await.unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    assert_eq!(cluster.redis.command(&["SET", "plaza:instance:ghost", &dead_url]).as_deref(), Some("+OK"));
    assert_eq!(cluster.redis.command(&["SET", &format!("plaza:room:{}:owner", made.room), "ghost"]).as_deref(), Some("+OK"));

    // Bo has used two of his three quick room changes: the take-over
    // must not cost him another.
    let (mut bo, _, _, _) = member(&b, "Bo", Subprotocol::Binary, "porch").await;
    bo.send(&ClientMessage::Join(Join { room: "steps".into() })).await;
    bo.send(&ClientMessage::Join(Join { room: "atrium".into() })).await;
    let j = loop {
        match bo.recv().await {
            ServerMessage::Joined(j) if j.room_name == "atrium" => break j,
            ServerMessage::Error(e) => panic!("the join failed: {e:?}"),
            _ => {}
        }
    };
    assert_eq!(j.room, made.room);
    let owner = cluster.owner_of(&j.room).unwrap();
    assert_ne!(owner, "ghost", "taken over");
    bo.send(&ClientMessage::Ping(Ping { t: 1 })).await;
    while !matches!(bo.recv().await, ServerMessage::Pong(_)) {}
}

#[tokio::test]
async fn ready_says_when_redis_is_gone_and_a_start_without_it_says_why() {
    let mut cluster = Cluster::new("ready");
    let a = cluster.instance().await;
    cluster.redis.stop();
    let (status, _, body) = a.http("GET", "/ready", "", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis"), "{body}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = plaza_server::ServerConfig { redis_url: Some(cluster.redis.url.clone()), advertise_url: "http://127.0.0.1:1".into(), ..plaza_server::ServerConfig::ephemeral() };
    let error = plaza_server::run(config, listener, std::future::pending()).await.expect_err("no Redis, no start");
    let text = error.to_string();
    assert!(text.starts_with("can't share rooms through Redis") && text.contains("Connection refused"), "{text}");
}

#[tokio::test]
async fn only_an_instance_can_choose_a_session_id() {
    let cluster = Cluster::new("forged");
    let a = cluster.instance().await;
    let token = a.token("Mallory").await;
    let auth = format!("Bearer {token}");
    for headers in [vec![("plaza-session", "victim"), ("plaza-session-sig", "AAAA")], vec![("plaza-session", "victim")]] {
        let stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
        let mut with_auth = headers.clone();
        with_auth.push(("authorization", &auth));
        let refused = Client::upgrade(stream, Subprotocol::Binary, &with_auth).await.err().expect("refused");
        assert_eq!(refused.0, 400, "{}", refused.1);
        assert!(refused.1.contains("Plaza-Session"), "{}", refused.1);
    }
}

#[tokio::test]
async fn each_instance_lists_every_room_with_who_is_in_it() {
    let cluster = Cluster::new("list");
    let (a, b) = (cluster.instance().await, cluster.instance().await);
    let (_ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "gallery").await;
    let (_cy, _, _, _) = member(&a, "Cy", Subprotocol::Binary, "gallery").await;
    // The owner writes its count with each renewal (every 3 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (status, _, body) = b.http("GET", "/api/v1/rooms", "", &[]).await;
        assert_eq!(status, 200);
        let rooms: Vec<RoomSummary> = serde_json::from_str(&body).unwrap();
        let gallery = rooms.iter().find(|r| r.id == at_a.room);
        if gallery.is_some_and(|g| g.users == 2 && g.name == "gallery") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the other instance never listed gallery with 2 users: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_instance_that_lost_a_rooms_lease_sends_its_members_to_the_owner() {
    let cluster = Cluster::new("lost");
    let a = cluster.instance().await;
    let (mut ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "cellar").await;
    // Another instance holds it now (this one missed its renewals, say).
    assert_eq!(cluster.redis.command(&["SET", &format!("plaza:room:{}:owner", at_a.room), "elsewhere"]).as_deref(), Some("+OK"));
    assert_eq!(ada.ended(Duration::from_secs(6)).await, Ended::Closed(1001), "closed at the next renewal, to reconnect");
}

#[tokio::test]
async fn a_relayed_member_talks_and_hears_through_the_rooms_sfu() {
    use common::voice::*;
    let cluster = Cluster::new("voice");
    let (a, b) = (cluster.instance().await, cluster.instance().await);
    let (mut ann, _, ann_joined, _) = member(&a, "Ann", Subprotocol::Binary, "voice-hall").await;
    // Ben is relayed: his offer, the answer and the speakers go through B.
    let (mut ben, _, ben_joined, _) = member(&b, "Ben", Subprotocol::Json, "voice-hall").await;
    let (mut ann_voice, ann_first) = start_voice(&mut ann).await;
    let (mut ben_voice, ben_first) = start_voice(&mut ben).await;
    until_hears(&mut ben, ben_first, ann_joined.you).await;
    until_hears(&mut ann, ann_first, ben_joined.you).await;
    for peer in [&mut ann_voice, &mut ben_voice] {
        peer.connected(Duration::from_secs(10)).await.expect("ICE and DTLS with the room's SFU");
    }
    let listen = Duration::from_millis(2_500);
    let (ann_heard, ben_heard) = tokio::join!(talk(&mut ann_voice, b"ann", 50, listen), talk(&mut ben_voice, b"ben", 50, listen));
    let (from_ann, from_ben) = (ben_heard.get(b"ann".as_slice()).copied().unwrap_or(0), ann_heard.get(b"ben".as_slice()).copied().unwrap_or(0));
    assert!(from_ann >= 45 && from_ben >= 45, "each heard the other's 50 frames: Ben {from_ann}, Ann {from_ben}");
}

#[test]
fn bad_cluster_flags_get_one_line_each() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_plaza-server")).arg("--dev").arg("--data-dir").arg(std::env::temp_dir().join("plaza-cluster-flags")).args(args).env_remove("REDIS_URL").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (args, says) in [
        (vec!["--redis-url", "garbage"], "must be redis://HOST:PORT[/DB]"),
        (vec!["--redis-url", "rediss://h:1"], "TLS and Unix sockets are not supported"),
        (vec!["--redis-url", "redis://127.0.0.1:1", "--advertise-url", "http://host:80/path"], "must be http://HOST:PORT"),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let (code, stderr) = run(&["--bind", "0.0.0.0:0", "--redis-url", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("pass --advertise-url"), "{stderr}");
}

#[tokio::test]
async fn a_room_whose_instance_is_full_stays_there() {
    let cluster = Cluster::new("full");
    // One WebSocket place: Ada's. The relay for Bo is refused with 503.
    let a = cluster.instance_with(|config| plaza_server::ServerConfig { max_connections: 1, ..config }).await;
    let b = cluster.instance().await;
    let (_ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "small").await;
    let owner = cluster.owner_of(&at_a.room).unwrap();
    let refused = |metrics: &str| metric_value(metrics, "plaza_relay_failures_total{reason=\"refused\"} ");
    let before = refused(&b.http("GET", "/metrics", "", &[]).await.2);
    let token = b.token("Bo").await;
    let mut bo = Client::connect(b.addr, Subprotocol::Binary).await;
    bo.hello(&token, None).await;
    bo.send(&ClientMessage::Join(Join { room: "small".into() })).await;
    let ServerMessage::Error(e) = bo.recv().await else { panic!("an error, not a seat") };
    assert!(e.message.contains("full or restarting"), "{e:?}");
    // The recorder is the process's (other tests relay too): at least one more.
    assert!(refused(&b.http("GET", "/metrics", "", &[]).await.2) >= before + 1.0, "the refusal is counted");
    assert_eq!(cluster.owner_of(&at_a.room), Some(owner), "a full instance is alive: its room isn't taken from it");
}

#[tokio::test]
async fn a_lease_redis_lost_is_taken_back_and_its_members_stay() {
    let cluster = Cluster::new("retake");
    let a = cluster.instance().await;
    let (mut ada, _, at_a, _) = member(&a, "Ada", Subprotocol::Binary, "annex").await;
    let owner = cluster.owner_of(&at_a.room).unwrap();
    // A Redis restart without persistence, for this key.
    cluster.redis.command(&["DEL", &format!("plaza:room:{}:owner", at_a.room)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cluster.owner_of(&at_a.room).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the lease was never taken back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.owner_of(&at_a.room), Some(owner));
    ada.send(&ClientMessage::Ping(Ping { t: 5 })).await;
    while !matches!(ada.recv().await, ServerMessage::Pong(_)) {}
}
