//! The index's spill lists: a key's entries beyond its newest. Short lists, the common case, are blocks of one
//! arena; longer ones are vectors of their own (docs/link.md, "Memory").

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::*;

/// Most entries a spill list holds; `max_accounts_per_value` is at most this (a key's newest entry is in its slot).
pub const MAX_SPILL: usize = 1 << 16;
/// Lists of up to this many entries are arena blocks (of one or two entries); a longer one is a vector of its own.
const SHORT: usize = 2;
/// `SpillRef::meta`: the list's length in the low bits, its kind + 1 in the two above them (0: no list), and above
/// those the side of the arena block ([`SIDE`]). Kinds: 0 and 1, an arena block of one or two entries; [`LONG`], a
/// vector of its own.
const LEN_BITS: u32 = 27;
const LEN_MASK: u32 = (1 << LEN_BITS) - 1;
const KIND_MASK: u32 = 3;
const LONG: u32 = 2;
/// The bit of `SpillRef::meta` that tells which arena an arena block is in while a compaction moves the blocks from
/// one to the other ([`Spills::begin_compaction`]): the blocks of the arena in use carry [`Spills::side`].
const SIDE: u32 = 1 << (LEN_BITS + 2);
/// A freed long list keeps its vector's capacity for reuse up to this many entries.
const LONG_KEEP_CAP: usize = 8;

/// Where a key's spill list is: an arena block (`at` its offset) or a long list (`at` its index), and its length.
/// It fills a slot's last eight bytes; all zeros is no list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub(super) struct SpillRef {
    at: u32,
    meta: u32,
}

impl SpillRef {
    /// No list.
    pub(super) const NONE: SpillRef = SpillRef { at: 0, meta: 0 };

    fn new(at: u32, kind: u32, len: usize, side: u32) -> SpillRef {
        SpillRef {
            at,
            meta: side | ((kind + 1) << LEN_BITS) | len as u32,
        }
    }

    /// Entries in the list.
    pub(super) fn len(self) -> usize {
        (self.meta & LEN_MASK) as usize
    }

    /// Whether there is a list (a stored slot's list is never empty).
    pub(super) fn is_some(self) -> bool {
        self.meta != 0
    }

    /// 0 or 1: an arena block of `1 << kind` entries; [`LONG`]: a vector.
    fn kind(self) -> u32 {
        ((self.meta >> LEN_BITS) & KIND_MASK) - 1
    }

    /// An arena block's side ([`SIDE`] or 0).
    fn side(self) -> u32 {
        self.meta & SIDE
    }

    fn with_len(self, len: usize) -> SpillRef {
        SpillRef {
            at: self.at,
            meta: (self.meta & !LEN_MASK) | len as u32,
        }
    }

    fn range(self) -> Range<usize> {
        let at = self.at as usize;
        at..at + self.len()
    }
}

/// Every spill list of the index. Most keys that spill at all were seen by two or three accounts: their lists are
/// blocks of one or two 16-byte entries in one arena, with no header and no heap block of their own (a `VecDeque`
/// each took a 32-byte header and a heap block of at least four entries). Freed blocks are reused by size, so the
/// arena holds at most as many blocks of each size as were ever in use at once. A list that grows past two entries
/// moves to a vector of its own, as every list was before: the arena's blocks would otherwise come in every size,
/// and free blocks of the sizes a growing list leaves behind would pile up.
#[derive(Debug, Default)]
pub(super) struct Spills {
    arena: Vec<Entry>,
    /// The side ([`SIDE`] or 0) of the blocks in `arena`.
    side: u32,
    /// Offsets of free arena blocks of one and of two entries.
    free: [Vec<u32>; SHORT],
    /// Entries the free arena blocks span.
    free_entries: usize,
    /// A compaction under way: the arena the short lists are moving out of.
    moving: Option<Moving>,
    /// Long lists, oldest entry first; freed ones are kept for reuse.
    long: Vec<Vec<Entry>>,
    free_long: Vec<u32>,
    /// Capacity (in entries) of all long lists.
    long_cap: usize,
}

