//! Least connections: the member with the fewest requests (http) or connections (tcp) in flight
//! per unit of weight. Ties go in smooth weighted round-robin order, so sequential traffic (every
//! member idle) follows the weights exactly, as round robin would.
//!
//! A pick reads every member's in-flight count (one atomic load each, no write but the round-robin
//! cursor): O(n), as in nginx; HAProxy keeps a tree ordered by load instead, which costs a write
//! per request and release. Comparisons cross-multiply (in_flight_a × weight_b) so nothing divides.

use std::sync::Arc;

use super::{lighter, PickContext, Preferred, RoundRobin, Strategy};
use crate::server::Server;

/// Least in flight per weight, ties by round robin.
pub struct LeastConnections {
    order: RoundRobin,
}

impl LeastConnections {
    /// Built over the tier's effective weights.
    pub fn new(tier: &[Arc<Server>]) -> Self {
        LeastConnections {
            order: RoundRobin::new(tier),
        }
    }
}

impl Strategy for LeastConnections {
    type Candidates<'a> = Preferred;

    /// The least-loaded member, scanning from the round-robin pick so that it wins ties; then the
    /// others in rotation.
    fn candidates(&self, tier: &[Arc<Server>], _ctx: &PickContext<'_>) -> Preferred {
        let Some(start) = self.order.next_member() else {
            return Preferred::empty();
        };
        let load = |pos: usize| (tier[pos].in_flight(), tier[pos].effective_weight_tenths());
        let (mut best, (mut best_load, mut best_weight)) = (start, load(start));
        for pos in (start + 1..tier.len()).chain(0..start) {
            if best_load == 0 {
                break;
            }
            let (l, w) = load(pos);
            if lighter(l, w, best_load, best_weight) {
                (best, best_load, best_weight) = (pos, l, w);
            }
        }
        Preferred::new(tier.len(), best, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{ctx, tier};
    use crate::server::InFlight;

    fn first(lc: &LeastConnections, tier: &[Arc<Server>]) -> usize {
        lc.candidates(tier, &ctx()).next().unwrap()
    }

    #[test]
    fn idle_members_follow_the_weights_in_round_robin_order() {
        let tier = tier(&[1, 2, 1]);
        let lc = LeastConnections::new(&tier);
        let picks: Vec<usize> = (0..8).map(|_| first(&lc, &tier)).collect();
        assert_eq!(picks, vec![1, 0, 2, 1, 1, 0, 2, 1]);
    }

    #[test]
    fn the_least_loaded_member_wins() {
        let tier = tier(&[1, 1, 1]);
        let lc = LeastConnections::new(&tier);
        let _held: Vec<InFlight> = [0, 0, 1]
            .iter()
            .map(|&i| tier[i].try_acquire().unwrap())
            .collect();
        for _ in 0..6 {
            assert_eq!(first(&lc, &tier), 2);
        }
    }

    #[test]
    fn load_is_measured_per_unit_of_weight() {
        let tier = tier(&[1, 3]);
        let lc = LeastConnections::new(&tier);
        // 1 in flight on weight 1 is heavier than 2 on weight 3.
        let _a = tier[0].try_acquire().unwrap();
        let _b: Vec<InFlight> = (0..2).map(|_| tier[1].try_acquire().unwrap()).collect();
        for _ in 0..4 {
            assert_eq!(first(&lc, &tier), 1);
        }
        // A third on weight 3 ties 1 on weight 1: the round robin order decides.
        let _c = tier[1].try_acquire().unwrap();
        let picks: Vec<usize> = (0..4).map(|_| first(&lc, &tier)).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn candidates_cover_the_tier_once() {
        let tier = tier(&[1, 1, 1, 1]);
        let lc = LeastConnections::new(&tier);
        let _held = tier[0].try_acquire().unwrap();
        let mut seen: Vec<usize> = lc.candidates(&tier, &ctx()).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }
}
