//! L7: serve HTTP/1.1 and h2c on one port and forward each request to a server of the upstream.
//!
//! A request takes the upstream's current snapshot, walks its candidates and claims a slot on the
//! first server not at its limit. Connecting is separate from sending, so a refused or timed-out
//! connect moves to the next candidate with the request untouched (up to `retries` other servers).
//! Once bytes of the request are on the wire, only an idempotent request goes again, from its replay
//! copy (`replay.rs`), when its connection closed before a response or, with `retry_on`, on a
//! 502/503/504 or a response timeout (`forward.rs` has the rules). Every attempt records its outcome
//! on the server, which feeds passive ejection.

mod body;
mod forward;
mod headers;
mod pool;
mod replay;
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
use tracing::debug;

pub use body::ProxyBody;
pub use pool::{connect_tcp, sweep_forever, sweep_interval, ConnectError};

use super::{ListenerCtx, ProxyError, Route};
use crate::balance::PickContext;
use crate::config::RespondConfig;
use crate::lifecycle::Shutdown;
use crate::metrics::CodeCounters;
use crate::table::Snapshot;
use body::RequestBody;
use headers::{has_ambiguous_framing, is_websocket_upgrade, prepare_request};

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

async fn forward(
    ctx: &ListenerCtx,
    snap: &Snapshot,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return fail(snap.unserved_for(&ctx.name), ProxyError::MethodNotAllowed);
    }
    if !snap.has_eligible() {
        return fail(snap.unserved_for(&ctx.name), ProxyError::NoServer);
    }
    let websocket = is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let attempts = snap.attempts(&PickContext {
        client,
        head: Some(&parts),
        now: tokio::time::Instant::now(),
    });
    prepare_request(&mut parts, client, websocket);
    let req = Request::from_parts(parts, RequestBody::Client(body));
    forward::forward(ctx, snap, attempts, req, client_upgrade).await
}
