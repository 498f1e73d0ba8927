//! Phrase matching: named lists compiled into one automaton, scanned without allocation (docs/score.md,
//! "Phrase matching").

use std::fmt;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, BuildError, MatchError, MatchKind, StartKind};

use crate::engine::score::{PhraseHits, MAX_PHRASE_LISTS};
use crate::engine::signature::StockShingles;

/// Longest phrase, in bytes once normalised (with its boundary separators).
pub const MAX_PHRASE_BYTES: usize = 256;

/// Default phrases of prompts built to elicit reasoning traces (chain of thought written out for training).
pub const DEFAULT_ELICITATION: &[&str] = &[
    "imagine and articulate the internal reasoning",
    "articulate the internal reasoning",
    "internal reasoning behind",
    "reasoning behind a completed response",
    "reasoning behind the completed response",
    "write it out step by step",
    "write out your reasoning step by step",
    "write out the reasoning step by step",
    "write out every step of your reasoning",
    "show your full chain of thought",
    "full chain of thought",
    "complete chain of thought",
    "entire chain of thought",
    "reasoning trace",
    "thinking trace",
    "hidden reasoning",
    "internal monologue",
    "thought process verbatim",
    "show all of your thinking",
    "every intermediate step",
    "do not skip any reasoning steps",
    "reconstruct the reasoning",
    "reasoning that led to this answer",
    "reasoning that led to the answer",
    "thinking that produced",
    "think out loud step by step",
    "scratchpad reasoning",
    "thought process",
    "line of reasoning",
    "chain of reasoning",
    "reasoning process",
    "walk me through your reasoning",
    "walk me through your thinking",
    "walk through your reasoning",
    "explain your reasoning in detail",
    "show your reasoning",
    "show all your work",
    "reasoning steps",
    "intermediate steps",
    "each step of the reasoning",
    "every step of the reasoning",
    "step-by-step reasoning",
    "detailed reasoning",
    "full reasoning",
    "complete reasoning",
    "how you arrived at",
    "how you reached the answer",
    "how you got to the answer",
    "justify each step",
    "think aloud",
];

/// Default phrases of rubric-grading prompts (preference and reward data).
pub const DEFAULT_RUBRIC: &[&str] = &[
    "grade the following response",
    "grade the response",
    "score the following response",
    "score the response",
    "rate the following response",
    "rate the response on a scale",
    "on a scale of 1 to 10",
    "on a scale from 1 to 10",
    "on a scale of 1 to 5",
    "on a scale from 1 to 5",
    "using the rubric below",
    "according to the rubric",
    "following rubric",
    "grading rubric",
    "scoring rubric",
    "evaluate the assistant's response",
    "which response is better",
    "compare the two responses",
    "response a and response b",
    "preferred response",
    "assign a score",
    "output only the score",
    "judge the quality of the response",
    "rank the following responses",
    "pairwise comparison",
    "rubric",
    "grade this",
    "grade the answer",
    "grade the following answer",
    "grade the solution",
    "score this",
    "score the answer",
    "score the solution",
    "rate this answer",
    "rate the answer",
    "evaluate this answer",
    "evaluate the answer",
    "evaluate the following answer",
    "assess this answer",
    "assess the answer",
    "out of 10",
    "out of ten",
    "1 to 10",
    "ten-point scale",
    "10-point scale",
    "each deduction",
    "every deduction",
    "points deducted",
    "deduct points",
    "justify the score",
    "justify your score",
];

/// Default phrases of prompts that reconstruct tool-use trajectories.
pub const DEFAULT_TRAJECTORY: &[&str] = &[
    "reconstruct the tool calls",
    "reconstruct the trajectory",
    "reconstruct the agent's",
    "tool-use trajectory",
    "tool use trajectories",
    "agent trajectory",
    "agent trajectories",
    "sequence of tool calls",
    "list every tool call",
    "write the function calls you would make",
    "which tools would you call",
    "simulate the tool outputs",
    "simulated tool output",
    "generate the full trajectory",
    "tool name and arguments",
    "thought action observation",
    "recreate the sequence of actions",
    "expected tool call sequence",
    "function calling trace",
    "tool call trace",
    "imagine the tool calls",
    "every tool call and its result",
    "each action you would take",
    "every action you would take",
    "sequence of actions",
    "list of actions",
    "commands you would run",
    "actions and observations",
    "arguments and results",
    "inputs and outputs of each",
];

