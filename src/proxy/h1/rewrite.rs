//! Writing the head the next hop gets, in one pass over the parsed fields.
//!
//! Both directions drop the hop-by-hop set ([`Kind::HopByHop`], `Connection`,
//! `Transfer-Encoding`, `Upgrade`) and every header `Connection` nominates, except `Host` and
//! `X-Forwarded-*`. Each leg's framing and connection headers are then written by Fulcrum itself:
//! it frames each leg on its own. A request also gets `X-Forwarded-For` (the client's earlier
//! values joined on one line, then the client's IP) and `X-Forwarded-Proto`, and an absolute-form
//! target becomes an origin-form one with its authority as the one `Host` (RFC 9112 §3.2.2).
//! Both carry the request's one `X-Request-Id` (the server's own lines are replaced on the way
//! back), and a request the `traceparent` Fulcrum started for it (`proxy::ids`).

use super::fields::{Field, Fields, Kind};
use super::request::{Framing, RequestHead, Target};
use super::response::ResponseHead;
use crate::proxy::buffer::{Block, BLOCK_SIZE};
use crate::proxy::ids::Ids;

/// A head being written: bytes in a pooled block that grows when a head outgrows it.
pub struct Out {
    block: Block,
    len: usize,
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

impl Out {
    /// An empty head in a head block from the worker's pool.
    pub fn new() -> Out {
        Out {
            block: Block::head(),
            len: 0,
        }
    }

    /// Appends `bytes`.
    pub fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end > self.block.len() {
            self.block
                .grow(end.max(self.block.len() * 2).max(BLOCK_SIZE));
        }
        self.block[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// What has been written.
    pub fn bytes(&self) -> &[u8] {
        &self.block[..self.len]
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Whether `field` is passed on to the next hop as received.
fn passes(field: &Field, fields: &Fields, buf: &[u8]) -> bool {
    match field.kind {
        Kind::Connection | Kind::HopByHop | Kind::TransferEncoding | Kind::Upgrade => false,
        kind if kind.may_be_nominated() => !fields.nominated(buf, field.name.get(buf)),
        _ => true,
    }
}

fn put_field(out: &mut Out, buf: &[u8], field: &Field) {
    out.put(field.name.get(buf));
    out.put(b": ");
    out.put(field.value.get(buf));
    out.put(b"\r\n");
}

/// Writes the request head for the server: HTTP/1.1, origin-form, `client_ip` appended to
/// `X-Forwarded-For`, `X-Forwarded-Proto: http`, the request's ids, the framing of `head`, and
/// `Connection: upgrade` with `Upgrade: websocket` for a WebSocket upgrade.
pub fn request(head: &RequestHead, buf: &[u8], client_ip: &str, ids: &Ids, out: &mut Out) {
    out.put(head.method.as_str().as_bytes());
    out.put(b" ");
    match head.form {
        Target::Absolute { path, .. } if path.is_empty() => out.put(b"/"),
        Target::Absolute { path, .. } if path.get(buf)[0] == b'?' => {
            out.put(b"/");
            out.put(path.get(buf));
        }
        Target::Absolute { path, .. } => out.put(path.get(buf)),
        _ => out.put(head.target.get(buf)),
    }
    out.put(b" HTTP/1.1\r\n");
    let absolute = match head.form {
        Target::Absolute { authority, .. } => Some(authority),
        _ => None,
    };
    if let Some(authority) = absolute {
        out.put(b"Host: ");
        out.put(authority.get(buf));
        out.put(b"\r\n");
    } else if head.host.is_none() {
        // An HTTP/1.0 request without `Host` goes on as HTTP/1.1, which needs one: empty, as
        // RFC 9112 §3.2 says for a target without an authority.
        out.put(b"Host: \r\n");
    }
    let http10 = head.version == http::Version::HTTP_10;
    for field in head.fields.iter() {
        match field.kind {
            Kind::Host if absolute.is_some() => {}
            // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
            Kind::Other if http10 && field.name.get(buf).eq_ignore_ascii_case(b"expect") => {}
            Kind::ForwardedProto | Kind::ForwardedFor | Kind::RequestId => {}
            Kind::TraceParent if ids.trace.started().is_some() => {}
            _ if passes(field, &head.fields, buf) => put_field(out, buf, field),
            _ => {}
        }
    }
    // Every earlier hop's line, joined into one in order, then the client.
    out.put(b"X-Forwarded-For: ");
    for field in head.fields.iter().filter(|f| f.kind == Kind::ForwardedFor) {
        if !field.value.is_empty() {
            out.put(field.value.get(buf));
            out.put(b", ");
        }
    }
    out.put(client_ip.as_bytes());
    out.put(b"\r\n");
    out.put(b"X-Forwarded-Proto: http\r\n");
    put_request_id(out, ids.request_id.as_bytes());
    if let Some(traceparent) = ids.trace.started() {
        out.put(b"traceparent: ");
        out.put(traceparent);
        out.put(b"\r\n");
    }
    if head.framing == Framing::Chunked {
        out.put(b"Transfer-Encoding: chunked\r\n");
    }
    if head.websocket {
        out.put(b"Connection: upgrade\r\nUpgrade: websocket\r\n");
    }
    out.put(b"\r\n");
}

/// How the client leg of a response is framed and whether it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLeg {
    /// Send `Transfer-Encoding: chunked` (the server's chunked body passed on as received).
    pub chunked: bool,
    /// Send `Connection: close` and close after the body.
    pub close: bool,
    /// The client speaks HTTP/1.0 and the connection stays open: say `Connection: keep-alive`.
    pub keep_alive_10: bool,
    /// A WebSocket upgrade was accepted: say `Connection: upgrade` and `Upgrade: websocket`.
    pub websocket: bool,
}

/// Writes `X-Request-Id: id`.
pub fn put_request_id(out: &mut Out, id: &[u8]) {
    out.put(b"X-Request-Id: ");
    out.put(id);
    out.put(b"\r\n");
}

/// Writes the response head for the client: the server's status and end-to-end fields (its
/// `X-Request-Id` replaced by `request_id`, when given), then the client leg's framing and
/// connection headers.
pub fn response(
    head: &ResponseHead,
    buf: &[u8],
    leg: ClientLeg,
    request_id: Option<&[u8]>,
    out: &mut Out,
) {
    out.put(b"HTTP/1.1 ");
    out.put(status_digits(head.status).as_slice());
    out.put(b" ");
    out.put(head.reason.get(buf));
    out.put(b"\r\n");
    for field in head.fields.iter() {
        let replaced = request_id.is_some() && field.kind == Kind::RequestId;
        if !replaced && passes(field, &head.fields, buf) {
            put_field(out, buf, field);
        }
    }
    if let Some(id) = request_id {
        put_request_id(out, id);
    }
    if leg.chunked {
        out.put(b"Transfer-Encoding: chunked\r\n");
    }
    if leg.websocket {
        out.put(b"Connection: upgrade\r\nUpgrade: websocket\r\n");
    } else if leg.close {
        out.put(b"Connection: close\r\n");
    } else if leg.keep_alive_10 {
        out.put(b"Connection: keep-alive\r\n");
    }
    out.put(b"\r\n");
}

fn status_digits(status: u16) -> [u8; 3] {
    [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

#[cfg(test)]
mod tests;
