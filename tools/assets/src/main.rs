//! `plaza-assets`: make, check and report Plaza's assets (see docs/assets.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use plaza_assets::report::Report;
use plaza_assets::{check, make, repo_root};

#[derive(Debug, Parser)]
#[command(name = "plaza-assets", version, about = "Makes, compresses and checks Plaza's assets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate every asset (deterministic: same bytes every run).
    Make {
        /// Output folder [default: assets/ at the repository root].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate every .glb, .ktx2 and .wgsl; exits 1 naming each bad file.
    Check {
        /// Folders to search [default: assets/ and client/ at the repository root].
        dirs: Vec<PathBuf>,
    },
    /// Measure the assets and write docs/assets.md.
    Report {
        /// Assets folder [default: assets/ at the repository root].
        #[arg(long)]
        assets: Option<PathBuf>,
        /// Markdown file to write; `-` prints it [default: docs/assets.md].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plaza-assets: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = repo_root(&std::env::current_dir().context("no current directory")?);
    match cli.command {
        Command::Make { out } => {
            let out = out.unwrap_or_else(|| root.join("assets"));
            let made = make::make(&out).with_context(|| format!("making assets in {}", out.display()))?;
            let total: u64 = made.files.iter().map(|(_, n)| n).sum();
            println!("wrote {} files ({:.2} MiB) to {}", made.files.len(), total as f64 / (1024.0 * 1024.0), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dirs } => {
            let dirs = if dirs.is_empty() { vec![root.join("assets"), root.join("client")] } else { dirs };
            let checked = check::check(&dirs);
            for failure in &checked.failures {
                println!("FAIL {failure}");
            }
            let summary = format!(
                "{} files: {} .glb, {} .ktx2, {} .wgsl",
                checked.files.len(),
                checked.count("glb"),
                checked.count("ktx2"),
                checked.count("wgsl")
            );
            if checked.ok() {
                println!("ok: {summary}");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} problems in {summary}", checked.failures.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Report { assets, out } => {
            let assets = assets.unwrap_or_else(|| root.join("assets"));
            let report = Report::build(&assets)?;
            let text = report.markdown();
            match out {
                Some(p) if p.as_os_str() == "-" => print!("{text}"),
                out => {
                    let out = out.unwrap_or_else(|| root.join("docs").join("assets.md"));
                    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
                    print!("{}", report.tables());
                    println!("wrote {}", out.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
