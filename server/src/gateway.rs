//! One task per WebSocket: the hello handshake, then relaying between the
//! socket and the room task. A writer task owns the socket's sending half
//! and drains a bounded queue; the room offers it deltas with `try_send` and
//! can close it through a separate one-slot channel even when the queue is
//! full.

use crate::AppState;
use crate::metrics as m;
use crate::auth::{Claims, now_unix, now_unix_ms, random_token};
use crate::limiter::{Admission, Limiter};
use crate::peer_link::PeerSocket;
use crate::rooms::{JoinError, Kick, MemberLink, Occupant, Outbound, RoomHandle, Seat};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt, StreamExt};
use plaza_shared::codec::{DecodeError, Subprotocol};
use plaza_shared::limits::{HELLO_TIMEOUT_MS, PROTOCOL_VERSION, TICK_HZ, close};
use plaza_shared::messages::*;
use plaza_shared::upgrade_hello::HeaderHello;
use plaza_shared::voice::VoiceSignal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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
/// A member closed for falling behind has a full socket buffer; its close
/// frame waits this long behind the data it hasn't read yet.
const KICK_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbers each socket, so the room can tell a resumed seat's new socket
/// from the one it replaced. 0 is for bots.
fn next_conn() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed the socket: it left.
    Goodbye,
    /// The connection dropped without a close frame: its seat waits for a
    /// resume.
    Dropped,
    /// We close it, with this code; it leaves its room.
    Close(u16, &'static str),
    /// The writer sent a close frame the reader didn't ask for: the room
    /// closed the member (too slow). The room has let the seat go.
    Kicked,
}

/// How the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterEnd {
    /// It sent (or tried to send) a close frame.
    Closed,
    /// The socket failed, or the reader is gone.
    Failed,
}

/// Closes that bar the user's next hellos for a while
/// ([`crate::ServerConfig::abuse_cooldown`]): flooding, invalid messages,
/// oversized messages. Not a slow reader (its link, not its doing).
fn is_abuse(code: u16) -> bool {
    matches!(code, close::RATE_LIMITED | close::POLICY | close::TOO_LARGE)
}

fn abuse_wait_left(state: &AppState, user_id: &str) -> Option<Duration> {
    state.abusers.lock().ok()?.wait_left(user_id, Instant::now())
}

/// `WS_RATE_LIMIT_DEBUG` on: log every rate-limit decision.
fn rate_limit_debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WS_RATE_LIMIT_DEBUG").is_ok_and(|v| v.parse::<plaza_shared::flags::Switch>().is_ok_and(|s| s.is_on())))
}

/// Serves one upgraded socket until it closes.
/// `trace` holds the socket's trace spans (crate::otel).
/// `peer`: the TCP socket under it, when the connection loop knows it.
/// `header_hello`: the hello (and the room to join) the upgrade request
/// carried in its headers (plaza_shared::upgrade_hello); without one, the
/// first frame must be the hello.
/// `session`: the session id another instance relaying this socket's user
/// gave its client (crate::relay), already checked.
pub async fn serve(socket: WebSocket, protocol: Subprotocol, state: AppState, trace: crate::otel::SessionTrace, peer: Option<PeerSocket>, header_hello: Option<HeaderHello>, session: Option<String>) {
    let _open = Arc::clone(&state.sockets);
    metrics::gauge!(m::WS_CONNECTIONS).increment(1.0);
    serve_inner(socket, protocol, state, trace, peer, header_hello, session).await;
    metrics::gauge!(m::WS_CONNECTIONS).decrement(1.0);
}

