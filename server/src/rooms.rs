//! Rooms. One task per room owns all of its state and ticks at 20 Hz; a
//! directory task owns the set of rooms. Everything else talks to them
//! through bounded channels.
//!
//! Each tick the room builds one delta of what changed (moved avatars,
//! joins, leaves) and offers it to every member's bounded outbound queue with
//! `try_send`: the tick never waits on a socket. A member whose queue is full
//! misses that delta; its next delivered one is a resync (every other
//! avatar's full state in `joined`, plus every `left` it missed), so nothing
//! but time is lost. A member that misses [`SLOW_TICKS_BEFORE_CLOSE`] ticks
//! in a row is closed with 4009, unless its link went silent (its TCP has had
//! nothing acknowledged for seconds, [`crate::peer_link`]): then its socket
//! is let go without a close frame and its seat held, as for a drop (below).
//!
//! A tick whose grid instant comes before the pose of a member that has sent
//! one every tick lately waits for it, at most [`STRAGGLER_GRACE`]: clients
//! time their poses to land just before the tick, and one that lands a
//! moment late would otherwise wait a whole tick (50 ms) more, and show as a
//! hitch in that avatar's movement. Only members with a streak of poses are
//! waited for, so one that stops moving holds up one tick at most, once.
//!
//! A member whose socket drops (no close frame) keeps its seat for
//! [`RESUME_WINDOW`]: its avatar stays, frozen, and nobody is told it left.
//! A new socket that says hello with the old session id gets the seat back
//! with the room's full state; the others see nothing but the avatar moving
//! again. Each socket has its own connection number, so a late leave or pose
//! from a replaced socket never touches the resumed seat.

use crate::auth::random_token;
use crate::peer_link::{PeerSocket, Reach};
use crate::store::{Store, StoreError};
use crate::voice::{Route, VoiceRouting};
use plaza_shared::limits::{DEFAULT_ROOM_CAPACITY, TICK_HZ, close};
use plaza_shared::codec::binary::SharedDelta;
use plaza_shared::messages::{AvatarId, AvatarInfo, AvatarPose, Delta, Joined, ServerMessage};
use plaza_shared::pose::Pose;
use plaza_shared::voice::{ROUTE_EVERY_TICKS, SlotSpeaker, VoiceSignal, assign_slots, choose_speakers};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

/// Ticks a member may miss in a row before it is closed as too slow (2 s).
pub const SLOW_TICKS_BEFORE_CLOSE: u32 = 40;
/// The longest a tick waits for a streaming member's pose (see the module
/// docs). It delays that tick's delta for everyone, so it is a fraction of
/// the 50 ms a missed pose would wait.
pub const STRAGGLER_GRACE: Duration = Duration::from_millis(5);
/// Ticks in a row with a pose after which a member's pose is waited for.
const STREAK_BEFORE_WAIT: u8 = 2;
/// How long a dropped member's seat waits for it to resume.
pub const RESUME_WINDOW: Duration = Duration::from_millis(plaza_shared::limits::RESUME_WINDOW_MS);
/// Commands queued to one room.
const ROOM_COMMAND_QUEUE: usize = 1024;
const TICK_PERIOD: Duration = Duration::from_millis(1000 / TICK_HZ as u64);

/// Where in the tick period a room ticks, from its id. Rooms started
/// together (all of the store's, at start-up) would otherwise tick at the
/// same instant, every member of every room getting its delta in one burst:
/// after a restart that put 2,000 users' pose p99 from about 25 to 65 ms
/// (docs/benchmarks.md, session 11).
fn tick_offset(room_id: &str) -> Duration {
    // FNV-1a, then SplitMix to spread nearby ids.
    let hash = room_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    TICK_PERIOD.mul_f64(plaza_shared::rng::SplitMix::new(hash).unit())
}
const DIRECTORY_QUEUE: usize = 256;

/// What the room sends a member's socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    Message(Arc<ServerMessage>),
    /// The tick's delta, shared by every member (see [`RoomDelta`]).
    Delta(Arc<RoomDelta>),
    /// A resumed seat's `welcome` and full state, queued as one so the
    /// writer sends them in one write: on a lossy link each TCP segment is
    /// one more chance to stall the restore by a retransmission timeout.
    Resumed { welcome: Arc<ServerMessage>, state: Arc<ServerMessage> },
    /// Close the socket with this code.
    Close(u16, &'static str),
    /// A delta another instance already encoded for this member (binary,
    /// its own avatar left out), passed through as it is (crate::relay).
    /// Boxed: every socket's queue is made of slots this enum's size, and
    /// a `Bytes` would grow them by a quarter for what only relays send.
    Frame(Box<bytes::Bytes>),
}

/// One tick's delta for the whole room. Binary members' frames are spliced
/// from one encoding ([`SharedDelta`], made by the first writer that needs
/// it) instead of each socket encoding the delta again; JSON members encode
/// the message as before.
#[derive(Debug)]
pub struct RoomDelta {
    pub message: ServerMessage,
    binary: std::sync::OnceLock<SharedDelta>,
}

impl RoomDelta {
    pub fn new(delta: Delta) -> RoomDelta {
        RoomDelta { message: ServerMessage::Delta(delta), binary: std::sync::OnceLock::new() }
    }

    pub fn delta(&self) -> &Delta {
        match &self.message {
            ServerMessage::Delta(d) => d,
            _ => unreachable!("a RoomDelta holds a delta"),
        }
    }

    /// The shared binary encoding, made once.
    pub fn binary(&self) -> &SharedDelta {
        self.binary.get_or_init(|| SharedDelta::new(self.delta()))
    }
}

/// A member's way back to its socket: the bounded outbound queue, a
/// separate one-slot channel to close it even when that queue is full, and
/// the socket itself, to ask whether its peer still answers (none for bots
/// and tests).
#[derive(Debug, Clone)]
pub struct MemberLink {
    pub outbound: mpsc::Sender<Outbound>,
    pub kick: mpsc::Sender<Kick>,
    pub peer: Option<PeerSocket>,
}

/// How the room ends a member's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A close frame with this code and reason, then the socket closes.
    Close(u16, &'static str),
    /// The socket goes without a close frame: its link went silent, so
    /// none could arrive, and the seat waits for a resume as a dropped
    /// socket's does.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the room is full ({capacity} members)")]
    Full { capacity: u32 },
    #[error("no room has that id")]
    NotFound,
    #[error("the room is closing")]
    Closed,
    #[error("rooms can't be created right now (the store is unavailable)")]
    Unavailable,
    #[error("a room named that exists already (id {id})")]
    NameTaken { id: String },
    #[error("the room's state couldn't be queued to this connection (it isn't reading); reconnect")]
    Busy,
}

/// Who is joining or resuming: the user, its session and this socket's
/// connection number.
#[derive(Debug, Clone)]
pub struct Occupant {
    pub user_id: String,
    pub name: String,
    pub session: Arc<str>,
    pub conn: u64,
}

/// A seat taken in a room. `alive` stops upgrading once the room has let
/// the seat go (left, expired, closed as too slow).
#[derive(Debug, Clone)]
pub struct Seat {
    pub you: AvatarId,
    pub alive: Weak<()>,
    /// Where this seat's socket leaves its poses for the room's next tick.
    pub poses: Arc<PoseSlot>,
}

/// The newest pose a seat's socket has sent, waiting for the room's next
/// tick: a mailbox of one that a newer pose overwrites. The room still owns
/// the avatar; it takes what is here once per tick. A channel message per
/// pose woke the room task 800 times a second per 40-user room (40,000 at
/// 2,000 users) for state it only reads 20 times a second.
#[derive(Debug)]
pub struct PoseSlot {
    pose: std::sync::Mutex<Option<OfferedPose>>,
    tick: Arc<TickWait>,
}

/// Set while the room's tick waits for stragglers: only then does a pose
/// wake the room.
#[derive(Debug, Default)]
struct TickWait {
    waiting: AtomicBool,
    pose_arrived: Notify,
}

#[derive(Debug, Clone, Copy)]
struct OfferedPose {
    conn: u64,
    t: u64,
    pose: Pose,
}

