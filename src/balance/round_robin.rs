//! Smooth weighted round robin (nginx's algorithm, `ngx_http_upstream_get_peer`), made lock-free.
//!
//! nginx runs the "current weight" algorithm under a lock on every pick. Here the whole cycle, of
//! length Σweight / gcd, is computed once when the snapshot is built; a pick is one `fetch_add` on a
//! cursor shared by all workers. Sequential traffic therefore follows the weights exactly (1:2:3 over
//! 600 requests is 100/200/300) and spreads them evenly (`a b a c a b` rather than `a a a b b c`).
//! After the first pick, further candidates go round the tier from there, so a retry tries every
//! other member once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::{PickContext, Preferred, Strategy};
use crate::server::Server;

/// A value alone on its cache line(s): the cursor every worker writes must not share a line with
/// the read-mostly fields beside it (128 bytes: adjacent-line prefetch pairs 64-byte lines).
#[repr(align(128))]
struct CachePadded<T>(T);

/// The precomputed cycle and its cursor.
pub struct RoundRobin {
    cycle: Box<[u32]>,
    /// `cursor mod cycle.len()` without a division (Lemire's fastmod: the cursor times this, then the
    /// high half of that times the length).
    fastmod: u64,
    /// Picks so far, wrapping at 2³²: one cycle in four billion picks is cut short, no more.
    cursor: CachePadded<AtomicU32>,
}

impl RoundRobin {
    /// Builds the cycle over the tier's effective weights.
    pub fn new(tier: &[Arc<Server>]) -> Self {
        let weights: Vec<u32> = tier.iter().map(|s| s.effective_weight_tenths()).collect();
        Self::with_weights(&weights)
    }

    /// Builds the cycle for members with these weights (each ≥ 1).
    pub fn with_weights(weights: &[u32]) -> Self {
        let cycle = smooth_cycle(weights).into_boxed_slice();
        RoundRobin {
            fastmod: fastmod_multiplier(cycle.len()),
            cycle,
            cursor: CachePadded(AtomicU32::new(0)),
        }
    }

    /// The cycle's next member (advancing the shared cursor), or `None` for an empty tier.
    pub fn next_member(&self) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let step = self.cursor.0.fetch_add(1, Ordering::Relaxed);
        Some(self.cycle[fastmod(step, self.fastmod, self.cycle.len())] as usize)
    }
}

/// The multiplier for [`fastmod`] by `len` (≥ 1).
fn fastmod_multiplier(len: usize) -> u64 {
    (u64::MAX / (len as u64).max(1)).wrapping_add(1)
}

/// `step mod len` for `len` in 1..2³², by two multiplications (Lemire, Kaser, Kurz, "Faster
/// Remainder by Direct Computation", 2019).
fn fastmod(step: u32, multiplier: u64, len: usize) -> usize {
    let low = multiplier.wrapping_mul(u64::from(step));
    ((u128::from(low) * len as u128) >> 64) as usize
}

/// One full cycle of smooth weighted round robin: each step, every member gains its weight, the
/// largest current value wins (the first on ties) and loses the total.
fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Strategy for RoundRobin {
    type Candidates<'a> = Preferred;

    /// The cycle's next member, then the others in tier order after it.
    fn candidates(&self, tier: &[Arc<Server>], _ctx: &PickContext<'_>) -> Preferred {
        match self.next_member() {
            Some(first) => Preferred::new(tier.len(), first, None),
            None => Preferred::empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{ctx, tier};

    fn firsts(weights: &[u32], n: usize) -> Vec<usize> {
        let tier = tier(weights);
        let rr = RoundRobin::new(&tier);
        (0..n)
            .map(|_| rr.candidates(&tier, &ctx()).next().unwrap())
            .collect()
    }

    #[test]
    fn weights_are_followed_exactly_over_whole_cycles() {
        let mut counts = [0; 3];
        for i in firsts(&[1, 2, 3], 600) {
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn heavy_members_are_interleaved_not_bunched() {
        assert_eq!(firsts(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn common_factors_shorten_the_cycle() {
        assert_eq!(smooth_cycle(&[100, 200]).len(), 3);
    }

    #[test]
    fn candidates_visit_every_member_once() {
        let tier = tier(&[1, 1, 1, 1]);
        let rr = RoundRobin::new(&tier);
        for _ in 0..8 {
            let mut seen: Vec<usize> = rr.candidates(&tier, &ctx()).collect();
            assert_eq!(seen.len(), 4);
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn an_empty_tier_has_no_candidates() {
        let rr = RoundRobin::new(&[]);
        assert_eq!(rr.candidates(&[], &ctx()).count(), 0);
    }

    #[test]
    fn the_cursor_has_a_cache_line_to_itself() {
        assert_eq!(std::mem::align_of::<CachePadded<AtomicU32>>(), 128);
    }

    #[test]
    fn positions_are_the_step_modulo_the_cycle_length() {
        for len in [
            1usize,
            2,
            3,
            7,
            10,
            1000,
            65_537,
            10_000_019,
            u32::MAX as usize,
        ] {
            let multiplier = fastmod_multiplier(len);
            for step in [0u32, 1, 2, 999, 65_536, 123_456_789, u32::MAX - 1, u32::MAX] {
                assert_eq!(
                    fastmod(step, multiplier, len),
                    step as usize % len,
                    "{step} mod {len}"
                );
            }
        }
    }
}
