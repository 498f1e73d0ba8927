//! TLS fingerprint step: parse a raw ClientHello (zero-copy) and compute JA4 (FoxIO's TLS
//! client fingerprint, TLS-over-TCP flavour) from the first bytes of a new connection.
//!
//! The module is pure: no I/O, no `unsafe`, and every input is read through checked slicing,
//! so arbitrary bytes can never make it panic or read out of bounds.
//!
//! Three steps, used in this order by the proxy:
//!
//! 1. [`client_hello_progress`] is called on the bytes buffered so far from a new TCP
//!    connection. It walks the TLS records and says whether the whole ClientHello handshake
//!    message is there yet ([`HelloProgress::Complete`] with the number of record bytes),
//!    whether more bytes are needed, or whether the stream is not a TLS ClientHello at all.
//! 2. [`parse_client_hello`] parses those record bytes into a [`ClientHello`]. When the
//!    message sits in one record (the usual case) nothing is copied; when it spans records,
//!    the handshake body is reassembled into one owned buffer.
//! 3. [`ja4`] computes all four JA4 strings (`ja4`, `ja4_r`, `ja4_o`, `ja4_ro`);
//!    [`ja4_fingerprint`] / [`ja4_only`] compute just `ja4` without building the raw strings.
//!
//! JA4 follows FoxIO's `technical_details/JA4.md`. Where the specification and FoxIO's code
//! disagree, the specification wins:
//!
//! - GREASE values (`0x?a?a` with equal bytes) are ignored everywhere: cipher suites,
//!   extension types, `supported_versions` and `signature_algorithms`.
//! - The ALPN part uses the first and last byte of the first ALPN value; when either byte is
//!   not ASCII alphanumeric, it is the first and last hex digit of the value instead
//!   (`0xba 0xad` gives `bd`, where FoxIO's older code printed `99`). A one-byte value is used
//!   as both characters (`h` gives `hh`). No ALPN extension, an empty or unreadable list, or an
//!   empty first value give `00`.
//! - A hashed part whose list is empty is `000000000000` instead of the hash of nothing. For
//!   `ja4_o` the list tested is the original-order extension list, which keeps SNI and ALPN;
//!   so a hello whose only extension is SNI hashes `0000` (FoxIO's Python printed zeros there).
//! - The signature algorithms come from the first `signature_algorithms` (0x000d) extension
//!   only; when none remain after removing GREASE, the extension part has no trailing `_`.
//! - The version is the highest non-GREASE value of `supported_versions`; when that extension
//!   is absent, unreadable or holds only GREASE, it is the ClientHello's legacy version. The
//!   record-layer version is never used.
//! - `d`/`i` follows the presence of the SNI extension, not whether a host name parses.

use std::borrow::Cow;
use std::fmt;

use sha2::{Digest, Sha256};

/// The ClientHello size limit the proxy passes to [`client_hello_progress`]: 16 KiB of
/// buffered record bytes.
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

/// TLS record content type `handshake`.
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
/// Handshake message type `client_hello`.
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// Length of a TLS record header (type, version, length).
const RECORD_HEADER_LEN: usize = 5;
/// Length of a handshake message header (type, 24-bit length).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest plaintext record payload allowed by RFC 8446 section 5.1 (2^14).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
/// Smallest possible ClientHello body: version, random, and the three length prefixes of
/// session id, cipher suites and compression methods, all lists empty.
const MIN_CLIENT_HELLO_BODY: usize = 2 + 32 + 1 + 2 + 1;

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
const EXT_ALPN: u16 = 0x0010;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;

/// Why a byte stream is not (or not a usable) TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HelloError {
    /// The stream does not start with a TLS handshake record (`0x16 0x03 ..`).
    NotTls,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello would need more bytes than the caller's limit.
    TooLarge,
    /// The bytes end before the ClientHello does.
    Truncated,
    /// The records or the ClientHello structure are inconsistent.
    Malformed,
}

impl HelloError {
    /// A stable snake_case name for the reason, suitable as a metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            HelloError::NotTls => "not_tls",
            HelloError::NotClientHello => "not_client_hello",
            HelloError::TooLarge => "too_large",
            HelloError::Truncated => "truncated",
            HelloError::Malformed => "malformed",
        }
    }
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for HelloError {}

/// What [`client_hello_progress`] found in the bytes buffered so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloProgress {
    /// Everything so far is consistent with a ClientHello, but it is not complete yet.
    NeedMore,
    /// The first `len` bytes are whole TLS records that contain the whole ClientHello
    /// handshake message; pass `&buf[..len]` to [`parse_client_hello`].
    Complete {
        /// Number of buffered bytes (whole records) that hold the ClientHello.
        len: usize,
    },
    /// The stream is not a TLS ClientHello, or it is too large; stop buffering.
    Invalid(HelloError),
}

/// Checks whether `buf`, the bytes read so far from a new TCP connection, holds a whole TLS
/// ClientHello.
///
/// The records are walked from the start: each must be a handshake record (`0x16`) with a
/// `0x03xx` version and a non-zero length of at most 2^14. The handshake message may span
/// several records; the first one must be a ClientHello (type 1). The answer is
/// [`HelloProgress::Complete`] once the record holding the message's last byte is fully
/// buffered. `max_len` bounds the record bytes to buffer (headers included): a record or a
/// declared message that cannot fit gives [`HelloError::TooLarge`], so `len <= max_len`
/// always holds. Bytes after the completing record are ignored. Non-TLS input is rejected
/// from its first byte, and SSLv2-style hellos are reported as [`HelloError::NotTls`].
#[must_use]
pub fn client_hello_progress(buf: &[u8], max_len: usize) -> HelloProgress {
    match scan_records(buf, max_len) {
        Scan::NeedMore => HelloProgress::NeedMore,
        Scan::Invalid(e) => HelloProgress::Invalid(e),
        Scan::Complete { len, .. } => HelloProgress::Complete { len },
    }
}

/// Internal result of walking the records.
enum Scan {
    NeedMore,
    Invalid(HelloError),
    Complete {
        /// Record bytes up to the end of the record holding the message's last byte.
        len: usize,
        /// Handshake message length, header included.
        msg_len: usize,
    },
}

fn scan_records(buf: &[u8], max_len: usize) -> Scan {
    let mut pos = 0usize;
    let mut hs_header = [0u8; HANDSHAKE_HEADER_LEN];
    let mut header_have = 0usize;
    let mut msg_len: Option<usize> = None;
    let mut have = 0usize;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        // Outside the first record a bad header is framing damage, not "another protocol".
        let bad_header = if pos == 0 {
            HelloError::NotTls
        } else {
            HelloError::Malformed
        };
        let (rec_len, payload) = match rest {
            [] => return Scan::NeedMore,
            [ct, ..] if *ct != CONTENT_TYPE_HANDSHAKE => return Scan::Invalid(bad_header),
            [_, major, ..] if *major != 0x03 => return Scan::Invalid(bad_header),
            [_, _, _, hi, lo, payload @ ..] => {
                (usize::from(u16::from_be_bytes([*hi, *lo])), payload)
            }
            _ => return Scan::NeedMore,
        };
        if rec_len == 0 {
            return Scan::Invalid(HelloError::Malformed);
        }
        let rec_end = pos
            .saturating_add(RECORD_HEADER_LEN)
            .saturating_add(rec_len);
        if rec_end > max_len {
            return Scan::Invalid(HelloError::TooLarge);
        }
        if rec_len > MAX_RECORD_PAYLOAD {
            return Scan::Invalid(HelloError::Malformed);
        }
        let payload = payload.get(..rec_len).unwrap_or(payload);
        for &byte in payload {
            let Some(slot) = hs_header.get_mut(header_have) else {
                break;
            };
            *slot = byte;
            header_have += 1;
            if header_have == 1 && byte != HANDSHAKE_CLIENT_HELLO {
                return Scan::Invalid(HelloError::NotClientHello);
            }
            if header_have == HANDSHAKE_HEADER_LEN {
                let [_, a, b, c] = hs_header;
                let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if body_len < MIN_CLIENT_HELLO_BODY {
                    return Scan::Invalid(HelloError::Malformed);
                }
                let total = HANDSHAKE_HEADER_LEN + body_len;
                if total.saturating_add(RECORD_HEADER_LEN) > max_len {
                    return Scan::Invalid(HelloError::TooLarge);
                }
                msg_len = Some(total);
            }
        }
        have = have.saturating_add(payload.len());
        if payload.len() < rec_len {
            return Scan::NeedMore;
        }
        if let Some(total) = msg_len {
            if have >= total {
                return Scan::Complete {
                    len: rec_end,
                    msg_len: total,
                };
            }
        }
        pos = rec_end;
    }
}