impl PoseSlot {
    /// Leaves `pose` (sent at sender time `t` on socket `conn`) for the next
    /// tick, replacing any pose the room has not taken yet.
    /// Connection numbers only grow, so a stale socket's late pose never
    /// replaces one from the socket that resumed the seat.
    pub fn offer(&self, conn: u64, t: u64, pose: Pose) {
        {
            let mut slot = self.lock();
            if slot.is_none_or(|waiting| waiting.conn <= conn) {
                *slot = Some(OfferedPose { conn, t, pose });
            }
        }
        if self.tick.waiting.load(Ordering::Acquire) {
            self.tick.pose_arrived.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OfferedPose>> {
        self.pose.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> Option<OfferedPose> {
        self.lock().take()
    }

    /// Whether a pose from socket `conn` waits here.
    fn holds_pose_from(&self, conn: u64) -> bool {
        self.lock().is_some_and(|offered| offered.conn == conn)
    }
}

#[derive(Debug)]
pub enum RoomCommand {
    Join { occupant: Occupant, pose: Pose, link: MemberLink, reply: oneshot::Sender<Result<Seat, JoinError>> },
    /// Takes a seat back with a new socket; `welcome` is queued before the
    /// full state.
    Resume { avatar: AvatarId, occupant: Occupant, link: MemberLink, welcome: Arc<ServerMessage>, reply: oneshot::Sender<Result<Seat, JoinError>> },
    Leave { avatar: AvatarId, conn: u64 },
    /// The socket dropped: keep the seat for [`RESUME_WINDOW`].
    Detach { avatar: AvatarId, conn: u64 },
    /// A stored chat message, to every member (the sender included).
    Chat(Arc<ServerMessage>),
    /// The newest `limit` chat messages, oldest first; `None`: ask the
    /// store (crate::recent_chat).
    RecentChat { limit: usize, reply: crate::recent_chat::Reply },
    /// The store's newest page of this room's chat, read once.
    StoredChat(Result<Vec<plaza_shared::messages::ChatMessage>, ()>),
    /// The member's socket opened voice (replacing any it had): route it.
    VoiceJoin { avatar: AvatarId, conn: u64, routing: VoiceRouting },
    VoiceLeave { avatar: AvatarId, conn: u64 },
    /// The avatars this member muted (all of them): not routed to it.
    VoiceMute { avatar: AvatarId, conn: u64, muted: Vec<AvatarId> },
    /// Another instance runs this room now (crate::bus): every member is
    /// closed with 1001, to come back to the room where it runs.
    Evict,
}

/// A cheap handle to a room task.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub capacity: u32,
    members: Arc<AtomicU32>,
    tx: mpsc::Sender<RoomCommand>,
    task: Arc<RoomTask>,
}

/// A room's task, started by its first command. Rooms the store remembers
/// are all known at start, and with `--redis-url` an instance knows rooms
/// that run on another; a room nobody uses here costs its handle, not a
/// task.
struct RoomTask {
    started: std::sync::OnceLock<()>,
    unstarted: std::sync::Mutex<Option<(Room, mpsc::Receiver<RoomCommand>)>>,
}

impl std::fmt::Debug for RoomTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomTask").field("started", &self.started.get().is_some()).finish()
    }
}

impl RoomHandle {
    pub fn members(&self) -> u32 {
        self.members.load(Ordering::Relaxed)
    }

    /// The room's commands; its task starts with the first.
    fn tx(&self) -> &mpsc::Sender<RoomCommand> {
        self.task.started.get_or_init(|| {
            if let Some((room, rx)) = self.task.unstarted.lock().ok().and_then(|mut u| u.take()) {
                let span = tracing::info_span!("room", room_id = %self.id, room_name = %self.name);
                tokio::spawn(room.run(rx).instrument(span));
            }
        });
        &self.tx
    }

    /// Whether the room's task runs (it starts with the first command).
    pub fn started(&self) -> bool {
        self.task.started.get().is_some()
    }

    /// Takes a new seat; the room queues `joined` to `link` itself.
    pub async fn join(&self, occupant: Occupant, pose: Pose, link: MemberLink) -> Result<Seat, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.tx().send(RoomCommand::Join { occupant, pose, link, reply }).await.map_err(|_| JoinError::Closed)?;
        answer.await.map_err(|_| JoinError::Closed)?
    }

    /// Takes `avatar`'s seat back for the same user and session; the room
    /// queues `welcome` and then `joined` to `link`. `NotFound` when the
    /// seat is gone.
    pub async fn resume(&self, avatar: AvatarId, occupant: Occupant, link: MemberLink, welcome: ServerMessage) -> Result<Seat, JoinError> {
        let (reply, answer) = oneshot::channel();
        let welcome = Arc::new(welcome);
        self.tx().send(RoomCommand::Resume { avatar, occupant, link, welcome, reply }).await.map_err(|_| JoinError::Closed)?;
        answer.await.map_err(|_| JoinError::Closed)?
    }

    pub async fn chat(&self, message: plaza_shared::messages::ChatMessage) {
        let _ = self.tx().send(RoomCommand::Chat(Arc::new(ServerMessage::Chat(message)))).await;
    }

    /// The room's newest `limit` chat messages, oldest first, from memory;
    /// `None` when the room can't tell (ask the store).
    pub async fn recent_chat(&self, limit: usize) -> Option<Vec<Arc<plaza_shared::messages::ChatMessage>>> {
        let (reply, answer) = oneshot::channel();
        self.tx().send(RoomCommand::RecentChat { limit, reply }).await.ok()?;
        answer.await.ok().flatten()
    }

    pub async fn leave(&self, avatar: AvatarId, conn: u64) {
        let _ = self.tx().send(RoomCommand::Leave { avatar, conn }).await;
    }

    /// The socket dropped without a goodbye: hold the seat for a resume.
    pub async fn detach(&self, avatar: AvatarId, conn: u64) {
        let _ = self.tx().send(RoomCommand::Detach { avatar, conn }).await;
    }

    pub async fn voice_join(&self, avatar: AvatarId, conn: u64, routing: VoiceRouting) {
        let _ = self.tx().send(RoomCommand::VoiceJoin { avatar, conn, routing }).await;
    }

    pub async fn voice_leave(&self, avatar: AvatarId, conn: u64) {
        let _ = self.tx().send(RoomCommand::VoiceLeave { avatar, conn }).await;
    }

    pub async fn voice_mute(&self, avatar: AvatarId, conn: u64, muted: Vec<AvatarId>) {
        let _ = self.tx().send(RoomCommand::VoiceMute { avatar, conn, muted }).await;
    }

    /// Closes every member with 1001 (the room runs on another instance now).
    pub async fn evict(&self) {
        let _ = self.tx().send(RoomCommand::Evict).await;
    }
}

/// Why the room re-chooses who hears whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reroute {
    /// Every [`ROUTE_EVERY_TICKS`]: people moved.
    Periodic,
    /// This member opened voice: it is told its slots even when all are silent.
    Joined(AvatarId),
    /// A member left voice (or the room).
    Left,
    /// A member muted or unmuted someone.
    Muted,
}

/// A member in voice: how to route it, and whom each of its slots carries.
struct VoiceMember {
    routing: VoiceRouting,
    hears: Vec<Option<AvatarId>>,
    /// Who it muted: never in its slots.
    muted: Vec<AvatarId>,
    /// Whether it was talking when the room last routed voice.
    talking: bool,
}

struct Member {
    user_id: String,
    name: String,
    session: Arc<str>,
    /// The socket now attached; commands from any other are stale.
    conn: u64,
    /// Set while the socket is gone: the seat is let go at this instant.
    detached_until: Option<Instant>,
    /// Upgradable while the seat exists (see [`Seat`]).
    seat: Arc<()>,
    /// Poses from the socket, taken each tick.
    poses: Arc<PoseSlot>,
    pose: Pose,
    /// Sender clock of the latest pose.
    t: Option<u64>,
    moved: bool,
    /// Ticks in a row that found a pose from this member (saturating).
    streak: u8,
    link: MemberLink,
    /// Ticks missed in a row; >0 means the next delivery is a resync.
    missed: u32,
    /// Avatars that left while this member was missing deltas.
    missed_left: Vec<AvatarId>,
}

impl Member {
    /// Applies the pose the socket left, if any. Only the attached socket
    /// moves the avatar: a stale socket's late pose is dropped.
    fn take_offered_pose(&mut self) {
        if let Some(offered) = self.poses.take().filter(|o| o.conn == self.conn && self.detached_until.is_none()) {
            self.pose = offered.pose;
            self.t = Some(offered.t);
            self.moved = true;
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak = 0;
        }
    }

