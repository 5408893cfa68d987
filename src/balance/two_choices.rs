//! Power of two choices (Mitzenmacher): draw two distinct members by weight, send to the one with
//! fewer in flight per unit of weight, the first draw on a tie. Nearly as good as least
//! connections at spreading load, in constant time, and without every worker piling onto the same
//! least-loaded member between two updates of the counts.

use std::sync::Arc;

use super::draw::WeightedDraw;
use super::{lighter, PickContext, Preferred, Strategy};
use crate::server::Server;

/// Two weighted draws, the lighter wins.
pub struct TwoChoices {
    draw: WeightedDraw,
}

impl TwoChoices {
    /// Built over the tier's effective weights.
    pub fn new(tier: &[Arc<Server>]) -> Self {
        TwoChoices {
            draw: WeightedDraw::new(tier),
        }
    }
}

impl Strategy for TwoChoices {
    type Candidates<'a> = Preferred;

    /// The winner, then the other draw, then the rest in rotation.
    fn candidates(&self, tier: &[Arc<Server>], _ctx: &PickContext<'_>) -> Preferred {
        if tier.is_empty() {
            return Preferred::empty();
        }
        let (a, b) = self.draw.draw_two();
        let Some(b) = b else {
            return Preferred::new(tier.len(), a, None);
        };
        let (sa, sb) = (&tier[a], &tier[b]);
        if lighter(
            sb.in_flight(),
            sb.effective_weight_tenths(),
            sa.in_flight(),
            sa.effective_weight_tenths(),
        ) {
            Preferred::new(tier.len(), b, Some(a))
        } else {
            Preferred::new(tier.len(), a, Some(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{ctx, tier};
    use crate::server::InFlight;

    #[test]
    fn the_more_loaded_of_two_never_wins() {
        let tier = tier(&[1, 1]);
        let p2c = TwoChoices::new(&tier);
        let _held: Vec<InFlight> = (0..3).map(|_| tier[0].try_acquire().unwrap()).collect();
        for _ in 0..200 {
            let order: Vec<usize> = p2c.candidates(&tier, &ctx()).collect();
            assert_eq!(order, vec![1, 0]);
        }
    }

    #[test]
    fn a_tie_keeps_the_first_draw_so_idle_traffic_follows_the_weights() {
        let tier = tier(&[1, 3]);
        let p2c = TwoChoices::new(&tier);
        let mut counts = [0usize; 2];
        for _ in 0..40_000 {
            counts[p2c.candidates(&tier, &ctx()).next().unwrap()] += 1;
        }
        let share = counts[1] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn candidates_cover_the_tier_once() {
        let tier = tier(&[1, 2, 3, 4, 5]);
        let p2c = TwoChoices::new(&tier);
        for _ in 0..50 {
            let mut seen: Vec<usize> = p2c.candidates(&tier, &ctx()).collect();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        }
    }
}
