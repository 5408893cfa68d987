//! Shutdown and drain: a stop signal passed down to every accept loop and connection, in a tree (the
//! daemon's shutdown stops every listener; a reload stops only a removed listener), and a tracker of
//! the connection tasks still running, so the daemon exits as soon as the last one finishes (or when
//! `shutdown_timeout` passes).
//!
//! Both are tokio-util's: [`CancellationToken`] for the tree, `TaskTracker` for the drain.

use tokio_util::sync::CancellationToken;

/// Fires a stop; held by whoever decides it (the control thread).
pub struct ShutdownTrigger(CancellationToken);

/// Waits for a stop; cloned into every task that must react to it.
#[derive(Clone)]
pub struct Shutdown(CancellationToken);

/// A connected trigger and signal: the root of the tree.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let token = CancellationToken::new();
    (ShutdownTrigger(token.clone()), Shutdown(token))
}

impl ShutdownTrigger {
    /// Tells every holder of a [`Shutdown`] of this trigger, and of its children, to stop.
    pub fn fire(&self) {
        self.0.cancel();
    }
}

impl Shutdown {
    /// Whether the stop has been fired (a connection then closes after the request in flight).
    pub fn is_fired(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the stop has been fired (at once if it already was).
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// A trigger and signal that stop a part: firing it stops only its own holders, while firing
    /// this one (or any ancestor) stops them too.
    pub fn child(&self) -> (ShutdownTrigger, Shutdown) {
        let token = self.0.child_token();
        (ShutdownTrigger(token.clone()), Shutdown(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_wakes_every_clone() {
        let (trigger, shutdown) = shutdown_channel();
        let a = shutdown.clone();
        let b = shutdown;
        trigger.fire();
        a.wait().await;
        b.wait().await;
        assert!(a.is_fired() && b.is_fired());
    }

    #[tokio::test]
    async fn a_child_stops_alone_and_with_its_parent() {
        let (root, shutdown) = shutdown_channel();
        let (first, first_signal) = shutdown.child();
        let (_second, second_signal) = shutdown.child();
        first.fire();
        first_signal.wait().await;
        assert!(!second_signal.is_fired(), "a sibling must keep running");
        assert!(!shutdown.is_fired(), "the parent must keep running");
        root.fire();
        second_signal.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn wait_holds_until_the_stop_is_fired() {
        let (trigger, shutdown) = shutdown_channel();
        let (_child, child_signal) = shutdown.child();
        let early = tokio::time::timeout(std::time::Duration::from_secs(60), shutdown.wait());
        assert!(early.await.is_err(), "wait returned before the stop");
        let early = tokio::time::timeout(std::time::Duration::from_secs(60), child_signal.wait());
        assert!(
            early.await.is_err(),
            "a child's wait returned before any stop"
        );
        trigger.fire();
        child_signal.wait().await;
    }

    #[test]
    fn dropping_a_trigger_does_not_fire_it() {
        let (root, shutdown) = shutdown_channel();
        let (child, signal) = shutdown.child();
        drop(child);
        assert!(!signal.is_fired());
        drop(root);
        assert!(!shutdown.is_fired());
    }
}