    /// Sends a pose every tick, and this tick's is not in yet.
    fn is_straggling(&self) -> bool {
        self.detached_until.is_none() && self.streak >= STREAK_BEFORE_WAIT && !self.poses.holds_pose_from(self.conn)
    }

    fn info(&self, id: AvatarId) -> AvatarInfo {
        AvatarInfo { id, user: self.user_id.clone(), name: self.name.clone(), pose: self.pose }
    }
}

struct Room {
    id: Arc<str>,
    name: Arc<str>,
    capacity: u32,
    members: HashMap<AvatarId, Member>,
    member_count: Arc<AtomicU32>,
    next_avatar: AvatarId,
    tick: u64,
    joined: Vec<AvatarId>,
    left: Vec<AvatarId>,
    tick_wait: Arc<TickWait>,
    /// Members in voice, by avatar.
    voice: HashMap<AvatarId, VoiceMember>,
    /// Streams forwarded now (this room's share of `plaza_voice_streams`).
    voice_streams: usize,
    /// The newest chat, for the history endpoint.
    recent_chat: crate::recent_chat::RecentChat,
    /// Where a room from the store reads its chat, and how the answer
    /// comes back (weak: it must not keep the room alive).
    store: Option<(Store, mpsc::WeakSender<RoomCommand>)>,
}

/// A new room (its task starts with its first command).
pub fn spawn_room(name: &str, capacity: u32) -> RoomHandle {
    spawn_room_task(&format!("r_{}", random_token(9)), name, capacity, None)
}

/// A room the store remembers (its chat history is there); its task
/// starts with its first command.
pub fn spawn_stored_room(id: &str, name: &str, capacity: u32, store: Store) -> RoomHandle {
    spawn_room_task(id, name, capacity, Some(store))
}

