//! Autonomous-system (ASN) lookup: the ASN part of a client's network fingerprint, read from a MaxMind-format (MMDB) database such as GeoLite2-ASN or GeoIP2-ISP.
//!
//! The whole database is loaded into memory once ([`AsnDb::open`] /
//! [`AsnDb::from_bytes`]); lookups are lock-free reads of that buffer, so one
//! [`AsnDb`] can be shared between worker threads behind an `Arc`.
//!
//! The hot path, [`AsnDb::lookup`], returns only the AS number and does not
//! allocate. The organization name is available separately through
//! [`AsnDb::organization`] (borrowed from the database, still no allocation),
//! and [`AsnDb::lookup_details`] returns number, organization and the matched
//! network from a single tree walk.
//!
//! Nothing here panics on malformed input: a database that cannot be parsed is
//! rejected with an [`AsnError`], and a record that is damaged or has an
//! unexpected shape reads as "not found" (`None`).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use maxminddb::{LookupResult, MaxMindDbError, PathElement, Reader};
use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// Map key of the AS number in GeoLite2-ASN / GeoIP2-ISP records.
const NUMBER_KEY: [PathElement<'static>; 1] = [PathElement::Key("autonomous_system_number")];
/// Map key of the AS organization name in GeoLite2-ASN / GeoIP2-ISP records.
const ORGANIZATION_KEY: [PathElement<'static>; 1] =
    [PathElement::Key("autonomous_system_organization")];

/// An autonomous system number, e.g. `AS64500`.
///
/// Displays as `AS<number>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Asn {
    /// The AS number as found in the database (AS0 is passed through as-is).
    pub number: u32,
}

impl fmt::Display for Asn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AS{}", self.number)
    }
}

/// Everything the database says about one address, from a single tree walk.
///
/// The organization name borrows from the [`AsnDb`] it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsnDetails<'a> {
    /// The AS number.
    pub asn: Asn,
    /// The AS organization name, `None` when the record has none (or an empty one).
    pub organization: Option<&'a str>,
    /// The database's network that contains the address. The search tree
    /// may split a network around more specific ones, so this can be
    /// narrower than the announced prefix.
    ///
    /// IPv4 addresses (including IPv4-mapped IPv6 ones) give an IPv4 network
    /// when the database has an IPv4 subtree.
    pub network: IpNet,
}

/// What went wrong when loading an ASN database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsnErrorKind {
    /// The file could not be read.
    Io(std::io::ErrorKind),
    /// The bytes are not a usable MaxMind DB (truncated, corrupt, wrong format).
    InvalidDatabase,
}

/// Error loading or verifying an ASN database; carries the file path (if any) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnError {
    path: Option<PathBuf>,
    kind: AsnErrorKind,
    reason: String,
}

impl AsnError {
    fn io(path: &Path, err: &std::io::Error) -> AsnError {
        AsnError {
            path: Some(path.to_path_buf()),
            kind: AsnErrorKind::Io(err.kind()),
            reason: err.to_string(),
        }
    }

    fn invalid(path: Option<PathBuf>, err: &MaxMindDbError) -> AsnError {
        let kind = match err {
            MaxMindDbError::Io(io) => AsnErrorKind::Io(io.kind()),
            _ => AsnErrorKind::InvalidDatabase,
        };
        AsnError {
            path,
            kind,
            reason: err.to_string(),
        }
    }

    /// The database file the error is about; `None` for [`AsnDb::from_bytes`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The category of the failure.
    pub fn kind(&self) -> AsnErrorKind {
        self.kind
    }

    /// Human-readable reason, without the path.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.kind) {
            (Some(path), AsnErrorKind::Io(_)) => write!(
                f,
                "cannot read ASN database {}: {}",
                path.display(),
                self.reason
            ),
            (Some(path), _) => write!(
                f,
                "invalid ASN database {}: {}",
                path.display(),
                self.reason
            ),
            (None, _) => write!(f, "invalid ASN database (in-memory): {}", self.reason),
        }
    }
}

