//! Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
//! SODA 2018): with `bounded_load` = c ≥ 1, a server is full when
//! in_flight + 1 > ⌈c × (T + 1) × w / W⌉, T being the upstream's total in flight, w the server's
//! weight and W the tier's total weight; a full server is skipped for the next candidate in the key's
//! order. The caps of the tier add up to at least c × (T + 1) > T, so some server always has room
//! (short of `max_connections`), and no server carries more than c times its share.
//!
//! The cap is integer arithmetic on c read to six decimal places (so 1.1 means exactly 11/10, as
//! written, not the nearest binary fraction), and the claim checks it in the server's own
//! compare-and-swap ([`Server::try_acquire_within`]). T is an upstream-wide atomic that every
//! snapshot of the upstream shares (`table::build` hands it on), raised and lowered by the claim
//! guard; it exists only when bounded loads are on, so other strategies pay nothing for it.
//!
//! [`Server::try_acquire_within`]: crate::server::Server::try_acquire_within

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::server::Server;

/// Units of `bounded_load` per 1.0: it is read to millionths.
const PPM: u128 = 1_000_000;

/// The load bound of one tier.
#[derive(Debug, Clone)]
pub struct Bounded {
    /// c in millionths.
    factor_ppm: u128,
    /// W × [`PPM`]: the divisor of the cap.
    divisor: u128,
}

impl Bounded {
    /// The bound for `bounded_load` over `tier`'s configured weights; `None` when it is off (0) or
    /// the tier is empty.
    pub fn new(bounded_load: f64, tier: &[Arc<Server>]) -> Option<Self> {
        let total_weight: u128 = tier.iter().map(|s| u128::from(s.config.weight)).sum();
        (bounded_load >= 1.0 && total_weight > 0).then(|| Bounded {
            // A float-to-integer `as` saturates; c ≥ 1 makes this at least PPM.
            factor_ppm: (bounded_load * PPM as f64).round() as u64 as u128,
            divisor: total_weight * PPM,
        })
    }

    /// The most a server of `weight` may have in flight now, given the upstream's `total` in
    /// flight: ⌈c × (total + 1) × weight / W⌉.
    pub fn cap(&self, total: &AtomicU32, weight: u32) -> u32 {
        let load = u128::from(total.load(Ordering::Relaxed)) + 1;
        let cap = (self.factor_ppm * load * u128::from(weight)).div_ceil(self.divisor);
        u32::try_from(cap).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::tier;

    fn cap(c: f64, weights: &[u32], total: u32, member: usize) -> u32 {
        let bounded = Bounded::new(c, &tier(weights)).unwrap();
        bounded.cap(&AtomicU32::new(total), weights[member])
    }

    #[test]
    fn the_cap_is_the_ceiling_of_c_times_the_share_of_the_load_to_come() {
        // 1.25 × (7 + 1) × 1/4 = 2.5 → 3.
        assert_eq!(cap(1.25, &[1, 1, 1, 1], 7, 0), 3);
        // Exactly an integer stays that integer: 1.5 × 4 × 1/2 = 3.
        assert_eq!(cap(1.5, &[1, 1], 3, 1), 3);
        // Weights count: 2/3 of 1.0 × 9 = 6.
        assert_eq!(cap(1.0, &[1, 2], 8, 1), 6);
        assert_eq!(cap(1.0, &[1, 2], 8, 0), 3);
        // Nothing in flight: every server may take one.
        assert_eq!(cap(1.0, &[1, 1, 1, 1, 1], 0, 0), 1);
    }

    #[test]
    fn decimal_factors_are_exact() {
        // 1.1 × 10 × 1/1 = 11 exactly; in binary floating point 1.1 × 10 is 11.000000000000002,
        // whose ceiling would be 12.
        assert_eq!(cap(1.1, &[1], 9, 0), 11);
    }

    #[test]
    fn huge_factors_saturate() {
        assert_eq!(cap(1e30, &[1, 1], u32::MAX, 0), u32::MAX);
    }

    #[test]
    fn off_below_one_and_for_an_empty_tier() {
        assert!(Bounded::new(0.0, &tier(&[1])).is_none());
        assert!(Bounded::new(0.999, &tier(&[1])).is_none());
        assert!(Bounded::new(1.0, &tier(&[1])).is_some());
        assert!(Bounded::new(2.0, &[]).is_none());
    }
}
