//! Budget state of accounts and of clusters: budget cells, requests in
//! flight, first/last seen. A sharded map (dashmap) keyed by account or
//! cluster id; bounded by idle eviction and a cap. Over the cap only state
//! that forgives nothing is dropped (nothing owed or used, nothing in
//! flight, no evidence the caller wants kept), longest-idle first; what
//! remains is the engine's to limit (new accounts are rate-limited).

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::gcra::{Gcra, Nanos};

/// One account's (or cluster's) state (about 56 bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountState {
    /// Requests bucket.
    pub requests: Gcra,
    /// Input-token bucket.
    pub input: Gcra,
    /// Output-token bucket (post-paid, may hold debt).
    pub output: Gcra,
    /// Admitted and not yet settled.
    pub in_flight: u32,
    /// First request.
    pub first_seen: Nanos,
    /// Latest request or settlement.
    pub last_seen: Nanos,
    /// Requests admitted.
    pub requests_total: u64,
    /// Tokens charged (input + output).
    pub tokens_total: u64,
}

impl AccountState {
    /// Nothing owed, nothing in flight: dropping it forgives nothing.
    pub fn is_idle(&self, now: Nanos) -> bool {
        self.in_flight == 0
            && self.requests.is_idle(now)
            && self.input.is_idle(now)
            && self.output.is_idle(now)
    }
}

/// Account ids are already uniform hashes: use them as they are.
pub use super::hash::IdHasher;

/// A map keyed by ids that are already uniform hashes.
pub type IdMap<V> = DashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Shards of the maps that hold a state per tracked account (a million at
/// the shipped cap). A sweep locks one shard at a time and holds it while it
/// walks it; a request for an account in that shard waits, and with it every
/// connection on its worker. With dashmap's default (four per core: 8 on two
/// cores) a sweep's shard is 125 000 accounts and nearly every request during
/// a sweep meets one; with 256 it is about 4 000, and few do.
pub const STATE_SHARDS: usize = 256;

/// A map of `STATE_SHARDS` shards keyed by ids that are already uniform hashes.
pub fn state_map<V>() -> IdMap<V> {
    IdMap::with_hasher_and_shard_amount(BuildHasherDefault::default(), STATE_SHARDS)
}

/// All accounts' (or clusters') state.
pub struct AccountStore {
    map: IdMap<AccountState>,
    /// Entries in `map`: its `len` locks every shard in turn, and the
    /// request path asks whether the store is full.
    len: AtomicUsize,
}

impl Default for AccountStore {
    fn default() -> Self {
        AccountStore {
            map: state_map(),
            len: AtomicUsize::new(0),
        }
    }
}

impl AccountStore {
    /// Run `f` on the account's state, creating it if new; updates
    /// `last_seen`.
    pub fn with<R>(&self, id: u64, now: Nanos, f: impl FnOnce(&mut AccountState) -> R) -> R {
        let mut entry = match self.map.entry(id) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(v) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                v.insert(AccountState {
                    first_seen: now,
                    ..AccountState::default()
                })
            }
        };
        let state = entry.value_mut();
        state.last_seen = state.last_seen.max(now);
        f(state)
    }

    /// Read an account's state without creating it.
    pub fn peek<R>(&self, id: u64, f: impl FnOnce(&AccountState) -> R) -> Option<R> {
        self.map.get(&id).map(|s| f(s.value()))
    }

    /// The `n` entries with the largest `key(state)`, largest first.
    pub fn top(&self, n: usize, key: impl Fn(&AccountState) -> u64) -> Vec<(u64, AccountState)> {
        let mut all: Vec<(u64, AccountState)> =
            self.map.iter().map(|e| (*e.key(), *e.value())).collect();
        let n = n.min(all.len());
        if n == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(n - 1, |a, b| key(&b.1).cmp(&key(&a.1)));
        all.truncate(n);
        all.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(&b.0)));
        all
    }

    /// Accounts held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no account is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` has state.
    pub fn contains(&self, id: u64) -> bool {
        self.map.contains_key(&id)
    }

    /// Drop state idle for longer than `idle_for`, owing nothing and not
    /// `keep`; then, while more than `cap` remain, the longest-idle of those
    /// that forgive nothing when dropped (buckets full, nothing in flight,
    /// and not `keep`), down to 7/8 of the cap.
    pub fn evict(
        &self,
        now: Nanos,
        idle_for: std::time::Duration,
        cap: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Eviction {
        let idle_ns = u64::try_from(idle_for.as_nanos()).unwrap_or(u64::MAX);
        let mut idle = 0;
        self.map.retain(|id, s| {
            let drop = s.is_idle(now) && now.saturating_sub(s.last_seen) >= idle_ns && !keep(*id);
            idle += usize::from(drop);
            !drop
        });
        self.len.fetch_sub(idle, Ordering::Relaxed);
        let mut e = Eviction {
            idle: idle as u64,
            ..Eviction::default()
        };
        if self.len() > cap {
            let target = cap - cap / 8;
            let mut candidates: Vec<(Nanos, u64)> = self
                .map
                .iter()
                .filter(|e| e.is_idle(now))
                .map(|e| (e.last_seen, *e.key()))
                .collect();
            candidates.retain(|(_, id)| !keep(*id));
            let excess = self.len().saturating_sub(target).min(candidates.len());
            if excess > 0 {
                candidates.select_nth_unstable(excess - 1);
                for (_, id) in &candidates[..excess] {
                    // Re-checked under the entry's lock: it may have been
                    // used since it was listed.
                    if self.map.remove_if(id, |_, s| s.is_idle(now)).is_some() {
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        e.over_cap += 1;
                    }
                }
            }
            e.kept_over_cap = self.len().saturating_sub(cap) as u64;
        }
        e
    }
}

