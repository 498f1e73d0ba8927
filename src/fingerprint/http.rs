//! HTTP fingerprinting step (layer 7): adds the HTTP/1.x request-head read tap ([`H1Tap`]) and distill-guard's own HTTP fingerprint format ([`HttpFingerprint`]), shared with HTTP/2.
//!
//! # Why a tap
//!
//! hyper hands the service an `http::HeaderMap`, which loses the order and the
//! case of header names as the client sent them. Both are strong client
//! signals, so the proxy also passes every chunk of bytes hyper reads from the
//! socket to an [`H1Tap`], which parses request heads itself with `httparse`,
//! follows message framing across keep-alive (Content-Length and chunked
//! bodies, without buffering them) and queues one [`HttpFingerprint`] per
//! request head. The service pops one fingerprint per request, in order.
//!
//! # Fingerprint format (distill-guard HTTP fingerprint, version 1)
//!
//! This is distill-guard's own format; it is *not* JA4H. It is a fixed-width,
//! 32-character ASCII string of six `_`-separated fields:
//!
//! ```text
//! h1_PO_11_c0r0l1_n09_3f2a9c0d1b7e
//! │  │  │  │       │   └─ order hash: first 12 lowercase hex digits of
//! │  │  │  │       │      SHA-256 over the header names, exactly as received
//! │  │  │  │       │      (case kept), in received order, joined with ","
//! │  │  │  │       │      (no trailing comma; zero headers hash "")
//! │  │  │  │       └───── n + number of header fields, 2 decimal digits,
//! │  │  │  │              capped at 99 (repeated names count each time)
//! │  │  │  └───────────── presence flags, each 0/1: c = Cookie,
//! │  │  │                 r = Referer, l = Accept-Language (names compared
//! │  │  │                 ASCII case-insensitively)
//! │  │  └──────────────── protocol version: 10, 11 or 20
//! │  └─────────────────── method: its first two bytes, ASCII-uppercased;
//! │                       a byte that is not ASCII alphanumeric becomes `X`,
//! │                       a missing byte becomes `0` (GET→GE, POST→PO,
//! │                       PUT→PU, PATCH→PA, M-SEARCH→MX)
//! └────────────────────── protocol family: `h1` (HTTP/1.0, HTTP/1.1) or `h2`
//! ```
//!
//! For HTTP/2 the header names are the regular (non-pseudo) fields of the
//! request in wire order, as the HTTP/2 tap saw them in HPACK (see
//! `super::h2`), or, when that is not available, in `HeaderMap` iteration
//! order (which groups repeated names; use
//! `headers().iter().map(|(name, _)| name.as_str())` so repeats still count).
//! Pseudo-headers (`:method`, `:path`, ...) are never part of the list; their
//! order is in the Akamai-style HTTP/2 fingerprint instead.
//!
//! # Limits
//!
//! The tap never panics, never buffers bodies, keeps at most
//! `max_head_bytes` of one partial head, at most [`H1Tap::MAX_QUEUED`]
//! unpopped fingerprints, and disables itself for good (see
//! [`H1Tap::is_disabled`]) on anything it cannot follow: a head that is too
//! big or malformed, unparseable framing, a full queue, or a request after
//! which the bytes stop being HTTP/1 (CONNECT, `Upgrade`).

use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;

use sha2::{Digest, Sha256};

/// Number of hex digits of the order hash in an [`HttpFingerprint`].
const HASH_HEX_LEN: usize = 12;
/// Total length of an [`HttpFingerprint`] string.
const FINGERPRINT_LEN: usize = 20 + HASH_HEX_LEN;
/// Most header fields httparse is asked to parse in one head (hyper's default
/// limit is 100, so every head hyper accepts fits).
const MAX_HEADERS: usize = 128;
/// Most chunk-extension bytes in one chunked body (hyper's limit).
const MAX_CHUNK_EXT_BYTES: u64 = 16 * 1024;

/// HTTP protocol version of a fingerprinted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
}

