//! Request-path step "meter" (while the response streams back): counts the
//! tokens of an upstream response incrementally, frame by frame, as the body
//! streams through the proxy — never buffering the body — from the upstream's
//! own `usage` reports, falling back to estimation when there are none.
//!
//! # Streams (`text/event-stream`)
//!
//! The body is split into lines across chunk boundaries (`\n`, `\r\n` and a
//! lone `\r` all end a line). Only `data:` lines are looked at (SSE `event:`
//! names are redundant: every event of these APIs carries its `type`), each
//! line as one JSON document; `data: [DONE]`, comments and other fields are
//! skipped. A complete line is not parsed as a whole: one `memchr` pass over
//! its colons finds each `"key":` (in document order), and only two kinds of
//! key matter:
//!
//! * **usage** — a `"usage"` key whose value is an object sends the line
//!   through the usage scanner below, which takes a `usage` object at the top
//!   level, or one level down under `message` (Anthropic `message_start`) or
//!   `response` (Responses `response.completed` / `.incomplete` /
//!   `.failed`), and parses only that object. Anthropic `message_delta`, and
//!   OpenAI chat's final `stream_options.include_usage` chunk, carry it at
//!   the top level. `"usage":null` (every chat chunk with `include_usage`)
//!   costs nothing.
//! * **text** — string values of the API's text keys are unescaped and fed to
//!   one running [`Estimator`], so the estimate
//!   equals [`estimate_tokens`](super::estimate::estimate_tokens) of all the
//!   streamed text concatenated. Keys: Anthropic (and `Other`) `text`,
//!   `thinking`, `partial_json` (`content_block_delta` / `_start`); OpenAI
//!   chat `content`, `refusal`, `arguments`, `reasoning_content`
//!   (`choices[].delta`); Responses `delta` (the `response.*.delta` events —
//!   the `.done` / `response.completed` events repeat the text and are not
//!   counted).
//!
//! # Non-streaming JSON
//!
//! Each chunk goes through a small incremental JSON scanner (string- and
//! escape-aware, tracking nesting depth) that finds the top-level `"usage":`
//! key across chunk boundaries, captures only that object (at most
//! [`MAX_USAGE_OBJECT`] bytes) and parses it when it closes; after that the
//! rest of the body is only counted. Depth matters: a `usage` key inside
//! model-generated content (say, a tool call's `input` object) is ignored.
//!
//! # Which numbers
//!
//! * `input_tokens`: the last reported value of `input_tokens` or
//!   `prompt_tokens`, plus Anthropic's `cache_creation_input_tokens` and
//!   `cache_read_input_tokens` (each field keeps its last reported value), so
//!   it is the whole prompt in every API. `None` when never reported.
//! * `output_tokens`: the last reported `output_tokens` / `completion_tokens`
//!   (Anthropic's are cumulative), plus the estimate of text streamed *after*
//!   that report. So a complete stream meters exactly what the upstream
//!   reported, while one cut off after Anthropic's `message_start` (which
//!   reports `output_tokens: 1`) still counts the text that did stream.
//! * Never reported, stream: the estimate of the streamed text (thinking and
//!   tool-call arguments included; Responses' hidden reasoning tokens are not
//!   streamed, so they are missed).
//! * Never reported, non-streaming: `ceil(body_bytes / 4)` — the whole body,
//!   JSON overhead included, at the usual 4 bytes per token (an
//!   over-estimate by the envelope, ~50–100 tokens, on purpose).
//! * `reported`: a usage object with at least one known field was seen.
//!
//! # Bounds
//!
//! Memory is at most one partial line ([`MAX_LINE`], 64 KiB) plus one usage
//! object ([`MAX_USAGE_OBJECT`]); see [`UsageMeter::buffered_bytes`]. A
//! longer line is not kept: its bytes still go through the usage scanner (so
//! a huge `response.completed` still yields its usage), and for Anthropic,
//! chat and `Other` its size is counted as `bytes / 4` output tokens; the
//! estimator never sees it.

use super::estimate::Estimator;
use super::inspect::LenientU32;
use super::ApiKind;
use memchr::{memchr, memchr2, memrchr};
use serde::de::{DeserializeSeed, Deserializer};
use serde::Deserialize;

/// Longest SSE line kept in memory (bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// Largest `usage` object captured (bytes); larger ones are ignored.
pub const MAX_USAGE_OBJECT: usize = 4 * 1024;

/// Token usage of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens, when the upstream reported them.
    pub input_tokens: Option<u32>,
    /// Output tokens: reported, or estimated (see the module docs).
    pub output_tokens: u32,
    /// The upstream's own usage report was seen.
    pub reported: bool,
}

/// A usage object as reported by any of the APIs (unknown fields ignored,
/// each count read leniently as in [`inspect`](super::inspect)).
#[derive(Deserialize, Default, Debug)]
struct RawUsage {
    #[serde(default, deserialize_with = "lenient")]
    input_tokens: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    cache_read_input_tokens: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u32>,
}

fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    LenientU32.deserialize(d)
}

/// Running totals: reported fields and the text estimate.
#[derive(Debug, Clone, Default)]
struct Totals {
    input: Option<u32>,
    cache_creation: Option<u32>,
    cache_read: Option<u32>,
    output: Option<u32>,
    reported: bool,
    est: Estimator,
    /// Tokens estimated for text that was dropped (over-long lines).
    extra: u64,
    /// Estimate (text + extra) when output was last reported.
    est_at_report: u64,
}

