//! Budget state of accounts and of clusters: budget cells, requests in
//! flight, first/last seen. A sharded map (dashmap) keyed by account or
//! cluster id; bounded by idle eviction and a hard cap (longest-idle dropped
//! first).

use std::hash::{BuildHasherDefault, Hasher};

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
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Spread the bits so dashmap's shard selection (high bits) and the
        // table's bucket selection (low bits) both vary.
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = DashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// All accounts' (or clusters') state.
#[derive(Default)]
pub struct AccountStore {
    map: IdMap<AccountState>,
}

impl AccountStore {
    /// Run `f` on the account's state, creating it if new; updates
    /// `last_seen`.
    pub fn with<R>(&self, id: u64, now: Nanos, f: impl FnOnce(&mut AccountState) -> R) -> R {
        let mut entry = self.map.entry(id).or_insert_with(|| AccountState {
            first_seen: now,
            ..AccountState::default()
        });
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
        self.map.len()
    }

    /// Whether no account is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drop state idle for longer than `idle_for` and owing nothing; then,
    /// while more than `cap` remain, the longest-idle (not in flight) down
    /// to 7/8 of the cap. Returns (idle evictions, cap evictions).
    pub fn evict(&self, now: Nanos, idle_for: std::time::Duration, cap: usize) -> (u64, u64) {
        let idle_ns = u64::try_from(idle_for.as_nanos()).unwrap_or(u64::MAX);
        let before = self.map.len();
        self.map
            .retain(|_, s| !(s.is_idle(now) && now.saturating_sub(s.last_seen) >= idle_ns));
        let idle = before.saturating_sub(self.map.len()) as u64;
        let mut over_cap = 0u64;
        if self.map.len() > cap {
            let target = cap - cap / 8;
            let mut seen: Vec<(Nanos, u64)> = self
                .map
                .iter()
                .filter(|e| e.in_flight == 0)
                .map(|e| (e.last_seen, *e.key()))
                .collect();
            let excess = self.map.len().saturating_sub(target).min(seen.len());
            if excess > 0 {
                seen.select_nth_unstable(excess - 1);
                for (_, id) in &seen[..excess] {
                    if self.map.remove(id).is_some() {
                        over_cap += 1;
                    }
                }
            }
        }
        (idle, over_cap)
    }
}
