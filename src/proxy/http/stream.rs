//! Requests that arrive on h2 streams (hyper's HTTP/2 server), forwarded over Fulcrum's HTTP/1.1
//! codec like any other: the request's parts are written as an HTTP/1.1 head (`Host` from
//! `:authority`, Cookie fields joined as RFC 9113 §8.2.3 asks, the hop-by-hop set dropped), its
//! body framed by its `Content-Length` or chunked, and the server's response handed back to hyper
//! as an `http::Response` whose body reads the server connection frame by frame.
//!
//! Every response carries the request's `X-Request-Id` (`proxy::ids`); on a listener with an
//! access log, a relayed body holds the request's [`Entry`] until it ends, so the line counts the
//! bytes sent and is written when the stream is done (or reset).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::exchange::{BodyError, Downstream};
use super::forward::{self, client_fault_answer, is_idempotent, Outcome, Outgoing, Served};
use super::pool::{self, Conn};
use super::upload::{Source, StreamBody, Upload};
use crate::access_log::{self, Entry, Protocol};
use crate::balance::PickContext;
use crate::config::RespondConfig;
use crate::proxy::h1::fields::Kind;
use crate::proxy::h1::rewrite::Out;
use crate::proxy::ids::{Ids, TRACEPARENT, X_REQUEST_ID};
use crate::proxy::{ListenerCtx, ProxyError, Route};
use crate::server::{Failure, InFlight};

/// Answers one request from an h2 stream.
pub async fn handle(
    ctx: &ListenerCtx,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = tokio::time::Instant::now();
    let ids = Ids::of_h2(req.headers(), ctx.tracing);
    let request_id =
        HeaderValue::from_bytes(ids.request_id.as_bytes()).expect("a request id is visible ASCII");
    let upstream = match &ctx.route {
        Route::Respond { response, counters } => {
            counters.inc(response.status.as_u16());
            let mut entry = start_entry(ctx, client, started, None, &req, &ids);
            if let Some(entry) = &mut entry {
                entry.status(response.status.as_u16());
                entry.sent(response.body.len());
            }
            return with_request_id(respond(response), request_id);
        }
        Route::Upstream(upstream) => upstream,
    };
    let snap = upstream.load();
    let mut entry = start_entry(ctx, client, started, Some(&snap.name), &req, &ids);
    let answer = |error: ProxyError, entry: Option<Entry>| {
        let response = with_request_id(error.response(), request_id.clone());
        if let Some(mut entry) = entry {
            entry.status(error.status().as_u16());
            let body = response.body().size_hint().exact().unwrap_or(0);
            entry.sent(usize::try_from(body).unwrap_or(usize::MAX));
        }
        response
    };
    let unserved = |error: ProxyError, entry| {
        if let Some(counters) = snap.unserved_for(ctx.id) {
            counters.inc(error.status().as_u16());
        }
        answer(error, entry)
    };
    if req.method() == Method::CONNECT {
        return unserved(ProxyError::MethodNotAllowed, entry);
    }
    if !snap.has_eligible() {
        return unserved(ProxyError::NoServer, entry);
    }
    let (parts, body) = req.into_parts();
    let attempts = snap.attempts(&PickContext {
        client,
        head: Some(&parts),
        now: tokio::time::Instant::now(),
    });
    let declared = parts.headers.contains_key(header::CONTENT_LENGTH);
    let source = match StreamBody::new(body, declared, ctx.http.max_body_bytes) {
        Some(body) => Source::Stream(body),
        None => Source::Empty,
    };
    let chunked = matches!(&source, Source::Stream(body) if body.is_chunked());
    let mut out = Out::new();
    write_head(
        &parts,
        &client.ip().to_canonical().to_string(),
        chunked,
        &ids,
        &mut out,
    );
    let replayable = is_idempotent(&parts.method);
    let mut outgoing = Outgoing {
        head: out.bytes(),
        upload: Upload::new(source, replayable),
        replayable,
        head_request: parts.method == Method::HEAD,
        websocket: false,
        interim: None,
    };
    match forward::forward(ctx, &snap, attempts, &mut outgoing).await {
        Outcome::Served(served) => {
            if let Some(entry) = &mut entry {
                entry.served(&served.slot.server().config.address, served.upstream_time);
            }
            with_request_id(relayed(served, entry), request_id)
        }
        Outcome::Failed(error) => answer(error, entry),
        Outcome::Client(fault) => answer(
            client_fault_answer(fault).unwrap_or(ProxyError::BadRequest("request body failed")),
            entry,
        ),
    }
}

/// The log entry of an h2 request, when the listener logs.
fn start_entry(
    ctx: &ListenerCtx,
    client: SocketAddr,
    started: tokio::time::Instant,
    upstream: Option<&str>,
    req: &Request<Incoming>,
    ids: &Ids,
) -> Option<Entry> {
    let log = ctx.access_log.as_ref()?;
    let header = |name| req.headers().get(name).map(HeaderValue::as_bytes);
    Some(
        log.entry(&access_log::Request {
            client,
            protocol: Protocol::Http2,
            started,
            method: Some(req.method().as_str().as_bytes()),
            path: Some(
                req.uri()
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .as_bytes(),
            ),
            upstream,
            request_id: Some(ids.request_id.as_bytes()),
            trace_id: ids.trace.trace_id(),
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
        }),
    )
}

/// `response` with the request's one `X-Request-Id` (a server's own is replaced).
fn with_request_id(mut response: Response<ProxyBody>, id: HeaderValue) -> Response<ProxyBody> {
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}

fn respond(config: &RespondConfig) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::from(config.body.clone()));
    *response.status_mut() = config.status;
    *response.headers_mut() = config.headers.clone();
    response
}

