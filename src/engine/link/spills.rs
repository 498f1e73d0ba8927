//! The index's spill lists: a key's entries beyond its newest, every list a block of one arena (docs/link.md,
//! "Memory").

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::*;

/// Most entries a spill list holds; `max_accounts_per_value` is at most this (a key's newest entry is in its slot).
pub const MAX_SPILL: usize = 1 << 16;
/// Block sizes: 1, 2, 4 … [`MAX_SPILL`] entries.
const CLASSES: usize = 17;
/// `SpillRef::meta`: the list's length in the low bits, its block's size class + 1 above them (0: no block).
const LEN_BITS: u32 = 27;
const LEN_MASK: u32 = (1 << LEN_BITS) - 1;

/// Where a key's spill list is: the block of `1 << class` entries at `at` in the arena, whose first `len` entries
/// are the list, oldest first. It fills a slot's last eight bytes; all zeros is no list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub(super) struct SpillRef {
    at: u32,
    meta: u32,
}

impl SpillRef {
    /// No list.
    pub(super) const NONE: SpillRef = SpillRef { at: 0, meta: 0 };

    fn new(at: u32, class: usize, len: usize) -> SpillRef {
        SpillRef {
            at,
            meta: ((class as u32 + 1) << LEN_BITS) | len as u32,
        }
    }

    /// Entries in the list.
    pub(super) fn len(self) -> usize {
        (self.meta & LEN_MASK) as usize
    }

    /// Whether there is a block (a stored slot's list is never empty).
    pub(super) fn is_some(self) -> bool {
        self.meta != 0
    }

    fn class(self) -> usize {
        (self.meta >> LEN_BITS) as usize - 1
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

/// Size class of a block that holds `len` entries.
fn class_for(len: usize) -> usize {
    len.max(1).next_power_of_two().trailing_zeros() as usize
}

/// Every spill list of the index in one arena of entries, each a block of a power-of-two size: a key seen by two
/// accounts spills one entry of 16 bytes (a list of its own was a 32-byte header and a heap block of four). Freed
/// blocks are reused by size; [`Spills::compact`] gives back the room they hold.
#[derive(Debug, Default)]
pub(super) struct Spills {
    arena: Vec<Entry>,
    /// Offsets of free blocks, by size class.
    free: [Vec<u32>; CLASSES],
    /// Entries the free blocks span.
    free_entries: usize,
}

impl Spills {
    /// The list's entries, oldest first (empty for [`SpillRef::NONE`]).
    pub(super) fn get(&self, r: SpillRef) -> &[Entry] {
        self.arena.get(r.range()).unwrap_or_default()
    }

    /// A block of size `class`: a free one, or new at the arena's end. None once the arena would pass `u32`
    /// offsets (64 GiB of entries).
    fn alloc(&mut self, class: usize) -> Option<u32> {
        if let Some(at) = self.free.get_mut(class).and_then(Vec::pop) {
            self.free_entries -= 1 << class;
            return Some(at);
        }
        let at = u32::try_from(self.arena.len()).ok()?;
        let end = self.arena.len().checked_add(1 << class)?;
        u32::try_from(end).ok()?;
        self.arena.resize(end, Entry::default());
        Some(at)
    }

    /// Returns the list's block (if any) for reuse.
    pub(super) fn free(&mut self, r: SpillRef) {
        if r.is_some() {
            let class = r.class();
            if let Some(f) = self.free.get_mut(class) {
                f.push(r.at);
                self.free_entries += 1 << class;
            }
        }
    }

    /// Appends `e` as the newest entry, moving the list to a block twice the size when its own is full. Where no
    /// block can be had (the arena at its limit), the oldest entry makes room.
    pub(super) fn push(&mut self, r: SpillRef, e: Entry) -> SpillRef {
        let len = r.len();
        let r = if !r.is_some() {
            match self.alloc(0) {
                Some(at) => SpillRef::new(at, 0, 0),
                None => return r,
            }
        } else if len == 1 << r.class() {
            match self.alloc(r.class() + 1) {
                Some(at) => {
                    let from = r.at as usize;
                    self.arena.copy_within(from..from + len, at as usize);
                    self.free(r);
                    SpillRef::new(at, r.class() + 1, len)
                }
                None => self.drop_front(r, 1),
            }
        } else {
            r
        };
        let len = r.len();
        if let Some(slot) = self.arena.get_mut(r.at as usize + len) {
            *slot = e;
        }
        r.with_len(len + 1)
    }

    /// Drops the `n` oldest entries; the block stays the list's, even when it is left empty.
    pub(super) fn drop_front(&mut self, r: SpillRef, n: usize) -> SpillRef {
        let n = n.min(r.len());
        if n > 0 {
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
        let range = r.range();
        self.arena
            .copy_within(range.start + j + 1..range.end, range.start + j);
        r.with_len(r.len() - 1)
    }

    /// Keeps the entries `keep` says to, in order; returns how many were dropped.
    pub(super) fn retain(&mut self, r: &mut SpillRef, keep: impl Fn(&Entry) -> bool) -> usize {
        let range = r.range();
        let mut to = range.start;
        for from in range.clone() {
            let e = self.arena[from];
            if keep(&e) {
                self.arena[to] = e;
                to += 1;
            }
        }
        let dropped = range.end - to;
        *r = r.with_len(r.len() - dropped);
        dropped
    }

    /// Copies every slot's list into a new arena, each in the smallest block that holds it, when free blocks span
    /// at least a quarter of the arena: what lists shed (expired entries, keys gone) goes back to the allocator.
    /// O(entries); run from maintenance.
    pub(super) fn compact(&mut self, slots: &mut [Slot]) {
        if self.free_entries * 4 < self.arena.len() {
            return;
        }
        let need: usize = slots
            .iter()
            .filter(|s| s.spill.is_some())
            .map(|s| 1usize << class_for(s.spill.len()))
            .sum();
        let mut arena = Vec::with_capacity(need);
        for s in slots.iter_mut().filter(|s| s.spill.is_some()) {
            let r = s.spill;
            let class = class_for(r.len());
            // `need` fits the old arena's offsets, so it fits `u32`.
            let at = arena.len() as u32;
            arena.extend_from_slice(self.get(r));
            arena.resize(at as usize + (1 << class), Entry::default());
            s.spill = SpillRef::new(at, class, r.len());
        }
        self.arena = arena;
        for f in &mut self.free {
            *f = Vec::new();
        }
        self.free_entries = 0;
    }

    /// Entries in use or free.
    #[cfg(test)]
    pub(super) fn arena_len(&self) -> usize {
        self.arena.len()
    }

    /// Entries the free blocks span.
    #[cfg(test)]
    pub(super) fn free_entries(&self) -> usize {
        self.free_entries
    }

    /// The free blocks, as (offset, size).
    #[cfg(test)]
    pub(super) fn free_blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.free
            .iter()
            .enumerate()
            .flat_map(|(class, f)| f.iter().map(move |&at| (at as usize, 1 << class)))
    }

    /// The block a list holds, as (offset, size).
    #[cfg(test)]
    pub(super) fn block(r: SpillRef) -> (usize, usize) {
        (r.at as usize, 1 << r.class())
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.arena.capacity() * size_of::<Entry>()
            + self.free.iter().map(Vec::capacity).sum::<usize>() * size_of::<u32>()
    }
}
