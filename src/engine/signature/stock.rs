//! Stock shingles: the shingles of phrases many users type, left out of every sketch (§10).

use super::*;

/// The shingles of phrases that many unrelated users type (§10), left out of
/// a signature so that a shared stock phrase cannot make two prompts look
/// built from one template.
#[derive(Clone)]
pub struct StockShingles {
    pub(super) key: u64,
    /// Sorted, without duplicates.
    hashes: Vec<u64>,
    /// One bit per value of a hash's low 12 bits (64 words; empty, and not
    /// allocated, without stock phrases): most shingles are ruled out by one
    /// load, without searching `hashes`.
    filter: Vec<u64>,
}

impl StockShingles {
    /// No stock phrases: signatures keep every shingle.
    pub fn none(key: u64) -> StockShingles {
        StockShingles {
            key,
            hashes: Vec::new(),
            filter: Vec::new(),
        }
    }

    /// The shingles of `phrases` under the built-in public key (§7). A
    /// phrase shorter than a shingle ([`SHINGLE_TOKENS`] tokens) has none;
    /// `*` (the phrase lists' word-prefix mark) is dropped.
    pub fn new<'a>(phrases: impl IntoIterator<Item = &'a str>) -> StockShingles {
        StockShingles::keyed(phrases, DEFAULT_KEY)
    }

    /// The shingles of `phrases` under `key`.
    pub fn keyed<'a>(phrases: impl IntoIterator<Item = &'a str>, key: u64) -> StockShingles {
        let none = StockShingles::none(key);
        let mut hashes = Vec::new();
        for phrase in phrases {
            let mut sk = Sketcher::new(key, &none);
            sk.record = Some(Vec::new());
            tokenize(&phrase.replace('*', ""), &mut sk);
            hashes.extend(sk.record.unwrap_or_default());
        }
        hashes.sort_unstable();
        hashes.dedup();
        let mut filter = if hashes.is_empty() {
            Vec::new()
        } else {
            vec![0u64; 64]
        };
        for &h in &hashes {
            let bit = (h & 4095) as usize;
            if let Some(w) = filter.get_mut(bit / 64) {
                *w |= 1 << (bit % 64);
            }
        }
        StockShingles {
            key,
            hashes,
            filter,
        }
    }

    /// Number of distinct stock shingles.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    #[inline]
    pub(super) fn contains(&self, h: u64) -> bool {
        let bit = (h & 4095) as usize;
        let hit = self
            .filter
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0);
        hit && self.hashes.binary_search(&h).is_ok()
    }
}

impl fmt::Debug for StockShingles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StockShingles")
            .field("shingles", &self.hashes.len())
            .finish_non_exhaustive()
    }
}
