//! The linker: observes requests, links accounts and answers cluster queries.

use super::*;

mod candidates;
mod contacts;

pub(in crate::engine::link) use candidates::*;
use contacts::*;

/// Links accounts that share fingerprints into clusters; see `docs/link.md` for the design.
#[derive(Debug)]
pub struct Linker {
    policy: LinkPolicy,
    pub(super) compiled: Compiled,
    pub(super) index: Index,
    live: Forest,
    cur: Forest,
    gen_start: Option<Nanos>,
    last_now: Nanos,
    links_dropped_total: u64,
    rotations_total: u64,
    keys: Vec<KeyJob>,
    found: Found,
    cands: Candidates,
    band_flags: Vec<u8>,
    changes: LinkChanges,
    /// Rules under which the last [`Linker::observe`] found another account within the window.
    shared: u32,
    /// The last [`RECENT_LINKS`] links made, a ring (`recent_next` is the slot written next once it is full).
    recent: Vec<LinkEdge>,
    recent_next: usize,
    /// Requests observed, and the time of every [`LATE_MARK_EVERY`]th of the last
    /// [`LinkPolicy::late_after_requests`] (oldest first).
    observed: u64,
    marks: VecDeque<Nanos>,
    /// Accounts whose last full gathering (this generation) found only accounts already in their cluster: the hash
    /// of their keys then, and when (docs/link.md, "Accounts already linked"). Cleared at rotation, so it holds
    /// accounts of `cur` only.
    pub(super) settled: FastMap<u64, Settled>,
    /// Accounts found together on a single prompt band alone ([`LinkPolicy::single_band_contacts`]).
    contacts: Contacts,
    single_band_held_total: u64,
    single_band_unrecorded_total: u64,
}

/// See [`Linker::settled`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Settled {
    keys: u64,
    pub(super) at: Nanos,
    /// When the account last recorded itself under these keys, and the rules shared then.
    recorded: Nanos,
    shared: u32,
}

/// What linking changed since it was last drained ([`Linker::changes`]): for whoever keeps state per cluster
/// id and wants it to follow the clusters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkChanges {
    /// Clusters that ended in a merge, in order: `(absorbed, into)`. The absorbed id is gone and its members are in
    /// the cluster `into` (a chain `a → b`, `b → c` arrives in that order).
    pub merges: Vec<(u64, u64)>,
    /// Accounts that were in no cluster and now are: in the requesting account's cluster, as every link of one
    /// [`Linker::observe`] involves that account.
    pub joined: Vec<u64>,
}

impl LinkChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.merges.is_empty() && self.joined.is_empty()
    }

    /// Forget everything (keeps the capacity).
    pub fn clear(&mut self) {
        self.merges.clear();
        self.joined.clear();
    }
}

impl Linker {
    /// A linker with no state yet.
    pub fn new(policy: LinkPolicy) -> Self {
        Linker {
            compiled: Compiled::new(&policy),
            policy,
            index: Index::new(),
            live: Forest::default(),
            cur: Forest::default(),
            gen_start: None,
            last_now: 0,
            links_dropped_total: 0,
            rotations_total: 0,
            keys: Vec::new(),
            found: Found::default(),
            cands: Candidates::new(),
            band_flags: Vec::new(),
            changes: LinkChanges::default(),
            shared: 0,
            recent: Vec::new(),
            recent_next: 0,
            observed: 0,
            marks: VecDeque::new(),
            settled: FastMap::default(),
            contacts: Contacts::default(),
            single_band_held_total: 0,
            single_band_unrecorded_total: 0,
        }
    }

    /// Forget every link, index entry and cluster, as a new linker with the same policy; the running totals
    /// (links dropped, rotations) are kept, so counters exported from them never go back.
    pub fn forget(&mut self) {
        let mut fresh = Linker::new(self.policy.clone());
        fresh.links_dropped_total = self.links_dropped_total;
        fresh.rotations_total = self.rotations_total;
        fresh.single_band_held_total = self.single_band_held_total;
        fresh.single_band_unrecorded_total = self.single_band_unrecorded_total;
        *self = fresh;
    }

