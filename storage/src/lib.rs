//! Weir's storage engine (docs filled in below).

mod cache;
mod compaction;
mod config;
mod error;
mod flush;
mod index;
mod log;
mod manager;
mod recovery;
mod retention;
mod segment;
mod stats;
mod time_index;

pub use cache::{HandleCache, DEFAULT_OPEN_SEGMENTS};
pub use compaction::CompactionStats;
pub use config::{CleanupPolicy, FlushPolicy, LogConfig};
pub use error::StorageError;
pub use log::{AppendInfo, Log, ReadResult};
pub use manager::{parse_log_dir_name, LogManager, ManagerOptions};

/// Manager options with a background `tick` and a cap on open segments (tests, tools).
pub fn manager_options(tick: std::time::Duration, max_open_segments: usize) -> ManagerOptions {
    ManagerOptions {
        tick,
        max_open_segments,
        ..ManagerOptions::default()
    }
}
pub use stats::LogStats;
