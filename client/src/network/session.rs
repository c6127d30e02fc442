//! The network task: signs in, opens the WebSocket, joins, relays between
//! the socket and the ECS, and reconnects. It runs on the network thread's
//! tokio runtime; every decision about *what* to do comes from
//! [`Connection`].

use super::connection::{Connection, Credentials, Ended, Liveness, Next, Notice, SILENCE_LIMIT, Tokens, Verdict};
use super::{NetCommand, NetEvent, NetInput};
use plaza_shared::telemetry::TelemetryReport;
use futures_util::{SinkExt, StreamExt};
use plaza_shared::codec::Subprotocol;
use plaza_shared::limits::{PROTOCOL_VERSION, RequestFailure};
use plaza_shared::messages::*;
use plaza_shared::pacing::PosePacer;
use plaza_shared::upgrade_hello::{self, Taken};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The client pings this often (RTT for the HUD, and it keeps the server's
/// heartbeat happy while standing still).
pub const PING_EVERY: Duration = Duration::from_secs(5);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages read after a join: context for someone coming in, and more
/// than a short outage misses. After a restart every player asks at once,
/// so the page is kept modest (the server's largest is 200).
const HISTORY_PAGE: usize = 50;
/// Tries at the chat history after a join, and the pause before the n-th
/// retry (n times this).
const HISTORY_TRIES: u32 = 3;
const HISTORY_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `http://host:port`
    pub server: String,
    pub room: String,
    pub name: String,
    /// Silence from the server this long ends the socket as dropped
    /// ([`Liveness`]); [`SILENCE_LIMIT`] unless a test needs it shorter.
    pub silence_limit: Duration,
}

