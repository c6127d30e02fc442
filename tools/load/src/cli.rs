//! The command line. Bad values get clap's one clear line and exit 2.

use clap::{Parser, Subcommand, ValueEnum};
use plaza_shared::codec::Subprotocol;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "plaza-load", version, about = "Plaza's load tool: simulated users against a Plaza server, with latency and delivery reports")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulated users in rooms: walk, ping and chat; measure latency and
    /// delivery; write result.json and report.html.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// plaza.v1.bin, the compact form the client uses
    Bin,
    /// plaza.v1.json
    Json,
}

impl ProtocolArg {
    pub fn subprotocol(self) -> Subprotocol {
        match self {
            ProtocolArg::Bin => Subprotocol::Binary,
            ProtocolArg::Json => Subprotocol::Json,
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
    /// WebSocket subprotocol.
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
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number; use 0.1–30 (poses per second)"))?;
    if (0.1..=30.0).contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use 0.1–30 (poses per second, the server's limit is 30)")) }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && (0.0..=86_400.0).contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use 0–86400 seconds")) }
}

fn parse_ping(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && (0.5..=25.0).contains(&v) { Ok(v) } else { Err(format!("{v} is out of range; use 0.5–25 seconds (the server drops a socket silent for 30 s)")) }
}

fn parse_server(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| format!("`{s}` must start with http:// (https is not supported)"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{s}` must be http://host:port with no path"));
    }
    Ok(format!("http://{host}"))
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
    pub protocol: Subprotocol,
    pub out: PathBuf,
    /// `None`: no chat.
    pub chat_every: Option<Duration>,
    pub ping_every: Duration,
    pub progress: bool,
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
        protocol: args.protocol.subprotocol(),
        out: args.out,
        chat_every: (args.chat_every > 0.0).then(|| Duration::from_secs_f64(args.chat_every)),
        ping_every: Duration::from_secs_f64(args.ping_every),
        progress: !args.quiet,
    })
}
