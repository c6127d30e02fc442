//! One simulated user: signs in as a guest, opens a WebSocket, says hello,
//! joins its room, then walks (a pose at `--rate` Hz), pings every few
//! seconds and chats now and then, reading everything the server sends,
//! until the run tells it to stop sending and then to close. A connection
//! that ends without our close is counted as an error and resumed (at most
//! [`MAX_RECONNECTS`] failures in a row); chats not acknowledged before a
//! drop are sent again, with the same id, once back in the room, and the
//! chats missed while away are fetched from the room's history (the server
//! does not replay them on resume), as the client does.
//!
//! Every wait is bounded: HTTP and connects time out, sends time out, and
//! the main loop ends on the run's phase.

use crate::collect::{BATCH_EVERY, BATCH_MAX, Batch, Counters, PacingSample};
use crate::delivery::{Away, ReceiverLog, SenderLog, SentChat};
use crate::cli::SendAt;
use crate::names::UserKey;
use plaza_shared::liveness::{Liveness, Verdict};
use plaza_shared::backoff::Backoff;
use plaza_shared::rng::SplitMix;
use crate::tickphase::{GRID_WINDOW, TickGrid, split};
use plaza_shared::pacing::{PosePacer, phase_offset_us};
use crate::track::{Anomalies, Tracker};
use crate::wire::{Decoded, Wire};
use futures_util::{SinkExt, StreamExt};
use plaza_shared::limits::{PROTOCOL_VERSION, RequestFailure, TICK_HZ};
use plaza_shared::messages::*;
use plaza_shared::pose::Pose;
use plaza_shared::upgrade_hello::{self, Taken};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const MAX_RECONNECTS: u64 = 5;
/// After the server said it is restarting (a 1001 close), a user keeps
/// trying this long, as the client does, however many tries fail.
const RESTART_PATIENCE: Duration = Duration::from_secs(30);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// What goes wrong while a server restarts: expected then, not errors.
const RESTART_RETRY_KINDS: [&str; 4] = ["connect", "server_full", "dropped", "welcome_timeout"];
/// The most chats waiting for their acknowledgement that a user keeps to resend.
const UNACKED_MAX: usize = 64;
const HISTORY_ATTEMPTS: u32 = 3;
const LOGIN_ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// WebSocket read buffer per connection, as small as the server's: a
/// 40-user room's delta (~560 bytes) fits one read.
const READ_BUFFER: usize = 1024;
/// Poses sent this close to the end of a connection that died are not
/// expected anywhere; the same margin is kept before a receiver stops
/// listening. Behind the fault proxy the run widens it by the time a
/// segment can spend on the way ([`Env::grace_ms`]).
pub const GRACE_MS: u64 = 200;

/// Where the run is; users follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connect, send and receive.
    Run,
    /// Stop sending (poses, pings, chats); keep reading.
    Stop,
    /// Close the socket cleanly and finish.
    Close,
}

/// Each room's tick grid, learnt from every member's arrivals.
#[derive(Debug)]
pub struct RoomClocks {
    rooms: Vec<Mutex<Option<TickGrid>>>,
    /// Deltas in a room's window: [`GRID_WINDOW`] ticks of every member's.
    window: u64,
}

impl RoomClocks {
    pub fn new(rooms: u32, users_per_room: u32) -> Self {
        RoomClocks { rooms: (0..rooms).map(|_| Mutex::new(None)).collect(), window: GRID_WINDOW * u64::from(users_per_room.max(1)) }
    }

    /// Notes tick `tick`'s delta of `room` arriving at `arrival_us` (`None`:
    /// a delta off the grid) and returns the room's tick phase, once known.
    fn observe(&self, room: u32, arrival: Option<(u64, u64)>, period_us: u64) -> Option<u64> {
        let slot = self.rooms.get(room.checked_sub(1)? as usize)?;
        let mut clock = slot.lock().unwrap_or_else(|e| e.into_inner());
        let clock = clock.get_or_insert_with(|| TickGrid::new(period_us, self.window));
        if let Some((arrival_us, tick)) = arrival {
            clock.observe(arrival_us, tick);
        }
        clock.phase_us()
    }
}

/// One paced send in this many is sampled for the report's pacing: at
/// 2,000 users still 5,000 a second, for an eighth of the tool's work.
const PACING_SAMPLE_EVERY: u32 = 8;

/// How many of a user's latest pose stamps its receivers can look up.
const SENT_RING: usize = 64;

/// Each user's latest pose stamps, written by that user and read by its
/// receivers. The server keeps only the newest pose of a seat between two
/// ticks (the contract), so a pose overwritten by a newer one never
/// arrives; without these its latency would go unmeasured, and it is most
/// often a late one. A receiver that sees a sender's `t` jump looks up the
/// stamps in between and times them by the newer pose's arrival.
#[derive(Debug)]
pub struct SentPoses {
    users_per_room: u32,
    rings: Vec<SentRing>,
}

#[derive(Debug)]
struct SentRing {
    next: AtomicUsize,
    /// Poses up to this `t` went into a socket that was cut: they are
    /// excused (see the delivery accounting), not superseded.
    cut_until: AtomicU64,
    stamps: [AtomicU64; SENT_RING],
}

impl SentPoses {
    pub fn new(rooms: u32, users_per_room: u32) -> Self {
        let rings = (0..u64::from(rooms) * u64::from(users_per_room))
            .map(|_| SentRing { next: AtomicUsize::new(0), cut_until: AtomicU64::new(0), stamps: std::array::from_fn(|_| AtomicU64::new(0)) })
            .collect();
        SentPoses { users_per_room, rings }
    }

    fn ring(&self, key: UserKey) -> Option<&SentRing> {
        let (room, user) = (key.room.checked_sub(1)?, key.user.checked_sub(1)?);
        if user >= self.users_per_room {
            return None;
        }
        self.rings.get(room as usize * self.users_per_room as usize + user as usize)
    }

    /// `key` sent a pose stamped `t` (one writer per ring: the user).
    fn sent(&self, key: UserKey, t: u64) {
        if let Some(ring) = self.ring(key) {
            let next = ring.next.load(Ordering::Relaxed);
            ring.stamps[next % SENT_RING].store(t, Ordering::Relaxed);
            ring.next.store(next + 1, Ordering::Release);
        }
    }

    /// `key`'s socket was cut after it sent `t`.
    fn cut(&self, key: UserKey, t: u64) {
        if let Some(ring) = self.ring(key) {
            ring.cut_until.fetch_max(t, Ordering::Relaxed);
        }
    }

    /// Calls `each` with every stamp `key` sent strictly between `after`
    /// and `before`, leaving out those that went into a cut socket. Walks
    /// back from the newest stamp and stops at the first at or before
    /// `after`: a few loads, as this runs for every late pose.
    pub fn between(&self, key: UserKey, after: u64, before: u64, mut each: impl FnMut(u64)) {
        let Some(ring) = self.ring(key) else { return };
        let floor = after.max(ring.cut_until.load(Ordering::Relaxed));
        let next = ring.next.load(Ordering::Acquire);
        for back in 1..=next.min(SENT_RING) {
            let t = ring.stamps[(next - back) % SENT_RING].load(Ordering::Relaxed);
            if t <= floor {
                break;
            }
            if t < before {
                each(t);
            }
        }
    }
}

/// What every user shares.
#[derive(Debug)]
pub struct Env {
    pub http: reqwest::Client,
    /// `http://host:port`
    pub base: String,
    /// `ws://host:port/ws` (or socket.io's path)
    pub ws_url: String,
    /// `--also-server`: more instances' `(base, ws_url)`; users take
    /// `base` and these in turn ([`Env::endpoint`]).
    pub also: Vec<(String, String)>,
    pub wire: Wire,
    pub rate_hz: f64,
    /// `None`: never chat.
    pub chat_every: Option<Duration>,
    pub ping_every: Duration,
    /// Nothing heard this long: the socket is taken for dead (Plaza's
    /// wire only; the socket.io peers answer no pings).
    pub silence_limit: Duration,
    pub tag: String,
    pub epoch: Instant,
    pub counters: Arc<Counters>,
    pub clocks: RoomClocks,
    pub sent: SentPoses,
    pub send_at: SendAt,
    /// A sender's `t` jumping by more than this counts as a gap.
    pub gap_ms: u64,
    /// [`GRACE_MS`], plus the fault proxy's delay and stall when there is one.
    pub grace_ms: u64,
    /// `--voice`: every user is also a voice peer.
    pub voice: Option<Arc<crate::voice::VoiceLoad>>,
    /// `--vr-share`: the share of users whose poses carry a head and hands.
    pub vr_share: f64,
}

