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

use arc_swap::ArcSwap;

pub use error::ProxyError;

use crate::access_log::AccessLog;
use crate::config::{HttpLimits, ListenerConfig, RespondConfig, Target};
use crate::metrics::{listener_id, CodeCounters, ListenerId, ListenerMetrics};
use crate::table::Upstream;

/// Where a listener sends what it accepts.
pub enum Route {
    /// Proxy to an upstream pool.
    Upstream(Arc<Upstream>),
    /// Answer every request with a fixed response.
    Respond {
        /// The configured response.
        response: RespondConfig,
        /// `fulcrum_requests_total{listener, upstream="", server=""}` (boxed: 152 bytes).
        counters: Box<CodeCounters>,
    },
}

/// Everything a connection task of one listener needs, shared by all its connections.
pub struct ListenerCtx {
    /// The listener's table name (the `listener` label).
    pub name: Arc<str>,
    /// The name's process-wide id, by which its request counters are found in a snapshot.
    pub id: ListenerId,
    /// Its route.
    pub route: Route,
    /// Its connection series.
    pub metrics: ListenerMetrics,
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
    pub fn new(config: &ListenerConfig, upstreams: &[(String, Arc<Upstream>)]) -> Self {
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
                counters: Box::new(CodeCounters::new(&name, "", "")),
            },
        };
        ListenerCtx {
            metrics: ListenerMetrics::new(&name),
            id: listener_id(&name),
            name,
            route,
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

/// A listener as its connections see it across reloads: the context of the running configuration,
/// replaced whole by a reload. A connection reads it once per request, so an idle keep-alive
/// connection's next request follows the new configuration (route, limits, timeouts) without the
/// connection being closed.
pub struct Listener {
    current: ArcSwap<ListenerCtx>,
}

impl Listener {
    /// A listener starting with `ctx`.
    pub fn new(ctx: ListenerCtx) -> Self {
        Listener {
            current: ArcSwap::from_pointee(ctx),
        }
    }

    /// The context now (one atomic load and reference count), for one request or session.
    pub fn ctx(&self) -> Arc<ListenerCtx> {
        self.current.load_full()
    }

    /// How long a connection may idle before its next request, under the context now (read
    /// without taking a reference, for a connection about to wait).
    pub fn idle_timeout(&self) -> Duration {
        self.current.load().idle_timeout
    }

    /// Publishes a reload's context; requests that already started keep the one they read.
    pub fn replace(&self, ctx: ListenerCtx) {
        self.current.store(Arc::new(ctx));
    }
}