/// Why a phrase matcher could not be built.
#[derive(Debug, Clone)]
pub enum PhraseError {
    /// More lists than [`MAX_PHRASE_LISTS`].
    TooManyLists {
        /// Lists given.
        lists: usize,
    },
    /// A phrase is empty once normalised (only punctuation, spaces or `*`).
    EmptyPhrase {
        /// The list's name.
        list: String,
        /// The phrase's index in its list.
        index: usize,
    },
    /// A phrase is longer than [`MAX_PHRASE_BYTES`] once normalised.
    TooLong {
        /// The list's name.
        list: String,
        /// The phrase's index in its list.
        index: usize,
    },
    /// The automaton could not be built (too many or too long phrases).
    Build(BuildError),
    /// The phrases need a table of more than 2^24 entries.
    TooLarge,
    /// The automaton has no unanchored start state (not expected).
    Start(MatchError),
}

impl fmt::Display for PhraseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhraseError::TooManyLists { lists } => {
                write!(f, "{lists} phrase lists: at most {MAX_PHRASE_LISTS} are supported")
            }
            PhraseError::EmptyPhrase { list, index } => write!(
                f,
                "phrase list {list:?}, entry {index}: empty once punctuation and case are normalised"
            ),
            PhraseError::TooLong { list, index } => write!(
                f,
                "phrase list {list:?}, entry {index}: longer than {MAX_PHRASE_BYTES} bytes once normalised"
            ),
            PhraseError::Build(e) => write!(f, "phrase automaton: {e}"),
            PhraseError::TooLarge => write!(f, "phrase automaton: too many phrases"),
            PhraseError::Start(e) => write!(f, "phrase automaton: {e}"),
        }
    }
}

impl std::error::Error for PhraseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PhraseError::Build(e) => Some(e),
            PhraseError::Start(e) => Some(e),
            PhraseError::TooManyLists { .. }
            | PhraseError::EmptyPhrase { .. }
            | PhraseError::TooLong { .. }
            | PhraseError::TooLarge => None,
        }
    }
}

/// A compiled set of named phrase lists, matched case-insensitively and across punctuation variants. Built once
/// (at start and on reload), shared by all workers.
#[derive(Clone)]
pub struct PhraseMatcher {
    pub(super) table: Option<Table>,
    names: Vec<String>,
    all: u32,
    phrases: usize,
    /// Longest normalised pattern, in bytes.
    max_len: usize,
    /// The phrases' shingles, left out of prompt signatures (see [`StockShingles`]).
    stock: StockShingles,
    /// Walks of recent prompts, made with these phrases (a clone shares it).
    cache: std::sync::Arc<super::PromptCache>,
}

impl fmt::Debug for PhraseMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhraseMatcher")
            .field("lists", &self.names)
            .field("phrases", &self.phrases)
            .finish()
    }
}

/// Separator byte of normalised text.
pub(super) const SEP: u8 = b' ';

/// Normalise one byte: ASCII letters lower-cased; ASCII digits and bytes at or above 0x80 kept; every other ASCII
/// byte (spaces, punctuation, apostrophes, hyphens, underscores, control bytes) a separator. Branch-free, so the
/// pass over a chunk vectorises.
#[inline(always)]
pub(super) fn map_byte(b: u8) -> u8 {
    let lower = b | 0x20;
    if lower.wrapping_sub(b'a') < 26 {
        lower
    } else if b.wrapping_sub(b'0') < 10 || b >= 0x80 {
        b
    } else {
        SEP
    }
}

/// Length of the typographic separator starting at `text[i]`, if one does: Unicode spaces (U+00A0, U+2000–U+200B,
/// U+202F, U+3000), dashes (U+2010–U+2015), quotes and apostrophes (U+2018–U+201F, «, »), primes (U+2032,
/// U+2033), bullets (U+00B7, U+2022), the ellipsis and the line/paragraph separators.
#[inline]
pub(super) fn typographic_sep(text: &[u8], i: usize) -> Option<usize> {
    let b = text.get(i).copied().unwrap_or(0);
    let b1 = text.get(i + 1).copied().unwrap_or(0);
    let b2 = text.get(i + 2).copied().unwrap_or(0);
    match (b, b1, b2) {
        (
            0xE2,
            0x80,
            0x80..=0x8B | 0x90..=0x9F | 0xA2 | 0xA6 | 0xA8 | 0xA9 | 0xAF | 0xB2 | 0xB3,
        ) => Some(3),
        (0xE3, 0x80, 0x80) => Some(3),
        (0xC2, 0xA0 | 0xAB | 0xB7 | 0xBB, _) => Some(2),
        _ => None,
    }
}

