//! Retention and compaction.
mod common;
use common::*;
use std::collections::HashMap;
use weir_protocol::compression::Compression;
use weir_protocol::records::decode_records;
use weir_storage::{CleanupPolicy, Log, LogConfig};

fn records(log: &Log) -> Vec<(i64, Option<String>, Option<String>)> {
    let r = log.read(log.log_start_offset(), usize::MAX, true).unwrap();
    let mut out = Vec::new();
    for b in &r.batches {
        for rec in decode_records(b, 1 << 20).unwrap() {
            let s = |x: Option<bytes::Bytes>| x.map(|v| String::from_utf8(v.to_vec()).unwrap());
            out.push((rec.offset, s(rec.key), s(rec.value)));
        }
    }
    out
}

#[test]
fn retention_by_time_deletes_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: Some(1000),
        ..small_config(500)
    };
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let now = 1_000_000;
    for i in 0..20 {
        let ts = if i < 10 { now - 5000 } else { now };
        let mut b = batch(2, ts, 50);
        log.append(&mut b, 0).unwrap();
    }
    let before = log.segment_count();
    let deleted = log.enforce_retention(now).unwrap();
    assert!(deleted > 0);
    assert_eq!(log.segment_count(), before - deleted);
    // Every remaining record is young or shares a segment with young ones; old-only segments are gone.
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 20, "{start}");
    assert_eq!(log.segment_bases()[0], start);
    assert_eq!(
        log.read(start, usize::MAX, true).unwrap().batches.len() as i64,
        (40 - start) / 2
    );
    // Everything expired: the active segment survives.
    let n = log.enforce_retention(now + 10_000).unwrap();
    assert!(n > 0);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end_offset(), 40);
    // Survives reopen.
    drop(log);
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(log.log_start_offset(), log.segment_bases()[0]);
}

#[test]
fn retention_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: None,
        retention_bytes: Some(1500),
        ..small_config(500)
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    for i in 0..30 {
        let mut b = batch(2, i, 50);
        log.append(&mut b, 0).unwrap();
    }
    let size = log.size_bytes();
    assert!(size > 3000);
    let n = log.enforce_retention(0).unwrap();
    assert!(n > 0);
    assert!(log.size_bytes() <= 1500 + 500, "{}", log.size_bytes());
    assert!(log.size_bytes() > 1000);
    assert_eq!(log.log_start_offset(), log.segment_bases()[0]);
    // Compact-only logs are not deleted by retention.
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = Log::open(
        dir2.path(),
        LogConfig {
            cleanup_policy: CleanupPolicy::Compact,
            retention_bytes: Some(10),
            ..small_config(500)
        },
    )
    .unwrap();
    for i in 0..30 {
        let mut b = batch(2, i, 50);
        log2.append(&mut b, 0).unwrap();
    }
    assert_eq!(log2.enforce_retention(i64::MAX).unwrap(), 0);
}