impl HttpVersion {
    /// The two-digit version code used in the fingerprint: `10`, `11` or `20`.
    pub fn code(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "10",
            HttpVersion::Http11 => "11",
            HttpVersion::Http2 => "20",
        }
    }

    /// The protocol-family prefix used in the fingerprint: `h1` or `h2`.
    pub fn family(self) -> &'static str {
        match self {
            HttpVersion::Http10 | HttpVersion::Http11 => "h1",
            HttpVersion::Http2 => "h2",
        }
    }
}

/// A distill-guard HTTP fingerprint of one request (format in the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpFingerprint {
    text: String,
    version: HttpVersion,
    header_count: usize,
    cookie: bool,
    referer: bool,
    accept_language: bool,
}

impl HttpFingerprint {
    /// Builds a fingerprint from a method and the header names in the order
    /// they were received (pseudo-headers excluded).
    pub fn from_parts<I>(version: HttpVersion, method: impl AsRef<[u8]>, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut builder = HttpFingerprintBuilder::new(version, method);
        for name in names {
            builder.header_name(name);
        }
        builder.finish()
    }

    /// Builds the fingerprint of an HTTP/2 request (version `20`) from its
    /// method and its regular header names in received order.
    pub fn from_h2<I>(method: impl AsRef<[u8]>, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::from_parts(HttpVersion::Http2, method, names)
    }

    /// The whole fingerprint string, e.g. `h1_GE_11_c0r0l0_n03_1a2b3c4d5e6f`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The protocol version of the request.
    pub fn version(&self) -> HttpVersion {
        self.version
    }

    /// The two-character method code (e.g. `GE`, `PO`).
    pub fn method(&self) -> &str {
        self.text.get(3..5).unwrap_or("")
    }

    /// The number of header fields (not capped, unlike the `n` field).
    pub fn header_count(&self) -> usize {
        self.header_count
    }

    /// The 12-hex-digit hash of the header-name order.
    pub fn order_hash(&self) -> &str {
        self.text
            .get(FINGERPRINT_LEN - HASH_HEX_LEN..)
            .unwrap_or("")
    }

    /// Whether a `Cookie` header was present.
    pub fn has_cookie(&self) -> bool {
        self.cookie
    }

    /// Whether a `Referer` header was present.
    pub fn has_referer(&self) -> bool {
        self.referer
    }

    /// Whether an `Accept-Language` header was present.
    pub fn has_accept_language(&self) -> bool {
        self.accept_language
    }
}

impl fmt::Display for HttpFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for HttpFingerprint {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Incremental builder of an [`HttpFingerprint`]: feed header names one at a
/// time in received order, without allocating per header.
#[derive(Debug, Clone)]
pub struct HttpFingerprintBuilder {
    version: HttpVersion,
    method: [u8; 2],
    hasher: Sha256,
    count: usize,
    cookie: bool,
    referer: bool,
    accept_language: bool,
}

impl HttpFingerprintBuilder {
    /// Starts a fingerprint for a request with this version and method.
    pub fn new(version: HttpVersion, method: impl AsRef<[u8]>) -> Self {
        Self {
            version,
            method: method_code(method.as_ref()),
            hasher: Sha256::new(),
            count: 0,
            cookie: false,
            referer: false,
            accept_language: false,
        }
    }

    /// Adds the next header name, exactly as received.
    pub fn header_name(&mut self, name: impl AsRef<[u8]>) {
        let name = name.as_ref();
        if self.count > 0 {
            self.hasher.update(b",");
        }
        self.hasher.update(name);
        self.count = self.count.saturating_add(1);
        match name.len() {
            6 if name.eq_ignore_ascii_case(b"cookie") => self.cookie = true,
            7 if name.eq_ignore_ascii_case(b"referer") => self.referer = true,
            15 if name.eq_ignore_ascii_case(b"accept-language") => self.accept_language = true,
            _ => {}
        }
    }

