//! The command line, defined once: `main` parses it, and `completions` and `generate-man` render it,
//! so `--help`, the shell completions and the man pages cannot disagree.
//!
//! A new subcommand is a variant of [`Command`] (its doc comment is its help and its man page) plus
//! an arm in `main`'s dispatch; nothing else needs to know.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueHint};
use clap_complete::Shell;
use fulcrum::config::DEFAULT_PATH;
use fulcrum::daemon::pidfile::DEFAULT_PID_FILE;

/// An L4/L7 load balancer: balances traffic over a service's instances, keeps it away from failing
/// ones, and lets them back in when they recover.
///
/// Fulcrum is configured with one TOML file (default /etc/fulcrum/fulcrum.toml). An http listener
/// serves HTTP/1.1 and h2c on the same port and tunnels WebSocket upgrades; a tcp listener copies
/// bytes both ways. Servers are picked per upstream by the configured strategy, failing servers are
/// found by health checks and ejection, and an admin endpoint serves health, Prometheus metrics and
/// status. The configuration reference is /usr/share/doc/fulcrum/README.md.gz.
#[derive(Parser)]
#[command(name = "fulcrum", version, about)]
pub struct Cli {
    /// Log level or filter (info, debug, fulcrum=debug); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each variant's doc comment is its `--help` text and its man page.
#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT; SIGHUP reloads the configuration.
    ///
    /// On SIGTERM or SIGINT every listening socket closes, idle connections close, and in-flight
    /// requests finish (with Connection: close) until they are done or runtime.shutdown_timeout
    /// passes; then the process exits 0. It exits 1 when the configuration is invalid or an address
    /// cannot be bound, also when another process listens there ("address in use"). SIGHUP re-reads
    /// the file and applies it without closing a client connection, or changes nothing when it is
    /// invalid; SIGUSR1 reopens the access log files. Under systemd (Type=notify) it reports
    /// READY, RELOADING, STOPPING and, with WatchdogSec, pings the watchdog while every worker
    /// thread runs. Logs go to standard error (the journal, under systemd).
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH, value_hint = ValueHint::FilePath)]
        config: PathBuf,
        /// Where to write the pid, for `fulcrum reload`.
        #[arg(long, default_value = DEFAULT_PID_FILE, value_hint = ValueHint::FilePath)]
        pid_file: PathBuf,
    },
    /// Validate the configuration, then have the running daemon reload it.
    ///
    /// Applies the same rules as check, then sends SIGHUP to the pid in the pid file and waits for
    /// the daemon's verdict, which it writes beside the pid file. Prints "reloaded: ..." and exits
    /// 0, or prints why the file or the daemon refused it and exits 1. systemctl reload runs it.
    Reload {
        /// The configuration file (the one the daemon runs with).
        #[arg(short, long, default_value = DEFAULT_PATH, value_hint = ValueHint::FilePath)]
        config: PathBuf,
        /// The running daemon's pid file.
        #[arg(long, default_value = DEFAULT_PID_FILE, value_hint = ValueHint::FilePath)]
        pid_file: PathBuf,
        /// How long to wait for the daemon's verdict.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Validate the configuration and exit: 0 when valid, 1 with the error otherwise.
    ///
    /// Prints "configuration OK", or the error naming the file, line, column and key. Host names in
    /// server addresses are resolved, as at start.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH, value_hint = ValueHint::FilePath)]
        config: PathBuf,
    },
    /// Print the shell completion script for SHELL to standard output.
    ///
    /// The Debian package installs them for bash, zsh and fish; elsewhere, e.g.
    /// fulcrum completions bash > ~/.local/share/bash-completion/completions/fulcrum
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// The package build's man page generator: parsed as the hidden subcommand `generate-man` but kept
/// out of [`Command`], so it shows in no help text, man page or shell completion.
#[derive(Parser)]
#[command(
    about = "Write fulcrum.1 and one page per subcommand into DIR (the package build runs it)",
    long_about = None
)]
pub struct GenerateMan {
    /// The directory to write into (created if missing).
    #[arg(value_hint = ValueHint::DirPath)]
    pub dir: PathBuf,
    /// The date on the pages (YYYY-MM-DD); the package passes its SOURCE_DATE_EPOCH's.
    #[arg(long)]
    pub date: Option<String>,
}

/// What the process was asked to do.
pub enum Invocation {
    /// A command of the public command line.
    User(Cli),
    /// `fulcrum generate-man DIR`.
    GenerateMan(GenerateMan),
}

const GENERATE_MAN: &str = "generate-man";

/// Parses the process's arguments, exiting with clap's usage message (status 2) when they are wrong.
pub fn parse() -> Invocation {
    let generator = GenerateMan::command().name(GENERATE_MAN).hide(true);
    let matches = Cli::command().subcommand(generator).get_matches();
    let parsed = match matches.subcommand() {
        Some((GENERATE_MAN, sub)) => {
            GenerateMan::from_arg_matches(sub).map(Invocation::GenerateMan)
        }
        _ => Cli::from_arg_matches(&matches).map(Invocation::User),
    };
    parsed.unwrap_or_else(|e| e.exit())
}
