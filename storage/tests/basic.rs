mod common;
use common::*;
use std::sync::Arc;
use weir_protocol::compression::Compression;
use weir_protocol::records::decode_records;
use weir_storage::{FlushPolicy, Log, LogConfig, StorageError};

#[test]
fn append_assigns_offsets_and_read_returns_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let mut b1 = batch(3, 1000, 10);
    let i1 = log.append(&mut b1, 7).unwrap();
    assert_eq!((i1.base_offset, i1.last_offset), (0, 2));
    let mut set = batch(2, 2000, 10);
    set.extend(batch(4, 3000, 10));
    let i2 = log.append(&mut set, 7).unwrap();
    assert_eq!(
        (i2.base_offset, i2.last_offset, i2.max_timestamp),
        (3, 8, 3003)
    );
    assert_eq!(log.log_end_offset(), 9);

    let r = log.read(0, usize::MAX, false).unwrap();
    assert_eq!(r.batches.len(), 3);
    let h = header(&r.batches[1]);
    assert_eq!(
        (h.base_offset, h.partition_leader_epoch, h.last_offset()),
        (3, 7, 4)
    );
    // A read inside a batch returns that whole batch first.
    for off in 3..=4 {
        let r = log.read(off, usize::MAX, false).unwrap();
        assert_eq!(header(&r.batches[0]).base_offset, 3);
        assert_eq!(r.batches.len(), 2);
    }
    let r = log.read(6, usize::MAX, false).unwrap();
    assert_eq!(header(&r.batches[0]).base_offset, 5);
    // max_bytes and KIP-74 min_one.
    assert!(log.read(0, 10, false).unwrap().batches.is_empty());
    assert_eq!(log.read(0, 10, true).unwrap().batches.len(), 1);
    // End and out of range.
    assert!(log.read(9, 100, true).unwrap().batches.is_empty());
    assert!(matches!(
        log.read(10, 100, true),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.read(-1, 100, true),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn read_for_fetch_coalesces_each_segment_and_stops_at_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of ~3 batches, so a long read spans several segments.
    let log = Log::open(dir.path(), small_config(600)).unwrap();
    for i in 0..12 {
        log.append(&mut batch(2, 1000 + i, 50), 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    let whole: Vec<u8> = log.read(3, usize::MAX, false).unwrap().batches.concat();
    let fetched = log.read_for_fetch(3, usize::MAX, false, i64::MAX).unwrap();
    assert_eq!(
        fetched.batches.len(),
        log.segment_count(),
        "one slice per segment"
    );
    assert_eq!(
        fetched.batches.concat(),
        whole,
        "same bytes as batch by batch"
    );
    let first = weir_protocol::records::BatchHeader::parse(&fetched.batches[0]).unwrap();
    assert_eq!(
        first.base_offset, 2,
        "starts with the batch holding offset 3"
    );
    // Nothing at or past max_offset (the high watermark) is served.
    let bounded = log
        .read_for_fetch(0, usize::MAX, false, 9)
        .unwrap()
        .batches
        .concat();
    let last = weir_protocol::records::batches(&bounded)
        .map(|b| b.unwrap().0.last_offset())
        .max();
    assert_eq!(
        last,
        Some(9),
        "the batch starting at 8 (below 9) is included, the one at 10 is not"
    );
    // max_bytes still holds, with KIP-74's at-least-one.
    let one = log.read_for_fetch(0, 10, true, i64::MAX).unwrap();
    assert_eq!(
        weir_protocol::records::batches(&one.batches.concat()).count(),
        1
    );
    assert!(log
        .read_for_fetch(0, 10, false, i64::MAX)
        .unwrap()
        .batches
        .is_empty());
}

#[test]
fn bad_input_is_rejected_and_nothing_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let good = batch(2, 1, 10);
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    let mut bad_len = good.clone();
    bad_len[8..12].copy_from_slice(&5i32.to_be_bytes());
    let mut too_long = good.clone();
    too_long[8..12].copy_from_slice(&10_000i32.to_be_bytes());
    for bad in [bad_crc, bad_magic, bad_len, too_long] {
        // The bad batch after a good one: the good one must not be appended either.
        let mut set = good.clone();
        set.extend_from_slice(&bad);
        let err = log.append(&mut set, 0).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidBatch { position, .. } if position == good.len()),
            "{err}"
        );
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(log.size_bytes(), 0);
    }
    assert!(matches!(
        log.append(&mut [], 0),
        Err(StorageError::EmptyRecordSet)
    ));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0u8; 5]);
    assert!(log.append(&mut trailing, 0).is_err());
    assert_eq!(log.log_end_offset(), 0);
    let mut ok = good.clone();
    assert_eq!(log.append(&mut ok, 0).unwrap().base_offset, 0);
}

