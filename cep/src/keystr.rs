//! Short strings stored inline: the per-key state maps hold one per key.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Longest string kept inline (24 bytes in all, the size of a `String`).
const INLINE: usize = 22;

/// A string key, inline when at most 22 bytes (partition number, separator and a typical
/// user id or IP address fit): a map lookup then compares it without following a
/// pointer, and a new key costs no allocation. Hashes, compares and orders as its `str`
/// (so maps keyed by it are looked up by `&str`).
#[derive(Clone)]
pub struct KeyStr(Repr);

/// Private, so that an inline key is only ever built from a whole `&str` (see
/// `From<&str>`): its bytes are always valid UTF-8.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl KeyStr {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, buf } => {
                let b = buf.get(..*len as usize).unwrap_or(&[]);
                // SAFETY: `Repr` is private and an inline key is only built by
                // `From<&str>`, which copies all `len` bytes of a `&str` (valid UTF-8) into
                // `buf`; `KeyStr` has no method that changes them. Called for every
                // comparison and hash of a key in the state maps, which no longer check
                // the bytes each time (`is_ascii`, before: `from_utf8`).
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Heap(s) => s,
        }
    }

    /// Whether the key is held inline (not behind a pointer).
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<&str> for KeyStr {
    fn from(s: &str) -> KeyStr {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            KeyStr(Repr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            KeyStr(Repr::Heap(s.into()))
        }
    }
}

impl Deref for KeyStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for KeyStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for KeyStr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq for KeyStr {
    fn eq(&self, o: &Self) -> bool {
        self.as_str() == o.as_str()
    }
}
impl Eq for KeyStr {}

impl PartialOrd for KeyStr {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for KeyStr {
    fn cmp(&self, o: &Self) -> Ordering {
        self.as_str().cmp(o.as_str())
    }
}

impl fmt::Debug for KeyStr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyStr;

    #[test]
    fn inline_and_heap_keys_round_trip_and_order_as_str() {
        let long = "0\u{1}".to_string() + &"x".repeat(40);
        for s in [
            "",
            "0\u{1}u1",
            "0\u{1}ü日本",
            "0\u{1}1234567890123456789",
            &long,
        ] {
            let k = KeyStr::from(s);
            assert_eq!(k.as_str(), s);
            assert_eq!(k.is_inline(), s.len() <= 22);
        }
        assert!(KeyStr::from("0\u{1}a") < KeyStr::from(long.as_str()));
        assert!(KeyStr::from("0\u{1}z") > KeyStr::from(long.as_str()));
        let mut m: hashbrown::HashMap<KeyStr, u32> = hashbrown::HashMap::new();
        m.insert(KeyStr::from(long.as_str()), 1);
        m.insert(KeyStr::from("k"), 2);
        assert_eq!((m.get(long.as_str()), m.get("k")), (Some(&1), Some(&2)));
    }
}
