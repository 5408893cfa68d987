//! L4: pair each client connection with a connection to one server and copy bytes both ways until
//! both sides close, or until no byte has moved either way for the listener's `idle_timeout`. A
//! half-close (FIN) from one side is passed on to the other, so protocols that end their request by
//! shutting down the write side work through the proxy.
//!
//! The copy holds memory only while bytes are in flight: each direction waits for its source to
//! become readable with no buffer, takes a [`Block`] from the worker's pool, reads into it, writes
//! all of it to the other side, and gives the block back before it waits again. An idle session
//! costs its two sockets and its task: 3.4 KB of RSS, against 19.7 KB with tokio's
//! `copy_bidirectional`, which kept two 8 KiB buffers for the session's whole life
//! (`benches/idle_connections.py --tcp`).
//!
//! The idle timer is one deadline for both directions: a session in which only the server talks is
//! not idle. A byte does not touch the timer, it only notes its time; when the timer fires, it is
//! moved to that time plus `idle_timeout` unless that has passed too, and then the session closes.
//!
//! Outcomes: a connect error or timeout is a failure and moves to the next candidate; after that,
//! a reset from the server before its first byte is a failure (the server accepted and then died),
//! and a session in which the server sent anything is a success. The connect time is recorded as
//! the server's response time.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::buffer::Block;
use super::http::connect_tcp;
use super::{ListenerCtx, Route};
use crate::balance::PickContext;
use crate::metrics::LogLimit;
use crate::server::Failure;

/// Serves one accepted client connection in tcp mode.
pub async fn serve_connection(ctx: Arc<ListenerCtx>, client: TcpStream, peer: SocketAddr) {
    let Route::Upstream(upstream) = &ctx.route else {
        unreachable!("config validation rejects `respond` on tcp listeners");
    };
    let snap = upstream.load();
    let ctx_pick = PickContext {
        client: peer,
        head: None,
        now: Instant::now(),
    };
    for slot in snap.attempts(&ctx_pick) {
        let server = slot.server();
        let started = Instant::now();
        let stream = match connect_tcp(server.addr(), snap.settings.connect_timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                static SITE: LogLimit = LogLimit::new();
                if let Some(suppressed) = SITE.allow() {
                    warn!(listener = %ctx.name, upstream = %snap.name, server = %server.config.address, error = %e, suppressed, "connect failed");
                }
                slot.failed(e.failure());
                continue;
            }
        };
        slot.record_response_time(started);
        let session = relay(&client, &stream, ctx.idle_timeout).await;
        let (up, down) = (session.up, session.down);
        match &session.end {
            End::Closed => {
                debug!(%peer, server = %server.config.address, up, down, "tcp session closed")
            }
            End::Idle => {
                debug!(%peer, server = %server.config.address, up, down, "tcp session idle for idle_timeout; closing it")
            }
            End::Failed(e) => {
                debug!(%peer, server = %server.config.address, up, down, error = %e, "tcp session ended with an error")
            }
        }
        if session.server_reset_before_first_byte() {
            slot.failed(Failure::Reset);
        } else if down > 0 {
            slot.succeeded();
        }
        return;
    }
    static SITE: LogLimit = LogLimit::new();
    if let Some(suppressed) = SITE.allow() {
        warn!(listener = %ctx.name, upstream = %snap.name, %peer, suppressed, "no server could take the connection; closing it");
    }
}

/// Which socket of a session something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// A socket error that cut a session, with the side it came from: only the server's side counts
/// against the server.
#[derive(Debug, thiserror::Error)]
#[error("{} socket: {source}", .side.name())]
struct SessionError {
    side: Side,
    source: io::Error,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// Both directions ended with EOF.
    Closed,
    /// No byte moved either way for `idle_timeout`.
    Idle,
    /// A socket failed.
    Failed(SessionError),
}

/// What a session moved (bytes read from the client and from the server) and how it ended.
#[derive(Debug)]
struct Session {
    up: u64,
    down: u64,
    end: End,
}

impl Session {
    /// Whether the server reset the connection before sending a byte: it accepted and then died.
    fn server_reset_before_first_byte(&self) -> bool {
        let End::Failed(e) = &self.end else {
            return false;
        };
        let reset = matches!(
            e.source.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        );
        self.down == 0 && e.side == Side::Server && reset
    }
}

