//! HTTP fingerprinting step (layer 7, HTTP/2): adds the HTTP/2 connection-start tap ([`H2Tap`]) and the Akamai-style HTTP/2 fingerprint ([`H2Fingerprint`]), with a minimal HPACK decoder (static table, per-block dynamic table, RFC 7541 Huffman).
//!
//! # What the tap reads
//!
//! The proxy feeds [`H2Tap::feed`] the decrypted bytes the client sends,
//! from the connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) on, split
//! at any boundary. The tap follows frames until the end of the first
//! request's header block and records:
//!
//! * the client's first SETTINGS frame (which must directly follow the
//!   preface): `id:value` pairs in wire order;
//! * the first WINDOW_UPDATE on stream 0 before the first HEADERS
//!   (increment, `0` if none);
//! * every PRIORITY frame before the first HEADERS;
//! * the first HEADERS frame: its PRIORITY-flag fields, and its header block,
//!   joined with the CONTINUATION frames that follow it when END_HEADERS is
//!   not set. The block is decoded with a minimal HPACK decoder (static table,
//!   a dynamic table that starts empty and tracks insertions made within the
//!   block, dynamic table size updates, Huffman strings) to get the
//!   pseudo-header order, the `:method` value and the regular header names in
//!   wire order.
//!
//! It then stops ([`H2Tap::is_done`]), so the proxy can stop feeding it.
//!
//! # Fingerprint format (Akamai)
//!
//! [`H2Fingerprint::akamai`] follows the Akamai HTTP/2 fingerprint
//! (Shuster & Segal, Black Hat EU 2017): `SETTINGS|WINDOW_UPDATE|PRIORITY|PSEUDO_HEADER_ORDER`,
//! e.g. `1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p`:
//!
//! * SETTINGS: `id:value` joined with `;` (empty if the frame was empty);
//! * WINDOW_UPDATE: decimal increment, `0` if none;
//! * PRIORITY: `stream:exclusive:depends_on:weight` joined with `,`, where
//!   exclusive is `0`/`1` and weight is the effective weight 1–256 (wire
//!   octet + 1, as Firefox's `3:0:0:201` shows); `0` if none;
//! * pseudo-header order: `m` `:method`, `a` `:authority`, `s` `:scheme`,
//!   `p` `:path`, joined with `,`; other pseudo-headers (e.g. `:protocol`)
//!   are left out.
//!
//! The PRIORITY fields of the HEADERS frame itself are not part of the
//! string; they are in [`H2Fingerprint::headers_priority`]. The regular
//! header names feed [`H2Fingerprint::http_fingerprint`], the distill-guard
//! HTTP fingerprint (see `super::http`) of the connection's first request.
//!
//! # Limits and failure
//!
//! The tap never panics and keeps bounded memory: it buffers at most
//! [`H2Tap::MAX_FRAME_BUFFER`] bytes of one frame's payload and as much of
//! the header block. Only a prefix of a larger HEADERS frame or block is kept
//! and decoded (pseudo-headers come first, so the order survives;
//! [`H2Fingerprint::header_block_complete`] is then `false`), as when the
//! HPACK decoder meets something it cannot decode (it stops there). A bad
//! preface, a first frame that is not SETTINGS, a malformed SETTINGS /
//! WINDOW_UPDATE / PRIORITY / HEADERS / CONTINUATION frame, a SETTINGS frame
//! with more than 64 entries, more than 64 PRIORITY frames or 256 frames
//! before the first HEADERS end the tap without a result.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;

use super::http::HttpFingerprint;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PRIORITY: u8 = 0x2;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_WINDOW_UPDATE: u8 = 0x8;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Most SETTINGS entries accepted in the client's first SETTINGS frame.
const MAX_SETTINGS: usize = 64;
/// Most PRIORITY frames accepted before the first HEADERS.
const MAX_PRIORITY_FRAMES: usize = 64;
/// Most frames accepted before the first HEADERS.
const MAX_FRAMES_BEFORE_HEADERS: usize = 256;
/// Most regular header names recorded from the first header block.
const MAX_HEADER_NAMES: usize = 256;
/// Most pseudo-headers recorded in the order.
const MAX_PSEUDO: usize = 16;
/// Longest `:method` value kept.
const MAX_METHOD_LEN: usize = 64;
/// HPACK dynamic table size a client may use before it has seen our SETTINGS
/// (the server never advertises more, so a larger size update is a
/// compression error, RFC 7541 §6.3).
const INITIAL_TABLE_SIZE: usize = 4096;
/// Names and values one header block may decode to, in bytes: indexed
/// references to a large entry cannot amplify a block past this.
const MAX_DECODED_BYTES: usize = 64 * 1024;

/// Priority information, from a PRIORITY frame or a HEADERS frame with the
/// PRIORITY flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct H2Priority {
    /// The stream the priority is about.
    pub stream_id: u32,
    /// The exclusive flag.
    pub exclusive: bool,
    /// The stream this one depends on.
    pub depends_on: u32,
    /// The effective weight, 1–256 (the wire octet plus one).
    pub weight: u16,
}

impl H2Priority {
    /// Parses the 5-byte priority fields (E + stream dependency, weight).
    fn parse(stream_id: u32, bytes: &[u8]) -> Option<Self> {
        let [a, b, c, d, w] = *bytes.get(..5)? else {
            return None;
        };
        let dep = u32::from_be_bytes([a, b, c, d]);
        Some(Self {
            stream_id,
            exclusive: dep & 0x8000_0000 != 0,
            depends_on: dep & 0x7fff_ffff,
            weight: u16::from(w) + 1,
        })
    }
}

impl fmt::Display for H2Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.stream_id,
            u8::from(self.exclusive),
            self.depends_on,
            self.weight
        )
    }
}

/// The HTTP/2 fingerprint of one connection (format in the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Fingerprint {
    akamai: String,
    settings: Vec<(u16, u32)>,
    window_update: u32,
    priorities: Vec<H2Priority>,
    headers_priority: Option<H2Priority>,
    pseudo_header_order: String,
    method: Option<String>,
    header_names: Vec<String>,
    header_block_complete: bool,
    http: Option<HttpFingerprint>,
}