/// A byte range inside the ClientHello body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: usize,
    end: usize,
}

/// Checked reader over a byte slice; every read returns [`HelloError::Malformed`] instead of
/// going out of bounds.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn span(&mut self, n: usize) -> Result<Span, HelloError> {
        let end = self.pos.checked_add(n).ok_or(HelloError::Malformed)?;
        if end > self.buf.len() {
            return Err(HelloError::Malformed);
        }
        let span = Span {
            start: self.pos,
            end,
        };
        self.pos = end;
        Ok(span)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        let span = self.span(n)?;
        self.buf
            .get(span.start..span.end)
            .ok_or(HelloError::Malformed)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        match self.bytes(1)? {
            [b] => Ok(*b),
            _ => Err(HelloError::Malformed),
        }
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        match self.bytes(2)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(HelloError::Malformed),
        }
    }

    /// A vector with a one-byte length prefix, as a span.
    fn vec8(&mut self) -> Result<Span, HelloError> {
        let n = self.u8()?;
        self.span(usize::from(n))
    }

    /// A vector with a two-byte length prefix, as a span.
    fn vec16(&mut self) -> Result<Span, HelloError> {
        let n = self.u16()?;
        self.span(usize::from(n))
    }

    /// A vector with a two-byte length prefix, as a slice.
    fn slice16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
}

/// A parsed TLS ClientHello.
///
/// The handshake body is held as a [`Cow`]: borrowed from the caller's record bytes when the
/// message sits in one record (no copy), owned when it had to be reassembled from several
/// records (see [`ClientHello::is_reassembled`]). Parsing validates the outer structure
/// (lengths of session id, cipher suites, compression methods and every extension) and
/// remembers where things are; the accessors re-slice the body. Inner extension data (SNI,
/// ALPN, supported_versions, signature_algorithms) is read leniently: unreadable content
/// reads as absent or empty instead of failing the whole hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    body: Cow<'a, [u8]>,
    legacy_version: u16,
    session_id: Span,
    cipher_suites: Span,
    compression_methods: Span,
    extensions: Option<Span>,
    server_name: Option<Span>,
    alpn: Option<Span>,
    supported_versions: Option<Span>,
    signature_algorithms: Option<Span>,
}

/// Parses the TLS record bytes `records` (one or more handshake records, as sent by the
/// client) into a [`ClientHello`].
///
/// Bytes after the record that completes the ClientHello are ignored, so the whole buffer or
/// the `len` reported by [`client_hello_progress`] may be passed. No record-size limit is
/// applied beyond what the bytes themselves hold; any allocation (multi-record case only) is
/// bounded by `records.len()`.
///
/// # Errors
///
/// [`HelloError::Truncated`] when the records end before the message does, and the other
/// variants as described on [`HelloError`].
pub fn parse_client_hello(records: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    let msg_len = match scan_records(records, usize::MAX) {
        Scan::Complete { msg_len, .. } => msg_len,
        Scan::NeedMore => return Err(HelloError::Truncated),
        Scan::Invalid(e) => return Err(e),
    };
    let first_record_len = match records {
        [_, _, _, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(HelloError::Truncated),
    };
    let body_start = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN;
    let body: Cow<'_, [u8]> = if first_record_len >= msg_len {
        let body_end = RECORD_HEADER_LEN + msg_len;
        Cow::Borrowed(
            records
                .get(body_start..body_end)
                .ok_or(HelloError::Truncated)?,
        )
    } else {
        Cow::Owned(reassemble(records, msg_len)?)
    };
    parse_body(body)
}

/// Concatenates the handshake payload of consecutive records and returns the message body
/// (without its 4-byte header). Only called after [`scan_records`] found the message complete.
fn reassemble(records: &[u8], msg_len: usize) -> Result<Vec<u8>, HelloError> {
    let body_len = msg_len
        .checked_sub(HANDSHAKE_HEADER_LEN)
        .ok_or(HelloError::Malformed)?;
    let mut body = Vec::with_capacity(body_len.min(records.len()));
    let mut skip = HANDSHAKE_HEADER_LEN;
    let mut cur = Cursor::new(records);
    while body.len() < body_len {
        let _content_type = cur.u8().map_err(|_| HelloError::Truncated)?;
        let _version = cur.u16().map_err(|_| HelloError::Truncated)?;
        let mut payload = cur.slice16().map_err(|_| HelloError::Truncated)?;
        let skipped = skip.min(payload.len());
        payload = payload.get(skipped..).unwrap_or_default();
        skip -= skipped;
        let want = body_len - body.len();
        body.extend_from_slice(payload.get(..want).unwrap_or(payload));
    }
    Ok(body)
}

