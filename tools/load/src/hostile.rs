//! `--hostile N`: clients that misbehave, N in every room beside the users,
//! taking turns at four kinds:
//!
//! - `stall` stops reading (a 4 KiB receive buffer, as on a device whose app
//!   froze) but pings once a second: the room should skip its deltas and
//!   close it with 4009, and the server then cut the socket;
//! - `flood` sends 500 poses a second: rate-limited, then closed with 4008;
//! - `junk` sends an invalid message 20 times a second: an `error` each, and
//!   the 10th closes with 1008;
//! - `oversize` sends one message over the 16 KiB limit: closed with 1009;
//! - `slowloris` opens a connection and sends half a WebSocket upgrade
//!   request, never the rest: the server must close the connection once its
//!   request-head deadline (10 s) passes.
//!
//! Each comes back a second after it is closed and does it again, until the
//! run ends. The run fails when a kind is never closed, or closed with
//! another code; the users beside them are held to the usual bar (nothing
//! lost or misrouted, no errors). The server's own count of its closes
//! (`plaza_ws_server_closes_total`) is read before and after.

use crate::histogram::{Histogram, Summary as Percentiles};
use crate::user::{Env, Phase, Ws, open_socket, post, ws_host_port};
use crate::wire::{Decoded, Wire};
use futures_util::{SinkExt, StreamExt};
use plaza_shared::limits::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION, close};
use plaza_shared::messages::{ClientMessage, ErrorMessage, Hello, Join, Ping, PoseUpdate, ServerMessage};
use plaza_shared::pose::Pose;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The stalled client's kernel receive buffer.
const STALL_RECV_BUFFER: u32 = 4096;
/// The stalled client pings this often while it reads nothing.
const STALL_PING_EVERY: Duration = Duration::from_secs(1);
/// How long any kind waits for the server to act before it counts the
/// socket as left open. The stall is the slow one: the room notices once
/// the server's send buffer and queue are full, which takes longer the less
/// the room says.
const LOOK_FOR: Duration = Duration::from_secs(90);
const FLOOD_EVERY: Duration = Duration::from_millis(2);
const JUNK_EVERY: Duration = Duration::from_millis(50);
/// Between a close and the next socket.
const COME_BACK_AFTER: Duration = Duration::from_secs(1);
/// Hello → welcome, join → joined.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// After a stalled client's ping fails: reading what was buffered.
const READ_REST_FOR: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const LOGIN_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    Stall,
    Flood,
    Junk,
    Oversize,
    Slowloris,
}

impl Misbehaviour {
    pub const ALL: [Misbehaviour; 5] = [Misbehaviour::Stall, Misbehaviour::Flood, Misbehaviour::Junk, Misbehaviour::Oversize, Misbehaviour::Slowloris];

    pub fn name(self) -> &'static str {
        match self {
            Misbehaviour::Stall => "stall",
            Misbehaviour::Flood => "flood",
            Misbehaviour::Junk => "junk",
            Misbehaviour::Oversize => "oversize",
            Misbehaviour::Slowloris => "slowloris",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Misbehaviour::Stall => "stops reading (4 KiB receive buffer), pings once a second",
            Misbehaviour::Flood => "sends 500 poses a second",
            Misbehaviour::Junk => "sends an invalid message 20 times a second",
            Misbehaviour::Oversize => "sends one 20,000-byte message",
            Misbehaviour::Slowloris => "sends half an upgrade request, never the rest",
        }
    }

    /// The close code the server should end it with; `None`: it never
    /// gets a WebSocket, and the server should close the connection.
    pub fn expected_close(self) -> Option<u16> {
        match self {
            Misbehaviour::Stall => Some(close::TOO_SLOW),
            Misbehaviour::Flood => Some(close::RATE_LIMITED),
            Misbehaviour::Junk => Some(close::POLICY),
            Misbehaviour::Oversize => Some(close::TOO_LARGE),
            Misbehaviour::Slowloris => None,
        }
    }

    /// Its `reason` in `plaza_ws_server_closes_total`, if it gets a WebSocket.
    pub fn server_reason(self) -> Option<&'static str> {
        match self {
            Misbehaviour::Stall => Some("too_slow"),
            Misbehaviour::Flood => Some("rate_limited"),
            Misbehaviour::Junk => Some("invalid_messages"),
            Misbehaviour::Oversize => Some("too_large"),
            Misbehaviour::Slowloris => None,
        }
    }

    /// Whether the close frame may never reach it: a client that doesn't
    /// read can't see it (the server gives it 5 s, then cuts the socket),
    /// and one that floods may be reset before it reads it.
    fn close_frame_may_be_lost(self) -> bool {
        matches!(self, Misbehaviour::Stall | Misbehaviour::Flood)
    }
}

