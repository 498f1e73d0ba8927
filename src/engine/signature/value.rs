//! The signature value: comparison (§4), informative signatures (§6), index keys (§5) and the hex form.

use super::*;

/// Compact signature of a prompt's template; see `docs/signature.md` for the design.
///
/// It is `Copy` and 200 bytes: 16 + 16 MinHash minima of 32 bits (head and
/// tail regions), 32 of 16 bits (body), the prompt's token count and two
/// flags (whether the head and the tail are fallback regions).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromptSignature {
    pub(super) head: [u32; REGION_BINS],
    pub(super) tail: [u32; REGION_BINS],
    pub(super) body: [u16; BODY_BINS],
    pub(super) tokens: u32,
    /// `HEAD_FALLBACK`, `TAIL_FALLBACK`, `HEAD_EMPTY` and `TAIL_EMPTY` bits.
    pub(super) flags: u8,
}

/// Flag: the first line held fewer than `REGION_MIN_SHINGLES` shingles.
pub(super) const HEAD_FALLBACK: u8 = 1;
/// Flag: the last line held fewer than `REGION_MIN_SHINGLES` shingles.
pub(super) const TAIL_FALLBACK: u8 = 2;
/// Flag: every shingle of the head was a stock shingle (§10): the head sketch is empty.
pub(super) const HEAD_EMPTY: u8 = 4;
/// Flag: every shingle of the tail was a stock shingle: the tail sketch is empty.
pub(super) const TAIL_EMPTY: u8 = 8;
/// Every flag a signature may carry.
pub(super) const ALL_FLAGS: u8 = HEAD_FALLBACK | TAIL_FALLBACK | HEAD_EMPTY | TAIL_EMPTY;

/// Estimated Jaccard similarities of two signatures, region by region (§4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    /// Fraction of equal head bins, in `[0, 1]`.
    pub head: f32,
    /// Fraction of equal tail bins, in `[0, 1]`.
    pub tail: f32,
    /// Fraction of equal body bins, in `[0, 1]`.
    pub body: f32,
}

impl Similarity {
    /// The largest of the three estimates.
    pub fn max(&self) -> f32 {
        self.head.max(self.tail).max(self.body)
    }
}

/// Error from [`PromptSignature::from_hex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseSignatureError {
    /// The string does not have the length of an encoded signature.
    Length {
        /// Hex digits expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A character is not a hexadecimal digit.
    NotHex {
        /// Byte offset of the first bad character.
        at: usize,
    },
    /// The encoding's version is not one this code reads.
    Version(u8),
}

impl fmt::Display for ParseSignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseSignatureError::Length { expected, found } => write!(
                f,
                "prompt signature: expected {expected} hex digits, found {found} characters"
            ),
            ParseSignatureError::NotHex { at } => {
                write!(f, "prompt signature: not a hex digit at byte {at}")
            }
            ParseSignatureError::Version(v) => {
                write!(f, "prompt signature: unknown version {v}")
            }
        }
    }
}

impl std::error::Error for ParseSignatureError {}

/// Estimated Jaccard similarity of the head, tail and body sketches (§4).
///
/// The body estimate is 0 unless both prompts have at least
/// [`MIN_BODY_TOKENS`] tokens.
pub fn similarity_parts(a: &PromptSignature, b: &PromptSignature) -> Similarity {
    let head = equal_region(a, b, HEAD_EMPTY, &a.head, &b.head);
    let tail = equal_region(a, b, TAIL_EMPTY, &a.tail, &b.tail);
    let body = if body_usable(a, b) {
        equal_bins(&a.body, &b.body)
    } else {
        0
    };
    Similarity {
        head: head as f32 / REGION_BINS as f32,
        tail: tail as f32 / REGION_BINS as f32,
        body: body as f32 / BODY_BINS as f32,
    }
}

/// Template similarity in `[0, 1]`: the largest of the head, tail and body
/// estimates ([`similarity_parts`]). 1 for a signature with itself.
pub fn similarity(a: &PromptSignature, b: &PromptSignature) -> f32 {
    similarity_parts(a, b).max()
}

/// Whether two prompts look built from the same template (§4).
///
/// True when both are informative and at least [`NEAR_REGION_BINS`] of 16
/// head bins, or of 16 tail bins, are equal, or (for prompts of at least
/// [`MIN_BODY_TOKENS`] tokens) [`NEAR_BODY_BINS`] of 32 body bins.
pub fn is_near(a: &PromptSignature, b: &PromptSignature) -> bool {
    a.is_informative()
        && b.is_informative()
        && (equal_region(a, b, HEAD_EMPTY, &a.head, &b.head) >= NEAR_REGION_BINS
            || equal_region(a, b, TAIL_EMPTY, &a.tail, &b.tail) >= NEAR_REGION_BINS
            || (body_usable(a, b) && equal_bins(&a.body, &b.body) >= NEAR_BODY_BINS))
}

pub(super) fn body_usable(a: &PromptSignature, b: &PromptSignature) -> bool {
    a.tokens >= MIN_BODY_TOKENS && b.tokens >= MIN_BODY_TOKENS
}

/// Equal bins of one region; none when either side's region is empty (§10).
pub(super) fn equal_region(
    a: &PromptSignature,
    b: &PromptSignature,
    empty: u8,
    x: &[u32],
    y: &[u32],
) -> usize {
    if (a.flags | b.flags) & empty != 0 {
        0
    } else {
        equal_bins(x, y)
    }
}

pub(super) fn equal_bins<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