async fn serve_inner(socket: WebSocket, protocol: Subprotocol, state: AppState, trace: crate::otel::SessionTrace, peer: Option<PeerSocket>, header_hello: Option<HeaderHello>, session_id: Option<String>) {
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (kick_tx, kick_rx) = mpsc::channel(1);
    let (writer_end_tx, mut writer_end) = oneshot::channel();
    let first_delta = trace.first_delta();
    let writer = tokio::spawn(async move {
        let _ = writer_end_tx.send(write_loop(sink, out_rx, kick_rx, protocol, first_delta).await);
    });
    let link = MemberLink { outbound: out_tx, kick: kick_tx, peer };

    let hello = trace.hello();
    let (header_hello, header_join) = header_hello.map_or((None, None), |h| (Some(h.hello), h.join));
    // Boxed here and below: a future awaited inside this one is part of
    // every socket's task for the socket's whole life (rustc lays the two
    // out side by side, and a wrapper such as `instrument` doubles them);
    // boxed, it is a pointer, and the handshake's is freed once it is done.
    let handshake = Box::pin(tracing::Instrument::instrument(handshake(&mut stream, protocol, &state, &link, header_hello, session_id), hello.clone())).await;
    let mut session = match handshake {
        Ok(mut session) => {
            trace.welcomed(&hello, &session.claims.sub, &session.id);
            session.trace = trace;
            session
        }
        Err((code, reason)) => {
            trace.refused(&hello, code);
            let _ = link.kick.try_send(Kick::Close(code, reason));
            drop(link);
            let _ = writer.await;
            linger(&mut stream).await;
            return;
        }
    };
    let span = tracing::info_span!("socket", user_id = %session.claims.sub, session_id = %session.id, protocol = protocol.name());
    let outcome = Box::pin(tracing::Instrument::instrument(
        async {
            tracing::info!("welcomed");
            // The join the upgrade carried, when no seat was resumed: as if
            // it were the first message after the hello.
            let joined_at_once = match header_join.filter(|_| !session.in_room()) {
                Some(room) => session.handle(ClientMessage::Join(Join { room }), &state, &link).await,
                None => None,
            };
            let end = match joined_at_once {
                Some(end) => end,
                None => session.run(&mut stream, &state, &link, &mut writer_end).await,
            };
            // A drop, or this instance draining, holds the seat for a
            // resume (at any instance, with --redis-url).
            let keep_seat = matches!(end, End::Dropped | End::Close(close::SERVER_DRAINING, _));
            if let Some((room, seat)) = session.room.take() {
                if end == End::Dropped {
                    room.detach(seat.you, session.conn).await;
                } else {
                    room.leave(seat.you, session.conn).await;
                }
            }
            if let Some(upstream) = session.remote.take() {
                if keep_seat { upstream.drop_link() } else { upstream.close().await }
            }
            if let Some(bus) = &state.bus
                && session.seated
            {
                if keep_seat { bus.seat_dropped(&session.id).await } else { bus.forget_seat(&session.id).await }
            }
            tracing::info!(?end, "socket done");
            if let End::Close(code, _) = end
                && is_abuse(code)
                && let Ok(mut abusers) = state.abusers.lock()
            {
                abusers.mark(session.claims.sub.clone(), Instant::now());
            }
            match end {
                End::Close(code, reason) => Some((code, reason)),
                End::Goodbye | End::Dropped | End::Kicked => None,
            }
        },
        span,
    ))
    .await;
    if let Some((code, reason)) = outcome {
        // In order, after the replies already queued; the kick channel is
        // for when the queue doesn't drain (a client that stopped reading).
        let queued = timeout(CLOSE_SEND_TIMEOUT, link.outbound.send(Outbound::Close(code, reason))).await;
        if !matches!(queued, Ok(Ok(()))) {
            let _ = link.kick.try_send(Kick::Close(code, reason));
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

async fn send_close(sink: &mut Sink, code: u16, reason: &'static str, wait: Duration) {
    metrics::counter!(m::WS_SERVER_CLOSES, "reason" => m::close_reason(code)).increment(1);
    let frame = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }));
    let _ = timeout(wait, sink.send(frame)).await;
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

/// Does what the room asked: a close frame (given [`KICK_SEND_TIMEOUT`] to
/// get out), or nothing at all for a link gone silent, whose socket is just
/// let go.
async fn obey(sink: &mut Sink, kick: Kick) -> WriterEnd {
    match kick {
        Kick::Close(code, reason) => {
            send_close(sink, code, reason, KICK_SEND_TIMEOUT).await;
            WriterEnd::Closed
        }
        Kick::Drop => {
            metrics::counter!(m::WS_SERVER_CLOSES, "reason" => m::SILENT_LINK).increment(1);
            WriterEnd::Failed
        }
    }
}

/// Counts one frame and puts it in the socket's write buffer; it goes out
/// with the next [`flush`]. A kick while it waits for room wins. Err when
/// the writer should stop (kicked, or the socket is gone).
async fn feed_frame(sink: &mut Sink, kick_rx: &mut mpsc::Receiver<Kick>, frame: Message, type_name: &'static str) -> Result<(), WriterEnd> {
    match type_name {
        "delta" => m::hot::DELTAS_OUT.add(1),
        _ => metrics::counter!(m::WS_MESSAGES, "direction" => "out", "type" => type_name).increment(1),
    }
    let bytes = match &frame {
        Message::Binary(b) => b.len(),
        Message::Text(t) => t.len(),
        _ => 0,
    };
    m::hot::BYTES_OUT.add(bytes as u64);
    // Almost always there is room at once: then no kick can be waiting on
    // us, and watching for one (a waker registered on its channel, twice
    // per delta with the flush) was a share of the server's CPU for nothing.
    if let Some(ready) = std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)).now_or_never() {
        return ready.and_then(|()| sink.start_send_unpin(frame)).map_err(|_| WriterEnd::Failed);
    }
    tokio::select! {
        biased;
        Some(kick) = kick_rx.recv() => Err(obey(sink, kick).await),
        fed = sink.feed(frame) => fed.map_err(|_| WriterEnd::Failed),
    }
}

/// Writes what [`feed_frame`] buffered; a kick while it waits wins.
async fn flush(sink: &mut Sink, kick_rx: &mut mpsc::Receiver<Kick>) -> Result<(), WriterEnd> {
    // A socket with room takes it all at once (see `feed_frame`). A flush
    // that can't finish now keeps what it wrote, and goes on below.
    if let Some(flushed) = sink.flush().now_or_never() {
        return flushed.map_err(|_| WriterEnd::Failed);
    }
    tokio::select! {
        biased;
        Some(kick) = kick_rx.recv() => Err(obey(sink, kick).await),
        flushed = sink.flush() => flushed.map_err(|_| WriterEnd::Failed),
    }
}

/// Frames written together at most, so one busy socket can't buffer without
/// bound before its first byte goes out.
const MAX_FRAMES_PER_WRITE: u32 = 16;

