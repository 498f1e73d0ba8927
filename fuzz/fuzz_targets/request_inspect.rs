//! Request inspection and the degrade rewrite
//! (`distill_guard::api::inspect::{inspect, rewrite_degrade}`).
//!
//! Input: `[mode][cap_lo][cap_hi][body ...]`. `mode & 3` picks the API kind
//! (Anthropic, OpenAiChat, OpenAiResponses, Other); the clamp given to
//! `rewrite_degrade` is `u16::from_le_bytes([cap_lo, cap_hi])`, or
//! `u32::MAX` when `mode & 4` is set.
//!
//! Checked besides "no panic":
//! * `inspect` and `rewrite_degrade` agree on what is a JSON object
//!   (`Parsed` exactly when the rewrite is `Some`);
//! * a `Parsed` inspection is consistent: its prompt cuts (at most four)
//!   are increasing offsets of line breaks in the prompt, and prompt and
//!   model are no longer than the body (no amplification);
//! * the rewritten body inspects again as `Parsed`, with `max_output_tokens`
//!   at most the clamp (and present, except for `Other`, which adds none),
//!   no thinking or reasoning settings, and the same model, stream flag and
//!   prompt as the body it came from once duplicate keys are resolved
//!   (`serde_json::Value` keeps the last, as the rewrite does);
//! * rewriting the rewritten body changes nothing `inspect` reads.
#![no_main]

use distill_guard::api::inspect::{inspect, rewrite_degrade, Inspection, RequestInfo};
use distill_guard::api::ApiKind;
use libfuzzer_sys::fuzz_target;

fn parsed(kind: ApiKind, body: &[u8], what: &str) -> RequestInfo {
    match inspect(kind, body) {
        Inspection::Parsed(info) => info,
        Inspection::NotJson { len } => panic!("{what} ({len} bytes) does not inspect as JSON"),
    }
}

fuzz_target!(|input: &[u8]| {
    let [mode, lo, hi, body @ ..] = input else {
        return;
    };
    let kind = match mode & 3 {
        0 => ApiKind::Anthropic,
        1 => ApiKind::OpenAiChat,
        2 => ApiKind::OpenAiResponses,
        _ => ApiKind::Other,
    };
    let cap = if mode & 4 != 0 {
        u32::MAX
    } else {
        u32::from(u16::from_le_bytes([*lo, *hi]))
    };

    let inspection = inspect(kind, body);
    let rewritten = rewrite_degrade(kind, body, cap);
    let info = match inspection {
        Inspection::NotJson { len } => {
            assert_eq!(len, body.len());
            assert!(rewritten.is_none(), "NotJson, yet the rewrite parsed it");
            return;
        }
        Inspection::Parsed(info) => info,
    };
    let cuts: Vec<usize> = info.prompt_cuts.offsets().collect();
    assert!(cuts.len() <= 4, "{cuts:?}");
    assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
    assert!(
        cuts.iter()
            .all(|&c| info.prompt.as_bytes().get(c) == Some(&b'\n')),
        "{cuts:?} in {:?}",
        info.prompt
    );
    assert!(info.prompt.len() <= body.len(), "prompt longer than the body");
    assert!(info.model.as_ref().map_or(0, String::len) <= body.len());

    let Some(out) = rewritten else {
        panic!("Parsed, yet rewrite_degrade returned None");
    };
    let again = parsed(kind, &out, "the rewritten body");
    let clamp = cap.max(1);
    match again.max_output_tokens {
        Some(m) => assert!(m <= clamp, "rewritten max_output_tokens {m} > clamp {clamp}"),
        None => assert_eq!(kind, ApiKind::Other, "rewrite left no output limit"),
    }
    assert!(again.thinking.is_none(), "rewrite kept thinking");
    assert!(again.reasoning_effort.is_none(), "rewrite kept reasoning");

    // The same body with duplicate keys resolved as the rewrite resolves them.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        panic!("rewrite parsed what serde_json::Value does not");
    };
    let Ok(normal) = serde_json::to_vec(&value) else {
        panic!("Value does not serialize");
    };
    let deduped = parsed(kind, &normal, "the re-serialized body");
    assert_eq!(again.model, deduped.model);
    assert_eq!(again.stream, deduped.stream);
    assert_eq!(again.prompt, deduped.prompt);

    // Rewriting again changes nothing the proxy reads. (Not byte for byte:
    // serde_json without `float_roundtrip` may read a long float back one
    // ulp off, so an unread float member can change in its last digit.)
    let Some(twice) = rewrite_degrade(kind, &out, cap) else {
        panic!("the rewritten body does not rewrite again");
    };
    assert_eq!(parsed(kind, &twice, "the body rewritten twice"), again);
});
