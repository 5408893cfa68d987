//! The `fulcrum` binary: command-line parsing, logging setup, and the daemon's entry points.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fulcrum::config::{Config, DEFAULT_PATH};
use tracing_subscriber::EnvFilter;

/// An L4/L7 load balancer: balances traffic over a service's instances, keeps it away from failing
/// ones, and lets them back in when they recover.
#[derive(Parser)]
#[command(name = "fulcrum", version, about)]
struct Cli {
    /// Log level or filter (`info`, `debug`, `fulcrum=debug`); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration and exit: 0 when valid, 1 with the error otherwise.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Printed directly, not logged: a fatal error must show whatever the log filter.
                eprintln!("fulcrum: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let metrics = fulcrum::metrics::install_recorder().context("cannot start metrics")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        workers = config.runtime.worker_threads,
        "starting"
    );
    fulcrum::daemon::run(config, metrics)?;
    Ok(())
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