impl SessionConfig {
    pub fn new(server: impl Into<String>, room: impl Into<String>, name: impl Into<String>) -> Self {
        SessionConfig { server: server.into(), room: room.into(), name: name.into(), silence_limit: SILENCE_LIMIT }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why the relay loop stopped.
enum Stop {
    Ended(Ended),
    /// Closed to sign in again under another name.
    Renamed,
    /// The ECS is gone (the app is closing).
    Quit,
}

struct Task {
    config: SessionConfig,
    http: reqwest::Client,
    conn: Connection,
    started: Instant,
    events: mpsc::Sender<NetEvent>,
    /// The access token in force, for the telemetry sender beside us.
    token: watch::Sender<Option<String>>,
    /// Chats sent and not yet acknowledged, oldest first: sent again on
    /// the next socket once back in the room, and on this one when no ack
    /// comes within [`CHAT_ACK_WAIT`] (the server stores a chat once per
    /// id, so one that did arrive is not doubled).
    unacked: std::collections::VecDeque<Unacked>,
}

/// Chats kept for sending again; a chat past this fails at once.
const UNACKED_MAX: usize = 32;
/// The room list's request, whole.
const ROOMS_TIMEOUT: Duration = Duration::from_secs(5);
/// A chat with no `chat_ack` this long after it was sent is sent again on
/// the same socket: the server could not store it (its `error` names no
/// chat), the rate limit dropped it, or the link lost it.
const CHAT_ACK_WAIT: Duration = Duration::from_secs(5);
/// Sends of one chat on live sockets before it is given up as failed.
const CHAT_TRIES: u32 = 3;

/// A chat waiting for its ack.
#[derive(Debug, Clone)]
struct Unacked {
    chat: ChatSend,
    sent_at: Instant,
    /// Sends on sockets that stayed up (a resend after a reconnect is free).
    tries: u32,
}

impl Task {
    /// When the oldest unacked chat is due to be sent again, if any.
    fn next_chat_resend(&self) -> Option<Instant> {
        self.unacked.iter().map(|u| u.sent_at + CHAT_ACK_WAIT).min()
    }

    /// The chats due for another try: sent again (returned), or given up
    /// after [`CHAT_TRIES`] with a [`NetEvent::ChatFailed`].
    fn chats_to_resend(&mut self, now: Instant) -> Vec<ChatSend> {
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        self.unacked.retain_mut(|u| {
            if now < u.sent_at + CHAT_ACK_WAIT {
                return true;
            }
            if u.tries >= CHAT_TRIES {
                failed.push(u.chat.id.clone());
                return false;
            }
            u.tries += 1;
            u.sent_at = now;
            resend.push(u.chat.clone());
            true
        });
        for id in failed {
            tracing::warn!(%id, tries = CHAT_TRIES, "chat never acknowledged; given up");
            self.send(NetEvent::ChatFailed { id, reason: format!("the server did not confirm it after {CHAT_TRIES} tries; send it again") });
        }
        resend
    }
}

/// Runs until the app drops its end of the command channel.
pub async fn run(config: SessionConfig, input: NetInput, events: mpsc::Sender<NetEvent>) {
    run_with_telemetry(config, input, events, None).await
}

/// [`run`], and with `telemetry` a task beside the session that posts the
/// reports arriving there with the session's HTTP client and token.
pub async fn run_with_telemetry(config: SessionConfig, mut input: NetInput, events: mpsc::Sender<NetEvent>, telemetry: Option<mpsc::Receiver<TelemetryReport>>) {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) ^ u64::from(std::process::id());
    // Idle connections are let go before the server closes them.
    let pool_idle = Duration::from_millis(plaza_shared::limits::HTTP_POOL_IDLE_MS);
    let http = match reqwest::Client::builder().timeout(HTTP_TIMEOUT).pool_idle_timeout(pool_idle).build() {
        Ok(http) => http,
        Err(e) => {
            let _ = events.send(NetEvent::Status(super::ConnectionStatus::Failed { reason: format!("no HTTP client: {e}") })).await;
            return;
        }
    };
    let (token, token_rx) = watch::channel(None);
    if let Some(reports) = telemetry {
        let mut sender = super::telemetry::TelemetrySender::new(http.clone(), &config.server, token_rx);
        if let Some(voice) = &input.voice {
            sender = sender.with_voice(voice.tally.clone());
        }
        tokio::spawn(super::telemetry::run(sender, reports));
    }
    let mut task = Task { config, http, conn: Connection::new(seed), started: Instant::now(), events, token, unacked: Default::default() };
    task.status(super::ConnectionStatus::Connecting);
    let mut resume = false;
    loop {
        let stop = task.session(&mut input, resume).await;
        let ended = match stop {
            Stop::Quit => return,
            Stop::Ended(ended) => ended,
            Stop::Renamed => {
                task.conn.renamed();
                resume = false;
                task.status(super::ConnectionStatus::Connecting);
                continue;
            }
        };
        tracing::info!(?ended, "connection ended");
        match task.conn.ended(&ended) {
            Next::Retry { after, resume: again, notice } => {
                resume = again;
                task.notice(notice);
                let reason = match &ended {
                    Ended::Closed(code, reason) => format!("closed {code}: {reason}"),
                    Ended::Dropped(r) | Ended::Unreachable(r) => r.clone(),
                    Ended::ServerFull { .. } => super::connection::SERVER_FULL.into(),
                };
                let attempt = task.conn.backoff.attempt();
                task.status(super::ConnectionStatus::Reconnecting { attempt, retry_in: after, reason: reason.clone() });
                // Wait, but leave at once if the app closes meanwhile; what
                // the app asks meanwhile waits for the next socket.
                let deadline = Instant::now() + after;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => break,
                        command = input.commands.recv() => match command {
                            Some(command) => task.while_away(command, true),
                            None => return,
                        },
                    }
                }
                // The try itself can take a while on a bad link (up to the
                // connect timeout): say it is under way.
                task.status(super::ConnectionStatus::Reconnecting { attempt, retry_in: Duration::ZERO, reason });
            }
            Next::GiveUp { reason, notice } => {
                task.notice(notice);
                task.status(super::ConnectionStatus::Failed { reason });
                // Nothing more to do until the app closes; chat typed now
                // fails and says why.
                while let Some(command) = input.commands.recv().await {
                    task.while_away(command, false);
                }
                return;
            }
        }
    }
}

impl Task {
    /// A command while there is no socket: chat waits for the next one (the
    /// join sends what is unacknowledged) when one will come, else fails; a
    /// room is where the next join goes; the room list is read anyway.
    fn while_away(&mut self, command: NetCommand, coming_back: bool) {
        match command {
            NetCommand::Chat { id, .. } if !coming_back => self.send(NetEvent::ChatFailed { id, reason: "not connected, and Plaza gave up reconnecting".into() }),
            NetCommand::Chat { id, .. } if self.unacked.len() >= UNACKED_MAX => {
                self.send(NetEvent::ChatFailed { id, reason: format!("{UNACKED_MAX} messages are already waiting for the connection; try again once it is back") })
            }
            NetCommand::Chat { id, text } => self.unacked.push_back(Unacked { chat: ChatSend { id, text }, sent_at: Instant::now(), tries: 0 }),
            NetCommand::JoinRoom { room } => self.config.room = room,
            NetCommand::ListRooms => self.list_rooms(),
            NetCommand::Rename { name } => {
                self.config.name = name;
                self.conn.renamed();
            }
        }
    }