impl H2Fingerprint {
    /// An Akamai-format string computed elsewhere (a CDN's header), if it
    /// is one: SETTINGS as `id:value` joined by `;` (or `,`), a decimal
    /// WINDOW_UPDATE, PRIORITY as `0` or `stream:exclusive:depends_on:weight`
    /// joined by `,`, and the pseudo-header order (`m`, `a`, `s`, `p`, each
    /// at most once, with or without commas). The limits of the tap apply
    /// (64 settings, 64 priorities). The result carries the canonical string
    /// (as [`H2Tap`] writes it), so the same client compares equal whether
    /// its fingerprint was observed here or by a front; it has no header
    /// names or HTTP fingerprint (a front does not send them).
    pub fn from_akamai(s: &str) -> Option<H2Fingerprint> {
        if s.len() > 2048 {
            return None;
        }
        let mut parts = s.split('|');
        let (Some(set), Some(wu), Some(prio), Some(pseudo), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let mut settings = Vec::new();
        if !set.is_empty() {
            for pair in set.split([';', ',']) {
                let (id, value) = pair.split_once(':')?;
                settings.push((decimal(id)?, decimal(value)?));
                if settings.len() > MAX_SETTINGS {
                    return None;
                }
            }
        }
        let window_update: u32 = decimal(wu)?;
        let mut priorities = Vec::new();
        if prio != "0" {
            for p in prio.split(',') {
                let mut f = p.split(':');
                let (Some(stream), Some(excl), Some(dep), Some(weight), None) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    return None;
                };
                let weight: u16 = decimal(weight)?;
                if !(1..=256).contains(&weight) {
                    return None;
                }
                priorities.push(H2Priority {
                    stream_id: decimal(stream)?,
                    exclusive: match excl {
                        "0" => false,
                        "1" => true,
                        _ => return None,
                    },
                    depends_on: decimal(dep)?,
                    weight,
                });
                if priorities.len() > MAX_PRIORITY_FRAMES {
                    return None;
                }
            }
        }
        let mut order: Vec<char> = Vec::with_capacity(4);
        for c in pseudo.chars().filter(|c| *c != ',') {
            if !matches!(c, 'm' | 'a' | 's' | 'p') || order.contains(&c) {
                return None;
            }
            order.push(c);
        }
        let pseudo_header_order = order
            .iter()
            .map(char::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let akamai = akamai_string(&settings, window_update, &priorities, &pseudo_header_order);
        Some(H2Fingerprint {
            akamai,
            settings,
            window_update,
            priorities,
            headers_priority: None,
            pseudo_header_order,
            method: None,
            header_names: Vec::new(),
            header_block_complete: false,
            http: None,
        })
    }

    /// The Akamai-format string `SETTINGS|WINDOW_UPDATE|PRIORITY|PSEUDO_HEADER_ORDER`.
    pub fn akamai(&self) -> &str {
        &self.akamai
    }

    /// The client's first SETTINGS, as `(identifier, value)` in wire order.
    pub fn settings(&self) -> &[(u16, u32)] {
        &self.settings
    }

    /// The first connection-level WINDOW_UPDATE increment, 0 if none.
    pub fn window_update(&self) -> u32 {
        self.window_update
    }

    /// The PRIORITY frames sent before the first HEADERS, in order.
    pub fn priorities(&self) -> &[H2Priority] {
        &self.priorities
    }

    /// The priority fields of the first HEADERS frame, if it had the flag.
    pub fn headers_priority(&self) -> Option<H2Priority> {
        self.headers_priority
    }

    /// The pseudo-header order, e.g. `m,a,s,p`.
    pub fn pseudo_header_order(&self) -> &str {
        &self.pseudo_header_order
    }

    /// The `:method` of the first request, if it was decoded (at most 64
    /// bytes, lossily converted to UTF-8).
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The regular (non-pseudo) header names of the first request, in wire
    /// order (at most 256).
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// Whether the whole first header block was buffered and decoded; when
    /// `false`, the fields above come from the part before the cut.
    pub fn header_block_complete(&self) -> bool {
        self.header_block_complete
    }

    /// The distill-guard HTTP fingerprint (version `20`) of the connection's
    /// first request, from its method and wire-order header names; `None` if
    /// `:method` was not decoded.
    pub fn http_fingerprint(&self) -> Option<&HttpFingerprint> {
        self.http.as_ref()
    }
}

/// The Akamai-format string of the parts (format in the module doc).
fn akamai_string(
    settings: &[(u16, u32)],
    window_update: u32,
    priorities: &[H2Priority],
    pseudo_header_order: &str,
) -> String {
    let mut akamai = String::with_capacity(96);
    for (i, (id, value)) in settings.iter().enumerate() {
        if i > 0 {
            akamai.push(';');
        }
        let _ = write!(akamai, "{id}:{value}");
    }
    let _ = write!(akamai, "|{window_update}|");
    if priorities.is_empty() {
        akamai.push('0');
    }
    for (i, p) in priorities.iter().enumerate() {
        if i > 0 {
            akamai.push(',');
        }
        let _ = write!(akamai, "{p}");
    }
    akamai.push('|');
    akamai.push_str(pseudo_header_order);
    akamai
}

/// A plain decimal number (digits only: no sign, no spaces).
fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for H2Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.akamai)
    }
}

/// Tap on the client side of an HTTP/2 connection that builds its
/// [`H2Fingerprint`] from the start of the connection.
#[derive(Debug)]
pub struct H2Tap {
    phase: Phase,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    frame: FrameHead,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// Whether the current frame's payload is kept.
    buffering: bool,
    payload: Vec<u8>,
    frames_seen: usize,
    settings: Option<Vec<(u16, u32)>>,
    window_update: Option<u32>,
    priorities: Vec<H2Priority>,
    headers_priority: Option<H2Priority>,
    block: Vec<u8>,
    block_truncated: bool,
    /// Stream of a HEADERS frame whose block continues in CONTINUATION.
    continuation_stream: Option<u32>,
    result: Option<H2Fingerprint>,
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// This many preface bytes matched so far.
    Preface(usize),
    FrameHeader,
    Payload,
    Done,
}

#[derive(Debug, Clone, Copy, Default)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Default for H2Tap {
    fn default() -> Self {
        Self::new()
    }
}

impl H2Tap {
    /// Most bytes of one frame payload, and of the first header block, that
    /// the tap buffers (the HTTP/2 default maximum frame size).
    pub const MAX_FRAME_BUFFER: usize = 16 * 1024;

    /// Creates a tap expecting the client connection preface.
    pub fn new() -> Self {
        Self {
            phase: Phase::Preface(0),
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            frame: FrameHead::default(),
            remaining: 0,
            buffering: false,
            payload: Vec::new(),
            frames_seen: 0,
            settings: None,
            window_update: None,
            priorities: Vec::new(),
            headers_priority: None,
            block: Vec::new(),
            block_truncated: false,
            continuation_stream: None,
            result: None,
            failed: false,
        }
    }

