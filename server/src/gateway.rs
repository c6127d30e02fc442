//! One task per WebSocket: the hello handshake, then relaying between the
//! socket and the room task. A writer task owns the socket's sending half
//! and drains a bounded queue; the room offers it deltas with `try_send` and
//! can close it through a separate one-slot channel even when the queue is
//! full.

use crate::AppState;
use crate::metrics as m;
use crate::auth::{Claims, now_unix, now_unix_ms, random_token};
use crate::limiter::{Admission, Limiter};
use crate::rooms::{JoinError, MemberLink, Outbound, RoomHandle};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use plaza_shared::codec::{DecodeError, Subprotocol};
use plaza_shared::limits::{HELLO_TIMEOUT_MS, PROTOCOL_VERSION, TICK_HZ, close};
use plaza_shared::messages::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// Messages queued to one socket (about 3 s of deltas at 20 Hz).
pub const OUTBOUND_QUEUE: usize = 64;
/// A peer silent for this long is dropped (clients ping every few seconds).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// `token_expiring` goes out this long before the access token expires.
pub const TOKEN_WARNING_SECS: u64 = 60;
/// Heartbeat timeouts close normally: the peer is most likely gone anyway.
const NORMAL_CLOSE: u16 = 1000;
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// `WS_RATE_LIMIT_DEBUG` on: log every rate-limit decision.
fn rate_limit_debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WS_RATE_LIMIT_DEBUG").is_ok_and(|v| v.parse::<plaza_shared::flags::Switch>().is_ok_and(|s| s.is_on())))
}

/// Serves one upgraded socket until it closes.
pub async fn serve(socket: WebSocket, protocol: Subprotocol, state: AppState) {
    let _open = Arc::clone(&state.sockets);
    metrics::gauge!(m::WS_CONNECTIONS).increment(1.0);
    serve_inner(socket, protocol, state).await;
    metrics::gauge!(m::WS_CONNECTIONS).decrement(1.0);
}

async fn serve_inner(socket: WebSocket, protocol: Subprotocol, state: AppState) {
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (kick_tx, kick_rx) = mpsc::channel(1);
    let writer = tokio::spawn(write_loop(sink, out_rx, kick_rx, protocol));
    let link = MemberLink { outbound: out_tx, kick: kick_tx };

    let handshake = handshake(&mut stream, protocol, &state, &link).await;
    let mut session = match handshake {
        Ok(session) => session,
        Err((code, reason)) => {
            let _ = link.kick.try_send((code, reason));
            drop(link);
            let _ = writer.await;
            linger(&mut stream).await;
            return;
        }
    };
    let span = tracing::info_span!("socket", user_id = %session.claims.sub, session_id = %session.id, protocol = protocol.name());
    let outcome = tracing::Instrument::instrument(
        async {
            tracing::info!("welcomed");
            let outcome = session.run(&mut stream, &state, &link).await;
            if let Some(room) = session.room.take() {
                room.0.leave(room.1).await;
            }
            tracing::info!(close = outcome.map(|c| c.0), "socket done");
            outcome
        },
        span,
    )
    .await;
    if let Some((code, reason)) = outcome {
        // In order, after the replies already queued; the kick channel is
        // for when the queue doesn't drain (a client that stopped reading).
        let queued = timeout(CLOSE_SEND_TIMEOUT, link.outbound.send(Outbound::Close(code, reason))).await;
        if !matches!(queued, Ok(Ok(()))) {
            let _ = link.kick.try_send((code, reason));
        }
    }
    drop(link);
    let _ = writer.await;
    linger(&mut stream).await;
}

/// After our close frame, reads (and drops) what the peer still sends until
/// its close frame, for at most a second. Dropping a socket with unread
/// input makes the kernel reset the connection, and a reset can discard our
/// last frames (the close code among them) before the peer reads them.
async fn linger(stream: &mut Stream) {
    let _ = timeout(CLOSE_SEND_TIMEOUT, async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

async fn send_close(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }));
    let _ = timeout(CLOSE_SEND_TIMEOUT, sink.send(frame)).await;
}

/// The frame for `msg`, or `None` when it was only about the receiver itself.
fn encode(protocol: Subprotocol, msg: &ServerMessage, own: AvatarId) -> Option<Message> {
    // A member is never sent its own avatar.
    let filtered;
    let msg = match msg {
        ServerMessage::Delta(d) if own != 0 && (d.avatars.iter().any(|a| a.id == own) || d.joined.iter().any(|a| a.id == own)) => {
            filtered = ServerMessage::Delta(Delta {
                avatars: d.avatars.iter().filter(|a| a.id != own).cloned().collect(),
                joined: d.joined.iter().filter(|a| a.id != own).cloned().collect(),
                ..d.clone()
            });
            &filtered
        }
        other => other,
    };
    if let ServerMessage::Delta(d) = msg
        && d.avatars.is_empty()
        && d.joined.is_empty()
        && d.left.is_empty()
    {
        return None; // a tick with no change (for this member) sends nothing
    }
    Some(match protocol {
        Subprotocol::Binary => Message::Binary(plaza_shared::codec::binary::encode_server(msg).into()),
        Subprotocol::Json => Message::Text(plaza_shared::codec::json::encode(msg).into()),
    })
}

