//! A server's live state: the counters every request touches, its response-time average, its
//! metric handles, and the writer's record of its health, ejection and ramp.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;

use super::Latency;
use crate::health::ejection::Ejection;
use crate::health::rise_fall::Health;
use crate::metrics::ServerMetrics;

/// What the writer keeps about a server between snapshots: health, ejection, the slow-start ramp
/// and what an operator set through the admin API. Only the writer changes it; `/status` reads it.
/// Never touched on the request path.
#[derive(Debug, Default)]
pub struct Life {
    /// The operator's word on the server (admin API); kept across reloads with the server.
    pub admin: Admin,
    /// The active checks' view; `None` when the upstream has no health check.
    pub health: Option<Health>,
    /// Passive ejection.
    pub ejection: Ejection,
    /// When the server last re-entered service, while its slow-start ramp runs.
    pub ramp_since: Option<Instant>,
}

/// What an operator set on a server through the admin API (HAProxy's drain and maint).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// Health and ejection decide.
    #[default]
    Enabled,
    /// Takes no new requests or connections; those in flight finish.
    Draining,
    /// Takes nothing new either, and says the operator took it out of service.
    Disabled,
}

impl Admin {
    /// The verb of `POST .../{drain|disable|enable}` that asks for this state.
    pub fn action(self) -> &'static str {
        match self {
            Admin::Enabled => "enable",
            Admin::Draining => "drain",
            Admin::Disabled => "disable",
        }
    }

    /// The state the verb `action` asks for, if it is one.
    pub fn from_action(action: &str) -> Option<Admin> {
        [Admin::Enabled, Admin::Draining, Admin::Disabled]
            .into_iter()
            .find(|admin| admin.action() == action)
    }
}

/// Live state of one server, shared by every snapshot that contains it.
pub struct ServerState {
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// The peak-sensitive response-time average (peak EWMA reads it).
    pub latency: Latency,
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
            latency: Latency::new(),
            metrics: ServerMetrics::new(upstream, address),
            life: Mutex::new(Life::default()),
        }
    }

    /// Requests (http) or connections (tcp) being served now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(super) fn in_flight_counter(&self) -> &AtomicU32 {
        &self.in_flight
    }

    pub(super) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn uncount_request(&self) {
        self.requests.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one failed attempt and returns the consecutive failures so far.
    pub(super) fn count_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
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

    /// Starts the failure count afresh (the writer does when an ejection begins or ends, and a
    /// success does when the count is not already zero).
    pub fn reset_consecutive_failures(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// The writer's record of this server. Off the request path only.
    pub fn life(&self) -> MutexGuard<'_, Life> {
        // A panic while holding it cannot leave a half-written Life: every update is one assignment.
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }
}
