//! Prompt template signature: a compact, non-reversible sketch of a prompt's *template* (its instructions and structure), robust to the fill, with LSH keys for finding prompts built from the same template.
//!
//! # Why
//!
//! A distillation campaign spreads prompts over thousands of accounts. The
//! prompts are built from a few templates ("Imagine and articulate the
//! internal reasoning behind the completed response below... Question: {fill}
//! Answer: {fill}") whose fills vary and are usually most of the text. The
//! engine keeps only this signature of a prompt, never the text. It compares
//! two signatures with [`is_near`], and indexes signatures by
//! [`PromptSignature::index_keys`] in a map keyed by exact `u64` values, so
//! that prompts from one template meet in the same buckets.
//!
//! # Design (this section is the specification)
//!
//! ## 1. Normalisation and tokens (one pass, no allocation)
//!
//! The text is scanned once, left to right. Each token is hashed on the fly
//! into 64 bits; no `String` is built. Tokens are:
//!
//! * **words**: maximal runs of non-whitespace, stripped of leading and
//!   trailing punctuation, lowercased (ASCII fast path, Unicode through
//!   `char::to_lowercase`). Inner `-` and `'` are kept (`step-by-step`,
//!   `don't`; `’` counts as `'`). A word immediately followed by `:` is a
//!   distinct *label* token (`question:` differs from `question`).
//! * **CJK ideographs and kana**: one token per character (those scripts do
//!   not separate words with spaces).
//! * **masks**: one placeholder token that stands for a span of fill:
//!   * code: fenced blocks (from a fence to the next fence or the end of the
//!     text) and inline code (within one line, at most 200 bytes);
//!   * quoted spans: `"…"`, `“…”`, `„…“`, `«…»`, `「…」`, `『…』`, at most 600
//!     bytes (an unmatched quote mark is ignored);
//!   * URLs: a chunk containing `://` or starting with `www.`;
//!   * numbers: a chunk starting with a digit (`3`, `3.14`, `1,000`,
//!     `2024-01-01`, `10k`, `1st`);
//!   * identifiers: letters mixed with digits (`gpt4`), inner punctuation other
//!     than `-` and `'` (`snake_case`, `os.path`, `a@b.c`, `x=1`), camelCase,
//!     or longer than 24 characters;
//!   * capitalised words not at the start of a sentence (names, places,
//!     languages, products: `You are Alice, a tutor in Paris`). A sentence
//!     starts the text, a line, and follows a word ending in `.` `!` `?` `:`
//!     `;` or a code block.
//!
//!   Consecutive identical masks collapse into one, so the fills `1, 2 and 3`
//!   and `7` leave only the word `and` as a difference.
//!
//! Line breaks outside masks are recorded (for §3).
//!
//! ## 2. Shingles
//!
//! Every window of [`SHINGLE_TOKENS`] = 5 consecutive tokens is a shingle,
//! hashed to 64 bits (keyed by the signing key, see §7). A prompt with fewer
//! than 5 tokens has one shingle made of all its tokens. Five-token shingles
//! are long enough that unrelated prompts rarely share one by accident:
//! shorter ones are shared through stock phrases such as "can you explain
//! the", and with 4-token shingles twice as many unrelated pairs became near
//! in the measurements. They are still short enough that a template's fixed
//! spans produce many shingles.
//!
//! ## 3. Three sketches: head, tail and body
//!
//! Plain MinHash over all shingles estimates Jaccard similarity. For two
//! prompts of one template that is `T / (T + 2F)` (T template shingles, F
//! fill shingles per prompt): at most 0.25 once the fill is 60 % of the text,
//! and lower as fills grow. That is too close to unrelated prompts (≈ 0) for
//! a compact sketch to separate. A 64-bit SimHash is worse: at that overlap
//! about 24 of its 64 bits are expected to differ, against 32 ± 4 for
//! unrelated text. But templates put their instructions at the start or the
//! end of the prompt, in lines of their own. So the signature sketches three
//! regions:
//!
//! * **head**: the shingles that lie wholly within the first line, at most
//!   [`REGION_MAX_SHINGLES`] = 24. If the first line holds fewer than
//!   [`REGION_MIN_SHINGLES`] = 8, the head is instead the first 8 shingles of
//!   the prompt, and it is marked as a *fallback* region;
//! * **tail**: the same at the end: the shingles wholly within the last line,
//!   the last 24 at most. If the last line holds fewer than 8, the tail is the
//!   last 8 shingles of the prompt (a fallback);
//! * **body**: every shingle of the prompt.
//!
//! For a template whose instruction is its first (or last) line, that region
//! is template only. Its Jaccard similarity between two instances is ≈ 1
//! whatever the fill. The 8-shingle minimum (about 12 tokens) keeps a short
//! shared phrase ("Here is my code:", a sign-off) from filling a region by
//! itself. The body is the fallback for templates whose ends are both fill.
//!
//! Head and tail are MinHash sketches with [`REGION_BINS`] = 16 independent
//! hash functions each (at most 24 shingles × 16 functions: cheap), keeping
//! 32 bits of each minimum. Being independent, their bins need no
//! densification, so no two bins repeat one shingle by construction. (Two
//! bins that repeated one shared phrase would make the keys of §5 collide on
//! it.) The body is a one-permutation MinHash (Li, Owen and Zhang 2012)
//! with [`BODY_BINS`] = 32 bins: a shingle's hash picks a bin, and the bin
//! keeps the lowest hash it receives. Empty bins borrow from a non-empty bin
//! chosen by a fixed probe sequence ("optimal densification", Shrivastava
//! 2017), and each bin keeps 16 bits.
//!
//! ## 4. Similarity and the near rule
//!
//! The similarity of a region is the fraction of its bins that are equal. It
//! estimates the region's Jaccard similarity, plus a chance agreement of 2⁻³²
//! (head, tail) or 2⁻¹⁶ (body) per bin. [`similarity_parts`] returns the
//! three estimates, [`similarity`] their maximum. [`is_near`] is true when
//! both signatures are informative (§6) and at least one of these holds:
//!
//! * head: ≥ 5 of 16 bins equal (estimated Jaccard ≥ 0.31);
//! * tail: ≥ 5 of 16 bins equal;
//! * body: ≥ 3 of 32 bins equal (estimated Jaccard ≥ 0.094), counted only
//!   when both prompts have at least [`MIN_BODY_TOKENS`] = 36 tokens.
//!
//! The thresholds are [`NEAR_REGION_BINS`] and [`NEAR_BODY_BINS`]. Below 36
//! tokens a prompt has fewer shingles than the body has bins. Densification
//! then copies each shingle into several bins, so one shared phrase can fill
//! 3 of 32 bins by itself. Head and tail cover most of such a prompt anyway.
//!
//! ## 5. Index keys (LSH)
//!
//! [`PromptSignature::index_keys`] returns [`INDEX_KEYS`] = 16 keys, 8 from
//! the head and 8 from the tail. Each is mixed with its region, position and
//! kind into a `u64`, so keys from different positions never coincide except
//! by chance. Each key is a band of two bins, (0, 1), (2, 3), … (14, 15): two
//! prompts share a band with probability J², J the region's Jaccard
//! similarity ("AND-OR" amplification), so at least one of the 8 with
//! probability 1 − (1 − J²)⁸ (J = 1: always; J = 0.5: 90 %; J = 0.31, the
//! [`is_near`] mark: 55 % per pair of prompts). A stock phrase that makes up
//! a small part of a region (J ≈ 0.1) rarely links prompts: ≈ 8 %.
//!
//! Why 8 bands per region and not 4 (keys version 2 first had 4): a campaign
//! that paraphrases its templates per request (`simulate`'s stealth
//! population) shares a key with another account's recent prompt in 52 % of
//! its requests with 4 bands and 75 % with 8; an account's *first* request,
//! which is served in full unless it links, in 22 % and 41 %. On the default
//! scenario that brought the stealth campaign's containment from 660 s to
//! 420 s. The cost: the linker probes twice as many prompt keys —
//! `cargo bench --bench engine`, same run: decide+settle with detection
//! 6.64 → 8.64 µs, without detection 2.71 → 4.23 µs.
//!
//! Why bands of two and not one bin per key (version 1 did that for
//! line-anchored regions): a bin is the *minimum* of a region's shingle
//! hashes, so it is not spread over 2³²: for a region of n shingles it lies
//! near 2³²/n, and two unrelated regions share it with probability about
//! n/2³³. Across the millions of pairs of prompts a busy API sees within a
//! link window that is not rare at all: a simulated day of 3.7 M requests
//! (`simulate`, config/scenarios/default.toml) gave tens of accidental
//! shared keys per 10 minutes, and every one linked two unrelated accounts,
//! so honest customers were pulled into a campaign's cluster. A band of two
//! minima collides by chance with probability about (n/2³³)², which is
//! negligible at any traffic. Keys find candidates: confirm one with
//! [`is_near`] before linking where the signatures are at hand, and do not
//! index non-informative signatures
//! (§6). These probabilities are over the choice of hash functions. For one
//! given stock phrase the outcome is fixed: if its shingle's hashes happen to
//! be low, every short region it dominates lands in the same bucket. Expect
//! a few such buckets in real traffic, large and spread over unrelated
//! accounts (§9).
//!
//! ## 6. Informative signatures
//!
//! A prompt with fewer than [`MIN_INFORMATIVE_TOKENS`] = 8 tokens (after
//! masking) is too short to tell a template from a common phrase ("hi",
//! "what is the capital of France?"). For such a prompt
//! [`PromptSignature::is_informative`] is false, [`is_near`] is false, and the
//! engine should not index it.
//!
//! ## 7. Privacy: not reversible
//!
//! Only MinHash minima are kept: 16 + 16 values of 32 bits and 32 values of
//! 16 bits. Each is the lowest hash among a set of 5-token shingles of the
//! lowercased and masked text. The token count and two flag bits are also
//! kept. Numbers, quoted spans, code, URLs, identifiers and names are never
//! hashed; only their mask is. Each value comes from one shingle, and
//! nothing records the shingles' order or how many there were, so the text
//! cannot be rebuilt from that. The most an attacker with the signing key can
//! do is confirm a *guessed* 5-word sequence, by hashing candidates and
//! looking for a match. (For a 16-bit body value, 1 in 65,536 wrong
//! candidates also matches.) [`signature`] uses a fixed public key;
//! [`signature_keyed`] takes a deployment secret, so such guesses cannot be
//! checked without it. Signatures made with different keys are unrelated and
//! must not be compared.
//!
//! ## 8. Cost
//!
//! One pass over the bytes with no heap allocation and nothing shared, so it
//! is safe to call from any thread. Per ASCII byte, a table lookup, with a
//! tight loop over runs of lowercase letters. Per word, a multiply per 8
//! bytes. Per shingle, one mix and a bin update. Per head or tail shingle,
//! 16 multiply-xorshifts. About 100k instructions for a 2 KB prompt
//! (callgrind). Its time per call is the `prompt signature, 2 KB` case of
//! `cargo bench --bench engine` (figures in BENCHMARKS.md).
//!
//! ## 9. Limits
//!
//! * A template whose instruction sits between two fills ("{text}\n\nBased on
//!   the conversation above, …\n\n{text}") has only the body sketch, and its
//!   Jaccard similarity is small. In the measurements about 80 % of such
//!   pairs were near, and none shared an index key.
//! * An instruction shorter than about 12 tokens followed by a long fill
//!   ("Summarize the text below.\n\n{article}") cannot be told from a user
//!   typing the same sentence. By design it links only partly.
//! * Slots inside the instruction ("You are an expert {profession}…") break
//!   the shingles around them and lower the region's similarity.
//! * Boilerplate lines shared by unrelated users (long sign-offs, pasted
//!   system prompts) look like a template. The engine should weigh a key by
//!   how many unrelated clusters use it, not by its bucket size alone, and
//!   should sign user text apart from a fixed system prompt.
//! * Paraphrasing defeats any text signature. This one targets campaigns that
//!   reuse templates verbatim, as template-driven generation does.
//! * Outcomes of the pairs of one template are correlated: they share its
//!   template shingles, and so the same luck with the hash functions. A
//!   borderline template links well or poorly as a whole, and rates measured
//!   over a few templates vary with the signing key (the
//!   `pair_rates_across_keys` test shows by how much).
//!
//! ## 10. Stock phrases
//!
//! Some phrases are typed by many unrelated users ("write out your reasoning
//! step by step"). In a short prompt such a phrase is a large share of a
//! region, so two users who both typed it share an index key often enough
//! to link them (in `simulate`'s families, every cluster that held honest
//! accounts of two unrelated populations was made by such keys).
//! [`signature_with`] takes [`StockShingles`], the shingles of a list of
//! such phrases (the engine uses its phrase lists: by construction phrases
//! many people type), and leaves them out of every sketch. The shingles that
//! straddle a phrase and the user's own words stay: they are the user's. A
//! region with no other shingle has no sketch and gives no index key (its
//! keys are 0) and is never near anything; a prompt with neither head nor
//! tail is not informative.

use std::fmt;
use std::str::FromStr;

