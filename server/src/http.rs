//! HTTP routes. Every response carries `x-request-id` (the request's when it
//! is 1–128 visible ASCII characters, else a new one); errors are
//! `{"error":{"code","message"}}`.

use crate::AppState;
use crate::auth::{NewRefresh, now_unix, random_token, refresh_hash};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plaza_shared::codec::Subprotocol;
use plaza_shared::limits::{DEFAULT_ROOM_CAPACITY, MAX_MESSAGE_BYTES, MAX_ROOM_CAPACITY, ROOM_NAME_MAX_CHARS};
use plaza_shared::messages::validate_display_name;
use plaza_shared::upgrade_hello;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/auth/guest", post(guest))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/rooms", get(list_rooms).post(create_room))
        .route("/api/v1/rooms/{id}/chat", get(chat_history))
        .route(
            "/api/v1/telemetry",
            post(crate::telemetry::ingest).layer(axum::extract::DefaultBodyLimit::max(plaza_shared::telemetry::MAX_REPORT_BYTES)),
        )
        .route("/ws", get(websocket))
        .fallback(not_found)
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// An error response: status, code, message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": {"code": self.1, "message": self.2}}))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|c| c.is_ascii_graphic())
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get("x-request-id") {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => HeaderValue::from_str(&random_token(12)).expect("base64url is a valid header"),
    };
    req.headers_mut().insert("x-request-id", id.clone());
    // Also the trace span of every request (crate::otel): `otel.*` shape
    // it there and stay out of the logs.
    let span = tracing::info_span!(
        "http.request",
        request_id = %id.to_str().unwrap_or(""),
        method = %req.method(),
        path = %req.uri().path(),
        user_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let (method, route) = (req.method().clone(), route_of(req.uri().path()));
    if crate::otel::enabled() {
        span.record("otel.name", format!("{method} {route}"));
        span.record("otel.kind", "server");
        crate::otel::set_remote_parent(&span, req.headers());
    }
    let mut response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let method = ROUTES.iter().find(|(m, r)| *r == route && *m == method.as_str()).map_or("other", |(m, _)| *m);
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route, "method" => method, "status" => crate::metrics::status_class(response.status().as_u16())).increment(1);
    if crate::otel::enabled() {
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    response.headers_mut().insert("x-request-id", id);
    response
}

/// Every (method, route) the router answers, plus what anything else is
/// counted as: the labels of `plaza_http_requests_total`.
pub const ROUTES: [(&str, &str); 11] = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/auth/guest"),
    ("POST", "/api/v1/auth/refresh"),
    ("GET", "/api/v1/rooms"),
    ("POST", "/api/v1/rooms"),
    ("GET", "/api/v1/rooms/{id}/chat"),
    ("POST", "/api/v1/telemetry"),
    ("GET", "/ws"),
    ("other", "(unmatched)"),
];

/// The route a path matched, for span names and metric labels (no ids in
/// them).
fn route_of(path: &str) -> &'static str {
    if let Some((_, route)) = ROUTES.iter().find(|(_, r)| *r == path) {
        return route;
    }
    match path.strip_prefix("/api/v1/rooms/").and_then(|rest| rest.strip_suffix("/chat")) {
        Some(id) if !id.is_empty() && !id.contains('/') => "/api/v1/rooms/{id}/chat",
        _ => "(unmatched)",
    }
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// 200 when the store (and Redis, with `--redis-url`) answers and the
/// server is not draining.
async fn ready(State(state): State<AppState>) -> Response {
    if *state.draining.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining", "reason": "the server is shutting down"}))).into_response();
    }
    let unavailable = |reason: String| (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": reason}))).into_response();
    let wait = std::time::Duration::from_secs(2);
    match tokio::time::timeout(wait, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return unavailable(format!("store: {e}")),
        Err(_) => return unavailable("store: no answer within 2 s".into()),
    }
    if let Some(bus) = &state.bus {
        match tokio::time::timeout(wait, bus.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return unavailable(format!("redis: {e}")),
            Err(_) => return unavailable("redis: no answer within 2 s".into()),
        }
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics_text() -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render())
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", "no such route".into())
}

/// JSON bodies with a clear error for bad ones.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
struct GuestRequest {
    name: String,
}

async fn guest(State(state): State<AppState>, body: axum::body::Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: GuestRequest = parse(&body)?;
    validate_display_name(&req.name).map_err(|e| bad_request(e.message))?;
    let started = std::time::Instant::now();
    let user_id = format!("u_{}", random_token(9));
    let pair = issue_pair(&state, &user_id, &req.name).await?;
    metrics::histogram!(crate::metrics::AUTH_DURATION).record(started.elapsed().as_secs_f64());
    tracing::Span::current().record("user_id", user_id.as_str());
    tracing::info!(user_id = %user_id, "guest signed in");
    Ok(Json(pair))
}

