//! Reading and writing a `TcpStream` through shared references, by readiness, for the HTTP engine
//! and L4 sessions: the same socket can be read and written from one poll loop (request body out,
//! response head in, interim responses to the client) without splitting it, and a task waits for
//! a socket with no buffer at all.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what is available into `buf`, waiting for readiness; `Ok(0)` is the end of the stream.
pub fn poll_read(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match read_now(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// Reads what is available into `buf` without waiting (`WouldBlock` when nothing is). A read that
/// did not fill `buf` emptied the socket's receive queue, so the socket's readiness is cleared
/// then and there: the next wait goes straight to the reactor instead of first spending a
/// `recv` that can only say `EAGAIN`. (tokio clears it only if no new readiness event arrived
/// since the read began, so no wake-up is lost.)
pub fn read_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let n = stream.try_read(buf)?;
    if n > 0 && n < buf.len() {
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    Ok(n)
}

/// Writes some of `buf`, waiting for readiness.
pub fn poll_write(stream: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(0) if !buf.is_empty() => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            other => return Poll::Ready(other),
        }
    }
}

/// Writes all of `buf`.
pub async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| poll_write(stream, cx, buf)).await?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Writes all of `first` then all of `second`, in one `writev` when the socket takes them.
pub async fn write_all_pair(
    stream: &TcpStream,
    mut first: &[u8],
    mut second: &[u8],
) -> io::Result<()> {
    while !first.is_empty() {
        let n = std::future::poll_fn(|cx| loop {
            ready!(stream.poll_write_ready(cx))?;
            let slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
            match stream.try_write_vectored(&slices) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                other => return Poll::Ready(other),
            }
        })
        .await?;
        let in_first = n.min(first.len());
        first = &first[in_first..];
        second = &second[n - in_first..];
    }
    write_all(stream, second).await
}
