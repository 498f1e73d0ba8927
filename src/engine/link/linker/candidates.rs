//! The candidates one request finds under its keys, merged and ordered (docs/link.md, "Linking").

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// Linker

/// The other accounts found under one key: the most recent first, at most `limit`.
#[derive(Debug, Default)]
pub(in crate::engine::link) struct Found {
    pub(in crate::engine::link) items: Vec<Entry>,
    pub(in crate::engine::link) limit: usize,
}

/// Candidates of one request, merged by account through a small stamped hash table (no clearing per request).
/// The `Default` value is an empty placeholder: build a usable one with [`Candidates::new`].
#[derive(Debug, Default)]
pub(in crate::engine::link) struct Candidates {
    pub(in crate::engine::link) list: Vec<Candidate>,
    /// (account, position in `list`, stamp); a slot is live when its stamp is the current one.
    pub(in crate::engine::link) table: Vec<(u64, u32, u32)>,
    stamp: u32,
}

impl Candidates {
    pub(in crate::engine::link) fn new() -> Self {
        Candidates {
            list: Vec::with_capacity(MAX_CANDIDATES),
            table: vec![(0, 0, 0); 2 * MAX_CANDIDATES],
            stamp: 0,
        }
    }

    pub(in crate::engine::link) fn reset(&mut self) {
        self.list.clear();
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.table.iter_mut().for_each(|s| s.2 = 0);
            self.stamp = 1;
        }
    }

    /// Adds a link to `e.account` found under `job`, merging with earlier finds; beyond `MAX_CANDIDATES` distinct
    /// accounts new ones are dropped. `late`: the entry is older than [`LinkPolicy::late_after`].
    pub(in crate::engine::link) fn add(&mut self, e: &Entry, job: &KeyJob, late: bool) {
        let mask = self.table.len() - 1;
        let mut i = (e.account.wrapping_mul(GOLDEN) >> 32) as usize & mask;
        loop {
            let (account, at, stamp) = self.table[i];
            if stamp != self.stamp {
                if self.list.len() < MAX_CANDIDATES {
                    self.table[i] = (e.account, self.list.len() as u32, self.stamp);
                    let mut c = Candidate {
                        account: e.account,
                        seen: e.seen,
                        strength: job.strength,
                        rules: job.bit,
                        bands: 0,
                        late_bands: 0,
                        scalar: false,
                    };
                    c.mark(job, late);
                    self.list.push(c);
                }
                return;
            }
            if account == e.account {
                let c = &mut self.list[at as usize];
                c.seen = c.seen.max(e.seen);
                c.strength = c.strength.max(job.strength);
                c.rules |= job.bit;
                c.mark(job, late);
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// One index key to look up for the current request.
#[derive(Clone, Copy, Debug)]
pub(in crate::engine::link) struct KeyJob {
    pub(in crate::engine::link) key: u64,
    pub(super) strength: u8,
    pub(in crate::engine::link) window: Nanos,
    pub(in crate::engine::link) bit: u32,
    pub(in crate::engine::link) signal_only: bool,
    /// Position of the prompt band in the key ([`NO_BAND`]: the rule has a client-stack or network attribute).
    pub(super) band: u8,
}

/// [`KeyJob::band`] of a rule without prompt.
pub(in crate::engine::link) const NO_BAND: u8 = u8::MAX;

/// Another account the current request may link to.
#[derive(Clone, Copy, Debug)]
pub(in crate::engine::link) struct Candidate {
    pub(in crate::engine::link) account: u64,
    seen: Nanos,
    pub(in crate::engine::link) strength: u8,
    pub(in crate::engine::link) rules: u32,
    /// Prompt bands (bit per position) it was found under by prompt-only rules, in entries within
    /// [`LinkPolicy::late_after`]…
    bands: u64,
    /// …and in older ones.
    late_bands: u64,
    /// Found under a rule with a client-stack or network attribute.
    scalar: bool,
}

impl Candidate {
    fn mark(&mut self, job: &KeyJob, late: bool) {
        let bit = 1u64 << (job.band & 63);
        if job.band == NO_BAND {
            self.scalar = true;
        } else if late {
            self.late_bands |= bit;
        } else {
            self.bands |= bit;
        }
    }

    /// Found on one prompt band and nothing else: no rule with a client-stack or network attribute.
    pub(in crate::engine::link) fn single_band(&self) -> bool {
        !self.scalar && (self.bands | self.late_bands).count_ones() < 2
    }

    /// Enough evidence to link: a rule with a client-stack or network attribute, `min_bands` distinct prompt bands
    /// in recent entries, or `late_min_bands` counting the older ones too.
    pub(in crate::engine::link) fn links(&self, min_bands: u32, late_min_bands: u32) -> bool {
        self.scalar
            || self.bands.count_ones() >= min_bands
            || (self.bands | self.late_bands).count_ones() >= late_min_bands
    }
}

/// Strongest first, then most recent, then by account (a total order, so linking is deterministic).
pub(in crate::engine::link) fn candidate_order(x: &Candidate, y: &Candidate) -> std::cmp::Ordering {
    y.strength
        .cmp(&x.strength)
        .then(y.seen.cmp(&x.seen))
        .then(x.account.cmp(&y.account))
}
