//! The request body on its way to a server: taken from the client (an HTTP/1 connection's socket,
//! or an h2 stream), checked against its framing and `max_body_bytes`, and written upstream.
//!
//! An HTTP/1 body goes on as the very bytes received (a chunked body validated chunk by chunk on
//! the way); an h2 body is framed for the server by `Content-Length` when the client declared one,
//! else by chunked coding. The first [`REPLAY_LIMIT`] bytes of an idempotent request's body are
//! copied as they go, so that the request can be sent again to another server when the first
//! closes before answering (CONTRACT.md "Retries"); a longer body makes it unreplayable.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::proxy::buffer::Block;
use crate::proxy::h1::chunked::Decoder;
use crate::proxy::h1::request::Framing;
use crate::proxy::io::{poll_read, poll_write};

/// The most of a request body kept for a replay (CONTRACT.md "Retries").
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Bytes read from a client connection and not yet used: a block and the window of it that holds
/// unread bytes (the start of a body, or a pipelined request). An idle connection has none.
#[derive(Default)]
pub struct Inbox {
    /// The block, while the connection holds one.
    pub block: Option<Block>,
    /// First unread byte.
    pub start: usize,
    /// One past the last unread byte.
    pub end: usize,
}

impl Inbox {
    /// The unread bytes.
    pub fn unread(&self) -> &[u8] {
        match &self.block {
            Some(block) => &block[self.start..self.end],
            None => &[],
        }
    }

    /// Marks `n` unread bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
    }

    /// Gives the block back to the pool when nothing in it is unread.
    pub fn release_if_empty(&mut self) {
        if self.start == self.end {
            self.block = None;
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more from `stream` after the unread bytes; moves them to the front first when the
    /// block is full. `Ok(0)` is the end of the stream.
    pub fn poll_fill(
        &mut self,
        stream: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let block = self.block.get_or_insert_with(Block::take);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == block.len() && self.start > 0 {
            block.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = ready!(poll_read(stream, cx, &mut block[self.end..]))?;
        self.end += n;
        Poll::Ready(Ok(n))
    }
}

/// Why a body could not be taken from the client; none of these is the server's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    /// The client closed or reset its connection before the body ended.
    #[error("the client went away during the request body")]
    Gone,
    /// No byte of the body for `idle_timeout`.
    #[error("the client sent no body byte for idle_timeout")]
    Timeout,
    /// The chunked coding is malformed.
    #[error("malformed chunked body")]
    Malformed,
    /// The body outgrew `max_body_bytes`.
    #[error("body larger than max_body_bytes")]
    TooLarge,
}

/// Why a body could not be sent.
#[derive(Debug)]
pub enum UploadError {
    /// The client's side failed.
    Client(ClientFault),
    /// Writing to the server failed.
    Server(io::Error),
}

/// An HTTP/1 client's body, read from its connection.
pub struct ClientBody<'c> {
    stream: &'c TcpStream,
    inbox: &'c mut Inbox,
    left: Left,
    limit: u64,
    idle: Duration,
    /// When the last body byte arrived.
    last_byte: Instant,
    /// Fires at `last_byte + idle` or later; moved forward only when it fires early.
    timer: Option<Pin<Box<Sleep>>>,
}

enum Left {
    Length(u64),
    Chunked(Decoder),
}

