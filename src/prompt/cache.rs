//! The prompt cache: where a prompt's walks (its signature, its phrase scan and its token estimate) stopped, under a
//! keyed hash of its text, so that a prompt that extends it is walked only past it.
//!
//! A conversation sends its history again with every turn: the request after `system, user` is `system, user,
//! assistant, user`, and a coding agent's next request is its last one plus a tool call and its result. The prompt
//! text is those pieces joined by line breaks (`crate::api::inspect`), so the last request's text, a line break,
//! and the new pieces make the next request's text. The walks are linear in the text, and a long agent context
//! costs hundreds of microseconds a request to walk whole again: kept here, the walk of the part already seen is
//! taken up where it stopped ([`signature_continued`], [`PhraseMatcher::scan_continued`], [`Estimator::push`]).
//! The features are the same as those of a whole walk (`docs/signature.md`, §11), so linking, detection and
//! admission see nothing different.
//!
//! An entry holds the walks a request wanted ([`Wanted`]: the signature while linking, the phrase scan while
//! detecting, the token estimate always) and is found only by requests that want the same; with the policy off the
//! cache keeps the estimate alone.
//!
//! An entry is found only by requests of the account that made it. A cache shared between accounts would answer
//! a text another customer sent recently faster than one nobody sent (at 32 KiB a walk takes about 100 µs; a
//! megabyte, milliseconds), and that difference would tell one customer what another sends: the side channel
//! that led model providers to scope their own prompt caches to an organisation. A conversation is one account's,
//! so what the cache is for is kept; an app whose many accounts share a system prompt walks it once per account.
//!
//! Entries are found by a 128-bit XXH3 of the text with a seed drawn when the cache is made. An entry holds no
//! text, only the walks' state (MinHash minima and hashes of the last words and shingles, `Partial`; the
//! estimator's counts and the classes of the last bytes, `Estimator`), and lives in the process's memory until newer
//! entries push it out (first in, first out, per shard). A hash collision would give a request another text's
//! features; with a 128-bit hash under a secret seed that is not a practical attack.
//! The cache belongs to one [`PhraseMatcher`] (its stock shingles are in every partial), so a reload that builds a
//! new matcher starts with an empty cache.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use xxhash_rust::xxh3::Xxh3;

use crate::api::estimate::Estimator;
use crate::engine::hash::IdHasher;
use crate::engine::score::PhraseHits;
use crate::engine::signature::{Partial, INDEX_KEYS};

use super::Wanted;

/// Prompts shorter than this are walked whole: their walks cost about what a lookup does.
pub const MIN_CACHED_BYTES: usize = 512;
/// Entries at most (about 1 KiB each).
pub const ENTRIES: usize = 8192;
/// Shards (each a lock of its own).
const SHARDS: usize = 16;

/// The walks of one text, stopped at its end: those a request wanted (the others are empty).
#[derive(Debug, Clone, Copy)]
pub struct Walked {
    /// The text's length in bytes.
    pub len: usize,
    /// The signature's walk (None: it cannot be continued, `signature_partial`, or linking did not want it).
    pub partial: Option<Partial>,
    /// The signature's index keys (None: not informative, or not wanted).
    pub keys: Option<[u64; INDEX_KEYS]>,
    /// The phrase lists the text matched (none when detection did not want them).
    pub hits: PhraseHits,
    /// The token estimator, having taken the text.
    pub tokens: Estimator,
}

#[derive(Clone, Copy)]
struct Entry {
    /// The hash's upper half (the map is keyed by its lower half).
    check: u64,
    walked: Walked,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    order: VecDeque<u64>,
}

/// Walks of recent prompts by a keyed hash of their text (module docs).
pub struct PromptCache {
    seed: u64,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    whole: AtomicU64,
    continued: AtomicU64,
    walked: AtomicU64,
}

/// How the prompts looked up were walked, since the cache was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Found whole: not walked.
    pub whole: u64,
    /// Walked past the longest piece boundary where an earlier prompt ended.
    pub continued: u64,
    /// Walked whole.
    pub walked: u64,
}

/// How one prompt was walked ([`PromptCache::count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Found whole.
    Whole,
    /// Continued past an earlier prompt.
    Continued,
    /// Walked whole.
    Walked,
}

impl std::fmt::Debug for PromptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptCache")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for PromptCache {
    fn default() -> Self {
        PromptCache::new(ENTRIES)
    }
}

