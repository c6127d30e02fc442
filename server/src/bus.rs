//! Instances sharing rooms through Redis (`--redis-url`).
//!
//! Each room runs on one instance at a time, the one holding its lease in
//! Redis; a socket whose room runs elsewhere is relayed there by its own
//! instance over an internal WebSocket (crate::relay), so room state keeps
//! one owner and voice reaches the owner's SFU. Redis keeps only small,
//! expiring keys:
//!
//! - `plaza:instance:{id}`: the instance's advertised URL, renewed every
//!   [`RENEW_EVERY`], gone [`LEASE_TTL`] after the instance stops renewing.
//! - `plaza:room:{room id}:owner`: the instance running the room (the
//!   lease), renewed the same way while the instance runs; given up when
//!   it drains, and taken over by another instance when the owner stops
//!   answering.
//! - `plaza:room:{room id}:users`: how many are in the room, written by
//!   its owner with each renewal, for every instance's room list.
//! - `plaza:seat:{session}`: the instance holding a session's seat, so a
//!   resume arriving at any instance finds it.

use redis::aio::ConnectionManager;
use crate::rooms::RoomHandle;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// How long a lease or an instance's address outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often leases and the instance's address are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a seat's owner is remembered: while the socket is open, and
/// the room's resume window after it drops ([`Bus::seat_dropped`]).
const SEAT_TTL: Duration = Duration::from_secs(3600);
/// Longer than the room's resume window ([`plaza_shared::limits::RESUME_WINDOW_MS`]).
const DROPPED_SEAT_TTL: Duration = Duration::from_millis(plaza_shared::limits::RESUME_WINDOW_MS + 5_000);
/// A Redis command that takes longer fails: a join waits on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Every lease this instance holds, in one round trip: KEYS are each
/// room's owner and users keys in pairs, ARGV the instance, the TTL (ms)
/// and each room's user count. A lease that still names this instance is
/// extended; one nobody holds (Redis lost it) is taken back; one another
/// instance holds is lost (0 in the answer). A kept room's count is
/// written beside it.
static RENEW_ALL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local kept = {}
        for i = 1, #KEYS, 2 do
            local owner = redis.call('get', KEYS[i])
            local ok = 0
            if owner == ARGV[1] then
                redis.call('pexpire', KEYS[i], ARGV[2])
                ok = 1
            elseif not owner then
                redis.call('set', KEYS[i], ARGV[1], 'PX', ARGV[2])
                ok = 1
            end
            if ok == 1 then
                redis.call('set', KEYS[i + 1], ARGV[2 + (i + 1) / 2], 'PX', ARGV[2])
            end
            kept[#kept + 1] = ok
        end
        return kept",
    )
});
/// Deletes each of KEYS that still names this instance (ARGV[1]).
static RELEASE_ALL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local n = 0
        for _, key in ipairs(KEYS) do
            if redis.call('get', key) == ARGV[1] then
                redis.call('del', key)
                n = n + 1
            end
        end
        return n",
    )
});
/// Moves a lease from an instance that stopped answering to this one,
/// only if it still names that instance.
static TAKE_OVER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new("if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end")
});

/// The messages carry their cause; see crate::RunError on why no `source`.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bad Redis URL {url:?} ({cause}); use redis://HOST:PORT[/DB]")]
    Url { url: String, cause: String },
    #[error("Redis at {url} doesn't answer: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("Redis command failed: {0}")]
    Command(String),
}

impl From<redis::RedisError> for BusError {
    fn from(e: redis::RedisError) -> Self {
        BusError::Command(e.to_string())
    }
}

/// Where a room runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this instance.
    Here,
    /// On another instance, reachable at `url` (`http://host:port`).
    There { instance: Arc<str>, url: String },
}

/// This instance's link to Redis. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    redis: ConnectionManager,
    /// This instance's id: random, new at every start.
    pub instance: Arc<str>,
    advertise: Arc<str>,
    /// Rooms whose lease this instance holds, by id.
    leases: Arc<Mutex<HashMap<Arc<str>, RoomHandle>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("instance", &self.instance).field("advertise", &self.advertise).finish_non_exhaustive()
    }
}

fn instance_key(id: &str) -> String {
    format!("plaza:instance:{id}")
}

fn owner_key(room: &str) -> String {
    format!("plaza:room:{room}:owner")
}

fn users_key(room: &str) -> String {
    format!("plaza:room:{room}:users")
}