/// Normalise `src` into `out` byte for byte (`out` at least as long; the rest is left alone): [`map_byte`], then
/// each typographic separator's bytes become separators.
pub(super) fn map_chunk(src: &[u8], out: &mut [u8]) {
    for (o, &b) in out.iter_mut().zip(src) {
        *o = map_byte(b);
    }
    if src.is_ascii() {
        return;
    }
    let mut i = 0;
    while i < src.len() {
        if src.get(i).is_some_and(|&b| b >= 0x80) {
            if let Some(n) = typographic_sep(src, i) {
                for o in out.iter_mut().skip(i).take(n) {
                    *o = SEP;
                }
                i += n;
                continue;
            }
        }
        i += 1;
    }
}

/// `bytes` with runs of separators collapsed to one.
pub(super) fn collapse(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &c in bytes {
        if !(c == SEP && out.last() == Some(&SEP)) {
            out.push(c);
        }
    }
    out
}

/// The normalised pattern of one phrase: whole words unless the phrase starts or ends with `*`.
pub(super) fn normalise_phrase(phrase: &str) -> Option<Vec<u8>> {
    let p = phrase.trim();
    let (open_start, p) = match p.strip_prefix('*') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    let (open_end, p) = match p.strip_suffix('*') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    let mut mapped = vec![0u8; p.len()];
    map_chunk(p.as_bytes(), &mut mapped);
    let core = collapse(&mapped);
    let core = core.trim_ascii();
    if core.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(core.len() + 2);
    if !open_start {
        out.push(SEP);
    }
    out.extend_from_slice(core);
    if !open_end {
        out.push(SEP);
    }
    Some(out)
}

/// Start of the shortest suffix of `buf[..end]` holding `need` bytes of its collapsed form (a separator right
/// after another does not count): where a walk must start to see every match that ends at or after `end`. `buf`
/// may be normalised or raw ASCII ([`map_byte`] leaves normalised bytes as they are).
pub(super) fn back(buf: &[u8], end: usize, need: usize) -> usize {
    let is_sep = |i: usize| buf.get(i).is_some_and(|&b| map_byte(b) == SEP);
    let mut i = end.min(buf.len());
    let mut count = 0;
    while i > 0 && count < need {
        i -= 1;
        let repeat = is_sep(i) && i > 0 && is_sep(i - 1);
        count += usize::from(!repeat);
    }
    i
}

/// Entries of a phrase table at most (64 MiB).
pub(super) const MAX_TABLE_ENTRIES: usize = 1 << 24;

/// Entries of a fixed-size transition table (512 KiB). A table that fits (the default lists': 68 430 entries) is
/// padded to this size, so a step masks its index into range instead of checking it: in the (then four-lane) walk
/// the checks cost three instructions a step and pushed the lanes' registers onto the stack.
pub(super) const FIXED_ENTRIES: usize = 1 << 17;

/// The transition table of a [`Table`].
#[derive(Debug, Clone)]
enum Trans {
    /// At most [`FIXED_ENTRIES`] entries, padded with zeros (never read: every state and class stays below the
    /// table's own length).
    Fixed(Box<[u32; FIXED_ENTRIES]>),
    /// Larger tables (long custom lists), checked on every step.
    Large(Vec<u32>),
}

/// The phrase automaton re-encoded as a dense table over the phrases' own bytes, for the scan's inner loop.
#[derive(Debug, Clone)]
pub(super) struct Table {
    /// Byte → class (class 0 also holds every byte no phrase contains).
    classes: [u8; 256],
    /// Classes, the width of a row.
    stride: u32,
    /// `trans[state + class]` is the next state; states are row offsets (index × stride). A state entered on a
    /// separator stays on further separators, which collapses runs of them without a pass of its own.
    trans: Trans,
    /// States below this are match states…
    match_limit: u32,
    /// …with the list bits `match_bits[state / stride]`.
    match_bits: Vec<u32>,
    /// The start state.
    start: u32,
}

