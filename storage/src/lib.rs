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
pub use manager::LogManager;
pub use stats::LogStats;