#[test]
fn compaction_keeps_latest_per_key_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: 1000,
        ..small_config(600)
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    let now = 100_000;
    let mut latest: HashMap<String, (i64, Option<String>)> = HashMap::new();
    let mut off = 0i64;
    for round in 0..12 {
        let recs: Vec<(String, Option<String>, i64)> = (0..4)
            .map(|j| {
                let k = format!("key{}", (round * 4 + j) % 7);
                // key3 gets a tombstone late; key5 an old tombstone early.
                let tombstone = (k == "key5" && round == 1) || (k == "key3" && round >= 10);
                let v = if tombstone {
                    None
                } else {
                    Some(format!("v{round}-{j}"))
                };
                let ts = if v.is_none() && k == "key5" {
                    now - 10_000
                } else {
                    now
                };
                (k, v, ts)
            })
            .collect();
        let refs: Vec<(&str, Option<&str>, i64)> = recs
            .iter()
            .map(|(k, v, t)| (k.as_str(), v.as_deref(), *t))
            .collect();
        let codec = if round % 3 == 0 {
            Compression::Zstd
        } else {
            Compression::None
        };
        let mut b = keyed(&refs, codec);
        log.append(&mut b, 2).unwrap();
        for (k, v, _) in recs {
            latest.insert(k, (off, v));
            off += 1;
        }
    }
    let before = records(&log);
    assert_eq!(before.len(), 48);
    let end = log.log_end_offset();
    let stats = log.compact(now).unwrap();
    assert!(stats.segments_cleaned > 0, "{stats:?}");
    assert!(stats.records_removed > 0);
    let after = records(&log);
    assert_eq!(log.log_end_offset(), end);
    // Offsets unchanged: every surviving record is identical to the one at that offset before.
    for rec in &after {
        assert!(before.contains(rec), "{rec:?} changed");
    }
    // Each key's latest record is present; older ones gone (the active segment is never rewritten).
    let active_base = *log.segment_bases().last().unwrap();
    for (k, (o, v)) in &latest {
        assert!(
            after
                .iter()
                .any(|(ro, rk, rv)| ro == o && rk.as_deref() == Some(k) && rv == v),
            "latest of {k} missing"
        );
        for (ro, rk, _) in &after {
            if rk.as_deref() == Some(k) && ro < o {
                assert!(*ro >= active_base, "older {k} at {ro} survived");
            }
        }
    }
    // key3's tombstone is recent: still there. Later, after delete.retention.ms, it goes
    // once it sits in a closed segment.
    log.roll().unwrap();
    log.compact(now).unwrap();
    let (o3, _) = latest["key3"];
    assert!(
        records(&log)
            .iter()
            .any(|(o, _, v)| *o == o3 && v.is_none()),
        "fresh tombstone kept"
    );
    log.compact(now + 2000).unwrap();
    let after2 = records(&log);
    assert!(
        !after2.iter().any(|(_, k, _)| k.as_deref() == Some("key3")),
        "tombstone dropped after delete.retention.ms"
    );
    // Batches keep their offset ranges: reading at any original offset works.
    for o in 0..end {
        let r = log.read(o, 1, true).unwrap();
        assert_eq!(r.batches.len(), 1);
    }
    // Compacted log survives a reopen (clean and unclean).
    let snapshot = records(&log);
    drop(log);
    let log = Log::open(
        dir.path(),
        LogConfig {
            cleanup_policy: CleanupPolicy::Compact,
            ..small_config(600)
        },
    )
    .unwrap();
    assert_eq!(records(&log), snapshot);
    let mut b = keyed(&[("z", Some("1"), now)], Compression::None);
    assert_eq!(log.append(&mut b, 0).unwrap().base_offset, end);
}

#[test]
fn compaction_does_not_block_appends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        cleanup_policy: CleanupPolicy::CompactDelete,
        ..small_config(2000)
    };
    let log = std::sync::Arc::new(Log::open(dir.path(), cfg).unwrap());
    for i in 0..200 {
        let k = format!("k{}", i % 10);
        let mut b = keyed(&[(k.as_str(), Some("value"), 1)], Compression::None);
        log.append(&mut b, 0).unwrap();
    }
    let l2 = log.clone();
    let appender = std::thread::spawn(move || {
        for i in 0..200 {
            let k = format!("k{}", i % 10);
            let mut b = keyed(&[(k.as_str(), Some("value"), 1)], Compression::None);
            l2.append(&mut b, 0).unwrap();
        }
    });
    for _ in 0..5 {
        log.compact(2).unwrap();
    }
    appender.join().unwrap();
    assert_eq!(log.log_end_offset(), 400);
    let recs = records(&log);
    let keys: std::collections::HashSet<_> = recs.iter().map(|(_, k, _)| k.clone()).collect();
    assert_eq!(keys.len(), 10);
    assert!(recs.len() < 400);
}
