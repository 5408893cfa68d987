//! Peak EWMA (Finagle, Linkerd): latency-aware two choices. Each server keeps a peak-sensitive
//! moving average of its response time (`server::Latency`); a pick draws two distinct members by
//! weight and sends to the lower cost = average × (in_flight + 1) / weight, the first draw on a
//! tie. A server that turns slow loses traffic on its first slow answer; its average decays with
//! time constant `ewma_decay`, also while it gets nothing, so it is tried again later.
//!
//! A member with no sample yet is costed at the median average of the others, so a new server is
//! neither starved (cost 0 would flood it) nor shunned. The median is taken only in that case,
//! over at most [`MEDIAN_SAMPLE`] members spread over the tier, so a pick stays O(1).

use std::sync::Arc;

use super::draw::WeightedDraw;
use super::{PickContext, Preferred, Strategy};
use crate::server::{Decay, Server};

/// At most this many other members are read to cost a member that has no sample yet.
pub const MEDIAN_SAMPLE: usize = 15;

/// The average used when no member has a sample: then cost compares load alone.
const NO_SAMPLES_US: f64 = 1.0;

/// Averages below this (1 ns) count as this, so that an average of zero (a sample that took no
/// measurable time) still compares by load instead of costing zero whatever the load.
const FLOOR_US: f64 = 1e-3;

/// Two weighted draws, the lower latency × load wins.
pub struct PeakEwma {
    draw: WeightedDraw,
    decay: Decay,
}

/// A member's cost, load × e^(−age/τ) / weight, kept apart so that two costs compare by
/// cross-multiplying and with one exponential of the difference of their ages.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// The average as last fed (at least [`FLOOR_US`]) × (in_flight + 1).
    load: f64,
    /// How long ago the average was fed, in milliseconds.
    age_ms: u32,
    /// The effective weight.
    weight: f64,
}

impl Cost {
    fn below(self, other: Cost, decay: &Decay) -> bool {
        let newer_by = i64::from(other.age_ms) - i64::from(self.age_ms);
        self.load * other.weight * decay.gain(newer_by) < other.load * self.weight
    }
}

impl PeakEwma {
    /// Built over the tier's effective weights, reading averages aged by `decay`.
    pub fn new(tier: &[Arc<Server>], decay: Decay) -> Self {
        PeakEwma {
            draw: WeightedDraw::new(tier),
            decay,
        }
    }

    /// average × (in_flight + 1) / weight at `now_ms`, the median standing in as described above.
    fn cost(&self, tier: &[Arc<Server>], pos: usize, now_ms: u32) -> Cost {
        let server = &tier[pos];
        let (average, age_ms) = server
            .state
            .latency
            .fed(now_ms)
            .unwrap_or_else(|| (self.median_of_others(tier, pos, now_ms), 0));
        Cost {
            load: average.max(FLOOR_US) * f64::from(server.in_flight() + 1),
            age_ms,
            weight: f64::from(server.effective_weight_tenths()),
        }
    }

    fn median_of_others(&self, tier: &[Arc<Server>], pos: usize, now_ms: u32) -> f64 {
        let mut seen = [0f64; MEDIAN_SAMPLE];
        let mut count = 0;
        let step = tier.len().div_ceil(MEDIAN_SAMPLE).max(1);
        for other in (0..tier.len()).step_by(step).filter(|&i| i != pos) {
            if let Some(average) = tier[other].state.latency.average_at(now_ms, &self.decay) {
                seen[count] = average;
                count += 1;
            }
        }
        if count == 0 {
            return NO_SAMPLES_US;
        }
        let seen = &mut seen[..count];
        seen.sort_by(f64::total_cmp);
        if count % 2 == 1 {
            seen[count / 2]
        } else {
            (seen[count / 2 - 1] + seen[count / 2]) / 2.0
        }
    }
}

impl Strategy for PeakEwma {
    type Candidates<'a> = Preferred;

