//! Voice through the SFU: real WebRTC peers (`plaza_server::voice::client`)
//! on loopback, signaled through their WebSockets. Who hears whom, what
//! arrives, what the metrics say, and what a bad offer is told.

mod common;

use common::voice::*;
use common::*;
use plaza_server::voice::client::VoiceClient;
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use plaza_shared::voice::VoiceSignal;
use std::time::Duration;

/// The metrics recorder is one per process, shared by every test server
/// here: tests that make voice streams take turns, so each reads its own
/// `plaza_voice_streams`.
static STREAMS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The next `error`, skipping everything else.
async fn error(client: &mut Client) -> ErrorMessage {
    loop {
        if let ServerMessage::Error(e) = client.recv().await {
            return e;
        }
    }
}

fn metric(body: &str, series: &str) -> f64 {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("{series} in /metrics"))
}

#[tokio::test]
async fn members_near_each_other_hear_each_other_and_a_far_one_is_not_forwarded() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    let (mut ann, ann_joined) = server.member("Ann", Subprotocol::Json, "voice").await;
    let (mut ben, ben_joined) = server.member("Ben", Subprotocol::Binary, "voice").await;
    let (mut cat, cat_joined) = server.member("Cat", Subprotocol::Json, "voice").await;
    let (_, _, at_start) = server.http("GET", "/metrics", "", &[]).await;
    // Cat stands 100 m away: past the hearing range.
    cat.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(100.0, 0.0) })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut ann_voice, ann_first) = start_voice(&mut ann).await;
    assert_eq!(ann_first.len(), 2, "one entry per listening slot");
    assert!(ann_first.iter().all(|s| s.avatar.is_none()), "nobody else is in voice yet: {ann_first:?}");
    let (mut ben_voice, ben_first) = start_voice(&mut ben).await;
    let (mut cat_voice, _) = start_voice(&mut cat).await;
    let ben_hears = until_hears(&mut ben, ben_first, ann_joined.you).await;
    assert!(!ben_hears.iter().any(|s| s.avatar == Some(cat_joined.you)), "Cat is out of range: {ben_hears:?}");
    until_hears(&mut ann, ann_first, ben_joined.you).await;
    for peer in [&mut ann_voice, &mut ben_voice, &mut cat_voice] {
        peer.connected(Duration::from_secs(10)).await.expect("ICE and DTLS on loopback");
    }

    // The byte counters are the process's: other tests' voice is in them.
    let (_, _, before) = server.http("GET", "/metrics", "", &[]).await;
    // (None yet, before any voice: 0.)
    let counted = |body: &str, direction: &str| {
        let series = format!("plaza_voice_bytes_total{{direction=\"{direction}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(series.as_str()).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
    };
    let listen = Duration::from_millis(2_500);
    let (_, ben_heard, cat_heard) = tokio::join!(talk(&mut ann_voice, b"ann", 50, listen), talk(&mut ben_voice, b"", 0, listen), talk(&mut cat_voice, b"cat", 50, listen));
    let from_ann = ben_heard.get(b"ann".as_slice()).copied().unwrap_or(0);
    assert!(from_ann >= 45, "Ben heard {from_ann} of Ann's 50 frames on loopback: {ben_heard:?}");
    assert_eq!(ben_heard.get(b"cat".as_slice()), None, "Cat is out of Ben's range");
    assert!(cat_heard.is_empty(), "nobody is in Cat's range: {cat_heard:?}");

    let (_, _, metrics) = server.http("GET", "/metrics", "", &[]).await;
    // Ann and Ben hear each other; Cat hears no one and no one hears Cat.
    assert_eq!(metric(&metrics, "plaza_voice_streams "), 2.0);
    let bytes_in = counted(&metrics, "in") - counted(&before, "in");
    let bytes_out = counted(&metrics, "out") - counted(&before, "out");
    assert!(bytes_in >= 100.0 * 19.0, "two speakers' 100 frames of 19 bytes came in: {bytes_in}");
    assert!(bytes_out >= 45.0 * 19.0 && bytes_out < bytes_in, "Ann's frames went out to Ben only: {bytes_out}");
    let packets = |body: &str, series: &str| metric(body, series) - metric(&before, series);
    let packets_in = packets(&metrics, "plaza_voice_packets_total{direction=\"in\"} ");
    let packets_out = packets(&metrics, "plaza_voice_packets_total{direction=\"out\"} ");
    assert_eq!(packets_in, 100.0, "Ann's 50 and Cat's 50 came in");
    assert!((45.0..=50.0).contains(&packets_out), "Ann's went out to Ben: {packets_out}");
    assert_eq!(packets(&metrics, "plaza_voice_packets_lost_total "), 0.0, "nothing is lost on loopback");
    let connected = metric(&metrics, "plaza_voice_calls_total{outcome=\"connected\"} ") - metric(&at_start, "plaza_voice_calls_total{outcome=\"connected\"} ");
    assert!(connected >= 3.0, "Ann's, Ben's and Cat's calls connected: {connected}");

    // Ann stops: Ben is told its slot is silent, and the stream is gone.
    ann.send(&ClientMessage::Voice(VoiceSignal::Leave.into_message())).await;
    loop {
        let VoiceSignal::Speakers { slots } = voice_signal(&mut ben).await else { continue };
        if slots.iter().all(|s| s.avatar.is_none()) {
            break;
        }
    }
    let (_, _, metrics) = server.http("GET", "/metrics", "", &[]).await;
    assert_eq!(metric(&metrics, "plaza_voice_streams "), 0.0, "nobody hears anybody now");
}

