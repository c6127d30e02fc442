use anyhow::{Context, bail};
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Plaza's server.
#[derive(Debug, Parser)]
#[command(name = "plaza-server", version = plaza_server::build::long_version())]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "PLAZA_BIND", default_value = "127.0.0.1:7878")]
    bind: SocketAddr,
    /// Where the server keeps its files (default: $XDG_DATA_HOME/plaza).
    #[arg(long, env = "PLAZA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… (default: sqlite://<data dir>/plaza.db).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Share rooms with other instances through Redis
    /// (redis://HOST:PORT[/DB]); they also need one --database-url
    /// (Postgres) and one PLAZA_TOKEN_SECRET. Unset: a single instance.
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url)]
    redis_url: Option<String>,
    /// With --redis-url: the URL other instances reach this one at,
    /// http://HOST:PORT (default: http://<--bind>, which then can't be an
    /// unspecified address such as 0.0.0.0).
    #[arg(long, env = "PLAZA_ADVERTISE_URL", value_parser = parse_advertise_url)]
    advertise_url: Option<String>,
    /// Local development: make (once) and keep a token secret in the data dir.
    #[arg(long)]
    dev: bool,
    /// Seconds `/ready` answers 503 before sockets are closed on shutdown.
    #[arg(long, env = "PLAZA_DRAIN_GRACE_S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    drain_grace_s: u64,
    /// Most WebSockets at once; the next is answered 503 `server_full` with
    /// Retry-After. Default: seven eighths of what the open-file limit
    /// (raised to its hard limit at start) holds after 64 for the rest of
    /// the server; the last eighth is for HTTP.
    #[arg(long, env = "PLAZA_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Bots wandering the `plaza` room, chatting now and then.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    bots: u32,
    /// The address the voice SFU's UDP sockets bind to, and that its host
    /// candidates carry (default: --bind's address; 0.0.0.0 binds every
    /// interface but loopback).
    #[arg(long, env = "PLAZA_VOICE_IP")]
    voice_ip: Option<IpAddr>,
    /// The address clients reach voice at, when a NAT stands in front of
    /// the server (it replaces the host candidates' address).
    #[arg(long, env = "PLAZA_VOICE_PUBLIC_IP")]
    voice_public_ip: Option<IpAddr>,
    /// Most voice peers at once; 0 turns voice off. Each holds a UDP
    /// socket, a file descriptor outside the connection budget. Default:
    /// 512, or an eighth of that budget when the open-file limit is lower.
    #[arg(long, env = "PLAZA_VOICE_MAX_PEERS", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    voice_max_peers: Option<u32>,
    /// The UDP ports voice peers take, FIRST-LAST (e.g. 40000-40099): the
    /// range to open in a firewall or publish from a container. Each peer
    /// takes one, so it also bounds the voice peers. Default: any free port.
    #[arg(long, env = "PLAZA_VOICE_PORTS")]
    voice_ports: Option<plaza_server::voice::PortRange>,
    /// Log format: json (one object a line) or pretty.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", value_parser = ["json", "pretty"])]
    log_format: String,
}

fn data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &config.data_dir {
        return Ok(dir.clone());
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .context("can't find a data directory: set --data-dir, PLAZA_DATA_DIR, XDG_DATA_HOME or HOME")?;
    Ok(base.join("plaza"))
}

