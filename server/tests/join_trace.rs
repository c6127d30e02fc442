//! The join flow's trace: the real binary exports by OTLP/HTTP (protobuf)
//! to a receiver in this test, and the spans of one client's sign-in,
//! socket, hello, join, first delta and voice signal form one tree under the
//! trace id of the client's `traceparent`.
//!
//! The batch exporter's delay is set to a minute, so the spans can only
//! arrive through the flush at shutdown (SIGTERM).

mod common;

use axum::body::Bytes;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::*;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AUTH_PARENT: &str = "00f067aa0ba902b7";
const WS_PARENT: &str = "00f067aa0ba902b8";

/// An OTLP/HTTP receiver: every span of every `POST /v1/traces`.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<String>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let services = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (spans.clone(), services.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| async move {
            assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/x-protobuf"));
            let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            for resource in request.resource_spans {
                for kv in resource.resource.iter().flat_map(|r| &r.attributes) {
                    if kv.key == "service.name" {
                        r.lock().unwrap().push(string(kv.value.as_ref().and_then(|v| v.value.as_ref())));
                    }
                }
                for scope in resource.scope_spans {
                    s.lock().unwrap().extend(scope.spans);
                }
            }
            axum::http::StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, spans, services)
}

fn string(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(|kv| string(kv.value.as_ref().and_then(|v| v.value.as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_join_flow_is_one_span_tree_under_the_clients_trace() {
    let (otlp, received, services) = receiver().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("plaza-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plaza-server"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--drain-grace-s", "0", "--data-dir"])
        .arg(&dir)
        .env("PLAZA_TOKEN_SECRET", "trace-test-secret-0123456789abcdef")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let remote = RemoteServer { addr: format!("127.0.0.1:{port}").parse().unwrap() };
    remote.wait_up().await;
    let server = TestServer { addr: remote.addr, stop: None };

    // Sign in with the client's trace context.
    let traceparent = format!("00-{TRACE_ID}-{AUTH_PARENT}-01");
    let (status, _, body) = server
        .http("POST", "/api/v1/auth/guest", r#"{"name":"Tracy"}"#, &[("x-request-id", "req-trace-auth"), ("traceparent", &traceparent)])
        .await;
    assert_eq!(status, 200, "{body}");
    let auth: serde_json::Value = serde_json::from_str(&body).unwrap();
    let user_id = auth["user_id"].as_str().unwrap().to_owned();

    // The socket, in the same trace.
    let mut req = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "plaza.v1.json".parse().unwrap());
    req.headers_mut().insert("traceparent", format!("00-{TRACE_ID}-{WS_PARENT}-01").parse().unwrap());
    req.headers_mut().insert("x-request-id", "req-trace-ws".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
    let mut client = Client { ws, protocol: Subprotocol::Json };
    let welcome = client.hello(auth["access_token"].as_str().unwrap(), None).await;
    client.send(&ClientMessage::Join(Join { room: "traced".into() })).await;
    let joined = match client.recv().await {
        ServerMessage::Joined(j) => j,
        other => panic!("expected joined, got {other:?}"),
    };
    // Someone else joins: the first delta this member is sent.
    let (_other, _) = server.member("Other", Subprotocol::Binary, "traced").await;
    let delta = client.next_delta().await;
    assert!(!delta.joined.is_empty());
    client.send(&ClientMessage::Voice(Voice { signal: serde_json::json!({"type": "offer", "sdp": "v=0"}) })).await;
    assert!(matches!(client.recv().await, ServerMessage::Error(_)), "an offer with no audio is refused, but signaled");

    // SIGTERM: the drain closes the socket, and the exporter flushes.
    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(exited.is_some_and(|s| s.success()), "the server exits cleanly after SIGTERM: {exited:?}");

    let spans = received.lock().unwrap().clone();
    assert!(services.lock().unwrap().iter().all(|s| s == "plaza-server"), "service.name: {:?}", services.lock().unwrap());
    let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == TRACE_ID).collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    let one = |name: &str| -> &Span {
        let found: Vec<&&Span> = ours.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` span in the trace: {names:?}");
        found[0]
    };
    let auth_span = one("POST /api/v1/auth/guest");
    let ws_span = one("GET /ws");
    let session = one("ws.session");
    let hello = one("hello");
    let join = one("join");
    let first_delta = one("first_delta");
    let voice = one("voice.signal");
    assert_eq!(ours.len(), 7, "nothing else (no per-message spans) in the trace: {names:?}");

    // The tree.
    assert_eq!(hex(&auth_span.parent_span_id), AUTH_PARENT, "sign-in under the client's span");
    assert_eq!(hex(&ws_span.parent_span_id), WS_PARENT, "upgrade under the client's span");
    assert_eq!(session.parent_span_id, ws_span.span_id, "ws.session under the upgrade request");
    for child in [hello, join, first_delta, voice] {
        assert_eq!(child.parent_span_id, session.span_id, "{} under ws.session", child.name);
    }

    // The attributes.
    assert_eq!(attr(auth_span, "request_id").as_deref(), Some("req-trace-auth"));
    assert_eq!(attr(auth_span, "user_id").as_deref(), Some(user_id.as_str()));
    assert_eq!(attr(auth_span, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(ws_span, "request_id").as_deref(), Some("req-trace-ws"));
    assert_eq!(attr(session, "request_id").as_deref(), Some("req-trace-ws"));
    assert_eq!(attr(session, "user_id").as_deref(), Some(user_id.as_str()));
    assert_eq!(attr(session, "session_id").as_deref(), Some(welcome.session.as_str()));
    assert_eq!(attr(session, "room_id").as_deref(), Some(joined.room.as_str()));
    assert_eq!(attr(hello, "user_id").as_deref(), Some(user_id.as_str()));
    assert_eq!(attr(join, "room_id").as_deref(), Some(joined.room.as_str()));
    assert_eq!(attr(join, "room").as_deref(), Some("traced"));
    assert_eq!(attr(first_delta, "room_id").as_deref(), Some(joined.room.as_str()));
    assert_eq!(attr(voice, "kind").as_deref(), Some("offer"));
    assert_eq!(attr(voice, "room_id").as_deref(), Some(joined.room.as_str()));

    // The timings: hello before join; the first delta after the join.
    assert!(hello.end_time_unix_nano <= join.start_time_unix_nano);
    assert!(first_delta.start_time_unix_nano <= join.end_time_unix_nano && first_delta.end_time_unix_nano >= join.end_time_unix_nano);
    assert!(session.end_time_unix_nano >= voice.end_time_unix_nano);
    // Another trace for the other member: its socket has its own tree.
    assert!(spans.iter().any(|s| s.name == "ws.session" && hex(&s.trace_id) != TRACE_ID));
}