    /// The policy in force.
    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
    }

    /// Hot reload: applies a new policy and keeps the index and the clusters. Keys depend on a rule's kinds only,
    /// so a reordered or retuned rule keeps its index entries; a lowered `max_values` or `max_entries` evicts at
    /// once; a lowered `max_linked_accounts` refuses new links until rotation brings the count under it.
    pub fn set_policy(&mut self, policy: LinkPolicy) {
        self.compiled = Compiled::new(&policy);
        self.policy = policy;
        self.settled.clear();
        while self.marks.len() > self.compiled.late_marks {
            self.marks.pop_front();
        }
        while self.index.len > 0
            && (self.index.len > self.compiled.max_values
                || self.index.entries > self.compiled.max_entries)
        {
            self.index
                .evict_one(self.last_now, self.compiled.max_window);
        }
    }

    /// Records one request of `account` and links it to other accounts per the rules; returns the account's
    /// cluster (`None` when it is linked to no one).
    pub fn observe(
        &mut self,
        account: u64,
        attrs: &Attributes<'_>,
        now: Nanos,
    ) -> Option<ClusterView> {
        self.rotate_if_due(now);
        self.index.sweep_step(now, self.compiled.max_window);
        let late_after = self.late_after(now);
        self.collect_keys(attrs);
        self.shared = 0;
        if self.keys.is_empty() {
            return self.cluster_of(account);
        }
        let keys_hash = self.keys_hash();
        // An account already linked that found nothing new a moment ago, with the same keys, only records itself
        // under its keys, and not at all when it did so a moment ago (docs/link.md, "Accounts already linked").
        let settled =
            self.settled.get(&account).copied().filter(|s| {
                s.keys == keys_hash && now >= s.at && now - s.at < self.compiled.refresh
            });
        if let Some(s) = settled {
            if now >= s.recorded && now - s.recorded < self.compiled.record_every {
                self.shared = s.shared;
                self.index.migrate(MIGRATE_STEP * self.keys.len());
                return self.cluster_of(account);
            }
        }
        let gather = settled.is_none();
        self.index.prefetch(&self.keys);
        self.index.prefetch_lists(&self.keys);

        let keys = std::mem::take(&mut self.keys);
        let mut found = std::mem::take(&mut self.found);
        let mut cands = std::mem::take(&mut self.cands);
        cands.reset();
        let max_links = self.compiled.max_links;
        for job in &keys {
            found.items.clear();
            // Without gathering, one other account is enough to know the key is shared.
            found.limit = if gather { max_links } else { 1 };
            let touch = Touch {
                account,
                now,
                window: job.window,
                max_window: self.compiled.max_window,
                per_value: self.compiled.per_value,
                max_values: self.compiled.max_values,
                max_entries: self.compiled.max_entries,
            };
            self.index.touch(job.key, &touch, &mut found);
            if !found.items.is_empty() {
                self.shared |= job.bit;
            }
            if job.signal_only || !gather {
                continue;
            }
            for e in &found.items {
                let late = late_after > 0 && now.saturating_sub(e.seen) > late_after;
                cands.add(e, job, late);
            }
        }
        if gather {
            // Strongest first. A candidate already in the account's component (this generation) only reinforces
            // it; the others are merged in, at most `max_links` of them.
            cands.list.sort_unstable_by(candidate_order);
            let mut merges = 0;
            let mut all_in = cands.list.len() < MAX_CANDIDATES;
            let mut root = self.cur.get(account).map(|i| self.cur.find(i));
            let (min_bands, late_min_bands) =
                (self.compiled.min_bands, self.compiled.late_min_bands);
            let partners = self.compiled.single_band_contacts;
            for c in cands
                .list
                .iter()
                .filter(|c| c.links(min_bands, late_min_bands))
            {
                if self.reinforce(root, c) {
                    continue;
                }
                // One band shared with no one else is a coincidence of phrasing, not yet a link.
                if partners > 1 && c.single_band() {
                    match self.contacts.meet(account, c.account) {
                        Met::Partners(n) if n < partners => {
                            self.single_band_held_total += 1;
                            all_in = false;
                            continue;
                        }
                        Met::Partners(_) => {}
                        Met::Full => self.single_band_unrecorded_total += 1,
                    }
                }
                all_in = false;
                if merges < max_links {
                    self.link(account, c, now);
                    merges += 1;
                    root = self.cur.get(account).map(|i| self.cur.find(i));
                }
            }
            if all_in && root.is_some() {
                let s = Settled {
                    keys: keys_hash,
                    at: now,
                    recorded: now,
                    shared: self.shared,
                };
                self.settled.insert(account, s);
            } else {
                self.settled.remove(&account);
            }
        } else if let Some(s) = self.settled.get_mut(&account) {
            s.recorded = now;
            s.shared = self.shared;
        }
        self.keys = keys;
        self.found = found;
        self.cands = cands;
        self.cluster_of(account)
    }

    /// Counts the request and returns how long ago a request must be to be late: [`LinkPolicy::late_after`], or
    /// less when [`LinkPolicy::late_after_requests`] requests came since (0: nothing is late).
    fn late_after(&mut self, now: Nanos) -> Nanos {
        let (after, marks) = (self.compiled.late_after, self.compiled.late_marks);
        if after == 0 || marks == 0 {
            return after;
        }
        self.observed += 1;
        if self.observed.is_multiple_of(LATE_MARK_EVERY) {
            if self.marks.len() >= marks {
                self.marks.pop_front();
            }
            self.marks.push_back(now);
        }
        match self.marks.front() {
            Some(&oldest) if self.marks.len() == marks => after.min(now.saturating_sub(oldest)),
            _ => after,
        }
    }

    /// The rules (bit `i` for [`LinkPolicy::rules`]`[i]`) under which the last [`Linker::observe`] found another
    /// account within the rule's window, whether or not it linked them (signal-only rules never link).
    pub fn shared_rules(&self) -> u32 {
        self.shared
    }

    /// What linking changed since [`Linker::clear_changes`] (merges of clusters, accounts that joined one). A part
    /// that splits off a cluster at rotation (a fresh id) is not reported: it starts with fresh state. Changes not
    /// cleared are dropped at the next rotation, so they stay bounded.
    pub fn changes(&self) -> &LinkChanges {
        &self.changes
    }

    /// Forget the changes (keeps the buffers).
    pub fn clear_changes(&mut self) {
        self.changes.clear();
    }

    /// The cluster `account` belongs to now, if any.
    pub fn cluster_of(&self, account: u64) -> Option<ClusterView> {
        let i = self.live.get(account)?;
        self.live.view(self.live.find_ro(i))
    }

    /// The cluster with this id, if it still exists.
    pub fn cluster(&self, id: u64) -> Option<ClusterView> {
        self.live.view(self.live.root_of_id(id)?)
    }

    /// Up to `limit` accounts of the cluster `id` (in the order they joined this generation's records); O(accounts),
    /// for the admin API.
    pub fn members(&self, id: u64, limit: usize) -> Vec<u64> {
        let Some(root) = self.live.root_of_id(id) else {
            return Vec::new();
        };
        (0..self.live.nodes.len() as u32)
            .filter(|&i| self.live.find_ro(i) == root)
            .map(|i| self.live.nodes[i as usize].account)
            .take(limit)
            .collect()
    }

    /// Up to `limit` clusters, largest first (then oldest, then by id); O(clusters), for the admin API.
    pub fn clusters(&self, limit: usize) -> Vec<ClusterView> {
        let mut all: Vec<ClusterView> = self
            .live
            .by_id
            .keys()
            .filter_map(|&id| self.cluster(id))
            .collect();
        all.sort_unstable_by(|a, b| {
            b.members
                .cmp(&a.members)
                .then(a.formed_at.cmp(&b.formed_at))
                .then(a.id.cmp(&b.id))
        });
        all.truncate(limit);
        all
    }

    /// The recent links (at most `limit`, newest first, one per pair of accounts) between accounts that are both in
    /// cluster `id` now; for drawing the cluster. Only the last [`RECENT_LINKS`] links made are remembered, and
    /// those older than two generations are left out (they no longer hold anything together). O(remembered links),
    /// for the admin API.
    pub fn cluster_links(&self, id: u64, limit: usize) -> Vec<LinkEdge> {
        let Some(root) = self.live.root_of_id(id) else {
            return Vec::new();
        };
        let oldest = self.last_now.saturating_sub(2 * self.compiled.generation);
        let in_cluster = |a: u64| {
            self.live
                .get(a)
                .is_some_and(|i| self.live.find_ro(i) == root)
        };
        let n = self.recent.len();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        // Newest first: the ring's slot before `recent_next` was written last.
        for k in 1..=n {
            if out.len() >= limit {
                break;
            }
            let e = self.recent[(self.recent_next + n - k) % n];
            if e.at < oldest {
                continue;
            }
            let pair = (e.from.min(e.to), e.from.max(e.to));
            if seen.contains(&pair) || !in_cluster(e.from) || !in_cluster(e.to) {
                continue;
            }
            seen.insert(pair);
            out.push(e);
        }
        out
    }

    /// Rotates generations when due and drops every expired index entry (O(values)). `observe` rotates and sweeps
    /// incrementally by itself, so calling this is optional: it drains the index when traffic stops.
    pub fn maintain(&mut self, now: Nanos) {
        self.rotate_if_due(now);
        self.index.sweep_full(now, self.compiled.max_window);
        self.index.release_stale_spare(now);
    }

    /// The length of the index table that its next growth needs, when that growth is near and nothing is ready
    /// for it: for an owner that can make it ([`SpareTable::prepare`]) with the linker unlocked and hand it over
    /// ([`Linker::give_spare`]). Otherwise the growth makes its table itself, with the linker locked.
    pub fn spare_wanted(&self) -> Option<usize> {
        self.index.spare_wanted(self.compiled.max_values)
    }

    /// Keeps `spare` for the index's next growth, if it is still of the size that growth needs.
    pub fn give_spare(&mut self, spare: SpareTable) {
        self.index.give_spare(spare, self.last_now);
    }

    /// Begins giving back the room of spill blocks freed since the last time, once they span a quarter of the index's
    /// arena of short lists (and gives back freed long lists' vectors, O(those)): lists that grew long, or keys that
    /// went, leave blocks that only new short lists would reuse. The short lists move into a new arena in steps
    /// ([`Linker::compact_step`], [`Linker::finish_compaction`]): moving them all at once walks the whole table,
    /// about 0.2 s at the default `max_index_values`, with every request that links waiting on the
    /// linker. [`Linker::maintain`] compacts too. A spare table given ten minutes ago and still unused goes too;
    /// none is asked for again until the keys grow by 1/32 of the table.
    pub fn compact(&mut self) {
        self.index.begin_compaction();
        self.index.release_stale_spare(self.last_now);
    }

    /// Moves the spill lists of the next [`COMPACT_STEP_SLOTS`] slots of a compaction under way.
    pub fn compact_step(&mut self) -> CompactStep {
        let (more, spent) = self.index.compact_step(COMPACT_STEP_SLOTS);
        CompactStep {
            more,
            _spent: spent,
        }
    }

    /// Whether a compaction has spill lists left to move.
    pub fn compacting(&self) -> bool {
        self.index.compacting()
    }

    /// Moves every spill list left to move (O(values)), unless a growth of the table is under way (its end lets
    /// the steps go on).
    pub fn finish_compaction(&mut self) {
        self.index.finish_compaction();
    }

    /// Counters and sizes for metrics.
    pub fn stats(&self) -> LinkStats {
        let scratch = self.keys.capacity() * size_of::<KeyJob>()
            + self.found.items.capacity() * size_of::<Entry>()
            + self.cands.list.capacity() * size_of::<Candidate>()
            + self.cands.table.capacity() * size_of::<(u64, u32, u32)>()
            + self.band_flags.capacity()
            + self.compiled.rules.capacity() * size_of::<CompiledRule>()
            + map_bytes(&self.compiled.flags)
            + self.recent.capacity() * size_of::<LinkEdge>()
            + self.marks.capacity() * size_of::<Nanos>()
            + map_bytes(&self.settled)
            + self.contacts.bytes();
        LinkStats {
            values: self.index.len,
            entries: self.index.entries,
            accounts: self.live.nodes.len(),
            clusters: self.live.nodes.len() - self.live.unions,
            evicted_total: self.index.evicted_total,
            evicted_age: self.index.evicted_age,
            expired_total: self.index.expired_total,
            links_dropped_total: self.links_dropped_total,
            single_band_held_total: self.single_band_held_total,
            single_band_unrecorded_total: self.single_band_unrecorded_total,
            rotations_total: self.rotations_total,
            approx_bytes: self.index.bytes() + self.live.bytes() + self.cur.bytes() + scratch,
            mapped_bytes: self.index.mapped_bytes(),
        }
    }

    fn rotate_if_due(&mut self, now: Nanos) {
        self.last_now = self.last_now.max(now);
        let generation = self.compiled.generation;
        let Some(start) = self.gen_start else {
            self.gen_start = Some(now);
            return;
        };
        if now < start || now - start < generation {
            return;
        }
        let due = (now - start) / generation;
        self.changes.clear();
        for _ in 0..due.min(2) {
            std::mem::swap(&mut self.live, &mut self.cur);
            self.cur.clear(self.live.nodes.len());
            self.live.resolve_dups(now);
            self.contacts.rotate();
            self.rotations_total += 1;
        }
        self.settled.clear();
        self.gen_start = Some(start + due * generation);
    }

    /// Fills `self.keys` with the index keys of the rules that apply to `attrs`.
    fn collect_keys(&mut self, attrs: &Attributes<'_>) {
        self.keys.clear();
        let c = &self.compiled;
        let mut values = [None; 7];
        let mut flags = [0u8; 7];
        for kind in AttrKind::ALL {
            if let Some(v) = attrs.scalar(kind) {
                values[kind as usize] = Some(v);
                flags[kind as usize] = c.flag(kind, v);
            }
        }
        let bands = &attrs.prompt[..attrs.prompt.len().min(MAX_PROMPT_KEYS)];
        self.band_flags.clear();
        if c.uses_prompt && !c.flags.is_empty() {
            self.band_flags
                .extend(bands.iter().map(|&b| c.flag(AttrKind::Prompt, b)));
        }
        'rules: for rule in &c.rules {
            let mut h = rule.seed;
            let mut downs = 0u8;
            for &kind in &rule.scalars[..rule.n_scalars] {
                let Some(v) = values[kind as usize] else {
                    continue 'rules;
                };
                let f = flags[kind as usize];
                if f & IGNORED != 0 {
                    continue 'rules;
                }
                downs += u8::from(f & DOWN != 0);
                h = murmur3_combine(h, v);
            }
            if !rule.prompt {
                let strength = rule.strength.saturating_sub(downs);
                if strength > 0 {
                    self.keys.push(KeyJob {
                        key: murmur3_fmix64(h).max(1),
                        strength,
                        window: rule.window,
                        bit: rule.bit,
                        signal_only: rule.signal_only,
                        band: NO_BAND,
                    });
                }
                continue;
            }
            for (i, &band) in bands.iter().enumerate() {
                let f = self.band_flags.get(i).copied().unwrap_or(0);
                // 0: no key (a prompt region of stock phrases only).
                if band == 0 || f & IGNORED != 0 {
                    continue;
                }
                let strength = rule
                    .strength
                    .saturating_sub(downs + u8::from(f & DOWN != 0));
                if strength > 0 {
                    self.keys.push(KeyJob {
                        key: murmur3_combine(h, band).max(1),
                        strength,
                        window: rule.window,
                        bit: rule.bit,
                        signal_only: rule.signal_only,
                        band: if rule.prompt_only { i as u8 } else { NO_BAND },
                    });
                }
            }
        }
    }

    /// A hash of the request's keys as linking uses them (key, strength, rule, band).
    fn keys_hash(&self) -> u64 {
        self.keys.iter().fold(0, |h, job| {
            let how = u64::from(job.strength) | u64::from(job.band) << 8 | u64::from(job.bit) << 16;
            murmur3_combine(murmur3_combine(h, job.key), how)
        })
    }

    /// When `c` is already in the component `root` of `cur` (so in the same component of `live` too), adds the
    /// link's strength and rule to both components' roots and returns true: a union would change nothing else.
    fn reinforce(&mut self, root: Option<u32>, c: &Candidate) -> bool {
        let (Some(root), Some(ic)) = (root, self.cur.get(c.account)) else {
            return false;
        };
        if self.cur.find(ic) != root {
            return false;
        }
        let account = self.cur.nodes[root as usize].account;
        let live_root = self.live.get(account).map(|i| self.live.find(i));
        for (forest, r) in [(&mut self.cur, Some(root)), (&mut self.live, live_root)] {
            if let Some(r) = r {
                let n = &mut forest.nodes[r as usize];
                n.strength = n.strength.max(c.strength);
                n.rules |= c.rules;
            }
        }
        true
    }

    fn link(&mut self, account: u64, c: &Candidate, now: Nanos) {
        if account == c.account {
            return;
        }
        let need = usize::from(self.live.get(account).is_none())
            + usize::from(self.live.get(c.account).is_none());
        if need > 0 && self.live.nodes.len() + need > self.compiled.max_linked {
            self.links_dropped_total += 1;
            return;
        }
        for a in [account, c.account] {
            if self.live.get(a).is_none() {
                self.changes.joined.push(a);
            }
        }
        let id = self.live.link_live(
            (account, c.account),
            c.strength,
            c.rules,
            now,
            &mut self.changes.merges,
        );
        self.cur
            .link_adopt(account, c.account, c.strength, c.rules, id);
        let edge = LinkEdge {
            from: account,
            to: c.account,
            rules: c.rules,
            strength: Strength::from_level(c.strength).unwrap_or(Strength::Weak),
            at: now,
        };
        if self.recent.len() < RECENT_LINKS {
            self.recent.push(edge);
        } else {
            self.recent[self.recent_next] = edge;
            self.recent_next = (self.recent_next + 1) % RECENT_LINKS;
        }
    }
}
