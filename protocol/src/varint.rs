//! Zig-zag variable-length integers, as used inside Kafka v2 records.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum VarintError {
    #[error("varint runs past the end of the buffer")]
    Truncated,
    #[error("varint is longer than {0} bytes")]
    TooLong(usize),
}

/// Reads a zig-zag varint (at most 5 bytes) from the front of `buf`, advancing it.
pub fn read_varint(buf: &mut &[u8]) -> Result<i32, VarintError> {
    let raw = read_unsigned(buf, 5)?;
    let raw = raw as u32;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zig-zag varlong (at most 10 bytes) from the front of `buf`, advancing it.
pub fn read_varlong(buf: &mut &[u8]) -> Result<i64, VarintError> {
    let raw = read_unsigned(buf, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn read_unsigned(buf: &mut &[u8], max_len: usize) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    for i in 0..max_len {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(VarintError::Truncated);
        };
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarintError::TooLong(max_len))
}

/// Appends `value` as a zig-zag varint.
pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned(out, ((value << 1) ^ (value >> 31)) as u32 as u64);
}

/// Appends `value` as a zig-zag varlong.
pub fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn write_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The encoded length of `value` as a zig-zag varint.
pub fn varint_len(value: i32) -> usize {
    let mut v = ((value << 1) ^ (value >> 31)) as u32;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut slice = out.as_slice();
            prop_assert_eq!(read_varint(&mut slice), Ok(v));
            prop_assert!(slice.is_empty());
        }

        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            write_varlong(&mut out, v);
            let mut slice = out.as_slice();
            prop_assert_eq!(read_varlong(&mut slice), Ok(v));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut slice = bytes.as_slice();
            let _ = read_varlong(&mut slice);
        }
    }

    #[test]
    fn overlong_is_rejected() {
        let bytes = [0xffu8; 11];
        assert_eq!(read_varint(&mut &bytes[..]), Err(VarintError::TooLong(5)));
        assert_eq!(read_varlong(&mut &bytes[..]), Err(VarintError::TooLong(10)));
        assert_eq!(read_varint(&mut &[0x80u8][..]), Err(VarintError::Truncated));
    }
}
