//! Weighted random draws in constant time (Vose's alias method), from the calling worker's own
//! generator (`fastrand`'s thread-local wyrand: no lock, no syscall).
//!
//! Built once per snapshot: each of the n slots holds a threshold and an alias. A draw takes 32
//! random bits r: the high half of r × n picks a slot uniformly, and its low half (uniform within
//! the slot, in steps of n × 2⁻³²) compared with the slot's threshold picks the slot's own member or
//! its alias. Member i comes out with probability weight_i / Σ weight, to within n × 2⁻³². One
//! 64-bit number from the generator makes both draws of a pair, so a pair costs one call.

use std::sync::Arc;

use crate::server::Server;

/// The alias table of one tier's weights.
pub struct WeightedDraw {
    /// Per slot: draw the slot's own member when the low 32 random bits are below the threshold,
    /// else its alias. A full slot has itself as alias.
    slots: Box<[(u32, u32)]>,
}

impl WeightedDraw {
    /// The table for the tier's effective weights.
    pub fn new(tier: &[Arc<Server>]) -> Self {
        let weights: Vec<u32> = tier.iter().map(|s| s.effective_weight_tenths()).collect();
        Self::with_weights(&weights)
    }

    /// The table for `weights` (each ≥ 1).
    pub fn with_weights(weights: &[u32]) -> Self {
        let n = weights.len() as u64;
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        // Member i's mass is weight × n; every slot holds exactly `total` of mass.
        let mut mass: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
        let mut slots: Vec<(u32, u32)> = (0..weights.len() as u32).map(|i| (0, i)).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..weights.len()).partition(|&i| mass[i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            slots[s] = (((mass[s] << 32) / total) as u32, l as u32);
            mass[l] -= total - mass[s];
            if mass[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // What is left is full (up to rounding): it always draws itself.
        for i in small.into_iter().chain(large) {
            slots[i] = (u32::MAX, i as u32);
        }
        WeightedDraw {
            slots: slots.into_boxed_slice(),
        }
    }

    /// One weighted draw: a position in the tier. The tier must not be empty.
    pub fn draw(&self) -> usize {
        self.draw_with(fastrand::u32(..))
    }

    /// The draw that the 32 random bits `random` make (see the module docs).
    fn draw_with(&self, random: u32) -> usize {
        let scaled = u64::from(random) * self.slots.len() as u64;
        let slot = (scaled >> 32) as usize;
        let (threshold, alias) = self.slots[slot];
        if (scaled as u32) < threshold {
            slot
        } else {
            alias as usize
        }
    }

    /// Two weighted draws of distinct members (the second is drawn again, a few times at most,
    /// while it equals the first; then the member after the first is taken). A one-member tier
    /// gives that member and `None`.
    pub fn draw_two(&self) -> (usize, Option<usize>) {
        let random = fastrand::u64(..);
        let first = self.draw_with((random >> 32) as u32);
        let len = self.slots.len();
        if len == 1 {
            return (first, None);
        }
        let second = self.draw_with(random as u32);
        if second != first {
            return (first, Some(second));
        }
        for _ in 0..3 {
            let second = self.draw();
            if second != first {
                return (first, Some(second));
            }
        }
        (first, Some((first + 1) % len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], draws: usize) -> Vec<f64> {
        let table = WeightedDraw::with_weights(weights);
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..draws {
            counts[table.draw()] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn the_table_holds_each_weight_exactly() {
        // Slot masses add back up to the weights: threshold share of a slot stays, the rest goes
        // to its alias.
        let weights = [1u32, 2, 3, 10];
        let table = WeightedDraw::with_weights(&weights);
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut mass = vec![0f64; weights.len()];
        for (i, &(threshold, alias)) in table.slots.iter().enumerate() {
            let own = if alias as usize == i {
                1.0
            } else {
                f64::from(threshold) / 4_294_967_296.0
            };
            mass[i] += own;
            mass[alias as usize] += 1.0 - own;
        }
        for (i, &w) in weights.iter().enumerate() {
            let expected = f64::from(w) / total * weights.len() as f64;
            assert!(
                (mass[i] - expected).abs() < 1e-6,
                "{i}: {} vs {expected}",
                mass[i]
            );
        }
    }

    #[test]
    fn draws_follow_the_weights() {
        let got = shares(&[1, 3], 40_000);
        assert!((got[0] - 0.25).abs() < 0.02, "{got:?}");
    }

    #[test]
    fn both_halves_of_a_pair_follow_the_weights() {
        let table = WeightedDraw::with_weights(&[1, 3]);
        let (mut firsts, mut seconds) = ([0usize; 2], [0usize; 2]);
        for i in 0..40_000u64 {
            // Draw the pair from fixed, spread bits rather than the generator.
            let random = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            firsts[table.draw_with((random >> 32) as u32)] += 1;
            seconds[table.draw_with(random as u32)] += 1;
        }
        for counts in [firsts, seconds] {
            let share = counts[1] as f64 / 40_000.0;
            assert!((share - 0.75).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn two_draws_are_distinct_members() {
        let table = WeightedDraw::with_weights(&[1000, 1]);
        for _ in 0..1000 {
            let (a, b) = table.draw_two();
            assert_ne!(Some(a), b);
            assert!(b.is_some());
        }
        assert_eq!(WeightedDraw::with_weights(&[5]).draw_two(), (0, None));
    }
}
