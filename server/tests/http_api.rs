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
