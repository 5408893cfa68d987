//! Shutdown and drain: one signal passed down to every accept loop and connection, and a count of
//! the work still in flight, so the daemon exits as soon as the last connection finishes (or when
//! `shutdown_timeout` passes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// Fires shutdown; held by the control thread.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Waits for shutdown; cloned into every task that must react to it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every holder of a [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown has been fired (a connection then closes after the request in flight).
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has been fired (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which only happens when the process is ending.
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Counts live connections and tunnels across all workers.
#[derive(Clone, Default)]
pub struct Tracker(Arc<TrackerInner>);

#[derive(Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    /// Registers one unit of in-flight work until the guard drops.
    pub fn guard(&self) -> TrackerGuard {
        self.0.live.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(Arc::clone(&self.0))
    }

    /// How many units are live now.
    pub fn live(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// Resolves when no unit is live.
    pub async fn drained(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One unit of in-flight work (see [`Tracker::guard`]).
pub struct TrackerGuard(Arc<TrackerInner>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drained_waits_for_the_last_guard() {
        let tracker = Tracker::default();
        let a = tracker.guard();
        let b = tracker.guard();
        assert_eq!(tracker.live(), 2);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.drained().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_wakes_every_clone() {
        let (trigger, shutdown) = shutdown_channel();
        let mut a = shutdown.clone();
        let mut b = shutdown;
        trigger.fire();
        a.wait().await;
        b.wait().await;
    }
}
