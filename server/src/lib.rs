//! `plaza-server`: the server as a library. [`run`] serves on a bound
//! listener until `shutdown` resolves; the binary only parses config and
//! sets up logging, and tests pass their own listener and shutdown future.
//!
//! - [`http`]: routes, request ids, JSON errors.
//! - [`auth`]: guest tokens.
//! - [`gateway`]: one task per WebSocket.
//! - [`rooms`]: one task per room (20 Hz tick) and the room directory.
//! - [`limiter`]: per-socket rate limits.
//!
//! - [`store`]: chat storage (sqlx: SQLite or Postgres).
//!
//! Not yet here (see the server issue): resume, metrics, readiness and
//! draining, bots, voice.

pub mod auth;
pub mod gateway;
pub mod http;
pub mod limiter;
pub mod rooms;
pub mod store;

use std::future::Future;
use std::sync::{Arc, Mutex};
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
}

impl ServerConfig {
    /// For tests and `--dev`: a random secret.
    pub fn ephemeral() -> Self {
        ServerConfig {
            token_secret: auth::random_token(32).into_bytes(),
            access_ttl: Duration::from_secs(15 * 60),
            database_url: "sqlite::memory:".into(),
        }
    }
}

/// Shared, cheap to clone; the mutable state lives in tasks (rooms,
/// directory) or behind the one lock of the refresh ledger.
#[derive(Debug, Clone)]
pub struct AppState {
    pub keys: auth::TokenKeys,
    pub directory: rooms::Directory,
    pub refresh: Arc<Mutex<auth::RefreshLedger>>,
    pub store: store::Store,
}

impl AppState {
    pub async fn new(config: &ServerConfig) -> Result<Self, store::StoreError> {
        let store = store::Store::connect(&config.database_url).await?;
        Ok(AppState {
            keys: auth::TokenKeys::new(config.token_secret.clone(), config.access_ttl),
            directory: rooms::Directory::start(store.clone()).await?,
            refresh: Arc::default(),
            store,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("can't open the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` resolves, then stops accepting and returns.
pub async fn run(config: ServerConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    let state = AppState::new(&config).await?;
    tracing::info!(addr = %listener.local_addr()?, "plaza-server listening");
    axum::serve(listener, http::router(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
