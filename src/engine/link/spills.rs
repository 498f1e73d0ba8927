//! The index's spill lists: a key's entries beyond its newest. Short lists, the common case, are blocks of one
//! arena; longer ones are vectors of their own (docs/link.md, "Memory").

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::*;

/// Most entries a spill list holds; `max_accounts_per_value` is at most this (a key's newest entry is in its slot).
pub const MAX_SPILL: usize = 1 << 16;
/// Lists of up to this many entries are arena blocks (of one or two entries); a longer one is a vector of its own.
const SHORT: usize = 2;
/// `SpillRef::meta`: the list's length in the low bits, its kind + 1 above them (0: no list). Kinds: 0 and 1, an
/// arena block of one or two entries; [`LONG`], a vector of its own.
const LEN_BITS: u32 = 27;
const LEN_MASK: u32 = (1 << LEN_BITS) - 1;
const LONG: u32 = 2;
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

    fn new(at: u32, kind: u32, len: usize) -> SpillRef {
        SpillRef {
            at,
            meta: ((kind + 1) << LEN_BITS) | len as u32,
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
        (self.meta >> LEN_BITS) - 1
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
    /// Offsets of free arena blocks of one and of two entries.
    free: [Vec<u32>; SHORT],
    /// Entries the free arena blocks span.
    free_entries: usize,
    /// Long lists, oldest entry first; freed ones are kept for reuse.
    long: Vec<Vec<Entry>>,
    free_long: Vec<u32>,
    /// Capacity (in entries) of all long lists.
    long_cap: usize,
}

impl Spills {
    /// The list's entries, oldest first (empty for [`SpillRef::NONE`]).
    pub(super) fn get(&self, r: SpillRef) -> &[Entry] {
        if !r.is_some() {
            &[]
        } else if r.kind() == LONG {
            self.long.get(r.at as usize).map_or(&[], Vec::as_slice)
        } else {
            self.arena.get(r.range()).unwrap_or_default()
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
        SpillRef::new(id, LONG, entries.len())
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
            self.arena[r.at as usize + len] = e;
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
        let (from, to) = (r.range(), at as usize);
        self.arena.copy_within(from, to);
        self.arena[to + len] = e;
        self.free(r);
        SpillRef::new(at, kind, len + 1)
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
            self.arena
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
            self.arena
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
            let mut to = range.start;
            for from in range {
                let e = self.arena[from];
                if keep(&e) {
                    self.arena[to] = e;
                    to += 1;
                }
            }
            to - r.at as usize
        };
        *r = r.with_len(kept);
        len - kept
    }

    /// Copies the short lists into a new arena when free blocks span at least a quarter of it (O(slots)), and lets go
    /// of the vectors of freed long lists (O(those)): what the lists shed goes back to the allocator. Run by the full
    /// sweep and by the engine's maintenance.
    pub(super) fn compact(&mut self, slots: &mut [Slot]) {
        for &id in &self.free_long {
            let v = &mut self.long[id as usize];
            self.long_cap -= v.capacity();
            *v = Vec::new();
        }
        if self.free_entries == 0 || self.free_entries * 4 < self.arena.len() {
            return;
        }
        let mut arena = Vec::new();
        for s in slots.iter_mut() {
            let r = s.spill;
            if !r.is_some() || r.kind() == LONG {
                continue;
            }
            let kind = u32::from(r.len() > 1);
            // The new arena is smaller than the old one, so its offsets fit `u32`.
            let at = arena.len() as u32;
            arena.extend_from_slice(self.get(r));
            arena.resize(at as usize + (1 << kind), Entry::default());
            s.spill = SpillRef::new(at, kind, r.len());
        }
        arena.shrink_to_fit();
        self.arena = arena;
        self.free = Default::default();
        self.free_entries = 0;
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.arena.capacity() * size_of::<Entry>()
            + self.free.iter().map(Vec::capacity).sum::<usize>() * size_of::<u32>()
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

    /// The arena block a short list holds, as (offset, size), or the index of a long list.
    #[cfg(test)]
    pub(super) fn place(r: SpillRef) -> Result<(usize, usize), usize> {
        match r.kind() {
            LONG => Err(r.at as usize),
            kind => Ok((r.at as usize, 1 << kind)),
        }
    }
}