/// Tokens per shingle (see the module docs, §2).
pub const SHINGLE_TOKENS: usize = 5;
/// MinHash bins of the head sketch and of the tail sketch (§3).
pub const REGION_BINS: usize = 16;
/// Bins of the one-permutation body sketch (§3).
pub const BODY_BINS: usize = 32;
/// Most shingles a head or tail region holds (§3).
pub const REGION_MAX_SHINGLES: usize = 24;
/// Fewest shingles a head or tail region holds when the prompt has that many (§3).
pub const REGION_MIN_SHINGLES: usize = 8;
/// Equal head (or tail) bins, out of [`REGION_BINS`], that make two signatures near (§4).
pub const NEAR_REGION_BINS: usize = 5;
/// Equal body bins, out of [`BODY_BINS`], that make two signatures near (§4).
pub const NEAR_BODY_BINS: usize = 3;
/// Number of LSH keys returned by [`PromptSignature::index_keys`] (§5).
pub const INDEX_KEYS: usize = 16;
/// Fewest tokens (after masking) for a signature to be informative (§6).
pub const MIN_INFORMATIVE_TOKENS: u32 = 8;
/// Fewest tokens for the body sketch to count (§4): enough for one shingle
/// per body bin. Below that, densification copies a few shingles into many
/// bins, and one shared phrase can look like a tenth of the prompt.
pub const MIN_BODY_TOKENS: u32 = (BODY_BINS + SHINGLE_TOKENS - 1) as u32;

/// Format version written first by [`PromptSignature::to_hex`].
const VERSION: u8 = 1;
/// Version of the index keys' construction, mixed into every key (2: bands
/// of two bins in every region, §5).
const KEYS_VERSION: u8 = 2;
/// Bytes of the binary form behind [`PromptSignature::to_hex`].
const ENCODED_LEN: usize = 1 + 1 + 4 + 4 * REGION_BINS * 2 + 2 * BODY_BINS;
/// Key used by [`signature`].
const DEFAULT_KEY: u64 = 0x6469_7374_696C_6C21;

/// Compact signature of a prompt's template; see the module docs for the design.
///
/// It is `Copy` and 200 bytes: 16 + 16 MinHash minima of 32 bits (head and
/// tail regions), 32 of 16 bits (body), the prompt's token count and two
/// flags (whether the head and the tail are fallback regions).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromptSignature {
    head: [u32; REGION_BINS],
    tail: [u32; REGION_BINS],
    body: [u16; BODY_BINS],
    tokens: u32,
    /// `HEAD_FALLBACK`, `TAIL_FALLBACK`, `HEAD_EMPTY` and `TAIL_EMPTY` bits.
    flags: u8,
}

/// Flag: the first line held fewer than `REGION_MIN_SHINGLES` shingles.
const HEAD_FALLBACK: u8 = 1;
/// Flag: the last line held fewer than `REGION_MIN_SHINGLES` shingles.
const TAIL_FALLBACK: u8 = 2;
/// Flag: every shingle of the head was a stock shingle (§10): the head sketch is empty.
const HEAD_EMPTY: u8 = 4;
/// Flag: every shingle of the tail was a stock shingle: the tail sketch is empty.
const TAIL_EMPTY: u8 = 8;
/// Every flag a signature may carry.
const ALL_FLAGS: u8 = HEAD_FALLBACK | TAIL_FALLBACK | HEAD_EMPTY | TAIL_EMPTY;

/// Estimated Jaccard similarities of two signatures, region by region (§4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    /// Fraction of equal head bins, in `[0, 1]`.
    pub head: f32,
    /// Fraction of equal tail bins, in `[0, 1]`.
    pub tail: f32,
    /// Fraction of equal body bins, in `[0, 1]`.
    pub body: f32,
}

impl Similarity {
    /// The largest of the three estimates.
    pub fn max(&self) -> f32 {
        self.head.max(self.tail).max(self.body)
    }
}

/// Error from [`PromptSignature::from_hex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseSignatureError {
    /// The string does not have the length of an encoded signature.
    Length {
        /// Hex digits expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A character is not a hexadecimal digit.
    NotHex {
        /// Byte offset of the first bad character.
        at: usize,
    },
    /// The encoding's version is not one this code reads.
    Version(u8),
}

impl fmt::Display for ParseSignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseSignatureError::Length { expected, found } => write!(
                f,
                "prompt signature: expected {expected} hex digits, found {found} characters"
            ),
            ParseSignatureError::NotHex { at } => {
                write!(f, "prompt signature: not a hex digit at byte {at}")
            }
            ParseSignatureError::Version(v) => {
                write!(f, "prompt signature: unknown version {v}")
            }
        }
    }
}

impl std::error::Error for ParseSignatureError {}

/// Signature of `text` with the built-in public key (§7). Never panics.
pub fn signature(text: &str) -> PromptSignature {
    signature_keyed(text, DEFAULT_KEY)
}

/// Signature of `text` with a deployment secret `key` (§7). Never panics.
///
/// Only signatures made with the same key can be compared or indexed together.
pub fn signature_keyed(text: &str, key: u64) -> PromptSignature {
    signature_with(text, &StockShingles::none(key))
}

/// Signature of `text` with the key of `stock`, leaving out the shingles of
/// its stock phrases (§10). Never panics.
pub fn signature_with(text: &str, stock: &StockShingles) -> PromptSignature {
    let mut sk = Sketcher::new(stock.key, stock);
    tokenize(text, &mut sk);
    sk.finish()
}

/// The shingles of phrases that many unrelated users type (§10), left out of
/// a signature so that a shared stock phrase cannot make two prompts look
/// built from one template.
#[derive(Clone)]
pub struct StockShingles {
    key: u64,
    /// Sorted, without duplicates.
    hashes: Vec<u64>,
    /// One bit per value of a hash's low 12 bits (64 words; empty, and not
    /// allocated, without stock phrases): most shingles are ruled out by one
    /// load, without searching `hashes`.
    filter: Vec<u64>,
}

impl StockShingles {
    /// No stock phrases: signatures keep every shingle.
    pub fn none(key: u64) -> StockShingles {
        StockShingles {
            key,
            hashes: Vec::new(),
            filter: Vec::new(),
        }
    }

    /// The shingles of `phrases` under the built-in public key (§7). A
    /// phrase shorter than a shingle ([`SHINGLE_TOKENS`] tokens) has none;
    /// `*` (the phrase lists' word-prefix mark) is dropped.
    pub fn new<'a>(phrases: impl IntoIterator<Item = &'a str>) -> StockShingles {
        StockShingles::keyed(phrases, DEFAULT_KEY)
    }

    /// The shingles of `phrases` under `key`.
    pub fn keyed<'a>(phrases: impl IntoIterator<Item = &'a str>, key: u64) -> StockShingles {
        let none = StockShingles::none(key);
        let mut hashes = Vec::new();
        for phrase in phrases {
            let mut sk = Sketcher::new(key, &none);
            sk.record = Some(Vec::new());
            tokenize(&phrase.replace('*', ""), &mut sk);
            hashes.extend(sk.record.unwrap_or_default());
        }
        hashes.sort_unstable();
        hashes.dedup();
        let mut filter = if hashes.is_empty() {
            Vec::new()
        } else {
            vec![0u64; 64]
        };
        for &h in &hashes {
            let bit = (h & 4095) as usize;
            if let Some(w) = filter.get_mut(bit / 64) {
                *w |= 1 << (bit % 64);
            }
        }
        StockShingles {
            key,
            hashes,
            filter,
        }
    }

    /// Number of distinct stock shingles.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    #[inline]
    fn contains(&self, h: u64) -> bool {
        let bit = (h & 4095) as usize;
        let hit = self
            .filter
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0);
        hit && self.hashes.binary_search(&h).is_ok()
    }
}

impl fmt::Debug for StockShingles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StockShingles")
            .field("shingles", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

/// Estimated Jaccard similarity of the head, tail and body sketches (§4).
///
/// The body estimate is 0 unless both prompts have at least
/// [`MIN_BODY_TOKENS`] tokens.
pub fn similarity_parts(a: &PromptSignature, b: &PromptSignature) -> Similarity {
    let head = equal_region(a, b, HEAD_EMPTY, &a.head, &b.head);
    let tail = equal_region(a, b, TAIL_EMPTY, &a.tail, &b.tail);
    let body = if body_usable(a, b) {
        equal_bins(&a.body, &b.body)
    } else {
        0
    };
    Similarity {
        head: head as f32 / REGION_BINS as f32,
        tail: tail as f32 / REGION_BINS as f32,
        body: body as f32 / BODY_BINS as f32,
    }
}

/// Template similarity in `[0, 1]`: the largest of the head, tail and body
/// estimates ([`similarity_parts`]). 1 for a signature with itself.
pub fn similarity(a: &PromptSignature, b: &PromptSignature) -> f32 {
    similarity_parts(a, b).max()
}

/// Whether two prompts look built from the same template (§4).
///
/// True when both are informative and at least [`NEAR_REGION_BINS`] of 16
/// head bins, or of 16 tail bins, are equal, or (for prompts of at least
/// [`MIN_BODY_TOKENS`] tokens) [`NEAR_BODY_BINS`] of 32 body bins.
pub fn is_near(a: &PromptSignature, b: &PromptSignature) -> bool {
    a.is_informative()
        && b.is_informative()
        && (equal_region(a, b, HEAD_EMPTY, &a.head, &b.head) >= NEAR_REGION_BINS
            || equal_region(a, b, TAIL_EMPTY, &a.tail, &b.tail) >= NEAR_REGION_BINS
            || (body_usable(a, b) && equal_bins(&a.body, &b.body) >= NEAR_BODY_BINS))
}

fn body_usable(a: &PromptSignature, b: &PromptSignature) -> bool {
    a.tokens >= MIN_BODY_TOKENS && b.tokens >= MIN_BODY_TOKENS
}

/// Equal bins of one region; none when either side's region is empty (§10).
fn equal_region(
    a: &PromptSignature,
    b: &PromptSignature,
    empty: u8,
    x: &[u32],
    y: &[u32],
) -> usize {
    if (a.flags | b.flags) & empty != 0 {
        0
    } else {
        equal_bins(x, y)
    }
}

fn equal_bins<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

impl PromptSignature {
    /// Whether the prompt had at least [`MIN_INFORMATIVE_TOKENS`] tokens (§6).
    /// Non-informative signatures are never near anything and should not be indexed.
    pub fn is_informative(&self) -> bool {
        self.tokens >= MIN_INFORMATIVE_TOKENS
            && self.flags & (HEAD_EMPTY | TAIL_EMPTY) != HEAD_EMPTY | TAIL_EMPTY
    }

    /// Number of tokens in the prompt after masking (saturating at `u32::MAX`).
    pub fn token_count(&self) -> u32 {
        self.tokens
    }

    /// LSH keys for an exact-value index (§5): 8 from the head, then 8 from the tail.
    ///
    /// Prompts of one template share at least one key with high probability,
    /// and unrelated prompts share none except by chance (2⁻³² per key). Keys
    /// from different positions never coincide except by chance, so one map
    /// can hold all of them. Index only informative signatures, and confirm a
    /// candidate with [`is_near`]. A key of 0 is no key: the region's shingles
    /// were all stock (§10); never index it.
    pub fn index_keys(&self) -> [u64; INDEX_KEYS] {
        let mut out = [0u64; INDEX_KEYS];
        let half = INDEX_KEYS / 2;
        let regions = [
            (&self.head, self.flags & HEAD_FALLBACK != 0, HEAD_EMPTY),
            (&self.tail, self.flags & TAIL_FALLBACK != 0, TAIL_EMPTY),
        ];
        for (r, (bins, fallback, empty)) in regions.into_iter().enumerate() {
            if self.flags & empty != 0 {
                // No key: every shingle of the region was stock (§10).
                continue;
            }
            for j in 0..half {
                // Two bins must agree (§5): a short shared phrase rarely
                // fills both, and unrelated minima rarely coincide in both.
                let a = bins.get(2 * j).copied().unwrap_or(0);
                let b = bins.get(2 * j + 1).copied().unwrap_or(0);
                let value = (u64::from(a) << 32) | u64::from(b);
                let tag = (u64::from(KEYS_VERSION) << 56)
                    | ((r as u64) << 48)
                    | (u64::from(fallback) << 44)
                    | ((j as u64) << 40);
                if let Some(slot) = out.get_mut(r * half + j) {
                    *slot = mix(mix(value ^ KEY_SALT) ^ tag).max(1);
                }
            }
        }
        out
    }

    /// Lowercase hex of the binary form: version byte, flags byte, token
    /// count, head, tail and body bins, all big-endian (396 hex digits).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = self.to_bytes();
        let mut s = String::with_capacity(2 * ENCODED_LEN);
        for b in bytes {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses the output of [`to_hex`](Self::to_hex) (either case of hex digits).
    pub fn from_hex(s: &str) -> Result<Self, ParseSignatureError> {
        let raw = s.as_bytes();
        if raw.len() != 2 * ENCODED_LEN {
            return Err(ParseSignatureError::Length {
                expected: 2 * ENCODED_LEN,
                found: raw.len(),
            });
        }
        let mut bytes = [0u8; ENCODED_LEN];
        for (i, (out, pair)) in bytes.iter_mut().zip(raw.chunks_exact(2)).enumerate() {
            let hi = hex_val(pair.first().copied().unwrap_or(b'!'))
                .ok_or(ParseSignatureError::NotHex { at: 2 * i })?;
            let lo = hex_val(pair.get(1).copied().unwrap_or(b'!'))
                .ok_or(ParseSignatureError::NotHex { at: 2 * i + 1 })?;
            *out = (hi << 4) | lo;
        }
        Self::from_bytes(&bytes)
    }

    fn to_bytes(self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let mut w = Writer {
            buf: &mut out,
            pos: 0,
        };
        w.put(&[VERSION, self.flags]);
        w.put(&self.tokens.to_be_bytes());
        for v in self.head.iter().chain(self.tail.iter()) {
            w.put(&v.to_be_bytes());
        }
        for v in &self.body {
            w.put(&v.to_be_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8; ENCODED_LEN]) -> Result<Self, ParseSignatureError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let version = r.u8();
        if version != VERSION {
            return Err(ParseSignatureError::Version(version));
        }
        let flags = r.u8() & ALL_FLAGS;
        let tokens = r.u32();
        let mut sig = PromptSignature {
            head: [0; REGION_BINS],
            tail: [0; REGION_BINS],
            body: [0; BODY_BINS],
            tokens,
            flags,
        };
        for v in sig.head.iter_mut().chain(sig.tail.iter_mut()) {
            *v = r.u32();
        }
        for v in sig.body.iter_mut() {
            *v = r.u16();
        }
        Ok(sig)
    }
}

impl fmt::Debug for PromptSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptSignature")
            .field("tokens", &self.tokens)
            .field("hex", &self.to_hex())
            .finish()
    }
}

