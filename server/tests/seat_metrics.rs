//! The seat counters an operator reads when the network is bad: seats held
//! for a resume (`plaza_seats_held_total`), resumes by whether the seat was
//! still there (`plaza_seat_resumes_total{outcome}`), and held seats let go
//! (`plaza_seats_expired_total`). One test in its own binary: nothing else
//! in this process touches the recorder, so the counts are exact.

mod common;

use common::*;
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use std::time::Duration;

fn value(metrics: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
}

/// (held, resumed, seat gone, expired) now.
async fn seats(server: &TestServer) -> (f64, f64, f64, f64) {
    let (_, _, text) = server.http("GET", "/metrics", "", &[]).await;
    (
        value(&text, "plaza_seats_held_total"),
        value(&text, r#"plaza_seat_resumes_total{outcome="resumed"}"#),
        value(&text, r#"plaza_seat_resumes_total{outcome="seat_gone"}"#),
        value(&text, "plaza_seats_expired_total"),
    )
}

/// Waits (5 s at most) until the counts are `want`; they are when it returns.
async fn until_seats(server: &TestServer, want: (f64, f64, f64, f64)) {
    for _ in 0..100 {
        if seats(server).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seats(server).await, want, "(held, resumed, seat gone, expired)");
}

#[tokio::test]
async fn seats_held_resumed_gone_and_expired_are_counted() {
    let server = TestServer::start().await;
    assert_eq!(seats(&server).await, (0.0, 0.0, 0.0, 0.0), "all at zero from start-up");
    let token = server.token("Roamer").await;
    let mut roamer = Client::connect(server.addr, Subprotocol::Binary).await;
    let welcome = roamer.hello(&token, None).await;
    roamer.send(&ClientMessage::Join(Join { room: "seats".into() })).await;
    let ServerMessage::Joined(_) = roamer.recv().await else { panic!("joined expected") };

    // The socket dies without a close frame: its seat is held.
    drop(roamer);
    until_seats(&server, (1.0, 0.0, 0.0, 0.0)).await;

    // It comes back for it.
    let mut back = Client::connect(server.addr, Subprotocol::Binary).await;
    assert_eq!(back.hello(&token, Some(&welcome.session)).await.session, welcome.session, "resumed");
    until_seats(&server, (1.0, 1.0, 0.0, 0.0)).await;

    // A session that holds no seat anywhere gets a new one.
    let mut stranger = Client::connect(server.addr, Subprotocol::Binary).await;
    assert_ne!(stranger.hello(&token, Some("no-such-session")).await.session, "no-such-session");
    until_seats(&server, (1.0, 1.0, 1.0, 0.0)).await;

    // Dropped again, and nobody comes back within the window: let go.
    drop(back);
    until_seats(&server, (2.0, 1.0, 1.0, 0.0)).await;
    tokio::time::sleep(plaza_server::rooms::RESUME_WINDOW).await;
    until_seats(&server, (2.0, 1.0, 1.0, 1.0)).await;

    // Too late now: the resume gets a new session.
    let mut late = Client::connect(server.addr, Subprotocol::Binary).await;
    assert_ne!(late.hello(&token, Some(&welcome.session)).await.session, welcome.session, "the seat is gone");
    until_seats(&server, (2.0, 1.0, 2.0, 1.0)).await;
}
