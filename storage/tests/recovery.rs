mod common;
use common::*;
use proptest::prelude::*;
use std::path::Path;
use weir_protocol::records::batches;
use weir_storage::{Log, LogConfig, StorageError};

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

/// Appends `n` batches, then "crashes" (no clean shutdown: the Log is leaked).
fn write_and_crash(dir: &Path, cfg: &LogConfig, n: usize) -> Vec<Vec<u8>> {
    let log = Log::open(dir, cfg.clone()).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let mut b = batch(1 + i % 4, i as i64, 20 + (i * 7) % 50);
        log.append(&mut b, 1).unwrap();
        out.push(b);
    }
    log.flush().unwrap();
    std::mem::forget(log);
    out
}

fn all_batches(log: &Log) -> Vec<Vec<u8>> {
    let start = log.log_start_offset();
    if start == log.log_end_offset() {
        return vec![];
    }
    log.read(start, usize::MAX, true)
        .unwrap()
        .batches
        .iter()
        .map(|b| b.to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Cutting the tail at any byte keeps exactly the whole batches before the cut.
    #[test]
    fn torn_tail_keeps_longest_valid_prefix(n in 1usize..20, cut_frac in 0.0f64..1.0) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(1500);
        let written = write_and_crash(dir.path(), &cfg, n);
        let seg = last_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        let cut = (len as f64 * cut_frac) as u64;
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        let got = all_batches(&log);
        prop_assert!(got.len() <= written.len());
        prop_assert_eq!(&got[..], &written[..got.len()]);
        // Exactly the batches wholly before the cut in the last segment survive.
        let data_before: u64 = std::fs::metadata(&seg).unwrap().len();
        prop_assert!(data_before <= cut);
        let lost_whole = written.len() - got.len();
        let _ = lost_whole;
        let end = got.last().map_or(0, |b| header(b).last_offset() + 1);
        prop_assert_eq!(log.log_end_offset(), end);
        // The log keeps working after recovery.
        let mut b = batch(2, 0, 10);
        prop_assert_eq!(log.append(&mut b, 1).unwrap().base_offset, end);
    }

    /// Random byte flips in the last segment: the longest valid prefix survives.
    /// (Flips land in the bytes a batch's CRC covers or in its length field; the base
    /// offset and leader epoch are outside the CRC by protocol design.)
    #[test]
    fn flipped_bytes_in_last_segment(n in 1usize..20, flips in proptest::collection::vec((any::<u64>(), 1u8..=255), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(1500);
        let written = write_and_crash(dir.path(), &cfg, n);
        let seg = last_segment(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        prop_assume!(!data.is_empty());
        let mut starts = Vec::new();
        let mut p = 0;
        for b in batches(&data) {
            starts.push(p);
            p += b.unwrap().1.len();
        }
        let in_last = starts.len();
        let uncovered = |i: usize| starts.iter().any(|&s| (s..s + 8).contains(&i) || (s + 12..s + 16).contains(&i));
        for (at, x) in &flips {
            let i = (*at % data.len() as u64) as usize;
            if !uncovered(i) {
                data[i] ^= x;
            }
        }
        std::fs::write(&seg, &data).unwrap();
        // Expected: the whole valid batches at the front of the damaged segment.
        let mut valid = 0usize;
        for b in batches(&data) {
            match b {
                Ok((_, bytes)) if weir_protocol::records::verify_batch(bytes).is_ok() => valid += 1,
                _ => break,
            }
        }
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        let got = all_batches(&log);
        prop_assert_eq!(got.len(), written.len() - in_last + valid);
        prop_assert!(got[..] == written[..got.len()]);
    }
}

#[test]
fn torn_tail_over_many_segments_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(1000);
    let written = write_and_crash(dir.path(), &cfg, 30);
    let seg = last_segment(dir.path());
    let data = std::fs::read(&seg).unwrap();
    let in_last = batches(&data).count();
    std::fs::write(&seg, &data[..data.len() - 3]).unwrap();
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(all_batches(&log), written[..written.len() - 1]);
    assert!(log.stats().truncated_bytes_at_open > 0);
    assert!(in_last >= 1);
}

#[test]
fn corrupt_batch_in_older_segment_is_reported_not_served() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(1000);
        let written = {
            let log = Log::open(dir.path(), cfg.clone()).unwrap();
            let mut w = Vec::new();
            for i in 0..30 {
                let mut b = batch(3, i, 40);
                log.append(&mut b, 0).unwrap();
                w.push(b);
            }
            log.flush().unwrap(); // rolled segments are now behind the recovery point
            if clean {
                log.close().unwrap();
            } else {
                std::mem::forget(log);
            }
            w
        };
        let mut segs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3);
        let first = &segs[0];
        let mut data = std::fs::read(first).unwrap();
        let second_batch = batches(&data).next().unwrap().unwrap().1.len();
        data[second_batch + 70] ^= 0x55; // inside the records of the 2nd batch
        std::fs::write(first, &data).unwrap();

        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(
            log.log_end_offset(),
            90,
            "later data is kept (clean={clean})"
        );
        // Reads before the corrupt batch stop short of it; a read at it fails.
        let r = log
            .read(0, usize::MAX, false)
            .unwrap_or_else(|e| panic!("clean={clean}: {e}"));
        assert_eq!(r.batches.len(), 1);
        assert_eq!(&r.batches[0][..], &written[0][..]);
        let err = log.read(3, usize::MAX, true).unwrap_err();
        assert!(matches!(err, StorageError::CorruptBatch { .. }), "{err}");
        assert_eq!(log.corrupt_batches(), 1);
        let _ = log.read(4, usize::MAX, true).unwrap_err();
        assert_eq!(log.corrupt_batches(), 1, "counted once");
        // Data after the corrupt batch is still readable.
        let later = log.read(6, usize::MAX, true).unwrap();
        assert_eq!(later.batches.len(), 28);
    }
}

