//! Checkpoints written by earlier builds restore: a broker upgraded in place resumes from
//! the state its previous version checkpointed, and every match is still emitted exactly
//! once. Each golden file holds the state after the first half of one stream; restored,
//! the second half must give what an uninterrupted run of the current engine gives.
//!
//! A new golden file (when the checkpoint format changes), from the build that writes it:
//! `WEIR_WRITE_GOLDEN=tests/data/NAME.msgpack cargo test -p weir-cep --test compat -- --ignored`
mod common;
use common::feed_keyed;
use weir_cep::{Engine, Limits, Output};

const DEFS: [&str; 3] = [
    // `emit.value`, a late topic and fields from the key and headers.
    r#"{"id":"p","source":{"topic":"auth"},"partition_by":"user",
      "event_time":{"field":"ts","max_out_of_orderness":"2s","late_topic":"late"},
      "steps":[{"name":"fail","where":"!success","times":{"min":2}},
               {"name":"ok","where":"success && _headers.via == 'vpn'","contiguity":"relaxed"}],
      "within":"60s","skip":"past_last_event",
      "emit":{"topic":"alerts","value":{"user":"ok.user","key":"first(fail)._key","fails":"count(fail)","first":"first(fail).ts"}}}"#,
    // Outputs whole events.
    r#"{"id":"w","source":{"topic":"auth"},"partition_by":"user",
      "event_time":{"field":"ts","max_out_of_orderness":"2s"},
      "steps":[{"name":"a","where":"!success"},{"name":"b","where":"success"}],"within":"30s","emit":{"topic":"all"}}"#,
    r#"{"id":"q","source":{"topic":"auth"},"event_time":{"field":"ts","max_out_of_orderness":"2s"},
      "window":{"type":"tumbling","size":"10s"},"group_by":["user"],
      "aggregates":{"n":"count()","mx":"max(ts)"},"emit":{"topic":"stats"}}"#,
];

const N: usize = 400;
const HALF: usize = 200;

/// (user, value, timestamp): 7 users, failures and successes, every 37th event late.
fn stream() -> Vec<(String, String, i64)> {
    let mut x: u64 = 7;
    (0..N as i64)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = x % 7;
            let ok = (x >> 12).is_multiple_of(3);
            let ts = i * 700 - if i % 37 == 36 { 9_000 } else { 0 };
            (
                format!("u{u}"),
                format!(
                    r#"{{"user":"u{u}","success":{ok},"ts":{ts},"ip":"10.9.8.7","n":[1,{i}]}}"#
                ),
                ts,
            )
        })
        .collect()
}

fn run(
    e: &mut Engine,
    stream: &[(String, String, i64)],
    range: std::ops::Range<usize>,
) -> Vec<Output> {
    feed_keyed(e, stream, range, 2)
}

fn engine() -> Engine {
    let mut e = Engine::new(Limits::default());
    for d in DEFS {
        e.register_text(d).unwrap_or_else(|err| panic!("{err}"));
    }
    e
}

#[test]
#[ignore = "writes a golden checkpoint (see the module doc)"]
fn write_golden_checkpoint() {
    let Ok(path) = std::env::var("WEIR_WRITE_GOLDEN") else {
        return;
    };
    let s = stream();
    let mut e = engine();
    run(&mut e, &s, 0..HALF);
    std::fs::write(&path, e.checkpoint()).unwrap_or_else(|err| panic!("{path}: {err}"));
}

fn resumes_from(golden: &[u8]) {
    let s = stream();
    let mut uninterrupted = engine();
    let first = run(&mut uninterrupted, &s, 0..HALF);
    let mut expected = run(&mut uninterrupted, &s, HALF..N);
    expected.extend(uninterrupted.finish());
    assert!(first
        .iter()
        .chain(&expected)
        .any(|o| o.definition_id == "p"));
    assert!(expected.iter().any(|o| o.definition_id == "w"));

    let mut restored = Engine::new(Limits::default());
    restored.restore(golden).unwrap_or_else(|e| panic!("{e}"));
    let mut got = run(&mut restored, &s, HALF..N);
    got.extend(restored.finish());
    assert_eq!(got.len(), expected.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "output {i} differs:\n got  {:?}\n want {:?}",
            String::from_utf8_lossy(&got[i].value),
            String::from_utf8_lossy(&expected[i].value)
        );
    }
}

/// Written by 1a66e72 (session 7): every event checkpointed with its record.
#[test]
fn a_checkpoint_written_before_projected_events_restores() {
    resumes_from(include_bytes!("data/checkpoint-1a66e72.msgpack"));
}

/// The current format, through the same path (the golden file above is the one that
/// can catch a format change).
#[test]
fn a_checkpoint_of_this_build_restores() {
    let s = stream();
    let mut e = engine();
    run(&mut e, &s, 0..HALF);
    resumes_from(&e.checkpoint());
}
