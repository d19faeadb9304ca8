//! `weir_storage::Log` on a temp dir: appending 16 KiB batches (page cache, no
//! fsync), sequential reads, reads at random offsets (offset index lookup) and
//! `offset_for_timestamp` at random timestamps (time index lookup).
//!
//! `cargo bench -p weir-benches --bench storage`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use weir_protocol::compression::Compression;
use weir_protocol::records::BatchBuilder;
use weir_storage::{Log, LogConfig};

const RECORDS_PER_BATCH: usize = 15;
const T0: i64 = 1_700_000_000_000;

fn batch(first_ts: i64) -> Vec<u8> {
    let value = vec![b'x'; 1024];
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..RECORDS_PER_BATCH {
        b.push(first_ts + i as i64, None, Some(&value), &[]);
    }
    b.build().expect("uncompressed batches always build")
}

/// Tiny xorshift for random offsets.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogConfig::default()).expect("open log");
    let mut buf = batch(T0);
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    // Start over every 256 MiB (outside the clock) so the disk does not fill up.
    let limit = (256 << 20) / buf.len() as u64;
    let mut since_reset = 0u64;
    g.bench_function("append/16KiB", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if since_reset >= limit {
                    log.truncate_fully_and_start_at(0).expect("truncate");
                    since_reset = 0;
                }
                let n = left.min(limit - since_reset);
                let t = Instant::now();
                for _ in 0..n {
                    log.append(black_box(&mut buf), 0).expect("append");
                }
                spent += t.elapsed();
                since_reset += n;
                left -= n;
            }
            spent
        })
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Several segments, so lookups cross the segment map too.
    let config = LogConfig {
        segment_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).expect("open log");
    let batches = 16_384; // 256 MiB
    for i in 0..batches {
        let mut b = batch(T0 + (i * RECORDS_PER_BATCH) as i64);
        log.append(&mut b, 0).expect("append");
    }
    let end = log.log_end_offset();
    let mut g = c.benchmark_group("storage");
    // Sequential: 1 MiB fetches from the start to the end, round and round.
    let mut at = 0i64;
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("read/sequential_1MiB", |b| {
        b.iter(|| {
            let r = log.read(at, 1 << 20, true).expect("read");
            at = r
                .batches
                .last()
                .map(|b| {
                    let h = weir_protocol::records::BatchHeader::parse(b).expect("header");
                    h.last_offset() + 1
                })
                .unwrap_or(0);
            if at >= end {
                at = 0;
            }
            r
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut rng = Rng(0x1234_5678);
    g.bench_function("read/random_offset_one_batch", |b| {
        b.iter(|| {
            let off = rng.below(end as u64) as i64;
            log.read(black_box(off), 1, true).expect("read")
        })
    });
    g.bench_function("offset_for_timestamp/random", |b| {
        b.iter(|| {
            let ts = T0 + rng.below(end as u64) as i64;
            log.offset_for_timestamp(black_box(ts)).expect("lookup")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = append, reads
}
criterion_main!(benches);
