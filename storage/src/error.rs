//! The storage error type. Every variant names the file, offset or position it is about.

use std::io;
use std::path::PathBuf;
use thiserror::Error;
use weir_protocol::records::RecordError;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A batch of a record set given to `append` is malformed; nothing was appended.
    #[error("invalid record batch at byte {position} of the record set: {source}")]
    InvalidBatch {
        position: usize,
        #[source]
        source: RecordError,
    },
    #[error("the record set is empty")]
    EmptyRecordSet,
    /// A follower append whose batches do not continue the log.
    #[error("follower append: batch at byte {position} has base offset {got}, expected at least {expected}")]
    NonSequentialOffset {
        position: usize,
        expected: i64,
        got: i64,
    },
    #[error("offset {offset} is out of range: log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// Stored data failed validation (CRC, length, magic) somewhere other than the
    /// recoverable tail. It is reported, never skipped or served.
    #[error(
        "corrupt batch in {path} at byte {position} (segment base offset {segment_base}): {reason}"
    )]
    CorruptBatch {
        path: PathBuf,
        position: u64,
        segment_base: i64,
        reason: String,
    },
    #[error("log directory {path} is not named <topic>-<partition>")]
    InvalidLogDir { path: PathBuf },
    #[error("log {path} is closed")]
    Closed { path: PathBuf },
    #[error("compaction of {path} failed at offset {offset}: {reason}")]
    Compaction {
        path: PathBuf,
        offset: i64,
        reason: String,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
