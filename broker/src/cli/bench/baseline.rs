//! The machine's own limits, measured the same way as Weir's figures so that
//! results print as ratios:
//!
//! - loopback TCP copy: a sender and a receiver thread over 127.0.0.1 move a
//!   volume with large (1 MiB) writes and reads; the time runs from connect to
//!   the receiver seeing end of stream;
//! - sequential file write of a volume with large writes, without fsync (page
//!   cache speed; the file is not synced before the clock stops);
//! - sequential file write with an `fdatasync` after every write of a batch's
//!   size, and the latency of each of those fsyncs;
//! - wakeup delay: how late a thread sleeping 1 ms at a time wakes up. No
//!   request can be answered faster than the machine schedules the thread that
//!   answers it, so this is the floor under every tail latency printed here. On a
//!   virtual machine it includes the host descheduling the vCPU, which shows up
//!   nowhere else (a VM measured here had an idle p99 of 3-9 ms).

use super::report::{round3, Latency, MIB};
use super::{new_histogram, record};
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// MiB moved by the loopback copy and the plain file write.
    #[arg(long, default_value_t = 1024)]
    pub volume_mib: u64,
    /// Bytes per write (and read) of the loopback copy and the plain file write.
    #[arg(long, default_value_t = 1 << 20)]
    pub write_size: usize,
    /// MiB written by the fsync run.
    #[arg(long, default_value_t = 64)]
    pub fsync_mib: u64,
    /// Bytes written between fsyncs (a batch).
    #[arg(long, default_value_t = 64 * 1024)]
    pub fsync_write_size: usize,
    /// Directory for the file baselines (use the broker's data disk). Default: the temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds of the wakeup-delay probe (1 ms sleeps).
    #[arg(long, default_value_t = 5.0)]
    pub wakeup_secs: f64,
    /// Print the results as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// A thread that sleeps 1 ms at a time and records how much later than asked it
/// woke up (microseconds), until stopped: the machine's scheduling floor, measured
/// beside (or during) a run.
pub struct WakeupProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Histogram<u64>>,
    /// The machine's CPU time counters when the probe started (Linux).
    cpu_at_start: Option<CpuTimes>,
}

/// The machine's CPU time counters (`cpu` line of /proc/stat, clock ticks, all CPUs).
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is within user)
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTimes {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }
}

/// How the machine's CPU time went during a run, in fractions of all CPUs' time.
#[derive(Debug, Clone, Copy)]
pub struct CpuShare {
    pub busy: f64,
    pub idle: f64,
    /// Time the hypervisor ran something else while this VM wanted to run: on a
    /// shared virtual machine, the part of the latency no change here can remove.
    pub steal: f64,
}

impl CpuShare {
    fn between(a: CpuTimes, b: CpuTimes) -> Option<CpuShare> {
        let (busy, idle, steal) = (
            b.busy.saturating_sub(a.busy),
            b.idle.saturating_sub(a.idle),
            b.steal.saturating_sub(a.steal),
        );
        let total = (busy + idle + steal) as f64;
        (total > 0.0).then(|| CpuShare {
            busy: busy as f64 / total,
            idle: idle as f64 / total,
            steal: steal as f64 / total,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "busy": round3(self.busy),
            "idle": round3(self.idle),
            "steal": round3(self.steal),
        })
    }
}

/// One line describing the machine's CPU time during a run.
pub fn describe_cpu(c: &CpuShare) -> String {
    format!(
        "machine CPU time during the run (all CPUs): {:.0}% busy, {:.0}% stolen by the hypervisor (steal), {:.0}% idle",
        c.busy * 100.0,
        c.steal * 100.0,
        c.idle * 100.0
    )
}

/// The probe's sleep.
const PROBE_SLEEP: Duration = Duration::from_millis(1);

impl WakeupProbe {
    pub fn start() -> WakeupProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut h = new_histogram();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(PROBE_SLEEP);
                let late = t.elapsed().saturating_sub(PROBE_SLEEP);
                record(&mut h, late.as_micros() as u64, 1);
            }
            h
        });
        WakeupProbe {
            stop,
            thread,
            cpu_at_start: CpuTimes::read(),
        }
    }

    /// Stops the probe; the delays it saw (None if it saw none or its thread died).
    pub fn finish(self) -> Option<Latency> {
        self.finish_with_cpu().0
    }

    /// Stops the probe; the delays it saw, and how the machine's CPU time went since it
    /// started (None where /proc/stat cannot be read).
    pub fn finish_with_cpu(self) -> (Option<Latency>, Option<CpuShare>) {
        let cpu = self
            .cpu_at_start
            .zip(CpuTimes::read())
            .and_then(|(a, b)| CpuShare::between(a, b));
        self.stop.store(true, Ordering::Relaxed);
        (self.thread.join().ok().and_then(|h| Latency::of(&h)), cpu)
    }
}

