//! Quick single-core throughput probe (wall and on-CPU time, the latter from
//! /proc/thread-self/schedstat so that a busy machine does not distort it):
//! `cargo run --release -p weir-cep --example throughput [pattern|count] [rounds]`
//! (both workloads and 3 rounds by default; one workload alone is easier to profile).
use std::time::Instant;
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
    let evs = defs::events();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.first().map(String::as_str).unwrap_or("all");
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
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
