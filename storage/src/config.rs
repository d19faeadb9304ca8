//! Per-log configuration, named after the Kafka topic configs it mirrors.

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// When appended data is fsync'd. See the crate docs for the exact promise of each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FlushPolicy {
    /// `append` returns only once its batches are fsync'd; concurrent appenders share
    /// one fsync (group commit).
    EveryAppend,
    /// Data is fsync'd at most this many milliseconds after it was appended (by the
    /// next append after the interval, or by the [`crate::LogManager`] background thread).
    IntervalMs(u64),
    /// The OS writes pages back when it likes (Kafka's default); only rolled segments,
    /// `flush`, `wait_durable` and `close` fsync.
    Os,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
    /// Parses Kafka's `cleanup.policy` value (`delete`, `compact`, `compact,delete`).
    pub fn from_kafka(s: &str) -> Option<Self> {
        let mut parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        parts.sort_unstable();
        parts.dedup();
        match parts.as_slice() {
            ["delete"] => Some(CleanupPolicy::Delete),
            ["compact"] => Some(CleanupPolicy::Compact),
            ["compact", "delete"] => Some(CleanupPolicy::CompactDelete),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this (capped at 2 GiB - 1
    /// because index positions are 32-bit). Default 1 GiB.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first append. Default 7 days.
    pub segment_ms: Option<u64>,
    /// `retention.ms`: delete closed segments whose newest record is older. `None` = forever. Default 7 days.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: delete the oldest closed segments while the log is larger. Default `None`.
    pub retention_bytes: Option<u64>,
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: a tombstone survives compaction until its timestamp is this old. Default 1 day.
    pub delete_retention_ms: i64,
    /// `index.interval.bytes`: bytes of batches between offset/time index entries. Default 4096.
    pub index_interval_bytes: u32,
    /// `segment.index.bytes`: preallocated size of each index file; a full index rolls the segment. Default 10 MiB.
    pub segment_index_bytes: u32,
    /// Default [`FlushPolicy::Os`], as Kafka: durability comes from replication, and
    /// producers that need a local fsync can use `wait_durable`.
    pub flush: FlushPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS as u64),
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DAY_MS,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            flush: FlushPolicy::Os,
        }
    }
}

impl LogConfig {
    /// The roll threshold actually applied: index positions are 32-bit.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.clamp(1, i32::MAX as u64)
    }
}
