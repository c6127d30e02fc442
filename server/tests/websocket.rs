//! The WebSocket gateway and rooms against a real server, both subprotocols.

mod common;

use common::*;
use plaza_shared::codec::Subprotocol;
use plaza_shared::limits::close;
use plaza_shared::messages::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const BOTH: [Subprotocol; 2] = [Subprotocol::Binary, Subprotocol::Json];

#[tokio::test]
async fn hello_gets_a_welcome_for_the_tokens_user() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let guest = server.guest("Ada").await;
        let mut c = Client::connect(server.addr, protocol).await;
        c.send(&ClientMessage::Hello(Hello { token: guest["access_token"].as_str().unwrap().into(), protocol: 1, resume: None })).await;
        let ServerMessage::Welcome(w) = c.recv().await else { panic!("welcome expected") };
        assert_eq!(w.user_id, guest["user_id"].as_str().unwrap());
        assert_eq!(w.tick_hz, 20);
        assert!(!w.session.is_empty());
    }
}

#[tokio::test]
async fn wrong_version_is_4000_even_with_a_bad_token_and_bad_tokens_are_4001() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let mut c = Client::connect(server.addr, protocol).await;
        c.send(&ClientMessage::Hello(Hello { token: "junk".into(), protocol: 2, resume: None })).await;
        assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::BAD_HELLO));

        let mut c = Client::connect(server.addr, protocol).await;
        c.send(&ClientMessage::Hello(Hello { token: "junk.token".into(), protocol: 1, resume: None })).await;
        assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::BAD_TOKEN));

        // A token signed by another server is forged here.
        let other = plaza_server::auth::TokenKeys::new(b"another secret, not this server's".to_vec(), Duration::from_secs(60));
        let (forged, _) = other.issue("u_admin", "Admin");
        let mut c = Client::connect(server.addr, protocol).await;
        c.send(&ClientMessage::Hello(Hello { token: forged, protocol: 1, resume: None })).await;
        assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::BAD_TOKEN));
    }
}

#[tokio::test]
async fn anything_but_hello_first_is_4000() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.addr, Subprotocol::Json).await;
    c.send(&ClientMessage::Ping(Ping { t: 1 })).await;
    assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::BAD_HELLO));
}

#[tokio::test]
async fn no_hello_within_5_s_is_4000() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.addr, Subprotocol::Binary).await;
    let started = std::time::Instant::now();
    assert_eq!(c.ended(Duration::from_secs(8)).await, Ended::Closed(close::BAD_HELLO));
    assert!(started.elapsed() >= Duration::from_millis(4900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_expired_token_is_4001() {
    let config = plaza_server::ServerConfig { access_ttl: Duration::from_secs(0), ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    let token = server.token("Old").await;
    let mut c = Client::connect(server.addr, Subprotocol::Json).await;
    c.send(&ClientMessage::Hello(Hello { token, protocol: 1, resume: None })).await;
    assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::BAD_TOKEN));
}

#[tokio::test]
async fn joined_lists_the_others_never_yourself_and_deltas_carry_only_changes() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let room = format!("square-{}", protocol.name());
        let (mut ada, joined_a) = server.member("Ada", protocol, &room).await;
        assert!(joined_a.avatars.is_empty());
        assert_eq!(joined_a.room_name, room);
        let (mut bob, joined_b) = server.member("Bob", protocol, &room).await;
        assert_eq!(joined_b.avatars.len(), 1, "Bob sees Ada only");
        assert_eq!(joined_b.avatars[0].id, joined_a.you);
        assert_eq!(joined_b.avatars[0].name, "Ada");
        assert!(joined_b.avatars.iter().all(|a| a.id != joined_b.you));

        // Ada learns that Bob joined.
        let d = ada.next_delta().await;
        assert_eq!(d.joined.iter().map(|a| a.id).collect::<Vec<_>>(), vec![joined_b.you]);

        // Bob moves: Ada gets exactly Bob's new pose; Bob never sees himself.
        bob.send(&ClientMessage::Pose(PoseUpdate { t: 42, pose: pose_at(3.0, -2.0) })).await;
        let d = ada.next_delta().await;
        assert_eq!(d.avatars.len(), 1, "{d:?}");
        assert_eq!(d.avatars[0].id, joined_b.you);
        assert_eq!(d.avatars[0].t, Some(42));
        assert!((d.avatars[0].pose.p[0] - 3.0).abs() < 0.01);
        assert!(d.joined.is_empty() && d.left.is_empty());
        // Nothing changes: no more deltas.
        assert!(ada.try_recv(Duration::from_millis(300)).await.is_none(), "a tick with no change sends nothing");
        let mut bob_saw_himself = false;
        while let Some(msg) = bob.try_recv(Duration::from_millis(200)).await {
            if let ServerMessage::Delta(d) = msg {
                bob_saw_himself |= d.avatars.iter().any(|a| a.id == joined_b.you);
            }
        }
        assert!(!bob_saw_himself);

        // Bob leaves: Ada is told.
        bob.send(&ClientMessage::Leave).await;
        let d = ada.next_delta().await;
        assert_eq!(d.left, vec![joined_b.you]);
    }
}

