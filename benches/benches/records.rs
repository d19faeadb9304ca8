//! Batch parsing on the produce path: header parse + CRC-32C of a whole batch
//! (`verify_batch`), a produce record set of several batches
//! (`validate_record_set`), and full record decoding (`decode_records`).
//!
//! `cargo bench -p weir-benches --bench records`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use weir_protocol::compression::Compression;
use weir_protocol::records::{decode_records, validate_record_set, verify_batch, BatchBuilder};

/// A batch of `count` records of `size` value bytes (random letters).
fn batch(count: usize, size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut b = BatchBuilder::new(Compression::None);
    let mut value = vec![0u8; size];
    for i in 0..count {
        for v in value.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *v = b'A' + (x % 26) as u8;
        }
        b.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    b.build().expect("uncompressed batches always build")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("records");
    for (name, count) in [("16KiB", 15), ("1MiB", 1000)] {
        let b = batch(count, 1024);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(format!("verify_batch/{name}"), |bench| {
            bench.iter(|| verify_batch(black_box(&b)).expect("valid"))
        });
    }
    // A produce request's record set: 16 batches of 16 KiB.
    let set: Vec<u8> = (0..16).flat_map(|_| batch(15, 1024)).collect();
    g.throughput(Throughput::Bytes(set.len() as u64));
    g.bench_function("validate_record_set/16x16KiB", |bench| {
        bench.iter(|| validate_record_set(black_box(&set)).expect("valid"))
    });
    let b = Bytes::from(batch(15, 1024));
    g.throughput(Throughput::Elements(15));
    g.bench_function("decode_records/16KiB", |bench| {
        bench.iter(|| decode_records(black_box(&b), 1 << 20).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
