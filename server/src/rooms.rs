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
//! in a row is closed with 4009.

use crate::auth::random_token;
use crate::store::{Store, StoreError};
use plaza_shared::limits::{DEFAULT_ROOM_CAPACITY, TICK_HZ, close};
use plaza_shared::messages::{AvatarId, AvatarInfo, AvatarPose, Delta, Joined, ServerMessage};
use plaza_shared::pose::Pose;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Ticks a member may miss in a row before it is closed as too slow (2 s).
pub const SLOW_TICKS_BEFORE_CLOSE: u32 = 40;
/// Commands queued to one room.
const ROOM_COMMAND_QUEUE: usize = 1024;
const DIRECTORY_QUEUE: usize = 256;

/// What the room sends a member's socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    Message(Arc<ServerMessage>),
    /// Close the socket with this code.
    Close(u16, &'static str),
}

/// A member's way back to its socket: the bounded outbound queue and a
/// separate one-slot channel to close it even when that queue is full.
#[derive(Debug, Clone)]
pub struct MemberLink {
    pub outbound: mpsc::Sender<Outbound>,
    pub kick: mpsc::Sender<(u16, &'static str)>,
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
}

#[derive(Debug)]
pub enum RoomCommand {
    Join { user_id: String, name: String, pose: Pose, link: MemberLink, reply: oneshot::Sender<Result<Joined, JoinError>> },
    Leave { avatar: AvatarId },
    Pose { avatar: AvatarId, t: u64, pose: Pose },
    /// A stored chat message, to every member (the sender included).
    Chat(Arc<ServerMessage>),
}

/// A cheap handle to a room task.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub capacity: u32,
    members: Arc<AtomicU32>,
    tx: mpsc::Sender<RoomCommand>,
}

impl RoomHandle {
    pub fn members(&self) -> u32 {
        self.members.load(Ordering::Relaxed)
    }

    pub async fn join(&self, user_id: String, name: String, pose: Pose, link: MemberLink) -> Result<Joined, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(RoomCommand::Join { user_id, name, pose, link, reply }).await.map_err(|_| JoinError::Closed)?;
        answer.await.map_err(|_| JoinError::Closed)?
    }

    /// Fire and forget: a full room queue drops the pose (a newer one follows).
    pub fn pose(&self, avatar: AvatarId, t: u64, pose: Pose) -> bool {
        self.tx.try_send(RoomCommand::Pose { avatar, t, pose }).is_ok()
    }

    pub async fn chat(&self, message: plaza_shared::messages::ChatMessage) {
        let _ = self.tx.send(RoomCommand::Chat(Arc::new(ServerMessage::Chat(message)))).await;
    }

    pub async fn leave(&self, avatar: AvatarId) {
        let _ = self.tx.send(RoomCommand::Leave { avatar }).await;
    }
}

struct Member {
    user_id: String,
    name: String,
    pose: Pose,
    /// Sender clock of the latest pose.
    t: Option<u64>,
    moved: bool,
    link: MemberLink,
    /// Ticks missed in a row; >0 means the next delivery is a resync.
    missed: u32,
    /// Avatars that left while this member was missing deltas.
    missed_left: Vec<AvatarId>,
}

impl Member {
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
}

pub fn spawn_room(name: &str, capacity: u32) -> RoomHandle {
    spawn_room_with_id(&format!("r_{}", random_token(9)), name, capacity)
}