/// What one eviction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Dropped for idleness.
    pub idle: u64,
    /// Dropped to get under the cap.
    pub over_cap: u64,
    /// Left over the cap because dropping them would forgive something.
    pub kept_over_cap: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gcra::Rate;

    #[test]
    fn over_the_cap_owed_or_kept_state_stays() {
        let store = AccountStore::default();
        let rate = Rate::per_minute(60, 10);
        let sec = 1_000_000_000;
        // 1..=10 owe (used their bucket at t=0), 11..=20 were idle long ago,
        // 21 carries evidence.
        for id in 1..=10 {
            store.with(id, 0, |s| s.output.charge(&rate, 1_000, 0));
        }
        for id in 11..=21 {
            store.with(id, 0, |_| ());
        }
        // The count is kept, not walked: a known account adds nothing.
        store.with(5, 0, |_| ());
        assert_eq!((store.len(), store.map.len()), (21, 21));
        let e = store.evict(10 * sec, std::time::Duration::from_secs(3600), 8, |id| {
            id == 21
        });
        // Only the idle, unkept ones go; the cap cannot be met.
        assert_eq!(e.over_cap, 10);
        assert_eq!(e.kept_over_cap, 3);
        for id in 1..=10 {
            assert!(store.contains(id), "account {id} owed and was dropped");
        }
        assert!(store.contains(21));
        assert_eq!((store.len(), store.map.len()), (11, 11));
    }

    #[test]
    fn idle_state_with_evidence_stays_until_the_evidence_is_gone() {
        let store = AccountStore::default();
        let sec = 1_000_000_000;
        for id in 1..=3 {
            store.with(id, 0, |_| ());
        }
        // Long idle, under the cap: only 2 carries evidence.
        let e = store.evict(7200 * sec, std::time::Duration::from_secs(600), 100, |id| {
            id == 2
        });
        assert_eq!(e.idle, 2);
        assert!(store.contains(2) && !store.contains(1) && !store.contains(3));
        assert_eq!((store.len(), store.map.len()), (1, 1));
        // Its evidence has decayed: it goes at the next pass.
        let e = store.evict(7300 * sec, std::time::Duration::from_secs(600), 100, |_| {
            false
        });
        assert_eq!(e.idle, 1);
        assert_eq!(store.len(), 0);
    }
}
