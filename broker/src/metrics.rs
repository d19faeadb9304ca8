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
    /// Time from a request's frame being read to its response being written.
    pub request_time: RequestTimes,
}

/// Upper bounds (seconds) of the request-duration histogram's buckets.
const BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// APIs timed separately: Fetch long-polls (its time is mostly `max.wait.ms`), and
/// Produce is what producers' tail latency is made of.
const TIMED_APIS: [&str; 3] = ["Produce", "Fetch", "other"];

/// A Prometheus histogram of request durations per API (Kafka's `TotalTimeMs`).
#[derive(Default)]
pub struct RequestTimes {
    /// Per API: a count per bucket (not cumulative), then the +Inf overflow.
    buckets: [[AtomicU64; BUCKETS_S.len() + 1]; TIMED_APIS.len()],
    sum_us: [AtomicU64; TIMED_APIS.len()],
}

impl RequestTimes {
    /// Records one request of `api` (an index into the timed APIs) taking `elapsed`.
    pub fn record(&self, api: TimedApi, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS_S
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS_S.len());
        let i = api as usize;
        self.buckets[i][bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us[i].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = "weir_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from reading a request to writing its response, per API.\n# TYPE {name} histogram"
        );
        for (i, api) in TIMED_APIS.iter().enumerate() {
            let mut cumulative = 0;
            for (b, le) in BUCKETS_S.iter().enumerate() {
                cumulative += self.buckets[i][b].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{api=\"{api}\",le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += self.buckets[i][BUCKETS_S.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{api=\"{api}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = self.sum_us[i].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{api=\"{api}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{api=\"{api}\"}} {cumulative}");
        }
    }
}

/// Which series of [`RequestTimes`] a request counts in.
#[derive(Clone, Copy)]
pub enum TimedApi {
    Produce = 0,
    Fetch = 1,
    Other = 2,
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
        self.request_time.render(&mut out);
        for (name, labels, value) in extra {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bucket(text: &str, api: &str, le: &str) -> u64 {
        let needle = format!("weir_request_duration_seconds_bucket{{api=\"{api}\",le=\"{le}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn request_times_land_in_their_bucket_and_render_cumulatively() {
        let m = Metrics::default();
        m.request_time
            .record(TimedApi::Produce, Duration::from_micros(300));
        m.request_time
            .record(TimedApi::Produce, Duration::from_micros(500));
        m.request_time
            .record(TimedApi::Produce, Duration::from_secs(20));
        m.request_time
            .record(TimedApi::Fetch, Duration::from_millis(499));
        let text = m.render(&[]);
        assert_eq!(bucket(&text, "Produce", "0.00025"), 0);
        // 300 us and exactly 500 us are both <= 0.5 ms (Prometheus' `le`).
        assert_eq!(bucket(&text, "Produce", "0.0005"), 2);
        assert_eq!(bucket(&text, "Produce", "10"), 2);
        assert_eq!(bucket(&text, "Produce", "+Inf"), 3);
        assert_eq!(bucket(&text, "Fetch", "0.25"), 0);
        assert_eq!(bucket(&text, "Fetch", "0.5"), 1);
        assert_eq!(bucket(&text, "other", "+Inf"), 0);
        assert!(text.contains("weir_request_duration_seconds_count{api=\"Produce\"} 3"));
        assert!(text.contains("weir_request_duration_seconds_sum{api=\"Produce\"} 20.0008"));
    }
}
