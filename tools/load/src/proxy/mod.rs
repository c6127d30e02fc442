//! `plaza-load proxy`: a TCP proxy between WebSocket clients and a Plaza
//! server that does what bad networks do: latency and jitter, loss (as TCP
//! feels it, or as messages that vanish), connections cut without a
//! close, and links that go silent with no reset. See docs/load.md,
//! "Fault proxy".
//!
//! - [`shaper`] — when each segment is delivered (latency, jitter, stalls).
//! - [`wsframes`] — WebSocket framing, to drop whole messages.
//!
//! Each accepted connection is one task: it connects upstream, then moves
//! bytes both ways until both directions are done, an error cuts it, its
//! reset time comes (or its silent time: see [`hold_silent`]), or the
//! proxy stops. In each direction a reader cuts
//! what it reads into segments, schedules each and queues it (at most
//! [`SEGMENTS_IN_FLIGHT`]: a full queue stops the reading, as a full TCP
//! window would), and a writer delivers each segment at its time, in order.
//! Nothing outlives its connection.

pub mod shaper;
pub mod wsframes;

use plaza_shared::rng::SplitMix;
use shaper::{Shaper, Shaping, segments};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use wsframes::{FrameFilter, Side};

/// Segments queued per direction of a connection (about 1.4 MB).
pub const SEGMENTS_IN_FLIGHT: usize = 1024;
const READ_BUF: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a stop, connections get this long to end before they are aborted.
const STOP_WAIT: Duration = Duration::from_secs(5);
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// What `--loss` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossMode {
    /// A lost segment stalls its connection for a retransmission timeout;
    /// no byte is ever lost (what an application on TCP sees).
    #[default]
    Tcp,
    /// Whole WebSocket data messages vanish (TCP's guarantee broken on purpose).
    Message,
}

impl LossMode {
    pub fn name(self) -> &'static str {
        match self {
            LossMode::Tcp => "tcp",
            LossMode::Message => "message",
        }
    }
}

/// A proxy's faults. [`ProxyConfig::new`] has none.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `host:port`, resolved at each connection.
    pub upstream: String,
    /// Added to every segment, each way (a round trip gets twice this).
    pub latency: Duration,
    /// Each segment's delay is `latency ± jitter`, uniform.
    pub jitter: Duration,
    /// 0–1: per segment (tcp) or per WebSocket data message (message).
    pub loss: f64,
    pub loss_mode: LossMode,
    /// Each connection is cut after a random time in [D/2, 3D/2].
    pub reset_every: Option<Duration>,
    /// Each connection goes silent after a random time in [D/2, 3D/2]:
    /// nothing more either way, and no reset (Wi-Fi lost, a cable pulled).
    pub silence_every: Option<Duration>,
    pub seed: u64,
}

impl ProxyConfig {
    pub fn new(listen: SocketAddr, upstream: impl Into<String>) -> Self {
        ProxyConfig { listen, upstream: upstream.into(), latency: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0, loss_mode: LossMode::Tcp, reset_every: None, silence_every: None, seed: 0 }
    }

    /// How long a segment "lost" in tcp mode waits: [`shaper::rto`].
    pub fn rto(&self) -> Duration {
        shaper::rto(self.latency, self.jitter)
    }

    /// The faults in words, for the start line.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("latency {} ± {} each way", fmt_duration(self.latency), fmt_duration(self.jitter))];
        let pct = format_pct(self.loss);
        parts.push(match self.loss_mode {
            LossMode::Tcp => format!("loss {pct} (tcp: a lost segment stalls its connection {})", fmt_duration(self.rto())),
            LossMode::Message => format!("loss {pct} (message: whole WebSocket data messages dropped)"),
        });
        if let Some(d) = self.reset_every {
            parts.push(format!("reset every {} ({}–{})", fmt_duration(d), fmt_duration(d / 2), fmt_duration(d * 3 / 2)));
        }
        if let Some(d) = self.silence_every {
            parts.push(format!("silent every {} ({}–{})", fmt_duration(d), fmt_duration(d / 2), fmt_duration(d * 3 / 2)));
        }
        parts.push(format!("seed {}", self.seed));
        parts.join(" · ")
    }
}

