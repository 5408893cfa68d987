//! Forwarding one request: walk the candidates, claim a slot, get a connection, send, record how
//! the attempt went, and decide whether a failure may go to another server (CONTRACT.md, "Retries").
//!
//! - A connect that fails or times out sends nothing, so the request, whatever its method, moves to
//!   the next candidate untouched.
//! - A pooled connection that the server closes under the request (the keep-alive race, not a
//!   server fault) is replaced once by a fresh connection to the same server, when the request never
//!   left or may be replayed; this is not a retry (nginx and HAProxy do the same).
//! - An idempotent request (RFC 9110 §9.2.2) is replayed on the next candidate, from a copy of its
//!   head and of at most the first 64 KiB of its body, when its connection is closed or reset before
//!   a response, and, when `retry_on` names them, on a 502/503/504 ("5xx") or a response timeout
//!   ("timeout"). When no other attempt is possible (retries used up, budget spent, body too long),
//!   the client gets the last attempt's answer: the server's 5xx itself, or Fulcrum's 502/504.
//! - A non-idempotent request that has put bytes on the wire is answered 502 and never sent twice.
//!
//! Every attempt records its outcome on the server: a response below 500 is a success; a connect
//! error, reset, timeout, 5xx or broken response is a failure (which feeds passive ejection). A
//! client that goes away mid-request is neither.

use std::io;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::body::{Lease, ProxyBody, RequestBody};
use super::headers::prepare_response;
use super::replay::Replay;
use super::{pool, upgrade};
use crate::metrics::CodeCounters;
use crate::proxy::{ListenerCtx, ProxyError};
use crate::server::{Failure, InFlight};
use crate::table::{Attempts, Snapshot};

/// What one attempt on one server came to.
enum Attempt {
    /// The client gets this, whatever else could be tried.
    Answered(Response<ProxyBody>),
    /// Nothing was sent: the request is handed back untouched for the next candidate.
    Unsent(Request<RequestBody>, ProxyError),
    /// The request was sent and failed in a way that lets an idempotent request go elsewhere;
    /// `answer` is what the client gets if it does not.
    Sent(Response<ProxyBody>),
}

/// Sends `req` (already rewritten for the server) to the first candidates that will take it.
pub async fn forward(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    mut attempts: Attempts<'_>,
    mut req: Request<RequestBody>,
    mut client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let mut replay = Replay::prepare(&mut req);
    let Some(mut slot) = attempts.next() else {
        return answer(
            snap.unserved_for(&ctx.name),
            ProxyError::NoServer.response(),
        );
    };
    loop {
        let server = Arc::clone(slot.server());
        let counters = server.requests_for(&ctx.name);
        let outcome = attempt(ctx, snap, slot, req, replay.as_mut(), &mut client_upgrade).await;
        let (again, last) = match outcome {
            Attempt::Answered(response) => return answer(counters, response),
            Attempt::Unsent(again, error) => (again, error.response()),
            Attempt::Sent(response) => {
                let Some(replay) = replay.as_mut() else {
                    return answer(counters, response);
                };
                if !replay.may_replay() {
                    return answer(counters, response);
                }
                let Some(next) = attempts.next() else {
                    return answer(counters, response);
                };
                // Dropping the response closes its connection, which hands the teed body back.
                drop(response);
                match replay.request().await {
                    Some(again) => {
                        slot = next;
                        req = again;
                        continue;
                    }
                    None => {
                        return answer(counters, ProxyError::BadResponse.response());
                    }
                }
            }
        };
        match attempts.next() {
            Some(next) => {
                slot = next;
                req = again;
            }
            None => return answer(counters, last),
        }
    }
}

/// Counts `response` as sent to the client and returns it.
fn answer(counters: Option<&CodeCounters>, response: Response<ProxyBody>) -> Response<ProxyBody> {
    if let Some(counters) = counters {
        counters.inc(response.status().as_u16());
    }
    response
}

async fn attempt(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    slot: InFlight,
    mut req: Request<RequestBody>,
    mut replay: Option<&mut Replay>,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
) -> Attempt {
    let settings = &snap.settings;
    let server = Arc::clone(slot.server());
    let addr = server.addr();
    let websocket = client_upgrade.is_some();
    let connect_failed = |e: pool::ConnectError, req| {
        warn!(upstream = %snap.name, server = %server.config.address, error = %e, "connect failed");
        slot.failed(e.failure());
        Attempt::Unsent(req, ProxyError::ConnectFailed)
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
        let unsent = match &mut sent {
            Ok(Err(e)) if reused => e.take_message(),
            _ => None,
        };
        let raced = reused
            && replay.is_some()
            && matches!(&sent, Ok(Err(e)) if closed_before_response(e.error()));
        let again = match (unsent, replay.as_mut()) {
            (Some(req), _) => req,
            (None, Some(replay)) if raced => {
                // Let go of the old connection, so that it hands the teed body back.
                drop(sent);
                drop(sender);
                match replay.request().await {
                    Some(again) => again,
                    None => return Attempt::Answered(ProxyError::BadResponse.response()),
                }
            }
            _ => break sent,
        };
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
        Ok(Err(e)) if e.error().is_user() => {
            // The client's side broke (its body stream failed): not the server's fault.
            debug!(upstream = %snap.name, server = %server.config.address, error = %e.error(), "client request body failed");
            return Attempt::Answered(ProxyError::BadResponse.response());
        }
        Ok(Err(e)) => {
            let closed_early = closed_before_response(e.error());
            warn!(upstream = %snap.name, server = %server.config.address, error = %e.error(), reused, "bad response from server");
            slot.failed(if closed_early {
                Failure::Reset
            } else {
                Failure::BrokenResponse
            });
            let answer = ProxyError::BadResponse.response();
            return if closed_early {
                Attempt::Sent(answer)
            } else {
                Attempt::Answered(answer)
            };
        }
        Err(_) => {
            warn!(upstream = %snap.name, server = %server.config.address, timeout = ?settings.response_timeout, "response timed out");
            slot.failed(Failure::ResponseTimeout);
            let answer = ProxyError::Timeout.response();
            return if settings.retry_on.timeout {
                Attempt::Sent(answer)
            } else {
                Attempt::Answered(answer)
            };
        }
    };
    slot.record_response_time(started);
    let status = response.status();
    if status.is_server_error() {
        slot.failed(Failure::ServerError(status.as_u16()));
    } else {
        slot.succeeded();
    }
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    prepare_response(response.headers_mut(), websocket && upgraded);
    if let (true, Some(client_upgrade)) = (upgraded, client_upgrade.take()) {
        let server_upgrade = hyper::upgrade::on(&mut response);
        upgrade::tunnel(client_upgrade, server_upgrade, slot, ctx.tracker.guard());
        return Attempt::Answered(response.map(|_| ProxyBody::empty()));
    }
    let retry_5xx = settings.retry_on.server_error
        && matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        );
    let lease = Lease {
        sender,
        slot,
        idle_timeout: settings.pool_idle_timeout,
        // A connection opened for an upgrade that the server refused is not pooled, nor one whose
        // 5xx may be retried: closing it is what hands a teed request body back for the replay.
        max_idle: if websocket || retry_5xx {
            0
        } else {
            settings.pool_max_idle_per_server
        },
    };
    let response = response.map(|body| ProxyBody::relay(body, lease));
    if retry_5xx {
        Attempt::Sent(response)
    } else {
        Attempt::Answered(response)
    }
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