fn spawn_room_task(id: &str, name: &str, capacity: u32, store: Option<Store>) -> RoomHandle {
    let (tx, rx) = mpsc::channel(ROOM_COMMAND_QUEUE);
    let handle = RoomHandle {
        id: id.into(),
        name: name.into(),
        capacity,
        members: Arc::new(AtomicU32::new(0)),
        tx,
        task: Arc::new(RoomTask { started: std::sync::OnceLock::new(), unstarted: std::sync::Mutex::new(None) }),
    };
    let room = Room {
        id: handle.id.clone(),
        name: handle.name.clone(),
        capacity,
        members: HashMap::new(),
        member_count: handle.members.clone(),
        next_avatar: 1,
        tick: 0,
        joined: Vec::new(),
        left: Vec::new(),
        tick_wait: Arc::default(),
        voice: HashMap::new(),
        voice_streams: 0,
        recent_chat: if store.is_some() { crate::recent_chat::RecentChat::stored_room() } else { crate::recent_chat::RecentChat::new_room() },
        store: store.map(|store| (store, handle.tx.downgrade())),
    };
    handle.task.unstarted.lock().expect("a new room's own lock").replace((room, rx));
    handle
}

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomCommand>) {
        let mut ticker = tokio::time::interval_at(Instant::now() + tick_offset(&self.id), TICK_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Set while a tick waits for stragglers (until `grace` runs out).
        let mut waiting = false;
        let grace = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                // An empty room sleeps: rooms are kept for good (in the
                // store, one task each), and a thousand idle rooms ticking
                // 20 times a second would cost CPU for nothing. The grid
                // stays put while a tick waits: a late tick delays only itself.
                _ = ticker.tick(), if !self.members.is_empty() && !waiting => {
                    if self.wait_for_stragglers() {
                        grace.as_mut().reset(Instant::now() + STRAGGLER_GRACE);
                        waiting = true;
                    } else {
                        self.tick();
                    }
                }
                _ = self.tick_wait.pose_arrived.notified(), if waiting => {
                    if !self.any_straggling() {
                        waiting = false;
                        self.end_wait_and_tick("arrived");
                    }
                }
                _ = &mut grace, if waiting => {
                    waiting = false;
                    self.end_wait_and_tick("gave_up");
                }
            }
        }
    }

    /// Whether this tick should wait: some member's pose is due but not in.
    /// Poses wake the room from before the check on, so none that lands
    /// after it goes unnoticed.
    fn wait_for_stragglers(&self) -> bool {
        self.tick_wait.waiting.store(true, Ordering::Release);
        let waiting = self.any_straggling();
        if !waiting {
            self.tick_wait.waiting.store(false, Ordering::Release);
        }
        waiting
    }

    fn any_straggling(&self) -> bool {
        self.members.values().any(Member::is_straggling)
    }

    /// `outcome`: one of [`crate::metrics::TICK_WAIT_OUTCOMES`].
    fn end_wait_and_tick(&mut self, outcome: &'static str) {
        self.tick_wait.waiting.store(false, Ordering::Release);
        metrics::counter!(crate::metrics::TICK_WAITS, "outcome" => outcome).increment(1);
        self.tick();
    }

    fn handle(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::Join { occupant, pose, link, reply } => {
                if self.members.len() as u32 >= self.capacity {
                    let _ = reply.send(Err(JoinError::Full { capacity: self.capacity }));
                    return;
                }
                let id = self.next_avatar;
                self.next_avatar += 1;
                // The room sends `joined` itself, so it is queued before any
                // delta that mentions the newcomer.
                if link.outbound.try_send(Outbound::Message(self.full_state(id))).is_err() {
                    let _ = reply.send(Err(JoinError::Busy)); // the socket is gone or not reading
                    return;
                }
                let seat = Arc::new(());
                let poses = Arc::new(PoseSlot { pose: std::sync::Mutex::new(None), tick: self.tick_wait.clone() });
                if reply.send(Ok(Seat { you: id, alive: Arc::downgrade(&seat), poses: poses.clone() })).is_err() {
                    return;
                }
                tracing::info!(avatar = id, user_id = %occupant.user_id, "joined");
                let Occupant { user_id, name, session, conn } = occupant;
                let member = Member { user_id, name, session, conn, detached_until: None, seat, poses, pose, t: None, moved: false, streak: 0, link, missed: 0, missed_left: Vec::new() };
                self.members.insert(id, member);
                self.joined.push(id);
                self.set_members();
            }
            RoomCommand::Resume { avatar, occupant, link, welcome, reply } => {
                let Some(m) = self.members.get_mut(&avatar).filter(|m| m.user_id == occupant.user_id && m.session == occupant.session) else {
                    let _ = reply.send(Err(JoinError::NotFound));
                    return;
                };
                if m.detached_until.is_none() {
                    // The old socket hasn't noticed it is dead yet (or two
                    // clients share a session): the newest one wins.
                    let _ = m.link.kick.try_send(Kick::Close(1000, "this session resumed on another connection"));
                }
                let state = self.full_state(avatar);
                if link.outbound.try_send(Outbound::Resumed { welcome, state }).is_err() {
                    let _ = reply.send(Err(JoinError::Closed));
                    return;
                }
                let m = self.members.get_mut(&avatar).expect("member");
                let seat = Seat { you: avatar, alive: Arc::downgrade(&m.seat), poses: m.poses.clone() };
                if reply.send(Ok(seat)).is_err() {
                    return;
                }
                tracing::info!(avatar, user_id = %occupant.user_id, "resumed");
                m.link = link;
                m.conn = occupant.conn;
                m.detached_until = None;
                // The full state just sent covers everything it missed.
                m.missed = 0;
                m.missed_left.clear();
            }
            RoomCommand::Detach { avatar, conn } => {
                if self.members.get(&avatar).is_some_and(|m| m.conn == conn) {
                    tracing::info!(avatar, "socket dropped; seat held for a resume");
                    self.detach(avatar);
                }
            }
            RoomCommand::Leave { avatar, conn } => {
                if self.members.get(&avatar).is_some_and(|m| m.conn == conn) {
                    self.remove(avatar);
                }
            }
            RoomCommand::VoiceJoin { avatar, conn, routing } => {
                if self.members.get(&avatar).is_some_and(|m| m.conn == conn && m.detached_until.is_none()) {
                    let hears = vec![None; routing.mids.len()];
                    self.voice.insert(avatar, VoiceMember { routing, hears, muted: Vec::new(), talking: false });
                    tracing::info!(avatar, "voice on");
                    self.route_voice(Reroute::Joined(avatar));
                }
            }
            RoomCommand::VoiceLeave { avatar, conn } => {
                if self.members.get(&avatar).is_some_and(|m| m.conn == conn) && self.voice.remove(&avatar).is_some() {
                    tracing::info!(avatar, "voice off");
                    self.route_voice(Reroute::Left);
                }
            }
            RoomCommand::Evict => {
                let ids: Vec<AvatarId> = self.members.keys().copied().collect();
                tracing::warn!(room_id = %self.id, members = ids.len(), "closing every member: another instance runs this room now");
                for id in ids {
                    if let Some(m) = self.members.get(&id) {
                        let _ = m.link.kick.try_send(Kick::Close(close::SERVER_DRAINING, "this room moved to another server; reconnect"));
                    }
                    self.remove(id);
                }
            }
            RoomCommand::VoiceMute { avatar, conn, muted } => {
                if self.members.get(&avatar).is_some_and(|m| m.conn == conn)
                    && let Some(v) = self.voice.get_mut(&avatar)
                    && v.muted != muted
                {
                    v.muted = muted;
                    self.route_voice(Reroute::Muted);
                }
            }
            RoomCommand::RecentChat { limit, reply } => {
                if self.recent_chat.ask(limit, reply) {
                    self.read_stored_chat();
                }
            }
            RoomCommand::StoredChat(stored) => self.recent_chat.seed(stored),
            RoomCommand::Chat(message) => {
                if let ServerMessage::Chat(chat) = message.as_ref() {
                    self.recent_chat.push(Arc::new(chat.clone()));
                }
                // A member whose queue is full misses it live (it is in the
                // history); one that stays full is closed by the tick.
                for m in self.members.values().filter(|m| m.detached_until.is_none()) {
                    let _ = m.link.outbound.try_send(Outbound::Message(message.clone()));
                }
            }
        }
    }

    /// Reads the room's newest page of chat from the store, off the room's
    /// task; it comes back as [`RoomCommand::StoredChat`].
    fn read_stored_chat(&mut self) {
        let Some((store, room)) = self.store.as_ref().and_then(|(store, room)| Some((store.clone(), room.upgrade()?))) else {
            self.recent_chat.seed(Err(()));
            return;
        };
        let id = self.id.clone();
        tokio::spawn(async move {
            let stored = store.history(&id, crate::recent_chat::RECENT_CHAT as u32).await.map_err(|e| tracing::warn!(cause = %e, "recent chat not read from the store"));
            let _ = room.send(RoomCommand::StoredChat(stored)).await;
        });
    }

    /// `joined` for `you`: every other member in full.
    fn full_state(&self, you: AvatarId) -> Arc<ServerMessage> {
        let avatars = self.members.iter().filter(|(id, _)| **id != you).map(|(&other, m)| m.info(other)).collect();
        Arc::new(ServerMessage::Joined(Joined { room: self.id.to_string(), room_name: self.name.to_string(), you, tick: self.tick, avatars }))
    }

    /// Holds a member's seat for a resume ([`RESUME_WINDOW`]): its avatar
    /// stays where it was, and nobody is told it left.
    fn detach(&mut self, avatar: AvatarId) {
        let Some(m) = self.members.get_mut(&avatar) else { return };
        // The last pose the socket got in still counts.
        m.take_offered_pose();
        if m.detached_until.is_none() {
            metrics::counter!(crate::metrics::SEATS_HELD).increment(1);
        }
        m.detached_until = Some(Instant::now() + RESUME_WINDOW);
        // Voice went with the socket; a resumed one offers again.
        if self.voice.remove(&avatar).is_some() {
            self.route_voice(Reroute::Left);
        }
    }

    fn remove(&mut self, avatar: AvatarId) {
        if self.members.remove(&avatar).is_some() {
            tracing::info!(avatar, "left");
            // Even if it joined this tick: members who joined after it saw it
            // in their `joined` state. An unknown id in `left` is harmless.
            self.joined.retain(|&a| a != avatar);
            self.left.push(avatar);
            self.set_members();
            if self.voice.remove(&avatar).is_some() {
                self.route_voice(Reroute::Left);
            }
        }
    }

    /// A member whose queue stayed full (or closed) for
    /// [`SLOW_TICKS_BEFORE_CLOSE`] ticks. A slow reader is closed with 4009
    /// and lets its seat go. A member whose link went silent (its TCP has
    /// had nothing acknowledged for seconds, crate::peer_link) is detached
    /// instead, as a dropped socket is: its client will notice the silence
    /// and resume, and a close frame could not reach it anyway.
    fn end_slow_member(&mut self, id: AvatarId) {
        let Some(m) = self.members.get(&id) else { return };
        if m.link.outbound.is_closed() {
            // The socket went and its gateway never said how.
            self.remove(id);
            return;
        }
        // The queue is open, so its writer holds the socket: the descriptor
        // is still this member's (crate::peer_link::PeerSocket).
        if let Some(Reach::Silent(silent)) = m.link.peer.map(|p| p.reach()) {
            tracing::warn!(avatar = id, ticks = m.missed, silent_ms = silent.as_millis() as u64, "a member's link went silent: letting its socket go, seat held for a resume");
            let _ = m.link.kick.try_send(Kick::Drop);
            self.detach(id);
            return;
        }
        tracing::warn!(avatar = id, ticks = m.missed, "closing a member too slow to keep up");
        let _ = m.link.kick.try_send(Kick::Close(close::TOO_SLOW, "too slow to keep up"));
        self.remove(id);
    }

    /// Whether a voice member quiet at the last routing is talking now.
    fn someone_started_talking(&self) -> bool {
        let now_ms = crate::voice::clock_ms();
        self.voice.values().any(|v| v.routing.mic && !v.talking && v.routing.talking(now_ms))
    }

    /// Re-chooses who each voice member hears (those talking, then the nearest, in
    /// range, see [`plaza_shared::voice`]), tells those whose slots changed
    /// (and a newcomer, whatever its slots), and republishes every
    /// speaker's routes when anything changed or someone joined or left
    /// voice (a listener that left must leave the routes).
    fn route_voice(&mut self, why: Reroute) {
        let newcomer = match why {
            Reroute::Joined(avatar) => Some(avatar),
            Reroute::Periodic | Reroute::Left | Reroute::Muted => None,
        };
        let now_ms = crate::voice::clock_ms();
        for v in self.voice.values_mut() {
            v.talking = v.routing.talking(now_ms);
        }
        let speakers: Vec<(AvatarId, [f32; 3], bool)> = self
            .voice
            .iter()
            .filter(|(_, v)| v.routing.mic)
            .filter_map(|(&id, v)| self.members.get(&id).filter(|m| m.detached_until.is_none()).map(|m| (id, m.pose.p, v.talking)))
            .collect();
        let mut changed = why != Reroute::Periodic;
        for (&listener, v) in self.voice.iter_mut() {
            let Some(m) = self.members.get(&listener) else { continue };
            let nearest = choose_speakers(m.pose.p, speakers.iter().copied().filter(|(id, ..)| *id != listener && !v.muted.contains(id)), v.hears.len());
            let hears = assign_slots(&v.hears, &nearest);
            if hears == v.hears && newcomer != Some(listener) {
                continue;
            }
            changed |= hears != v.hears;
            v.hears = hears;
            let slots = v.routing.mids.iter().zip(&v.hears).map(|(mid, avatar)| SlotSpeaker { mid: mid.clone(), avatar: *avatar }).collect();
            let signal = ServerMessage::Voice(VoiceSignal::Speakers { slots }.into_message());
            // A member too far behind to take this hears the next change.
            let _ = m.link.outbound.try_send(Outbound::Message(Arc::new(signal)));
        }
        if !changed {
            return;
        }
        let mut routes: HashMap<AvatarId, Vec<Route>> = HashMap::new();
        let mut streams = 0;
        for v in self.voice.values() {
            for (slot, speaker) in v.hears.iter().enumerate() {
                if let Some(speaker) = speaker {
                    routes.entry(*speaker).or_default().push(Route { to: v.routing.forward.clone(), slot: slot as u8 });
                    streams += 1;
                }
            }
        }
        for (id, v) in &self.voice {
            v.routing.routes.send_replace(Arc::from(routes.remove(id).unwrap_or_default()));
        }
        metrics::gauge!(crate::metrics::VOICE_STREAMS).increment(streams as f64 - self.voice_streams as f64);
        self.voice_streams = streams;
    }

    fn set_members(&mut self) {
        let before = self.member_count.swap(self.members.len() as u32, Ordering::Relaxed);
        match (before, self.members.len()) {
            (0, n) if n > 0 => metrics::gauge!(crate::metrics::ROOMS_ACTIVE).increment(1.0),
            (b, 0) if b > 0 => metrics::gauge!(crate::metrics::ROOMS_ACTIVE).decrement(1.0),
            _ => {}
        }
    }

    fn tick(&mut self) {
        // A named zone per tick in Tracy (`--features tracy`); compiled out
        // otherwise.
        #[cfg(feature = "tracy")]
        let _zone = tracing::info_span!("room_tick", room = %self.name, members = self.members.len()).entered();
        let started = std::time::Instant::now();
        self.tick_inner();
        metrics::histogram!(crate::metrics::TICK_DURATION).record(started.elapsed().as_secs_f64());
        if self.tick.is_multiple_of(u64::from(TICK_HZ)) && !self.members.is_empty() {
            metrics::histogram!(crate::metrics::ROOM_USERS).record(self.members.len() as f64);
        }
        // Someone who starts talking is routed at once, not at the next
        // half second: that is the start of what they say.
        if !self.voice.is_empty() && (self.tick.is_multiple_of(ROUTE_EVERY_TICKS) || self.someone_started_talking()) {
            self.route_voice(Reroute::Periodic);
        }
    }

    fn tick_inner(&mut self) {
        self.tick += 1;
        let now = Instant::now();
        let expired: Vec<AvatarId> = self.members.iter().filter(|(_, m)| m.detached_until.is_some_and(|until| until <= now)).map(|(&id, _)| id).collect();
        for id in expired {
            tracing::info!(avatar = id, "no resume within the window; seat let go");
            metrics::counter!(crate::metrics::SEATS_EXPIRED).increment(1);
            self.remove(id);
        }
        for m in self.members.values_mut() {
            m.take_offered_pose();
        }
        let moved: Vec<AvatarPose> = self
            .members
            .iter()
            .filter(|(id, m)| m.moved && !self.joined.contains(id))
            .map(|(&id, m)| AvatarPose { id, t: m.t, pose: m.pose })
            .collect();
        let joined: Vec<AvatarInfo> = self.joined.iter().filter_map(|id| self.members.get(id).map(|m| m.info(*id))).collect();
        let left = std::mem::take(&mut self.left);
        for m in self.members.values_mut() {
            m.moved = false;
        }
        self.joined.clear();
        let changed = !moved.is_empty() || !joined.is_empty() || !left.is_empty();
        let delta = changed.then(|| Arc::new(RoomDelta::new(Delta { tick: self.tick, avatars: moved, joined, left: left.clone() })));

        let mut too_slow = Vec::new();
        let ids: Vec<AvatarId> = self.members.iter().filter(|(_, m)| m.detached_until.is_none()).map(|(&id, _)| id).collect();
        for id in ids {
            // Members that joined this tick get the delta too: others may
            // have joined after them within the tick. Entries they already
            // have are upserts; their own entry is filtered by the gateway.
            let resync = self.members[&id].missed > 0;
            let message = if resync {
                // Everything it may have missed: all others in full, and
                // every departure since it fell behind.
                let mut missed_left = std::mem::take(&mut self.members.get_mut(&id).expect("member").missed_left);
                missed_left.extend(&left);
                let others = self.members.iter().filter(|(o, _)| **o != id).map(|(&o, m)| m.info(o)).collect();
                Outbound::Message(Arc::new(ServerMessage::Delta(Delta { tick: self.tick, avatars: vec![], joined: others, left: missed_left })))
            } else if let Some(delta) = &delta {
                Outbound::Delta(delta.clone())
            } else {
                continue;
            };
            let m = self.members.get_mut(&id).expect("member");
            match m.link.outbound.try_send(message) {
                Ok(()) => m.missed = 0,
                // A closed queue: the socket is gone, and its gateway is
                // about to say whether it left or dropped (then the seat
                // waits for a resume). Missed like a full one meanwhile;
                // removed here only if the gateway never says.
                Err(e) => {
                    let unsent = match e {
                        mpsc::error::TrySendError::Full(unsent) => {
                            metrics::counter!(crate::metrics::WS_DROPPED, "reason" => "slow_consumer").increment(1);
                            unsent
                        }
                        mpsc::error::TrySendError::Closed(unsent) => unsent,
                    };
                    m.missed += 1;
                    // Departures in the lost delta go into the next resync.
                    match &unsent {
                        Outbound::Message(msg) => {
                            if let ServerMessage::Delta(d) = msg.as_ref() {
                                m.missed_left.extend(&d.left);
                            }
                        }
                        Outbound::Delta(d) => m.missed_left.extend(&d.delta().left),
                        Outbound::Resumed { .. } | Outbound::Close(..) | Outbound::Frame(_) => {}
                    }
                    if m.missed >= SLOW_TICKS_BEFORE_CLOSE {
                        too_slow.push(id);
                    }
                }
            }
        }
        for id in too_slow {
            self.end_slow_member(id);
        }
    }
}

