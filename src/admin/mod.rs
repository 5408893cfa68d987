//! The admin endpoint: `GET /healthz`, `/metrics` (Prometheus text), `/status` (JSON), `/` (the
//! status page), and `POST /upstreams/{upstream}/servers/{address}/{drain|disable|enable}`. It runs
//! on the control thread, away from the workers, reads the same snapshots the request path reads,
//! and changes a server only through its upstream's writer.
//!
//! Reading is open to whoever can connect; a POST must pass [`guard`] (the bearer token when one
//! is configured, and no foreign `Origin`, so a web page cannot make a browser on the operator's
//! desk drain a server).

mod actions;
mod guard;
mod page;
mod socket;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

pub use socket::{bind, BindError, Bound};

use crate::health::slow_start;
use crate::lifecycle::Shutdown;
use crate::server::Server;
use crate::table::Directory;

/// What the admin endpoint reports on, and what a POST must carry.
pub struct State {
    /// Every upstream, by name, as the running configuration has them.
    pub upstreams: Arc<Directory>,
    /// The Prometheus exporter's handle.
    pub metrics: PrometheusHandle,
    /// `admin.token`: the bearer token every POST must present, when set.
    pub token: Option<String>,
}

/// Serves admin requests on `bound` until shutdown; a unix socket's file goes with it.
pub async fn serve(bound: Bound, state: Arc<State>, shutdown: Shutdown) {
    let listener = match bound.into_tokio() {
        Ok(listener) => listener,
        Err(e) => {
            warn!(error = %e, "cannot register the admin socket; no admin endpoint");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let state = Arc::clone(&state);
        match accepted {
            Ok(socket::Stream::Tcp(stream)) => {
                tokio::spawn(connection(stream, state, Transport::Tcp));
            }
            Ok(socket::Stream::Unix(stream)) => {
                tokio::spawn(connection(stream, state, Transport::Unix));
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// How a request reached the endpoint: a browser page can only have a TCP origin of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Unix,
}

async fn connection<S>(stream: S, state: Arc<State>, transport: Transport)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(&state, req, transport).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(?transport, error = %e, "admin connection ended with an error");
    }
}

async fn route(
    state: &State,
    req: Request<Incoming>,
    transport: Transport,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/upstreams/") {
        if let Some(target) = actions::Target::parse(rest) {
            return actions::handle(state, &req, target, transport).await;
        }
    }
    let known = matches!(path, "/" | "/healthz" | "/metrics" | "/status");
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} only answers GET"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&state.metrics),
        ),
        "/status" => json_response(StatusCode::OK, &status(state)),
        _ => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(&status(state)),
        ),
    }
}

/// The `/status` document (shape fixed by CONTRACT.md).
pub fn status(state: &State) -> Value {
    let upstreams: Vec<Value> = state
        .upstreams
        .load()
        .iter()
        .map(|(name, upstream)| {
            let snap = upstream.load();
            let servers: Vec<Value> = snap.servers.iter().map(|s| server_status(s)).collect();
            json!({"name": name, "strategy": snap.strategy.as_str(), "servers": servers})
        })
        .collect();
    json!({"version": env!("CARGO_PKG_VERSION"), "upstreams": upstreams})
}

/// One server's entry in `/status` (and the answer to an admin action): CONTRACT.md's fields, plus
/// `health` (what the checks say: `up`, `down`, or `null` without checks), `ejected` and
/// `ejections` (since start), so every fact that makes a server eligible shows.
fn server_status(s: &Server) -> Value {
    let life = s.state.life();
    let last_check = life.health.as_ref().and_then(|h| h.last()).map(|c| {
        json!({
            "ok": c.ok,
            "detail": c.detail,
            "at": humantime::format_rfc3339_seconds(c.at).to_string(),
        })
    });
    let health = life
        .health
        .as_ref()
        .map(|h| if h.is_up() { "up" } else { "down" });
    let effective = f64::from(s.effective_weight_tenths()) / f64::from(slow_start::STEPS);
    json!({
        "address": s.config.address,
        "weight": s.config.weight,
        "effective_weight": if effective.fract() == 0.0 { json!(effective as u64) } else { json!(effective) },
        "backup": s.config.backup,
        "state": s.standing.as_str(),
        "health": health,
        "ejected": life.ejection.is_ejected(),
        "ejections": life.ejection.total(),
        "consecutive_failures": s.state.consecutive_failures(),
        "in_flight": s.state.in_flight(),
        "requests": s.state.requests(),
        "failures": s.state.failures(),
        "last_check": last_check,
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    text(status, "application/json", format!("{value}\n"))
}

/// A `{"error": ...}` answer.
fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}