/// A room task for a room that already has an id (one from the store).
pub fn spawn_room_with_id(id: &str, name: &str, capacity: u32) -> RoomHandle {
    let (tx, rx) = mpsc::channel(ROOM_COMMAND_QUEUE);
    let handle = RoomHandle {
        id: id.into(),
        name: name.into(),
        capacity,
        members: Arc::new(AtomicU32::new(0)),
        tx,
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
    };
    let span = tracing::info_span!("room", room_id = %handle.id, room_name = %handle.name);
    tokio::spawn(room.run(rx).instrument(span));
    handle
}

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomCommand>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / u64::from(TICK_HZ)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = ticker.tick() => self.tick(),
            }
        }
    }

    fn handle(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::Join { user_id, name, pose, link, reply } => {
                if self.members.len() as u32 >= self.capacity {
                    let _ = reply.send(Err(JoinError::Full { capacity: self.capacity }));
                    return;
                }
                let id = self.next_avatar;
                self.next_avatar += 1;
                let avatars = self.members.iter().map(|(&other, m)| m.info(other)).collect();
                let joined = Joined { room: self.id.to_string(), room_name: self.name.to_string(), you: id, tick: self.tick, avatars };
                // The room sends `joined` itself, so it is queued before any
                // delta that mentions the newcomer.
                let sent = link.outbound.try_send(Outbound::Message(Arc::new(ServerMessage::Joined(joined.clone()))));
                if sent.is_err() || reply.send(Ok(joined)).is_err() {
                    return; // the socket is gone or not reading
                }
                tracing::info!(avatar = id, user_id = %user_id, "joined");
                self.members.insert(id, Member { user_id, name, pose, t: None, moved: false, link, missed: 0, missed_left: Vec::new() });
                self.joined.push(id);
                self.set_members();
            }
            RoomCommand::Leave { avatar } => self.remove(avatar),
            RoomCommand::Chat(message) => {
                // A member whose queue is full misses it live (it is in the
                // history); one that stays full is closed by the tick.
                for m in self.members.values() {
                    let _ = m.link.outbound.try_send(Outbound::Message(message.clone()));
                }
            }
            RoomCommand::Pose { avatar, t, pose } => {
                if let Some(m) = self.members.get_mut(&avatar) {
                    m.pose = pose;
                    m.t = Some(t);
                    m.moved = true;
                }
            }
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
        }
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
        let started = std::time::Instant::now();
        self.tick_inner();
        metrics::histogram!(crate::metrics::TICK_DURATION).record(started.elapsed().as_secs_f64());
        if self.tick.is_multiple_of(u64::from(TICK_HZ)) && !self.members.is_empty() {
            metrics::histogram!(crate::metrics::ROOM_USERS).record(self.members.len() as f64);
        }
    }

    fn tick_inner(&mut self) {
        self.tick += 1;
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
        let delta = changed.then(|| Arc::new(ServerMessage::Delta(Delta { tick: self.tick, avatars: moved, joined, left: left.clone() })));

        let mut too_slow = Vec::new();
        let ids: Vec<AvatarId> = self.members.keys().copied().collect();
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
                Arc::new(ServerMessage::Delta(Delta { tick: self.tick, avatars: vec![], joined: others, left: missed_left }))
            } else if let Some(delta) = &delta {
                delta.clone()
            } else {
                continue;
            };
            let m = self.members.get_mut(&id).expect("member");
            match m.link.outbound.try_send(Outbound::Message(message)) {
                Ok(()) => m.missed = 0,
                Err(mpsc::error::TrySendError::Full(Outbound::Message(msg))) => {
                    metrics::counter!(crate::metrics::WS_DROPPED, "reason" => "slow_consumer").increment(1);
                    m.missed += 1;
                    if let ServerMessage::Delta(d) = msg.as_ref() {
                        if resync { m.missed_left.extend(&d.left) } else { m.missed_left.extend(&left) }
                    }
                    if m.missed >= SLOW_TICKS_BEFORE_CLOSE {
                        too_slow.push(id);
                    }
                }
                Err(_) => too_slow.push(id), // socket gone; its gateway will also tell us
            }
        }
        for id in too_slow {
            if let Some(m) = self.members.get(&id).filter(|m| m.missed >= SLOW_TICKS_BEFORE_CLOSE) {
                tracing::warn!(avatar = id, ticks = m.missed, "closing a member too slow to keep up");
                let _ = m.link.kick.try_send((close::TOO_SLOW, "too slow to keep up"));
            }
            self.remove(id);
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
}

