//! The `fulcrum` binary: dispatch of the command line (defined in `cli`) and logging setup.

mod cli;
mod manual;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cli::{Command, GenerateMan, Invocation};
use fulcrum::config::Config;
use fulcrum::daemon::pidfile;
use fulcrum::daemon::Options;
use tokio::time::Instant;
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
        Command::Reload {
            config,
            pid_file,
            timeout,
        } => match reload(&config, &pid_file, timeout) {
            Ok(message) => {
                println!("reloaded: {message}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fulcrum: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, pid_file } => match run(&config, pid_file) {
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

fn run(path: &Path, pid_file: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let metrics = fulcrum::metrics::install_recorder().context("cannot start metrics")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        workers = config.runtime.worker_threads,
        "starting"
    );
    let options = Options {
        pid_file: Some(pid_file),
    };
    fulcrum::daemon::run(config, metrics, options)?;
    Ok(())
}

/// `fulcrum reload`: the same validation as `check`, then SIGHUP to the pid in the pid file, then
/// the daemon's own verdict from the status file beside it.
fn reload(config: &Path, pid_file: &Path, timeout: Duration) -> anyhow::Result<String> {
    Config::load(config)?;
    let pid = pidfile::read_pid(pid_file).with_context(|| {
        format!(
            "cannot read the pid file {} (is fulcrum running, with this --pid-file?)",
            pid_file.display()
        )
    })?;
    let before = pidfile::read_status(pid_file);
    if let Some(running) = &before {
        let same =
            std::fs::canonicalize(&running.config).ok() == std::fs::canonicalize(config).ok();
        anyhow::ensure!(
            same,
            "the running fulcrum (pid {pid}) reads {}, not {}",
            running.config.display(),
            config.display()
        );
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!(
            "cannot signal fulcrum (pid {pid} from {}): {e}",
            pid_file.display()
        );
    }
    let seen = before.map_or(0, |s| s.sequence);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = pidfile::read_status(pid_file).filter(|s| s.sequence > seen) {
            anyhow::ensure!(status.ok, "reload refused: {}", status.message);
            return Ok(status.message);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "fulcrum (pid {pid}) did not answer within {}",
        humantime::format_duration(timeout)
    )
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