#[test]
fn follower_append_keeps_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let mut b = batch(3, 1, 10);
    weir_protocol::records::set_base_offset(&mut b, 0);
    log.append_as_follower(&b).unwrap();
    let mut b2 = batch(2, 5, 10);
    weir_protocol::records::set_base_offset(&mut b2, 10); // a gap is allowed (compacted leader)
    let info = log.append_as_follower(&b2).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (10, 11));
    assert_eq!(log.log_end_offset(), 12);
    let mut old = batch(1, 5, 10);
    weir_protocol::records::set_base_offset(&mut old, 5);
    assert!(matches!(
        log.append_as_follower(&old),
        Err(StorageError::NonSequentialOffset { .. })
    ));
    assert_eq!(
        header(&log.read(7, 1000, true).unwrap().batches[0]).base_offset,
        10
    );
}

#[test]
fn timestamps_lookup_and_max() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(600)).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    assert_eq!(log.max_timestamp().unwrap(), None);
    // 10 batches of 5 records, timestamps 100*i + j; one batch with a big timestamp in the middle.
    for i in 0..10 {
        let mut b = if i == 4 {
            keyed(
                &[("a", Some("x"), 5000), ("b", Some("y"), 450)],
                Compression::Lz4,
            )
        } else {
            batch(5, 100 * i, 20)
        };
        log.append(&mut b, 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    // Offsets: batches 0..4 hold offsets 0..19, batch 4 holds 20..21, then 22.. by 5.
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(102).unwrap(), Some((7, 102)));
    assert_eq!(log.offset_for_timestamp(104).unwrap(), Some((9, 104)));
    assert_eq!(log.offset_for_timestamp(105).unwrap(), Some((10, 200)));
    assert_eq!(log.offset_for_timestamp(460).unwrap(), Some((20, 5000)));
    assert_eq!(log.offset_for_timestamp(5000).unwrap(), Some((20, 5000)));
    assert_eq!(log.offset_for_timestamp(5001).unwrap(), None);
    assert_eq!(log.max_timestamp().unwrap(), Some((5000, 20)));
    // Survives a clean reopen (max timestamps come from the time indexes).
    drop(log);
    let log = Log::open(dir.path(), small_config(600)).unwrap();
    assert_eq!(log.max_timestamp().unwrap(), Some((5000, 20)));
    assert_eq!(log.offset_for_timestamp(104).unwrap(), Some((9, 104)));
    // The first record in offset order with a timestamp >= 905 is the 5000 one.
    assert_eq!(log.offset_for_timestamp(905).unwrap(), Some((20, 5000)));
    assert_eq!(log.offset_for_timestamp(300).unwrap(), Some((15, 300)));
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        flush: FlushPolicy::EveryAppend,
        ..small_config(1 << 20)
    };
    let log = Arc::new(Log::open(dir.path(), cfg).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let mut b = batch(2, 1, 50);
                    let info = log.append(&mut b, 0).unwrap();
                    assert!(log.durable_offset() > info.last_offset);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.log_end_offset(), 400);
    assert_eq!(log.durable_offset(), 400);
    let fsyncs = log.stats().fsyncs;
    assert!(fsyncs <= 200, "{fsyncs} fsyncs for 200 appends");
    eprintln!("200 appends from 8 threads: {fsyncs} fsyncs");
}

#[test]
fn durability_under_os_policy_and_wait_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let mut b = batch(3, 1, 10);
    log.append(&mut b, 0).unwrap();
    assert_eq!(log.durable_offset(), 0);
    log.wait_durable(1).unwrap();
    assert_eq!(log.durable_offset(), 3);
    let mut b = batch(3, 1, 10);
    log.append(&mut b, 0).unwrap();
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 6);
    log.wait_durable(1000).unwrap(); // beyond the end: returns
    log.truncate_to(4).unwrap();
    assert_eq!(log.durable_offset(), 3);
}

