//! Durable storage (sqlx): chat messages, rooms and refresh tokens. SQLite
//! by default (a file in the data dir, WAL journal), Postgres when the URL
//! says `postgres://`.
//!
//! A chat message is stored before it is acknowledged; the client's message
//! id makes a retry idempotent (the same row comes back, no duplicate).
//!
//! Chat inserts go through one writer task that commits whatever is waiting
//! as one multi-row statement (group commit). One statement a message took a
//! pool connection and two round trips to SQLite's thread each; on a busy
//! machine (2,000 load-test users, 67 chats a second, both cores saturated)
//! that queue outgrew the 5 s acquire timeout and chats failed with
//! `server_internal`. Batches grow with the load instead.

use plaza_shared::messages::ChatMessage;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most chat messages committed in one statement (6 parameters each: far
/// below SQLite's and Postgres's parameter limits).
const CHAT_BATCH: usize = 64;
/// Chat messages waiting for the writer; a full queue makes senders wait.
const CHAT_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL `{0}` is not sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// Not a `source`: the message has it, and a printed chain (`{:#}`)
    /// would say it twice.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("the store's writer has stopped")]
    WriterGone,
    /// Another instance held the schema's lock for the whole wait.
    #[error("another instance held the schema's lock (a Postgres advisory lock, key {SCHEMA_LOCK_KEY}) for {wait}s; is one stuck starting? {0}", wait = SCHEMA_BUSY_WAIT.as_secs())]
    SchemaLock(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    chats: mpsc::Sender<PendingChat>,
    refresh_grants: mpsc::Sender<PendingRefresh>,
}

/// Most refresh grants stored in one statement (4 parameters each).
const REFRESH_BATCH: usize = 128;
/// Grants waiting for their writer; a full queue makes sign-ins wait.
const REFRESH_QUEUE: usize = 1024;

/// A refresh grant on its way to its writer.
#[derive(Debug)]
struct PendingRefresh {
    token_hash: String,
    grant: RefreshGrant,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A chat message on its way to the writer task.
#[derive(Debug)]
struct PendingChat {
    room_id: String,
    user_id: String,
    name: String,
    client_id: String,
    text: String,
    ts: u64,
    reply: oneshot::Sender<Result<ChatMessage, StoreError>>,
}

impl PendingChat {
    fn key(&self) -> ChatKey {
        (self.room_id.clone(), self.user_id.clone(), self.client_id.clone())
    }
}

/// How long making the schema waits for another process that holds the
/// database (SQLite) or the schema's lock (Postgres): instances that share
/// a store may all start at once.
const SCHEMA_BUSY_WAIT: Duration = Duration::from_secs(15);

/// One idempotent schema statement, retried while SQLite says the
/// database is busy. The busy timeout doesn't cover everything here:
/// switching a new file to WAL takes an exclusive lock that SQLite does not
/// wait for, so a second instance opening the same new file at the same
/// moment got "database is locked" and failed to start.
async fn execute_schema(conn: &mut AnyConnection, sql: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + SCHEMA_BUSY_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match sqlx::query(sql).execute(&mut *conn).await {
            Err(sqlx::Error::Database(e)) if is_busy(e.as_ref()) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(cause = %e, "store busy while making its schema; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            result => return result.map(drop).map_err(StoreError::from),
        }
    }
}

/// The Postgres advisory lock that instances making the schema take in
/// turn (any constant the database's other users don't take).
const SCHEMA_LOCK_KEY: i64 = 0x70_6c_61_7a_61; // "plaza" in ASCII

/// The tables and index, made where missing; every statement idempotent.
async fn make_schema(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    if backend == Backend::Sqlite {
        // WAL (kept in the file): readers don't block the writer; a
        // killed process loses nothing that was committed.
        execute_schema(conn, "PRAGMA journal_mode = WAL").await?;
    }
    execute_schema(conn, &chat_schema(backend)).await?;
    execute_schema(conn, ROOMS_SCHEMA).await?;
    // Names find rooms; instances sharing the store (`--redis-url`) may
    // make one at the same moment, and the index keeps it one room.
    // A database made before the index may hold a duplicate name: then
    // the index can't be made, and rooms work as before.
    if let Err(e) = execute_schema(conn, "CREATE UNIQUE INDEX IF NOT EXISTS rooms_by_name ON rooms (name)").await {
        tracing::warn!(cause = %e, "rooms' names not made unique (two rooms share a name); instances that share this store could each make a room of one name");
    }
    execute_schema(conn, REFRESH_SCHEMA).await
}

/// SQLITE_BUSY, or one of its extended codes (the low byte is 5).
fn is_busy(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| code & 0xff == 5)
}

/// The chat table; only the auto-increment key is spelled per backend.
fn chat_schema(backend: Backend) -> String {
    let key = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS chat_messages (
            seq {key},
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            client_id TEXT NOT NULL,
            name TEXT NOT NULL,
            text TEXT NOT NULL,
            ts BIGINT NOT NULL,
            UNIQUE (room_id, user_id, client_id)
        )"
    )
}

