//! Forwarding one request: walk the candidates, claim a slot, get a connection, exchange, record
//! how the attempt went, and decide whether a failure may go to another server (CONTRACT.md,
//! "Retries").
//!
//! - A connect that fails or times out sends nothing, so the request, whatever its method, moves to
//!   the next candidate untouched.
//! - A pooled connection that the server closes under an idempotent request (the keep-alive race,
//!   not a server fault) is replaced once by a fresh connection to the same server; this is not a
//!   retry (nginx and HAProxy do the same). A pooled connection the server has already closed is
//!   never used (checkout sees it), whatever the method.
//! - An idempotent request (RFC 9110 §9.2.2) is sent again to the next candidate, from its replay
//!   copy (`upload.rs`), when its connection is closed or reset before a response, and, when
//!   `retry_on` names them, on a 502/503/504 ("5xx") or a response timeout ("timeout"). When no
//!   other attempt is possible (retries used up, budget spent, body too long), the client gets the
//!   last attempt's answer: the server's 5xx itself, or Fulcrum's 502/504.
//! - A non-idempotent request that has put bytes on the wire is answered 502 and never sent twice.
//!
//! Every attempt records its outcome on the server: a response below 500 is a success; a connect
//! error, reset, timeout, 5xx or broken response is a failure (which feeds passive ejection). A
//! client that goes away or breaks its body mid-request is neither.

use std::sync::Arc;

use http::Method;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::exchange::{exchange, ExchangeError, Reply};
use super::pool::{self, Conn};
use super::upload::{ClientFault, Upload};
use crate::metrics::{CodeCounters, LogLimit};
use crate::proxy::{ListenerCtx, ProxyError};
use crate::server::{Failure, InFlight};
use crate::table::{Attempts, Snapshot};

/// A request ready to go to a server: its rewritten head and its body.
pub struct Outgoing<'r, 'c> {
    /// The head as the server gets it.
    pub head: &'r [u8],
    /// The body.
    pub upload: Upload<'c>,
    /// An idempotent method: it may be sent again.
    pub replayable: bool,
    /// HEAD: the response has no body whatever its headers say.
    pub head_request: bool,
    /// A WebSocket upgrade: a fresh connection, never pooled.
    pub websocket: bool,
    /// The HTTP/1.1 client, to pass interim responses on to (`None`: they are dropped, for
    /// HTTP/1.0 and h2 clients).
    pub interim: Option<&'r TcpStream>,
}

/// A server's response head, with what its body needs.
pub struct Served {
    /// The head and the bytes read with it.
    pub reply: Reply,
    /// The connection the body arrives on.
    pub conn: Conn,
    /// The server's in-flight slot, held until the body ends.
    pub slot: InFlight,
    /// How long the connection may idle in the pool afterwards.
    pub idle_timeout: std::time::Duration,
    /// Idle connections kept per server per worker (0: do not pool this one).
    pub max_idle: usize,
    /// From handing the request to the server to its response head (the access log's
    /// `upstream_time`).
    pub upstream_time: std::time::Duration,
}

/// Whether `method` may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What the client gets.
pub enum Outcome {
    /// A server's response, to relay.
    Served(Served),
    /// Fulcrum's own answer.
    Failed(ProxyError),
    /// The client broke its side; it gets 400/408/413, or nothing when it went away.
    Client(ClientFault),
}

/// Fulcrum's answer to a client fault, if the client is still there to get one.
pub fn client_fault_answer(fault: ClientFault) -> Option<ProxyError> {
    match fault {
        ClientFault::Gone => None,
        ClientFault::Timeout => Some(ProxyError::BodyTimeout),
        ClientFault::Malformed => Some(ProxyError::BadRequest("malformed chunked body")),
        ClientFault::TooLarge => Some(ProxyError::BodyTooLarge),
    }
}

/// What one attempt on one server came to.
enum Attempt {
    /// The client gets this, whatever else could be tried.
    Answered(Outcome),
    /// Nothing was sent: the request may go to the next candidate as it is.
    Unsent(ProxyError),
    /// The request was sent and failed in a way that lets an idempotent request go elsewhere;
    /// this is what the client gets if it does not.
    Sent(Outcome),
}

/// Sends `req` to the first candidates that will take it, and counts what the client gets.
pub async fn forward(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    mut attempts: Attempts<'_>,
    req: &mut Outgoing<'_, '_>,
) -> Outcome {
    let Some(mut slot) = attempts.next() else {
        return counted(
            snap.unserved_for(ctx.id),
            Outcome::Failed(ProxyError::NoServer),
        );
    };
    loop {
        let server = Arc::clone(slot.server());
        let counters = server.requests_for(ctx.id);
        let last = match attempt(snap, slot, req).await {
            Attempt::Answered(outcome) => return counted(counters, outcome),
            Attempt::Unsent(error) => Outcome::Failed(error),
            Attempt::Sent(outcome) => {
                if !req.replayable || !req.upload.may_rewind() {
                    return counted(counters, outcome);
                }
                outcome
            }
        };
        let Some(next) = attempts.next() else {
            return counted(counters, last);
        };
        // Dropping the failed attempt's outcome closes its connection.
        drop(last);
        req.upload.rewind();
        slot = next;
    }
}

