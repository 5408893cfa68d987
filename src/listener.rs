//! Listening sockets and accept loops.
//!
//! Sockets are made with socket2 so every option is set before `listen`: SO_REUSEADDR, IPV6_V6ONLY
//! on IPv6 (so `0.0.0.0:80` and `[::]:80` bind side by side), the configured backlog, and with
//! `reuse_port` one SO_REUSEPORT socket per worker so the kernel spreads connections over workers
//! and a connection never crosses threads. Without it, all workers poll one shared socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::Mode;
use crate::lifecycle::Shutdown;
use crate::metrics::LogLimit;
use crate::proxy::{self, Listener};

/// One configured bind address, bound: one socket per worker with `reuse_port`, else one socket
/// all workers poll. The registry keeps it for as long as the address is configured; each worker
/// accepts on its own duplicate of its socket, so the port closes once the registry drops it and
/// the accept loops have stopped.
pub struct Bound {
    /// The real address (port 0 in the config becomes the port the kernel chose).
    pub addr: SocketAddr,
    reuse_port: bool,
    sockets: Vec<std::net::TcpListener>,
}

impl Bound {
    /// Binds `addr` for `workers` workers.
    ///
    /// With `reuse_port`, the kernel would let a second process bind the same port beside a
    /// running Fulcrum and silently take half of its connections, so a socket without
    /// SO_REUSEPORT is bound first to prove the address free: it fails with "address in use"
    /// while anything listens there.
    pub fn new(
        addr: SocketAddr,
        backlog: u32,
        reuse_port: bool,
        workers: usize,
    ) -> io::Result<Bound> {
        if reuse_port && addr.port() != 0 {
            probe_free(addr)?;
        }
        let first = bind(addr, backlog, reuse_port)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        if reuse_port {
            for _ in 1..workers {
                sockets.push(bind(addr, backlog, true)?);
            }
        }
        Ok(Bound {
            addr,
            reuse_port,
            sockets,
        })
    }

    /// Whether it was bound with one SO_REUSEPORT socket per worker.
    pub fn reuse_port(&self) -> bool {
        self.reuse_port
    }

    /// Worker `worker`'s duplicate of its socket.
    pub fn for_worker(&self, worker: usize) -> io::Result<std::net::TcpListener> {
        self.sockets[worker % self.sockets.len()].try_clone()
    }

    /// Applies a new listen(2) backlog to the bound sockets (Linux takes a second `listen`).
    pub fn set_backlog(&self, backlog: u32) -> io::Result<()> {
        for socket in &self.sockets {
            socket2::SockRef::from(socket).listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        }
        Ok(())
    }
}

/// Fails with `AddrInUse` when something listens on `addr`; binds nothing that stays.
fn probe_free(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR so that connections in TIME_WAIT do not count; a listening socket still does.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// Creates one listening TCP socket with Fulcrum's options.
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// What an accept loop serves: the listener its connections read their context from, its mode,
/// and the signals that stop it.
pub struct Accept {
    /// The listener (replaced context and all, across reloads).
    pub listener: Arc<Listener>,
    /// http or tcp: which connection task to spawn.
    pub mode: Mode,
    /// Stops this loop only: the address was removed, or handed to another listener's loop.
    pub stop: Shutdown,
    /// Stops the listener's connections (after the request in flight): passed to each.
    pub connections: Shutdown,
}

/// Accepts connections until `accept.stop` fires, each in its own task, tracked by `tracker` for
/// the drain.
///
/// A connection is served only with a permit from the daemon-wide `limit`
/// (`runtime.max_connections`). The loop accepts first and then waits for a permit, not the other
/// way round: a loop holding a permit while it waits on an empty socket would starve the other
/// workers' sockets. While this loop waits for a permit it accepts nothing more, so over the limit
/// at most one accepted connection per loop waits and the rest wait in the kernel's backlog.
pub async fn accept_loop(
    socket: TcpListener,
    accept: Accept,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let Accept {
        listener,
        mode,
        stop,
        connections,
    } = accept;
    let mut failed_accepts = 0u64;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = stop.wait() => return,
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: back off instead of spinning on a full table, and
                    // say so once a second rather than twenty times.
                    failed_accepts += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        let name = &listener.ctx().name;
                        warn!(listener = %name, error = %e, failed_accepts, "accept failed; backing off");
                        last_warning = Some(tokio::time::Instant::now());
                        failed_accepts = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                () = stop.wait() => return,
                permit = Arc::clone(&limit).acquire_owned() => permit.expect("the connection limit is never closed"),
            },
        };
        let ctx = listener.ctx();
        if let Err(e) = stream.set_nodelay(true) {
            static SITE: LogLimit = LogLimit::new();
            if let Some(suppressed) = SITE.allow() {
                warn!(listener = %ctx.name, error = %e, suppressed, "cannot set TCP_NODELAY");
            }
        }
        ctx.metrics.total.increment(1);
        ctx.metrics.active.increment(1.0);
        // One task type per mode, so that each connection's task is sized for its own protocol.
        // A tracked task counts for the drain until it ends, whatever path it takes.
        match mode {
            Mode::Http => {
                let listener = Arc::clone(&listener);
                let shutdown = connections.clone();
                tokio::spawn(tracker.track_future(async move {
                    proxy::http::serve_connection(listener, stream, peer, shutdown).await;
                    ctx.metrics.active.decrement(1.0);
                    drop(permit);
                }))
            }
            // An L4 session is the request in flight: it runs to its end (or the drain's).
            Mode::Tcp => tokio::spawn(tracker.track_future(async move {
                proxy::tcp::serve_connection(Arc::clone(&ctx), stream, peer).await;
                ctx.metrics.active.decrement(1.0);
                drop(permit);
            })),
        };
    }
}