/// The arena a compaction empties, a bounded number of slots at a time ([`Spills::compact_step`]): its blocks are
/// copied into the arena in use, and it is let go once none is left in it, with its free lists.
#[derive(Debug, Default)]
pub(super) struct Moving {
    from: Vec<Entry>,
    /// The free blocks' offsets in `from`, when the compaction began.
    free: [Vec<u32>; SHORT],
    /// Entries the blocks still in `from` span (blocks in use, not freed since the compaction began).
    live: usize,
    /// The next slot to look at.
    cursor: usize,
}

impl Spills {
    /// The list's entries, oldest first (empty for [`SpillRef::NONE`]).
    pub(super) fn get(&self, r: SpillRef) -> &[Entry] {
        if !r.is_some() {
            &[]
        } else if r.kind() == LONG {
            self.long.get(r.at as usize).map_or(&[], Vec::as_slice)
        } else {
            self.arena_of(r).get(r.range()).unwrap_or_default()
        }
    }

    /// The arena an arena block is in.
    fn arena_of(&self, r: SpillRef) -> &Vec<Entry> {
        match &self.moving {
            Some(m) if r.side() != self.side => &m.from,
            _ => &self.arena,
        }
    }

    fn arena_of_mut(&mut self, r: SpillRef) -> &mut Vec<Entry> {
        match &mut self.moving {
            Some(m) if r.side() != self.side => &mut m.from,
            _ => &mut self.arena,
        }
    }

    /// An arena block of `1 << kind` entries: a free one, or new at the arena's end. None once the arena would pass
    /// `u32` offsets (64 GiB of entries).
    fn alloc_short(&mut self, kind: u32) -> Option<u32> {
        let size = 1usize << kind;
        if let Some(at) = self.free.get_mut(kind as usize).and_then(Vec::pop) {
            self.free_entries -= size;
            return Some(at);
        }
        let at = u32::try_from(self.arena.len()).ok()?;
        let end = self.arena.len() + size;
        u32::try_from(end).ok()?;
        self.arena.resize(end, Entry::default());
        Some(at)
    }

    /// A long list holding `entries`.
    fn alloc_long(&mut self, entries: &[Entry]) -> SpillRef {
        let id = match self.free_long.pop() {
            Some(id) => id,
            None => {
                self.long.push(Vec::new());
                (self.long.len() - 1) as u32
            }
        };
        let v = &mut self.long[id as usize];
        let before = v.capacity();
        v.extend_from_slice(entries);
        self.long_cap += v.capacity() - before;
        SpillRef::new(id, LONG, entries.len(), 0)
    }

    /// Returns the list's storage for reuse.
    pub(super) fn free(&mut self, r: SpillRef) {
        if !r.is_some() {
            return;
        }
        let kind = r.kind();
        if kind == LONG {
            let v = &mut self.long[r.at as usize];
            v.clear();
            if v.capacity() > LONG_KEEP_CAP {
                self.long_cap -= v.capacity();
                *v = Vec::new();
            }
            self.free_long.push(r.at);
        } else if let Some(m) = self.moving.as_mut().filter(|_| r.side() != self.side) {
            // Gone with the arena it is in.
            m.live -= 1 << kind;
        } else if let Some(f) = self.free.get_mut(kind as usize) {
            f.push(r.at);
            self.free_entries += 1 << kind;
        }
    }

