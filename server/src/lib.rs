//! `plaza-server`: the server as a library. [`run`] serves on a bound
//! listener until `shutdown` resolves; the binary only parses config and
//! sets up logging, and tests pass their own listener and shutdown future.
//!
//! - [`http`]: routes, request ids, JSON errors.
//! - [`auth`]: guest tokens.
//! - [`gateway`]: one task per WebSocket.
//! - [`rooms`]: one task per room (20 Hz tick) and the room directory.
//! - [`limiter`]: per-socket rate limits.
//! - [`capacity`]: the connection budgets and the open-file limit.
//! - [`serve`]: the connection loop, with a deadline on request heads.
//! - [`peer_link`]: whether a socket's peer still answers (TCP state).
//! - [`bus`], [`relay`]: instances sharing rooms through Redis; a socket
//!   whose room runs on another instance is relayed there.
//!
//! - [`store`]: chat storage (sqlx: SQLite or Postgres).
//! - [`telemetry`]: client frame-timing reports into `plaza_client_*`.
//!
//! - [`metrics`], [`logging`], [`otel`] (join-flow traces): what operators see.
//! - [`bots`]: server-side bots for `--bots N`.
//! - [`voice`]: the voice SFU (WebRTC; rooms choose who hears whom).

pub mod auth;
pub mod bots;
pub mod build;
pub mod bus;
pub mod capacity;
pub mod gateway;
pub mod http;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod peer_link;
pub mod recent_chat;
pub mod relay;
pub mod rooms;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod voice;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Signs access tokens.
    pub token_secret: Vec<u8>,
    /// Access tokens live this long (the contract's default: 15 min).
    pub access_ttl: Duration,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// `redis://…` (`--redis-url`): instances share rooms (crate::bus).
    pub redis_url: Option<String>,
    /// The URL other instances reach this one at (`--advertise-url`), with
    /// `redis_url`.
    pub advertise_url: String,
    /// After the shutdown signal: `/ready` says 503 this long before
    /// sockets are closed with 1001, so load balancers move traffic first.
    pub drain_grace: Duration,
    /// A socket silent this long is dropped.
    pub heartbeat_timeout: Duration,
    /// Bots wandering the plaza (`--bots N`), in the room named `bots_room`.
    pub bots: u32,
    pub bots_room: String,
    /// Each socket's kernel send buffer (`SO_SNDBUF`), bytes; 0 leaves the
    /// kernel's autotuning (which grows to megabytes: minutes of stale
    /// deltas for a slow reader before its queue even fills).
    pub socket_send_buffer: usize,
    /// Most WebSockets at once (`--max-connections`); the next gets `503
    /// server_full` (crate::capacity).
    pub max_connections: usize,
    /// Most TCP connections at once, HTTP and WebSocket: what the open-file
    /// limit holds ([`capacity::connection_fd_budget`]).
    pub max_tcp_connections: usize,
    /// The voice SFU's address and peer limit.
    pub voice: voice::VoiceConfig,
    /// After the server closes a user's socket for abuse (4008 flooding,
    /// 1008 invalid messages, 1009 oversized), that user's hellos are
    /// refused with 4008 this long: a client that reconnects at once and
    /// does it again costs a join and a leave in its room each time.
    pub abuse_cooldown: Duration,
    /// How long an HTTP request head may take to arrive
    /// ([`serve::REQUEST_HEAD_TIMEOUT`]).
    pub request_head_timeout: Duration,
}

/// [`ServerConfig::abuse_cooldown`]'s default.
pub const ABUSE_COOLDOWN: Duration = Duration::from_secs(10);

/// About a second of a busy room's deltas at the JSON sizes, and enough in
/// flight for 500 ms round trips.
pub const DEFAULT_SOCKET_SEND_BUFFER: usize = 128 * 1024;

/// Most bytes a socket may hold that it has not even sent yet
/// (`TCP_NOTSENT_LOWAT`). The send buffer bounds sent-but-unacked and unsent
/// together, and a reader that stopped (zero window) let the kernel take a
/// whole buffer of deltas, 25 s of a 30-member room's, before the writer
/// felt it; the room closed it with 4009 after 33 s (docs/benchmarks.md,
/// session 14). With this the backlog reaches the queue within a second or
/// two, and a slow reader's deltas are skipped, not stale. Sent data in
/// flight is not limited by it.
pub const SOCKET_UNSENT_LIMIT: u32 = 16 * 1024;

