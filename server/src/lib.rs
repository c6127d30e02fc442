//! `plaza-server`: the server as a library. [`run`] serves on a bound
//! listener until `shutdown` resolves; the binary only parses config and
//! sets up logging, and tests pass their own listener and shutdown future.
//!
//! Today it answers `GET /health`; rooms, auth, chat and voice arrive with
//! the server issue.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use tokio::net::TcpListener;

/// Everything the HTTP side serves.
pub fn router() -> Router {
    Router::new().route("/health", get(health)).fallback(not_found)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"code": "not_found", "message": "no such route"}})),
    )
}

/// Serves until `shutdown` resolves, then stops accepting and returns.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "plaza-server listening");
    axum::serve(listener, router()).with_graceful_shutdown(shutdown).await
}
