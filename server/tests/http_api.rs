//! HTTP routes: guest auth, refresh rotation, request ids, JSON errors.

mod common;

use common::TestServer;

#[tokio::test]
async fn guest_auth_returns_a_token_pair() {
    let server = TestServer::start().await;
    let g = server.guest("Ada").await;
    for key in ["user_id", "access_token", "refresh_token"] {
        assert!(g[key].as_str().is_some_and(|v| !v.is_empty()), "{key}: {g}");
    }
    assert_eq!(g["expires_in"], 900);
    let (status, _, body) = server.http("POST", "/api/v1/auth/guest", r#"{"name":""}"#, &[]).await;
    assert_eq!(status, 400);
    assert!(body.contains(r#""code":"bad_request""#) && body.contains("name"), "{body}");
    let (status, _, body) = server.http("POST", "/api/v1/auth/guest", "not json", &[]).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_refresh_token_works_once() {
    let server = TestServer::start().await;
    let g = server.guest("Ada").await;
    let body = format!(r#"{{"refresh_token":"{}"}}"#, g["refresh_token"].as_str().unwrap());
    let (status, _, fresh) = server.http("POST", "/api/v1/auth/refresh", &body, &[]).await;
    assert_eq!(status, 200, "{fresh}");
    let fresh: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    assert_eq!(fresh["user_id"], g["user_id"]);
    assert_ne!(fresh["refresh_token"], g["refresh_token"]);
    let (status, _, again) = server.http("POST", "/api/v1/auth/refresh", &body, &[]).await;
    assert_eq!(status, 401, "the old refresh token stops working: {again}");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let server = TestServer::start().await;
    let (_, head, _) = server.http("GET", "/health", "", &[("x-request-id", "trace-me-42")]).await;
    assert!(head.contains("x-request-id: trace-me-42"), "{head}");
    let (_, head, _) = server.http("GET", "/nope", "", &[]).await;
    let id = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("a made-up id");
    assert!(!id.is_empty() && id.len() <= 128);
    let too_long = "a".repeat(129);
    let (_, head, _) = server.http("GET", "/health", "", &[("x-request-id", &too_long)]).await;
    assert!(!head.contains(&too_long), "an invalid id is replaced");
}

/// The HTTP side of the error rate: every answer is counted by route pattern
/// (never an id), method and status class.
#[tokio::test]
async fn every_answer_is_counted_by_route_method_and_status_class() {
    let server = TestServer::start().await;
    let count = |text: &str, series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let series = [
        r#"plaza_http_requests_total{route="/health",method="GET",status="2xx"}"#,
        r#"plaza_http_requests_total{route="/api/v1/auth/guest",method="POST",status="4xx"}"#,
        r#"plaza_http_requests_total{route="/api/v1/rooms/{id}/chat",method="GET",status="4xx"}"#,
        r#"plaza_http_requests_total{route="(unmatched)",method="other",status="4xx"}"#,
    ];
    let (_, _, before) = server.http("GET", "/metrics", "", &[]).await;
    let before: Vec<f64> = series.iter().map(|s| count(&before, s)).collect();
    assert_eq!(server.http("GET", "/health", "", &[]).await.0, 200);
    assert_eq!(server.http("POST", "/api/v1/auth/guest", "not json", &[]).await.0, 400);
    assert_eq!(server.http("GET", "/api/v1/rooms/no_such_room/chat", "", &[]).await.0, 404);
    assert_eq!(server.http("GET", "/u_secret_id", "", &[]).await.0, 404);
    let (_, _, after) = server.http("GET", "/metrics", "", &[]).await;
    for (s, b) in series.iter().zip(before) {
        // Other tests in this binary share the recorder: at least ours.
        assert!(count(&after, s) >= b + 1.0, "{s}: {b} → {}", count(&after, s));
    }
    assert!(!after.contains("no_such_room") && !after.contains("u_secret_id"), "no ids in labels");
}

/// A connection that sends no request, half a request head, or nothing
/// after its last answer is closed once the head deadline passes. Before,
/// each held a TCP place (and a descriptor) for good: a few thousand would
/// shut everyone else out.
#[tokio::test]
async fn connections_that_send_no_whole_request_head_in_time_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = plaza_server::ServerConfig { request_head_timeout: std::time::Duration::from_millis(500), ..plaza_server::ServerConfig::ephemeral() };
    let server = TestServer::start_with(config).await;
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n").await.unwrap();
    let mut kept_alive = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    kept_alive.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    for (name, mut stream) in [("silent", silent), ("half a head", partial), ("idle after an answer", kept_alive)] {
        let mut got = Vec::new();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut got)).await;
        assert!(closed.is_ok(), "{name}: still open 5 s on");
        if name == "idle after an answer" {
            assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{name}: answered first: {:?}", String::from_utf8_lossy(&got));
        }
    }
    // A request that arrives whole is answered as ever.
    let (status, _, _) = server.http("GET", "/health", "", &[]).await;
    assert_eq!(status, 200);
}