/// Most piece boundaries looked up (`crate::api::inspect::PromptCuts::MAX`).
const MAX_CUTS: usize = 4;

/// The hashes of a text and of its prefixes that end at its last piece boundaries.
pub struct Prefixes {
    /// (length, hash): the whole text first, then the longest prefix first.
    hashes: [(usize, u128); MAX_CUTS + 1],
    n: usize,
}

impl Prefixes {
    /// (length, hash): the whole text first, then the longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = (usize, u128)> + '_ {
        self.hashes[..self.n].iter().rev().copied()
    }
}

impl PromptCache {
    /// A cache of at most `entries` walks (rounded up to a multiple of the shards), under a fresh random seed.
    /// With 0 it keeps nothing, and [`cached_features`](super::cached_features) walks every prompt whole.
    pub fn new(entries: usize) -> PromptCache {
        PromptCache {
            seed: rand::random(),
            per_shard: entries.div_ceil(SHARDS),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            whole: AtomicU64::new(0),
            continued: AtomicU64::new(0),
            walked: AtomicU64::new(0),
        }
    }

    /// Counts how a prompt was walked.
    pub fn count(&self, walk: Walk) {
        let c = match walk {
            Walk::Whole => &self.whole,
            Walk::Continued => &self.continued,
            Walk::Walked => &self.walked,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// How the prompts looked up so far were walked.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            whole: self.whole.load(Ordering::Relaxed),
            continued: self.continued.load(Ordering::Relaxed),
            walked: self.walked.load(Ordering::Relaxed),
        }
    }

    /// Entries it may hold (0: it is off).
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.map.len()))
            .sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of `text` and of its prefixes that end at the last [`MAX_CUTS`] of `cuts` (byte offsets of the line
    /// breaks that join its pieces, in increasing order; ones out of order or range are skipped), in one pass,
    /// for `account`'s requests that want `wanted` (another account, or other wants, hash the same text elsewhere).
    pub fn prefixes(
        &self,
        text: &str,
        cuts: impl IntoIterator<Item = usize>,
        wanted: Wanted,
        account: u64,
    ) -> Prefixes {
        let bytes = text.as_bytes();
        let mut h = Xxh3::with_seed(self.seed);
        let want = u8::from(wanted.linking) | u8::from(wanted.detection) << 1;
        h.update(&account.to_le_bytes());
        h.update(&[want]);
        let mut at = 0;
        let mut out = Prefixes {
            hashes: [(0, 0); MAX_CUTS + 1],
            n: 0,
        };
        for c in cuts {
            let Some(piece) = bytes.get(at..c).filter(|_| c > at && c < bytes.len()) else {
                continue;
            };
            h.update(piece);
            at = c;
            if out.n == MAX_CUTS {
                out.hashes.copy_within(1..MAX_CUTS, 0);
                out.n -= 1;
            }
            out.hashes[out.n] = (c, h.digest128());
            out.n += 1;
        }
        h.update(bytes.get(at..).unwrap_or_default());
        out.hashes[out.n] = (bytes.len(), h.digest128());
        out.n += 1;
        out
    }

    /// The walks stored under `hash`.
    pub fn get(&self, hash: u128) -> Option<Walked> {
        let (low, check) = split(hash);
        let shard = self.shard(low).lock().ok()?;
        shard
            .map
            .get(&low)
            .filter(|e| e.check == check)
            .map(|e| e.walked)
    }

    /// Stores `walked` under `hash`; the shard's oldest entry goes when it is full.
    pub fn put(&self, hash: u128, walked: Walked) {
        let (low, check) = split(hash);
        let Ok(mut shard) = self.shard(low).lock() else {
            return;
        };
        let entry = Entry { check, walked };
        if shard.map.insert(low, entry).is_none() {
            shard.order.push_back(low);
            while shard.order.len() > self.per_shard {
                if let Some(old) = shard.order.pop_front() {
                    shard.map.remove(&old);
                }
            }
        }
    }

    fn shard(&self, low: u64) -> &Mutex<Shard> {
        // The map takes the low bits; the shard the high ones.
        &self.shards[(low >> 60) as usize % SHARDS]
    }
}

fn split(hash: u128) -> (u64, u64) {
    (hash as u64, (hash >> 64) as u64)
}
