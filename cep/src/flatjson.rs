//! A scanner for the common shape of event records: one JSON object whose used fields
//! are scalars. It extracts the fields definitions refer to in one pass, without serde.
//!
//! It is a fast path only: [`scan`] either accepts the record (it is valid JSON in
//! exactly the sense of `serde_json`, and the values it extracts are the ones the serde
//! path would produce) or gives up (`None`), and the caller then parses the record with
//! `serde_json` as before, which decides acceptance and values for everything unusual:
//! escapes in keys or in used strings, used values that are arrays, objects or numbers
//! other than short integers, nested field paths, invalid input of any kind.
//!
//! What it accepts, as `serde_json` does (1.0.x, `Deserializer::from_slice`, a map visitor
//! that ignores unknown keys with `IgnoredAny`, then `end()`): whitespace is space, tab,
//! CR, LF; keys and used string values must be UTF-8 (they are parsed as `&str`);
//! ignored values are only checked for grammar (ignored strings may hold any bytes from
//! 0x20 up, escapes `\" \\ \/ \b \f \n \r \t \uXXXX` with any four hex digits, as
//! `serde_json`'s `ignore_str` does; ignored numbers are not range-checked; ignored
//! containers are not depth-limited); nothing but whitespace may follow the object.

use crate::event::{Entries, StrCache};
use crate::value::{VStr, Val};

/// Nesting of ignored containers tracked in a bit stack; deeper input goes to serde.
const MAX_DEPTH: u32 = 64;

/// The index of the first byte of `b` that is `"`, `\\` or a control character (below
/// 0x20), if any: what ends the plain part of a JSON string. Eight bytes at a time (the
/// byte-by-byte loop was most of the scanner's instructions); in each word, the lowest
/// byte flagged by the usual "has a zero byte" / "has a byte below n" bit tricks is a
/// true match (a borrow only propagates towards higher bytes), and that is the one taken.
#[inline]
fn find_special(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    let mut off = 0usize;
    for ch in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(ch);
        let x = u64::from_le_bytes(w);
        let q = x ^ (LO * u64::from(b'"'));
        let bs = x ^ (LO * u64::from(b'\\'));
        let m = (q.wrapping_sub(LO) & !q)
            | (bs.wrapping_sub(LO) & !bs)
            | (x.wrapping_sub(LO * 0x20) & !x);
        let m = m & HI;
        if m != 0 {
            return Some(off + (m.trailing_zeros() / 8) as usize);
        }
        off += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|n| off + n)
}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    #[inline]
    fn ws(&mut self) {
        // Compact records have no whitespace between tokens.
        if self.b.get(self.i).is_some_and(|&c| c > b' ') {
            return;
        }
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// After an object member: `Some(true)` past a `,` (another member follows),
    /// `Some(false)` past the closing `}`, `None` on anything else.
    #[inline(always)]
    fn after_member(&mut self) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            b'}' => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// Only whitespace left.
    #[inline]
    fn at_end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    /// After the opening quote: the raw bytes of a string without escapes and control
    /// characters (`None` when it has either, or is not closed).
    #[inline]
    fn plain_str(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let rest = self.b.get(start..)?;
        let n = find_special(rest)?;
        if rest.get(n) != Some(&b'"') {
            return None;
        }
        self.i = start + n + 1;
        rest.get(..n)
    }

    /// After the opening quote: skips an ignored string (see the module docs).
    fn skip_str(&mut self) -> Option<()> {
        loop {
            // Up to the next quote, backslash or control character at once.
            self.i += find_special(self.b.get(self.i..)?)?;
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(()),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let h = self.b.get(self.i..self.i + 4)?;
                            if !h.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - s
    }

    /// A number (grammar of RFC 8259, as `serde_json` checks it). Returns whether it is
    /// a plain integer (no fraction, no exponent).
    fn number(&mut self) -> Option<bool> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let mut int = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
            int = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            int = false;
        }
        Some(int)
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Skips one ignored value (any JSON value; containers up to [`MAX_DEPTH`] deep).
    fn skip_value(&mut self) -> Option<()> {
        // Bit d of `stack`: the container at depth d is an object.
        let mut stack: u64 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value.
            self.ws();
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    self.skip_str()?;
                }
                b'n' => self.lit(b"null")?,
                b't' => self.lit(b"true")?,
                b'f' => self.lit(b"false")?,
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                c @ (b'[' | b'{') => {
                    self.i += 1;
                    if depth >= MAX_DEPTH {
                        return None;
                    }
                    let obj = c == b'{';
                    if obj {
                        stack |= 1 << depth;
                    } else {
                        stack &= !(1 << depth);
                    }
                    depth += 1;
                    self.ws();
                    let close = if obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        depth -= 1;
                    } else {
                        if obj {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // After a value: close containers or move to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let obj = stack & (1 << (depth - 1)) != 0;
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if obj {
                            self.ws();
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if obj => {
                        self.i += 1;
                        depth -= 1;
                    }
                    b']' if !obj => {
                        self.i += 1;
                        depth -= 1;
                    }
                    _ => return None,
                }
            }
        }
    }

    /// In an ignored object, at a key: skips `"key" :`.
    fn member_key(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        self.skip_str()?;
        self.ws();
        if self.peek()? != b':' {
            return None;
        }
        self.i += 1;
        Some(())
    }
}

