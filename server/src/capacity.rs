//! How many WebSockets the server holds at once, and the file descriptors
//! behind them.
//!
//! Every connection is a file descriptor. A server that runs out of them
//! stops accepting anything, `/health` included: the clients it can't
//! accept wait in the kernel's backlog until they time out (axum's accept
//! loop sleeps a second on each `EMFILE`), and the store can fail to open
//! its files. So:
//!
//! - at start the soft `RLIMIT_NOFILE` is raised to the hard limit;
//! - [`GuardedListener`] lets in at most [`connection_fd_budget`]
//!   connections and answers the one over it with a canned `503
//!   server_full` (it can't route a request it hasn't read);
//! - [`ConnectionBudget`] keeps WebSockets to `--max-connections`, which an
//!   operator sets to what the machine serves well (by default seven
//!   eighths of the descriptor budget, so HTTP still gets in when every
//!   WebSocket place is taken); the socket over it gets a routed `503
//!   server_full` before the upgrade.
//!
//! Both refusals carry `Retry-After`, which clients turn into a backoff.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use plaza_shared::limits::server_full::{CODE as SERVER_FULL, RETRY_AFTER_SECS};
use rustix::process as rlimit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept out of the WebSocket budget at the least: the listener,
/// the runtime's epoll and wakers, the store's pool, Redis, log files, and
/// the HTTP requests (sign-ins, chat history, scrapes) served beside the
/// sockets.
pub const MIN_RESERVED_FDS: u64 = 64;

/// The process's open-file limit (`ulimit -n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// What the process may open now.
    pub soft: u64,
    /// What the soft limit may be raised to without privileges.
    pub hard: u64,
}

/// The limit now, or `None` where it can't be read. An unlimited one
/// reads as `u64::MAX`.
pub fn fd_limit() -> Option<FdLimit> {
    let limit = rlimit::getrlimit(rlimit::Resource::Nofile);
    Some(FdLimit { soft: limit.current.unwrap_or(u64::MAX), hard: limit.maximum.unwrap_or(u64::MAX) })
}

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit is 1,024 even where the hard one is 524,288); returns the limit in
/// force after. A refusal leaves the soft limit as it was.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let before = fd_limit()?;
    if before.soft >= before.hard {
        return Some(before);
    }
    // An unlimited hard limit still stops at the kernel's `nr_open`.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(1 << 20);
    let target = before.hard.min(nr_open);
    if before.soft >= target {
        return Some(before);
    }
    let raised = rlimit::Rlimit { current: Some(target), maximum: Some(before.hard).filter(|&h| h != u64::MAX) };
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::Nofile, raised) {
        tracing::warn!(soft = before.soft, hard = before.hard, cause = %e, "can't raise the open-file limit");
        return Some(before);
    }
    fd_limit()
}

/// Connections (HTTP and WebSocket) the listener lets in under a soft
/// limit of `soft`: all but [`MIN_RESERVED_FDS`] (at least 1).
pub fn connection_fd_budget(soft: u64) -> usize {
    soft.saturating_sub(MIN_RESERVED_FDS).max(1) as usize
}

/// The listener's budget under `limit`: [`connection_fd_budget`], or no
/// bound where the limit is unknown.
pub fn max_tcp_connections(limit: Option<FdLimit>) -> usize {
    limit.map_or(usize::MAX, |l| connection_fd_budget(l.soft))
}

/// The default `--max-connections`: seven eighths of the descriptor budget,
/// so that with every WebSocket place taken, sign-ins, chat history,
/// scrapes and `/health` still get in.
pub fn default_max_connections(soft: u64) -> usize {
    let budget = connection_fd_budget(soft);
    (budget - budget / 8).max(1)
}

/// A `--max-connections` the open-file limit can't hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("--max-connections must be at least 1")]
    Zero,
    #[error(
        "--max-connections {asked} needs about {needed} open files (each socket is one, plus {MIN_RESERVED_FDS} for the rest of the server), \
         but this process may open {soft} (ulimit -n; hard limit {hard}): raise the limit (LimitNOFILE= in a systemd unit, \
         --ulimit nofile= in Docker) or ask for at most {most}"
    )]
    OverFdLimit { asked: usize, needed: u64, soft: u64, hard: u64, most: u64 },
}

