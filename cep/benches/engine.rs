//! CEP engine throughput (single core): the brute-force login pattern over 100,000 keys,
//! and a tumbling count per key. Run: `cargo bench -p weir-cep --bench engine`.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_cep::{Engine, Limits, SourceRecord};

/// The allocator the `weir` binary runs with, so that this measures what the broker does.
#[global_allocator]
static ALLOC: weir_cep::alloc::Allocator = weir_cep::alloc::Allocator;

#[path = "defs.rs"]
mod defs;
use defs::{events, COUNT, N, PATTERN};

fn engine(def: &str) -> Engine {
    let mut e = Engine::new(Limits::default());
    if let Err(err) = e.register_text(def) {
        panic!("{err}");
    }
    e
}

/// Processes every event; returns the engine so that dropping its state is not timed.
fn run(mut e: Engine, evs: &[Vec<u8>], base: i64) -> (Engine, usize) {
    let mut outs = 0;
    for (i, v) in evs.iter().enumerate() {
        outs += e
            .process(&SourceRecord {
                topic: "auth",
                partition: 0,
                offset: base + i as i64,
                timestamp_ms: i as i64,
                key: None,
                value: v,
                headers: &[],
            })
            .len();
    }
    (e, outs)
}

fn bench(c: &mut Criterion) {
    let evs = events();
    let mut g = c.benchmark_group("cep");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("brute_force_pattern_100k_keys", |b| {
        b.iter_batched(
            || engine(PATTERN),
            |e| run(e, &evs, 0),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("tumbling_count_per_key_100k_keys", |b| {
        b.iter_batched(
            || engine(COUNT),
            |e| run(e, &evs, 0),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