/// `s` as text if it is UTF-8. Keys and short values are almost always ASCII, for which
/// `is_ascii` (a few word compares) is much cheaper than `from_utf8`'s general check
/// (it was ~8% of the instructions of the brute-force benchmark, called for every key
/// and used string of every record).
#[inline]
fn utf8(s: &[u8]) -> Option<&str> {
    if s.is_ascii() {
        // SAFETY: every byte of `s` is below 0x80, and a sequence of ASCII bytes is
        // valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    } else {
        std::str::from_utf8(s).ok()
    }
}

/// A plain integer's value as `serde_json` hands it to a visitor (`u64`, `i64`, or
/// `-0.0` for `-0`), converted to `f64`; `None` beyond 18 digits (left to serde).
fn int_val(t: &[u8]) -> Option<f64> {
    let (neg, d) = match t.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, t),
    };
    if d.is_empty() || d.len() > 18 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in d {
        v = v * 10 + u64::from(c.wrapping_sub(b'0'));
    }
    Some(if neg { -(v as f64) } else { v as f64 })
}

/// Scans `b` as a JSON object, writing the values of the top-level fields in `lookup`
/// into `vals`. `None`: not decided here (the caller must parse with serde_json and
/// must reset `vals` first).
pub(crate) fn scan<'t>(
    b: &[u8],
    lookup: impl Fn(&str) -> Option<&'t Entries>,
    vals: &mut [Val],
    strs: &mut StrCache,
) -> Option<()> {
    let mut c = Cur { b, i: 0 };
    c.ws();
    if c.peek()? != b'{' {
        return None;
    }
    c.i += 1;
    c.ws();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            if c.peek()? != b'"' {
                return None;
            }
            c.i += 1;
            let k = utf8(c.plain_str()?)?;
            c.ws();
            if c.peek()? != b':' {
                return None;
            }
            c.i += 1;
            match lookup(k) {
                None => c.skip_value()?,
                Some(list) => {
                    if !list.iter().all(|(_, rest)| rest.is_empty()) {
                        return None;
                    }
                    let field = list.first().map(|(id, _)| *id).unwrap_or(0);
                    c.ws();
                    let v = match c.peek()? {
                        b'"' => {
                            c.i += 1;
                            let s = utf8(c.plain_str()?)?;
                            if s.len() <= crate::value::VSTR_INLINE {
                                // What the cache returns for short strings, without the call.
                                Val::str(s)
                            } else {
                                strs.get(field, s)
                            }
                        }
                        b'n' => {
                            c.lit(b"null")?;
                            Val::Null
                        }
                        b't' => {
                            c.lit(b"true")?;
                            Val::Bool(true)
                        }
                        b'f' => {
                            c.lit(b"false")?;
                            Val::Bool(false)
                        }
                        b'-' | b'0'..=b'9' => {
                            let s = c.i;
                            if !c.number()? {
                                return None;
                            }
                            Val::Num(int_val(c.b.get(s..c.i)?)?)
                        }
                        _ => return None,
                    };
                    if let [(id, _)] = list.as_slice() {
                        // One field (the usual case): moved, not cloned and dropped.
                        if let Some(slot) = vals.get_mut(*id as usize) {
                            *slot = v;
                        }
                    } else {
                        for (id, _) in list {
                            if let Some(slot) = vals.get_mut(*id as usize) {
                                *slot = v.clone();
                            }
                        }
                    }
                }
            }
            if !c.after_member()? {
                break;
            }
        }
    }
    c.at_end()
}