async fn write_loop(
    mut sink: Sink,
    mut out_rx: mpsc::Receiver<Outbound>,
    mut kick_rx: mpsc::Receiver<Kick>,
    protocol: Subprotocol,
    first_delta: crate::otel::FirstDelta,
) -> WriterEnd {
    // The receiver's own avatar, learnt from the `joined` passing through
    // (the room queues it before any delta that could mention it).
    let mut own: AvatarId = 0;
    // Frames fed since the last flush. What is already queued goes out in
    // the same write (one TCP segment where it fits): `welcome` and
    // `joined` after a resume, a chat beside a delta. On a lossy link each
    // segment is another chance to stall a whole round trip.
    let mut unflushed = 0u32;
    let mut delta_unflushed = false;
    loop {
        let next = tokio::select! {
            biased;
            Some(kick) = kick_rx.recv() => return obey(&mut sink, kick).await,
            next = out_rx.recv() => next,
        };
        let (frame, type_name, is_delta) = match next {
            Some(Outbound::Message(msg)) => {
                if let ServerMessage::Joined(j) = msg.as_ref() {
                    own = j.you;
                }
                // A delta sent as a message is a resync.
                (encode(protocol, &msg, own), msg.type_name(), matches!(msg.as_ref(), ServerMessage::Delta(_)))
            }
            Some(Outbound::Delta(shared)) => {
                let frame = match protocol {
                    // Spliced from the room's one encoding, minus our own avatar.
                    Subprotocol::Binary => {
                        let mut out = Vec::new();
                        shared.binary().frame_for(own, &mut out).then(|| Message::Binary(out.into()))
                    }
                    Subprotocol::Json => encode(protocol, &shared.message, own),
                };
                (frame, "delta", true)
            }
            Some(Outbound::Resumed { welcome, state }) => {
                // The welcome is fed here; the state joins it in one write.
                if let Some(frame) = encode(protocol, &welcome, own) {
                    if let Err(end) = feed_frame(&mut sink, &mut kick_rx, frame, welcome.type_name()).await {
                        return end;
                    }
                    unflushed += 1;
                }
                if let ServerMessage::Joined(j) = state.as_ref() {
                    own = j.you;
                }
                (encode(protocol, &state, own), state.type_name(), false)
            }
            Some(Outbound::Frame(frame)) => (Some(Message::Binary(*frame)), "delta", true),
            Some(Outbound::Close(code, reason)) => {
                if unflushed > 0
                    && let Err(end) = flush(&mut sink, &mut kick_rx).await
                {
                    return end;
                }
                send_close(&mut sink, code, reason, CLOSE_SEND_TIMEOUT).await;
                return WriterEnd::Closed;
            }
            None => {
                // The reader is done; a kick may still be queued.
                if unflushed > 0
                    && let Err(end) = flush(&mut sink, &mut kick_rx).await
                {
                    return end;
                }
                if let Ok(kick) = kick_rx.try_recv() {
                    return obey(&mut sink, kick).await;
                }
                let _ = timeout(CLOSE_SEND_TIMEOUT, sink.close()).await;
                return WriterEnd::Failed;
            }
        };
        if let Some(frame) = frame {
            if let Err(end) = feed_frame(&mut sink, &mut kick_rx, frame, type_name).await {
                return end;
            }
            unflushed += 1;
            delta_unflushed |= is_delta;
        }
        if unflushed > 0 && (out_rx.is_empty() || unflushed >= MAX_FRAMES_PER_WRITE) {
            if let Err(end) = flush(&mut sink, &mut kick_rx).await {
                return end;
            }
            if delta_unflushed {
                first_delta.written();
            }
            (unflushed, delta_unflushed) = (0, false);
        }
    }
}

/// What a frame turned out to be.
enum Incoming {
    Message(ClientMessage),
    Invalid(ErrorCode, String),
    TooLarge,
    /// A close frame: the peer said goodbye.
    Closed,
    /// The connection ended without a close frame.
    Dropped,
    Ignore,
}