    /// Finishes the fingerprint.
    pub fn finish(self) -> HttpFingerprint {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = self.hasher.finalize();
        let mut text = String::with_capacity(FINGERPRINT_LEN);
        text.push_str(self.version.family());
        text.push('_');
        text.push(char::from(self.method[0]));
        text.push(char::from(self.method[1]));
        text.push('_');
        text.push_str(self.version.code());
        text.push_str("_c");
        text.push(flag(self.cookie));
        text.push('r');
        text.push(flag(self.referer));
        text.push('l');
        text.push(flag(self.accept_language));
        text.push_str("_n");
        let shown = self.count.min(99);
        text.push(char::from(b'0' + (shown / 10) as u8));
        text.push(char::from(b'0' + (shown % 10) as u8));
        text.push('_');
        for byte in digest.iter().take(HASH_HEX_LEN / 2) {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        HttpFingerprint {
            text,
            version: self.version,
            header_count: self.count,
            cookie: self.cookie,
            referer: self.referer,
            accept_language: self.accept_language,
        }
    }
}

fn flag(on: bool) -> char {
    if on {
        '1'
    } else {
        '0'
    }
}

fn method_code(method: &[u8]) -> [u8; 2] {
    let mut out = [b'0'; 2];
    for (slot, &b) in out.iter_mut().zip(method) {
        *slot = if b.is_ascii_alphanumeric() {
            b.to_ascii_uppercase()
        } else {
            b'X'
        };
    }
    out
}

/// Read tap that fingerprints HTTP/1.x request heads on one connection.
///
/// Feed it every chunk hyper reads from the connection, in order; pop one
/// fingerprint per request hyper hands to the service.
#[derive(Debug)]
pub struct H1Tap {
    max_head: usize,
    state: State,
    /// Bytes of a partial head (never more than `max_head`).
    buf: Vec<u8>,
    /// Where the search for the end of the head in `buf` resumes.
    scan_from: usize,
    queue: VecDeque<HttpFingerprint>,
    /// The last head's shape and fingerprint (see [`LastHead`]).
    last: Option<LastHead>,
}

/// A connection's last request head: its shape (version, method and header
/// names exactly as received) and its fingerprint. A client sends the same
/// shape request after request, and hashing the names costs more than the
/// rest of the tap: a head of the same shape takes the same fingerprint.
#[derive(Debug)]
struct LastHead {
    /// The version's code, the method, a space, then each name and a comma
    /// (neither a method nor a name holds a space or a comma).
    shape: Vec<u8>,
    fingerprint: HttpFingerprint,
}

impl LastHead {
    /// The pieces of a head's shape, in order.
    fn pieces<'h>(
        version: HttpVersion,
        method: &'h str,
        headers: &'h [httparse::Header<'h>],
    ) -> impl Iterator<Item = &'h [u8]> {
        [version.code().as_bytes(), method.as_bytes(), b" "]
            .into_iter()
            .chain(headers.iter().flat_map(|h| [h.name.as_bytes(), b","]))
    }

    /// Whether a head made of `pieces` has this shape.
    fn same_shape<'p>(&self, pieces: impl Iterator<Item = &'p [u8]>) -> bool {
        let mut rest = &self.shape[..];
        for piece in pieces {
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Skipping a Content-Length body.
    Body { remaining: u64 },
    /// Skipping a chunked body.
    Chunked(ChunkedBody),
    /// Gave up; the rest of the connection is ignored.
    Disabled,
}

/// How the body after a parsed head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// The bytes after this head are not HTTP/1 any more (CONNECT, Upgrade).
    Leaves,
}

impl H1Tap {
    /// Most fingerprints kept waiting to be popped; when a further head
    /// arrives with the queue full, the tap disables itself rather than drop
    /// one (which would shift later fingerprints onto the wrong requests).
    pub const MAX_QUEUED: usize = 32;

    /// Creates a tap that buffers at most `max_head_bytes` of a partial
    /// request head (the proxy passes 16 KiB). A longer head disables it.
    pub fn new(max_head_bytes: usize) -> Self {
        Self {
            max_head: max_head_bytes,
            state: State::Head,
            buf: Vec::new(),
            scan_from: 0,
            queue: VecDeque::new(),
            last: None,
        }
    }

