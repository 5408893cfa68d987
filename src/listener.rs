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
use tracing::warn;

use crate::config::Mode;
use crate::lifecycle::Shutdown;
use crate::proxy::{self, ListenerCtx};

/// One configured bind address, bound, with one socket per worker (or one shared by all).
pub struct Bound {
    /// The real address (port 0 in the config becomes the port the kernel chose).
    pub addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

impl Bound {
    /// Binds `addr` for `workers` workers.
    pub fn new(
        addr: SocketAddr,
        backlog: u32,
        reuse_port: bool,
        workers: usize,
    ) -> io::Result<Bound> {
        let first = bind(addr, backlog, reuse_port)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        if reuse_port {
            for _ in 1..workers {
                sockets.push(bind(addr, backlog, true)?);
            }
        }
        Ok(Bound { addr, sockets })
    }

    /// Hands each worker its socket. The bound sockets move out, so once every worker has closed
    /// its copy the port is closed; nothing else keeps it open.
    pub fn into_worker_sockets(self, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
        let mut sockets = self.sockets;
        if sockets.len() == 1 {
            let shared = sockets.pop().expect("one socket");
            for _ in 1..workers {
                sockets.push(shared.try_clone()?);
            }
            sockets.push(shared);
        }
        Ok(sockets)
    }
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

/// Accepts connections until shutdown, each in its own task.
///
/// A connection is served only with a permit from the daemon-wide `limit`
/// (`runtime.max_connections`). The loop accepts first and then waits for a permit, not the other
/// way round: a loop holding a permit while it waits on an empty socket would starve the other
/// workers' sockets. While this loop waits for a permit it accepts nothing more, so over the limit
/// at most one accepted connection per loop waits and the rest wait in the kernel's backlog.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    mode: Mode,
    limit: Arc<Semaphore>,
    mut shutdown: Shutdown,
) {
    let mut failed_accepts = 0u64;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: back off instead of spinning on a full table, and
                    // say so once a second rather than twenty times.
                    failed_accepts += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        warn!(listener = %ctx.name, error = %e, failed_accepts, "accept failed; backing off");
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
                () = shutdown.wait() => return,
                permit = Arc::clone(&limit).acquire_owned() => permit.expect("the connection limit is never closed"),
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            warn!(listener = %ctx.name, error = %e, "cannot set TCP_NODELAY");
        }
        ctx.metrics.total.increment(1);
        ctx.metrics.active.increment(1.0);
        let guard = ctx.tracker.guard();
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        // One task type per mode, so that each connection's task is sized for its own protocol.
        match mode {
            Mode::Http => tokio::spawn(async move {
                proxy::http::serve_connection(Arc::clone(&ctx), stream, peer, shutdown).await;
                ctx.metrics.active.decrement(1.0);
                drop((guard, permit));
            }),
            Mode::Tcp => tokio::spawn(async move {
                proxy::tcp::serve_connection(Arc::clone(&ctx), stream, peer).await;
                ctx.metrics.active.decrement(1.0);
                drop((guard, permit));
            }),
        };
    }
}
