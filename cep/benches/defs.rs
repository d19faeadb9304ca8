//! Shared by the benchmark and examples/throughput.rs.
#![allow(dead_code)]

pub const PATTERN: &str = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "5s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"#;

pub const COUNT: &str = r#"{"id": "per-user", "source": {"topic": "auth"}, "event_time": {"field": "ts"},
 "window": {"type": "tumbling", "size": "10s"}, "group_by": ["user"],
 "aggregates": {"n": "count()"}, "emit": {"topic": "stats"}}"#;

pub const KEYS: u64 = 100_000;
pub const N: usize = 200_000;

pub fn events() -> Vec<Vec<u8>> {
    events_n(N)
}

/// `n` events of the same stream (the first `N` are [`events`]).
pub fn events_n(n: usize) -> Vec<Vec<u8>> {
    // xorshift: deterministic pseudo-random users and outcomes; ~1 ms between events
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
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
