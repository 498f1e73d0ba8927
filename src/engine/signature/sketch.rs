//! Shingles and the three sketches: head, tail and body (§2, §3).

use super::*;

// ---------------------------------------------------------------------------
// Hashing

/// `REGION_BINS` pseudo-random constants derived from `seed`.
pub(super) const fn region_consts(seed: u64, force_odd: bool) -> [u64; REGION_BINS] {
    let mut out = [0u64; REGION_BINS];
    let mut i = 0;
    while i < REGION_BINS {
        let v = moremur(seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        out[i] = if force_odd { v | 1 } else { v };
        i += 1;
    }
    out
}

/// Odd multipliers of the region hash functions.
pub(super) const REGION_MUL: [u64; REGION_BINS] = region_consts(0x0123_4567_89AB_CDEF, true);
/// Salts of the head hash functions.
pub(super) const HEAD_SALTS: [u64; REGION_BINS] = region_consts(0x7A3C_55D1_0E4B_9F21, false);
/// Salts of the tail hash functions.
pub(super) const TAIL_SALTS: [u64; REGION_BINS] = region_consts(0x3F84_D5B5_B547_0917, false);

pub(super) const MASK_NUM: u64 = 0x9E37_79B9_7F4A_7C15;
pub(super) const MASK_ID: u64 = 0xC2B2_AE3D_27D4_EB4F;
pub(super) const MASK_URL: u64 = 0x1656_67B1_9E37_79F9;
pub(super) const MASK_QUOTE: u64 = 0x85EB_CA77_C2B2_AE63;
pub(super) const MASK_CODE: u64 = 0x27D4_EB2F_1656_67C5;
pub(super) const MASK_CAP: u64 = 0x6A09_E667_F3BC_C908;
pub(super) const LABEL_SALT: u64 = 0xD6E8_FEB8_6659_FD93;
pub(super) const SHORT_SALT: u64 = 0xBB67_AE85_84CA_A73B;
pub(super) const BODY_SALT: u64 = 0x5899_65CC_7537_4CC3;
pub(super) const DENSE_SALT: u64 = 0x1D8E_4E27_C47D_124F;
pub(super) const KEY_SALT: u64 = 0x3C6E_F372_FE94_F82B;
/// Rotations applied to the older tokens of a shingle (oldest first).
pub(super) const SHINGLE_ROT: [u32; SHINGLE_TOKENS - 1] = [52, 39, 26, 13];

/// Size of the ring of recent shingles: a power of two ≥ `REGION_MAX_SHINGLES`.
pub(super) const RING: usize = 32;
pub(super) const QUOTE_MAX_BYTES: usize = 600;
pub(super) const INLINE_CODE_MAX_BYTES: usize = 200;
pub(super) const LONG_WORD_CHARS: usize = 24;
/// Bytes of a lowercased word on the Unicode path (24 characters of up to 4
/// bytes, and a lowercase form can be longer than the original).
pub(super) const WORD_BUF: usize = 128;

// ---------------------------------------------------------------------------
// Sketching

/// A signature's walk stopped at the end of a text: what [`Sketcher`] held
/// there, less the stock shingles it was made with (§11). Continued by
/// [`signature_continued`] on a text that extends that one.
///
/// What it holds besides the signature's own minima: the hashes of the
/// last four tokens and of the last 32 shingles (the tail's candidates).
/// Single-word hashes can be confirmed by hashing guessed words, so a
/// partial stays in the process's memory (the prompt cache) and is never
/// written out.
#[derive(Clone, Copy)]
pub struct Partial {
    walk: Walk,
    /// Length of the text walked, in bytes.
    len: usize,
}

impl Partial {
    /// Length of the text it walked, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for the walk of an empty text.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key of the signature it is a walk of.
    pub(super) fn key(&self) -> u64 {
        self.walk.key
    }
}

impl fmt::Debug for Partial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes of the text's last words: not printed.
        f.debug_struct("Partial")
            .field("len", &self.len)
            .field("tokens", &self.walk.tokens)
            .finish_non_exhaustive()
    }
}

/// Everything a walk has gathered so far: what a [`Partial`] keeps.
#[derive(Clone, Copy)]
pub(super) struct Walk {
    key: u64,
    /// Head shingles that went into the head sketch.
    head_kept: usize,
    /// Bit `i`: ring slot `i` holds a stock shingle.
    ring_stock: u32,
    /// The last `SHINGLE_TOKENS - 1` tokens, oldest first.
    prev: [u64; SHINGLE_TOKENS - 1],
    tokens: u64,
    last_mask: u64,
    shingles: usize,
    head_count: usize,
    /// Head shingles that lie within the first line.
    head_line_count: usize,
    /// Whether a line break has been seen after the first token.
    past_first_line: bool,
    pending_newline: bool,
    /// Index of the first token of the current line.
    line_start_tok: u64,
    pub(super) sentence_start: bool,
    /// The last `RING` shingle hashes; shingle `i` starts at token `i`.
    ring: [u64; RING],
    head: [u64; REGION_BINS],
    tail: [u64; REGION_BINS],
    body: [u32; BODY_BINS],
}