fn parse_body(body: Cow<'_, [u8]>) -> Result<ClientHello<'_>, HelloError> {
    let mut cur = Cursor::new(&body);
    let legacy_version = cur.u16()?;
    let _random = cur.span(32)?;
    let session_id = cur.vec8()?;
    let cipher_suites = cur.vec16()?;
    if !(cipher_suites.end - cipher_suites.start).is_multiple_of(2) {
        return Err(HelloError::Malformed);
    }
    let compression_methods = cur.vec8()?;

    let mut extensions = None;
    let mut server_name = None;
    let mut alpn = None;
    let mut supported_versions = None;
    let mut signature_algorithms = None;
    if cur.remaining() > 0 {
        let block_len = usize::from(cur.u16()?);
        if block_len != cur.remaining() {
            return Err(HelloError::Malformed);
        }
        let block = Span {
            start: cur.pos,
            end: cur.pos + block_len,
        };
        while cur.remaining() > 0 {
            let ext_type = cur.u16()?;
            let data = cur.vec16()?;
            let slot = match ext_type {
                EXT_SERVER_NAME => &mut server_name,
                EXT_ALPN => &mut alpn,
                EXT_SUPPORTED_VERSIONS => &mut supported_versions,
                EXT_SIGNATURE_ALGORITHMS => &mut signature_algorithms,
                _ => continue,
            };
            // RFC 8446 forbids duplicates; if a client sends them anyway, the first one counts.
            slot.get_or_insert(data);
        }
        extensions = Some(block);
    }

    Ok(ClientHello {
        legacy_version,
        session_id,
        cipher_suites,
        compression_methods,
        extensions,
        server_name,
        alpn,
        supported_versions,
        signature_algorithms,
        body,
    })
}

impl ClientHello<'_> {
    fn slice(&self, span: Span) -> &[u8] {
        self.body.get(span.start..span.end).unwrap_or_default()
    }

    fn opt_slice(&self, span: Option<Span>) -> Option<&[u8]> {
        span.map(|s| self.slice(s))
    }

    /// True when the message spanned several records and the body was copied into an owned
    /// buffer; false when it borrows the caller's bytes.
    pub fn is_reassembled(&self) -> bool {
        matches!(self.body, Cow::Owned(_))
    }

    /// Converts into a ClientHello that owns its bytes (copies a borrowed body).
    pub fn into_owned(self) -> ClientHello<'static> {
        ClientHello {
            body: Cow::Owned(self.body.into_owned()),
            legacy_version: self.legacy_version,
            session_id: self.session_id,
            cipher_suites: self.cipher_suites,
            compression_methods: self.compression_methods,
            extensions: self.extensions,
            server_name: self.server_name,
            alpn: self.alpn,
            supported_versions: self.supported_versions,
            signature_algorithms: self.signature_algorithms,
        }
    }

    /// The ClientHello handshake body (after the 4-byte handshake header).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The `legacy_version` field (`0x0303` for TLS 1.2 and 1.3 clients).
    pub fn legacy_version(&self) -> u16 {
        self.legacy_version
    }

    /// The 32-byte client random.
    pub fn random(&self) -> &[u8] {
        self.body.get(2..34).unwrap_or_default()
    }

    /// The legacy session id (0 to 32 bytes in well-formed hellos).
    pub fn session_id(&self) -> &[u8] {
        self.slice(self.session_id)
    }

    /// The offered cipher suites in original order, GREASE included.
    pub fn cipher_suites(&self) -> U16List<'_> {
        U16List::new(self.slice(self.cipher_suites))
    }

    /// The offered compression methods.
    pub fn compression_methods(&self) -> &[u8] {
        self.slice(self.compression_methods)
    }

    /// True when the hello carries an extensions block (possibly empty).
    pub fn has_extensions_block(&self) -> bool {
        self.extensions.is_some()
    }

    /// The extensions in original order, GREASE included.
    pub fn extensions(&self) -> Extensions<'_> {
        Extensions {
            rest: self.opt_slice(self.extensions).unwrap_or_default(),
        }
    }

    /// The data of the first extension of type `ext_type`, if present.
    pub fn extension(&self, ext_type: u16) -> Option<&[u8]> {
        self.extensions()
            .find(|e| e.ext_type == ext_type)
            .map(|e| e.data)
    }

    /// True when the server_name (SNI, 0x0000) extension is present.
    pub fn has_sni(&self) -> bool {
        self.server_name.is_some()
    }

    /// The first `host_name` entry of the SNI extension, as raw bytes.
    pub fn server_name_bytes(&self) -> Option<&[u8]> {
        let data = self.opt_slice(self.server_name)?;
        let mut outer = Cursor::new(data);
        let list = outer.slice16().ok()?;
        let mut cur = Cursor::new(list);
        while cur.remaining() > 0 {
            let name_type = cur.u8().ok()?;
            let name = cur.slice16().ok()?;
            if name_type == 0 {
                return Some(name);
            }
        }
        None
    }

    /// The first `host_name` entry of the SNI extension, when it is valid UTF-8.
    pub fn server_name(&self) -> Option<&str> {
        std::str::from_utf8(self.server_name_bytes()?).ok()
    }

    /// True when the ALPN (0x0010) extension is present.
    pub fn has_alpn(&self) -> bool {
        self.alpn.is_some()
    }

    /// The ALPN protocol names in original order (empty if absent or unreadable).
    pub fn alpn_protocols(&self) -> AlpnProtocols<'_> {
        let list = self
            .opt_slice(self.alpn)
            .and_then(|d| Cursor::new(d).slice16().ok())
            .unwrap_or_default();
        AlpnProtocols { rest: list }
    }

    /// The first ALPN protocol name, if any.
    pub fn alpn_first(&self) -> Option<&[u8]> {
        self.alpn_protocols().next()
    }

    /// True when the supported_versions (0x002b) extension is present.
    pub fn has_supported_versions(&self) -> bool {
        self.supported_versions.is_some()
    }

    /// The versions of the supported_versions extension in original order, GREASE included
    /// (empty if absent or unreadable).
    pub fn supported_versions(&self) -> U16List<'_> {
        let list = self
            .opt_slice(self.supported_versions)
            .and_then(|d| {
                let mut cur = Cursor::new(d);
                let n = cur.u8().ok()?;
                cur.bytes(usize::from(n)).ok()
            })
            .unwrap_or_default();
        U16List::new(list)
    }

    /// The signature schemes of the first signature_algorithms (0x000d) extension in original
    /// order, GREASE included (empty if absent or unreadable).
    pub fn signature_algorithms(&self) -> U16List<'_> {
        let list = self
            .opt_slice(self.signature_algorithms)
            .and_then(|d| Cursor::new(d).slice16().ok())
            .unwrap_or_default();
        U16List::new(list)
    }

    /// The version JA4 uses: the highest non-GREASE supported_versions value, else the legacy
    /// version.
    pub fn effective_version(&self) -> u16 {
        self.supported_versions()
            .filter(|v| !is_grease(*v))
            .max()
            .unwrap_or(self.legacy_version)
    }
}

/// Iterator over a list of big-endian `u16` values (cipher suites, versions, signature
/// schemes). A trailing odd byte, if any, is ignored.
#[derive(Debug, Clone)]
pub struct U16List<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl<'a> U16List<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        U16List {
            chunks: bytes.chunks_exact(2),
        }
    }
}

impl Iterator for U16List<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        match self.chunks.next()? {
            [a, b] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for U16List<'_> {}

/// One ClientHello extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// The extension type code.
    pub ext_type: u16,
    /// The extension data (without type and length).
    pub data: &'a [u8],
}