/// `PLAZA_TOKEN_SECRET`, or with `--dev` a secret kept in the data dir.
fn token_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Ok(secret) = std::env::var("PLAZA_TOKEN_SECRET") {
        if secret.len() < 16 {
            bail!("PLAZA_TOKEN_SECRET is {} bytes; use at least 16 random bytes", secret.len());
        }
        return Ok(secret.into_bytes());
    }
    if !config.dev {
        bail!("PLAZA_TOKEN_SECRET is not set; set it to a long random string, or pass --dev for local use");
    }
    let dir = data_dir(config)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("can't create data dir {}", dir.display()))?;
    let path = dir.join("dev-token-secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 16 => Ok(secret),
        Ok(_) => bail!("{} is too short; delete it to make a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = plaza_server::auth::random_token(32).into_bytes();
            std::fs::write(&path, &secret).with_context(|| format!("can't write {}", path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("can't read {}", path.display())),
    }
}

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let traces = match plaza_server::logging::init(&config.log_format) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("plaza-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if traces.is_some() {
        tracing::info!(endpoint = %std::env::var(plaza_server::otel::ENDPOINT_ENV).unwrap_or_default(), "exporting join-flow traces by OTLP/HTTP");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plaza-server: can't start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One clear line for a bad start, not a backtrace.
    let served = runtime.block_on(serve(config));
    // Flush the last spans (the exporter has its own thread and client).
    drop(runtime);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plaza-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--voice-max-peers`, or its default; warns when the voice sockets could
/// take descriptors the WebSocket places count on.
fn voice_max_peers(flag: Option<u32>, fd_limit: Option<plaza_server::capacity::FdLimit>) -> usize {
    const DEFAULT: usize = 512;
    let eighth = fd_limit.map(|l| plaza_server::capacity::connection_fd_budget(l.soft) / 8);
    match (flag, eighth) {
        (None, Some(eighth)) => DEFAULT.min(eighth),
        (None, None) => DEFAULT,
        (Some(n), Some(eighth)) if n as usize > eighth => {
            tracing::warn!(voice_max_peers = n, open_file_limit = fd_limit.map_or(0, |l| l.soft), "each voice peer holds a file descriptor: with every place taken, sockets can run out of them; raise the open-file limit or lower --voice-max-peers");
            n as usize
        }
        (Some(n), _) => n as usize,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let database_url = match &config.database_url {
        Some(url) => url.clone(),
        None => {
            let dir = data_dir(&config)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("can't create data dir {}", dir.display()))?;
            format!("sqlite://{}", dir.join("plaza.db").display())
        }
    };
    // Each connection is a file descriptor: take all the limit allows.
    let fd_limit = plaza_server::capacity::raise_fd_limit();
    let max_connections = plaza_server::capacity::max_connections(config.max_connections, fd_limit)?;
    if let Some(limit) = fd_limit {
        tracing::info!(soft = limit.soft, hard = limit.hard, "open-file limit");
        let budget = plaza_server::capacity::connection_fd_budget(limit.soft);
        if max_connections > plaza_server::capacity::default_max_connections(limit.soft) {
            tracing::warn!(
                max_connections,
                left_for_http = budget.saturating_sub(max_connections),
                "with every WebSocket place taken, few connections are left for sign-in, scrapes and /health"
            );
        }
    }
    let mut voice_max_peers = voice_max_peers(config.voice_max_peers, fd_limit);
    if let Some(ports) = config.voice_ports
        && ports.len() < voice_max_peers
    {
        tracing::warn!(voice_ports = %ports, voice_max_peers, "fewer voice ports than voice peers: at most {} peers", ports.len());
        voice_max_peers = ports.len();
    }
    let advertise_url = match &config.redis_url {
        Some(_) => advertise_url(config.bind, config.advertise_url.as_deref())?,
        None => String::new(),
    };
    let server = plaza_server::ServerConfig {
        token_secret: token_secret(&config)?,
        access_ttl: std::time::Duration::from_secs(15 * 60),
        database_url,
        redis_url: config.redis_url.clone(),
        advertise_url,
        drain_grace: std::time::Duration::from_secs(config.drain_grace_s),
        heartbeat_timeout: plaza_server::gateway::HEARTBEAT_TIMEOUT,
        bots: config.bots,
        bots_room: "plaza".into(),
        socket_send_buffer: plaza_server::DEFAULT_SOCKET_SEND_BUFFER,
        max_connections,
        max_tcp_connections: plaza_server::capacity::max_tcp_connections(fd_limit),
        voice: plaza_server::voice::VoiceConfig {
            ip: config.voice_ip.unwrap_or(config.bind.ip()),
            public_ip: config.voice_public_ip,
            max_peers: voice_max_peers,
            ports: config.voice_ports,
        },
        abuse_cooldown: plaza_server::ABUSE_COOLDOWN,
        request_head_timeout: plaza_server::serve::REQUEST_HEAD_TIMEOUT,
    };
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("can't listen on {}", config.bind))?;
    // SIGTERM (orchestrators) or Ctrl-C (people) starts the drain.
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        }
    };
    plaza_server::run(server, listener, shutdown).await.context("server failed")
}

/// Where other instances reach this one: `--advertise-url`, or `--bind`
/// when that names one address.
fn advertise_url(bind: SocketAddr, given: Option<&str>) -> anyhow::Result<String> {
    match given {
        Some(url) => Ok(url.to_owned()),
        None if bind.ip().is_unspecified() => bail!("--bind {bind} listens on every address, so other instances can't be told which one reaches this one; pass --advertise-url http://HOST:PORT"),
        None => Ok(format!("http://{bind}")),
    }
}

/// `--advertise-url`: http://HOST:PORT, no path.
fn parse_advertise_url(url: &str) -> Result<String, String> {
    let wrong = || format!("`{url}` must be http://HOST:PORT (the address other instances reach this one at), with a port from 1 to 65535 and no path");
    let host_port = plaza_shared::flags::http_base(url).map_err(|_| wrong())?;
    let port = host_port.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port)).and_then(|p| p.parse::<u16>().ok());
    if port.is_none_or(|p| p == 0) {
        return Err(wrong());
    }
    Ok(format!("http://{host_port}"))
}

/// `--redis-url`: redis://[USER:PASSWORD@]HOST:PORT[/DB], as the Redis
/// client reads it.
fn parse_redis_url(url: &str) -> Result<String, String> {
    if !url.starts_with("redis://") {
        return Err(format!("`{url}` must be redis://HOST:PORT[/DB] (TLS and Unix sockets are not supported)"));
    }
    redis::Client::open(url).map_err(|e| format!("`{url}` is not a Redis URL ({e}); use redis://HOST:PORT[/DB]"))?;
    Ok(url.to_owned())
}