/// How one socket ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Closed(u16),
    /// Reset or ended without a close frame.
    Ended,
    /// Still open after [`LOOK_FOR`].
    StillOpen,
    /// The run ended first.
    RunEnded,
}

/// One kind's numbers, in `result.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindResult {
    pub kind: &'static str,
    pub behaviour: &'static str,
    /// `null`: the connection closed (no WebSocket: `slowloris`).
    pub expected_close: Option<u16>,
    /// Clients of this kind, over all rooms.
    pub clients: u32,
    /// Sockets on which it misbehaved (joined, then started).
    pub sessions: u64,
    pub closed_as_expected: u64,
    /// Ended without a close frame (see `close_frame_may_be_lost`).
    pub ended_without_close_frame: u64,
    /// Close code → sockets closed with it instead.
    pub closed_otherwise: BTreeMap<String, u64>,
    pub left_open: u64,
    /// Still misbehaving when the run ended (not judged).
    pub cut_by_run_end: u64,
    /// Sockets that never got to misbehave, by why (e.g. `server_room_full`).
    pub setup_failures: BTreeMap<String, u64>,
    /// `error` messages it got back.
    pub error_replies: u64,
    /// Misbehaviour's start → the socket's end, as the client saw it.
    pub ended_after_ms: Percentiles,
    /// The server's `plaza_ws_server_closes_total{reason}` over the run
    /// (everyone's closes with that reason, users' included).
    pub server_closes: Option<f64>,
}

/// `result.json`'s `hostile`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostileResult {
    pub per_room: u32,
    pub kinds: Vec<KindResult>,
}

impl KindResult {
    /// What the server should have done to this kind, in words.
    pub fn expected(&self) -> String {
        self.expected_close.map_or_else(|| "connection closed".to_owned(), |c| c.to_string())
    }
}