#[test]
fn truncate_and_delete_before() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(400)).unwrap();
    for i in 0..10 {
        let mut b = batch(3, i, 30);
        log.append(&mut b, 0).unwrap();
    }
    assert_eq!(log.log_end_offset(), 30);
    let segs = log.segment_count();
    assert!(segs > 3);
    // Truncating inside a batch removes that whole batch.
    log.truncate_to(20).unwrap();
    assert_eq!(log.log_end_offset(), 18);
    let r = log.read(15, usize::MAX, false).unwrap();
    assert_eq!(header(r.batches.last().unwrap()).last_offset(), 17);
    let mut b = batch(1, 1, 30);
    assert_eq!(log.append(&mut b, 0).unwrap().base_offset, 18);
    // DeleteRecords.
    assert_eq!(log.delete_before(7).unwrap(), 7);
    assert_eq!(log.log_start_offset(), 7);
    assert!(matches!(
        log.read(6, 100, true),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        header(&log.read(7, 100, true).unwrap().batches[0]).base_offset,
        6
    );
    assert!(log.delete_before(100).is_err());
    assert_eq!(log.delete_before(19).unwrap(), 19);
    assert!(log.segment_count() < segs);
    drop(log);
    let log = Log::open(dir.path(), small_config(400)).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (19, 19));
    // Truncating below the start empties the log and restarts it there.
    log.truncate_to(3).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (3, 3));
    let mut b = batch(2, 1, 30);
    assert_eq!(log.append(&mut b, 0).unwrap().base_offset, 3);
}

#[test]
fn readers_keep_their_bytes_across_truncation_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(300)).unwrap();
    for i in 0..6 {
        let mut b = batch(2, i, 40);
        log.append(&mut b, 0).unwrap();
    }
    let held = log.read(0, usize::MAX, false).unwrap();
    let copies: Vec<Vec<u8>> = held.batches.iter().map(|b| b.to_vec()).collect();
    log.truncate_to(5).unwrap();
    log.delete_before(log.log_end_offset()).unwrap();
    log.enforce_retention(i64::MAX).unwrap();
    for (b, c) in held.batches.iter().zip(&copies) {
        assert_eq!(&b[..], &c[..]);
        decode_records(b, 1 << 20).unwrap();
    }
}

#[test]
fn closed_log_rejects_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(300)).unwrap();
    log.close().unwrap();
    let mut b = batch(1, 1, 1);
    assert!(matches!(
        log.append(&mut b, 0),
        Err(StorageError::Closed { .. })
    ));
    log.delete().unwrap();
    assert!(!dir.path().exists());
}

#[test]
fn segment_ms_rolls_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: Some(30),
        ..small_config(1 << 20)
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    let mut b = batch(1, 1, 10);
    log.append(&mut b, 0).unwrap();
    let mut b = batch(1, 1, 10);
    log.append(&mut b, 0).unwrap();
    assert_eq!(log.segment_count(), 1);
    std::thread::sleep(std::time::Duration::from_millis(60));
    // The next append rolls first...
    let mut b = batch(1, 1, 10);
    log.append(&mut b, 0).unwrap();
    assert_eq!(log.segment_bases(), vec![0, 2]);
    // ...and the background check rolls an idle segment.
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert!(log.maybe_roll_by_time(weir_storage_now()).unwrap());
    assert_eq!(log.segment_bases(), vec![0, 2, 3]);
    assert!(
        !log.maybe_roll_by_time(weir_storage_now()).unwrap(),
        "empty active segments do not roll"
    );
}

fn weir_storage_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn follower_gap_beyond_32_bit_relative_offsets_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let mut b = batch(2, 1, 10);
    weir_protocol::records::set_base_offset(&mut b, 0);
    log.append_as_follower(&b).unwrap();
    let far = 5_000_000_000i64;
    let mut b2 = batch(2, 2, 10);
    weir_protocol::records::set_base_offset(&mut b2, far);
    log.append_as_follower(&b2).unwrap();
    assert_eq!(log.segment_bases(), vec![0, far]);
    assert_eq!(log.log_end_offset(), far + 2);
    assert_eq!(
        header(&log.read(1_000_000, 100, true).unwrap().batches[0]).base_offset,
        far
    );
    assert_eq!(
        header(&log.read(far + 1, 100, true).unwrap().batches[0]).base_offset,
        far
    );
    drop(log);
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    assert_eq!(log.log_end_offset(), far + 2);
}

/// Length of the active segment's file on disk (not the log's idea of its size).
fn active_file_len(dir: &std::path::Path) -> u64 {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    std::fs::metadata(logs.last().unwrap()).unwrap().len()
}

fn all_batches(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 20, true).unwrap();
        for b in &r.batches {
            offset = header(b).last_offset() + 1;
            out.push(b.to_vec());
        }
    }
    out
}

