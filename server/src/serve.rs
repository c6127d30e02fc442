//! The connection loop: what `axum::serve` does, plus a deadline on every
//! HTTP/1 request head. `axum::serve` sets no timer, so hyper's header
//! timeout never ran: a client that opened a connection and sent nothing,
//! or half a request, or stayed idle between keep-alive requests, held a
//! TCP place (and a descriptor) for as long as it liked, and a few thousand
//! of them would shut everyone else out (docs/benchmarks.md, session 14).
//!
//! Upgraded connections (WebSockets) leave hyper once upgraded; the gateway
//! bounds them (hello within 5 s, silence 30 s).

use crate::capacity::GuardedListener;
use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use tower::Layer;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a request head may take to arrive, counted from when the
/// connection is ready for it: from the accept, and from the end of the
/// previous response on a kept-alive connection. Browsers and clients send
/// a head in one go; a person's wait for the next request on a keep-alive
/// connection is longer than this, and then the client opens another.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_millis(plaza_shared::limits::REQUEST_HEAD_TIMEOUT_MS);

/// After `shutdown`, how long open HTTP connections get to finish what they
/// are doing (hyper closes idle ones at once).
const CONNECTIONS_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, asks every HTTP connection to finish, and waits for them
/// ([`CONNECTIONS_CLOSE_WAIT`] at most).
pub async fn serve<F>(mut listener: GuardedListener<F>, app: Router, head_timeout: Duration, shutdown: impl Future<Output = ()>) -> std::io::Result<()>
where
    F: FnMut(&mut TcpStream) + Send + 'static,
{
    // HTTP/1 only, as `axum::serve` was built here (no `http2` feature).
    let mut builder = Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(head_timeout);
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, _addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // Finished connections are reaped as we go, so the set stays the
        // size of what is open.
        while connections.try_join_next().is_some() {}
        let builder = builder.clone();
        // Every request on this connection carries its socket: a WebSocket
        // hands it to the room, which asks whether its peer still answers
        // (crate::peer_link).
        let service = TowerToHyperService::new(axum::Extension(io.peer_socket()).layer(app.clone()));
        let mut closing = closing.clone();
        connections.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(cause = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(CONNECTIONS_CLOSE_WAIT, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = connections.len(), "HTTP connections still open after the shutdown wait; dropped");
    }
    Ok(())
}
