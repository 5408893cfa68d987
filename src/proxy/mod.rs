//! The request path: what a listener does with an accepted connection.
//!
//! `http` serves HTTP/1.1 and h2c with hyper and forwards each request to a pooled upstream
//! connection; `tcp` pairs each client connection with one upstream connection. Both pick servers
//! from the upstream's current snapshot and record outcomes through the server's [`InFlight`] guard.
//!
//! [`InFlight`]: crate::server::InFlight

pub mod buffer;
mod error;
pub mod h1;
pub mod http;
pub mod ids;
pub mod io;
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

pub use error::ProxyError;

use crate::access_log::AccessLog;
use crate::config::{HttpLimits, ListenerConfig, RespondConfig, Target};
use crate::lifecycle::Tracker;
use crate::metrics::{CodeCounters, ListenerMetrics};
use crate::table::Upstream;

/// Where a listener sends what it accepts.
pub enum Route {
    /// Proxy to an upstream pool.
    Upstream(Arc<Upstream>),
    /// Answer every request with a fixed response.
    Respond {
        /// The configured response.
        response: RespondConfig,
        /// `fulcrum_requests_total{listener, upstream="", server=""}`.
        counters: CodeCounters,
    },
}

/// Everything a connection task of one listener needs, shared by all its connections.
pub struct ListenerCtx {
    /// The listener's table name (the `listener` label).
    pub name: Arc<str>,
    /// Its route.
    pub route: Route,
    /// Its connection series.
    pub metrics: ListenerMetrics,
    /// The daemon's count of in-flight work (connections and tunnels), for the shutdown drain.
    pub tracker: Tracker,
    /// http: the longest idle between requests and silence during a body; tcp: the longest a
    /// session may pass no byte either way.
    pub idle_timeout: Duration,
    /// What one HTTP request may be and how long its head may take (`mode = "http"`); the HTTP/2
    /// server sizes its header-list limit from it.
    pub http: HttpLimits,
    /// Where each request's line goes (`None`: the listener does not log).
    pub access_log: Option<AccessLog>,
    /// Start a W3C trace for requests without one (`tracing = true`).
    pub tracing: bool,
}

impl ListenerCtx {
    /// Builds the context of `config`, resolving its upstream by name in `upstreams`.
    pub fn new(
        config: &ListenerConfig,
        upstreams: &[(String, Arc<Upstream>)],
        tracker: Tracker,
    ) -> Self {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let route = match &config.target {
            Target::Upstream(wanted) => {
                let upstream = upstreams
                    .iter()
                    .find(|(n, _)| n == wanted)
                    .map(|(_, u)| Arc::clone(u))
                    .expect("config validation guarantees every listener's upstream exists");
                Route::Upstream(upstream)
            }
            Target::Respond(response) => Route::Respond {
                response: response.clone(),
                counters: CodeCounters::new(&name, "", ""),
            },
        };
        ListenerCtx {
            metrics: ListenerMetrics::new(&name),
            name,
            route,
            tracker,
            idle_timeout: config.idle_timeout,
            http: config.http,
            access_log: None,
            tracing: config.tracing,
        }
    }

    /// The same context, writing its requests' lines to `log`.
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access_log = log;
        self
    }
}
