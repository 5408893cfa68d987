//! A server's peak-sensitive moving average of response time (Finagle's and Linkerd's "peak
//! EWMA"), kept in one atomic word so that recording and reading take no lock.
//!
//! A sample above the current average replaces it at once (a server that turns slow is noticed on
//! its first slow answer); one below moves the average toward it with time constant τ
//! (`ewma_decay`): after Δt the old average keeps the weight e^(−Δt/τ). Between samples the
//! average decays toward zero with the same constant, so a server that was slow and then got no
//! traffic is tried again instead of being shunned forever.
//!
//! The word packs the average (an `f32`, in microseconds) above the time of the last sample (a
//! `u32` of milliseconds on the upstream's clock, [`Decay::millis`]; it wraps after 49.7 days, which
//! only matters for a server that got no sample for that long). Recording is one compare-and-swap
//! loop; reading is one load. All servers of an upstream share one clock, so a pick converts its
//! time to milliseconds once, whatever the number of servers it costs, and skips the exponential
//! when no millisecond has passed since a server's last sample.
//!
//! Workers stamp and read concurrently, so a stamp may be a little ahead of the time a reader or
//! recorder took (a request takes its `now` when it starts; another worker's sample lands after
//! that). A stamp up to [`SKEW_MS`] ahead counts as "now": read as a wrapped difference it would
//! be 49.7 days old, decaying the average to nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// No sample yet (the bits of an `f32` NaN, which a real average never is).
const EMPTY: u64 = u64::MAX;

/// How far (ms) a stamp may be ahead of a reading's time and count as that time (see the module
/// docs): far more than a request takes from its start to its pick or a worker from its clock read
/// to its compare-and-swap, far less than the clock's 49.7-day wrap.
const SKEW_MS: u32 = 60_000;

/// Milliseconds from `stamp` to `now` on the wrapping clock; 0 when `stamp` is (slightly) after.
fn elapsed(now: u32, stamp: u32) -> u32 {
    if stamp.wrapping_sub(now) < SKEW_MS {
        0
    } else {
        now.wrapping_sub(stamp)
    }
}

/// How an upstream's averages age: the time constant (kept as its inverse in milliseconds) and the
/// zero of the millisecond clock their samples are stamped with (one per upstream, kept across
/// snapshots).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    per_ms: f64,
    epoch: Instant,
}

impl Decay {
    /// The decay with time constant `tau` (validated > 0 by the config) on a clock starting at
    /// `epoch`.
    pub fn new(tau: Duration, epoch: Instant) -> Self {
        Decay {
            per_ms: 1.0 / (tau.as_secs_f64() * 1000.0).max(1.0),
            epoch,
        }
    }

    /// `now` on the clock: milliseconds since the epoch, wrapping after 49.7 days by design (see
    /// the module docs). No 128-bit division, unlike `Duration::as_millis`.
    pub fn millis(&self, now: Instant) -> u32 {
        let since = now.saturating_duration_since(self.epoch);
        (since.as_secs() as u32)
            .wrapping_mul(1000)
            .wrapping_add(since.subsec_millis())
    }

    /// The weight an average `elapsed_ms` old keeps: e^(−Δt/τ).
    pub fn keep(&self, elapsed_ms: u32) -> f64 {
        if elapsed_ms == 0 {
            return 1.0;
        }
        (-f64::from(elapsed_ms) * self.per_ms).exp()
    }

    /// e^(Δt/τ) for `ms` = Δt, which may be negative: how much more one average keeps than another
    /// `ms` older, so that comparing two decayed averages takes one exponential, not two.
    pub fn gain(&self, ms: i64) -> f64 {
        if ms == 0 {
            return 1.0;
        }
        (ms as f64 * self.per_ms).exp()
    }
}

/// The average and when it was last fed (see the module docs).
pub struct Latency {
    word: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An average with no sample yet.
    pub fn new() -> Self {
        Latency {
            word: AtomicU64::new(EMPTY),
        }
    }

    /// The average in microseconds at `now_ms` ([`Decay::millis`]), decayed since its last sample;
    /// `None` before the first sample.
    pub fn average_at(&self, now_ms: u32, decay: &Decay) -> Option<f64> {
        let word = self.word.load(Ordering::Relaxed);
        let (average, stamp) = unpack(word)?;
        Some(average * decay.keep(elapsed(now_ms, stamp)))
    }

    /// The average in microseconds as last fed, and how many milliseconds before `now_ms` that was
    /// (decay it with [`Decay::keep`]); `None` before the first sample.
    pub fn fed(&self, now_ms: u32) -> Option<(f64, u32)> {
        let (average, stamp) = unpack(self.word.load(Ordering::Relaxed))?;
        Some((average, elapsed(now_ms, stamp)))
    }

    /// Feeds one response time observed at `now_ms` ([`Decay::millis`]).
    pub fn observe(&self, sample: Duration, now_ms: u32, decay: &Decay) {
        let sample = sample.as_secs_f64() * 1e6;
        let stamp = now_ms;
        // Err only when the closure declines, which it never does.
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (average, stamp) = match unpack(word) {
                    None => (sample, stamp),
                    Some((average, last)) => {
                        let since = elapsed(stamp, last);
                        let keep = decay.keep(since);
                        let decayed = average * keep;
                        let average = if sample > decayed {
                            sample
                        } else {
                            decayed + sample * (1.0 - keep)
                        };
                        // A sample stamped before the last one does not take the clock back.
                        (average, if since == 0 { last } else { stamp })
                    }
                };
                Some(pack(average, stamp))
            });
    }
}

