//! PROXY protocol v1/v2 header parser
//! (`distill_guard::identity::proxy_protocol::parse`).
//!
//! A `Header { len, .. }` must never claim more bytes than were given.
#![no_main]

use distill_guard::identity::proxy_protocol::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Header { len, source } => {
            assert!(
                len <= data.len(),
                "Header len {len} > input len {}",
                data.len()
            );
            let _ = source;
        }
        Parsed::NeedMore | Parsed::Invalid => {}
    }
});
