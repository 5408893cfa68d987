//! The worker threads: each runs its own current-thread tokio runtime and takes commands from the
//! control thread (start accepting on a socket), so a reload can hand a worker new listening
//! sockets while its connections keep running. With the systemd watchdog on, each worker also
//! proves it is alive by beating a counter the control thread reads before every ping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::listener::{self, Accept};

/// What the control thread asks of a worker.
pub enum Command {
    /// Accept connections on `socket` for a listener, until its `accept.stop` fires.
    Accept {
        /// This worker's copy of the listening socket.
        socket: std::net::TcpListener,
        /// The listener and its signals.
        accept: Accept,
    },
}

/// The control thread's side of the workers.
pub struct Workers {
    inboxes: Vec<UnboundedSender<Command>>,
    heartbeats: Arc<[AtomicU64]>,
}

/// What every worker shares.
pub struct Shared {
    /// `runtime.max_connections` over all listeners.
    pub limit: Arc<Semaphore>,
    /// Every connection task, for the drain.
    pub tracker: TaskTracker,
    /// How often the upstream pool is swept.
    pub sweep: Duration,
    /// How often a worker beats its heartbeat; `None` without a watchdog.
    pub heartbeat: Option<Duration>,
}

impl Workers {
    /// Starts `count` worker threads.
    pub fn start(count: usize, shared: &Shared) -> std::io::Result<Workers> {
        let heartbeats: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
        let mut inboxes = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = unbounded_channel();
            inboxes.push(tx);
            let worker = Worker {
                index,
                inbox: rx,
                limit: Arc::clone(&shared.limit),
                tracker: shared.tracker.clone(),
                sweep: shared.sweep,
                heartbeat: shared
                    .heartbeat
                    .map(|every| (every, Arc::clone(&heartbeats))),
            };
            std::thread::Builder::new()
                .name(format!("fulcrum-w{index}"))
                .spawn(move || runtime.block_on(worker.run()))?;
        }
        Ok(Workers {
            inboxes,
            heartbeats,
        })
    }

    /// How many workers there are (each gets one socket per bound address).
    pub fn count(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends worker `index` a command; a worker that is gone (its thread died) is logged, and
    /// the watchdog then stops the pings.
    pub fn send(&self, index: usize, command: Command) {
        if self.inboxes[index].send(command).is_err() {
            warn!(
                worker = index,
                "worker thread is gone; it cannot take a listening socket"
            );
        }
    }

    /// The workers' heartbeat counters (each only grows while its worker runs).
    pub fn heartbeats(&self) -> Arc<[AtomicU64]> {
        Arc::clone(&self.heartbeats)
    }
}

struct Worker {
    index: usize,
    inbox: UnboundedReceiver<Command>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    sweep: Duration,
    heartbeat: Option<(Duration, Arc<[AtomicU64]>)>,
}

impl Worker {
    async fn run(mut self) {
        tokio::spawn(crate::proxy::http::sweep_forever(self.sweep));
        if let Some((every, beats)) = self.heartbeat.take() {
            let index = self.index;
            // A task like any other on this runtime: if a connection task wedges the thread, or
            // the thread parks for good, the count stops and so do the watchdog pings.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    beats[index].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(command) = self.inbox.recv().await {
            match command {
                Command::Accept { socket, accept } => {
                    match tokio::net::TcpListener::from_std(socket) {
                        Ok(socket) => {
                            tokio::spawn(listener::accept_loop(
                                socket,
                                accept,
                                Arc::clone(&self.limit),
                                self.tracker.clone(),
                            ));
                        }
                        Err(e) => {
                            let name = &accept.listener.ctx().name;
                            warn!(listener = %name, worker = self.index, error = %e, "cannot register a listening socket");
                        }
                    }
                }
            }
        }
        // The control thread holds the senders for the process's life: connection tasks run
        // until it ends the process after the drain.
        std::future::pending::<()>().await;
    }
}
