//! Counters exported at `/metrics` in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    pub bad_frames: AtomicU64,
    pub produced_bytes: AtomicU64,
    pub produced_batches: AtomicU64,
    pub produce_errors: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders the counters plus per-partition gauges supplied by the caller.
    pub fn render(&self, extra: &[(String, String, u64)]) -> String {
        let mut out = String::new();
        let counters: [(&str, &AtomicU64, &str); 9] = [
            (
                "weir_connections_opened_total",
                &self.connections_opened,
                "Kafka connections accepted.",
            ),
            (
                "weir_connections_closed_total",
                &self.connections_closed,
                "Kafka connections closed.",
            ),
            (
                "weir_requests_total",
                &self.requests,
                "Kafka requests handled.",
            ),
            (
                "weir_request_errors_total",
                &self.request_errors,
                "Requests that could not be decoded or handled.",
            ),
            (
                "weir_bad_frames_total",
                &self.bad_frames,
                "Frames rejected before decoding (size, garbage).",
            ),
            (
                "weir_produced_bytes_total",
                &self.produced_bytes,
                "Record batch bytes appended.",
            ),
            (
                "weir_produced_batches_total",
                &self.produced_batches,
                "Record batches appended.",
            ),
            (
                "weir_produce_errors_total",
                &self.produce_errors,
                "Partitions of produce requests answered with an error.",
            ),
            (
                "weir_fetched_bytes_total",
                &self.fetched_bytes,
                "Record bytes served to fetches.",
            ),
        ];
        for (name, value, help) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        for (name, labels, value) in extra {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        out
    }
}
