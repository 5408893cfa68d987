//! Reading the admin endpoint: `/status` entries and `/metrics` series, waiting for a server to
//! reach a state, and the admin actions.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use serde_json::Value;

use super::client::{empty, get_once, request, send_once, Reply};

/// `POST /upstreams/{upstream}/servers/{address}/{verb}` with `headers`, on a new connection;
/// `address` is the path segment as sent (percent-encode it where needed).
pub async fn action(
    admin: SocketAddr,
    upstream: &str,
    address: &str,
    verb: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let path = format!("/upstreams/{upstream}/servers/{address}/{verb}");
    let mut req = request(Method::POST, admin, &path, empty());
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    send_once(admin, req).await
}

/// The whole `/status` document.
pub async fn status(admin: SocketAddr) -> Value {
    let r = get_once(admin, "/status").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.json()
}

/// The `/status` entry of server `address` in upstream `upstream`.
pub async fn server_status(admin: SocketAddr, upstream: &str, address: SocketAddr) -> Value {
    let status = status(admin).await;
    let address = address.to_string();
    status["upstreams"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["name"] == upstream))
        .and_then(|u| u["servers"].as_array())
        .and_then(|all| all.iter().find(|s| s["address"] == address.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no server {address} in upstream {upstream}: {status:#}"))
}

/// The `/metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    let r = get_once(admin, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.text()
}

/// Whether `line` is a sample of metric `name` (not `name_something`, not a comment).
pub fn is_series(line: &str, name: &str) -> bool {
    line.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
}

/// The values of every series of `name` carrying all of `labels` (`key="value"`, exactly).
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| is_series(l, name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {l}"))
        })
        .collect()
}

/// The sum of [`series`] (0 when there is none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name, labels).iter().sum()
}

/// Polls until the server's `/status` state is `state`; returns how long that took, or panics
/// after `timeout` with the last entry seen.
pub async fn wait_for_state(
    admin: SocketAddr,
    upstream: &str,
    address: SocketAddr,
    state: &str,
    timeout: std::time::Duration,
) -> std::time::Duration {
    let started = tokio::time::Instant::now();
    loop {
        let s = server_status(admin, upstream, address).await;
        if s["state"] == state {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("{address} not {state} within {timeout:?}: {s:#}");
        }
        tokio::time::sleep(super::POLL).await;
    }
}