impl ServerConfig {
    /// For tests and `--dev`: a random secret.
    pub fn ephemeral() -> Self {
        let limit = capacity::fd_limit();
        ServerConfig {
            token_secret: auth::random_token(32).into_bytes(),
            access_ttl: Duration::from_secs(15 * 60),
            database_url: "sqlite::memory:".into(),
            redis_url: None,
            advertise_url: String::new(),
            drain_grace: Duration::from_millis(200),
            heartbeat_timeout: gateway::HEARTBEAT_TIMEOUT,
            bots: 0,
            bots_room: "plaza".into(),
            socket_send_buffer: DEFAULT_SOCKET_SEND_BUFFER,
            max_connections: capacity::max_connections(None, limit).unwrap_or(1),
            max_tcp_connections: capacity::max_tcp_connections(limit),
            voice: voice::VoiceConfig::local(),
            abuse_cooldown: ABUSE_COOLDOWN,
            request_head_timeout: serve::REQUEST_HEAD_TIMEOUT,
        }
    }
}

/// Shared, cheap to clone; the mutable state lives in tasks (rooms,
/// directory) or in the store (chat, rooms, refresh tokens).
#[derive(Debug, Clone)]
pub struct AppState {
    pub keys: auth::TokenKeys,
    pub directory: rooms::Directory,
    pub store: store::Store,
    pub heartbeat_timeout: Duration,
    /// `true` once draining: `/ready` fails and new sockets are refused.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// `true` once sockets must close (1001).
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// One clone per open socket; `run` waits for them when stopping.
    pub sockets: Arc<()>,
    /// Places for WebSockets (`--max-connections`).
    pub connections: capacity::ConnectionBudget,
    /// Client telemetry's per-user report limit.
    pub telemetry: telemetry::TelemetryState,
    /// The voice SFU.
    pub voice: voice::Sfu,
    /// Users closed for abuse a moment ago ([`ServerConfig::abuse_cooldown`]).
    pub abusers: Arc<std::sync::Mutex<limiter::Interval<String>>>,
    /// With `--redis-url`: the rooms' owners, shared with other instances.
    pub bus: Option<bus::Bus>,
}

/// The two switches of a shutdown: draining, then closing.
#[derive(Debug)]
pub struct Shutdown {
    pub draining: tokio::sync::watch::Sender<bool>,
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub async fn new(config: &ServerConfig) -> Result<(Self, Shutdown), RunError> {
        metrics::init();
        ::metrics::gauge!(crate::metrics::WS_CONNECTION_LIMIT).set(config.max_connections as f64);
        let store = store::Store::connect(&config.database_url).await?;
        let bus = match &config.redis_url {
            Some(url) => Some(bus::Bus::connect(url, &config.advertise_url).await.map_err(RunError::Bus)?),
            None => None,
        };
        let (draining_tx, draining) = tokio::sync::watch::channel(false);
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let state = AppState {
            keys: auth::TokenKeys::new(config.token_secret.clone(), config.access_ttl),
            directory: rooms::Directory::start(store.clone(), bus.is_some()).await?,
            store,
            heartbeat_timeout: config.heartbeat_timeout,
            draining,
            closing,
            sockets: Arc::new(()),
            connections: capacity::ConnectionBudget::new(config.max_connections),
            telemetry: telemetry::TelemetryState::new(),
            voice: voice::Sfu::new(config.voice.clone()),
            abusers: Arc::new(std::sync::Mutex::new(limiter::Interval::new(config.abuse_cooldown))),
            bus,
        };
        Ok((state, Shutdown { draining: draining_tx, closing: closing_tx }))
    }
}

/// The messages carry their cause and the variants don't mark it as a
/// `source`, so a printed chain (`{:#}`) says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("can't open the store: {0}")]
    Store(store::StoreError),
    #[error("can't share rooms through Redis: {0}")]
    Bus(bus::BusError),
    #[error("serving failed: {0}")]
    Io(std::io::Error),
}