fn pack(average_us: f64, stamp: u32) -> u64 {
    (u64::from((average_us as f32).to_bits()) << 32) | u64::from(stamp)
}

fn unpack(word: u64) -> Option<(f64, u32)> {
    if word == EMPTY {
        return None;
    }
    let average = f32::from_bits((word >> 32) as u32);
    Some((f64::from(average), word as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn there_is_no_average_before_the_first_sample() {
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        assert_eq!(
            latency.average_at(decay.millis(Instant::now()), &decay),
            None
        );
        latency.observe(ms(3), decay.millis(Instant::now()), &decay);
        assert_eq!(
            latency.average_at(decay.millis(Instant::now()), &decay),
            Some(3000.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_sample_replaces_the_average_at_once() {
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        latency.observe(ms(1), decay.millis(Instant::now()), &decay);
        tokio::time::advance(ms(5)).await;
        latency.observe(ms(50), decay.millis(Instant::now()), &decay);
        assert_eq!(
            latency.average_at(decay.millis(Instant::now()), &decay),
            Some(50_000.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_sample_moves_the_average_by_the_elapsed_share_of_tau() {
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        latency.observe(ms(50), decay.millis(Instant::now()), &decay);
        tokio::time::advance(TAU).await;
        latency.observe(ms(10), decay.millis(Instant::now()), &decay);
        // 50 ms keeps e^-1 of its weight after one τ; the new 10 ms sample has the rest.
        let expected = 50_000.0 * (-1f64).exp() + 10_000.0 * (1.0 - (-1f64).exp());
        let got = latency
            .average_at(decay.millis(Instant::now()), &decay)
            .unwrap();
        assert!((got - expected).abs() < 1.0, "{got} vs {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_samples_the_average_decays_toward_zero() {
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        latency.observe(ms(50), decay.millis(Instant::now()), &decay);
        tokio::time::advance(TAU * 2).await;
        let got = latency
            .average_at(decay.millis(Instant::now()), &decay)
            .unwrap();
        let expected = 50_000.0 * (-2f64).exp();
        assert!((got - expected).abs() < 1.0, "{got} vs {expected}");
        tokio::time::advance(TAU * 100).await;
        assert!(
            latency
                .average_at(decay.millis(Instant::now()), &decay)
                .unwrap()
                < 1e-30
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_stamped_after_the_reading_time_counts_as_just_now() {
        // A request takes its `now` when it starts; another worker may record a sample on the
        // server a moment later, in a later millisecond, before this request reads the average.
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        let request_start = Instant::now();
        tokio::time::advance(ms(2)).await;
        latency.observe(ms(50), decay.millis(Instant::now()), &decay);
        assert_eq!(
            latency.average_at(decay.millis(request_start), &decay),
            Some(50_000.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_that_lands_after_a_later_one_keeps_its_peak() {
        // Two workers record at once: the one that read the clock first wins the word second.
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        let first_clock = Instant::now();
        tokio::time::advance(ms(2)).await;
        latency.observe(ms(50), decay.millis(Instant::now()), &decay);
        latency.observe(ms(1), decay.millis(first_clock), &decay);
        assert_eq!(
            latency.average_at(decay.millis(Instant::now()), &decay),
            Some(50_000.0)
        );
        // And the clock of the average did not go back: it decays from the later sample.
        tokio::time::advance(TAU).await;
        let got = latency
            .average_at(decay.millis(Instant::now()), &decay)
            .unwrap();
        let expected = 50_000.0 * (-1f64).exp();
        assert!((got - expected).abs() < 1.0, "{got} vs {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn fed_tells_the_average_and_its_age() {
        let decay = Decay::new(TAU, Instant::now());
        let latency = Latency::new();
        assert_eq!(latency.fed(0), None);
        latency.observe(ms(4), decay.millis(Instant::now()), &decay);
        tokio::time::advance(ms(1500)).await;
        assert_eq!(
            latency.fed(decay.millis(Instant::now())),
            Some((4000.0, 1500))
        );
    }

    #[test]
    fn gain_is_the_inverse_of_keep() {
        let decay = Decay::new(TAU, Instant::now());
        assert_eq!(decay.gain(0), 1.0);
        assert!((decay.gain(10_000) - 1f64.exp()).abs() < 1e-12);
        assert!((decay.gain(-3000) - decay.keep(3000)).abs() < 1e-12);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_counts_milliseconds_from_its_epoch() {
        let decay = Decay::new(TAU, Instant::now());
        tokio::time::advance(Duration::from_millis(61_234)).await;
        assert_eq!(decay.millis(Instant::now()), 61_234);
    }

    #[test]
    fn the_word_round_trips_the_average_and_the_stamp() {
        assert_eq!(unpack(pack(1234.5, 77)), Some((1234.5, 77)));
        assert_eq!(unpack(EMPTY), None);
    }
}
