//! Results: percentiles, the table, JSON and the progress bar.

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const MIB: f64 = (1u64 << 20) as f64;

/// Percentiles of a latency histogram (recorded in microseconds), in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "mean": round3(self.mean),
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "p99_9": round3(self.p999),
            "max": round3(self.max),
        })
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Throughput of one side of a run.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub records: u64,
    pub batches: u64,
    /// Record batch bytes moved (what went over the wire, compressed if so).
    pub bytes: u64,
    pub seconds: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Throughput {
    pub fn records_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn mib_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / MIB / self.seconds
        } else {
            0.0
        }
    }

    pub fn json(&self, latency: Option<&Latency>) -> Value {
        json!({
            "records": self.records,
            "batches": self.batches,
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
            "records_per_sec": self.records_per_sec().round(),
            "mib_per_sec": round3(self.mib_per_sec()),
            "errors": self.errors,
            "first_error": self.first_error,
            "latency_ms": latency.map(Latency::json),
        })
    }
}

/// One row of the results table.
pub struct Row {
    pub name: String,
    pub records: Option<u64>,
    pub records_per_sec: Option<f64>,
    pub mib_per_sec: Option<f64>,
    pub ratio: Option<f64>,
    pub latency: Option<Latency>,
}

pub fn print_table(title: &str, rows: &[Row], notes: &[String]) {
    println!("{title}");
    println!();
    println!(
        "{:<16} {:>10} {:>12} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "",
        "records",
        "records/s",
        "MiB/s",
        "ratio",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    let opt = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    };
    for r in rows {
        let l = r.latency;
        println!(
            "{:<16} {:>10} {:>12} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r.name,
            r.records.map_or("-".into(), |n| n.to_string()),
            opt(r.records_per_sec, 0),
            opt(r.mib_per_sec, 1),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            opt(l.map(|l| l.p50), 3),
            opt(l.map(|l| l.p90), 3),
            opt(l.map(|l| l.p99), 3),
            opt(l.map(|l| l.p999), 3),
            opt(l.map(|l| l.max), 3),
        );
    }
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
}

/// A progress bar on stderr fed from counters, or nothing when stderr is not a terminal.
pub struct Progress {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// `done` counts records; `total` is a record count, or `None` for a timed run
    /// of `duration` (the bar then shows elapsed time).
    pub fn start(
        label: &str,
        done: Arc<AtomicU64>,
        total: Option<u64>,
        duration: Duration,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !super::show_progress() {
            return Progress { stop, task: None };
        }
        let timed = total.is_none();
        let len = total.unwrap_or(duration.as_millis() as u64);
        let bar = ProgressBar::new(len);
        let template = if timed {
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {msg}"
        } else {
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut last = (0u64, std::time::Instant::now());
            while !stop2.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = done.load(Ordering::Relaxed);
                let now = std::time::Instant::now();
                let rate = (n - last.0.min(n)) as f64 / now.duration_since(last.1).as_secs_f64();
                last = (n, now);
                if timed {
                    bar.set_position((started.elapsed().as_millis() as u64).min(len));
                } else {
                    bar.set_position(n.min(len));
                }
                bar.set_message(format!("{n} records, {rate:.0} records/s"));
            }
            bar.finish_and_clear();
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