/// Iterator over the extensions of a [`ClientHello`] in original order.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Extension<'a>;

    fn next(&mut self) -> Option<Extension<'a>> {
        let mut cur = Cursor::new(self.rest);
        let item = cur
            .u16()
            .and_then(|ext_type| Ok((ext_type, cur.slice16()?)));
        match item {
            Ok((ext_type, data)) => {
                self.rest = self.rest.get(cur.pos..).unwrap_or_default();
                Some(Extension { ext_type, data })
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Iterator over ALPN protocol names in original order.
#[derive(Debug, Clone)]
pub struct AlpnProtocols<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AlpnProtocols<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut cur = Cursor::new(self.rest);
        let item = cur.u8().and_then(|n| cur.bytes(usize::from(n)));
        match item {
            Ok(name) => {
                self.rest = self.rest.get(cur.pos..).unwrap_or_default();
                Some(name)
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// True for the 16 GREASE values of RFC 8701 (`0x0a0a`, `0x1a1a`, ..., `0xfafa`).
#[must_use]
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// The four JA4 strings of one ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Ja4 {
    /// `ja4`: sorted lists, hashed (e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`).
    pub ja4: String,
    /// `ja4_r`: sorted lists, raw (SNI and ALPN left out of the extension list).
    pub ja4_r: String,
    /// `ja4_o`: original order, hashed (SNI and ALPN kept in the extension list).
    pub ja4_o: String,
    /// `ja4_ro`: original order, raw (SNI and ALPN kept in the extension list).
    pub ja4_ro: String,
}

/// A `ja4` value held inline (it is always 36 ASCII bytes), computed without heap
/// allocation for typical hellos.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ja4Fingerprint([u8; 36]);

impl Ja4Fingerprint {
    /// The fingerprint as a string slice.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// A `ja4` value computed elsewhere (a CDN's header), if it has the
    /// shape of one: `[tqd]` protocol, a known version code, `d`/`i` SNI,
    /// two two-digit counts, two alphanumeric ALPN characters, then `_`,
    /// 12 hex digits, `_`, 12 hex digits (36 bytes in all). Hex digits are
    /// kept lower-case, as this crate computes them, so a fingerprint from a
    /// front and one observed here compare equal.
    pub fn parse(s: &str) -> Option<Ja4Fingerprint> {
        let b: &[u8; 36] = s.as_bytes().try_into().ok()?;
        const VERSIONS: [&[u8; 2]; 10] = [
            b"13", b"12", b"11", b"10", b"s3", b"s2", b"d1", b"d2", b"d3", b"00",
        ];
        let shape = matches!(b[0], b't' | b'q' | b'd')
            && VERSIONS.iter().any(|v| v[..] == b[1..3])
            && matches!(b[3], b'd' | b'i')
            && b[4..8].iter().all(u8::is_ascii_digit)
            && b[8..10].iter().all(u8::is_ascii_alphanumeric)
            && b[10] == b'_'
            && b[23] == b'_'
            && b[11..23]
                .iter()
                .chain(&b[24..36])
                .all(u8::is_ascii_hexdigit);
        if !shape {
            return None;
        }
        let mut out = *b;
        out[11..].make_ascii_lowercase();
        Some(Ja4Fingerprint(out))
    }
}

impl fmt::Display for Ja4Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Ja4Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Computes `ja4`, `ja4_r`, `ja4_o` and `ja4_ro` for a ClientHello seen over TCP.
#[must_use]
pub fn ja4(hello: &ClientHello<'_>) -> Ja4 {
    let mut parts = Parts::collect(hello);
    let a = parts.a;

    // Original order first, then sort in place for the sorted variants.
    let ja4_o = hashed(&a, hello, parts.ciphers.as_slice(), parts.exts.as_slice());
    let ja4_ro = raw(&a, hello, parts.ciphers.as_slice(), parts.exts.as_slice());

    parts.sort_for_ja4();
    let ja4 = hashed(&a, hello, parts.ciphers.as_slice(), parts.exts.as_slice());
    let ja4_r = raw(&a, hello, parts.ciphers.as_slice(), parts.exts.as_slice());

    Ja4 {
        ja4: ja4.as_str().to_owned(),
        ja4_r,
        ja4_o: ja4_o.as_str().to_owned(),
        ja4_ro,
    }
}

/// Computes only the `ja4` value, without building the raw strings; for typical hellos
/// (up to 128 cipher suites and 128 extensions) nothing is allocated.
#[must_use]
pub fn ja4_fingerprint(hello: &ClientHello<'_>) -> Ja4Fingerprint {
    let mut parts = Parts::collect(hello);
    parts.sort_for_ja4();
    hashed(
        &parts.a,
        hello,
        parts.ciphers.as_slice(),
        parts.exts.as_slice(),
    )
}

/// Computes only the `ja4` value, as a `String` (one allocation).
#[must_use]
pub fn ja4_only(hello: &ClientHello<'_>) -> String {
    ja4_fingerprint(hello).as_str().to_owned()
}

/// The inputs of a JA4 computation, GREASE removed.
struct Parts {
    /// The `ja4_a` section, e.g. `t13d1516h2`.
    a: [u8; 10],
    ciphers: U16Vec,
    exts: U16Vec,
}

impl Parts {
    fn collect(hello: &ClientHello<'_>) -> Parts {
        let mut ciphers = U16Vec::new();
        for c in hello.cipher_suites().filter(|c| !is_grease(*c)) {
            ciphers.push(c);
        }
        let mut exts = U16Vec::new();
        for e in hello.extensions().filter(|e| !is_grease(e.ext_type)) {
            exts.push(e.ext_type);
        }
        let [v0, v1] = version_code(hello.effective_version());
        let [c0, c1] = two_digits(ciphers.len());
        let [e0, e1] = two_digits(exts.len());
        let [l0, l1] = alpn_chars(hello.alpn_first());
        let sni = if hello.has_sni() { b'd' } else { b'i' };
        Parts {
            a: [b't', v0, v1, sni, c0, c1, e0, e1, l0, l1],
            ciphers,
            exts,
        }
    }

    /// Sorts ciphers, and drops SNI and ALPN from the extensions before sorting them.
    fn sort_for_ja4(&mut self) {
        self.ciphers.as_mut_slice().sort_unstable();
        self.exts.retain(|e| e != EXT_SERVER_NAME && e != EXT_ALPN);
        self.exts.as_mut_slice().sort_unstable();
    }
}

/// The two-character JA4 version code.
fn version_code(version: u16) -> [u8; 2] {
    match version {
        0x0304 => *b"13",
        0x0303 => *b"12",
        0x0302 => *b"11",
        0x0301 => *b"10",
        0x0300 => *b"s3",
        0x0002 => *b"s2",
        0xfeff => *b"d1",
        0xfefd => *b"d2",
        0xfefc => *b"d3",
        _ => *b"00",
    }
}

/// Two decimal digits, capped at 99.
fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_hi(b: u8) -> u8 {
    HEX[usize::from(b >> 4)]
}

fn hex_lo(b: u8) -> u8 {
    HEX[usize::from(b & 0x0f)]
}

/// The two ALPN characters of `ja4_a` for the first ALPN value.
fn alpn_chars(first: Option<&[u8]>) -> [u8; 2] {
    match first {
        Some([first, .., last]) | Some([first @ last]) => {
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                [*first, *last]
            } else {
                [hex_hi(*first), hex_lo(*last)]
            }
        }
        _ => *b"00",
    }
}

/// Destination for the comma-separated hex lists: a hasher or a string.
trait Sink {
    fn put(&mut self, ascii: &[u8]);
}

impl Sink for String {
    fn put(&mut self, ascii: &[u8]) {
        self.extend(ascii.iter().map(|&b| char::from(b)));
    }
}

/// SHA-256 fed through a small stack buffer, so the many 5-byte pieces cost one hasher
/// update per buffer.
struct HashSink {
    hasher: Sha256,
    buf: [u8; 128],
    len: usize,
}

impl HashSink {
    fn new() -> Self {
        HashSink {
            hasher: Sha256::new(),
            buf: [0; 128],
            len: 0,
        }
    }

    fn flush(&mut self) {
        self.hasher
            .update(self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
    }

    /// The first 12 lowercase hex digits of the digest.
    fn finish12(mut self) -> [u8; 12] {
        self.flush();
        let digest = self.hasher.finalize();
        let mut out = [0u8; 12];
        for (pair, byte) in out.chunks_exact_mut(2).zip(digest.iter()) {
            if let [hi, lo] = pair {
                *hi = hex_hi(*byte);
                *lo = hex_lo(*byte);
            }
        }
        out
    }
}

impl Sink for HashSink {
    fn put(&mut self, ascii: &[u8]) {
        if self.len + ascii.len() > self.buf.len() {
            self.flush();
        }
        match self.buf.get_mut(self.len..self.len + ascii.len()) {
            Some(dst) => {
                dst.copy_from_slice(ascii);
                self.len += ascii.len();
            }
            None => self.hasher.update(ascii),
        }
    }
}

/// Writes `values` as 4-digit lowercase hex, comma separated.
fn put_list<S: Sink>(sink: &mut S, values: impl IntoIterator<Item = u16>) {
    for (i, v) in values.into_iter().enumerate() {
        let [hi, lo] = v.to_be_bytes();
        let item = [b',', hex_hi(hi), hex_lo(hi), hex_hi(lo), hex_lo(lo)];
        let item = if i == 0 { &item[1..] } else { &item[..] };
        sink.put(item);
    }
}

/// Writes the `ja4_c` input: the extension list, then `_` and the non-GREASE signature
/// algorithms in original order when there are any.
fn put_exts_sigs<S: Sink>(sink: &mut S, hello: &ClientHello<'_>, exts: &[u16]) {
    put_list(sink, exts.iter().copied());
    let mut sigs = hello
        .signature_algorithms()
        .filter(|s| !is_grease(*s))
        .peekable();
    if sigs.peek().is_some() {
        sink.put(b"_");
        put_list(sink, sigs);
    }
}

const EMPTY_HASH: [u8; 12] = *b"000000000000";

fn hashed(a: &[u8; 10], hello: &ClientHello<'_>, ciphers: &[u16], exts: &[u16]) -> Ja4Fingerprint {
    let b = if ciphers.is_empty() {
        EMPTY_HASH
    } else {
        let mut sink = HashSink::new();
        put_list(&mut sink, ciphers.iter().copied());
        sink.finish12()
    };
    let c = if exts.is_empty() {
        EMPTY_HASH
    } else {
        let mut sink = HashSink::new();
        put_exts_sigs(&mut sink, hello, exts);
        sink.finish12()
    };
    let mut out = [b'_'; 36];
    for (dst, src) in out
        .iter_mut()
        .zip(a.iter().chain(b"_").chain(&b).chain(b"_").chain(&c))
    {
        *dst = *src;
    }
    Ja4Fingerprint(out)
}

fn raw(a: &[u8; 10], hello: &ClientHello<'_>, ciphers: &[u16], exts: &[u16]) -> String {
    let sig_count = hello.signature_algorithms().len();
    let mut out = String::with_capacity(12 + 5 * (ciphers.len() + exts.len() + sig_count));
    out.put(a);
    out.put(b"_");
    put_list(&mut out, ciphers.iter().copied());
    out.put(b"_");
    put_exts_sigs(&mut out, hello, exts);
    out
}

/// Number of values kept on the stack before spilling to the heap.
const INLINE_U16: usize = 128;

/// A `Vec<u16>` that stays on the stack up to [`INLINE_U16`] values.
struct U16Vec {
    inline: [u16; INLINE_U16],
    len: usize,
    heap: Option<Vec<u16>>,
}

impl U16Vec {
    fn new() -> Self {
        U16Vec {
            inline: [0; INLINE_U16],
            len: 0,
            heap: None,
        }
    }

    fn push(&mut self, value: u16) {
        if let Some(heap) = &mut self.heap {
            heap.push(value);
        } else if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = value;
            self.len += 1;
        } else {
            let mut heap = Vec::with_capacity(INLINE_U16 * 2);
            heap.extend_from_slice(&self.inline);
            heap.push(value);
            self.heap = Some(heap);
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn as_slice(&self) -> &[u16] {
        match &self.heap {
            Some(heap) => heap,
            None => self.inline.get(..self.len).unwrap_or_default(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        match &mut self.heap {
            Some(heap) => heap,
            None => self.inline.get_mut(..self.len).unwrap_or_default(),
        }
    }

    fn retain(&mut self, keep: impl Fn(u16) -> bool) {
        if let Some(heap) = &mut self.heap {
            heap.retain(|v| keep(*v));
            return;
        }
        let mut kept = 0;
        for i in 0..self.len {
            let value = self.inline.get(i).copied().unwrap_or_default();
            if keep(value) {
                if let Some(slot) = self.inline.get_mut(kept) {
                    *slot = value;
                }
                kept += 1;
            }
        }
        self.len = kept;
    }
}

/// The `distill-guard fingerprint` command's answer for one hex-encoded TLS
/// record: `{"ja4","ja4_r","ja4_o","ja4_ro"}`, or `{"error": …}` for input
/// that is not hex or not a complete ClientHello.
pub fn ja4_json(hex: &str) -> serde_json::Value {
    let hex = hex.trim();
    let bytes: Option<Vec<u8>> = if hex.len().is_multiple_of(2) && hex.is_ascii() {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect()
    } else {
        None
    };
    let Some(bytes) = bytes else {
        return serde_json::json!({"error": "input is not an even-length hex string"});
    };
    match client_hello_progress(&bytes, MAX_CLIENT_HELLO_LEN) {
        HelloProgress::Complete { len } => match parse_client_hello(&bytes[..len]) {
            Ok(hello) => {
                let j = ja4(&hello);
                serde_json::json!({"ja4": j.ja4, "ja4_r": j.ja4_r, "ja4_o": j.ja4_o, "ja4_ro": j.ja4_ro})
            }
            Err(e) => serde_json::json!({"error": e.as_str()}),
        },
        HelloProgress::NeedMore => serde_json::json!({"error": "truncated"}),
        HelloProgress::Invalid(e) => serde_json::json!({"error": e.as_str()}),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on bad fixtures"
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ja4/client_hellos.jsonl"
    );
    const LIVE_VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ja4/client_hellos_live.jsonl"
    );
    const FIELDS: [&str; 4] = ["ja4", "ja4_r", "ja4_o", "ja4_ro"];

    fn unhex(s: &str) -> Vec<u8> {
        fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => panic!("bad hex digit {c}"),
            }
        }
        assert!(s.len().is_multiple_of(2), "odd hex length");
        s.as_bytes()
            .chunks_exact(2)
            .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
            .collect()
    }

    struct Vector {
        name: String,
        bytes: Vec<u8>,
        line: serde_json::Value,
    }

    fn vectors() -> &'static [Vector] {
        static CACHE: std::sync::OnceLock<Vec<Vector>> = std::sync::OnceLock::new();
        CACHE.get_or_init(load_vectors)
    }

    fn load_vectors() -> Vec<Vector> {
        let mut out = Vec::new();
        for path in [VECTORS, LIVE_VECTORS] {
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read test vectors {path}: {e}"));
            let file = path.rsplit('/').next().unwrap_or(path);
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                let name = format!(
                    "{file}:{} ({} stream {} hello {})",
                    i + 1,
                    line["source"].as_str().unwrap_or("?"),
                    line["stream"],
                    line["hello_index"]
                );
                let bytes = unhex(line["record_hex"].as_str().unwrap());
                out.push(Vector { name, bytes, line });
            }
        }
        out
    }

    fn chrome_hello() -> Vec<u8> {
        vectors()[0].bytes.clone()
    }

    /// Re-frames a single-record vector's handshake message into records of the given
    /// payload sizes (the last record takes the rest).
    fn split_records(single: &[u8], sizes: &[usize]) -> Vec<u8> {
        let msg = single.get(5..).unwrap_or_default();
        let mut out = Vec::new();
        let mut rest = msg;
        for (i, &n) in sizes.iter().enumerate() {
            if rest.is_empty() {
                break;
            }
            let n = if i + 1 == sizes.len() {
                rest.len()
            } else {
                n.min(rest.len())
            };
            let (chunk, tail) = rest.split_at(n);
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
            rest = tail;
        }
        out
    }

    /// Builds a one-record ClientHello from parts.
    fn build_hello(legacy: u16, ciphers: &[u16], exts: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&legacy.to_be_bytes());
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&((ciphers.len() * 2) as u16).to_be_bytes());
        for c in ciphers {
            body.extend_from_slice(&c.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        if let Some(exts) = exts {
            let mut block = Vec::new();
            for (t, d) in exts {
                block.extend_from_slice(&t.to_be_bytes());
                block.extend_from_slice(&(d.len() as u16).to_be_bytes());
                block.extend_from_slice(d);
            }
            body.extend_from_slice(&(block.len() as u16).to_be_bytes());
            body.extend_from_slice(&block);
        }
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    fn u16s(values: &[u16], prefix: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let n = values.len() * 2;
        if prefix == 1 {
            out.push(n as u8);
        } else {
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        for v in values {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn alpn_ext(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(n.len() as u8);
            list.extend_from_slice(n);
        }
        let mut out = (list.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&list);
        out
    }

    fn sni_ext(host: &str) -> Vec<u8> {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&(host.len() as u16).to_be_bytes());
        entry.extend_from_slice(host.as_bytes());
        let mut out = (entry.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&entry);
        out
    }

    #[test]
    fn all_vectors_reproduce() {
        let vectors = vectors();
        let mut checked = [0usize; 4];
        let mut failures = Vec::new();
        for v in vectors {
            assert_eq!(
                client_hello_progress(&v.bytes, MAX_CLIENT_HELLO_LEN),
                HelloProgress::Complete { len: v.bytes.len() },
                "{}",
                v.name
            );
            let hello = parse_client_hello(&v.bytes)
                .unwrap_or_else(|e| panic!("{}: parse failed: {e}", v.name));
            assert!(!hello.is_reassembled(), "{}", v.name);
            let got = ja4(&hello);
            assert_eq!(ja4_fingerprint(&hello).as_str(), got.ja4, "{}", v.name);
            assert_eq!(ja4_only(&hello), got.ja4, "{}", v.name);
            let values = [&got.ja4, &got.ja4_r, &got.ja4_o, &got.ja4_ro];
            for (i, field) in FIELDS.iter().enumerate() {
                if let Some(want) = v.line.get(*field).and_then(|x| x.as_str()) {
                    checked[i] += 1;
                    if values[i] != want {
                        failures.push(format!("{} {field}: got {} want {want}", v.name, values[i]));
                    }
                }
            }
        }
        println!(
            "{} vectors; fields checked: ja4={} ja4_r={} ja4_o={} ja4_ro={}; mismatches={}",
            vectors.len(),
            checked[0],
            checked[1],
            checked[2],
            checked[3],
            failures.len()
        );
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
        assert_eq!(vectors.len(), 157);
    }

    #[test]
    fn documented_divergences() {
        // socks-https-example: only SNI, no signature algorithms. ja4_o hashes "0000".
        let v = vectors()
            .iter()
            .find(|v| v.line["source"] == "socks-https-example.pcap")
            .unwrap();
        let got = ja4(&parse_client_hello(&v.bytes).unwrap());
        assert_eq!(got.ja4_o, "t10d230100_ce175d585f73_9af15b336e6a");
        // tls-non-ascii-alpn: the spec's hex rule, not FoxIO's old "99".
        let v = vectors()
            .iter()
            .find(|v| v.line["source"] == "tls-non-ascii-alpn.pcapng")
            .unwrap();
        let hello = parse_client_hello(&v.bytes).unwrap();
        assert_eq!(hello.alpn_first(), Some(&[0xba, 0xad][..]));
        assert_eq!(ja4(&hello).ja4, "t13d1516bd_8daaf6152771_e5627efa2ab1");
    }

    #[test]
    fn hello_accessors() {
        let bytes = chrome_hello();
        let hello = parse_client_hello(&bytes).unwrap();
        assert_eq!(hello.legacy_version(), 0x0303);
        assert_eq!(hello.random().len(), 32);
        assert_eq!(hello.session_id().len(), 32);
        assert_eq!(hello.cipher_suites().len(), 16);
        assert_eq!(hello.cipher_suites().next(), Some(0xaaaa));
        assert_eq!(hello.compression_methods(), &[0]);
        assert!(hello.has_sni());
        assert_eq!(hello.server_name(), Some("clientservices.googleapis.com"));
        let alpn: Vec<&[u8]> = hello.alpn_protocols().collect();
        assert_eq!(alpn, vec![&b"h2"[..], &b"http/1.1"[..]]);
        assert_eq!(hello.effective_version(), 0x0304);
        assert_eq!(
            hello.supported_versions().collect::<Vec<_>>(),
            vec![0x0a0a, 0x0304, 0x0303]
        );
        assert_eq!(hello.signature_algorithms().len(), 8);
        assert_eq!(hello.extensions().count(), 18);
        assert_eq!(hello.extensions().next().map(|e| e.ext_type), Some(0x9a9a));
        assert!(hello.extension(EXT_SUPPORTED_VERSIONS).is_some());
        assert!(hello.has_extensions_block());
        let owned = hello.clone().into_owned();
        assert_eq!(ja4(&owned), ja4(&hello));
    }

    #[test]
    fn byte_by_byte_needs_more_until_last_byte() {
        for v in vectors() {
            for i in 0..v.bytes.len() {
                assert_eq!(
                    client_hello_progress(&v.bytes[..i], MAX_CLIENT_HELLO_LEN),
                    HelloProgress::NeedMore,
                    "{} prefix {i}",
                    v.name
                );
                assert_eq!(
                    parse_client_hello(&v.bytes[..i]).map(|_| ()),
                    Err(HelloError::Truncated),
                    "{} prefix {i}",
                    v.name
                );
            }
            assert_eq!(
                client_hello_progress(&v.bytes, MAX_CLIENT_HELLO_LEN),
                HelloProgress::Complete { len: v.bytes.len() }
            );
        }
    }

    #[test]
    fn trailing_bytes_after_hello_are_ignored() {
        let mut bytes = chrome_hello();
        let len = bytes.len();
        bytes.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(
            client_hello_progress(&bytes, MAX_CLIENT_HELLO_LEN),
            HelloProgress::Complete { len }
        );
        let a = ja4(&parse_client_hello(&bytes).unwrap());
        let b = ja4(&parse_client_hello(&bytes[..len]).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn split_across_records_gives_same_ja4() {
        for v in vectors().iter().step_by(7) {
            let want = ja4(&parse_client_hello(&v.bytes).unwrap());
            let msg_len = v.bytes.len() - 5;
            let splits: Vec<Vec<usize>> = vec![
                vec![1, 0],
                vec![2, 0],
                vec![3, 0],
                vec![4, 0],
                vec![5, 0],
                vec![msg_len / 2, 0],
                vec![msg_len - 1, 0],
                vec![1, 1, 1, 1, 40, 0],
                vec![100, 100, 100, 0],
            ];
            for sizes in splits {
                let records = split_records(&v.bytes, &sizes);
                assert_eq!(
                    client_hello_progress(&records, MAX_CLIENT_HELLO_LEN),
                    HelloProgress::Complete { len: records.len() },
                    "{} {sizes:?}",
                    v.name
                );
                for i in 0..records.len() {
                    assert_eq!(
                        client_hello_progress(&records[..i], MAX_CLIENT_HELLO_LEN),
                        HelloProgress::NeedMore
                    );
                }
                let hello = parse_client_hello(&records).unwrap();
                assert!(hello.is_reassembled());
                assert_eq!(ja4(&hello), want, "{} {sizes:?}", v.name);
                assert_eq!(
                    hello.server_name(),
                    parse_client_hello(&v.bytes).unwrap().server_name()
                );
            }
        }
    }

    #[test]
    fn invalid_inputs() {
        let max = MAX_CLIENT_HELLO_LEN;
        let inv = |b: &[u8]| client_hello_progress(b, max);
        assert_eq!(inv(b""), HelloProgress::NeedMore);
        assert_eq!(
            inv(b"GET / HTTP/1.1\r\n"),
            HelloProgress::Invalid(HelloError::NotTls)
        );
        assert_eq!(inv(b"G"), HelloProgress::Invalid(HelloError::NotTls));
        assert_eq!(inv(&[0x16]), HelloProgress::NeedMore);
        assert_eq!(
            inv(&[0x16, 0x02]),
            HelloProgress::Invalid(HelloError::NotTls)
        );
        // SSLv2-compatible hello.
        assert_eq!(
            inv(&[0x80, 0x2e, 0x01, 0x03, 0x01]),
            HelloProgress::Invalid(HelloError::NotTls)
        );
        // Zero-length record.
        assert_eq!(
            inv(&[0x16, 0x03, 0x01, 0x00, 0x00]),
            HelloProgress::Invalid(HelloError::Malformed)
        );
        // ServerHello instead of ClientHello.
        assert_eq!(
            inv(&[0x16, 0x03, 0x03, 0x00, 0x40, 0x02]),
            HelloProgress::Invalid(HelloError::NotClientHello)
        );
        // Declared handshake length over the limit.
        assert_eq!(
            inv(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0xff, 0xff]),
            HelloProgress::Invalid(HelloError::TooLarge)
        );
        assert_eq!(
            inv(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff]),
            HelloProgress::Invalid(HelloError::TooLarge)
        );
        // Declared record length over the limit.
        assert_eq!(
            client_hello_progress(&[0x16, 0x03, 0x01, 0x02, 0x00], 300),
            HelloProgress::Invalid(HelloError::TooLarge)
        );
        assert_eq!(
            inv(&[0x16, 0x03, 0x01, 0xff, 0xff]),
            HelloProgress::Invalid(HelloError::TooLarge)
        );
        // A real hello against a limit just below its size.
        let chrome = chrome_hello();
        assert_eq!(
            client_hello_progress(&chrome, chrome.len() - 1),
            HelloProgress::Invalid(HelloError::TooLarge)
        );
        assert_eq!(
            client_hello_progress(&chrome, chrome.len()),
            HelloProgress::Complete { len: chrome.len() }
        );
        // Absurdly small handshake length.
        assert_eq!(
            inv(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00]),
            HelloProgress::Invalid(HelloError::Malformed)
        );
        // A second record that is not a handshake record.
        let mut two = split_records(&chrome, &[10, 0]);
        two[15] = 0x17;
        assert_eq!(inv(&two), HelloProgress::Invalid(HelloError::Malformed));
        assert_eq!(parse_client_hello(&two).err(), Some(HelloError::Malformed));
        // parse_client_hello errors.
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n\r\n").err(),
            Some(HelloError::NotTls)
        );
        assert_eq!(
            parse_client_hello(&chrome[..100]).err(),
            Some(HelloError::Truncated)
        );
        // Extension block length that overruns the body.
        let mut bad = chrome.clone();
        let ext_len_at = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 32 + 1 + 1;
        bad[ext_len_at] = 0xff;
        assert_eq!(parse_client_hello(&bad).err(), Some(HelloError::Malformed));
        for e in [
            HelloError::NotTls,
            HelloError::NotClientHello,
            HelloError::TooLarge,
            HelloError::Truncated,
            HelloError::Malformed,
        ] {
            assert_eq!(e.to_string(), e.as_str());
        }
        assert_eq!(HelloError::NotClientHello.as_str(), "not_client_hello");
    }

    #[test]
    fn ja4_values_from_elsewhere_must_have_the_shape() {
        let good = "t13d1516h2_8daaf6152771_e5627efa2ab1";
        assert_eq!(
            Ja4Fingerprint::parse(good)
                .map(|j| j.to_string())
                .as_deref(),
            Some(good)
        );
        // QUIC and DTLS prefixes, no SNI, no ALPN are all JA4 shapes.
        for s in [
            "q13d0312h3_55b375c5d22e_06cda9e17597",
            "d12i051000_000000000000_000000000000",
        ] {
            assert_eq!(
                Ja4Fingerprint::parse(s).map(|j| j.to_string()).as_deref(),
                Some(s)
            );
        }
        // Upper-case hex is lowered, to compare equal to what is observed.
        assert_eq!(
            Ja4Fingerprint::parse("t13d1516h2_8DAAF6152771_E5627EFA2AB1")
                .map(|j| j.to_string())
                .as_deref(),
            Some(good)
        );
        for bad in [
            "",
            "spoofed",
            "t13d1516h2_8daaf6152771_e5627efa2ab",
            "t13d1516h2_8daaf6152771_e5627efa2ab12",
            "x13d1516h2_8daaf6152771_e5627efa2ab1",
            "t14d1516h2_8daaf6152771_e5627efa2ab1",
            "t13x1516h2_8daaf6152771_e5627efa2ab1",
            "t13d15a6h2_8daaf6152771_e5627efa2ab1",
            "t13d1516h-_8daaf6152771_e5627efa2ab1",
            "t13d1516h2-8daaf6152771_e5627efa2ab1",
            "t13d1516h2_8daaf615277g_e5627efa2ab1",
            "t13d1516h2_8daaf6152771 e5627efa2ab1",
            "t13d1516h2_8daaf6152771_e5627efa2a\u{e9}",
            "d12i0510001_000000000000_000000000000",
        ] {
            assert_eq!(Ja4Fingerprint::parse(bad), None, "{bad:?}");
        }
        // Whatever this crate computes parses back to itself.
        let bytes = chrome_hello();
        let hello = parse_client_hello(&bytes).unwrap();
        let fp = ja4_fingerprint(&hello);
        assert_eq!(Ja4Fingerprint::parse(fp.as_str()), Some(fp));
    }

    proptest! {
        #[test]
        fn ja4_parse_never_panics(s in ".{0,40}") {
            if let Some(j) = Ja4Fingerprint::parse(&s) {
                prop_assert_eq!(j.as_str().len(), 36);
            }
        }
    }

    #[test]
    fn alpn_rule_examples_from_spec() {
        let cases: [(&[u8], &[u8; 2]); 10] = [
            (b"h2", b"h2"),
            (b"http/1.1", b"h1"),
            (b"h", b"hh"),
            (&[0xab], b"ab"),
            (&[0xab, 0xcd], b"ad"),
            (&[0x30, 0xab], b"3b"),
            (&[0x30, 0x31, 0xab, 0xcd], b"3d"),
            (&[0x30, 0xab, 0xcd, 0x31], b"01"),
            (&[0xba, 0xad], b"bd"),
            (b"", b"00"),
        ];
        for (value, want) in cases {
            assert_eq!(&alpn_chars(Some(value)), want, "{value:02x?}");
        }
        assert_eq!(&alpn_chars(None), b"00");
    }

    #[test]
    fn grease_and_versions() {
        let grease: Vec<u16> = (0..=0xffffu16).filter(|v| is_grease(*v)).collect();
        assert_eq!(grease.len(), 16);
        assert_eq!(grease[0], 0x0a0a);
        assert_eq!(grease[15], 0xfafa);
        assert_eq!(&version_code(0x0304), b"13");
        assert_eq!(&version_code(0x0300), b"s3");
        assert_eq!(&version_code(0x0002), b"s2");
        assert_eq!(&version_code(0x7f17), b"00");
        assert_eq!(&two_digits(5), b"05");
        assert_eq!(&two_digits(150), b"99");
    }

    #[test]
    fn synthetic_edge_cases() {
        // No extensions block at all, no ciphers: both hashes are zeros.
        let rec = build_hello(0x0301, &[], None);
        let hello = parse_client_hello(&rec).unwrap();
        assert!(!hello.has_extensions_block());
        let got = ja4(&hello);
        assert_eq!(got.ja4, "t10i000000_000000000000_000000000000");
        assert_eq!(got.ja4_r, "t10i000000__");
        assert_eq!(got.ja4_o, got.ja4);
        assert_eq!(got.ja4_ro, "t10i000000__");

        // GREASE in signature algorithms, supported_versions, ciphers and extension types is
        // ignored; a single-character ALPN doubles; supported_versions beats legacy.
        let exts = vec![
            (0x2a2a, vec![]),
            (EXT_SERVER_NAME, sni_ext("example.com")),
            (EXT_ALPN, alpn_ext(&[b"x", b"h2"])),
            (EXT_SUPPORTED_VERSIONS, u16s(&[0x3a3a, 0x0303, 0x0304], 1)),
            (EXT_SIGNATURE_ALGORITHMS, u16s(&[0x4a4a, 0x0403, 0x0804], 2)),
        ];
        let with_grease = build_hello(0x0303, &[0x5a5a, 0x1302, 0x1301], Some(&exts));
        let exts_clean = vec![
            (EXT_SERVER_NAME, sni_ext("example.com")),
            (EXT_ALPN, alpn_ext(&[b"x", b"h2"])),
            (EXT_SUPPORTED_VERSIONS, u16s(&[0x0303, 0x0304], 1)),
            (EXT_SIGNATURE_ALGORITHMS, u16s(&[0x0403, 0x0804], 2)),
        ];
        let clean = build_hello(0x0303, &[0x1302, 0x1301], Some(&exts_clean));
        let a = ja4(&parse_client_hello(&with_grease).unwrap());
        let b = ja4(&parse_client_hello(&clean).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.ja4_r, "t13d0204xx_1301,1302_000d,002b_0403,0804");
        assert_eq!(
            a.ja4_ro,
            "t13d0204xx_1302,1301_0000,0010,002b,000d_0403,0804"
        );

        // Only GREASE in supported_versions: fall back to the legacy version.
        let exts = vec![(EXT_SUPPORTED_VERSIONS, u16s(&[0x3a3a], 1))];
        let rec = build_hello(0x0302, &[0x002f], Some(&exts));
        let got = ja4(&parse_client_hello(&rec).unwrap());
        assert_eq!(got.ja4_r, "t11i010100_002f_002b");

        // Unreadable ALPN list: "00". Unreadable SNI: still "d" (the extension exists).
        let exts = vec![
            (EXT_SERVER_NAME, vec![0xff]),
            (EXT_ALPN, vec![0x00, 0x09, 0x02]),
        ];
        let rec = build_hello(0x0303, &[0x002f], Some(&exts));
        let hello = parse_client_hello(&rec).unwrap();
        assert_eq!(hello.server_name(), None);
        assert_eq!(hello.alpn_first(), None);
        let got = ja4(&hello);
        assert_eq!(got.ja4_r, "t12d010200_002f_");
        assert!(got.ja4.ends_with("_000000000000"));
        assert!(!got.ja4_o.ends_with("_000000000000"));

        // More than 99 ciphers and more than 128 (heap spill): counts cap at 99 and the
        // fast path agrees with the full computation.
        let ciphers: Vec<u16> = (1..=300u16).rev().collect();
        let exts: Vec<(u16, Vec<u8>)> = (0x0100..0x0100 + 150u16).map(|t| (t, vec![])).collect();
        let rec = build_hello(0x0303, &ciphers, Some(&exts));
        let hello = parse_client_hello(&rec).unwrap();
        let got = ja4(&hello);
        assert!(got.ja4.starts_with("t12i999900_"), "{}", got.ja4);
        assert_eq!(ja4_only(&hello), got.ja4);
        assert!(got.ja4_r.contains("_0001,0002,0003,"));
        assert!(got.ja4_ro.contains("_012c,012b,"));
    }

    fn check_no_panic(bytes: &[u8]) {
        let progress = client_hello_progress(bytes, MAX_CLIENT_HELLO_LEN);
        if let HelloProgress::Complete { len } = progress {
            assert!(len <= bytes.len() && len <= MAX_CLIENT_HELLO_LEN);
            // Complete framing never parses as truncated.
            assert_ne!(
                parse_client_hello(&bytes[..len]).err(),
                Some(HelloError::Truncated)
            );
        }
        if let Ok(hello) = parse_client_hello(bytes) {
            let all = ja4(&hello);
            assert_eq!(all.ja4.len(), 36);
            assert_eq!(all.ja4_o.len(), 36);
            assert_eq!(ja4_fingerprint(&hello).as_str(), all.ja4);
            let _ = hello.server_name();
            let _ = hello.alpn_protocols().count();
            let _ = hello.extensions().count();
            let _ = hello.compression_methods();
            let _ = hello.session_id();
            let _ = hello.random();
        }
    }

    fn mutated_vector() -> impl Strategy<Value = Vec<u8>> {
        let vectors: Vec<Vec<u8>> = vectors().iter().map(|v| v.bytes.clone()).collect();
        (
            0..vectors.len(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            any::<prop::sample::Index>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(which, flips, cut, truncate, keep_header)| {
                let mut bytes = vectors[which].clone();
                for (at, xor) in flips {
                    let i = at.index(bytes.len());
                    // Mostly leave the record and handshake headers alone so mutations
                    // reach the body parser.
                    if keep_header && i < 9 {
                        continue;
                    }
                    bytes[i] ^= xor;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..20000)) {
            check_no_panic(&bytes);
        }

        #[test]
        fn arbitrary_bytes_behind_tls_header_never_panic(
            minor in 0u8..5,
            body in prop::collection::vec(any::<u8>(), 0..20000),
        ) {
            let mut bytes = vec![0x16, 0x03, minor];
            bytes.extend_from_slice(&((body.len().min(0xffff)) as u16).to_be_bytes());
            bytes.push(0x01);
            bytes.extend_from_slice(&body);
            check_no_panic(&bytes);
        }

        #[test]
        fn mutated_vectors_never_panic(bytes in mutated_vector()) {
            check_no_panic(&bytes);
            for cut in [1usize, 2, 5, 9, 60] {
                if cut < bytes.len() {
                    let split = split_records(&bytes, &[cut - 1, 0]);
                    check_no_panic(&split);
                }
            }
        }

        #[test]
        fn random_record_splits_agree(
            which in 0usize..157,
            cuts in prop::collection::vec(1usize..200, 1..6),
        ) {
            let vectors = vectors();
            let v = &vectors[which % vectors.len()];
            let want = ja4(&parse_client_hello(&v.bytes).unwrap());
            let mut sizes = cuts.clone();
            let total: usize = sizes.iter().sum();
            prop_assume!(total < v.bytes.len() - 5);
            sizes.push(0);
            let records = split_records(&v.bytes, &sizes);
            prop_assert_eq!(
                client_hello_progress(&records, MAX_CLIENT_HELLO_LEN),
                HelloProgress::Complete { len: records.len() }
            );
            prop_assert_eq!(ja4(&parse_client_hello(&records).unwrap()), want);
        }
    }
}
