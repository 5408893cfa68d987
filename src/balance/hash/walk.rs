//! A key's candidates: its owner, then the next distinct members met walking onward from the key's
//! place in the table (successive Maglev entries, successive ring points), then the rest of the tier.
//!
//! Walking the table gives each key its own order of fallbacks, spread by weight: when a hot key's
//! owner is full (bounded loads) or down, its traffic goes to the key's second member, and different
//! keys of that owner have different second members, so the overflow does not pile onto one
//! neighbour. The walk remembers at most [`SEEN`] members in an inline array and takes at most
//! [`WALK_STEPS`] steps; after that the rest of the tier follows in rotation from after the owner,
//! skipping what the walk yielded, so every member comes exactly once with no allocation.

/// Members the walk yields at most (and remembers, to skip them later).
pub const SEEN: usize = 8;

/// Table entries or points the walk reads at most: enough to meet [`SEEN`] members in an even tier,
/// and a bound on the work when one member owns most of the table.
pub const WALK_STEPS: u32 = 32;

/// The candidate positions of one key (see the module docs).
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    /// The table's members in its cyclic order.
    order: &'a [u32],
    /// The next index of `order` to read, and how many reads are left.
    at: usize,
    steps: u32,
    /// The members yielded by the walk.
    seen: [u32; SEEN],
    seen_len: usize,
    /// The tier's size, then the rotation's next position and how many positions it has left.
    len: usize,
    next: usize,
    left: usize,
}

impl<'a> Walk<'a> {
    /// Candidates over a tier of `len` members whose table lists members in `order` (each < len,
    /// empty only for an empty tier), for a key whose place in `order` is `start`.
    pub fn new(order: &'a [u32], len: usize, start: usize) -> Self {
        debug_assert!(order.is_empty() == (len == 0) && (len == 0 || start < order.len()));
        Walk {
            order,
            at: start,
            steps: if len == 0 { 0 } else { WALK_STEPS },
            seen: [0; SEEN],
            seen_len: 0,
            len,
            next: 0,
            left: 0,
        }
    }

    fn seen(&self, member: u32) -> bool {
        self.seen[..self.seen_len].contains(&member)
    }
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.steps > 0 && self.seen_len < SEEN.min(self.len) {
            let member = self.order[self.at];
            self.at = (self.at + 1) % self.order.len();
            self.steps -= 1;
            if !self.seen(member) {
                if self.seen_len == 0 {
                    // The rotation goes once round the tier from after the owner (which it skips,
                    // as seen, at the end).
                    self.next = (member as usize + 1) % self.len;
                    self.left = self.len;
                }
                self.seen[self.seen_len] = member;
                self.seen_len += 1;
                return Some(member as usize);
            }
        }
        while self.left > 0 {
            let pos = self.next;
            self.next = (self.next + 1) % self.len;
            self.left -= 1;
            if !self.seen(pos as u32) {
                return Some(pos);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_walk_yields_distinct_members_in_table_order_then_the_rest_in_rotation() {
        let order = [2, 2, 4, 2, 0, 4];
        let got: Vec<usize> = Walk::new(&order, 6, 1).collect();
        assert_eq!(got, vec![2, 4, 0, 3, 5, 1]);
    }

    #[test]
    fn the_walk_wraps_round_the_table() {
        let order = [1, 0, 2];
        assert_eq!(Walk::new(&order, 3, 2).collect::<Vec<_>>(), vec![2, 1, 0]);
    }

    #[test]
    fn the_walk_stops_at_its_step_bound() {
        // One member owns all but the last entry: the walk gives up before reaching it.
        let mut order = vec![3u32; WALK_STEPS as usize + 1];
        order[WALK_STEPS as usize] = 1;
        let got: Vec<usize> = Walk::new(&order, 5, 0).collect();
        assert_eq!(got, vec![3, 4, 0, 1, 2]);
        // One step less and it is met.
        let got: Vec<usize> = Walk::new(&order, 5, 1).collect();
        assert_eq!(got, vec![3, 1, 4, 0, 2]);
    }

    #[test]
    fn the_walk_stops_after_seen_members_and_the_rotation_skips_them() {
        let order: Vec<u32> = (0..20).rev().collect();
        let got: Vec<usize> = Walk::new(&order, 20, 0).collect();
        let mut expected: Vec<usize> = (12..20).rev().collect();
        expected.extend((0..12).filter(|p| !(12..20).contains(p)));
        assert_eq!(got, expected);
    }

    #[test]
    fn an_empty_tier_has_no_candidates() {
        assert_eq!(Walk::new(&[], 0, 0).count(), 0);
    }

    proptest! {
        #[test]
        fn every_member_comes_exactly_once(
            len in 1usize..40,
            cells in prop::collection::vec(any::<prop::sample::Index>(), 1..200),
            start in any::<prop::sample::Index>(),
        ) {
            let order: Vec<u32> = cells.iter().map(|c| c.index(len) as u32).collect();
            let got: Vec<usize> = Walk::new(&order, len, start.index(order.len())).collect();
            let mut sorted = got.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..len).collect::<Vec<_>>());
            prop_assert_eq!(got[0], order[start.index(order.len())] as usize);
        }
    }
}
