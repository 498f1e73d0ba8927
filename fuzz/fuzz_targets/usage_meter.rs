//! Response usage meter and request inspector
//! (`distill_guard::api::meter::UsageMeter`, `distill_guard::api::inspect::inspect`).
//!
//! Input: `[mode][chunk plan (see common)][body ...]`. `mode & 3` picks the
//! API kind (Anthropic, OpenAiChat, OpenAiResponses, Other), `mode & 4`
//! selects SSE streaming. The body is fed in chunks, checking the documented
//! memory bound after each, then `finish()`ed. The same body is also given to
//! `inspect` and `rewrite_degrade` as a request body of that kind.
#![no_main]

mod common;

use distill_guard::api::inspect::{inspect, rewrite_degrade, Inspection};
use distill_guard::api::meter::{UsageMeter, MAX_LINE, MAX_USAGE_OBJECT};
use distill_guard::api::ApiKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let kind = match mode & 3 {
        0 => ApiKind::Anthropic,
        1 => ApiKind::OpenAiChat,
        2 => ApiKind::OpenAiResponses,
        _ => ApiKind::Other,
    };
    let streaming = mode & 4 != 0;
    let (plan, body) = common::split_plan(rest);

    let mut meter = UsageMeter::new(kind, streaming);
    common::feed_chunks(plan, body, |chunk| {
        meter.feed(chunk);
        let held = meter.buffered_bytes();
        assert!(
            held <= MAX_LINE + MAX_USAGE_OBJECT,
            "meter holds {held} bytes > MAX_LINE + MAX_USAGE_OBJECT"
        );
    });
    let _ = meter.usage();
    let _ = meter.finish();

    match inspect(kind, body) {
        Inspection::Parsed(info) => {
            let _ = info.thinking.as_ref().map(|t| t.is_enabled());
        }
        Inspection::NotJson { len } => assert_eq!(len, body.len()),
    }
    let _ = rewrite_degrade(kind, body, 16);
});
