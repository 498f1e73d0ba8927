//! Normalisation and tokens, in one pass without allocation (§1).

use super::*;

// ---------------------------------------------------------------------------
// Tokenising

#[inline]
pub(super) fn is_ascii_ws(b: u8) -> bool {
    CLASS[usize::from(b)] & C_WS != 0
}

pub(super) const C_LOWER: u8 = 1;
pub(super) const C_UPPER: u8 = 2;
pub(super) const C_DIGIT: u8 = 4;
/// Whitespace.
pub(super) const C_WS: u8 = 8;
/// Ends an ASCII chunk: whitespace, `"`, `` ` `` or a non-ASCII byte.
pub(super) const C_STOP: u8 = 16;
/// Ends a sentence when it trails a word: `.` `!` `?` `:` `;`.
pub(super) const C_SENT: u8 = 32;
/// Allowed inside a word: `-` (kept) and `'` (dropped).
pub(super) const C_INWORD: u8 = 64;
pub(super) const C_ALNUM: u8 = C_LOWER | C_UPPER | C_DIGIT;

/// Class bits of every byte value.
pub(super) const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_lowercase() {
            C_LOWER
        } else if c.is_ascii_uppercase() {
            C_UPPER
        } else if c.is_ascii_digit() {
            C_DIGIT
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            C_WS | C_STOP
        } else if c == b'"' || c == b'`' || c >= 0x80 {
            C_STOP
        } else if matches!(c, b'.' | b'!' | b'?' | b':' | b';') {
            C_SENT
        } else if c == b'-' || c == b'\'' {
            C_INWORD
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Scripts written without spaces between words: one token per character.
pub(super) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// Closing marks for an opening quotation mark.
pub(super) fn closers_of(c: char) -> Option<&'static [char]> {
    match c {
        '\u{201C}' => Some(&['\u{201D}', '\u{201C}']),
        '\u{201E}' => Some(&['\u{201C}', '\u{201D}']),
        '\u{00AB}' => Some(&['\u{00BB}']),
        '\u{300C}' => Some(&['\u{300D}']),
        '\u{300E}' => Some(&['\u{300F}']),
        _ => None,
    }
}

/// Non-ASCII characters that end a chunk.
pub(super) fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || is_cjk(c)
        || closers_of(c).is_some()
        || matches!(c, '\u{201D}' | '\u{00BB}' | '\u{300D}' | '\u{300F}')
        || matches!(c as u32, 0x3000..=0x303F | 0xFF00..=0xFF0F)
}

/// Position of the first "```" at or after `from`.
pub(super) fn find_fence(hay: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let p = i + hay.get(i..)?.iter().position(|&x| x == b'`')?;
        if hay.get(p..p + 3) == Some(b"```".as_slice()) {
            return Some(p);
        }
        i = p + 1;
    }
}

/// Splits `text` into tokens (§1) and feeds them to `sk`.
pub(super) fn tokenize(text: &str, sk: &mut Sketcher) {
    tokenize_from(text, 0, sk);
}