impl std::error::Error for AsnError {}

/// An in-memory MaxMind-format ASN database (GeoLite2-ASN, GeoIP2-ISP, or any
/// MMDB whose records carry `autonomous_system_number` and optionally
/// `autonomous_system_organization`).
///
/// `Send + Sync`; share it behind an `Arc` and swap the `Arc` to reload.
#[derive(Debug)]
pub struct AsnDb {
    reader: Reader<Vec<u8>>,
    path: Option<PathBuf>,
}

impl AsnDb {
    /// Open a MaxMind-format database file (GeoLite2-ASN / GeoIP2-ISP / any
    /// MMDB with `autonomous_system_number` and optionally
    /// `autonomous_system_organization`).
    ///
    /// The file is read into memory, so replacing it on disk afterwards does
    /// not affect this instance. Only the header structures are checked here;
    /// see [`AsnDb::verify`] for a full integrity check.
    ///
    /// # Errors
    /// [`AsnErrorKind::Io`] when the file cannot be read,
    /// [`AsnErrorKind::InvalidDatabase`] when it is not a valid MaxMind DB.
    pub fn open(path: &Path) -> Result<AsnDb, AsnError> {
        let bytes = std::fs::read(path).map_err(|e| AsnError::io(path, &e))?;
        Self::load(bytes, Some(path.to_path_buf()))
    }

    /// Load a database from its raw bytes (the content of an `.mmdb` file).
    ///
    /// # Errors
    /// [`AsnErrorKind::InvalidDatabase`] when the bytes are not a valid MaxMind DB.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<AsnDb, AsnError> {
        Self::load(bytes, None)
    }

    fn load(bytes: Vec<u8>, path: Option<PathBuf>) -> Result<AsnDb, AsnError> {
        match Reader::from_source(bytes) {
            Ok(reader) => Ok(AsnDb { reader, path }),
            Err(e) => Err(AsnError::invalid(path, &e)),
        }
    }

    /// The AS number of `ip`, None when not in the database.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as seen on dual-stack
    /// sockets) are looked up as the IPv4 address. Also `None` for an IPv6
    /// address in an IPv4-only database, and for a record without a usable
    /// `autonomous_system_number` (missing, not an integer, or above
    /// `u32::MAX`). Does not allocate.
    pub fn lookup(&self, ip: IpAddr) -> Option<Asn> {
        let found = self.find(ip)?;
        let number: AsNumber = found.decode_path(&NUMBER_KEY).ok()??;
        Some(Asn { number: number.0 })
    }

    /// The AS organization name of `ip`, borrowed from the database; `None`
    /// when the address is not in the database or its record has no
    /// (non-empty) `autonomous_system_organization` string. Does not allocate.
    pub fn organization(&self, ip: IpAddr) -> Option<&str> {
        let found = self.find(ip)?;
        organization_of(&found)
    }

    /// AS number, organization and matched network of `ip` from one tree walk;
    /// `None` when [`AsnDb::lookup`] would be `None`.
    pub fn lookup_details(&self, ip: IpAddr) -> Option<AsnDetails<'_>> {
        let found = self.find(ip)?;
        let number: AsNumber = found.decode_path(&NUMBER_KEY).ok()??;
        let net = found.network().ok()?;
        let network = IpNet::new(net.ip(), net.prefix()).ok()?;
        Some(AsnDetails {
            asn: Asn { number: number.0 },
            organization: organization_of(&found),
            network,
        })
    }

    /// The `database_type` from the database metadata, e.g. `"GeoLite2-ASN"`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The `build_epoch` from the database metadata: build time in seconds
    /// since the Unix epoch (useful to alert on a stale database).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Walk the whole database (search tree and every record it points to)
    /// and report the first structural problem.
    ///
    /// Much slower than [`AsnDb::open`] (it touches every node); meant for a
    /// one-off check before swapping a freshly downloaded database in. It is
    /// stricter than the format specification, so a database that fails it may
    /// still answer lookups.
    ///
    /// # Errors
    /// [`AsnErrorKind::InvalidDatabase`] describing the first problem found.
    pub fn verify(&self) -> Result<(), AsnError> {
        self.reader
            .verify()
            .map_err(|e| AsnError::invalid(self.path.clone(), &e))
    }

    /// The tree walk shared by all lookups: `Some` only when `ip` hits a record.
    fn find(&self, ip: IpAddr) -> Option<LookupResult<'_, Vec<u8>>> {
        let found = self.reader.lookup(ip.to_canonical()).ok()?;
        found.has_data().then_some(found)
    }
}

