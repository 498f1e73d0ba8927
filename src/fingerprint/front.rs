//! Fingerprint step behind a front: what a CDN or L7 load balancer that
//! terminated the client's TLS observed of it (JA4, HTTP/2 fingerprint,
//! address, AS number), read from the request headers it sets
//! (`[fingerprint.front]`). Believed only from a peer in
//! `identity.trusted_proxies`; each value is checked for the shape of what
//! it claims to be, and a malformed one is ignored (and counted), never
//! half-used. [`strip`] removes these headers from every request before it
//! goes upstream, believed or not, so a forged value never travels on.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::{H2Fingerprint, Ja4Fingerprint};

/// `[fingerprint.front]`, validated: the headers a trusted front sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontConfig {
    /// The client's JA4.
    pub ja4_header: Option<http::HeaderName>,
    /// The client's Akamai-format HTTP/2 fingerprint.
    pub h2_header: Option<http::HeaderName>,
    /// The client's address.
    pub address_header: Option<http::HeaderName>,
    /// How the address is written.
    pub address_format: AddressFormat,
    /// The client's AS number.
    pub asn_header: Option<http::HeaderName>,
}

impl FrontConfig {
    /// Whether any front header is configured.
    pub fn is_enabled(&self) -> bool {
        self.ja4_header.is_some()
            || self.h2_header.is_some()
            || self.address_header.is_some()
            || self.asn_header.is_some()
    }
}

/// How a front writes the client's address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddressFormat {
    /// The address alone (`CF-Connecting-IP`).
    #[default]
    Ip,
    /// Address and source port (`CloudFront-Viewer-Address`).
    IpPort,
}

/// What a trusted front said about the client, each part valid.
#[derive(Debug, Clone, Default)]
pub struct FrontFacts {
    /// The client's JA4, as the front computed it.
    pub ja4: Option<Ja4Fingerprint>,
    /// The client's HTTP/2 (Akamai-format) fingerprint.
    pub h2: Option<Arc<H2Fingerprint>>,
    /// The client's address.
    pub address: Option<IpAddr>,
    /// The client's AS number.
    pub asn: Option<u32>,
}

/// One part a front can tell ([`Part::as_str`] is the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `ja4_header`.
    Ja4,
    /// `h2_header`.
    H2,
    /// `address_header`.
    Address,
    /// `asn_header`.
    Asn,
}

impl Part {
    /// Every part, in metric order.
    pub const ALL: [Part; 4] = [Part::Ja4, Part::H2, Part::Address, Part::Asn];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Ja4 => "ja4",
            Part::H2 => "h2",
            Part::Address => "address",
            Part::Asn => "asn",
        }
    }
}

/// What became of a configured front header that a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From a trusted peer, well-formed: used.
    Used,
    /// From a trusted peer, but not the shape of the part (or repeated):
    /// ignored; what was observed stands.
    Malformed,
    /// From a peer that is not trusted: ignored (and stripped).
    Untrusted,
}

impl Outcome {
    /// Every outcome, in metric order.
    pub const ALL: [Outcome; 3] = [Outcome::Used, Outcome::Malformed, Outcome::Untrusted];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Used => "used",
            Outcome::Malformed => "malformed",
            Outcome::Untrusted => "untrusted",
        }
    }
}