async fn write_loop(
    mut sink: Sink,
    mut out_rx: mpsc::Receiver<Outbound>,
    mut kick_rx: mpsc::Receiver<(u16, &'static str)>,
    protocol: Subprotocol,
) {
    // The receiver's own avatar, learnt from the `joined` passing through
    // (the room queues it before any delta that could mention it).
    let mut own: AvatarId = 0;
    loop {
        tokio::select! {
            biased;
            Some((code, reason)) = kick_rx.recv() => {
                send_close(&mut sink, code, reason).await;
                return;
            }
            next = out_rx.recv() => match next {
                Some(Outbound::Message(msg)) => {
                    if let ServerMessage::Joined(j) = msg.as_ref() {
                        own = j.you;
                    }
                    let Some(frame) = encode(protocol, &msg, own) else { continue };
                    metrics::counter!(m::WS_MESSAGES, "direction" => "out", "type" => msg.type_name()).increment(1);
                    let bytes = match &frame {
                        Message::Binary(b) => b.len(),
                        Message::Text(t) => t.len(),
                        _ => 0,
                    };
                    metrics::counter!(m::WS_BYTES, "direction" => "out").increment(bytes as u64);
                    tokio::select! {
                        biased;
                        Some((code, reason)) = kick_rx.recv() => {
                            send_close(&mut sink, code, reason).await;
                            return;
                        }
                        sent = sink.send(frame) => if sent.is_err() { return },
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    send_close(&mut sink, code, reason).await;
                    return;
                }
                None => {
                    // The reader is done; a kick may still be queued.
                    if let Ok((code, reason)) = kick_rx.try_recv() {
                        send_close(&mut sink, code, reason).await;
                    } else {
                        let _ = timeout(CLOSE_SEND_TIMEOUT, sink.close()).await;
                    }
                    return;
                }
            }
        }
    }
}

/// What a frame turned out to be.
enum Incoming {
    Message(ClientMessage),
    Invalid(ErrorCode, String),
    TooLarge,
    Closed,
    Ignore,
}

fn read(protocol: Subprotocol, frame: Option<Result<Message, axum::Error>>) -> Incoming {
    // Both payloads are reference-counted buffers: no copy per message.
    let bytes: axum::body::Bytes = match frame {
        None | Some(Ok(Message::Close(_))) => return Incoming::Closed,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Incoming::Ignore,
        Some(Ok(Message::Text(text))) if protocol == Subprotocol::Json => text.into(),
        Some(Ok(Message::Binary(bytes))) if protocol == Subprotocol::Binary => bytes,
        Some(Ok(Message::Text(_))) => return Incoming::Invalid(ErrorCode::BadMessage, "plaza.v1.bin takes binary frames, not text".into()),
        Some(Ok(Message::Binary(_))) => return Incoming::Invalid(ErrorCode::BadMessage, "plaza.v1.json takes text frames, not binary".into()),
        Some(Err(e)) => {
            let too_large = e
                .into_inner()
                .downcast::<tungstenite::Error>()
                .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
            return if too_large { Incoming::TooLarge } else { Incoming::Closed };
        }
    };
    metrics::counter!(m::WS_BYTES, "direction" => "in").increment(bytes.len() as u64);
    match protocol.decode_client(&bytes) {
        Ok(msg) => match msg.validate() {
            Ok(()) => {
                metrics::counter!(m::WS_MESSAGES, "direction" => "in", "type" => msg.type_name()).increment(1);
                Incoming::Message(msg)
            }
            Err(e) => Incoming::Invalid(e.code, e.message),
        },
        Err(DecodeError::TooLarge { .. }) => Incoming::TooLarge,
        Err(e) => Incoming::Invalid(ErrorCode::BadMessage, e.to_string()),
    }
}

async fn handshake(stream: &mut Stream, protocol: Subprotocol, state: &AppState, link: &MemberLink) -> Result<Session, (u16, &'static str)> {
    let first = timeout(Duration::from_millis(HELLO_TIMEOUT_MS), stream.next()).await.map_err(|_| (close::BAD_HELLO, "no hello within 5 s"))?;
    let hello = match read(protocol, first) {
        Incoming::Message(ClientMessage::Hello(h)) => h,
        Incoming::TooLarge => return Err((close::TOO_LARGE, "message too large")),
        Incoming::Closed => return Err((close::BAD_HELLO, "closed before hello")),
        _ => return Err((close::BAD_HELLO, "the first message must be a hello")),
    };
    // The version is checked before the token.
    if hello.protocol != PROTOCOL_VERSION {
        return Err((close::BAD_HELLO, "unsupported protocol version; this server speaks 1"));
    }
    let started = Instant::now();
    let claims = state.keys.verify(&hello.token);
    metrics::histogram!(m::AUTH_DURATION).record(started.elapsed().as_secs_f64());
    let claims = claims.map_err(|_| (close::BAD_TOKEN, "token missing, bad or expired"))?;
    let session = Session { id: random_token(12), protocol, claims, room: None, limiter: Limiter::new(), invalid: Vec::new() };
    let welcome = Welcome { user_id: session.claims.sub.clone(), session: session.id.clone(), server_time: now_unix_ms(), tick_hz: TICK_HZ };
    let _ = link.outbound.try_send(Outbound::Message(Arc::new(ServerMessage::Welcome(welcome))));
    Ok(session)
}

struct Session {
    id: String,
    protocol: Subprotocol,
    claims: Claims,
    room: Option<(RoomHandle, AvatarId)>,
    limiter: Limiter,
    /// When recent invalid messages arrived.
    invalid: Vec<Instant>,
}

impl Session {
    /// Replies wait for room in the queue: a client that doesn't read its
    /// replies slows its own reading down (and the room closes it with 4009
    /// if it also falls behind on deltas).
    async fn reply(link: &MemberLink, msg: ServerMessage) {
        let _ = link.outbound.send(Outbound::Message(Arc::new(msg))).await;
    }

    async fn error(link: &MemberLink, code: ErrorCode, message: impl Into<String>) {
        Self::reply(link, ServerMessage::Error(ErrorMessage { code, message: message.into() })).await;
    }

    /// Counts an invalid message; the 10th within a minute closes.
    async fn invalid(&mut self, link: &MemberLink, code: ErrorCode, message: String) -> Option<(u16, &'static str)> {
        let now = Instant::now();
        let window = Duration::from_millis(plaza_shared::limits::INVALID_WINDOW_MS);
        self.invalid.retain(|t| now.duration_since(*t) < window);
        self.invalid.push(now);
        tracing::debug!(%message, "invalid message");
        Self::error(link, code, message).await;
        (self.invalid.len() as u32 >= plaza_shared::limits::INVALID_MESSAGES_BEFORE_CLOSE).then_some((close::POLICY, "too many invalid messages"))
    }

    /// Runs until the socket closes; returns the close to send, if any.
    async fn run(&mut self, stream: &mut Stream, state: &AppState, link: &MemberLink) -> Option<(u16, &'static str)> {
        let mut last_heard = Instant::now();
        let mut warned_expiry = false;
        let mut closing = state.closing.clone();
        loop {
            let expiry_at = self.claims.exp.saturating_sub(TOKEN_WARNING_SECS);
            let until_warning = Duration::from_secs(expiry_at.saturating_sub(now_unix()));
            let frame = tokio::select! {
                frame = stream.next() => frame,
                _ = tokio::time::sleep_until(last_heard + state.heartbeat_timeout) => {
                    tracing::info!("heartbeat timeout");
                    return Some((NORMAL_CLOSE, "no message within the heartbeat timeout"));
                }
                _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                    return Some((close::SERVER_DRAINING, "server is restarting; reconnect shortly"));
                }
                _ = tokio::time::sleep(until_warning), if !warned_expiry => {
                    warned_expiry = true;
                    let in_s = self.claims.exp.saturating_sub(now_unix()) as u32;
                    Self::reply(link, ServerMessage::TokenExpiring(TokenExpiring { in_s })).await;
                    continue;
                }
            };
            if self.claims.exp <= now_unix() {
                return Some((close::BAD_TOKEN, "token expired"));
            }
            let msg = match read(self.protocol, frame) {
                Incoming::Closed => return None,
                Incoming::Ignore => {
                    last_heard = Instant::now();
                    continue;
                }
                Incoming::TooLarge => return Some((close::TOO_LARGE, "message too large")),
                Incoming::Invalid(code, message) => {
                    last_heard = Instant::now();
                    match self.admit(link).await {
                        Err(close) => return Some(close),
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    if let Some(close) = self.invalid(link, code, message).await {
                        return Some(close);
                    }
                    continue;
                }
                Incoming::Message(msg) => msg,
            };
            last_heard = Instant::now();
            match self.admit(link).await {
                Err(close) => return Some(close),
                Ok(false) => continue,
                Ok(true) => {}
            }
            let expiry = self.claims.exp;
            if let Some(close) = self.handle(msg, state, link).await {
                return Some(close);
            }
            if self.claims.exp != expiry {
                warned_expiry = false; // refreshed: warn again before the new expiry
            }
        }
    }

    /// Rate limit: Ok(true) to handle the message, Ok(false) to drop it.
    async fn admit(&mut self, link: &MemberLink) -> Result<bool, (u16, &'static str)> {
        let verdict = self.limiter.admit(Instant::now());
        if rate_limit_debug() {
            tracing::info!(?verdict, "rate limit decision");
        }
        match verdict {
            Admission::Allowed => Ok(true),
            Admission::Dropped { report } => {
                metrics::counter!(m::RATE_LIMITED).increment(1);
                metrics::counter!(m::WS_DROPPED, "reason" => "rate_limited").increment(1);
                if report {
                    Self::error(link, ErrorCode::RateLimited, "too many messages; some were dropped (60/s, bursts to 120)").await;
                }
                Ok(false)
            }
            Admission::Flood => Err((close::RATE_LIMITED, "more than 240 messages in 2 s")),
        }
    }

    async fn handle(&mut self, msg: ClientMessage, state: &AppState, link: &MemberLink) -> Option<(u16, &'static str)> {
        match msg {
            ClientMessage::Hello(_) => return self.invalid(link, ErrorCode::BadMessage, "already said hello".into()).await,
            ClientMessage::Ping(p) => Self::reply(link, ServerMessage::Pong(Pong { t: p.t, server_time: now_unix_ms() })).await,
            ClientMessage::Join(j) => {
                if let Some((room, avatar)) = self.room.take() {
                    room.leave(avatar).await;
                }
                let started = Instant::now();
                let room = match state.directory.resolve(&j.room, true).await {
                    Ok(room) => room,
                    Err(e) => {
                        Self::error(link, ErrorCode::RoomNotFound, e.to_string()).await;
                        return None;
                    }
                };
                match room.join(self.claims.sub.clone(), self.claims.name.clone(), Default::default(), link.clone()).await {
                    Ok(joined) => {
                        // The room already queued `joined` to this socket.
                        metrics::histogram!(m::JOIN_DURATION).record(started.elapsed().as_secs_f64());
                        tracing::info!(room_id = %room.id, avatar = joined.you, "joined room");
                        self.room = Some((room, joined.you));
                    }
                    Err(JoinError::Full { capacity }) => Self::error(link, ErrorCode::RoomFull, format!("the room is full ({capacity} members)")).await,
                    Err(e) => Self::error(link, ErrorCode::RoomNotFound, e.to_string()).await,
                }
            }
            ClientMessage::Leave => match self.room.take() {
                Some((room, avatar)) => room.leave(avatar).await,
                None => return self.invalid(link, ErrorCode::NotInRoom, "leave needs a room; join one first".into()).await,
            },
            ClientMessage::Pose(p) => match &self.room {
                Some((room, avatar)) => {
                    if !room.pose(*avatar, p.t, p.pose) {
                        // A newer pose follows within 50 ms; count it, don't stall.
                        metrics::counter!(m::WS_DROPPED, "reason" => "room_queue_full").increment(1);
                    }
                }
                None => return self.invalid(link, ErrorCode::NotInRoom, "pose needs a room; join one first".into()).await,
            },
            ClientMessage::Refresh(r) => match state.keys.verify(&r.token) {
                Ok(claims) if claims.sub == self.claims.sub => self.claims = claims,
                _ => return Some((close::BAD_TOKEN, "refresh token is bad or for another user")),
            },
            ClientMessage::Chat(c) => {
                let Some((room, _)) = &self.room else {
                    return self.invalid(link, ErrorCode::NotInRoom, "chat needs a room; join one first".into()).await;
                };
                // Stored before acknowledged; then broadcast.
                match state.store.insert_chat(&room.id, &self.claims.sub, &self.claims.name, &c.id, &c.text, now_unix_ms()).await {
                    Ok(stored) => {
                        Self::reply(link, ServerMessage::ChatAck(ChatAck { id: c.id })).await;
                        room.chat(stored).await;
                    }
                    Err(e) => {
                        tracing::error!(cause = %e, "chat not stored");
                        Self::error(link, ErrorCode::Internal, "the chat message could not be stored; send it again").await;
                    }
                }
            }
            ClientMessage::Voice(_) => return self.invalid(link, ErrorCode::BadMessage, "voice is not available on this server yet".into()).await,
        }
        None
    }
}