/// The WebSocket budget: `asked` when the limit holds it, else the default
/// for the limit. `None` for the limit: nothing to check against.
pub fn max_connections(asked: Option<usize>, limit: Option<FdLimit>) -> Result<usize, BudgetError> {
    match (asked, limit) {
        (Some(0), _) => Err(BudgetError::Zero),
        (Some(asked), Some(limit)) if asked as u64 + MIN_RESERVED_FDS > limit.soft => Err(BudgetError::OverFdLimit {
            asked,
            needed: asked as u64 + MIN_RESERVED_FDS,
            soft: limit.soft,
            hard: limit.hard,
            most: limit.soft.saturating_sub(MIN_RESERVED_FDS),
        }),
        (Some(asked), _) => Ok(asked),
        (None, Some(limit)) => Ok(default_max_connections(limit.soft)),
        // No limit to read (not Linux): a budget that memory, not
        // descriptors, would bound first at ~20 KB a socket.
        (None, None) => Ok(100_000),
    }
}

/// Open WebSockets against the budget. Each one holds a [`Admitted`] for
/// its whole life, from before the upgrade is answered.
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// One socket's place in the budget; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionBudget {
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionBudget { permits: Arc::new(Semaphore::new(limit)), limit }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place, or `None` when all `limit` are taken.
    pub fn admit(&self) -> Option<Admitted> {
        self.permits.clone().try_acquire_owned().ok().map(Admitted)
    }

    /// Places taken now.
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// How long the accept loop waits after an error other than a peer's
/// (axum's own waits a second, which at `EMFILE` leaves every new client
/// in the backlog that long).
const ACCEPT_RETRY: Duration = Duration::from_millis(20);
/// Refusals written at once, each holding its descriptor for at most
/// [`REFUSAL_TIME`]; past that, a connection over budget is just closed.
const REFUSALS_IN_FLIGHT: usize = 16;
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// The `503` for a connection over the descriptor budget: written before
/// its request is read, so the same for every route. Made once.
fn refusal_response() -> &'static [u8] {
    static RESPONSE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let body = format!(r#"{{"error":{{"code":"{SERVER_FULL}","message":"the server has no room for another connection; try again in {RETRY_AFTER_SECS} s"}}}}"#);
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    &RESPONSE
}

/// The routed `503` for a WebSocket over `--max-connections`, counted and
/// logged.
pub fn websocket_refusal(limit: usize) -> axum::response::Response {
    use axum::response::IntoResponse;
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
    log_refusal("max_connections", limit);
    let message = format!("the server is at its limit of {limit} connections; try again in {RETRY_AFTER_SECS} s");
    let retry_after = [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())];
    (retry_after, crate::http::ApiError(axum::http::StatusCode::SERVICE_UNAVAILABLE, SERVER_FULL, message)).into_response()
}

/// One line a second at most for a condition that repeats per connection.
struct Throttle(AtomicU64);

impl Throttle {
    const fn new() -> Self {
        Throttle(AtomicU64::new(0))
    }

    /// True at most once per wall-clock second.
    fn ready(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.0.swap(now, Ordering::Relaxed) != now
    }
}

/// Logs a refusal, one line a second at most.
fn log_refusal(reason: &'static str, limit: usize) {
    static LOGGED: Throttle = Throttle::new();
    if LOGGED.ready() {
        tracing::warn!(reason, limit, "refusing connections: the server is at its limit (see plaza_connections_refused_total)");
    }
}

/// The server's TCP listener with a descriptor budget. Sockets are tuned
/// (`tune`) as they are accepted.
pub struct GuardedListener<F> {
    inner: TcpListener,
    open: Arc<AtomicUsize>,
    limit: usize,
    refusals: Arc<Semaphore>,
    tune: F,
}

