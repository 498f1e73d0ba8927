//! Values a front puts in `[fingerprint.front]` headers
//! (`distill_guard::fingerprint::front`): `Ja4Fingerprint::parse`,
//! `H2Fingerprint::from_akamai`, `parse_address` (both formats) and
//! `parse_asn`, and `front::read` over a header map holding the input.
//!
//! An accepted JA4 is 36 bytes and parses back to itself; an accepted
//! HTTP/2 fingerprint's string is canonical (parsing it again gives the
//! same string); `read` from an untrusted peer believes nothing.
#![no_main]

use distill_guard::fingerprint::front::{AddressFormat, FrontConfig};
use distill_guard::fingerprint::front::{self, Outcome};
use distill_guard::fingerprint::{H2Fingerprint, Ja4Fingerprint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(j) = Ja4Fingerprint::parse(s) {
        assert_eq!(j.as_str().len(), 36);
        assert_eq!(Ja4Fingerprint::parse(j.as_str()), Some(j));
    }
    if let Some(h) = H2Fingerprint::from_akamai(s) {
        let again = H2Fingerprint::from_akamai(h.akamai()).expect("canonical form parses");
        assert_eq!(again.akamai(), h.akamai());
    }
    for f in [AddressFormat::Ip, AddressFormat::IpPort] {
        let _ = front::parse_address(s, f);
    }
    let _ = front::parse_asn(s);

    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let name = http::HeaderName::from_static("x-front");
    let config = FrontConfig {
        ja4_header: Some(name.clone()),
        h2_header: Some(name.clone()),
        address_header: Some(name.clone()),
        address_format: AddressFormat::IpPort,
        asn_header: Some(name.clone()),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(name, value);
    let facts = front::read(&config, &headers, false, |_, o| {
        assert_eq!(o, Outcome::Untrusted)
    });
    assert!(facts.ja4.is_none() && facts.h2.is_none());
    assert!(facts.address.is_none() && facts.asn.is_none());
    let _ = front::read(&config, &headers, true, |_, _| {});
    front::strip(&config, &mut headers);
    assert!(headers.is_empty());
});
