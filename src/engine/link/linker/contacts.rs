//! Single-band contacts: which accounts a request found on one prompt band alone, for
//! [`LinkPolicy::single_band_contacts`] (docs/link.md, "Linking").

use super::*;

/// Pairs (and so accounts) recorded per generation, at most. Beyond it a pair is not recorded and its link joins as if
/// the rule were off: a flood of one-band coincidences cannot hold back links that `min_prompt_bands` alone would make
/// (counted in [`LinkStats::single_band_unrecorded_total`]).
pub(in crate::engine::link) const MAX_CONTACT_PAIRS: usize = 1 << 16;

/// One generation's record: the pairs of accounts found together on a single band alone, and how many distinct
/// such partners each account had (counting the previous generation's).
#[derive(Debug, Default)]
struct Generation {
    pairs: FastMap<u64, ()>,
    partners: FastMap<u64, u8>,
}

/// Single-band contacts of this generation and the last one; rotated with the linker's generations, so a contact
/// counts for one to two generations.
#[derive(Debug, Default)]
pub(super) struct Contacts {
    gens: [Generation; 2],
}

/// What [`Contacts::meet`] says about a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Met {
    /// The more connected of the two has met this many distinct accounts so (this one included).
    Partners(u8),
    /// The record is full: the pair was not counted.
    Full,
}

impl Contacts {
    /// Records that a request found `a` and `b` on a single prompt band alone.
    pub(super) fn meet(&mut self, a: u64, b: u64) -> Met {
        let pair = murmur3_combine(a.min(b), a.max(b));
        let [cur, last] = &mut self.gens;
        let recorded = cur.pairs.contains_key(&pair);
        let fresh = !recorded && !last.pairs.contains_key(&pair);
        if !recorded {
            // Each pair recorded adds at most two partners: this bounds both maps.
            if cur.pairs.len() >= MAX_CONTACT_PAIRS {
                return Met::Full;
            }
            cur.pairs.insert(pair, ());
        }
        let mut most = 0;
        for account in [a, b] {
            let before = last.partners.get(&account).copied().unwrap_or(0);
            let n = cur.partners.entry(account).or_insert(before);
            if fresh {
                *n = n.saturating_add(1);
            }
            most = most.max(*n);
        }
        Met::Partners(most)
    }

    /// A new generation: the last one's record is dropped.
    pub(super) fn rotate(&mut self) {
        self.gens.swap(0, 1);
        self.gens[0].pairs.clear();
        self.gens[0].partners.clear();
    }

    /// Bytes held (approximate).
    pub(super) fn bytes(&self) -> usize {
        self.gens
            .iter()
            .map(|g| map_bytes(&g.pairs) + map_bytes(&g.partners))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct partners are counted once per pair, carried over one rotation and dropped at the second; a full
    /// record counts nothing new.
    #[test]
    fn partners_are_counted_per_pair_and_bounded() {
        let mut c = Contacts::default();
        assert_eq!(c.meet(1, 2), Met::Partners(1));
        assert_eq!(
            c.meet(2, 1),
            Met::Partners(1),
            "the same pair counted twice"
        );
        assert_eq!(c.meet(1, 3), Met::Partners(2));
        c.rotate();
        assert_eq!(
            c.meet(3, 1),
            Met::Partners(2),
            "a pair of the last generation counted again"
        );
        assert_eq!(c.meet(4, 5), Met::Partners(1));
        assert_eq!(c.meet(1, 4), Met::Partners(3));
        c.rotate();
        c.rotate();
        assert_eq!(
            c.meet(1, 6),
            Met::Partners(1),
            "partners of two generations ago counted"
        );

        let mut c = Contacts::default();
        for i in 0..MAX_CONTACT_PAIRS as u64 {
            assert!(matches!(c.meet(2 * i + 100, 2 * i + 101), Met::Partners(1)));
        }
        assert_eq!(c.meet(7, 8), Met::Full);
        assert_eq!(
            c.meet(100, 101),
            Met::Partners(1),
            "a recorded pair is still counted"
        );
        assert!(c.bytes() > 0);
        c.rotate();
        assert_eq!(c.meet(7, 8), Met::Partners(1));
    }
}