/// Same as [`PromptSignature::to_hex`].
impl fmt::Display for PromptSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Same as [`PromptSignature::from_hex`].
impl FromStr for PromptSignature {
    type Err = ParseSignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

struct Writer<'a> {
    buf: &'a mut [u8; ENCODED_LEN],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.pos) {
                *slot = b;
            }
            self.pos += 1;
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8; ENCODED_LEN],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for slot in out.iter_mut() {
            *slot = self.buf.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
        }
        out
    }
    fn u8(&mut self) -> u8 {
        u8::from_be_bytes(self.take::<1>())
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take::<2>())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take::<4>())
    }
}

// ---------------------------------------------------------------------------
// Hashing

/// 64-bit finaliser (a variant of MurmurHash3's `fmix64`): a bijection with
/// full avalanche.
#[inline]
const fn mix(mut x: u64) -> u64 {
    x ^= x >> 27;
    x = x.wrapping_mul(0x3C79_AC49_2BA7_B653);
    x ^= x >> 33;
    x = x.wrapping_mul(0x1C69_B3F7_4AC4_AE35);
    x ^= x >> 27;
    x
}

/// `REGION_BINS` pseudo-random constants derived from `seed`.
const fn region_consts(seed: u64, force_odd: bool) -> [u64; REGION_BINS] {
    let mut out = [0u64; REGION_BINS];
    let mut i = 0;
    while i < REGION_BINS {
        let v = mix(seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        out[i] = if force_odd { v | 1 } else { v };
        i += 1;
    }
    out
}

/// Odd multipliers of the region hash functions.
const REGION_MUL: [u64; REGION_BINS] = region_consts(0x0123_4567_89AB_CDEF, true);
/// Salts of the head hash functions.
const HEAD_SALTS: [u64; REGION_BINS] = region_consts(0x7A3C_55D1_0E4B_9F21, false);
/// Salts of the tail hash functions.
const TAIL_SALTS: [u64; REGION_BINS] = region_consts(0x3F84_D5B5_B547_0917, false);

const MASK_NUM: u64 = 0x9E37_79B9_7F4A_7C15;
const MASK_ID: u64 = 0xC2B2_AE3D_27D4_EB4F;
const MASK_URL: u64 = 0x1656_67B1_9E37_79F9;
const MASK_QUOTE: u64 = 0x85EB_CA77_C2B2_AE63;
const MASK_CODE: u64 = 0x27D4_EB2F_1656_67C5;
const MASK_CAP: u64 = 0x6A09_E667_F3BC_C908;
const LABEL_SALT: u64 = 0xD6E8_FEB8_6659_FD93;
const SHORT_SALT: u64 = 0xBB67_AE85_84CA_A73B;
const BODY_SALT: u64 = 0x5899_65CC_7537_4CC3;
const DENSE_SALT: u64 = 0x1D8E_4E27_C47D_124F;
const KEY_SALT: u64 = 0x3C6E_F372_FE94_F82B;
/// Rotations applied to the older tokens of a shingle (oldest first).
const SHINGLE_ROT: [u32; SHINGLE_TOKENS - 1] = [52, 39, 26, 13];

/// Size of the ring of recent shingles: a power of two ≥ `REGION_MAX_SHINGLES`.
const RING: usize = 32;
const QUOTE_MAX_BYTES: usize = 600;
const INLINE_CODE_MAX_BYTES: usize = 200;
const LONG_WORD_CHARS: usize = 24;
/// Bytes of a lowercased word on the Unicode path (24 characters of up to 4
/// bytes, and a lowercase form can be longer than the original).
const WORD_BUF: usize = 128;

// ---------------------------------------------------------------------------
// Sketching

/// Receives tokens, forms shingles and fills the three sketches.
struct Sketcher<'s> {
    key: u64,
    /// Shingles left out of the sketches (§10).
    stock: &'s StockShingles,
    /// Building [`StockShingles`]: every full shingle's hash, in order.
    record: Option<Vec<u64>>,
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
    sentence_start: bool,
    /// The last `RING` shingle hashes; shingle `i` starts at token `i`.
    ring: [u64; RING],
    head: [u64; REGION_BINS],
    tail: [u64; REGION_BINS],
    body: [u32; BODY_BINS],
}

impl<'s> Sketcher<'s> {
    fn new(key: u64, stock: &'s StockShingles) -> Self {
        Sketcher {
            key,
            stock,
            record: None,
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
        }
    }

    #[inline]
    fn newline(&mut self) {
        if self.tokens > 0 {
            self.pending_newline = true;
        }
        self.sentence_start = true;
    }

    #[inline]
    fn word(&mut self, t: u64) {
        self.last_mask = 0;
        self.push_token(t);
    }

    #[inline]
    fn mask(&mut self, m: u64) {
        if self.last_mask != m {
            self.last_mask = m;
            self.push_token(m);
        }
    }

    #[inline(always)]
    fn push_token(&mut self, t: u64) {
        if self.pending_newline {
            self.pending_newline = false;
            self.past_first_line = true;
            self.line_start_tok = self.tokens;
        }
        if self.tokens >= (SHINGLE_TOKENS - 1) as u64 {
            // Distinct rotations keep the window's order; one mix finishes it.
            let [p0, p1, p2, p3] = self.prev;
            let [r0, r1, r2, r3] = SHINGLE_ROT;
            let acc = t
                ^ p0.rotate_left(r0)
                ^ p1.rotate_left(r1)
                ^ p2.rotate_left(r2)
                ^ p3.rotate_left(r3);
            let h = mix(acc ^ self.key);
            if let Some(r) = self.record.as_mut() {
                r.push(h);
            }
            self.shingle(h);
        }
        let [_, p1, p2, p3] = self.prev;
        self.prev = [p1, p2, p3, t];
        self.tokens += 1;
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
            if let Some(m) = self.body.get_mut(bin) {
                *m = (*m).min(v);
            }
        }
        // Head: within the first line (at most REGION_MAX), or the first REGION_MIN.
        let in_head = (!self.past_first_line && self.head_count < REGION_MAX_SHINGLES)
            || self.head_count < REGION_MIN_SHINGLES;
        if in_head {
            self.head_count += 1;
            self.head_line_count += usize::from(!self.past_first_line);
            if !stock {
                self.head_kept += 1;
                minhash_into(&mut self.head, &HEAD_SALTS, s);
            }
        }
        // Tail: decided at the end, from the ring.
        let slot = self.shingles & (RING - 1);
        if let Some(r) = self.ring.get_mut(slot) {
            *r = s;
        }
        self.ring_stock = (self.ring_stock & !(1 << slot)) | (u32::from(stock) << slot);
        self.shingles += 1;
    }

    fn finish(mut self) -> PromptSignature {
        if self.tokens > 0 && self.tokens < SHINGLE_TOKENS as u64 {
            // Too short for one full shingle: one shingle of all the tokens.
            let mut acc = self.tokens ^ SHORT_SALT;
            for &p in &self.prev {
                acc = mix(acc ^ p);
            }
            self.shingle(mix(acc ^ self.key));
        }
        // Tail: shingles wholly within the last line, or the last REGION_MIN.
        let n = self.shingles;
        let start = n.saturating_sub(REGION_MAX_SHINGLES);
        let min_start = n.saturating_sub(REGION_MIN_SHINGLES);
        let mut tail_line_count = 0;
        let mut tail_kept = 0;
        for idx in start..n {
            let slot = idx & (RING - 1);
            if let Some(&s) = self.ring.get(slot) {
                let in_line = idx as u64 >= self.line_start_tok;
                tail_line_count += usize::from(in_line);
                let stock = self.ring_stock & (1 << slot) != 0;
                if (in_line || idx >= min_start) && !stock {
                    tail_kept += 1;
                    minhash_into(&mut self.tail, &TAIL_SALTS, s);
                }
            }
        }
        let mut flags = 0;
        if self.head_line_count < REGION_MIN_SHINGLES {
            flags |= HEAD_FALLBACK;
        }
        if tail_line_count < REGION_MIN_SHINGLES {
            flags |= TAIL_FALLBACK;
        }
        if n > 0 && self.head_kept == 0 {
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
            tokens: u32::try_from(self.tokens).unwrap_or(u32::MAX),
            flags,
        };
        for (out, m) in sig.head.iter_mut().zip(self.head.iter()) {
            *out = (m >> 32) as u32;
        }
        for (out, m) in sig.tail.iter_mut().zip(self.tail.iter()) {
            *out = (m >> 32) as u32;
        }
        for (out, m) in sig.body.iter_mut().zip(self.body.iter()) {
            *out = (m >> 16) as u16;
        }
        sig
    }

    /// Fills empty body bins from non-empty ones along a fixed probe sequence.
    fn densify_body(&mut self) {
        let filled = self
            .body
            .iter()
            .enumerate()
            .fold(0u64, |acc, (j, &v)| acc | (u64::from(v != u32::MAX) << j));
        if filled == 0 {
            return;
        }
        let is_filled = |j: usize| filled & (1u64 << j) != 0;
        let src = self.body;
        for (i, out) in self.body.iter_mut().enumerate() {
            if is_filled(i) {
                continue;
            }
            let mut from = None;
            for attempt in 0..64u64 {
                let j = ((mix(DENSE_SALT ^ ((i as u64) << 8) ^ attempt) >> 32)
                    .wrapping_mul(BODY_BINS as u64)
                    >> 32) as usize;
                if is_filled(j) {
                    from = Some(j);
                    break;
                }
            }
            let j = from.or_else(|| {
                (1..BODY_BINS)
                    .map(|d| (i + d) % BODY_BINS)
                    .find(|&j| is_filled(j))
            });
            if let Some(v) = j.and_then(|j| src.get(j)) {
                *out = *v;
            }
        }
    }
}

/// Updates a region sketch with shingle `s`: bin `i` keeps the minimum of
/// hash function `i` (multiply, then xor-shift, of the salted shingle).
#[inline]
fn minhash_into(mins: &mut [u64; REGION_BINS], salts: &[u64; REGION_BINS], s: u64) {
    for ((m, salt), mul) in mins.iter_mut().zip(salts).zip(REGION_MUL.iter()) {
        let v = (s ^ salt).wrapping_mul(*mul);
        let v = v ^ (v >> 29);
        if v < *m {
            *m = v;
        }
    }
}

// ---------------------------------------------------------------------------
// Tokenising

#[inline]
fn is_ascii_ws(b: u8) -> bool {
    CLASS[usize::from(b)] & C_WS != 0
}

const C_LOWER: u8 = 1;
const C_UPPER: u8 = 2;
const C_DIGIT: u8 = 4;
/// Whitespace.
const C_WS: u8 = 8;
/// Ends an ASCII chunk: whitespace, `"`, `` ` `` or a non-ASCII byte.
const C_STOP: u8 = 16;
/// Ends a sentence when it trails a word: `.` `!` `?` `:` `;`.
const C_SENT: u8 = 32;
/// Allowed inside a word: `-` (kept) and `'` (dropped).
const C_INWORD: u8 = 64;
const C_ALNUM: u8 = C_LOWER | C_UPPER | C_DIGIT;

/// Class bits of every byte value.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_lowercase() {
            C_LOWER
        } else if c.is_ascii_uppercase() {
            C_UPPER
        } else if c.is_ascii_digit() {
            C_DIGIT
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            C_WS | C_STOP
        } else if c == b'"' || c == b'`' || c >= 0x80 {
            C_STOP
        } else if matches!(c, b'.' | b'!' | b'?' | b':' | b';') {
            C_SENT
        } else if c == b'-' || c == b'\'' {
            C_INWORD
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Scripts written without spaces between words: one token per character.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// Closing marks for an opening quotation mark.
fn closers_of(c: char) -> Option<&'static [char]> {
    match c {
        '\u{201C}' => Some(&['\u{201D}', '\u{201C}']),
        '\u{201E}' => Some(&['\u{201C}', '\u{201D}']),
        '\u{00AB}' => Some(&['\u{00BB}']),
        '\u{300C}' => Some(&['\u{300D}']),
        '\u{300E}' => Some(&['\u{300F}']),
        _ => None,
    }
}

/// Non-ASCII characters that end a chunk.
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || is_cjk(c)
        || closers_of(c).is_some()
        || matches!(c, '\u{201D}' | '\u{00BB}' | '\u{300D}' | '\u{300F}')
        || matches!(c as u32, 0x3000..=0x303F | 0xFF00..=0xFF0F)
}

/// Position of the first "```" at or after `from`.
fn find_fence(hay: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let p = i + hay.get(i..)?.iter().position(|&x| x == b'`')?;
        if hay.get(p..p + 3) == Some(b"```".as_slice()) {
            return Some(p);
        }
        i = p + 1;
    }
}

