//! Passive ejection: a server that fails `consecutive_failures` requests in a row is taken out of
//! rotation for a while, without waiting for an active check (Envoy's outlier detection,
//! `consecutive_5xx` flavour; nginx's `max_fails`/`fail_timeout` with a backoff).
//!
//! The failure count itself is an atomic on the server's live state, raised by workers; this module
//! is what the upstream's writer does once the count crosses the threshold. The nth ejection lasts
//! min(n × base_time, max_time); n decays by one for every base_time the server then stays in
//! service, so a server that failed once long ago starts again from a short ejection. At most
//! max(1, ⌊primaries × max_percent / 100⌋) primaries are ejected at once, so a fault on Fulcrum's
//! side (or one that hits every server) cannot empty the upstream.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::EjectionConfig;

/// The ejection state of one server.
#[derive(Debug, Clone, Default)]
pub struct Ejection {
    /// Ejections so far, before decay.
    count: u32,
    /// When the current ejection ends; `None` while in service.
    until: Option<Instant>,
    /// When the server last returned to service (decay runs from here).
    back_since: Option<Instant>,
    /// Ejections since start, never decayed: what `/status` and the status page show.
    total: u64,
}

impl Ejection {
    /// Whether the server is ejected now (until its timer ends it).
    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// Ejections since start (the decayed count only sets the next one's length).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When the current ejection ends.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Ejections that still count towards the next one's length at `now` (after decay, which
    /// runs only while in service: `back_since` is cleared by an ejection).
    pub fn count(&self, now: Instant, config: &EjectionConfig) -> u32 {
        match self.back_since {
            Some(since) => {
                let periods = now.saturating_duration_since(since).as_nanos()
                    / config.base_time.as_nanos().max(1);
                self.count
                    .saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
            }
            _ => self.count,
        }
    }

    /// Ejects the server at `now`; returns how long for.
    pub fn eject(&mut self, now: Instant, config: &EjectionConfig) -> Duration {
        self.count = self.count(now, config).saturating_add(1);
        self.total += 1;
        let length = config
            .base_time
            .saturating_mul(self.count)
            .min(config.max_time);
        self.until = Some(now + length);
        self.back_since = None;
        length
    }

    /// Ends the ejection if its time has come; returns whether it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if until <= now => {
                self.until = None;
                self.back_since = Some(now);
                true
            }
            _ => false,
        }
    }
}

/// How many of `primaries` servers (primaries that are not `down = true`) may be ejected at once.
pub fn cap(primaries: usize, max_percent: u32) -> usize {
    (primaries * max_percent as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EjectionConfig {
        EjectionConfig {
            consecutive_failures: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(100),
            max_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejection_lasts_longer_up_to_max_time() {
        let c = config();
        let mut e = Ejection::default();
        let mut lengths = Vec::new();
        for _ in 0..5 {
            let now = Instant::now();
            let length = e.eject(now, &c);
            assert!(e.is_ejected());
            assert_eq!(e.until(), Some(now + length));
            tokio::time::advance(length).await;
            assert!(e.expire(Instant::now()));
            assert!(!e.is_ejected());
            lengths.push(length.as_secs());
        }
        assert_eq!(lengths, [30, 60, 90, 100, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_ends_at_its_time_and_not_before() {
        let c = config();
        let mut e = Ejection::default();
        e.eject(Instant::now(), &c);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!e.expire(Instant::now()));
        assert!(e.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(e.expire(Instant::now()));
        assert!(!e.expire(Instant::now()), "expires once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_decays_by_one_per_base_time_in_service() {
        let c = config();
        let mut e = Ejection::default();
        for _ in 0..3 {
            let length = e.eject(Instant::now(), &c);
            tokio::time::advance(length).await;
            e.expire(Instant::now());
        }
        assert_eq!(e.count(Instant::now(), &c), 3);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            e.count(Instant::now(), &c),
            2,
            "one full base_time in service"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(e.count(Instant::now(), &c), 1);
        // The next ejection is the second, not the fourth.
        assert_eq!(e.eject(Instant::now(), &c), Duration::from_secs(60));
        assert_eq!(e.count(Instant::now(), &c), 2, "no decay while ejected");
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert_eq!(
            e.count(Instant::now(), &c),
            2,
            "still ejected: the timer has not run"
        );
        e.expire(Instant::now());
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert_eq!(e.count(Instant::now(), &c), 0);
        assert_eq!(e.eject(Instant::now(), &c), Duration::from_secs(30));
    }

    #[test]
    fn the_cap_is_a_share_of_primaries_but_at_least_one() {
        assert_eq!(cap(10, 50), 5);
        assert_eq!(cap(3, 50), 1);
        assert_eq!(cap(4, 50), 2);
        assert_eq!(cap(5, 50), 2);
        assert_eq!(cap(1, 50), 1);
        assert_eq!(cap(10, 0), 1);
        assert_eq!(cap(10, 100), 10);
        assert_eq!(cap(7, 30), 2);
    }
}
