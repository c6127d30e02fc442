//! The hello in the upgrade request's headers (plaza_shared::upgrade_hello):
//! the welcome, and for a resume the room's state, come right behind the
//! 101 with no hello frame; what a hello frame gets stays the same.

mod common;

use common::{Client, TestServer, code};
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use plaza_shared::upgrade_hello::{self, TAKEN, TAKEN_VALUE};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BOTH: [Subprotocol; 2] = [Subprotocol::Binary, Subprotocol::Json];

async fn upgrade(server: &TestServer, protocol: Subprotocol, headers: &[(&str, &str)]) -> Result<(Client, axum::http::HeaderMap), (u16, String)> {
    Client::upgrade(tokio::net::TcpStream::connect(server.addr).await.unwrap(), protocol, headers).await
}

#[tokio::test]
async fn a_hello_in_the_headers_is_answered_without_a_hello_frame_and_a_resume_gets_its_seat() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let room = format!("headers-{}", protocol.name());
        let (mut watcher, _) = server.member("Watcher", protocol, &room).await;
        let token = server.token("Roamer").await;
        let bearer = upgrade_hello::authorization(&token);

        let (mut roamer, headers) = upgrade(&server, protocol, &[(upgrade_hello::AUTHORIZATION, &bearer)]).await.expect("upgraded");
        assert_eq!(headers.get(TAKEN).map(|v| v.to_str().unwrap()), Some(TAKEN_VALUE), "the 101 says the hello was taken");
        // No hello frame: the welcome comes by itself.
        let ServerMessage::Welcome(welcome) = roamer.recv().await else { panic!("welcome expected first") };
        roamer.send(&ClientMessage::Join(Join { room: room.clone() })).await;
        let ServerMessage::Joined(first) = roamer.recv().await else { panic!("joined expected") };
        // A hello frame now is a second hello.
        roamer.send(&ClientMessage::Hello(Hello { token: token.clone(), protocol: 1, resume: None })).await;
        let reply = roamer.recv().await;
        assert!(matches!(&reply, ServerMessage::Error(e) if e.code == ErrorCode::BadMessage && e.message.contains("already said hello")), "{reply:?}");

        // Dropped without a close frame; back with the session in a header
        // (and a room to join should the seat be gone: it isn't).
        drop(roamer);
        let (mut back, headers) = upgrade(&server, protocol, &[(upgrade_hello::AUTHORIZATION, &bearer), (upgrade_hello::RESUME, &welcome.session), (upgrade_hello::JOIN, "elsewhere")]).await.expect("upgraded");
        assert_eq!(headers.get(TAKEN).map(|v| v.to_str().unwrap()), Some(TAKEN_VALUE));
        let ServerMessage::Welcome(again) = back.recv().await else { panic!("welcome expected first") };
        assert_eq!(again.session, welcome.session, "the seat was held: the same session");
        let ServerMessage::Joined(state) = back.recv().await else { panic!("the room's state follows the welcome of a resume") };
        assert_eq!(state.you, first.you, "the same avatar");
        assert_eq!(state.room_name, room, "the resumed room, not the one to join without a seat");
        assert_eq!(back.try_recv(Duration::from_millis(300)).await.map(|m| m.type_name()).filter(|t| *t == "joined"), None, "one joined only");
        while let Some(msg) = watcher.try_recv(Duration::from_millis(300)).await {
            if let ServerMessage::Delta(d) = msg {
                assert!(!d.left.contains(&first.you), "a resumed member is never reported gone");
            }
        }
    }
}

