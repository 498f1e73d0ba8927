//! Prompt analysis (the step between inspection and the engine): turns a request's prompt text into
//! [`PromptFeatures`] — the index keys of its template signature, the phrase lists it matches, its fill key, its
//! token estimate — so that the engine works on features and never sees the text.
//!
//! The phrase lists ([`PhraseMatcher`]) are built from the config with the engine's policy and reloaded with it;
//! their phrases are also the stock phrases left out of every signature (`docs/signature.md`, §10). Matching is
//! specified in `docs/score.md` ("Phrase matching").

mod cache;
mod phrases;

pub use cache::*;
pub use phrases::*;

use crate::api::estimate::Estimator;
use crate::engine::attr_hash;
use crate::engine::link::AttrKind;
use crate::engine::score::PhraseHits;
use crate::engine::signature::{self, INDEX_KEYS};

/// What the engine is told about a prompt, computed from its text before the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptFeatures {
    /// Index keys of the prompt's template signature (informative prompts only), for linking.
    pub keys: Option<[u64; INDEX_KEYS]>,
    /// The phrase lists the prompt matched, for detection.
    pub phrase_hits: PhraseHits,
    /// The prompt's fill key ([`fill_key`]), for detection's breadth signal.
    pub fill_key: Option<u64>,
    /// Its tokens as [`estimate_tokens`](crate::api::estimate::estimate_tokens) counts them: what admission
    /// charges for the request's input. Always computed.
    pub input_tokens: u32,
}

/// Which features a request needs: the signature's keys when accounts are linked, the phrase hits and the fill key
/// when detection is on. What is not wanted is not computed (the token estimate is always wanted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Signature index keys (linking is on).
    pub linking: bool,
    /// Phrase hits and fill key (detection is on).
    pub detection: bool,
}

impl Wanted {
    /// Every feature.
    pub const ALL: Wanted = Wanted {
        linking: true,
        detection: true,
    };
}

/// The features of `prompt` that `wanted` asks for; the signature leaves out the shingles of `matcher`'s phrases.
pub fn features(matcher: &PhraseMatcher, prompt: &str, wanted: Wanted) -> PromptFeatures {
    let keys = wanted.linking.then(|| {
        let sig = signature::signature_with(prompt, matcher.stock_shingles());
        sig.is_informative().then(|| sig.index_keys())
    });
    PromptFeatures {
        keys: keys.flatten(),
        phrase_hits: if wanted.detection {
            matcher.scan(prompt)
        } else {
            PhraseHits::NONE
        },
        fill_key: wanted.detection.then(|| fill_key(prompt)),
        input_tokens: crate::api::estimate::estimate_tokens(prompt),
    }
}

/// [`features`] of a request's prompt, with the walks of the prompt's already-seen part taken from `matcher`'s
/// cache ([`PromptCache`]): a prompt seen before whole is not walked, and one that extends a prompt seen before at
/// one of `cuts` (the offsets of the line breaks that join its pieces, `crate::api::inspect::PromptCuts`) is
/// walked only past it. The features are the same as [`features`] gives. Only the walks `wanted` asks for are made
/// and kept (the token estimate's always), and only for `account` (the request's account id): another account's
/// requests do not find them. Prompts shorter than [`MIN_CACHED_BYTES`], or with the cache off, are walked whole
/// and not kept.
pub fn cached_features(
    matcher: &PhraseMatcher,
    prompt: &str,
    cuts: impl IntoIterator<Item = usize>,
    wanted: Wanted,
    account: u64,
) -> PromptFeatures {
    let cache = matcher.cache();
    if prompt.len() < MIN_CACHED_BYTES || cache.capacity() == 0 {
        return features(matcher, prompt, wanted);
    }
    let prefixes = cache.prefixes(prompt, cuts, wanted, account);
    let found = |w: &Walked| PromptFeatures {
        keys: w.keys,
        phrase_hits: w.hits,
        fill_key: wanted.detection.then(|| fill_key(prompt)),
        input_tokens: w.tokens.tokens(),
    };
    let mut hashes = prefixes.iter();
    let Some((_, whole)) = hashes.next() else {
        return found(&walk(matcher, prompt, None, wanted));
    };
    if let Some(w) = cache.get(whole) {
        cache.count(Walk::Whole);
        return found(&w);
    }
    // The longest prefix seen before whose walks can be continued (the
    // signature's cannot when its walk stopped inside an open search).
    let continues =
        |w: &Walked, len: usize| w.len == len && (!wanted.linking || w.partial.is_some());
    let seen = hashes.find_map(|(len, h)| cache.get(h).filter(|w| continues(w, len)));
    cache.count(if seen.is_some() {
        Walk::Continued
    } else {
        Walk::Walked
    });
    // Walked whole: in two parts, the first kept too, so that other
    // prompts that start the same (a new conversation with an app's system
    // prompt) are walked past it. The part is the text before the earliest
    // join looked up, the first one in a conversation's first request.
    let seen = seen.or_else(|| {
        let (len, h) = prefixes.iter().skip(1).last()?;
        let head = prompt.get(..len).filter(|h| h.len() >= MIN_CACHED_BYTES)?;
        let w = walk(matcher, head, None, wanted);
        continues(&w, len).then(|| {
            cache.put(h, w);
            w
        })
    });
    let walked = walk(matcher, prompt, seen.as_ref(), wanted);
    cache.put(whole, walked);
    found(&walked)
}

/// The walks of `prompt` that `wanted` asks for (signature, phrase scan; the token estimate always), taken up from
/// where `seen` stopped (the walks of the prompt's first `seen.len` bytes), or whole.
fn walk(matcher: &PhraseMatcher, prompt: &str, seen: Option<&Walked>, wanted: Wanted) -> Walked {
    let stock = matcher.stock_shingles();
    let from = seen.map_or(0, |w| w.len);
    let (keys, partial) = if wanted.linking {
        let (sig, partial) = match seen.and_then(|w| w.partial.as_ref()) {
            Some(p) => signature::signature_continued(prompt, p, stock),
            None => signature::signature_partial(prompt, stock),
        };
        (sig.is_informative().then(|| sig.index_keys()), partial)
    } else {
        (None, None)
    };
    let hits = match (wanted.detection, seen) {
        (false, _) => PhraseHits::NONE,
        (true, Some(w)) => matcher.scan_continued(prompt, w.len, w.hits),
        (true, None) => matcher.scan(prompt),
    };
    let mut tokens = seen.map_or_else(Estimator::new, |w| w.tokens);
    tokens.push(prompt.as_bytes().get(from..).unwrap_or_default());
    Walked {
        len: prompt.len(),
        partial,
        keys,
        hits,
        tokens,
    }
}

/// A key for "distinct fills" (the breadth signal): the prompt's length
/// and its first and last 256 bytes. Hashing the whole of a long prompt
/// would cost time in proportion to its length for a signal that only
/// counts distinct values; two fills that differ only in the middle of a
/// long prompt count as one.
pub fn fill_key(prompt: &str) -> u64 {
    let b = prompt.as_bytes();
    let head = &b[..b.len().min(256)];
    let tail = &b[b.len().saturating_sub(256)..];
    attr_hash(AttrKind::Prompt, head)
        ^ attr_hash(AttrKind::Prompt, tail).rotate_left(17)
        ^ (b.len() as u64)
}

#[cfg(test)]
mod tests;