impl Env {
    /// Where user `key` signs in and connects, `(base, ws_url)`: the run's
    /// server, or an `--also-server` instance, in turn by the user's number
    /// in its room (so every room has members at each instance).
    pub fn endpoint(&self, key: UserKey) -> (&str, &str) {
        match key.user as usize % (1 + self.also.len()) {
            0 => (&self.base, &self.ws_url),
            i => (&self.also[i - 1].0, &self.also[i - 1].1),
        }
    }
}

/// One user's part in the run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub key: UserKey,
    pub name: String,
    /// Room name or id to join.
    pub room: String,
    pub start: Instant,
    pub seed: u64,
}

/// Everything a user measured, handed back when it is done.
#[derive(Debug, Clone, Default)]
pub struct UserReport {
    pub key: Option<UserKey>,
    pub auth_us: Vec<u64>,
    pub join_us: Vec<u64>,
    /// Per socket that joined (not resumed): its connect → `joined`.
    pub connect_join_us: Vec<u64>,
    pub rtt_us: Vec<u64>,
    /// Per reconnect: the new socket's connect → `joined` (the state back).
    pub restore_us: Vec<u64>,
    /// Per reconnect: the old socket's loss → `joined` on the new one.
    pub outage_us: Vec<u64>,
    /// Reconnects that got the old seat back (`hello.resume` accepted).
    pub resumed: u64,
    /// Sockets the server closed with 1001 (draining: a restart).
    pub drained: u64,
    /// Tries that failed while coming back from a 1001 (the server was not
    /// up yet): expected during a restart, so not errors.
    pub restart_retries: u64,
    /// Per 1001: the close → `joined` on a new socket.
    pub back_after_drain_us: Vec<u64>,
    /// The run ended before this user was back from a 1001.
    pub away_after_drain: bool,
    pub errors: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Access tokens refreshed (HTTP, then in band) after `token_expiring`.
    pub token_refreshes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub msgs_in: u64,
    /// Time spent in the room, µs.
    pub in_room_us: u64,
    /// Poses of others superseded at the server, timed by the newer pose.
    pub superseded: u64,
    pub sender: SenderLog,
    pub receiver: ReceiverLog,
    pub anomalies: Anomalies,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct TokenPair {
    pub access_token: String,
    refresh_token: String,
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<crate::stamped::StampedStream>;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// We closed it at the end of the run.
    Done,
    /// It ended without our close: try again, resuming this session.
    Lost { resume: Option<String>, relogin: bool },
    /// It can't work (the room is full or gone): stop.
    Fatal,
}

/// Why a socket didn't open.
pub(crate) struct OpenError {
    pub cause: String,
    /// `503 server_full`: the wait the server asked for.
    pub retry_after: Option<Duration>,
}

impl From<String> for OpenError {
    fn from(cause: String) -> Self {
        OpenError { cause, retry_after: None }
    }
}

pub(crate) fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A walk around a circle at about 1.4 m/s, facing where it goes.
#[derive(Debug, Clone, Copy)]
struct Walk {
    center: [f32; 2],
    radius: f32,
    /// Radians per second, signed (direction).
    omega: f32,
    start: f32,
    /// A VR user (`--vr-share`): poses carry a head and hands.
    headset: bool,
}

impl Walk {
    fn new(key: UserKey, rng: &mut SplitMix) -> Self {
        let slot = key.user.saturating_sub(1);
        let center = [(slot % 8) as f32 * 6.0 - 21.0, (slot / 8 % 25) as f32 * 6.0 - 21.0];
        let radius = rng.range(1.5, 5.0) as f32;
        let speed = rng.range(1.0, 1.8) as f32;
        let direction = if rng.unit() < 0.5 { -1.0 } else { 1.0 };
        Walk { center, radius, omega: direction * speed / radius, start: rng.range(0.0, std::f64::consts::TAU) as f32, headset: false }
    }

    fn pose(&self, seconds: f64) -> Pose {
        let angle = self.start + self.omega * seconds as f32;
        let (sin, cos) = angle.sin_cos();
        let p = [self.center[0] + self.radius * cos, 0.0, self.center[1] + self.radius * sin];
        // Velocity direction; yaw turns +z towards it about +y.
        let (vx, vz) = (-sin * self.omega.signum(), cos * self.omega.signum());
        let yaw = vx.atan2(vz);
        let (s, c) = (yaw / 2.0).sin_cos();
        let mut pose = Pose { p, r: [0.0, s, 0.0, c], head: None, hands: None };
        if self.headset {
            plaza_server::bots::headset_limbs(&mut pose, f64::from(yaw), seconds);
        }
        pose
    }
}

struct User {
    plan: Plan,
    env: Arc<Env>,
    phase: watch::Receiver<Phase>,
    samples: mpsc::Sender<Batch>,
    rng: SplitMix,
    walk: Walk,
    tokens: Option<TokenPair>,
    session: Option<String>,
    tracker: Tracker,
    report: UserReport,
    batch: Batch,
    poses_buf: Vec<(UserKey, u64, u64)>,
    /// The latest binary delta, without its poses.
    stamps: plaza_shared::codec::binary::DeltaStamps,
    /// When our poses go out (`--send-at tick`): the client's pacing.
    pacer: PosePacer,
    /// `--send-at tick` at a rate the tick can pace (up to the tick rate).
    paced: bool,
    /// Unix µs the pose timer was set for.
    pose_due_us: u64,
    /// Paced sends left until the next one sampled for the report ([`PACING_SAMPLE_EVERY`]).
    sends_to_pacing_sample: u32,
    /// Unix ms of our latest `joined`: poses sent before it are not ours to time.
    joined_ms: u64,
    last_t: u64,
    chat_seq: u64,
    period_us: u64,
    stopped_sending_ms: Option<u64>,
    /// When the last connection ended (or we started closing it), ms.
    conn_end_ms: u64,
    /// Set when the last socket was given up for silence: when it last
    /// heard anything (and that in unix ms). Its outage began then, and it
    /// received nothing after, though it ended only later.
    silent_since: Option<(Instant, u64)>,
    in_room_since: Option<Instant>,
    /// Smoothed ping round trip, µs (`t` has ms resolution, so it is
    /// about 0.5 ms high).
    rtt_ewma_us: u64,
    /// When to try again: the desktop client's policy. Its tries count
    /// the reconnects since the last time we were back in the room.
    backoff: Backoff,
    /// The last socket ended with the server's close, not a drop.
    server_closed: bool,
    /// When the last connection was lost, until the state is back.
    lost_at: Option<Instant>,
    /// The chat history asked for after a reconnect, while it is on its
    /// way: fetched beside the socket, as a client does, so the socket is
    /// read on time meanwhile.
    history: Option<tokio::task::JoinHandle<Result<Vec<ChatMessage>, String>>>,
    /// A token refresh on its way (the same: beside the socket).
    refreshing: Option<tokio::task::JoinHandle<Result<TokenPair, RequestFailure>>>,
    /// When the server closed our socket with 1001 (it is restarting),
    /// until we are back in the room.
    drained_at: Option<Instant>,
    /// Per sender, the newest pose received when the socket was lost.
    away_after: std::collections::HashMap<UserKey, u64>,
    /// The `t` of the newest ping the server answered: every pose sent
    /// before it had reached the server (one ordered stream).
    server_has_until_ms: u64,
    /// Poses went out since the last cut window was noted.
    sending_since_cut: bool,
    /// When this connection's connect began (its restore is timed from it).
    connect_at: Option<Instant>,
    /// The wait a full server asked for before the next try.
    retry_after: Option<Duration>,
    /// Chats sent and not yet acknowledged, to resend after a reconnect.
    unacked: Vec<ChatSend>,
    /// The highest pose latency seen in this and the previous 5-second
    /// window, ms: how long a pose may still be on its way when a socket
    /// is cut.
    latency_peak_ms: [u64; 2],
    latency_window: u64,
    /// With `--voice`: this socket's voice (a new socket offers again).
    voice: Option<crate::voice::UserVoice>,
}

/// How long after a refresh the server could not answer the next try goes.
const REFRESH_RETRY: Duration = Duration::from_secs(2);

/// What became of a refresh.
#[derive(Debug, PartialEq, Eq)]
enum Refreshed {
    Done,
    /// The server said no: the refresh token is spent, unknown or expired.
    Refused,
    /// The server did not answer (a restart): try again soon.
    Unanswered,
    /// The socket failed while handing over the new token.
    SendFailed,
}

/// When each of the relay loop's timed jobs is next due.
#[derive(Debug, Clone, Copy)]
struct Due {
    pose: Instant,
    ping: Instant,
    /// `None`: this run has no chat.
    chat: Option<Instant>,
    flush: Instant,
    /// The `joined` must have come by then.
    join: Instant,
    /// Another try at a refresh the server could not answer.
    refresh: Option<Instant>,
}

impl Due {
    /// The earliest of the jobs that apply now.
    fn next(&self, sending: bool, in_room: bool) -> Instant {
        let mut next = self.refresh.map_or(self.flush, |at| at.min(self.flush));
        if !in_room {
            next = next.min(self.join);
        }
        if sending {
            next = next.min(self.ping);
            if in_room {
                next = next.min(self.pose);
                if let Some(chat) = self.chat {
                    next = next.min(chat);
                }
            }
        }
        next
    }
}

/// Runs one user to the end of the run and returns what it measured.
pub async fn run(plan: Plan, env: Arc<Env>, phase: watch::Receiver<Phase>, samples: mpsc::Sender<Batch>) -> UserReport {
    let mut rng = SplitMix::new(plan.seed);
    let plan_seed = plan.seed;
    let mut walk = Walk::new(plan.key, &mut rng);
    // Drawn after the walk, so a run's walks are the same at any share.
    walk.headset = rng.unit() < env.vr_share;
    let gap_ms = env.gap_ms;
    let paced = env.send_at == SendAt::Tick && env.rate_hz <= f64::from(TICK_HZ);
    let pacer = new_pacer(env.wire);
    let mut user = User {
        tracker: Tracker::new(&env.tag, plan.key, gap_ms),
        report: UserReport { key: Some(plan.key), ..UserReport::default() },
        plan,
        env,
        phase,
        samples,
        rng,
        walk,
        tokens: None,
        session: None,
        batch: Batch::default(),
        poses_buf: Vec::new(),
        stamps: Default::default(),
        pacer,
        paced,
        pose_due_us: 0,
        sends_to_pacing_sample: 0,
        joined_ms: 0,
        last_t: 0,
        chat_seq: 0,
        period_us: 1_000_000 / u64::from(TICK_HZ),
        stopped_sending_ms: None,
        conn_end_ms: 0,
        silent_since: None,
        in_room_since: None,
        rtt_ewma_us: 1_000,
        // Its own stream, so the other draws of a seeded run stay as they were.
        backoff: Backoff::new(plan_seed ^ 0xB0FF).with_max(MAX_BACKOFF),
        server_closed: false,
        lost_at: None,
        history: None,
        refreshing: None,
        drained_at: None,
        away_after: std::collections::HashMap::new(),
        server_has_until_ms: 0,
        sending_since_cut: false,
        connect_at: None,
        retry_after: None,
        unacked: Vec::new(),
        latency_peak_ms: [0; 2],
        latency_window: 0,
        voice: None,
    };
    user.life().await;
    user.finish().await
}

impl User {
    fn phase_now(&self) -> Phase {
        *self.phase.borrow()
    }

