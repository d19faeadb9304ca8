//! The value type expressions evaluate to, and a tiny JSON writer for outputs.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Longest string a [`VStr`] holds inline (with its length and tag, as large as the
/// shared form: a [`Val`] stays 24 bytes).
pub(crate) const VSTR_INLINE: usize = 22;

/// A string value: inline when short (user ids, IP addresses, event types: no allocation
/// when parsed, no reference count to update or cold allocation to free when the event
/// is dropped), shared otherwise. Compares, orders, hashes, prints and serialises as its
/// `str`; which form holds a string is not observable.
#[derive(Clone)]
pub struct VStr(Repr);

/// Private, so that an inline string is only ever built from a whole `&str` (see
/// `From<&str>`): its bytes are always valid UTF-8.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; VSTR_INLINE] },
    Shared(Arc<str>),
}

impl VStr {
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => buf.get(..*len as usize).unwrap_or(&[]),
            Repr::Shared(s) => s.as_bytes(),
        }
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, buf } => {
                let b = buf.get(..*len as usize).unwrap_or(&[]);
                // SAFETY: `Repr` is private and an inline string is only built by
                // `From<&str>`, which copies all `len` bytes of a `&str` (valid UTF-8) into
                // `buf`; nothing changes them afterwards (`VStr` has no mutating method).
                // Checked by `short_strings_are_inline_and_behave_as_str`.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Shared(s) => s,
        }
    }

    /// Whether this is the string of `len` bytes (at most 8) whose zero-padded word is
    /// `w` (see `crate::event::word8`): a literal's word is computed once, and an inline
    /// string's first 8 bytes are its word (its buffer is zero past `len`: `From<&str>`
    /// is the only constructor and starts from a zeroed buffer).
    #[inline]
    pub(crate) fn eq_word(&self, len: usize, w: u64) -> bool {
        match &self.0 {
            Repr::Inline { len: l, buf } => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[..8]);
                *l as usize == len && u64::from_le_bytes(b) == w
            }
            Repr::Shared(s) => s.len() == len && crate::event::word8(s.as_bytes()) == Some(w),
        }
    }

    /// Whether the string is held inline (not behind a pointer).
    #[inline]
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<&str> for VStr {
    #[inline]
    fn from(s: &str) -> VStr {
        let n = s.len();
        if n <= VSTR_INLINE {
            let mut buf = [0u8; VSTR_INLINE];
            let b = s.as_bytes();
            if let Some(w) = crate::event::word8(b) {
                // Up to 8 bytes (the usual ids and types): one word, no `memcpy` call.
                if let Some(d) = buf.get_mut(..8) {
                    d.copy_from_slice(&w.to_le_bytes());
                }
            } else if let Some(d) = buf.get_mut(..n) {
                d.copy_from_slice(b);
            }
            VStr(Repr::Inline { len: n as u8, buf })
        } else {
            VStr(Repr::Shared(Arc::from(s)))
        }
    }
}

impl VStr {
    /// The string of the `len` (at most 8) ASCII bytes of the little-endian word `w`
    /// (zero past `len`); `None` if it is not that (a byte from 0x80 up, a byte set past
    /// `len`). As `From<&str>` of those bytes, without reading them again.
    #[inline]
    pub(crate) fn from_ascii_word(w: u64, len: usize) -> Option<VStr> {
        let past = if len >= 8 { 0 } else { !0u64 << (len * 8) };
        if w & 0x8080_8080_8080_8080 != 0 || w & past != 0 {
            return None;
        }
        let mut buf = [0u8; VSTR_INLINE];
        buf.get_mut(..8)?.copy_from_slice(&w.to_le_bytes());
        Some(VStr(Repr::Inline {
            len: len as u8,
            buf,
        }))
    }
}

impl From<Arc<str>> for VStr {
    fn from(s: Arc<str>) -> VStr {
        VStr(Repr::Shared(s))
    }
}

/// Maps keyed by `VStr` (the per-key state, [`crate::keystr::KeyStr`]) are looked up by
/// `&str`: `Hash`, `Eq` and `Ord` agree with `str`'s.
impl std::borrow::Borrow<str> for VStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Deref for VStr {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for VStr {
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        crate::event::bytes_eq(self.as_bytes(), o.as_bytes())
    }
}
impl Eq for VStr {}

