//! At most one log line per second per call site, for warnings the data path may hit per request
//! or per connection (a failed connect, a broken response). A dead server at 50k requests per
//! second would otherwise write 50k lines a second to stderr, and the workers would wait on it.
//!
//! Lock-free and shared by every worker: one atomic holds when the site last logged, one counts the
//! lines suppressed since; the line that is logged carries that count, the way the accept loop's
//! warning carries `failed_accepts`. Suppressed lines after the last logged one are reported by the
//! next one, whenever it comes. Time is `tokio::time::Instant`, so paused-time tests drive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tokio::time::Instant;

/// The least time between two lines of one site.
const PERIOD_MILLIS: u64 = 1000;

/// `last` before the first line.
const NEVER: u64 = u64::MAX;

/// The rate limit of one log site; a `static` beside the `warn!` it guards.
pub struct LogLimit {
    /// The site's first use: the zero of `last`.
    epoch: OnceLock<Instant>,
    /// Milliseconds from `epoch` to the last line logged, or [`NEVER`].
    last: AtomicU64,
    /// Lines suppressed since the last one logged.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A site that has logged nothing yet.
    #[allow(clippy::new_without_default)] // used in `static`s, where only a `const fn` will do
    pub const fn new() -> Self {
        LogLimit {
            epoch: OnceLock::new(),
            last: AtomicU64::new(NEVER),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether the site may log now: `Some(lines suppressed since its last line)` for the caller
    /// to log with the line, or `None` (counted as suppressed). Of concurrent callers in one
    /// period, exactly one gets `Some`.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let epoch = *self.epoch.get_or_init(|| now);
        let at =
            u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(NEVER - 1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == NEVER || at >= last.saturating_add(PERIOD_MILLIS);
        if due
            && self
                .last
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_second_carrying_the_suppressed_count() {
        let site = LogLimit::new();
        assert_eq!(site.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(site.allow(), None);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(site.allow(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(site.allow(), Some(6));
        assert_eq!(site.allow(), None);
        // A quiet site logs the next failure at once, with what it held back before.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(site.allow(), Some(1));
        assert_eq!(site.allow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_period_runs_from_the_last_line_logged() {
        let site = LogLimit::new();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(site.allow(), Some(0));
        tokio::time::advance(Duration::from_millis(1_200)).await;
        assert_eq!(site.allow(), Some(0));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(site.allow(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(site.allow(), Some(1));
    }

    #[test]
    fn concurrent_callers_log_once_per_period_and_lose_no_count() {
        let site = Arc::new(LogLimit::new());
        let per_thread = 10_000u64;
        let logged: Vec<(u64, u64)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let site = Arc::clone(&site);
                    s.spawn(move || {
                        let mut lines = 0;
                        let mut reported = 0;
                        for _ in 0..per_thread {
                            if let Some(n) = site.allow() {
                                lines += 1;
                                reported += n;
                            }
                        }
                        (lines, reported)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let lines: u64 = logged.iter().map(|l| l.0).sum();
        let reported: u64 = logged.iter().map(|l| l.1).sum();
        let held = site.suppressed.load(Ordering::Relaxed);
        // Lines, counts carried by lines and counts still held account for every call.
        assert_eq!(lines + reported + held, 4 * per_thread);
        assert!(lines >= 1);
        assert!(lines <= 2, "{lines} lines in well under two seconds");
    }
}
