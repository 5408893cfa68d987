//! Bodies on both legs. [`RequestBody`] is what goes to a server: the client's body streamed through,
//! or nothing (a replayed bodiless request). [`ProxyBody`] is what goes to the client: a server's body
//! streamed through, or bytes Fulcrum made itself. Enums rather than boxed trait objects, so a
//! request allocates nothing for its bodies.
//!
//! An idempotent request's body is [`Tee`]d: streamed upstream as it arrives while the first
//! [`REPLAY_LIMIT`] bytes are kept (as reference-counted `Bytes`, not copied), so the request can be
//! sent again to another server if the first fails before answering. When the attempt's connection
//! lets go of the body, the kept bytes and the unread rest come back through a oneshot channel; a
//! body that outgrew the limit comes back as nothing, and the request is not replayed.
//!
//! A relayed body carries the lease on its upstream connection: when the body ends, the connection
//! goes back to the worker's pool and the server's in-flight slot is released; if the client goes
//! away first, both are dropped and the half-read connection is closed, never reused.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::pool::{self, Sender};
use crate::server::{Failure, InFlight};

/// The most of a request body kept for a replay (CONTRACT.md "Retries").
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A request body as sent to a server.
pub enum RequestBody {
    /// The client's body, streamed frame by frame.
    Client(Incoming),
    /// The client's body streamed with a replay copy (idempotent requests).
    Teed(Tee),
    /// No body: a bodiless request rebuilt for another attempt.
    Empty,
}

/// What a [`Tee`] hands back when its attempt lets go of it: the bytes read so far and the unread
/// rest of the client's body (`None` once it has all been read).
pub struct Leftover {
    sent: Vec<Bytes>,
    rest: Option<Incoming>,
}

/// A request body streamed upstream while its first [`REPLAY_LIMIT`] bytes are kept.
pub struct Tee {
    /// Bytes of an earlier attempt, sent again before the rest.
    replay: std::vec::IntoIter<Bytes>,
    rest: Option<Incoming>,
    kept: Vec<Bytes>,
    kept_len: usize,
    /// The body outgrew the limit (or carried trailers): it cannot be replayed.
    spoiled: bool,
    back: Option<oneshot::Sender<Leftover>>,
}

impl Tee {
    /// Tees `body`; the returned receiver gets the leftover when the tee is dropped.
    pub fn new(body: Incoming) -> (Tee, oneshot::Receiver<Leftover>) {
        Tee::resume(Leftover {
            sent: Vec::new(),
            rest: Some(body),
        })
    }

    /// A tee that first sends again what `leftover` had sent, then the rest.
    pub fn resume(leftover: Leftover) -> (Tee, oneshot::Receiver<Leftover>) {
        let (tx, rx) = oneshot::channel();
        let kept_len = leftover.sent.iter().map(Bytes::len).sum();
        let tee = Tee {
            replay: leftover.sent.clone().into_iter(),
            rest: leftover.rest,
            kept: leftover.sent,
            kept_len,
            spoiled: false,
            back: Some(tx),
        };
        (tee, rx)
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(bytes) = self.replay.next() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(rest).poll_frame(cx));
        match &frame {
            None => self.rest = None,
            Some(Ok(frame)) if !self.spoiled => match frame.data_ref() {
                Some(data) if self.kept_len + data.len() <= REPLAY_LIMIT => {
                    self.kept_len += data.len();
                    self.kept.push(data.clone());
                }
                _ => {
                    // Dropping the sender tells the waiting side at once that no replay is coming.
                    self.spoiled = true;
                    self.kept = Vec::new();
                    self.back = None;
                }
            },
            Some(_) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.replay.len() == 0 && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let replay: u64 = self.replay.as_slice().iter().map(|b| b.len() as u64).sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + replay);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + replay);
        }
        hint
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let (false, Some(back)) = (self.spoiled, self.back.take()) {
            let _ = back.send(Leftover {
                sent: std::mem::take(&mut self.kept),
                rest: self.rest.take(),
            });
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Teed(tee) => tee.poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Teed(tee) => tee.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Teed(tee) => tee.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An upstream connection and server slot held while a response body streams.
pub struct Lease {
    /// The connection the response arrives on.
    pub sender: Sender,
    /// The server's in-flight slot.
    pub slot: InFlight,
    /// How long the connection may idle in the pool.
    pub idle_timeout: Duration,
    /// Idle connections kept per server per worker.
    pub max_idle: usize,
}

impl Lease {
    /// The exchange is complete: pool the connection and free the slot.
    pub fn release(self) {
        let addr = self.slot.server().addr();
        pool::checkin(addr, self.sender, self.idle_timeout, self.max_idle);
    }
}

/// A response body as sent to the client.
pub enum ProxyBody {
    /// A server's body, streamed frame by frame.
    Relayed {
        /// The server's body.
        body: Incoming,
        /// Released when `body` ends.
        lease: Option<Lease>,
    },
    /// A body Fulcrum made (errors, `respond`), sent in one frame.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// Relays `body`, releasing `lease` at its end (at once if it is already empty).
    pub fn relay(body: Incoming, lease: Lease) -> Self {
        if body.is_end_stream() {
            lease.release();
            return ProxyBody::Full(None);
        }
        ProxyBody::Relayed {
            body,
            lease: Some(lease),
        }
    }

    /// No body at all.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Relayed { body, lease } => {
                let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
                match &frame {
                    None => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(lease) = lease.take() {
                            lease.slot.failed(Failure::BrokenResponse);
                        }
                    }
                    // hyper stops polling once a body reports its end, so a body whose last frame
                    // also ends it must release here, or the connection would never be pooled.
                    Some(Ok(_)) if body.is_end_stream() => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Relayed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Relayed { body, .. } => body.size_hint(),
        }
    }
}
