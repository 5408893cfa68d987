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
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::body::{Lease, Leftover, ProxyBody, RequestBody, Tee};
use super::headers::prepare_response;
use super::{pool, upgrade};
use crate::metrics::CodeCounters;
use crate::proxy::{ListenerCtx, ProxyError};
use crate::table::{Attempts, Failure, InFlight, Snapshot};

/// How long a failed attempt's connection may take to hand a teed body back. The connection task
/// is aborted when its sender drops, so this is a ceiling, not a wait.
const LEFTOVER_WAIT: Duration = Duration::from_secs(1);

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

/// The head of an idempotent request, and the way back to its body, kept so that it can be sent
/// again.
pub struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// Where the teed body comes back; `None` for a bodiless request.
    body: Option<BodyBack>,
}

/// A teed body on its way back from an attempt, or back.
enum BodyBack {
    Waiting(oneshot::Receiver<Leftover>),
    Back(Leftover),
}

/// Whether `method` may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Replay {
    /// Readies `req` to be replayed when its method is idempotent: copies the head and, when it
    /// has a body, tees the body. `None` for any other method.
    pub fn prepare(req: &mut Request<RequestBody>) -> Option<Replay> {
        if !is_idempotent(req.method()) {
            return None;
        }
        let body = if req.body().is_end_stream() {
            None
        } else {
            match std::mem::replace(req.body_mut(), RequestBody::Empty) {
                RequestBody::Client(incoming) => {
                    let (tee, rx) = Tee::new(incoming);
                    *req.body_mut() = RequestBody::Teed(tee);
                    Some(BodyBack::Waiting(rx))
                }
                other => {
                    *req.body_mut() = other;
                    return None;
                }
            }
        };
        Some(Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        })
    }

    /// Whether the request may still be sent again: bodiless, or its body has not outgrown the copy
    /// (so far: the body may still be streaming into the failed attempt's connection).
    fn may_replay(&mut self) -> bool {
        let Some(BodyBack::Waiting(rx)) = &mut self.body else {
            return true;
        };
        match rx.try_recv() {
            Ok(leftover) => self.body = Some(BodyBack::Back(leftover)),
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(oneshot::error::TryRecvError::Closed) => return false,
        }
        true
    }

    /// The request again, for another attempt, once the previous attempt has let go of it; `None`
    /// when its body outgrew the replay copy or did not come back.
    async fn request(&mut self) -> Option<Request<RequestBody>> {
        let body = match self.body.take() {
            None => RequestBody::Empty,
            Some(back) => {
                let leftover = match back {
                    BodyBack::Back(leftover) => leftover,
                    BodyBack::Waiting(rx) => {
                        tokio::time::timeout(LEFTOVER_WAIT, rx).await.ok()?.ok()?
                    }
                };
                let (tee, rx) = Tee::resume(leftover);
                self.body = Some(BodyBack::Waiting(rx));
                RequestBody::Teed(tee)
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
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
    slot.record_response_time(started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc_9110_idempotent_methods_may_be_replayed() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE", "LOCK"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[tokio::test]
    async fn a_bodiless_request_is_rebuilt_whole_and_more_than_once() {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = Method::DELETE;
        *req.uri_mut() = "/item/7?x=1".parse().unwrap();
        req.headers_mut().insert("x-id", "42".parse().unwrap());
        let mut replay = Replay::prepare(&mut req).expect("DELETE may be replayed");
        for _ in 0..2 {
            let again = replay
                .request()
                .await
                .expect("a bodiless request always comes back");
            assert_eq!(again.method(), Method::DELETE);
            assert_eq!(again.uri(), "/item/7?x=1");
            assert_eq!(again.headers()["x-id"], "42");
            assert!(again.body().is_end_stream());
        }
    }

    #[test]
    fn a_post_is_never_prepared_for_replay() {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = Method::POST;
        assert!(Replay::prepare(&mut req).is_none());
        *req.method_mut() = Method::PATCH;
        assert!(Replay::prepare(&mut req).is_none());
    }
}