/// One line describing wakeup delays.
pub fn describe_wakeup(l: &Latency, when: &str) -> String {
    format!(
        "machine wakeup delay {when} (1 ms sleeps, ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} wakeups); no latency can be lower",
        l.p50, l.p90, l.p99, l.p999, l.max, l.count
    )
}

/// Bytes moved in some time.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub bytes: u64,
    pub seconds: f64,
}

impl Measured {
    pub fn mib_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / MIB / self.seconds
        } else {
            0.0
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
            "mib_per_sec": round3(self.mib_per_sec()),
        })
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

/// Copies `bytes` from a sender thread to a receiver thread over 127.0.0.1.
pub fn loopback_copy(bytes: u64, write_size: usize) -> std::io::Result<Measured> {
    let write_size = write_size.max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; write_size];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((got, Instant::now()))
    });
    let data = pattern(write_size);
    let started = Instant::now();
    let send = (|| -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut left = bytes;
        while left > 0 {
            let n = (left as usize).min(data.len());
            s.write_all(&data[..n])?;
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)
    })();
    let received = receiver
        .join()
        .map_err(|_| std::io::Error::other("loopback receiver thread panicked"))?;
    send?;
    let (got, ended) = received?;
    if got != bytes {
        return Err(std::io::Error::other(format!(
            "loopback receiver got {got} of {bytes} bytes"
        )));
    }
    Ok(Measured {
        bytes,
        seconds: ended.duration_since(started).as_secs_f64(),
    })
}

/// Runs [`loopback_copy`] on a blocking thread.
pub async fn loopback_copy_async(bytes: u64) -> anyhow::Result<Measured> {
    tokio::task::spawn_blocking(move || loopback_copy(bytes, 1 << 20))
        .await
        .context("loopback baseline thread")?
        .context("loopback TCP baseline")
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!(".weir-bench-{what}-{}", std::process::id()))
}

/// Writes `bytes` sequentially in `write_size` writes, without fsync.
pub fn file_write(dir: &Path, bytes: u64, write_size: usize) -> std::io::Result<Measured> {
    file_write_timed(dir, bytes, write_size).map(|(m, _)| m)
}

/// [`file_write`], also returning the latency of each `write` (microseconds):
/// page-cache writes can stall (dirty throttling, page allocation).
pub fn file_write_timed(
    dir: &Path,
    bytes: u64,
    write_size: usize,
) -> std::io::Result<(Measured, Histogram<u64>)> {
    let path = TempFile(temp_path(dir, "write"));
    let data = pattern(write_size.max(1));
    let mut hist = new_histogram();
    let started = Instant::now();
    let mut f = File::create(&path.0)?;
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(data.len());
        let t = Instant::now();
        f.write_all(&data[..n])?;
        record(&mut hist, t.elapsed().as_micros() as u64, 1);
        left -= n as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(f);
    Ok((Measured { bytes, seconds }, hist))
}

/// Writes `bytes` sequentially with an fdatasync after every `write_size` write;
/// returns the throughput and the latency of each fsync (microseconds).
pub fn file_write_fsync(
    dir: &Path,
    bytes: u64,
    write_size: usize,
) -> std::io::Result<(Measured, Histogram<u64>)> {
    let path = TempFile(temp_path(dir, "fsync"));
    let data = pattern(write_size.max(1));
    let mut hist = new_histogram();
    let started = Instant::now();
    let mut f = File::create(&path.0)?;
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(data.len());
        f.write_all(&data[..n])?;
        let t = Instant::now();
        f.sync_data()?;
        record(&mut hist, t.elapsed().as_micros() as u64, 1);
        left -= n as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((Measured { bytes, seconds }, hist))
}