    /// Appends `e` as the newest entry: into the list's block while it has room, else a block of two, else a vector.
    pub(super) fn push(&mut self, r: SpillRef, e: Entry) -> SpillRef {
        let len = r.len();
        if r.is_some() && r.kind() == LONG {
            let v = &mut self.long[r.at as usize];
            let before = v.capacity();
            v.push(e);
            self.long_cap += v.capacity() - before;
            return r.with_len(len + 1);
        }
        let room = r.is_some() && len < 1 << r.kind();
        if room {
            self.arena_of_mut(r)[r.at as usize + len] = e;
            return r.with_len(len + 1);
        }
        let kind = if r.is_some() { r.kind() + 1 } else { 0 };
        let short = if (kind as usize) < SHORT {
            self.alloc_short(kind)
        } else {
            None
        };
        let Some(at) = short else {
            // At most two entries and the new one, on the stack: no allocation but the vector's own.
            let mut entries = [Entry::default(); SHORT + 1];
            entries[..len].copy_from_slice(self.get(r));
            entries[len] = e;
            self.free(r);
            return self.alloc_long(&entries[..=len]);
        };
        // The list may be in the arena a compaction empties: copied through the stack (it is full, so it holds
        // one entry, or none).
        let mut entries = [Entry::default(); SHORT];
        entries[..len].copy_from_slice(self.get(r));
        let to = at as usize;
        self.arena[to..to + len].copy_from_slice(&entries[..len]);
        self.arena[to + len] = e;
        self.free(r);
        SpillRef::new(at, kind, len + 1, self.side)
    }

    /// Drops the `n` oldest entries; the list keeps its storage, even when it is left empty.
    pub(super) fn drop_front(&mut self, r: SpillRef, n: usize) -> SpillRef {
        let n = n.min(r.len());
        if n == 0 {
            return r;
        }
        if r.kind() == LONG {
            self.long[r.at as usize].drain(..n);
        } else {
            let range = r.range();
            self.arena_of_mut(r)
                .copy_within(range.start + n..range.end, range.start);
        }
        r.with_len(r.len() - n)
    }

    /// Removes the entry at `j` (0: the oldest).
    pub(super) fn remove(&mut self, r: SpillRef, j: usize) -> SpillRef {
        if j >= r.len() {
            return r;
        }
        if r.kind() == LONG {
            self.long[r.at as usize].remove(j);
        } else {
            let range = r.range();
            self.arena_of_mut(r)
                .copy_within(range.start + j + 1..range.end, range.start + j);
        }
        r.with_len(r.len() - 1)
    }

    /// Keeps the entries `keep` says to, in order; returns how many were dropped.
    pub(super) fn retain(&mut self, r: &mut SpillRef, keep: impl Fn(&Entry) -> bool) -> usize {
        if !r.is_some() {
            return 0;
        }
        let len = r.len();
        let kept = if r.kind() == LONG {
            let v = &mut self.long[r.at as usize];
            v.retain(|e| keep(e));
            v.len()
        } else {
            let range = r.range();
            let arena = self.arena_of_mut(*r);
            let mut to = range.start;
            for from in range {
                let e = arena[from];
                if keep(&e) {
                    arena[to] = e;
                    to += 1;
                }
            }
            to - r.at as usize
        };
        *r = r.with_len(kept);
        len - kept
    }

    /// Gives back what the lists shed: lets go of the vectors of freed long lists (O(those)), and when free blocks
    /// span at least a quarter of the arena begins moving the short lists into a new one, which
    /// [`Spills::compact_step`] does a bounded number of slots at a time. A compaction under way goes on.
    pub(super) fn begin_compaction(&mut self) {
        for &id in &self.free_long {
            let v = &mut self.long[id as usize];
            self.long_cap -= v.capacity();
            *v = Vec::new();
        }
        if self.moving.is_some()
            || self.free_entries == 0
            || self.free_entries * 4 < self.arena.len()
        {
            return;
        }
        let live = self.arena.len() - self.free_entries;
        let from = std::mem::replace(&mut self.arena, Vec::with_capacity(live));
        let free = std::mem::take(&mut self.free);
        self.free_entries = 0;
        self.side ^= SIDE;
        // Let go with the arena at the end (or at once when nothing is left to move).
        self.moving = Some(Moving {
            from,
            free,
            live,
            cursor: 0,
        });
    }

