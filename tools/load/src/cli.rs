//! The command line. Bad values get clap's one clear line and exit 2.

use crate::proxy::{LossMode, ProxyConfig};
use clap::{Parser, Subcommand, ValueEnum};
use crate::ladder::{LadderConfig, Target};
use crate::wire::Wire;
use plaza_shared::codec::Subprotocol;
use plaza_shared::flags::HttpBaseError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Parser)]
#[command(name = "plaza-load", version, about = "Plaza's load tool: simulated users against a Plaza server, with latency and delivery reports, and a fault proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulated users in rooms: walk, ping and chat; measure latency and
    /// delivery; write result.json and report.html.
    Run(RunArgs),
    /// A TCP proxy in front of a server that adds latency, jitter, loss and
    /// resets; runs until Ctrl-C.
    Proxy(ProxyArgs),
    /// A long run against a server in its own process (--server), then the
    /// leak checks: RSS drift while the load holds, connections and tasks
    /// back to idle after.
    Soak(SoakArgs),
    /// The same scenario stepped up against Plaza and the socket.io
    /// baseline peers: each one's capacity at a p99 limit, and the ratio;
    /// writes ladder.json and ladder.html.
    Ladder(LadderArgs),
}

/// When a simulated user sends its pose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SendAt {
    /// Just before the room's next tick.
    #[default]
    Tick,
    /// At the user's own random phase.
    Random,
}