    /// The cheaper of two draws, then the other, then the rest in rotation.
    fn candidates(&self, tier: &[Arc<Server>], ctx: &PickContext<'_>) -> Preferred {
        if tier.is_empty() {
            return Preferred::empty();
        }
        let (a, b) = self.draw.draw_two();
        let Some(b) = b else {
            return Preferred::new(tier.len(), a, None);
        };
        let now_ms = self.decay.millis(ctx.now);
        if self
            .cost(tier, b, now_ms)
            .below(self.cost(tier, a, now_ms), &self.decay)
        {
            Preferred::new(tier.len(), b, Some(a))
        } else {
            Preferred::new(tier.len(), a, Some(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::balance::testing::{ctx, tier_with};
    use crate::server::InFlight;

    const TAU: Duration = Duration::from_secs(10);

    /// The clock starts when the test does (paused time: the same instant for the whole test
    /// until it advances).
    fn decay() -> Decay {
        Decay::new(TAU, Instant::now())
    }

    fn tier(weights: &[u32]) -> Vec<Arc<Server>> {
        tier_with(weights, None, Some(decay()))
    }

    /// The strategy over `tier`, on the tier's clock.
    fn strategy(tier: &[Arc<Server>]) -> PeakEwma {
        PeakEwma::new(tier, tier[0].recording.latency_decay.unwrap())
    }

    /// Feeds a response time as the proxy does: on the clock the server's recording carries.
    fn feed(server: &Server, ms: u64) {
        let decay = server.recording.latency_decay.unwrap();
        let now = decay.millis(Instant::now());
        server
            .state
            .latency
            .observe(Duration::from_millis(ms), now, &decay);
    }

    /// The cost as one number, for assertions.
    fn cost(ewma: &PeakEwma, tier: &[Arc<Server>], pos: usize) -> f64 {
        let cost = ewma.cost(tier, pos, ewma.decay.millis(Instant::now()));
        cost.load * ewma.decay.keep(cost.age_ms) / cost.weight
    }

    fn firsts(ewma: &PeakEwma, tier: &[Arc<Server>], n: usize) -> Vec<usize> {
        let mut counts = vec![0; tier.len()];
        for _ in 0..n {
            counts[ewma.candidates(tier, &ctx()).next().unwrap()] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn the_slow_server_loses_every_draw_it_is_in() {
        let tier = tier(&[1, 1, 1]);
        let ewma = strategy(&tier);
        feed(&tier[0], 1);
        feed(&tier[1], 1);
        feed(&tier[2], 50);
        let counts = firsts(&ewma, &tier, 3000);
        assert_eq!(counts[2], 0, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn load_multiplies_the_cost() {
        let tier = tier(&[1, 1]);
        let ewma = strategy(&tier);
        feed(&tier[0], 1);
        feed(&tier[1], 2);
        // 1 ms × (2 + 1) in flight costs more than 2 ms × (0 + 1).
        let _held: Vec<InFlight> = (0..2).map(|_| tier[0].try_acquire().unwrap()).collect();
        assert_eq!(firsts(&ewma, &tier, 100), vec![0, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shunned_server_is_tried_again_as_its_average_decays() {
        let tier = tier(&[1, 1]);
        let ewma = strategy(&tier);
        feed(&tier[0], 50);
        feed(&tier[1], 1);
        assert_eq!(firsts(&ewma, &tier, 100)[0], 0);
        // After 5 τ without samples, 50 ms has decayed below 1 ms fed just now.
        tokio::time::advance(TAU * 5).await;
        feed(&tier[1], 1);
        assert_eq!(firsts(&ewma, &tier, 100)[0], 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_samples_costs_the_median_of_the_others() {
        let tier = tier(&[1, 1, 1, 1]);
        let ewma = strategy(&tier);
        feed(&tier[0], 1);
        feed(&tier[1], 3);
        feed(&tier[2], 9);
        // 3 ms is 3000 µs, over a full weight of 10 tenths.
        assert_eq!(cost(&ewma, &tier, 3), 300.0);
        // With an even number of others, the median is the mean of the middle two.
        let even = self::tier(&[1, 1, 1]);
        let ewma_even = strategy(&even);
        feed(&even[0], 1);
        feed(&even[1], 3);
        assert_eq!(cost(&ewma_even, &even, 2), 200.0);
        // Nobody has samples: cost is load alone.
        let fresh = self::tier(&[1, 1]);
        let ewma = strategy(&fresh);
        assert_eq!(cost(&ewma, &fresh, 0), NO_SAMPLES_US / 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tie_keeps_the_first_draw() {
        // 1 ms on weight 1 and 3 ms on weight 3 cost the same: the first draw wins every tie, so
        // the shares are the draws' (by weight), not the second draw's (the reverse).
        let tier = tier(&[1, 3]);
        let ewma = strategy(&tier);
        feed(&tier[0], 1);
        feed(&tier[1], 3);
        assert_eq!(cost(&ewma, &tier, 0), cost(&ewma, &tier, 1));
        let counts = firsts(&ewma, &tier, 40_000);
        let share = counts[1] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn equal_servers_share_equally() {
        let tier = tier(&[1, 1, 1, 1]);
        let ewma = strategy(&tier);
        for server in &tier {
            feed(server, 1);
        }
        for count in firsts(&ewma, &tier, 40_000) {
            assert!((count as f64 / 10_000.0 - 1.0).abs() < 0.05, "{count}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn between_equal_idle_servers_the_heavier_weight_always_wins() {
        // Cost divides by weight (CONTRACT), and the draws are already by weight.
        let tier = tier(&[1, 3]);
        let ewma = strategy(&tier);
        feed(&tier[0], 1);
        feed(&tier[1], 1);
        assert_eq!(firsts(&ewma, &tier, 1000), vec![0, 1000]);
    }
}