impl Totals {
    fn estimate(&self) -> u64 {
        u64::from(self.est.tokens()).saturating_add(self.extra)
    }

    fn merge(&mut self, u: RawUsage) {
        let mut any = false;
        if let Some(v) = u.input_tokens.or(u.prompt_tokens) {
            self.input = Some(v);
            any = true;
        }
        if let Some(v) = u.cache_creation_input_tokens {
            self.cache_creation = Some(v);
            any = true;
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read = Some(v);
            any = true;
        }
        if let Some(v) = u.output_tokens.or(u.completion_tokens) {
            self.output = Some(v);
            self.est_at_report = self.estimate();
            any = true;
        }
        self.reported |= any;
    }

    fn input_tokens(&self) -> Option<u32> {
        if self.input.is_none() && self.cache_creation.is_none() && self.cache_read.is_none() {
            return None;
        }
        Some(
            self.input
                .unwrap_or(0)
                .saturating_add(self.cache_creation.unwrap_or(0))
                .saturating_add(self.cache_read.unwrap_or(0)),
        )
    }
}

/// Class of a short key, for the usage scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Usage,
    Message,
    Response,
    Other,
}

/// Incremental, depth-aware scanner that captures `usage` objects (see the
/// module docs). Tolerates any input.
#[derive(Debug, Clone)]
struct UsageScanner {
    depth: u32,
    in_str: bool,
    esc: bool,
    /// First bytes of the current string, and its full length so far.
    str_head: [u8; 8],
    str_len: usize,
    /// A string just closed, possibly a key: its tag and depth.
    pending: Option<Tag>,
    /// The last key seen at depth 1.
    key1: Tag,
    /// A `usage` key was confirmed: an object value is captured.
    want_obj: bool,
    capturing: bool,
    cap_depth: u32,
    cap: Vec<u8>,
    /// Stop after the first captured object.
    stop_after_first: bool,
    done: bool,
}

impl UsageScanner {
    fn new(stop_after_first: bool) -> Self {
        UsageScanner {
            depth: 0,
            in_str: false,
            esc: false,
            str_head: [0; 8],
            str_len: 0,
            pending: None,
            key1: Tag::Other,
            want_obj: false,
            capturing: false,
            cap_depth: 0,
            cap: Vec::new(),
            stop_after_first,
            done: false,
        }
    }

    /// Back to the start of a document (keeps the capture buffer's capacity).
    fn reset(&mut self) {
        let mut cap = std::mem::take(&mut self.cap);
        cap.clear();
        *self = UsageScanner {
            cap,
            ..UsageScanner::new(self.stop_after_first)
        };
    }

    fn note_str(&mut self, bytes: &[u8]) {
        if self.str_len < self.str_head.len() {
            let n = bytes.len().min(self.str_head.len() - self.str_len);
            self.str_head[self.str_len..self.str_len + n].copy_from_slice(&bytes[..n]);
        }
        self.str_len = self.str_len.saturating_add(bytes.len());
    }

    fn capture(&mut self, bytes: &[u8]) {
        if !self.capturing {
            return;
        }
        if self.cap.len() + bytes.len() > MAX_USAGE_OBJECT {
            self.capturing = false;
            self.cap.clear();
        } else {
            bounded_extend(&mut self.cap, bytes, MAX_USAGE_OBJECT);
        }
    }

    fn tag(&self) -> Tag {
        match self.str_head.get(..self.str_len) {
            Some(b"usage") => Tag::Usage,
            Some(b"message") => Tag::Message,
            Some(b"response") => Tag::Response,
            _ => Tag::Other,
        }
    }

    fn feed(&mut self, mut data: &[u8], totals: &mut Totals) {
        while !data.is_empty() && !self.done {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                    let (one, rest) = data.split_at(1);
                    self.note_str(one);
                    self.capture(one);
                    data = rest;
                    continue;
                }
                match memchr2(b'"', b'\\', data) {
                    None => {
                        self.note_str(data);
                        self.capture(data);
                        return;
                    }
                    Some(i) => {
                        let (seg, rest) = data.split_at(i + 1);
                        self.capture(seg);
                        if seg.last() == Some(&b'\\') {
                            self.note_str(seg);
                            self.esc = true;
                        } else {
                            self.note_str(&seg[..i]);
                            self.in_str = false;
                            self.pending = Some(self.tag());
                        }
                        data = rest;
                    }
                }
                continue;
            }
            let (&b, rest) = match data.split_first() {
                Some(x) => x,
                None => return,
            };
            data = rest;
            match b {
                b'"' => {
                    self.capture(&[b]);
                    self.in_str = true;
                    self.str_len = 0;
                    self.pending = None;
                    self.want_obj = false;
                }
                b'{' | b'[' => {
                    if b == b'{' && self.want_obj && !self.capturing {
                        self.capturing = true;
                        self.cap.clear();
                        self.cap_depth = self.depth;
                    }
                    self.capture(&[b]);
                    self.depth = self.depth.saturating_add(1);
                    self.pending = None;
                    self.want_obj = false;
                }
                b'}' | b']' => {
                    self.capture(&[b]);
                    self.depth = self.depth.saturating_sub(1);
                    self.pending = None;
                    self.want_obj = false;
                    if self.capturing && self.depth == self.cap_depth {
                        self.capturing = false;
                        if let Ok(u) = serde_json::from_slice::<RawUsage>(&self.cap) {
                            totals.merge(u);
                            if self.stop_after_first {
                                self.done = true;
                            }
                        }
                        self.cap.clear();
                    }
                }
                b':' => {
                    self.capture(&[b]);
                    if let Some(tag) = self.pending.take() {
                        if self.depth == 1 {
                            self.key1 = tag;
                        }
                        self.want_obj = tag == Tag::Usage
                            && (self.depth == 1
                                || (self.depth == 2
                                    && matches!(self.key1, Tag::Message | Tag::Response)));
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' => self.capture(&[b]),
                _ => {
                    self.capture(&[b]);
                    self.pending = None;
                    self.want_obj = false;
                }
            }
        }
    }
}

