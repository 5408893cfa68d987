//! One exchange with a server over Fulcrum's codec, the seam between the attempt loop and the
//! wire: send a head and a body, get a response head; then read the response body.
//!
//! [`exchange`] writes the request head, then in one poll loop sends the body, passes interim
//! (1xx) responses on to an HTTP/1.1 client as they come, and reads the response head, with
//! `response_timeout` running once the body has been sent. A server that answers before the body
//! has all been sent gets its answer relayed; the rest of the body is not read, and the client
//! connection closes after the response. [`Downstream`] then reads the body by its framing and
//! hands out the bytes to pass on: as received, or (`dechunk`) the data alone.

use std::future::Future as _;
use std::ops::Range;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use super::upload::{ClientFault, Upload, UploadError};
use crate::proxy::buffer::{Block, BLOCK_SIZE};
use crate::proxy::h1::chunked::Decoder;
use crate::proxy::h1::response::{self, BodyFraming, ResponseHead, MOST_RESPONSE_HEAD};
use crate::proxy::h1::rewrite::{self, ClientLeg, Out};
use crate::proxy::io::{poll_read, poll_write, write_all};

/// Why an exchange produced no response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The server closed or reset the connection before any byte of a response.
    #[error("the server closed the connection before responding")]
    Closed,
    /// The server sent something that is not a valid response head, or cut it short.
    #[error("bad response: {0}")]
    Broken(&'static str),
    /// No response head within `response_timeout`.
    #[error("no response head within response_timeout")]
    Timeout,
    /// The client's side failed while its body was being sent.
    #[error("{0}")]
    Client(ClientFault),
}

/// A response head and the bytes read with it.
pub struct Reply {
    /// The head, parsed from the start of `block`.
    pub head: ResponseHead,
    /// The bytes read: the head, then the start of the body.
    pub block: Block,
    /// How many bytes of `block` were read.
    pub filled: usize,
}

/// Sends `head` and `upload` to the server on `up` and reads its response head. Interim
/// responses (1xx but 101) are rewritten and written to `interim` (an HTTP/1.1 client) or dropped.
pub async fn exchange(
    up: &TcpStream,
    head: &[u8],
    upload: &mut Upload<'_>,
    interim: Option<&TcpStream>,
    head_request: bool,
    response_timeout: Duration,
) -> Result<Reply, ExchangeError> {
    if write_all(up, head).await.is_err() {
        return Err(ExchangeError::Closed);
    }
    let mut block = Block::take();
    let mut filled = 0;
    let mut timer = None;
    let mut upload_stopped = false;
    let mut to_client: Option<(Out, usize)> = None;
    std::future::poll_fn(|cx| loop {
        if !upload_stopped && !upload.is_sent() {
            match upload.poll_send(cx, up) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(UploadError::Client(fault))) => {
                    return Poll::Ready(Err(ExchangeError::Client(fault)))
                }
                // The server stopped reading: its answer, or its close, is read below.
                Poll::Ready(Err(UploadError::Server(e))) => {
                    debug!(error = %e, "the server stopped reading the request body");
                    upload_stopped = true;
                }
                Poll::Pending => {}
            }
        }
        if timer.is_none() && (upload_stopped || upload.is_sent()) {
            timer = Some(Box::pin(tokio::time::sleep(response_timeout)));
        }
        if let (Some((out, at)), Some(client)) = (&mut to_client, interim) {
            while *at < out.len() {
                match poll_write(client, cx, &out.bytes()[*at..]) {
                    Poll::Ready(Ok(n)) => *at += n,
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(ExchangeError::Client(ClientFault::Gone)))
                    }
                    Poll::Pending => break,
                }
            }
            if *at == out.len() {
                to_client = None;
            }
        }
        // An interim response still being written to the client holds the next head back, so
        // the client sees them in order.
        if to_client.is_none() {
            if filled > 0 {
                match response::parse(&block[..filled], head_request) {
                    Err(e) => return Poll::Ready(Err(ExchangeError::Broken(e.0))),
                    Ok(Some(head)) if head.status < 200 && head.status != 101 => {
                        if interim.is_some() {
                            let mut out = Out::new();
                            rewrite::response(&head, &block, INTERIM, None, &mut out);
                            to_client = Some((out, 0));
                        }
                        block.copy_within(head.len..filled, 0);
                        filled -= head.len;
                        continue;
                    }
                    Ok(Some(head)) => {
                        let block = std::mem::replace(&mut block, Block::take());
                        return Poll::Ready(Ok(Reply {
                            head,
                            block,
                            filled,
                        }));
                    }
                    Ok(None) if filled == block.len() => {
                        block.grow((block.len() * 2).min(MOST_RESPONSE_HEAD + BLOCK_SIZE));
                    }
                    Ok(None) => {}
                }
            }
            match poll_read(up, cx, &mut block[filled..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) if filled == 0 => {
                    return Poll::Ready(Err(ExchangeError::Closed))
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(ExchangeError::Broken("response head cut short")))
                }
                Poll::Ready(Ok(n)) => {
                    filled += n;
                    continue;
                }
                Poll::Pending => {}
            }
        }
        if let Some(timer) = &mut timer {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(ExchangeError::Timeout));
            }
        }
        return Poll::Pending;
    })
    .await
}