/// Splits `text[from..]` into tokens (§1) and feeds them to `sk`, which
/// holds the tokens of `text[..from]` (a walk that stopped at the end of
/// that text; `from` starts a token: 0, or a `'\n'`). Returns whether a
/// search for a closing mark (a fence, inline code, a quotation mark) ran
/// into the end of `text` without finding one: then what the walk did
/// depends on what would follow, and the walk cannot be continued on a
/// longer text (§11).
///
/// Runs in time linear in `text.len() - from`: each failed search for a
/// closing mark scans bytes that hold no such mark, and the scan resumes
/// past them.
pub(super) fn tokenize_from(text: &str, from: usize, sk: &mut Sketcher) -> bool {
    let b = text.as_bytes();
    let n = b.len();
    let mut open = false;
    let mut i = from;
    while let Some(&c) = b.get(i) {
        if c < 0x80 {
            if is_ascii_ws(c) {
                if c == b'\n' {
                    sk.newline();
                }
                i += 1;
                continue;
            }
            if c == b'`' {
                if b.get(i..i + 3) == Some(b"```".as_slice()) {
                    i = match find_fence(b, i + 3) {
                        Some(e) => e + 3,
                        None => {
                            open = true;
                            n
                        }
                    };
                    sk.mask(MASK_CODE);
                    sk.w.sentence_start = true;
                    continue;
                }
                let lim = (i + 1 + INLINE_CODE_MAX_BYTES).min(n);
                let close = b
                    .get(i + 1..lim)
                    .and_then(|s| s.iter().position(|&x| x == b'`' || x == b'\n'))
                    .map(|p| i + 1 + p);
                match close {
                    Some(e) if b.get(e) == Some(&b'`') => {
                        sk.mask(MASK_CODE);
                        i = e + 1;
                    }
                    Some(_) => i += 1,
                    None => {
                        open |= lim == n;
                        i += 1;
                    }
                }
                continue;
            }
            if c == b'"' {
                let lim = (i + 1 + QUOTE_MAX_BYTES).min(n);
                match b
                    .get(i + 1..lim)
                    .and_then(|s| s.iter().position(|&x| x == b'"'))
                {
                    Some(p) => {
                        sk.mask(MASK_QUOTE);
                        i += p + 2;
                    }
                    None => {
                        open |= lim == n;
                        i += 1;
                    }
                }
                continue;
            }
        } else {
            let Some(ch) = text.get(i..).and_then(|s| s.chars().next()) else {
                break;
            };
            let len = ch.len_utf8();
            if let Some(closers) = closers_of(ch) {
                match find_closer(text, i + len, ch, closers) {
                    Closer::At(e) => {
                        sk.mask(MASK_QUOTE);
                        i = e;
                    }
                    Closer::None => i += len,
                    Closer::PastEnd => {
                        open = true;
                        i += len;
                    }
                }
                continue;
            }
            if is_separator(ch) {
                if is_cjk(ch) {
                    let mut tmp = [0u8; 4];
                    let len = ch.encode_utf8(&mut tmp).len();
                    sk.word(word_hash(&tmp, 0, len, 0));
                } else if matches!(ch, '\u{2028}' | '\u{2029}' | '\u{0085}') {
                    sk.newline();
                }
                i += len;
                continue;
            }
        }
        // A chunk: up to whitespace, a quote or backtick, or a separator.
        if let Some(end) = ascii_chunk(b, i, sk) {
            i = end;
            continue;
        }
        let start = i;
        let mut j = i;
        while let Some(&d) = b.get(j) {
            if d < 0x80 {
                if is_ascii_ws(d) || d == b'"' || d == b'`' {
                    break;
                }
                j += 1;
            } else {
                match text.get(j..).and_then(|s| s.chars().next()) {
                    Some(ch) if !is_separator(ch) => j += ch.len_utf8(),
                    _ => break,
                }
            }
        }
        if j == start {
            // Cannot happen (the byte at `i` starts a chunk); still make progress.
            i += 1;
            while i < n && !text.is_char_boundary(i) {
                i += 1;
            }
            continue;
        }
        if let Some(chunk) = text.get(start..j) {
            chunk_token(chunk, sk);
        }
        i = j;
    }
    open
}

/// What the search for a quoted span's closing mark found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closer {
    /// The span's end (exclusive).
    At(usize),
    /// No closing mark: past `QUOTE_MAX_BYTES`, or another opening mark.
    None,
    /// None before the end of the text, which came first.
    PastEnd,
}

/// The end of a quoted span opened by `open` just before `from`, if a
/// closing mark follows within `QUOTE_MAX_BYTES`. Another `open` stops the search.
pub(super) fn find_closer(text: &str, from: usize, open: char, closers: &[char]) -> Closer {
    let Some(rest) = text.get(from..) else {
        return Closer::PastEnd;
    };
    for (off, d) in rest.char_indices() {
        if off >= QUOTE_MAX_BYTES {
            return Closer::None;
        }
        if closers.contains(&d) {
            return Closer::At(from + off + d.len_utf8());
        }
        if d == open {
            return Closer::None;
        }
    }
    Closer::PastEnd
}