#[tokio::test]
async fn rooms_are_isolated() {
    let server = TestServer::start().await;
    let (mut a, _) = server.member("A", Subprotocol::Binary, "north").await;
    let (mut b, _) = server.member("B", Subprotocol::Json, "south").await;
    a.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(1.0, 1.0) })).await;
    assert!(b.try_recv(Duration::from_millis(400)).await.is_none(), "nothing of north reaches south");
    let (status, _, body) = server.http("GET", "/api/v1/rooms", "", &[]).await;
    assert_eq!(status, 200);
    let rooms: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = rooms.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["north", "south"]);
    assert!(rooms.as_array().unwrap().iter().all(|r| r["users"] == 1 && r["capacity"] == 40));
}

#[tokio::test]
async fn a_full_room_says_room_full() {
    let server = TestServer::start().await;
    let token = server.token("Owner").await;
    let (status, _, body) = server
        .http("POST", "/api/v1/rooms", r#"{"name":"tiny","capacity":1}"#, &[("authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let (_first, _) = server.member("First", Subprotocol::Json, &id).await;
    let (mut second, _) = server.client("Second", Subprotocol::Json).await;
    second.send(&ClientMessage::Join(Join { room: id.clone() })).await;
    let ServerMessage::Error(e) = second.recv().await else { panic!("error expected") };
    assert_eq!(e.code, ErrorCode::RoomFull);
    // Without a token, creating a room is 401.
    let (status, _, _) = server.http("POST", "/api/v1/rooms", r#"{"name":"x"}"#, &[]).await;
    assert_eq!(status, 401);
    // A second room with the same name would be unreachable by name: 409,
    // naming the one that exists.
    let (status, _, body) = server
        .http("POST", "/api/v1/rooms", r#"{"name":"tiny","capacity":5}"#, &[("authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("room_exists") && body.contains(&id), "{body}");
}

#[tokio::test]
async fn a_pose_before_join_is_an_error_and_the_tenth_bad_message_closes_1008() {
    let server = TestServer::start().await;
    let before = server.server_closes("invalid_messages").await;
    for protocol in BOTH {
        let (mut c, _) = server.client("Eve", protocol).await;
        c.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(0.0, 0.0) })).await;
        let ServerMessage::Error(e) = c.recv().await else { panic!("error expected") };
        assert_eq!(e.code, ErrorCode::NotInRoom);
        // A second hello and garbage bytes are invalid too.
        c.send(&ClientMessage::Hello(Hello { token: "x".into(), protocol: 1, resume: None })).await;
        let ServerMessage::Error(e) = c.recv().await else { panic!("error expected") };
        assert_eq!(e.code, ErrorCode::BadMessage);
        for i in 0..7 {
            let garbage = match protocol {
                Subprotocol::Binary => Message::Binary(vec![1, 0x7f, i].into()),
                Subprotocol::Json => Message::Text(format!("{{not json {i}").into()),
            };
            c.send_raw(garbage).await;
            let ServerMessage::Error(e) = c.recv().await else { panic!("error expected") };
            assert_eq!(e.code, ErrorCode::BadMessage, "{}", e.message);
        }
        c.send_raw(Message::Binary(vec![0xff].into())).await;
        assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::POLICY));
    }
    assert!(server.server_closes("invalid_messages").await >= before + 2.0, "both closes counted");
}

