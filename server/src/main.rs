use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;

/// Plaza's server.
#[derive(Debug, Parser)]
#[command(name = "plaza-server", version)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "PLAZA_BIND", default_value = "127.0.0.1:7878")]
    bind: SocketAddr,
    /// Log format: json (one object a line) or pretty.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", value_parser = ["json", "pretty"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("can't listen on {}", config.bind))?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    plaza_server::run(listener, shutdown).await.context("server failed")
}
