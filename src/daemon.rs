//! The running daemon: binds every socket, starts the workers, and runs the control thread.
//!
//! Workers are plain threads, one per `worker_threads`, each with its own current-thread tokio
//! runtime, its own SO_REUSEPORT sockets and its own upstream pool: a request is served start to end
//! on one thread and never wakes another (the nginx/HAProxy worker shape). The thread that calls
//! [`run`] becomes the control thread: signals, the admin endpoint, metrics upkeep, and the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::access_log::AccessLogs;
use crate::admin;
use crate::config::{Config, Mode, Target};
use crate::lifecycle::{shutdown_channel, Shutdown, Tracker};
use crate::listener::{self, Bound};
use crate::proxy::ListenerCtx;
use crate::table::{Directory, Upstream, Writer};

/// Why the daemon could not start.
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
    /// A listener's access log could not be opened.
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::OpenError),
    /// A runtime, thread or signal handler could not be set up.
    #[error("cannot start: {0}")]
    Setup(#[from] std::io::Error),
}

/// A worker's share of the listening sockets.
type WorkerSockets = Vec<(Arc<ListenerCtx>, Mode, std::net::TcpListener)>;

/// Runs the daemon until SIGTERM or SIGINT, then drains; returns when the drain ends.
pub fn run(config: Config, metrics: PrometheusHandle) -> Result<(), Error> {
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
    let access_logs = AccessLogs::default();
    let workers = config.runtime.worker_threads;
    let tracker = Tracker::default();
    let (upstreams, writers) = build_upstreams(&config);
    let mut per_worker: Vec<WorkerSockets> = (0..workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let log = match &l.access_log {
            Some(log) => Some(access_logs.open(log, &l.name)?),
            None => None,
        };
        let ctx = Arc::new(ListenerCtx::new(l, &upstreams, tracker.clone()).with_access_log(log));
        for &addr in &l.binds {
            let bind_error = |source| Error::Bind {
                listener: l.name.clone(),
                addr,
                source,
            };
            let bound = Bound::new(addr, l.backlog, l.reuse_port, workers).map_err(bind_error)?;
            info!(listener = %l.name, addr = %bound.addr, "listening");
            let sockets = bound.into_worker_sockets(workers).map_err(bind_error)?;
            for (worker, socket) in sockets.into_iter().enumerate() {
                per_worker[worker].push((Arc::clone(&ctx), l.mode, socket));
            }
        }
    }
    let admin_socket = match &config.admin {
        Some(admin) => {
            let socket = listener::bind(admin.bind, 128, false).map_err(|source| Error::Bind {
                listener: "admin".into(),
                addr: admin.bind,
                source,
            })?;
            info!(addr = %socket.local_addr()?, "admin listening");
            Some(socket)
        }
        None => None,
    };
    let (trigger, shutdown) = shutdown_channel();
    let limit = Arc::new(Semaphore::new(config.runtime.max_connections as usize));
    let shortest_idle = config.upstreams.iter().map(|u| u.pool_idle_timeout).min();
    let sweep = crate::proxy::http::sweep_interval(shortest_idle.unwrap_or(Duration::from_secs(4)));
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let limit = Arc::clone(&limit);
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name(format!("fulcrum-w{index}"))
            .spawn(move || worker(runtime, sockets, limit, sweep, shutdown))?;
    }
    control.block_on(async {
        for writer in writers {
            tokio::spawn(writer.run(shutdown.clone()));
        }
        if let Some(socket) = admin_socket {
            let state = Arc::new(admin::State {
                upstreams: Arc::new(Directory::new(upstreams)),
                metrics: metrics.clone(),
            });
            tokio::spawn(admin::serve(
                tokio::net::TcpListener::from_std(socket)?,
                state,
                shutdown.clone(),
            ));
        }
        tokio::spawn(metrics_upkeep(metrics));
        tokio::spawn(return_freed_memory());
        let signal = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                // SIGHUP's default action would kill the daemon; an operator used to nginx sends it
                // to reload. Until hot reload exists it changes nothing, and says so.
                _ = sighup.recv() => warn!("SIGHUP: hot reload is not built yet; the running configuration is unchanged"),
                // logrotate's convention: the files were renamed; open the paths anew.
                _ = sigusr1.recv() => access_logs.reopen(),
            }
        };
        info!(
            signal,
            in_flight = tracker.live(),
            "shutting down: no new connections, draining in-flight work"
        );
        trigger.fire();
        let timeout = config.runtime.shutdown_timeout;
        match tokio::time::timeout(timeout, tracker.drained()).await {
            Ok(()) => info!("shutdown complete"),
            Err(_) => warn!(
                cut = tracker.live(),
                ?timeout,
                "shutdown_timeout passed; cutting the connections still open"
            ),
        }
        access_logs.flush(Duration::from_secs(1));
        Ok::<(), Error>(())
    })
}

/// The upstreams by name, and their writers (started on the control runtime).
fn build_upstreams(config: &Config) -> (Vec<(String, Arc<Upstream>)>, Vec<Writer>) {
    config
        .upstreams
        .iter()
        .map(|u| {
            let listeners: Vec<Arc<str>> = config
                .listeners
                .iter()
                .filter(|l| matches!(&l.target, Target::Upstream(name) if *name == u.name))
                .map(|l| Arc::from(l.name.as_str()))
                .collect();
            let (upstream, writer) = Upstream::new(u, &listeners);
            ((u.name.clone(), upstream), writer)
        })
        .unzip()
}

fn worker(
    runtime: tokio::runtime::Runtime,
    sockets: WorkerSockets,
    limit: Arc<Semaphore>,
    sweep: Duration,
    shutdown: Shutdown,
) {
    runtime.block_on(async move {
        tokio::spawn(crate::proxy::http::sweep_forever(sweep));
        for (ctx, mode, socket) in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    tokio::spawn(listener::accept_loop(
                        listener,
                        ctx,
                        mode,
                        Arc::clone(&limit),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    warn!(listener = %ctx.name, error = %e, "cannot register a listening socket")
                }
            }
        }
        // Connection tasks run until the control thread ends the process after the drain.
        std::future::pending::<()>().await;
    });
}

/// Once a second, hands memory the workers freed after a burst back to the operating system.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        crate::proxy::buffer::return_freed_memory();
    }
}

/// Keeps the Prometheus exporter's histograms bounded (the exporter does no upkeep by itself when
/// installed as a bare recorder).
async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}
