//! The attribute index: one open-addressing table from index key to the accounts seen under it
//! (docs/link.md, "Rules and index keys").

use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};
use memmap2::MmapMut;

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// Attribute index

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub(super) struct Entry {
    pub(super) account: u64,
    pub(super) seen: Nanos,
}

/// One table slot, 32 bytes so that two share a cache line and none straddles two. `key == 0` marks it empty (keys
/// are forced non-zero). `first` is always the most recently seen entry of the key; the others, if any, are the
/// spill list `spill` (oldest first). All zeros is an empty slot, so a fresh mapping is an empty table.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
#[repr(C, align(32))]
pub(super) struct Slot {
    pub(super) key: u64,
    pub(super) first: Entry,
    pub(super) spill: SpillRef,
}

/// The slot table's memory. A large table is probed at random: every probe misses the cache and, on 4 KiB pages,
/// the TLB as well, whose page walk misses the cache again once the table outgrows what the cached page-table
/// lines cover (a table of 2²³ slots is 256 MiB, 65 536 pages). So a table from [`HUGE_TABLE_BYTES`] on has a
/// mapping of its own, advised onto transparent huge pages (honoured in the kernel's `madvise` and `always` modes): 128
/// pages of 2 MiB, which the TLB holds. Smaller tables, and a table whose mapping fails, stay on the heap; where the
/// kernel has huge pages off, the advice is refused and the mapping works on small pages.
pub(super) enum Slots {
    Heap(Vec<Slot>),
    Mapped(MmapMut),
}

/// Tables of at least this many bytes are mapped on their own (two huge pages).
pub(super) const HUGE_TABLE_BYTES: usize = 4 << 20;

impl Slots {
    /// `len` empty slots.
    fn new(len: usize) -> Slots {
        let bytes = len * size_of::<Slot>();
        if bytes >= HUGE_TABLE_BYTES {
            if let Ok(map) = MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Slots::Mapped(map);
            }
        }
        Slots::Heap(vec![Slot::default(); len])
    }

    /// `len` empty slots whose pages are all in memory already: a mapping's pages are otherwise faulted in by the
    /// first write to each, during the resize, with the linker locked. On huge pages a fault may wait for the
    /// kernel to compact memory: a table of 2²³ slots took up to half a second to fault in on this project's
    /// machine (BENCHMARKS.md, "The index grows off the request path").
    fn prefaulted(len: usize) -> Slots {
        let mut slots = Slots::new(len);
        if let Slots::Mapped(m) = &mut slots {
            // Writing the zero each page holds allocates it (reading would map the shared zero page).
            for page in m.chunks_mut(4096) {
                page[0] = 0;
            }
        }
        slots
    }
}

/// A slot table of the next size, made ready off the request path ([`Index::spare_wanted`]).
pub struct SpareTable(pub(super) Slots);

impl SpareTable {
    /// An empty table of `len` slots (as [`Linker::spare_wanted`] asks), its memory faulted in. Slow (up to
    /// hundreds of milliseconds for the largest tables): call it with no lock held.
    pub fn prepare(len: usize) -> SpareTable {
        SpareTable(Slots::prefaulted(len))
    }
}

impl fmt::Debug for SpareTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Deref for Slots {
    type Target = [Slot];

    fn deref(&self) -> &[Slot] {
        match self {
            Slots::Heap(v) => v,
            // A mapping is page-aligned and its length a multiple of the slot's size: the cast cannot fail.
            Slots::Mapped(m) => bytemuck::cast_slice(m),
        }
    }
}

impl DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        match self {
            Slots::Heap(v) => v,
            Slots::Mapped(m) => bytemuck::cast_slice_mut(m),
        }
    }
}

impl fmt::Debug for Slots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Slots::Heap(_) => "heap",
            Slots::Mapped(_) => "mapped",
        };
        write!(f, "Slots({} {kind})", self.len())
    }
}