    /// Feeds the next bytes the client sent, in order. Does nothing once the
    /// tap is done.
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let used = match self.phase {
                Phase::Done => return,
                Phase::Preface(matched) => {
                    let want = PREFACE.get(matched..).unwrap_or(&[]);
                    let n = want.len().min(rest.len());
                    if rest.get(..n) != want.get(..n) {
                        self.fail();
                        return;
                    }
                    self.phase = if matched + n >= PREFACE.len() {
                        Phase::FrameHeader
                    } else {
                        Phase::Preface(matched + n)
                    };
                    n
                }
                Phase::FrameHeader => {
                    let n = (FRAME_HEADER_LEN - self.header_len).min(rest.len());
                    if let (Some(dst), Some(src)) = (
                        self.header.get_mut(self.header_len..self.header_len + n),
                        rest.get(..n),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    self.header_len += n;
                    if self.header_len == FRAME_HEADER_LEN {
                        self.header_len = 0;
                        self.start_frame();
                    }
                    n
                }
                Phase::Payload => {
                    let n = self.remaining.min(rest.len());
                    if self.buffering {
                        let room = Self::MAX_FRAME_BUFFER.saturating_sub(self.payload.len());
                        self.payload
                            .extend_from_slice(rest.get(..n.min(room)).unwrap_or(&[]));
                    }
                    self.remaining -= n;
                    if self.remaining == 0 {
                        self.end_frame();
                    }
                    n
                }
            };
            if used == 0 {
                // Cannot happen; never spin.
                self.fail();
                return;
            }
            rest = rest.get(used..).unwrap_or(&[]);
        }
    }

    /// Whether the tap has finished (fingerprint ready, or gave up); feeding
    /// it further is pointless.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the tap gave up on malformed or unsupported input.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The fingerprint, once the first header block has been read.
    pub fn result(&self) -> Option<&H2Fingerprint> {
        self.result.as_ref()
    }

    /// Takes the fingerprint out of the tap.
    pub fn take(&mut self) -> Option<H2Fingerprint> {
        self.result.take()
    }

    fn fail(&mut self) {
        self.failed = true;
        self.result = None;
        self.finish_up();
    }

    /// Enters the final phase and frees the buffers.
    fn finish_up(&mut self) {
        self.phase = Phase::Done;
        self.payload = Vec::new();
        self.block = Vec::new();
        self.priorities = Vec::new();
        self.settings = None;
    }

    /// Checks a complete frame header and sets up reading its payload.
    fn start_frame(&mut self) {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = self.header;
        let frame = FrameHead {
            len: (usize::from(l0) << 16) | (usize::from(l1) << 8) | usize::from(l2),
            kind,
            flags,
            stream: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        };
        self.frame = frame;
        self.frames_seen += 1;
        let ok = self.frames_seen <= MAX_FRAMES_BEFORE_HEADERS && self.check_frame(frame);
        if !ok {
            self.fail();
            return;
        }
        self.buffering = matches!(
            frame.kind,
            TYPE_HEADERS | TYPE_CONTINUATION | TYPE_PRIORITY | TYPE_WINDOW_UPDATE
        ) || (frame.kind == TYPE_SETTINGS && self.settings.is_none());
        self.payload.clear();
        self.remaining = frame.len;
        if frame.len == 0 {
            self.end_frame();
        } else {
            self.phase = Phase::Payload;
        }
    }

    /// Frame-header checks; `false` means malformed (or too big to follow).
    fn check_frame(&self, f: FrameHead) -> bool {
        if let Some(stream) = self.continuation_stream {
            return f.kind == TYPE_CONTINUATION && f.stream == stream;
        }
        if self.settings.is_none() && !(f.kind == TYPE_SETTINGS && f.flags & FLAG_ACK == 0) {
            // The preface must be followed by a (non-ACK) SETTINGS frame.
            return false;
        }
        match f.kind {
            TYPE_SETTINGS => {
                f.stream == 0
                    && if f.flags & FLAG_ACK != 0 {
                        f.len == 0
                    } else {
                        f.len.is_multiple_of(6)
                            && (self.settings.is_some() || f.len <= MAX_SETTINGS * 6)
                    }
            }
            TYPE_WINDOW_UPDATE => f.len == 4,
            TYPE_PRIORITY => f.len == 5 && f.stream != 0,
            TYPE_HEADERS => f.stream != 0,
            // A CONTINUATION not announced by a HEADERS frame.
            TYPE_CONTINUATION => false,
            _ => true,
        }
    }

    /// Handles a frame whose payload has been read (buffered if wanted).
    fn end_frame(&mut self) {
        self.phase = Phase::FrameHeader;
        let f = self.frame;
        match f.kind {
            TYPE_SETTINGS if f.flags & FLAG_ACK == 0 && self.settings.is_none() => {
                let settings = self
                    .payload
                    .chunks_exact(6)
                    .filter_map(|e| match *e {
                        [i0, i1, v0, v1, v2, v3] => Some((
                            u16::from_be_bytes([i0, i1]),
                            u32::from_be_bytes([v0, v1, v2, v3]),
                        )),
                        _ => None,
                    })
                    .collect();
                self.settings = Some(settings);
            }
            TYPE_WINDOW_UPDATE if f.stream == 0 && self.window_update.is_none() => {
                if let Some(&[a, b, c, d]) = self.payload.get(..4) {
                    self.window_update = Some(u32::from_be_bytes([a, b, c, d]) & 0x7fff_ffff);
                }
            }
            TYPE_PRIORITY => match H2Priority::parse(f.stream, &self.payload) {
                Some(p) if self.priorities.len() < MAX_PRIORITY_FRAMES => self.priorities.push(p),
                _ => self.fail(),
            },
            TYPE_HEADERS => self.headers_frame(f),
            TYPE_CONTINUATION => {
                let payload = std::mem::take(&mut self.payload);
                let whole = payload.len() == f.len;
                self.append_block(&payload, whole);
                self.payload = payload;
                self.after_block_part(f);
            }
            _ => {}
        }
    }

    fn headers_frame(&mut self, f: FrameHead) {
        let payload = std::mem::take(&mut self.payload);
        let mut start = 0usize;
        let mut end = f.len;
        if f.flags & FLAG_PADDED != 0 {
            let Some(&pad) = payload.first() else {
                self.fail();
                return;
            };
            start = 1;
            end = match end.checked_sub(usize::from(pad)) {
                Some(e) => e,
                None => {
                    self.fail();
                    return;
                }
            };
        }
        if f.flags & FLAG_PRIORITY != 0 {
            self.headers_priority = payload
                .get(start..)
                .and_then(|p| H2Priority::parse(f.stream, p));
            if self.headers_priority.is_none() {
                self.fail();
                return;
            }
            start += 5;
        }
        if start > end {
            self.fail();
            return;
        }
        let kept_end = end.min(payload.len());
        let fragment = payload.get(start..kept_end).unwrap_or(&[]);
        self.append_block(fragment, kept_end == end);
        self.payload = payload;
        self.after_block_part(f);
    }

    fn append_block(&mut self, fragment: &[u8], whole: bool) {
        let room = Self::MAX_FRAME_BUFFER.saturating_sub(self.block.len());
        if fragment.len() > room || !whole {
            self.block_truncated = true;
        }
        self.block
            .extend_from_slice(fragment.get(..room.min(fragment.len())).unwrap_or(&[]));
    }

    fn after_block_part(&mut self, f: FrameHead) {
        if self.phase == Phase::Done {
            return;
        }
        if f.flags & FLAG_END_HEADERS != 0 || self.block_truncated {
            self.finish();
        } else {
            self.continuation_stream = Some(f.stream);
        }
    }

    /// Decodes the header block and builds the fingerprint.
    fn finish(&mut self) {
        let mut fields = RequestFields::default();
        let mut decoder = HpackDecoder::new(INITIAL_TABLE_SIZE);
        let decoded = decoder.decode(&self.block, &mut |name, value| fields.field(name, value));
        let settings = self.settings.take().unwrap_or_default();
        let priorities = std::mem::take(&mut self.priorities);
        let window_update = self.window_update.unwrap_or(0);

        let mut pseudo_header_order = String::with_capacity(2 * fields.pseudo.len());
        for (i, c) in fields.pseudo.iter().enumerate() {
            if i > 0 {
                pseudo_header_order.push(',');
            }
            pseudo_header_order.push(*c);
        }
        let akamai = akamai_string(&settings, window_update, &priorities, &pseudo_header_order);

        let http = fields
            .method
            .as_deref()
            .map(|m| HttpFingerprint::from_h2(m, &fields.names));
        self.result = Some(H2Fingerprint {
            akamai,
            settings,
            window_update,
            priorities,
            headers_priority: self.headers_priority,
            pseudo_header_order,
            method: fields.method,
            header_names: fields.names,
            header_block_complete: decoded && !self.block_truncated,
            http,
        });
        self.finish_up();
    }
}

