//! Reading the daemon's admin endpoint: one server's `/status` entry, a metric sample, and waiting
//! for a server to reach a state.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::client::get_once;
use super::POLL;

/// The `/status` entry of the server `address` in `upstream`.
pub async fn server_status(
    admin: SocketAddr,
    upstream: &str,
    address: SocketAddr,
) -> serde_json::Value {
    let r = get_once(admin, "/status").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let status = r.json();
    let address = address.to_string();
    status["upstreams"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["name"] == upstream))
        .and_then(|u| u["servers"].as_array())
        .and_then(|all| all.iter().find(|s| s["address"] == address.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no server {address} in upstream {upstream}: {status:#}"))
}

/// Polls until the server's `/status` state is `state`; returns how long that took, or panics
/// after `timeout` with the last entry seen.
pub async fn wait_for_state(
    admin: SocketAddr,
    upstream: &str,
    address: SocketAddr,
    state: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let s = server_status(admin, upstream, address).await;
        if s["state"] == state {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("{address} not {state} within {timeout:?}: {s:#}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The `/metrics` text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    get_once(admin, "/metrics").await.text()
}

/// The value of the sample of `name` (exactly, not `name_suffix`) whose labels include every one
/// of `labels` (written as `key="value"`); 0 when there is none.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}