impl Directory {
    /// Starts the directory with every room the store remembers.
    pub async fn start(store: Store) -> Result<Directory, StoreError> {
        let mut by_id: HashMap<Arc<str>, RoomHandle> = HashMap::new();
        let mut by_name: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        for (id, name, capacity) in store.rooms().await? {
            let handle = spawn_room_with_id(&id, &name, capacity);
            by_name.entry(handle.name.clone()).or_insert_with(|| handle.id.clone());
            by_id.insert(handle.id.clone(), handle);
        }
        let (tx, mut rx) = mpsc::channel::<DirectoryCommand>(DIRECTORY_QUEUE);
        // Rooms are created rarely, so waiting on the store here is fine;
        // joins of existing rooms never touch it.
        let create_room = move |name: String, capacity: u32| {
            let store = store.clone();
            async move {
                let handle = spawn_room(&name, capacity);
                match store.insert_room(&handle.id, &name, capacity).await {
                    Ok(()) => Ok(handle),
                    Err(e) => {
                        tracing::error!(cause = %e, "room not stored");
                        Err(JoinError::Unavailable)
                    }
                }
            }
        };
        tokio::spawn(async move {
            while let Some(command) = rx.recv().await {
                match command {
                    DirectoryCommand::Resolve { room, create, reply } => {
                        let found = by_id.get(room.as_str()).or_else(|| by_name.get(room.as_str()).and_then(|id| by_id.get(id))).cloned();
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

    struct Probe {
        rx: mpsc::Receiver<Outbound>,
        kick: mpsc::Receiver<(u16, &'static str)>,
        joined: Joined,
    }

    async fn join(room: &RoomHandle, name: &str, queue: usize) -> Probe {
        let (tx, rx) = mpsc::channel(queue);
        let (kick_tx, kick) = mpsc::channel(1);
        let joined = room.join(format!("u_{name}"), name.into(), Pose::default(), MemberLink { outbound: tx, kick: kick_tx }).await.unwrap();
        Probe { rx, kick, joined }
    }

    fn deltas(probe: &mut Probe) -> Vec<Delta> {
        let mut out = Vec::new();
        while let Ok(Outbound::Message(m)) = probe.rx.try_recv() {
            if let ServerMessage::Delta(d) = m.as_ref() {
                out.push(d.clone());
            }
        }
        out
    }

    fn moved(x: f32) -> Pose {
        Pose { p: [x, 0.0, 0.0], ..Pose::default() }
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
            room.pose(mover.joined.you, u64::from(i), moved(i as f32));
            tokio::time::sleep(Duration::from_millis(25)).await;
            fast_deltas.extend(deltas(&mut fast));
        }
        assert_eq!(slow.kick.try_recv().map(|k| k.0), Ok(close::TOO_SLOW));
        let with_moves = fast_deltas.iter().filter(|d| d.avatars.iter().any(|a| a.id == mover.joined.you)).count() as u32;
        assert!(with_moves >= ticks - 2, "the others kept their tick: {with_moves} of {ticks}");
        assert_eq!(room.members(), 2, "the slow member is gone");
        assert!(fast_deltas.iter().any(|d| d.left == vec![slow.joined.you]), "the others were told it left");
    }

    #[tokio::test(start_paused = true)]
    async fn members_joining_in_the_same_tick_learn_of_each_other() {
        let room = spawn_room("t", 40);
        // Both join before the first tick fires.
        let mut first = join(&room, "first", 64).await;
        let mut second = join(&room, "second", 64).await;
        let third = join(&room, "third", 64).await;
        room.leave(third.joined.you).await;
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
        room.leave(early.joined.you).await;
        room.pose(late.joined.you, 7, moved(5.0));
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
}