pub async fn run(args: &BaselineArgs) -> anyhow::Result<()> {
    if args.volume_mib == 0 || args.fsync_mib == 0 {
        anyhow::bail!("--volume-mib and --fsync-mib must be at least 1");
    }
    let dir = args.dir.clone().unwrap_or_else(super::default_baseline_dir);
    let volume = args.volume_mib << 20;
    let fsync_volume = args.fsync_mib << 20;
    let (ws, fws) = (args.write_size.max(1), args.fsync_write_size.max(1));
    let dir2 = dir.clone();
    let wakeup_secs = args.wakeup_secs.clamp(0.0, 3600.0);
    let wakeup = tokio::task::spawn_blocking(move || {
        let probe = WakeupProbe::start();
        std::thread::sleep(Duration::from_secs_f64(wakeup_secs));
        probe.finish()
    })
    .await
    .context("wakeup probe thread")?;
    let (tcp, (write, write_hist), (fsync, fsync_hist)) = tokio::task::spawn_blocking(move || {
        let tcp = loopback_copy(volume, ws).context("loopback TCP copy")?;
        let write = file_write_timed(&dir2, volume, ws)
            .with_context(|| format!("sequential write in {}", dir2.display()))?;
        let fsync = file_write_fsync(&dir2, fsync_volume, fws)
            .with_context(|| format!("fsync'd write in {}", dir2.display()))?;
        anyhow::Ok((tcp, write, fsync))
    })
    .await
    .context("baseline thread")??;
    let lat = Latency::of(&fsync_hist);
    let write_lat = Latency::of(&write_hist);
    let ratio = |m: &Measured| {
        let t = tcp.mib_per_sec();
        if t > 0.0 {
            m.mib_per_sec() / t
        } else {
            0.0
        }
    };
    if args.json {
        let v = json!({
            "mode": "baseline",
            "dir": dir.display().to_string(),
            "loopback_tcp": tcp.json(),
            "file_write": {
                "bytes": write.bytes,
                "seconds": round3(write.seconds),
                "mib_per_sec": round3(write.mib_per_sec()),
                "write_size": ws,
                "write_latency_ms": write_lat.map(|l| l.json()),
            },
            "file_write_fsync": {
                "bytes": fsync.bytes,
                "seconds": round3(fsync.seconds),
                "mib_per_sec": round3(fsync.mib_per_sec()),
                "write_size": fws,
                "fsync_latency_ms": lat.map(|l| l.json()),
            },
            "ratios_to_loopback": {
                "file_write": round3(ratio(&write)),
                "file_write_fsync": round3(ratio(&fsync)),
            },
            "wakeup_delay_ms": wakeup.map(|l| l.json()),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "weir bench baseline  (writes of {} KiB; fsync run: fdatasync every {} KiB; dir {})",
        ws >> 10,
        fws >> 10,
        dir.display()
    );
    println!();
    println!("{:<28} {:>10} {:>10} {:>8}", "", "MiB", "MiB/s", "ratio");
    let line = |name: &str, m: &Measured, r: f64| {
        println!(
            "{:<28} {:>10} {:>10.1} {:>7.2}x",
            name,
            m.bytes >> 20,
            m.mib_per_sec(),
            r
        );
    };
    line("loopback TCP copy", &tcp, 1.0);
    line("file write (no fsync)", &write, ratio(&write));
    line("file write + fsync/batch", &fsync, ratio(&fsync));
    println!();
    if let Some(l) = write_lat {
        println!(
            "write latency ms (no fsync): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} writes)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
    }
    if let Some(l) = lat {
        println!(
            "fsync latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} fsyncs)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
    }
    if let Some(l) = wakeup {
        println!("{}", describe_wakeup(&l, "(idle)"));
    }
    Ok(())
}

/// Loopback copy of `bytes` (at least 256 MiB, so that the figure is stable).
pub async fn in_run_loopback(bytes: u64) -> anyhow::Result<Measured> {
    loopback_copy_async(bytes.max(256 << 20)).await
}

/// Plain file write of `bytes` (at least 256 MiB) in 1 MiB writes, on a blocking thread.
pub async fn in_run_file_write(dir: PathBuf, bytes: u64) -> anyhow::Result<Measured> {
    let bytes = bytes.max(256 << 20);
    tokio::task::spawn_blocking(move || {
        file_write(&dir, bytes, 1 << 20).with_context(|| format!("file write in {}", dir.display()))
    })
    .await
    .context("file write baseline thread")?
}

/// How long the loopback copy of a volume took, for notes.
pub fn describe(m: &Measured) -> String {
    format!(
        "loopback TCP copy of {} MiB in the same run: {:.1} MiB/s ({:?})",
        m.bytes >> 20,
        m.mib_per_sec(),
        Duration::from_secs_f64(m.seconds)
    )
}