#[tokio::test]
async fn voice_that_cannot_start_says_why() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    // Not in a room yet.
    let (mut loner, _) = server.client("Loner", Subprotocol::Json).await;
    loner.send(&offer("v=0")).await;
    let e = error(&mut loner).await;
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotInRoom, "voice needs a room; join one first"));

    // An offer outside the protocol's shape.
    let (mut ann, _) = server.member("Ann", Subprotocol::Json, "voice").await;
    let sendrecv = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n";
    ann.send(&offer(sendrecv)).await;
    let e = error(&mut ann).await;
    assert_eq!(e.code, ErrorCode::BadMessage);
    assert!(e.message.contains("sendonly (the microphone) or recvonly (a listening slot)"), "{}", e.message);
    ann.send(&ClientMessage::Voice(Voice { signal: serde_json::json!({"type": "shout"}) })).await;
    let e = error(&mut ann).await;
    assert!(e.code == ErrorCode::BadMessage && e.message.contains(r#"{"type":"leave"}"#), "{e:?}");

    // A second offer within a second is dropped, and says so.
    let peer = VoiceClient::new(LOOPBACK, false, 1).await.unwrap();
    ann.send(&offer(&peer.offer)).await;
    ann.send(&offer(&peer.offer)).await;
    assert!(matches!(voice_signal(&mut ann).await, VoiceSignal::Answer { .. }));
    let e = error(&mut ann).await;
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::RateLimited, "one voice offer a second at most; this one was dropped"));

    // A server with voice off.
    let off = plaza_server::ServerConfig { voice: plaza_server::voice::VoiceConfig { max_peers: 0, ..plaza_server::voice::VoiceConfig::local() }, ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(off).await;
    let (mut ben, _) = server.member("Ben", Subprotocol::Binary, "voice").await;
    let peer = VoiceClient::new(LOOPBACK, true, 1).await.unwrap();
    ben.send(&offer(&peer.offer)).await;
    let e = error(&mut ben).await;
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::VoiceUnavailable, "voice is off on this server"));
}