impl HostileResult {
    /// Why the run fails because of them, if it does.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in &self.kinds {
            let judged = k.sessions - k.cut_by_run_end;
            if judged == 0 {
                out.push(format!("no {} client was closed within the run (setup failures: {:?})", k.kind, k.setup_failures));
                continue;
            }
            if !k.closed_otherwise.is_empty() {
                out.push(format!("{} clients closed with {:?}, not {}", k.kind, k.closed_otherwise, k.expected()));
            }
            if k.left_open > 0 {
                out.push(format!("{} {} sockets left open for {} s", k.left_open, k.kind, LOOK_FOR.as_secs()));
            }
            let lost_frames = Misbehaviour::ALL.iter().find(|m| m.name() == k.kind).is_some_and(|m| !m.close_frame_may_be_lost());
            if lost_frames && k.ended_without_close_frame > 0 {
                out.push(format!("{} {} sockets ended without the {} close frame", k.ended_without_close_frame, k.kind, k.expected()));
            }
            let ended = (k.closed_as_expected + k.ended_without_close_frame) as f64;
            if let Some(counted) = k.server_closes
                && counted < ended
            {
                out.push(format!("the server counted {counted} {} closes, its {} clients saw {ended}", k.kind, k.kind));
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct Tally {
    sessions: u64,
    closed_as_expected: u64,
    ended_without_close_frame: u64,
    closed_otherwise: BTreeMap<String, u64>,
    left_open: u64,
    cut_by_run_end: u64,
    setup_failures: BTreeMap<String, u64>,
    error_replies: u64,
    ended_after_us: Histogram,
}

/// The hostile clients of a run, started with [`start`].
pub struct HostileLoad {
    per_room: u32,
    clients: JoinSet<(Misbehaviour, Tally)>,
    closes_before: Option<BTreeMap<&'static str, f64>>,
    http: reqwest::Client,
    server_base: String,
}

/// Starts `per_room` hostile clients in each of `rooms` (names or ids).
/// `server_base`: the server itself (not the fault proxy), for its metrics.
pub async fn start(per_room: u32, rooms: &[String], env: Arc<Env>, phase: watch::Receiver<Phase>, server_base: String) -> HostileLoad {
    let http = env.http.clone();
    let closes_before = server_closes(&http, &server_base).await;
    let mut clients = JoinSet::new();
    for (r, room) in rooms.iter().enumerate() {
        for i in 0..per_room {
            let kind = Misbehaviour::ALL[i as usize % Misbehaviour::ALL.len()];
            let client = Hostile {
                kind,
                name: format!("{}-bad-r{}-{}{}", env.tag, r + 1, kind.name(), i + 1),
                room: room.clone(),
                env: env.clone(),
                phase: phase.clone(),
                tally: Tally::default(),
            };
            clients.spawn(client.run());
        }
    }
    HostileLoad { per_room, clients, closes_before, http, server_base }
}

impl HostileLoad {
    /// Waits for the clients (they stop with the run) and sums them up.
    pub async fn finish(mut self) -> HostileResult {
        let mut by_kind: BTreeMap<&'static str, (u32, Tally)> = BTreeMap::new();
        while let Some(done) = self.clients.join_next().await {
            let Ok((kind, t)) = done else { continue };
            let (clients, sum) = by_kind.entry(kind.name()).or_default();
            *clients += 1;
            sum.sessions += t.sessions;
            sum.closed_as_expected += t.closed_as_expected;
            sum.ended_without_close_frame += t.ended_without_close_frame;
            sum.left_open += t.left_open;
            sum.cut_by_run_end += t.cut_by_run_end;
            sum.error_replies += t.error_replies;
            for (code, n) in t.closed_otherwise {
                *sum.closed_otherwise.entry(code).or_default() += n;
            }
            for (why, n) in t.setup_failures {
                *sum.setup_failures.entry(why).or_default() += n;
            }
            sum.ended_after_us.merge(&t.ended_after_us);
        }
        let after = server_closes(&self.http, &self.server_base).await;
        let kinds = Misbehaviour::ALL
            .iter()
            .filter_map(|&m| {
                let (clients, t) = by_kind.remove(m.name())?;
                let counted = m.server_reason().and_then(|reason| Some(after.as_ref()?.get(reason)? - self.closes_before.as_ref()?.get(reason)?));
                Some(KindResult {
                    kind: m.name(),
                    behaviour: m.describe(),
                    expected_close: m.expected_close(),
                    clients,
                    sessions: t.sessions,
                    closed_as_expected: t.closed_as_expected,
                    ended_without_close_frame: t.ended_without_close_frame,
                    closed_otherwise: t.closed_otherwise,
                    left_open: t.left_open,
                    cut_by_run_end: t.cut_by_run_end,
                    setup_failures: t.setup_failures,
                    error_replies: t.error_replies,
                    ended_after_ms: t.ended_after_us.summary_ms(),
                    server_closes: counted,
                })
            })
            .collect();
        HostileResult { per_room: self.per_room, kinds }
    }
}

/// `plaza_ws_server_closes_total` by reason, for the reasons we provoke.
async fn server_closes(http: &reqwest::Client, base: &str) -> Option<BTreeMap<&'static str, f64>> {
    let text = crate::server::metrics_text(http, base).await?;
    Misbehaviour::ALL
        .iter()
        .filter_map(|m| m.server_reason())
        .map(|reason| {
            let series = format!("plaza_ws_server_closes_total{{reason=\"{reason}\"}}");
            Some((reason, crate::server::metric_value(&text, &series)?))
        })
        .collect()
}

/// Resolves when the run stops (a future that holds no lock when it ends).
async fn run_over(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Run).await;
}

/// A frame, as far as a hostile client cares.
enum Frame {
    Message(ServerMessage),
    Close(u16),
    Ended,
    Other,
}

