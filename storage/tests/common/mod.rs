#![allow(dead_code)]
use weir_protocol::compression::Compression;
use weir_protocol::records::{verify_batch, BatchBuilder, BatchHeader};
use weir_storage::{FlushPolicy, LogConfig};

/// A batch of `n` records with timestamps `ts, ts+1, ...` and values of `value_len` bytes.
pub fn batch(n: usize, ts: i64, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    let v = vec![b'v'; value_len];
    for i in 0..n {
        b.push(
            ts + i as i64,
            Some(format!("k{i}").as_bytes()),
            Some(&v),
            &[],
        );
    }
    b.build().unwrap()
}

pub fn keyed(records: &[(&str, Option<&str>, i64)], codec: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for (k, v, ts) in records {
        b.push(*ts, Some(k.as_bytes()), v.map(str::as_bytes), &[]);
    }
    b.build().unwrap()
}

pub fn header(b: &[u8]) -> BatchHeader {
    verify_batch(b).unwrap()
}

pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        segment_index_bytes: 4096,
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    }
}