#[tokio::test]
async fn an_oversized_message_closes_1009() {
    let server = TestServer::start().await;
    let before = server.server_closes("too_large").await;
    for protocol in BOTH {
        let (mut c, _) = server.client("Big", protocol).await;
        let big = "x".repeat(20_000);
        c.send_raw(match protocol {
            Subprotocol::Binary => Message::Binary(big.into_bytes().into()),
            Subprotocol::Json => Message::Text(big.into()),
        })
        .await;
        assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::TOO_LARGE));
    }
    assert!(server.server_closes("too_large").await >= before + 2.0, "both closes counted");
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_4008() {
    let server = TestServer::start().await;
    let before = server.server_closes("rate_limited").await;
    let (mut c, _) = server.client("Flood", Subprotocol::Binary).await;
    for t in 0..300 {
        c.send(&ClientMessage::Ping(Ping { t })).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let ended = loop {
        match c.try_recv(Duration::from_secs(2)).await {
            Some(ServerMessage::Pong(_)) => pongs += 1,
            Some(ServerMessage::Error(e)) if e.code == ErrorCode::RateLimited => limited += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => break c.ended(Duration::from_millis(100)).await,
        }
    };
    // The burst of 120 is answered (more if the server was slow enough for
    // the bucket to refill), never all 240 before the flood close.
    assert!((120..240).contains(&pongs), "answers: {pongs}");
    assert!((1..=2).contains(&limited), "at most one rate_limited a second: {limited}");
    assert!(matches!(ended, Ended::Closed(close::RATE_LIMITED) | Ended::Dropped), "{ended:?}");
    assert!(server.server_closes("rate_limited").await > before, "the close is counted");
}

/// A user the server closed for abuse can't come straight back to do it
/// again: its hellos get 4008 until the cooldown is over; others are
/// welcome meanwhile.
#[tokio::test]
async fn a_user_closed_for_abuse_waits_out_the_cooldown_before_its_next_hello() {
    let config = plaza_server::ServerConfig { abuse_cooldown: Duration::from_secs(2), ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    let token = server.token("Spammer").await;
    let mut c = Client::connect(server.addr, Subprotocol::Binary).await;
    c.hello(&token, None).await;
    c.send_raw(Message::Binary(vec![b'x'; 20_000].into())).await;
    assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::TOO_LARGE));
    let barred_at = std::time::Instant::now();

    // Straight back: refused at hello.
    let mut again = Client::connect(server.addr, Subprotocol::Binary).await;
    again.send(&ClientMessage::Hello(Hello { token: token.clone(), protocol: 1, resume: None })).await;
    assert_eq!(again.ended(Duration::from_secs(2)).await, Ended::Closed(close::RATE_LIMITED));
    // Someone else is welcome meanwhile.
    let (_bystander, _) = server.client("Bystander", Subprotocol::Binary).await;
    // A slow reader's 4009 is not abuse: the test above; once the cooldown
    // is over, the same user is back.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(barred_at.elapsed()) + Duration::from_millis(100)).await;
    let mut back = Client::connect(server.addr, Subprotocol::Binary).await;
    back.hello(&token, None).await;
}

#[tokio::test]
async fn ping_gets_pong_with_the_same_t() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let (mut c, _) = server.client("Pinger", protocol).await;
        c.send(&ClientMessage::Ping(Ping { t: 123_456_789 })).await;
        let ServerMessage::Pong(p) = c.recv().await else { panic!("pong expected") };
        assert_eq!(p.t, 123_456_789);
        assert!(p.server_time > 1_700_000_000_000);
    }
}

