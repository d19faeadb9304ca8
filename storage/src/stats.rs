//! Counters a log exposes for metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub batches_scanned_at_open: AtomicU64,
    pub corrupt_batches: AtomicU64,
    pub index_rebuilds: AtomicU64,
    pub truncated_bytes_at_open: AtomicU64,
    pub fsyncs: AtomicU64,
    pub segments_rolled: AtomicU64,
}

/// A point-in-time copy of a log's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches CRC-checked by recovery when the log was opened (0 after a clean shutdown
    /// apart from the one tail batch checked against the clean-shutdown marker).
    pub batches_scanned_at_open: u64,
    /// Distinct corrupt batches found in stored data (recovery of an older segment or reads).
    pub corrupt_batches: u64,
    /// Index pairs rebuilt because they were missing, damaged or unknown.
    pub index_rebuilds: u64,
    /// Bytes of torn or corrupt tail removed when the log was opened.
    pub truncated_bytes_at_open: u64,
    /// fsync rounds performed (each may cover many appends: group commit).
    pub fsyncs: u64,
    pub segments_rolled: u64,
}

impl Stats {
    pub fn snapshot(&self) -> LogStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogStats {
            batches_scanned_at_open: g(&self.batches_scanned_at_open),
            corrupt_batches: g(&self.corrupt_batches),
            index_rebuilds: g(&self.index_rebuilds),
            truncated_bytes_at_open: g(&self.truncated_bytes_at_open),
            fsyncs: g(&self.fsyncs),
            segments_rolled: g(&self.segments_rolled),
        }
    }
}