/// Multi-MiB record sets are CRC-checked while they are written (in chunks, under
/// the write lock): a bad batch deep inside one must still leave nothing behind,
/// neither in the log's state nor in the file, and the next good append must land
/// exactly where the failed one would have.
#[test]
fn corrupt_batch_deep_in_a_large_request_leaves_file_and_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(64 << 20)).unwrap();
    // Something already in the log, not page aligned.
    let mut first = batch(3, 1, 100);
    log.append(&mut first, 0).unwrap();
    let mut big = batch(1500, 10, 1000); // one ~1.5 MiB batch: spans several chunks
    log.append(&mut big, 0).unwrap();
    let end_before = log.log_end_offset();
    let size_before = log.size_bytes();
    let file_before = active_file_len(dir.path());
    assert_eq!(file_before, size_before);
    let content_before = all_batches(&log);

    // ~4 MiB of 64 KiB batches with one ~1.2 MiB batch in the middle.
    let mut parts: Vec<Vec<u8>> = (0..30).map(|i| batch(64, 100 + i, 1000)).collect();
    parts.insert(15, batch(1200, 500, 1000));
    parts.extend((0..30).map(|i| batch(64, 900 + i, 1000)));
    let good_set: Vec<u8> = parts.concat();
    assert!(good_set.len() > 4 << 20);

    // Corrupt (a) a small batch after the middle, (b) the large batch's last byte,
    // (c) the very last batch, (d) the first batch.
    let starts: Vec<usize> = parts
        .iter()
        .scan(0, |at, p| {
            let s = *at;
            *at += p.len();
            Some(s)
        })
        .collect();
    for victim in [40, 15, parts.len() - 1, 0] {
        let mut set = good_set.clone();
        let at = starts[victim] + parts[victim].len() - 1;
        set[at] ^= 0x55;
        let err = log.append(&mut set, 0).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::InvalidBatch { position, source: weir_protocol::records::RecordError::CrcMismatch { .. } }
                    if position == starts[victim]
            ),
            "victim {victim}: {err}"
        );
        assert_eq!(log.log_end_offset(), end_before, "victim {victim}");
        assert_eq!(log.size_bytes(), size_before, "victim {victim}");
        assert_eq!(active_file_len(dir.path()), file_before, "victim {victim}");
        assert_eq!(all_batches(&log), content_before, "victim {victim}");
        assert!(log
            .read(end_before, 1 << 20, true)
            .unwrap()
            .batches
            .is_empty());
    }

    // The next good append lands right after the old end, byte for byte.
    let mut set = good_set.clone();
    let info = log.append(&mut set, 0).unwrap();
    assert_eq!(info.base_offset, end_before);
    assert_eq!(
        active_file_len(dir.path()),
        file_before + good_set.len() as u64
    );
    let after = all_batches(&log);
    assert_eq!(after[..content_before.len()], content_before[..]);
    assert_eq!(after[content_before.len()..].concat(), set);

    // And it survives a reopen, clean and unclean (recovery scans the segment).
    drop(log);
    let log = Log::open(dir.path(), small_config(64 << 20)).unwrap();
    assert_eq!(all_batches(&log), after);
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != ".clean_shutdown" {
            std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let unclean = Log::open(copy.path(), small_config(64 << 20)).unwrap();
    assert_eq!(all_batches(&unclean), after);
}

/// What a crash in the middle of a fused append leaves: the request's bytes past
/// the log end, except its first page, which is written last. Recovery must find no
/// batch there and cut the tail, keeping everything before it.
#[test]
fn recovery_drops_the_tail_of_an_unfinished_large_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut before = Vec::new();
    let end;
    {
        let log = Log::open(dir.path(), small_config(64 << 20)).unwrap();
        let mut b = batch(50, 1, 500);
        log.append(&mut b, 0).unwrap();
        end = log.log_end_offset();
        before.extend(all_batches(&log));
    }
    std::fs::remove_file(dir.path().join(".clean_shutdown")).unwrap();
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Two good batches with the right offsets, written from the first page boundary
    // past the header on (the head piece is still a hole).
    let mut tail = batch(600, 100, 1000);
    weir_protocol::records::set_base_offset(&mut tail, end);
    let mut more = batch(600, 700, 1000);
    weir_protocol::records::set_base_offset(&mut more, end + 600);
    tail.extend_from_slice(&more);
    let head = ((len + 61).next_multiple_of(4096) - len) as usize;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&tail[head..], len + head as u64).unwrap();
    }
    let log = Log::open(dir.path(), small_config(64 << 20)).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(all_batches(&log), before);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    let mut next = batch(2, 5, 10);
    assert_eq!(log.append(&mut next, 0).unwrap().base_offset, end);
}