    /// Feeds the next bytes read from the client, in order. Does nothing once
    /// the tap is disabled.
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let used = match &mut self.state {
                State::Disabled => return,
                State::Head => self.feed_head(rest),
                State::Body { remaining } => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                    n
                }
                State::Chunked(body) => {
                    let (used, outcome) = body.advance(rest, self.max_head);
                    match outcome {
                        ChunkOutcome::More => {}
                        ChunkOutcome::Done => self.state = State::Head,
                        ChunkOutcome::Error => self.disable(),
                    }
                    used
                }
            };
            if used == 0 && !matches!(self.state, State::Disabled) {
                // Every step consumes input or disables; never spin.
                self.disable();
            }
            rest = rest.get(used..).unwrap_or(&[]);
        }
    }

    /// Takes the fingerprint of the oldest request head not yet popped.
    /// `None` means no head is known for the request (not seen yet, or the
    /// tap gave up): the caller should treat the fingerprint as unknown.
    pub fn pop(&mut self) -> Option<HttpFingerprint> {
        self.queue.pop_front()
    }

    /// Whether the tap gave up on this connection; feeding it further is
    /// pointless (fingerprints already queued can still be popped).
    pub fn is_disabled(&self) -> bool {
        matches!(self.state, State::Disabled)
    }

    fn disable(&mut self) {
        self.state = State::Disabled;
        self.buf = Vec::new();
        self.scan_from = 0;
    }

    /// Handles bytes while waiting for a head; returns how many were used.
    fn feed_head(&mut self, rest: &[u8]) -> usize {
        if self.buf.is_empty() {
            // Empty lines before a request line are skipped (as httparse does).
            let blank = rest
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                return blank;
            }
            // Fast path: the whole head is in this chunk, parse it in place.
            match find_head_end(rest, 0) {
                Ok(end) => {
                    if end > self.max_head {
                        self.disable();
                        return rest.len();
                    }
                    let parsed = rest.get(..end).and_then(|h| parse_head(h, &mut self.last));
                    self.on_head(parsed);
                    end
                }
                Err(next) => {
                    if rest.len() > self.max_head {
                        self.disable();
                    } else {
                        self.buf.extend_from_slice(rest);
                        self.scan_from = next;
                    }
                    rest.len()
                }
            }
        } else {
            let old = self.buf.len();
            let room = self.max_head.saturating_sub(old);
            if room == 0 {
                self.disable();
                return rest.len();
            }
            let take = room.min(rest.len());
            self.buf.extend_from_slice(rest.get(..take).unwrap_or(&[]));
            match find_head_end(&self.buf, self.scan_from) {
                Ok(end) => {
                    let buf = std::mem::take(&mut self.buf);
                    let parsed = buf.get(..end).and_then(|h| parse_head(h, &mut self.last));
                    self.buf = buf;
                    self.buf.clear();
                    self.scan_from = 0;
                    self.on_head(parsed);
                    end.saturating_sub(old)
                }
                Err(next) => {
                    self.scan_from = next;
                    take
                }
            }
        }
    }

    fn on_head(&mut self, parsed: Option<(HttpFingerprint, Framing)>) {
        let Some((fingerprint, framing)) = parsed else {
            self.disable();
            return;
        };
        if self.queue.len() >= Self::MAX_QUEUED {
            self.disable();
            return;
        }
        self.queue.push_back(fingerprint);
        self.state = match framing {
            Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Body { remaining: n },
            Framing::Chunked => State::Chunked(ChunkedBody::new()),
            Framing::Leaves => {
                self.disable();
                return;
            }
        };
    }
}

/// Finds the end of a request head (just past the empty line) in `bytes`,
/// searching from `from`. `Err(next)` says where to resume once more bytes
/// have been appended.
fn find_head_end(bytes: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(offset) = bytes
        .get(i..)
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
    {
        let nl = i + offset;
        match bytes.get(nl + 1) {
            None => return Err(nl),
            Some(b'\n') => return Ok(nl + 2),
            Some(b'\r') => match bytes.get(nl + 2) {
                None => return Err(nl),
                Some(b'\n') => return Ok(nl + 3),
                Some(_) => {}
            },
            Some(_) => {}
        }
        i = nl + 1;
    }
    Err(bytes.len().max(from))
}

