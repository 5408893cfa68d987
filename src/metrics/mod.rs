//! Metric names, pre-resolved handles, and the rate limit of data-path warnings.
//!
//! Every series is registered once per label set when a snapshot or listener is built, never looked up
//! by name on the request path. The status-code dimension of `fulcrum_requests_total` is open-ended,
//! so [`CodeCounters`] resolves each code's handle the first time it is seen and keeps it; a
//! listener's counters are found by its [`ListenerId`], not its name. The response-time histogram
//! is Fulcrum's own ([`ResponseHistogram`]), rendered after the exporter's series by [`render`].

mod codes;
mod histogram;
mod limiter;
mod listeners;

use std::sync::Arc;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::PrometheusHandle;

pub use codes::CodeCounters;
pub use histogram::ResponseHistogram;
pub use limiter::LogLimit;
pub use listeners::{listener_id, ByListener, ListenerId};

/// `fulcrum_requests_total`.
pub const REQUESTS_TOTAL: &str = "fulcrum_requests_total";
/// `fulcrum_upstream_response_seconds` (a histogram of [`RESPONSE_BUCKETS`], see [`ResponseHistogram`]).
pub const UPSTREAM_RESPONSE_SECONDS: &str = "fulcrum_upstream_response_seconds";
/// `fulcrum_connections_active`.
pub const CONNECTIONS_ACTIVE: &str = "fulcrum_connections_active";
/// `fulcrum_connections_total`.
pub const CONNECTIONS_TOTAL: &str = "fulcrum_connections_total";
/// `fulcrum_retries_total`.
pub const RETRIES_TOTAL: &str = "fulcrum_retries_total";
/// `fulcrum_server_up`.
pub const SERVER_UP: &str = "fulcrum_server_up";
/// `fulcrum_server_ejections_total`.
pub const SERVER_EJECTIONS_TOTAL: &str = "fulcrum_server_ejections_total";
/// `fulcrum_health_checks_total`.
pub const HEALTH_CHECKS_TOTAL: &str = "fulcrum_health_checks_total";
/// `fulcrum_hash_key_missing_total`: requests a consistent hash found without its key.
pub const HASH_KEY_MISSING_TOTAL: &str = "fulcrum_hash_key_missing_total";

/// Histogram buckets for upstream response time, in seconds (1 ms to 30 s).
pub const RESPONSE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Per-server series labelled `{upstream, server}` (checks also by `result`).
pub struct ServerMetrics {
    /// Time from sending the request to the response head (tcp: the connect time).
    pub response_seconds: Arc<ResponseHistogram>,
    /// 1 when the server may take traffic, 0 otherwise.
    pub up: Gauge,
    /// Passive ejections.
    pub ejections: Counter,
    /// Active checks that passed.
    pub checks_ok: Counter,
    /// Active checks that failed.
    pub checks_fail: Counter,
}

impl ServerMetrics {
    /// Registers the series of one server of one upstream.
    pub fn new(upstream: &str, server: &str) -> Self {
        let labels = [
            ("upstream", upstream.to_string()),
            ("server", server.to_string()),
        ];
        let check = |result: &'static str| counter!(HEALTH_CHECKS_TOTAL, "upstream" => upstream.to_string(), "server" => server.to_string(), "result" => result);
        ServerMetrics {
            response_seconds: ResponseHistogram::new(upstream, server),
            up: gauge!(SERVER_UP, &labels),
            ejections: counter!(SERVER_EJECTIONS_TOTAL, &labels),
            checks_ok: check("ok"),
            checks_fail: check("fail"),
        }
    }
}

/// Per-listener connection series.
pub struct ListenerMetrics {
    /// Client connections open now.
    pub active: Gauge,
    /// Client connections accepted since start.
    pub total: Counter,
}

impl ListenerMetrics {
    /// Registers the series of one listener.
    pub fn new(listener: &str) -> Self {
        let labels = [("listener", listener.to_string())];
        ListenerMetrics {
            active: gauge!(CONNECTIONS_ACTIVE, &labels),
            total: counter!(CONNECTIONS_TOTAL, &labels),
        }
    }
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A global recorder was already installed.
    #[error("metrics recorder already installed")]
    AlreadyInstalled,
}

/// Installs the Prometheus recorder as the process-wide one and returns the handle `/metrics`
/// renders from. Must run before any handle is registered (earlier handles would be no-ops).
pub fn install_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, InstallError> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| InstallError::AlreadyInstalled)?;
    Ok(handle)
}

/// The `/metrics` text: the exporter's series, then the response-time histograms.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    histogram::render_all(&mut out);
    out
}
