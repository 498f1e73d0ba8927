//! PROXY protocol v1 (text) and v2 (binary) header parsing, for listeners
//! behind a load balancer that announces the original client address. Pure:
//! the accept path reads bytes and asks [`parse`] whether a whole header is
//! there. The result is believed only when the socket peer is a trusted
//! proxy (checked by the caller).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (including CRLF), per the specification.
const V1_MAX: usize = 107;
/// Largest v2 header accepted (address block plus TLVs).
const V2_MAX: usize = 16 + 1024;

/// Outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet.
    NeedMore,
    /// A complete header of `len` bytes; `source` is the client, or `None`
    /// for `LOCAL`/`UNKNOWN` (health checks: use the peer).
    Header {
        /// Bytes to skip before the application data.
        len: usize,
        /// The original client address.
        source: Option<SocketAddr>,
    },
    /// Not a valid PROXY header.
    Invalid,
}

/// Parse a PROXY v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::NeedMore;
    }
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        if buf.len() < 16 {
            return Parsed::NeedMore;
        }
        return parse_v2(buf);
    }
    let v1_len = buf.len().min(6);
    if buf[..v1_len] == b"PROXY "[..v1_len] {
        return parse_v1(buf);
    }
    Parsed::Invalid
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid
        } else {
            Parsed::NeedMore
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Invalid;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Parsed::Header { len, source: None },
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let (Ok(ip), Ok(port)) = (src.parse::<IpAddr>(), sport.parse::<u16>()) else {
                return Parsed::Invalid;
            };
            if (*fam == "TCP4") != ip.is_ipv4() {
                return Parsed::Invalid;
            }
            Parsed::Header {
                len,
                source: Some(SocketAddr::new(ip, port)),
            }
        }
        _ => Parsed::Invalid,
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let addr_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + addr_len;
    if ver_cmd >> 4 != 2 || len > V2_MAX {
        return Parsed::Invalid;
    }
    if buf.len() < len {
        return Parsed::NeedMore;
    }
    let body = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Parsed::Header { len, source: None }, // LOCAL
        1 => {}
        _ => return Parsed::Invalid,
    }
    let source = match fam {
        0x11 | 0x12 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        0x21 | 0x22 if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        0x00 => None, // UNSPEC
        _ => return Parsed::Invalid,
    };
    Parsed::Header { len, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 44,
                source: Some("198.51.100.7:51234".parse().unwrap())
            }
        );
        assert_eq!(parse(&h[..20]), Parsed::NeedMore);
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n"), Parsed::Invalid);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid);
        assert_eq!(parse(&[b'P'; 200]), Parsed::Invalid);
    }

    #[test]
    fn v2_headers() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
        h.extend_from_slice(&[203, 0, 113, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb]);
        h.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 28,
                source: Some("203.0.113.9:8080".parse().unwrap())
            }
        );
        assert_eq!(parse(&h[..20]), Parsed::NeedMore);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0x00, 0x00]);
        assert_eq!(parse(&bad), Parsed::Invalid);
    }

    proptest! {
        #[test]
        fn never_panics_and_len_fits(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Parsed::Header { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }
    }
}