impl<'c> ClientBody<'c> {
    /// The body that `framing` announces, read from `stream` after the unread bytes of `inbox`.
    /// `None` for a request without a body.
    pub fn new(
        stream: &'c TcpStream,
        inbox: &'c mut Inbox,
        framing: Framing,
        limit: u64,
        idle: Duration,
    ) -> Option<ClientBody<'c>> {
        let left = match framing {
            Framing::Empty => return None,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Decoder::new()),
        };
        Some(ClientBody {
            stream,
            inbox,
            left,
            limit,
            idle,
            last_byte: Instant::now(),
            timer: None,
        })
    }

    fn done(&self) -> bool {
        match &self.left {
            Left::Length(n) => *n == 0,
            Left::Chunked(decoder) => decoder.is_done(),
        }
    }

    /// The next bytes of the body as they are on the wire (a range of the inbox's block, already
    /// consumed from it), or `None` at its end.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(usize, usize)>, ClientFault>> {
        loop {
            if self.done() {
                return Poll::Ready(Ok(None));
            }
            let unread = self.inbox.unread();
            if !unread.is_empty() {
                let start = self.inbox.start;
                let n = match &mut self.left {
                    Left::Length(left) => {
                        let n = unread
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        n
                    }
                    Left::Chunked(decoder) => {
                        let step = decoder
                            .advance(unread)
                            .map_err(|_| ClientFault::Malformed)?;
                        if self.limit != 0 && decoder.decoded() > self.limit {
                            return Poll::Ready(Err(ClientFault::TooLarge));
                        }
                        step.consumed
                    }
                };
                self.inbox.consume(n);
                return Poll::Ready(Ok(Some((start, start + n))));
            }
            match self.inbox.poll_fill(self.stream, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(ClientFault::Gone))
                }
                Poll::Ready(Ok(_)) => self.last_byte = Instant::now(),
                Poll::Pending => {
                    let deadline = self.last_byte + self.idle;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    loop {
                        ready!(timer.as_mut().poll(cx));
                        if Instant::now() >= deadline {
                            return Poll::Ready(Err(ClientFault::Timeout));
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        }
    }
}

/// An h2 client's body (hyper's stream of DATA frames).
pub struct StreamBody {
    body: Incoming,
    /// Frame it with chunked coding (the client declared no length).
    chunked: bool,
    ended: bool,
    limit: u64,
    taken: u64,
}

impl StreamBody {
    /// `body`, framed by length when the request declared one, else chunked. `None` when it is
    /// already known to be empty.
    pub fn new(body: Incoming, declared_length: bool, limit: u64) -> Option<StreamBody> {
        if body.is_end_stream() {
            return None;
        }
        Some(StreamBody {
            body,
            chunked: !declared_length,
            ended: false,
            limit,
            taken: 0,
        })
    }

    /// Whether Fulcrum frames this body with chunked coding (the head must say so).
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ClientFault>> {
        loop {
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    if self.chunked {
                        return Poll::Ready(Ok(Some(Bytes::from_static(b"0\r\n\r\n"))));
                    }
                }
                Some(Err(_)) => return Poll::Ready(Err(ClientFault::Gone)),
                Some(Ok(frame)) => {
                    // Trailers are dropped: the server leg is HTTP/1.1 without a `TE: trailers`.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.taken += data.len() as u64;
                    if self.limit != 0 && self.taken > self.limit {
                        return Poll::Ready(Err(ClientFault::TooLarge));
                    }
                    if !self.chunked {
                        return Poll::Ready(Ok(Some(data)));
                    }
                    let mut framed = BytesMut::with_capacity(data.len() + 20);
                    framed.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    framed.put_slice(&data);
                    framed.put_slice(b"\r\n");
                    return Poll::Ready(Ok(Some(framed.freeze())));
                }
            }
        }
    }
}

/// Where a body comes from.
pub enum Source<'c> {
    /// No body.
    Empty,
    /// An HTTP/1 client connection.
    Client(ClientBody<'c>),
    /// An h2 stream.
    Stream(StreamBody),
}

enum Pending {
    None,
    /// A range of the client inbox's block.
    Inbox(usize, usize),
    /// Bytes of an h2 frame.
    Owned(Bytes),
}

/// A request body being sent: where it comes from, the bytes taken but not yet written, and the
/// replay copy.
pub struct Upload<'c> {
    source: Source<'c>,
    pending: Pending,
    /// The replay copy: `Some` while the request is replayable and the copy within its limit.
    copy: Option<Vec<u8>>,
    /// Bytes of the copy already re-sent on this attempt.
    resent: usize,
    /// Whether any byte has been taken from the source.
    started: bool,
    ended: bool,
}