/// Receives tokens, forms shingles and fills the three sketches.
pub(super) struct Sketcher<'s> {
    /// Shingles left out of the sketches (§10).
    stock: &'s StockShingles,
    /// Building [`StockShingles`]: every full shingle's hash, in order.
    pub(super) record: Option<Vec<u64>>,
    pub(super) w: Walk,
}

impl<'s> Sketcher<'s> {
    pub(super) fn new(key: u64, stock: &'s StockShingles) -> Self {
        Sketcher {
            stock,
            record: None,
            w: Walk {
                key,
                head_kept: 0,
                ring_stock: 0,
                prev: [0; SHINGLE_TOKENS - 1],
                tokens: 0,
                last_mask: 0,
                shingles: 0,
                head_count: 0,
                head_line_count: 0,
                past_first_line: false,
                pending_newline: false,
                line_start_tok: 0,
                sentence_start: true,
                ring: [0; RING],
                head: [u64::MAX; REGION_BINS],
                tail: [u64::MAX; REGION_BINS],
                body: [u32::MAX; BODY_BINS],
            },
        }
    }

    /// The walk so far, to be continued on a text that extends the one
    /// walked ([`Sketcher::resumed`]).
    pub(super) fn partial(&self, len: usize) -> Partial {
        Partial { walk: self.w, len }
    }

    /// A sketcher that goes on where `p` stopped, leaving out `stock`'s
    /// shingles (the stock `p` was made with: its key is checked by the
    /// caller).
    pub(super) fn resumed(p: &Partial, stock: &'s StockShingles) -> Self {
        Sketcher {
            stock,
            record: None,
            w: p.walk,
        }
    }

    #[inline]
    pub(super) fn newline(&mut self) {
        if self.w.tokens > 0 {
            self.w.pending_newline = true;
        }
        self.w.sentence_start = true;
    }

    #[inline]
    pub(super) fn word(&mut self, t: u64) {
        self.w.last_mask = 0;
        self.push_token(t);
    }

    #[inline]
    pub(super) fn mask(&mut self, m: u64) {
        if self.w.last_mask != m {
            self.w.last_mask = m;
            self.push_token(m);
        }
    }

    #[inline(always)]
    fn push_token(&mut self, t: u64) {
        if self.w.pending_newline {
            self.w.pending_newline = false;
            self.w.past_first_line = true;
            self.w.line_start_tok = self.w.tokens;
        }
        if self.w.tokens >= (SHINGLE_TOKENS - 1) as u64 {
            // Distinct rotations keep the window's order; one mix finishes it.
            let [p0, p1, p2, p3] = self.w.prev;
            let [r0, r1, r2, r3] = SHINGLE_ROT;
            let acc = t
                ^ p0.rotate_left(r0)
                ^ p1.rotate_left(r1)
                ^ p2.rotate_left(r2)
                ^ p3.rotate_left(r3);
            let h = moremur(acc ^ self.w.key);
            if let Some(r) = self.record.as_mut() {
                r.push(h);
            }
            self.shingle(h);
        }
        let [_, p1, p2, p3] = self.w.prev;
        self.w.prev = [p1, p2, p3, t];
        self.w.tokens += 1;
    }

    #[inline(always)]
    fn shingle(&mut self, s: u64) {
        // A stock shingle keeps its place (regions are counted in shingles)
        // but goes into no sketch.
        let stock = !self.stock.is_empty() && self.stock.contains(s);
        if !stock {
            // Body: one-permutation MinHash; the high bits pick the bin.
            let e = s ^ BODY_SALT;
            let bin = ((e >> 32).wrapping_mul(BODY_BINS as u64) >> 32) as usize;
            let v = e as u32;
            // u32::MAX marks an empty bin (a real minimum equals it with odds 2^-32).
            if let Some(m) = self.w.body.get_mut(bin) {
                *m = (*m).min(v);
            }
        }
        // Head: within the first line (at most REGION_MAX), or the first REGION_MIN.
        let in_head = (!self.w.past_first_line && self.w.head_count < REGION_MAX_SHINGLES)
            || self.w.head_count < REGION_MIN_SHINGLES;
        if in_head {
            self.w.head_count += 1;
            self.w.head_line_count += usize::from(!self.w.past_first_line);
            if !stock {
                self.w.head_kept += 1;
                minhash_into(&mut self.w.head, &HEAD_SALTS, s);
            }
        }
        // Tail: decided at the end, from the ring.
        let slot = self.w.shingles & (RING - 1);
        if let Some(r) = self.w.ring.get_mut(slot) {
            *r = s;
        }
        self.w.ring_stock = (self.w.ring_stock & !(1 << slot)) | (u32::from(stock) << slot);
        self.w.shingles += 1;
    }

