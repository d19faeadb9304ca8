//! Appenders, readers and maintenance (roll, retention, DeleteRecords, compaction,
//! flush) running at once: no panics, no errors other than out-of-range reads, and
//! every batch served passes its CRC check.
mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_protocol::compression::Compression;
use weir_protocol::records::verify_batch;
use weir_storage::{CleanupPolicy, Log, LogConfig, StorageError};

#[test]
fn appends_reads_and_maintenance_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        cleanup_policy: CleanupPolicy::CompactDelete,
        retention_bytes: Some(40_000),
        ..small_config(4000)
    };
    let log = Arc::new(Log::open(dir.path(), cfg).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..2 {
        let (log, stop) = (log.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("k{}", i % 13);
                let v = format!("t{t}-{i}");
                let mut b = keyed(
                    &[(k.as_str(), Some(v.as_str()), i as i64)],
                    if i.is_multiple_of(5) {
                        Compression::Snappy
                    } else {
                        Compression::None
                    },
                );
                log.append(&mut b, 1).unwrap();
                i += 1;
            }
            i
        }));
    }
    for r in 0..2u64 {
        let (log, stop) = (log.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut n = 0u64;
            let mut x = r + 1;
            while !stop.load(Ordering::Relaxed) {
                let (start, end) = (log.log_start_offset(), log.log_end_offset());
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let off = start + (x >> 33) as i64 % (end - start + 1);
                match log.read(off, 3000, true) {
                    Ok(res) => {
                        for b in &res.batches {
                            verify_batch(b).unwrap();
                        }
                        if let Some(first) = res.batches.first() {
                            assert!(header(first).last_offset() >= off);
                        }
                        n += 1;
                    }
                    Err(StorageError::OffsetOutOfRange { .. }) => {}
                    Err(e) => panic!("read {off}: {e}"),
                }
            }
            n
        }));
    }
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0;
    while Instant::now() < deadline {
        log.enforce_retention(i64::MAX / 2).unwrap();
        log.compact(0).unwrap();
        log.flush().unwrap();
        if rounds % 3 == 0 {
            let end = log.log_end_offset();
            log.delete_before(end.saturating_sub(200).max(log.log_start_offset()))
                .unwrap();
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    assert_eq!(log.log_end_offset() as u64, counts[0] + counts[1]);
    assert_eq!(log.corrupt_batches(), 0);
    // Reopen: everything still consistent.
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_config(4000)).unwrap();
    assert_eq!(log.log_end_offset(), end);
    let r = log.read(log.log_start_offset(), usize::MAX, true).unwrap();
    for b in &r.batches {
        verify_batch(b).unwrap();
    }
}
