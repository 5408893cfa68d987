//! The admin endpoint: `GET /healthz`, `/metrics` (Prometheus text), `/status` (JSON) and `/` (a
//! small HTML status page). It runs on the control thread, away from the workers, and reads the same
//! snapshots the request path reads.

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
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::health::slow_start;
use crate::lifecycle::Shutdown;
use crate::server::Server;
use crate::table::Directory;

/// What the admin endpoint reports on.
pub struct State {
    /// Every upstream, by name, as the running configuration has them.
    pub upstreams: Arc<Directory>,
    /// The Prometheus exporter's handle.
    pub metrics: PrometheusHandle,
}

/// Serves admin requests until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: Shutdown) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn route(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/" | "/healthz" | "/metrics" | "/status");
    if !known {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint at {path}")}),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("{path} only answers GET")}),
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
            page(&status(state)),
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

/// One server's entry in `/status`: CONTRACT.md's fields, plus `health` (what the checks say:
/// `up`, `down`, or `null` without checks) and `ejected` / `ejections`, so both facts that make a
/// server eligible show.
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
        "consecutive_failures": s.state.consecutive_failures(),
        "in_flight": s.state.in_flight(),
        "requests": s.state.requests(),
        "failures": s.state.failures(),
        "last_check": last_check,
    })
}

fn page(status: &Value) -> String {
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>fulcrum</title>\
         <style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style>",
    );
    html.push_str(&format!(
        "<h1>fulcrum {}</h1>",
        escape(&status["version"].to_string())
    ));
    for upstream in status["upstreams"].as_array().into_iter().flatten() {
        html.push_str(&format!(
            "<h2>{} <small>({})</small></h2><table><tr><th>server<th>weight<th>effective<th>backup<th>state<th>in flight<th>requests<th>failures<th>last check</tr>",
            escape(upstream["name"].as_str().unwrap_or("")),
            escape(upstream["strategy"].as_str().unwrap_or("")),
        ));
        for s in upstream["servers"].as_array().into_iter().flatten() {
            let check = &s["last_check"];
            let last_check = if check.is_null() {
                String::from("-")
            } else {
                format!(
                    "{} {} at {}",
                    if check["ok"] == true { "ok" } else { "failed" },
                    escape(check["detail"].as_str().unwrap_or("")),
                    escape(check["at"].as_str().unwrap_or("")),
                )
            };
            html.push_str(&format!(
                "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}</tr>",
                escape(s["address"].as_str().unwrap_or("")),
                s["weight"],
                s["effective_weight"],
                s["backup"],
                escape(s["state"].as_str().unwrap_or("")),
                s["in_flight"],
                s["requests"],
                s["failures"],
                last_check,
            ));
        }
        html.push_str("</table>");
    }
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