/// Partial state of a line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy)]
struct Overflow {
    /// It is a `data:` line (its bytes go to the usage scanner).
    data: bool,
    /// Bytes seen so far.
    bytes: u64,
}

/// Incremental usage meter for one response body (see the module docs).
#[derive(Debug, Clone)]
pub struct UsageMeter {
    kind: ApiKind,
    streaming: bool,
    totals: Totals,
    scanner: UsageScanner,
    /// JSON mode: body bytes seen.
    body_bytes: u64,
    /// SSE mode: the current partial line.
    line: Vec<u8>,
    /// SSE mode: the previous chunk ended with `\r`; skip a leading `\n`.
    skip_lf: bool,
    overflow: Option<Overflow>,
}

impl UsageMeter {
    /// A meter for a response of API `kind`; `streaming` is true when the
    /// response's content type is `text/event-stream`.
    pub fn new(kind: ApiKind, streaming: bool) -> Self {
        UsageMeter {
            kind,
            streaming,
            totals: Totals::default(),
            scanner: UsageScanner::new(!streaming),
            body_bytes: 0,
            line: Vec::new(),
            skip_lf: false,
            overflow: None,
        }
    }

    /// Feeds the next response body frame, as it passes. Never panics.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.body_bytes = self.body_bytes.saturating_add(chunk.len() as u64);
        if self.streaming {
            self.feed_sse(chunk);
        } else if !self.scanner.done {
            self.scanner.feed(chunk, &mut self.totals);
        }
    }

    /// Usage so far.
    pub fn usage(&self) -> Usage {
        let t = &self.totals;
        let output = match t.output {
            Some(r) => u64::from(r).saturating_add(t.estimate().saturating_sub(t.est_at_report)),
            None if self.streaming => t.estimate(),
            None => self.body_bytes.div_ceil(4),
        };
        Usage {
            input_tokens: t.input_tokens(),
            output_tokens: u32::try_from(output).unwrap_or(u32::MAX),
            reported: t.reported,
        }
    }

    /// Final usage at the end of the body. A trailing line without a line
    /// terminator is processed as a complete line first.
    pub fn finish(mut self) -> Usage {
        if self.streaming {
            if let Some(ov) = self.overflow.take() {
                self.end_overflow(ov);
            } else if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.process_line(&line);
            }
        }
        self.usage()
    }

    /// Bytes of buffer memory held (capacity of the partial-line and
    /// usage-capture buffers): at most [`MAX_LINE`] + [`MAX_USAGE_OBJECT`].
    pub fn buffered_bytes(&self) -> usize {
        self.line.capacity() + self.scanner.cap.capacity()
    }

    fn feed_sse(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            match memchr2(b'\n', b'\r', rest) {
                Some(i) => {
                    let seg = &rest[..i];
                    let term = rest[i];
                    rest = &rest[i + 1..];
                    if let Some(ov) = self.overflow.take() {
                        self.overflow_bytes(ov, seg);
                        self.end_overflow(ov_add(ov, seg));
                    } else if self.line.len() + seg.len() > MAX_LINE {
                        let ov = self.start_overflow(seg);
                        self.end_overflow(ov);
                    } else if self.line.is_empty() {
                        self.process_line(seg);
                    } else {
                        bounded_extend(&mut self.line, seg, MAX_LINE);
                        let line = std::mem::take(&mut self.line);
                        self.process_line(&line);
                        self.line = line;
                        self.line.clear();
                    }
                    if term == b'\r' {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            Some(_) => {}
                            None => self.skip_lf = true,
                        }
                    }
                }
                None => {
                    if let Some(ov) = self.overflow.take() {
                        self.overflow_bytes(ov, rest);
                        self.overflow = Some(ov_add(ov, rest));
                    } else if self.line.len() + rest.len() > MAX_LINE {
                        let ov = self.start_overflow(rest);
                        self.overflow = Some(ov);
                    } else {
                        bounded_extend(&mut self.line, rest, MAX_LINE);
                    }
                    return;
                }
            }
        }
    }

    /// The kept partial line plus `more` exceed [`MAX_LINE`]: stop keeping it.
    fn start_overflow(&mut self, more: &[u8]) -> Overflow {
        let mut head = [0u8; 6];
        let mut n = 0;
        for (dst, src) in head.iter_mut().zip(self.line.iter().chain(more.iter())) {
            *dst = *src;
            n += 1;
        }
        let data = head[..n].starts_with(b"data:");
        let ov = Overflow {
            data,
            bytes: (self.line.len() as u64).saturating_add(more.len() as u64),
        };
        if data {
            let skip = if head[5] == b' ' { 6 } else { 5 };
            self.scanner.reset();
            let from_line = skip.min(self.line.len());
            let line = std::mem::take(&mut self.line);
            self.scanner.feed(&line[from_line..], &mut self.totals);
            self.line = line;
            let from_more = (skip - from_line).min(more.len());
            self.scanner.feed(&more[from_more..], &mut self.totals);
        }
        self.line.clear();
        ov
    }

    fn overflow_bytes(&mut self, ov: Overflow, bytes: &[u8]) {
        if ov.data {
            self.scanner.feed(bytes, &mut self.totals);
        }
    }

    fn end_overflow(&mut self, ov: Overflow) {
        if ov.data && self.kind != ApiKind::OpenAiResponses {
            self.totals.extra = self.totals.extra.saturating_add(ov.bytes / 4);
        }
    }

    /// One complete SSE line (without its terminator).
    ///
    /// One `memchr` pass over the colons finds every `"key":` in document
    /// order; text values are estimated at once, and a `usage` key with an
    /// object value sends the line through the usage scanner afterwards
    /// (so a report in the same event already covers its text).
    fn process_line(&mut self, line: &[u8]) {
        let Some(payload) = strip_data(line) else {
            return;
        };
        if payload == b"[DONE]" {
            return;
        }
        let mut usage = false;
        let mut from = 0;
        while let Some(off) = payload.get(from..).and_then(|rest| memchr(b':', rest)) {
            let colon = from + off;
            from = colon + 1;
            let Some((key, escaped)) = key_before(&payload[..colon]) else {
                continue;
            };
            let value = skip_ws(&payload[colon + 1..]);
            if key == b"usage" {
                usage |= value.first() == Some(&b'{');
            } else if !escaped && is_text_key(self.kind, key) {
                if let Some(s) = value.strip_prefix(b"\"") {
                    push_json_string(&mut self.totals.est, s);
                }
            }
        }
        if usage {
            self.scanner.reset();
            self.scanner.feed(payload, &mut self.totals);
        }
    }
}

