//! `weir bench` against a real `weir serve` on free loopback ports: the JSON has
//! its fields and the counts add up. No timing assertions.

use serde_json::Value;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// Runs `weir [--bootstrap B] bench ARGS --json`, which must succeed; returns the JSON.
fn bench(bootstrap: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = Command::new(WEIR);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let out = cmd
        .arg("bench")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run weir bench");
    assert!(
        out.status.success(),
        "weir bench {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weir bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn assert_latency(v: &Value, path: &[&str]) {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    for field in ["p50", "p90", "p99", "p99_9", "max", "mean", "count"] {
        assert!(at[field].is_number(), "{path:?}.{field} missing in {v}");
    }
    assert!(at["p50"].as_f64() <= at["max"].as_f64());
}

#[test]
fn produce_then_consume_counts_match() {
    let server = start_server();
    let b = Some(server.bootstrap.as_str());

    let p = bench(
        b,
        &[
            "produce",
            "--topic",
            "bench-t",
            "--records",
            "20000",
            "--no-baseline",
        ],
    );
    assert_eq!(p["mode"], "produce");
    assert_eq!(num(&p, &["produce", "records"]), 20000.0);
    assert_eq!(num(&p, &["produce", "errors"]), 0.0);
    assert!(num(&p, &["produce", "bytes"]) >= 20000.0 * 1024.0);
    assert!(num(&p, &["produce", "records_per_sec"]) > 0.0);
    assert!(num(&p, &["produce", "mib_per_sec"]) > 0.0);
    assert_latency(&p, &["produce", "latency_ms"]);
    assert_eq!(num(&p, &["produce", "latency_ms", "count"]), 20000.0);

    // Everything the topic holds, with the loopback baseline and its ratio.
    let c = bench(b, &["consume", "--topic", "bench-t"]);
    assert_eq!(c["mode"], "consume");
    assert_eq!(
        num(&c, &["consume", "records"]),
        num(&p, &["produce", "records"])
    );
    assert_eq!(
        num(&c, &["consume", "bytes"]),
        num(&p, &["produce", "bytes"])
    );
    assert_eq!(num(&c, &["filled"]), 0.0);
    assert_latency(&c, &["consume", "latency_ms"]);
    assert!(num(&c, &["baseline", "loopback_tcp", "mib_per_sec"]) > 0.0);
    assert!(num(&c, &["ratio_to_loopback"]) > 0.0);

    // --records on a topic that holds fewer fills the shortfall first.
    let c = bench(
        b,
        &[
            "consume",
            "--topic",
            "bench-fill",
            "--records",
            "3000",
            "--no-baseline",
        ],
    );
    assert_eq!(num(&c, &["filled"]), 3000.0);
    assert_eq!(num(&c, &["consume", "records"]), 3000.0);

    // Several producers and partitions, open loop: every record is acknowledged once.
    let p = bench(
        b,
        &[
            "produce",
            "--topic",
            "bench-multi",
            "--partitions",
            "3",
            "--producers",
            "2",
            "--records",
            "5001",
            "--rate",
            "50000",
            "--compression",
            "lz4",
            "--no-baseline",
        ],
    );
    assert_eq!(num(&p, &["produce", "records"]), 5001.0);
    assert_eq!(num(&p, &["partitions"]), 3.0);
    let c = bench(
        b,
        &[
            "consume",
            "--topic",
            "bench-multi",
            "--consumers",
            "2",
            "--no-baseline",
        ],
    );
    assert_eq!(num(&c, &["consume", "records"]), 5001.0);

    let e = bench(
        b,
        &[
            "e2e",
            "--topic",
            "bench-e2e",
            "--records",
            "4000",
            "--rate",
            "20000",
        ],
    );
    assert_eq!(num(&e, &["produce", "records"]), 4000.0);
    assert_eq!(num(&e, &["consume", "records"]), 4000.0);
    assert_eq!(num(&e, &["e2e", "records"]), 4000.0);
    assert_eq!(num(&e, &["e2e", "unmatched_records"]), 0.0);
    assert_latency(&e, &["e2e", "latency_ms"]);
}

#[test]
fn baseline_figures_are_positive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let v = bench(
        None,
        &[
            "baseline",
            "--volume-mib",
            "32",
            "--fsync-mib",
            "1",
            "--wakeup-secs",
            "0.5",
            "--dir",
            dir_arg,
        ],
    );
    assert_eq!(v["mode"], "baseline");
    for what in ["loopback_tcp", "file_write", "file_write_fsync"] {
        assert!(num(&v, &[what, "mib_per_sec"]) > 0.0, "{what}: {v}");
        assert!(num(&v, &[what, "bytes"]) > 0.0, "{what}: {v}");
    }
    assert_latency(&v, &["file_write_fsync", "fsync_latency_ms"]);
    assert!(num(&v, &["ratios_to_loopback", "file_write"]) > 0.0);
    // Half a second of 1 ms sleeps: a few hundred wakeups, each late by >= 0.
    assert_latency(&v, &["wakeup_delay_ms"]);
    assert!(num(&v, &["wakeup_delay_ms", "count"]) >= 50.0, "{v}");
    // The temp files are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .collect();
    assert!(left.is_empty(), "baseline left files behind: {left:?}");
}

#[test]
fn consume_of_an_empty_topic_says_what_to_do() {
    let server = start_server();
    let out = Command::new(WEIR)
        .args([
            "--bootstrap",
            &server.bootstrap,
            "bench",
            "consume",
            "--topic",
            "nothing-here",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run weir bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--records"), "{err}");
    let _ = server.dir.path();
}

/// `bench cep` against a real `weir serve` with its HTTP API: the pattern is
/// registered, events go through the engine, and matches come back with latencies.
#[test]
fn cep_reports_matches_and_their_latency() {
    let server = start_server();
    let (bootstrap, http) = (server.bootstrap.clone(), server.http.clone());
    let v = bench(
        Some(&bootstrap),
        &[
            "cep",
            "--http",
            &http,
            "--topic",
            "logins",
            "--rate",
            "2000",
            "--duration",
            "2",
            "--keys",
            "20",
            "--partitions",
            "3",
        ],
    );
    assert_eq!(v["mode"], "cep");
    assert_eq!(v["sink_topic"], "logins-matches");
    assert_eq!(v["partitions"], 3);
    let events = num(&v, &["produce", "records"]);
    assert!(events > 1000.0, "{v}");
    assert_eq!(num(&v, &["produce", "errors"]), 0.0, "{v}");
    // 20 users, 75% failures: thousands of events complete hundreds of matches.
    let matches = num(&v, &["matches"]);
    assert!(matches > 0.0, "no matches: {v}");
    assert!(matches < events, "{v}");
    assert_latency(&v, &["latency_ms"]);
    assert_eq!(num(&v, &["latency_ms", "count"]), matches, "{v}");
    assert_latency(&v, &["wakeup_delay_ms"]);
    // The broker's own split of the time: every pass that read records is counted.
    assert!(num(&v, &["stage_timings", "process", "count"]) > 0.0, "{v}");
    assert!(num(&v, &["stage_timings", "write", "count"]) > 0.0, "{v}");
}
