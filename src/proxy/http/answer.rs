//! Fulcrum's own answers on an HTTP/1 connection, and the access-log entries of parsed heads:
//! errors (with `Connection: close` and a lingering close for 4xx, kept open for a 5xx to a
//! request without a body), a `respond` listener's fixed response, and the refusal of a head that
//! did not parse (logged with what is known). Each carries the request's `X-Request-Id` once its
//! head has parsed.

use std::net::SocketAddr;
use std::time::Duration;

use http::Version;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::server::Next;
use crate::access_log::{self, Entry, Protocol};
use crate::config::RespondConfig;
use crate::proxy::buffer::Block;
use crate::proxy::h1::request::RequestHead;
use crate::proxy::h1::rewrite::{self, Out};
use crate::proxy::ids::Ids;
use crate::proxy::io::write_all;
use crate::proxy::{ListenerCtx, ProxyError, Route};

/// Answers `error` to a head that did not parse, and closes (counted like any answer, on the
/// listener's unserved series, and logged with what is known: no method, path or request id).
pub(super) async fn refuse(
    ctx: &ListenerCtx,
    stream: &TcpStream,
    client: SocketAddr,
    started: Instant,
    error: ProxyError,
) {
    let snap;
    let (counters, upstream) = match &ctx.route {
        Route::Respond { counters, .. } => (Some(&**counters), None),
        Route::Upstream(upstream) => {
            snap = upstream.load();
            (snap.unserved_for(ctx.id), Some(&*snap.name))
        }
    };
    if let Some(counters) = counters {
        counters.inc(error.status().as_u16());
    }
    let entry = ctx.access_log.as_ref().map(|log| {
        log.entry(&access_log::Request {
            client,
            protocol: Protocol::Unknown,
            started,
            method: None,
            path: None,
            upstream,
            request_id: None,
            trace_id: None,
            referer: None,
            user_agent: None,
        })
    });
    answer_and_close(stream, error, None, entry).await;
}

/// Writes Fulcrum's answer to `error` with `Connection: close` (and `request_id`), then closes the
/// way nginx's lingering close does: the write side first, then what the client still sends is
/// read and dropped for a moment, so that closing with unread bytes does not reset the connection
/// and destroy the answer before the client has read it. `entry`'s line goes before the linger.
pub(super) async fn answer_and_close(
    stream: &TcpStream,
    error: ProxyError,
    request_id: Option<&[u8]>,
    mut entry: Option<Entry>,
) {
    let mut out = Out::new();
    let body = error.write_h1(true, request_id, &mut out);
    if let Some(entry) = &mut entry {
        entry.status(error.status().as_u16());
    }
    if write_all(stream, out.bytes()).await.is_err() {
        return;
    }
    if let Some(entry) = &mut entry {
        entry.sent(body);
    }
    drop(entry);
    drop(out);
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let mut sink = Block::take();
    let deadline = Instant::now() + LINGER;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| crate::proxy::io::poll_read(stream, cx, &mut sink)),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => return,
        }
    }
}

/// How long a refused client's remaining bytes are read and dropped before the close.
const LINGER: Duration = Duration::from_secs(1);
/// The most bytes read and dropped then.
const LINGER_BYTES: usize = 1 << 20;

/// Writes a `respond` listener's fixed response.
pub(super) fn respond(config: &RespondConfig, close: bool, request_id: &[u8], out: &mut Out) {
    out.put(b"HTTP/1.1 ");
    out.put(config.status.as_str().as_bytes());
    out.put(b" ");
    out.put(config.status.canonical_reason().unwrap_or("").as_bytes());
    out.put(b"\r\n");
    for (name, value) in &config.headers {
        out.put(name.as_str().as_bytes());
        out.put(b": ");
        out.put(value.as_bytes());
        out.put(b"\r\n");
    }
    out.put(b"Content-Length: ");
    out.put(config.body.len().to_string().as_bytes());
    out.put(b"\r\n");
    if close {
        out.put(b"Connection: close\r\n");
    }
    rewrite::put_request_id(out, request_id);
    out.put(b"\r\n");
    out.put(&config.body);
}

/// The log entry of a parsed request, when the listener logs.
pub(super) fn start_entry(
    ctx: &ListenerCtx,
    client: SocketAddr,
    started: Instant,
    upstream: Option<&str>,
    head: &RequestHead,
    buf: &[u8],
    ids: &Ids,
) -> Option<Entry> {
    let log = ctx.access_log.as_ref()?;
    let header = |name: &[u8]| head.fields.first(buf, name);
    Some(log.entry(&access_log::Request {
        client,
        protocol: if head.version == Version::HTTP_10 {
            Protocol::Http10
        } else {
            Protocol::Http11
        },
        started,
        method: Some(head.method.as_str().as_bytes()),
        path: Some(head.target.get(buf)),
        upstream,
        request_id: Some(ids.request_id.as_bytes()),
        trace_id: ids.trace.trace_id(),
        referer: header(b"referer"),
        user_agent: header(b"user-agent"),
    }))
}

/// Answers `error` and keeps the connection open (a 5xx to a request without a body).
pub(super) async fn answer_open(
    stream: &TcpStream,
    error: ProxyError,
    request_id: &[u8],
    mut entry: Option<Entry>,
) -> Next {
    let mut out = Out::new();
    let body = error.write_h1(false, Some(request_id), &mut out);
    if let Some(entry) = &mut entry {
        entry.status(error.status().as_u16());
    }
    match write_all(stream, out.bytes()).await {
        Ok(()) => {
            if let Some(entry) = &mut entry {
                entry.sent(body);
            }
            Next::KeepAlive
        }
        Err(_) => Next::Close,
    }
}