impl From<store::StoreError> for RunError {
    fn from(e: store::StoreError) -> Self {
        RunError::Store(e)
    }
}

impl From<std::io::Error> for RunError {
    fn from(e: std::io::Error) -> Self {
        RunError::Io(e)
    }
}

/// How long sockets get to close after the 1001 before `run` returns.
const SOCKET_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Deltas are small and latency matters: no Nagle delay, and a bounded
/// send buffer and unsent backlog ([`SOCKET_UNSENT_LIMIT`]) so a slow
/// reader's backlog shows up in its queue (where the room skips deltas for
/// it) instead of piling up in the kernel.
fn tune_socket(tcp: &mut tokio::net::TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(cause = %e, "TCP_NODELAY not set");
    }
    if send_buffer > 0
        && let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer)
    {
        tracing::debug!(cause = %e, "SO_SNDBUF not set");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(&*tcp).set_tcp_notsent_lowat(SOCKET_UNSENT_LIMIT) {
        tracing::debug!(cause = %e, "TCP_NOTSENT_LOWAT not set");
    }
}

/// Serves until `shutdown` resolves, then drains: `/ready` answers 503 and
/// new sockets are refused for `drain_grace`, then every socket is closed
/// with 1001, and `run` returns once they are gone (at most 5 s more).
/// Chat is stored before it is acknowledged, so nothing acknowledged is lost.
pub async fn run(config: ServerConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    let (state, switches) = AppState::new(&config).await?;
    let sockets = state.sockets.clone();
    let bus = state.bus.clone();
    if let Some(bus) = &bus {
        bus.spawn_renewals(state.closing.clone());
        tracing::info!(instance = %bus.instance, advertise_url = %config.advertise_url, "sharing rooms with other instances through Redis");
    }
    bots::spawn(state.clone(), config.bots_room.clone(), config.bots);
    tracing::info!(addr = %listener.local_addr()?, version = build::VERSION, commit = build::COMMIT, "plaza-server listening");
    let grace = config.drain_grace;
    let stop = async move {
        shutdown.await;
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
        let _ = switches.draining.send(true);
        // The rooms' next joins start them on an instance that stays.
        if let Some(bus) = &bus {
            bus.release_all().await;
        }
        tokio::time::sleep(grace).await;
        tracing::info!("closing sockets");
        let _ = switches.closing.send(true);
        // Receivers keep seeing `true` after the senders are dropped.
    };
    let send_buffer = config.socket_send_buffer;
    tracing::info!(max_connections = config.max_connections, max_tcp_connections = config.max_tcp_connections, "connection limits");
    tracing::info!(voice_ip = %config.voice.ip, voice_public_ip = ?config.voice.public_ip, voice_max_peers = config.voice.max_peers, "voice SFU");
    let listener = capacity::GuardedListener::new(listener, config.max_tcp_connections, move |tcp: &mut tokio::net::TcpStream| tune_socket(tcp, send_buffer));
    serve::serve(listener, http::router(state), config.request_head_timeout, stop).await?;
    // Upgraded sockets outlive axum's graceful shutdown: wait for them.
    let deadline = tokio::time::Instant::now() + SOCKET_CLOSE_WAIT;
    while Arc::strong_count(&sockets) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(left_open = Arc::strong_count(&sockets) - 1, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_no_nagle_a_bounded_send_buffer_and_a_bounded_unsent_backlog() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (mut accepted, _) = listener.accept().await.expect("accept");
        tune_socket(&mut accepted, DEFAULT_SOCKET_SEND_BUFFER);
        let sock = socket2::SockRef::from(&accepted);
        assert!(accepted.nodelay().expect("nodelay"));
        // Linux doubles SO_SNDBUF for its bookkeeping.
        assert!(sock.send_buffer_size().expect("sndbuf") <= 2 * DEFAULT_SOCKET_SEND_BUFFER);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(sock.tcp_notsent_lowat().expect("lowat"), SOCKET_UNSENT_LIMIT);
        drop(client);
    }
}
