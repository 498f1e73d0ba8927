//! Prompt template signature: a compact, non-reversible sketch of a prompt's *template* (its instructions and
//! structure), robust to the fill, with LSH keys for finding prompts built from the same template.
//!
//! The engine keeps only this signature of a prompt, never the text: it compares two with [`is_near`] and indexes
//! them by [`PromptSignature::index_keys`]. The specification, §1 to §11 (tokens, shingles, sketches, the near
//! rule, index keys, privacy, cost, limits, stock phrases, continued walks), is `docs/signature.md`; "§n" in this module refers to it.

use std::fmt;
use std::str::FromStr;

use super::hash::{moremur, word_hash};

/// Tokens per shingle (see `docs/signature.md`, §2).
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

mod sketch;
mod stock;
mod tokenize;
mod value;

pub use sketch::Partial;
use sketch::*;
pub use stock::*;
use tokenize::*;
pub use value::*;

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

/// [`signature_with`] of `text`, and the walk stopped at its end, to be
/// continued on a text that extends it with a line break and more
/// ([`signature_continued`]); None when the walk cannot be continued (a
/// closing mark was still looked for at the end, §11).
pub fn signature_partial(text: &str, stock: &StockShingles) -> (PromptSignature, Option<Partial>) {
    signature_from(text, Sketcher::new(stock.key, stock), 0)
}

/// [`signature_partial`] of `text`, walking only what follows the text
/// `walked` stopped at: `text` must extend that text with a line break and
/// more, which only the caller can know (it is checked that `text` is long
/// enough, holds `'\n'` where that text ended, and that `walked` was made
/// with `stock`'s key; otherwise `text` is walked whole). The result is
/// the same as `signature_partial(text, stock)` when `walked` was made from
/// `text[..walked.len()]` with `stock` (§11).
pub fn signature_continued(
    text: &str,
    walked: &Partial,
    stock: &StockShingles,
) -> (PromptSignature, Option<Partial>) {
    let from = walked.len();
    if walked.key() != stock.key || text.as_bytes().get(from) != Some(&b'\n') {
        return signature_partial(text, stock);
    }
    signature_from(text, Sketcher::resumed(walked, stock), from)
}

fn signature_from(
    text: &str,
    mut sk: Sketcher<'_>,
    from: usize,
) -> (PromptSignature, Option<Partial>) {
    let open = tokenize_from(text, from, &mut sk);
    let partial = (!open).then(|| sk.partial(text.len()));
    (sk.finish(), partial)
}

#[cfg(test)]
mod tests;