#[inline]
pub(super) fn ends_sentence(b: u8) -> bool {
    CLASS[usize::from(b)] & C_SENT != 0
}

pub(super) fn is_url(chunk: &[u8]) -> bool {
    chunk
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"www."))
        || chunk
            .iter()
            .enumerate()
            .any(|(p, &c)| c == b':' && chunk.get(p + 1..p + 3) == Some(b"//".as_slice()))
}

/// Fast path of [`chunk_token`] for a chunk of ASCII bytes starting at
/// `start`: emits its token and returns the chunk's end, or returns `None`
/// (having emitted nothing) if the chunk holds a non-ASCII byte.
#[inline]
pub(super) fn ascii_chunk(b: &[u8], start: usize, sk: &mut Sketcher) -> Option<usize> {
    // Most chunks are one lower-case word between spaces: nothing to classify.
    let end = lowercase_end(b, start);
    if end > start && end - start <= LONG_WORD_CHARS && b.get(end).is_none_or(|&c| is_ascii_ws(c)) {
        sk.w.sentence_start = false;
        sk.word(word_hash(b, start, end, 0));
        return Some(end);
    }
    // One scan: find the chunk's end and its core (first to last
    // alphanumeric byte), and gather what classifies the core.
    let mut j = start;
    let mut core_start = usize::MAX;
    let mut core_end = start;
    let mut seen = 0u8; // OR of the classes of the core's alphanumerics
    let mut camel = 0u8;
    let mut prev = 0u8;
    let mut pending_special = false; // punctuation since the last alphanumeric
    let mut special = false; // punctuation other than - and ' inside the core
    let mut sent = false; // sentence-ending punctuation since the last alphanumeric
    while let Some(&c) = b.get(j) {
        let class = CLASS[usize::from(c)];
        if class == C_LOWER {
            // Fast path: a run of lowercase letters.
            if core_start == usize::MAX {
                core_start = j;
            }
            special |= pending_special;
            pending_special = false;
            sent = false;
            seen |= C_LOWER;
            j = lowercase_end(b, j + 1);
            core_end = j;
            prev = C_LOWER;
            continue;
        }
        if class & C_ALNUM != 0 {
            if core_start == usize::MAX {
                core_start = j;
            }
            special |= pending_special;
            pending_special = false;
            sent = false;
            seen |= class;
            camel |= (prev << 1) & class; // lower then upper
            core_end = j + 1;
        } else if class & C_STOP != 0 {
            if c >= 0x80 {
                return None;
            }
            break;
        } else {
            pending_special |= class & C_INWORD == 0;
            sent |= class & C_SENT != 0;
        }
        prev = class;
        j += 1;
    }
    if core_start == usize::MAX {
        // Punctuation only.
        sk.w.sentence_start |= sent;
        return Some(j);
    }
    let at_sentence_start = sk.w.sentence_start;
    sk.w.sentence_start = sent;
    let core = b.get(core_start..core_end).unwrap_or(&[]);
    let first = core.first().copied().unwrap_or(b' ');
    if special && is_url(b.get(start..j).unwrap_or(&[])) {
        sk.mask(MASK_URL);
        sk.w.sentence_start = false;
    } else if first.is_ascii_digit() {
        sk.mask(MASK_NUM);
    } else if seen & C_DIGIT != 0 || special || camel & C_UPPER != 0 || core.len() > LONG_WORD_CHARS
    {
        // (The first byte is a letter here, so a digit means letters and digits.)
        sk.mask(MASK_ID);
    } else if first.is_ascii_uppercase()
        && seen & C_LOWER != 0
        && core.len() > 1
        && !at_sentence_start
    {
        sk.mask(MASK_CAP);
    } else {
        // Letters, '-' and '\'' only: OR-ing 0x20 lowercases exactly the letters.
        let h = word_hash(b, core_start, core_end, 0x20);
        let label = b.get(core_end) == Some(&b':');
        sk.word(if label { moremur(h ^ LABEL_SALT) } else { h });
    }
    Some(j)
}

