//! The claimed slot of one attempt, and what the attempt came to.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Event, Server};

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

/// A claimed slot on a server (see [`Server::try_acquire`]); outcomes are recorded through it.
pub struct InFlight {
    server: Arc<Server>,
}

impl InFlight {
    pub(super) fn new(server: Arc<Server>) -> Self {
        InFlight { server }
    }

    /// The server this slot is on.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Records the time from `started` (handing the request to the server, or starting the
    /// connect in tcp mode) until now (its response head, or the connection): the histogram, and
    /// the response-time average when the upstream's strategy reads it. Reads the clock once, and
    /// returns the time (for the access log).
    pub fn record_response_time(&self, started: Instant) -> Duration {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        let state = &self.server.state;
        state.metrics.response_seconds.record(elapsed);
        if let Some(decay) = &self.server.recording.latency_decay {
            state.latency.observe(elapsed, decay.millis(now), decay);
        }
        elapsed
    }

    /// Records a successful attempt: the failure count starts again.
    pub fn succeeded(&self) {
        self.server.state.reset_consecutive_failures();
    }

    /// Records a failed attempt; the failure that reaches the ejection threshold tells the writer.
    pub fn failed(&self, failure: Failure) {
        let state = &self.server.state;
        let count = state.count_failure();
        let passive = &self.server.recording.passive;
        if passive.threshold != 0 && count == passive.threshold {
            // Fails only when the writer is gone (shutdown): nothing is left to eject then.
            let _ = passive.events.send(Event::Failing {
                state: Arc::clone(state),
                last: failure,
            });
        }
    }

    /// Gives the slot back unused (a retry the budget refused): it does not count as a request.
    pub fn unclaim(self) {
        self.server.state.uncount_request();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server
            .state
            .in_flight_counter()
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(total) = &self.server.recording.upstream_in_flight {
            total.fetch_sub(1, Ordering::Relaxed);
        }
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
}
