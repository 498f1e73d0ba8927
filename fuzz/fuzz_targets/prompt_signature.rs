//! Prompt signature and tokeniser (`distill_guard::engine::signature`) and
//! the distinct-fill key (`distill_guard::prompt::fill_key`).
//!
//! Input: `[split_lo][split_hi][key: 8 bytes][text ...]`; the text (lossy
//! UTF-8) is cut at the char boundary at or before `split` into a second
//! prompt `b` (the first part) so pairs of related prompts are compared too.
//!
//! Checked besides "no panic":
//! * determinism: the same text gives the same signature, index keys and
//!   fill key twice;
//! * `signature(t) == signature_keyed(t, k)` only through the public key:
//!   two keys give signatures of the same token count;
//! * bounds: `token_count() <= text.len()`, `is_informative()` exactly when
//!   `token_count() >= MIN_INFORMATIVE_TOKENS`, `INDEX_KEYS` keys;
//! * `to_hex` is 396 lowercase hex digits and `from_hex` reads it back (and
//!   its uppercase) as the same signature; `from_hex` of the raw input never
//!   panics, and what it accepts re-encodes to itself;
//! * similarity: in [0, 1] region by region, 1 with itself, symmetric;
//!   `is_near(a, a)` exactly when `a` is informative; `is_near` symmetric;
//! * `fill_key` depends only on the length and the first and last 256 bytes.
#![no_main]

use distill_guard::engine::signature::{
    is_near, signature, signature_keyed, similarity, similarity_parts, PromptSignature,
    INDEX_KEYS, MIN_INFORMATIVE_TOKENS,
};
use distill_guard::prompt::fill_key;
use libfuzzer_sys::fuzz_target;

fn check_one(text: &str) -> PromptSignature {
    let s = signature(text);
    assert_eq!(s, signature(text), "signature is not deterministic");
    let keys = s.index_keys();
    assert_eq!(keys.len(), INDEX_KEYS);
    assert_eq!(keys, signature(text).index_keys());
    assert!(
        s.token_count() as usize <= text.len(),
        "{} tokens in {} bytes",
        s.token_count(),
        text.len()
    );
    assert_eq!(s.is_informative(), s.token_count() >= MIN_INFORMATIVE_TOKENS);

    let hex = s.to_hex();
    assert_eq!(hex.len(), 396);
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(PromptSignature::from_hex(&hex), Ok(s));
    assert_eq!(PromptSignature::from_hex(&hex.to_ascii_uppercase()), Ok(s));
    assert_eq!(s.to_string(), hex);

    let p = similarity_parts(&s, &s);
    assert_eq!((p.head, p.tail), (1.0, 1.0));
    assert!(p.body == 0.0 || p.body == 1.0);
    assert_eq!(similarity(&s, &s), 1.0);
    assert_eq!(is_near(&s, &s), s.is_informative());

    assert_eq!(fill_key(text), fill_key(text));
    s
}

fuzz_target!(|input: &[u8]| {
    let [lo, hi, k0, k1, k2, k3, k4, k5, k6, k7, rest @ ..] = input else {
        return;
    };
    let key = u64::from_le_bytes([*k0, *k1, *k2, *k3, *k4, *k5, *k6, *k7]);
    let text = String::from_utf8_lossy(rest);
    let text: &str = &text;

    let a = check_one(text);
    let keyed = signature_keyed(text, key);
    assert_eq!(keyed, signature_keyed(text, key));
    assert_eq!(keyed.token_count(), a.token_count(), "the key changed the tokens");

    let mut split = usize::from(u16::from_le_bytes([*lo, *hi])).min(text.len());
    while !text.is_char_boundary(split) {
        split -= 1;
    }
    let b = check_one(&text[..split]);
    let ab = similarity_parts(&a, &b);
    let ba = similarity_parts(&b, &a);
    assert_eq!(ab, ba, "similarity is not symmetric");
    for x in [ab.head, ab.tail, ab.body] {
        assert!((0.0..=1.0).contains(&x), "similarity {x} out of [0, 1]");
    }
    assert_eq!(is_near(&a, &b), is_near(&b, &a));

    // from_hex on arbitrary text: never panics; what it accepts re-encodes.
    if let Ok(s) = PromptSignature::from_hex(text) {
        assert_eq!(PromptSignature::from_hex(&s.to_hex()), Ok(s));
    }

    // fill_key: the middle of a long prompt does not count.
    if text.len() > 512 + 4 {
        let bytes = text.as_bytes();
        if let Some(i) = (256..bytes.len() - 256).find(|&i| bytes[i].is_ascii()) {
            let mut other = bytes.to_vec();
            other[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            if let Ok(other) = std::str::from_utf8(&other) {
                assert_eq!(fill_key(text), fill_key(other), "fill_key read the middle");
            }
        }
    }
});