#[tokio::test]
async fn token_expiring_is_sent_before_expiry_and_an_in_band_refresh_keeps_the_socket() {
    // 62 s tokens: the warning is due 60 s before expiry, 2 s in.
    let config = plaza_server::ServerConfig { access_ttl: Duration::from_secs(62), ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    let guest = server.guest("Ada").await;
    let mut c = Client::connect(server.addr, Subprotocol::Json).await;
    c.send(&ClientMessage::Hello(Hello { token: guest["access_token"].as_str().unwrap().into(), protocol: 1, resume: None })).await;
    assert!(matches!(c.recv().await, ServerMessage::Welcome(_)));
    let warning = c.try_recv(Duration::from_secs(4)).await;
    let Some(ServerMessage::TokenExpiring(t)) = warning else { panic!("token_expiring expected, got {warning:?}") };
    assert!((58..=61).contains(&t.in_s), "{t:?}");
    // Refresh over HTTP, hand the new token over in-band: the socket stays.
    let body = format!(r#"{{"refresh_token":"{}"}}"#, guest["refresh_token"].as_str().unwrap());
    let (status, _, fresh) = server.http("POST", "/api/v1/auth/refresh", &body, &[]).await;
    assert_eq!(status, 200);
    let fresh: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    c.send(&ClientMessage::Refresh(Refresh { token: fresh["access_token"].as_str().unwrap().into() })).await;
    c.send(&ClientMessage::Ping(Ping { t: 5 })).await;
    assert!(matches!(c.recv().await, ServerMessage::Pong(Pong { t: 5, .. })));
    // Someone else's token is not a refresh: 4001.
    let other = server.token("Mallory").await;
    c.send(&ClientMessage::Refresh(Refresh { token: other })).await;
    assert_eq!(c.ended(Duration::from_secs(2)).await, Ended::Closed(close::BAD_TOKEN));
}

#[tokio::test]
async fn ids_a_client_puts_in_a_message_are_ignored() {
    let server = TestServer::start().await;
    let (mut victim, joined_v) = server.member("Victim", Subprotocol::Json, "spoof").await;
    let (mut mallory, joined_m) = server.member("Mallory", Subprotocol::Json, "spoof").await;
    let _ = victim.next_delta().await; // Mallory joined
    // A pose that names the victim's avatar and user: extra fields are
    // ignored, the server stamps the sender.
    let spoof = format!(
        r#"{{"type":"pose","t":1,"id":{},"user":"{}","from":"{}","p":[9,0,9],"r":[0,0,0,1]}}"#,
        joined_v.you, joined_v.avatars.first().map(|a| a.user.as_str()).unwrap_or("u_x"), "u_victim"
    );
    mallory.send_raw(tokio_tungstenite::tungstenite::Message::Text(spoof.into())).await;
    let d = victim.next_delta().await;
    assert_eq!(d.avatars.len(), 1);
    assert_eq!(d.avatars[0].id, joined_m.you, "the move is Mallory's, not the victim's");
    let chat = r#"{"type":"chat","id":"x1","text":"I am the victim","from":"u_victim","name":"Victim"}"#;
    mallory.send_raw(tokio_tungstenite::tungstenite::Message::Text(chat.into())).await;
    let seen = loop {
        if let ServerMessage::Chat(c) = victim.recv().await {
            break c;
        }
    };
    assert_eq!(seen.name, "Mallory");
    assert_ne!(seen.from, "u_victim");
}

#[tokio::test]
async fn bots_fill_the_plaza_and_move() {
    let config = plaza_server::ServerConfig { bots: 5, ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut me, joined) = server.member("Visitor", Subprotocol::Binary, "plaza").await;
    assert_eq!(joined.avatars.len(), 5, "{joined:?}");
    assert!(joined.avatars.iter().all(|a| a.name.starts_with("Bot ")));
    let d = me.next_delta().await;
    assert!(!d.avatars.is_empty(), "bots move: {d:?}");
}

#[tokio::test]
async fn a_dropped_socket_resumes_its_seat_without_a_join_storm() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let room = format!("resume-{}", protocol.name());
        let (mut watcher, _) = server.member("Watcher", protocol, &room).await;
        let token = server.token("Roamer").await;
        let mut roamer = Client::connect(server.addr, protocol).await;
        let welcome = roamer.hello(&token, None).await;
        roamer.send(&ClientMessage::Join(Join { room: room.clone() })).await;
        let ServerMessage::Joined(first) = roamer.recv().await else { panic!("joined expected") };
        roamer.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(3.0, 0.0) })).await;
        let d = watcher.next_delta().await;
        assert!(d.joined.iter().any(|a| a.id == first.you) || d.avatars.iter().any(|a| a.id == first.you));

        // The connection dies without a close frame (a network drop).
        drop(roamer);
        while let Some(msg) = watcher.try_recv(Duration::from_millis(500)).await {
            if let ServerMessage::Delta(d) = msg {
                assert!(!d.left.contains(&first.you), "a dropped member isn't reported gone during the resume window");
            }
        }

        let mut back = Client::connect(server.addr, protocol).await;
        let resumed = back.hello(&token, Some(&welcome.session)).await;
        assert_eq!(resumed.session, welcome.session, "the same session id says the resume worked");
        let ServerMessage::Joined(state) = back.recv().await else { panic!("the full state follows the welcome") };
        assert_eq!(state.you, first.you, "the same seat");
        assert_eq!(state.room, first.room);
        assert_eq!(state.avatars.len(), 1, "the watcher, in full");
        back.send(&ClientMessage::Pose(PoseUpdate { t: 2, pose: pose_at(8.0, 0.0) })).await;
        loop {
            let d = watcher.next_delta().await;
            assert!(d.left.is_empty() && d.joined.is_empty(), "no leave or join for the others: {d:?}");
            if let Some(a) = d.avatars.iter().find(|a| a.id == first.you) {
                assert!((a.pose.p[0] - 8.0).abs() < 0.01);
                break;
            }
        }

        // A clean close is a goodbye: the others hear of it at once.
        back.ws.close(None).await.unwrap();
        loop {
            let d = watcher.next_delta().await;
            if d.left.contains(&first.you) {
                break;
            }
        }
        // And that session can't be resumed any more: a fresh one is made.
        let mut again = Client::connect(server.addr, protocol).await;
        let fresh = again.hello(&token, Some(&welcome.session)).await;
        assert_ne!(fresh.session, welcome.session);
        assert!(again.try_recv(Duration::from_millis(300)).await.is_none(), "no joined without a seat");
    }
}