/// Keys whose string values are streamed output text (module docs).
fn is_text_key(kind: ApiKind, key: &[u8]) -> bool {
    match kind {
        ApiKind::Anthropic | ApiKind::Other => {
            matches!(key, b"text" | b"thinking" | b"partial_json")
        }
        ApiKind::OpenAiChat => matches!(
            key,
            b"content" | b"refusal" | b"arguments" | b"reasoning_content"
        ),
        ApiKind::OpenAiResponses => key == b"delta",
    }
}

/// The `"key"` right before a colon (whitespace allowed), and whether one of
/// its quotes is preceded by a backslash (then it is likely inside a string).
fn key_before(before_colon: &[u8]) -> Option<(&[u8], bool)> {
    let end = before_colon
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    let s = before_colon[..=end].strip_suffix(b"\"")?;
    let q = memrchr(b'"', s)?;
    let escaped = s.last() == Some(&b'\\') || (q > 0 && s[q - 1] == b'\\');
    Some((&s[q + 1..], escaped))
}

/// First capacity of a buffer that [`bounded_extend`] grows: most usage
/// objects fit (they are 60–300 bytes), so one is made in one step
/// instead of five doublings from a few bytes.
const FIRST_CAPACITY: usize = 256;

/// Appends `bytes` (the caller checked `v.len() + bytes.len() <= max`)
/// without letting the capacity grow past `max`.
fn bounded_extend(v: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let needed = v.len() + bytes.len();
    if v.capacity() < needed {
        let want = needed
            .max(v.capacity().saturating_mul(2))
            .max(FIRST_CAPACITY)
            .min(max)
            .max(needed);
        v.reserve_exact(want - v.len());
    }
    v.extend_from_slice(bytes);
}

fn ov_add(ov: Overflow, bytes: &[u8]) -> Overflow {
    Overflow {
        bytes: ov.bytes.saturating_add(bytes.len() as u64),
        ..ov
    }
}

/// The payload of a `data:` line (one leading space removed).
fn strip_data(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data:")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(s.len());
    &s[n..]
}

/// Feeds the JSON string starting at `s` (after its opening quote), unescaped,
/// to the estimator; stops at the closing quote or the end of `s`.
fn push_json_string(est: &mut Estimator, s: &[u8]) {
    let mut out = Unescaped {
        buf: [0; 128],
        len: 0,
    };
    let mut rest = s;
    loop {
        let Some(i) = memchr2(b'"', b'\\', rest) else {
            out.push(est, rest);
            break;
        };
        out.push(est, &rest[..i]);
        if rest[i] == b'"' {
            break;
        }
        let esc = &rest[i + 1..];
        let Some((&c, after)) = esc.split_first() else {
            break;
        };
        rest = after;
        match c {
            b'n' => out.push(est, b"\n"),
            b't' => out.push(est, b"\t"),
            b'r' => out.push(est, b"\r"),
            b'b' => out.push(est, b"\x08"),
            b'f' => out.push(est, b"\x0c"),
            b'u' => {
                let (ch, used) = decode_u_escape(rest);
                rest = &rest[used..];
                let mut tmp = [0u8; 4];
                out.push(est, ch.encode_utf8(&mut tmp).as_bytes());
            }
            other => out.push(est, &[other]),
        }
    }
    out.flush(est);
}

