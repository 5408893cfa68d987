//! systemd's notify protocol (`Type=notify`): READY once every listener is bound, RELOADING then
//! READY around a reload, STOPPING at shutdown, and WATCHDOG pings at half of `WatchdogSec`, sent
//! only while every worker thread shows it still runs. Outside systemd (no `$NOTIFY_SOCKET`) every
//! message is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{error, info, warn};

/// Sends one notification; a failure to reach systemd is logged, never fatal.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1`, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253's reload protocol; `READY=1` ends it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            warn!(error = %e, "cannot read CLOCK_MONOTONIC");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// How often to ping: half of `$WATCHDOG_USEC` when systemd set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2)
}

/// Decides, ping by ping, whether every worker has run since the last one.
pub struct Watchdog {
    beats: Arc<[AtomicU64]>,
    last: Vec<u64>,
    stalled: Vec<usize>,
}

impl Watchdog {
    /// A watchdog over the workers' heartbeat counters.
    pub fn new(beats: Arc<[AtomicU64]>) -> Self {
        let last = beats.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        Watchdog {
            beats,
            last,
            stalled: Vec::new(),
        }
    }

    /// The workers whose heartbeat did not move since the previous call (empty: all alive).
    pub fn check(&mut self) -> &[usize] {
        self.stalled.clear();
        for (index, beat) in self.beats.iter().enumerate() {
            let now = beat.load(Ordering::Relaxed);
            if now == self.last[index] {
                self.stalled.push(index);
            }
            self.last[index] = now;
        }
        &self.stalled
    }

    /// Pings systemd every `every` while all workers beat; withholds the ping (so systemd kills
    /// and restarts the process once `WatchdogSec` passes) while any does not. Runs forever.
    pub async fn run(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut was_stalled = false;
        loop {
            tick.tick().await;
            let stalled = self.check();
            if stalled.is_empty() {
                if was_stalled {
                    info!("every worker runs again; watchdog pings resume");
                    was_stalled = false;
                }
                send(&[NotifyState::Watchdog]);
            } else if !was_stalled {
                error!(workers = ?stalled, "a worker thread has stopped running; withholding the watchdog ping so systemd restarts fulcrum");
                was_stalled = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_beating_is_named() {
        let beats: Arc<[AtomicU64]> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let mut dog = Watchdog::new(Arc::clone(&beats));
        for beat in beats.iter() {
            beat.fetch_add(1, Ordering::Relaxed);
        }
        assert!(dog.check().is_empty());
        beats[0].fetch_add(1, Ordering::Relaxed);
        beats[2].fetch_add(5, Ordering::Relaxed);
        assert_eq!(dog.check(), [1]);
        assert_eq!(
            dog.check(),
            [0, 1, 2],
            "no beat at all since the last check"
        );
        beats[1].fetch_add(1, Ordering::Relaxed);
        assert_eq!(dog.check(), [0, 2]);
    }
}
