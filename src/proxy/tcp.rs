//! L4: pair each client connection with a connection to one server and copy bytes both ways until
//! both sides close. A half-close (FIN) from one side is passed on to the other, so protocols that
//! end their request by shutting down the write side work through the proxy.
//!
//! Outcomes: a connect error or timeout is a failure and moves to the next candidate; after that,
//! a reset from the server before its first byte is a failure (the server accepted and then died),
//! and a session in which the server sent anything is a success. The connect time is recorded as
//! the server's response time.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::http::connect_tcp;
use super::{ListenerCtx, Route};
use crate::balance::PickContext;
use crate::server::Failure;

/// Serves one accepted client connection in tcp mode.
pub async fn serve_connection(ctx: Arc<ListenerCtx>, mut client: TcpStream, peer: SocketAddr) {
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
                warn!(listener = %ctx.name, upstream = %snap.name, server = %server.config.address, error = %e, "connect failed");
                slot.failed(e.failure());
                continue;
            }
        };
        slot.record_response_time(started);
        let mut upstream_stream = Watched::new(stream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream_stream).await {
            Ok((up, down)) => {
                debug!(%peer, server = %server.config.address, up, down, "tcp session closed")
            }
            Err(e) => {
                debug!(%peer, server = %server.config.address, error = %e, "tcp session ended with an error")
            }
        }
        if upstream_stream.reset_before_first_byte {
            slot.failed(Failure::Reset);
        } else if upstream_stream.got_byte {
            slot.succeeded();
        }
        return;
    }
    warn!(listener = %ctx.name, upstream = %snap.name, %peer, "no server could take the connection; closing it");
}

/// The server's side of a session, noting whether it sent a byte and whether it reset first.
struct Watched {
    stream: TcpStream,
    got_byte: bool,
    reset_before_first_byte: bool,
}

impl Watched {
    fn new(stream: TcpStream) -> Self {
        Watched {
            stream,
            got_byte: false,
            reset_before_first_byte: false,
        }
    }

    fn note<T>(&mut self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = result {
            let reset = matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
            if reset && !self.got_byte {
                self.reset_before_first_byte = true;
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.got_byte = true;
        }
        this.note(&result);
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, data);
        this.note(&result);
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