/// Counts `outcome`'s status as sent to the client and returns it.
fn counted(counters: Option<&CodeCounters>, outcome: Outcome) -> Outcome {
    if let Some(counters) = counters {
        let status = match &outcome {
            Outcome::Served(served) => Some(served.reply.head.status),
            Outcome::Failed(error) => Some(error.status().as_u16()),
            Outcome::Client(fault) => client_fault_answer(*fault).map(|e| e.status().as_u16()),
        };
        if let Some(status) = status {
            counters.inc(status);
        }
    }
    outcome
}

async fn attempt(snap: &Snapshot, slot: InFlight, req: &mut Outgoing<'_, '_>) -> Attempt {
    let settings = &snap.settings;
    let server = Arc::clone(slot.server());
    let addr = server.addr();
    let connect_failed = |e: pool::ConnectError| {
        static SITE: LogLimit = LogLimit::new();
        if let Some(suppressed) = SITE.allow() {
            warn!(upstream = %snap.name, server = %server.config.address, error = %e, suppressed, "connect failed");
        }
        slot.failed(e.failure());
        Attempt::Unsent(ProxyError::ConnectFailed)
    };
    let pooled = if req.websocket {
        None
    } else {
        pool::checkout(addr)
    };
    let mut conn = match pooled {
        Some(conn) => conn,
        None => match pool::connect(addr, settings.connect_timeout).await {
            Ok(conn) => conn,
            Err(e) => return connect_failed(e),
        },
    };
    let started = Instant::now();
    let result = loop {
        let result = exchange(
            &conn.stream,
            req.head,
            &mut req.upload,
            req.interim,
            req.head_request,
            settings.response_timeout,
        )
        .await;
        // A pooled connection the server was closing (the keep-alive race) gets one fresh
        // connection to the same server, when the request may be sent again.
        if result.as_ref().err() == Some(&ExchangeError::Closed)
            && conn.reused
            && req.replayable
            && req.upload.rewind()
        {
            debug!(upstream = %snap.name, server = %server.config.address, "pooled connection closed under the request; resending on a fresh one");
            conn = match pool::connect(addr, settings.connect_timeout).await {
                Ok(conn) => conn,
                Err(e) => return connect_failed(e),
            };
            continue;
        }
        break result;
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(ExchangeError::Client(fault)) => {
            debug!(upstream = %snap.name, server = %server.config.address, error = %fault, "client side failed during the request");
            return Attempt::Answered(Outcome::Client(fault));
        }
        Err(ExchangeError::Closed) => {
            static SITE: LogLimit = LogLimit::new();
            if let Some(suppressed) = SITE.allow() {
                warn!(upstream = %snap.name, server = %server.config.address, reused = conn.reused, suppressed, "server closed the connection before responding");
            }
            slot.failed(Failure::Reset);
            return Attempt::Sent(Outcome::Failed(ProxyError::BadResponse));
        }
        Err(ExchangeError::Broken(why)) => {
            static SITE: LogLimit = LogLimit::new();
            if let Some(suppressed) = SITE.allow() {
                warn!(upstream = %snap.name, server = %server.config.address, error = why, suppressed, "bad response from server");
            }
            slot.failed(Failure::BrokenResponse);
            return Attempt::Answered(Outcome::Failed(ProxyError::BadResponse));
        }
        Err(ExchangeError::Timeout) => {
            static SITE: LogLimit = LogLimit::new();
            if let Some(suppressed) = SITE.allow() {
                warn!(upstream = %snap.name, server = %server.config.address, timeout = ?settings.response_timeout, suppressed, "response timed out");
            }
            slot.failed(Failure::ResponseTimeout);
            let answer = Outcome::Failed(ProxyError::Timeout);
            return if settings.retry_on.timeout {
                Attempt::Sent(answer)
            } else {
                Attempt::Answered(answer)
            };
        }
    };
    let upstream_time = slot.record_response_time(started);
    let status = reply.head.status;
    if status == 101 && !req.websocket {
        static SITE: LogLimit = LogLimit::new();
        if let Some(suppressed) = SITE.allow() {
            warn!(upstream = %snap.name, server = %server.config.address, suppressed, "101 to a request that asked for no upgrade");
        }
        slot.failed(Failure::BrokenResponse);
        return Attempt::Answered(Outcome::Failed(ProxyError::BadResponse));
    }
    if status >= 500 {
        slot.failed(Failure::ServerError(status));
    } else {
        slot.succeeded();
    }
    let retry_5xx = settings.retry_on.server_error && matches!(status, 502..=504);
    // A server that answered before reading the whole request is mid-request on this connection.
    let request_sent = req.upload.is_sent();
    let served = Served {
        reply,
        conn,
        slot,
        idle_timeout: settings.pool_idle_timeout,
        // A connection opened for an upgrade is never pooled, nor one whose 5xx may be retried, nor
        // one whose request was not sent whole.
        max_idle: if req.websocket || retry_5xx || !request_sent {
            0
        } else {
            settings.pool_max_idle_per_server
        },
        upstream_time,
    };
    if retry_5xx {
        Attempt::Sent(Outcome::Served(served))
    } else {
        Attempt::Answered(Outcome::Served(served))
    }
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
}