/// What one key lookup needs to know.
#[derive(Clone, Copy, Debug)]
pub(super) struct Touch {
    pub(super) account: u64,
    pub(super) now: Nanos,
    pub(super) window: Nanos,
    pub(super) max_window: Nanos,
    pub(super) per_value: usize,
    pub(super) max_values: usize,
    pub(super) max_entries: usize,
}

#[derive(Debug)]
pub(super) struct Index {
    pub(super) slots: Slots,
    pub(super) len: usize,
    pub(super) entries: usize,
    /// Entry lists of keys with more than one account.
    pub(super) spills: Spills,
    hand: usize,
    sweep: usize,
    pub(super) evicted_total: u64,
    pub(super) expired_total: u64,
    /// See [`LinkStats::evicted_age`].
    pub(super) evicted_age: Nanos,
    /// The next table, made ready by the owner ([`Index::spare_wanted`]), and when it was given; the next growth
    /// takes it.
    spare: Option<(Slots, Nanos)>,
    /// The key count when a spare was last given back unused ([`Index::release_stale_spare`]): none is asked for
    /// again until the keys have grown by 1/32 of the table from there.
    spare_declined_at: Option<usize>,
    /// The table a growth into a ready spare left behind, with keys not yet moved into `slots`. Each touch moves
    /// [`MIGRATE_STEP`] of its slots, in order, and the touched key if it is still here; every key is in exactly
    /// one of the two tables.
    pub(super) old: Option<Slots>,
    /// Slots of `old` before this one are empty.
    pub(super) drained: usize,
}

/// Where `key` is in `slots` (`Ok`), or the empty slot that ends its probe (`Err`).
#[inline]
pub(super) fn probe_in(slots: &[Slot], key: u64) -> Result<usize, usize> {
    let mask = slots.len() - 1;
    let mut i = key as usize & mask;
    loop {
        let k = slots[i].key;
        if k == key {
            return Ok(i);
        }
        if k == 0 {
            return Err(i);
        }
        i = (i + 1) & mask;
    }
}

/// Empties the slot at `i` and shifts the following run back over the hole, so that every key left is still
/// found from its home; returns what the slot held.
fn take_at(slots: &mut [Slot], i: usize) -> Slot {
    let taken = std::mem::take(&mut slots[i]);
    let mask = slots.len() - 1;
    let mut hole = i;
    let mut j = (i + 1) & mask;
    loop {
        let k = slots[j].key;
        if k == 0 {
            break;
        }
        let home = k as usize & mask;
        if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
            slots.swap(hole, j);
            hole = j;
        }
        j = (j + 1) & mask;
    }
    taken
}

/// Puts `s`, whose key `slots` does not hold, at the end of its key's probe.
fn place(slots: &mut [Slot], s: Slot) {
    let mask = slots.len() - 1;
    let mut i = s.key as usize & mask;
    while slots[i].key != 0 {
        i = (i + 1) & mask;
    }
    slots[i] = s;
}

/// Where `account` is in `s`. In a full list (a hydra's key) the account is usually not there, having been pushed
/// out since its last request: the whole list is compared, eight entries at a time with no branch inside.
fn position_in(s: &[Entry], account: u64) -> Option<usize> {
    let mut from = 0;
    for chunk in s.chunks_exact(8) {
        if chunk
            .iter()
            .fold(false, |any, e| any | (e.account == account))
        {
            break;
        }
        from += 8;
    }
    let rest = s.get(from..).unwrap_or_default();
    rest.iter()
        .position(|e| e.account == account)
        .map(|j| from + j)
}