    /// Reads the server's rooms beside whatever else runs; the answer comes
    /// as [`NetEvent::Rooms`].
    fn list_rooms(&self) {
        let (http, server, events) = (self.http.clone(), self.config.server.clone(), self.events.clone());
        tokio::spawn(async move {
            let url = format!("{server}/api/v1/rooms");
            let rooms = json_answer::<Vec<RoomSummary>>(&server, &url, http.get(&url).timeout(ROOMS_TIMEOUT).send().await).await.map_err(|e| e.message);
            let _ = events.send(NetEvent::Rooms(rooms)).await;
        });
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Events to the ECS never block the network: a full queue (the app
    /// stalled) drops status and notices, and the next ones replace them.
    fn send(&self, event: NetEvent) {
        if self.events.try_send(event).is_err() {
            tracing::debug!("event queue to the app full; event dropped");
        }
    }

    fn status(&self, status: super::ConnectionStatus) {
        self.send(NetEvent::Status(status));
    }

    fn notice(&self, notice: Notice) {
        self.send(NetEvent::Notice(notice));
    }

    /// Keeps a new token pair; returns the access token.
    fn keep(&mut self, pair: TokenPair) -> String {
        let expires_at = self.now() + Duration::from_secs(pair.expires_in);
        self.conn.tokens = Some(Tokens { access: pair.access_token.clone(), refresh: pair.refresh_token, expires_at });
        self.token.send_replace(Some(pair.access_token.clone()));
        pair.access_token
    }

    /// Makes sure we hold a usable access token.
    async fn credentials(&mut self) -> Result<String, String> {
        loop {
            let pair = match self.conn.credentials(self.now()) {
                Credentials::Use(token) => return Ok(token),
                Credentials::Login => post(&self.http, &self.config.server, "/api/v1/auth/guest", serde_json::json!({ "name": self.config.name })).await.map_err(|e| e.message)?,
                Credentials::Refresh(refresh) => match refresh_pair(&self.http, &self.config.server, refresh).await {
                    Ok(pair) => pair,
                    Err(e) if e.refused => {
                        tracing::info!(cause = %e, "refresh refused; signing in again");
                        self.conn.refresh_failed();
                        continue;
                    }
                    Err(e) => {
                        // Keep the tokens: the access token may still work,
                        // and the refresh token will once the server is back.
                        self.conn.refresh_unanswered(self.now());
                        match self.conn.credentials(self.now()) {
                            Credentials::Use(token) => return Ok(token),
                            _ => return Err(e.message),
                        }
                    }
                },
            };
            self.keep(pair);
        }
    }

    /// Opens the socket with `hello`, and `join` (the room, should no seat
    /// be resumed), in the upgrade request (plaza_shared::upgrade_hello);
    /// says which of them the server took from there (an older server takes
    /// neither: the hello and the join then go as frames).
    async fn open(&self, hello: &Hello, join: &str) -> Result<(Ws, Taken), Ended> {
        let url = format!("{}/ws", self.config.server.replacen("http://", "ws://", 1));
        let mut request = url.as_str().into_client_request().map_err(|e| Ended::Unreachable(format!("{url}: {e}")))?;
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", Subprotocol::Binary.name().parse().expect("header value"));
        for (name, value) in upgrade_hello::request_headers(&hello.token, hello.resume.as_deref(), Some(join)) {
            if let Ok(value) = value.parse() {
                headers.insert(name, value);
            }
        }
        // No Nagle: a pose must not wait for the server's ACK of the one
        // before (up to a delayed-ACK timeout, 40 ms on Linux). A 4 KiB read
        // buffer: tungstenite's default 128 KiB is zero-filled on every read.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
        let (ws, response) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async_with_config(request, Some(config), true))
            .await
            .map_err(|_| Ended::Unreachable(format!("{url}: no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => refused(&url, &response),
                e => Ended::Unreachable(format!("{url}: {e}")),
            })?;
        Ok((ws, Taken::from_response(|name| response.headers().get(name).map(|v| v.as_bytes()))))
    }

    /// One socket's life: hello, join (or resume), relay.
    async fn session(&mut self, input: &mut NetInput, resume: bool) -> Stop {
        let token = match self.credentials().await {
            Ok(token) => token,
            Err(e) => return Stop::Ended(Ended::Unreachable(e)),
        };
        let hello = Hello { token, protocol: PROTOCOL_VERSION, resume: if resume { self.conn.session.clone() } else { None } };
        let (mut ws, taken) = match self.open(&hello, &self.config.room).await {
            Ok(opened) => opened,
            Err(ended) => return Stop::Ended(ended),
        };
        let fresh = hello.resume.is_none();
        if !taken.hello && let Err(e) = send(&mut ws, &ClientMessage::Hello(hello)).await {
            return Stop::Ended(Ended::Dropped(e));
        }
        let join = if taken.join {
            JoinAsked::InUpgrade
        } else if fresh {
            JoinAsked::BehindHello
        } else {
            JoinAsked::AfterWelcome
        };
        self.relay(ws, input, join).await
    }

    /// `join`: how this socket asks for its room (see [`JoinAsked`]).
    async fn relay(&mut self, mut ws: Ws, input: &mut NetInput, join: JoinAsked) -> Stop {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_room = false;
        let mut resumed = false;
        // The room we are in (id, name), and while switching, the one we
        // left: where to go back to if the new one can't be joined.
        let mut current_room: Option<(String, String)> = None;
        let mut switching_from: Option<(String, String)> = None;
        // Room changes go one a second at most (the server's pace for a
        // socket): the newest pick waits here for its turn.
        let mut last_join: Option<Instant> = None;
        let mut pending_join: Option<String> = None;
        let join_gap = Duration::from_millis(plaza_shared::limits::JOIN_EVERY_MS);
        // The newest pose waits here for its slot just before the room's
        // tick: one a tick, at most a frame old when the room takes it.
        let mut pacer = PosePacer::new(plaza_shared::limits::TICK_HZ);
        let pose_timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(pose_timer);
        let mut pose_due_us: Option<u64> = None;
        // A refresh runs beside the relay so reading never stalls on HTTP.
        let mut refreshing: Option<tokio::task::JoinHandle<Result<TokenPair, RequestFailure>>> = None;
        // So does the chat history read after each join.
        let mut history: Option<tokio::task::JoinHandle<Result<Vec<ChatMessage>, RequestFailure>>> = None;
        // Voice, once in the room: the call's signals to the server come
        // out of `voice_outbox`; dropping the call (the socket ends) ends it.
        let (voice_out, mut voice_outbox) = mpsc::channel::<plaza_shared::voice::VoiceSignal>(8);
        let mut voice_call: Option<super::voice::VoiceCall> = None;
        let mut liveness = Liveness::new(self.config.silence_limit, Instant::now());
        match join {
            JoinAsked::InUpgrade => {
                last_join = Some(Instant::now());
                liveness.join_sent(Instant::now());
            }
            JoinAsked::BehindHello => {
                if let Err(e) = send_join(&mut ws, self.config.room.clone(), &mut last_join, &mut liveness).await {
                    return Stop::Ended(Ended::Dropped(e));
                }
            }
            JoinAsked::AfterWelcome => {}
        }
        loop {
            let refresh_at = self.conn.refresh_at().map(|at| self.started + at).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let chat_resend_at = self.next_chat_resend();
            tokio::select! {
                frame = ws.next() => {
                    let arrival_us = unix_us();
                    liveness.heard(Instant::now());
                    let message = match frame {
                        Some(Ok(Message::Binary(bytes))) => match plaza_shared::codec::binary::decode_server(&bytes) {
                            Ok(message) => message,
                            Err(e) => {
                                tracing::warn!(cause = %e, "undecodable message from the server; skipped");
                                continue;
                            }
                        },
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                            return Stop::Ended(Ended::Closed(code, reason));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Stop::Ended(Ended::Dropped(e.to_string())),
                        None => return Stop::Ended(Ended::Dropped("the connection closed".into())),
                    };
                    match message {
                        ServerMessage::Welcome(w) => {
                            pacer = PosePacer::new(w.tick_hz);
                            resumed = self.conn.welcomed(&w.session);
                            tracing::info!(session = %w.session, resumed, "welcome");
                            self.send(NetEvent::Welcome { user_id: w.user_id.clone() });
                            if !resumed && join == JoinAsked::AfterWelcome && let Err(e) = send_join(&mut ws, self.config.room.clone(), &mut last_join, &mut liveness).await {
                                return Stop::Ended(Ended::Dropped(e));
                            }
                        }
                        ServerMessage::Joined(j) => {
                            liveness.join_answered();
                            let reconnected = self.conn.joined();
                            if resumed {
                                self.notice(Notice::Reconnected { resumed: true });
                            } else if let Some(notice) = reconnected {
                                self.notice(notice);
                            }
                            in_room = true;
                            pacer.joined(&j.room);
                            current_room = Some((j.room.clone(), j.room_name.clone()));
                            switching_from = None;
                            self.status(super::ConnectionStatus::InRoom { room: j.room.clone(), room_name: j.room_name.clone() });
                            // What the last socket may not have delivered.
                            let now = Instant::now();
                            for u in &mut self.unacked {
                                u.sent_at = now;
                                if let Err(e) = send(&mut ws, &ClientMessage::Chat(u.chat.clone())).await {
                                    return Stop::Ended(Ended::Dropped(e));
                                }
                            }
                            // What was said before we came, or while we were away.
                            if let Some(token) = self.conn.tokens.as_ref().map(|t| t.access.clone()) {
                                let (http, server, room) = (self.http.clone(), self.config.server.clone(), j.room.clone());
                                history = Some(tokio::spawn(async move { chat_history(&http, &server, &room, &token).await }));
                            }
                            if let Some(port) = &input.voice
                                && voice_call.is_none()
                            {
                                voice_call = Some(super::voice::VoiceCall::start(port, &self.config.server, voice_out.clone()));
                            }
                            // The full state must arrive: wait for room rather than drop it.
                            if self.events.send(NetEvent::Joined(j)).await.is_err() {
                                return Stop::Quit;
                            }
                        }
                        ServerMessage::Delta(d) => {
                            pacer.delta_arrived(arrival_us, d.tick);
                            // Deltas may not be dropped either: the avatar set would drift.
                            if self.events.send(NetEvent::Delta(d)).await.is_err() {
                                return Stop::Quit;
                            }
                        }
                        ServerMessage::Chat(c) => {
                            // Chat is not dropped on a full queue either.
                            if self.events.send(NetEvent::Chat(c)).await.is_err() {
                                return Stop::Quit;
                            }
                        }
                        ServerMessage::ChatAck(a) => {
                            self.unacked.retain(|u| u.chat.id != a.id);
                            self.send(NetEvent::ChatAck(a.id));
                        }
                        ServerMessage::Pong(p) => {
                            let rtt = Duration::from_millis(unix_ms().saturating_sub(p.t));
                            pacer.round_trip(rtt.as_micros() as u64);
                            self.send(NetEvent::Rtt(rtt));
                        }
                        ServerMessage::TokenExpiring(_) => {
                            // Earlier than planned (clock skew?): refresh now.
                            if let Some(t) = &mut self.conn.tokens {
                                t.expires_at = Duration::ZERO;
                            }
                        }
                        // A join that failed: back to the room we left, or
                        // (the first join) in no room until another is picked.
                        ServerMessage::Error(e) if !in_room && matches!(e.code, ErrorCode::RoomFull | ErrorCode::RoomNotFound) => {
                            liveness.join_answered();
                            let wanted = std::mem::take(&mut self.config.room);
                            tracing::info!(room = %wanted, code = e.code.as_str(), message = %e.message, "room not joined");
                            match switching_from.take() {
                                Some((id, name)) => {
                                    self.notice(Notice::RoomFull { room: wanted, detail: e.message.clone(), back_in: Some(name.clone()) });
                                    self.config.room = id.clone();
                                    self.status(super::ConnectionStatus::Joining { room: name });
                                    if let Err(e) = send_join(&mut ws, id, &mut last_join, &mut liveness).await {
                                        return Stop::Ended(Ended::Dropped(e));
                                    }
                                }
                                None => {
                                    self.status(super::ConnectionStatus::NoRoom { reason: format!("can't join {wanted}: {}", e.message) });
                                    self.notice(Notice::RoomFull { room: wanted.clone(), detail: e.message.clone(), back_in: None });
                                    self.config.room = wanted;
                                }
                            }
                        }
                        ServerMessage::Error(e) if e.code == ErrorCode::VoiceUnavailable => {
                            // The call is waiting for an answer that won't come.
                            if let Some(call) = &voice_call {
                                call.unavailable(e.message.clone());
                            }
                        }
                        ServerMessage::Error(e) => {
                            tracing::warn!(code = e.code.as_str(), message = %e.message, "server error");
                            self.send(NetEvent::ServerError(e));
                        }
                        ServerMessage::Voice(v) => match (plaza_shared::voice::VoiceSignal::from_message(&v), &voice_call) {
                            (Ok(signal), Some(call)) => call.signal(signal),
                            (Ok(signal), None) => tracing::debug!(kind = signal.kind(), "voice signal with no call"),
                            (Err(e), _) => tracing::warn!(cause = %e, "voice signal from the server not understood"),
                        },
                    }
                }
                changed = input.pose.changed(), if in_room && pose_due_us.is_none() => {
                    if changed.is_err() {
                        let _ = ws.close(None).await;
                        return Stop::Quit;
                    }
                    // A new pose: its slot is the next one before a tick.
                    let now_us = unix_us();
                    let due = pacer.next_send_us(now_us);
                    pose_due_us = Some(due);
                    pose_timer.as_mut().reset(Instant::now() + Duration::from_micros(due.saturating_sub(now_us)));
                }
                Some(signal) = voice_outbox.recv() => {
                    if let Err(e) = send(&mut ws, &ClientMessage::Voice(signal.into_message())).await {
                        return Stop::Ended(Ended::Dropped(e));
                    }
                }
                command = input.commands.recv() => {
                    let Some(command) = command else {
                        let _ = ws.close(None).await;
                        return Stop::Quit;
                    };
                    let message = match command {
                        NetCommand::Chat { id, .. } if !in_room => {
                            self.send(NetEvent::ChatFailed { id, reason: "not in a room yet; try again once connected".into() });
                            continue;
                        }
                        NetCommand::Chat { id, .. } if self.unacked.len() >= UNACKED_MAX => {
                            self.send(NetEvent::ChatFailed { id, reason: format!("{UNACKED_MAX} messages are still waiting for the server; try again in a moment") });
                            continue;
                        }
                        NetCommand::Chat { id, text } => {
                            let chat = ChatSend { id, text };
                            self.unacked.push_back(Unacked { chat: chat.clone(), sent_at: Instant::now(), tries: 1 });
                            ClientMessage::Chat(chat)
                        }
                        NetCommand::ListRooms => {
                            self.list_rooms();
                            continue;
                        }
                        NetCommand::Rename { name } if name == self.config.name => continue,
                        NetCommand::Rename { name } => {
                            tracing::info!(%name, "signing in again under another name");
                            self.config.name = name;
                            let _ = ws.close(None).await;
                            return Stop::Renamed;
                        }
                        NetCommand::JoinRoom { room } if in_room && current_room.as_ref().is_some_and(|(id, name)| *id == room || *name == room) => {
                            // Already here: a pick still waiting is called off.
                            if pending_join.take().is_some()
                                && let Some((id, name)) = &current_room
                            {
                                self.config.room = id.clone();
                                self.status(super::ConnectionStatus::InRoom { room: id.clone(), room_name: name.clone() });
                            }
                            continue;
                        }
                        NetCommand::JoinRoom { room } => {
                            self.status(super::ConnectionStatus::Joining { room: room.clone() });
                            // A reconnect before its turn goes there too.
                            self.config.room = room.clone();
                            pending_join = Some(room);
                            continue;
                        }
                    };
                    if let Err(e) = send(&mut ws, &message).await {
                        return Stop::Ended(Ended::Dropped(e));
                    }
                }
                _ = tokio::time::sleep_until(last_join.map_or_else(Instant::now, |at| at + join_gap)), if pending_join.is_some() => {
                    let room = pending_join.take().unwrap_or_default();
                    // Poses wait for the new room (the server leaves the old
                    // one first; a pose in none is an error).
                    if in_room {
                        switching_from = current_room.take();
                    }
                    in_room = false;
                    pose_due_us = None;
                    // Voice is per room: the server ends this call, and the
                    // next `joined` starts one at once (rather than after a
                    // failed call's 2 s backoff).
                    voice_call = None;
                    self.config.room = room.clone();
                    if let Err(e) = send_join(&mut ws, room, &mut last_join, &mut liveness).await {
                        return Stop::Ended(Ended::Dropped(e));
                    }
                }
                _ = &mut pose_timer, if pose_due_us.is_some() => {
                    let planned = pose_due_us.take().unwrap_or_default();
                    // The newest pose, taken at the last moment.
                    let Some(newest) = *input.pose.borrow_and_update() else { continue };
                    pacer.sent(planned, unix_us());
                    if let Err(e) = send(&mut ws, &ClientMessage::Pose(PoseUpdate { t: unix_ms(), pose: newest })).await {
                        return Stop::Ended(Ended::Dropped(e));
                    }
                }
                _ = tokio::time::sleep_until(chat_resend_at.unwrap_or_else(Instant::now)), if in_room && chat_resend_at.is_some() => {
                    for chat in self.chats_to_resend(Instant::now()) {
                        tracing::info!(id = %chat.id, "no chat_ack yet; sending the chat again");
                        if let Err(e) = send(&mut ws, &ClientMessage::Chat(chat)).await {
                            return Stop::Ended(Ended::Dropped(e));
                        }
                    }
                }
                _ = tokio::time::sleep_until(liveness.next_check()) => match liveness.check(Instant::now()) {
                    Verdict::Fine => {}
                    // The ping below goes at once (and the next a period on).
                    Verdict::Probe => ping.reset_immediately(),
                    Verdict::Dead(reason) => {
                        tracing::warn!(%reason, "the link is dead; reconnecting");
                        return Stop::Ended(Ended::Dropped(reason));
                    }
                },
                _ = ping.tick() => {
                    if let Err(e) = send(&mut ws, &ClientMessage::Ping(Ping { t: unix_ms() })).await {
                        return Stop::Ended(Ended::Dropped(e));
                    }
                }
                _ = tokio::time::sleep_until(refresh_at), if refreshing.is_none() && self.conn.tokens.is_some() => {
                    let refresh = self.conn.tokens.as_ref().map(|t| t.refresh.clone()).unwrap_or_default();
                    let (http, server) = (self.http.clone(), self.config.server.clone());
                    refreshing = Some(tokio::spawn(async move { refresh_pair(&http, &server, refresh).await }));
                }
                fetched = async { history.as_mut().expect("guarded").await }, if history.is_some() => {
                    history = None;
                    let event = match fetched {
                        Ok(Ok(page)) => NetEvent::ChatHistory(page),
                        Ok(Err(e)) => {
                            tracing::warn!(cause = %e, "chat history not read");
                            NetEvent::ChatHistoryFailed(e.message)
                        }
                        Err(e) => NetEvent::ChatHistoryFailed(e.to_string()),
                    };
                    // Not dropped on a full queue: the chat would have a hole.
                    if self.events.send(event).await.is_err() {
                        return Stop::Quit;
                    }
                }
                done = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => {
                    refreshing = None;
                    match done {
                        Ok(Ok(pair)) => {
                            tracing::info!("token refreshed in band");
                            self.send(NetEvent::TokenRefreshed);
                            let access = self.keep(pair);
                            if let Err(e) = send(&mut ws, &ClientMessage::Refresh(Refresh { token: access })).await {
                                return Stop::Ended(Ended::Dropped(e));
                            }
                        }
                        Ok(Err(e)) if e.refused => {
                            // The socket lives until the token expires; then
                            // 4001 brings a fresh login.
                            tracing::warn!(cause = %e, "token refresh refused");
                            self.conn.refresh_failed();
                        }
                        outcome => {
                            // No answer (the server restarting?): the tokens
                            // stay, and the next try comes in a few seconds.
                            tracing::warn!(?outcome, "token refresh unanswered; trying again shortly");
                            self.conn.refresh_unanswered(self.now());
                        }
                    }
                }
            }
        }
    }
}

/// What the auth routes answer.
#[derive(Debug, serde::Deserialize)]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

/// POSTs JSON to `server` + `path` and reads the JSON answer; an error
/// says which URL and what it answered.
async fn post<T: serde::de::DeserializeOwned>(http: &reqwest::Client, server: &str, path: &str, body: serde_json::Value) -> Result<T, RequestFailure> {
    let url = format!("{server}{path}");
    json_answer(server, &url, http.post(&url).json(&body).send().await).await
}

/// The room's newest chat (oldest first), `GET /api/v1/rooms/{id}/chat`:
/// a few tries, since it is asked for just as a restarted server takes
/// everyone back; a refusal (4xx) is not tried again.
async fn chat_history(http: &reqwest::Client, server: &str, room: &str, token: &str) -> Result<Vec<ChatMessage>, RequestFailure> {
    let url = format!("{server}/api/v1/rooms/{room}/chat?limit={HISTORY_PAGE}");
    let mut attempt = 1;
    loop {
        match json_answer(server, &url, http.get(&url).bearer_auth(token).send().await).await {
            Err(e) if !e.refused && attempt < HISTORY_TRIES => {
                tracing::debug!(cause = %e, attempt, "chat history: trying again");
                tokio::time::sleep(HISTORY_RETRY * attempt).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Reads a JSON answer; an error says which URL and what it answered.
async fn json_answer<T: serde::de::DeserializeOwned>(server: &str, url: &str, sent: Result<reqwest::Response, reqwest::Error>) -> Result<T, RequestFailure> {
    let response = sent.map_err(|e| RequestFailure::unanswered(unreachable_reason(server, &e)))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(RequestFailure::answered(status.as_u16(), format!("{url} answered {status}: {text}")));
    }
    response.json().await.map_err(|e| RequestFailure::unanswered(format!("{url}: {e}")))
}

/// Why a request got no answer, in words a player can act on: the server
/// and the innermost cause ("Connection refused"), not reqwest's "error
/// sending request for url (…)".
fn unreachable_reason(server: &str, error: &reqwest::Error) -> String {
    let cause = plaza_shared::errors::root_cause(error);
    if error.is_timeout() {
        format!("{server} did not answer in time")
    } else if error.is_connect() {
        format!("can't reach {server} ({cause})")
    } else {
        format!("{server}: {cause}")
    }
}

/// Trades a refresh token for a new pair (the old one stops working).
async fn refresh_pair(http: &reqwest::Client, server: &str, refresh: String) -> Result<TokenPair, RequestFailure> {
    post(http, server, "/api/v1/auth/refresh", serde_json::json!({ "refresh_token": refresh })).await
}

/// How a socket asks for its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinAsked {
    /// In the upgrade request, and the server took it: it joins by itself
    /// when no seat is resumed.
    InUpgrade,
    /// Nothing to resume: a join frame right behind the hello (the server
    /// reads them in order), not a round trip later after the welcome.
    BehindHello,
    /// A resume without the room in the upgrade (an older server, or a
    /// room name that can't be a header): the welcome says whether the seat
    /// is back or a join is needed.
    AfterWelcome,
}

/// Sends a join, noting when (room changes are paced from the last one,
/// and the answer is waited for).
async fn send_join(ws: &mut Ws, room: String, last_join: &mut Option<Instant>, liveness: &mut Liveness<Instant>) -> Result<(), String> {
    let now = Instant::now();
    *last_join = Some(now);
    liveness.join_sent(now);
    send(ws, &ClientMessage::Join(Join { room })).await
}

/// A send the socket takes nothing of for this long ends it: on a dead
/// link the kernel's buffer fills, and a send waiting for room would hold
/// up the whole relay, the silence check included.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

async fn send(ws: &mut Ws, message: &ClientMessage) -> Result<(), String> {
    let bytes = plaza_shared::codec::binary::encode_client(message);
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Binary(bytes.into()))).await {
        Ok(sent) => sent.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the connection took nothing for {} s", SEND_TIMEOUT.as_secs())),
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn unix_ms() -> u64 {
    unix_us() / 1000
}

/// What an upgrade answered with an HTTP status means: `503 server_full`
/// is a server at its connection limit, which says when to come back;
/// anything else is a plain failure.
fn refused(url: &str, response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>) -> Ended {
    use plaza_shared::limits::server_full;
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok());
    if let Some(retry_after) = server_full::wait(response.status().as_u16(), retry_after, response.body().as_deref()) {
        return Ended::ServerFull { retry_after };
    }
    let code = response.body().as_deref().and_then(server_full::error_code);
    Ended::Unreachable(format!("{url}: the server answered {}{}", response.status(), code.map(|c| format!(" ({c})")).unwrap_or_default()))
}
