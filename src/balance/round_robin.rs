//! Smooth weighted round robin (nginx's algorithm, `ngx_http_upstream_get_peer`), made lock-free.
//!
//! nginx runs the "current weight" algorithm under a lock on every pick. Here the whole cycle, of
//! length Σweight / gcd, is computed once when the snapshot is built; a pick is one `fetch_add` on a
//! cursor shared by all workers. Sequential traffic therefore follows the weights exactly (1:2:3 over
//! 600 requests is 100/200/300) and spreads them evenly (`a b a c a b` rather than `a a a b b c`).
//! After the first pick, further candidates go round the tier from there, so a retry tries every
//! other member once.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PickContext, Strategy};

/// The precomputed cycle and its cursor.
pub struct RoundRobin {
    cycle: Box<[u32]>,
    cursor: AtomicUsize,
    members: usize,
}

impl RoundRobin {
    /// Builds the cycle for members with these weights (each ≥ 1).
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            cycle: smooth_cycle(weights).into_boxed_slice(),
            cursor: AtomicUsize::new(0),
            members: weights.len(),
        }
    }
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

/// Round-robin candidates: the cycle's next member, then the others in tier order after it.
pub struct RoundRobinCandidates {
    next: usize,
    left: usize,
    members: usize,
}

impl Iterator for RoundRobinCandidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let pos = self.next;
        self.next = (self.next + 1) % self.members;
        Some(pos)
    }
}

impl Strategy for RoundRobin {
    type Candidates<'a> = RoundRobinCandidates;

    fn candidates(&self, _ctx: &PickContext<'_>) -> RoundRobinCandidates {
        if self.cycle.is_empty() {
            return RoundRobinCandidates {
                next: 0,
                left: 0,
                members: 0,
            };
        }
        let step = self.cursor.fetch_add(1, Ordering::Relaxed);
        RoundRobinCandidates {
            next: self.cycle[step % self.cycle.len()] as usize,
            left: self.members,
            members: self.members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PickContext<'static> {
        PickContext {
            client: "127.0.0.1:1".parse().unwrap(),
            head: None,
        }
    }

    fn firsts(rr: &RoundRobin, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| rr.candidates(&ctx()).next().unwrap())
            .collect()
    }

    #[test]
    fn weights_are_followed_exactly_over_whole_cycles() {
        let rr = RoundRobin::new(&[1, 2, 3]);
        let mut counts = [0; 3];
        for i in firsts(&rr, 600) {
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn heavy_members_are_interleaved_not_bunched() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(firsts(&rr, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn common_factors_shorten_the_cycle() {
        assert_eq!(smooth_cycle(&[100, 200]).len(), 3);
    }

    #[test]
    fn candidates_visit_every_member_once() {
        let rr = RoundRobin::new(&[1, 1, 1, 1]);
        for _ in 0..8 {
            let mut seen: Vec<usize> = rr.candidates(&ctx()).collect();
            assert_eq!(seen.len(), 4);
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn an_empty_tier_has_no_candidates() {
        let rr = RoundRobin::new(&[]);
        assert_eq!(rr.candidates(&ctx()).count(), 0);
    }
}