impl PromptSignature {
    /// Whether the prompt had at least [`MIN_INFORMATIVE_TOKENS`] tokens (§6).
    /// Non-informative signatures are never near anything and should not be indexed.
    pub fn is_informative(&self) -> bool {
        self.tokens >= MIN_INFORMATIVE_TOKENS
            && self.flags & (HEAD_EMPTY | TAIL_EMPTY) != HEAD_EMPTY | TAIL_EMPTY
    }

    /// Number of tokens in the prompt after masking (saturating at `u32::MAX`).
    pub fn token_count(&self) -> u32 {
        self.tokens
    }

    /// LSH keys for an exact-value index (§5): 8 from the head, then 8 from the tail.
    ///
    /// Prompts of one template share at least one key with high probability,
    /// and unrelated prompts share none except by chance (2⁻³² per key). Keys
    /// from different positions never coincide except by chance, so one map
    /// can hold all of them. Index only informative signatures, and confirm a
    /// candidate with [`is_near`]. A key of 0 is no key: the region's shingles
    /// were all stock (§10); never index it.
    pub fn index_keys(&self) -> [u64; INDEX_KEYS] {
        let mut out = [0u64; INDEX_KEYS];
        let half = INDEX_KEYS / 2;
        let regions = [
            (&self.head, self.flags & HEAD_FALLBACK != 0, HEAD_EMPTY),
            (&self.tail, self.flags & TAIL_FALLBACK != 0, TAIL_EMPTY),
        ];
        for (r, (bins, fallback, empty)) in regions.into_iter().enumerate() {
            if self.flags & empty != 0 {
                // No key: every shingle of the region was stock (§10).
                continue;
            }
            for j in 0..half {
                // Two bins must agree (§5): a short shared phrase rarely
                // fills both, and unrelated minima rarely coincide in both.
                let a = bins.get(2 * j).copied().unwrap_or(0);
                let b = bins.get(2 * j + 1).copied().unwrap_or(0);
                let value = (u64::from(a) << 32) | u64::from(b);
                let tag = (u64::from(KEYS_VERSION) << 56)
                    | ((r as u64) << 48)
                    | (u64::from(fallback) << 44)
                    | ((j as u64) << 40);
                if let Some(slot) = out.get_mut(r * half + j) {
                    *slot = moremur(moremur(value ^ KEY_SALT) ^ tag).max(1);
                }
            }
        }
        out
    }

    /// Lowercase hex of the binary form: version byte, flags byte, token
    /// count, head, tail and body bins, all big-endian (396 hex digits).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = self.to_bytes();
        let mut s = String::with_capacity(2 * ENCODED_LEN);
        for b in bytes {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses the output of [`to_hex`](Self::to_hex) (either case of hex digits).
    pub fn from_hex(s: &str) -> Result<Self, ParseSignatureError> {
        let raw = s.as_bytes();
        if raw.len() != 2 * ENCODED_LEN {
            return Err(ParseSignatureError::Length {
                expected: 2 * ENCODED_LEN,
                found: raw.len(),
            });
        }
        let mut bytes = [0u8; ENCODED_LEN];
        for (i, (out, pair)) in bytes.iter_mut().zip(raw.chunks_exact(2)).enumerate() {
            let hi = hex_val(pair.first().copied().unwrap_or(b'!'))
                .ok_or(ParseSignatureError::NotHex { at: 2 * i })?;
            let lo = hex_val(pair.get(1).copied().unwrap_or(b'!'))
                .ok_or(ParseSignatureError::NotHex { at: 2 * i + 1 })?;
            *out = (hi << 4) | lo;
        }
        Self::from_bytes(&bytes)
    }

    fn to_bytes(self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let mut w = Writer {
            buf: &mut out,
            pos: 0,
        };
        w.put(&[VERSION, self.flags]);
        w.put(&self.tokens.to_be_bytes());
        for v in self.head.iter().chain(self.tail.iter()) {
            w.put(&v.to_be_bytes());
        }
        for v in &self.body {
            w.put(&v.to_be_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8; ENCODED_LEN]) -> Result<Self, ParseSignatureError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let version = r.u8();
        if version != VERSION {
            return Err(ParseSignatureError::Version(version));
        }
        let flags = r.u8() & ALL_FLAGS;
        let tokens = r.u32();
        let mut sig = PromptSignature {
            head: [0; REGION_BINS],
            tail: [0; REGION_BINS],
            body: [0; BODY_BINS],
            tokens,
            flags,
        };
        for v in sig.head.iter_mut().chain(sig.tail.iter_mut()) {
            *v = r.u32();
        }
        for v in sig.body.iter_mut() {
            *v = r.u16();
        }
        Ok(sig)
    }
}

impl fmt::Debug for PromptSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptSignature")
            .field("tokens", &self.tokens)
            .field("hex", &self.to_hex())
            .finish()
    }
}

/// Same as [`PromptSignature::to_hex`].
impl fmt::Display for PromptSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Same as [`PromptSignature::from_hex`].
impl FromStr for PromptSignature {
    type Err = ParseSignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

pub(super) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(super) struct Writer<'a> {
    buf: &'a mut [u8; ENCODED_LEN],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.pos) {
                *slot = b;
            }
            self.pos += 1;
        }
    }
}

pub(super) struct Reader<'a> {
    buf: &'a [u8; ENCODED_LEN],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for slot in out.iter_mut() {
            *slot = self.buf.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
        }
        out
    }
    fn u8(&mut self) -> u8 {
        u8::from_be_bytes(self.take::<1>())
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take::<2>())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take::<4>())
    }
}
