mod common;
use common::*;
use std::time::Duration;
use weir_storage::manager_options;
use weir_storage::{FlushPolicy, LogConfig, LogManager};

#[test]
fn manager_opens_creates_reopens_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(1 << 20);
    {
        let m = LogManager::open(dir.path(), cfg.clone()).unwrap();
        for (t, p) in [("orders", 0), ("orders", 1), ("my-topic-with-dashes", 3)] {
            let log = m.get_or_create(t, p, cfg.clone()).unwrap();
            let mut b = batch(2, 1, 10);
            log.append(&mut b, 0).unwrap();
        }
        assert!(m.get("orders", 2).is_none());
        assert_eq!(m.logs().len(), 3);
        m.remove("orders", 1).unwrap();
        assert!(!dir.path().join("orders-1").exists());
        m.shutdown().unwrap();
    }
    std::fs::create_dir(dir.path().join("not_a_log")).unwrap();
    let m = LogManager::open(dir.path(), cfg.clone()).unwrap();
    let mut keys: Vec<_> = m.logs().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("my-topic-with-dashes".to_string(), 3),
            ("orders".to_string(), 0)
        ]
    );
    let log = m.get("my-topic-with-dashes", 3).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(
        log.stats().batches_scanned_at_open,
        1,
        "clean shutdown: tail check only"
    );
}

#[test]
fn background_thread_flushes_on_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        flush: FlushPolicy::IntervalMs(20),
        ..small_config(1 << 20)
    };
    let m = LogManager::open_with(
        dir.path(),
        cfg.clone(),
        manager_options(Duration::from_millis(5), 64),
    )
    .unwrap();
    let log = m.get_or_create("t", 0, cfg).unwrap();
    let mut b = batch(2, 1, 10);
    log.append(&mut b, 0).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.durable_offset() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(log.durable_offset(), 2);
}

#[test]
fn open_segments_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(300);
    let m = LogManager::open_with(
        dir.path(),
        cfg.clone(),
        manager_options(Duration::from_secs(60), 16),
    )
    .unwrap();
    let mut logs = Vec::new();
    for p in 0..10 {
        let log = m.get_or_create("many", p, cfg.clone()).unwrap();
        for i in 0..10 {
            let mut b = batch(2, i, 60);
            log.append(&mut b, 0).unwrap();
        }
        logs.push(log);
    }
    assert!(logs[0].segment_count() >= 5);
    for log in &logs {
        let r = log.read(0, usize::MAX, true).unwrap();
        assert_eq!(r.batches.len(), 10);
        assert!(m.open_segments() <= 16, "{}", m.open_segments());
    }
    // Evicted segments reopen transparently, including active ones taking appends.
    for log in &logs {
        let mut b = batch(1, 1, 10);
        log.append(&mut b, 0).unwrap();
        assert_eq!(log.read(0, usize::MAX, true).unwrap().batches.len(), 11);
    }
    assert!(m.open_segments() <= 16);
}

#[test]
fn many_partitions_reopen_without_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(2000);
    let n = 200;
    {
        let m = LogManager::open_with(
            dir.path(),
            cfg.clone(),
            manager_options(Duration::from_secs(60), 64),
        )
        .unwrap();
        for p in 0..n {
            let log = m.get_or_create("wide", p, cfg.clone()).unwrap();
            for i in 0..12 {
                let mut b = batch(2, i, 100);
                log.append(&mut b, 0).unwrap();
            }
        }
        m.shutdown().unwrap();
    }
    let t = std::time::Instant::now();
    let m = LogManager::open_with(
        dir.path(),
        cfg.clone(),
        manager_options(Duration::from_secs(60), 64),
    )
    .unwrap();
    let took = t.elapsed();
    let logs = m.logs();
    assert_eq!(logs.len(), n as usize);
    let scanned: u64 = logs
        .iter()
        .map(|(_, l)| l.stats().batches_scanned_at_open)
        .sum();
    assert!(
        scanned <= n as u64,
        "{scanned} batches scanned for {n} logs"
    );
    assert!(logs.iter().all(|(_, l)| l.log_end_offset() == 24));
    assert!(m.open_segments() <= 64);
    eprintln!("reopened {n} partitions in {took:?}, {scanned} batches checked");
}

#[test]
fn a_data_dir_has_one_manager() {
    let dir = tempfile::tempdir().unwrap();
    let m = LogManager::open(dir.path(), small_config(1000)).unwrap();
    assert!(LogManager::open(dir.path(), small_config(1000)).is_err());
    m.shutdown().unwrap();
    drop(m);
    LogManager::open(dir.path(), small_config(1000)).unwrap();
}