fn classify(wire: Wire, frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Frame {
    let decode = |bytes: &[u8]| match wire.decode(bytes) {
        Decoded::Message(m) => Frame::Message(m),
        _ => Frame::Other,
    };
    match frame {
        Some(Ok(Message::Close(c))) => Frame::Close(c.map_or(1005, |c| u16::from(c.code))),
        Some(Ok(Message::Binary(b))) => decode(&b),
        Some(Ok(Message::Text(t))) => decode(t.as_bytes()),
        Some(Ok(_)) => Frame::Other,
        Some(Err(_)) | None => Frame::Ended,
    }
}

/// What a misbehaving socket sends, and how often: every so long, or once.
type Sending = (Option<Duration>, fn(Wire, u64) -> Message);

/// The flood's `n`th pose (standing still: only the count matters).
fn flood_pose(wire: Wire, n: u64) -> Message {
    wire.encode(&ClientMessage::Pose(PoseUpdate { t: n, pose: Pose::default() }))
}

/// A message 3,616 bytes over the limit.
fn oversized(_: Wire, _: u64) -> Message {
    Message::Binary(vec![0x5a; MAX_MESSAGE_BYTES + 3_616].into())
}

/// The `n`th invalid message: a frame of the wrong kind, one that doesn't
/// decode, a second hello.
fn junk(wire: Wire, n: u64) -> Message {
    let text_protocol = wire.subprotocol() == Some(plaza_shared::limits::SUBPROTOCOL_JSON);
    match (n % 3, text_protocol) {
        (0, false) => Message::Text("{\"type\":\"fly\"}".into()),
        (0, true) => Message::Binary(vec![1, 0x7f].into()),
        (1, false) => Message::Binary(vec![1, 0x7f, n as u8].into()),
        (1, true) => Message::Text(format!("{{not json {n}").into()),
        _ => wire.encode(&ClientMessage::Hello(Hello { token: "again".into(), protocol: PROTOCOL_VERSION, resume: None })),
    }
}

struct Hostile {
    kind: Misbehaviour,
    name: String,
    room: String,
    env: Arc<Env>,
    phase: watch::Receiver<Phase>,
    tally: Tally,
}

impl Hostile {
    fn running(&self) -> bool {
        *self.phase.borrow() == Phase::Run
    }

    async fn run(mut self) -> (Misbehaviour, Tally) {
        let mut token = None;
        while self.running() {
            if token.is_none() {
                token = self.login().await;
                if token.is_none() {
                    break;
                }
            }
            match self.session(token.as_deref().unwrap_or_default()).await {
                Ok(seen) => self.count(seen),
                Err(why) => {
                    if why == format!("closed_{}", close::BAD_TOKEN) {
                        token = None; // expired: sign in again
                    }
                    *self.tally.setup_failures.entry(why).or_default() += 1;
                }
            }
            let mut phase = self.phase.clone();
            tokio::select! {
                _ = tokio::time::sleep(COME_BACK_AFTER) => {}
                _ = run_over(&mut phase) => {}
            }
        }
        (self.kind, self.tally)
    }

    async fn login(&mut self) -> Option<String> {
        for attempt in 1..=LOGIN_ATTEMPTS {
            match post(&self.env.http, &self.env.base, "/api/v1/auth/guest", serde_json::json!({ "name": self.name })).await {
                Ok(pair) => return Some(pair.access_token),
                Err(e) => {
                    tracing::warn!(client = %self.name, cause = %e, "hostile client: guest login failed");
                    *self.tally.setup_failures.entry("login".into()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
                }
            }
        }
        None
    }

    fn count(&mut self, seen: Seen) {
        self.tally.sessions += 1;
        match seen {
            Seen::Closed(code) if Some(code) == self.kind.expected_close() => self.tally.closed_as_expected += 1,
            Seen::Closed(code) => *self.tally.closed_otherwise.entry(code.to_string()).or_default() += 1,
            Seen::Ended if self.kind.expected_close().is_none() => self.tally.closed_as_expected += 1,
            Seen::Ended => self.tally.ended_without_close_frame += 1,
            Seen::StillOpen => self.tally.left_open += 1,
            Seen::RunEnded => self.tally.cut_by_run_end += 1,
        }
    }

    async fn send(ws: &mut Ws, frame: Message) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Reads until a message `want` accepts; an error or an end says why not.
    async fn expect(&mut self, ws: &mut Ws, want: fn(&ServerMessage) -> bool) -> Result<(), String> {
        let wire = self.env.wire;
        let wait = async {
            loop {
                match classify(wire, ws.next().await) {
                    Frame::Message(ServerMessage::Error(ErrorMessage { code, .. })) => return Err(format!("server_{}", code.as_str())),
                    Frame::Message(m) if want(&m) => return Ok(()),
                    Frame::Message(_) | Frame::Other => {}
                    Frame::Close(code) => return Err(format!("closed_{code}")),
                    Frame::Ended => return Err("dropped".to_owned()),
                }
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, wait).await.unwrap_or_else(|_| Err("setup_timeout".to_owned()))
    }

    /// One connection: set up, then the misbehaviour until the server ends
    /// it; how long that took is noted here for every kind.
    async fn session(&mut self, token: &str) -> Result<Seen, String> {
        let (started, seen) = match self.kind {
            Misbehaviour::Slowloris => self.slowloris().await?,
            Misbehaviour::Stall => self.in_room(token, None).await?,
            Misbehaviour::Flood => self.in_room(token, Some((Some(FLOOD_EVERY), flood_pose))).await?,
            Misbehaviour::Junk => self.in_room(token, Some((Some(JUNK_EVERY), junk))).await?,
            Misbehaviour::Oversize => self.in_room(token, Some((None, oversized))).await?,
        };
        if matches!(seen, Seen::Closed(_) | Seen::Ended) {
            self.tally.ended_after_us.record(started.elapsed().as_micros() as u64);
        }
        Ok(seen)
    }

    /// A socket in the room, then `sending` (see [`Self::misbehave`]), or,
    /// without it, the stall; when the misbehaviour began, and how it ended.
    async fn in_room(&mut self, token: &str, sending: Option<Sending>) -> Result<(Instant, Seen), String> {
        let recv_buffer = sending.is_none().then_some(STALL_RECV_BUFFER);
        // The hello as a frame, as a plain bot sends it: that path stays
        // under load too.
        let (mut ws, _) = open_socket(&self.env, &self.env.ws_url, recv_buffer, None).await.map_err(|e| if e.retry_after.is_some() { "server_full" } else { "connect" }.to_owned())?;
        let wire = self.env.wire;
        let hello = wire.encode(&ClientMessage::Hello(Hello { token: token.to_owned(), protocol: PROTOCOL_VERSION, resume: None }));
        Self::send(&mut ws, hello).await.map_err(|()| "send".to_owned())?;
        self.expect(&mut ws, |m| matches!(m, ServerMessage::Welcome(_))).await?;
        Self::send(&mut ws, wire.encode(&ClientMessage::Join(Join { room: self.room.clone() }))).await.map_err(|()| "send".to_owned())?;
        self.expect(&mut ws, |m| matches!(m, ServerMessage::Joined(_))).await?;

        let started = Instant::now();
        let seen = match sending {
            None => self.stall(&mut ws).await,
            Some(sending) => self.misbehave(&mut ws, sending).await,
        };
        if matches!(seen, Seen::StillOpen | Seen::RunEnded) {
            let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(None)).await;
        }
        Ok((started, seen))
    }

    /// Half an upgrade request, then nothing: waits for the server to close
    /// the connection.
    async fn slowloris(&mut self) -> Result<(Instant, Seen), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (host, port) = ws_host_port(&self.env.ws_url)?;
        let mut tcp = tokio::time::timeout(SETUP_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await.map_err(|_| "connect".to_owned())?.map_err(|_| "connect".to_owned())?;
        let half = format!("GET /ws HTTP/1.1\r\nhost: {host}:{port}\r\nupgrade: websocket\r\nconnection: upgrade\r\n");
        tcp.write_all(half.as_bytes()).await.map_err(|_| "send".to_owned())?;
        let started = Instant::now();
        let mut phase = self.phase.clone();
        let mut sink = [0u8; 1024];
        let seen = tokio::select! {
            () = async {
                // Anything the server says (it should say nothing) is read
                // and dropped; the end is what counts.
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            } => Seen::Ended,
            _ = tokio::time::sleep(LOOK_FOR) => Seen::StillOpen,
            _ = run_over(&mut phase) => Seen::RunEnded,
        };
        Ok((started, seen))
    }

    /// Reads nothing and pings once a second until a ping can't be sent
    /// (the server has cut the socket), then reads what was buffered.
    async fn stall(&mut self, ws: &mut Ws) -> Seen {
        let deadline = Instant::now() + LOOK_FOR;
        let mut phase = self.phase.clone();
        let mut t = 0;
        loop {
            t += 1;
            if Self::send(ws, self.env.wire.encode(&ClientMessage::Ping(Ping { t }))).await.is_err() {
                return self.read_rest(ws).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(STALL_PING_EVERY) => {}
                _ = run_over(&mut phase) => return Seen::RunEnded,
            }
            if Instant::now() >= deadline {
                return Seen::StillOpen;
            }
        }
    }

    /// What was buffered, up to the close frame or the end.
    async fn read_rest(&mut self, ws: &mut Ws) -> Seen {
        let wire = self.env.wire;
        let errors = &mut self.tally.error_replies;
        let rest = async {
            loop {
                match classify(wire, ws.next().await) {
                    Frame::Close(code) => return Seen::Closed(code),
                    Frame::Ended => return Seen::Ended,
                    Frame::Message(ServerMessage::Error(_)) => *errors += 1,
                    Frame::Message(_) | Frame::Other => {}
                }
            }
        };
        tokio::time::timeout(READ_REST_FOR, rest).await.unwrap_or(Seen::StillOpen)
    }

    /// Sends `frame(wire, n)` for n = 1, 2, … every `every` (once without
    /// it), reading all the while.
    async fn misbehave(&mut self, ws: &mut Ws, (every, frame): Sending) -> Seen {
        let wire = self.env.wire;
        let deadline = Instant::now() + LOOK_FOR;
        let mut next = Some(Instant::now());
        let mut n: u64 = 0;
        let mut phase = self.phase.clone();
        loop {
            let send_at = next.unwrap_or(deadline);
            tokio::select! {
                frame = ws.next() => match classify(wire, frame) {
                    Frame::Close(code) => return Seen::Closed(code),
                    Frame::Ended => return Seen::Ended,
                    Frame::Message(ServerMessage::Error(_)) => self.tally.error_replies += 1,
                    Frame::Message(_) | Frame::Other => {}
                },
                _ = tokio::time::sleep_until(send_at), if next.is_some() => {
                    n += 1;
                    next = every.map(|e| send_at + e);
                    if Self::send(ws, frame(wire, n)).await.is_err() {
                        return self.read_rest(ws).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Seen::StillOpen,
                _ = run_over(&mut phase) => return Seen::RunEnded,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &'static str, f: impl FnOnce(&mut KindResult)) -> KindResult {
        let mut k = KindResult { kind: name, sessions: 3, closed_as_expected: 3, server_closes: Some(3.0), ..KindResult::default() };
        f(&mut k);
        k
    }

    #[test]
    fn every_kind_closed_with_its_code_passes() {
        let r = HostileResult { per_room: 4, kinds: vec![kind("stall", |_| {}), kind("junk", |_| {})] };
        assert!(r.failures().is_empty(), "{:?}", r.failures());
    }

    #[test]
    fn a_wrong_code_a_socket_left_open_or_a_missing_server_count_fails() {
        let wrong = kind("flood", |k| {
            k.closed_as_expected = 2;
            k.closed_otherwise.insert("1000".into(), 1);
        });
        let open = kind("oversize", |k| k.left_open = 1);
        let uncounted = kind("junk", |k| k.server_closes = Some(1.0));
        let r = HostileResult { per_room: 4, kinds: vec![wrong, open, uncounted] };
        let f = r.failures();
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].contains("flood") && f[0].contains("1000"), "{f:?}");
        assert!(f[1].contains("left open"), "{f:?}");
        assert!(f[2].contains("server counted 1"), "{f:?}");
    }

    #[test]
    fn a_lost_close_frame_is_excused_only_where_the_client_could_not_read_it() {
        let stall = kind("stall", |k| {
            k.closed_as_expected = 0;
            k.ended_without_close_frame = 3;
        });
        let junk = kind("junk", |k| {
            k.closed_as_expected = 2;
            k.ended_without_close_frame = 1;
        });
        let f = HostileResult { per_room: 4, kinds: vec![stall, junk] }.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("junk"), "{f:?}");
    }

    #[test]
    fn a_kind_never_closed_within_the_run_fails() {
        let cut = kind("stall", |k| {
            k.closed_as_expected = 0;
            k.cut_by_run_end = 3;
        });
        let f = HostileResult { per_room: 4, kinds: vec![cut] }.failures();
        assert!(f.len() == 1 && f[0].contains("no stall client"), "{f:?}");
    }

    #[test]
    fn junk_is_invalid_in_both_subprotocols() {
        use plaza_shared::codec::Subprotocol;
        for sub in [Subprotocol::Binary, Subprotocol::Json] {
            let wire = Wire::Plaza(sub);
            for n in 0..3 {
                let frame = junk(wire, n);
                let bytes: &[u8] = match &frame {
                    Message::Binary(b) => b,
                    Message::Text(t) => t.as_bytes(),
                    _ => panic!("data frames only"),
                };
                let right_kind = matches!((&frame, sub), (Message::Binary(_), Subprotocol::Binary) | (Message::Text(_), Subprotocol::Json));
                // A frame of the right kind must not decode, or be a hello
                // (which is invalid after the first).
                if right_kind {
                    let decoded = sub.decode_client(bytes);
                    assert!(decoded.is_err() || matches!(decoded, Ok(ClientMessage::Hello(_))), "{sub:?} {n}: {decoded:?}");
                }
            }
        }
    }
}