    pub(super) fn finish(mut self) -> PromptSignature {
        if self.w.tokens > 0 && self.w.tokens < SHINGLE_TOKENS as u64 {
            // Too short for one full shingle: one shingle of all the tokens.
            let mut acc = self.w.tokens ^ SHORT_SALT;
            for &p in &self.w.prev {
                acc = moremur(acc ^ p);
            }
            self.shingle(moremur(acc ^ self.w.key));
        }
        // Tail: shingles wholly within the last line, or the last REGION_MIN.
        let n = self.w.shingles;
        let start = n.saturating_sub(REGION_MAX_SHINGLES);
        let min_start = n.saturating_sub(REGION_MIN_SHINGLES);
        let mut tail_line_count = 0;
        let mut tail_kept = 0;
        for idx in start..n {
            let slot = idx & (RING - 1);
            if let Some(&s) = self.w.ring.get(slot) {
                let in_line = idx as u64 >= self.w.line_start_tok;
                tail_line_count += usize::from(in_line);
                let stock = self.w.ring_stock & (1 << slot) != 0;
                if (in_line || idx >= min_start) && !stock {
                    tail_kept += 1;
                    minhash_into(&mut self.w.tail, &TAIL_SALTS, s);
                }
            }
        }
        let mut flags = 0;
        if self.w.head_line_count < REGION_MIN_SHINGLES {
            flags |= HEAD_FALLBACK;
        }
        if tail_line_count < REGION_MIN_SHINGLES {
            flags |= TAIL_FALLBACK;
        }
        if n > 0 && self.w.head_kept == 0 {
            flags |= HEAD_EMPTY;
        }
        if n > 0 && tail_kept == 0 {
            flags |= TAIL_EMPTY;
        }
        self.densify_body();
        let mut sig = PromptSignature {
            head: [0; REGION_BINS],
            tail: [0; REGION_BINS],
            body: [0; BODY_BINS],
            tokens: u32::try_from(self.w.tokens).unwrap_or(u32::MAX),
            flags,
        };
        for (out, m) in sig.head.iter_mut().zip(self.w.head.iter()) {
            *out = (m >> 32) as u32;
        }
        for (out, m) in sig.tail.iter_mut().zip(self.w.tail.iter()) {
            *out = (m >> 32) as u32;
        }
        for (out, m) in sig.body.iter_mut().zip(self.w.body.iter()) {
            *out = (m >> 16) as u16;
        }
        sig
    }

    /// Fills empty body bins from non-empty ones along a fixed probe sequence.
    ///
    /// Bin `i` takes the first filled bin of its sequence (§3). The sequence
    /// is fixed, so [`PROBE_RANK`] holds where each bin first appears in it,
    /// and the first filled one is the filled bin of lowest rank: a short
    /// prompt (one or two filled bins) then costs a few compares per empty
    /// bin instead of walking some 32 probe hashes each.
    fn densify_body(&mut self) {
        let filled = self
            .w
            .body
            .iter()
            .enumerate()
            .fold(0u64, |acc, (j, &v)| acc | (u64::from(v != u32::MAX) << j));
        if filled == 0 {
            return;
        }
        let src = self.w.body;
        for ((i, out), ranks) in self.w.body.iter_mut().enumerate().zip(PROBE_RANK.iter()) {
            if filled & (1u64 << i) != 0 {
                continue;
            }
            let mut best = (PROBE_ATTEMPTS, None);
            let mut rest = filled;
            while rest != 0 {
                let j = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if let Some(&rank) = ranks.get(j) {
                    if rank < best.0 {
                        best = (rank, Some(j));
                    }
                }
            }
            let j = best.1.or_else(|| {
                (1..BODY_BINS)
                    .map(|d| (i + d) % BODY_BINS)
                    .find(|&j| filled & (1u64 << j) != 0)
            });
            if let Some(v) = j.and_then(|j| src.get(j)) {
                *out = *v;
            }
        }
    }
}

