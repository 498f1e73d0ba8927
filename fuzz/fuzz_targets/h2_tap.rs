//! HTTP/2 client-preface tap (`distill_guard::fingerprint::h2::H2Tap`).
//!
//! Input: a chunk plan (see `common`) then the client's bytes, fed in
//! chunks; then the result and state accessors are read.
#![no_main]

mod common;

use distill_guard::fingerprint::h2::H2Tap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (plan, data) = common::split_plan(input);
    let mut tap = H2Tap::new();
    common::feed_chunks(plan, data, |chunk| tap.feed(chunk));
    let done = tap.is_done();
    let failed = tap.is_failed();
    if failed {
        assert!(done, "a failed tap must be done");
        assert!(tap.result().is_none(), "a failed tap has no result");
    }
    if let Some(fp) = tap.result() {
        let _ = fp.to_string();
        let _ = fp.akamai();
        let _ = fp.settings();
        let _ = fp.window_update();
        let _ = fp.priorities();
        let _ = fp.headers_priority();
        let _ = fp.pseudo_header_order();
        let _ = fp.method();
        let _ = fp.header_names();
        let _ = fp.header_block_complete();
        if let Some(http) = fp.http_fingerprint() {
            let _ = http.as_str();
        }
    }
    let _ = tap.take();
});