    fn error(&mut self, kind: impl Into<String>) {
        let kind = kind.into();
        if self.drained_at.is_some() && RESTART_RETRY_KINDS.contains(&kind.as_str()) {
            tracing::debug!(user = %self.plan.name, %kind, "retry while the server restarts");
            self.report.restart_retries += 1;
            return;
        }
        tracing::debug!(user = %self.plan.name, %kind, "error");
        *self.report.errors.entry(kind).or_default() += 1;
        Counters::add(&self.env.counters.errors, 1);
    }

    async fn life(&mut self) {
        let mut phase = self.phase.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(self.plan.start) => {}
            _ = phase.wait_for(|p| *p != Phase::Run) => return,
        }
        let mut resume = None;
        let mut relogin = true;
        loop {
            if relogin && !self.login().await {
                return;
            }
            let end = self.connection(resume.take()).await;
            self.left_room();
            if matches!(end, End::Lost { .. }) {
                self.env.sent.cut(self.plan.key, self.last_t);
                // (Our own close noted its start already.)
                self.conn_end_ms = unix_us() / 1000;
                if self.sending_since_cut {
                    self.report.sender.cut.push((self.server_has_until_ms, self.conn_end_ms));
                    self.sending_since_cut = false;
                }
                if self.lost_at.is_none() {
                    // A silent link was out from the last thing it heard.
                    self.lost_at = Some(self.silent_since.map_or_else(Instant::now, |(heard, _)| heard));
                    self.away_after = self.tracker.pairs().map(|(sender, stats)| (sender, stats.max_t)).collect();
                }
            }
            match end {
                End::Done | End::Fatal => return,
                End::Lost { resume: session, relogin: again } => {
                    let restarting = self.drained_at.is_some_and(|at| at.elapsed() < RESTART_PATIENCE);
                    if self.phase_now() != Phase::Run || (u64::from(self.backoff.attempt()) >= MAX_RECONNECTS && !restarting) {
                        if self.drained_at.is_some() && self.phase_now() == Phase::Run {
                            self.error("not_back_after_restart");
                        }
                        return;
                    }
                    self.report.reconnects += 1;
                    Counters::add(&self.env.counters.reconnects, 1);
                    // As the client: a dropped seat is resumed at once; any
                    // other try backs off (a restart's close sends everyone
                    // back together, and the jitter spreads them).
                    let backoff = self.backoff.next_wait(session.is_some() && !self.server_closed);
                    let backoff = backoff.max(self.retry_after.take().unwrap_or_default());
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = phase.wait_for(|p| *p != Phase::Run) => return,
                    }
                    resume = session;
                    relogin = again;
                }
            }
        }
    }

    /// Signs in as a guest (a few tries); false when it never worked or the
    /// run ended meanwhile.
    async fn login(&mut self) -> bool {
        let mut phase = self.phase.clone();
        for attempt in 1..=LOGIN_ATTEMPTS {
            let started = Instant::now();
            let body = serde_json::json!({ "name": self.plan.name });
            let result = tokio::select! {
                r = post(&self.env.http, self.env.endpoint(self.plan.key).0, "/api/v1/auth/guest", body) => r,
                _ = phase.wait_for(|p| *p != Phase::Run) => return false,
            };
            match result {
                Ok(pair) => {
                    self.report.auth_us.push(started.elapsed().as_micros() as u64);
                    self.tokens = Some(pair);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(user = %self.plan.name, cause = %e, "guest login failed");
                    self.error("login");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))) => {}
                        _ = phase.wait_for(|p| *p != Phase::Run) => return false,
                    }
                }
            }
        }
        false
    }

    async fn send(&mut self, ws: &mut Ws, msg: &ClientMessage) -> Result<(), ()> {
        let frame = self.env.wire.encode(msg);
        self.report.bytes_out += frame.len() as u64;
        match tokio::time::timeout(SEND_TIMEOUT, ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// One socket: hello (resuming when it can), join, then the relay.
    async fn connection(&mut self, resume: Option<String>) -> End {
        let lost = |resume: Option<String>| End::Lost { resume, relogin: false };
        self.server_closed = false;
        let mut phase = self.phase.clone();
        let token = self.tokens.as_ref().map(|t| t.access_token.clone()).unwrap_or_default();
        // The hello rides in the upgrade request, as the client's does; a
        // server that doesn't take it gets the frame below. A restore is
        // timed from here: the connect's round trip, the upgrade's, and the
        // hello's when it goes as a frame.
        self.connect_at = Some(Instant::now());
        let opened = tokio::select! {
            r = open_socket(&self.env, self.env.endpoint(self.plan.key).1, None, Some(UpgradeHello { token: &token, resume: resume.as_deref(), join: Some(&self.plan.room) })) => r,
            _ = phase.wait_for(|p| *p == Phase::Close) => return End::Done,
        };
        let (mut ws, taken) = match opened {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(user = %self.plan.name, cause = %e.cause, "WebSocket connect failed");
                self.error(if e.retry_after.is_some() { "server_full" } else { "connect" });
                self.retry_after = e.retry_after;
                return lost(resume);
            }
        };
        if !taken.hello {
            let hello = ClientMessage::Hello(Hello { token, protocol: PROTOCOL_VERSION, resume: resume.clone() });
            if self.send(&mut ws, &hello).await.is_err() {
                self.error("send");
                return lost(resume);
            }
        }
        // The join rode in the upgrade when the server took it (it joins
        // by itself when no seat is resumed). Else with no seat to resume
        // it goes right behind the hello (the server reads them in order),
        // a round trip sooner, as the client's does; a resume waits for the
        // welcome to say.
        let join = ClientMessage::Join(Join { room: self.plan.room.clone() });
        let mut join_sent = None;
        if taken.join {
            join_sent = self.connect_at;
        } else if resume.is_none() {
            join_sent = Some(Instant::now());
            if self.send(&mut ws, &join).await.is_err() {
                self.error("send");
                return lost(resume);
            }
        }
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, self.welcome(&mut ws)).await {
            Ok(Ok(welcome)) => welcome,
            Ok(Err(end)) => return end,
            Err(_) => {
                self.error("welcome_timeout");
                return lost(resume);
            }
        };
        if welcome.tick_hz > 0 {
            self.period_us = 1_000_000 / u64::from(welcome.tick_hz);
        } else {
            // No tick (socket.io relaying each pose at once): no grid to
            // pace to, and the numbers its deltas carry mark nothing.
            self.paced = false;
        }
        let resumed = resume.as_deref() == Some(welcome.session.as_str());
        if resumed {
            // The seat is back: a join in the upgrade was not needed.
            join_sent = None;
        }
        self.report.resumed += u64::from(resumed);
        self.session = Some(welcome.session);
        if !resumed && join_sent.is_none() {
            join_sent = Some(Instant::now());
            if self.send(&mut ws, &join).await.is_err() {
                return self.send_failed();
            }
        }
        self.relay(ws, join_sent).await
    }

    /// Reads up to the welcome.
    async fn welcome(&mut self, ws: &mut Ws) -> Result<Welcome, End> {
        loop {
            let frame = ws.next().await;
            match self.read(frame) {
                Read::Message(ServerMessage::Welcome(w)) => return Ok(w),
                Read::Message(ServerMessage::Error(e)) => self.error(format!("server_{}", e.code.as_str())),
                Read::Message(_) | Read::Delta | Read::Skip => {}
                Read::Reply(reply) => {
                    if ws.send(reply).await.is_err() {
                        self.error("send");
                    }
                }
                Read::End(end) => return Err(end),
            }
        }
    }

    /// A frame, decoded; counts bytes and the ways a socket ends.
    fn read(&mut self, frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
        let bytes: &[u8] = match &frame {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => t.as_bytes(),
            Some(Ok(Message::Close(close))) => {
                let code = close.as_ref().map_or(1005, |c| u16::from(c.code));
                tracing::info!(user = %self.plan.name, code, "the server closed the socket");
                self.server_closed = true;
                if code == plaza_shared::limits::close::SERVER_DRAINING {
                    // The server is restarting: come back, as the client does.
                    self.report.drained += 1;
                    self.drained_at.get_or_insert_with(Instant::now);
                } else {
                    self.error(format!("closed_{code}"));
                }
                return Read::End(End::Lost { resume: self.session.clone(), relogin: code == plaza_shared::limits::close::BAD_TOKEN });
            }
            Some(Ok(_)) => return Read::Skip,
            Some(Err(e)) => {
                tracing::info!(user = %self.plan.name, cause = %e, "the socket failed");
                self.error("dropped");
                return Read::End(End::Lost { resume: self.session.clone(), relogin: false });
            }
            None => {
                self.error("dropped");
                return Read::End(End::Lost { resume: self.session.clone(), relogin: false });
            }
        };
        self.report.bytes_in += bytes.len() as u64;
        self.report.msgs_in += 1;
        Counters::add(&self.env.counters.bytes_in, bytes.len() as u64);
        Counters::add(&self.env.counters.msgs_in, 1);
        // Binary deltas, nearly everything that arrives, are read without
        // building their poses.
        if self.env.wire == Wire::Plaza(plaza_shared::codec::Subprotocol::Binary) {
            match plaza_shared::codec::binary::decode_delta_stamps(bytes, &mut self.stamps) {
                Ok(true) => return Read::Delta,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(user = %self.plan.name, cause = %e, "undecodable message");
                    self.error("decode");
                    return Read::Skip;
                }
            }
        }
        match self.env.wire.decode(bytes) {
            Decoded::Message(msg) => Read::Message(msg),
            Decoded::Reply(reply) => Read::Reply(reply),
            Decoded::Skip => Read::Skip,
            Decoded::Error(e) => {
                tracing::warn!(user = %self.plan.name, cause = %e, "undecodable message");
                self.error("decode");
                Read::Skip
            }
        }
    }

    fn entered_room(&mut self) {
        if self.in_room_since.is_none() {
            self.in_room_since = Some(Instant::now());
            Counters::add(&self.env.counters.in_room, 1);
        }
    }

    fn left_room(&mut self) {
        if let Some(since) = self.in_room_since.take() {
            self.report.in_room_us += since.elapsed().as_micros() as u64;
            self.env.counters.in_room.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A send on the socket failed: counted, and the connection is lost
    /// (to be resumed with this session).
    fn send_failed(&mut self) -> End {
        self.error("send");
        End::Lost { resume: self.session.clone(), relogin: false }
    }

    fn stop_sending(&mut self) {
        self.stopped_sending_ms.get_or_insert_with(|| unix_us() / 1000);
    }

    async fn relay(&mut self, mut ws: Ws, mut join_sent: Option<Instant>) -> End {
        // Voice ends with the socket it was signaled on.
        if let Some(voice) = self.voice.take() {
            voice.stop().await;
        }
        // A new socket learns the room's tick again, as the client does: a
        // restarted server's rooms tick on a new grid, and the old estimate
        // would fade only after a minute or two (a pose sent just after the
        // tick waits a whole one: p99 +40 ms after a restart).
        self.pacer = new_pacer(self.env.wire);
        // The path is the same: the new pacer starts from the last round trip.
        if let Some(&rtt) = self.report.rtt_us.last() {
            self.pacer.round_trip(rtt);
        }
        let pose_every = Duration::from_secs_f64(1.0 / self.env.rate_hz);
        // Until the room's tick is known (and with `--send-at random`), a
        // random phase: not in step with the ramp or the room's tick.
        let first = pose_every.mul_f64(self.rng.unit());
        self.pose_due_us = unix_us() + first.as_micros() as u64;
        let start = Instant::now();
        let ping_every = self.env.ping_every;
        let chat_every = self.env.chat_every;
        // One timer for everything timed (pose, ping, chat, the sample
        // batch, the join's deadline), set to whichever is due first: with
        // five timers polled each time the task slept, the load tool used
        // about 8% more CPU at 2,000 users (docs/benchmarks.md, session 7).
        let mut due = Due {
            pose: start + first,
            // A user with no round trip yet asks at once, as the desktop
            // client does: until its first pong it would pace its poses by
            // none (the pacer needs the whole round trip, docs/load.md).
            // After a reconnect it has one, and a random phase keeps a
            // crowd coming back at once from pinging in one burst.
            ping: if self.report.rtt_us.is_empty() { start } else { start + ping_every.mul_f64(self.rng.unit()) },
            chat: chat_every.map(|every| start + every.mul_f64(self.rng.unit())),
            flush: start + BATCH_EVERY,
            join: start + JOIN_TIMEOUT,
            refresh: None,
        };
        let timer = tokio::time::sleep_until(start + first);
        tokio::pin!(timer);
        // A link gone silent is noticed as the desktop client notices it.
        let watch_silence = matches!(self.env.wire, Wire::Plaza(_));
        let mut liveness = Liveness::new(self.env.silence_limit, start);
        self.silent_since = None;
        let mut phase = *self.phase.borrow_and_update();
        loop {
            // The run's phase is checked here (an atomic load; the value is
            // read only when it changed), not waited on in the select: a
            // future for it each time the task sleeps locked the phase's
            // waiter list twice, shared by every user. The one timer wakes
            // the loop at least every BATCH_EVERY, so a change is seen
            // within 250 ms.
            match self.phase.has_changed() {
                Ok(false) => {}
                Ok(true) => phase = *self.phase.borrow_and_update(),
                Err(_) => phase = Phase::Close, // the run is gone
            }
            if phase == Phase::Close {
                self.stop_sending();
                return self.close(ws).await;
            }
            let sending = phase == Phase::Run;
            if !sending {
                self.stop_sending();
            }
            let in_room = self.in_room_since.is_some();
            let mut next = due.next(sending, in_room);
            // Through the drain too: a link gone silent just before the
            // end must end as lost, or what died in it would count as lost.
            if watch_silence {
                next = next.min(liveness.next_check());
            }
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            tokio::select! {
                biased;
                frame = ws.next() => {
                    liveness.heard(Instant::now());
                    let now_us = unix_us();
                    // When the frame reached the socket; never after now.
                    let arrived_us = ws.get_ref().arrived_us().map_or(now_us, |at| at.min(now_us));
                    let msg = match self.read(frame) {
                        Read::Message(msg) => msg,
                        Read::Delta => {
                            self.on_delta(None, now_us, arrived_us).await;
                            continue;
                        }
                        Read::Skip => continue,
                        Read::Reply(reply) => {
                            if tokio::time::timeout(SEND_TIMEOUT, ws.send(reply)).await.map_or(true, |r| r.is_err()) {
                                return self.send_failed();
                            }
                            continue;
                        }
                        Read::End(end) => return end,
                    };
                    match msg {
                        ServerMessage::Delta(mut d) => {
                            if self.env.wire == Wire::SocketIo {
                                // The batching peer sends the room's changes to
                                // everyone; a client skips its own avatar.
                                let you = self.tracker.you();
                                d.avatars.retain(|a| Some(a.id) != you);
                            }
                            self.on_delta(Some(&d), now_us, arrived_us).await
                        }
                        ServerMessage::Joined(j) => {
                            self.tracker.on_joined(&j);
                            self.pacer.joined(&j.room);
                            self.joined_ms = now_us / 1000;
                            if let Some(sent) = join_sent.take() {
                                self.report.join_us.push(sent.elapsed().as_micros() as u64);
                                if let Some(connect) = self.connect_at {
                                    self.report.connect_join_us.push(connect.elapsed().as_micros() as u64);
                                }
                            }
                            self.report.receiver.from_ms.get_or_insert(now_us / 1000);
                            self.entered_room();
                            if let Some(lost) = self.lost_at.take() {
                                self.back_in_room(lost, &mut ws).await;
                            }
                            if self.start_voice(&mut ws).await.is_err() {
                                return self.send_failed();
                            }
                        }
                        ServerMessage::Chat(c) => self.tracker.on_chat(&c),
                        ServerMessage::ChatAck(ack) => {
                            if let Some(chat) = self.report.sender.chats.iter_mut().rev().find(|c| c.id == ack.id) {
                                chat.acked_ms.get_or_insert(now_us / 1000);
                            }
                            self.unacked.retain(|c| c.id != ack.id);
                        }
                        ServerMessage::Pong(p) => {
                            let rtt = now_us.saturating_sub(p.t.saturating_mul(1000));
                            self.server_has_until_ms = self.server_has_until_ms.max(p.t);
                            self.report.rtt_us.push(rtt);
                            // The first round trip is the estimate; later ones move it.
                            self.rtt_ewma_us = if self.report.rtt_us.len() == 1 { rtt } else { (self.rtt_ewma_us * 4 + rtt) / 5 };
                            self.pacer.round_trip(rtt);
                        }
                        // The refresh is a timed job: due now, and again if the
                        // server can't answer it.
                        ServerMessage::TokenExpiring(_) => due.refresh = Some(Instant::now()),
                        ServerMessage::Error(e) => {
                            self.error(format!("server_{}", e.code.as_str()));
                            if !in_room && matches!(e.code, ErrorCode::RoomFull | ErrorCode::RoomNotFound) {
                                tracing::warn!(user = %self.plan.name, room = %self.plan.room, message = %e.message, "join refused");
                                self.stop_sending();
                                let _ = self.close(ws).await;
                                return End::Fatal;
                            }
                        }
                        ServerMessage::Voice(v) => {
                            if let (Some(voice), Some(load), Ok(signal)) = (self.voice.as_mut(), self.env.voice.as_ref(), plaza_shared::voice::VoiceSignal::from_message(&v)) {
                                voice.on_signal(signal, self.plan.key, load, self.phase.clone()).await;
                            }
                        }
                        ServerMessage::Welcome(_) => {}
                    }
                }
                answer = async { self.refreshing.as_mut().expect("guarded").await }, if self.refreshing.is_some() => {
                    self.refreshing = None;
                    match self.refreshed(answer, &mut ws).await {
                        Refreshed::Done => {}
                        Refreshed::Refused => self.error("refresh"),
                        // A client keeps its tokens and tries again: the
                        // access token still has a minute.
                        Refreshed::Unanswered => due.refresh = Some(Instant::now() + REFRESH_RETRY),
                        Refreshed::SendFailed => return self.send_failed(),
                    }
                }
                fetched = async { self.history.as_mut().expect("guarded").await }, if self.history.is_some() => {
                    self.history = None;
                    self.missed_chats_in(fetched);
                }
                () = &mut timer => {
                    // Each thing due is done, in this order.
                    let now = Instant::now();
                    if !in_room && now >= due.join {
                        self.error("join_timeout");
                        let _ = self.close(ws).await;
                        return End::Lost { resume: None, relogin: false };
                    }
                    // A probe is the ping job's ping, sent now (in the drain too).
                    let mut probe = false;
                    if watch_silence {
                        match liveness.check(now) {
                            Verdict::Fine => {}
                            Verdict::Probe => probe = true,
                            Verdict::Dead(reason) => {
                                tracing::info!(user = %self.plan.name, %reason, "the link went silent");
                                self.error("silent");
                                let heard = liveness.last_heard();
                                let heard_ms = (unix_us() / 1000).saturating_sub(now.duration_since(heard).as_millis() as u64);
                                self.silent_since = Some((heard, heard_ms));
                                return End::Lost { resume: self.session.clone(), relogin: false };
                            }
                        }
                    }
                    if sending && in_room && now >= due.pose {
                        self.pacer.sent(self.pose_due_us, unix_us());
                        self.note_pacing();
                        if self.send_pose(&mut ws).await.is_err() {
                            return self.send_failed();
                        }
                        due.pose = self.next_pose_at(pose_every);
                    }
                    if (sending && now >= due.ping) || probe {
                        // Missed pings are not made up: the next is a period on.
                        due.ping = now + ping_every;
                        let ping = ClientMessage::Ping(Ping { t: unix_us() / 1000 });
                        if self.send(&mut ws, &ping).await.is_err() {
                            return self.send_failed();
                        }
                    }
                    if let (Some(every), Some(at)) = (chat_every, due.chat)
                        && sending
                        && in_room
                        && now >= at
                    {
                        due.chat = Some(now + every.mul_f64(self.rng.range(2.0 / 3.0, 4.0 / 3.0)));
                        if self.send_chat(&mut ws).await.is_err() {
                            return self.send_failed();
                        }
                    }
                    if now >= due.flush {
                        due.flush = now + BATCH_EVERY;
                        self.flush().await;
                    }
                    if due.refresh.is_some_and(|at| now >= at) {
                        due.refresh = None;
                        if !self.start_refresh() {
                            self.error("refresh");
                        }
                    }
                }
            }
        }
    }

    /// With `--voice`, once in the room on this socket: offers voice.
    async fn start_voice(&mut self, ws: &mut Ws) -> Result<(), ()> {
        let Some(load) = self.env.voice.clone() else { return Ok(()) };
        if self.voice.is_some() || self.phase_now() != Phase::Run {
            return Ok(());
        }
        match crate::voice::UserVoice::offer(&load).await {
            Ok((voice, offer)) => {
                self.voice = Some(voice);
                self.send(ws, &offer).await
            }
            Err(cause) => {
                tracing::debug!(user = %self.plan.name, %cause, "voice peer");
                self.error("voice_peer");
                Ok(())
            }
        }
    }

    /// When the next pose goes out: `every` from now, or with `--send-at
    /// tick` (at rates up to the tick rate) at the slot just before a tick
    /// that comes closest, as the client does ([`PosePacer`]).
    fn next_pose_at(&mut self, every: Duration) -> Instant {
        let now_us = unix_us();
        let due_us = if self.paced {
            // The pacer gives the first slot after its argument, at most one a tick.
            let half_period = self.pacer.period_us() / 2;
            self.pacer.next_send_us(now_us + (every.as_micros() as u64).saturating_sub(half_period))
        } else {
            now_us + every.as_micros() as u64
        };
        self.pose_due_us = due_us;
        Instant::now() + Duration::from_micros(due_us.saturating_sub(now_us))
    }

    /// With `--send-at tick`: the lead this pose left by, and how far our
    /// grid is from the room's (for the report's pacing chart).
    fn note_pacing(&mut self) {
        if !self.paced {
            return;
        }
        if self.sends_to_pacing_sample > 0 {
            self.sends_to_pacing_sample -= 1;
            return;
        }
        self.sends_to_pacing_sample = PACING_SAMPLE_EVERY - 1;
        let (Some(ours), Some(room)) = (self.pacer.grid_phase_us(), self.env.clocks.observe(self.plan.key.room, None, self.period_us)) else { return };
        let period = self.pacer.period_us();
        let grid_offset_us = phase_offset_us(ours, room, period).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        if self.batch.is_empty() {
            self.batch.second = self.env.epoch.elapsed().as_secs() as u32;
        }
        self.batch.pacing.push(PacingSample { lead_us: clamp_u32(self.pacer.lead_us()), grid_offset_us });
    }

    async fn send_pose(&mut self, ws: &mut Ws) -> Result<(), ()> {
        // `t` strictly increases, so a receiver's newest `t` names one pose.
        let t = (unix_us() / 1000).max(self.last_t + 1);
        let pose = self.walk.pose(self.env.epoch.elapsed().as_secs_f64());
        self.send(ws, &ClientMessage::Pose(PoseUpdate { t, pose })).await?;
        self.last_t = t;
        self.env.sent.sent(self.plan.key, t);
        self.sending_since_cut = true;
        self.report.sender.poses.push(t);
        Counters::add(&self.env.counters.poses_sent, 1);
        Ok(())
    }

    /// The state is back after a reconnect: note how long it took, and
    /// resend the chats the old socket never got acknowledged.
    async fn back_in_room(&mut self, lost: Instant, ws: &mut Ws) {
        self.backoff.reset();
        if let Some(drained) = self.drained_at.take() {
            self.report.back_after_drain_us.push(drained.elapsed().as_micros() as u64);
        }
        self.report.outage_us.push(lost.elapsed().as_micros() as u64);
        self.report.receiver.away.push(Away { after: std::mem::take(&mut self.away_after), to: unix_us() / 1000 });
        if let Some(connect) = self.connect_at {
            self.report.restore_us.push(connect.elapsed().as_micros() as u64);
        }
        for chat in self.unacked.clone() {
            if self.send(ws, &ClientMessage::Chat(chat)).await.is_err() {
                self.error("send");
                return;
            }
        }
        // (The socket.io peers keep no history.)
        if self.env.chat_every.is_some() && self.env.wire != Wire::SocketIo {
            self.fetch_missed_chats();
        }
    }

    /// `GET /api/v1/rooms/{id}/chat`: the room's latest chats, fetched in
    /// a task of its own ([`Self::history`]); each is checked as if it had
    /// come over the socket once it is in ([`Self::missed_chats_in`]).
    /// Waiting for it here kept each user from reading its socket for up
    /// to 160 ms after a restart, which taught its pacer a wrong tick
    /// (docs/benchmarks.md, session 13).
    fn fetch_missed_chats(&mut self) {
        let (Some(room), Some(tokens)) = (self.tracker.room_id(), self.tokens.as_ref()) else { return };
        let url = format!("{}/api/v1/rooms/{room}/chat?limit=200", self.env.endpoint(self.plan.key).0);
        let token = tokens.access_token.clone();
        let http = self.env.http.clone();
        // A newer fetch covers what an older one would have brought.
        if let Some(older) = self.history.take() {
            older.abort();
        }
        self.history = Some(tokio::spawn(async move {
            let mut last_error = String::new();
            // A few tries: on a bad network the request's connection can be cut too.
            for attempt in 1..=HISTORY_ATTEMPTS {
                match json_answer(&url, http.get(&url).bearer_auth(&token).send().await).await {
                    Ok(chats) => return Ok(chats),
                    Err(e) => last_error = e.message,
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(last_error)
        }));
    }

    /// The fetched history is in (or the fetch failed for good).
    fn missed_chats_in(&mut self, fetched: Result<Result<Vec<ChatMessage>, String>, tokio::task::JoinError>) {
        match fetched {
            Ok(Ok(chats)) => chats.iter().for_each(|c| self.tracker.on_chat(c)),
            Ok(Err(cause)) => {
                tracing::warn!(user = %self.plan.name, %cause, "fetching missed chats failed");
                self.error("chat_history");
            }
            // (An older fetch aborted for a newer one never gets here.)
            Err(cause) => {
                tracing::warn!(user = %self.plan.name, %cause, "the chat history fetch failed");
                self.error("chat_history");
            }
        }
    }

    /// A fetch still on its way when the run ends is waited for (its
    /// requests are bounded by the client's timeout), so what it brings
    /// is counted.
    async fn finish_missed_chats(&mut self) {
        if let Some(fetch) = self.history.take() {
            let fetched = fetch.await;
            self.missed_chats_in(fetched);
        }
    }

    /// How long before a cut a pose may have been sent and still be on its
    /// way: the configured grace, or the latency peak seen lately (stalls
    /// on a lossy link stack up), whichever is longer.
    fn grace_ms(&self) -> u64 {
        self.env.grace_ms.max(self.latency_peak_ms[0].max(self.latency_peak_ms[1]) + GRACE_MS)
    }

    async fn send_chat(&mut self, ws: &mut Ws) -> Result<(), ()> {
        self.chat_seq += 1;
        let id = format!("{}-c{}", self.plan.name, self.chat_seq);
        let text = format!("hello from {} (#{})", self.plan.name, self.chat_seq);
        let sent_ms = unix_us() / 1000;
        let chat = ChatSend { id: id.clone(), text };
        self.send(ws, &ClientMessage::Chat(chat.clone())).await?;
        self.report.sender.chats.push(SentChat { id, sent_ms, acked_ms: None });
        if self.unacked.len() == UNACKED_MAX {
            // Counted lost by the accounting if it never gets its ack.
            self.unacked.remove(0);
        }
        self.unacked.push(chat);
        Ok(())
    }

    /// `token_expiring`: a new pair over HTTP, in a task of its own as the
    /// client does (the socket is read meanwhile), then `refresh` on the
    /// socket ([`Self::refreshed`]). False without a refresh token.
    fn start_refresh(&mut self) -> bool {
        let Some(refresh_token) = self.tokens.as_ref().map(|t| t.refresh_token.clone()) else { return false };
        if self.refreshing.is_none() {
            let (http, base) = (self.env.http.clone(), self.env.endpoint(self.plan.key).0.to_owned());
            self.refreshing = Some(tokio::spawn(async move { post(&http, &base, "/api/v1/auth/refresh", serde_json::json!({ "refresh_token": refresh_token })).await }));
        }
        true
    }

    /// The new pair is in (or not): hand it to the server.
    async fn refreshed(&mut self, answer: Result<Result<TokenPair, RequestFailure>, tokio::task::JoinError>, ws: &mut Ws) -> Refreshed {
        let pair = match answer {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::warn!(user = %self.plan.name, cause = %e, refused = e.refused, "refresh failed");
                return if e.refused { Refreshed::Refused } else { Refreshed::Unanswered };
            }
            Err(_) => return Refreshed::Unanswered,
        };
        let token = pair.access_token.clone();
        self.tokens = Some(pair);
        self.report.token_refreshes += 1;
        if self.send(ws, &ClientMessage::Refresh(Refresh { token })).await.is_err() { Refreshed::SendFailed } else { Refreshed::Done }
    }

    /// A delta: `delta` when decoded in full (JSON, socket.io), else the
    /// binary one read into `self.stamps`.
    async fn on_delta(&mut self, delta: Option<&Delta>, now_us: u64, arrived_us: u64) {
        let mut poses = std::mem::take(&mut self.poses_buf);
        poses.clear();
        match delta {
            Some(delta) => self.tracker.on_delta(delta, &mut poses),
            None => {
                let stamps = &self.stamps;
                self.tracker.on_entries(stamps.moved.iter().copied(), &stamps.joined, &stamps.left, &mut poses);
            }
        }
        // Two grids on purpose: the room's (all its members' arrivals, for
        // the net split) and our own, learnt as the client learns it.
        let on_grid = marks_a_tick(delta, &self.stamps);
        let tick = delta.map_or(self.stamps.tick, |d| d.tick);
        let phase = self.env.clocks.observe(self.plan.key.room, on_grid.then_some((now_us, tick)), self.period_us);
        if self.paced && on_grid {
            self.pacer.delta_arrived(now_us, tick);
        }
        if !poses.is_empty() {
            let second = self.env.epoch.elapsed().as_secs() as u32;
            if second != self.batch.second && !self.batch.is_empty() {
                self.flush().await;
            }
            self.batch.second = second;
            let window = now_us / 5_000_000;
            if window != self.latency_window {
                self.latency_peak_ms = [0, if window == self.latency_window + 1 { self.latency_peak_ms[0] } else { 0 }];
                self.latency_window = window;
            }
            // A sender's `t` moving on by more than this may hide superseded poses.
            let jump_ms = (1500.0 / self.env.rate_hz) as u64;
            let mut timed = poses.len();
            for &(key, t, before) in &poses {
                let e2e_us = now_us.saturating_sub(t.saturating_mul(1000));
                self.latency_peak_ms[0] = self.latency_peak_ms[0].max(e2e_us / 1000);
                self.batch.e2e_us.push(clamp_u32(e2e_us));
                self.batch.at_socket_us.push(clamp_u32(arrived_us.saturating_sub(t.saturating_mul(1000))));
                if before > 0 && t - before > jump_ms {
                    let (batch, superseded) = (&mut self.batch, &mut self.report.superseded);
                    self.env.sent.between(key, before.max(self.joined_ms), t, |older| {
                        batch.e2e_us.push(clamp_u32(now_us.saturating_sub(older.saturating_mul(1000))));
                        batch.at_socket_us.push(clamp_u32(arrived_us.saturating_sub(older.saturating_mul(1000))));
                        *superseded += 1;
                        timed += 1;
                    });
                }
            }
            if let (Some(phase), Some(newest)) = (phase, poses.iter().map(|&(_, t, _)| t).max()) {
                // The grid lies a trip down after the ticks, and a pose takes
                // a trip up (crate::tickphase): the margin is the round trip,
                // and what the path adds both ways goes back into net.
                let margin_us = 1_000 + self.rtt_ewma_us;
                let net = clamp_u32(split(now_us, newest, phase, self.period_us, margin_us).net_us + self.rtt_ewma_us);
                self.batch.net_us.extend(std::iter::repeat_n(net, timed));
            }
            if self.batch.len() >= BATCH_MAX {
                self.flush().await;
            }
        }
        self.poses_buf = poses;
    }

    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let next = Batch::with_capacity(self.batch.len().max(self.batch.net_us.len()).min(BATCH_MAX));
        let batch = std::mem::replace(&mut self.batch, next);
        // Bounded: a collector that stopped (it never does before us) drops it.
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.samples.send(batch)).await;
    }

    /// Our goodbye: a close frame, then reading until the server's (bounded).
    async fn close(&mut self, mut ws: Ws) -> End {
        self.conn_end_ms = unix_us() / 1000;
        self.left_room();
        let frame = CloseFrame { code: CloseCode::Normal, reason: "load run over".into() };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(frame)) = ws.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        End::Done
    }

    async fn finish(mut self) -> UserReport {
        if let Some(voice) = self.voice.take() {
            voice.stop().await;
        }
        self.finish_missed_chats().await;
        self.flush().await;
        self.left_room();
        let end = if self.conn_end_ms == 0 { unix_us() / 1000 } else { self.conn_end_ms };
        let mut report = std::mem::take(&mut self.report);
        report.sender.key = Some(self.plan.key);
        // A socket cut for good took the poses still on their way with it:
        // only those the server is known to have had count.
        let sent_until = if self.lost_at.is_some() { self.server_has_until_ms } else { end.saturating_sub(self.grace_ms()) };
        report.sender.until_ms = self.stopped_sending_ms.unwrap_or(u64::MAX).min(sent_until);
        report.receiver.key = Some(self.plan.key);
        // A socket given up for silence received nothing after it last heard.
        let heard_until = match self.silent_since {
            Some((_, heard_ms)) if self.lost_at.is_some() => end.min(heard_ms),
            _ => end,
        };
        report.receiver.until_ms = heard_until.saturating_sub(self.grace_ms());
        if self.lost_at.is_some() {
            // Lost and never back: what was on its way died with the socket.
            report.receiver.away.push(Away { after: std::mem::take(&mut self.away_after), to: u64::MAX });
        }
        report.receiver.seen = self.tracker.take_pairs().into_iter().collect();
        report.receiver.chats = std::mem::take(&mut self.tracker.chats);
        report.anomalies = self.tracker.anomalies;
        report.away_after_drain = self.drained_at.is_some();
        report
    }
}