/// Whether an h2 request header is dropped on the way to an HTTP/1.1 server.
fn dropped(name: &HeaderName) -> bool {
    matches!(
        Kind::of(name.as_str().as_bytes()),
        Kind::Connection
            | Kind::HopByHop
            | Kind::TransferEncoding
            | Kind::Upgrade
            | Kind::Host
            | Kind::ForwardedFor
            | Kind::ForwardedProto
    ) || name == header::COOKIE
}

/// Writes the HTTP/1.1 head for an h2 request.
fn write_head(parts: &Parts, client_ip: &str, chunked: bool, ids: &Ids, out: &mut Out) {
    let started = ids.trace.started();
    out.put(parts.method.as_str().as_bytes());
    out.put(b" ");
    out.put(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.put(b" HTTP/1.1\r\nHost: ");
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(header::HOST).map(HeaderValue::as_bytes))
        .unwrap_or_default();
    out.put(host);
    out.put(b"\r\n");
    for (name, value) in &parts.headers {
        let replaced = name == X_REQUEST_ID || (started.is_some() && name == TRACEPARENT);
        if !dropped(name) && !replaced {
            out.put(name.as_str().as_bytes());
            out.put(b": ");
            out.put(value.as_bytes());
            out.put(b"\r\n");
        }
    }
    let mut cookies = parts.headers.get_all(header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.put(b"cookie: ");
        out.put(first.as_bytes());
        for more in cookies {
            out.put(b"; ");
            out.put(more.as_bytes());
        }
        out.put(b"\r\n");
    }
    out.put(b"x-forwarded-for: ");
    for earlier in parts.headers.get_all("x-forwarded-for") {
        out.put(earlier.as_bytes());
        out.put(b", ");
    }
    out.put(client_ip.as_bytes());
    out.put(b"\r\nx-forwarded-proto: http\r\nx-request-id: ");
    out.put(ids.request_id.as_bytes());
    out.put(b"\r\n");
    if let Some(traceparent) = started {
        out.put(b"traceparent: ");
        out.put(traceparent);
        out.put(b"\r\n");
    }
    if chunked {
        out.put(b"transfer-encoding: chunked\r\n");
    }
    out.put(b"\r\n");
}

/// The server's response as hyper sends it on the stream; `entry` is sent when its body ends.
fn relayed(served: Served, mut entry: Option<Entry>) -> Response<ProxyBody> {
    let Served {
        reply,
        conn,
        slot,
        idle_timeout,
        max_idle,
        upstream_time: _,
    } = served;
    if let Some(entry) = &mut entry {
        entry.status(reply.head.status);
    }
    let head = &reply.head;
    let mut response = Response::new(ProxyBody::Full(None));
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for field in head.fields.iter() {
        let skip = matches!(
            field.kind,
            Kind::Connection | Kind::HopByHop | Kind::TransferEncoding | Kind::Upgrade
        ) || (field.kind.may_be_nominated()
            && head
                .fields
                .nominated(&reply.block, field.name.get(&reply.block)));
        if skip {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.get(&reply.block)),
            HeaderValue::from_bytes(field.value.get(&reply.block)),
        ) {
            headers.append(name, value);
        }
    }
    let reusable = !head.close;
    let down = Downstream::new(reply, true);
    if down.is_done() {
        if reusable && !down.has_extra() {
            pool::checkin(slot.server().addr(), conn.stream, idle_timeout, max_idle);
        }
        return response;
    }
    *response.body_mut() = ProxyBody::Relayed(Box::new(Relay {
        down,
        conn: Some(conn),
        slot: Some(slot),
        idle_timeout,
        max_idle,
        reusable,
        entry,
    }));
    response
}

/// A server's response body being read for an h2 stream.
pub struct Relay {
    down: Downstream,
    conn: Option<Conn>,
    slot: Option<InFlight>,
    idle_timeout: std::time::Duration,
    max_idle: usize,
    reusable: bool,
    /// The request's log line, sent when the body has ended (or the stream was dropped).
    entry: Option<Entry>,
}

impl Relay {
    /// The response has been read whole: pool the connection when it is clean, free the slot.
    fn release(&mut self) {
        if let (Some(conn), Some(slot)) = (self.conn.take(), self.slot.take()) {
            if self.reusable && !self.down.has_extra() {
                pool::checkin(
                    slot.server().addr(),
                    conn.stream,
                    self.idle_timeout,
                    self.max_idle,
                );
            }
        }
    }
}

/// A response body as hyper sends it on an h2 stream.
pub enum ProxyBody {
    /// A server's body, read from its connection.
    Relayed(Box<Relay>),
    /// A body Fulcrum made (errors, `respond`), sent in one frame.
    Full(Option<Bytes>),
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let relay = match self.get_mut() {
            ProxyBody::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Relayed(relay) => relay,
        };
        let Some(conn) = &relay.conn else {
            return Poll::Ready(None);
        };
        match std::task::ready!(relay.down.poll_next(cx, &conn.stream, true)) {
            Ok(Some(range)) => {
                let data = Bytes::copy_from_slice(relay.down.slice(range));
                if let Some(entry) = &mut relay.entry {
                    entry.sent(data.len());
                }
                // Read whole: free the server's side before the client has the last bytes.
                if relay.down.is_done() {
                    relay.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                relay.release();
                Poll::Ready(None)
            }
            Err(e) => {
                relay.conn = None;
                if let Some(slot) = relay.slot.take() {
                    slot.failed(Failure::BrokenResponse);
                }
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Relayed(relay) => relay.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Relayed(_) => SizeHint::default(),
        }
    }
}