/// What the tap keeps from the decoded header block.
#[derive(Default)]
struct RequestFields {
    pseudo: Vec<char>,
    method: Option<String>,
    names: Vec<String>,
}

impl RequestFields {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        if let Some(pseudo) = name.strip_prefix(b":") {
            let code = match pseudo {
                b"method" => 'm',
                b"authority" => 'a',
                b"scheme" => 's',
                b"path" => 'p',
                _ => return,
            };
            if self.pseudo.len() < MAX_PSEUDO {
                self.pseudo.push(code);
            }
            if code == 'm' && self.method.is_none() {
                let value = value.get(..MAX_METHOD_LEN).unwrap_or(value);
                self.method = Some(String::from_utf8_lossy(value).into_owned());
            }
        } else if self.names.len() < MAX_HEADER_NAMES {
            self.names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
}

/// The HPACK static table (RFC 7541 Appendix A), index 1 first.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Minimal HPACK decoder: static table plus a dynamic table that starts
/// empty (as it is for the first header block of a connection).
#[derive(Debug)]
struct HpackDecoder {
    /// Newest entry first (dynamic index 62 is `table[0]`).
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// The largest size a size update may set (what the server allows).
    limit: usize,
    /// Decoded bytes (names and values) this block may still produce.
    budget: usize,
}

impl HpackDecoder {
    fn new(max_size: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size,
            limit: max_size,
            budget: MAX_DECODED_BYTES,
        }
    }

    /// Charge a decoded field to the block's budget; false once spent.
    fn spend(&mut self, name: &[u8], value: &[u8]) -> bool {
        match self.budget.checked_sub(name.len() + value.len()) {
            Some(left) => {
                self.budget = left;
                true
            }
            None => false,
        }
    }

    /// Decodes a header block, calling `on_field(name, value)` per field in
    /// order. Returns `false` if it stopped early on something it could not
    /// decode (unknown index, bad integer/string/Huffman, truncation).
    fn decode(&mut self, block: &[u8], on_field: &mut dyn FnMut(&[u8], &[u8])) -> bool {
        let mut pos = 0;
        while let Some(&first) = block.get(pos) {
            let step = if first & 0x80 != 0 {
                // Indexed header field.
                decode_int(block, &mut pos, 7).and_then(|index| {
                    let (name, value) = self.entry(index)?;
                    let n = name.len() + value.len();
                    self.budget = self.budget.checked_sub(n)?;
                    let (name, value) = self.entry(index)?;
                    on_field(name, value);
                    Some(())
                })
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing.
                self.literal(block, &mut pos, 6, true, on_field)
            } else if first & 0x20 != 0 {
                // Dynamic table size update, never past what the server allows.
                decode_int(block, &mut pos, 5)
                    .filter(|size| *size <= self.limit)
                    .map(|size| self.set_max_size(size))
            } else {
                // Literal without indexing / never indexed.
                self.literal(block, &mut pos, 4, false, on_field)
            };
            if step.is_none() {
                return false;
            }
        }
        true
    }

