//! `plaza-load run …`: see `docs/load.md`. Exit 0 when everything arrived,
//! 1 when anything was lost or misrouted (or errors happened, or the run
//! could not be done), 2 for bad flags.
//!
//! `plaza-load ladder …`: exit 0 when every step ran (whatever the
//! capacities), 1 when a step could not be run, 2 for bad flags.
//!
//! `plaza-load proxy …`: runs until Ctrl-C, then exit 0; 1 when it can't
//! listen, 2 for bad flags.

use anyhow::Context;
use clap::Parser;
use plaza_load::cli::{Cli, Command};
use std::process::ExitCode;

/// A command whose flags checked out.
enum Job {
    Run(Box<plaza_load::cli::RunConfig>),
    Proxy(plaza_load::proxy::ProxyConfig),
    Ladder(plaza_load::ladder::LadderConfig),
}

fn main() -> ExitCode {
    use plaza_load::cli;
    let validated = match Cli::parse().command {
        Command::Run(args) => cli::validate(args).map(|c| Job::Run(Box::new(c))),
        Command::Soak(args) => cli::validate_soak(args).map(|c| Job::Run(Box::new(c))),
        Command::Proxy(args) => cli::validate_proxy(args).map(Job::Proxy),
        Command::Ladder(args) => cli::validate_ladder(args).map(Job::Ladder),
    };
    let job = match validated {
        Ok(job) => job,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    init_logs();
    match job {
        Job::Run(config) => run_main(&config),
        Job::Proxy(config) => proxy_main(config),
        Job::Ladder(config) => ladder_main(&config),
    }
}

/// The load tool's runtime; its threads' names tell its CPU from the
/// embedded server's.
fn load_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(plaza_load::server::LOAD_THREAD).build().context("can't start the tokio runtime")
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,plaza_load=info,{}", plaza_server::logging::QUIET_WEBRTC)));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn proxy_main(config: plaza_load::proxy::ProxyConfig) -> ExitCode {
    let served = load_runtime()
        .and_then(|runtime| Ok(runtime.block_on(plaza_load::proxy::serve(config))?));
    match served {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plaza-load proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_main(config: &plaza_load::cli::RunConfig) -> ExitCode {
    match run(config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("plaza-load: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs, writes the reports, prints the verdict; `Ok(passed)`.
fn run(config: &plaza_load::cli::RunConfig) -> anyhow::Result<bool> {
    let runtime = load_runtime()?;
    let result = runtime.block_on(plaza_load::run::run(config)).context("the run failed")?;
    let (json, html) = plaza_load::report::write(&config.out, &result).context("can't write the reports")?;
    let l = &result.latency_ms;
    println!(
        "plaza-load: {} users in {} rooms, {} Hz, {} s: latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms (p99 {:.1} ms at the socket); join p99 {:.1} ms; expected {} received {} lost {} misrouted {} errors {} reconnects {}; server cpu {:.0}% rss {:.0} MB",
        result.users,
        result.rooms,
        result.rate_hz,
        result.duration_s,
        l.p50,
        l.p99,
        l.max,
        result.latency_at_socket_ms.p99,
        result.join_ms.p99,
        result.expected,
        result.received,
        result.lost,
        result.misrouted,
        result.errors,
        result.reconnects,
        result.server.cpu_pct,
        result.server.rss_mb
    );
    if let Some(s) = result.server_seats.filter(|s| result.reconnects > 0 || s.held > 0.0) {
        println!(
            "plaza-load seats: {} reconnects, {} resumed their seat; the server held {} seats, resumed {}, found {} gone, let {} expire",
            result.reconnects, result.resumed, s.held, s.resumed, s.seat_gone, s.expired
        );
    }
    if let Some(x) = &result.restarts {
        let restarts = if x.done.is_empty() {
            "the server restarted under the run".to_owned()
        } else {
            let downs: Vec<String> = x.done.iter().map(|d| format!("{:.0}", d.down_ms)).collect();
            format!("{} (server down {} ms)", x.done.len(), downs.join(", "))
        };
        println!(
            "plaza-load restarts: {restarts}; {} sockets closed with 1001, back in the room p50 {:.0} ms p99 {:.0} ms max {:.0} ms; {} tries failed on the way; {} still away",
            x.drained_sockets,
            x.back_ms.p50,
            x.back_ms.p99,
            x.back_ms.max,
            x.retries,
            x.still_away
        );
    }
    if let Some(x) = &result.hostile {
        let kinds: Vec<String> = x
            .kinds
            .iter()
            .map(|k| {
                let ended = format!("{} {}/{}", k.kind, k.closed_as_expected + k.ended_without_close_frame, k.sessions - k.cut_by_run_end);
                match (k.expected_close, k.server_closes) {
                    (Some(code), Some(counted)) => format!("{ended} closed {code} (server counted {counted:.0})"),
                    (Some(code), None) => format!("{ended} closed {code} (server's count not read)"),
                    (None, _) => format!("{ended} connections closed"),
                }
            })
            .collect();
        println!("plaza-load hostile: {} a room; {}", x.per_room, kinds.join(", "));
    }
    if let Some(s) = &result.soak {
        println!(
            "plaza-load soak: RSS {:.1} → {:.1} MB ({:+.1}%, limit {}%); after: {} connections, tasks {} (idle: {}); {}",
            s.rss_early_mb,
            s.rss_late_mb,
            s.rss_drift_pct,
            s.max_rss_drift_pct,
            s.connections_after.map_or_else(|| "?".to_owned(), |c| format!("{c:.0}")),
            s.tasks_after.map_or_else(|| "?".to_owned(), |t| format!("{t:.0}")),
            s.tasks_idle.map_or_else(|| "?".to_owned(), |t| format!("{t:.0}")),
            if s.passed { "passed".to_owned() } else { format!("FAILED: {}", s.failure) }
        );
    }
    if let Some(v) = &result.voice {
        println!(
            "plaza-load voice: {} of {} peers connected ({} failed); frames sent {} heard {} lost {} misrouted {}; latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            v.connected, v.offered, v.failed, v.frames_sent, v.frames_heard, v.lost, v.misrouted, v.latency_ms.p50, v.latency_ms.p99, v.latency_ms.max
        );
    }
    if let Some(kb) = result.server.rss_per_user_kb {
        println!("plaza-load: server RSS per user {kb:.1} KB (peak − before, over {} users)", result.users_joined);
    }
    println!("plaza-load: wrote {} and {}", json.display(), html.display());
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if result.passed {
        Ok(true)
    } else {
        eprintln!("plaza-load: FAILED: {}", result.failure);
        Ok(false)
    }
}

fn ladder_main(config: &plaza_load::ladder::LadderConfig) -> ExitCode {
    match ladder(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plaza-load ladder: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn ladder(config: &plaza_load::ladder::LadderConfig) -> anyhow::Result<()> {
    let runtime = load_runtime()?;
    let result = runtime.block_on(plaza_load::ladder::ladder(config))?;
    let (json, html) = plaza_load::ladder::write(&config.out, &result).context("can't write the ladder's reports")?;
    for c in &result.capacity {
        println!(
            "plaza-load ladder: capacity {:<15} {}{} users within p99 {} ms{}",
            c.target.name(),
            if c.crossed { "" } else { ">= " },
            c.users,
            result.p99_limit_ms,
            c.crossed_at.map_or_else(String::new, |at| format!("; over at {at}: {}", c.bottleneck))
        );
    }
    if let Some(ratio) = result.ratio {
        println!("plaza-load ladder: Plaza / best socket.io = {}{ratio:.1}x", if result.ratio_is_lower_bound { ">= " } else { "" });
    }
    let by_limit: Vec<String> = result.by_limit.iter().map(|at| format!("{:.0} ms {}", at.p99_limit_ms, at.ratio_text())).collect();
    println!("plaza-load ladder: the ratio by p99 limit: {}", by_limit.join(" · "));
    println!("plaza-load ladder: wrote {} and {}", json.display(), html.display());
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// mimalloc instead of glibc's malloc: the load tool is what saturates
/// first, and mimalloc cut its CPU per delivered pose by 2–8%
/// (docs/benchmarks.md, sessions 8 and 9). Its RSS is not measured; the server's
/// is, and the server keeps its own allocator. In-process runs (no
/// `--server`) share this allocator with the embedded server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