/// A new access and refresh token; the refresh token is stored first, so
/// one that was handed out works after a restart.
async fn issue_pair(state: &AppState, user_id: &str, name: &str) -> Result<serde_json::Value, ApiError> {
    let (access, _) = state.keys.issue(user_id, name);
    let refresh = NewRefresh::issue(user_id, name);
    state.store.insert_refresh(&refresh.hash, &refresh.grant).await.map_err(|e| {
        tracing::error!(cause = %e, "refresh token not stored");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "signing in is unavailable just now; try again".into())
    })?;
    Ok(json!({"user_id": user_id, "access_token": access, "expires_in": state.keys.access_ttl.as_secs(), "refresh_token": refresh.token}))
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(State(state): State<AppState>, body: axum::body::Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: RefreshRequest = parse(&body)?;
    let grant = state.store.take_refresh(&refresh_hash(&req.refresh_token), now_unix()).await.map_err(|e| {
        tracing::error!(cause = %e, "refresh token not read");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "refreshing is unavailable just now; try again".into())
    })?;
    match grant {
        Some(g) => Ok(Json(issue_pair(&state, &g.user_id, &g.name).await?)),
        None => Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "refresh token is unknown, used or expired".into())),
    }
}

async fn list_rooms(State(state): State<AppState>) -> impl IntoResponse {
    let mut rooms: Vec<_> = state
        .directory
        .list()
        .await
        .into_iter()
        .map(|r| plaza_shared::messages::RoomSummary { id: r.id.to_string(), name: r.name.to_string(), users: r.members(), capacity: r.capacity })
        .collect();
    if let Some(bus) = &state.bus {
        shared_rooms(&state, bus, &mut rooms).await;
    }
    Json(rooms)
}

/// With `--redis-url`: the rooms other instances made too, and who is in
/// the rooms other instances run (as their owners last said).
async fn shared_rooms(state: &AppState, bus: &crate::bus::Bus, rooms: &mut Vec<plaza_shared::messages::RoomSummary>) {
    match state.store.rooms().await {
        Ok(stored) => {
            let known: std::collections::HashSet<String> = rooms.iter().map(|r| r.id.clone()).collect();
            rooms.extend(stored.into_iter().filter(|(id, _, _)| !known.contains(id)).map(|(id, name, capacity)| plaza_shared::messages::RoomSummary { id, name, users: 0, capacity }));
        }
        Err(e) => tracing::warn!(cause = %e, "rooms other instances made not read from the store"),
    }
    let here: std::collections::HashSet<std::sync::Arc<str>> = bus.held().into_iter().map(|r| r.id).collect();
    let elsewhere: Vec<usize> = (0..rooms.len()).filter(|&i| !here.contains(rooms[i].id.as_str())).collect();
    let ids: Vec<&str> = elsewhere.iter().map(|&i| rooms[i].id.as_str()).collect();
    let counts = bus.users(&ids).await;
    for (i, users) in elsewhere.into_iter().zip(counts) {
        rooms[i].users = users;
    }
    rooms.sort_by(|a, b| a.name.cmp(&b.name));
}

#[derive(Deserialize)]
struct CreateRoom {
    name: String,
    #[serde(default)]
    capacity: Option<u32>,
}

/// The claims of the request's `Authorization: Bearer` access token; 401
/// without a valid one.
pub fn bearer(state: &AppState, headers: &HeaderMap) -> Result<crate::auth::Claims, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", m.into());
    let value = headers.get("authorization").ok_or_else(|| unauthorized("needs Authorization: Bearer <access token>"))?;
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
    state.keys.verify(token).map_err(|e| unauthorized(&e.to_string()))
}

