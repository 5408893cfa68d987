//! Upstream connections: connect with a timeout, and keep idle HTTP/1.1 connections for reuse.
//!
//! The idle pool is per worker thread (a `thread_local`), so checkout and checkin touch no lock and
//! no shared cache line; a worker's requests reuse the worker's connections. Connections are keyed by
//! the server's socket address. The newest idle connection is reused first (it is the least likely
//! to have been closed by the server), and one idle longer than `pool_idle_timeout` is closed, both
//! when it is found on checkout and by a sweep each second, so Fulcrum closes it before a server's
//! own keep-alive timeout does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::body::RequestBody;
use crate::server::Failure;

/// A connection able to carry one request to a server: hyper's sender, and the task that drives
/// the connection. Dropping it (rather than pooling it) aborts that task, so a connection given up
/// mid-exchange (a client gone, a timeout, a retry elsewhere) is closed at once and the request
/// body it held is released, instead of lingering until the server notices.
pub struct Sender {
    send: SendRequest<RequestBody>,
    /// `None` for a connection that may be upgraded: hyper hands the socket over after a 101, and
    /// the task must be left to finish that.
    task: Option<AbortHandle>,
}

impl std::ops::Deref for Sender {
    type Target = SendRequest<RequestBody>;

    fn deref(&self) -> &Self::Target {
        &self.send
    }
}

impl std::ops::DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.send
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

struct Idle {
    sender: Sender,
    expires: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, reset).
    #[error("connect to {addr} failed: {source}")]
    Io {
        /// The server's address.
        addr: SocketAddr,
        /// What the socket said.
        source: io::Error,
    },
    /// The TCP connect did not finish within `connect_timeout`.

    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The server's address.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The connection was made but the HTTP/1.1 client could not start on it.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        /// The server's address.
        addr: SocketAddr,
        /// What hyper said.
        source: hyper::Error,
    },
}

impl ConnectError {
    /// The outcome to record on the server.
    pub fn failure(&self) -> Failure {
        match self {
            ConnectError::Timeout { .. } => Failure::ConnectTimeout,
            ConnectError::Io { .. } | ConnectError::Handshake { .. } => Failure::ConnectRefused,
        }
    }
}

/// Opens a TCP connection with TCP_NODELAY, bounded by `timeout`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
    };
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io { addr, source })?;
    Ok(stream)
}

/// Opens a new HTTP/1.1 connection; `upgrades` keeps the socket usable after a 101 response.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> Result<Sender, ConnectError> {
    let stream = connect_tcp(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    let task = if upgrades {
        tokio::spawn(conn.with_upgrades());
        None
    } else {
        Some(tokio::spawn(conn).abort_handle())
    };
    Ok(Sender { send: sender, task })
}

/// An idle connection to `addr` from this worker's pool, ready for a request. A connection checked
/// in at the end of a response body may need a moment for hyper to mark it ready; one that is not
/// ready within `patience` is closed rather than waited on.
pub async fn checkout(addr: SocketAddr, patience: Duration) -> Option<Sender> {
    loop {
        let mut sender = take_idle(addr)?;
        if sender.is_ready() {
            return Some(sender);
        }
        if let Ok(Ok(())) = tokio::time::timeout(patience, sender.ready()).await {
            return Some(sender);
        }
    }
}

fn take_idle(addr: SocketAddr) -> Option<Sender> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            if idle.expires > now && !idle.sender.is_closed() {
                return Some(idle.sender);
            }
        }
        None
    })
}

/// Returns a connection whose exchange is complete to this worker's pool, unless the pool for that
/// server already holds `max_idle` connections (then it is closed; 0 never pools).
pub fn checkin(addr: SocketAddr, sender: Sender, idle_timeout: Duration, max_idle: usize) {
    if max_idle == 0 || sender.is_closed() {
        return;
    }
    IDLE.with_borrow_mut(|pool| {
        let list = pool.entry(addr).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                sender,
                expires: Instant::now() + idle_timeout,
            });
        }
    });
}

/// How often a worker sweeps its pool, given the shortest `pool_idle_timeout` configured: a quarter
/// of it, between 50 ms and 1 s. Checkout never hands out an expired connection whatever the sweep
/// does; the sweep only closes expired sockets promptly, at most a quarter of the timeout late.
pub fn sweep_interval(shortest_idle_timeout: Duration) -> Duration {
    (shortest_idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Closes this worker's expired idle connections every `interval`, for as long as the worker runs.
pub async fn sweep_forever(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        IDLE.with_borrow_mut(|pool| {
            pool.retain(|_, list| {
                list.retain(|idle| idle.expires > now && !idle.sender.is_closed());
                !list.is_empty()
            });
        });
    }
}