/// Finds and creates rooms; the one owner of the room set.
#[derive(Debug, Clone)]
pub struct Directory {
    tx: mpsc::Sender<DirectoryCommand>,
}

enum DirectoryCommand {
    /// By id, or by name (creating it when `create` and no room has it).
    Resolve { room: String, create: bool, reply: oneshot::Sender<Result<RoomHandle, JoinError>> },
    Create { name: String, capacity: u32, reply: oneshot::Sender<Result<RoomHandle, JoinError>> },
    List { reply: oneshot::Sender<Vec<RoomHandle>> },
    /// Remembers which seat a session holds, for a resume.
    Remember { session: Arc<str>, room: RoomHandle, seat: Seat },
    /// The seat a session held, if the room still keeps it.
    FindSeat { session: String, reply: oneshot::Sender<Option<(RoomHandle, AvatarId)>> },
}

/// Sessions' seats. Rooms own the seats; this only keeps weak references,
/// so a seat the room let go disappears here too (pruned as the map grows).
#[derive(Default)]
struct SeatIndex {
    seats: HashMap<Arc<str>, (RoomHandle, Seat)>,
    prune_at: usize,
}

impl SeatIndex {
    fn remember(&mut self, session: Arc<str>, room: RoomHandle, seat: Seat) {
        self.seats.insert(session, (room, seat));
        if self.seats.len() > self.prune_at {
            self.seats.retain(|_, (_, seat)| seat.alive.strong_count() > 0);
            self.prune_at = (self.seats.len() * 2).max(1024);
        }
    }

    fn find(&mut self, session: &str) -> Option<(RoomHandle, AvatarId)> {
        match self.seats.get(session) {
            Some((room, seat)) if seat.alive.strong_count() > 0 => Some((room.clone(), seat.you)),
            Some(_) => {
                self.seats.remove(session);
                None
            }
            None => None,
        }
    }
}