async fn create_room(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Result<impl IntoResponse, ApiError> {
    bearer(&state, &headers)?;
    let req: CreateRoom = parse(&body)?;
    let chars = req.name.chars().count();
    if chars == 0 || chars > ROOM_NAME_MAX_CHARS || req.name.chars().any(char::is_control) {
        return Err(bad_request(format!("name must have 1–{ROOM_NAME_MAX_CHARS} characters, none of them control characters")));
    }
    let capacity = req.capacity.unwrap_or(DEFAULT_ROOM_CAPACITY);
    if !(1..=MAX_ROOM_CAPACITY).contains(&capacity) {
        return Err(bad_request(format!("capacity must be 1–{MAX_ROOM_CAPACITY}")));
    }
    let room = state
        .directory
        .create(&req.name, capacity)
        .await
        .map_err(|e| match e {
            crate::rooms::JoinError::NameTaken { .. } => ApiError(StatusCode::CONFLICT, "room_exists", format!("{e}; join it by name or id, or pick another name")),
            e => ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        })?;
    Ok((StatusCode::CREATED, Json(json!({"id": &*room.id, "name": &*room.name, "users": 0, "capacity": room.capacity}))))
}

async fn websocket(State(state): State<AppState>, peer: Option<axum::Extension<crate::peer_link::PeerSocket>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if *state.draining.borrow() {
        metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "draining").increment(1);
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "draining", "the server is shutting down; try another instance".into()).into_response();
    }
    // `protocols` picks the first of ours the client offered.
    let ws = ws.protocols(Subprotocol::ALL.map(Subprotocol::name));
    let protocol = ws.selected_protocol().and_then(|p| p.to_str().ok()).and_then(Subprotocol::from_name);
    let Some(protocol) = protocol else {
        return bad_request("ask for subprotocol plaza.v1.bin or plaza.v1.json (Sec-WebSocket-Protocol)").into_response();
    };
    // A hello in the upgrade's headers (plaza_shared::upgrade_hello): the
    // welcome goes out right behind the 101, a round trip sooner.
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let header_hello = match upgrade_hello::from_headers(header(upgrade_hello::AUTHORIZATION), header(upgrade_hello::RESUME), header(upgrade_hello::JOIN)) {
        Ok(hello) => hello,
        Err(message) => return bad_request(message).into_response(),
    };
    let (hello_taken, join_taken) = (header_hello.is_some(), header_hello.as_ref().is_some_and(|h| h.join.is_some()));
    // Another instance relaying this socket's user names the session its
    // client knows (crate::relay); only with that instance's signature.
    let session = match (header(crate::relay::SESSION), header(crate::relay::SESSION_SIG)) {
        (None, None) => None,
        (Some(session), Some(sig)) => match (std::str::from_utf8(session), std::str::from_utf8(sig)) {
            (Ok(session), Ok(sig)) if state.keys.verify_session(session, sig) => Some(session.to_owned()),
            _ => return bad_request("Plaza-Session is for instances relaying to each other; its signature doesn't hold").into_response(),
        },
        _ => return bad_request("Plaza-Session and Plaza-Session-Sig go together (instances relaying to each other)").into_response(),
    };
    // Held by the socket's task for its whole life.
    let Some(admitted) = state.connections.admit() else {
        return crate::capacity::websocket_refusal(state.connections.limit());
    };
    // The socket's span, a child of this request's (and so of the caller's
    // `traceparent`); it lives until the socket closes.
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    let trace = crate::otel::SessionTrace::new(request_id);
    let mut response = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        // Small read buffer: tungstenite allocates it per socket and
        // zero-fills up to this much on every read, and a pose is ~40
        // bytes. 4 KiB took RSS per connection from ~140 KB to ~20 KB;
        // 1 KiB to ~17 KB (docs/benchmarks.md, session 7).
        .read_buffer_size(1024)
        .on_upgrade(move |socket| {
            let span = trace.span().clone();
            tracing::Instrument::instrument(
                async move {
                    let _admitted = admitted;
                    crate::gateway::serve(socket, protocol, state, trace, peer.map(|p| p.0), header_hello, session).await
                },
                span,
            )
        });
    if hello_taken {
        response.headers_mut().insert(upgrade_hello::TAKEN, HeaderValue::from_static(upgrade_hello::TAKEN_VALUE));
    }
    if join_taken {
        response.headers_mut().insert(upgrade_hello::JOIN_TAKEN, HeaderValue::from_static(upgrade_hello::TAKEN_VALUE));
    }
    response
}

async fn chat_history(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = match query.get("limit") {
        None => 50,
        Some(v) => v.parse::<u32>().ok().filter(|n| (1..=200).contains(n)).ok_or_else(|| bad_request(format!("limit `{v}` is not allowed; use 1–200 (default 50)")))?,
    };
    let room = state
        .directory
        .resolve(&room, false)
        .await
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, "room_not_found", "no room has that id".into()))?;
    // From the room's memory; the store when the room can't tell, or when
    // the room runs on another instance (this one's copy hears no chat).
    let runs_here = state.bus.as_ref().is_none_or(|bus| bus.holds(&room.id));
    let remembered = match runs_here {
        true => room.recent_chat(limit as usize).await,
        false => None,
    };
    let messages = match remembered {
        Some(messages) => messages,
        None => state
            .store
            .history(&room.id, limit)
            .await
            .map_err(|e| {
                tracing::error!(cause = %e, "chat history failed");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "chat history is unavailable; try again".into())
            })?
            .into_iter()
            .map(Arc::new)
            .collect(),
    };
    Ok(Json(messages))
}

#[cfg(test)]
mod tests {
    #[test]
    fn span_names_use_the_route_never_an_id() {
        assert_eq!(super::route_of("/api/v1/auth/guest"), "/api/v1/auth/guest");
        assert_eq!(super::route_of("/api/v1/rooms/r_abc/chat"), "/api/v1/rooms/{id}/chat");
        assert_eq!(super::route_of("/api/v1/rooms/a/b/chat"), "(unmatched)");
        assert_eq!(super::route_of("/u_secret"), "(unmatched)");
    }
}
