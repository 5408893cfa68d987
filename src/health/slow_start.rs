//! Slow start: a server that re-enters service (health check up, ejection over) gets its weight back
//! in steps instead of all at once, so a cold cache or a JIT warming up is not flooded (HAProxy's
//! `slowstart`, nginx Plus's `slow_start`).
//!
//! The effective weight ramps linearly from 10 % to 100 % over `slow_start`, quantised to tenths:
//! step k (k = 1..=10) starts at (k − 1)/9 of the duration, so there are exactly ten steps and the
//! last one, 100 %, begins when `slow_start` has passed. Strategies see the weight in tenths
//! (`weight × k`), so a weight-1 server ramps as finely as a heavy one, and a server not ramping
//! weighs `weight × 10`; round robin divides by the gcd, so steady state costs nothing.

use std::time::Duration;

use tokio::time::Instant;

/// Steps of the ramp: the effective weight moves in tenths of the configured one.
pub const STEPS: u32 = 10;

/// The tenths of its weight a server that re-entered service at `since` has at `now`.
pub fn tenths(since: Instant, now: Instant, ramp: Duration) -> u32 {
    if ramp.is_zero() {
        return STEPS;
    }
    let elapsed = now.saturating_duration_since(since).as_nanos();
    let step = elapsed * u128::from(STEPS - 1) / ramp.as_nanos();
    // At most STEPS - 1, so the cast cannot truncate.
    1 + step.min(u128::from(STEPS - 1)) as u32
}

/// When the next step after `now` begins, or `None` once the ramp is complete.
pub fn next_step(since: Instant, now: Instant, ramp: Duration) -> Option<Instant> {
    let current = tenths(since, now, ramp);
    if current >= STEPS {
        return None;
    }
    let at = ramp.as_nanos() * u128::from(current) / u128::from(STEPS - 1);
    let at = u64::try_from(at).unwrap_or(u64::MAX);
    // Round up so that the step has begun when the timer fires.
    Some(since + Duration::from_nanos(at) + Duration::from_nanos(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_ramp_climbs_in_ten_steps_over_the_duration() {
        let ramp = Duration::from_secs(9);
        let since = Instant::now();
        let mut seen = Vec::new();
        let mut now = since;
        while let Some(next) = next_step(since, now, ramp) {
            seen.push(tenths(since, now, ramp));
            assert!(next > now);
            tokio::time::advance(next - now).await;
            now = Instant::now();
        }
        seen.push(tenths(since, now, ramp));
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert!(
            now - since >= ramp && now - since < ramp + Duration::from_millis(1),
            "full weight when slow_start has passed: {:?}",
            now - since
        );
    }

    #[tokio::test(start_paused = true)]
    async fn steps_are_linear_in_time() {
        let ramp = Duration::from_secs(90);
        let since = Instant::now();
        assert_eq!(tenths(since, since, ramp), 1);
        assert_eq!(tenths(since, since + Duration::from_secs(9), ramp), 1);
        assert_eq!(tenths(since, since + Duration::from_secs(10), ramp), 2);
        assert_eq!(tenths(since, since + Duration::from_secs(45), ramp), 5);
        assert_eq!(tenths(since, since + Duration::from_secs(89), ramp), 9);
        assert_eq!(tenths(since, since + Duration::from_secs(90), ramp), 10);
        assert_eq!(tenths(since, since + Duration::from_secs(900), ramp), 10);
        assert_eq!(
            next_step(since, since + Duration::from_secs(90), ramp),
            None
        );
    }

    #[test]
    fn no_ramp_is_full_weight() {
        let now = Instant::now();
        assert_eq!(tenths(now, now, Duration::ZERO), STEPS);
        assert_eq!(next_step(now, now, Duration::ZERO), None);
    }
}