/// How an interim response goes to an HTTP/1 client: no body, connection unchanged.
const INTERIM: ClientLeg = ClientLeg {
    chunked: false,
    close: false,
    keep_alive_10: false,
    websocket: false,
};

/// Why a response body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The server closed or reset the connection before the body's end.
    #[error("response body cut short")]
    Cut,
    /// The chunked coding is malformed.
    #[error("malformed chunked response body")]
    Malformed,
}

enum Left {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

/// A response body being read from the server.
pub struct Downstream {
    block: Block,
    start: usize,
    end: usize,
    left: Left,
    dechunk: bool,
}

impl Downstream {
    /// The body of `reply`; `dechunk` hands out a chunked body's data alone.
    pub fn new(reply: Reply, dechunk: bool) -> Downstream {
        let left = match reply.head.framing {
            BodyFraming::Empty => Left::Done,
            BodyFraming::Length(n) => Left::Length(n),
            BodyFraming::Chunked => Left::Chunked(Decoder::new()),
            BodyFraming::UntilClose => Left::UntilClose,
        };
        Downstream {
            start: reply.head.len,
            end: reply.filled,
            block: reply.block,
            left,
            dechunk,
        }
    }

    /// Whether the body has been read to its end (the connection may then be reused, if the
    /// server keeps it open and no byte beyond the body arrived).
    pub fn is_done(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    /// Whether bytes beyond the body were received (the connection is then not reusable).
    pub fn has_extra(&self) -> bool {
        self.is_done() && self.start < self.end
    }

    /// The bytes of `range` (from [`Downstream::poll_next`]).
    pub fn slice(&self, range: Range<usize>) -> &[u8] {
        &self.block[range]
    }

    /// The next bytes to pass on, as a range of the block; `None` at the body's end. With
    /// `read` false, only what is already buffered is handed out (`Pending` = nothing buffered).
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        up: &TcpStream,
        read: bool,
    ) -> Poll<Result<Option<Range<usize>>, BodyError>> {
        loop {
            if matches!(self.left, Left::Done) {
                return Poll::Ready(Ok(None));
            }
            if self.start < self.end {
                let unread = &self.block[self.start..self.end];
                let (consumed, data) = match &mut self.left {
                    Left::Length(left) => {
                        let n = unread
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            self.left = Left::Done;
                        }
                        (n, 0..n)
                    }
                    Left::UntilClose => (unread.len(), 0..unread.len()),
                    Left::Chunked(decoder) => {
                        let step = decoder.advance(unread).map_err(|_| BodyError::Malformed)?;
                        if decoder.is_done() {
                            self.left = Left::Done;
                        }
                        let data = if self.dechunk {
                            step.data
                        } else {
                            0..step.consumed
                        };
                        (step.consumed, data)
                    }
                    Left::Done => unreachable!("checked above"),
                };
                let at = self.start;
                self.start += consumed;
                if data.is_empty() {
                    continue;
                }
                return Poll::Ready(Ok(Some(at + data.start..at + data.end)));
            }
            if !read {
                return Poll::Pending;
            }
            self.start = 0;
            self.end = 0;
            match ready!(poll_read(up, cx, &mut self.block)) {
                Ok(0) if matches!(self.left, Left::UntilClose) => self.left = Left::Done,
                Ok(0) | Err(_) => return Poll::Ready(Err(BodyError::Cut)),
                Ok(n) => self.end = n,
            }
        }
    }
}
