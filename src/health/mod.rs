//! Fault detection and recovery, as small state machines the upstream's writer task drives, plus the
//! active checker tasks that feed it.
//!
//! - [`rise_fall`]: a server's health from active checks (HAProxy's `rise`/`fall`, first failure
//!   marks it down at once).
//! - [`ejection`]: passive ejection from real traffic, with backoff, decay and a cap (Envoy's
//!   outlier detection, consecutive-failures flavour).
//! - [`slow_start`]: the weight ramp of a server that re-enters service (HAProxy's `slowstart`).
//! - [`budget`]: the retry budget shared by all workers (Envoy's / Finagle's retry budgets).
//! - [`check`]: the TCP and HTTP probes and the task that runs them on a jittered interval.
//!
//! The machines take `tokio::time::Instant`, never `std::time::Instant`, so their tests run with
//! paused time and the daemon's timers and the tests agree on one clock.

pub mod budget;
pub mod check;
pub mod ejection;
pub mod rise_fall;
pub mod slow_start;