fn format_pct(fraction: f64) -> String {
    let pct = fraction * 100.0;
    if pct == pct.round() { format!("{pct:.0}%") } else { format!("{pct}%") }
}

/// `350ms`, `1.2s`, `60s`.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Live counters, shared by every connection.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub open: AtomicU64,
    pub total: AtomicU64,
    /// Bytes delivered client → server.
    pub bytes_up: AtomicU64,
    /// Bytes delivered server → client.
    pub bytes_down: AtomicU64,
    /// Segments held back by a retransmission timeout (tcp mode).
    pub stalled: AtomicU64,
    /// WebSocket data messages seen and dropped (message mode).
    pub messages: AtomicU64,
    pub dropped: AtomicU64,
    /// Connections cut by `--reset-every`.
    pub resets: AtomicU64,
    /// Connections gone silent by `--silence-every`.
    pub silenced: AtomicU64,
    /// Connections whose upstream could not be reached (the client's is reset).
    pub upstream_failures: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl ProxyStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            open: get(&self.open),
            total: get(&self.total),
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
            stalled: get(&self.stalled),
            messages: get(&self.messages),
            dropped: get(&self.dropped),
            resets: get(&self.resets),
            silenced: get(&self.silenced),
            upstream_failures: get(&self.upstream_failures),
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub open: u64,
    pub total: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub stalled: u64,
    pub messages: u64,
    pub dropped: u64,
    pub resets: u64,
    #[serde(default)]
    pub silenced: u64,
    pub upstream_failures: u64,
}

fn fmt_bytes(n: u64) -> String {
    match n {
        n if n < 10_000 => format!("{n} B"),
        n if n < 10_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{:.1} MB", n as f64 / 1e6),
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {} open / {} total · up {} · down {} · stalled {} segments · dropped {} of {} messages · resets {}",
            self.open,
            self.total,
            fmt_bytes(self.bytes_up),
            fmt_bytes(self.bytes_down),
            self.stalled,
            self.dropped,
            self.messages,
            self.resets
        )?;
        if self.silenced > 0 {
            write!(f, " · silenced {}", self.silenced)?;
        }
        if self.upstream_failures > 0 {
            write!(f, " · upstream failures {}", self.upstream_failures)?;
        }
        Ok(())
    }
}