fn read(protocol: Subprotocol, frame: Option<Result<Message, axum::Error>>) -> Incoming {
    // Both payloads are reference-counted buffers: no copy per message.
    let bytes: axum::body::Bytes = match frame {
        Some(Ok(Message::Close(_))) => return Incoming::Closed,
        None => return Incoming::Dropped,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Incoming::Ignore,
        Some(Ok(Message::Text(text))) if protocol == Subprotocol::Json => text.into(),
        Some(Ok(Message::Binary(bytes))) if protocol == Subprotocol::Binary => bytes,
        Some(Ok(Message::Text(_))) => return Incoming::Invalid(ErrorCode::BadMessage, "plaza.v1.bin takes binary frames, not text".into()),
        Some(Ok(Message::Binary(_))) => return Incoming::Invalid(ErrorCode::BadMessage, "plaza.v1.json takes text frames, not binary".into()),
        Some(Err(e)) => {
            use tungstenite::error::{Error, ProtocolError};
            return match e.into_inner().downcast::<Error>().map(|e| *e) {
                Ok(Error::Capacity(_)) => Incoming::TooLarge,
                Ok(Error::Io(_) | Error::ConnectionClosed | Error::AlreadyClosed | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Incoming::Dropped,
                // Broken framing: the peer is misbehaving, not unlucky.
                _ => Incoming::Closed,
            };
        }
    };
    m::hot::BYTES_IN.add(bytes.len() as u64);
    match protocol.decode_client(&bytes) {
        Ok(msg) => match msg.validate() {
            Ok(()) => {
                match msg {
                    ClientMessage::Pose(_) => m::hot::POSES_IN.add(1),
                    _ => metrics::counter!(m::WS_MESSAGES, "direction" => "in", "type" => msg.type_name()).increment(1),
                }
                Incoming::Message(msg)
            }
            Err(e) => Incoming::Invalid(e.code, e.message),
        },
        Err(DecodeError::TooLarge { .. }) => Incoming::TooLarge,
        Err(e) => Incoming::Invalid(ErrorCode::BadMessage, e.to_string()),
    }
}

async fn handshake(stream: &mut Stream, protocol: Subprotocol, state: &AppState, link: &MemberLink, header_hello: Option<Hello>, session_id: Option<String>) -> Result<Session, (u16, &'static str)> {
    let hello = match header_hello {
        Some(hello) => hello,
        None => hello_frame(stream, protocol).await?,
    };
    // The version is checked before the token.
    if hello.protocol != PROTOCOL_VERSION {
        return Err((close::BAD_HELLO, "unsupported protocol version; this server speaks 1"));
    }
    let started = Instant::now();
    let claims = state.keys.verify(&hello.token);
    metrics::histogram!(m::AUTH_DURATION).record(started.elapsed().as_secs_f64());
    let claims = claims.map_err(|_| (close::BAD_TOKEN, "token missing, bad or expired"))?;
    if let Some(left) = abuse_wait_left(state, &claims.sub) {
        tracing::info!(user_id = %claims.sub, wait_ms = left.as_millis() as u64, "hello refused: closed for abuse a moment ago");
        return Err((close::RATE_LIMITED, "closed for abuse a moment ago; wait 10 s before reconnecting"));
    }
    let id = session_id.unwrap_or_else(|| random_token(12));
    // Kept only where a relay may need it: a few hundred bytes a socket.
    let token = if state.bus.is_some() { hello.token } else { String::new() };
    let mut session = Session { id: id.into(), conn: next_conn(), protocol, claims, token, room: None, remote: None, seated: false, limiter: Limiter::new(), invalid: Vec::new(), trace: crate::otel::SessionTrace::none(), voice: None, voice_offers: crate::limiter::voice_offer_bucket(), voice_failing: Default::default(), joins: crate::limiter::join_bucket() };
    if let Some(resume) = hello.resume.as_deref() {
        if session.resume(resume, state, link).await {
            return Ok(session); // the room queued welcome and the full state
        }
        if session.resume_elsewhere(resume, state, link).await {
            return Ok(session); // the welcome and the state come through the relay
        }
    }
    let _ = link.outbound.try_send(Outbound::Message(Arc::new(session.welcome())));
    Ok(session)
}

/// The first frame, which must be a hello.
async fn hello_frame(stream: &mut Stream, protocol: Subprotocol) -> Result<Hello, (u16, &'static str)> {
    let first = timeout(Duration::from_millis(HELLO_TIMEOUT_MS), stream.next()).await.map_err(|_| (close::BAD_HELLO, "no hello within 5 s"))?;
    match read(protocol, first) {
        Incoming::Message(ClientMessage::Hello(h)) => Ok(h),
        Incoming::TooLarge => Err((close::TOO_LARGE, "message too large")),
        Incoming::Closed | Incoming::Dropped => Err((close::BAD_HELLO, "closed before hello")),
        _ => Err((close::BAD_HELLO, "the first message must be a hello")),
    }
}

struct Session {
    id: Arc<str>,
    /// This socket's number (see [`next_conn`]).
    conn: u64,
    protocol: Subprotocol,
    claims: Claims,
    /// The access token the claims came from (the latest refresh's):
    /// what a relay to another instance signs in with. Empty on a single
    /// instance (no `--redis-url`).
    token: String,
    room: Option<(RoomHandle, Seat)>,
    /// The link to the instance running this socket's room, when that is
    /// another one (crate::relay); `room` is `None` then. Boxed: a pointer
    /// in every session, the link only where there is one.
    remote: Option<Box<crate::relay::Upstream>>,
    /// A seat of this session's is recorded in Redis (crate::bus).
    seated: bool,
    limiter: Limiter,
    /// When recent invalid messages arrived.
    invalid: Vec<Instant>,
    /// The socket's trace spans (join, first delta, voice signaling).
    trace: crate::otel::SessionTrace,
    /// This socket's voice peer, while voice is on (in `room`).
    voice: Option<crate::voice::VoicePeer>,
    /// Voice offers left to this socket (crate::limiter::voice_offer_bucket).
    voice_offers: crate::limiter::Bucket,
    /// Whether this socket's calls have been failing to connect.
    voice_failing: crate::voice::FailingCalls,
    /// Room changes left to this socket (crate::limiter::join_bucket).
    joins: crate::limiter::Bucket,
}

impl Session {
    fn welcome(&self) -> ServerMessage {
        ServerMessage::Welcome(Welcome { user_id: self.claims.sub.clone(), session: self.id.to_string(), server_time: now_unix_ms(), tick_hz: TICK_HZ })
    }

    fn occupant(&self) -> Occupant {
        Occupant { user_id: self.claims.sub.clone(), name: self.claims.name.clone(), session: self.id.clone(), conn: self.conn }
    }

    /// Takes back the seat `resume` held, if the room still keeps it for
    /// this user. On success this session carries the old id and the room
    /// has queued `welcome` (with that id) and `joined`; on failure nothing
    /// was sent and the session keeps its new id.
    async fn resume(&mut self, resume: &str, state: &AppState, link: &MemberLink) -> bool {
        let Some((room, avatar)) = state.directory.find_seat(resume).await else {
            // With --redis-url another instance may hold it: that path
            // counts the outcome.
            if state.bus.is_none() {
                tracing::info!("resume: no seat held for that session");
                count_resume(false);
            }
            return false;
        };
        let previous = std::mem::replace(&mut self.id, resume.into());
        match room.resume(avatar, self.occupant(), link.clone(), self.welcome()).await {
            Ok(seat) => {
                tracing::info!(room_id = %room.id, avatar = seat.you, session_id = %self.id, "resumed");
                self.room = Some((room, seat));
                count_resume(true);
                if let Some(bus) = &state.bus {
                    bus.remember_seat(&self.id, &bus.instance).await;
                    self.seated = true;
                }
                true
            }
            Err(e) => {
                tracing::info!(cause = %e, "resume refused");
                self.id = previous;
                count_resume(false);
                false
            }
        }
    }

    /// With --redis-url: takes back a seat another instance holds, and
    /// relays this socket there. On success the owner's welcome (with the
    /// old session id) and full state are queued; on failure nothing was
    /// sent.
    async fn resume_elsewhere(&mut self, resume: &str, state: &AppState, link: &MemberLink) -> bool {
        let Some(bus) = &state.bus else { return false };
        let owner = bus.seat_owner(resume).await.filter(|owner| **owner != *bus.instance);
        let url = match &owner {
            Some(owner) => bus.instance_url(owner).await.ok().flatten(),
            None => None,
        };
        let (Some(owner), Some(url)) = (owner, url) else {
            tracing::info!("resume: no seat held for that session");
            count_resume(false);
            return false;
        };
        let dial = crate::relay::Dial { url: &url, token: &self.token, join: None, resume: Some(resume), session: None };
        match crate::relay::dial(dial).await {
            Ok(mut answered) if answered.welcome.session == resume => {
                let Some(joined) = answered.next.take() else {
                    count_resume(false);
                    return false;
                };
                let welcome = Arc::new(ServerMessage::Welcome(answered.welcome.clone()));
                if link.outbound.try_send(Outbound::Resumed { welcome, state: Arc::new(joined) }).is_err() {
                    return false;
                }
                tracing::info!(owner = %owner, session_id = resume, "resumed through the room's instance");
                self.id = resume.into();
                self.remote = Some(Box::new(answered.start(owner.as_str().into(), link, self.protocol)));
                bus.remember_seat(resume, &owner).await;
                self.seated = true;
                count_resume(true);
                true
            }
            Ok(_) => {
                tracing::info!(owner = %owner, "resume refused by the room's instance: the seat is gone");
                count_resume(false);
                false
            }
            Err(e) => {
                tracing::info!(cause = %e, "resume: the room's instance can't be reached");
                count_resume(false);
                false
            }
        }
    }

    /// In a room, here or through a relay.
    fn in_room(&self) -> bool {
        self.room.is_some() || self.remote.is_some()
    }

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
    async fn invalid(&mut self, link: &MemberLink, code: ErrorCode, message: String) -> Option<End> {
        let now = Instant::now();
        let window = Duration::from_millis(plaza_shared::limits::INVALID_WINDOW_MS);
        self.invalid.retain(|t| now.duration_since(*t) < window);
        self.invalid.push(now);
        tracing::debug!(%message, "invalid message");
        Self::error(link, code, message).await;
        (self.invalid.len() as u32 >= plaza_shared::limits::INVALID_MESSAGES_BEFORE_CLOSE).then_some(End::Close(close::POLICY, "too many invalid messages"))
    }

    /// Runs until the socket closes; says how it ended.
    /// `writer_end`: the writer stopped (see [`End::Kicked`]).
    async fn run(&mut self, stream: &mut Stream, state: &AppState, link: &MemberLink, writer_end: &mut oneshot::Receiver<WriterEnd>) -> End {
        let mut last_heard = Instant::now();
        let mut warned_expiry = false;
        let mut closing = state.closing.clone();
        // Made once, like the timers: a future per message is a waiter
        // registered and dropped for every pose.
        let draining = async move {
            let _ = closing.wait_for(|c| *c).await;
        };
        tokio::pin!(draining);
        // Both timers are made once. A message only moves `last_heard`; the
        // heartbeat timer, when it fires, re-arms itself from there. (Making
        // a timer per message cost a timer-wheel entry for every pose: perf
        // showed it at 2,000 users.)
        let until_warning = |exp: u64| Duration::from_secs(exp.saturating_sub(TOKEN_WARNING_SECS).saturating_sub(now_unix()));
        let heartbeat = tokio::time::sleep_until(last_heard + state.heartbeat_timeout);
        tokio::pin!(heartbeat);
        let warning = tokio::time::sleep(until_warning(self.claims.exp));
        tokio::pin!(warning);
        loop {
            let frame = tokio::select! {
                frame = stream.next() => frame,
                _ = &mut heartbeat => {
                    let deadline = last_heard + state.heartbeat_timeout;
                    if Instant::now() < deadline {
                        heartbeat.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::info!("heartbeat timeout");
                    // Silent that long: gone, not coming back within the window.
                    return End::Close(NORMAL_CLOSE, "no message within the heartbeat timeout");
                }
                _ = &mut draining => {
                    return End::Close(close::SERVER_DRAINING, "server is restarting; reconnect shortly");
                }
                end = &mut *writer_end => {
                    // Nothing read now could be answered. Kicked (too slow):
                    // the close frame has had its chance; without this the
                    // socket stayed open, deaf, for as long as the client
                    // kept sending.
                    tracing::info!(?end, "the writer stopped");
                    return if matches!(end, Ok(WriterEnd::Closed)) { End::Kicked } else { End::Dropped };
                }
                end = upstream_ended(self.remote.as_deref_mut()) => {
                    self.remote = None;
                    return relay_end(end);
                }
                _ = voice_ended(self.voice.as_ref()) => {
                    self.end_voice(link, Some("the voice connection failed or closed; offer again to reconnect")).await;
                    continue;
                }
                _ = &mut warning, if !warned_expiry => {
                    warned_expiry = true;
                    let in_s = self.claims.exp.saturating_sub(now_unix()) as u32;
                    Self::reply(link, ServerMessage::TokenExpiring(TokenExpiring { in_s })).await;
                    continue;
                }
            };
            if self.claims.exp <= now_unix() {
                return End::Close(close::BAD_TOKEN, "token expired");
            }
            let msg = match read(self.protocol, frame) {
                Incoming::Closed => return End::Goodbye,
                Incoming::Dropped => return End::Dropped,
                Incoming::Ignore => {
                    last_heard = Instant::now();
                    continue;
                }
                Incoming::TooLarge => return End::Close(close::TOO_LARGE, "message too large"),
                Incoming::Invalid(code, message) => {
                    last_heard = Instant::now();
                    match self.admit(link).await {
                        Err(end) => return end,
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    if let Some(end) = self.invalid(link, code, message).await {
                        return end;
                    }
                    continue;
                }
                Incoming::Message(msg) => msg,
            };
            last_heard = Instant::now();
            match self.admit(link).await {
                Err(end) => return end,
                Ok(false) => continue,
                Ok(true) => {}
            }
            let expiry = self.claims.exp;
            if let Some(end) = self.handle(msg, state, link).await {
                return end;
            }
            if self.claims.exp != expiry {
                warned_expiry = false; // refreshed: warn again before the new expiry
                warning.as_mut().reset(Instant::now() + until_warning(self.claims.exp));
            }
        }
    }

    /// Rate limit: Ok(true) to handle the message, Ok(false) to drop it.
    async fn admit(&mut self, link: &MemberLink) -> Result<bool, End> {
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
            Admission::Flood => Err(End::Close(close::RATE_LIMITED, "more than 240 messages in 2 s")),
        }
    }

    /// While the room runs on another instance (`remote`), the room's
    /// messages go up the relay; the socket's own (ping, refresh, join)
    /// are answered here, and a ping and a refresh go up too, so the room's
    /// instance neither takes the link for dead nor lets its token expire.
    async fn handle(&mut self, msg: ClientMessage, state: &AppState, link: &MemberLink) -> Option<End> {
        match msg {
            ClientMessage::Hello(_) => return self.invalid(link, ErrorCode::BadMessage, "already said hello".into()).await,
            ClientMessage::Ping(p) => {
                Self::reply(link, ServerMessage::Pong(Pong { t: p.t, server_time: now_unix_ms() })).await;
                if self.remote.is_some() {
                    Box::pin(self.relay(&ClientMessage::Ping(p))).await;
                }
            }
            // Boxed, as chat and voice below: their futures (the room's,
            // the store's, the SFU's) run to kilobytes, and an arm's future
            // is part of every socket's task for its whole life unless it is
            // boxed, which holds it on the heap only while it runs.
            ClientMessage::Join(j) => return Box::pin(self.join(j, state, link)).await,
            ClientMessage::Leave => {
                self.end_voice(link, Some("voice is per room and you left it")).await;
                match self.room.take() {
                    Some((room, seat)) => room.leave(seat.you, self.conn).await,
                    None if self.remote.is_some() => Box::pin(self.leave_relay(state)).await,
                    None => return self.invalid(link, ErrorCode::NotInRoom, "leave needs a room; join one first".into()).await,
                }
            }
            // Left for the room's next tick; a newer pose replaces it.
            ClientMessage::Pose(p) => match &self.room {
                Some((_, seat)) => seat.poses.offer(self.conn, p.t, p.pose),
                None if self.remote.is_some() => Box::pin(self.relay(&ClientMessage::Pose(p))).await,
                None => return self.invalid(link, ErrorCode::NotInRoom, "pose needs a room; join one first".into()).await,
            },
            ClientMessage::Refresh(r) => {
                let up = self.remote.is_some().then(|| ClientMessage::Refresh(r.clone()));
                let end = self.refresh(r, state);
                if end.is_none()
                    && let Some(up) = up
                {
                    Box::pin(self.relay(&up)).await;
                }
                return end;
            }
            ClientMessage::Chat(c) if self.remote.is_some() => Box::pin(self.relay(&ClientMessage::Chat(c))).await,
            ClientMessage::Chat(c) => return Box::pin(self.chat(c, state, link)).await,
            ClientMessage::Voice(v) if self.remote.is_some() => Box::pin(self.relay(&ClientMessage::Voice(v))).await,
            ClientMessage::Voice(v) => {
                let kind = v.signal.get("type").and_then(|t| t.as_str()).unwrap_or("");
                let span = self.trace.voice_signal(kind, self.room.as_ref().map(|(room, _)| &*room.id));
                return Box::pin(tracing::Instrument::instrument(self.voice_signal(v, state, link), span)).await;
            }
        }
        None
    }

    /// A new access token for this socket (the relay's too).
    fn refresh(&mut self, r: Refresh, state: &AppState) -> Option<End> {
        match state.keys.verify(&r.token) {
            Ok(claims) if claims.sub == self.claims.sub => {
                self.claims = claims;
                if !self.token.is_empty() {
                    self.token = r.token;
                }
                None
            }
            _ => Some(End::Close(close::BAD_TOKEN, "refresh token is bad or for another user")),
        }
    }

    /// Passes a message up the relay, if there is one. A link that failed
    /// reports its end to `run`.
    async fn relay(&mut self, msg: &ClientMessage) {
        if let Some(upstream) = self.remote.as_mut() {
            let _ = upstream.send(msg).await;
        }
    }

    /// Leaves the room on the other instance: the relay closes, so the
    /// seat there is let go.
    async fn leave_relay(&mut self, state: &AppState) {
        if let Some(upstream) = self.remote.take() {
            upstream.close().await;
        }
        if let Some(bus) = &state.bus {
            bus.forget_seat(&self.id).await;
        }
        self.seated = false;
    }

    /// Moves the socket into the room `j` names (leaving the one it is in).
    async fn join(&mut self, j: Join, state: &AppState, link: &MemberLink) -> Option<End> {
        // Checked before anything moves: a join too soon leaves the
        // socket where it is.
        if !self.joins.take(Instant::now()) {
            metrics::counter!(m::RATE_LIMITED).increment(1);
            let message = format!(
                "at most {} room changes at once, then one every {} ms; this join was dropped{}",
                plaza_shared::limits::JOIN_BURST,
                plaza_shared::limits::JOIN_EVERY_MS,
                if self.in_room() { " and you are still in your room" } else { "" }
            );
            Self::error(link, ErrorCode::RateLimited, message).await;
            return None;
        }
        let traced = self.trace.join(&j.room);
        self.end_voice(link, Some("voice is per room and you joined another; offer again")).await;
        if let Some((room, seat)) = self.room.take() {
            room.leave(seat.you, self.conn).await;
        }
        if let Some(upstream) = self.remote.take() {
            upstream.close().await;
        }
        let started = Instant::now();
        let room = match state.directory.resolve(&j.room, true).await {
            Ok(room) => room,
            Err(e) => {
                Self::error(link, ErrorCode::RoomNotFound, e.to_string()).await;
                return None;
            }
        };
        self.enter(room, state, link, started, traced).await
    }

    /// Takes a seat in `room`: here, or through a relay to the instance
    /// that runs it (with --redis-url).
    async fn enter(&mut self, room: RoomHandle, state: &AppState, link: &MemberLink, started: Instant, traced: crate::otel::Join) -> Option<End> {
        if let Some(bus) = &state.bus {
            match bus.claim(&room).await {
                Ok(crate::bus::Owner::Here) => {}
                Ok(crate::bus::Owner::There { instance, url }) => return self.join_elsewhere(room, (instance, url), state, link, started, traced).await,
                Err(e) => {
                    tracing::error!(cause = %e, "room owner not found in Redis");
                    Self::error(link, ErrorCode::Internal, "rooms are shared through Redis, which doesn't answer now; join again in a moment").await;
                    return None;
                }
            }
        }
        match tracing::Instrument::instrument(room.join(self.occupant(), Default::default(), link.clone()), traced.span().clone()).await {
            Ok(seat) => {
                // The room already queued `joined` to this socket.
                metrics::histogram!(m::JOIN_DURATION).record(started.elapsed().as_secs_f64());
                self.trace.joined(traced, &room.id);
                tracing::info!(room_id = %room.id, avatar = seat.you, "joined room");
                self.room = Some((room.clone(), seat.clone()));
                state.directory.remember(self.id.clone(), room, seat).await;
                if let Some(bus) = &state.bus {
                    bus.remember_seat(&self.id, &bus.instance).await;
                    self.seated = true;
                }
            }
            Err(JoinError::Full { capacity }) => Self::error(link, ErrorCode::RoomFull, format!("the room is full ({capacity} members)")).await,
            Err(e @ JoinError::Busy) => Self::error(link, ErrorCode::Internal, e.to_string()).await,
            Err(e) => Self::error(link, ErrorCode::RoomNotFound, e.to_string()).await,
        }
        None
    }

    /// Joins `room`, which runs on instance `owner` at `url`, through a
    /// relay. An owner that can't be reached is taken over (if the lease
    /// still names it), and the room started here.
    async fn join_elsewhere(&mut self, room: RoomHandle, (owner, url): (Arc<str>, String), state: &AppState, link: &MemberLink, started: Instant, traced: crate::otel::Join) -> Option<End> {
        let bus = state.bus.as_ref()?;
        let sig = state.keys.sign_session(&self.id);
        let dial = crate::relay::Dial { url: &url, token: &self.token, join: Some(&room.id), resume: None, session: Some((&self.id, sig)) };
        let mut answered = match crate::relay::dial(dial).await {
            Ok(answered) => answered,
            Err(e) => {
                tracing::warn!(cause = %e, owner = %owner, "the room's instance can't be reached");
                if matches!(e, crate::relay::RelayError::Unreachable { .. }) && bus.take_over(&room, &owner).await.unwrap_or(false) {
                    // Ours now: join here, as if it had been all along.
                    return Box::pin(self.enter(room, state, link, started, traced)).await;
                }
                let message = match e {
                    crate::relay::RelayError::Refused { .. } => "the room's server is full or restarting; join again in a moment",
                    _ => "the room's server can't be reached now; join again in a moment",
                };
                Self::error(link, ErrorCode::Internal, message).await;
                return None;
            }
        };
        match answered.next.take() {
            Some(joined @ ServerMessage::Joined(_)) => {
                let _ = link.outbound.send(Outbound::Message(Arc::new(joined))).await;
                metrics::histogram!(m::JOIN_DURATION).record(started.elapsed().as_secs_f64());
                tracing::info!(room_id = %room.id, owner = %owner, "joined room through its instance");
                self.trace.joined(traced, &room.id);
                bus.remember_seat(&self.id, &owner).await;
                self.seated = true;
                self.remote = Some(Box::new(answered.start(owner, link, self.protocol)));
            }
            // The room's refusal (full, say), as the client would have had it here.
            Some(error @ ServerMessage::Error(_)) => Self::reply(link, error).await,
            other => {
                tracing::warn!(answer = ?other.as_ref().map(ServerMessage::type_name), "the room's instance answered a join out of turn");
                Self::error(link, ErrorCode::Internal, "the room's server answered out of turn; join again").await;
            }
        }
        None
    }

    /// Stores a chat message, acknowledges it, then gives it to the room.
    async fn chat(&mut self, c: ChatSend, state: &AppState, link: &MemberLink) -> Option<End> {
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
        None
    }

    /// A voice signal from the client: an offer (re)starts voice in its
    /// room, `leave` stops it.
    async fn voice_signal(&mut self, v: Voice, state: &AppState, link: &MemberLink) -> Option<End> {
        let signal = match plaza_shared::voice::VoiceSignal::from_message(&v) {
            Ok(signal) => signal,
            Err(message) => return self.invalid(link, ErrorCode::BadMessage, message).await,
        };
        match signal {
            VoiceSignal::Offer { sdp } => {
                let Some((room, seat)) = self.room.clone() else {
                    return self.invalid(link, ErrorCode::NotInRoom, "voice needs a room; join one first".into()).await;
                };
                let shape = match crate::voice::OfferShape::read(&sdp) {
                    Ok(shape) => shape,
                    Err(e) => return self.invalid(link, ErrorCode::BadMessage, e.to_string()).await,
                };
                // Each offer builds a peer connection (keys, a socket): a
                // client offering in a loop would burn the server's CPU.
                if !self.voice_offers.take(Instant::now()) {
                    metrics::counter!(m::RATE_LIMITED).increment(1);
                    Self::error(link, ErrorCode::RateLimited, "one voice offer a second at most; this one was dropped").await;
                    return None;
                }
                self.end_voice(link, None).await;
                match state.voice.open(&sdp, shape, seat.you, self.voice_failing.clone()).await {
                    Ok((peer, routing)) => {
                        Self::reply(link, ServerMessage::Voice(VoiceSignal::Answer { sdp: peer.answer.clone() }.into_message())).await;
                        room.voice_join(seat.you, self.conn, routing).await;
                        tracing::info!(peers = state.voice.peers(), "voice on");
                        self.voice = Some(peer);
                    }
                    Err(e @ crate::voice::VoiceError::BadOffer(_)) => return self.invalid(link, ErrorCode::BadMessage, e.to_string()).await,
                    Err(e @ (crate::voice::VoiceError::Off | crate::voice::VoiceError::Full { .. } | crate::voice::VoiceError::NoFreePort(_))) => Self::error(link, ErrorCode::VoiceUnavailable, e.to_string()).await,
                    Err(e @ crate::voice::VoiceError::Failed(_)) => {
                        tracing::warn!(cause = %e, "voice could not start");
                        Self::error(link, ErrorCode::Internal, e.to_string()).await;
                    }
                }
            }
            VoiceSignal::Leave => self.end_voice(link, None).await,
            VoiceSignal::Mute { avatars } => {
                let Some((room, seat)) = self.room.clone() else {
                    return self.invalid(link, ErrorCode::NotInRoom, "mute is for the voices of a room; join one first".into()).await;
                };
                if avatars.len() > plaza_shared::voice::MAX_MUTED {
                    let message = format!("a mute names at most {} avatars; this one named {}", plaza_shared::voice::MAX_MUTED, avatars.len());
                    return self.invalid(link, ErrorCode::TooLong, message).await;
                }
                // Muting before voice is on, or after it ended, does nothing:
                // the client says it again with each call.
                if self.voice.is_some() {
                    room.voice_mute(seat.you, self.conn, avatars).await;
                }
            }
            other => {
                let message = format!("a client sends a voice offer, mute or leave, not {}", other.kind());
                return self.invalid(link, ErrorCode::BadMessage, message).await;
            }
        }
        None
    }

    /// Stops this socket's voice, if on; with a `reason`, tells the client.
    async fn end_voice(&mut self, link: &MemberLink, reason: Option<&str>) {
        let Some(peer) = self.voice.take() else { return };
        if let Some((room, seat)) = &self.room {
            room.voice_leave(seat.you, self.conn).await;
        }
        drop(peer);
        if let Some(reason) = reason {
            Self::reply(link, ServerMessage::Voice(VoiceSignal::Ended { reason: reason.into() }.into_message())).await;
        }
    }
}

/// A hello that asked to resume a session: the seat taken back, or gone.
fn count_resume(resumed: bool) {
    metrics::counter!(m::SEAT_RESUMES, "outcome" => if resumed { m::RESUMED } else { m::SEAT_GONE }).increment(1);
}

/// Resolves when the relay to the room's instance ends; never without one.
async fn upstream_ended(upstream: Option<&mut crate::relay::Upstream>) -> crate::relay::UpstreamEnd {
    match upstream {
        Some(upstream) => upstream.ended().await,
        None => std::future::pending().await,
    }
}

/// How a socket ends when its relay did: the owner's close, passed on, so
/// the client does what it would have done on the owner's own socket; an
/// owner that went away is a restart to the client (1001: it resumes or
/// joins again, and the room starts on an instance that answers).
fn relay_end(end: crate::relay::UpstreamEnd) -> End {
    use crate::relay::UpstreamEnd;
    match end {
        UpstreamEnd::ClientGone => End::Dropped,
        UpstreamEnd::Closed(close::BAD_TOKEN) => End::Close(close::BAD_TOKEN, "token missing, bad or expired"),
        UpstreamEnd::Closed(close::RATE_LIMITED) => End::Close(close::RATE_LIMITED, "rate limited by the room's server"),
        UpstreamEnd::Closed(close::TOO_SLOW) => End::Close(close::TOO_SLOW, "too slow to keep up with the room"),
        UpstreamEnd::Closed(close::POLICY) => End::Close(close::POLICY, "too many invalid messages"),
        UpstreamEnd::Closed(close::TOO_LARGE) => End::Close(close::TOO_LARGE, "message too large"),
        UpstreamEnd::Closed(close::SERVER_DRAINING) => End::Close(close::SERVER_DRAINING, "the room's server is restarting; reconnect shortly"),
        UpstreamEnd::Closed(_) | UpstreamEnd::Dropped => End::Close(close::SERVER_DRAINING, "the room's server went away; reconnect shortly"),
    }
}

/// Resolves once `voice`'s connection has failed or closed; never without one.
async fn voice_ended(voice: Option<&crate::voice::VoicePeer>) {
    match voice {
        Some(peer) => peer.ended().await,
        None => std::future::pending().await,
    }
}