impl Index {
    pub(super) fn new() -> Self {
        Index {
            slots: Slots::new(MIN_TABLE),
            len: 0,
            entries: 0,
            spills: Spills::default(),
            hand: 0,
            sweep: 0,
            evicted_total: 0,
            expired_total: 0,
            evicted_age: 0,
            spare: None,
            spare_declined_at: None,
            old: None,
            drained: 0,
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where `key` is in the table (`Ok`), or where it would go (`Err`). A key still in the table a growth left
    /// behind is not seen here.
    #[inline]
    pub(super) fn probe(&self, key: u64) -> Result<usize, usize> {
        probe_in(&self.slots, key)
    }

    /// Touches the home slot of every key, and the next one (which may sit on the next cache line), so that their
    /// cache misses overlap before the real lookups.
    pub(super) fn prefetch(&self, keys: &[KeyJob]) {
        let mask = self.mask();
        let mut acc = 0u64;
        for job in keys {
            let home = job.key as usize & mask;
            acc ^= self.slots[home].key ^ self.slots[(home + 1) & mask].key;
        }
        std::hint::black_box(acc);
    }

    /// Touches the oldest and the newest entry of every key's list (a list lives apart from its slot, so reading it
    /// is a cache miss of its own), once [`Index::prefetch`] has brought the slots in: the lists' misses overlap too.
    pub(super) fn prefetch_lists(&self, keys: &[KeyJob]) {
        let mut acc = 0u64;
        for job in keys {
            if let Ok(i) = self.probe(job.key) {
                let list = self.spills.get(self.slots[i].spill);
                if let (Some(a), Some(b)) = (list.first(), list.last()) {
                    acc ^= a.seen ^ b.seen;
                }
            }
        }
        std::hint::black_box(acc);
    }

    /// Records `t.account` under `key` and adds the other accounts seen within `t.window` to `out`, newest first.
    pub(super) fn touch(&mut self, key: u64, t: &Touch, out: &mut Found) {
        if self.old.is_some() {
            self.migrate(MIGRATE_STEP);
        }
        match self.probe(key) {
            Ok(i) => self.update(i, t, out),
            Err(i) => match self.take_old(key) {
                // Moved to the end of its probe in the new table, where `probe` found room.
                Some(s) => {
                    self.slots[i] = s;
                    self.update(i, t, out);
                }
                None => self.insert_new(key, t),
            },
        }
    }

    /// Moves the next `steps` slots of the table a growth left behind into the current one (empty ones count as
    /// steps too), and drops it once it is empty.
    pub(super) fn migrate(&mut self, steps: usize) {
        let Index {
            slots,
            old,
            drained,
            ..
        } = self;
        let Some(from) = old.as_mut() else {
            return;
        };
        for _ in 0..steps {
            let Some(s) = from.get(*drained) else {
                *old = None;
                *drained = 0;
                return;
            };
            if s.key != 0 {
                place(slots, take_at(from, *drained));
            }
            // The shift may have brought a later key into this slot: it is looked at again.
            if from.get(*drained).is_some_and(|s| s.key == 0) {
                *drained += 1;
            }
        }
    }

    /// Moves whatever is left of the table a growth left behind (before a growth or a full sweep).
    fn finish_migration(&mut self) {
        // No step limit: it returns once the old table is empty and dropped.
        self.migrate(usize::MAX);
    }

    /// Takes `key`'s slot out of the table a growth left behind, if it is there.
    fn take_old(&mut self, key: u64) -> Option<Slot> {
        let old = self.old.as_mut()?;
        let i = probe_in(old, key).ok()?;
        Some(take_at(old, i))
    }

    fn insert_new(&mut self, key: u64, t: &Touch) {
        let full = |ix: &Index| ix.len >= t.max_values || ix.entries >= t.max_entries;
        if full(self) && self.old.is_none() {
            self.evict_near(key as usize & self.mask(), t.now, t.max_window);
        }
        while full(self) && self.len > 0 {
            self.evict_one(t.now, t.max_window);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let i = match self.probe(key) {
            Ok(i) | Err(i) => i,
        };
        self.slots[i] = Slot {
            key,
            first: Entry {
                account: t.account,
                seen: t.now,
            },
            ..Slot::default()
        };
        self.len += 1;
        self.entries += 1;
    }

    fn update(&mut self, i: usize, t: &Touch, out: &mut Found) {
        let mut slot = self.slots[i];
        let me = Entry {
            account: t.account,
            seen: t.now,
        };
        let first = slot.first;
        if t.now.saturating_sub(first.seen) > t.max_window {
            // The newest entry has expired, so all have: start the list afresh.
            self.entries -= slot.spill.len();
            self.spills.free(slot.spill);
            self.slots[i].first = me;
            self.slots[i].spill = SpillRef::NONE;
            return;
        }
        // Candidates, newest first: the list is ordered by recency, so this stops after `out.limit` or at the
        // first entry outside the window.
        if first.account != t.account && t.now.saturating_sub(first.seen) <= t.window {
            out.items.push(first);
        }
        let mut list = slot.spill;
        if !list.is_some() {
            if first.account == t.account {
                self.slots[i].first.seen = first.seen.max(t.now);
            } else if t.per_value > 1 && self.entries < t.max_entries {
                slot.spill = self.spills.push(list, first);
                slot.first = me;
                self.entries += slot.spill.len();
                self.slots[i] = slot;
            } else {
                self.slots[i].first = me;
            }
            return;
        }
        let before = list.len();
        let v = self.spills.get(list);
        for e in v.iter().rev() {
            if out.items.len() >= out.limit || t.now.saturating_sub(e.seen) > t.window {
                break;
            }
            if e.account != t.account {
                out.items.push(*e);
            }
        }
        // Expired entries are at the front.
        let expired = v
            .iter()
            .take_while(|e| t.now.saturating_sub(e.seen) > t.max_window)
            .count();
        list = self.spills.drop_front(list, expired);
        // At the entries cap a list does not grow: it keeps its length, as a full one does.
        let at_cap = self.entries + list.len() - before >= t.max_entries;
        if first.account == t.account {
            slot.first.seen = first.seen.max(t.now);
        } else {
            // The account moves to the front (`first`), the old first becomes the newest of the rest.
            match position_in(self.spills.get(list), t.account) {
                Some(j) => list = self.spills.remove(list, j),
                None => {
                    if 1 + list.len() >= t.per_value || (at_cap && list.len() > 0) {
                        list = self.spills.drop_front(list, 1);
                    }
                }
            }
            list = self.spills.push(list, first);
            slot.first = me;
        }
        // `first` is one entry before and after: only the list's length changes the count.
        self.entries = self.entries + list.len() - before;
        if list.len() == 0 {
            self.spills.free(list);
            list = SpillRef::NONE;
        }
        slot.spill = list;
        self.slots[i] = slot;
    }

    /// Frees the slot at `i` (its entries with it) and shifts the following run back over the hole.
    fn remove_at(&mut self, i: usize) {
        let s = take_at(&mut self.slots, i);
        self.forget(s);
    }

    /// Counts out a slot taken from a table, and frees its entries.
    fn forget(&mut self, s: Slot) {
        self.spills.free(s.spill);
        self.len -= 1;
        self.entries -= 1 + s.spill.len();
    }

    /// Evicts the least recently used of the occupied slots among the `NEAR_SAMPLE` from `home` (the insertion
    /// point, whose cache lines the probe has just loaded): sampled LRU whose sample costs little memory traffic.
    /// Nothing is evicted when they are all empty.
    fn evict_near(&mut self, home: usize, now: Nanos, max_window: Nanos) {
        let mask = self.mask();
        let mut best: Option<(usize, Nanos)> = None;
        for k in 0..NEAR_SAMPLE {
            let i = (home + k) & mask;
            let s = &self.slots[i];
            if s.key != 0 && best.is_none_or(|(_, newest)| s.first.seen < newest) {
                best = Some((i, s.first.seen));
            }
        }
        if let Some((at, newest)) = best {
            self.count_eviction(now, newest, max_window);
            self.remove_at(at);
        }
    }

    fn count_eviction(&mut self, now: Nanos, newest: Nanos, max_window: Nanos) {
        if now.saturating_sub(newest) > max_window {
            self.expired_total += 1;
        } else {
            self.evicted_total += 1;
            // A moving average: one sampled eviction's age is noisy.
            let age = now.saturating_sub(newest);
            self.evicted_age = if self.evicted_age == 0 {
                age
            } else {
                self.evicted_age - self.evicted_age / AGE_WEIGHT + age / AGE_WEIGHT
            };
        }
    }

    /// Evicts the least recently used of a few sampled slots. While a growth's old table is being drained, its next
    /// key goes instead: no key left there has been touched since the growth, and every key in the new table has
    /// been touched or moved since.
    pub(super) fn evict_one(&mut self, now: Nanos, max_window: Nanos) {
        if self.len == 0 || self.evict_old(now, max_window) {
            return;
        }
        let mask = self.mask();
        let mut i = self.hand & mask;
        let mut best: Option<(usize, Nanos)> = None;
        let mut sampled = 0;
        for _ in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.key != 0 {
                if best.is_none_or(|(_, newest)| s.first.seen < newest) {
                    best = Some((i, s.first.seen));
                }
                sampled += 1;
                if sampled == EVICT_SAMPLE {
                    break;
                }
            }
            i = (i + 1) & mask;
        }
        self.hand = (i + 1) & mask;
        if let Some((at, newest)) = best {
            self.count_eviction(now, newest, max_window);
            self.remove_at(at);
        }
    }

    /// Evicts the next key of the table a growth left behind; false when there is none left.
    fn evict_old(&mut self, now: Nanos, max_window: Nanos) -> bool {
        loop {
            let Some(old) = self.old.as_mut() else {
                return false;
            };
            match old.get(self.drained) {
                None => {
                    self.old = None;
                    self.drained = 0;
                    return false;
                }
                Some(s) if s.key == 0 => self.drained += 1,
                Some(s) => {
                    let newest = s.first.seen;
                    let s = take_at(old, self.drained);
                    self.count_eviction(now, newest, max_window);
                    self.forget(s);
                    return true;
                }
            }
        }
    }

    /// Drops a few slots whose entries have all expired.
    pub(super) fn sweep_step(&mut self, now: Nanos, max_window: Nanos) {
        for _ in 0..SWEEP_STEP {
            let i = self.sweep & self.mask();
            let s = &self.slots[i];
            if s.key != 0 && now.saturating_sub(s.first.seen) > max_window {
                self.remove_at(i);
                self.expired_total += 1;
            } else {
                self.sweep = (i + 1) & self.mask();
            }
        }
    }

    /// Drops every expired entry and slot, then shrinks a sparse table and releases idle spill lists.
    pub(super) fn sweep_full(&mut self, now: Nanos, max_window: Nanos) {
        self.finish_migration();
        let mut i = 0;
        while i < self.slots.len() {
            let s = self.slots[i];
            if s.key == 0 {
                i += 1;
                continue;
            }
            if now.saturating_sub(s.first.seen) > max_window {
                self.remove_at(i);
                self.expired_total += 1;
                continue;
            }
            if s.spill.is_some() {
                let mut list = s.spill;
                self.entries -= self
                    .spills
                    .retain(&mut list, |e| now.saturating_sub(e.seen) <= max_window);
                if list.len() == 0 {
                    self.spills.free(list);
                    list = SpillRef::NONE;
                }
                self.slots[i].spill = list;
            }
            i += 1;
        }
        if self.slots.len() > MIN_TABLE && self.len * 8 < self.slots.len() {
            self.resize(MIN_TABLE.max((self.len * 2).next_power_of_two()));
        }
        self.spills.compact(&mut self.slots);
    }

    /// Begins giving back the spill arena's freed room ([`Spills::begin_compaction`]); [`Index::compact_step`] moves
    /// the lists.
    pub(super) fn begin_compaction(&mut self) {
        self.spills.begin_compaction();
    }

    /// Moves every spill list left to move; not while a growth's old table still holds keys.
    pub(super) fn finish_compaction(&mut self) {
        if self.old.is_none() {
            self.spills.finish_compaction(&mut self.slots);
        }
    }

    /// Whether a compaction has spill lists left to move.
    pub(super) fn compacting(&self) -> bool {
        self.spills.compacting()
    }

    /// Moves the spill lists of at most `budget` slots for a compaction under way ([`Spills::compact_step`]); not
    /// while a growth's old table still holds keys. Returns whether lists are left to move, and the emptied arena
    /// once none is.
    pub(super) fn compact_step(&mut self, budget: usize) -> (bool, Moving) {
        if self.old.is_some() {
            return (self.spills.compacting(), Moving::default());
        }
        self.spills.compact_step(&mut self.slots, budget)
    }

    /// The length of the table the next growth needs, when that growth is near (the table more than
    /// [`SPARE_LOAD`] full), possible (`max_values` keys would need it) and large enough to be mapped, and no
    /// spare is ready for it: for an owner to make ([`SpareTable::prepare`]) off the request path and hand over
    /// ([`Index::give_spare`]).
    pub(super) fn spare_wanted(&self, max_values: usize) -> Option<usize> {
        let (slots, next) = (self.slots.len(), self.slots.len() * 2);
        let near = self.len * SPARE_LOAD.1 > slots * SPARE_LOAD.0;
        let possible = max_values * 4 > slots * 3;
        let mapped = next * size_of::<Slot>() >= HUGE_TABLE_BYTES;
        let ready = self.spare.as_ref().is_some_and(|s| s.0.len() == next);
        let declined = self
            .spare_declined_at
            .is_some_and(|at| self.len < at + slots / 32);
        let migrating = self.old.is_some();
        (near && possible && mapped && !ready && !declined && !migrating).then_some(next)
    }

    /// Keeps `spare` for the next growth if it is of the size that growth needs (it may have been made for a
    /// table that has shrunk or grown since).
    pub(super) fn give_spare(&mut self, spare: SpareTable, now: Nanos) {
        if spare.0.len() == self.slots.len() * 2 {
            self.spare = Some((spare.0, now));
        }
    }

    /// Gives back a spare unused for [`SPARE_KEEP`]: keys that hold steady between [`SPARE_LOAD`] and the growth
    /// would otherwise keep a table twice the index's size for nothing.
    pub(super) fn release_stale_spare(&mut self, now: Nanos) {
        if self
            .spare
            .as_ref()
            .is_some_and(|s| now.saturating_sub(s.1) > SPARE_KEEP)
        {
            self.spare = None;
            self.spare_declined_at = Some(self.len);
        }
    }

    /// Doubles the table. Into a spare made ready ahead, the keys move over the touches that follow
    /// ([`Index::touch`]), so that no one request pays for the whole rehash (tens of milliseconds for millions of
    /// keys, with the linker locked); otherwise all at once.
    fn grow(&mut self) {
        self.finish_migration();
        let new_len = self.slots.len() * 2;
        match self.spare.take() {
            Some((table, _)) if table.len() == new_len => {
                self.spare_declined_at = None;
                self.old = Some(std::mem::replace(&mut self.slots, table));
                self.drained = 0;
                self.hand &= new_len - 1;
                self.sweep &= new_len - 1;
            }
            _ => self.resize(new_len),
        }
    }

    /// Moves every key into a new table of `new_len` slots at once.
    fn resize(&mut self, new_len: usize) {
        self.spare_declined_at = None;
        let old = std::mem::replace(&mut self.slots, Slots::new(new_len));
        for &s in old.iter() {
            if s.key != 0 {
                place(&mut self.slots, s);
            }
        }
        self.hand &= new_len - 1;
        self.sweep &= new_len - 1;
    }

    /// The bytes of the table, of the spare made ready for its growth and of the table a growth left behind that
    /// are in mappings of their own (the heap's are counted by the allocator).
    pub(super) fn mapped_bytes(&self) -> usize {
        let mapped = |s: &Slots| match s {
            Slots::Heap(_) => 0,
            Slots::Mapped(m) => m.len(),
        };
        mapped(&self.slots)
            + self.spare.as_ref().map_or(0, |s| mapped(&s.0))
            + self.old.as_ref().map_or(0, mapped)
    }

    pub(super) fn bytes(&self) -> usize {
        let spare = self.spare.as_ref().map_or(0, |s| s.0.len());
        let old = self.old.as_ref().map_or(0, |s| s.len());
        (self.slots.len() + spare + old) * size_of::<Slot>() + self.spills.bytes()
    }
}