/// Read the configured front headers of a request whose peer is
/// `trusted` (or not); `seen` is told the outcome of every configured
/// header the request carries.
pub fn read(
    config: &FrontConfig,
    headers: &HeaderMap,
    trusted: bool,
    mut seen: impl FnMut(Part, Outcome),
) -> FrontFacts {
    if !config.is_enabled() {
        return FrontFacts::default();
    }
    let mut one = |part: Part, name: &Option<http::HeaderName>| -> Option<&str> {
        let name = name.as_ref()?;
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        if !trusted {
            seen(part, Outcome::Untrusted);
            return None;
        }
        // One value, text: a front that appends instead of replacing would
        // let a client's own copy through.
        let value = match (first.to_str(), values.next()) {
            (Ok(v), None) => Some(v.trim()),
            _ => None,
        };
        let ok = value.is_some_and(|v| match part {
            Part::Ja4 => Ja4Fingerprint::parse(v).is_some(),
            Part::H2 => H2Fingerprint::from_akamai(v).is_some(),
            Part::Address => parse_address(v, config.address_format).is_some(),
            Part::Asn => parse_asn(v).is_some(),
        });
        seen(
            part,
            if ok {
                Outcome::Used
            } else {
                Outcome::Malformed
            },
        );
        value.filter(|_| ok)
    };
    FrontFacts {
        ja4: one(Part::Ja4, &config.ja4_header).and_then(Ja4Fingerprint::parse),
        h2: one(Part::H2, &config.h2_header)
            .and_then(H2Fingerprint::from_akamai)
            .map(Arc::new),
        address: one(Part::Address, &config.address_header)
            .and_then(|v| parse_address(v, config.address_format)),
        asn: one(Part::Asn, &config.asn_header).and_then(parse_asn),
    }
}

/// Remove every configured front header: the upstream never sees what a
/// front (or a client posing as one) put there.
pub fn strip(config: &FrontConfig, headers: &mut HeaderMap) {
    for name in [
        &config.ja4_header,
        &config.h2_header,
        &config.address_header,
        &config.asn_header,
    ]
    .into_iter()
    .flatten()
    {
        headers.remove(name);
    }
}

/// A client address as a front writes it: `ip` only, or `ip:port` where an
/// IPv6 address may be bracketed (`[2001:db8::1]:443`) or not
/// (`2001:db8::1:443`, as CloudFront writes it; the port is the part after
/// the last colon).
pub fn parse_address(v: &str, format: AddressFormat) -> Option<IpAddr> {
    if v.len() > 64 {
        return None;
    }
    let ip = match format {
        AddressFormat::Ip => v.parse().ok()?,
        AddressFormat::IpPort => match v.parse::<std::net::SocketAddr>() {
            Ok(a) => a.ip(),
            Err(_) => {
                let (ip, port) = v.rsplit_once(':')?;
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                port.parse::<u16>().ok()?;
                // Only an unbracketed IPv6 address is left to accept here.
                match ip.parse().ok()? {
                    IpAddr::V6(v6) => IpAddr::V6(v6),
                    IpAddr::V4(_) => return None,
                }
            }
        },
    };
    // No client connects from an unspecified or a multicast address.
    (!ip.is_unspecified() && !ip.is_multicast()).then_some(ip)
}