/// Top-level keys of up to 8 bytes, each naming one field with no nested path (what
/// definitions usually refer to), hashed by their word (see [`crate::event::word8`]) for
/// [`scan_compact`]: one multiply and usually one comparison per record key, where
/// [`scan`]'s lookup compares against every used key in turn.
#[derive(Debug, Clone)]
pub(crate) struct KeyIndex {
    /// (key word, field id + 1), 0: empty. Open addressing, linear probing; at most half
    /// full, so a probe always ends at an empty slot.
    slots: [(u64, u32); KEY_SLOTS],
    /// Whether every used top-level key is in `slots` (else [`scan_compact`] is not used).
    pub(crate) usable: bool,
}

const KEY_SLOTS: usize = 16;

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            slots: [(0, 0); KEY_SLOTS],
            usable: true,
        }
    }
}

impl KeyIndex {
    /// The index of the top-level keys `keys` (not usable if any does not fit).
    pub(crate) fn build<'a>(keys: impl Iterator<Item = (&'a str, &'a Entries)>) -> KeyIndex {
        let mut ix = KeyIndex::default();
        let mut n = 0;
        for (k, e) in keys {
            n += 1;
            let kb = k.as_bytes();
            // A key with a NUL byte would share its word with a shorter one (no record
            // key has one: control characters end the fast paths' strings).
            let w = match (word8(kb), e.as_slice()) {
                (Some(w), [(id, rest)])
                    if rest.is_empty() && !kb.contains(&0) && n <= KEY_SLOTS / 2 =>
                {
                    id.checked_add(1).map(|id1| (w, id1))
                }
                _ => None,
            };
            let Some((w, id1)) = w else {
                ix.usable = false;
                return ix;
            };
            let mut i = Self::slot(w);
            while ix.slots[i % KEY_SLOTS].1 != 0 {
                i += 1;
            }
            ix.slots[i % KEY_SLOTS] = (w, id1);
        }
        ix
    }

    #[inline(always)]
    fn slot(w: u64) -> usize {
        (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize
    }

    /// The field of the key whose word is `w` (a key of up to 8 bytes without NUL).
    #[inline(always)]
    fn get(&self, w: u64) -> Option<u32> {
        let mut i = Self::slot(w);
        loop {
            let (sw, id1) = self.slots[i % KEY_SLOTS];
            if id1 == 0 {
                return None;
            }
            if sw == w {
                return Some(id1 - 1);
            }
            i += 1;
        }
    }
}

