//! The running daemon: binds every socket, starts the workers, and runs the control thread.
//!
//! Workers are plain threads, one per `worker_threads`, each with its own current-thread tokio
//! runtime, its own SO_REUSEPORT sockets and its own upstream pool: a request is served start to end
//! on one thread and never wakes another (the nginx/HAProxy worker shape). The thread that calls
//! [`run`] becomes the control thread: signals, reloads (the [`registry`] of what runs), the admin
//! endpoint, the upstreams' writers, systemd notifications, and the drain.

pub mod notify;
pub mod pidfile;
mod registry;
mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin;
use crate::config::Config;
use crate::lifecycle::shutdown_channel;
use pidfile::{PidFile, ReloadStatus};
use registry::Registry;
use workers::{Shared, Workers};

/// Why the daemon could not start, or why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener's address could not be bound.
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        /// The listener's name (`admin` for the admin endpoint).
        listener: String,
        /// The address from the config.
        addr: SocketAddr,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// Something else listens on the address already (another Fulcrum, most likely).
    #[error("listener `{listener}`: cannot bind {addr}: address in use (another process listens there; is another fulcrum running?)")]
    InUse {
        /// The listener's name (`admin` for the admin endpoint).
        listener: String,
        /// The address from the config.
        addr: SocketAddr,
    },
    /// The new configuration changes something only a restart can.
    #[error("{0} needs a restart")]
    NeedsRestart(String),
    /// A listener's access log could not be opened.
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::OpenError),
    /// The admin endpoint could not listen.
    #[error("admin endpoint: {0}")]
    Admin(#[from] admin::BindError),
    /// A reload's file is invalid (the same errors as `fulcrum check`).
    #[error("{0}")]
    Config(#[from] crate::config::Error),
    /// A runtime, thread or signal handler could not be set up.
    #[error("cannot start: {0}")]
    Setup(#[from] std::io::Error),
}

impl Error {
    /// A bind error, told apart when the address is in use.
    fn bind(listener: &str, addr: SocketAddr, source: std::io::Error) -> Error {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            Error::InUse {
                listener: listener.to_string(),
                addr,
            }
        } else {
            Error::Bind {
                listener: listener.to_string(),
                addr,
                source,
            }
        }
    }
}

/// How the daemon is run, beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where to write the pid (for `fulcrum reload`); `None` writes none.
    pub pid_file: Option<PathBuf>,
}

/// `fulcrum_config_reloads_total{result}`.
struct Reloads {
    ok: Counter,
    error: Counter,
}