    fn literal(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        prefix_bits: u32,
        insert: bool,
        on_field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Option<()> {
        let name_index = decode_int(block, pos, prefix_bits)?;
        let name = if name_index == 0 {
            decode_string(block, pos)?
        } else {
            self.entry(name_index)?.0.to_vec()
        };
        let value = decode_string(block, pos)?;
        if !self.spend(&name, &value) {
            return None;
        }
        on_field(&name, &value);
        if insert {
            self.insert(name, value);
        }
        Some(())
    }

    fn entry(&self, index: usize) -> Option<(&[u8], &[u8])> {
        match index {
            0 => None,
            1..=61 => STATIC_TABLE
                .get(index - 1)
                .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        while self.size + size > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
        self.size += size;
        self.table.push_front((name, value));
    }

    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }
}

/// Decodes an HPACK integer with a `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn decode_int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Option<usize> {
    let mask = u8::try_from((1u16 << prefix_bits) - 1).ok()?;
    let first = *block.get(*pos)? & mask;
    *pos += 1;
    if first < mask {
        return Some(usize::from(first));
    }
    let mut value = u64::from(mask);
    let mut shift = 0u32;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value = value.checked_add(u64::from(b & 0x7f) << shift)?;
        if b & 0x80 == 0 {
            return usize::try_from(value).ok();
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Decodes an HPACK string literal (RFC 7541 §5.2).
fn decode_string(block: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let huffman = *block.get(*pos)? & 0x80 != 0;
    let len = decode_int(block, pos, 7)?;
    let end = pos.checked_add(len)?;
    let raw = block.get(*pos..end)?;
    *pos = end;
    if huffman {
        huffman_decode(raw)
    } else {
        Some(raw.to_vec())
    }
}

/// Decodes an HPACK Huffman string (RFC 7541 §5.2, Appendix B). Rejects EOS
/// in the data, and padding that is longer than 7 bits or not all ones.
fn huffman_decode(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len() + src.len() / 2);
    let mut node = 0usize;
    let mut depth = 0u32;
    let mut all_ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = (byte >> shift) & 1;
            let child = *HUFFMAN_TREE.get(node)?.get(usize::from(bit))?;
            if child & LEAF != 0 {
                let sym = child & !LEAF;
                out.push(u8::try_from(sym).ok()?); // EOS (256) fails here
                node = 0;
                depth = 0;
                all_ones = true;
            } else if child == 0 {
                return None;
            } else {
                node = usize::from(child);
                depth += 1;
                all_ones &= bit == 1;
            }
        }
    }
    (depth <= 7 && all_ones).then_some(out)
}

/// Marks a leaf in [`HUFFMAN_TREE`]; the low bits are the symbol.
const LEAF: u16 = 0x8000;

/// Decoding tree of the HPACK Huffman code, built at compile time: node 0 is
/// the root; each node holds its two children (a node index, or `LEAF | symbol`).
const HUFFMAN_TREE: [[u16; 2]; 256] = build_huffman_tree();

const fn build_huffman_tree() -> [[u16; 2]; 256] {
    let mut nodes = [[0u16; 2]; 256];
    let mut next = 1usize;
    let mut sym = 0usize;
    while sym < HUFFMAN_CODES.len() {
        let (code, len) = HUFFMAN_CODES[sym];
        let mut node = 0usize;
        let mut bit = len as u32;
        while bit > 1 {
            bit -= 1;
            let b = ((code >> bit) & 1) as usize;
            let child = nodes[node][b];
            if child == 0 {
                nodes[node][b] = next as u16;
                node = next;
                next += 1;
            } else {
                assert!(child & LEAF == 0, "Huffman code is not prefix-free");
                node = child as usize;
            }
        }
        let b = (code & 1) as usize;
        assert!(nodes[node][b] == 0, "Huffman code is not prefix-free");
        nodes[node][b] = LEAF | sym as u16;
        sym += 1;
    }
    // A complete code over 257 symbols has exactly 256 internal nodes, all
    // with two children.
    assert!(next == 256, "Huffman code is not complete");
    let mut i = 0;
    while i < 256 {
        assert!(
            nodes[i][0] != 0 && nodes[i][1] != 0,
            "Huffman code is not complete"
        );
        i += 1;
    }
    nodes
}