/// Joins two connections (a WebSocket tunnel after its 101) with the L4 session's copy: both ways
/// until both directions end, a socket fails, or no byte moves either way for `idle`; no buffer
/// is held while no byte is in flight.
pub async fn join(client: &TcpStream, server: &TcpStream, idle: Duration) {
    let session = relay(client, server, idle).await;
    debug!(up = session.up, down = session.down, end = ?session.end, "tunnel closed");
}

/// Copies both ways between `client` and `server` until both directions have ended, a socket
/// fails, or no byte has moved either way for `idle`.
async fn relay(client: &TcpStream, server: &TcpStream, idle: Duration) -> Session {
    let mut up = Pump::new(Side::Client, Side::Server);
    let mut down = Pump::new(Side::Server, Side::Client);
    let mut last_byte = Instant::now();
    let mut timer = pin!(tokio::time::sleep(idle));
    let end = poll_fn(|cx| {
        let before = up.moved + down.moved;
        for (pump, from, to) in [(&mut up, client, server), (&mut down, server, client)] {
            if let Poll::Ready(Err(e)) = pump.poll(cx, from, to) {
                return Poll::Ready(End::Failed(e));
            }
        }
        if up.done && down.done {
            return Poll::Ready(End::Closed);
        }
        if up.moved + down.moved != before {
            last_byte = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last_byte + idle;
            if deadline <= timer.deadline() {
                return Poll::Ready(End::Idle);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    Session {
        up: up.moved,
        down: down.moved,
        end,
    }
}

/// One direction of a session: what is read from one socket is written to the other.
struct Pump {
    from: Side,
    to: Side,
    /// The block being passed on; `None` while the source has nothing to read.
    block: Option<Block>,
    /// `block[start..end]` is read and not yet written.
    start: usize,
    end: usize,
    /// Bytes read from the source.
    moved: u64,
    /// The source sent EOF and the other side's write half is shut down.
    done: bool,
}

impl Pump {
    fn new(from: Side, to: Side) -> Self {
        Pump {
            from,
            to,
            block: None,
            start: 0,
            end: 0,
            moved: 0,
            done: false,
        }
    }

    /// Copies until the source has nothing more to read (pending, holding no block), has ended
    /// (ready, the EOF passed on) or a socket fails.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
    ) -> Poll<Result<(), SessionError>> {
        let fail = |side, source| SessionError { side, source };
        while !self.done {
            while self.start < self.end {
                ready!(to.poll_write_ready(cx)).map_err(|e| fail(self.to, e))?;
                let block = self.block.as_ref().expect("unwritten bytes are in a block");
                match to.try_write(&block[self.start..self.end]) {
                    Ok(0) => {
                        return Poll::Ready(Err(fail(self.to, io::ErrorKind::WriteZero.into())))
                    }
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(fail(self.to, e))),
                }
            }
            match from.poll_read_ready(cx) {
                Poll::Pending => {
                    self.block = None;
                    return Poll::Pending;
                }
                Poll::Ready(ready) => ready.map_err(|e| fail(self.from, e))?,
            }
            let block = self.block.get_or_insert_with(Block::take);
            match crate::proxy::io::read_now(from, block) {
                Ok(0) => {
                    self.block = None;
                    self.done = true;
                    SockRef::from(to)
                        .shutdown(std::net::Shutdown::Write)
                        .map_err(|e| fail(self.to, e))?;
                }
                Ok(n) => {
                    (self.start, self.end) = (0, n);
                    self.moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(fail(self.from, e))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Both ends of a loopback connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    // A current-thread runtime: the relay runs on this thread, whose pool `Block::pooled` counts.
    #[tokio::test]
    async fn a_session_between_bytes_holds_no_block() {
        let (mut client, client_accepted) = pair().await;
        let (server_connected, mut server) = pair().await;
        let session = tokio::spawn(async move {
            relay(&client_accepted, &server_connected, Duration::from_secs(60)).await
        });
        // One block at a time is in use, so after each message the pool has it back.
        let pooled = Block::pooled().max(1);
        let mut buf = [0u8; 4];
        client.write_all(b"ping").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(
            Block::pooled(),
            pooled,
            "the block is back while the session waits"
        );
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(
            Block::pooled(),
            pooled,
            "the same block served the other way"
        );

        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "EOF passed on");
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "EOF passed back");
        let session = session.await.unwrap();
        assert!(matches!(session.end, End::Closed), "{session:?}");
        assert_eq!((session.up, session.down), (4, 4));
        assert_eq!(Block::pooled(), pooled);
    }
}