fn seat_key(session: &str) -> String {
    format!("plaza:seat:{session}")
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Bus {
    /// Connects, checks Redis answers, and announces this instance at
    /// `advertise` (the URL other instances reach it at).
    pub async fn connect(url: &str, advertise: &str) -> Result<Bus, BusError> {
        let client = redis::Client::open(url).map_err(|e| BusError::Url { url: url.to_owned(), cause: e.to_string() })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        let unreachable = |e: redis::RedisError| BusError::Unreachable { url: url.to_owned(), cause: plaza_shared::errors::root_cause(&e).to_string() };
        let redis = client.get_connection_manager_with_config(config).await.map_err(unreachable)?;
        let bus = Bus { redis, instance: crate::auth::random_token(9).into(), advertise: advertise.into(), leases: Arc::default() };
        bus.ping().await.map_err(|e| BusError::Unreachable { url: url.to_owned(), cause: e.to_string() })?;
        bus.announce().await?;
        Ok(bus)
    }

    fn conn(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// For `/ready`.
    pub async fn ping(&self) -> Result<(), BusError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn announce(&self) -> Result<(), BusError> {
        let _: () = redis::cmd("SET").arg(instance_key(&self.instance)).arg(&*self.advertise).arg("PX").arg(millis(LEASE_TTL)).query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Where `room` runs: here when this instance holds its lease or takes
    /// it now (no instance does), else the owner's address.
    pub async fn claim(&self, handle: &RoomHandle) -> Result<Owner, BusError> {
        let room = &*handle.id;
        let key = owner_key(room);
        let set: Option<String> = redis::cmd("SET").arg(&key).arg(&*self.instance).arg("NX").arg("PX").arg(millis(LEASE_TTL)).query_async(&mut self.conn()).await?;
        let owner: Option<String> = match set {
            Some(_) => Some(self.instance.to_string()),
            None => redis::cmd("GET").arg(&key).query_async(&mut self.conn()).await?,
        };
        match owner {
            // The lease expired between the two: try again.
            None => Box::pin(self.claim(handle)).await,
            Some(owner) if *owner == *self.instance => {
                self.hold(handle);
                Ok(Owner::Here)
            }
            Some(owner) => match self.instance_url(&owner).await? {
                Some(url) => Ok(Owner::There { instance: owner.into(), url }),
                // Its instance stopped renewing: take the room over.
                None if self.take_over(handle, &owner).await? => Ok(Owner::Here),
                None => Box::pin(self.claim(handle)).await,
            },
        }
    }

    /// Takes `room`'s lease from `from`, an owner that stopped answering;
    /// false when the lease no longer names it (someone else moved first).
    pub async fn take_over(&self, handle: &RoomHandle, from: &str) -> Result<bool, BusError> {
        let moved: i64 = TAKE_OVER.key(owner_key(&handle.id)).arg(from).arg(&*self.instance).arg(millis(LEASE_TTL)).invoke_async(&mut self.conn()).await?;
        if moved == 1 {
            tracing::warn!(room_id = %handle.id, from, "took over a room whose instance stopped answering");
            metrics::counter!(crate::metrics::ROOM_TAKEOVERS).increment(1);
            self.hold(handle);
        }
        Ok(moved == 1)
    }

    fn hold(&self, handle: &RoomHandle) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.entry(handle.id.clone()).or_insert_with(|| handle.clone());
            metrics::gauge!(crate::metrics::ROOM_LEASES).set(leases.len() as f64);
        }
    }

    /// How many are in each of `rooms` (ids), as their owners last said;
    /// 0 for a room no instance runs.
    pub async fn users(&self, rooms: &[&str]) -> Vec<u32> {
        if rooms.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = rooms.iter().map(|r| users_key(r)).collect();
        let counts: Result<Vec<Option<u32>>, _> = redis::cmd("MGET").arg(keys).query_async(&mut self.conn()).await;
        match counts {
            Ok(counts) => counts.into_iter().map(Option::unwrap_or_default).collect(),
            Err(e) => {
                metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
                tracing::warn!(cause = %e, "room user counts not read from Redis");
                vec![0; rooms.len()]
            }
        }
    }

    /// Whether this instance runs room `id`.
    pub fn holds(&self, id: &str) -> bool {
        self.leases.lock().is_ok_and(|l| l.contains_key(id))
    }

    /// The rooms this instance runs.
    pub fn held(&self) -> Vec<RoomHandle> {
        self.leases.lock().map(|l| l.values().cloned().collect()).unwrap_or_default()
    }

    /// The URL instance `id` advertised, while it is alive.
    pub async fn instance_url(&self, id: &str) -> Result<Option<String>, BusError> {
        Ok(redis::cmd("GET").arg(instance_key(id)).query_async(&mut self.conn()).await?)
    }

    /// Records that `owner` holds `session`'s seat (on join or resume).
    pub async fn remember_seat(&self, session: &str, owner: &str) {
        let done: Result<(), _> = redis::cmd("SET").arg(seat_key(session)).arg(owner).arg("PX").arg(millis(SEAT_TTL)).query_async(&mut self.conn()).await;
        if let Err(e) = done {
            tracing::warn!(cause = %e, "seat not recorded in Redis; a resume at another instance won't find it");
        }
    }

    /// The socket dropped: its seat is held for the resume window only.
    pub async fn seat_dropped(&self, session: &str) {
        let _: Result<(), _> = redis::cmd("PEXPIRE").arg(seat_key(session)).arg(millis(DROPPED_SEAT_TTL)).query_async(&mut self.conn()).await;
    }

    /// The session left its room.
    pub async fn forget_seat(&self, session: &str) {
        let _: Result<(), _> = redis::cmd("DEL").arg(seat_key(session)).query_async(&mut self.conn()).await;
    }

    /// The instance holding `session`'s seat, if one was recorded.
    pub async fn seat_owner(&self, session: &str) -> Option<String> {
        redis::cmd("GET").arg(seat_key(session)).query_async(&mut self.conn()).await.ok().flatten()
    }

    /// Renews this instance's address and leases every [`RENEW_EVERY`]
    /// until `closing`.
    pub fn spawn_renewals(&self, mut closing: tokio::sync::watch::Receiver<bool>) {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RENEW_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => bus.renew().await,
                    _ = async { let _ = closing.wait_for(|c| *c).await; } => break,
                }
            }
        });
    }

    async fn renew(&self) {
        if let Err(e) = self.announce().await {
            metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
            tracing::warn!(cause = %e, "instance address not renewed in Redis");
        }
        let held = self.held();
        if held.is_empty() {
            return;
        }
        let mut renew = RENEW_ALL.prepare_invoke();
        for handle in &held {
            renew.key(owner_key(&handle.id)).key(users_key(&handle.id));
        }
        renew.arg(&*self.instance).arg(millis(LEASE_TTL));
        for handle in &held {
            renew.arg(handle.members());
        }
        let kept: Vec<i64> = match renew.invoke_async(&mut self.conn()).await {
            Ok(kept) => kept,
            Err(e) => {
                metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
                tracing::warn!(rooms = held.len(), cause = %e, "room leases not renewed in Redis");
                return;
            }
        };
        for (handle, _) in held.iter().zip(kept).filter(|(_, kept)| *kept != 1) {
            // Another instance took the room over after missed renewals:
            // two copies of it now. This one's members are closed, and
            // come back to the one that runs.
            tracing::error!(room_id = %handle.id, "lost this room's lease to another instance; its members here are sent there");
            metrics::counter!(crate::metrics::ROOM_LEASES_LOST).increment(1);
            if let Ok(mut leases) = self.leases.lock() {
                leases.remove(&handle.id);
                metrics::gauge!(crate::metrics::ROOM_LEASES).set(leases.len() as f64);
            }
            handle.evict().await;
        }
    }

    /// Gives up every lease and the instance's address (draining): the
    /// rooms' next joins start them on another instance.
    pub async fn release_all(&self) {
        let rooms: Vec<Arc<str>> = self.leases.lock().map(|mut l| l.drain().map(|(id, _)| id).collect()).unwrap_or_default();
        metrics::gauge!(crate::metrics::ROOM_LEASES).set(0.0);
        if !rooms.is_empty() {
            let mut release = RELEASE_ALL.prepare_invoke();
            for room in &rooms {
                release.key(owner_key(room));
            }
            let released: Result<i64, _> = release.arg(&*self.instance).invoke_async(&mut self.conn()).await;
            if let Err(e) = released {
                tracing::warn!(rooms = rooms.len(), cause = %e, "room leases not released; they expire by themselves");
            }
        }
        let _: Result<(), _> = redis::cmd("DEL").arg(instance_key(&self.instance)).query_async(&mut self.conn()).await;
        tracing::info!(rooms = rooms.len(), "room leases released");
    }
}