/// Length of each body bin's probe sequence; past it, the next filled bin in
/// order is taken.
const PROBE_ATTEMPTS: u8 = 64;

/// Attempt `attempt` of body bin `bin`'s probe sequence: the bin it looks at.
const fn probe(bin: usize, attempt: u64) -> usize {
    ((moremur(DENSE_SALT ^ ((bin as u64) << 8) ^ attempt) >> 32).wrapping_mul(BODY_BINS as u64)
        >> 32) as usize
}

/// `PROBE_RANK[i][j]`: the first attempt of bin `i`'s probe sequence that
/// looks at bin `j`, or [`PROBE_ATTEMPTS`] if none of them does.
static PROBE_RANK: [[u8; BODY_BINS]; BODY_BINS] = probe_ranks();

const fn probe_ranks() -> [[u8; BODY_BINS]; BODY_BINS] {
    let mut ranks = [[PROBE_ATTEMPTS; BODY_BINS]; BODY_BINS];
    let mut i = 0;
    while i < BODY_BINS {
        let mut attempt = 0;
        while attempt < PROBE_ATTEMPTS {
            let j = probe(i, attempt as u64);
            if ranks[i][j] == PROBE_ATTEMPTS {
                ranks[i][j] = attempt;
            }
            attempt += 1;
        }
        i += 1;
    }
    ranks
}

/// Updates a region sketch with shingle `s`: bin `i` keeps the minimum of
/// hash function `i` (multiply, then xor-shift, of the salted shingle).
#[inline]
pub(super) fn minhash_into(mins: &mut [u64; REGION_BINS], salts: &[u64; REGION_BINS], s: u64) {
    for ((m, salt), mul) in mins.iter_mut().zip(salts).zip(REGION_MUL.iter()) {
        let v = (s ^ salt).wrapping_mul(*mul);
        let v = v ^ (v >> 29);
        if v < *m {
            *m = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk `densify_body` replaced: each empty bin hashes its probe
    /// sequence until it meets a filled bin.
    fn densify_by_walking(body: &mut [u32; BODY_BINS]) {
        let filled = |j: usize| body[j] != u32::MAX;
        if !(0..BODY_BINS).any(filled) {
            return;
        }
        let src = *body;
        let mut out = src;
        for (i, o) in out.iter_mut().enumerate() {
            if src[i] != u32::MAX {
                continue;
            }
            let j = (0..u64::from(PROBE_ATTEMPTS))
                .map(|attempt| probe(i, attempt))
                .find(|&j| src[j] != u32::MAX)
                .or_else(|| {
                    (1..BODY_BINS)
                        .map(|d| (i + d) % BODY_BINS)
                        .find(|&j| src[j] != u32::MAX)
                });
            *o = src[j.unwrap()];
        }
        *body = out;
    }

    fn densified(mask: u32) -> ([u32; BODY_BINS], [u32; BODY_BINS]) {
        let stock = StockShingles::none(1);
        let mut sk = Sketcher::new(1, &stock);
        for (j, b) in sk.w.body.iter_mut().enumerate() {
            *b = if mask & (1 << j) != 0 {
                1000 + j as u32
            } else {
                u32::MAX
            };
        }
        let mut walked = sk.w.body;
        densify_by_walking(&mut walked);
        sk.densify_body();
        (sk.w.body, walked)
    }

    #[test]
    fn densification_by_rank_takes_the_bins_the_probe_walk_takes() {
        // Every body with one or two filled bins (short prompts), then
        // pseudo-random fill patterns of every density.
        let mut masks: Vec<u32> = (0..BODY_BINS).map(|j| 1 << j).collect();
        for a in 0..BODY_BINS {
            for b in a + 1..BODY_BINS {
                masks.push(1 << a | 1 << b);
            }
        }
        let mut x = 7u64;
        for _ in 0..20_000 {
            x = moremur(x.wrapping_add(0x9E37_79B9_7F4A_7C15));
            let density = (x >> 59) as u32; // keep 0..=31 of every 32 bits
            let m = (x as u32) & ((moremur(x) as u32) | (u32::MAX >> density.min(31)));
            masks.push(m);
        }
        masks.push(0);
        masks.push(u32::MAX);
        for m in masks {
            let (by_rank, walked) = densified(m);
            assert_eq!(by_rank, walked, "fill mask {m:#010x}");
        }
    }

    #[test]
    fn some_bins_probe_sequences_miss_bins() {
        // The fallback after the probe sequence is reachable: some bin's 64
        // attempts never look at some other bin, so the rank table has gaps.
        assert!(PROBE_RANK.iter().flatten().any(|&r| r == PROBE_ATTEMPTS));
    }
}
