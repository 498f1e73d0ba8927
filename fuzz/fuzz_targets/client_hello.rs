//! TLS ClientHello framing, parsing and JA4.
//!
//! Checks the documented contracts of `distill_guard::fingerprint::tls`:
//! `client_hello_progress` never reports a `Complete { len }` beyond
//! `max_len` or the buffer; `parse_client_hello` gives the same result on
//! `&data[..len]` as on the whole buffer (bytes after the completing record
//! are ignored); `ja4_fingerprint` equals the `ja4` member of `ja4()`.
#![no_main]

use distill_guard::fingerprint::tls::{
    client_hello_progress, ja4, ja4_fingerprint, ja4_only, parse_client_hello, HelloProgress,
    MAX_CLIENT_HELLO_LEN,
};
use libfuzzer_sys::fuzz_target;

fn exercise(hello: &distill_guard::fingerprint::tls::ClientHello<'_>) {
    let all = ja4(hello);
    let fp = ja4_fingerprint(hello);
    assert_eq!(all.ja4, fp.as_str(), "ja4() and ja4_fingerprint() disagree");
    assert_eq!(fp.as_str().len(), 36, "ja4 is not 36 bytes: {:?}", fp.as_str());
    assert_eq!(ja4_only(hello), all.ja4);
    // Accessors used by the proxy.
    let _ = hello.server_name();
    let _ = hello.alpn_first();
    let _ = hello.alpn_protocols().count();
    let _ = hello.supported_versions().count();
    let _ = hello.signature_algorithms().count();
    let _ = hello.extensions().count();
    let _ = hello.effective_version();
    let _ = hello.clone().into_owned();
}

fuzz_target!(|data: &[u8]| {
    let direct = parse_client_hello(data);
    if let Ok(hello) = &direct {
        exercise(hello);
    }

    match client_hello_progress(data, MAX_CLIENT_HELLO_LEN) {
        HelloProgress::NeedMore | HelloProgress::Invalid(_) => {}
        HelloProgress::Complete { len } => {
            assert!(len <= MAX_CLIENT_HELLO_LEN, "len {len} > max_len");
            assert!(len <= data.len(), "len {len} > buffer {}", data.len());
            let framed = parse_client_hello(&data[..len]);
            assert_eq!(
                framed, direct,
                "parse of &data[..len] differs from parse of the whole buffer"
            );
            if let Ok(hello) = &framed {
                exercise(hello);
            }
        }
    }
});