impl Directory {
    /// Starts the directory with every room the store remembers. `shared`:
    /// other instances share the store (crate::bus) and make rooms too, so
    /// a room not known here is looked for there before one is made.
    pub async fn start(store: Store, shared: bool) -> Result<Directory, StoreError> {
        let mut by_id: HashMap<Arc<str>, RoomHandle> = HashMap::new();
        let mut by_name: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        for (id, name, capacity) in store.rooms().await? {
            let handle = spawn_stored_room(&id, &name, capacity, store.clone());
            by_name.entry(handle.name.clone()).or_insert_with(|| handle.id.clone());
            by_id.insert(handle.id.clone(), handle);
        }
        let (tx, mut rx) = mpsc::channel::<DirectoryCommand>(DIRECTORY_QUEUE);
        // Rooms are created rarely, so waiting on the store here is fine;
        // joins of existing rooms never touch it.
        let create_room = {
            let store = store.clone();
            move |name: String, capacity: u32| {
                let store = store.clone();
                async move {
                    let handle = spawn_room(&name, capacity);
                    match store.insert_room(&handle.id, &name, capacity).await {
                        Ok(()) => Ok(handle),
                        Err(e) => {
                            // Another instance may have made it a moment ago.
                            if shared && let Ok(Some((id, name, capacity))) = store.room(&name).await {
                                return Ok(spawn_stored_room(&id, &name, capacity, store));
                            }
                            tracing::error!(cause = %e, "room not stored");
                            Err(JoinError::Unavailable)
                        }
                    }
                }
            }
        };
        // A room another instance made since this one started.
        let stored_room = move |key: String| {
            let store = store.clone();
            async move {
                match store.room(&key).await {
                    Ok(found) => Ok(found.map(|(id, name, capacity)| spawn_stored_room(&id, &name, capacity, store))),
                    Err(e) => {
                        tracing::error!(cause = %e, "rooms not read from the store");
                        Err(JoinError::Unavailable)
                    }
                }
            }
        };
        tokio::spawn(async move {
            let mut seats = SeatIndex::default();
            while let Some(command) = rx.recv().await {
                match command {
                    DirectoryCommand::Resolve { room, create, reply } => {
                        let mut found = by_id.get(room.as_str()).or_else(|| by_name.get(room.as_str()).and_then(|id| by_id.get(id))).cloned();
                        if found.is_none() && shared {
                            match stored_room(room.clone()).await {
                                Ok(Some(handle)) => {
                                    by_name.entry(handle.name.clone()).or_insert_with(|| handle.id.clone());
                                    by_id.insert(handle.id.clone(), handle.clone());
                                    found = Some(handle);
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                    continue;
                                }
                            }
                        }
                        let result = match found {
                            Some(handle) => Ok(handle),
                            None if create => match create_room(room, DEFAULT_ROOM_CAPACITY).await {
                                Ok(handle) => {
                                    by_name.insert(handle.name.clone(), handle.id.clone());
                                    by_id.insert(handle.id.clone(), handle.clone());
                                    Ok(handle)
                                }
                                Err(e) => Err(e),
                            },
                            None => Err(JoinError::NotFound),
                        };
                        let _ = reply.send(result);
                    }
                    DirectoryCommand::Create { name, capacity, reply } => {
                        // Names find rooms: two rooms with one name would
                        // leave the second reachable only by id.
                        if let Some(id) = by_name.get(name.as_str()) {
                            let _ = reply.send(Err(JoinError::NameTaken { id: id.to_string() }));
                            continue;
                        }
                        if shared && let Ok(Some(elsewhere)) = stored_room(name.clone()).await {
                            let _ = reply.send(Err(JoinError::NameTaken { id: elsewhere.id.to_string() }));
                            by_name.entry(elsewhere.name.clone()).or_insert_with(|| elsewhere.id.clone());
                            by_id.insert(elsewhere.id.clone(), elsewhere);
                            continue;
                        }
                        let result = create_room(name, capacity).await;
                        if let Ok(handle) = &result {
                            by_name.entry(handle.name.clone()).or_insert_with(|| handle.id.clone());
                            by_id.insert(handle.id.clone(), handle.clone());
                        }
                        let _ = reply.send(result);
                    }
                    DirectoryCommand::List { reply } => {
                        let mut rooms: Vec<RoomHandle> = by_id.values().cloned().collect();
                        rooms.sort_by(|a, b| a.name.cmp(&b.name));
                        let _ = reply.send(rooms);
                    }
                    DirectoryCommand::Remember { session, room, seat } => seats.remember(session, room, seat),
                    DirectoryCommand::FindSeat { session, reply } => {
                        let _ = reply.send(seats.find(&session));
                    }
                }
            }
        });
        Ok(Directory { tx })
    }