/// The HPACK Huffman code (RFC 7541 Appendix B): `(code, bit length)` for
/// symbols 0–255 and EOS (256).
#[rustfmt::skip]
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28),
    (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24),
    (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28),
    (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), (0xffffff4, 28),
    (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10), (0xf9, 8),
    (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), (0x0, 5), (0x1, 5), (0x2, 5),
    (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7),
    (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), (0x63, 7), (0x64, 7),
    (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7),
    (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), (0x7ffd, 15),
    (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5),
    (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7),
    (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), (0x79, 7), (0x7a, 7),
    (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), (0x3fffd3, 22), (0x3fffd4, 22),
    (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), (0xffffec, 24), (0xffffed, 24),
    (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), (0x3fffd9, 22), (0x7fffe6, 23),
    (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), (0x7fffea, 23), (0x3fffdd, 22),
    (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), (0x7fffed, 23), (0x3fffe1, 22),
    (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), (0x3ffffe0, 26),
    (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22),
    (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19),
    (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26),
    (0x7ffffe2, 27), (0xfffff2, 24), (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26),
    (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21),
    (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25),
    (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27),
    (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28),
    (0x7ffffec, 27), (0x7ffffed, 27), (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27),
    (0x3ffffee, 26), (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in pairs {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(TYPE_SETTINGS, 0, 0, &p)
    }

    fn window_update(stream: u32, inc: u32) -> Vec<u8> {
        frame(TYPE_WINDOW_UPDATE, 0, stream, &inc.to_be_bytes())
    }

    fn priority(stream: u32, exclusive: bool, dep: u32, wire_weight: u8) -> Vec<u8> {
        frame(
            TYPE_PRIORITY,
            0,
            stream,
            &prio_fields(exclusive, dep, wire_weight),
        )
    }

    fn prio_fields(exclusive: bool, dep: u32, wire_weight: u8) -> Vec<u8> {
        let mut p = (dep | if exclusive { 0x8000_0000 } else { 0 })
            .to_be_bytes()
            .to_vec();
        p.push(wire_weight);
        p
    }

    /// Test-only Huffman encoder (from the same code table).
    fn huffman_encode(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc: u64 = 0;
        let mut bits = 0u32;
        for &b in src {
            let (code, len) = HUFFMAN_CODES[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    /// Chrome-like HPACK block: static indexes, a literal with a Huffman
    /// value (indexed name), a literal with a Huffman name and value, a
    /// literal without indexing, references to the dynamic table.
    fn chrome_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(hex("3f e1 1f")); // dynamic table size update to 4096
        b.push(0x82); // :method GET
        b.extend(hex("41 8c f1e3 c2e5 f23a 6ba0 ab90 f4ff")); // :authority www.example.com (Huffman), indexed -> 62
        b.push(0x87); // :scheme https
        b.push(0x84); // :path /
        b.extend(hex("40 88 25a8 49e9 5ba9 7d7f 89 25a8 49e9 5bb8 e8b4 bf")); // custom-key: custom-value (Huffman name+value) -> 62
        b.extend(hex("0f 2b 04")); // user-agent, not indexed, raw value
        b.extend_from_slice(b"curl");
        b.push(0xbe); // 62: custom-key: custom-value
        b.push(0x40 | 17); // accept-language, incremental indexing
        let value = huffman_encode(b"en-US");
        b.push(0x80 | value.len() as u8);
        b.extend(value);
        b
    }

    fn chrome_stream() -> Vec<u8> {
        let block = chrome_block();
        let mut headers_payload = prio_fields(true, 0, 255);
        headers_payload.extend_from_slice(&block);
        let mut s = PREFACE.to_vec();
        s.extend(settings(&[
            (1, 65536),
            (2, 0),
            (4, 6_291_456),
            (6, 262_144),
        ]));
        s.extend(window_update(0, 15_663_105));
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | 0x1 | FLAG_PRIORITY,
            1,
            &headers_payload,
        ));
        // What a client sends next must not matter.
        s.extend(frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]));
        s.extend(frame(0x0, 0x1, 3, b"data"));
        s
    }

    fn run(chunks: &[&[u8]]) -> H2Tap {
        let mut tap = H2Tap::new();
        for c in chunks {
            tap.feed(c);
        }
        tap
    }

    const CHROME_AKAMAI: &str = "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p";

    #[test]
    fn akamai_strings_from_a_front_parse_to_the_canonical_form() {
        let firefox = "1:65536;4:131072;5:16384|12517377|3:0:0:201,5:0:0:101,7:0:0:1,9:0:7:1,11:0:3:1,13:0:0:241|m,p,a,s";
        for s in [CHROME_AKAMAI, firefox, "|0|0|", "3:100|0|0|m,s,p"] {
            let fp = H2Fingerprint::from_akamai(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(fp.akamai(), s);
        }
        let fp = H2Fingerprint::from_akamai(firefox).unwrap();
        assert_eq!(fp.priorities().len(), 6);
        assert_eq!(fp.window_update(), 12_517_377);
        assert!(fp.http_fingerprint().is_none());
        // The tap's own output parses back to itself.
        let tapped = run(&[&chrome_stream()]).result().unwrap().clone();
        assert_eq!(
            H2Fingerprint::from_akamai(tapped.akamai())
                .unwrap()
                .akamai(),
            tapped.akamai()
        );
        // Other spellings seen in the wild are made canonical.
        assert_eq!(
            H2Fingerprint::from_akamai("1:65536,2:0,4:6291456,6:262144|15663105|0|masp")
                .unwrap()
                .akamai(),
            CHROME_AKAMAI
        );
        for bad in [
            "",
            "spoofed",
            "1:65536|0|0",
            "1:65536|0|0|m,a,s,p|x",
            "1:65536;2|0|0|m",
            "70000:1|0|0|m",
            "1:-1|0|0|m",
            "1:1|+5|0|m",
            "1:1|0|3:2:0:1|m",
            "1:1|0|3:0:0:257|m",
            "1:1|0|3:0:0:0|m",
            "1:1|0|3:0:0|m",
            "1:1|0|0|m,m",
            "1:1|0|0|x",
            "1: 1|0|0|m",
        ] {
            assert!(H2Fingerprint::from_akamai(bad).is_none(), "{bad:?}");
        }
        let many = vec!["1:1"; 65].join(";") + "|0|0|m";
        assert!(H2Fingerprint::from_akamai(&many).is_none());
    }

    proptest! {
        #[test]
        fn akamai_parse_never_panics_and_is_canonical(s in "[0-9:;,|masp]{0,60}") {
            if let Some(fp) = H2Fingerprint::from_akamai(&s) {
                let again = H2Fingerprint::from_akamai(fp.akamai()).unwrap();
                prop_assert_eq!(again.akamai(), fp.akamai());
            }
        }
    }

    #[test]
    fn chrome_like_akamai_string() {
        let stream = chrome_stream();
        let tap = run(&[&stream]);
        assert!(tap.is_done());
        assert!(!tap.is_failed());
        let fp = tap.result().expect("fingerprint");
        assert_eq!(fp.akamai(), CHROME_AKAMAI);
        assert_eq!(fp.to_string(), CHROME_AKAMAI);
        assert_eq!(fp.window_update(), 15_663_105);
        assert_eq!(fp.settings().len(), 4);
        assert_eq!(fp.pseudo_header_order(), "m,a,s,p");
        assert_eq!(fp.method(), Some("GET"));
        assert_eq!(
            fp.header_names(),
            ["custom-key", "user-agent", "custom-key", "accept-language"]
        );
        assert!(fp.header_block_complete());
        assert_eq!(
            fp.headers_priority(),
            Some(H2Priority {
                stream_id: 1,
                exclusive: true,
                depends_on: 0,
                weight: 256
            })
        );
        let http = fp.http_fingerprint().expect("http fingerprint");
        let expected = HttpFingerprint::from_h2(
            "GET",
            ["custom-key", "user-agent", "custom-key", "accept-language"],
        );
        assert_eq!(http, &expected);
        assert!(http.as_str().starts_with("h2_GE_20_c0r0l1_n04_"));
    }

    #[test]
    fn whole_bytewise_and_every_split_agree() {
        let stream = chrome_stream();
        let whole = run(&[&stream]);
        let expected = whole.result().cloned();
        assert!(expected.is_some());
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).result().cloned(), expected);
        for cut in 0..=stream.len() {
            let tap = run(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(tap.result().cloned(), expected, "split at {cut}");
        }
    }

    #[test]
    fn firefox_like_priorities_continuation_and_padding() {
        let mut block = vec![0x82]; // :method GET
        block.push(0x84); // :path /
        block.extend(hex("41 8c f1e3 c2e5 f23a 6ba0 ab90 f4ff")); // :authority
        block.push(0x87); // :scheme https
        block.extend(hex("40 88 25a8 49e9 5ba9 7d7f 89 25a8 49e9 5bb8 e8b4 bf"));
        block.push(0x40 | 32); // cookie, incremental indexing
        block.push(0x03);
        block.extend_from_slice(b"a=b");
        block.push(0x40 | 51); // referer
        block.push(0x01);
        block.push(b'x');
        let (first, second) = block.split_at(10); // split inside :authority
        let mut headers_payload = vec![3u8]; // pad length
        headers_payload.extend_from_slice(first);
        headers_payload.extend_from_slice(&[0, 0, 0]);
        let mut s = PREFACE.to_vec();
        s.extend(settings(&[(1, 65536), (4, 131_072), (5, 16384)]));
        s.extend(window_update(0, 12_517_377));
        s.extend(priority(3, false, 0, 200));
        s.extend(priority(5, false, 0, 100));
        s.extend(priority(7, false, 0, 0));
        s.extend(priority(9, false, 7, 0));
        s.extend(priority(11, false, 3, 0));
        s.extend(priority(13, false, 0, 240));
        s.extend(window_update(13, 99)); // stream-level, ignored
        s.extend(frame(0x6, 0, 0, &[0; 8])); // PING, skipped
        s.extend(frame(TYPE_HEADERS, FLAG_PADDED | 0x1, 15, &headers_payload));
        s.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 15, second));
        let tap = run(&[&s]);
        let fp = tap.result().expect("fingerprint");
        assert_eq!(
            fp.akamai(),
            "1:65536;4:131072;5:16384|12517377|3:0:0:201,5:0:0:101,7:0:0:1,9:0:7:1,11:0:3:1,13:0:0:241|m,p,a,s"
        );
        assert_eq!(fp.header_names(), ["custom-key", "cookie", "referer"]);
        assert!(fp.headers_priority().is_none());
        assert!(fp
            .http_fingerprint()
            .is_some_and(|h| h.has_cookie() && h.has_referer()));
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(run(&bytes).result(), Some(fp));
    }

    #[test]
    fn no_window_update_and_empty_settings() {
        let mut s = PREFACE.to_vec();
        s.extend(settings(&[]));
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x83, 0x86, 0x84, 0x81],
        ));
        let tap = run(&[&s]);
        let fp = tap.result().expect("fingerprint");
        assert_eq!(fp.akamai(), "|0|0|m,s,p,a");
        assert_eq!(fp.method(), Some("POST"));
        assert_eq!(fp.header_names().len(), 0);
    }

    #[test]
    fn oversized_headers_frame_keeps_a_prefix() {
        // :method GET, :scheme https, :path /, then :authority (literal
        // without indexing, indexed name 1) with a huge raw value.
        let mut block = vec![0x82, 0x87, 0x84, 0x01];
        // A 20000-byte raw value: 0x7f then 20000 - 127 = 19873 in 7-bit groups.
        let mut n = 20_000 - 127;
        block.push(0x7f);
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
        block.extend(vec![b'a'; 20_000]);
        let mut s = PREFACE.to_vec();
        s.extend(settings(&[(3, 100)]));
        s.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let mut tap = H2Tap::new();
        for c in s.chunks(777) {
            tap.feed(c);
            assert!(tap.payload.len() <= H2Tap::MAX_FRAME_BUFFER);
            assert!(tap.block.len() <= H2Tap::MAX_FRAME_BUFFER);
        }
        let fp = tap.result().expect("fingerprint");
        assert_eq!(fp.akamai(), "3:100|0|0|m,s,p");
        assert!(!fp.header_block_complete());
    }

    #[test]
    fn malformed_input_fails() {
        let good_settings = settings(&[(1, 4096)]);
        let headers = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x82]);
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            [PREFACE.to_vec(), headers.clone()].concat(),
            [PREFACE.to_vec(), frame(TYPE_SETTINGS, FLAG_ACK, 0, &[])].concat(),
            [PREFACE.to_vec(), frame(TYPE_SETTINGS, 0, 0, &[0; 7])].concat(),
            [PREFACE.to_vec(), frame(TYPE_SETTINGS, 0, 1, &[0; 6])].concat(),
            [PREFACE.to_vec(), frame(TYPE_SETTINGS, 0, 0, &[0; 6 * 65])].concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_WINDOW_UPDATE, 0, 0, &[0; 5]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_PRIORITY, 0, 0, &[0; 5]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x82]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[5, 0x82]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PRIORITY, 1, &[0, 0]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_HEADERS, 0, 1, &[0x82]),
                frame(TYPE_PRIORITY, 0, 3, &[0; 5]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(TYPE_HEADERS, 0, 1, &[0x82]),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                priority(3, false, 0, 1).repeat(65),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                good_settings.clone(),
                frame(0x6, 0, 0, &[0; 8]).repeat(300),
            ]
            .concat(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let tap = run(&[case, &headers]);
            assert!(tap.is_done(), "case {i}");
            assert!(tap.is_failed(), "case {i}");
            assert!(tap.result().is_none(), "case {i}");
            let bytes: Vec<&[u8]> = case.chunks(1).collect();
            let tap = run(&bytes);
            assert!(tap.is_failed(), "case {i} bytewise");
        }
    }

    #[test]
    fn undecodable_hpack_still_gives_the_order_so_far() {
        let mut s = PREFACE.to_vec();
        s.extend(settings(&[(2, 0)]));
        // :method GET, :path /, then index 70 (empty dynamic table) and more.
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x82, 0x84, 0xc6, 0x87],
        ));
        let fp = run(&[&s]).take().expect("fingerprint");
        assert_eq!(fp.akamai(), "2:0|0|0|m,p");
        assert!(!fp.header_block_complete());
    }

    /// Bytes captured from the `h2` crate's client (what hyper's HTTP/2
    /// client sends): Huffman strings and dynamic-table insertions from a
    /// real encoder, then an RST_STREAM the tap must ignore.
    #[test]
    fn real_h2_crate_client_bytes() {
        let stream = hex(concat!(
            "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a00001204000000000000020000000000",
            "040060000000060004000000000408000000000000ef00010000bb0105000000018387418b1d665c",
            "be474d7415721e9f049763b85824e34b043d35d05498f523fc426c28e981365a5f7abad07f66a281",
            "b0dae053fafc087ed4ce6aadf2a7979c89c6bfb521aeba0bc8b1e632586d975765c52f4f61e92b01",
            "134b814dc394761986d975765c538c497ca582f72d495909b0a3a75f8b1d75d0620d263d4c7441ea",
            "518b2d4b70ddf45abefb4005df0f11884150831ea807193f0f118641487aa4803f408bf2b12d424f",
            "4ad3947216cf8de23a2d2a9c8c99d4dd58c8547f00000403000000000100000008",
        ));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let tap = run(&bytes);
        let fp = tap.result().expect("fingerprint");
        assert_eq!(fp.akamai(), "2:0;4:6291456;6:262144|15663105|0|m,s,a,p");
        assert_eq!(fp.method(), Some("POST"));
        assert_eq!(
            fp.header_names(),
            [
                "user-agent",
                "accept",
                "content-type",
                "accept-language",
                "cookie",
                "cookie",
                "x-custom-header"
            ]
        );
        assert!(fp.header_block_complete());
        assert_eq!(run(&[&stream]).result(), Some(fp));
    }

    fn decode_all(decoder: &mut HpackDecoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let ok = decoder.decode(block, &mut |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        });
        assert!(ok);
        out
    }

    fn table(decoder: &HpackDecoder) -> (Vec<(String, String)>, usize) {
        let entries = decoder
            .table
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect();
        (entries, decoder.size)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// HPACK integer with a `bits`-bit prefix under `first` (RFC 7541 §5.1).
    fn hpack_int(first: u8, bits: u32, mut v: usize) -> Vec<u8> {
        let max = (1usize << bits) - 1;
        if v < max {
            return vec![first | v as u8];
        }
        let mut out = vec![first | max as u8];
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
        out
    }

    #[test]
    fn size_updates_past_the_limit_and_amplified_blocks_stop_decoding() {
        // A table size update to 2^27 (the server allows 4096).
        let mut d = HpackDecoder::new(INITIAL_TABLE_SIZE);
        assert!(!d.decode(&hpack_int(0x20, 5, 1 << 27), &mut |_, _| {}));
        // Within the limit it is fine.
        let mut d = HpackDecoder::new(INITIAL_TABLE_SIZE);
        assert!(d.decode(&hpack_int(0x20, 5, 1024), &mut |_, _| {}));
        // A 3000-byte name inserted once, then referenced 5000 times: the
        // decoder stops once the block's decoded bytes reach the budget.
        let mut block = vec![0x40];
        block.extend(hpack_int(0, 7, 3000));
        block.extend(std::iter::repeat_n(b'x', 3000));
        block.push(0);
        block.extend(std::iter::repeat_n(0xbe, 5000));
        let mut d = HpackDecoder::new(INITIAL_TABLE_SIZE);
        let mut decoded = 0;
        let ok = d.decode(&block, &mut |n, v| decoded += n.len() + v.len());
        assert!(!ok);
        assert!(decoded <= MAX_DECODED_BYTES, "{decoded}");
        assert!(decoded > MAX_DECODED_BYTES - 3000, "{decoded}");
    }

    /// RFC 7541 Appendix C.4: requests with Huffman coding, one connection.
    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = HpackDecoder::new(4096);
        let h = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(
            h,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(table(&d), (pairs(&[(":authority", "www.example.com")]), 57));
        let h = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(
            h,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.size, 110);
        let h = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(
            h,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(
            table(&d),
            (
                pairs(&[
                    ("custom-key", "custom-value"),
                    ("cache-control", "no-cache"),
                    (":authority", "www.example.com")
                ]),
                164
            )
        );
    }

    /// RFC 7541 Appendix C.6: responses with Huffman coding and evictions
    /// (dynamic table size 256).
    #[test]
    fn rfc7541_c6_responses_with_huffman_and_eviction() {
        let mut d = HpackDecoder::new(256);
        let h = decode_all(
            &mut d,
            &hex(
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                  2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            ),
        );
        assert_eq!(
            h,
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.size, 222);
        let h = decode_all(&mut d, &hex("4883 640e ffc1 c0bf"));
        assert_eq!(
            h,
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.size, 222);
        let h = decode_all(
            &mut d,
            &hex(
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                  77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                  9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ),
        );
        assert_eq!(
            h,
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                )
            ])
        );
        assert_eq!(
            table(&d),
            (
                pairs(&[
                    (
                        "set-cookie",
                        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                    ),
                    ("content-encoding", "gzip"),
                    ("date", "Mon, 21 Oct 2013 20:13:22 GMT")
                ]),
                215
            )
        );
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        assert_eq!(huffman_decode(&[]), Some(vec![]));
        // "a" is 00011 (5 bits) + 3 one bits of padding.
        assert_eq!(huffman_decode(&[0b0001_1111]), Some(b"a".to_vec()));
        // Padding with a zero bit.
        assert_eq!(huffman_decode(&[0b0001_1110]), None);
        // 8+ bits of padding.
        assert_eq!(huffman_decode(&[0b0001_1111, 0xff]), None);
        // EOS (30 one bits) inside the data.
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn hpack_integer_limits() {
        let mut pos = 0;
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Some(1337));
        assert_eq!(pos, 3);
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos, 7),
            None
        );
        let mut pos = 0;
        assert_eq!(decode_int(&[0x7f, 0x80], &mut pos, 7), None);
    }

    proptest! {
        #[test]
        fn huffman_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(huffman_decode(&huffman_encode(&data)), Some(data));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            with_preface in any::<bool>(),
            chunk in 1usize..64,
        ) {
            let mut input = if with_preface { PREFACE.to_vec() } else { Vec::new() };
            input.extend_from_slice(&data);
            let mut tap = H2Tap::new();
            for c in input.chunks(chunk) {
                tap.feed(c);
                prop_assert!(tap.payload.len() <= H2Tap::MAX_FRAME_BUFFER);
                prop_assert!(tap.block.len() <= H2Tap::MAX_FRAME_BUFFER);
            }
            let whole = run(&[&input]);
            prop_assert_eq!(whole.result(), tap.result());
            prop_assert_eq!(whole.is_done(), tap.is_done());
        }

        #[test]
        fn mutated_valid_input_never_panics(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
            chunk in 1usize..32,
        ) {
            let mut input = chrome_stream();
            for (at, byte, op) in edits {
                let at = at % (input.len() + 1);
                match op {
                    0 => if at < input.len() { input[at] = byte },
                    1 => input.insert(at, byte),
                    _ => if at < input.len() { input.remove(at); },
                }
            }
            let mut tap = H2Tap::new();
            for c in input.chunks(chunk) {
                tap.feed(c);
            }
            let whole = run(&[&input]);
            prop_assert_eq!(whole.result(), tap.result());
            if let Some(fp) = tap.result() {
                prop_assert_eq!(fp.akamai().matches('|').count(), 3);
            }
        }

        #[test]
        fn random_frame_sequences_never_panic(
            frames in proptest::collection::vec(
                (0u8..12, any::<u8>(), 0u32..6, proptest::collection::vec(any::<u8>(), 0..48)),
                0..24,
            ),
            chunk in 1usize..40,
        ) {
            let mut input = PREFACE.to_vec();
            input.extend(settings(&[(1, 65536)]));
            for (kind, flags, stream, payload) in &frames {
                input.extend(frame(*kind, *flags, *stream, payload));
            }
            let mut tap = H2Tap::new();
            for c in input.chunks(chunk) {
                tap.feed(c);
            }
            let whole = run(&[&input]);
            prop_assert_eq!(whole.result(), tap.result());
            prop_assert_eq!(whole.is_failed(), tap.is_failed());
        }

        #[test]
        fn mutated_header_blocks_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut block = chrome_block();
            for (at, byte) in edits {
                let at = at % block.len();
                block[at] = byte;
            }
            let mut s = PREFACE.to_vec();
            s.extend(settings(&[(1, 1)]));
            s.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
            let tap = run(&[&s]);
            prop_assert!(tap.is_done());
            prop_assert!(tap.result().is_some());
        }
    }
}