impl<F: FnMut(&mut TcpStream) + Send + 'static> GuardedListener<F> {
    pub fn new(inner: TcpListener, limit: usize, tune: F) -> Self {
        metrics::gauge!(crate::metrics::TCP_CONNECTION_LIMIT).set(limit as f64);
        GuardedListener { inner, open: Arc::default(), limit: limit.max(1), refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)), tune }
    }

    /// Answers `stream` with the canned 503 and closes it, reading what the
    /// client sent meanwhile: closing with unread input makes the kernel
    /// reset the connection, and a reset can discard the answer.
    fn refuse(&self, mut stream: TcpStream) {
        metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "open_files").increment(1);
        log_refusal("open_files", self.limit);
        let Ok(slot) = self.refusals.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(REFUSAL_TIME, async {
                stream.write_all(refusal_response()).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                io::Result::Ok(())
            })
            .await;
        });
    }
}

/// A peer that went away while queued: nothing wrong with the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

impl<F: FnMut(&mut TcpStream) + Send + 'static> axum::serve::Listener for GuardedListener<F> {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        static LOGGED: Throttle = Throttle::new();
        loop {
            match self.inner.accept().await {
                Ok((mut stream, addr)) => {
                    if self.open.load(Ordering::Relaxed) >= self.limit {
                        self.refuse(stream);
                        continue;
                    }
                    (self.tune)(&mut stream);
                    return (Counted::new(stream, &self.open), addr);
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE/ENFILE: something besides our connections holds
                    // descriptors (or the system ran out). Retry soon.
                    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "accept_failed").increment(1);
                    if LOGGED.ready() {
                        tracing::error!(cause = %e, open = self.open.load(Ordering::Relaxed), "accept failed; retrying");
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection, counted against the budget until dropped.
pub struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Counted {
    fn new(stream: TcpStream, open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::TCP_CONNECTIONS).increment(1.0);
        Counted { stream, open: Arc::clone(open) }
    }

    /// The socket, for asking the kernel about its peer later.
    pub fn peer_socket(&self) -> crate::peer_link::PeerSocket {
        crate::peer_link::PeerSocket::of(&self.stream)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::TCP_CONNECTIONS).decrement(1.0);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_budget_keeps_a_reserve_and_websockets_leave_room_for_http() {
        assert_eq!(connection_fd_budget(1024), 960);
        assert_eq!(connection_fd_budget(524_288), 524_224);
        assert_eq!(connection_fd_budget(10), 1);
        assert_eq!(default_max_connections(1024), 840);
        assert_eq!(default_max_connections(256), 168);
        assert_eq!(default_max_connections(10), 1);
        for soft in [256, 1024, 20_000, 1 << 20] {
            assert!(default_max_connections(soft) < connection_fd_budget(soft), "{soft}");
        }
    }

    #[test]
    fn an_asked_budget_must_fit_under_the_soft_limit() {
        let limit = Some(FdLimit { soft: 1024, hard: 4096 });
        assert_eq!(max_connections(Some(900), limit), Ok(900));
        assert_eq!(max_connections(Some(960), limit), Ok(960));
        let err = max_connections(Some(961), limit).unwrap_err();
        assert_eq!(err, BudgetError::OverFdLimit { asked: 961, needed: 1025, soft: 1024, hard: 4096, most: 960 });
        let text = err.to_string();
        assert!(text.contains("ulimit -n") && text.contains("at most 960") && text.contains("hard limit 4096"), "{text}");
        assert_eq!(max_connections(Some(0), limit), Err(BudgetError::Zero));
        assert_eq!(max_connections(None, limit), Ok(840));
        assert_eq!(max_connections(Some(5), None), Ok(5));
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_frees_a_place_when_a_socket_ends() {
        let budget = ConnectionBudget::new(2);
        let a = budget.admit().expect("first");
        let _b = budget.admit().expect("second");
        assert!(budget.admit().is_none(), "a third is over the limit");
        assert_eq!(budget.in_use(), 2);
        drop(a);
        assert_eq!(budget.in_use(), 1);
        assert!(budget.admit().is_some(), "the freed place is taken again");
    }

    #[test]
    fn the_limit_is_read_and_raising_it_never_lowers_it() {
        let before = fd_limit().expect("Linux has RLIMIT_NOFILE");
        assert!(before.soft <= before.hard);
        let after = raise_fd_limit().expect("readable");
        assert!(after.soft >= before.soft && after.hard == before.hard, "{before:?} → {after:?}");
    }
}