/// A running proxy. [`Proxy::stop`] ends it and every connection; dropping
/// it stops it without waiting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    stop: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Binds `config.listen` and starts accepting (on the current runtime).
    pub async fn start(config: ProxyConfig) -> io::Result<Proxy> {
        let listener = TcpListener::bind(config.listen).await?;
        Self::start_on(listener, config)
    }

    /// Starts on a listener already bound (`config.listen` is not used).
    pub fn start_on(listener: TcpListener, config: ProxyConfig) -> io::Result<Proxy> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, Arc::new(config), stats.clone(), stopped));
        Ok(Proxy { addr, stats, stop, accept: Some(accept) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops accepting, closes every connection (a FIN, not a reset), waits
    /// for them (at most 5 s) and returns the final counters.
    pub async fn stop(mut self) -> StatsSnapshot {
        let _ = self.stop.send(true);
        if let Some(mut accept) = self.accept.take()
            && tokio::time::timeout(STOP_WAIT, &mut accept).await.is_err()
        {
            tracing::warn!("proxy connections still open {STOP_WAIT:?} after the stop; aborted");
            accept.abort();
        }
        self.stats.snapshot()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<ProxyConfig>, stats: Arc<ProxyStats>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut n = 0u64;
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    n += 1;
                    add(&stats.total, 1);
                    add(&stats.open, 1);
                    connections.spawn(connection(client, config.clone(), stats.clone(), n, for_connections.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait a little.
                    tracing::warn!(cause = %e, "the proxy can't accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    // Every connection saw the stop too.
    while connections.join_next().await.is_some() {}
}

/// Returns once the proxy is told to stop (or dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Counts a connection as open until it ends (or is aborted).
struct OpenGuard(Arc<ProxyStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed (each direction drained, then shut down).
    Closed,
    /// An error on either side (a peer's reset, mostly): both are reset.
    Failed,
    /// `--reset-every`: both are reset.
    Reset,
    /// `--silence-every`: nothing more is carried; see [`hold_silent`].
    Silent,
    /// The proxy stopped: both are closed.
    Stopped,
}

/// Sends a TCP RST instead of a FIN when `stream` is dropped.
fn reset_on_drop(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn connection(mut client: TcpStream, config: Arc<ProxyConfig>, stats: Arc<ProxyStats>, n: u64, mut stop: watch::Receiver<bool>) {
    let _open = OpenGuard(stats.clone());
    let mut rng = SplitMix::new(config.seed ^ n.wrapping_mul(GOLDEN));
    let reset_at = config.reset_every.map(|d| Instant::now() + d.mul_f64(rng.range(0.5, 1.5)));
    let silent_at = config.silence_every.map(|d| Instant::now() + d.mul_f64(rng.range(0.5, 1.5)));
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(config.upstream.as_str()));
    let mut upstream = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            failed => {
                let cause = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer in {CONNECT_TIMEOUT:?}"),
                };
                tracing::warn!(upstream = %config.upstream, %cause, "the proxy can't reach its upstream");
                add(&stats.upstream_failures, 1);
                reset_on_drop(&client);
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = pump(client_read, upstream_write, Side::Client, &config, &stats, rng.next_u64());
        let down = pump(upstream_read, client_write, Side::Server, &config, &stats, rng.next_u64());
        tokio::select! {
            done = async { tokio::try_join!(up, down) } => if done.is_ok() { End::Closed } else { End::Failed },
            () = sleep_until_some(reset_at) => End::Reset,
            () = sleep_until_some(silent_at) => End::Silent,
            () = stopped(&mut stop) => End::Stopped,
        }
    };
    if end == End::Silent {
        add(&stats.silenced, 1);
        hold_silent(&mut client, &mut upstream, &mut stop).await;
        return;
    }
    if matches!(end, End::Reset | End::Failed) {
        reset_on_drop(&client);
        reset_on_drop(&upstream);
    }
    if end == End::Reset {
        add(&stats.resets, 1);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A link gone silent, as neither end is told: what was on its way is
/// gone (the pumps' queues are dropped), and nothing more is carried.
/// The client's bytes are read and thrown away (its kernel would keep
/// retransmitting them into the void) until it gives the socket up. The
/// server's are not read at all, so its send buffer fills (our kernel
/// still acknowledges until our receive buffer is full: to the server this
/// is a reader whose window shut, not a black hole; docs/load.md); once
/// the client has given up, the server's
/// side is drained until the server closes it too (its heartbeat or its
/// slow-reader rule), or the proxy stops. Neither side gets a reset.
async fn hold_silent(client: &mut TcpStream, upstream: &mut TcpStream, stop: &mut watch::Receiver<bool>) {
    let mut sink = vec![0u8; 16 * 1024];
    for side in [client, upstream] {
        loop {
            tokio::select! {
                read = side.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { break },
                () = stopped(stop) => return,
            }
        }
    }
}

/// One direction: `from`'s bytes, shaped, to `to`, until `from` ends (then
/// what is queued is delivered and `to` is shut down) or either fails.
/// `side` is whose bytes these are.
async fn pump<R, W>(from: R, to: W, side: Side, config: &ProxyConfig, stats: &ProxyStats, seed: u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, queued) = mpsc::channel(SEGMENTS_IN_FLIGHT);
    let delivered = match side {
        Side::Client => &stats.bytes_up,
        Side::Server => &stats.bytes_down,
    };
    tokio::try_join!(read_side(from, queue, side, config, stats, seed), write_side(queued, to, delivered)).map(|_| ())
}

async fn read_side<R: AsyncRead + Unpin>(mut from: R, queue: mpsc::Sender<(Instant, Vec<u8>)>, side: Side, config: &ProxyConfig, stats: &ProxyStats, seed: u64) -> io::Result<()> {
    let message_mode = config.loss_mode == LossMode::Message;
    let mut shaper = Shaper::new(Shaping::new(config.latency, config.jitter, if message_mode { 0.0 } else { config.loss }), seed);
    if side == Side::Client {
        let handshake = shaper.open(Instant::now());
        add(&stats.stalled, u64::from(handshake.lost));
    }
    let mut filter = message_mode.then(|| FrameFilter::new(side));
    let mut lose = SplitMix::new(seed ^ GOLDEN);
    let mut buf = vec![0u8; READ_BUF];
    let mut kept = Vec::with_capacity(READ_BUF);
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let read_at = Instant::now();
        let data = match &mut filter {
            Some(filter) => {
                let before = filter.stats();
                kept.clear();
                filter.feed(&buf[..n], &mut kept, &mut || lose.unit() < config.loss);
                let after = filter.stats();
                add(&stats.messages, after.messages - before.messages);
                add(&stats.dropped, after.dropped - before.dropped);
                &kept[..]
            }
            None => &buf[..n],
        };
        for segment in segments(data) {
            let due = shaper.schedule(read_at);
            if due.stalled {
                add(&stats.stalled, 1);
            }
            if queue.send((due.at, segment.to_vec())).await.is_err() {
                // The writer failed; its error ends the connection.
                return Ok(());
            }
        }
    }
}

async fn write_side<W: AsyncWrite + Unpin>(mut queued: mpsc::Receiver<(Instant, Vec<u8>)>, mut to: W, delivered: &AtomicU64) -> io::Result<()> {
    // In order: a segment due before the one ahead of it waits for it.
    while let Some((at, segment)) = queued.recv().await {
        tokio::time::sleep_until(at).await;
        to.write_all(&segment).await?;
        add(delivered, segment.len() as u64);
    }
    to.shutdown().await
}

/// `plaza-load proxy …`: runs until Ctrl-C (or SIGTERM), with the counters
/// on stderr every second and at the end. Err: it could not listen.
pub async fn serve(config: ProxyConfig) -> io::Result<StatsSnapshot> {
    let proxy = Proxy::start(config.clone()).await.map_err(|e| io::Error::new(e.kind(), format!("can't listen on {}: {e}", config.listen)))?;
    eprintln!("plaza-load proxy: listening on {} → upstream {} · {}", proxy.addr(), config.upstream, config.describe());
    let started = Instant::now();
    let mut tick = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => eprintln!("plaza-load proxy [{:>5}s] {}", started.elapsed().as_secs(), proxy.stats()),
            () = &mut stop => break,
        }
    }
    let stats = proxy.stop().await;
    eprintln!("plaza-load proxy: stopped after {:.1} s: {stats}", started.elapsed().as_secs_f64());
    Ok(stats)
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faults_read_as_asked() {
        let mut c = ProxyConfig::new("127.0.0.1:7879".parse().unwrap(), "127.0.0.1:7878");
        c.latency = Duration::from_millis(500);
        c.jitter = Duration::from_millis(50);
        c.loss = 0.05;
        c.reset_every = Some(Duration::from_secs(60));
        c.seed = 42;
        assert_eq!(c.describe(), "latency 500ms ± 50ms each way · loss 5% (tcp: a lost segment stalls its connection 1.2s) · reset every 60s (30s–90s) · seed 42");
        c.loss_mode = LossMode::Message;
        c.loss = 0.125;
        c.reset_every = None;
        assert!(c.describe().contains("loss 12.5% (message"), "{}", c.describe());
        c.silence_every = Some(Duration::from_secs(30));
        assert!(c.describe().contains(" · silent every 30s (15s–45s) · seed 42"), "{}", c.describe());
    }

    #[test]
    fn counters_read_in_one_line() {
        let s = StatsSnapshot { open: 2, total: 5, bytes_up: 1234, bytes_down: 12_345_678, stalled: 3, messages: 80, dropped: 4, resets: 1, silenced: 0, upstream_failures: 0 };
        assert_eq!(s.to_string(), "connections 2 open / 5 total · up 1234 B · down 12.3 MB · stalled 3 segments · dropped 4 of 80 messages · resets 1");
        assert!(StatsSnapshot { upstream_failures: 2, ..s }.to_string().ends_with("· upstream failures 2"));
        assert!(StatsSnapshot { silenced: 7, ..s }.to_string().ends_with("· resets 1 · silenced 7"));
    }
}