/// Parses one complete head (ending with its empty line): its fingerprint and
/// how its body is framed. `None` when hyper would reject it or we cannot
/// follow it. A head shaped as `last` takes its fingerprint; any other
/// becomes `last`.
fn parse_head(bytes: &[u8], last: &mut Option<LastHead>) -> Option<(HttpFingerprint, Framing)> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return None,
    }
    let method = req.method?;
    let version = match req.version? {
        0 => HttpVersion::Http10,
        1 => HttpVersion::Http11,
        _ => return None,
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut upgrade = method == "CONNECT";
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if version == HttpVersion::Http10 {
                return None;
            }
            transfer_encoding = true;
            chunked = last_coding_is_chunked(header.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if transfer_encoding {
                continue;
            }
            let len = parse_content_length(header.value)?;
            if content_length.is_some_and(|prev| prev != len) {
                return None;
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("upgrade") && version == HttpVersion::Http11 {
            upgrade = true;
        }
    }
    let framing = if upgrade {
        Framing::Leaves
    } else if transfer_encoding {
        if !chunked {
            return None;
        }
        Framing::Chunked
    } else {
        Framing::Length(content_length.unwrap_or(0))
    };
    let headers = &*req.headers;
    let fingerprint = match last {
        Some(l) if l.same_shape(LastHead::pieces(version, method, headers)) => {
            l.fingerprint.clone()
        }
        _ => {
            let fingerprint =
                HttpFingerprint::from_parts(version, method, headers.iter().map(|h| h.name));
            // Sized first: collected byte by byte, the shape was
            // reallocated as it grew, on every connection's first head.
            let pieces = || LastHead::pieces(version, method, headers);
            let mut shape = Vec::with_capacity(pieces().map(<[u8]>::len).sum());
            pieces().for_each(|p| shape.extend_from_slice(p));
            *last = Some(LastHead {
                shape,
                fingerprint: fingerprint.clone(),
            });
            fingerprint
        }
    };
    Some((fingerprint, framing))
}

/// Whether the last transfer coding of a Transfer-Encoding value is chunked.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|coding| trim_ows(coding).eq_ignore_ascii_case(b"chunked"))
}

/// Parses a Content-Length value; a list must repeat one value.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let digits = trim_ows(part);
        if digits.is_empty() {
            return None;
        }
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        if result.is_some_and(|prev| prev != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

/// Where a chunked body decoder is (mirrors hyper's chunked decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

enum ChunkOutcome {
    More,
    Done,
    Error,
}

/// Counts its way through a chunked body without keeping any of it.
#[derive(Debug)]
struct ChunkedBody {
    at: Chunk,
    size: u64,
    ext_bytes: u64,
    trailer_bytes: usize,
    trailer_lines: usize,
}

impl ChunkedBody {
    fn new() -> Self {
        Self {
            at: Chunk::Start,
            size: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            trailer_lines: 0,
        }
    }

    /// Consumes bytes of the body; returns how many and whether it ended.
    fn advance(&mut self, data: &[u8], max_trailer_bytes: usize) -> (usize, ChunkOutcome) {
        let mut i = 0;
        while i < data.len() {
            if self.at == Chunk::Data {
                let left = data.len() - i;
                let n = usize::try_from(self.size).unwrap_or(usize::MAX).min(left);
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.at = Chunk::DataCr;
                }
                continue;
            }
            let Some(&b) = data.get(i) else {
                break;
            };
            i += 1;
            let next = match self.at {
                Chunk::Start => hex_digit(b).map(|v| {
                    self.size = v;
                    Chunk::Size
                }),
                Chunk::Size => match hex_digit(b) {
                    Some(v) => self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(v))
                        .map(|s| {
                            self.size = s;
                            Chunk::Size
                        }),
                    None => match b {
                        b'\t' | b' ' => Some(Chunk::SizeLws),
                        b';' => Some(Chunk::Extension),
                        b'\r' => Some(Chunk::SizeLf),
                        _ => None,
                    },
                },
                Chunk::SizeLws => match b {
                    b'\t' | b' ' => Some(Chunk::SizeLws),
                    b';' => Some(Chunk::Extension),
                    b'\r' => Some(Chunk::SizeLf),
                    _ => None,
                },
                Chunk::Extension => match b {
                    b'\r' => Some(Chunk::SizeLf),
                    b'\n' => None,
                    _ => {
                        self.ext_bytes += 1;
                        (self.ext_bytes < MAX_CHUNK_EXT_BYTES).then_some(Chunk::Extension)
                    }
                },
                Chunk::SizeLf => match b {
                    b'\n' if self.size == 0 => Some(Chunk::EndCr),
                    b'\n' => Some(Chunk::Data),
                    _ => None,
                },
                // Handled above; unreachable, but harmless.
                Chunk::Data => Some(Chunk::Data),
                Chunk::DataCr => (b == b'\r').then_some(Chunk::DataLf),
                Chunk::DataLf => (b == b'\n').then_some(Chunk::Start),
                Chunk::EndCr => {
                    if b == b'\r' {
                        Some(Chunk::EndLf)
                    } else {
                        self.trailer_bytes += 1;
                        Some(Chunk::Trailer)
                    }
                }
                Chunk::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > max_trailer_bytes {
                        None
                    } else if b == b'\r' {
                        Some(Chunk::TrailerLf)
                    } else {
                        Some(Chunk::Trailer)
                    }
                }
                Chunk::TrailerLf => {
                    self.trailer_lines += 1;
                    (b == b'\n' && self.trailer_lines <= MAX_HEADERS).then_some(Chunk::EndCr)
                }
                Chunk::EndLf => {
                    if b == b'\n' {
                        return (i, ChunkOutcome::Done);
                    }
                    None
                }
            };
            match next {
                Some(at) => self.at = at,
                None => return (i, ChunkOutcome::Error),
            }
        }
        (i, ChunkOutcome::More)
    }
}