impl SendAt {
    pub fn name(self) -> &'static str {
        match self {
            SendAt::Tick => "tick",
            SendAt::Random => "random",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// plaza.v1.bin, the compact form the client uses
    Bin,
    /// plaza.v1.json
    Json,
    /// socket.io v4 carrying Plaza's JSON messages: the baseline peers in
    /// tools/peers/socketio (needs --server)
    Socketio,
}

impl ProtocolArg {
    pub fn wire(self) -> Wire {
        match self {
            ProtocolArg::Bin => Wire::Plaza(Subprotocol::Binary),
            ProtocolArg::Json => Wire::Plaza(Subprotocol::Json),
            ProtocolArg::Socketio => Wire::SocketIo,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Rooms, named load-1 … load-R.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rooms: u32,
    /// Users in each room (a room takes 40 by default; above that the rooms
    /// are created with room for everyone).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub users_per_room: u32,
    /// Poses each user sends per second (0.1–30).
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,
    /// Length of the run in seconds, ramp included.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Users start spread over this many seconds [default: a fifth of the
    /// duration, at most 10].
    #[arg(long, value_parser = parse_seconds)]
    pub ramp: Option<f64>,
    /// A running server, http://host:port [default: start one in this
    /// process on 127.0.0.1, any free port].
    #[arg(long, value_parser = parse_server)]
    pub server: Option<String>,
    /// WebSocket subprotocol (socketio: a baseline peer, not Plaza).
    #[arg(long, value_enum, default_value = "bin")]
    pub protocol: ProtocolArg,
    /// Where result.json and report.html go.
    #[arg(long, default_value = "target/plaza-load")]
    pub out: PathBuf,
    /// Each user chats about this often, in seconds (spread ±1/3); 0: never.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub chat_every: f64,
    /// Each user pings this often, in seconds.
    #[arg(long, default_value = "5", value_parser = parse_ping)]
    pub ping_every: f64,
    /// A user whose socket has heard nothing this long (seconds, 1–25)
    /// takes it for dead and resumes on a new one, as the desktop client
    /// does after 8 s; after a quarter of it in silence it pings to ask.
    #[arg(long, default_value = "8", value_parser = parse_silence_limit)]
    pub silence_limit: f64,
    /// When users send their poses: `tick`, just before the room's next tick
    /// (as the client does; the phase is learnt from the deltas' arrivals),
    /// or `random`, at a random phase of their own (clients that don't align).
    /// `tick` applies at --rate up to the tick rate (20); above it, `random`.
    #[arg(long, value_enum, default_value = "tick")]
    pub send_at: SendAt,
    /// After --duration, keep reading this many seconds for poses still in
    /// flight (0.2–120). Raise it behind a slow link or the fault proxy:
    /// poses that arrive later count as lost.
    #[arg(long, default_value = "1", value_parser = parse_drain)]
    pub drain: f64,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Every user also joins voice: a WebRTC peer of the server's SFU that
    /// sends a 20 ms frame 50 times a second and listens with 8 slots;
    /// voice latency, loss and misrouting are reported.
    #[arg(long)]
    pub voice: bool,
    /// With --voice: the share of the time each voice user talks (1–100%),
    /// in spurts of 1–4 s with pauses between, as people do; quiet, it
    /// sends nothing (as the desktop client does) and the SFU gives its
    /// listeners' slots to those talking. [default: 100, talking all the time]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100), requires = "voice")]
    pub voice_talk: Option<u32>,
    /// The share of users in VR headsets (0–100%): their poses also carry
    /// a head that looks about and two swinging hands, as a headset user's
    /// do, which makes each of their avatars up to 39 bytes in a binary delta
    /// instead of a desktop user's 10. [default: 0]
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub vr_share: Option<u32>,
    /// Misbehaving clients in every room beside the users (0–40), taking
    /// turns at five kinds: one stops reading (expect 4009), one floods
    /// (4008), one sends invalid messages (1008), one sends an oversized
    /// message (1009), one sends half an upgrade request (the connection
    /// closed at the 10 s head deadline); each comes back and does it
    /// again. The run fails if the server doesn't close each with its code,
    /// or if the users beside them lose anything.
    #[arg(long, default_value = "0", value_parser = clap::value_parser!(u32).range(0..=40))]
    pub hostile: u32,
    /// Restart the embedded server this often (5s–24h): it drains, closes
    /// every socket with 1001 and stops, and a new one starts on the same
    /// port with the same store (a SQLite file for the run) and token
    /// secret; users come back as the client does. Not with --server:
    /// restart that one yourself; the run counts its 1001 closes either way.
    #[arg(long, value_parser = parse_restart_every)]
    pub restart_every: Option<Duration>,
    /// How long the embedded server's access tokens last (65s–24h; the
    /// server's default is 15 min). The server says `token_expiring` a
    /// minute before the end, and each user then refreshes over HTTP and
    /// in band, so a short one puts refreshes in the run (through restarts,
    /// with --restart-every). Not with --server.
    #[arg(long, value_parser = parse_access_ttl)]
    pub access_ttl: Option<Duration>,
    /// Another instance of --server's cluster (plaza-server --redis-url),
    /// http://host:port; repeatable. Users sign in and connect at --server
    /// and these in turn, so each room has members at every instance and
    /// the relay between them is in the run. Needs --server.
    #[arg(long = "also-server", value_parser = parse_server)]
    pub also_servers: Vec<String>,
    /// Faults between the users and the server: any of these puts the fault
    /// proxy (as `plaza-load proxy`) in between, in this process.
    #[command(flatten)]
    pub faults: FaultArgs,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number; use 0.1–30 (poses per second)"))?;
    if (0.1..=30.0).contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use 0.1–30 (poses per second, the server's limit is 30)")) }
}

/// A plain number of seconds within `range`; `allowed` says what is.
fn seconds_within(s: &str, range: std::ops::RangeInclusive<f64>, allowed: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && range.contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use {allowed}")) }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    seconds_within(s, 0.0..=86_400.0, "0–86400 seconds")
}

fn parse_drain(s: &str) -> Result<f64, String> {
    seconds_within(s, 0.2..=120.0, "0.2–120 seconds")
}

fn parse_ping(s: &str) -> Result<f64, String> {
    seconds_within(s, 0.5..=25.0, "0.5–25 seconds (the server drops a socket silent for 30 s)")
}

fn parse_silence_limit(s: &str) -> Result<f64, String> {
    seconds_within(s, 1.0..=25.0, "1–25 seconds (the server drops a socket silent for 30 s)")
}

fn parse_server(s: &str) -> Result<String, String> {
    match plaza_shared::flags::http_base(s) {
        Ok(host) => Ok(format!("http://{host}")),
        Err(HttpBaseError::NotHttp) => Err(format!("`{s}` must start with http:// (https is not supported)")),
        Err(HttpBaseError::NotHostPort) => Err(format!("`{s}` must be http://host:port with no path")),
    }
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub rooms: u32,
    pub users_per_room: u32,
    pub rate_hz: f64,
    pub duration: Duration,
    pub ramp: Duration,
    pub server: Option<String>,
    pub wire: Wire,
    pub out: PathBuf,
    /// `None`: no chat.
    pub chat_every: Option<Duration>,
    pub ping_every: Duration,
    /// `--silence-limit`.
    pub silence_limit: Duration,
    pub send_at: SendAt,
    /// How long to keep reading after the users stop sending.
    pub drain: Duration,
    pub progress: bool,
    /// The fault proxy's settings (its addresses are set by the run).
    pub faults: Option<ProxyConfig>,
    /// `plaza-load soak`: judge leaks at the end.
    pub soak: Option<crate::soak::SoakLimits>,
    /// `--voice`.
    pub voice: bool,
    /// `--voice-talk`: the share of the time voice users talk (0–1].
    pub voice_talk: f64,
    /// `--vr-share`: the share of users in VR headsets (0–1).
    pub vr_share: f64,
    /// `--hostile`: misbehaving clients per room.
    pub hostile: u32,
    /// `--restart-every`: the embedded server is restarted this often.
    pub restart_every: Option<Duration>,
    /// `--access-ttl`: the embedded server's access-token lifetime.
    pub access_ttl: Option<Duration>,
    /// `--also-server`: users spread over `server` and these.
    pub also_servers: Vec<String>,
}

impl RunConfig {
    pub fn users(&self) -> u64 {
        u64::from(self.rooms) * u64::from(self.users_per_room)
    }
}

/// Checks what one flag alone can't: the ramp must end before the run does.
pub fn validate(args: RunArgs) -> Result<RunConfig, String> {
    let duration = args.duration as f64;
    let ramp = args.ramp.unwrap_or_else(|| (duration / 5.0).min(10.0));
    if ramp >= duration {
        return Err(format!("--ramp {ramp} must be shorter than --duration {}", args.duration));
    }
    let users = u64::from(args.rooms) * u64::from(args.users_per_room);
    if users > 20_000 {
        return Err(format!("--rooms × --users-per-room is {users}; at most 20000 users"));
    }
    if args.protocol == ProtocolArg::Socketio && args.server.is_none() {
        return Err("--protocol socketio needs --server: start a peer with `node tools/peers/socketio/server.js` (or use `plaza-load ladder`)".into());
    }
    if args.voice && args.protocol == ProtocolArg::Socketio {
        return Err("--voice needs a Plaza server: the socket.io peers have no SFU".into());
    }
    if args.voice && users > 2_000 {
        return Err(format!("--voice with {users} users: at most 2000 (each is a WebRTC peer with its own UDP socket and DTLS)"));
    }
    if args.hostile > 0 && args.protocol == ProtocolArg::Socketio {
        return Err("--hostile tests Plaza's limits; the socket.io peers have none".into());
    }
    if args.users_per_room + args.hostile > plaza_shared::limits::MAX_ROOM_CAPACITY {
        return Err(format!(
            "--users-per-room {} + --hostile {} is {} in a room; a room takes at most {}",
            args.users_per_room,
            args.hostile,
            args.users_per_room + args.hostile,
            plaza_shared::limits::MAX_ROOM_CAPACITY
        ));
    }
    if let Some(every) = args.restart_every {
        if args.server.is_some() {
            return Err("--restart-every restarts the embedded server; with --server, restart that server yourself (the run counts its 1001 closes as restarts)".into());
        }
        if every.as_secs_f64() >= duration {
            return Err(format!("--restart-every {}s would never happen within --duration {}", every.as_secs_f64(), args.duration));
        }
    }
    if args.access_ttl.is_some() && args.server.is_some() {
        return Err("--access-ttl sets the embedded server's token lifetime; a server given with --server keeps its own".into());
    }
    if args.faults.silence_every.is_some() && args.drain <= args.silence_limit {
        return Err(format!(
            "--silence-every needs --drain longer than --silence-limit ({} s): a link that goes silent near the end is noticed only that long after, and what died in it would count as lost",
            args.silence_limit
        ));
    }
    if !args.also_servers.is_empty() {
        if args.server.is_none() {
            return Err("--also-server needs --server: the users spread over the instances of a running cluster".into());
        }
        if args.faults.any() || args.protocol.wire().subprotocol().is_none() {
            return Err("--also-server is for Plaza instances without the fault proxy: not with --protocol socketio, --latency, --loss, --reset-every or --silence-every".into());
        }
    }
    if args.chat_every > 0.0 && args.chat_every < 1.0 {
        return Err(format!("--chat-every {} is too often; use 0 (never) or at least 1 second", args.chat_every));
    }
    Ok(RunConfig {
        rooms: args.rooms,
        users_per_room: args.users_per_room,
        rate_hz: args.rate,
        duration: Duration::from_secs(args.duration),
        ramp: Duration::from_secs_f64(ramp),
        server: args.server,
        wire: args.protocol.wire(),
        out: args.out,
        chat_every: (args.chat_every > 0.0).then(|| Duration::from_secs_f64(args.chat_every)),
        ping_every: Duration::from_secs_f64(args.ping_every),
        silence_limit: Duration::from_secs_f64(args.silence_limit),
        send_at: args.send_at,
        drain: Duration::from_secs_f64(args.drain),
        progress: !args.quiet,
        faults: if args.faults.any() { Some(validate_faults(&args.faults)?) } else { None },
        soak: None,
        voice: args.voice,
        voice_talk: f64::from(args.voice_talk.unwrap_or(100)) / 100.0,
        vr_share: f64::from(args.vr_share.unwrap_or(0)) / 100.0,
        hostile: args.hostile,
        restart_every: args.restart_every,
        access_ttl: args.access_ttl,
        also_servers: args.also_servers,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossModeArg {
    /// a lost segment stalls its connection for a retransmission timeout (nothing is lost)
    Tcp,
    /// whole WebSocket data messages are dropped
    Message,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Where clients connect, ip:port (port 0: any free port, printed at the start).
    #[arg(long, value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The server, host:port.
    #[arg(long, value_parser = parse_upstream)]
    pub upstream: String,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// What the fault proxy does; shared by `proxy` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// Delay added each way (a round trip gets twice this): 500ms, 2s, 1m; at most 60s.
    #[arg(long, default_value = "0ms", value_parser = parse_delay)]
    pub latency: Duration,
    /// Each delay is latency ± jitter (uniform); at most the latency.
    #[arg(long, default_value = "0ms", value_parser = parse_delay)]
    pub jitter: Duration,
    /// Loss rate: 5% or 0.05 (per segment in tcp mode, per message in message mode).
    #[arg(long, default_value = "0%", value_parser = parse_loss)]
    pub loss: f64,
    /// What a loss is.
    #[arg(long, value_enum, default_value = "tcp")]
    pub loss_mode: LossModeArg,
    /// Cut each connection (TCP reset, no WebSocket close) after a random
    /// time in [D/2, 3D/2]: 300ms, 60s, 5m; 100ms–24h.
    #[arg(long, value_parser = parse_reset_every)]
    pub reset_every: Option<Duration>,
    /// Make each connection go silent after a random time in [D/2, 3D/2]
    /// (1s–24h): nothing more either way and no reset, as when Wi-Fi is
    /// lost or a cable pulled; the client must notice by itself.
    #[arg(long, value_parser = parse_silence_every)]
    pub silence_every: Option<Duration>,
    /// Seed for every random choice [default: from the clock; printed at the start].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// A duration with its unit: `500ms`, `2s`, `1.5s`, `1m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let Some(at) = text.find(|c: char| c.is_ascii_alphabetic()) else {
        return Err(format!("`{s}` needs a unit: 500ms, 2s, 1m or 1h"));
    };
    let (number, unit) = text.split_at(at);
    let value: f64 = number.trim().parse().map_err(|_| format!("`{s}` is not a duration; use a number and a unit: 500ms, 2s, 1m or 1h"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}`; use ms, s, m or h (500ms, 2s, 1m)")),
    };
    let secs = value * scale;
    if secs.is_finite() && (0.0..=1e9).contains(&secs) { Ok(Duration::from_secs_f64(secs)) } else { Err(format!("`{s}` is not a duration we can use")) }
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d <= Duration::from_secs(60) { Ok(d) } else { Err(format!("`{s}` is too long; use 0ms–60s")) }
}

/// A duration with its unit within `range`; `allowed` says what is.
fn duration_within(s: &str, range: std::ops::RangeInclusive<Duration>, allowed: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if range.contains(&d) { Ok(d) } else { Err(format!("`{s}` is out of range; use {allowed}")) }
}

const DAY: Duration = Duration::from_secs(86_400);

fn parse_restart_every(s: &str) -> Result<Duration, String> {
    duration_within(s, Duration::from_secs(5)..=DAY, "5s–24h (a restart takes a second or two)")
}

fn parse_access_ttl(s: &str) -> Result<Duration, String> {
    // The warning comes a minute before expiry: any shorter and every
    // refreshed token would be warned about at once, in a loop.
    duration_within(s, Duration::from_secs(65)..=DAY, "65s–24h (the server warns a minute before a token runs out)")
}

fn parse_reset_every(s: &str) -> Result<Duration, String> {
    duration_within(s, Duration::from_millis(100)..=DAY, "100ms–24h")
}

fn parse_silence_every(s: &str) -> Result<Duration, String> {
    duration_within(s, Duration::from_secs(1)..=DAY, "1s–24h")
}

/// A loss rate, `5%` or `0.05`, as a fraction 0–1.
pub fn parse_loss(s: &str) -> Result<f64, String> {
    let text = s.trim();
    let (number, percent) = match text.strip_suffix('%') {
        Some(number) => (number.trim(), true),
        None => (text, false),
    };
    let v: f64 = number.parse().map_err(|_| format!("`{s}` is not a loss rate; use a percentage (5%) or a fraction (0.05)"))?;
    let fraction = if percent { v / 100.0 } else { v };
    if v.is_finite() && (0.0..=1.0).contains(&fraction) {
        Ok(fraction)
    } else if !percent && v > 1.0 && v <= 100.0 {
        Err(format!("`{s}` is more than 1; write {s}% for a percentage, or a fraction 0–1"))
    } else {
        Err(format!("`{s}` is out of range; use 0%–100% or a fraction 0–1"))
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not an address; use ip:port, e.g. 127.0.0.1:7879 (port 0: any free port)"))
}

fn parse_upstream(s: &str) -> Result<String, String> {
    let text = s.trim();
    if text.contains("://") || text.contains('/') {
        return Err(format!("`{s}` must be host:port, without a scheme or path (e.g. 127.0.0.1:7878)"));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(text.to_owned()),
        _ => Err(format!("`{s}` must be host:port with a port 1–65535 (e.g. 127.0.0.1:7878)")),
    }
}

/// Checks what one flag alone can't: the jitter must not exceed the latency.
pub fn validate_proxy(args: ProxyArgs) -> Result<ProxyConfig, String> {
    let mut config = validate_faults(&args.faults)?;
    config.listen = args.listen;
    config.upstream = args.upstream;
    Ok(config)
}

/// The faults, as a proxy configuration still without its addresses.
fn validate_faults(args: &FaultArgs) -> Result<ProxyConfig, String> {
    if args.jitter > args.latency {
        return Err(format!(
            "--jitter {} must not exceed --latency {} (each delay is latency ± jitter)",
            crate::proxy::fmt_duration(args.jitter),
            crate::proxy::fmt_duration(args.latency)
        ));
    }
    let seed = args.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id()));
    Ok(ProxyConfig {
        latency: args.latency,
        jitter: args.jitter,
        loss: args.loss,
        loss_mode: match args.loss_mode {
            LossModeArg::Tcp => LossMode::Tcp,
            LossModeArg::Message => LossMode::Message,
        },
        reset_every: args.reset_every,
        silence_every: args.silence_every,
        seed,
        ..ProxyConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), "")
    })
}

impl FaultArgs {
    fn any(&self) -> bool {
        !self.latency.is_zero() || self.loss > 0.0 || self.reset_every.is_some() || self.silence_every.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_and_h() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in ["500", "5x", "ms", "-1s", "1d", "", "1e300h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_delay("61s").is_err());
        assert!(parse_reset_every("50ms").is_err());
        assert!(parse_restart_every("1s").is_err(), "a restart takes a moment");
        assert!(parse_restart_every("10").is_err(), "a unit is needed");
        assert_eq!(parse_restart_every("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_reset_every("60s"), Ok(Duration::from_secs(60)));
        assert!(parse_silence_every("500ms").is_err());
        assert_eq!(parse_silence_every("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_silence_limit("0.5").is_err() && parse_silence_limit("26").is_err());
        assert_eq!(parse_silence_limit("8"), Ok(8.0));
    }

    #[test]
    fn loss_takes_percentages_and_fractions() {
        assert_eq!(parse_loss("5%"), Ok(0.05));
        assert_eq!(parse_loss("0.05"), Ok(0.05));
        assert_eq!(parse_loss("100%"), Ok(1.0));
        assert_eq!(parse_loss("0"), Ok(0.0));
        assert!(parse_loss("5").unwrap_err().contains("5%"));
        for bad in ["101%", "-1%", "x", "%", "1.5"] {
            assert!(parse_loss(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams_are_host_and_port() {
        assert_eq!(parse_upstream("127.0.0.1:7878").as_deref(), Ok("127.0.0.1:7878"));
        assert_eq!(parse_upstream("plaza.internal:80").as_deref(), Ok("plaza.internal:80"));
        assert_eq!(parse_upstream("[::1]:7878").as_deref(), Ok("[::1]:7878"));
        for bad in ["http://127.0.0.1:7878", "127.0.0.1", ":7878", "host:0", "host:99999", "host:80/ws"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The most RSS may grow, in %, between an early and a late window of
    /// the steady load (after a warm-up of a fifth of it).
    #[arg(long, default_value = "5", value_parser = parse_drift)]
    pub max_rss_drift_pct: f64,
}

fn parse_drift(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number (percent)"))?;
    if v.is_finite() && (0.0..=1000.0).contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use 0–1000 (%)")) }
}

/// A soak needs the server in its own process: its RSS must be its own.
pub fn validate_soak(args: SoakArgs) -> Result<RunConfig, String> {
    if args.run.server.is_none() {
        return Err("soak needs --server http://host:port: a server in its own process, so its memory is its own (`make soak` starts one)".into());
    }
    let mut config = validate(args.run)?;
    config.soak = Some(crate::soak::SoakLimits { max_rss_drift_pct: args.max_rss_drift_pct });
    Ok(config)
}

#[derive(Debug, Clone, clap::Args)]
pub struct LadderArgs {
    /// What to climb, comma-separated, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "plaza,socketio-relay,socketio-batch")]
    pub targets: Vec<Target>,
    /// Users at each step, comma-separated, rising (whole rooms: rounded up).
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,600,800,1200,1600,2000,2400")]
    pub steps: Vec<u64>,
    /// Users in each room.
    #[arg(long, default_value = "40", value_parser = clap::value_parser!(u32).range(1..=200))]
    pub users_per_room: u32,
    /// Poses each user sends per second (0.1–30).
    #[arg(long, default_value = "20", value_parser = parse_rate)]
    pub rate: f64,
    /// Seconds each step runs, ramp included (2–3600).
    #[arg(long, default_value = "20", value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub step_duration: u64,
    /// Users start spread over this many seconds [default: a quarter of a step, at most 5].
    #[arg(long, value_parser = parse_seconds)]
    pub ramp: Option<f64>,
    /// The latency limit: a step is within it when p99 end to end is at most this and nothing was lost.
    #[arg(long, default_value = "60", value_parser = parse_limit)]
    pub p99_limit_ms: f64,
    /// A target stops climbing after a step with p99 above this [default: 3 × the limit].
    #[arg(long, value_parser = parse_limit)]
    pub stop_above_ms: Option<f64>,
    /// Runs of each step (1–9), each target's in turn, rung by rung. A step's latencies are the median of its runs', and it is within the limit only when every run lost nothing and got everyone in: one unlucky run (this VM's speed moves by the minute) no longer decides a capacity.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=9))]
    pub repeat: u32,
    /// When users send their poses (see `plaza-load run --help`).
    #[arg(long, value_enum, default_value = "tick")]
    pub send_at: SendAt,
    /// Where the socket.io peer is (server.js and node_modules).
    #[arg(long, default_value = "tools/peers/socketio")]
    pub peer_dir: PathBuf,
    /// Where ladder.json, ladder.html and each step's reports go.
    #[arg(long, default_value = "target/plaza-load/ladder")]
    pub out: PathBuf,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_limit(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of milliseconds"))?;
    if v.is_finite() && (1.0..=60_000.0).contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use 1–60000 ms")) }
}

/// Checks the steps rise and fit, and the ramp fits in a step.
pub fn validate_ladder(args: LadderArgs) -> Result<LadderConfig, String> {
    if args.steps.is_empty() {
        return Err("--steps needs at least one user count".into());
    }
    if let Some(bad) = args.steps.iter().find(|&&u| u == 0 || u > 20_000) {
        return Err(format!("--steps: {bad} users is out of range; use 1–20000"));
    }
    if args.steps.windows(2).any(|w| w[1] <= w[0]) {
        return Err(format!("--steps must rise: {:?}", args.steps));
    }
    let mut targets = Vec::new();
    for t in args.targets {
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let duration = args.step_duration as f64;
    let ramp = args.ramp.unwrap_or_else(|| (duration / 4.0).min(5.0));
    if ramp >= duration {
        return Err(format!("--ramp {ramp} must be shorter than --step-duration {}", args.step_duration));
    }
    let stop_above_ms = args.stop_above_ms.unwrap_or(args.p99_limit_ms * 3.0);
    if stop_above_ms < args.p99_limit_ms {
        return Err(format!("--stop-above-ms {stop_above_ms} is below --p99-limit-ms {}", args.p99_limit_ms));
    }
    Ok(LadderConfig {
        targets,
        steps: args.steps,
        users_per_room: args.users_per_room,
        rate_hz: args.rate,
        send_at: args.send_at,
        step_duration: Duration::from_secs(args.step_duration),
        ramp: Duration::from_secs_f64(ramp),
        p99_limit_ms: args.p99_limit_ms,
        stop_above_ms,
        repeat: args.repeat,
        peer_dir: args.peer_dir,
        out: args.out,
        progress: !args.quiet,
    })
}
