//! Each codec compressing and decompressing the records of a 16 KiB batch of
//! 1 KiB records (random upper-case letters, like Kafka's producer-perf-test).
//!
//! `cargo bench -p weir-benches --bench compression`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use weir_protocol::compression::Compression;
use weir_protocol::records::BatchBuilder;

/// The records section of a 16 KiB batch: 16 records of ~1 KiB.
fn records() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut b = BatchBuilder::new(Compression::None);
    let mut value = vec![0u8; 1024 - 16];
    for i in 0..16 {
        for v in value.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *v = b'A' + (x % 26) as u8;
        }
        b.push(1_700_000_000_000 + i, None, Some(&value), &[]);
    }
    let batch = b.build().expect("uncompressed batches always build");
    batch[61..].to_vec()
}

fn bench(c: &mut Criterion) {
    let input = records();
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(input.len() as u64));
    for codec in Compression::ALL {
        let packed = codec.compress(&input).expect("compress");
        g.bench_function(format!("compress/{}", codec.name()), |b| {
            b.iter(|| codec.compress(black_box(&input)).expect("compress"))
        });
        g.bench_function(format!("decompress/{}", codec.name()), |b| {
            b.iter(|| {
                codec
                    .decompress(black_box(&packed), 1 << 20)
                    .expect("decompress")
            })
        });
        g.bench_function(format!("round_trip/{}", codec.name()), |b| {
            b.iter(|| {
                let p = codec.compress(black_box(&input)).expect("compress");
                codec.decompress(&p, 1 << 20).expect("decompress")
            })
        });
        eprintln!(
            "compression/{}: {} -> {} bytes ({:.2}x)",
            codec.name(),
            input.len(),
            packed.len(),
            input.len() as f64 / packed.len() as f64
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
