//! CEP engine throughput (single core): the brute-force login pattern over 100,000 keys,
//! and a tumbling count per key. Run: `cargo bench -p weir-cep --bench engine`.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_cep::{Engine, Limits, SourceRecord};

const PATTERN: &str = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "5s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"#;

const COUNT: &str = r#"{"id": "per-user", "source": {"topic": "auth"}, "event_time": {"field": "ts"},
 "window": {"type": "tumbling", "size": "10s"}, "group_by": ["user"],
 "aggregates": {"n": "count()"}, "emit": {"topic": "stats"}}"#;

const KEYS: u64 = 100_000;
const N: usize = 200_000;

fn events() -> Vec<Vec<u8>> {
    // xorshift: deterministic pseudo-random users and outcomes; ~1 ms between events
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..N)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = x % KEYS;
            let success = (x >> 20).is_multiple_of(4);
            let kind = if (x >> 30).is_multiple_of(10) { "logout" } else { "login" };
            format!(r#"{{"user":"u{user}","type":"{kind}","success":{success},"ts":{},"ip":"10.0.0.1"}}"#, i as u64)
                .into_bytes()
        })
        .collect()
}

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