fn hex_digit(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CURL: &[u8] =
        b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

    const CHROME: &[u8] = b"GET /index.html HTTP/1.1\r\n\
Host: example.com\r\n\
Connection: keep-alive\r\n\
sec-ch-ua: \"Chromium\";v=\"124\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n\
Sec-Fetch-Site: none\r\n\
Sec-Fetch-Mode: navigate\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: a=b\r\n\r\n";

    fn sha_prefix(s: &str) -> String {
        let digest = Sha256::digest(s.as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    fn fingerprints(chunks: &[&[u8]]) -> (Vec<String>, bool) {
        let mut tap = H1Tap::new(16 * 1024);
        let mut out = Vec::new();
        for chunk in chunks {
            tap.feed(chunk);
            while let Some(fp) = tap.pop() {
                out.push(fp.as_str().to_owned());
            }
        }
        (out, tap.is_disabled())
    }

    fn whole_and_bytewise(stream: &[u8]) -> Vec<String> {
        let (whole, whole_disabled) = fingerprints(&[stream]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (bytewise, bytewise_disabled) = fingerprints(&bytes);
        assert_eq!(whole, bytewise);
        assert_eq!(whole_disabled, bytewise_disabled);
        assert!(!whole_disabled);
        whole
    }

    #[test]
    fn curl_head_has_expected_fingerprint() {
        let (fps, disabled) = fingerprints(&[CURL]);
        assert!(!disabled);
        let expected = format!(
            "h1_GE_11_c0r0l0_n03_{}",
            sha_prefix("Host,User-Agent,Accept")
        );
        assert_eq!(fps, vec![expected]);
    }

    #[test]
    fn browser_head_differs_and_is_stable() {
        let (a, _) = fingerprints(&[CHROME]);
        let (b, _) = fingerprints(&[CHROME]);
        let (c, _) = fingerprints(&[CURL]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut tap = H1Tap::new(16 * 1024);
        tap.feed(CHROME);
        let Some(fp) = tap.pop() else {
            panic!("no fingerprint")
        };
        assert_eq!(fp.method(), "GE");
        assert_eq!(fp.version(), HttpVersion::Http11);
        assert_eq!(fp.header_count(), 13);
        assert!(fp.has_cookie() && fp.has_accept_language() && !fp.has_referer());
        assert!(fp.as_str().starts_with("h1_GE_11_c1r0l1_n13_"));
        assert_eq!(fp.as_str().len(), FINGERPRINT_LEN);
        assert_eq!(fp.order_hash().len(), HASH_HEX_LEN);
        assert_eq!(fp.to_string(), fp.as_str());
    }

    #[test]
    fn a_head_of_the_last_shape_takes_its_fingerprint_and_any_change_is_seen() {
        // Each head alone on a fresh tap gives the reference fingerprint.
        let heads: [&[u8]; 9] = [
            CURL,
            CURL,
            b"GET / HTTP/1.1\r\nhost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nUser-Agent: curl/8.5.0\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nCookie: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\n\r\n",
            CURL,
        ];
        let alone: Vec<String> = heads
            .iter()
            .map(|h| fingerprints(&[h]).0[0].clone())
            .collect();
        let on_one_connection = whole_and_bytewise(&heads.concat());
        assert_eq!(on_one_connection, alone);
        assert_eq!(alone[0], alone[1]);
        assert_eq!(alone[0], alone[8]);
        for (i, fp) in alone.iter().enumerate().skip(2).take(6) {
            assert_ne!(fp, &alone[0], "head {i} differs from curl's in shape");
        }
    }

    #[test]
    fn case_and_order_change_the_hash() {
        let base = HttpFingerprint::from_parts(HttpVersion::Http11, "GET", ["Host", "Accept"]);
        let lower = HttpFingerprint::from_parts(HttpVersion::Http11, "GET", ["host", "Accept"]);
        let swapped = HttpFingerprint::from_parts(HttpVersion::Http11, "GET", ["Accept", "Host"]);
        assert_ne!(base.order_hash(), lower.order_hash());
        assert_ne!(base.order_hash(), swapped.order_hash());
        assert_ne!(lower.order_hash(), swapped.order_hash());
        // Same through the tap.
        let (a, _) = fingerprints(&[b"GET / HTTP/1.1\r\nHost: x\r\nAccept: y\r\n\r\n"]);
        let (b, _) = fingerprints(&[b"GET / HTTP/1.1\r\nhost: x\r\nAccept: y\r\n\r\n"]);
        assert_eq!(a, vec![base.as_str().to_owned()]);
        assert_eq!(b, vec![lower.as_str().to_owned()]);
    }

    #[test]
    fn method_version_and_flags() {
        let fp = HttpFingerprint::from_parts(
            HttpVersion::Http10,
            "post",
            ["referer", "COOKIE", "accept-LANGUAGE"],
        );
        assert!(fp.as_str().starts_with("h1_PO_10_c1r1l1_n03_"));
        let fp = HttpFingerprint::from_h2("M-SEARCH", Vec::<&str>::new());
        assert_eq!(
            fp.as_str(),
            format!("h2_MX_20_c0r0l0_n00_{}", sha_prefix(""))
        );
        let fp = HttpFingerprint::from_parts(HttpVersion::Http11, "X", ["a"; 150]);
        assert!(fp.as_str().starts_with("h1_X0_11_c0r0l0_n99_"));
        assert_eq!(fp.header_count(), 150);
    }

    #[test]
    fn keep_alive_content_length_bodies() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
PUT /b HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5, 5\r\n\r\nGET /\
GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let fps = whole_and_bytewise(stream);
        assert_eq!(fps.len(), 3);
        assert!(fps[0].starts_with("h1_PO_11_c0r0l0_n02_"));
        assert!(fps[1].starts_with("h1_PU_11_c0r0l0_n03_"));
        assert!(fps[2].starts_with("h1_GE_11_c0r0l0_n01_"));
    }

    #[test]
    fn keep_alive_chunked_with_extensions_and_trailers() {
        let stream =
            b"\r\nPOST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
5;name=value;other\r\nGET /\r\n\
A \t;ext\r\n0123456789\r\n\
0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n\
\r\nGET /next HTTP/1.1\r\nHost: x\r\nReferer: http://a/\r\n\r\n\
POST /empty HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
DELETE /z HTTP/1.0\r\n\r\n";
        let fps = whole_and_bytewise(stream);
        assert_eq!(fps.len(), 4, "{fps:?}");
        assert!(fps[0].starts_with("h1_PO_11_c0r0l0_n02_"));
        assert!(fps[1].starts_with("h1_GE_11_c0r1l0_n02_"));
        assert!(fps[2].starts_with("h1_PO_11_c0r0l0_n01_"));
        assert!(fps[3].starts_with("h1_DE_10_c0r0l0_n00_"));
    }

    #[test]
    fn split_boundaries_all_give_same_result() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let (expected, _) = fingerprints(&[stream]);
        assert_eq!(expected.len(), 3);
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let (got, disabled) = fingerprints(&[&stream[..a], &stream[a..b], &stream[b..]]);
                assert!(!disabled);
                assert_eq!(got, expected, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn oversized_head_disables() {
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.extend(vec![b'a'; 200]);
        head.extend_from_slice(b"\r\n\r\n");
        // Whole.
        let mut tap = H1Tap::new(100);
        tap.feed(&head);
        assert!(tap.is_disabled());
        assert!(tap.pop().is_none());
        // Byte by byte.
        let mut tap = H1Tap::new(100);
        for b in &head {
            tap.feed(std::slice::from_ref(b));
            assert!(tap.buf.len() <= 100);
        }
        assert!(tap.is_disabled());
        assert!(tap.pop().is_none());
        assert_eq!(tap.buf.capacity(), 0);
        // Further input is ignored.
        tap.feed(CURL);
        assert!(tap.pop().is_none());
    }

    #[test]
    fn head_exactly_at_limit_is_accepted() {
        let mut tap = H1Tap::new(CURL.len());
        for b in CURL {
            tap.feed(std::slice::from_ref(b));
        }
        assert!(!tap.is_disabled());
        assert!(tap.pop().is_some());
        let mut tap = H1Tap::new(CURL.len() - 1);
        tap.feed(CURL);
        assert!(tap.is_disabled());
    }

    #[test]
    fn bad_framing_disables_after_queueing_earlier_heads() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"GARBAGE\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let mut tap = H1Tap::new(16 * 1024);
            tap.feed(CURL);
            tap.feed(bad);
            tap.feed(CURL);
            assert!(tap.is_disabled(), "{:?}", String::from_utf8_lossy(bad));
            assert!(tap.pop().is_some());
            // A head whose framing is broken may itself still be queued, but
            // nothing after it.
            let _ = tap.pop();
            assert!(tap.pop().is_none());
        }
    }

    #[test]
    fn connect_and_upgrade_stop_the_tap() {
        let mut tap = H1Tap::new(1024);
        tap.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        tap.feed(CURL);
        assert!(tap.is_disabled());
        assert!(tap.pop().is_some_and(|fp| fp.method() == "CO"));
        assert!(tap.pop().is_none());
        let mut tap = H1Tap::new(1024);
        tap.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(tap.is_disabled());
        assert!(tap.pop().is_some());
    }

    #[test]
    fn pipelining_queue_is_bounded() {
        let mut tap = H1Tap::new(1024);
        for _ in 0..H1Tap::MAX_QUEUED + 8 {
            tap.feed(CURL);
        }
        assert!(tap.is_disabled());
        assert_eq!(tap.queue.len(), H1Tap::MAX_QUEUED);
        // Popping keeps up: unbounded keep-alive works.
        let mut tap = H1Tap::new(1024);
        for _ in 0..100 {
            tap.feed(CURL);
            assert!(tap.pop().is_some());
        }
        assert!(!tap.is_disabled());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
            max in 0usize..512,
        ) {
            let mut tap = H1Tap::new(max);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
                tap.feed(&data[start..cut]);
                start = cut;
                prop_assert!(tap.buf.len() <= max);
                prop_assert!(tap.queue.len() <= H1Tap::MAX_QUEUED);
            }
            let mut whole = H1Tap::new(max);
            whole.feed(&data);
            prop_assert_eq!(whole.is_disabled(), tap.is_disabled());
            prop_assert_eq!(&whole.queue, &tap.queue);
        }

        #[test]
        fn http_like_streams_chunk_invariant(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
                    Just(&b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"[..]),
                    Just(&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;e\r\nab\r\n0\r\nT: v\r\n\r\n"[..]),
                    Just(&b"\r\n"[..]),
                    Just(&b"Cookie: 1\r\n"[..]),
                    Just(&b"\r\n\r\n0\r\n"[..]),
                ],
                0..12,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            let data: Vec<u8> = parts.concat();
            let mut whole = H1Tap::new(256);
            whole.feed(&data);
            let mut split = H1Tap::new(256);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
                split.feed(&data[start..cut]);
                start = cut;
            }
            prop_assert_eq!(whole.is_disabled(), split.is_disabled());
            prop_assert_eq!(&whole.queue, &split.queue);
        }
    }
}
