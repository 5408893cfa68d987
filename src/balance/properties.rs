//! Property tests of the strategies over random tiers: exact round-robin shares, least connections
//! preferring the least loaded and rotating ties, two choices and peak EWMA within 5 % of the
//! weight shares when all servers are equal, and no strategy ever yielding a server twice.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::testing::{ctx, tier, tier_with};
use super::{Balancer, LeastConnections, PeakEwma, RoundRobin, Strategy, TwoChoices};
use crate::server::{Decay, InFlight, Server};

const TAU: Duration = Duration::from_secs(10);

/// Peak EWMA's decay on a clock that starts now.
fn decay() -> Decay {
    Decay::new(TAU, Instant::now())
}

/// Feeds one response time to a server's average, now.
fn feed(server: &Server, sample: Duration) {
    let decay = decay();
    server
        .state
        .latency
        .observe(sample, decay.millis(Instant::now()), &decay);
}

fn weights() -> impl Strategy_<Value = Vec<u32>> {
    proptest::collection::vec(1u32..=10, 1..=8)
}

// `proptest::strategy::Strategy` under another name: `Strategy` is ours here.
use proptest::strategy::Strategy as Strategy_;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Counts of first candidates over `n` picks.
fn firsts<S: Strategy>(s: &S, tier: &[Arc<Server>], n: usize) -> Vec<usize> {
    let mut counts = vec![0; tier.len()];
    for _ in 0..n {
        counts[s.candidates(tier, &ctx()).next().unwrap()] += 1;
    }
    counts
}

/// Holds `loads[i]` slots on member i.
fn hold(tier: &[Arc<Server>], loads: &[u32]) -> Vec<InFlight> {
    tier.iter()
        .zip(loads)
        .flat_map(|(s, &n)| (0..n).map(|_| s.try_acquire().unwrap()))
        .collect()
}

/// Whether `counts` are within 5 % (relative) of the weight shares of `weights`.
fn near_weight_shares(counts: &[usize], weights: &[u32]) -> bool {
    let total: f64 = counts.iter().sum::<usize>() as f64;
    let weight: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    counts.iter().zip(weights).all(|(&c, &w)| {
        let expected = f64::from(w) / weight;
        (c as f64 / total - expected).abs() <= 0.05 * expected
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn round_robin_shares_are_exact_over_whole_cycles(weights in weights(), cycles in 1usize..4) {
        let tier = tier(&weights);
        let rr = RoundRobin::new(&tier);
        let g = weights.iter().copied().fold(0, gcd);
        let cycle: usize = weights.iter().map(|&w| (w / g) as usize).sum();
        let counts = firsts(&rr, &tier, cycle * cycles);
        let expected: Vec<usize> = weights.iter().map(|&w| (w / g) as usize * cycles).collect();
        prop_assert_eq!(counts, expected);
    }

    #[test]
    fn least_connections_picks_a_least_loaded_member(
        weights in weights(),
        loads in proptest::collection::vec(0u32..4, 8),
    ) {
        let tier = tier(&weights);
        let lc = LeastConnections::new(&tier);
        let _held = hold(&tier, &loads[..tier.len()]);
        let ratio = |i: usize| f64::from(tier[i].in_flight()) / f64::from(weights[i]);
        let least = (0..tier.len()).map(ratio).fold(f64::INFINITY, f64::min);
        for _ in 0..20 {
            let first = lc.candidates(&tier, &ctx()).next().unwrap();
            prop_assert_eq!(ratio(first), least);
        }
    }

    #[test]
    fn least_connections_rotates_ties_by_weight(weights in weights()) {
        let tier = tier(&weights);
        let lc = LeastConnections::new(&tier);
        let g = weights.iter().copied().fold(0, gcd);
        let cycle: usize = weights.iter().map(|&w| (w / g) as usize).sum();
        let counts = firsts(&lc, &tier, cycle * 2);
        let expected: Vec<usize> = weights.iter().map(|&w| (w / g) as usize * 2).collect();
        prop_assert_eq!(counts, expected);
    }

    #[test]
    fn two_choices_follow_the_weights_when_all_are_equal(
        weights in proptest::collection::vec(1u32..=4, 2..=6),
    ) {
        let tier = tier(&weights);
        let p2c = TwoChoices::new(&tier);
        let counts = firsts(&p2c, &tier, 100_000);
        prop_assert!(near_weight_shares(&counts, &weights), "{:?} for {:?}", counts, weights);
    }

    #[test]
    fn no_strategy_yields_a_server_twice(
        weights in proptest::collection::vec(1u32..=10, 0..=12),
        loads in proptest::collection::vec(0u32..3, 12),
    ) {
        let tier = tier_with(&weights, None, Some(decay()));
        let _held = hold(&tier, &loads[..tier.len()]);
        for (i, server) in tier.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            let sample = Duration::from_micros(100 + 50 * i as u64);
            feed(server, sample);
        }
        let balancers = [
            Balancer::RoundRobin(RoundRobin::new(&tier)),
            Balancer::LeastConnections(LeastConnections::new(&tier)),
            Balancer::TwoChoices(TwoChoices::new(&tier)),
            Balancer::PeakEwma(PeakEwma::new(&tier, decay())),
        ];
        for balancer in &balancers {
            for _ in 0..10 {
                let mut seen: Vec<usize> = balancer.candidates(&tier, &ctx()).collect();
                seen.sort_unstable();
                prop_assert_eq!(seen, (0..tier.len()).collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn peak_ewma_shares_equally_between_equal_servers() {
    for n in [2, 3, 5] {
        let tier = tier_with(&vec![1; n], None, Some(decay()));
        for server in &tier {
            let sample = Duration::from_micros(250);
            feed(server, sample);
        }
        let ewma = PeakEwma::new(&tier, decay());
        let counts = firsts(&ewma, &tier, 100_000);
        assert!(near_weight_shares(&counts, &vec![1; n]), "{counts:?}");
    }
}