enum Read {
    Message(ServerMessage),
    /// A binary delta, read into `User::stamps`.
    Delta,
    /// Transport housekeeping to send back (socket.io's pong).
    Reply(Message),
    Skip,
    End(End),
}

/// A hello for the upgrade request's headers (plaza_shared::upgrade_hello).
pub(crate) struct UpgradeHello<'a> {
    pub token: &'a str,
    pub resume: Option<&'a str>,
    /// The room to join should no seat be resumed.
    pub join: Option<&'a str>,
}

/// A socket to the run's server, or why not (with the wait a full server
/// asked for). `recv_buffer`: a small kernel receive buffer (`SO_RCVBUF`,
/// set before the connect), as on a client that stops reading. With
/// `hello`, a Plaza socket asks the server to take it (and the join) from
/// the upgrade request, and says which it did: those go as no frame.
pub(crate) async fn open_socket(env: &Env, url: &str, recv_buffer: Option<u32>, hello: Option<UpgradeHello<'_>>) -> Result<(Ws, Taken), OpenError> {
    let mut request = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
    let protocol = env.wire.subprotocol();
    if let Some(protocol) = protocol {
        request.headers_mut().insert("sec-websocket-protocol", protocol.parse().map_err(|_| "bad subprotocol header".to_owned())?);
        for (name, value) in hello.as_ref().map(|h| upgrade_hello::request_headers(h.token, h.resume, h.join)).unwrap_or_default() {
            if let Ok(value) = value.parse() {
                request.headers_mut().insert(name, value);
            }
        }
    }
    // A small read buffer, as the server has: tungstenite's default
    // 128 KiB is zero-filled on every read, which perf showed as a fifth
    // of this tool's CPU at 2,000 users.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let connect = async {
        let (host, port) = ws_host_port(url)?;
        let tcp = match recv_buffer {
            None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
            Some(size) => connect_with_recv_buffer(&host, port, size).await,
        }
        .map_err(|e| format!("{url}: {e}"))?;
        // No Nagle (poses are small and latency is what we measure), and
        // the kernel's receive time on every read (crate::stamped).
        let stream = crate::stamped::StampedStream::new(tcp).map_err(|e| format!("{url}: {e}"))?;
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                // `503 server_full` comes with the wait it asks for.
                let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok());
                let wait = plaza_shared::limits::server_full::wait(response.status().as_u16(), retry_after, response.body().as_deref());
                OpenError { cause: format!("{url}: the server answered {}", response.status()), retry_after: wait }
            }
            e => format!("{url}: {e}").into(),
        })
    };
    let (mut ws, response) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| format!("{url}: no answer within {CONNECT_TIMEOUT:?}"))??;
    let chosen = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
    if chosen != protocol {
        return Err(format!("{url}: the server chose subprotocol {chosen:?}, not {protocol:?}").into());
    }
    // (Nothing was asked of a socket.io peer.)
    let taken = if protocol.is_some() && hello.is_some() { Taken::from_response(|name| response.headers().get(name).map(|v| v.as_bytes())) } else { Taken::default() };
    tokio::time::timeout(CONNECT_TIMEOUT, crate::wire::handshake(env.wire, &mut ws))
        .await
        .map_err(|_| format!("{url}: no socket.io handshake within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((ws, taken))
}

/// The host and port of a `ws://` URL.
pub(crate) fn ws_host_port(url: &str) -> Result<(String, u16), String> {
    let request = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
    if request.uri().scheme_str() != Some("ws") {
        return Err(format!("{url}: the load tool speaks ws:// only (no TLS)"));
    }
    let host = request.uri().host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_owned();
    Ok((host, request.uri().port_u16().unwrap_or(80)))
}

async fn connect_with_recv_buffer(host: &str, port: u16, size: u32) -> std::io::Result<tokio::net::TcpStream> {
    let addr = tokio::net::lookup_host((host, port)).await?.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_recv_buffer_size(size)?;
    socket.connect(addr).await
}

/// POSTs JSON to `base` + `path` and reads the token pair it answers.
pub(crate) async fn post(http: &reqwest::Client, base: &str, path: &str, body: serde_json::Value) -> Result<TokenPair, RequestFailure> {
    let url = format!("{base}{path}");
    json_answer(&url, http.post(&url).json(&body).send().await).await
}

/// Reads a JSON answer from `url`; an error says which URL and what went wrong.
async fn json_answer<T: serde::de::DeserializeOwned>(url: &str, sent: Result<reqwest::Response, reqwest::Error>) -> Result<T, RequestFailure> {
    let response = sent.map_err(|e| RequestFailure::unanswered(format!("{url}: {}", plaza_shared::errors::with_root_cause(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(RequestFailure::answered(status.as_u16(), format!("{url} answered {status}")));
    }
    response.json().await.map_err(|e| RequestFailure::unanswered(format!("{url}: {e}")))
}

/// socket.io's rooms never wait for a late pose: its users keep the wider
/// lead that suits such a server (its better form).
fn new_pacer(wire: Wire) -> PosePacer {
    if wire == Wire::SocketIo { PosePacer::without_server_grace(TICK_HZ) } else { PosePacer::new(TICK_HZ) }
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

/// Whether a delta's arrival says where the room's ticks fall: only one
/// with poses surely does. The socket.io peers send a join or a leave the
/// moment it happens, off the grid; those arrivals, late by up to a period,
/// taught the pacer a lead of half a period, so socket.io's users sent
/// their poses about 25 ms early (p99 at 200 users: 55 ms instead of 26).
fn marks_a_tick(decoded: Option<&Delta>, stamps: &plaza_shared::codec::binary::DeltaStamps) -> bool {
    match decoded {
        Some(delta) => !delta.avatars.is_empty(),
        None => !stamps.moved.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deltas_with_poses_mark_a_tick() {
        let stamps = plaza_shared::codec::binary::DeltaStamps::default();
        let info = AvatarInfo { id: 7, user: "u".into(), name: "u".into(), pose: Pose::default() };
        let joined = Delta { tick: 3, avatars: vec![], joined: vec![info], left: vec![] };
        let left = Delta { tick: 3, avatars: vec![], joined: vec![], left: vec![7] };
        let moved = Delta { tick: 3, avatars: vec![AvatarPose { id: 7, t: Some(12), pose: Pose::default() }], joined: vec![], left: vec![] };
        assert!(!marks_a_tick(Some(&joined), &stamps));
        assert!(!marks_a_tick(Some(&left), &stamps));
        assert!(marks_a_tick(Some(&moved), &stamps));
        // A binary delta, read into its stamps.
        assert!(!marks_a_tick(None, &stamps));
        let stamps = plaza_shared::codec::binary::DeltaStamps { moved: vec![(7, Some(12))], ..Default::default() };
        assert!(marks_a_tick(None, &stamps));
    }

    #[test]
    fn the_one_timer_waits_for_the_first_job_that_applies_now() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let due = Due { pose: at(50), ping: at(30), chat: Some(at(10)), flush: at(250), join: at(5), refresh: None };
        // Before the joined: only the join's deadline, pings and the batch.
        assert_eq!(due.next(true, false), at(5));
        // In the room and sending: the chat comes first.
        assert_eq!(due.next(true, true), at(10));
        // Stopped sending: nothing is sent, the batch still goes out.
        assert_eq!(due.next(false, true), at(250));
        let quiet = Due { chat: None, ..due };
        assert_eq!(quiet.next(true, true), at(30));
        // A refresh to try again comes whatever else applies.
        let retry = Due { refresh: Some(at(20)), ..quiet };
        assert_eq!(retry.next(false, true), at(20));
    }

    #[test]
    fn the_poses_between_two_stamps_are_found_but_not_those_of_a_cut_socket() {
        let sent = SentPoses::new(2, 3);
        let alice = UserKey { room: 2, user: 3 };
        let between_of = |key, after, before| {
            let mut found = Vec::new();
            sent.between(key, after, before, |t| found.push(t));
            found.sort();
            found
        };
        let between = |after, before| between_of(alice, after, before);
        for t in (1_000..=1_400).step_by(50) {
            sent.sent(alice, t);
        }
        // A receiver that last saw 1,100 and now sees 1,300: 1,150–1,250 were superseded.
        assert_eq!(between(1_100, 1_300), vec![1_150, 1_200, 1_250]);
        assert!(between(1_300, 1_350).is_empty(), "consecutive: nothing in between");
        // Someone else's stamps are theirs.
        assert!(between_of(UserKey { room: 1, user: 3 }, 0, 2_000).is_empty());
        // The socket was cut after 1,400; poses sent into it are not superseded.
        sent.cut(alice, 1_400);
        sent.sent(alice, 2_000);
        assert!(between(1_100, 2_000).is_empty());
        // Only the newest stamps are kept.
        for t in (3_000..3_000 + 50 * SENT_RING as u64 + 500).step_by(50) {
            sent.sent(alice, t);
        }
        assert_eq!(between(0, u64::MAX).len(), SENT_RING);
        // Keys outside the run are ignored.
        sent.sent(UserKey { room: 3, user: 1 }, 5);
        sent.sent(UserKey { room: 1, user: 4 }, 5);
    }

    #[test]
    fn headset_walkers_send_a_head_and_hands_that_move() {
        let mut rng = SplitMix::new(3);
        let mut walk = Walk::new(UserKey { room: 1, user: 9 }, &mut rng);
        assert!(walk.pose(10.0).head.is_none(), "a desktop walker by default");
        walk.headset = true;
        let (a, b) = (walk.pose(10.0), walk.pose(10.05));
        assert!(a.validate().is_ok() && b.validate().is_ok(), "within the protocol's reach");
        let (head, hands) = (a.head.expect("a head"), a.hands.expect("hands"));
        assert!((head.p[1] - 1.65).abs() < 1e-3, "{head:?}");
        assert_ne!(b.hands.unwrap()[0].p, hands[0].p, "the hands swing");
        assert_ne!(b.head.unwrap().r, head.r, "the head looks about");
    }

    #[test]
    fn walkers_move_smoothly_and_face_where_they_go() {
        let mut rng = SplitMix::new(3);
        let walk = Walk::new(UserKey { room: 1, user: 9 }, &mut rng);
        let a = walk.pose(10.0);
        let b = walk.pose(10.05);
        let step = ((b.p[0] - a.p[0]).powi(2) + (b.p[2] - a.p[2]).powi(2)).sqrt();
        assert!((0.03..0.12).contains(&step), "{step} m in 50 ms");
        assert!(a.validate().is_ok());
        // Facing: +z turned by the yaw points along the step.
        let yaw = 2.0 * a.r[1].atan2(a.r[3]);
        let forward = [yaw.sin(), yaw.cos()];
        let dot = (forward[0] * (b.p[0] - a.p[0]) + forward[1] * (b.p[2] - a.p[2])) / step;
        assert!(dot > 0.95, "{dot}");
    }
}

