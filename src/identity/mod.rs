//! Identify step: which account a request belongs to and where it comes
//! from. The account id is a keyed hash (HMAC-SHA-256, truncated to 64 bits)
//! of the API key: the raw key is never stored, logged or exported. The
//! client IP is the socket peer, or what a *trusted* proxy says
//! (`x-forwarded-for`, PROXY protocol); so is the account's creation time,
//! when an auth front states it ([`account_age`]).

pub mod proxy_protocol;

use std::fmt;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use ipnet::IpNet;
use sha2::Sha256;

use crate::engine::{AccountId, Nanos, SECOND};

/// `x-forwarded-for`, believed from trusted proxies only.
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Where the API key comes from (`[identity] key_sources`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The whole value of this header.
    Header(http::HeaderName),
    /// `Authorization: Bearer <key>`.
    Bearer,
}

/// Turns API keys into account ids. Keyed once; cloned per use (cheaper
/// than re-keying HMAC every request).
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

impl KeyHasher {
    /// A hasher keyed with `secret`.
    pub fn new(secret: &[u8]) -> KeyHasher {
        // HMAC accepts keys of any length, so this cannot fail; an empty
        // key is replaced rather than unwrapped.
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .or_else(|_| Hmac::<Sha256>::new_from_slice(b"distill-guard"));
        match mac {
            Ok(mac) => KeyHasher { mac },
            Err(_) => unreachable_hmac(),
        }
    }

    /// A hasher with a random secret (ids change on restart).
    pub fn random() -> KeyHasher {
        use std::hash::{BuildHasher, Hasher};
        let mut secret = [0u8; 32];
        for chunk in secret.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        KeyHasher::new(&secret)
    }

    /// The account id of an API key.
    pub fn account_id(&self, key: &[u8]) -> AccountId {
        self.tagged(b"key:", key)
    }

    /// The account id of an anonymous client (by its address prefix).
    pub fn anonymous_id(&self, prefix: &IpNet) -> AccountId {
        self.tagged(b"anon:", prefix.to_string().as_bytes())
    }

    fn tagged(&self, tag: &[u8], data: &[u8]) -> AccountId {
        let mut mac = self.mac.clone();
        mac.update(tag);
        mac.update(data);
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        AccountId(u64::from_be_bytes(first))
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC-SHA-256 takes keys of any length; new_from_slice never fails.
    panic!("HMAC-SHA-256 rejected a key")
}

/// The API key of a request, from the first configured source that has one.
pub fn api_key<'a>(headers: &'a HeaderMap, sources: &[KeySource]) -> Option<&'a [u8]> {
    for s in sources {
        let v = match s {
            KeySource::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            KeySource::Bearer => headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .and_then(|v| {
                    let (scheme, rest) = v.split_at(v.len().min(7));
                    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
                }),
        };
        if let Some(v) = v.map(trim_ascii).filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    None
}

fn trim_ascii(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &v[start..end]
}

/// Whether `ip` is inside one of the trusted networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others as they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: `peer` itself, unless `peer` is a trusted proxy,
/// in which case `x-forwarded-for` is walked from the right and the first
/// hop that is not itself trusted is the client.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for v in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = v.to_str() else { return client };
        for hop in s.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = canonical(ip);
            if !is_trusted(client, trusted) {
                return client;
            }
        }
    }
    client
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // "[v6]:port" or "v4:port"
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// How far in the future a stated account creation time may lie and still
/// count, as age 0: the clocks of the auth front and this host may differ
/// by this much. Further ahead, the statement is ignored.
pub const ACCOUNT_CREATED_SKEW_S: u64 = 300;

/// The account's age at `now_unix_ms` from the creation time an auth front
/// states (`[identity] account_created_header`): Unix seconds, a decimal
/// integer (surrounding blanks allowed). None when the value is not one, or
/// lies more than [`ACCOUNT_CREATED_SKEW_S`] after `now_unix_ms`; a time up
/// to that far ahead is age 0.
pub fn account_age(value: &[u8], now_unix_ms: u64) -> Option<Nanos> {
    let digits = trim_ascii(value);
    // 12 digits reach the year 33658: longer is no creation time.
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let created_s = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    let created = created_s.saturating_mul(SECOND);
    let now = now_unix_ms.saturating_mul(1_000_000);
    if created > now.saturating_add(ACCOUNT_CREATED_SKEW_S * SECOND) {
        return None;
    }
    Some(now.saturating_sub(created))
}

