//! Profiling aid for the append path (not a benchmark with a verdict; see
//! `storage_bench`): appends MiB of 16 KiB or 1 MiB batches to a `Log` with fsync off
//! and/or writes them with `write()`, printing each run's rate, so that one side can
//! be run alone under `perf record`:
//!
//! ```text
//! append_probe <batch bytes> <MiB> <runs> [both|base|log|all]
//! perf record --call-graph dwarf append_probe 16384 256 1 log
//! ```
//!
//! `all` also runs "CRC check + write()", "fused" (CRC-update a chunk, write it, next
//! chunk; `FUSE_KIB`, default 128) and "fallocate(KEEP_SIZE) + write()"; `cmp` runs
//! the baseline, "CRC check + write()" and "fused".
//! `HOT_POOL_KIB=n` cycles through the first n KiB of batches (cache-hot source).
use std::io::Write;
use std::time::{Duration, Instant};
use weir_protocol::compression::Compression;
use weir_protocol::records::BatchBuilder;
use weir_storage::{FlushPolicy, Log, LogConfig};

fn build(batch_bytes: usize, total: usize) -> Vec<Vec<u8>> {
    let per = (batch_bytes / 1024).max(1);
    let value: Vec<u8> = (0..1024 - 40).map(|i| (i * 31 % 251) as u8).collect();
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut ts = 1_700_000_000_000i64;
    while bytes < total {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..per {
            b.push(
                ts,
                Some(format!("key-{i:08}").as_bytes()),
                Some(&value),
                &[],
            );
            ts += 1;
        }
        let b = b.build().unwrap();
        bytes += b.len();
        out.push(b);
    }
    out
}