/// The bytes of `k` as a little-endian word, zero-padded, if at most 8 (as
/// `crate::event::word8`).
#[inline(always)]
fn word8(k: &[u8]) -> Option<u64> {
    crate::event::word8(k)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is `"`, `\\` or a control character, and maybe
/// of bytes after the first such byte (the lowest flagged byte is a true match; see
/// [`find_special`]).
#[inline(always)]
fn special_mask(x: u64) -> u64 {
    let q = x ^ (LO * u64::from(b'"'));
    let bs = x ^ (LO * u64::from(b'\\'));
    ((q.wrapping_sub(LO) & !q) | (bs.wrapping_sub(LO) & !bs) | (x.wrapping_sub(LO * 0x20) & !x))
        & HI
}

/// The eight bytes at `i` as a little-endian word (`None` past the end).
#[inline(always)]
fn load8(b: &[u8], i: usize) -> Option<u64> {
    let w: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// The index of the first `"`, `\\` or control byte at or after `i`.
#[inline(always)]
fn str_end(b: &[u8], i: usize) -> Option<usize> {
    if let Some(x) = load8(b, i) {
        let m = special_mask(x);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        return find_special(b.get(i + 8..)?).map(|n| i + 8 + n);
    }
    find_special(b.get(i..)?).map(|n| i + n)
}

impl Cur<'_> {
    /// `true`, `false` or `null` at the cursor.
    #[inline(always)]
    fn literal(&mut self) -> Option<Val> {
        let b = self.b;
        let w: [u8; 4] = b.get(self.i..self.i.checked_add(4)?)?.try_into().ok()?;
        let v = match &w {
            b"true" => Val::Bool(true),
            b"null" => Val::Null,
            b"fals" if b.get(self.i + 4) == Some(&b'e') => {
                self.i += 1;
                Val::Bool(false)
            }
            _ => return None,
        };
        self.i += 4;
        Some(v)
    }

    /// A plain integer at the cursor (a number with a fraction or an exponent, or of
    /// more than 18 digits: `None`), as [`int_val`] gives it.
    #[inline(always)]
    fn int(&mut self) -> Option<f64> {
        let b = self.b;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let s = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = b.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
            self.i += 1;
        }
        let n = self.i - s;
        if n == 0 || n > 18 || (n > 1 && b.get(s) == Some(&b'0')) {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(if neg { -(v as f64) } else { v as f64 })
    }
}

/// [`scan`] for records whose keys are looked up in `ix` (a usable [`KeyIndex`]): the
/// same result when it decides (`Some`); `None` leaves the record to [`scan`] (the caller
/// resets `vals` first). It gives up on more than `scan` does (non-ASCII keys, a key in
/// the last 8 bytes of the record), and reads keys as words instead of strings.
pub(crate) fn scan_compact(
    b: &[u8],
    ix: &KeyIndex,
    vals: &mut [Val],
    strs: &mut StrCache,
) -> Option<()> {
    let mut c = Cur { b, i: 0 };
    c.ws();
    if c.peek()? != b'{' {
        return None;
    }
    c.i += 1;
    c.ws();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            if c.peek()? != b'"' {
                return None;
            }
            let ks = c.i + 1;
            let x = load8(b, ks)?;
            let m = special_mask(x);
            let field = if m != 0 {
                let n = (m.trailing_zeros() / 8) as usize;
                if b.get(ks + n) != Some(&b'"') {
                    return None;
                }
                // n < 8: the key's bytes, zero-padded.
                let w = x & ((1u64 << (n * 8)) - 1);
                if w & HI != 0 {
                    return None;
                }
                c.i = ks + n + 1;
                ix.get(w)
            } else {
                let e = str_end(b, ks + 8)?;
                if b.get(e) != Some(&b'"') || !b.get(ks..e)?.is_ascii() {
                    return None;
                }
                c.i = e + 1;
                if e == ks + 8 {
                    ix.get(x)
                } else {
                    None
                }
            };
            c.ws();
            if c.peek()? != b':' {
                return None;
            }
            c.i += 1;
            c.ws();
            match field {
                Some(f) => {
                    let v = match c.peek()? {
                        b'"' => {
                            let s0 = c.i + 1;
                            if let Some(x) = load8(b, s0) {
                                let m = special_mask(x);
                                if m != 0 {
                                    let n = (m.trailing_zeros() / 8) as usize;
                                    // Up to 7 ASCII bytes (ids, types): the string from
                                    // the word just loaded.
                                    let w = x & ((1u64 << (n * 8)) - 1);
                                    if b.get(s0 + n) == Some(&b'"') {
                                        if let Some(v) = VStr::from_ascii_word(w, n) {
                                            c.i = s0 + n + 1;
                                            if let Some(slot) = vals.get_mut(f as usize) {
                                                *slot = Val::Str(v);
                                            }
                                            if c.after_member()? {
                                                continue;
                                            }
                                            break;
                                        }
                                    }
                                }
                            }
                            let e = str_end(b, s0)?;
                            if b.get(e) != Some(&b'"') {
                                return None;
                            }
                            let s = utf8(b.get(s0..e)?)?;
                            c.i = e + 1;
                            if s.len() <= crate::value::VSTR_INLINE {
                                Val::str(s)
                            } else {
                                strs.get(f, s)
                            }
                        }
                        b'-' | b'0'..=b'9' => Val::Num(c.int()?),
                        _ => c.literal()?,
                    };
                    if let Some(slot) = vals.get_mut(f as usize) {
                        *slot = v;
                    }
                }
                None => match c.peek()? {
                    b'"' => {
                        let e = str_end(b, c.i + 1)?;
                        c.i = e;
                        if b.get(e) == Some(&b'"') {
                            c.i += 1;
                        } else {
                            c.skip_str()?;
                        }
                    }
                    b'-' | b'0'..=b'9' => {
                        c.number()?;
                    }
                    b't' | b'f' | b'n' => {
                        c.literal()?;
                    }
                    _ => c.skip_value()?,
                },
            }
            if !c.after_member()? {
                break;
            }
        }
    }
    c.at_end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldTable;
    use proptest::prelude::*;

    fn table() -> FieldTable {
        let mut t = FieldTable::default();
        for p in ["user", "type", "success", "ts", "geo.country", "n"] {
            t.intern(p);
        }
        t
    }

    /// The fields of `table` without the nested one: every key fits the [`KeyIndex`].
    fn flat_table() -> FieldTable {
        let mut t = FieldTable::default();
        for p in ["user", "type", "success", "ts", "n", "a", "x", "longkey1"] {
            t.intern(p);
        }
        assert!(t.key_index_for_test().usable);
        t
    }

    /// [`scan_compact`] against serde_json, as [`check`] does for [`scan`].
    fn check_compact(b: &[u8]) {
        let t = flat_table();
        let n = t.len();
        let mut fast = vec![Val::Null; n];
        let decided = scan_compact(
            b,
            t.key_index_for_test(),
            &mut fast,
            &mut StrCache::default(),
        );
        agrees_with_serde(&t, "scan_compact", b, &fast, decided.is_some());
    }

    /// A scanner's result `fast` (when it `decided`) is what serde_json makes of `b`.
    /// Returns serde's verdict and values.
    fn agrees_with_serde(
        t: &FieldTable,
        scanner: &str,
        b: &[u8],
        fast: &[Val],
        decided: bool,
    ) -> (bool, Vec<Val>) {
        let mut slow = vec![Val::Null; t.len()];
        let ok = t
            .parse_serde(b, &mut slow, &mut StrCache::default())
            .is_ok();
        if decided {
            assert!(
                ok,
                "{scanner} accepted what serde_json rejects: {:?}",
                String::from_utf8_lossy(b)
            );
            assert_eq!(show(fast), show(&slow), "{:?}", String::from_utf8_lossy(b));
        }
        (ok, slow)
    }

    #[test]
    fn key_index_finds_its_keys_only() {
        let t = flat_table();
        let ix = t.key_index_for_test();
        for (i, k) in ["user", "type", "success", "ts", "n", "a", "x", "longkey1"]
            .iter()
            .enumerate()
        {
            assert_eq!(ix.get(word8(k.as_bytes()).unwrap()), Some(i as u32), "{k}");
        }
        for k in ["", "u", "use", "users", "ip", "longkey", "longkey2", "b"] {
            assert_eq!(ix.get(word8(k.as_bytes()).unwrap()), None, "{k}");
        }
        // Not usable: a nested path, more than 8 keys, a key longer than 8 bytes.
        assert!(!table().key_index_for_test().usable);
        let mut t = FieldTable::default();
        for i in 0..9 {
            t.intern(&format!("k{i}"));
        }
        assert!(!t.key_index_for_test().usable);
        let mut t = FieldTable::default();
        t.intern("a_long_key");
        assert!(!t.key_index_for_test().usable);
        assert!(FieldTable::default().key_index_for_test().usable);
    }

    #[test]
    fn compact_scan_decides_the_benchmark_records() {
        let t = flat_table();
        for s in [
            r#"{"user":"u42","type":"login","success":false,"ts":1234,"ip":"10.0.0.1"}"#,
            r#"{"user":"u42","type":"logout","success":true,"ts":0,"ip":"10.0.0.1","longkey1":null}"#,
            r#"{ "user" : "a_user_name_of_more_than_22_bytes", "ts": -0, "longer_key": [1, {"a": "\n"}], "x": "é" }"#,
        ] {
            let mut v = vec![Val::Null; t.len()];
            assert!(
                scan_compact(
                    s.as_bytes(),
                    t.key_index_for_test(),
                    &mut v,
                    &mut StrCache::default()
                )
                .is_some(),
                "{s}"
            );
            check_compact(s.as_bytes());
        }
    }

    /// `{:?}` tells -0.0 from 0.0, which `Val`'s `==` does not.
    fn show(v: &[Val]) -> String {
        format!("{v:?}")
    }

    /// The fast path against serde_json: if it decides, serde_json must accept the same
    /// input and extract the same values. Returns whether it decided.
    fn check(t: &FieldTable, b: &[u8]) -> bool {
        check_compact(b);
        let n = t.len();
        let mut fast = vec![Val::Null; n];
        let decided = scan(
            b,
            |k| t.top_entries_for_test(k),
            &mut fast,
            &mut StrCache::default(),
        );
        let (ok, slow) = agrees_with_serde(t, "scan", b, &fast, decided.is_some());
        // And the whole parse (fast path, else serde) agrees with serde alone.
        let rec = crate::event::RawRecord::new(std::sync::Arc::from("t"), 0, 0, 0, None, b);
        match t.parse(rec) {
            Ok(ev) => {
                assert!(ok, "{:?}", String::from_utf8_lossy(b));
                assert_eq!(
                    show(&ev.vals),
                    show(&slow),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
            }
            Err(()) => assert!(!ok, "{:?}", String::from_utf8_lossy(b)),
        }
        decided.is_some()
    }

    #[test]
    fn decides_the_common_shapes() {
        let t = table();
        for s in [
            r#"{"user":"u42","type":"login","success":false,"ts":1234,"ip":"10.0.0.1"}"#,
            r#" { "user" : "u1" , "ts" : -0 , "n": null, "x": {"a": [1, 2.5e-3, {"b": "\u00e9\n"}]}, "y": [] } "#,
            r#"{}"#,
            "{\"user\":\"j\u{f6}rg\",\"type\":true,\"x\":\"\u{1F600}\"}",
            r#"{"ts": 999999999999999999, "success": true, "user": "a", "user": "b"}"#,
            r#"{"x": 1e400, "y": "\ud800"}"#,
        ] {
            assert!(check(&t, s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde_or_rejects_alike() {
        let t = table();
        for s in [
            "",
            " ",
            "[]",
            "1",
            "\"x\"",
            "null",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":1}}",
            "{\"a\":1} x",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":.5}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":[1,]}",
            "{\"a\":[1}",
            "{\"a\":{\"b\"}}",
            "{\"a\":{1:2}}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12G4\"}",
            "{\"a\":\"\x01\"}",
            "{\"us\\u0065r\":\"x\"}",
            "{\"user\":\"a\\\"b\"}",
            "{\"ts\":1.5}",
            "{\"ts\":1e3}",
            "{\"ts\":1e400}",
            "{\"ts\":12345678901234567890123}",
            "{\"geo\":{\"country\":\"fr\"}}",
            "{\"user\":[1,2]}",
            "{\"user\":{\"a\":1}}",
            "{\"user\":\"\\ud800\"}",
            "{'a':1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\" 1}",
            "\u{feff}{}",
            "{\"a\":NaN}",
            "{\"a\":Infinity}",
        ] {
            check(&t, s.as_bytes());
        }
        for b in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xff\":1}",
            b"{\"user\":\"\xff\"}",
            b"{\"a\":\"\xc3\"}",
        ] {
            check(&t, b);
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        check(&t, deep.as_bytes());
        let deep_bad = format!("{{\"a\":{}{}}}", "[".repeat(30), "]".repeat(29));
        check(&t, deep_bad.as_bytes());
    }

    /// Pieces of JSON (valid and not) that generated records are made of.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("\n\t\r".to_string()),
            Just("\"user\"".to_string()),
            Just("\"type\"".to_string()),
            Just("\"ts\"".to_string()),
            Just("\"success\"".to_string()),
            Just("\"geo\"".to_string()),
            Just("\"n\"".to_string()),
            Just("\"other\"".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("\\u".to_string()),
            Just("\\ud83d\\ude00".to_string()),
            Just("\\n".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just("nul".to_string()),
            Just("-".to_string()),
            Just(".".to_string()),
            Just("e".to_string()),
            Just("E+".to_string()),
            Just("\u{e9}".to_string()),
            Just("\u{1}".to_string()),
            "-?[0-9]{1,25}".prop_map(|s| s),
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?".prop_map(|s| s),
            "\"[a-z\u{e9} ]{0,6}\"".prop_map(|s| s),
        ]
    }

    fn member() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("user"),
            Just("type"),
            Just("ts"),
            Just("success"),
            Just("geo"),
            Just("n"),
            Just("x")
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            "-?(0|[1-9][0-9]{0,22})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?".prop_map(|s| s),
            "\"([a-z\u{e9}\u{1F600} ]|\\\\[nt\"/]|\\\\u[0-9a-fA-F]{4}){0,5}\"".prop_map(|s| s),
        ];
        let value = leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|v| {
                    let m: Vec<String> = v.iter().map(|(k, x)| format!("\"{k}\" : {x}")).collect();
                    format!("{{{}}}", m.join(" ,"))
                }),
            ]
        });
        (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn find_special_is_the_first_quote_backslash_or_control(
            b in prop::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xff, Just(0x7f), Just(0x80)],
                0..40,
            ),
            fill in 0usize..24,
        ) {
            // Also behind a run of plain bytes, so that matches fall in every word position.
            let mut v = vec![b'a'; fill];
            v.extend_from_slice(&b);
            let naive = v.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            prop_assert_eq!(find_special(&v), naive);
        }

        #[test]
        fn random_tokens_agree_with_serde(toks in prop::collection::vec(token(), 0..12)) {
            let s = toks.concat();
            check(&table(), s.as_bytes());
            // The same inside an object, as an ignored and as a used value.
            check(&table(), format!("{{\"x\":{s}}}").as_bytes());
            check(&table(), format!("{{\"type\": {s} }}").as_bytes());
        }

        #[test]
        fn objects_and_their_mutations_agree_with_serde(
            members in prop::collection::vec(member(), 0..6),
            cut in any::<prop::sample::Index>(),
            insert in token(),
            mode in 0u8..4,
        ) {
            let t = table();
            let s = format!("{{{}}}", members.join(","));
            check(&t, s.as_bytes());
            // Damage it: drop a byte, insert a token, or truncate.
            let mut b = s.into_bytes();
            let i = cut.index(b.len());
            match mode {
                0 => { b.remove(i); }
                1 => { let tail = b.split_off(i); b.extend_from_slice(insert.as_bytes()); b.extend(tail); }
                2 => b.truncate(i),
                _ => { b[i] = insert.as_bytes().first().copied().unwrap_or(b'x'); }
            }
            check(&t, &b);
        }

        /// Few structural tokens, so that short (in)valid nestings come up often.
        #[test]
        fn structural_tokens_agree_with_serde(
            toks in prop::collection::vec(
                prop::sample::select(vec!["{", "}", "[", "]", ",", ":", "\"a\"", "1", " "]),
                0..14,
            )
        ) {
            let s = toks.concat();
            check(&table(), s.as_bytes());
            check(&table(), format!("{{\"x\":{s}}}").as_bytes());
            check(&table(), format!("{{\"x\":[{s}]}}").as_bytes());
        }

        #[test]
        fn arbitrary_bytes_agree_with_serde(b in prop::collection::vec(any::<u8>(), 0..40)) {
            let mut v = b"{\"user\":".to_vec();
            v.extend(&b);
            check(&table(), &b);
            check(&table(), &v);
        }
    }
}
