//! The candidate order most strategies share: the member the strategy prefers, optionally a
//! second (the loser of two choices), then every other member of the tier once, in rotation from
//! after the first. Retries therefore reach the whole tier without bookkeeping or allocation.

/// Candidate positions: `first`, `second`, then the rest in rotation (see the module docs).
#[derive(Debug, Clone)]
pub struct Preferred {
    first: Option<usize>,
    second: Option<usize>,
    /// The next position of the rotation, and how many positions it has left to visit.
    next: usize,
    left: usize,
    len: usize,
    /// The positions already yielded up front, which the rotation skips.
    taken: [usize; 2],
}

impl Preferred {
    /// The order for a tier of `len` members whose preferred member is `first` (< len), followed
    /// by `second` when it is another member.
    pub fn new(len: usize, first: usize, second: Option<usize>) -> Self {
        debug_assert!(first < len);
        let second = second.filter(|&s| s != first && s < len);
        Preferred {
            first: Some(first),
            second,
            next: after(first, len),
            left: len - 1,
            len,
            taken: [first, second.unwrap_or(first)],
        }
    }

    /// No candidates (an empty tier).
    pub fn empty() -> Self {
        Preferred {
            first: None,
            second: None,
            next: 0,
            left: 0,
            len: 0,
            taken: [0, 0],
        }
    }
}

/// The position after `pos` in a rotation of `len` (a compare, not a division: this is on every
/// pick of every strategy).
fn after(pos: usize, len: usize) -> usize {
    if pos + 1 >= len {
        0
    } else {
        pos + 1
    }
}

impl Iterator for Preferred {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if let Some(second) = self.second.take() {
            return Some(second);
        }
        while self.left > 0 {
            let pos = self.next;
            self.next = after(self.next, self.len);
            self.left -= 1;
            if !self.taken.contains(&pos) {
                return Some(pos);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_come_first_then_the_rest_in_rotation() {
        let order: Vec<usize> = Preferred::new(5, 3, Some(1)).collect();
        assert_eq!(order, vec![3, 1, 4, 0, 2]);
    }

    #[test]
    fn a_second_equal_to_the_first_is_not_repeated() {
        let order: Vec<usize> = Preferred::new(3, 2, Some(2)).collect();
        assert_eq!(order, vec![2, 0, 1]);
    }

    #[test]
    fn one_member_and_none() {
        assert_eq!(Preferred::new(1, 0, None).collect::<Vec<_>>(), vec![0]);
        assert_eq!(Preferred::empty().count(), 0);
    }
}