/// The room to join rides too: a fresh socket is in it with nothing sent,
/// and a resume whose seat is gone lands there instead of waiting a round
/// trip for a join frame.
#[tokio::test]
async fn a_join_in_the_headers_puts_a_fresh_socket_in_the_room_at_once() {
    let server = TestServer::start().await;
    for protocol in BOTH {
        let room = format!("at-once-{}", protocol.name());
        let bearer = upgrade_hello::authorization(&server.token("Hurried").await);
        let (mut fresh, headers) = upgrade(&server, protocol, &[(upgrade_hello::AUTHORIZATION, &bearer), (upgrade_hello::JOIN, &room)]).await.expect("upgraded");
        assert_eq!(headers.get(upgrade_hello::JOIN_TAKEN).map(|v| v.to_str().unwrap()), Some(TAKEN_VALUE), "the 101 says the join was taken");
        let ServerMessage::Welcome(_) = fresh.recv().await else { panic!("welcome expected first") };
        let ServerMessage::Joined(joined) = fresh.recv().await else { panic!("joined next, with nothing sent") };
        assert_eq!(joined.room_name, room);

        let (mut late, _) = upgrade(&server, protocol, &[(upgrade_hello::AUTHORIZATION, &bearer), (upgrade_hello::RESUME, "no-such-session"), (upgrade_hello::JOIN, &room)]).await.expect("upgraded");
        let ServerMessage::Welcome(w) = late.recv().await else { panic!("welcome expected first") };
        assert_ne!(w.session, "no-such-session", "no seat held: a new session");
        let ServerMessage::Joined(again) = late.recv().await else { panic!("joined in the header's room") };
        assert_eq!(again.room_name, room);
        assert_ne!(again.you, joined.you, "a seat of its own");
    }
}

#[tokio::test]
async fn without_the_headers_the_hello_frame_is_needed_as_before() {
    let server = TestServer::start().await;
    let (mut client, headers) = upgrade(&server, Subprotocol::Json, &[]).await.expect("upgraded");
    assert!(headers.get(TAKEN).is_none(), "no hello taken without Authorization");
    assert_eq!(client.try_recv(Duration::from_millis(300)).await, None, "nothing before the hello");
    let token = server.token("Framed").await;
    client.hello(&token, None).await;
}

/// A proxy in front may use `Authorization` for itself (Basic): not ours,
/// so the hello comes as a frame, as before.
#[tokio::test]
async fn another_authorization_scheme_is_left_alone() {
    let server = TestServer::start().await;
    let (mut client, headers) = upgrade(&server, Subprotocol::Json, &[(upgrade_hello::AUTHORIZATION, "Basic dXNlcjpwYXNz")]).await.expect("upgraded");
    assert!(headers.get(TAKEN).is_none());
    let token = server.token("Proxied").await;
    client.hello(&token, None).await;
}

#[tokio::test]
async fn a_bad_token_in_the_headers_closes_with_4001_as_in_a_hello_frame() {
    let server = TestServer::start().await;
    let (mut client, _) = upgrade(&server, Subprotocol::Binary, &[(upgrade_hello::AUTHORIZATION, "Bearer not-a-token")]).await.expect("upgraded");
    assert_eq!(client.ended(Duration::from_secs(2)).await, common::Ended::Closed(code(CloseCode::from(4001))));
}

#[tokio::test]
async fn malformed_hello_headers_are_refused_before_the_upgrade_with_what_is_allowed() {
    let server = TestServer::start().await;
    let token = server.token("Careless").await;
    let bearer = upgrade_hello::authorization(&token);
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[(upgrade_hello::AUTHORIZATION, "Bearer ")], "token is empty"),
        (&[(upgrade_hello::JOIN, "lobby")], "Plaza-Join needs Authorization"),
        (&[(upgrade_hello::AUTHORIZATION, &bearer), (upgrade_hello::JOIN, " ")], "Plaza-Join: room is empty"),
        (&[(upgrade_hello::RESUME, "s3ss10n")], "Plaza-Resume needs Authorization"),
        (&[(upgrade_hello::AUTHORIZATION, &bearer), (upgrade_hello::RESUME, "a b")], "visible ASCII"),
    ];
    for (headers, says) in cases {
        let (status, body) = upgrade(&server, Subprotocol::Json, headers).await.err().expect("refused");
        assert_eq!(status, 400, "{headers:?}: {body}");
        assert!(body.contains(says), "{headers:?}: {body}");
        assert!(body.contains("\"code\":\"bad_request\""), "{body}");
    }
}