#[tokio::test]
async fn another_users_token_cannot_resume_a_session() {
    let server = TestServer::start().await;
    let token = server.token("Owner").await;
    let mut owner = Client::connect(server.addr, Subprotocol::Json).await;
    let welcome = owner.hello(&token, None).await;
    owner.send(&ClientMessage::Join(Join { room: "mine".into() })).await;
    let _ = owner.recv().await;
    drop(owner);
    let other = server.token("Other").await;
    let mut thief = Client::connect(server.addr, Subprotocol::Json).await;
    let w = thief.hello(&other, Some(&welcome.session)).await;
    assert_ne!(w.session, welcome.session);
    assert!(thief.try_recv(Duration::from_millis(300)).await.is_none(), "no seat, no state");
}

/// A server with 24 bots moving in `room` (a busy room whose deltas fill a
/// slow reader's buffers quickly), silence allowed for 5 minutes.
async fn server_with_24_bots_in(room: &str) -> TestServer {
    let config = plaza_server::ServerConfig {
        bots: 24,
        bots_room: room.into(),
        heartbeat_timeout: Duration::from_secs(300),
        ..plaza_server::ServerConfig::ephemeral()
    };
    let server = TestServer::start_with(config).await;
    for _ in 0..100 {
        if server.room_users(room).await == Some(24) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// A real socket that stops reading: its kernel buffers fill, its queue
/// fills, it is closed with 4009, and a member reading normally keeps
/// getting every tick meanwhile.
#[tokio::test]
async fn a_slow_reader_is_closed_4009_while_the_others_keep_their_tick() {
    let server = server_with_24_bots_in("busy").await;
    let (mut fast, _) = server.member("Fast", Subprotocol::Binary, "busy").await;
    let token = server.token("Slow").await;
    let mut slow = Client::connect_small_buffer(server.addr, Subprotocol::Json).await;
    slow.hello(&token, None).await;
    slow.send(&ClientMessage::Join(Join { room: "busy".into() })).await;
    let ServerMessage::Joined(_) = slow.recv().await else { panic!("joined expected") };
    assert_eq!(server.room_users("busy").await, Some(26));

    // The fast member reads on its own task, timing the gaps between deltas.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let (mut deltas, mut max_gap, mut last) = (0u32, Duration::ZERO, std::time::Instant::now());
        loop {
            tokio::select! {
                _ = &mut stop => break,
                msg = fast.try_recv(Duration::from_secs(2)) => match msg {
                    Some(ServerMessage::Delta(_)) => {
                        deltas += 1;
                        max_gap = max_gap.max(last.elapsed());
                        last = std::time::Instant::now();
                    }
                    Some(_) => {}
                    None => panic!("the fast member lost its socket or its tick"),
                },
            }
        }
        (deltas, max_gap)
    });

    // The slow one reads nothing until the room lets it go.
    let started = std::time::Instant::now();
    while server.room_users("busy").await == Some(26) {
        assert!(started.elapsed() < Duration::from_secs(60), "the slow reader was never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow_for = started.elapsed();
    // Now it reads: what was buffered, then the close.
    assert_eq!(slow.ended(Duration::from_secs(10)).await, Ended::Closed(close::TOO_SLOW));
    let _ = stop_tx.send(());
    let (deltas, max_gap) = reader.await.unwrap();
    let ticks = slow_for.as_secs_f64() * 20.0;
    assert!(f64::from(deltas) >= ticks * 0.5, "the fast member kept its tick: {deltas} deltas in {slow_for:?}");
    assert!(max_gap < Duration::from_secs(1), "no stall for the fast member: longest gap {max_gap:?}");
}

/// A slow reader that goes on sending after the room closed it (a phone
/// whose downlink stalled) is cut off: its socket must not stay open, deaf
/// to it, for as long as it talks.
#[tokio::test]
async fn a_slow_reader_that_keeps_sending_is_cut_off_once_the_room_closes_it() {
    let server = server_with_24_bots_in("crowd").await;
    let before = server.server_closes("too_slow").await;
    let token = server.token("Stalled").await;
    let mut slow = Client::connect_small_buffer(server.addr, Subprotocol::Json).await;
    slow.hello(&token, None).await;
    slow.send(&ClientMessage::Join(Join { room: "crowd".into() })).await;
    let ServerMessage::Joined(_) = slow.recv().await else { panic!("joined expected") };

    // It never reads again and pings ten times a second.
    let started = std::time::Instant::now();
    let mut let_go = None;
    let mut t = 0;
    let cut = loop {
        assert!(started.elapsed() < Duration::from_secs(60), "never cut off (the room let it go after {let_go:?})");
        t += 1;
        if !slow.try_send(&ClientMessage::Ping(Ping { t })).await {
            break started.elapsed();
        }
        if let_go.is_none() && server.room_users("crowd").await == Some(24) {
            let_go = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let let_go = let_go.expect("the room let it go before the socket was cut");
    // The close frame gets 5 s to find room, the linger 1 s more.
    assert!(cut - let_go < Duration::from_secs(15), "cut {cut:?} after the start, the room let it go at {let_go:?}");
    assert!(server.server_closes("too_slow").await > before, "the close is counted");
}

/// A client hopping between rooms: three changes at once, then one a
/// second; a join sooner is dropped with `rate_limited`, and the socket
/// stays where it was.
#[tokio::test]
async fn room_changes_are_limited_and_a_join_too_soon_leaves_the_socket_where_it_is() {
    let server = TestServer::start().await;
    let (mut hopper, _) = server.member("Hop", Subprotocol::Json, "hop-a").await;
    // The first join was one: two more go through at once, the next not.
    // Sent back to back, so a slow box can't refill the bucket between them.
    for room in ["hop-b", "hop-c", "hop-d"] {
        hopper.send(&ClientMessage::Join(Join { room: room.into() })).await;
    }
    for room in ["hop-b", "hop-c"] {
        loop {
            if let ServerMessage::Joined(j) = hopper.recv().await {
                assert_eq!(j.room_name, room);
                break;
            }
        }
    }
    let error = loop {
        match hopper.recv().await {
            ServerMessage::Error(e) => break e,
            ServerMessage::Joined(j) => panic!("a fourth room change at once went through: {j:?}"),
            _ => {}
        }
    };
    assert_eq!(error.code, ErrorCode::RateLimited);
    assert!(error.message.contains("at most 3 room changes at once, then one every 1000 ms") && error.message.contains("still in your room"), "{}", error.message);
    // Still in hop-c: someone joining there is seen arriving.
    let (_watcher, _) = server.member("Wat", Subprotocol::Json, "hop-c").await;
    let arrived = loop {
        match hopper.try_recv(Duration::from_secs(5)).await.expect("a delta from hop-c within 5 s") {
            ServerMessage::Delta(d) if !d.joined.is_empty() => break d.joined[0].name.clone(),
            _ => {}
        }
    };
    assert_eq!(arrived, "Wat");
    // A second later the next change is taken.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    hopper.send(&ClientMessage::Join(Join { room: "hop-d".into() })).await;
    loop {
        match hopper.recv().await {
            ServerMessage::Joined(j) => {
                assert_eq!(j.room_name, "hop-d");
                break;
            }
            ServerMessage::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
}