impl<'c> Upload<'c> {
    /// A body from `source`, copied for a replay when `replayable` (an idempotent method).
    pub fn new(source: Source<'c>, replayable: bool) -> Upload<'c> {
        let ended = matches!(source, Source::Empty);
        Upload {
            source,
            pending: Pending::None,
            copy: replayable.then(Vec::new),
            resent: 0,
            started: false,
            ended,
        }
    }

    /// Whether every byte has been written to the server.
    pub fn is_sent(&self) -> bool {
        self.ended && matches!(self.pending, Pending::None) && self.copy_resent()
    }

    fn copy_resent(&self) -> bool {
        self.copy.as_ref().is_none_or(|c| self.resent >= c.len())
    }

    /// Readies the body to be sent again from its start, on another attempt: `false` when it
    /// cannot be (not replayable, or more of it was taken than the copy holds).
    pub fn rewind(&mut self) -> bool {
        if !self.started {
            return true;
        }
        match &self.copy {
            Some(_) => {
                self.pending = Pending::None;
                self.resent = 0;
                true
            }
            None => false,
        }
    }

    /// Whether the body may still be sent again (see [`Upload::rewind`]).
    pub fn may_rewind(&self) -> bool {
        !self.started || self.copy.is_some()
    }

    /// Whether the client's body was not read to its end (the client connection cannot carry
    /// another request).
    pub fn is_unfinished(&self) -> bool {
        !self.ended
    }

    /// Writes the body to `up` as far as it can.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        up: &TcpStream,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            if let Some(copy) = &self.copy {
                while self.resent < copy.len() {
                    let n = ready!(poll_write(up, cx, &copy[self.resent..]))
                        .map_err(UploadError::Server)?;
                    self.resent += n;
                }
            }
            let bytes: &[u8] = match (&self.pending, &self.source) {
                (Pending::None, _) => &[],
                (Pending::Inbox(start, end), Source::Client(body)) => match &body.inbox.block {
                    Some(block) => &block[*start..*end],
                    None => &[],
                },
                (Pending::Owned(bytes), _) => bytes,
                (Pending::Inbox(..), _) => &[],
            };
            if !bytes.is_empty() {
                let n = ready!(poll_write(up, cx, bytes)).map_err(UploadError::Server)?;
                self.pending = match std::mem::replace(&mut self.pending, Pending::None) {
                    Pending::Inbox(start, end) if start + n < end => Pending::Inbox(start + n, end),
                    Pending::Owned(mut bytes) if n < bytes.len() => {
                        let _ = bytes.split_to(n);
                        Pending::Owned(bytes)
                    }
                    _ => Pending::None,
                };
                continue;
            }
            self.pending = Pending::None;
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            let taken = match &mut self.source {
                Source::Empty => None,
                Source::Client(body) => {
                    match ready!(body.poll_next(cx)).map_err(UploadError::Client)? {
                        Some((start, end)) => {
                            let block = body.inbox.block.as_ref().expect("bytes were just read");
                            keep(&mut self.copy, &block[start..end]);
                            self.resent = self.copy.as_ref().map_or(0, Vec::len);
                            Some(Pending::Inbox(start, end))
                        }
                        None => None,
                    }
                }
                Source::Stream(body) => {
                    match ready!(body.poll_next(cx)).map_err(UploadError::Client)? {
                        Some(bytes) => {
                            keep(&mut self.copy, &bytes);
                            self.resent = self.copy.as_ref().map_or(0, Vec::len);
                            Some(Pending::Owned(bytes))
                        }
                        None => None,
                    }
                }
            };
            match taken {
                Some(pending) => {
                    self.started = true;
                    self.pending = pending;
                }
                None => self.ended = true,
            }
        }
    }
}

/// Adds `bytes` to the replay copy, or gives the copy up when it would outgrow the limit.
fn keep(copy: &mut Option<Vec<u8>>, bytes: &[u8]) {
    if let Some(kept) = copy {
        if kept.len() + bytes.len() <= REPLAY_LIMIT {
            kept.extend_from_slice(bytes);
        } else {
            *copy = None;
        }
    }
}