impl PartialOrd for VStr {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for VStr {
    fn cmp(&self, o: &Self) -> Ordering {
        // Byte order is `str` order.
        self.as_bytes().cmp(o.as_bytes())
    }
}

impl Hash for VStr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl fmt::Debug for VStr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for VStr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl Serialize for VStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<VStr, D::Error> {
        let s = String::deserialize(d)?;
        Ok(VStr::from(s.as_str()))
    }
}

/// A field or expression value. Numbers are `f64` (integral values are written back as
/// JSON integers). Arrays and objects are kept as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Val {
    #[default]
    Null,
    Bool(bool),
    Num(f64),
    Str(VStr),
    List(Arc<Vec<Val>>),
    Json(Arc<serde_json::Value>),
}

pub(crate) static NULL: Val = Val::Null;

impl Val {
    #[inline]
    pub fn str(s: &str) -> Val {
        Val::Str(VStr::from(s))
    }

    /// Whether dropping this value frees nothing (no shared string, list or object).
    #[inline]
    pub fn owns_no_memory(&self) -> bool {
        match self {
            Val::Null | Val::Bool(_) | Val::Num(_) => true,
            Val::Str(s) => s.is_inline(),
            Val::List(_) | Val::Json(_) => false,
        }
    }

    /// Truthiness used by `&&`, `||`, `!` and `where`: `true`, a non-zero number, a
    /// non-empty string or list, any object. `null` and missing fields are false.
    pub fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::Json(j) => !j.is_null(),
        }
    }

    pub fn as_num(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            Val::Json(j) => j.as_f64(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Converts a JSON value; arrays of scalars become lists, objects stay JSON.
    pub fn from_json(v: &serde_json::Value) -> Val {
        match v {
            serde_json::Value::Null => Val::Null,
            serde_json::Value::Bool(b) => Val::Bool(*b),
            serde_json::Value::Number(n) => n.as_f64().map(Val::Num).unwrap_or(Val::Null),
            serde_json::Value::String(s) => Val::str(s),
            serde_json::Value::Array(a) => {
                Val::List(Arc::new(a.iter().map(Val::from_json).collect()))
            }
            serde_json::Value::Object(_) => Val::Json(Arc::new(v.clone())),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Val::Null => serde_json::Value::Null,
            Val::Bool(b) => serde_json::Value::Bool(*b),
            Val::Num(n) => num_to_json(*n),
            Val::Str(s) => serde_json::Value::String(s.to_string()),
            Val::List(l) => serde_json::Value::Array(l.iter().map(|v| v.to_json()).collect()),
            Val::Json(j) => (**j).clone(),
        }
    }

    /// Text used for keys and group values: strings as-is, everything else as JSON.
    pub fn key_text(&self, out: &mut String) {
        match self {
            Val::Str(s) => out.push_str(s),
            Val::Null => {}
            other => write_json(other, out),
        }
    }

    /// Equality as in `==`: numbers by value, strings by content, null == null.
    pub fn loose_eq(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Num(a), Val::Num(b)) => a == b,
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Null, Val::Null) => true,
            (Val::List(a), Val::List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.loose_eq(y))
            }
            (Val::Json(a), Val::Json(b)) => a == b,
            _ => false,
        }
    }

    /// Ordering for `<` etc. and min/max: only numbers with numbers and strings with strings.
    pub fn loose_cmp(&self, other: &Val) -> Option<Ordering> {
        match (self, other) {
            (Val::Num(a), Val::Num(b)) => a.partial_cmp(b),
            (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
            (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

pub(crate) fn num_to_json(n: f64) -> serde_json::Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.0e15 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Appends `v` as JSON text.
pub fn write_json(v: &Val, out: &mut String) {
    match v {
        Val::Null => out.push_str("null"),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Num(n) => write_num(*n, out),
        Val::Str(s) => write_str(s, out),
        Val::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Val::Json(j) => out.push_str(&j.to_string()),
    }
}

pub(crate) fn write_num(n: f64, out: &mut String) {
    use std::fmt::Write;
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.0e15 {
        write_i64(n as i64, out);
    } else if n.is_finite() {
        let _ = write!(out, "{}", n);
    } else {
        out.push_str("null");
    }
}

/// `v` in decimal, as `write!(out, "{v}")` does, without `fmt` (itoa).
pub(crate) fn write_i64(v: i64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(v));
}

pub(crate) fn write_str(s: &str, out: &mut String) {
    use std::fmt::Write;
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        // Nothing to escape (the common case): one copy.
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn short_strings_are_inline_and_behave_as_str() {
        // A `Val` is as large with inline strings as it was with `Arc<str>` only.
        assert!(
            std::mem::size_of::<Val>() <= 24,
            "{}",
            std::mem::size_of::<Val>()
        );
        let long = "x".repeat(23);
        let all = [
            "",
            "a",
            "u12345",
            "login",
            "ü日本",
            "12345678",
            "123456789",
            "é",
            "1234567890123456789012",
            &long,
            "\u{0}",
        ];
        for a in all {
            let v = VStr::from(a);
            assert_eq!(v.is_inline(), a.len() <= 22, "{a:?}");
            assert_eq!((v.as_str(), v.as_bytes(), &*v), (a, a.as_bytes(), a));
            assert_eq!(v.to_string(), a);
            assert_eq!(format!("{v:?}"), format!("{a:?}"));
            let shared = VStr::from(Arc::<str>::from(a));
            assert_eq!(v, shared);
            if let Some(w) = crate::event::word8(a.as_bytes()) {
                match VStr::from_ascii_word(w, a.len()) {
                    Some(x) => {
                        assert!(a.is_ascii(), "{a:?}");
                        assert!(x.is_inline() && x == v && x.as_str() == a, "{a:?}");
                    }
                    None => assert!(!a.is_ascii(), "{a:?}"),
                }
            }
            for b in all {
                if let Some(w) = crate::event::word8(b.as_bytes()) {
                    assert_eq!(v.eq_word(b.len(), w), a == b, "{a:?} {b:?}");
                    assert_eq!(shared.eq_word(b.len(), w), a == b, "{a:?} {b:?}");
                }
            }
            let j = serde_json::to_string(&Val::Str(v.clone())).unwrap_or_default();
            assert_eq!(
                j,
                serde_json::to_string(&serde_json::json!({ "Str": a })).unwrap_or_default()
            );
            let back: Val = serde_json::from_str(&j).unwrap_or(Val::Null);
            assert_eq!(back, Val::Str(shared.clone()));
            let h = |x: &VStr| {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(x)
            };
            let _ = h(&v);
            for b in all {
                let w = VStr::from(b);
                assert_eq!(v == w, a == b, "{a:?} {b:?}");
                assert_eq!(v.cmp(&w), a.cmp(b), "{a:?} {b:?}");
                assert_eq!(Val::Str(v.clone()).loose_eq(&Val::str(b)), a == b);
            }
        }
        let s = std::collections::hash_map::RandomState::new();
        use std::hash::BuildHasher;
        assert_eq!(
            s.hash_one(VStr::from("abc")),
            s.hash_one(VStr::from(Arc::<str>::from("abc")))
        );
    }

    #[test]
    fn numbers_and_strings_are_written_as_with_fmt() {
        for n in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            42.0,
            -9.0e15 + 1.0,
            8_999_999_999_999_998.0,
            1.5,
            9.0e15,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut a = String::new();
            write_num(n, &mut a);
            let b = if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.0e15 {
                format!("{}", n as i64)
            } else if n.is_finite() {
                format!("{n}")
            } else {
                "null".to_string()
            };
            assert_eq!(a, b);
        }
        for s in [
            "abc",
            "a\"b",
            "\\",
            "\u{1}x\n\r\t",
            "\u{e9}\u{1F600}",
            "",
            "\u{1f}",
        ] {
            let mut o = String::new();
            write_str(s, &mut o);
            assert_eq!(o, serde_json::to_string(s).unwrap_or_default(), "{s:?}");
        }
    }
}