/// `--voice-ports`: peers take their UDP port from the range (what a
/// firewall opens or a container publishes), skip one that is taken, and a
/// full range is a clear "voice unavailable".
#[tokio::test]
async fn voice_peers_take_their_ports_from_the_range_and_a_full_range_says_so() {
    let _turn = STREAMS.lock().await;
    // Two ports in a row, the first held by another program.
    let (held, free) = (40_000..60_000u16)
        .step_by(7)
        .find_map(|first| {
            let held = std::net::UdpSocket::bind((LOOPBACK, first)).ok()?;
            std::net::UdpSocket::bind((LOOPBACK, first + 1)).ok()?;
            Some((held, first + 1))
        })
        .expect("two free UDP ports in a row");
    let ports = plaza_server::voice::PortRange { first: free - 1, last: free };
    let voice = plaza_server::voice::VoiceConfig { ports: Some(ports), ..plaza_server::voice::VoiceConfig::local() };
    let server = TestServer::start_with(plaza_server::ServerConfig { voice, ..plaza_server::ServerConfig::ephemeral() }).await;

    let (mut ann, _) = server.member("Ann", Subprotocol::Json, "ports").await;
    let peer = VoiceClient::new(LOOPBACK, true, 1).await.expect("a voice peer");
    ann.send(&offer(&peer.offer)).await;
    let VoiceSignal::Answer { sdp } = voice_signal(&mut ann).await else { panic!("expected an answer") };
    let mut candidate_ports: Vec<u16> = sdp.lines().filter(|l| l.starts_with("a=candidate:")).filter_map(|l| l.split_whitespace().nth(5)?.parse().ok()).collect();
    candidate_ports.dedup(); // one line per component, the same socket
    assert_eq!(candidate_ports, [free], "the free port of the range: {sdp}");

    // The range is full now.
    let (mut ben, _) = server.member("Ben", Subprotocol::Json, "ports").await;
    let peer = VoiceClient::new(LOOPBACK, true, 1).await.expect("a voice peer");
    ben.send(&offer(&peer.offer)).await;
    let e = error(&mut ben).await;
    assert_eq!(e.code, ErrorCode::VoiceUnavailable);
    assert!(e.message.contains(&format!("no free UDP port in {ports}")), "{}", e.message);
    drop(held);
}

/// A call that is answered and never connects (UDP blocked, a wrong public
/// address: here the client never applies the answer) is counted as such
/// when it goes, for the operators' voice alert.
#[tokio::test]
async fn a_call_that_never_connects_is_counted_when_it_goes() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    let never = "plaza_voice_calls_total{outcome=\"never_connected\"} ";
    let (mut dee, _) = server.member("Dee", Subprotocol::Json, "voice").await;
    let (_, _, before) = server.http("GET", "/metrics", "", &[]).await;
    let peer = VoiceClient::new(LOOPBACK, true, 1).await.expect("a voice peer");
    dee.send(&offer(&peer.offer)).await;
    assert!(matches!(voice_signal(&mut dee).await, VoiceSignal::Answer { .. }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, answered) = server.http("GET", "/metrics", "", &[]).await;
    assert_eq!(metric(&answered, never), metric(&before, never), "not counted while it may still connect");
    dee.send(&ClientMessage::Voice(VoiceSignal::Leave.into_message())).await;
    let counted = async |at_least: f64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, _, now) = server.http("GET", "/metrics", "", &[]).await;
            let counted = metric(&now, never) - metric(&before, never);
            if counted >= at_least {
                return counted;
            }
            assert!(tokio::time::Instant::now() < deadline, "{counted} calls that never connected counted within 5 s of leaving; expected {at_least}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(counted(1.0).await, 1.0);
    // Her client offers again, and again it never connects (blocked UDP
    // looks like this): one person's run of failures counts once.
    tokio::time::sleep(Duration::from_millis(600)).await; // one offer a second
    dee.send(&offer(&peer.offer)).await;
    while !matches!(voice_signal(&mut dee).await, VoiceSignal::Answer { .. }) {} // past the first call's speakers
    dee.send(&ClientMessage::Voice(VoiceSignal::Leave.into_message())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counted(1.0).await, 1.0, "the second failure in a row is not counted again");
    // Someone else's failing call is someone else's.
    let (mut eve, _) = server.member("Eve", Subprotocol::Json, "voice").await;
    let eve_peer = VoiceClient::new(LOOPBACK, true, 1).await.expect("a voice peer");
    eve.send(&offer(&eve_peer.offer)).await;
    assert!(matches!(voice_signal(&mut eve).await, VoiceSignal::Answer { .. }));
    eve.send(&ClientMessage::Voice(VoiceSignal::Leave.into_message())).await;
    assert_eq!(counted(2.0).await, 2.0);
}

