//! Record batch codecs. Kafka's attribute bits 0..=2 name the codec of a batch's
//! records section: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
//!
//! Decompression is bounded by a caller-given limit so that a small batch cannot
//! expand into unbounded memory (a "zip bomb" is bad input like any other).

use std::io::{Read, Write};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Error)]
pub enum CompressionError {
    #[error("unknown compression codec id {0}")]
    UnknownCodec(u8),
    #[error("{codec:?} data is corrupt: {reason}")]
    Corrupt { codec: Compression, reason: String },
    #[error("{codec:?} data expands past the limit of {limit} bytes")]
    TooLarge { codec: Compression, limit: usize },
}

/// xerial snappy-java's stream header, used by the Java client and librdkafka.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
const XERIAL_BLOCK: usize = 32 * 1024;

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn from_id(id: u8) -> Result<Self, CompressionError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(CompressionError::UnknownCodec(other)),
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The name used by `compression.type`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Compression::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn compress(self, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
        let corrupt = |e: std::io::Error| CompressionError::Corrupt {
            codec: self,
            reason: e.to_string(),
        };
        match self {
            Compression::None => Ok(input.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(input).map_err(corrupt)?;
                enc.finish().map_err(corrupt)
            }
            Compression::Snappy => {
                let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + input.len() / 2 + 64);
                out.extend_from_slice(XERIAL_MAGIC);
                out.extend_from_slice(&1i32.to_be_bytes()); // version
                out.extend_from_slice(&1i32.to_be_bytes()); // minimum compatible version
                let mut enc = snap::raw::Encoder::new();
                for chunk in input.chunks(XERIAL_BLOCK) {
                    let block = enc
                        .compress_vec(chunk)
                        .map_err(|e| CompressionError::Corrupt {
                            codec: self,
                            reason: e.to_string(),
                        })?;
                    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                    out.extend_from_slice(&block);
                }
                Ok(out)
            }
            Compression::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
                enc.write_all(input).map_err(corrupt)?;
                enc.finish().map_err(|e| CompressionError::Corrupt {
                    codec: self,
                    reason: e.to_string(),
                })
            }
            Compression::Zstd => zstd::bulk::compress(input, 3).map_err(corrupt),
        }
    }

    /// Decompresses `input`, failing once the output would exceed `limit` bytes.
    pub fn decompress(self, input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
        match self {
            Compression::None => {
                if input.len() > limit {
                    return Err(CompressionError::TooLarge { codec: self, limit });
                }
                Ok(input.to_vec())
            }
            Compression::Gzip => {
                read_bounded(self, flate2::read::MultiGzDecoder::new(input), limit)
            }
            Compression::Snappy => decompress_snappy(input, limit),
            Compression::Lz4 => {
                read_bounded(self, lz4_flex::frame::FrameDecoder::new(input), limit)
            }
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::new(input).map_err(|e| {
                    CompressionError::Corrupt {
                        codec: self,
                        reason: e.to_string(),
                    }
                })?;
                read_bounded(self, dec, limit)
            }
        }
    }
}

fn read_bounded(
    codec: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CompressionError::Corrupt {
            codec,
            reason: e.to_string(),
        })?;
    if read > limit {
        return Err(CompressionError::TooLarge { codec, limit });
    }
    Ok(out)
}

/// Kafka clients send snappy either with xerial framing (Java, librdkafka) or as
/// one raw block (some others); both are accepted.
fn decompress_snappy(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let codec = Compression::Snappy;
    let corrupt = |reason: String| CompressionError::Corrupt { codec, reason };
    let raw_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CompressionError> {
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt(e.to_string()))?;
        if out.len() + len > limit {
            return Err(CompressionError::TooLarge { codec, limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(())
    };
    let mut out = Vec::new();
    if input.len() >= XERIAL_HEADER_LEN && &input[..8] == XERIAL_MAGIC {
        let mut rest = &input[XERIAL_HEADER_LEN..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(corrupt("truncated xerial block length".into()));
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if rest.len() < len {
                return Err(corrupt("truncated xerial block".into()));
            }
            raw_block(&rest[..len], &mut out)?;
            rest = &rest[len..];
        }
    } else {
        raw_block(input, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_codec_round_trips(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            for codec in Compression::ALL {
                let packed = codec.compress(&data).unwrap();
                prop_assert_eq!(codec.decompress(&packed, data.len()).unwrap(), data.clone());
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            for codec in Compression::ALL {
                let _ = codec.decompress(&data, 1 << 20);
            }
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let data = vec![0u8; 1 << 20];
        for codec in Compression::ALL {
            let packed = codec.compress(&data).unwrap();
            assert!(
                matches!(
                    codec.decompress(&packed, 1000),
                    Err(CompressionError::TooLarge { .. })
                ),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn raw_snappy_is_accepted() {
        let data = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(Compression::Snappy.decompress(&raw, 1 << 20).unwrap(), data);
    }
}
