//! One server: its live state (atomics that outlive snapshots, keyed by address), its place in one
//! snapshot, and the guard that claims a slot on it and records how the attempt went.
//!
//! Both the table (which builds snapshots of servers) and the strategies (which read their load to
//! choose) use these types; neither owns them, so neither imports the other for them.
//!
//! The request path touches only atomics here: claiming a slot, counting requests, and recording an
//! outcome. A failure raises the consecutive-failure count; the one failure that crosses the
//! ejection threshold also sends an event to the upstream's writer (a non-blocking send), which
//! decides whether to eject. A success clears the count with a store only when it is not already
//! zero, so a healthy server's cache line is not written on every request.

mod latency;
mod outcome;
mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

pub use latency::{Decay, Latency};
pub use outcome::{Failure, InFlight};
pub use state::{Admin, Life, ServerState};

use crate::config::ServerConfig;
use crate::health::rise_fall::CheckReport;
use crate::metrics::{ByListener, CodeCounters, ListenerId};

/// What the upstream's writer is told.
pub enum Event {
    /// An active check of a server ended.
    Check {
        /// The server checked.
        state: Arc<ServerState>,
        /// What the check saw.
        report: CheckReport,
    },
    /// A worker saw a server reach `consecutive_failures` failures in a row.
    Failing {
        /// The failing server.
        state: Arc<ServerState>,
        /// The failure that reached the threshold.
        last: Failure,
    },
    /// A reload: the upstream's new configuration and the listeners that now route to it.
    Reconfigure {
        /// The upstream as the new file has it.
        config: Box<crate::config::UpstreamConfig>,
        /// The `listener` labels of its request counters.
        listeners: Vec<Arc<str>>,
        /// Told once the new snapshot is published, so that a reload starts new listeners only
        /// when their request counters exist.
        published: tokio::sync::oneshot::Sender<()>,
    },
    /// An operator drained, disabled or enabled a server through the admin API.
    Admin {
        /// The server's address as configured.
        address: String,
        /// What it is to be.
        admin: Admin,
        /// Gets the server as the snapshot published after the change has it, or `None` when the
        /// upstream has no server at `address` (any more).
        reply: oneshot::Sender<Option<Arc<Server>>>,
    },
}

/// Where a worker reports a server crossing the ejection threshold.
#[derive(Clone)]
pub struct Passive {
    /// `consecutive_failures`; 0 = passive ejection off.
    pub threshold: u32,
    /// The upstream writer's inbox.
    pub events: UnboundedSender<Event>,
}

/// How a server stands in one snapshot, as `/status` and the strategies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// May take traffic.
    Up,
    /// Its health check says down.
    Down,
    /// Passively ejected.
    Ejected,
    /// `down = true` in the config.
    ConfigDown,
    /// Drained through the admin API.
    Draining,
    /// Disabled through the admin API.
    Disabled,
}

impl Standing {
    /// The `/status` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Up => "up",
            Standing::Down => "down",
            Standing::Ejected => "ejected",
            Standing::ConfigDown => "config_down",
            Standing::Draining => "draining",
            Standing::Disabled => "disabled",
        }
    }
}

/// What an attempt records besides its own server's counters, fixed per snapshot.
#[derive(Clone)]
pub struct Recording {
    /// Where passive ejection is reported.
    pub passive: Passive,
    /// The upstream's total in flight, kept only when a strategy needs it (bounded loads).
    pub upstream_in_flight: Option<Arc<AtomicU32>>,
    /// The peak-EWMA time constant, when the upstream's strategy reads response times.
    pub latency_decay: Option<Decay>,
}

/// One server of one snapshot: its configuration, its live state and its standing.
pub struct Server {
    /// The server as configured.
    pub config: ServerConfig,
    /// Live counters, shared with the snapshots before and after this one.
    pub state: Arc<ServerState>,
    /// Whether it may take traffic in this snapshot, and if not, why.
    pub standing: Standing,
    /// Its weight in tenths of the configured one (10 = full; less while slow start ramps).
    pub tenths: u32,
    /// `fulcrum_requests_total` handles, one set per listener that routes to this upstream.
    pub requests_by_listener: Arc<ByListener>,
    /// What its attempts record beyond its own counters.
    pub recording: Recording,
}

impl Server {
    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.config.addr
    }

    /// The weight strategies use: the configured weight scaled by slow start, in tenths.
    pub fn effective_weight_tenths(&self) -> u32 {
        self.config.weight * self.tenths
    }

    /// Requests (http) or connections (tcp) being served now.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight()
    }

    /// Claims a slot for one request or connection, unless the server is at `max_connections`.
    /// The slot is released when the returned guard drops, whatever path the request takes.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        self.try_acquire_within(u32::MAX)
    }

    /// Like [`Server::try_acquire`], and only while the claim keeps the server's in-flight count
    /// at or below `cap` (a strategy's dynamic limit). The check and the increment are one
    /// compare-and-swap, so concurrent claims never overshoot either limit.
    pub fn try_acquire_within(self: &Arc<Self>, cap: u32) -> Option<InFlight> {
        let max = match self.config.max_connections {
            0 => cap,
            max => max.min(cap),
        };
        let in_flight = self.state.in_flight_counter();
        if max == u32::MAX {
            in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
        }
        if let Some(total) = &self.recording.upstream_in_flight {
            total.fetch_add(1, Ordering::Relaxed);
        }
        self.state.count_request();
        Some(InFlight::new(Arc::clone(self)))
    }

    /// The request counters of listener `id` (none if this snapshot was built without it).
    pub fn requests_for(&self, id: ListenerId) -> Option<&CodeCounters> {
        self.requests_by_listener.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standings_have_their_status_names() {
        let names: Vec<&str> = [
            Standing::Up,
            Standing::Down,
            Standing::Ejected,
            Standing::ConfigDown,
            Standing::Draining,
            Standing::Disabled,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "up",
                "down",
                "ejected",
                "config_down",
                "draining",
                "disabled"
            ]
        );
    }
}
