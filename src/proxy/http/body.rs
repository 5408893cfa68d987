//! Bodies on both legs. [`RequestBody`] is what goes to a server: the client's body streamed through,
//! or nothing (a replayed bodiless request). [`ProxyBody`] is what goes to the client: a server's body
//! streamed through, or bytes Fulcrum made itself. Enums rather than boxed trait objects, so a
//! request allocates nothing for its bodies.
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

use super::pool::{self, Sender};
use crate::table::InFlight;

/// A request body as sent to a server.
pub enum RequestBody {
    /// The client's body, streamed frame by frame.
    Client(Incoming),
    /// No body: a bodiless request rebuilt for another attempt.
    Empty,
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
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
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
                            lease.slot.record_failure();
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
