//! L7: serve HTTP/1.1 and h2c on one port and forward each request to a server of the upstream.
//!
//! A request takes the upstream's current snapshot, walks its candidates and claims a slot on the
//! first server not at its limit. Connecting is separate from sending, so a refused or timed-out
//! connect moves to the next candidate with the request untouched (up to `retries` other servers);
//! once bytes of the request are on the wire it is never sent to another server.

mod body;
mod headers;
mod pool;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use body::ProxyBody;
pub use pool::{connect_tcp, sweep_forever, ConnectError};

use super::{ListenerCtx, ProxyError, Route};
use crate::balance::PickContext;
use crate::config::RespondConfig;
use crate::lifecycle::Shutdown;
use crate::metrics::CodeCounters;
use crate::table::{InFlight, Snapshot};
use body::Lease;
use headers::{has_ambiguous_framing, is_websocket_upgrade, prepare_request, prepare_response};

/// Serves one accepted client connection until it closes, or until shutdown (then idle keep-alive
/// connections close at once and in-flight requests finish with `Connection: close`).
pub async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    client: SocketAddr,
    mut shutdown: Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(handle(&ctx, client, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%client, error = %e, "client connection ended with an error");
            }
            return;
        }
        () = shutdown.wait() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        debug!(%client, error = %e, "client connection ended with an error during shutdown");
    }
}

async fn handle(
    ctx: &ListenerCtx,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if req.version() < Version::HTTP_2 && has_ambiguous_framing(req.headers()) {
        return match &ctx.route {
            Route::Respond { counters, .. } => fail(Some(counters), ProxyError::BadRequest),
            Route::Upstream(upstream) => fail(
                upstream.load().unserved_for(&ctx.name),
                ProxyError::BadRequest,
            ),
        };
    }
    match &ctx.route {
        Route::Respond { response, counters } => {
            counters.inc(response.status.as_u16());
            respond(response)
        }
        Route::Upstream(upstream) => forward(ctx, &upstream.load(), client, req).await,
    }
}

fn respond(config: &RespondConfig) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::from(config.body.clone()));
    *response.status_mut() = config.status;
    *response.headers_mut() = config.headers.clone();
    response
}

fn fail(counters: Option<&CodeCounters>, error: ProxyError) -> Response<ProxyBody> {
    if let Some(counters) = counters {
        counters.inc(error.status().as_u16());
    }
    error.response()
}

/// What one attempt on one server came to.
enum Attempt {
    /// The server answered (or Fulcrum answered for it: timeout, broken response).
    Answered(Response<ProxyBody>),
    /// No connection could be made; the request was not sent and may go to another server.
    NotConnected(Request<Incoming>),
}

async fn forward(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return fail(snap.unserved_for(&ctx.name), ProxyError::MethodNotAllowed);
    }
    let websocket = is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let candidates = snap.candidates(&PickContext {
        client,
        head: Some(&parts),
    });
    prepare_request(&mut parts, client, websocket);
    let mut req = Request::from_parts(parts, body);
    let mut client_upgrade = client_upgrade;
    let mut attempts_left = snap.settings.retries + 1;
    let mut last_server = None;
    for server in candidates {
        if attempts_left == 0 {
            break;
        }
        let Some(slot) = server.try_acquire() else {
            continue; // at max_connections: skipped, not a retry
        };
        attempts_left -= 1;
        last_server = Some(Arc::clone(server));
        match attempt(ctx, snap, slot, req, &mut client_upgrade).await {
            Attempt::Answered(response) => return response,
            Attempt::NotConnected(returned) => req = returned,
        }
    }
    match last_server {
        Some(server) => fail(server.requests_for(&ctx.name), ProxyError::ConnectFailed),
        None => fail(snap.unserved_for(&ctx.name), ProxyError::NoServer),
    }
}

async fn attempt(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    slot: InFlight,
    mut req: Request<Incoming>,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
) -> Attempt {
    let settings = &snap.settings;
    let server = Arc::clone(slot.server());
    let counters = server.requests_for(&ctx.name);
    let addr = server.addr();
    let websocket = client_upgrade.is_some();
    let pooled = if websocket {
        None
    } else {
        pool::checkout(addr).await
    };
    let mut reused = pooled.is_some();
    let mut sender = match pooled {
        Some(sender) => sender,
        None => match pool::connect(addr, settings.connect_timeout, websocket).await {
            Ok(sender) => sender,
            Err(e) => {
                warn!(upstream = %snap.name, server = %server.config.address, error = %e, "connect failed");
                slot.record_failure();
                return Attempt::NotConnected(req);
            }
        },
    };
    let started = Instant::now();
    let result = loop {
        let sent =
            tokio::time::timeout(settings.response_timeout, sender.try_send_request(req)).await;
        match sent {
            Ok(Err(mut e)) if reused && e.message().is_some() => {
                // The pooled connection closed before the request went out: take a fresh one.
                req = e.take_message().expect("checked above");
                reused = false;
                sender = match pool::connect(addr, settings.connect_timeout, websocket).await {
                    Ok(sender) => sender,
                    Err(e) => {
                        warn!(upstream = %snap.name, server = %server.config.address, error = %e, "connect failed");
                        slot.record_failure();
                        return Attempt::NotConnected(req);
                    }
                };
            }
            other => break other,
        }
    };
    let mut response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            warn!(upstream = %snap.name, server = %server.config.address, error = %e.error(), "bad response from server");
            slot.record_failure();
            return Attempt::Answered(fail(counters, ProxyError::BadResponse));
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
