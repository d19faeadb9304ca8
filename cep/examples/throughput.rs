//! Quick single-core throughput probe (wall and on-CPU time, the latter from
//! /proc/thread-self/schedstat so that a busy machine does not distort it):
//! `cargo run --release -p weir-cep --example throughput [pattern|count] [rounds]`
//! (both workloads and 3 rounds by default; one workload alone is easier to profile).
//! `WEIR_BENCH_EVENTS=2000000 ...`: a longer stream of the same events, so that most of
//! the run is in steady state (state expiring as fast as it is created; the benchmark's
//! 200,000 events span 200 s of event time, the first 60 s of which expire nothing).
//! `... --example throughput snapshot`: the state of `benches/cep_latency.py` at
//! 50,000 events/s (10,000 users, 75% failures, 20 s), and the time
//! `Engine::capture` (under the broker's engine lock) and `Captured::encode` take on it.
use std::time::Instant;

/// The allocator the `weir` binary runs with, so that this measures what the broker does.
#[global_allocator]
static ALLOC: weir_cep::alloc::Allocator = weir_cep::alloc::Allocator;
use weir_cep::{Engine, Limits, SourceRecord};

#[path = "../benches/defs.rs"]
mod defs;

fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    // WEIR_BENCH_EVENTS: a longer stream than the benchmark's 200,000 events (steady state).
    let n = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(defs::N);
    let evs = defs::events_n(n);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.first().map(String::as_str).unwrap_or("all");
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    if only == "snapshot" {
        snapshot(rounds);
        return;
    }
    for (short, name, def) in [
        ("pattern", "brute-force pattern", defs::PATTERN),
        ("count", "tumbling count per key", defs::COUNT),
    ] {
        if only != "all" && only != short {
            continue;
        }
        for round in 0..rounds {
            let mut e = Engine::new(Limits::default());
            e.register_text(def).unwrap_or_else(|err| panic!("{err}"));
            let (c0, t0) = (cpu_ns(), Instant::now());
            let mut outs = 0;
            for (i, v) in evs.iter().enumerate() {
                outs += e
                    .process(&SourceRecord {
                        topic: "auth",
                        partition: 0,
                        offset: i as i64,
                        timestamp_ms: i as i64,
                        key: None,
                        value: v,
                        headers: &[],
                    })
                    .len();
            }
            let (cpu, wall) = ((cpu_ns() - c0) as f64 / 1e9, t0.elapsed().as_secs_f64());
            println!(
                "{name} round {round}: {} events, {outs} outputs, {:.0} events/s on-CPU, {:.0} events/s wall",
                evs.len(),
                evs.len() as f64 / cpu,
                evs.len() as f64 / wall
            );
        }
    }
}

const LATENCY_PATTERN: &str = r#"{"id": "latency", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "0s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "sent_us": "ok.sent_us"}}}"#;

fn snapshot(rounds: usize) {
    let mut e = Engine::new(Limits::default());
    e.register_text(LATENCY_PATTERN)
        .unwrap_or_else(|err| panic!("{err}"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut outs = 0;
    let n = 1_000_000u64;
    let (c0, t0) = (cpu_ns(), Instant::now());
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = x % 10_000;
        let success = (x >> 20).is_multiple_of(4);
        let ts = i / 50; // 50,000 events/s
        let v = format!(
            r#"{{"user":"u{user}","type":"login","success":{success},"ts":{ts},"sent_us":{}}}"#,
            ts * 1000
        );
        outs += e
            .process(&SourceRecord {
                topic: "auth",
                partition: 0,
                offset: i as i64,
                timestamp_ms: ts as i64,
                key: None,
                value: v.as_bytes(),
                headers: &[],
            })
            .len();
    }
    let (cpu, wall) = ((cpu_ns() - c0) as f64 / 1e9, t0.elapsed().as_secs_f64());
    let st = &e.stats()[0];
    println!(
        "{n} events, {outs} outputs, {} keys, {} partial matches; {:.0} events/s on-CPU, {:.0} events/s wall (JSON formatting included)",
        st.keys, st.partial_matches, n as f64 / cpu, n as f64 / wall
    );
    for _ in 0..rounds {
        let (c0, t0) = (cpu_ns(), Instant::now());
        let cap = e.capture();
        let (c1, t1) = (cpu_ns(), Instant::now());
        let bytes = cap.encode();
        let (c2, t2) = (cpu_ns(), Instant::now());
        println!(
            "capture {:.2} ms on-CPU ({:.2} ms wall), encode {:.1} ms on-CPU ({:.1} ms wall), {} bytes",
            (c1 - c0) as f64 / 1e6,
            (t1 - t0).as_secs_f64() * 1e3,
            (c2 - c1) as f64 / 1e6,
            (t2 - t1).as_secs_f64() * 1e3,
            bytes.len()
        );
    }
}