/// Decodes the hex digits after `\u` (and a following `\uDC00`-style low
/// surrogate); returns the char (U+FFFD if invalid) and the bytes used.
fn decode_u_escape(s: &[u8]) -> (char, usize) {
    let Some(hi) = hex4(s) else {
        return (char::REPLACEMENT_CHARACTER, 0);
    };
    if (0xD800..0xDC00).contains(&hi) {
        if let Some(lo) = s
            .get(4..6)
            .filter(|p| *p == b"\\u")
            .and_then(|_| hex4(&s[6..]))
            .filter(|lo| (0xDC00..0xE000).contains(lo))
        {
            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
            return (char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER), 10);
        }
    }
    (char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER), 4)
}

fn hex4(s: &[u8]) -> Option<u32> {
    let h = s.get(..4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// Small buffer so unescaped text reaches the estimator in few pushes.
struct Unescaped {
    buf: [u8; 128],
    len: usize,
}

impl Unescaped {
    fn push(&mut self, est: &mut Estimator, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush(est);
            if bytes.len() > self.buf.len() {
                est.push(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn flush(&mut self, est: &mut Estimator) {
        est.push(&self.buf[..self.len]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::estimate::estimate_tokens;
    use super::*;
    use proptest::prelude::*;

    /// Anthropic's documented stream shape (with the docs' spacing).
    const ANTHROPIC_SSE: &str = concat!(
        "event: message_start\n",
        "data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-sonnet-4-5\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"cache_creation_input_tokens\": 0, \"cache_read_input_tokens\": 0, \"output_tokens\": 1}}}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n",
        "\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"! How can\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \" I help?\\n\\n\\\"Quoted\\\" caf\\u00e9 \\ud83d\\ude00\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\": \"content_block_stop\", \"index\": 0}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\":null}, \"usage\": {\"output_tokens\": 15}}\n",
        "\n",
        "event: message_stop\n",
        "data: {\"type\": \"message_stop\"}\n",
        "\n",
    );
    const ANTHROPIC_TEXT: &str = "Hello! How can I help?\n\n\"Quoted\" café 😀";

    /// Anthropic thinking + tool use (compact JSON, as the API sends it).
    const ANTHROPIC_TOOLS_SSE: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":2}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"I need the weather tool.\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\", \\\"usage\\\": {\\\"x\\\": 1}}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":89}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    /// OpenAI chat with `stream_options: {"include_usage": true}`.
    const CHAT_SSE: &str = concat!(
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"! How can I assist\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" you today?\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );
    const CHAT_TEXT: &str = "Hello! How can I assist you today?\n";

    const RESP_OBJ_HEAD: &str = "{\"id\":\"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654\",\"object\":\"response\",\"created_at\":1741290958,";
    const RESP_OBJ_MID: &str = "\"error\":null,\"incomplete_details\":null,\"instructions\":\"You are a helpful assistant.\",\"max_output_tokens\":null,\"model\":\"gpt-4.1-2025-04-14\",";
    const RESP_OBJ_TAIL: &str = "\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":null,\"summary\":null},\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",";

    fn responses_sse() -> String {
        let item = "\"id\":\"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654\"";
        let done_msg = format!("{{{item},\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"text\":\"Hi there! How can I assist you today?\",\"annotations\":[]}}]}}");
        let mut s = String::new();
        s += &format!("event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{RESP_OBJ_HEAD}\"status\":\"in_progress\",{RESP_OBJ_MID}\"output\":[],{RESP_OBJ_TAIL}\"usage\":null,\"user\":null,\"metadata\":{{}}}}}}\n\n");
        s += &format!("event: response.in_progress\ndata: {{\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{RESP_OBJ_HEAD}\"status\":\"in_progress\",{RESP_OBJ_MID}\"output\":[],{RESP_OBJ_TAIL}\"usage\":null,\"user\":null,\"metadata\":{{}}}}}}\n\n");
        s += &format!("event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{{{item},\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}}}\n\n");
        s += "event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"msg_67c9\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n";
        for (n, d) in ["Hi", " there", "!", " How can I assist", " you today?"]
            .iter()
            .enumerate()
        {
            s += &format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_67c9\",\"output_index\":0,\"content_index\":0,\"delta\":\"{d}\",\"logprobs\":[]}}\n\n", n + 4);
        }
        s += "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"sequence_number\":9,\"item_id\":\"msg_67c9\",\"output_index\":0,\"content_index\":0,\"text\":\"Hi there! How can I assist you today?\",\"logprobs\":[]}\n\n";
        s += "event: response.content_part.done\ndata: {\"type\":\"response.content_part.done\",\"sequence_number\":10,\"item_id\":\"msg_67c9\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"Hi there! How can I assist you today?\",\"annotations\":[]}}\n\n";
        s += &format!("event: response.output_item.done\ndata: {{\"type\":\"response.output_item.done\",\"sequence_number\":11,\"output_index\":0,\"item\":{done_msg}}}\n\n");
        s += &format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":12,\"response\":{RESP_OBJ_HEAD}\"status\":\"completed\",{RESP_OBJ_MID}\"output\":[{done_msg}],{RESP_OBJ_TAIL}\"usage\":{{\"input_tokens\":37,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":11,\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":48}},\"user\":null,\"metadata\":{{}}}}}}\n\n");
        s
    }
    const RESPONSES_TEXT: &str = "Hi there! How can I assist you today?";

    const ANTHROPIC_JSON: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"I'll check."},{"type":"tool_use","id":"toolu_01","name":"record","input":{"usage":{"input_tokens":1,"output_tokens":1},"message":{"usage":{"output_tokens":2}}}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":0,"cache_read_input_tokens":5,"output_tokens":503}}"#;
    const CHAT_JSON: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The \"usage\": {} of this is \\ fine","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#;
    const RESPONSES_JSON: &str = r#"{"id":"resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41","object":"response","created_at":1741476777,"status":"completed","error":null,"model":"gpt-4o-2024-08-06","output":[{"type":"message","id":"msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41","status":"completed","role":"assistant","content":[{"type":"output_text","text":"The image depicts a scenic landscape.","annotations":[]}]}],"reasoning":{"effort":null,"summary":null},"text":{"format":{"type":"text"}},"usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":0},"output_tokens":52,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":380},"user":null,"metadata":{}}"#;

    fn meter_whole(kind: ApiKind, streaming: bool, body: &[u8]) -> Usage {
        let mut m = UsageMeter::new(kind, streaming);
        m.feed(body);
        m.finish()
    }

    fn meter_chunks(kind: ApiKind, streaming: bool, body: &[u8], size: usize) -> Usage {
        let mut m = UsageMeter::new(kind, streaming);
        for c in body.chunks(size.max(1)) {
            m.feed(c);
            m.feed(&[]);
        }
        m.finish()
    }

    fn meter_cuts(kind: ApiKind, streaming: bool, body: &[u8], cuts: &[usize]) -> Usage {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut m = UsageMeter::new(kind, streaming);
        let mut prev = 0;
        for c in cuts.into_iter().chain(std::iter::once(body.len())) {
            m.feed(&body[prev..c]);
            prev = c;
        }
        m.finish()
    }

    fn all_chunkings(kind: ApiKind, streaming: bool, body: &[u8], want: Usage) {
        assert_eq!(meter_whole(kind, streaming, body), want, "whole");
        for size in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(
                meter_chunks(kind, streaming, body, size),
                want,
                "chunks of {size}"
            );
        }
    }

    fn reported(input: u32, output: u32) -> Usage {
        Usage {
            input_tokens: Some(input),
            output_tokens: output,
            reported: true,
        }
    }

    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    #[test]
    fn anthropic_stream() {
        all_chunkings(
            ApiKind::Anthropic,
            true,
            ANTHROPIC_SSE.as_bytes(),
            reported(25, 15),
        );
        all_chunkings(
            ApiKind::Anthropic,
            true,
            crlf(ANTHROPIC_SSE).as_bytes(),
            reported(25, 15),
        );
        all_chunkings(
            ApiKind::Anthropic,
            true,
            ANTHROPIC_SSE.replace('\n', "\r").as_bytes(),
            reported(25, 15),
        );
        all_chunkings(
            ApiKind::Anthropic,
            true,
            ANTHROPIC_TOOLS_SSE.as_bytes(),
            reported(2572, 89),
        );
    }

    #[test]
    fn anthropic_stream_cut_short() {
        // Cut after the deltas: message_start's output_tokens (1) + the text since.
        let cut = ANTHROPIC_SSE.find("event: content_block_stop").unwrap_or(0);
        let body = &ANTHROPIC_SSE.as_bytes()[..cut];
        let want = reported(25, 1 + estimate_tokens(ANTHROPIC_TEXT));
        all_chunkings(ApiKind::Anthropic, true, body, want);
        // Mid-stream usage() agrees with finish() once lines are complete.
        let mut m = UsageMeter::new(ApiKind::Anthropic, true);
        m.feed(body);
        assert_eq!(m.usage(), want);
        // Stream with no usage at all: the estimate of the streamed text.
        let no_usage: String = ANTHROPIC_SSE
            .lines()
            .filter(|l| !l.contains("usage"))
            .map(|l| format!("{l}\n"))
            .collect();
        let want = Usage {
            input_tokens: None,
            output_tokens: estimate_tokens(ANTHROPIC_TEXT),
            reported: false,
        };
        all_chunkings(ApiKind::Anthropic, true, no_usage.as_bytes(), want);
    }

    #[test]
    fn chat_stream() {
        all_chunkings(
            ApiKind::OpenAiChat,
            true,
            CHAT_SSE.as_bytes(),
            reported(9, 12),
        );
        all_chunkings(
            ApiKind::OpenAiChat,
            true,
            crlf(CHAT_SSE).as_bytes(),
            reported(9, 12),
        );
        // Without include_usage: estimate, no input.
        let no_usage: String = CHAT_SSE
            .lines()
            .filter(|l| !l.contains("\"usage\":{"))
            .map(|l| format!("{l}\n"))
            .collect();
        let want = Usage {
            input_tokens: None,
            output_tokens: estimate_tokens(CHAT_TEXT),
            reported: false,
        };
        all_chunkings(ApiKind::OpenAiChat, true, no_usage.as_bytes(), want);
        // Text and usage in the same final chunk (some compatible servers).
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi there\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        all_chunkings(ApiKind::OpenAiChat, true, body.as_bytes(), reported(3, 2));
    }

    #[test]
    fn responses_stream() {
        let sse = responses_sse();
        all_chunkings(
            ApiKind::OpenAiResponses,
            true,
            sse.as_bytes(),
            reported(37, 11),
        );
        // Cut before response.completed: deltas only (the .done events don't count twice).
        let cut = sse.find("event: response.completed").unwrap_or(0);
        let want = Usage {
            input_tokens: None,
            output_tokens: estimate_tokens(RESPONSES_TEXT),
            reported: false,
        };
        all_chunkings(ApiKind::OpenAiResponses, true, &sse.as_bytes()[..cut], want);
    }

    #[test]
    fn json_bodies() {
        all_chunkings(
            ApiKind::Anthropic,
            false,
            ANTHROPIC_JSON.as_bytes(),
            reported(2100, 503),
        );
        all_chunkings(
            ApiKind::OpenAiChat,
            false,
            CHAT_JSON.as_bytes(),
            reported(1117, 46),
        );
        all_chunkings(
            ApiKind::OpenAiResponses,
            false,
            RESPONSES_JSON.as_bytes(),
            reported(328, 52),
        );
        // Every two-way split, with the usage object at the end.
        for body in [ANTHROPIC_JSON, CHAT_JSON, RESPONSES_JSON] {
            let want = meter_whole(ApiKind::OpenAiChat, false, body.as_bytes());
            for i in 0..=body.len() {
                assert_eq!(
                    meter_cuts(ApiKind::OpenAiChat, false, body.as_bytes(), &[i]),
                    want
                );
            }
        }
        // Pretty-printed with whitespace everywhere.
        let pretty = "{\n  \"content\" : [ ] ,\n  \"usage\"\t:\r\n {\n \"input_tokens\" : 7 , \"output_tokens\" : 8 }\n}\n";
        all_chunkings(ApiKind::Anthropic, false, pretty.as_bytes(), reported(7, 8));
        // No usage: size fallback.
        let body = r#"{"id":"x","content":[{"type":"text","text":"hello"}]}"#;
        let want = Usage {
            input_tokens: None,
            output_tokens: body.len().div_ceil(4) as u32,
            reported: false,
        };
        all_chunkings(ApiKind::Anthropic, false, body.as_bytes(), want);
        // Usage not an object / nested too deep / too big / malformed.
        for body in [
            r#"{"usage":null,"x":1}"#,
            r#"{"usage":[1,2]}"#,
            r#"{"a":{"b":{"usage":{"output_tokens":5}}}}"#,
            r#"{"usage":{"output_tokens":"five"}}"#,
            r#"{"usage":{"output_tokens":5"#,
            r#"[{"usage":{"output_tokens":5}}]"#,
        ] {
            assert!(
                !meter_whole(ApiKind::Anthropic, false, body.as_bytes()).reported,
                "{body}"
            );
        }
        let huge = format!(
            "{{\"usage\":{{\"pad\":\"{}\",\"output_tokens\":5}}}}",
            "x".repeat(MAX_USAGE_OBJECT)
        );
        assert!(!meter_whole(ApiKind::Anthropic, false, huge.as_bytes()).reported);
        // Saturation and negatives.
        let u = meter_whole(
            ApiKind::Anthropic,
            false,
            br#"{"usage":{"input_tokens":4294967295,"cache_read_input_tokens":9,"output_tokens":1e40}}"#,
        );
        assert_eq!(u, reported(u32::MAX, u32::MAX));
        let u = meter_whole(
            ApiKind::Anthropic,
            false,
            br#"{"usage":{"input_tokens":-4,"output_tokens":6}}"#,
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: None,
                output_tokens: 6,
                reported: true
            }
        );
    }

    #[test]
    fn escaped_text_is_unescaped() {
        let body = "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"a\\tb\\\\c\\/d\\u0041\\ud83d\\ude00\\ud800x\\uZZ\"}}\n";
        let u = meter_whole(ApiKind::Anthropic, true, body.as_bytes());
        assert_eq!(
            u.output_tokens,
            estimate_tokens("a\tb\\c/dA😀\u{fffd}x\u{fffd}ZZ")
        );
        // A line cut inside the string counts what is there.
        let u = meter_whole(
            ApiKind::Anthropic,
            true,
            b"data: {\"delta\":{\"text\":\"abc\\",
        );
        assert_eq!(u.output_tokens, estimate_tokens("abc"));
    }

    #[test]
    fn long_lines_stay_bounded() {
        // Responses: a response.completed far longer than MAX_LINE, usage at the end.
        let text = "lorem ipsum dolor sit amet ".repeat(10_000);
        let body = format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"x\"}}\n\n\
             event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"content\":[{{\"type\":\"output_text\",\"text\":\"{text}\"}}]}}],\"usage\":{{\"input_tokens\":10,\"output_tokens\":70000}}}}}}\n\n"
        );
        assert!(body.len() > 4 * MAX_LINE);
        for size in [1, 1000, 70_000, body.len()] {
            let mut m = UsageMeter::new(ApiKind::OpenAiResponses, true);
            for c in body.as_bytes().chunks(size) {
                m.feed(c);
                assert!(m.buffered_bytes() <= MAX_LINE + MAX_USAGE_OBJECT);
            }
            assert_eq!(m.finish(), reported(10, 70_000));
        }
        // Anthropic: one giant delta line is counted by size, never kept.
        let big = "word ".repeat(30_000);
        let line = format!("data: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"{big}\"}}}}\n");
        let want = Usage {
            input_tokens: None,
            output_tokens: (line.len() as u32 - 1) / 4,
            reported: false,
        };
        all_chunkings(ApiKind::Anthropic, true, line.as_bytes(), want);
        // Exactly MAX_LINE is still a normal line.
        let pad = MAX_LINE - "data: {\"text\":\"\"}".len();
        let text: String = "ab cd ".chars().cycle().take(pad).collect();
        let line = format!("data: {{\"text\":\"{text}\"}}");
        assert_eq!(line.len(), MAX_LINE);
        let u = meter_chunks(
            ApiKind::Anthropic,
            true,
            format!("{line}\n").as_bytes(),
            4096,
        );
        assert_eq!(u.output_tokens, estimate_tokens(&text));
    }

    #[test]
    fn other_lines_ignored() {
        let body = ": comment\nid: 1\nretry: 10\nevent: x\ndata:[DONE]\ndata:\ndata: not json {\"usage\":{\"output_tokens\":3}}\n\n";
        // `data:` without a space is still data; the usage object is found even in a non-JSON line.
        assert_eq!(
            meter_whole(ApiKind::Anthropic, true, body.as_bytes()),
            Usage {
                input_tokens: None,
                output_tokens: 3,
                reported: true
            }
        );
        // Trailing line without a newline is processed by finish().
        let u = meter_whole(
            ApiKind::OpenAiChat,
            true,
            b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
        );
        assert_eq!(u, reported(1, 2));
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../shared/bench/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (the shared bench fixtures belong beside the project)")
        })
    }

    #[test]
    fn bench_fixtures() {
        let json = fixture("messages.json");
        let sse = fixture("stream.sse");
        all_chunkings(ApiKind::Anthropic, false, &json, reported(25, 87));
        all_chunkings(ApiKind::Anthropic, true, &sse, reported(25, 15));
    }

    const KINDS: [ApiKind; 4] = [
        ApiKind::Anthropic,
        ApiKind::OpenAiChat,
        ApiKind::OpenAiResponses,
        ApiKind::Other,
    ];

    proptest! {
        #[test]
        fn documented_streams_any_chunking(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
            prop_assert_eq!(meter_cuts(ApiKind::Anthropic, true, ANTHROPIC_SSE.as_bytes(), &cuts), reported(25, 15));
            prop_assert_eq!(meter_cuts(ApiKind::Anthropic, true, ANTHROPIC_TOOLS_SSE.as_bytes(), &cuts), reported(2572, 89));
            prop_assert_eq!(meter_cuts(ApiKind::OpenAiChat, true, CHAT_SSE.as_bytes(), &cuts), reported(9, 12));
            prop_assert_eq!(meter_cuts(ApiKind::OpenAiResponses, true, responses_sse().as_bytes(), &cuts), reported(37, 11));
            prop_assert_eq!(meter_cuts(ApiKind::Anthropic, false, ANTHROPIC_JSON.as_bytes(), &cuts), reported(2100, 503));
            prop_assert_eq!(meter_cuts(ApiKind::OpenAiChat, false, CHAT_JSON.as_bytes(), &cuts), reported(1117, 46));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_is_invisible(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            for kind in KINDS {
                for streaming in [false, true] {
                    let whole = meter_whole(kind, streaming, &body);
                    prop_assert_eq!(meter_cuts(kind, streaming, &body, &cuts), whole);
                }
            }
        }

        #[test]
        fn sse_like_bytes_chunking_is_invisible(
            body in "(data: |event: |\\{|\\}|\\[|\\]|\"usage\"|\"text\"|\"content\"|\"delta\"|\"message\"|\"response\"|\"output_tokens\"|:|,|[0-9]{1,3}|\\\\|\"|\r|\n|\r\n| |[a-z]{1,5}){0,120}",
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            for kind in KINDS {
                for streaming in [false, true] {
                    let whole = meter_whole(kind, streaming, body.as_bytes());
                    prop_assert_eq!(meter_cuts(kind, streaming, body.as_bytes(), &cuts), whole);
                }
            }
        }

        #[test]
        fn memory_stays_bounded(
            pieces in proptest::collection::vec((any::<u8>(), 1usize..40_000), 1..12),
            streaming in any::<bool>(),
        ) {
            let mut m = UsageMeter::new(ApiKind::Anthropic, streaming);
            m.feed(b"data: {\"usage\":{");
            for (byte, n) in pieces {
                let b = if byte % 3 == 0 { b'\n' } else { byte };
                m.feed(&vec![b; n]);
                prop_assert!(m.buffered_bytes() <= MAX_LINE + MAX_USAGE_OBJECT);
            }
            let _ = m.finish();
        }
    }
}
