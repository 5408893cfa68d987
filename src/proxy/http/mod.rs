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
mod h2;
mod headers;
mod pool;
mod replay;
mod upgrade;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::debug;

pub use body::ProxyBody;
pub use pool::{connect_tcp, sweep_forever, sweep_interval, ConnectError};

use self::h2::Prefixed;
use super::{ListenerCtx, ProxyError, Route};
use crate::balance::PickContext;
use crate::config::RespondConfig;
use crate::lifecycle::Shutdown;
use crate::metrics::CodeCounters;
use crate::table::Snapshot;
use body::RequestBody;
use headers::{has_ambiguous_framing, is_websocket_upgrade, prepare_request};

/// Serves one accepted client connection until it closes, or until shutdown (then idle keep-alive
/// connections close at once and in-flight requests finish with `Connection: close`, or after a
/// GOAWAY on h2). The connection preface tells h2c from HTTP/1.1.
pub async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    client: SocketAddr,
    shutdown: Shutdown,
) {
    match sniff(stream).await {
        Ok(Some((true, io))) => h2::serve(ctx, io, client, shutdown).await,
        Ok(Some((false, io))) => serve_http1(ctx, io, client, shutdown).await,
        Ok(None) => debug!(%client, "client closed before sending a byte"),
        Err(e) => debug!(%client, error = %e, "client connection failed before its first request"),
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), the first bytes an h2c client sends.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client speaks h2c, and its connection with nothing consumed; `None` when it closed
/// before saying.
///
/// Usually one `peek` tells: the first segment holds the whole preface or a byte off it. If it
/// holds only a strict prefix, the rest is read instead and put back in front ([`Prefixed`]):
/// peeking again would spin, since a successful peek leaves the socket readable and `readable()`
/// then returns at once, for as long as the client takes to send the next byte.
async fn sniff(mut stream: TcpStream) -> io::Result<Option<(bool, Prefixed<TcpStream>)>> {
    let mut head = [0u8; PREFACE.len()];
    let mut n = stream.peek(&mut head).await?;
    if n == 0 {
        return Ok(None);
    }
    let undecided = |n: usize, head: &[u8]| n < PREFACE.len() && head[..n] == PREFACE[..n];
    if !undecided(n, &head) {
        let io = Prefixed::new(Bytes::new(), stream);
        return Ok(Some((head[..n] == PREFACE[..], io)));
    }
    n = 0;
    while undecided(n, &head) {
        match stream.read(&mut head[n..]).await? {
            0 => return Ok(None),
            read => n += read,
        }
    }
    let h2 = head[..n] == PREFACE[..];
    Ok(Some((h2, Prefixed::new(head[..n].to_vec(), stream))))
}

/// Serves an HTTP/1.1 connection (WebSocket upgrades included) with hyper.
async fn serve_http1(
    ctx: Arc<ListenerCtx>,
    io: Prefixed<TcpStream>,
    client: SocketAddr,
    mut shutdown: Shutdown,
) {
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(handle(&ctx, client, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
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