impl Table {
    fn build(patterns: &[Vec<u8>], pattern_bits: &[u32]) -> Result<Table, PhraseError> {
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(patterns)
            .map_err(PhraseError::Build)?;
        let start = dfa.start_state(Anchored::No).map_err(PhraseError::Start)?;
        let mut used = [false; 256];
        for p in patterns {
            for &b in p {
                used[usize::from(b)] = true;
            }
        }
        // One representative byte per class; class 0 is "no phrase has this byte" when there is such a byte.
        let mut classes = [0u8; 256];
        let mut reps: Vec<u8> = Vec::new();
        if let Some(other) = (0..=255u8).find(|&b| !used[usize::from(b)]) {
            reps.push(other);
        }
        for b in 0..=255u8 {
            if used[usize::from(b)] {
                classes[usize::from(b)] = u8::try_from(reps.len()).unwrap_or(u8::MAX);
                reps.push(b);
            }
        }
        // An ASCII byte takes the class of its normalised form (upper-case letters that of the lower-case one,
        // punctuation and whitespace the separator's), so ASCII text is walked as it is, without a mapping pass.
        for b in 0..0x80u8 {
            let m = map_byte(b);
            if m != b {
                classes[usize::from(b)] = classes[usize::from(m)];
            }
        }
        let k = reps.len();
        // Breadth-first over the states reachable from the start; each non-start state is entered on one byte
        // only (the last byte of the prefix it stands for), recorded as its label.
        let mut index: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        let mut states: Vec<(StateID, Option<u8>)> = vec![(start, None)];
        index.insert(start.as_usize(), 0);
        let mut next: Vec<usize> = Vec::new();
        let mut i = 0;
        while let Some(&(sid, _)) = states.get(i) {
            for &r in &reps {
                let to = dfa.next_state(Anchored::No, sid, r);
                let j = match index.get(&to.as_usize()) {
                    Some(&j) => j,
                    None => {
                        let j = states.len();
                        if (j + 1).saturating_mul(k) > MAX_TABLE_ENTRIES {
                            return Err(PhraseError::TooLarge);
                        }
                        index.insert(to.as_usize(), j);
                        states.push((to, Some(r)));
                        j
                    }
                };
                next.push(j);
            }
            i += 1;
        }
        // Match states first, so a step tests "is a match" with one comparison.
        let n = states.len();
        let is_match: Vec<bool> = states.iter().map(|&(s, _)| dfa.is_match(s)).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| !is_match[i]);
        let mut renumber = vec![0usize; n];
        for (new, &old) in order.iter().enumerate() {
            renumber[old] = new;
        }
        let matches = is_match.iter().filter(|&&m| m).count();
        let sep_class = used[usize::from(SEP)].then_some(usize::from(classes[usize::from(SEP)]));
        let row = |i: usize| u32::try_from(i * k).unwrap_or(u32::MAX);
        let mut trans = vec![0u32; n * k];
        for (old, &(_, label)) in states.iter().enumerate() {
            let new = renumber[old];
            for c in 0..k {
                let to = if label == Some(SEP) && sep_class == Some(c) {
                    new
                } else {
                    renumber[next[old * k + c]]
                };
                trans[new * k + c] = row(to);
            }
        }
        let match_bits = order[..matches]
            .iter()
            .map(|&old| {
                let sid = states[old].0;
                (0..dfa.match_len(sid))
                    .map(|i| {
                        let pid = dfa.match_pattern(sid, i).as_usize();
                        pattern_bits.get(pid).copied().unwrap_or(0)
                    })
                    .fold(0, |a, b| a | b)
            })
            .collect();
        let start = row(renumber[0]);
        let trans = if trans.len() <= FIXED_ENTRIES {
            // Zeroed (so the padding's pages are never written, nor made resident), then the table at its head.
            let mut fixed = vec![0u32; FIXED_ENTRIES];
            fixed[..trans.len()].copy_from_slice(&trans);
            match fixed.into_boxed_slice().try_into() {
                Ok(fixed) => Trans::Fixed(fixed),
                Err(large) => Trans::Large(Vec::from(large)),
            }
        } else {
            Trans::Large(trans)
        };
        Ok(Table {
            classes,
            stride: u32::try_from(k).unwrap_or(u32::MAX),
            trans,
            match_limit: row(matches),
            match_bits,
            start,
        })
    }

    /// Whether the transition table is the fixed-size one.
    #[cfg(test)]
    pub(super) fn is_fixed(&self) -> bool {
        matches!(self.trans, Trans::Fixed(_))
    }

    /// The state after `s` on byte `b`.
    #[inline(always)]
    fn step(&self, s: u32, b: u8) -> u32 {
        match &self.trans {
            Trans::Fixed(t) => self.step_in(|i| fixed_next(t, i), s, b),
            Trans::Large(t) => self.step_in(|i| large_next(t, i, self.start), s, b),
        }
    }

    /// The state after `s` on byte `b`, with `next` reading the transition table.
    #[inline(always)]
    fn step_in(&self, next: impl Fn(u32) -> u32, s: u32, b: u8) -> u32 {
        next(s.wrapping_add(u32::from(self.classes[usize::from(b)])))
    }

    /// List bits of state `s` (0 unless it is a match state).
    #[cold]
    fn bits(&self, s: u32) -> u32 {
        if s >= self.match_limit {
            return 0;
        }
        self.match_bits
            .get((s / self.stride.max(1)) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// One walk over `bytes` from state `s`, `next` reading the transition table: the lists matched and the state at
    /// the end.
    #[inline(always)]
    fn walk_in(&self, next: impl Fn(u32) -> u32 + Copy, mut s: u32, bytes: &[u8]) -> (u32, u32) {
        let mut hits = 0;
        for &b in bytes {
            s = self.step_in(next, s, b);
            if s < self.match_limit {
                hits |= self.bits(s);
            }
        }
        (hits, s)
    }

    /// Walk `hay[from..to]` in three interleaved lanes: independent walks over its thirds, each starting early
    /// enough in `hay` to see every match that ends in its third. A walk that starts at the beginning of `hay`
    /// starts in state `first`, others in the start state. Returns the lists matched and the state at `to`.
    ///
    /// Three, not four: a step's lookups depend on each other, so lanes overlap them, but on x86-64 four lanes'
    /// pointers, states and the table's bases did not fit the registers, and a lane's state went through the stack
    /// on every byte, which made its walk the slowest (2.24 → 1.6 µs for the engine bench's 2 KB scan; two and
    /// eight lanes had read the same as four: BENCHMARKS.md, "The phrase walk in three lanes").
    fn walk_laned(
        &self,
        hay: &[u8],
        from: usize,
        to: usize,
        need: usize,
        first: u32,
    ) -> (u32, u32) {
        match &self.trans {
            Trans::Fixed(t) => self.walk_laned_in(|i| fixed_next(t, i), hay, from, to, need, first),
            Trans::Large(t) => {
                self.walk_laned_in(|i| large_next(t, i, self.start), hay, from, to, need, first)
            }
        }
    }

    #[inline(always)]
    fn walk_laned_in(
        &self,
        next: impl Fn(u32) -> u32 + Copy,
        hay: &[u8],
        from: usize,
        to: usize,
        need: usize,
        first: u32,
    ) -> (u32, u32) {
        let begin = |at: usize| match back(hay, at, need) {
            0 => (0, first),
            b => (b, self.start),
        };
        let n = to.saturating_sub(from);
        if n < MIN_LANED.max(8 * need) {
            let (b, s) = begin(from);
            return self.walk_in(next, s, hay.get(b..to).unwrap_or_default());
        }
        let q = n / 3;
        let lane = |k: usize| {
            let (b, s) = begin(from + k * q);
            let end = if k == 2 { to } else { from + (k + 1) * q };
            (s, hay.get(b..end).unwrap_or_default())
        };
        let ((mut s0, l0), (mut s1, l1), (mut s2, l2)) = (lane(0), lane(1), lane(2));
        let common = l0.len().min(l1.len()).min(l2.len());
        let ml = self.match_limit;
        let mut hits = 0u32;
        for ((&b0, &b1), &b2) in l0.iter().zip(l1).zip(l2) {
            s0 = self.step_in(next, s0, b0);
            s1 = self.step_in(next, s1, b1);
            s2 = self.step_in(next, s2, b2);
            if (s0 < ml) | (s1 < ml) | (s2 < ml) {
                hits |= self.bits(s0) | self.bits(s1) | self.bits(s2);
            }
        }
        let mut end = self.start;
        for (s, l) in [(s0, l0), (s1, l1), (s2, l2)] {
            let (h, e) = self.walk_in(next, s, l.get(common..).unwrap_or_default());
            hits |= h;
            end = e;
        }
        (hits, end)
    }
}

/// Entry `i` of a fixed-size table: the mask keeps every index in range, so no step checks it (a table's own
/// entries are all below its length, so the mask never changes one).
#[inline(always)]
fn fixed_next(t: &[u32; FIXED_ENTRIES], i: u32) -> u32 {
    t[i as usize & (FIXED_ENTRIES - 1)]
}

/// Entry `i` of a larger table (the start state out of range, which never happens).
#[inline(always)]
fn large_next(t: &[u32], i: u32, start: u32) -> u32 {
    t.get(i as usize).copied().unwrap_or(start)
}

/// Normalised text is scanned in chunks of this many bytes (a stack buffer).
pub(super) const SCAN_CHUNK: usize = 4096;
/// Chunks shorter than this are scanned in one lane.
pub(super) const MIN_LANED: usize = 512;

impl PhraseMatcher {
    /// Compile named phrase lists (at most [`MAX_PHRASE_LISTS`]). Each phrase is normalised like the text it is
    /// matched against; it matches whole words, or a word prefix / suffix where it ends / starts with `*`.
    pub fn new(lists: &[(&str, Vec<String>)]) -> Result<PhraseMatcher, PhraseError> {
        if lists.len() > MAX_PHRASE_LISTS {
            return Err(PhraseError::TooManyLists { lists: lists.len() });
        }
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut pattern_bits = Vec::new();
        let mut all = 0u32;
        for (li, (name, phrases)) in lists.iter().enumerate() {
            let bit = 1u32 << li;
            for (pi, phrase) in phrases.iter().enumerate() {
                let Some(p) = normalise_phrase(phrase) else {
                    return Err(PhraseError::EmptyPhrase {
                        list: (*name).to_owned(),
                        index: pi,
                    });
                };
                if p.len() > MAX_PHRASE_BYTES {
                    return Err(PhraseError::TooLong {
                        list: (*name).to_owned(),
                        index: pi,
                    });
                }
                patterns.push(p);
                pattern_bits.push(bit);
                all |= bit;
            }
        }
        let table = if patterns.is_empty() {
            None
        } else {
            Some(Table::build(&patterns, &pattern_bits)?)
        };
        Ok(PhraseMatcher {
            table,
            names: lists.iter().map(|(n, _)| (*n).to_owned()).collect(),
            all,
            phrases: patterns.len(),
            max_len: patterns.iter().map(Vec::len).max().unwrap_or(0),
            stock: StockShingles::new(lists.iter().flat_map(|(_, p)| p.iter().map(String::as_str))),
            cache: Default::default(),
        })
    }

    /// Walks of recent prompts, made with these lists' stock shingles ([`super::cached_features`]).
    pub fn cache(&self) -> &super::PromptCache {
        &self.cache
    }

    /// The matcher with an empty prompt cache of `entries` (0: none; the default is [`super::ENTRIES`]).
    pub fn with_cache_entries(mut self, entries: usize) -> PhraseMatcher {
        self.cache = std::sync::Arc::new(super::PromptCache::new(entries));
        self
    }

    /// The shingles of every phrase of the lists: phrases many unrelated users type, so a prompt signature leaves
    /// them out ([`crate::engine::signature::signature_with`]) and a shared phrase never links two accounts by itself.
    pub fn stock_shingles(&self) -> &StockShingles {
        &self.stock
    }

    /// The three default lists, named `elicitation`, `rubric` and `trajectory` (bits 0, 1, 2).
    pub fn with_defaults() -> Result<PhraseMatcher, PhraseError> {
        let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        PhraseMatcher::new(&[
            ("elicitation", owned(DEFAULT_ELICITATION)),
            ("rubric", owned(DEFAULT_RUBRIC)),
            ("trajectory", owned(DEFAULT_TRAJECTORY)),
        ])
    }

    /// The lists' names, in bit order.
    pub fn list_names(&self) -> &[String] {
        &self.names
    }

    /// Number of phrases compiled.
    pub fn phrases(&self) -> usize {
        self.phrases
    }

    /// Names of the lists in `hits`.
    pub fn hit_names(&self, hits: PhraseHits) -> impl Iterator<Item = &str> + '_ {
        hits.names(&self.names)
    }

    /// The lists `text` matches. The text is normalised byte for byte into a stack buffer, a chunk at a time, and
    /// each chunk is walked in three interleaved lanes (see "Phrase matching" in `docs/score.md`). No allocation;
    /// stops after the chunk in which every list has matched.
    pub fn scan(&self, text: &str) -> PhraseHits {
        let Some(table) = &self.table else {
            return PhraseHits::NONE;
        };
        let need = self.max_len.saturating_sub(1).min(MAX_PHRASE_BYTES);
        if text.is_ascii() {
            return PhraseHits(self.scan_ascii(table, text.as_bytes(), need));
        }
        let mut buf = [0u8; SCAN_CHUNK + MAX_PHRASE_BYTES + 2];
        // The text starts and ends at a word boundary.
        buf[0] = SEP;
        let mut len: usize = 1;
        let mut rest = text;
        let mut hits = 0u32;
        loop {
            // Cut at a char boundary so no typographic separator straddles two chunks.
            let mut cut = rest.len().min(SCAN_CHUNK);
            while cut > 0 && !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at_checked(cut).unwrap_or((rest, ""));
            rest = tail;
            if let Some(out) = buf.get_mut(len..len + head.len()) {
                map_chunk(head.as_bytes(), out);
                len += head.len();
            }
            let done = rest.is_empty() || head.is_empty();
            if done && buf.get(len.wrapping_sub(1)) != Some(&SEP) {
                if let Some(b) = buf.get_mut(len) {
                    *b = SEP;
                    len += 1;
                }
            }
            hits |= table.walk_laned(&buf, 0, len, need, table.start).0;
            if done || hits == self.all {
                break;
            }
            // Carry the tail a match may straddle into the next chunk, collapsed (so it fits).
            let from = back(&buf, len, need);
            let mut j = 0;
            let mut prev = 0u8;
            for i in from..len {
                let c = buf.get(i).copied().unwrap_or(SEP);
                if !(c == SEP && prev == SEP) {
                    if let Some(o) = buf.get_mut(j) {
                        *o = c;
                    }
                    j += 1;
                }
                prev = c;
            }
            len = j;
        }
        PhraseHits(hits)
    }

    /// [`scan`](Self::scan) of `text`, which extends with a line break and more a text whose scan found `before`
    /// and whose length is `from`: only what follows is walked (from far enough back to see a match across the
    /// line break), when what is walked is ASCII and `text` holds the line break at `from`. Otherwise, or when
    /// every list has matched already, the same as `scan(text)` (or `before`). That `text[..from]` is the text scanned is the
    /// caller's to know: with another text, the hits are that text's and this one's mixed.
    pub fn scan_continued(&self, text: &str, from: usize, before: PhraseHits) -> PhraseHits {
        let Some(table) = &self.table else {
            return PhraseHits::NONE;
        };
        if before.0 == self.all {
            return before;
        }
        let bytes = text.as_bytes();
        let need = self.max_len.saturating_sub(1).min(MAX_PHRASE_BYTES);
        // Only the bytes from the walk's start on are read: they must be ASCII, the part before need not be.
        if bytes.get(from) != Some(&b'\n') || !bytes[back(bytes, from, need)..].is_ascii() {
            return self.scan(text);
        }
        PhraseHits(self.scan_ascii_from(table, bytes, from, before.0, need))
    }

    /// [`scan`](Self::scan) of ASCII text: the table's classes normalise ASCII bytes, so the text is walked as it
    /// is, a chunk at a time (each chunk's first lane starts far enough back in the text), between the separators
    /// that frame it.
    fn scan_ascii(&self, table: &Table, text: &[u8], need: usize) -> u32 {
        self.scan_ascii_from(table, text, 0, 0, need)
    }

    /// [`scan_ascii`](Self::scan_ascii) from `from`, the hits of the text before it being `hits`: every chunk
    /// after the first starts this way, and so does a continued scan.
    fn scan_ascii_from(
        &self,
        table: &Table,
        text: &[u8],
        mut from: usize,
        mut hits: u32,
        need: usize,
    ) -> u32 {
        // The state after the separator that precedes the text.
        let framed = table.step(table.start, SEP);
        loop {
            let to = text.len().min(from + SCAN_CHUNK);
            let (h, end) = table.walk_laned(text, from, to, need, framed);
            hits |= h;
            if to == text.len() {
                return hits | table.bits(table.step(end, SEP));
            }
            if hits == self.all {
                return hits;
            }
            from = to;
        }
    }
}
