//! The engine's hash functions and mixers, in one place: every one is a fixed function (no random seed), so the
//! same inputs give the same account links, cluster ids, signature keys and cohort ids on every run and replica.
//!
//! Recorded traffic, golden values in tests and ids already handed out depend on each function's exact output:
//! two functions here that differ are kept apart on purpose, and none may change.

use std::hash::Hasher;

/// FNV-1a's 64-bit offset basis: the hash of no bytes.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// 2^64 / φ (the golden ratio), odd: the multiplier of Fibonacci hashing, SplitMix64's increment.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a (64-bit) continued from `h` over `bytes`; `fnv1a_from(FNV_OFFSET, b)` is [`fnv1a`]`(b)`.
#[inline]
pub fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a continued over text written to it: `write!(Fnv1a(h), "{v}")`
/// hashes `v`'s `Display` text exactly as [`fnv1a_from`] over that text
/// would, without making the text.
pub struct Fnv1a(pub u64);

impl std::fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 = fnv1a_from(self.0, s.as_bytes());
        Ok(())
    }
}

/// FNV-1a (64-bit) of `bytes`.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// SplitMix64's output function (add the golden-ratio increment, then two xor-shift-multiplies and an
/// xor-shift): spreads any key over all 64 bits.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// MurmurHash3's 64-bit finaliser `fmix64`: a bijection with full avalanche.
#[inline]
pub fn murmur3_fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A running hash `h` combined with a value `v`: `fmix64(h × GOLDEN ⊕ v)` (the linker's index keys and ids).
#[inline]
pub fn murmur3_combine(h: u64, v: u64) -> u64 {
    murmur3_fmix64(h.wrapping_mul(GOLDEN) ^ v)
}

/// Pelle Evensen's Moremur, a variant of MurmurHash3's `fmix64` with other shifts and multipliers: a bijection
/// with full avalanche (the prompt signature's shingles, salts and keys).
#[inline]
pub const fn moremur(mut x: u64) -> u64 {
    x ^= x >> 27;
    x = x.wrapping_mul(0x3C79_AC49_2BA7_B653);
    x ^= x >> 33;
    x = x.wrapping_mul(0x1C69_B3F7_4AC4_AE35);
    x ^= x >> 27;
    x
}

/// Hash of the word `buf[start..end]`, eight bytes at a time (multiply-rotate with wyhash's constants), each
/// byte OR-ed with `or_byte` first (`0x20` lowercases an ASCII word made of letters, `-` and `'`; `0` keeps
/// bytes that are already lowercase). Bytes of `buf` past `end` may be read but do not count. Not a full mix:
/// the prompt signature mixes every shingle of words afterwards.
#[inline]
pub fn word_hash(buf: &[u8], start: usize, end: usize, or_byte: u8) -> u64 {
    let or_word = u64::from_le_bytes([or_byte; 8]);
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    let mut i = start;
    loop {
        let len = end.saturating_sub(i).min(8);
        let v = match buf.get(i..i + 8) {
            Some(block) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(block);
                let keep = if len == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * len)) - 1
                };
                (u64::from_le_bytes(w) | or_word) & keep
            }
            None => {
                let mut w = [0u8; 8];
                for (dst, &src) in w.iter_mut().zip(buf.get(i..end).unwrap_or(&[])) {
                    *dst = src | or_byte;
                }
                u64::from_le_bytes(w)
            }
        };
        if len < 8 || i + 8 == end {
            // Last block. Injective enough: the shingle hash mixes fully afterwards.
            return (h ^ v ^ ((len as u64) << 59)).wrapping_mul(0xE703_7ED1_A0B4_28DB);
        }
        h = (h ^ v).wrapping_mul(0xA076_1D64_78BD_642F).rotate_left(29);
        i += 8;
    }
}

/// Hasher for maps keyed by ids that are already uniform hashes (account and cluster ids): a `u64` key is
/// multiplied by [`GOLDEN`] (Fibonacci hashing), so dashmap's shard selection (high bits) and the table's bucket
/// selection (low bits) both vary.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Spread the bits so dashmap's shard selection (high bits) and the
        // table's bucket selection (low bits) both vary.
        self.0 = n.wrapping_mul(GOLDEN);
    }
}

/// Hasher for the linker's maps, whose keys are already hashes: one multiply and one xor-shift per word. Fixed,
/// so iteration order never depends on a random seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        let x = (self.0 ^ v).wrapping_mul(GOLDEN);
        self.0 = x ^ (x >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published reference values, so a slip in a constant cannot pass unnoticed.
    #[test]
    fn reference_values() {
        // FNV-1a 64 test vectors (Fowler, Noll, Vo).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_from(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
        // SplitMix64 seeded with 0: its first output.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(murmur3_fmix64(0), 0);
        assert_eq!(moremur(0), 0);
    }
}