const ROOMS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    capacity BIGINT NOT NULL
)";

/// Live refresh tokens, by the token's SHA-256 (base64url): a leaked table
/// reveals no usable token. Kept here, not in memory, so a restart doesn't
/// sign everyone out at their next refresh.
const REFRESH_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    expires_at BIGINT NOT NULL
)";

/// Who a refresh token belongs to, and until when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshGrant {
    pub user_id: String,
    pub name: String,
    pub expires_at: u64,
}

impl Store {
    /// Connects and creates the schema. `sqlite::memory:` is one private
    /// in-memory database (tests).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let memory = url.contains(":memory:");
        let url = match backend {
            // Create the file if missing.
            Backend::Sqlite if !memory && !url.contains("mode=") => format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' }),
            _ => url.to_owned(),
        };
        let sqlite = backend == Backend::Sqlite;
        // One connection first, for its error: the pool retries a refused or
        // failed connect until its timeout and then says only "pool timed
        // out", where this says "connection refused" or "password
        // authentication failed" at once.
        if !memory {
            sqlx::Connection::close(<sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?).await?;
        }
        let pool = AnyPoolOptions::new()
            // Each in-memory SQLite connection would be its own database;
            // a file has one writer at a time anyway.
            .max_connections(match (memory, sqlite) {
                (true, _) => 1,
                (false, true) => 4,
                (false, false) => 8,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Per connection (a PRAGMA run on the pool reaches
                        // one): wait for the writer instead of failing.
                        sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout = 5000").await?;
                    }
                    if sqlite && !memory {
                        // A bounded page cache, so memory stays flat as the
                        // chat table grows (the soak saw RSS creep with
                        // SQLite's default 2 MB per connection). Not for an
                        // in-memory database: it lives in that cache, and
                        // would be full at the bound.
                        sqlx::Executor::execute(&mut *conn, "PRAGMA cache_size = -512").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let mut conn = pool.acquire().await?;
        if backend == Backend::Postgres {
            // Postgres's CREATE … IF NOT EXISTS is not safe against itself:
            // instances sharing a new database that start at once failed
            // on a duplicate key in its catalog. One makes the schema at a
            // time; the lock is the connection's, freed with it on error.
            // The wait is bounded like SQLite's: an instance stuck holding
            // it fails the next one's start with "lock timeout", no hang.
            sqlx::query(&format!("SET lock_timeout = '{}s'", SCHEMA_BUSY_WAIT.as_secs())).execute(&mut *conn).await?;
            sqlx::query(&format!("SELECT 1 FROM pg_advisory_lock({SCHEMA_LOCK_KEY})")).execute(&mut *conn).await.map_err(StoreError::SchemaLock)?;
        }
        let made = make_schema(&mut conn, backend).await;
        if backend == Backend::Postgres {
            sqlx::query(&format!("SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})")).execute(&mut *conn).await?;
            sqlx::query("RESET lock_timeout").execute(&mut *conn).await?;
        }
        made?;
        drop(conn);
        let (chats, queue) = mpsc::channel(CHAT_QUEUE);
        tokio::spawn(write_chats(pool.clone(), queue));
        let (refresh_grants, queue) = mpsc::channel(REFRESH_QUEUE);
        tokio::spawn(write_refresh_grants(pool.clone(), queue));
        Ok(Store { pool, chats, refresh_grants })
    }

    /// Answers when the database does (for `/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool: every later query fails (tests of `/ready`).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Remembers a room so it (and its chat history) outlives a restart.
    pub async fn insert_room(&self, id: &str, name: &str, capacity: u32) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO rooms (id, name, capacity) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(i64::from(capacity))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The room with this id, or else this name: (id, name, capacity).
    pub async fn room(&self, id_or_name: &str) -> Result<Option<(String, String, u32)>, StoreError> {
        let row = sqlx::query("SELECT id, name, capacity FROM rooms WHERE id = $1 UNION ALL SELECT id, name, capacity FROM rooms WHERE name = $1 LIMIT 1")
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("id")?, r.try_get("name")?, r.try_get::<i64, _>("capacity")?.clamp(1, i64::from(u32::MAX)) as u32)))
            .transpose()
            .map_err(|e: sqlx::Error| StoreError::from(e))
    }

    /// Every room ever created: (id, name, capacity).
    pub async fn rooms(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        let rows = sqlx::query("SELECT id, name, capacity FROM rooms").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?, r.try_get::<i64, _>("capacity")?.clamp(1, i64::from(u32::MAX)) as u32)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Keeps a refresh token's grant under the token's hash.
    pub async fn insert_refresh(&self, token_hash: &str, grant: &RefreshGrant) -> Result<(), StoreError> {
        let (reply, stored) = oneshot::channel();
        let pending = PendingRefresh { token_hash: token_hash.into(), grant: grant.clone(), reply };
        self.refresh_grants.send(pending).await.map_err(|_| StoreError::WriterGone)?;
        stored.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Takes the grant of a refresh token: deleted in the same statement
    /// that reads it, so of two uses at once only one gets it. None when
    /// unknown, used or expired at `now`.
    pub async fn take_refresh(&self, token_hash: &str, now: u64) -> Result<Option<RefreshGrant>, StoreError> {
        let row = sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING user_id, name, expires_at")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let grant = RefreshGrant { user_id: row.try_get("user_id")?, name: row.try_get("name")?, expires_at: row.try_get::<i64, _>("expires_at")?.max(0) as u64 };
        Ok((grant.expires_at > now).then_some(grant))
    }

    /// Forgets the refresh tokens expired at `now`; returns how many.
    pub async fn prune_refresh(&self, now: u64) -> Result<u64, StoreError> {
        prune_refresh(&self.pool, now).await
    }

    /// Stores a chat message (or finds the one this client already stored
    /// under that id) and returns it as the room will see it.
    pub async fn insert_chat(&self, room_id: &str, user_id: &str, name: &str, client_id: &str, text: &str, ts: u64) -> Result<ChatMessage, StoreError> {
        let (reply, stored) = oneshot::channel();
        let pending = PendingChat { room_id: room_id.into(), user_id: user_id.into(), name: name.into(), client_id: client_id.into(), text: text.into(), ts, reply };
        self.chats.send(pending).await.map_err(|_| StoreError::WriterGone)?;
        stored.await.map_err(|_| StoreError::WriterGone)?
    }

    /// The room's latest `limit` messages, oldest first.
    pub async fn history(&self, room_id: &str, limit: u32) -> Result<Vec<ChatMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id, user_id, name, text, ts FROM chat_messages WHERE room_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(room_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(ChatMessage {
                    id: row.try_get("client_id")?,
                    room: room_id.to_owned(),
                    from: row.try_get("user_id")?,
                    name: row.try_get("name")?,
                    text: row.try_get("text")?,
                    ts: row.try_get::<i64, _>("ts")? as u64,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.reverse();
        Ok(out)
    }
}

/// `($1, $2), ($3, $4)`: the placeholders of `rows` rows of `per_row`
/// values each, for one multi-row statement.
fn placeholders(rows: usize, per_row: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", (1..=per_row).map(|col| format!("${}", row * per_row + col)).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Unix seconds as the BIGINT column holds them.
fn unix_to_db(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The chat writer: commits what is waiting, up to [`CHAT_BATCH`] at a
/// time, and answers each sender. Ends when every `Store` is dropped.
async fn write_chats(pool: AnyPool, mut queue: mpsc::Receiver<PendingChat>) {
    let mut batch = Vec::with_capacity(CHAT_BATCH);
    while queue.recv_many(&mut batch, CHAT_BATCH).await > 0 {
        commit_chats(&pool, &mut batch).await;
    }
}

/// How often expired refresh tokens are forgotten (and once at start).
const REFRESH_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The refresh-token writer: stores the grants waiting, up to
/// [`REFRESH_BATCH`] in one statement (a burst of sign-ins is one commit,
/// not one each: 2,000 sign-ins in 4 s read p99 84 ms one commit each), and
/// hourly forgets expired ones. Ends when every `Store` is dropped.
async fn write_refresh_grants(pool: AnyPool, mut queue: mpsc::Receiver<PendingRefresh>) {
    let mut batch = Vec::with_capacity(REFRESH_BATCH);
    let mut prune = tokio::time::interval(REFRESH_PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = queue.recv_many(&mut batch, REFRESH_BATCH) => {
                if got == 0 {
                    return;
                }
                let outcome = insert_refresh_batch(&pool, &batch).await;
                if outcome.is_err() && batch.len() > 1 {
                    // One bad row must not fail the others.
                    for pending in batch.drain(..) {
                        let result = insert_refresh_batch(&pool, std::slice::from_ref(&pending)).await;
                        let _ = pending.reply.send(result);
                    }
                    continue;
                }
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(outcome.as_ref().map(|_| ()).map_err(StoreError::clone_for_reply));
                }
            }
            _ = prune.tick() => {
                match prune_refresh(&pool, crate::auth::now_unix()).await {
                    Ok(0) => {}
                    Ok(gone) => tracing::info!(gone, "expired refresh tokens forgotten"),
                    Err(e) => tracing::warn!(cause = %e, "expired refresh tokens not pruned; next try in an hour"),
                }
            }
        }
    }
}

async fn insert_refresh_batch(pool: &AnyPool, batch: &[PendingRefresh]) -> Result<(), StoreError> {
    let insert = format!("INSERT INTO refresh_tokens (token_hash, user_id, name, expires_at) VALUES {}", placeholders(batch.len(), 4));
    let mut query = sqlx::query(&insert);
    for p in batch {
        query = query.bind(&p.token_hash).bind(&p.grant.user_id).bind(&p.grant.name).bind(unix_to_db(p.grant.expires_at));
    }
    query.execute(pool).await?;
    Ok(())
}

async fn prune_refresh(pool: &AnyPool, now: u64) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= $1").bind(unix_to_db(now)).execute(pool).await?;
    Ok(done.rows_affected())
}

/// Commits one batch of chats and answers each sender.
async fn commit_chats(pool: &AnyPool, batch: &mut Vec<PendingChat>) {
    let outcome = insert_batch(pool, batch).await;
    if outcome.is_err() && batch.len() > 1 {
        // One bad message must not fail the others: alone, each gets
        // its own answer.
        for pending in batch.drain(..) {
            let result = insert_batch(pool, std::slice::from_ref(&pending)).await;
            answer(pending, result);
        }
        return;
    }
    match outcome {
        Ok(stored) => {
            for pending in batch.drain(..) {
                let row = stored.get(&pending.key()).cloned().ok_or(StoreError::Database(sqlx::Error::RowNotFound));
                let _ = pending.reply.send(row);
            }
        }
        Err(e) => batch.drain(..).for_each(|pending| answer(pending, Err(e.clone_for_reply()))),
    }
}

fn answer(pending: PendingChat, result: Result<HashMap<ChatKey, ChatMessage>, StoreError>) {
    let row = result.and_then(|stored| stored.get(&pending.key()).cloned().ok_or(StoreError::Database(sqlx::Error::RowNotFound)));
    let _ = pending.reply.send(row);
}

impl StoreError {
    /// sqlx's errors can't be cloned; the message is what a reply needs.
    fn clone_for_reply(&self) -> StoreError {
        StoreError::Database(sqlx::Error::Protocol(self.to_string()))
    }
}

type ChatKey = (String, String, String);

/// One multi-row insert (a retry's id conflicts and keeps the stored row),
/// then the stored rows of every message in the batch, by key.
async fn insert_batch(pool: &AnyPool, batch: &[PendingChat]) -> Result<HashMap<ChatKey, ChatMessage>, StoreError> {
    let insert = format!(
        "INSERT INTO chat_messages (room_id, user_id, client_id, name, text, ts) VALUES {} ON CONFLICT (room_id, user_id, client_id) DO NOTHING",
        placeholders(batch.len(), 6)
    );
    let mut query = sqlx::query(&insert);
    for p in batch {
        query = query.bind(&p.room_id).bind(&p.user_id).bind(&p.client_id).bind(&p.name).bind(&p.text).bind(p.ts as i64);
    }
    query.execute(pool).await?;
    let select = format!(
        "SELECT room_id, user_id, client_id, name, text, ts FROM chat_messages WHERE (room_id, user_id, client_id) IN (VALUES {})",
        placeholders(batch.len(), 3)
    );
    let mut query = sqlx::query(&select);
    for p in batch {
        query = query.bind(&p.room_id).bind(&p.user_id).bind(&p.client_id);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let room: String = row.try_get("room_id")?;
            let from: String = row.try_get("user_id")?;
            let id: String = row.try_get("client_id")?;
            let message = ChatMessage { id: id.clone(), room: room.clone(), from: from.clone(), name: row.try_get("name")?, text: row.try_get("text")?, ts: row.try_get::<i64, _>("ts")? as u64 };
            Ok(((room, from, id), message))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_that_refuses_says_so_at_once_and_once() {
        // A port nobody listens on: the pool alone would retry for its
        // acquire timeout and then say only "pool timed out".
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = Store::connect(&format!("postgres://u:p@127.0.0.1:{port}/db")).await.unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        // Printed as a chain (the binary's `{:#}`), the cause comes once.
        let chain = format!("{:#}", anyhow::Error::new(crate::RunError::from(err)));
        assert_eq!(chain.matches("Connection refused").count(), 1, "{chain}");
        assert!(chain.starts_with("can't open the store: database error: "), "{chain}");
    }

    #[tokio::test]
    async fn chat_is_stored_once_per_client_id_and_read_back_oldest_first() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let a = store.insert_chat("r1", "u1", "Ada", "m1", "hello", 10).await.unwrap();
        let again = store.insert_chat("r1", "u1", "Ada", "m1", "hello (retry)", 11).await.unwrap();
        assert_eq!(a, again, "a retry returns the stored message");
        store.insert_chat("r1", "u2", "Bob", "m1", "hi", 12).await.unwrap();
        store.insert_chat("r2", "u1", "Ada", "m2", "elsewhere", 13).await.unwrap();
        let h = store.history("r1", 50).await.unwrap();
        assert_eq!(h.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["hello", "hi"]);
        let last = store.history("r1", 1).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].text, "hi");
    }

    #[tokio::test]
    async fn an_in_memory_database_holds_more_than_a_page_cache() {
        // 4,000 messages of 400 bytes: well over the file databases' 512 KB
        // page cache, which an in-memory database must not be held to.
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let text = "x".repeat(400);
        for i in 0..4000 {
            store.insert_chat("r1", "u1", "Ada", &format!("m{i}"), &text, i).await.unwrap_or_else(|e| panic!("message {i}: {e}"));
        }
        assert_eq!(store.history("r1", 200).await.unwrap().len(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_chats_are_committed_in_batches_and_each_sender_gets_its_own_row() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        // 300 senders at once (some of them retries of the same id, with
        // other text): the writer takes them in batches of up to 64.
        let tasks: Vec<_> = (0..300u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("m{}", i % 250);
                    let text = format!("text {i}");
                    (id.clone(), store.insert_chat("r1", "u1", "Ada", &id, &text, i).await.unwrap())
                })
            })
            .collect();
        let mut by_id: HashMap<String, ChatMessage> = HashMap::new();
        for task in tasks {
            let (id, stored) = task.await.unwrap();
            assert_eq!(stored.id, id, "each sender gets the row for its own id");
            if let Some(first) = by_id.get(&id) {
                assert_eq!(first, &stored, "a retry gets the row stored first, not its own text");
            }
            by_id.insert(id, stored);
        }
        let history = store.history("r1", 1000).await.unwrap();
        assert_eq!(history.len(), 250, "one row per id");
        for m in &history {
            assert_eq!(by_id[&m.id], *m);
        }
    }

    #[tokio::test]
    async fn a_closed_database_fails_each_chat_with_an_error_not_a_hang() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.close().await;
        let err = tokio::time::timeout(Duration::from_secs(10), store.insert_chat("r1", "u1", "Ada", "m1", "hi", 1)).await.expect("no hang").unwrap_err();
        assert!(err.to_string().contains("database error"), "{err}");
    }

    /// An empty data dir in the temp dir, and the URL of a database in it.
    fn empty_file_database(tag: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/plaza.db", dir.display());
        (dir, url)
    }

    #[tokio::test]
    async fn a_file_database_is_created_and_survives_reopening() {
        let (dir, url) = empty_file_database("plaza-store");
        {
            let store = Store::connect(&url).await.unwrap();
            store.insert_chat("r1", "u1", "Ada", "m1", "kept", 1).await.unwrap();
            store.insert_room("r1", "plaza", 40).await.unwrap();
        }
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.history("r1", 10).await.unwrap()[0].text, "kept");
        assert_eq!(store.rooms().await.unwrap(), vec![("r1".to_owned(), "plaza".to_owned(), 40)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Instances sharing one store start at once (a cluster's first start,
    /// or CI's): each makes the same schema in the same new file, and none
    /// may fail for the other's lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_opening_one_new_file_at_once_all_open_it() {
        for round in 0..60 {
            let (dir, url) = empty_file_database(&format!("plaza-store-race-{round}"));
            let opened = futures_util::future::join_all((0..4).map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::connect(&url).await })
            }))
            .await;
            for (i, store) in opened.into_iter().enumerate() {
                let store = store.unwrap().unwrap_or_else(|e| panic!("round {round}, store {i}: {e}"));
                store.insert_room(&format!("r{i}"), &format!("room {i}"), 40).await.unwrap();
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[tokio::test]
    async fn a_refresh_grant_is_taken_once_and_outlives_a_reopened_file() {
        let (dir, url) = empty_file_database("plaza-refresh");
        // The writer prunes at start with the real clock: times are from now.
        let now = crate::auth::now_unix();
        let grant = RefreshGrant { user_id: "u1".into(), name: "Ada".into(), expires_at: now + 1_000 };
        {
            let store = Store::connect(&url).await.unwrap();
            store.insert_refresh("h1", &grant).await.unwrap();
            store.insert_refresh("h2", &RefreshGrant { expires_at: now + 10, ..grant.clone() }).await.unwrap();
            assert!(store.insert_refresh("h1", &grant).await.is_err(), "a hash is one grant");
        }
        // A restart: the same file, a new store.
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.take_refresh("h1", now).await.unwrap(), Some(grant));
        assert_eq!(store.take_refresh("h1", now).await.unwrap(), None, "second use fails");
        assert_eq!(store.take_refresh("nope", now).await.unwrap(), None);
        // Expired by the time it is used: refused, and gone.
        assert_eq!(store.take_refresh("h2", now + 20).await.unwrap(), None);
        store.insert_refresh("h3", &RefreshGrant { user_id: "u3".into(), name: "Bo".into(), expires_at: now + 1_000 }).await.unwrap();
        store.insert_refresh("h4", &RefreshGrant { user_id: "u4".into(), name: "Cy".into(), expires_at: now + 3_000 }).await.unwrap();
        assert_eq!(store.prune_refresh(now + 1_500).await.unwrap(), 1);
        assert_eq!(store.take_refresh("h3", now).await.unwrap(), None, "pruned");
        assert_eq!(store.take_refresh("h4", now).await.unwrap().map(|g| g.user_id), Some("u4".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_burst_of_refresh_grants_is_stored_and_a_duplicate_fails_alone() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let grant = |i: usize| RefreshGrant { user_id: format!("u{i}"), name: "n".into(), expires_at: u64::MAX };
        store.insert_refresh("h0", &grant(0)).await.unwrap();
        // 300 at once (more than one batch), one of them reusing a stored hash.
        let results = futures_util::future::join_all((1..=300).map(|i| {
            let store = store.clone();
            async move { store.insert_refresh(&format!("h{}", if i == 150 { 0 } else { i }), &grant(i)).await }
        }))
        .await;
        for (i, result) in (1..=300).zip(&results) {
            assert_eq!(result.is_err(), i == 150, "grant {i}: {result:?}");
        }
        for i in (1..=300).filter(|&i| i != 150) {
            assert_eq!(store.take_refresh(&format!("h{i}"), 1).await.unwrap().map(|g| g.user_id), Some(format!("u{i}")));
        }
        assert_eq!(store.take_refresh("h0", 1).await.unwrap().map(|g| g.user_id), Some("u0".into()), "the first keeps its hash");
    }

    #[tokio::test]
    async fn two_uses_of_one_refresh_token_at_once_get_it_once() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.insert_refresh("h", &RefreshGrant { user_id: "u".into(), name: "n".into(), expires_at: u64::MAX }).await.unwrap();
        let (a, b) = tokio::join!(store.take_refresh("h", 1), store.take_refresh("h", 1));
        assert_eq!(u32::from(a.unwrap().is_some()) + u32::from(b.unwrap().is_some()), 1);
    }

    #[tokio::test]
    async fn unknown_urls_are_refused_clearly() {
        let err = Store::connect("mysql://x").await.unwrap_err().to_string();
        assert!(err.contains("sqlite://") && err.contains("postgres://"), "{err}");
    }
}
