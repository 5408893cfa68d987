//! HTTP/2 with prior knowledge (h2c) on an `http` listener: one connection served by hyper's HTTP/2
//! server, each stream forwarded over HTTP/1.1 like any request (`handle` in `stream.rs`).
//!
//! The limits are CONTRACT.md's "HTTP/2 limits", set explicitly rather than inherited from hyper's
//! and h2's defaults, which have changed between releases. h2 enforces all of them itself, from the
//! client's first frame (before it ACKs the SETTINGS that advertise them):
//! - a stream opened beyond [`MAX_CONCURRENT_STREAMS`] gets `RST_STREAM(REFUSED_STREAM)`;
//! - a header list of `max_request_head_bytes` or more (RFC 9113 §6.5.2 size: names, values and
//!   32 per field) gets a bare 431 on its stream without reaching Fulcrum; past four times the
//!   limit, h2 stops decoding and sends `GOAWAY(ENHANCE_YOUR_CALM)`;
//! - a client that resets streams before they were accepted (rapid reset, CVE-2023-44487) or
//!   provokes h2 into resetting them (MadeYouReset, CVE-2025-8671; counted since h2 0.4.11) past
//!   the bounds below gets `GOAWAY(ENHANCE_YOUR_CALM)`, and the connection is closed.
//!
//! A stream reset either way is dropped by hyper, and with it the forward to the server.
//!
//! [`Prefixed`] lets a caller that has already read the start of the connection (the HTTP/1 side,
//! telling the protocols apart) hand the bytes back in front of the socket.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::stream::handle;
use crate::lifecycle::Shutdown;
use crate::proxy::Listener;

/// Streams one client may have open at once (CONTRACT.md), advertised as
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; a stream opened beyond it is refused, not queued.
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Streams the client may reset before hyper has accepted them, at any one time; one more and the
/// connection gets `GOAWAY(ENHANCE_YOUR_CALM)`. This is the rapid-reset bound: a flood of
/// HEADERS + RST_STREAM pairs is read faster than it is accepted, so the pairs pile up here. 20 is
/// h2's default since its CVE-2023-44487 fix (hyper passes none of its own).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams h2 may reset on its own over the connection's life because of the client: stream
/// errors it provoked (a WINDOW_UPDATE overflowing a stream's window, DATA on a stream it had
/// ended: MadeYouReset) and streams refused over [`MAX_CONCURRENT_STREAMS`]. One more and the
/// connection gets `GOAWAY(ENHANCE_YOUR_CALM)`. 1024 is hyper's default: far more than a correct
/// client ever causes, and the work per reset is small.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Serves one h2c connection until it closes, or until shutdown (then a GOAWAY is sent and the
/// streams in flight finish). `io` starts with the client's connection preface.
pub async fn serve<I>(listener: Arc<Listener>, io: I, client: SocketAddr, shutdown: Shutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection's settings come from the context when it began; each stream reads the
    // context anew, so a reload applies to the streams after it.
    // The config caps max_request_head_bytes at 1 MiB, far below u32::MAX.
    let header_list = u32::try_from(listener.ctx().http.max_request_head_bytes).unwrap_or(u32::MAX);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_header_list_size(header_list);
    let service = service_fn(move |req| {
        let ctx = listener.ctx();
        async move { Ok::<_, Infallible>(handle(&ctx, client, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%client, error = %e, "h2 client connection ended with an error");
            }
            return;
        }
        () = shutdown.wait() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        debug!(%client, error = %e, "h2 client connection ended with an error during shutdown");
    }
}

/// A stream with bytes already read from it put back in front: reads yield `prefix` first, then
/// what `inner` reads; writes go straight to `inner`. How a caller that had to read the start of a
/// connection to tell the protocols apart hands the whole connection on.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` (a `Vec<u8>` or `Bytes`, not copied) is read before `inner`.
    pub fn new(prefix: impl Into<Bytes>, inner: S) -> Self {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() {
        let mut io = Prefixed::new(b"PRI * HTTP".to_vec(), &b"/2.0\r\n\r\nSM\r\n\r\n"[..]);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }

    #[tokio::test]
    async fn a_small_buffer_takes_the_prefix_in_pieces() {
        let mut io = Prefixed::new(Bytes::from_static(b"abc"), &b"de"[..]);
        let mut got = Vec::new();
        let mut one = [0u8; 2];
        loop {
            let n = io.read(&mut one).await.unwrap();
            if n == 0 {
                break;
            }
            got.push(one[..n].to_vec());
        }
        // The prefix is never merged with the stream's bytes in one read.
        assert_eq!(got, [&b"ab"[..], b"c", b"de"]);
    }

    #[tokio::test]
    async fn an_empty_prefix_reads_the_stream() {
        let mut io = Prefixed::new(Vec::new(), &b"GET / HTTP/1.1\r\n"[..]);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn writes_and_shutdown_go_to_the_stream() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = Prefixed::new(b"unread".to_vec(), near);
        io.write_all(b"response").await.unwrap();
        io.shutdown().await.unwrap();
        let mut seen = Vec::new();
        far.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"response");
    }
}
