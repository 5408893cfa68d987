//! The `fulcrum` binary: dispatch of the command line (defined in `cli`) and logging setup.

mod cli;
mod manual;

use std::process::ExitCode;

use anyhow::Context;
use cli::{Command, GenerateMan, Invocation};
use fulcrum::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Invocation::User(cli) => cli,
        Invocation::GenerateMan(args) => return generate_man(&args),
    };
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
        Command::Completions { shell } => match manual::write_completions(shell) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fulcrum: cannot write the completions: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn generate_man(args: &GenerateMan) -> ExitCode {
    match manual::write_man_pages(&args.dir, args.date.as_deref()) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let dir = args.dir.display();
            eprintln!("fulcrum: cannot write the man pages into {dir}: {e}");
            ExitCode::FAILURE
        }
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