/// Splits `text` into tokens (§1) and feeds them to `sk`.
///
/// Runs in time linear in `text.len()`: each failed search for a closing mark
/// scans bytes that hold no such mark, and the scan resumes past them.
fn tokenize(text: &str, sk: &mut Sketcher) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        if c < 0x80 {
            if is_ascii_ws(c) {
                if c == b'\n' {
                    sk.newline();
                }
                i += 1;
                continue;
            }
            if c == b'`' {
                if b.get(i..i + 3) == Some(b"```".as_slice()) {
                    i = find_fence(b, i + 3).map_or(n, |e| e + 3);
                    sk.mask(MASK_CODE);
                    sk.sentence_start = true;
                    continue;
                }
                let lim = (i + 1 + INLINE_CODE_MAX_BYTES).min(n);
                let close = b
                    .get(i + 1..lim)
                    .and_then(|s| s.iter().position(|&x| x == b'`' || x == b'\n'))
                    .map(|p| i + 1 + p);
                match close {
                    Some(e) if b.get(e) == Some(&b'`') => {
                        sk.mask(MASK_CODE);
                        i = e + 1;
                    }
                    _ => i += 1,
                }
                continue;
            }
            if c == b'"' {
                let lim = (i + 1 + QUOTE_MAX_BYTES).min(n);
                match b
                    .get(i + 1..lim)
                    .and_then(|s| s.iter().position(|&x| x == b'"'))
                {
                    Some(p) => {
                        sk.mask(MASK_QUOTE);
                        i += p + 2;
                    }
                    None => i += 1,
                }
                continue;
            }
        } else {
            let Some(ch) = text.get(i..).and_then(|s| s.chars().next()) else {
                break;
            };
            let len = ch.len_utf8();
            if let Some(closers) = closers_of(ch) {
                match find_closer(text, i + len, ch, closers) {
                    Some(e) => {
                        sk.mask(MASK_QUOTE);
                        i = e;
                    }
                    None => i += len,
                }
                continue;
            }
            if is_separator(ch) {
                if is_cjk(ch) {
                    let mut tmp = [0u8; 4];
                    let len = ch.encode_utf8(&mut tmp).len();
                    sk.word(hash_word(&tmp, 0, len, 0));
                } else if matches!(ch, '\u{2028}' | '\u{2029}' | '\u{0085}') {
                    sk.newline();
                }
                i += len;
                continue;
            }
        }
        // A chunk: up to whitespace, a quote or backtick, or a separator.
        if let Some(end) = ascii_chunk(b, i, sk) {
            i = end;
            continue;
        }
        let start = i;
        let mut j = i;
        while let Some(&d) = b.get(j) {
            if d < 0x80 {
                if is_ascii_ws(d) || d == b'"' || d == b'`' {
                    break;
                }
                j += 1;
            } else {
                match text.get(j..).and_then(|s| s.chars().next()) {
                    Some(ch) if !is_separator(ch) => j += ch.len_utf8(),
                    _ => break,
                }
            }
        }
        if j == start {
            // Cannot happen (the byte at `i` starts a chunk); still make progress.
            i += 1;
            while i < n && !text.is_char_boundary(i) {
                i += 1;
            }
            continue;
        }
        if let Some(chunk) = text.get(start..j) {
            chunk_token(chunk, sk);
        }
        i = j;
    }
}

/// End (exclusive) of a quoted span opened by `open` just before `from`, if a
/// closing mark follows within `QUOTE_MAX_BYTES`. Another `open` stops the search.
fn find_closer(text: &str, from: usize, open: char, closers: &[char]) -> Option<usize> {
    let rest = text.get(from..)?;
    for (off, d) in rest.char_indices() {
        if off >= QUOTE_MAX_BYTES {
            return None;
        }
        if closers.contains(&d) {
            return Some(from + off + d.len_utf8());
        }
        if d == open {
            return None;
        }
    }
    None
}

#[inline]
fn ends_sentence(b: u8) -> bool {
    CLASS[usize::from(b)] & C_SENT != 0
}

fn is_url(chunk: &[u8]) -> bool {
    chunk
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"www."))
        || chunk
            .iter()
            .enumerate()
            .any(|(p, &c)| c == b':' && chunk.get(p + 1..p + 3) == Some(b"//".as_slice()))
}

/// Fast path of [`chunk_token`] for a chunk of ASCII bytes starting at
/// `start`: emits its token and returns the chunk's end, or returns `None`
/// (having emitted nothing) if the chunk holds a non-ASCII byte.
#[inline]
fn ascii_chunk(b: &[u8], start: usize, sk: &mut Sketcher) -> Option<usize> {
    // One scan: find the chunk's end and its core (first to last
    // alphanumeric byte), and gather what classifies the core.
    let mut j = start;
    let mut core_start = usize::MAX;
    let mut core_end = start;
    let mut seen = 0u8; // OR of the classes of the core's alphanumerics
    let mut camel = 0u8;
    let mut prev = 0u8;
    let mut pending_special = false; // punctuation since the last alphanumeric
    let mut special = false; // punctuation other than - and ' inside the core
    let mut sent = false; // sentence-ending punctuation since the last alphanumeric
    while let Some(&c) = b.get(j) {
        let class = CLASS[usize::from(c)];
        if class == C_LOWER {
            // Fast path: a run of lowercase letters.
            if core_start == usize::MAX {
                core_start = j;
            }
            special |= pending_special;
            pending_special = false;
            sent = false;
            seen |= C_LOWER;
            j += 1;
            while b.get(j).is_some_and(|&c| CLASS[usize::from(c)] == C_LOWER) {
                j += 1;
            }
            core_end = j;
            prev = C_LOWER;
            continue;
        }
        if class & C_ALNUM != 0 {
            if core_start == usize::MAX {
                core_start = j;
            }
            special |= pending_special;
            pending_special = false;
            sent = false;
            seen |= class;
            camel |= (prev << 1) & class; // lower then upper
            core_end = j + 1;
        } else if class & C_STOP != 0 {
            if c >= 0x80 {
                return None;
            }
            break;
        } else {
            pending_special |= class & C_INWORD == 0;
            sent |= class & C_SENT != 0;
        }
        prev = class;
        j += 1;
    }
    if core_start == usize::MAX {
        // Punctuation only.
        sk.sentence_start |= sent;
        return Some(j);
    }
    let at_sentence_start = sk.sentence_start;
    sk.sentence_start = sent;
    let core = b.get(core_start..core_end).unwrap_or(&[]);
    let first = core.first().copied().unwrap_or(b' ');
    if special && is_url(b.get(start..j).unwrap_or(&[])) {
        sk.mask(MASK_URL);
        sk.sentence_start = false;
    } else if first.is_ascii_digit() {
        sk.mask(MASK_NUM);
    } else if seen & C_DIGIT != 0 || special || camel & C_UPPER != 0 || core.len() > LONG_WORD_CHARS
    {
        // (The first byte is a letter here, so a digit means letters and digits.)
        sk.mask(MASK_ID);
    } else if first.is_ascii_uppercase()
        && seen & C_LOWER != 0
        && core.len() > 1
        && !at_sentence_start
    {
        sk.mask(MASK_CAP);
    } else {
        // Letters, '-' and '\'' only: OR-ing 0x20 lowercases exactly the letters.
        let h = hash_word(b, core_start, core_end, 0x20);
        let label = b.get(core_end) == Some(&b':');
        sk.word(if label { mix(h ^ LABEL_SALT) } else { h });
    }
    Some(j)
}

/// Hash of the word `buf[start..end]`, eight bytes at a time, each OR-ed
/// with `or_byte` first (`0x20` lowercases an ASCII word made of letters, `-`
/// and `'`; `0` keeps bytes that are already lowercase). Bytes of `buf` past
/// `end` may be read but do not count.
#[inline]
fn hash_word(buf: &[u8], start: usize, end: usize, or_byte: u8) -> u64 {
    let or_word = u64::from_le_bytes([or_byte; 8]);
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    let mut i = start;
    loop {
        let len = end.saturating_sub(i).min(8);
        let v = match buf.get(i..i + 8) {
            Some(block) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(block);
                let keep = if len == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * len)) - 1
                };
                (u64::from_le_bytes(w) | or_word) & keep
            }
            None => {
                let mut w = [0u8; 8];
                for (dst, &src) in w.iter_mut().zip(buf.get(i..end).unwrap_or(&[])) {
                    *dst = src | or_byte;
                }
                u64::from_le_bytes(w)
            }
        };
        if len < 8 || i + 8 == end {
            // Last block. Injective enough: the shingle hash mixes fully afterwards.
            return (h ^ v ^ ((len as u64) << 59)).wrapping_mul(0xE703_7ED1_A0B4_28DB);
        }
        h = (h ^ v).wrapping_mul(0xA076_1D64_78BD_642F).rotate_left(29);
        i += 8;
    }
}