#[tokio::test]
async fn joining_another_room_ends_voice_and_tells_the_client() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    let (mut ann, _) = server.member("Ann", Subprotocol::Json, "voice").await;
    let (_voice, _) = start_voice(&mut ann).await;
    ann.send(&ClientMessage::Join(Join { room: "elsewhere".into() })).await;
    let VoiceSignal::Ended { reason } = voice_signal(&mut ann).await else { panic!("expected ended") };
    assert!(reason.contains("offer again"), "{reason}");
}

#[tokio::test]
async fn a_peer_that_goes_away_is_ended_and_its_slot_freed() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    let (mut ann, ann_joined) = server.member("Ann", Subprotocol::Json, "voice").await;
    let (mut ben, _) = server.member("Ben", Subprotocol::Json, "voice").await;
    let (mut ann_voice, _) = start_voice(&mut ann).await;
    let (mut ben_voice, ben_first) = start_voice(&mut ben).await;
    until_hears(&mut ben, ben_first, ann_joined.you).await;
    ann_voice.connected(Duration::from_secs(10)).await.unwrap();
    ben_voice.connected(Duration::from_secs(10)).await.unwrap();
    // Ann's peer goes away without a word (its UDP socket closes): within
    // the SFU's ICE timeouts (5 s + 10 s) her socket is told, and Ben's
    // slot is freed.
    let started = tokio::time::Instant::now();
    drop(ann_voice);
    let reason = loop {
        match ann.try_recv(Duration::from_secs(25)).await.expect("ended within 25 s") {
            ServerMessage::Voice(v) => match VoiceSignal::from_message(&v) {
                Ok(VoiceSignal::Ended { reason }) => break reason,
                _ => continue,
            },
            _ => continue,
        }
    };
    assert!(reason.contains("offer again"), "{reason}");
    assert!(started.elapsed() >= Duration::from_secs(5), "not before the disconnected timeout: {:?}", started.elapsed());
    loop {
        if let VoiceSignal::Speakers { slots } = voice_signal(&mut ben).await
            && slots.iter().all(|s| s.avatar.is_none())
        {
            break;
        }
    }
    let (_, _, metrics) = server.http("GET", "/metrics", "", &[]).await;
    assert_eq!(metric(&metrics, "plaza_voice_streams "), 0.0);
}

/// Three in a room, connected: Ned stands 1 m from Lia and Fay 10 m (both
/// in range), both with a microphone; Lia only listens, with one slot (room
/// for one voice), which holds Ned, her nearest, while nobody talks.
struct Crowd {
    lia: Client,
    lia_voice: VoiceClient,
    ned: Joined,
    ned_client: Client,
    ned_voice: VoiceClient,
    fay: Joined,
    fay_client: Client,
    fay_voice: VoiceClient,
}

impl Crowd {
    async fn gather(server: &TestServer, room: &str) -> Crowd {
        let (mut lia, _) = server.member("Lia", Subprotocol::Json, room).await;
        let (mut ned_client, ned) = server.member("Ned", Subprotocol::Json, room).await;
        let (mut fay_client, fay) = server.member("Fay", Subprotocol::Json, room).await;
        ned_client.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(1.0, 0.0) })).await;
        fay_client.send(&ClientMessage::Pose(PoseUpdate { t: 1, pose: pose_at(10.0, 0.0) })).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut ned_voice, _) = start_voice(&mut ned_client).await;
        let (mut fay_voice, _) = start_voice(&mut fay_client).await;
        let mut lia_voice = VoiceClient::new(LOOPBACK, false, 1).await.expect("a voice peer");
        lia.send(&offer(&lia_voice.offer)).await;
        let VoiceSignal::Answer { sdp } = voice_signal(&mut lia).await else { panic!("expected an answer first") };
        lia_voice.answer(sdp).await.expect("the answer applies");
        let VoiceSignal::Speakers { slots } = voice_signal(&mut lia).await else { panic!("expected speakers after the answer") };
        until_hears(&mut lia, slots, ned.you).await;
        for peer in [&mut lia_voice, &mut ned_voice, &mut fay_voice] {
            peer.connected(Duration::from_secs(10)).await.expect("ICE and DTLS on loopback");
        }
        Crowd { lia, lia_voice, ned, ned_client, ned_voice, fay, fay_client, fay_voice }
    }
}

