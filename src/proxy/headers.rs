//! Header hygiene for the forward step: hop-by-hop headers never cross the
//! proxy (RFC 9110 §7.6.1), `x-forwarded-*` are set, and every response
//! carries the request's `x-request-id`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers, removed in both directions, besides any the
/// `connection` header names.
static HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("http2-settings"),
];

/// Whether `name` is one of [`HOP_BY_HOP`] (one match on the lowercase
/// name: cheaper than comparing it with each).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "http2-settings"
    )
}

/// Remove hop-by-hop headers, including those listed in `connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one look at the names they have is cheaper
    // than a lookup for each of the ten.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // The names `connection` lists that are not removed anyway (most list
    // only `keep-alive` or `close`: nothing to parse or allocate; `close`
    // is an option, not a field name).
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Prepare request headers for the upstream: hop-by-hop and `host` removed
/// (the client sets the upstream's), `x-forwarded-for` extended with the
/// address of the peer that connected (or the PROXY-protocol source), `x-forwarded-proto` and `x-request-id` set.
pub fn prepare_upstream_request(
    headers: &mut HeaderMap,
    peer_ip: IpAddr,
    tls: bool,
    request_id: &HeaderValue,
) {
    strip_hop_by_hop(headers);
    headers.remove(HOST);
    let xff = forwarded_for(headers.get(&X_FORWARDED_FOR), peer_ip);
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// `x-forwarded-for` with `ip` appended to the client's list (kept when it
/// is visible ASCII and not blank). The address is written on the stack,
/// so the value's bytes are the one allocation.
fn forwarded_for(prev: Option<&HeaderValue>, ip: IpAddr) -> HeaderValue {
    // The longest text form of an address (INET6_ADDRSTRLEN - 1).
    let mut buf = [0u8; 45];
    let len = write_ip(ip, &mut buf);
    let addr = &buf[..len];
    let prev = prev
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.trim().is_empty());
    let value = match prev {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + addr.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(addr);
            HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
        }
        None => HeaderValue::from_bytes(addr),
    };
    // Only visible ASCII was written (`prev` passed `to_str`).
    value.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Write `ip`'s text form into `buf`; returns its length. IPv4, the usual
/// case, digit by digit: `Display` goes through `fmt` for every octet.
fn write_ip(ip: IpAddr, buf: &mut [u8; 45]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut w = &mut buf[..];
            // Cannot fail: every address fits.
            let _ = write!(w, "{ip}");
            45 - w.len()
        }
    }
}

/// The client's `x-request-id` when it is a sane token (visible ASCII, at
/// most 128 bytes), else a new unique one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

/// A new request id: a per-process random prefix and a counter, 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    hex_u64(prefix, &mut buf[..16]);
    hex_u64(n, &mut buf[16..]);
    // Owned by its `Bytes` (one allocation, shared by refcount), where
    // `from_bytes` would copy and then allocate again on the first clone
    // (the upstream request's copy). Only hex digits were written, so this
    // cannot fail; fall back anyway.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn hex_u64(mut v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert(HOST, HeaderValue::from_static("proxy"));
        let id = HeaderValue::from_static("abc");
        prepare_upstream_request(&mut h, "10.1.2.3".parse().unwrap(), true, &id);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert!(!names.contains(&"connection"));
        assert!(!names.contains(&"keep-alive"));
        assert!(!names.contains(&"x-secret"));
        assert!(!names.contains(&"te"));
        assert!(!names.contains(&"transfer-encoding"));
        assert!(!names.contains(&"host"));
        assert_eq!(h["x-api-key"], "k");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "abc");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        prepare_upstream_request(
            &mut h,
            "::1".parse().unwrap(),
            false,
            &HeaderValue::from_static("i"),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        // A blank list is replaced; the longest address form fits.
        h.insert("x-forwarded-for", HeaderValue::from_static("  "));
        let long: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        prepare_upstream_request(&mut h, long, false, &HeaderValue::from_static("i"));
        assert_eq!(h["x-forwarded-for"], long.to_string().as_str());
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.10.9",
            "::1",
            "2001:db8::ff",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut buf = [0u8; 45];
            let len = write_ip(ip, &mut buf);
            assert_eq!(&buf[..len], ip.to_string().as_bytes());
        }
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, n / 3, 255 - n, n % 10]);
            let mut buf = [0u8; 45];
            let len = write_ip(ip, &mut buf);
            assert_eq!(&buf[..len], ip.to_string().as_bytes());
        }
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_as_they_are() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.append("x-b", HeaderValue::from_static("1"));
        h.append("x-b", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // One hop-by-hop name among them is enough to strip it.
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // Every `connection` header's list counts, in any case.
        h.append(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(CONNECTION, HeaderValue::from_static("close, X-Other"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn the_match_names_the_list() {
        for n in &HOP_BY_HOP {
            assert!(is_hop_by_hop(n), "{n}");
        }
        assert!(!is_hop_by_hop(&HOST));
        assert!(!is_hop_by_hop(&HeaderName::from_static("x-connection")));
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_unique_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("client-123"));
        assert_eq!(request_id(&h), "client-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let a = request_id(&h);
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