/// End of the run of ASCII lower-case letters that starts at `j`, eight
/// bytes at a time: in each byte's low seven bits, adding 0x1f carries into
/// bit 7 from `a` (0x61) up, and adding 0x05 from past `z` (0x7a) up.
#[inline]
pub(super) fn lowercase_end(b: &[u8], mut j: usize) -> usize {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(block) = b.get(j..j + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(block);
        let x = u64::from_le_bytes(w);
        let from_a = (x & LOW7) + 0x1f1f_1f1f_1f1f_1f1f;
        let past_z = (x & LOW7) + 0x0505_0505_0505_0505;
        // Bit 7 of each byte: set where the byte is a lower-case letter.
        let lower = from_a & !past_z & !x & HIGH;
        if lower != HIGH {
            return j + (!lower & HIGH).trailing_zeros() as usize / 8;
        }
        j += 8;
    }
    while b.get(j).is_some_and(u8::is_ascii_lowercase) {
        j += 1;
    }
    j
}

/// Turns one whitespace-delimited chunk into at most one token (§1).
pub(super) fn chunk_token(chunk: &str, sk: &mut Sketcher) {
    let cb = chunk.as_bytes();
    if is_url(cb) {
        sk.mask(MASK_URL);
        sk.w.sentence_start = false;
        return;
    }
    // Strip leading and trailing non-alphanumerics.
    let Some(core_start) = chunk
        .char_indices()
        .find(|(_, c)| c.is_alphanumeric())
        .map(|(p, _)| p)
    else {
        if cb.iter().copied().any(ends_sentence) {
            sk.w.sentence_start = true;
        }
        return;
    };
    let core_end = chunk
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())
        .map_or(chunk.len(), |(p, c)| p + c.len_utf8());
    let Some(core) = chunk.get(core_start..core_end) else {
        return;
    };
    let trailing = chunk.get(core_end..).unwrap_or("");
    let label = trailing.starts_with(':');
    let at_sentence_start = sk.w.sentence_start;
    sk.w.sentence_start = trailing.bytes().any(ends_sentence);

    // Lowercased word bytes; a word too long for the buffer is an identifier anyway.
    let mut buf = [0u8; WORD_BUF];
    let mut len = 0usize;
    let mut overflow = false;
    let mut push = |bytes: &[u8]| {
        for &x in bytes {
            match buf.get_mut(len) {
                Some(slot) => *slot = x,
                None => overflow = true,
            }
            len += 1;
        }
    };
    let mut has_alpha = false;
    let mut has_digit = false;
    let mut special = false;
    let mut camel = false;
    let mut prev_lower = false;
    let mut any_lower = false;
    let mut chars = 0usize;
    let mut first: Option<char> = None;
    for ch in core.chars() {
        chars += 1;
        if first.is_none() {
            first = Some(ch);
        }
        if ch.is_alphabetic() {
            has_alpha = true;
            let lower = ch.is_lowercase();
            any_lower |= lower;
            camel |= prev_lower && ch.is_uppercase();
            prev_lower = lower;
            for lc in ch.to_lowercase() {
                let mut tmp = [0u8; 4];
                push(lc.encode_utf8(&mut tmp).as_bytes());
            }
            continue;
        }
        prev_lower = false;
        if ch.is_numeric() {
            has_digit = true;
        } else if ch == '-' || ch == '\'' || ch == '\u{2019}' {
            // '’' is the typographic apostrophe: hash it as '\''.
            push(if ch == '-' { b"-" } else { b"'" });
        } else {
            special = true;
        }
    }
    let first = first.unwrap_or(' ');
    if first.is_numeric() {
        sk.mask(MASK_NUM);
    } else if (has_digit && has_alpha) || special || camel || chars > LONG_WORD_CHARS || overflow {
        sk.mask(MASK_ID);
    } else if first.is_uppercase() && any_lower && chars > 1 && !at_sentence_start {
        sk.mask(MASK_CAP);
    } else {
        let h = word_hash(&buf, 0, len.min(WORD_BUF), 0);
        sk.word(if label { moremur(h ^ LABEL_SALT) } else { h });
    }
}