#[tokio::test]
async fn someone_talking_farther_off_takes_the_slot_of_a_quiet_neighbour() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    // The members' sockets are held (`_ned`, `_fay`): dropped, they would leave.
    let Crowd { mut lia, mut lia_voice, ned: _, ned_client: _ned, mut ned_voice, fay: fay_joined, fay_client: _fay, mut fay_voice } = Crowd::gather(&server, "crowd").await;

    // Fay talks for 3 s; Ned stays quiet.
    let listen = Duration::from_secs(3);
    let (lia_heard, _, _) = tokio::join!(talk(&mut lia_voice, b"", 0, listen), talk(&mut fay_voice, b"fay", 150, listen), talk(&mut ned_voice, b"", 0, listen));
    let from_fay = lia_heard.get(b"fay".as_slice()).copied().unwrap_or(0);
    // Fay has the slot within a reroute (0.5 s) of her first words.
    assert!(from_fay >= 100, "Lia heard {from_fay} of Fay's 150 frames: {lia_heard:?}");
    until_hears(&mut lia, Vec::new(), fay_joined.you).await;
}

/// Lia mutes Ned, who stands nearest and talks: her one slot goes to Fay,
/// farther off, and nothing of Ned's is forwarded to her. A mute past the
/// limit is refused with what is allowed.
#[tokio::test]
async fn a_muted_voice_gives_its_slot_to_another_and_is_not_forwarded() {
    let _turn = STREAMS.lock().await;
    let server = TestServer::start().await;
    let Crowd { mut lia, mut lia_voice, ned: ned_joined, ned_client: mut ned, mut ned_voice, fay: fay_joined, fay_client: mut fay, mut fay_voice } = Crowd::gather(&server, "hush").await;

    lia.send(&ClientMessage::Voice(VoiceSignal::Mute { avatars: vec![ned_joined.you] }.into_message())).await;
    until_hears(&mut lia, Vec::new(), fay_joined.you).await;
    // Both talk for 2 s.
    let listen = Duration::from_secs(2);
    let (lia_heard, _, _) = tokio::join!(talk(&mut lia_voice, b"", 0, listen), talk(&mut ned_voice, b"ned", 100, listen), talk(&mut fay_voice, b"fay", 100, listen));
    let (from_ned, from_fay) = (lia_heard.get(b"ned".as_slice()).copied().unwrap_or(0), lia_heard.get(b"fay".as_slice()).copied().unwrap_or(0));
    assert_eq!(from_ned, 0, "Ned is muted: nothing of his reaches Lia: {lia_heard:?}");
    assert!(from_fay >= 80, "Fay has the slot: {from_fay} of her 100 frames: {lia_heard:?}");

    let too_many: Vec<AvatarId> = (0..plaza_shared::voice::MAX_MUTED as AvatarId + 1).collect();
    lia.send(&ClientMessage::Voice(VoiceSignal::Mute { avatars: too_many }.into_message())).await;
    let e = error(&mut lia).await;
    assert_eq!(e.code, ErrorCode::TooLong);
    assert!(e.message.contains("256"), "says the limit: {}", e.message);

    // Everyone leaves voice, so the next test reads its own streams.
    for client in [&mut lia, &mut ned, &mut fay] {
        client.send(&ClientMessage::Voice(VoiceSignal::Leave.into_message())).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, metrics) = server.http("GET", "/metrics", "", &[]).await;
        if metric(&metrics, "plaza_voice_streams ") == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "voice streams still open 5 s after everyone left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