    /// Moves the short lists of at most `budget` slots, from where the last step stopped, out of the arena a
    /// compaction empties, each into a block of its size; returns whether lists are left to move, and the emptied
    /// arena once none is (for the caller to drop when it is done with the index: giving back 200 MB takes 10–20 ms).
    /// A list that moved behind the step's position meanwhile (the table changed between steps) is found by the next
    /// pass.
    pub(super) fn compact_step(&mut self, slots: &mut [Slot], budget: usize) -> (bool, Moving) {
        let Some(m) = self.moving.as_mut() else {
            return (false, Moving::default());
        };
        let start = m.cursor.min(slots.len());
        let end = start.saturating_add(budget).min(slots.len());
        for s in slots.get_mut(start..end).unwrap_or_default() {
            let r = s.spill;
            if !r.is_some() || r.kind() == LONG || r.side() == self.side {
                continue;
            }
            let kind = u32::from(r.len() > 1);
            let (at, end) = (self.arena.len(), self.arena.len() + (1 << kind));
            if u32::try_from(end).is_err() {
                continue;
            }
            self.arena
                .extend_from_slice(m.from.get(r.range()).unwrap_or_default());
            self.arena.resize(end, Entry::default());
            m.live -= 1 << r.kind();
            s.spill = SpillRef::new(at as u32, kind, r.len(), self.side);
        }
        m.cursor = if end >= slots.len() { 0 } else { end };
        if m.live > 0 {
            return (true, Moving::default());
        }
        (false, self.moving.take().unwrap_or_default())
    }

    /// A whole compaction at once (O(slots)), `slots` holding every key: [`Spills::begin_compaction`], then steps
    /// until no list is left to move.
    pub(super) fn compact(&mut self, slots: &mut [Slot]) {
        self.begin_compaction();
        self.finish_compaction(slots);
    }

    /// Moves every short list left to move, `slots` holding every key.
    pub(super) fn finish_compaction(&mut self, slots: &mut [Slot]) {
        // From where an earlier step stopped to the end, then from the start: two passes see every slot.
        for _ in 0..2 {
            if !self.compact_step(slots, usize::MAX).0 {
                break;
            }
        }
    }

    /// Whether a compaction has lists left to move.
    pub(super) fn compacting(&self) -> bool {
        self.moving.is_some()
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        let moving = self.moving.as_ref();
        let arenas = self.arena.capacity() + moving.map_or(0, |m| m.from.capacity());
        let free_lists: usize = (self.free.iter())
            .chain(moving.into_iter().flat_map(|m| &m.free))
            .map(Vec::capacity)
            .sum();
        arenas * size_of::<Entry>()
            + free_lists * size_of::<u32>()
            + self.long.capacity() * size_of::<Vec<Entry>>()
            + self.long_cap * size_of::<Entry>()
            + self.free_long.capacity() * size_of::<u32>()
    }

    /// Arena entries in use or free.
    #[cfg(test)]
    pub(super) fn arena_len(&self) -> usize {
        self.arena.len()
    }

    /// Arena entries the free blocks span.
    #[cfg(test)]
    pub(super) fn free_entries(&self) -> usize {
        self.free_entries
    }

    /// The free arena blocks, as (offset, size).
    #[cfg(test)]
    pub(super) fn free_blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.free
            .iter()
            .enumerate()
            .flat_map(|(kind, f)| f.iter().map(move |&at| (at as usize, 1 << kind)))
    }

    /// Long lists, and the free ones among them.
    #[cfg(test)]
    pub(super) fn long_lists(&self) -> (usize, &[u32]) {
        (self.long.len(), &self.free_long)
    }

    /// The arena block a short list holds, as (offset, size, whether it is in the arena a compaction empties), or
    /// the index of a long list.
    #[cfg(test)]
    pub(super) fn place(&self, r: SpillRef) -> Result<(usize, usize, bool), usize> {
        match r.kind() {
            LONG => Err(r.at as usize),
            kind => Ok((r.at as usize, 1 << kind, r.side() != self.side)),
        }
    }

    /// While a compaction moves the short lists: the length of the arena they leave, and the entries its blocks in
    /// use span.
    #[cfg(test)]
    pub(super) fn moving(&self) -> Option<(usize, usize)> {
        self.moving.as_ref().map(|m| (m.from.len(), m.live))
    }
}