/// An AS number in decimal (CloudFront-Viewer-ASN), optionally `AS`-prefixed.
pub fn parse_asn(v: &str) -> Option<u32> {
    let d = v
        .strip_prefix("AS")
        .or_else(|| v.strip_prefix("as"))
        .unwrap_or(v);
    if d.is_empty() || d.len() > 10 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on bad fixtures")]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    const JA4: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";

    fn cloudfront() -> FrontConfig {
        FrontConfig {
            ja4_header: Some(HeaderName::from_static("cloudfront-viewer-ja4-fingerprint")),
            h2_header: None,
            address_header: Some(HeaderName::from_static("cloudfront-viewer-address")),
            address_format: AddressFormat::IpPort,
            asn_header: Some(HeaderName::from_static("cloudfront-viewer-asn")),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn trusted_fronts_are_believed_and_others_ignored() {
        let h = headers(&[
            ("cloudfront-viewer-ja4-fingerprint", JA4),
            ("cloudfront-viewer-address", "198.51.100.10:46532"),
            ("cloudfront-viewer-asn", "64496"),
        ]);
        let mut seen = vec![];
        let f = read(&cloudfront(), &h, true, |p, o| seen.push((p, o)));
        assert_eq!(f.ja4.map(|j| j.to_string()).as_deref(), Some(JA4));
        assert_eq!(f.address, Some("198.51.100.10".parse().unwrap()));
        assert_eq!(f.asn, Some(64496));
        assert_eq!(
            seen,
            [
                (Part::Ja4, Outcome::Used),
                (Part::Address, Outcome::Used),
                (Part::Asn, Outcome::Used)
            ]
        );
        let mut seen = vec![];
        let f = read(&cloudfront(), &h, false, |p, o| seen.push((p, o)));
        assert!(f.ja4.is_none() && f.address.is_none() && f.asn.is_none());
        assert!(seen.iter().all(|(_, o)| *o == Outcome::Untrusted));
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn malformed_or_repeated_values_are_ignored_and_counted() {
        let h = headers(&[
            ("cloudfront-viewer-ja4-fingerprint", "spoofed"),
            ("cloudfront-viewer-address", "198.51.100.10:46532"),
            ("cloudfront-viewer-address", "203.0.113.1:1"),
        ]);
        let mut seen = vec![];
        let f = read(&cloudfront(), &h, true, |p, o| seen.push((p, o)));
        assert!(f.ja4.is_none());
        assert!(f.address.is_none());
        assert_eq!(
            seen,
            [
                (Part::Ja4, Outcome::Malformed),
                (Part::Address, Outcome::Malformed)
            ]
        );
        // Nothing configured: nothing read, nothing counted.
        let f = read(&FrontConfig::default(), &h, true, |_, _| unreachable!());
        assert!(f.ja4.is_none());
    }

    #[test]
    fn an_h2_fingerprint_from_a_front_is_canonical() {
        let config = FrontConfig {
            h2_header: Some(HeaderName::from_static("x-h2-fingerprint")),
            ..FrontConfig::default()
        };
        let h = headers(&[(
            "x-h2-fingerprint",
            "1:65536,2:0,4:6291456,6:262144|15663105|0|masp",
        )]);
        let mut seen = vec![];
        let f = read(&config, &h, true, |p, o| seen.push((p, o)));
        assert_eq!(
            f.h2.as_ref().map(|h| h.akamai()),
            Some("1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p")
        );
        assert_eq!(seen, [(Part::H2, Outcome::Used)]);
        let h = headers(&[("x-h2-fingerprint", "1:65536|0|0")]);
        let f = read(&config, &h, true, |p, o| {
            assert_eq!((p, o), (Part::H2, Outcome::Malformed))
        });
        assert!(f.h2.is_none());
    }

    #[test]
    fn front_headers_are_stripped() {
        let mut h = headers(&[
            ("cloudfront-viewer-ja4-fingerprint", JA4),
            ("cloudfront-viewer-address", "198.51.100.10:46532"),
            ("x-api-key", "k"),
        ]);
        strip(&cloudfront(), &mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-api-key"));
    }

    #[test]
    fn addresses_in_the_forms_fronts_write() {
        let p = |v, f| parse_address(v, f).map(|a| a.to_string());
        use AddressFormat::*;
        assert_eq!(
            p("198.51.100.10:46532", IpPort).as_deref(),
            Some("198.51.100.10")
        );
        assert_eq!(
            p("2001:db8::1:46532", IpPort).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            p("[2001:db8::1]:443", IpPort).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(p("198.51.100.10", Ip).as_deref(), Some("198.51.100.10"));
        assert_eq!(p("2001:db8::1", Ip).as_deref(), Some("2001:db8::1"));
        for (bad, f) in [
            ("198.51.100.10", IpPort),
            ("198.51.100.10:", IpPort),
            ("198.51.100.10:99999", IpPort),
            ("198.51.100.10:+1", IpPort),
            ("host.example:443", IpPort),
            ("198.51.100.10:443", Ip),
            ("0.0.0.0", Ip),
            ("224.0.0.1", Ip),
            ("1.2.3.4, 5.6.7.8", Ip),
            ("", Ip),
        ] {
            assert_eq!(parse_address(bad, f), None, "{bad:?}");
        }
    }

    #[test]
    fn asns_are_decimal() {
        assert_eq!(parse_asn("16509"), Some(16509));
        assert_eq!(parse_asn("AS13335"), Some(13335));
        for bad in ["", "AS", "-1", "1e3", "99999999999", "16509 "] {
            assert_eq!(parse_asn(bad), None, "{bad:?}");
        }
    }
}