fn organization_of<'a>(found: &LookupResult<'a, Vec<u8>>) -> Option<&'a str> {
    let org: &'a str = found.decode_path(&ORGANIZATION_KEY).ok()??;
    (!org.is_empty()).then_some(org)
}

/// An AS number decoded from any MMDB integer type (writers differ: uint32 is
/// usual, but uint16/uint64/int32 are legal encodings of the same value).
struct AsNumber(u32);

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AsNumberVisitor)
    }
}

struct AsNumberVisitor;

impl Visitor<'_> for AsNumberVisitor {
    type Value = AsNumber;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an autonomous system number (integer in 0..=4294967295)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AsNumber, E> {
        u32::try_from(v)
            .map(AsNumber)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AsNumber, E> {
        u32::try_from(v)
            .map(AsNumber)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<AsNumber, E> {
        u32::try_from(v)
            .map(AsNumber)
            .map_err(|_| E::invalid_value(Unexpected::Other("u128 out of range"), &self))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A minimal MaxMind DB *writer* (format spec 2.0, record size 24), enough
    /// to build real `.mmdb` files for the tests.
    mod mmdb_writer {
        use ipnet::IpNet;
        use std::collections::VecDeque;

        /// Data-section value types used by the tests.
        #[derive(Debug, Clone)]
        pub(super) enum Value {
            Str(String),
            U16(u16),
            U32(u32),
            U64(u64),
            Map(Vec<(String, Value)>),
            Array(Vec<Value>),
            /// Pointer to an offset in the data section.
            Pointer(usize),
        }

        pub(super) fn s(v: &str) -> Value {
            Value::Str(v.to_owned())
        }

        pub(super) fn map(pairs: &[(&str, Value)]) -> Value {
            Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            )
        }

        fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
            let (bits, extra): (u8, Vec<u8>) = if size < 29 {
                (size as u8, vec![])
            } else if size < 29 + 256 {
                (29, vec![(size - 29) as u8])
            } else if size < 285 + 65536 {
                (30, ((size - 285) as u16).to_be_bytes().to_vec())
            } else {
                let n = u32::try_from(size - 65821).unwrap();
                assert!(n < 1 << 24);
                (31, n.to_be_bytes()[1..].to_vec())
            };
            if type_num <= 7 {
                out.push((type_num << 5) | bits);
            } else {
                out.push(bits);
                out.push(type_num - 7);
            }
            out.extend(extra);
        }

        fn uint(out: &mut Vec<u8>, type_num: u8, be: &[u8]) {
            let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
            control(out, type_num, be.len() - start);
            out.extend(&be[start..]);
        }

        pub(super) fn encode(v: &Value, out: &mut Vec<u8>) {
            match v {
                Value::Str(s) => {
                    control(out, 2, s.len());
                    out.extend(s.as_bytes());
                }
                Value::U16(n) => uint(out, 5, &n.to_be_bytes()),
                Value::U32(n) => uint(out, 6, &n.to_be_bytes()),
                Value::U64(n) => uint(out, 9, &n.to_be_bytes()),
                Value::Map(pairs) => {
                    control(out, 7, pairs.len());
                    for (k, v) in pairs {
                        encode(&Value::Str(k.clone()), out);
                        encode(v, out);
                    }
                }
                Value::Array(items) => {
                    control(out, 11, items.len());
                    for v in items {
                        encode(v, out);
                    }
                }
                Value::Pointer(off) => {
                    if *off < 2048 {
                        out.push(0b0010_0000 | ((*off >> 8) as u8 & 0x7));
                        out.push(*off as u8);
                    } else {
                        let p = *off - 2048;
                        assert!(p < 1 << 19);
                        out.push(0b0010_1000 | ((p >> 16) as u8 & 0x7));
                        out.extend(&(p as u16).to_be_bytes());
                    }
                }
            }
        }

        #[derive(Debug, Clone)]
        enum Node {
            Empty,
            Data(usize),
            Inner(Box<[Node; 2]>),
        }

        /// Builds one database: insert networks, then `build`.
        pub(super) struct Builder {
            ip_version: u16,
            root: Node,
            data: Vec<u8>,
        }

        impl Builder {
            pub(super) fn new(ip_version: u16) -> Builder {
                assert!(ip_version == 4 || ip_version == 6);
                Builder {
                    ip_version,
                    root: Node::Inner(Box::new([Node::Empty, Node::Empty])),
                    data: Vec::new(),
                }
            }

            /// Append a value to the data section; returns its offset there.
            pub(super) fn add_data(&mut self, v: &Value) -> usize {
                let off = self.data.len();
                encode(v, &mut self.data);
                off
            }

            /// Point `net` at the data-section value at `data_offset`. In an
            /// IPv6 tree IPv4 networks go under `::/96`, as the spec says.
            pub(super) fn insert(&mut self, net: IpNet, data_offset: usize) {
                let (bits, prefix): (u128, u8) = match (net, self.ip_version) {
                    (IpNet::V4(n), 4) => (u128::from(u32::from(n.network())) << 96, n.prefix_len()),
                    (IpNet::V4(n), _) => (u128::from(u32::from(n.network())), 96 + n.prefix_len()),
                    (IpNet::V6(n), 6) => (u128::from(n.network()), n.prefix_len()),
                    (IpNet::V6(_), _) => panic!("IPv6 network in an IPv4 tree"),
                };
                assert!(prefix > 0);
                let mut node = &mut self.root;
                for depth in 0..prefix {
                    if !matches!(node, Node::Inner(_)) {
                        let child = node.clone();
                        *node = Node::Inner(Box::new([child.clone(), child]));
                    }
                    let Node::Inner(children) = node else {
                        unreachable!()
                    };
                    let bit = ((bits >> (127 - depth)) & 1) as usize;
                    node = &mut children[bit];
                }
                *node = Node::Data(data_offset);
            }

            /// Serialize: search tree, 16-byte separator, data, metadata.
            pub(super) fn build(&self, database_type: &str, build_epoch: u64) -> Vec<u8> {
                // Number inner nodes breadth-first; root is node 0.
                let mut order: Vec<&[Node; 2]> = Vec::new();
                let mut queue = VecDeque::from([&self.root]);
                while let Some(n) = queue.pop_front() {
                    if let Node::Inner(children) = n {
                        order.push(children);
                        queue.push_back(&children[0]);
                        queue.push_back(&children[1]);
                    }
                }
                let node_count = order.len();
                let mut out = Vec::with_capacity(node_count * 6 + 16 + self.data.len() + 256);
                let mut next_index = 1;
                for children in &order {
                    for child in children.iter() {
                        let record = match child {
                            Node::Empty => node_count,
                            Node::Data(off) => node_count + 16 + off,
                            Node::Inner(_) => {
                                next_index += 1;
                                next_index - 1
                            }
                        };
                        assert!(record < 1 << 24, "record does not fit 24 bits");
                        out.extend(&(record as u32).to_be_bytes()[1..]);
                    }
                }
                assert_eq!(next_index, node_count);
                out.extend([0u8; 16]);
                out.extend(&self.data);
                out.extend(b"\xAB\xCD\xEFMaxMind.com");
                let metadata = map(&[
                    ("binary_format_major_version", Value::U16(2)),
                    ("binary_format_minor_version", Value::U16(0)),
                    ("build_epoch", Value::U64(build_epoch)),
                    ("database_type", s(database_type)),
                    (
                        "description",
                        map(&[("en", s("distill-guard ASN test database"))]),
                    ),
                    ("ip_version", Value::U16(self.ip_version)),
                    ("languages", Value::Array(vec![s("en")])),
                    ("node_count", Value::U32(u32::try_from(node_count).unwrap())),
                    ("record_size", Value::U16(24)),
                ]);
                encode(&metadata, &mut out);
                out
            }
        }
    }

    use mmdb_writer::{map, s, Builder, Value};

    const EPOCH: u64 = 1_700_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The main test database: IPv6 tree with IPv4 and IPv6 networks.
    fn test_db_bytes() -> Vec<u8> {
        let mut b = Builder::new(6);
        let cloud = b.add_data(&map(&[
            ("autonomous_system_number", Value::U32(64500)),
            ("autonomous_system_organization", s("Example Cloud")),
        ]));
        let no_org = b.add_data(&map(&[("autonomous_system_number", Value::U32(64501))]));
        // Organization stored once and shared through a pointer, as real
        // databases do.
        let shared_org = b.add_data(&s("Example IPv6 Transit"));
        let v6 = b.add_data(&map(&[
            ("autonomous_system_number", Value::U32(64502)),
            ("autonomous_system_organization", Value::Pointer(shared_org)),
        ]));
        let v6_more = b.add_data(&map(&[
            ("autonomous_system_organization", Value::Pointer(shared_org)),
            ("autonomous_system_number", Value::U32(64503)),
        ]));
        // ASN stored as uint16 and a 32-bit ASN (above u16::MAX).
        let small = b.add_data(&map(&[("autonomous_system_number", Value::U16(13335))]));
        let big = b.add_data(&map(&[
            ("autonomous_system_number", Value::U32(4_200_000_000)),
            ("autonomous_system_organization", s("")),
        ]));
        // Records an ASN reader must treat as "no ASN".
        let org_only = b.add_data(&map(&[("autonomous_system_organization", s("No Number"))]));
        let wrong_type = b.add_data(&map(&[
            ("autonomous_system_number", s("64510")),
            ("autonomous_system_organization", Value::U32(7)),
        ]));
        let too_big = b.add_data(&map(&[("autonomous_system_number", Value::U64(1 << 40))]));

        b.insert(net("192.0.2.0/24"), cloud);
        b.insert(net("198.51.100.0/25"), no_org);
        b.insert(net("2001:db8::/32"), v6);
        b.insert(net("2001:db8:ffff::/48"), v6_more);
        b.insert(net("203.0.113.0/28"), small);
        b.insert(net("203.0.113.16/28"), big);
        b.insert(net("203.0.113.32/28"), org_only);
        b.insert(net("203.0.113.48/28"), wrong_type);
        b.insert(net("203.0.113.64/28"), too_big);
        b.build("Test-ASN", EPOCH)
    }

    fn test_db() -> AsnDb {
        AsnDb::from_bytes(test_db_bytes()).unwrap()
    }

    /// Addresses covering hits, misses and edge cases, for the robustness tests.
    fn probe_ips() -> Vec<IpAddr> {
        [
            "192.0.2.0",
            "192.0.2.77",
            "198.51.100.1",
            "198.51.100.200",
            "203.0.113.1",
            "203.0.113.17",
            "203.0.113.33",
            "203.0.113.49",
            "203.0.113.65",
            "0.0.0.0",
            "255.255.255.255",
            "8.8.8.8",
            "::",
            "::1",
            "::ffff:192.0.2.9",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "2001:db9::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .iter()
        .map(|s| ip(s))
        .collect()
    }

    #[test]
    fn written_database_passes_full_verification() {
        test_db().verify().unwrap();
    }

    #[test]
    fn metadata() {
        let db = test_db();
        assert_eq!(db.database_type(), "Test-ASN");
        assert_eq!(db.build_epoch(), EPOCH);
    }

    #[test]
    fn ipv4_lookups() {
        let db = test_db();
        for a in ["192.0.2.0", "192.0.2.1", "192.0.2.128", "192.0.2.255"] {
            assert_eq!(db.lookup(ip(a)), Some(Asn { number: 64500 }), "{a}");
            assert_eq!(db.organization(ip(a)), Some("Example Cloud"), "{a}");
        }
        // /25: .0-.127 in, .128 out.
        assert_eq!(db.lookup(ip("198.51.100.0")), Some(Asn { number: 64501 }));
        assert_eq!(db.lookup(ip("198.51.100.127")), Some(Asn { number: 64501 }));
        assert_eq!(db.organization(ip("198.51.100.5")), None);
        assert_eq!(db.lookup(ip("198.51.100.128")), None);
    }

    #[test]
    fn ipv6_lookups() {
        let db = test_db();
        assert_eq!(db.lookup(ip("2001:db8::1")), Some(Asn { number: 64502 }));
        assert_eq!(
            db.lookup(ip("2001:db8:1234:5678::9")),
            Some(Asn { number: 64502 })
        );
        assert_eq!(
            db.organization(ip("2001:db8::1")),
            Some("Example IPv6 Transit")
        );
        // More specific network inside the /32 wins.
        assert_eq!(
            db.lookup(ip("2001:db8:ffff:1::1")),
            Some(Asn { number: 64503 })
        );
        assert_eq!(
            db.organization(ip("2001:db8:ffff:1::1")),
            Some("Example IPv6 Transit")
        );
    }

    #[test]
    fn misses() {
        let db = test_db();
        for a in [
            "8.8.8.8",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.3.0",
            "192.0.1.255",
            "2001:db9::1",
            "2001:db7:ffff::1",
            "::",
            "::1",
            "fe80::1",
        ] {
            assert_eq!(db.lookup(ip(a)), None, "{a}");
            assert_eq!(db.organization(ip(a)), None, "{a}");
            assert_eq!(db.lookup_details(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
        let db = test_db();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        assert_eq!(db.lookup(mapped), Some(Asn { number: 64500 }));
        assert_eq!(db.organization(mapped), Some("Example Cloud"));
        let d = db.lookup_details(mapped).unwrap();
        assert_eq!(d.network, net("192.0.2.0/24"));
        assert_eq!(
            db.lookup(IpAddr::V6(Ipv4Addr::new(8, 8, 8, 8).to_ipv6_mapped())),
            None
        );
    }

    #[test]
    fn details() {
        let db = test_db();
        assert_eq!(
            db.lookup_details(ip("192.0.2.200")),
            Some(AsnDetails {
                asn: Asn { number: 64500 },
                organization: Some("Example Cloud"),
                network: net("192.0.2.0/24"),
            })
        );
        let d = db.lookup_details(ip("198.51.100.3")).unwrap();
        assert_eq!(d.asn.number, 64501);
        assert_eq!(d.organization, None);
        assert_eq!(d.network, net("198.51.100.0/25"));
        let d = db.lookup_details(ip("2001:db8:ffff:0:1::")).unwrap();
        assert_eq!(d.asn.number, 64503);
        assert_eq!(d.network, net("2001:db8:ffff::/48"));
    }

    #[test]
    fn unusual_records() {
        let db = test_db();
        // uint16-encoded ASN is accepted.
        assert_eq!(db.lookup(ip("203.0.113.1")), Some(Asn { number: 13335 }));
        // 32-bit ASN; empty organization reads as none.
        assert_eq!(
            db.lookup(ip("203.0.113.17")),
            Some(Asn {
                number: 4_200_000_000
            })
        );
        assert_eq!(db.organization(ip("203.0.113.17")), None);
        // Record without ASN: no Asn, but the organization is still readable.
        assert_eq!(db.lookup(ip("203.0.113.33")), None);
        assert_eq!(db.lookup_details(ip("203.0.113.33")), None);
        assert_eq!(db.organization(ip("203.0.113.33")), Some("No Number"));
        // Wrong types and out-of-range numbers read as absent.
        assert_eq!(db.lookup(ip("203.0.113.49")), None);
        assert_eq!(db.organization(ip("203.0.113.49")), None);
        assert_eq!(db.lookup(ip("203.0.113.65")), None);
    }

    #[test]
    fn ipv4_only_database() {
        let mut b = Builder::new(4);
        let d = b.add_data(&map(&[
            ("autonomous_system_number", Value::U32(64500)),
            ("autonomous_system_organization", s("Example Cloud")),
        ]));
        b.insert(net("192.0.2.0/24"), d);
        let db = AsnDb::from_bytes(b.build("Test-ASN-v4", EPOCH)).unwrap();
        db.verify().unwrap();
        assert_eq!(db.lookup(ip("192.0.2.1")), Some(Asn { number: 64500 }));
        assert_eq!(
            db.lookup_details(ip("192.0.2.1")).unwrap().network,
            net("192.0.2.0/24")
        );
        assert_eq!(db.lookup(ip("192.0.3.1")), None);
        // IPv6 cannot be answered by an IPv4 tree: None, not an error or panic.
        assert_eq!(db.lookup(ip("2001:db8::1")), None);
        assert_eq!(db.organization(ip("2001:db8::1")), None);
        // ...but an IPv4-mapped address can.
        assert_eq!(
            db.lookup(ip("::ffff:192.0.2.1")),
            Some(Asn { number: 64500 })
        );
    }

    #[test]
    fn open_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("GeoLite2-ASN.mmdb");
        std::fs::write(&path, test_db_bytes()).unwrap();
        let db = AsnDb::open(&path).unwrap();
        assert_eq!(db.lookup(ip("192.0.2.1")), Some(Asn { number: 64500 }));
        assert_eq!(db.database_type(), "Test-ASN");
    }

    #[test]
    fn open_missing_file_is_io_error_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.mmdb");
        let err = AsnDb::open(&path).unwrap_err();
        assert_eq!(err.kind(), AsnErrorKind::Io(std::io::ErrorKind::NotFound));
        assert_eq!(err.path(), Some(path.as_path()));
        let msg = err.to_string();
        assert!(msg.contains("missing.mmdb"), "{msg}");
        assert!(msg.starts_with("cannot read ASN database"), "{msg}");
    }

    #[test]
    fn open_corrupt_file_is_invalid_database_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.mmdb");
        let bytes = test_db_bytes();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = AsnDb::open(&path).unwrap_err();
        assert_eq!(err.kind(), AsnErrorKind::InvalidDatabase);
        assert_eq!(err.path(), Some(path.as_path()));
        let msg = err.to_string();
        assert!(msg.contains("corrupt.mmdb"), "{msg}");
        assert!(!err.reason().is_empty());
        // A directory is not a database either.
        let err = AsnDb::open(dir.path()).unwrap_err();
        assert!(matches!(err.kind(), AsnErrorKind::Io(_)), "{err:?}");
    }

    #[test]
    fn garbage_is_rejected() {
        for bytes in [
            Vec::new(),
            vec![0u8; 1],
            vec![0u8; 4096],
            vec![0xffu8; 4096],
            b"\xAB\xCD\xEFMaxMind.com".to_vec(),
            b"\xAB\xCD\xEFMaxMind.com\xe0".to_vec(),
            b"not a database at all".to_vec(),
        ] {
            let err = AsnDb::from_bytes(bytes).unwrap_err();
            assert_eq!(err.kind(), AsnErrorKind::InvalidDatabase);
            assert_eq!(err.path(), None);
            assert!(err
                .to_string()
                .starts_with("invalid ASN database (in-memory)"));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = test_db_bytes();
        for len in 0..bytes.len() {
            let r = AsnDb::from_bytes(bytes[..len].to_vec());
            assert!(r.is_err(), "truncated to {len} of {} opened", bytes.len());
        }
    }

    #[test]
    fn metadata_lying_about_node_count_is_an_error() {
        // node_count far beyond the file: the tree would extend past the data.
        let mut b = Builder::new(6);
        let d = b.add_data(&map(&[("autonomous_system_number", Value::U32(1))]));
        b.insert(net("192.0.2.0/24"), d);
        let good = b.build("Test-ASN", EPOCH);
        let marker = b"\xAB\xCD\xEFMaxMind.com";
        let at = good
            .windows(marker.len())
            .rposition(|w| w == marker)
            .unwrap();
        let mut bad = good[..at].to_vec();
        bad.extend(marker);
        mmdb_writer::encode(
            &map(&[
                ("binary_format_major_version", Value::U16(2)),
                ("binary_format_minor_version", Value::U16(0)),
                ("build_epoch", Value::U64(EPOCH)),
                ("database_type", s("Test-ASN")),
                ("description", map(&[("en", s("x"))])),
                ("ip_version", Value::U16(6)),
                ("languages", Value::Array(vec![s("en")])),
                ("node_count", Value::U32(u32::MAX)),
                ("record_size", Value::U16(24)),
            ]),
            &mut bad,
        );
        assert!(AsnDb::from_bytes(bad).is_err());
    }

    /// xorshift64*: deterministic, dependency-free randomness for the tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn exercise(db: &AsnDb, ips: &[IpAddr]) {
        for &a in ips {
            let _ = db.lookup(a);
            let _ = db.organization(a);
            let _ = db.lookup_details(a);
        }
        let _ = db.database_type();
        let _ = db.verify();
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let good = test_db_bytes();
        let mut ips = probe_ips();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..64 {
            ips.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
            ips.push(IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next()) << 64) | u128::from(rng.next()),
            )));
        }
        let (mut opened, mut rejected) = (0, 0);
        for round in 0..3000 {
            let mut bytes = good.clone();
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let i = rng.below(bytes.len());
                bytes[i] = match round % 3 {
                    0 => bytes[i] ^ (1 << rng.below(8)),
                    1 => rng.next() as u8,
                    _ => [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
                };
            }
            match AsnDb::from_bytes(bytes) {
                Ok(db) => {
                    opened += 1;
                    exercise(&db, &ips);
                }
                Err(_) => rejected += 1,
            }
        }
        // Most single-byte damage lands in the tree/data and still opens, so
        // the lookups above really ran against corrupt databases.
        assert!(opened > 1000, "opened {opened}, rejected {rejected}");
        assert!(rejected > 0, "opened {opened}, rejected {rejected}");
    }

    #[test]
    fn random_garbage_with_valid_metadata_never_panics() {
        // Valid metadata after a random tree/data section.
        let good = test_db_bytes();
        let marker = b"\xAB\xCD\xEFMaxMind.com";
        let at = good
            .windows(marker.len())
            .rposition(|w| w == marker)
            .unwrap();
        let mut rng = Rng(42);
        let ips = probe_ips();
        for _ in 0..500 {
            let mut bytes: Vec<u8> = (0..at).map(|_| rng.next() as u8).collect();
            bytes.extend(&good[at..]);
            if let Ok(db) = AsnDb::from_bytes(bytes) {
                exercise(&db, &ips);
            }
        }
    }

    #[test]
    fn asn_display() {
        assert_eq!(Asn { number: 64500 }.to_string(), "AS64500");
    }

    #[test]
    fn asn_db_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AsnDb>();
        assert_send_sync::<AsnError>();
    }
}
