//! Forwarding one request: walk the candidates, claim a slot, get a connection, send, and decide
//! whether a failure may go to another server (CONTRACT.md, "Retries").
//!
//! - A connect that fails or times out sends nothing, so the request, whatever its method, moves to
//!   the next candidate untouched.
//! - A pooled connection that the server closes under the request (the keep-alive race, not a
//!   server fault) is replaced once by a fresh connection to the same server, when the request never
//!   left or may be replayed; this is not a retry (nginx and HAProxy do the same).
//! - A bodiless idempotent request whose connection is closed or reset before the response is rebuilt
//!   from a copy of its head and sent to the next candidate. Anything else that has put bytes on the
//!   wire is answered 502 and never sent twice.

use std::io;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Body as _;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::body::{Lease, ProxyBody, RequestBody};
use super::headers::prepare_response;
use super::{fail, pool, upgrade};
use crate::proxy::{ListenerCtx, ProxyError};
use crate::table::{Attempts, InFlight, Snapshot};

/// What one attempt on one server came to.
enum Attempt {
    /// The server answered (or Fulcrum answered for it: timeout, broken response).
    Answered(Response<ProxyBody>),
    /// Nothing usable came back and the request may go to the next candidate.
    Retry(Request<RequestBody>, ProxyError),
}

/// The head of a bodiless idempotent request, kept so that it can be sent again.
pub struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// A copy of `req`'s head when `req` may be replayed: an idempotent method (RFC 9110 §9.2.2)
    /// and no body.
    pub fn of(req: &Request<RequestBody>) -> Option<Replay> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        (idempotent && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Sends `req` (already rewritten for the server) to the first candidates that will take it.
pub async fn forward(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    attempts: Attempts<'_>,
    mut req: Request<RequestBody>,
    mut client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let replay = Replay::of(&req);
    let mut last = None;
    for slot in attempts {
        let server = Arc::clone(slot.server());
        match attempt(ctx, snap, slot, req, replay.as_ref(), &mut client_upgrade).await {
            Attempt::Answered(response) => return response,
            Attempt::Retry(again, error) => {
                req = again;
                last = Some((server, error));
            }
        }
    }
    match last {
        Some((server, error)) => fail(server.requests_for(&ctx.name), error),
        None => fail(snap.unserved_for(&ctx.name), ProxyError::NoServer),
    }
}

async fn attempt(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    slot: InFlight,
    mut req: Request<RequestBody>,
    replay: Option<&Replay>,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
) -> Attempt {
    let settings = &snap.settings;
    let server = Arc::clone(slot.server());
    let counters = server.requests_for(&ctx.name);
    let addr = server.addr();
    let websocket = client_upgrade.is_some();
    let connect_failed = |e: pool::ConnectError, req| {
        warn!(upstream = %snap.name, server = %server.config.address, error = %e, "connect failed");
        slot.record_failure();
        Attempt::Retry(req, ProxyError::ConnectFailed)
    };
    let pooled = if websocket {
        None
    } else {
        pool::checkout(addr, settings.connect_timeout).await
    };
    let mut reused = pooled.is_some();
    let mut sender = match pooled {
        Some(sender) => sender,
        None => match pool::connect(addr, settings.connect_timeout, websocket).await {
            Ok(sender) => sender,
            Err(e) => return connect_failed(e, req),
        },
    };
    let started = Instant::now();
    let result = loop {
        let mut sent =
            tokio::time::timeout(settings.response_timeout, sender.try_send_request(req)).await;
        // A pooled connection the server was closing (the keep-alive race) gets one fresh
        // connection to the same server: when the request never left, or when it may be replayed.
        let resend = match &mut sent {
            Ok(Err(e)) if reused && e.message().is_some() => e.take_message(),
            Ok(Err(e)) if reused && closed_before_response(e.error()) => {
                replay.map(Replay::request)
            }
            _ => None,
        };
        let Some(again) = resend else { break sent };
        debug!(upstream = %snap.name, server = %server.config.address, "pooled connection closed under the request; resending on a fresh one");
        req = again;
        reused = false;
        sender = match pool::connect(addr, settings.connect_timeout, websocket).await {
            Ok(sender) => sender,
            Err(e) => return connect_failed(e, req),
        };
    };
    let mut response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let closed_early = closed_before_response(e.error());
            warn!(upstream = %snap.name, server = %server.config.address, error = %e.error(), reused, "bad response from server");
            if !(closed_early && reused) {
                // A reused connection closed under the request is the keep-alive race, not a fault.
                slot.record_failure();
            }
            return match replay.filter(|_| closed_early) {
                Some(replay) => Attempt::Retry(replay.request(), ProxyError::BadResponse),
                None => Attempt::Answered(fail(counters, ProxyError::BadResponse)),
            };
        }
        Err(_) => {
            warn!(upstream = %snap.name, server = %server.config.address, timeout = ?settings.response_timeout, "response timed out");
            slot.record_failure();
            return Attempt::Answered(fail(counters, ProxyError::Timeout));
        }
    };
    slot.record_response_time(started.elapsed());
    if let Some(counters) = counters {
        counters.inc(response.status().as_u16());
    }
    let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    prepare_response(response.headers_mut(), websocket && upgraded);
    if let (true, Some(client_upgrade)) = (upgraded, client_upgrade.take()) {
        let server_upgrade = hyper::upgrade::on(&mut response);
        upgrade::tunnel(client_upgrade, server_upgrade, slot, ctx.tracker.guard());
        return Attempt::Answered(response.map(|_| ProxyBody::empty()));
    }
    let lease = Lease {
        sender,
        slot,
        idle_timeout: settings.pool_idle_timeout,
        // A connection opened for an upgrade that the server refused is not pooled.
        max_idle: if websocket {
            0
        } else {
            settings.pool_max_idle_per_server
        },
    };
    Attempt::Answered(response.map(|body| ProxyBody::relay(body, lease)))
}

/// Whether the server closed or reset the connection without a (complete) response head.
fn closed_before_response(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}
