//! Upstream connections: connect with a timeout, and keep idle HTTP/1.1 connections for reuse.
//!
//! The idle pool is per worker thread (a `thread_local`), so checkout and checkin touch no lock and
//! no shared cache line; a worker's requests reuse the worker's connections. Connections are keyed by
//! the server's socket address. The newest idle connection is reused first (it is the least likely
//! to have been closed by the server), and one idle longer than `pool_idle_timeout` is closed, both
//! when it is found on checkout and by a sweep, so Fulcrum closes it before a server's own
//! keep-alive timeout does. An idle connection holds its socket only: no buffer.
//!
//! Only a connection whose response was read to its end, and well formed, is checked in (the
//! exchange decides); one the server has closed or sent unsolicited bytes on is dropped at checkout.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::server::Failure;

/// A connection to a server, and whether it came from the pool (a reused connection may have been
/// closed by the server just as the request was sent: the keep-alive race).
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Taken from the idle pool rather than connected for this request.
    pub reused: bool,
}

struct Idle {
    stream: TcpStream,
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
}

impl ConnectError {
    /// The outcome to record on the server.
    pub fn failure(&self) -> Failure {
        match self {
            ConnectError::Timeout { .. } => Failure::ConnectTimeout,
            ConnectError::Io { .. } => Failure::ConnectRefused,
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

/// Opens a new connection to `addr`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    Ok(Conn {
        stream: connect_tcp(addr, timeout).await?,
        reused: false,
    })
}

/// The newest live idle connection to `addr` from this worker's pool. Expired ones are closed on
/// the way; so is one the server closed or wrote to while it idled (found without a syscall in
/// the common case: the reactor already knows whether the socket became readable).
pub fn checkout(addr: SocketAddr) -> Option<Conn> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            if idle.expires > now && is_quiet(&idle.stream) {
                return Some(Conn {
                    stream: idle.stream,
                    reused: true,
                });
            }
        }
        None
    })
}

/// Whether an idle connection has nothing to say: no EOF, no unsolicited bytes, no error.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Returns a connection whose exchange is complete to this worker's pool, unless the pool for that
/// server already holds `max_idle` connections (then it is closed; 0 never pools).
pub fn checkin(addr: SocketAddr, stream: TcpStream, idle_timeout: Duration, max_idle: usize) {
    if max_idle == 0 {
        return;
    }
    IDLE.with_borrow_mut(|pool| {
        let list = pool.entry(addr).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                stream,
                expires: Instant::now() + idle_timeout,
            });
        }
    });
}

/// Idle connections to `addr` in this worker's pool (for tests).
#[cfg(test)]
fn idle_count(addr: SocketAddr) -> usize {
    IDLE.with_borrow(|pool| pool.get(&addr).map_or(0, Vec::len))
}

/// How often a worker sweeps its pool, given the shortest `pool_idle_timeout` configured: a quarter
/// of it, between 50 ms and 1 s. Checkout never hands out an expired connection whatever the sweep
/// does; the sweep only closes expired sockets promptly, at most a quarter of the timeout late.
pub fn sweep_interval(shortest_idle_timeout: Duration) -> Duration {
    (shortest_idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Closes this worker's expired idle connections every `interval`, for as long as the worker runs,
/// and shrinks its free blocks when it took none since the last sweep.
pub async fn sweep_forever(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(Instant::now());
        crate::proxy::buffer::shrink_if_idle();
    }
}

fn sweep(now: Instant) {
    IDLE.with_borrow_mut(|pool| {
        pool.retain(|_, list| {
            list.retain(|idle| idle.expires > now && is_quiet(&idle.stream));
            !list.is_empty()
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn the_newest_idle_connection_is_reused_first_and_only_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (old, _s1) = pair(&listener).await;
        let (new, _s2) = pair(&listener).await;
        let new_port = new.local_addr().unwrap().port();
        checkin(addr, old, Duration::from_secs(10), 8);
        checkin(addr, new, Duration::from_secs(10), 8);
        let first = checkout(addr).unwrap();
        assert!(first.reused);
        assert_eq!(first.stream.local_addr().unwrap().port(), new_port);
        assert!(checkout(addr).is_some());
        assert!(checkout(addr).is_none());
    }

    #[tokio::test]
    async fn max_idle_caps_the_pool_and_zero_never_pools() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair(&listener).await;
            servers.push(s);
            checkin(addr, c, Duration::from_secs(10), 2);
        }
        assert_eq!(idle_count(addr), 2);
        let (c, _s) = pair(&listener).await;
        checkin(addr, c, Duration::from_secs(10), 0);
        assert_eq!(idle_count(addr), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_connection_is_never_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (c, _s) = pair(&listener).await;
        checkin(addr, c, Duration::from_secs(4), 8);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(checkout(addr).is_none());
        assert_eq!(idle_count(addr), 0, "checkout closed it on the way");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_closes_expired_connections_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (short, _s1) = pair(&listener).await;
        let (long, _s2) = pair(&listener).await;
        checkin(addr, long, Duration::from_secs(10), 8);
        checkin(addr, short, Duration::from_secs(2), 8);
        tokio::time::advance(Duration::from_secs(3)).await;
        sweep(Instant::now());
        assert_eq!(idle_count(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_or_wrote_on_is_dropped_at_checkout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed, server) = pair(&listener).await;
        drop(server);
        let (chatty, mut server2) = pair(&listener).await;
        server2
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        closed.readable().await.unwrap();
        chatty.readable().await.unwrap();
        checkin(addr, closed, Duration::from_secs(10), 8);
        checkin(addr, chatty, Duration::from_secs(10), 8);
        assert!(checkout(addr).is_none());
        assert_eq!(idle_count(addr), 0);
    }
}