/// Turns one whitespace-delimited chunk into at most one token (§1).
fn chunk_token(chunk: &str, sk: &mut Sketcher) {
    let cb = chunk.as_bytes();
    if is_url(cb) {
        sk.mask(MASK_URL);
        sk.sentence_start = false;
        return;
    }
    // Strip leading and trailing non-alphanumerics.
    let Some(core_start) = chunk
        .char_indices()
        .find(|(_, c)| c.is_alphanumeric())
        .map(|(p, _)| p)
    else {
        if cb.iter().copied().any(ends_sentence) {
            sk.sentence_start = true;
        }
        return;
    };
    let core_end = chunk
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())
        .map_or(chunk.len(), |(p, c)| p + c.len_utf8());
    let Some(core) = chunk.get(core_start..core_end) else {
        return;
    };
    let trailing = chunk.get(core_end..).unwrap_or("");
    let label = trailing.starts_with(':');
    let at_sentence_start = sk.sentence_start;
    sk.sentence_start = trailing.bytes().any(ends_sentence);

    // Lowercased word bytes; a word too long for the buffer is an identifier anyway.
    let mut buf = [0u8; WORD_BUF];
    let mut len = 0usize;
    let mut overflow = false;
    let mut push = |bytes: &[u8]| {
        for &x in bytes {
            match buf.get_mut(len) {
                Some(slot) => *slot = x,
                None => overflow = true,
            }
            len += 1;
        }
    };
    let mut has_alpha = false;
    let mut has_digit = false;
    let mut special = false;
    let mut camel = false;
    let mut prev_lower = false;
    let mut any_lower = false;
    let mut chars = 0usize;
    let mut first: Option<char> = None;
    for ch in core.chars() {
        chars += 1;
        if first.is_none() {
            first = Some(ch);
        }
        if ch.is_alphabetic() {
            has_alpha = true;
            let lower = ch.is_lowercase();
            any_lower |= lower;
            camel |= prev_lower && ch.is_uppercase();
            prev_lower = lower;
            for lc in ch.to_lowercase() {
                let mut tmp = [0u8; 4];
                push(lc.encode_utf8(&mut tmp).as_bytes());
            }
            continue;
        }
        prev_lower = false;
        if ch.is_numeric() {
            has_digit = true;
        } else if ch == '-' || ch == '\'' || ch == '\u{2019}' {
            // '’' is the typographic apostrophe: hash it as '\''.
            push(if ch == '-' { b"-" } else { b"'" });
        } else {
            special = true;
        }
    }
    let first = first.unwrap_or(' ');
    if first.is_numeric() {
        sk.mask(MASK_NUM);
    } else if (has_digit && has_alpha) || special || camel || chars > LONG_WORD_CHARS || overflow {
        sk.mask(MASK_ID);
    } else if first.is_uppercase() && any_lower && chars > 1 && !at_sentence_start {
        sk.mask(MASK_CAP);
    } else {
        let h = hash_word(&buf, 0, len.min(WORD_BUF), 0);
        sk.word(if label { mix(h ^ LABEL_SALT) } else { h });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};

    // -----------------------------------------------------------------------
    // Stock phrases (§10)

    const STOCK: &str =
        "please write out your reasoning step by step and check every intermediate step";

    fn shared_keys(a: &PromptSignature, b: &PromptSignature) -> usize {
        let b_keys: HashSet<u64> = b.index_keys().into_iter().filter(|&k| k != 0).collect();
        a.index_keys()
            .into_iter()
            .filter(|k| *k != 0 && b_keys.contains(k))
            .count()
    }

    /// Short prompts of unrelated users who typed one stock phrase: without the stock set they share index keys
    /// (the phrase is most of each region); with it they share none and are not near.
    #[test]
    fn a_shared_stock_phrase_alone_gives_no_shared_key() {
        let stock = StockShingles::new([STOCK]);
        let mut linked_plain = 0;
        for (a, b) in [
            ("kalomiter ansuvel", "rodinpa quiesbor"),
            ("linugatas reomfi", "delcuzan epkalo"),
            ("mitersu velrodin", "paquies borlinu"),
        ] {
            let x = format!("{a} {STOCK}");
            let y = format!("{b} {STOCK}");
            linked_plain += usize::from(shared_keys(&signature(&x), &signature(&y)) > 0);
            let (sx, sy) = (signature_with(&x, &stock), signature_with(&y, &stock));
            assert_eq!(shared_keys(&sx, &sy), 0, "{x:?} / {y:?}");
            assert!(!is_near(&sx, &sy), "{x:?} / {y:?}");
        }
        assert!(
            linked_plain > 0,
            "the example must show what the stock set prevents"
        );
    }

    /// A template keeps linking when it contains a stock phrase: its other shingles still carry it.
    #[test]
    fn a_template_holding_a_stock_phrase_still_links() {
        let stock = StockShingles::new([STOCK]);
        let template = |fill: &str| {
            format!(
                "You are grading solutions for a benchmark of olympiad problems; {STOCK}, then give the final \
                 answer in a box and a confidence between zero and one.\nProblem: {fill}"
            )
        };
        let a = signature_with(
            &template("a triangle has sides three four and five"),
            &stock,
        );
        let b = signature_with(&template("how many primes lie below one hundred"), &stock);
        assert!(is_near(&a, &b));
        assert!(shared_keys(&a, &b) >= 4);
    }

    /// A prompt that is only a stock phrase has no sketch: not informative, no key, near nothing.
    #[test]
    fn a_prompt_of_stock_shingles_only_is_not_informative() {
        let stock = StockShingles::new([STOCK, "think*"]);
        assert!(stock.len() >= 9, "{stock:?}");
        let sig = signature_with(STOCK, &stock);
        assert!(!sig.is_informative());
        assert!(sig.index_keys().iter().all(|&k| k == 0));
        assert!(!is_near(&sig, &sig));
        assert!(signature(STOCK).is_informative());
        // The flags survive the hex form.
        let back: PromptSignature = sig.to_hex().parse().unwrap();
        assert_eq!(back, sig);
        // Phrases shorter than a shingle have none.
        assert!(StockShingles::new(["step by step"]).is_empty());
    }

    /// Without stock phrases, `signature_with` is `signature`.
    #[test]
    fn no_stock_phrases_change_nothing() {
        let none = StockShingles::none(DEFAULT_KEY);
        for text in [STOCK, GRADE, "hi", ""] {
            assert_eq!(signature_with(text, &none), signature(text));
        }
    }

    // -----------------------------------------------------------------------
    // Unit tests

    const GRADE: &str = "Grade the following answer on a 1-10 rubric for correctness, completeness and clarity. List strengths and weaknesses, then output the score.\n\nQuestion: ";

    #[test]
    fn masks_numbers_quotes_code_urls_and_names() {
        let pairs = [
            (
                "please compute the sum of 12 and 30 and explain each step you take",
                "please compute the sum of 7.5 and 1,000,000 and explain each step you take",
            ),
            (
                "classify the sentiment of the review \"great phone, terrible battery\" as positive or negative",
                "classify the sentiment of the review \u{201C}never again\u{201D} as positive or negative",
            ),
            (
                "explain what this code does line by line ```fn main() { println!(\"hi\"); }``` and find the bugs",
                "explain what this code does line by line ```\nx = [i for i in range(10)]\n``` and find the bugs",
            ),
            (
                "summarise the page at https://example.com/a?b=c for a busy reader in three short bullet points",
                "summarise the page at www.example.org/news for a busy reader in three short bullet points",
            ),
            (
                "you are an assistant for Alice who lives in Paris and speaks French fluently every day",
                "you are an assistant for Bob who lives in Lagos and speaks Yoruba fluently every day",
            ),
            (
                "call the function compute_total with the value of userName and return the result to me",
                "call the function os.path.join with the value of x2 and return the result to me",
            ),
        ];
        for (a, b) in pairs {
            assert_eq!(signature(a), signature(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn lowercases_and_ignores_spacing_and_punctuation() {
        let a =
            signature("Explain, step by step, how a bill becomes a law in a parliamentary system.");
        let b =
            signature("explain step by step how a BILL becomes a law in a parliamentary system");
        let c = signature(
            "explain   step by step how a bill becomes a law\tin a parliamentary system!!",
        );
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn labels_differ_from_words() {
        let a = signature("question: what is the best way to learn the piano as an adult beginner");
        let b = signature("question what is the best way to learn the piano as an adult beginner");
        assert_ne!(a, b);
    }

    #[test]
    fn same_template_is_near_and_shares_a_key() {
        let a = signature(&format!("{GRADE}Why is the sky blue?\nAnswer: Because the air scatters short wavelengths of sunlight more than long ones."));
        let b = signature(&format!("{GRADE}How do vaccines work?\nAnswer: They train the immune system with a harmless piece of the pathogen so it reacts faster later."));
        assert!(is_near(&a, &b));
        assert!(similarity(&a, &b) > 0.9);
        let ka: HashSet<u64> = a.index_keys().into_iter().collect();
        assert!(b.index_keys().iter().any(|k| ka.contains(k)));
    }

    #[test]
    fn unrelated_prompts_are_not_near() {
        let a = signature(
            "Can you write me a short poem about the sea at night, with a hopeful ending?",
        );
        let b = signature(
            "My landlord refuses to return my deposit after I moved out. What are my options here?",
        );
        assert!(a.is_informative() && b.is_informative());
        assert!(!is_near(&a, &b));
        let ka: HashSet<u64> = a.index_keys().into_iter().collect();
        assert!(!b.index_keys().iter().any(|k| ka.contains(k)));
    }

    #[test]
    fn short_prompts_are_not_informative() {
        for text in [
            "",
            "hi",
            "hello there",
            "what is the capital of France?",
            "   \n\t  ",
            "42",
            "```code```",
        ] {
            let s = signature(text);
            assert!(!s.is_informative(), "{text:?}");
            assert!(!is_near(&s, &s), "{text:?}");
        }
        let long = signature("what is the capital of France and why did it become the capital?");
        assert!(long.is_informative());
        assert!(is_near(&long, &long));
        assert_eq!(signature("").token_count(), 0);
    }

    #[test]
    fn self_similarity_is_one() {
        let short = signature(&format!("{GRADE}Is water wet?"));
        assert!(short.token_count() < MIN_BODY_TOKENS);
        assert_eq!(similarity_parts(&short, &short).body, 0.0);
        assert_eq!(similarity(&short, &short), 1.0);
        let s = signature(&format!("{GRADE}Is water wet, and if it is, what makes it so? Explain the physics of surface tension, adhesion and cohesion to a curious student."));
        assert!(s.token_count() >= MIN_BODY_TOKENS);
        assert_eq!(similarity(&s, &s), 1.0);
        let p = similarity_parts(&s, &s);
        assert_eq!((p.head, p.tail, p.body), (1.0, 1.0, 1.0));
    }

    #[test]
    fn keyed_signatures_differ_and_are_deterministic() {
        let text =
            "Imagine and articulate the internal reasoning behind the completed response below.";
        assert_eq!(signature_keyed(text, 7), signature_keyed(text, 7));
        assert_ne!(signature_keyed(text, 7), signature_keyed(text, 8));
        assert_ne!(signature_keyed(text, 7), signature(text));
        assert_eq!(signature(text), signature_keyed(text, DEFAULT_KEY));
    }

    #[test]
    fn index_keys_are_distinct_per_position() {
        let s = signature(&format!(
            "{GRADE}What is entropy?\nAnswer: A measure of disorder."
        ));
        let keys: HashSet<u64> = s.index_keys().into_iter().collect();
        assert_eq!(keys.len(), INDEX_KEYS);
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let s = signature(&format!("{GRADE}What is entropy?"));
        let hex = s.to_hex();
        assert_eq!(hex.len(), 396);
        assert_eq!(PromptSignature::from_hex(&hex), Ok(s));
        assert_eq!(PromptSignature::from_hex(&hex.to_uppercase()), Ok(s));
        assert_eq!(hex.parse::<PromptSignature>(), Ok(s));
        assert_eq!(s.to_string(), hex);
        assert_eq!(
            PromptSignature::from_hex("abc"),
            Err(ParseSignatureError::Length {
                expected: 396,
                found: 3
            })
        );
        let mut bad = hex.clone().into_bytes();
        bad[10] = b'g';
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(
            PromptSignature::from_hex(&bad),
            Err(ParseSignatureError::NotHex { at: 10 })
        );
        let v2 = format!("02{}", &hex[2..]);
        assert_eq!(
            PromptSignature::from_hex(&v2),
            Err(ParseSignatureError::Version(2))
        );
        let multibyte = "é".repeat(198);
        assert!(PromptSignature::from_hex(&multibyte).is_err());
    }

    #[test]
    fn head_and_tail_follow_lines() {
        // Same first line, different everything else: the head matches.
        let a = signature("Rewrite the passage below in plain English for a twelve year old reader.\nThe mitochondria is the powerhouse of the cell and makes most of its energy.");
        let b = signature("Rewrite the passage below in plain English for a twelve year old reader.\nParliament passed the budget after a long debate about taxes and pensions.");
        let p = similarity_parts(&a, &b);
        assert_eq!(p.head, 1.0);
        assert!(p.tail < 0.3);
        // Same last line: the tail matches.
        let c = signature("The mitochondria is the powerhouse of the cell and makes most of its energy.\nRewrite the passage above in plain English for a twelve year old reader.");
        let d = signature("Parliament passed the budget after a long debate about taxes and pensions.\nRewrite the passage above in plain English for a twelve year old reader.");
        let p = similarity_parts(&c, &d);
        assert_eq!(p.tail, 1.0);
        assert!(p.head < 0.3);
    }

    #[test]
    fn size_is_as_documented() {
        assert_eq!(std::mem::size_of::<PromptSignature>(), 200);
    }

    #[test]
    fn ascii_and_unicode_paths_agree() {
        // A non-ASCII byte sends a chunk down the Unicode path: same tokens.
        let pairs = [
            (
                "please don't rewrite the following paragraph in a formal register now",
                "please don\u{2019}t rewrite the following paragraph in a formal register now",
            ),
            (
                "explain the following idea in simple words please, and wait for more",
                "explain the following idea in simple words please\u{2026} and wait for more",
            ),
            (
                "rewrite the following text for a young reader; keep it short and clear",
                "rewrite the following text for a young reader\u{FF1B} keep it short and clear",
            ),
        ];
        for (a, b) in pairs {
            assert_eq!(signature(a), signature(b), "{a:?} vs {b:?}");
        }
        // Non-ASCII words are lowercased too.
        assert_eq!(
            signature("Écris un résumé de ce texte pour un lecteur pressé et curieux"),
            signature("écris un RÉSUMÉ de ce texte pour un lecteur pressé et curieux")
        );
    }

    #[test]
    fn short_end_lines_are_fallback_regions() {
        let line = "Rewrite the passage below in plain English for a twelve year old reader.";
        let s = signature(&format!(
            "{line}\nThe cell makes energy in its mitochondria, which burn sugar with oxygen."
        ));
        assert_eq!(s.flags, 0);
        let s = signature(&format!("Hi,\n{line}\nThanks!"));
        assert_eq!(s.flags, HEAD_FALLBACK | TAIL_FALLBACK);
        let s = signature(&format!("{line} Here is my code:\n```\nx = 1\n```"));
        assert_eq!(s.flags, TAIL_FALLBACK);
        // Fallback keys are bands: prompts whose short tail region shares
        // only the stock phrase "here is my code: <code>" are not near, and
        // share a key only if that phrase's shingle happens to be the
        // minimum of both bins of a band (here: for one band of four).
        let firsts = [
            "why does the parser drop the last row of the table",
            "my loop never ends when the list is empty at all",
            "the test passes locally but fails in the nightly run",
            "how can I make this function faster on big inputs",
        ];
        let seconds = [
            "what is wrong with the way I open this file today",
            "the compiler says the borrow outlives the value here",
            "I get a timeout after thirty seconds on every call",
            "why is the output sorted in reverse for some users",
        ];
        let mut sharing = 0;
        for a in firsts {
            let sa = signature(&format!("{a}. Here is my code:\n```\nx = 1\n```"));
            let ka: HashSet<u64> = sa.index_keys().into_iter().collect();
            for b in seconds {
                let sb = signature(&format!("{b}. Here is my code:\n```\ny = 2\n```"));
                sharing += usize::from(sb.index_keys().iter().any(|k| ka.contains(k)));
                assert!(!is_near(&sa, &sb), "{a:?} / {b:?}");
            }
        }
        assert!(sharing <= 4, "{sharing} of 16 pairs share a key");
    }

    #[test]
    fn pathological_inputs_finish() {
        let cases = [
            "\"a ".repeat(50_000),
            "`".repeat(100_000),
            "``` x ".repeat(20_000),
            "\u{201C}x ".repeat(30_000),
            "\u{300C}".repeat(30_000),
            "a".repeat(200_000),
            "1 ".repeat(100_000),
            "漢字".repeat(50_000),
            "\n".repeat(100_000),
            "x\u{0301}".repeat(50_000),
        ];
        for text in &cases {
            let s = signature(text);
            assert_eq!(PromptSignature::from_hex(&s.to_hex()), Ok(s));
        }
    }

    #[test]
    fn cjk_is_tokenised_per_character() {
        let s = signature("请把下面的文章翻译成英文并保持原来的语气");
        assert!(s.is_informative());
        assert!(s.token_count() >= 15);
    }

    fn arb_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\"".to_string()),
            Just("`".to_string()),
            Just("```".to_string()),
            Just("\n".to_string()),
            Just(": ".to_string()),
            Just("\u{201C}".to_string()),
            Just("\u{201D}".to_string()),
            Just("\u{00AB}".to_string()),
            Just("\u{300C}".to_string()),
            Just("https://x.y/z ".to_string()),
            Just("www.".to_string()),
            "[a-zA-Z]{1,12}",
            "[0-9.,:-]{1,6}",
            "[ \t]{1,3}",
            "[\u{4E00}-\u{4E20}]{1,4}",
            any::<char>().prop_map(|c| c.to_string()),
        ];
        prop::collection::vec(piece, 0..120).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn never_panics_on_any_string(text in any::<String>()) {
            let s = signature(&text);
            prop_assert_eq!(PromptSignature::from_hex(&s.to_hex()), Ok(s));
            prop_assert_eq!(similarity(&s, &s), 1.0);
            prop_assert_eq!(is_near(&s, &s), s.is_informative());
        }

        #[test]
        fn never_panics_on_structured_text(text in arb_text(), other in arb_text()) {
            let a = signature(&text);
            let b = signature(&other);
            let ab = similarity(&a, &b);
            prop_assert!((0.0..=1.0).contains(&ab));
            prop_assert_eq!(ab, similarity(&b, &a));
            prop_assert_eq!(is_near(&a, &b), is_near(&b, &a));
            prop_assert_eq!(PromptSignature::from_hex(&a.to_hex()), Ok(a));
        }

        #[test]
        fn from_hex_never_panics(text in any::<String>()) {
            let _ = PromptSignature::from_hex(&text);
        }

        #[test]
        fn from_hex_accepts_any_v1_payload(flags in 0u8..4, bytes in prop::collection::vec(any::<u8>(), 196)) {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let s = PromptSignature::from_hex(&format!("01{flags:02x}{hex}")).unwrap();
            prop_assert_eq!(s.to_hex(), format!("01{flags:02x}{hex}"));
        }
    }

    // -----------------------------------------------------------------------
    // Corpus generator (seeded, deterministic)

    const NOUNS: &[&str] = &[
        "house",
        "river",
        "market",
        "teacher",
        "engine",
        "garden",
        "report",
        "window",
        "city",
        "student",
        "company",
        "budget",
        "system",
        "network",
        "country",
        "child",
        "doctor",
        "forest",
        "machine",
        "problem",
        "answer",
        "letter",
        "journey",
        "bridge",
        "village",
        "mountain",
        "customer",
        "product",
        "contract",
        "policy",
        "farmer",
        "scientist",
        "planet",
        "battery",
        "library",
        "museum",
        "kitchen",
        "recipe",
        "painting",
        "song",
        "movie",
        "story",
        "island",
        "ocean",
        "storm",
        "winter",
        "summer",
        "festival",
        "election",
        "economy",
        "bank",
        "loan",
        "hospital",
        "patient",
        "vaccine",
        "virus",
        "cell",
        "protein",
        "gene",
        "atom",
        "molecule",
        "theory",
        "experiment",
        "telescope",
        "satellite",
        "rocket",
        "airport",
        "train",
        "bicycle",
        "road",
        "car",
        "truck",
        "factory",
        "worker",
        "manager",
        "team",
        "game",
        "player",
        "coach",
        "stadium",
        "ticket",
        "price",
        "tax",
        "law",
        "court",
        "judge",
        "lawyer",
        "witness",
        "crime",
        "police",
        "soldier",
        "army",
        "war",
        "peace",
        "treaty",
        "king",
        "queen",
        "empire",
        "castle",
        "temple",
        "church",
        "school",
        "university",
        "lecture",
        "exam",
        "grade",
        "essay",
        "book",
        "poem",
        "novel",
        "author",
        "editor",
        "newspaper",
        "website",
        "server",
        "database",
        "password",
        "software",
        "computer",
        "phone",
        "camera",
        "picture",
        "color",
        "shape",
        "circle",
        "triangle",
        "number",
        "equation",
        "function",
        "variable",
        "matrix",
        "vector",
        "graph",
        "chart",
        "table",
        "chair",
        "door",
        "wall",
        "roof",
        "floor",
        "tree",
        "flower",
        "seed",
        "apple",
        "bread",
        "cheese",
        "coffee",
        "tea",
        "water",
        "fire",
        "stone",
        "metal",
        "gold",
        "silver",
        "horse",
        "dog",
        "cat",
        "bird",
        "fish",
        "insect",
        "whale",
        "wolf",
        "bear",
        "mother",
        "father",
        "brother",
        "sister",
        "friend",
        "neighbor",
        "stranger",
        "meeting",
        "plan",
        "idea",
        "decision",
        "mistake",
        "habit",
        "dream",
        "memory",
        "emotion",
        "language",
        "culture",
        "religion",
        "history",
        "future",
        "climate",
        "energy",
        "oil",
        "solar",
        "wind",
        "carbon",
        "reactor",
        "wave",
        "signal",
        "sound",
        "light",
        "shadow",
        "mirror",
        "clock",
        "calendar",
        "holiday",
        "vacation",
        "hotel",
        "restaurant",
        "menu",
        "dinner",
        "breakfast",
        "lunch",
        "salary",
        "career",
        "interview",
        "resume",
        "office",
    ];
    const VERBS: &[&str] = &[
        "builds",
        "finds",
        "changes",
        "moves",
        "carries",
        "breaks",
        "opens",
        "closes",
        "writes",
        "reads",
        "sells",
        "buys",
        "teaches",
        "learns",
        "follows",
        "leads",
        "protects",
        "destroys",
        "measures",
        "improves",
        "reduces",
        "increases",
        "explains",
        "describes",
        "creates",
        "supports",
        "ignores",
        "watches",
        "needs",
        "wants",
        "loves",
        "hates",
        "helps",
        "calls",
        "visits",
        "leaves",
        "enters",
        "crosses",
        "paints",
        "sings",
        "plays",
        "wins",
        "loses",
        "cooks",
        "eats",
        "drinks",
        "grows",
        "cuts",
        "fixes",
        "tests",
        "checks",
        "counts",
        "shares",
        "hides",
        "shows",
        "sends",
        "receives",
        "pays",
        "owns",
        "rents",
        "designs",
        "observes",
        "predicts",
        "replaces",
        "connects",
        "divides",
        "collects",
        "defends",
        "attacks",
        "forgets",
        "remembers",
        "drives",
        "rides",
        "pushes",
        "pulls",
        "throws",
        "catches",
        "draws",
        "signs",
    ];
    const VERBS_BASE: &[&str] = &[
        "build", "find", "change", "move", "carry", "break", "open", "close", "write", "read",
        "sell", "buy", "teach", "learn", "follow", "lead", "protect", "measure", "improve",
        "reduce", "increase", "describe", "create", "support", "watch", "help", "visit", "cross",
        "paint", "cook", "grow", "fix", "test", "check", "count", "share", "design", "predict",
        "replace", "connect", "collect", "defend", "remember", "drive", "draw", "compare",
        "organize", "plan",
    ];
    const ADJS: &[&str] = &[
        "large",
        "small",
        "old",
        "new",
        "bright",
        "dark",
        "quiet",
        "loud",
        "fast",
        "slow",
        "cheap",
        "expensive",
        "strong",
        "weak",
        "happy",
        "sad",
        "angry",
        "calm",
        "rich",
        "poor",
        "young",
        "ancient",
        "modern",
        "simple",
        "complex",
        "strange",
        "familiar",
        "dangerous",
        "safe",
        "beautiful",
        "ugly",
        "warm",
        "cold",
        "wet",
        "dry",
        "heavy",
        "light",
        "empty",
        "full",
        "clean",
        "dirty",
        "famous",
        "unknown",
        "local",
        "global",
        "public",
        "private",
        "digital",
        "natural",
        "political",
        "economic",
        "medical",
        "legal",
        "social",
        "chemical",
        "physical",
        "careful",
        "lazy",
        "honest",
        "clever",
        "curious",
        "broken",
        "hidden",
        "green",
        "red",
        "blue",
        "golden",
    ];
    const ADVS: &[&str] = &[
        "quickly",
        "slowly",
        "carefully",
        "rarely",
        "often",
        "always",
        "never",
        "suddenly",
        "quietly",
        "loudly",
        "easily",
        "barely",
        "clearly",
        "probably",
        "certainly",
        "finally",
        "recently",
        "usually",
        "mostly",
        "partly",
    ];
    const PREPS: &[&str] = &[
        "in", "on", "near", "under", "behind", "with", "without", "for", "from", "into", "across",
        "around", "after", "before", "during", "through", "beside", "against", "toward", "over",
    ];
    const DETS: &[&str] = &[
        "the", "a", "this", "that", "every", "my", "our", "their", "one", "some",
    ];
    const NAMES: &[&str] = &[
        "Alice", "Bob", "Carlos", "Dana", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal",
        "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma",
        "Victor", "Wen", "Ximena", "Yusuf", "Zoe", "London", "Paris", "Tokyo", "Lagos", "Lima",
        "Oslo", "Cairo", "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne",
    ];
    const LANGS: &[&str] = &[
        "English",
        "French",
        "German",
        "Spanish",
        "Italian",
        "Portuguese",
        "Japanese",
        "Korean",
        "Chinese",
        "Arabic",
        "Hindi",
        "Russian",
        "Turkish",
        "Dutch",
        "Polish",
        "Swedish",
    ];
    const SUBJECTS: &[&str] = &[
        "high school biology",
        "college chemistry",
        "world history",
        "macroeconomics",
        "computer security",
        "abstract algebra",
        "clinical knowledge",
        "moral philosophy",
        "international law",
        "astronomy",
        "marketing",
        "professional accounting",
        "virology",
        "electrical engineering",
        "formal logic",
        "human aging",
        "nutrition",
        "prehistory",
    ];
    const PROFESSIONS: &[&str] = &[
        "tax accountant",
        "software architect",
        "emergency physician",
        "structural engineer",
        "immigration lawyer",
        "data scientist",
        "marketing strategist",
        "financial planner",
        "pediatric nurse",
        "supply chain manager",
        "cybersecurity analyst",
        "chef",
    ];
    /// Openers shared by many natural prompts.
    const OPENERS: &[&str] = &[
        "can you explain",
        "please help me",
        "what is the",
        "how do i",
        "i need help with",
        "could you write",
        "tell me about",
        "why does",
        "give me",
        "what are some",
        "write a",
        "help me understand",
        "can you please",
        "i want to know",
        "explain to me",
    ];
    /// Phrases sprinkled through natural prompts.
    const COMMON: &[&str] = &[
        "for example",
        "in other words",
        "step by step",
        "thank you",
        "as soon as possible",
        "in simple terms",
        "if possible",
        "please help me",
        "can you explain",
        "what is the best way to",
        "i am not sure",
        "does that make sense",
    ];
    /// Very short natural prompts (many repeat).
    const SHORT: &[&str] = &[
        "hi",
        "hello",
        "hey there",
        "thanks!",
        "thank you",
        "ok",
        "what is the capital of France?",
        "what is the capital of Peru?",
        "how are you?",
        "tell me a joke",
        "good morning",
        "what time is it in Tokyo?",
        "who won the world cup in 2018?",
        "translate hello to Spanish",
        "what's 2+2?",
        "help",
        "continue",
        "explain quantum computing",
        "write a haiku about rain",
        "summarize this",
        "are you there?",
        "what is love?",
        "define entropy",
        "yes",
        "no, try again",
    ];
    /// Sign-off lines of email-style natural prompts.
    const SIGNOFFS: &[&str] = &[
        "Thanks in advance for your help!",
        "Please let me know if you need more information.",
        "Any help would be greatly appreciated.",
    ];

    fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
        xs.choose(rng).copied().unwrap_or("x")
    }

    fn noun_phrase(rng: &mut StdRng) -> String {
        if rng.gen_bool(0.4) {
            format!(
                "{} {} {}",
                pick(rng, DETS),
                pick(rng, ADJS),
                pick(rng, NOUNS)
            )
        } else {
            format!("{} {}", pick(rng, DETS), pick(rng, NOUNS))
        }
    }

    fn capitalise(s: &str) -> String {
        let mut cs = s.chars();
        match cs.next() {
            Some(f) => f.to_uppercase().collect::<String>() + cs.as_str(),
            None => String::new(),
        }
    }

    /// One random sentence from a small grammar.
    fn sentence(rng: &mut StdRng) -> String {
        let r = rng.gen_range(0..14);
        let s = match r {
            0 => format!(
                "{} {} {} {} {}.",
                noun_phrase(rng),
                pick(rng, VERBS),
                noun_phrase(rng),
                pick(rng, PREPS),
                noun_phrase(rng)
            ),
            1 => format!(
                "{} {} {} because {} was {}.",
                pick(rng, NAMES),
                pick(rng, VERBS),
                noun_phrase(rng),
                noun_phrase(rng),
                pick(rng, ADJS)
            ),
            2 => format!(
                "when {} {}, {} {} {}.",
                noun_phrase(rng),
                pick(rng, VERBS),
                noun_phrase(rng),
                pick(rng, VERBS),
                pick(rng, ADVS)
            ),
            3 => format!(
                "why does {} {} {}?",
                noun_phrase(rng),
                pick(rng, VERBS_BASE),
                noun_phrase(rng)
            ),
            4 => format!(
                "{} said that {} is {} and {}.",
                pick(rng, NAMES),
                noun_phrase(rng),
                pick(rng, ADJS),
                pick(rng, ADJS)
            ),
            5 => format!(
                "there are {} {}s {} {}.",
                rng.gen_range(2..500),
                pick(rng, NOUNS),
                pick(rng, PREPS),
                noun_phrase(rng)
            ),
            6 => format!(
                "{} {} {} {} {}, but {} {} {}.",
                noun_phrase(rng),
                pick(rng, ADVS),
                pick(rng, VERBS),
                noun_phrase(rng),
                pick(rng, PREPS),
                pick(rng, NAMES),
                pick(rng, VERBS),
                noun_phrase(rng)
            ),
            7 => format!(
                "if {} {} {}, then {} will {} {}.",
                noun_phrase(rng),
                pick(rng, VERBS),
                noun_phrase(rng),
                pick(rng, NAMES),
                pick(rng, VERBS_BASE),
                noun_phrase(rng)
            ),
            8 => format!(
                "how can {} {} {} {} {}?",
                noun_phrase(rng),
                pick(rng, VERBS_BASE),
                noun_phrase(rng),
                pick(rng, PREPS),
                noun_phrase(rng)
            ),
            9 => format!(
                "{} is {} than {}.",
                noun_phrase(rng),
                pick(rng, ADJS),
                noun_phrase(rng)
            ),
            10 => format!(
                "in {}, {} {} {} {} {}.",
                rng.gen_range(1800..2030),
                pick(rng, NAMES),
                pick(rng, VERBS),
                noun_phrase(rng),
                pick(rng, PREPS),
                pick(rng, NAMES)
            ),
            11 => format!(
                "{} and {} {} {} {}.",
                noun_phrase(rng),
                noun_phrase(rng),
                pick(rng, ADVS),
                pick(rng, VERBS),
                noun_phrase(rng)
            ),
            12 => format!(
                "most {}s {} {} {} {}.",
                pick(rng, NOUNS),
                pick(rng, VERBS_BASE),
                noun_phrase(rng),
                pick(rng, PREPS),
                noun_phrase(rng)
            ),
            _ => format!(
                "{} {} {} {} {} {}.",
                pick(rng, NAMES),
                pick(rng, ADVS),
                pick(rng, VERBS),
                noun_phrase(rng),
                pick(rng, PREPS),
                noun_phrase(rng)
            ),
        };
        capitalise(&s)
    }

    /// Random sentences, at least `min_words` words.
    fn prose(rng: &mut StdRng, min_words: usize) -> String {
        let mut out = String::new();
        let mut words = 0;
        while words < min_words {
            let s = sentence(rng);
            words += s.split_whitespace().count();
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s);
        }
        out
    }

    fn ident(rng: &mut StdRng) -> String {
        let a = pick(rng, NOUNS);
        let b = pick(rng, VERBS_BASE);
        match rng.gen_range(0..4) {
            0 => format!("{b}_{a}"),
            1 => format!("{a}_{}", pick(rng, NOUNS)),
            2 => a.to_string(),
            _ => format!("{b}{}", capitalise(a)),
        }
    }

    /// A random code snippet (Python, JavaScript or SQL DDL).
    fn code(rng: &mut StdRng, lang: &str) -> String {
        let mut out = String::new();
        for _ in 0..rng.gen_range(1..4) {
            let f = ident(rng);
            let args: Vec<String> = (0..rng.gen_range(1..4)).map(|_| ident(rng)).collect();
            let a0 = args[0].clone();
            let al = args[args.len() - 1].clone();
            match lang {
                "python" => {
                    out += &format!("def {f}({}):\n", args.join(", "));
                    for _ in 0..rng.gen_range(2..8) {
                        let v = ident(rng);
                        out += &match rng.gen_range(0..5) {
                            0 => format!("    {v} = {a0} * {}\n", rng.gen_range(1..100)),
                            1 => format!("    for {v} in range(len({a0})):\n        {al} += {v}\n"),
                            2 => format!(
                                "    if {v} > {}:\n        return {v}\n",
                                rng.gen_range(0..50)
                            ),
                            3 => format!(
                                "    {v} = [x for x in {a0} if x % {} == 0]\n",
                                rng.gen_range(2..9)
                            ),
                            _ => format!("    print(\"{}\", {v})\n", pick(rng, NOUNS)),
                        };
                    }
                    out += &format!("    return {a0}\n\n");
                }
                "sql" => {
                    out += &format!("CREATE TABLE {f} (\n  id INTEGER PRIMARY KEY,\n");
                    for a in &args {
                        out += &format!(
                            "  {a} {},\n",
                            pick(rng, &["TEXT", "INTEGER", "REAL", "DATE"])
                        );
                    }
                    out += &format!(
                        "  {}_id INTEGER REFERENCES {}(id)\n);\n",
                        pick(rng, NOUNS),
                        pick(rng, NOUNS)
                    );
                }
                _ => {
                    out += &format!("function {f}({}) {{\n", args.join(", "));
                    for _ in 0..rng.gen_range(2..8) {
                        let v = ident(rng);
                        out += &match rng.gen_range(0..4) {
                            0 => format!(
                                "  const {v} = {a0}.map((x) => x * {});\n",
                                rng.gen_range(1..100)
                            ),
                            1 => {
                                format!("  for (let i = 0; i < {a0}.length; i++) {{ {v} += i; }}\n")
                            }
                            2 => format!(
                                "  if ({v} === null) {{ return {}; }}\n",
                                rng.gen_range(0..9)
                            ),
                            _ => format!("  console.log('{}', {v});\n", pick(rng, NOUNS)),
                        };
                    }
                    out += &format!("  return {a0};\n}}\n\n");
                }
            }
        }
        out
    }

    /// One part of a template: fixed text or a fill.
    #[derive(Clone, Copy)]
    enum Slot {
        Text(&'static str),
        /// Random sentences, about this many words (scaled, see `render`).
        Prose(usize),
        Num,
        Code(&'static str),
        /// A double-quoted span of about this many words.
        Quote(usize),
        Lang,
        Subject,
        Profession,
        Name,
    }
    use Slot::{Code, Lang, Name, Num, Profession, Prose, Quote, Subject, Text};

    struct Template {
        name: &'static str,
        parts: Vec<Slot>,
    }

    /// Templates modelled on distillation prompts. The last five are the hard
    /// cases: instruction shorter than a region, instruction between two
    /// fills, slots inside the instruction, scaffolding that is mostly labels.
    fn templates() -> Vec<Template> {
        let t = |name, parts| Template { name, parts };
        vec![
            t("cot-reconstruct", vec![Text("Imagine and articulate the internal reasoning behind the completed response below, and write it out step by step. Be explicit about every intermediate conclusion and never skip a step.\n\nQuestion: "), Prose(30), Text("\n\nAnswer: "), Prose(30)]),
            t("rubric-grade", vec![Text("Grade the following answer on a 1-10 rubric for correctness, completeness, clarity and concision. First list the strengths and the weaknesses, then output the final score on its own line as Score: N.\n\nQuestion: "), Prose(25), Text("\nAnswer: "), Prose(40)]),
            t("tool-trajectory", vec![Text("You are given a user request and the final answer produced by an assistant that had access to tools (web search, calculator, code interpreter). Reconstruct the full trajectory of tool calls, including the arguments and the observations returned, that would lead to this answer. Use the format Thought / Action / Observation.\n\nRequest: "), Prose(25), Text("\nFinal answer: "), Prose(35)]),
            t("coding-python", vec![Text("Solve the following coding problem in Python. Explain your approach, state the time and space complexity, and then write a complete and efficient solution.\n\n"), Prose(30), Text("\n\nExample input: "), Num, Text(" "), Num, Text("\nExample output: "), Num, Text("\n\nStarter code:\n```python\n"), Code("python"), Text("```")]),
            t("translate", vec![Text("Translate the following text from "), Lang, Text(" into "), Lang, Text(". Preserve the meaning, the tone and the formatting, and do not add any explanations or notes.\n\nText: "), Prose(50)]),
            t("mcq-eval", vec![Text("The following is a multiple choice question about "), Subject, Text(". Think step by step, then answer with the letter of the correct option only.\n\n"), Prose(20), Text("\nA) "), Prose(6), Text("\nB) "), Prose(6), Text("\nC) "), Prose(6), Text("\nD) "), Prose(6), Text("\nAnswer:")]),
            t("math-boxed", vec![Text("Solve the problem below. Show all of your work, reason carefully about each step, and put the final answer in \\boxed{}.\n\nProblem: "), Prose(20), Text(" If there are "), Num, Text(" of them and each costs "), Num, Text(" dollars, what is the total after a discount of "), Num, Text(" percent?")]),
            t("summarize-exec", vec![Text("Summarize the following article in three bullet points, then give a one-sentence takeaway for a busy executive.\n\nArticle:\n"), Prose(80)]),
            t("pairwise-judge", vec![Text("Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Explain your judgement briefly, then output your final verdict strictly as [[A]] or [[B]].\n\n[User Question]\n"), Prose(15), Text("\n\n[The Start of Assistant A's Answer]\n"), Prose(30), Text("\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n"), Prose(30), Text("\n[The End of Assistant B's Answer]")]),
            t("critique-rewrite", vec![Text("Critique the following response for factual errors, logical gaps and unclear wording. Then rewrite it so that it would receive a perfect score from an expert reviewer.\n\nResponse: "), Prose(60)]),
            t("qa-generation", vec![Text("Generate "), Num, Text(" diverse question and answer pairs about the passage below. Each question must be answerable from the passage alone. Return them as a JSON list of objects with the keys \"question\" and \"answer\".\n\nPassage: "), Prose(70)]),
            t("code-explain", vec![Text("Explain what the following code does line by line, identify any bugs or edge cases it mishandles, and suggest a more idiomatic version.\n\n```javascript\n"), Code("js"), Text("```\n"), Prose(8)]),
            t("unit-tests", vec![Text("Write comprehensive unit tests for the function below using pytest. Cover edge cases, invalid inputs and typical usage, and aim for full branch coverage.\n\n```python\n"), Code("python"), Text("```\nContext: "), Prose(20)]),
            t("text-to-sql", vec![Text("Given the database schema below, write a SQL query that answers the question. Return only the query, without any commentary.\n\nSchema:\n"), Code("sql"), Text("\nQuestion: "), Prose(20)]),
            t("sentiment", vec![Text("Classify the sentiment of the following customer review as positive, negative or neutral, and give a confidence between 0 and 1. Reply in the form label, confidence.\n\nReview: "), Quote(30), Text("\n"), Prose(30)]),
            t("ner-json", vec![Text("Extract all named entities (people, organisations, locations and dates) from the text below and return them as JSON grouped by entity type. Do not include any entity that is not explicitly mentioned.\n\nText: "), Prose(60)]),
            t("expert-persona", vec![Text("You are an expert "), Profession, Text(" with twenty years of experience. A client asks you the following question. Answer in detail, cite best practices, and end with a short checklist.\n\nClient question: "), Prose(50)]),
            t("fill-first-rewrite", vec![Prose(70), Text("\n\nRewrite the passage above in plain English for a twelve year old reader, keeping every fact but using short sentences and simple words.")]),
            t("think-tags", vec![Text("Answer the question below. Before giving the final answer, reason through the problem step by step inside <thinking> tags, then give only the final answer inside <answer> tags.\n\nQuestion: "), Prose(40)]),
            t("self-instruct", vec![Text("You are asked to come up with a set of "), Num, Text(" diverse task instructions. These task instructions will be given to a language model and we will evaluate the model for completing the instructions. Here are the requirements: try not to repeat the verb for each instruction, and the language used for the instructions also should be diverse.\n\nList of tasks:\n1. "), Prose(12), Text("\n2. "), Prose(12), Text("\n3. "), Prose(12), Text("\n4. "), Prose(12)]),
            t("reward-rating", vec![Text("Rate the helpfulness of the assistant's final reply on a scale of 1 to 5, where 1 means not helpful at all and 5 means extremely helpful. Output only the number.\n\nConversation:\nUser: "), Prose(25), Text("\nAssistant: "), Prose(40), Text("\nRating:")]),
            t("doc-qa", vec![Text("Read the document and answer the question at the end.\n\nDocument:\n"), Prose(90), Text("\n\nQuestion: "), Prose(12), Text("\nAnswer concisely and quote the sentence from the document that supports your answer.")]),
            t("quote-analysis", vec![Text("Here is a quotation from "), Name, Text(": "), Quote(25), Text(". Analyse its meaning, the historical context in which it was said, and how it is still relevant today. "), Prose(40)]),
            t("proof", vec![Text("Prove the following statement rigorously. State every assumption, justify each step, and conclude with Q.E.D.\n\nStatement: "), Prose(35)]),
            t("HARD short-summarize", vec![Text("Summarize the text below in one paragraph.\n\n"), Prose(60)]),
            t("HARD instruction-in-middle", vec![Prose(40), Text("\n\nBased on the conversation above, write the next reply as the assistant would, keeping the same tone. Then explain why it is better than the alternatives:\n\n"), Prose(40)]),
            t("HARD persona-slots", vec![Text("You are "), Name, Text(", a "), Profession, Text(" based in "), Name, Text(". You speak "), Lang, Text(" and have "), Num, Text(" years of experience. Answer the user's question in character.\n\nUser: "), Prose(40)]),
            t("HARD few-shot-labels", vec![Text("Here are some examples of questions and their answers.\nQ: "), Prose(12), Text("\nA: "), Prose(12), Text("\nQ: "), Prose(12), Text("\nA: "), Prose(12), Text("\nQ: "), Prose(12), Text("\nA:")]),
            t("HARD json-schema", vec![Text("Return a JSON object that matches this schema:\n```json\n{\"name\": string, \"age\": number, \"tags\": [string]}\n```\nInput: "), Prose(50)]),
        ]
    }

    /// Renders one instance; returns the text and the fraction of its bytes that are fill.
    fn render(rng: &mut StdRng, t: &Template, scale: f64) -> (String, f64) {
        let mut out = String::new();
        let mut fill = 0usize;
        for part in &t.parts {
            let before = out.len();
            match *part {
                Text(s) => out.push_str(s),
                Prose(n) => {
                    let lo = ((n as f64) * scale * 0.7) as usize;
                    let hi = ((n as f64) * scale * 1.6) as usize + 2;
                    let words = rng.gen_range(lo.max(1)..hi);
                    out.push_str(&prose(rng, words));
                }
                Num => {
                    let v = match rng.gen_range(0..3) {
                        0 => rng.gen_range(0..100).to_string(),
                        1 => rng.gen_range(100..100_000).to_string(),
                        _ => format!("{:.2}", rng.gen_range(0.0..1000.0)),
                    };
                    out.push_str(&v);
                }
                Code(lang) => out.push_str(&code(rng, lang)),
                Quote(n) => {
                    let words = rng.gen_range(n / 2..n * 2);
                    out.push('"');
                    out.push_str(&prose(rng, words));
                    out.push('"');
                }
                Lang => out.push_str(pick(rng, LANGS)),
                Subject => out.push_str(pick(rng, SUBJECTS)),
                Profession => out.push_str(pick(rng, PROFESSIONS)),
                Name => out.push_str(pick(rng, NAMES)),
            }
            if !matches!(part, Text(_)) {
                fill += out.len() - before;
            }
        }
        let frac = fill as f64 / out.len().max(1) as f64;
        (out, frac)
    }

    /// An instance whose fill is at least 60 % of its bytes.
    fn instance(rng: &mut StdRng, t: &Template) -> (String, f64) {
        let mut scale = 1.0;
        loop {
            let (s, f) = render(rng, t, scale);
            if f >= 0.6 {
                return (s, f);
            }
            scale *= 1.25;
        }
    }

    /// One natural (unrelated) prompt: 5–400 words, varied shapes.
    fn natural(rng: &mut StdRng) -> String {
        if rng.gen_bool(0.08) {
            return pick(rng, SHORT).to_string();
        }
        let target = (5.0 * 80f64.powf(rng.gen::<f64>())) as usize;
        let email = rng.gen_bool(0.06);
        let paragraphs = rng.gen_bool(0.1);
        let mut out = String::new();
        if email {
            out += &format!(
                "{},\n\n",
                pick(rng, &["Hi", "Hello", "Dear assistant", "Hey"])
            );
        }
        match rng.gen_range(0..6) {
            0 | 1 => {
                out += pick(rng, OPENERS);
                out.push(' ');
                out += &noun_phrase(rng);
                out += if rng.gen_bool(0.5) { "?" } else { "." };
            }
            2 => {
                out += &format!(
                    "{} {} {}?",
                    pick(
                        rng,
                        &["what is", "who is", "where is", "how does", "why is"]
                    ),
                    noun_phrase(rng),
                    pick(rng, &["important", "used", "made", "different", "so hard"])
                );
            }
            3 => {
                out += &format!(
                    "I am working on {} and {} {} {}.",
                    noun_phrase(rng),
                    noun_phrase(rng),
                    pick(rng, VERBS),
                    noun_phrase(rng)
                );
            }
            _ => {}
        }
        let mut words = out.split_whitespace().count();
        while words < target {
            let s = if rng.gen_bool(0.1) {
                format!("{}, {}", pick(rng, COMMON), sentence(rng).to_lowercase())
            } else if rng.gen_bool(0.03) {
                format!("Here is my code:\n```\n{}```", code(rng, "python"))
            } else if rng.gen_bool(0.04) {
                format!("The text says \"{}\"", prose(rng, 8))
            } else if rng.gen_bool(0.05) {
                format!("\n- {}", sentence(rng))
            } else if paragraphs && rng.gen_bool(0.3) {
                format!("\n\n{}", sentence(rng))
            } else {
                sentence(rng)
            };
            words += s.split_whitespace().count();
            out.push(' ');
            out += &s;
        }
        if email {
            out += &format!("\n\n{}\n{}", pick(rng, SIGNOFFS), pick(rng, NAMES));
        } else if rng.gen_bool(0.15) {
            out += &format!(
                " {}",
                pick(
                    rng,
                    &[
                        "Thanks!",
                        "Thank you in advance.",
                        "Please be concise.",
                        "Explain it step by step."
                    ]
                )
            );
        }
        out
    }

    struct Corpus {
        /// (template index, text, fill fraction)
        instances: Vec<(usize, String, f64)>,
        natural: Vec<String>,
    }

    fn corpus(per_template: usize, naturals: usize) -> Corpus {
        let mut rng = StdRng::seed_from_u64(0x5EED_D157_1111);
        let mut instances = Vec::new();
        for (ti, t) in templates().iter().enumerate() {
            for _ in 0..per_template {
                let (s, f) = instance(&mut rng, t);
                instances.push((ti, s, f));
            }
        }
        let natural = (0..naturals).map(|_| natural(&mut rng)).collect();
        Corpus { instances, natural }
    }

    // -----------------------------------------------------------------------
    // Measurement

    #[derive(Default, Clone, Copy)]
    struct Rate {
        pairs: u64,
        near: u64,
        key: u64,
    }

    impl Rate {
        fn add(&mut self, near: bool, key: bool) {
            self.pairs += 1;
            self.near += u64::from(near);
            self.key += u64::from(key);
        }
        fn near_frac(&self) -> f64 {
            self.near as f64 / self.pairs.max(1) as f64
        }
        fn key_frac(&self) -> f64 {
            self.key as f64 / self.pairs.max(1) as f64
        }
        fn line(&self, what: &str) -> String {
            format!(
                "{what:<44} pairs {:>9}  is_near {:>8.4}%  shares a key {:>8.4}%",
                self.pairs,
                100.0 * self.near_frac(),
                100.0 * self.key_frac()
            )
        }
    }

    const PER_TEMPLATE: usize = 50;
    const NATURALS: usize = 2000;

    /// Rates of one measurement run.
    struct Rates {
        same: Rate,
        typical: Rate,
        hard: Rate,
        per_template: Vec<Rate>,
        diff: Rate,
        cross: Rate,
        cross_inf: Rate,
        nat_all: Rate,
        nat_inf: Rate,
        natural_not_informative: usize,
        instances_not_informative: usize,
    }

    /// Signs the corpus with `key` and measures every pair. Key sharing is
    /// counted the way the engine would find it: through an index from key
    /// to prompts.
    fn measure(c: &Corpus, key: u64) -> Rates {
        let n_templates = templates().len();
        let hard: Vec<bool> = templates()
            .iter()
            .map(|t| t.name.starts_with("HARD"))
            .collect();
        let t_sigs: Vec<PromptSignature> = c
            .instances
            .iter()
            .map(|(_, s, _)| signature_keyed(s, key))
            .collect();
        let n_sigs: Vec<PromptSignature> =
            c.natural.iter().map(|s| signature_keyed(s, key)).collect();
        let nt = t_sigs.len();

        let mut index: HashMap<u64, Vec<u32>> = HashMap::new();
        for (id, s) in t_sigs.iter().chain(n_sigs.iter()).enumerate() {
            for k in s.index_keys() {
                index.entry(k).or_default().push(id as u32);
            }
        }
        let mut sharing: HashSet<(u32, u32)> = HashSet::new();
        for ids in index.values() {
            for (x, &a) in ids.iter().enumerate() {
                for &b in &ids[x + 1..] {
                    if a != b {
                        sharing.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        let shares = |a: usize, b: usize| sharing.contains(&(a.min(b) as u32, a.max(b) as u32));

        let mut r = Rates {
            same: Rate::default(),
            typical: Rate::default(),
            hard: Rate::default(),
            per_template: vec![Rate::default(); n_templates],
            diff: Rate::default(),
            cross: Rate::default(),
            cross_inf: Rate::default(),
            nat_all: Rate::default(),
            nat_inf: Rate::default(),
            natural_not_informative: n_sigs.iter().filter(|s| !s.is_informative()).count(),
            instances_not_informative: t_sigs.iter().filter(|s| !s.is_informative()).count(),
        };
        for a in 0..nt {
            for b in a + 1..nt {
                let near = is_near(&t_sigs[a], &t_sigs[b]);
                let key = shares(a, b);
                let (ta, tb) = (c.instances[a].0, c.instances[b].0);
                if ta == tb {
                    r.same.add(near, key);
                    r.per_template[ta].add(near, key);
                    if hard[ta] {
                        r.hard.add(near, key);
                    } else {
                        r.typical.add(near, key);
                    }
                } else {
                    r.diff.add(near, key);
                }
            }
        }
        for (a, t) in t_sigs.iter().enumerate() {
            for (j, n) in n_sigs.iter().enumerate() {
                let near = is_near(t, n);
                let key = shares(a, nt + j);
                r.cross.add(near, key);
                if n.is_informative() {
                    r.cross_inf.add(near, key);
                }
            }
        }
        for a in 0..n_sigs.len() {
            for b in a + 1..n_sigs.len() {
                let near = is_near(&n_sigs[a], &n_sigs[b]);
                let key = shares(nt + a, nt + b);
                r.nat_all.add(near, key);
                if n_sigs[a].is_informative() && n_sigs[b].is_informative() {
                    r.nat_inf.add(near, key);
                }
            }
        }
        r
    }

    /// Pair rates over the generated corpus (deterministic: seeded). See the
    /// report with `cargo test --release pair_rates -- --nocapture`.
    ///
    /// The floors asserted are the project's: ≥ 95 % of same-template pairs
    /// near and sharing a key, ≤ 1 % of unrelated pairs. The same-template
    /// floor applies to the 24 typical templates; the 5 `HARD` ones probe
    /// the limits listed in the module docs (§9) and are reported apart, with
    /// only a regression floor on all 29 together.
    #[test]
    fn pair_rates() {
        let c = corpus(PER_TEMPLATE, NATURALS);
        let r = measure(&c, DEFAULT_KEY);
        let names: Vec<&str> = templates().iter().map(|t| t.name).collect();
        let fills: Vec<f64> = c.instances.iter().map(|i| i.2).collect();
        let fill_mean = fills.iter().sum::<f64>() / fills.len() as f64;
        let fill_min = fills.iter().copied().fold(1.0, f64::min);
        let words: Vec<usize> = c
            .natural
            .iter()
            .map(|s| s.split_whitespace().count())
            .collect();
        println!("prompt signature pair rates (seeded corpus, default key)");
        println!(
            "  {} templates ({} typical, {} hard) x {PER_TEMPLATE} instances; fill = {:.1}% of bytes on average, {:.1}% at least",
            names.len(),
            names.iter().filter(|n| !n.starts_with("HARD")).count(),
            names.iter().filter(|n| n.starts_with("HARD")).count(),
            100.0 * fill_mean,
            100.0 * fill_min
        );
        println!(
            "  {} natural prompts, {}-{} words; {} not informative (< {MIN_INFORMATIVE_TOKENS} tokens); template instances not informative: {}",
            c.natural.len(),
            words.iter().min().unwrap_or(&0),
            words.iter().max().unwrap_or(&0),
            r.natural_not_informative,
            r.instances_not_informative
        );
        println!("{}", r.typical.line("same template, 24 typical templates"));
        println!("{}", r.hard.line("same template, 5 hard templates"));
        println!("{}", r.same.line("same template, all 29"));
        println!("{}", r.diff.line("different templates"));
        println!("{}", r.cross.line("template vs natural (all)"));
        println!("{}", r.cross_inf.line("template vs natural (informative)"));
        println!("{}", r.nat_all.line("natural vs natural (all)"));
        println!(
            "{}",
            r.nat_inf.line("natural vs natural (both informative)")
        );
        println!("  per template (same-template pairs):");
        for (name, rate) in names.iter().zip(&r.per_template) {
            println!("    {}", rate.line(name));
        }

        assert!(
            r.typical.near_frac() >= 0.95,
            "typical same-template is_near {:.4}",
            r.typical.near_frac()
        );
        assert!(
            r.typical.key_frac() >= 0.95,
            "typical same-template keys {:.4}",
            r.typical.key_frac()
        );
        assert!(
            r.same.near_frac() >= 0.90,
            "all same-template is_near {:.4}",
            r.same.near_frac()
        );
        assert!(
            r.same.key_frac() >= 0.90,
            "all same-template keys {:.4}",
            r.same.key_frac()
        );
        for rate in [&r.nat_all, &r.nat_inf, &r.cross, &r.diff] {
            assert!(
                rate.near_frac() <= 0.01,
                "unrelated is_near {:.4}",
                rate.near_frac()
            );
            assert!(
                rate.key_frac() <= 0.01,
                "unrelated keys {:.4}",
                rate.key_frac()
            );
        }
        assert_eq!(r.instances_not_informative, 0);
    }

    /// The same measurement under several signing keys, i.e. several draws
    /// of the hash functions: shows how much the rates owe to one draw.
    /// `cargo test --release pair_rates_across_keys -- --ignored --nocapture`
    #[test]
    #[ignore = "slow in debug builds; a report, not a check"]
    fn pair_rates_across_keys() {
        let c = corpus(PER_TEMPLATE, NATURALS);
        println!("key               typical near/key      hard near/key        all near/key         natural(inf) near/key   cross key");
        for key in [DEFAULT_KEY, 1, 2, 3, 4, 5, 6, 7] {
            let r = measure(&c, key);
            println!(
                "{key:016x}  {:6.2}% {:6.2}%    {:6.2}% {:6.2}%    {:6.2}% {:6.2}%    {:6.3}% {:6.3}%       {:6.4}%",
                100.0 * r.typical.near_frac(),
                100.0 * r.typical.key_frac(),
                100.0 * r.hard.near_frac(),
                100.0 * r.hard.key_frac(),
                100.0 * r.same.near_frac(),
                100.0 * r.same.key_frac(),
                100.0 * r.nat_inf.near_frac(),
                100.0 * r.nat_inf.key_frac(),
                100.0 * r.cross.key_frac(),
            );
        }
    }
}
