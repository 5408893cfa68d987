//! The retry budget: retries may add at most a share of an upstream's load, so that when every server
//! is failing, retries do not multiply the traffic that is drowning them (Finagle's and Envoy's retry
//! budgets; CONTRACT.md "Health, ejection, retries").
//!
//! Rule: a retry is allowed while retries in the last 10 s < max(30, ratio × first attempts in the
//! last 10 s). Counts live in ten one-second buckets of atomics, shared by every worker without a
//! lock: each bucket packs the second it belongs to and its count into one `AtomicU64`, so a bucket
//! from an older second reads as empty and is reset by the first writer of the new second. Two
//! workers racing on the last allowed retry may both take it: the bound holds to within the number
//! of workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets in the window: the window is `BUCKETS` seconds long.
const BUCKETS: usize = 10;
/// Retries always allowed per window, whatever the traffic ("at least 3 per second").
pub const MIN_RETRIES: u64 = 30;
/// The window the budget counts over.
pub const WINDOW: Duration = Duration::from_secs(BUCKETS as u64);

/// One upstream's budget; shared by all workers and kept across snapshots.
pub struct RetryBudget {
    ratio: f64,
    origin: Instant,
    firsts: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// A budget letting retries reach `ratio` of first attempts.
    pub fn new(ratio: f64, origin: Instant) -> Self {
        RetryBudget {
            ratio,
            origin,
            firsts: Default::default(),
            retries: Default::default(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Counts one first attempt (a request or connection) at `now`.
    pub fn record_first(&self, now: Instant) {
        bump(&self.firsts, self.second(now));
    }

    /// Takes one retry from the budget at `now`, or refuses it.
    pub fn try_retry(&self, now: Instant) -> bool {
        let second = self.second(now);
        let retries = sum(&self.retries, second);
        let firsts = sum(&self.firsts, second);
        let allowed = ((firsts as f64 * self.ratio) as u64).max(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        bump(&self.retries, second);
        true
    }
}

/// Packs a bucket: the second in the high 32 bits (136 years of uptime), the count in the low 32.
fn pack(second: u64, count: u64) -> u64 {
    (second << 32) + count.min(u64::from(u32::MAX))
}

fn bump(buckets: &[AtomicU64; BUCKETS], second: u64) {
    let bucket = &buckets[(second % BUCKETS as u64) as usize];
    let mut current = bucket.load(Ordering::Relaxed);
    loop {
        let next = if current >> 32 == second {
            pack(second, (current & 0xffff_ffff) + 1)
        } else {
            pack(second, 1)
        };
        match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

/// The counts of the buckets that belong to the window ending at `second` (no bucket is ever
/// newer than the current second).
fn sum(buckets: &[AtomicU64; BUCKETS], second: u64) -> u64 {
    let oldest = second.saturating_sub(BUCKETS as u64 - 1);
    buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .filter(|&v| v >> 32 >= oldest)
        .map(|v| v & 0xffff_ffff)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(budget: &RetryBudget, now: Instant) -> u64 {
        let mut n = 0;
        while budget.try_retry(now) {
            n += 1;
            assert!(n < 1_000_000, "the budget never refuses");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn at_least_thirty_retries_per_window_without_traffic() {
        let budget = RetryBudget::new(0.2, Instant::now());
        assert_eq!(take_all(&budget, Instant::now()), 30);
        assert!(!budget.try_retry(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_first_attempts() {
        let budget = RetryBudget::new(0.2, Instant::now());
        for _ in 0..1000 {
            budget.record_first(Instant::now());
        }
        assert_eq!(take_all(&budget, Instant::now()), 200);
        budget.record_first(Instant::now());
        assert!(!budget.try_retry(Instant::now()), "200.2 allows 200");
        for _ in 0..4 {
            budget.record_first(Instant::now());
        }
        assert!(budget.try_retry(Instant::now()), "201 allows one more");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_by_the_second() {
        let budget = RetryBudget::new(0.0, Instant::now());
        for _ in 0..10 {
            assert!(budget.try_retry(Instant::now()));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(take_all(&budget, Instant::now()), 20);
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(
            !budget.try_retry(Instant::now()),
            "9.999 s later the first 10 still count"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            take_all(&budget, Instant::now()),
            10,
            "10 s later they no longer do"
        );
        tokio::time::advance(WINDOW).await;
        assert_eq!(
            take_all(&budget, Instant::now()),
            30,
            "a quiet window starts afresh"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_first_attempts_leave_the_window() {
        let budget = RetryBudget::new(0.5, Instant::now());
        for _ in 0..200 {
            budget.record_first(Instant::now());
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(take_all(&budget, Instant::now()), 30);
    }

    #[test]
    fn concurrent_workers_overshoot_by_at_most_their_number() {
        let budget = std::sync::Arc::new(RetryBudget::new(0.0, Instant::now()));
        let taken: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = &budget;
                    s.spawn(move || (0..100).filter(|_| b.try_retry(Instant::now())).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!((30..=34).contains(&taken), "{taken}");
    }
}
