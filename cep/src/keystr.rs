//! Short strings stored inline: the per-key state maps hold one per key.
//!
//! A key is a [`VStr`](crate::value::VStr), the engine's string value: inline when at
//! most 22 bytes (partition number, separator and a typical user id or IP address fit),
//! so that a map lookup compares it without following a pointer and a new key costs no
//! allocation. It hashes, compares and orders as its `str`, so maps keyed by it are
//! looked up by `&str`.

pub type KeyStr = crate::value::VStr;

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