    pub async fn resolve(&self, room: &str, create: bool) -> Result<RoomHandle, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(DirectoryCommand::Resolve { room: room.to_owned(), create, reply }).await.map_err(|_| JoinError::Closed)?;
        answer.await.map_err(|_| JoinError::Closed)?
    }

    pub async fn create(&self, name: &str, capacity: u32) -> Result<RoomHandle, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(DirectoryCommand::Create { name: name.to_owned(), capacity, reply }).await.map_err(|_| JoinError::Closed)?;
        answer.await.map_err(|_| JoinError::Closed)?
    }

    /// Remembers the seat `session` took, so a new socket can resume it.
    pub async fn remember(&self, session: Arc<str>, room: RoomHandle, seat: Seat) {
        let _ = self.tx.send(DirectoryCommand::Remember { session, room, seat }).await;
    }

    /// The room and avatar of the seat `session` holds, if it is still held.
    pub async fn find_seat(&self, session: &str) -> Option<(RoomHandle, AvatarId)> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(DirectoryCommand::FindSeat { session: session.to_owned(), reply }).await.ok()?;
        answer.await.ok().flatten()
    }

    pub async fn list(&self) -> Vec<RoomHandle> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(DirectoryCommand::List { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::pose::Pose;

    #[test]
    fn rooms_started_together_tick_at_phases_spread_over_the_period() {
        let offsets: Vec<Duration> = (0..50).map(|i| tick_offset(&format!("r_load{i}"))).collect();
        assert!(offsets.iter().all(|&o| o < TICK_PERIOD), "{offsets:?}");
        // Ten 5 ms slices of the period: 50 rooms land in most of them.
        let slices: std::collections::HashSet<u128> = offsets.iter().map(|o| o.as_millis() / 5).collect();
        assert!(slices.len() >= 8, "{offsets:?}");
        assert_eq!(tick_offset("r_x"), tick_offset("r_x"), "a room keeps its phase across restarts");
    }

    struct Probe {
        rx: mpsc::Receiver<Outbound>,
        kick: mpsc::Receiver<Kick>,
        joined: Joined,
        seat: Seat,
    }

    fn occupant(name: &str, conn: u64) -> Occupant {
        Occupant { user_id: format!("u_{name}"), name: name.into(), session: format!("s_{name}").into(), conn }
    }

    fn link(queue: usize) -> (MemberLink, mpsc::Receiver<Outbound>, mpsc::Receiver<Kick>) {
        let (tx, rx) = mpsc::channel(queue);
        let (kick_tx, kick) = mpsc::channel(1);
        (MemberLink { outbound: tx, kick: kick_tx, peer: None }, rx, kick)
    }

    fn first_joined(rx: &mut mpsc::Receiver<Outbound>) -> Joined {
        while let Ok(Outbound::Message(m)) = rx.try_recv() {
            if let ServerMessage::Joined(j) = m.as_ref() {
                return j.clone();
            }
        }
        panic!("no joined queued");
    }

    async fn join(room: &RoomHandle, name: &str, queue: usize) -> Probe {
        let (link, mut rx, kick) = link(queue);
        let seat = room.join(occupant(name, 1), Pose::default(), link).await.unwrap();
        let joined = first_joined(&mut rx);
        Probe { rx, kick, joined, seat }
    }

    fn deltas(probe: &mut Probe) -> Vec<Delta> {
        let mut out = Vec::new();
        loop {
            match probe.rx.try_recv() {
                Ok(Outbound::Message(m)) => {
                    if let ServerMessage::Delta(d) = m.as_ref() {
                        out.push(d.clone());
                    }
                }
                Ok(Outbound::Delta(d)) => out.push(d.delta().clone()),
                _ => return out,
            }
        }
    }

    fn moved(x: f32) -> Pose {
        Pose { p: [x, 0.0, 0.0], ..Pose::default() }
    }

    /// A voice member as the room sees it, without WebRTC: the routes it is
    /// given, and the queue others' packets for it would go to.
    fn voice_member(slots: usize, mic: bool) -> (VoiceRouting, tokio::sync::watch::Receiver<Arc<[Route]>>, mpsc::Receiver<crate::voice::Forward>) {
        let (routes, routes_rx) = tokio::sync::watch::channel(Arc::from(Vec::new()));
        let (forward, queue) = mpsc::channel(8);
        (VoiceRouting { routes, forward, mids: (0..slots).map(|i| i.to_string()).collect(), mic, heard_ms: Default::default() }, routes_rx, queue)
    }

    /// The slots of the last `speakers` signal queued to `probe`.
    fn last_speakers(probe: &mut Probe) -> Option<Vec<Option<AvatarId>>> {
        let mut last = None;
        while let Ok(out) = probe.rx.try_recv() {
            if let Outbound::Message(m) = out
                && let ServerMessage::Voice(v) = m.as_ref()
                && let Ok(VoiceSignal::Speakers { slots }) = VoiceSignal::from_message(v)
            {
                last = Some(slots.into_iter().map(|s| s.avatar).collect());
            }
        }
        last
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_hears_the_nearest_speaker_and_the_next_when_it_walks_away() {
        let room = spawn_room("t", 40);
        let mut ann = join(&room, "ann", 64).await;
        let bob = join(&room, "bob", 64).await;
        let cat = join(&room, "cat", 64).await;
        let (bob_id, cat_id) = (bob.seat.you, cat.seat.you);
        bob.seat.poses.offer(1, 1, moved(2.0));
        cat.seat.poses.offer(1, 1, moved(5.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Ann only listens, with one slot; Bob and Cat only speak.
        let (ann_voice, _, mut ann_queue) = voice_member(1, false);
        let (bob_voice, bob_routes, _) = voice_member(0, true);
        let (cat_voice, cat_routes, _) = voice_member(0, true);
        room.voice_join(ann.seat.you, 1, ann_voice).await;
        room.voice_join(bob_id, 1, bob_voice).await;
        room.voice_join(cat_id, 1, cat_voice).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(last_speakers(&mut ann), Some(vec![Some(bob_id)]), "Bob is nearer");
        assert_eq!(cat_routes.borrow().len(), 0, "nobody has a slot for Cat");
        let route = bob_routes.borrow()[0].clone();
        assert_eq!(route.slot, 0);
        route.to.try_send(crate::voice::Forward { slot: 0, speaker: bob_id, packet: Default::default() }).unwrap();
        assert!(ann_queue.try_recv().is_ok(), "Bob's route leads to Ann's queue");

        // Bob walks out of range: at the next re-route Ann hears Cat.
        bob.seat.poses.offer(1, 2, moved(100.0));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(last_speakers(&mut ann), Some(vec![Some(cat_id)]));
        assert_eq!((bob_routes.borrow().len(), cat_routes.borrow().len()), (0, 1));

        // Cat leaves the room: the slot goes silent at once.
        room.leave(cat_id, 1).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(last_speakers(&mut ann), Some(vec![None]));
        assert_eq!(bob_routes.borrow().len(), 0);
    }

    #[tokio::test]
    async fn a_room_starts_its_task_with_its_first_command_and_not_before() {
        let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let before = tasks();
        let rooms: Vec<RoomHandle> = (0..50).map(|i| spawn_room(&format!("idle-{i}"), 40)).collect();
        assert_eq!(tasks(), before, "50 rooms nobody used: no tasks");
        assert!(rooms.iter().all(|r| !r.started()));
        let probe = join(&rooms[7], "Ada", 8).await;
        assert!(rooms[7].started() && probe.seat.you > 0);
        assert_eq!(tasks(), before + 1, "one room used, one task");
        assert_eq!(rooms[7].members(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_room_does_not_tick() {
        let room = spawn_room("t", 40);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let first = join(&room, "first", 64).await;
        assert!(first.joined.tick <= 1, "no ticks while empty: tick {}", first.joined.tick);
        // With a member it ticks at 20 Hz.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = join(&room, "second", 64).await;
        assert!((19..=21).contains(&second.joined.tick), "tick {}", second.joined.tick);
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_stops_reading_is_closed_4009_while_others_keep_their_tick() {
        let room = spawn_room("t", 40);
        let mut slow = join(&room, "slow", 1).await;
        let mut fast = join(&room, "fast", 64).await;
        let mover = join(&room, "mover", 64).await;
        let mut fast_deltas = Vec::new();
        let ticks = SLOW_TICKS_BEFORE_CLOSE + 10;
        for i in 0..ticks {
            // Poses land between ticks, as they do from real sockets.
            tokio::time::sleep(Duration::from_millis(25)).await;
            mover.seat.poses.offer(1, u64::from(i), moved(i as f32));
            tokio::time::sleep(Duration::from_millis(25)).await;
            fast_deltas.extend(deltas(&mut fast));
        }
        assert_eq!(slow.kick.try_recv(), Ok(Kick::Close(close::TOO_SLOW, "too slow to keep up")));
        let with_moves = fast_deltas.iter().filter(|d| d.avatars.iter().any(|a| a.id == mover.joined.you)).count() as u32;
        assert!(with_moves >= ticks - 2, "the others kept their tick: {with_moves} of {ticks}");
        assert_eq!(room.members(), 2, "the slow member is gone");
        assert!(fast_deltas.iter().any(|d| d.left == vec![slow.joined.you]), "the others were told it left");
    }

    /// The next delta `probe` gets, and when it came (the clock is paused,
    /// so that is when the room sent it).
    async fn next_delta(probe: &mut Probe) -> (Delta, Instant) {
        loop {
            match probe.rx.recv().await.expect("the room is alive") {
                Outbound::Delta(d) => return (d.delta().clone(), Instant::now()),
                Outbound::Message(m) => {
                    if let ServerMessage::Delta(d) = m.as_ref() {
                        return (d.clone(), Instant::now());
                    }
                }
                _ => {}
            }
        }
    }

    fn pose_of(delta: &Delta, avatar: AvatarId) -> Option<f32> {
        delta.avatars.iter().find(|a| a.id == avatar).map(|a| a.pose.p[0])
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_waits_a_moment_for_a_streaming_members_late_pose_and_no_longer() {
        const PERIOD: Duration = Duration::from_millis(1000 / TICK_HZ as u64);
        let room = spawn_room("t", 40);
        let mut watcher = join(&room, "watcher", 64).await;
        let mover = join(&room, "mover", 64).await;
        let you = mover.joined.you;
        // The delta that tells of the mover's join comes at a tick: the grid.
        let grid = loop {
            let (delta, at) = next_delta(&mut watcher).await;
            if delta.joined.iter().any(|a| a.id == you) {
                break at;
            }
        };
        let tick = |n: u32| grid + PERIOD * n;

        // On time, tick after tick: each delta leaves at its grid instant.
        for n in 1..=4u32 {
            tokio::time::sleep_until(tick(n) - Duration::from_millis(2)).await;
            mover.seat.poses.offer(1, u64::from(n), moved(n as f32));
            let (delta, at) = next_delta(&mut watcher).await;
            assert_eq!((pose_of(&delta, you), at), (Some(n as f32), tick(n)), "tick {n}");
        }

        // 3 ms late, within the grace: the tick waits for it, and no longer.
        tokio::time::sleep_until(tick(5) + Duration::from_millis(3)).await;
        mover.seat.poses.offer(1, 5, moved(5.0));
        let (delta, at) = next_delta(&mut watcher).await;
        assert_eq!(pose_of(&delta, you), Some(5.0), "the late pose made its tick");
        assert_eq!(at, tick(5) + Duration::from_millis(3), "sent as soon as it came");

        // 20 ms late: the tick goes after the grace with what it has.
        tokio::time::sleep_until(tick(6) - Duration::from_millis(2)).await;
        watcher.seat.poses.offer(1, 6, moved(-6.0));
        let (delta, at) = next_delta(&mut watcher).await;
        assert_eq!((pose_of(&delta, you), pose_of(&delta, watcher.joined.you)), (None, Some(-6.0)));
        assert_eq!(at, tick(6) + STRAGGLER_GRACE, "waited the grace, no more");
        tokio::time::sleep_until(tick(6) + Duration::from_millis(20)).await;
        mover.seat.poses.offer(1, 6, moved(6.0));

        // That broke the mover's streak: the next tick doesn't wait for it
        // (its pose is in anyway), nor the one after, when it has stopped.
        let (delta, at) = next_delta(&mut watcher).await;
        assert_eq!((pose_of(&delta, you), at), (Some(6.0), tick(7)));
        tokio::time::sleep_until(tick(8) - Duration::from_millis(2)).await;
        watcher.seat.poses.offer(1, 8, moved(-8.0));
        let (delta, at) = next_delta(&mut watcher).await;
        assert_eq!((pose_of(&delta, you), at), (None, tick(8)), "a member with no streak holds up no tick");
    }

    #[tokio::test(start_paused = true)]
    async fn members_joining_in_the_same_tick_learn_of_each_other() {
        let room = spawn_room("t", 40);
        // Both join before the first tick fires.
        let mut first = join(&room, "first", 64).await;
        let mut second = join(&room, "second", 64).await;
        let third = join(&room, "third", 64).await;
        room.leave(third.joined.you, 1).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        let seen = deltas(&mut first);
        assert!(seen.iter().any(|d| d.joined.iter().any(|a| a.id == second.joined.you)), "first learns of second: {seen:?}");
        // `second` saw `third`? No: third joined after it. `first` and
        // `second` both get third's departure, which is harmless for first.
        assert!(seen.iter().any(|d| d.left.contains(&third.joined.you)));
        let seen = deltas(&mut second);
        assert!(seen.iter().any(|d| d.left.contains(&third.joined.you)), "{seen:?}");
        assert_eq!(second.joined.avatars.iter().map(|a| a.id).collect::<Vec<_>>(), vec![first.joined.you]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_missed_deltas_gets_a_resync_with_every_join_and_leave() {
        let room = spawn_room("t", 40);
        let mut lagging = join(&room, "lagging", 1).await;
        let early = join(&room, "early", 64).await;
        // Fill the lagging member's one-slot queue, then change things.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let late = join(&room, "late", 64).await;
        room.leave(early.joined.you, 1).await;
        late.seat.poses.offer(1, 7, moved(5.0));
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Now it reads: the queued delta, then the resync.
        let seen = {
            let first = deltas(&mut lagging);
            tokio::time::sleep(Duration::from_millis(60)).await;
            let mut all = first;
            all.extend(deltas(&mut lagging));
            all
        };
        let resync = seen.last().expect("a resync arrived");
        assert!(resync.avatars.is_empty());
        assert_eq!(resync.joined.iter().map(|a| a.id).collect::<Vec<_>>(), vec![late.joined.you], "everyone there now, in full");
        assert!((resync.joined[0].pose.p[0] - 5.0).abs() < 1e-6, "with the latest pose");
        assert!(seen.iter().any(|d| d.left.contains(&early.joined.you)), "the departure it missed: {seen:?}");
    }

    fn welcome() -> ServerMessage {
        ServerMessage::Welcome(plaza_shared::messages::Welcome { user_id: "u_roamer".into(), session: "s_roamer".into(), server_time: 0, tick_hz: TICK_HZ })
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_member_resumes_its_seat_and_the_others_see_no_leave_or_join() {
        let room = spawn_room("t", 40);
        let mut watcher = join(&room, "watcher", 64).await;
        let roamer = join(&room, "roamer", 64).await;
        let you = roamer.joined.you;
        tokio::time::sleep(Duration::from_millis(60)).await;
        deltas(&mut watcher);

        // The socket's last pose got in just before it died: it counts.
        roamer.seat.poses.offer(1, 1, moved(9.0));
        room.detach(you, 1).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(room.members(), 2, "the seat is held");
        let held: Vec<f32> = deltas(&mut watcher).iter().flat_map(|d| d.avatars.iter().filter(|a| a.id == you).map(|a| a.pose.p[0])).collect();
        assert_eq!(held, vec![9.0], "the last pose before the drop, then stillness");

        let (new_link, mut rx, _kick) = link(64);
        let seat = room.resume(you, occupant("roamer", 2), new_link, welcome()).await.expect("resumed");
        assert_eq!(seat.you, you);
        let Some(Outbound::Resumed { welcome, state }) = rx.try_recv().ok() else { panic!("welcome and state queued as one") };
        assert!(matches!(welcome.as_ref(), ServerMessage::Welcome(_)), "welcome comes first");
        let ServerMessage::Joined(state) = state.as_ref() else { panic!("the full state: {state:?}") };
        assert_eq!(state.you, you);
        assert_eq!(state.avatars.iter().map(|a| a.id).collect::<Vec<_>>(), vec![watcher.joined.you], "the full state");

        // The old socket's late goodbye and poses are ignored; the new one's count.
        room.leave(you, 1).await;
        roamer.seat.poses.offer(1, 2, moved(1.0));
        seat.poses.offer(2, 3, moved(4.0));
        roamer.seat.poses.offer(1, 4, moved(7.0)); // later, but from the stale socket
        tokio::time::sleep(Duration::from_millis(60)).await;
        let seen = deltas(&mut watcher);
        assert!(seen.iter().all(|d| d.left.is_empty() && d.joined.is_empty()), "no leave or join storm: {seen:?}");
        let moves: Vec<f32> = seen.iter().flat_map(|d| d.avatars.iter().filter(|a| a.id == you).map(|a| a.pose.p[0])).collect();
        assert_eq!(moves, vec![4.0], "only the new socket moves the avatar");
        assert_eq!(room.members(), 2);
    }

    /// A socket that dies closes its queue before its gateway tells the room
    /// it dropped. A tick in between used to take the closed queue for a
    /// leave and let the seat go, so the resume that followed found none.
    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_waits_for_its_gateway_to_say_how_the_socket_ended() {
        let room = spawn_room("t", 40);
        let mut watcher = join(&room, "watcher", 64).await;
        let mover = join(&room, "mover", 64).await;
        let Probe { rx, joined, .. } = join(&room, "roamer", 64).await;
        let you = joined.you;
        drop(rx); // the writer is gone
        for i in 0..10 {
            mover.seat.poses.offer(1, i, moved(i as f32));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(room.members(), 3, "ticks with its queue closed keep the seat");
        room.detach(you, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (new_link, _rx, _kick) = link(64);
        let seat = room.resume(you, occupant("roamer", 2), new_link, welcome()).await.expect("the seat was held");
        assert_eq!(seat.you, you);
        assert!(deltas(&mut watcher).iter().all(|d| !d.left.contains(&you)), "nobody was told it left");

        // A closed queue whose gateway never says is let go in the end.
        let Probe { rx, joined: lost, .. } = join(&room, "lost", 64).await;
        drop(rx);
        for i in 0..SLOW_TICKS_BEFORE_CLOSE + 5 {
            mover.seat.poses.offer(1, u64::from(100 + i), moved(i as f32));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(deltas(&mut watcher).iter().any(|d| d.left.contains(&lost.you)), "let go after {SLOW_TICKS_BEFORE_CLOSE} ticks");
        assert_eq!(room.members(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_seat_not_resumed_within_the_window_is_let_go() {
        let room = spawn_room("t", 40);
        let mut watcher = join(&room, "watcher", 64).await;
        let roamer = join(&room, "roamer", 64).await;
        let you = roamer.joined.you;
        room.detach(you, 1).await;
        tokio::time::sleep(RESUME_WINDOW - Duration::from_secs(1)).await;
        assert!(deltas(&mut watcher).iter().all(|d| !d.left.contains(&you)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(deltas(&mut watcher).iter().any(|d| d.left.contains(&you)), "told it left once the window passed");
        assert_eq!(room.members(), 1);
        let (new_link, _rx, _kick) = link(64);
        assert_eq!(room.resume(you, occupant("roamer", 2), new_link, welcome()).await.err(), Some(JoinError::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn resume_needs_the_same_user_and_session_and_replaces_a_live_socket() {
        let room = spawn_room("t", 40);
        let mut roamer = join(&room, "roamer", 64).await;
        let you = roamer.joined.you;
        let thief = Occupant { user_id: "u_thief".into(), ..occupant("roamer", 9) };
        let (l, _rx, _k) = link(64);
        assert_eq!(room.resume(you, thief, l, welcome()).await.err(), Some(JoinError::NotFound));
        let wrong_session = Occupant { session: "s_other".into(), ..occupant("roamer", 9) };
        let (l, _rx, _k) = link(64);
        assert_eq!(room.resume(you, wrong_session, l, welcome()).await.err(), Some(JoinError::NotFound));
        assert!(roamer.kick.try_recv().is_err(), "the live socket is untouched");

        // Not detached yet (the server hasn't noticed the drop): the new socket wins.
        let (l, _rx, _k) = link(64);
        room.resume(you, occupant("roamer", 2), l, welcome()).await.expect("resumed");
        assert_eq!(roamer.kick.try_recv().map(|k| matches!(k, Kick::Close(1000, _))), Ok(true));
    }

    #[tokio::test]
    async fn the_directory_finds_a_held_seat_until_the_room_lets_it_go() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let directory = Directory::start(store, false).await.unwrap();
        let room = directory.resolve("square", true).await.unwrap();
        let (l, _rx, _k) = link(64);
        let seat = room.join(occupant("ada", 1), Pose::default(), l).await.unwrap();
        directory.remember("s_ada".into(), room.clone(), seat.clone()).await;
        assert_eq!(directory.find_seat("s_ada").await.map(|(r, a)| (r.id, a)), Some((room.id.clone(), seat.you)));
        assert!(directory.find_seat("s_nobody").await.is_none());
        room.leave(seat.you, 1).await;
        for _ in 0..100 {
            if directory.find_seat("s_ada").await.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the seat was let go but the directory still finds it");
    }
}