/// Runs the daemon until SIGTERM or SIGINT, then drains; returns when the drain ends. SIGHUP
/// reloads the configuration file.
pub fn run(config: Config, metrics: PrometheusHandle, options: Options) -> Result<(), Error> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers first: a SIGTERM that arrives right after the "listening" lines must drain, not kill.
    let (mut sigterm, mut sigint, mut sighup, mut sigusr1) = {
        let _enter = control.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
            signal(SignalKind::user_defined1())?,
        )
    };
    let (trigger, shutdown) = shutdown_channel();
    let limit = Arc::new(Semaphore::new(config.runtime.max_connections as usize));
    let tracker = TaskTracker::new();
    let watchdog = notify::watchdog_interval();
    let shortest_idle = config.upstreams.iter().map(|u| u.pool_idle_timeout).min();
    let shared = Shared {
        limit: Arc::clone(&limit),
        tracker: tracker.clone(),
        sweep: crate::proxy::http::sweep_interval(shortest_idle.unwrap_or(Duration::from_secs(4))),
        // Four beats per ping: a running worker always beats between two pings.
        heartbeat: watchdog.map(|ping| (ping / 4).max(Duration::from_millis(1))),
    };
    let workers = Workers::start(config.runtime.worker_threads, &shared)?;
    control.block_on(async {
        let mut registry = Registry::new(
            workers,
            shutdown.clone(),
            limit,
            config.runtime.max_connections,
        );
        registry.apply(&config).await?;
        if let Some(admin) = &config.admin {
            let socket = admin::bind(&admin.bind)?;
            let state = Arc::new(admin::State {
                upstreams: registry.directory(),
                metrics,
                token: admin.token.clone(),
            });
            tokio::spawn(admin::serve(socket, state, shutdown.clone()));
        }
        let pid_file = options.pid_file.as_deref().and_then(create_pid_file);
        let reloads = Reloads {
            ok: metrics::counter!("fulcrum_config_reloads_total", "result" => "ok"),
            error: metrics::counter!("fulcrum_config_reloads_total", "result" => "error"),
        };
        let mut status = ReloadStatus {
            sequence: 0,
            ok: true,
            config: config.path.clone(),
            message: "started".into(),
        };
        record(pid_file.as_ref(), &status);
        tokio::spawn(return_freed_memory());
        if let Some(every) = watchdog {
            let beats = registry.workers().heartbeats();
            tokio::spawn(notify::Watchdog::new(beats).run(every));
            info!(?every, "systemd watchdog on: pinging while every worker runs");
        }
        notify::ready("serving");
        let mut running = config;
        let signal = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                // logrotate's convention: the files were renamed; open the paths anew.
                _ = sigusr1.recv() => registry.access_logs().reopen(),
                _ = sighup.recv() => {
                    status.sequence += 1;
                    let outcome = reload(&mut registry, &mut running).await;
                    (status.ok, status.message) = match outcome {
                        Ok(summary) => {
                            reloads.ok.increment(1);
                            info!(config = %running.path.display(), %summary, "configuration reloaded");
                            (true, summary)
                        }
                        Err(e) => {
                            reloads.error.increment(1);
                            error!(config = %running.path.display(), error = %e, "reload refused; the running configuration is unchanged");
                            (false, e.to_string())
                        }
                    };
                    record(pid_file.as_ref(), &status);
                    notify::ready(if status.ok { "serving" } else { "serving; last reload refused" });
                }
            }
        };
        notify::stopping();
        info!(
            signal,
            in_flight = tracker.len(),
            "shutting down: no new connections, draining in-flight work"
        );
        registry.close_listening();
        trigger.fire();
        tracker.close();
        let timeout = running.runtime.shutdown_timeout;
        match tokio::time::timeout(timeout, tracker.wait()).await {
            Ok(()) => info!("shutdown complete"),
            Err(_) => warn!(
                cut = tracker.len(),
                ?timeout,
                "shutdown_timeout passed; cutting the connections still open"
            ),
        }
        registry.access_logs().flush(Duration::from_secs(1));
        drop(pid_file);
        Ok::<(), Error>(())
    })
}

/// Reads the running file again and applies it; says what changed, or why nothing did.
async fn reload(registry: &mut Registry, running: &mut Config) -> Result<String, Error> {
    notify::reloading();
    let path = running.path.clone();
    // Off the control thread: validation resolves host names, which may block for seconds.
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| Error::Setup(std::io::Error::other(e)))??;
    let mut kept = Vec::new();
    if loaded.runtime.worker_threads != running.runtime.worker_threads {
        kept.push("runtime.worker_threads");
    }
    let admin = |c: &Config| c.admin.as_ref().map(|a| (a.bind.clone(), a.token.clone()));
    if admin(&loaded) != admin(running) {
        kept.push("admin");
    }
    registry.apply(&loaded).await?;
    let summary = format!(
        "{} listeners, {} upstreams",
        loaded.listeners.len(),
        loaded.upstreams.len()
    );
    if !kept.is_empty() {
        warn!(keys = ?kept, "these settings take effect at the next restart; the running ones stay");
    }
    *running = loaded;
    Ok(summary)
}

/// Writes the pid file; a daemon that cannot is still useful (SIGHUP reloads it), so this warns.
fn create_pid_file(path: &Path) -> Option<PidFile> {
    match PidFile::create(path) {
        Ok(pid) => Some(pid),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot write the pid file; `fulcrum reload` will not find this daemon (SIGHUP still reloads it)");
            None
        }
    }
}

fn record(pid_file: Option<&PidFile>, status: &ReloadStatus) {
    if let Some(pid) = pid_file {
        if let Err(e) = pid.record(status) {
            warn!(error = %e, "cannot write the reload status beside the pid file");
        }
    }
}

/// Once a second, hands memory the workers freed after a burst back to the operating system.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        crate::proxy::buffer::return_freed_memory();
    }
}