/// CPU time of the calling thread (user + system): unlike wall time, it does not
/// count time spent waiting for a CPU, so it is steadier on a shared machine.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let batch: usize = a.get(1).and_then(|v| v.parse().ok()).unwrap_or(16 << 10);
    let mib: usize = a.get(2).and_then(|v| v.parse().ok()).unwrap_or(256);
    let runs: usize = a.get(3).and_then(|v| v.parse().ok()).unwrap_or(3);
    let mode = a.get(4).cloned().unwrap_or_else(|| "both".into());
    let root = std::env::temp_dir().join("weir-append-probe");
    std::fs::create_dir_all(&root).unwrap();
    let mut batches = build(batch, mib << 20);
    let mut count = batches.len();
    // HOT_POOL_KIB=n: cycle through the first n KiB of batches (cache-hot source).
    if let Some(kib) = std::env::var("HOT_POOL_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let k = ((kib << 10) / batches[0].len()).clamp(1, batches.len());
        let n = batches.len();
        batches.truncate(k);
        count = n;
        println!("hot pool: {k} batches");
    }
    let k = batches.len();
    let total: usize = (0..count).map(|i| batches[i % k].len()).sum();
    let cfg = LogConfig {
        segment_bytes: 256 << 20,
        flush: FlushPolicy::Os,
        retention_ms: None,
        ..LogConfig::default()
    };
    for _ in 0..runs {
        if mode != "log" && mode != "crcw" && mode != "falloc" && mode != "fused" {
            let p = root.join("base.bin");
            let _ = std::fs::remove_file(&p);
            let (t, c) = (Instant::now(), thread_cpu());
            let mut f = std::fs::File::create(&p).unwrap();
            for b in (0..count).map(|i| &batches[i % k]) {
                f.write_all(b).unwrap();
            }
            let (d, cd) = (t.elapsed(), thread_cpu() - c);
            unsafe { libc::sync() };
            println!(
                "write: {:.0} MiB/s (cpu {:.0})",
                total as f64 / 1048576.0 / d.as_secs_f64(),
                total as f64 / 1048576.0 / cd.as_secs_f64()
            );
        }
        if mode == "all" || mode == "crcw" || mode == "cmp" {
            let p = root.join("crc.bin");
            let _ = std::fs::remove_file(&p);
            let (t, c) = (Instant::now(), thread_cpu());
            let mut f = std::fs::File::create(&p).unwrap();
            for b in (0..count).map(|i| &batches[i % k]) {
                weir_protocol::records::verify_batch(b).unwrap();
                f.write_all(b).unwrap();
            }
            let (d, cd) = (t.elapsed(), thread_cpu() - c);
            unsafe { libc::sync() };
            println!(
                "crc+write: {:.0} MiB/s (cpu {:.0})",
                total as f64 / 1048576.0 / d.as_secs_f64(),
                total as f64 / 1048576.0 / cd.as_secs_f64()
            );
        }
        if mode == "all" || mode == "fused" || mode == "cmp" {
            // CRC-update a chunk, then write it while it is still in cache
            // (FUSE_KIB, default 128): the experiment behind the log's fused append.
            let chunk = std::env::var("FUSE_KIB")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(128)
                << 10;
            // WRITE_FIRST=1: write the chunk, then CRC it (from cache).
            let write_first = std::env::var_os("WRITE_FIRST").is_some();
            let p = root.join("fused.bin");
            let _ = std::fs::remove_file(&p);
            let (t, c) = (Instant::now(), thread_cpu());
            let mut f = std::fs::File::create(&p).unwrap();
            for b in (0..count).map(|i| &batches[i % k]) {
                let h = weir_protocol::records::BatchHeader::parse(b).unwrap();
                let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
                let mut s = 0;
                while s < b.len() {
                    let e = (s + chunk).min(b.len());
                    if write_first {
                        f.write_all(&b[s..e]).unwrap();
                        d.update(&b[s.max(21)..e]);
                    } else {
                        d.update(&b[s.max(21)..e]);
                        f.write_all(&b[s..e]).unwrap();
                    }
                    s = e;
                }
                assert_eq!(d.finalize() as u32, h.crc);
            }
            let (d, cd) = (t.elapsed(), thread_cpu() - c);
            unsafe { libc::sync() };
            println!(
                "fused: {:.0} MiB/s (cpu {:.0})",
                total as f64 / 1048576.0 / d.as_secs_f64(),
                total as f64 / 1048576.0 / cd.as_secs_f64()
            );
        }
        if mode == "all" || mode == "falloc" {
            use std::os::unix::io::AsRawFd;
            let p = root.join("fa.bin");
            let _ = std::fs::remove_file(&p);
            let (t, c) = (Instant::now(), thread_cpu());
            let mut f = std::fs::File::create(&p).unwrap();
            let r = unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    (total + (1 << 20)) as i64,
                )
            };
            assert_eq!(r, 0);
            for b in (0..count).map(|i| &batches[i % k]) {
                f.write_all(b).unwrap();
            }
            let (d, cd) = (t.elapsed(), thread_cpu() - c);
            unsafe { libc::sync() };
            println!(
                "falloc+write: {:.0} MiB/s (cpu {:.0})",
                total as f64 / 1048576.0 / d.as_secs_f64(),
                total as f64 / 1048576.0 / cd.as_secs_f64()
            );
        }
        if mode == "both" || mode == "all" || mode == "log" {
            let dir = root.join("log");
            let _ = std::fs::remove_dir_all(&dir);
            let log = Log::open(&dir, cfg.clone()).unwrap();
            let (t, c) = (Instant::now(), thread_cpu());
            let mut slowest = Duration::ZERO;
            for i in 0..count {
                let a = Instant::now();
                log.append(&mut batches[i % k], 0).unwrap();
                slowest = slowest.max(a.elapsed());
            }
            let (d, cd) = (t.elapsed(), thread_cpu() - c);
            let segments = log.segment_count();
            drop(log);
            unsafe { libc::sync() };
            println!(
                "log:   {:.0} MiB/s (cpu {:.0}), slowest append {:.1} ms, {segments} segments",
                total as f64 / 1048576.0 / d.as_secs_f64(),
                total as f64 / 1048576.0 / cd.as_secs_f64(),
                slowest.as_secs_f64() * 1e3
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