/// The prefix anonymous clients are keyed by: the whole IPv4 address, or
/// the IPv6 address cut to `v6_len` bits.
pub fn anonymous_prefix(ip: IpAddr, v6_len: u8) -> IpNet {
    crate::fingerprint::network::prefix(ip, 32, v6_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn account_ids_are_keyed_and_stable() {
        let a = KeyHasher::new(b"secret-one-0123456789");
        let b = KeyHasher::new(b"secret-two-0123456789");
        assert_eq!(a.account_id(b"sk-1"), a.account_id(b"sk-1"));
        assert_ne!(a.account_id(b"sk-1"), a.account_id(b"sk-2"));
        assert_ne!(a.account_id(b"sk-1"), b.account_id(b"sk-1"));
        assert_eq!(a.account_id(b"sk-1").to_string().len(), 16);
        let p: IpNet = "10.0.0.1/32".parse().unwrap();
        assert_ne!(a.anonymous_id(&p), a.account_id(b"10.0.0.1/32"));
    }

    #[test]
    fn keys_come_from_configured_sources_in_order() {
        let sources = vec![
            KeySource::Header(http::HeaderName::from_static("x-api-key")),
            KeySource::Bearer,
        ];
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer  sk-bearer ".parse().unwrap());
        assert_eq!(api_key(&h, &sources), Some(&b"sk-bearer"[..]));
        h.insert("x-api-key", "sk-header".parse().unwrap());
        assert_eq!(api_key(&h, &sources), Some(&b"sk-header"[..]));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(api_key(&h, &sources), None);
        h.insert("x-api-key", "".parse().unwrap());
        assert_eq!(api_key(&h, &sources), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.7, 10.1.1.1".parse().unwrap());
        // Untrusted peer: header ignored.
        assert_eq!(
            client_ip("203.0.113.5".parse().unwrap(), &h, &trusted),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // Trusted peer: right-most untrusted hop.
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A client that prepends a fake hop does not get past the real one.
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last good hop.
        h.insert("x-forwarded-for", "nonsense, 10.1.1.1".parse().unwrap());
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        // No trusted proxies configured: always the peer.
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &[]),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn account_age_is_now_less_the_stated_creation_time() {
        let now_ms = 1_780_000_000_500;
        let day = 86_400;
        let age = |v: &str| account_age(v.as_bytes(), now_ms);
        // 30 days ago, to the half second `now_ms` is past the second.
        assert_eq!(
            age(&(1_780_000_000 - 30 * day).to_string()),
            Some(30 * day * SECOND + SECOND / 2)
        );
        assert_eq!(age(" 1780000000 "), Some(SECOND / 2));
        assert_eq!(age("0"), Some(now_ms * 1_000_000));
        // Up to five minutes ahead is clock skew: age 0. Beyond, ignored.
        assert_eq!(age("1780000300"), Some(0));
        assert_eq!(age("1780000301"), None);
        assert_eq!(age("99999999999"), None);
        for bad in [
            "",
            " ",
            "-5",
            "+1780000000",
            "1780000000.5",
            "1.78e9",
            "2026-06-01T00:00:00Z",
            "0x6a1b",
            "1780000000 1780000000",
            "17800000000000000000000",
        ] {
            assert_eq!(age(bad), None, "{bad:?}");
        }
        assert_eq!(account_age(b"\xff1", now_ms), None);
    }

    #[test]
    fn anonymous_ipv6_clients_are_aggregated() {
        let a = anonymous_prefix("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = anonymous_prefix("2001:db8:1:2:bbbb::9".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_eq!(
            anonymous_prefix("192.0.2.1".parse().unwrap(), 64).to_string(),
            "192.0.2.1/32"
        );
    }
}