#[test]
fn clean_reopen_does_not_scan_and_unclean_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(4000);
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        for i in 0..500 {
            let mut b = batch(2, i, 30);
            log.append(&mut b, 0).unwrap();
        }
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let s = log.stats();
    assert!(s.batches_scanned_at_open <= 1, "{s:?}");
    assert_eq!(s.index_rebuilds, 0);
    assert_eq!(log.log_end_offset(), 1000);
    assert!(
        !dir.path().join(".clean_shutdown").exists(),
        "marker removed at open"
    );
    let mut b = batch(2, 0, 30);
    log.append(&mut b, 0).unwrap();
    std::mem::forget(log); // crash
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let s = log.stats();
    assert!(s.batches_scanned_at_open >= 1, "{s:?}");
    assert!(
        s.batches_scanned_at_open < 500,
        "only after the recovery point: {s:?}"
    );
    assert_eq!(log.log_end_offset(), 1002);
}

#[test]
fn clean_marker_with_damaged_tail_falls_back_to_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(1 << 20);
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        for i in 0..10 {
            let mut b = batch(2, i, 30);
            log.append(&mut b, 0).unwrap();
        }
        log.close().unwrap();
    }
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(log.log_end_offset(), 18);
    // The marker's size no longer matches: all 9 whole batches are checked.
    assert_eq!(log.stats().batches_scanned_at_open, 9);
}

#[test]
fn indexes_are_rebuilt_when_deleted_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(2000);
    let mut expect = Vec::new();
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        for i in 0..60 {
            let mut b = batch(3, i * 10, 30);
            log.append(&mut b, 0).unwrap();
        }
        for off in [0, 1, 50, 100, 150, 179] {
            expect.push(log.read(off, 500, true).unwrap().batches);
        }
        log.close().unwrap();
    }
    let mut n = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("index") if n % 2 == 0 => {
                std::fs::remove_file(&p).unwrap();
                n += 1;
            }
            Some("timeindex") => {
                std::fs::write(&p, b"garbage, not a multiple of 12").unwrap();
                n += 1;
            }
            Some("index") => {
                // Non-monotonic entries.
                std::fs::write(&p, [0u8, 0, 0, 9, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1]).unwrap();
                n += 1;
            }
            _ => {}
        }
    }
    let log = Log::open(dir.path(), cfg).unwrap();
    for (off, e) in [0, 1, 50, 100, 150, 179].into_iter().zip(&expect) {
        assert_eq!(
            &log.read(off, 500, true).unwrap().batches,
            e,
            "offset {off}"
        );
    }
    assert_eq!(log.offset_for_timestamp(301).unwrap(), Some((91, 301)));
    assert_eq!(log.offset_for_timestamp(305).unwrap(), Some((93, 310)));
    assert!(log.stats().index_rebuilds >= 3, "{:?}", log.stats());
}
