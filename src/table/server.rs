//! One server: its live state (atomics that outlive snapshots, keyed by address), its place in one
//! snapshot, and the guard that claims a slot on it and records how the attempt went.
//!
//! The request path touches only atomics here: claiming a slot, counting requests, and recording an
//! outcome. A failure raises the consecutive-failure count; the one failure that crosses the
//! ejection threshold also sends an event to the upstream's writer (a non-blocking send), which
//! decides whether to eject. A success clears the count with a store only when it is not already
//! zero, so a healthy server's cache line is not written on every request.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::writer::Event;
use crate::config::ServerConfig;
use crate::health::ejection::Ejection;
use crate::health::rise_fall::Health;
use crate::metrics::{CodeCounters, ServerMetrics};

/// What one attempt on a server came to. A client that goes away is none of these: nothing is
/// recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connect was refused or failed.
    ConnectRefused,
    /// The connect did not finish within `connect_timeout`.
    ConnectTimeout,
    /// The connection was reset or closed before a complete response (or, in tcp mode, before the
    /// server's first byte).
    Reset,
    /// No response head within `response_timeout`.
    ResponseTimeout,
    /// The server answered with a 5xx status.
    ServerError(u16),
    /// The response could not be parsed, or its body broke off.
    BrokenResponse,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ConnectRefused => f.write_str("connect failed"),
            Failure::ConnectTimeout => f.write_str("connect timed out"),
            Failure::Reset => f.write_str("connection reset"),
            Failure::ResponseTimeout => f.write_str("response timed out"),
            Failure::ServerError(code) => write!(f, "status {code}"),
            Failure::BrokenResponse => f.write_str("broken response"),
        }
    }
}

/// What the writer keeps about a server between snapshots: health, ejection and the slow-start
/// ramp. Only the writer changes it; `/status` reads it. Never touched on the request path.
#[derive(Debug, Default)]
pub struct Life {
    /// The active checks' view; `None` when the upstream has no health check.
    pub health: Option<Health>,
    /// Passive ejection.
    pub ejection: Ejection,
    /// When the server last re-entered service, while its slow-start ramp runs.
    pub ramp_since: Option<Instant>,
}

/// Live state of one server, shared by every snapshot that contains it.
pub struct ServerState {
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// `{upstream, server}` series, registered once for the server's life.
    pub metrics: ServerMetrics,
    life: Mutex<Life>,
}

impl ServerState {
    /// The state of a server newly seen in `upstream`.
    pub fn new(upstream: &str, address: &str) -> Self {
        ServerState {
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            metrics: ServerMetrics::new(upstream, address),
            life: Mutex::new(Life::default()),
        }
    }

    /// Requests (http) or connections (tcp) being served now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests or connections sent to this server since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Failed attempts since start (connect errors, resets, timeouts, 5xx, broken responses).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failed attempts since the last success (or since the last ejection began or ended).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Starts the failure count afresh (the writer does, when an ejection begins or ends).
    pub fn reset_consecutive_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// The writer's record of this server. Off the request path only.
    pub fn life(&self) -> MutexGuard<'_, Life> {
        // A panic while holding it cannot leave a half-written Life: every update is one assignment.
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }
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
}

impl Standing {
    /// The `/status` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Up => "up",
            Standing::Down => "down",
            Standing::Ejected => "ejected",
            Standing::ConfigDown => "config_down",
        }
    }
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
    pub(super) requests_by_listener: Arc<[(Arc<str>, CodeCounters)]>,
    pub(super) passive: Passive,
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

    /// Claims a slot for one request or connection, unless the server is at `max_connections`.
    /// The slot is released when the returned guard drops, whatever path the request takes.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.config.max_connections;
        let in_flight = &self.state.in_flight;
        if max == 0 {
            in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
        }
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            server: Arc::clone(self),
        })
    }

    /// The request counters of `listener`.
    pub fn requests_for(&self, listener: &str) -> Option<&CodeCounters> {
        super::find_counters(&self.requests_by_listener, listener)
    }
}

/// A claimed slot on a server (see [`Server::try_acquire`]); outcomes are recorded through it.
pub struct InFlight {
    server: Arc<Server>,
}

impl InFlight {
    /// The server this slot is on.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Records the time from handing the request to the server until its response head.
    pub fn record_response_time(&self, elapsed: Duration) {
        self.server
            .state
            .metrics
            .response_seconds
            .record(elapsed.as_secs_f64());
    }

    /// Records a successful attempt: the failure count starts again.
    pub fn succeeded(&self) {
        let state = &self.server.state;
        if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
            state.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed attempt; the failure that reaches the ejection threshold tells the writer.
    pub fn failed(&self, failure: Failure) {
        let state = &self.server.state;
        state.failures.fetch_add(1, Ordering::Relaxed);
        let count = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let passive = &self.server.passive;
        if passive.threshold != 0 && count == passive.threshold {
            // Fails only when the writer is gone (shutdown): nothing is left to eject then.
            let _ = passive.events.send(Event::Failing {
                state: Arc::clone(state),
                last: failure,
            });
        }
    }
}

impl InFlight {
    /// Gives the slot back unused (a retry the budget refused): it does not count as a request.
    pub(super) fn unclaim(self) {
        self.server.state.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_log_reasons() {
        let said: Vec<String> = [
            Failure::ConnectRefused,
            Failure::ConnectTimeout,
            Failure::Reset,
            Failure::ResponseTimeout,
            Failure::ServerError(503),
            Failure::BrokenResponse,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            said,
            [
                "connect failed",
                "connect timed out",
                "connection reset",
                "response timed out",
                "status 503",
                "broken response"
            ]
        );
    }

    #[test]
    fn standings_have_their_status_names() {
        let names: Vec<&str> = [
            Standing::Up,
            Standing::Down,
            Standing::Ejected,
            Standing::ConfigDown,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(names, ["up", "down", "ejected", "config_down"]);
    }
}
