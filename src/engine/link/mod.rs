//! Fingerprint linkage (engine step "link"): joins accounts that share client fingerprints into clusters with stable ids.
//!
//! Accounts whose requests carry the same combination of fingerprint values within a short window are linked
//! ([`policy`] says which combinations, [`index`] finds them), and linked accounts are kept in union-find clusters
//! ([`forest`]) whose ids stay stable while the cluster persists ([`Linker`]). Pure: no I/O, no clock reads, no
//! randomness; the same calls in the same order give the same clusters and ids on every replica. The design — rules
//! and index keys, linking, generations, cluster ids, memory and cost — is `docs/link.md`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::mem::size_of;

use super::hash::{murmur3_combine, murmur3_fmix64, FastHasher, GOLDEN};

/// Nanoseconds on the caller's monotonic clock (an arbitrary epoch).
pub use super::gcra::Nanos;

/// One minute in [`Nanos`].
const MINUTE: Nanos = 60_000_000_000;
/// Rules beyond this many are ignored ([`ClusterView::rules`] is a `u32` bitset).
const MAX_RULES: usize = 32;
/// Band keys of one request beyond this many are ignored.
const MAX_PROMPT_KEYS: usize = 64;
/// Upper bound of [`LinkPolicy::max_links_per_request`].
const MAX_LINKS_CAP: usize = 64;
/// Distinct candidate accounts considered per request, at most.
const MAX_CANDIDATES: usize = 128;
/// Index slots visited by the incremental sweep per `observe`.
const SWEEP_STEP: usize = 4;
/// Links remembered for [`Linker::cluster_links`] (the most recent; 32 bytes each).
pub const RECENT_LINKS: usize = 1 << 15;
/// Occupied slots sampled per eviction by the sweeping hand (used when the neighbourhood is empty).
const EVICT_SAMPLE: usize = 8;
/// [`LinkStats::evicted_age`] moves by 1/this of each eviction's age.
const AGE_WEIGHT: Nanos = 1024;
/// Slots next to an insertion point sampled for an eviction (about two at load 1/2; two cache lines).
const NEAR_SAMPLE: usize = 4;
/// An account already linked skips gathering candidates for at most its shortest rule window (or the generation)
/// divided by this (docs/link.md, "Accounts already linked").
const REFRESH_DIVISOR: Nanos = 32;
/// Within its `refresh`, such an account records itself under its keys at most once per `refresh` divided by this
/// (docs/link.md, "Accounts already linked").
const RECORD_DIVISOR: Nanos = 8;
/// Smallest index table (slots).
const MIN_TABLE: usize = 1024;
/// Load (a fraction: numerator, denominator) past which the table's next size is asked for ahead of its growth at
/// 3/4 ([`Linker::spare_wanted`]): the keys between are time for the owner to make it.
const SPARE_LOAD: (usize, usize) = (9, 16);
/// Slots of the table left behind by a growth into a ready spare that each key touch moves into the new table
/// ([`Index::touch`]): the growth's rehash spread over the touches that follow it. Eight a touch drain a table of
/// `n` slots within `n / 8` touches, long before the new one (twice the size, then 3/8 full) needs to grow again.
const MIGRATE_STEP: usize = 8;
/// Slots one step of a compaction looks at ([`Linker::compact_step`]): 256 KiB of the table, about 0.2 ms at the
/// default `max_index_values` (`cargo bench --bench compaction`).
pub const COMPACT_STEP_SLOTS: usize = 1 << 13;

/// What one step of a compaction did ([`Linker::compact_step`]).
#[derive(Debug)]
#[must_use = "drop it with the linker unlocked"]
pub struct CompactStep {
    /// Spill lists are left to move (the arena they leave is still held).
    pub more: bool,
    /// The arena the lists left, once the last one moved: drop it with the linker unlocked, as giving back its
    /// memory takes milliseconds (10–20 ms for the 200 MB of the default `max_index_values` here).
    _spent: Moving,
}

/// A spare table unused this long (engine time) is given back ([`Linker::compact`]).
const SPARE_KEEP: Nanos = 600 * 1_000_000_000;
/// Union-find forests keep at least this much capacity when cleared.
const FOREST_KEEP: usize = 1024;

const IGNORED: u8 = 1;
const DOWN: u8 = 2;

mod forest;
mod index;
mod linker;
mod policy;
mod spills;

use forest::*;
pub use index::SpareTable;
use index::*;
pub use linker::*;
pub use policy::*;
pub use spills::MAX_SPILL;
use spills::*;

// ---------------------------------------------------------------------------------------------------------------
// Hashing

const KEY_SALT: u64 = 0x6c69_6e6b_2d6b_6579; // "link-key"
const FLAG_SALT: u64 = 0x6c69_6e6b_2d66_6c67; // "link-flg"
const ID_SALT: u64 = 0x6c69_6e6b_2d69_6473; // "link-ids"

fn flag_key(kind: AttrKind, value: u64) -> u64 {
    murmur3_combine(murmur3_fmix64(FLAG_SALT ^ u64::from(kind.bit())), value)
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

fn map_bytes<K, V>(m: &FastMap<K, V>) -> usize {
    let cap = m.capacity();
    if cap == 0 {
        return 0;
    }
    let buckets = (cap.saturating_mul(8) / 7 + 1).next_power_of_two();
    buckets * (size_of::<(K, V)>() + 1) + 16
}

#[cfg(test)]
mod tests;
