//! HTTP/1.x request-head tap (`distill_guard::fingerprint::http::H1Tap`).
//!
//! Input: a chunk plan (see `common`) then the client's bytes, fed in
//! chunks to a tap with the proxy's 16 KiB head limit; all fingerprints are
//! popped (at most `MAX_QUEUED` may be waiting) and checked to have the
//! documented fixed 32-byte format.
#![no_main]

mod common;

use distill_guard::fingerprint::http::H1Tap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (plan, data) = common::split_plan(input);
    let mut tap = H1Tap::new(16 * 1024);
    let mut popped = 0usize;
    common::feed_chunks(plan, data, |chunk| {
        tap.feed(chunk);
        // Pop now and then, as the proxy does between reads.
        if chunk.len() % 3 == 0 {
            while let Some(fp) = tap.pop() {
                assert_eq!(fp.as_str().len(), 32, "bad fingerprint {:?}", fp.as_str());
                popped += 1;
            }
        }
    });
    let _ = tap.is_disabled();
    let mut queued = 0usize;
    while let Some(fp) = tap.pop() {
        assert_eq!(fp.as_str().len(), 32, "bad fingerprint {:?}", fp.as_str());
        let _ = fp.version();
        let _ = fp.method();
        let _ = fp.header_count();
        let _ = fp.order_hash();
        queued += 1;
    }
    assert!(queued <= H1Tap::MAX_QUEUED, "{queued} queued > MAX_QUEUED");
    let _ = popped;
});
