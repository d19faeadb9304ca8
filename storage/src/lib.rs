//! Weir's storage engine: one segmented, mmap'd log per partition.
//!
//! # On-disk layout
//!
//! ```text
//! <data-dir>/<topic>-<partition>/          (split at the LAST '-')
//!     00000000000000000000.log             batches exactly as received (Kafka v2, magic 2)
//!     00000000000000000000.index           sparse offset index: 4-byte rel. offset + 4-byte position
//!     00000000000000000000.timeindex       time index: 8-byte timestamp + 4-byte rel. offset
//!     00000000000000004711.log / .index / .timeindex
//!     log-start-offset                     DeleteRecords / retention start (text)
//!     recovery-point                       every segment before the one holding it is fsync'd (text)
//!     .clean_shutdown                      "<end offset> <active size> <last batch position>", removed at open
//! ```
//!
//! File names are the segment's base offset as 20 digits. A `.log` holds whole
//! batches back to back; the log fills in each batch's `baseOffset` and
//! `partitionLeaderEpoch`, which sit outside the CRC, so appending never re-checksums.
//! Both indexes use Kafka's big-endian fixed-width layout and are mmap'd with memmap2:
//! an offset-index entry `(last offset of a batch, its position)` and a time-index entry
//! `(largest timestamp so far, last offset of its batch)` are added every
//! `index.interval.bytes`. The active segment's index files are preallocated to
//! `segment.index.bytes` and mapped writable; a segment that is rolled (or the active
//! one at a clean close) gets a final time-index entry holding its largest timestamp and
//! its index files trimmed to their entries. Positions are 32-bit, so a segment rolls
//! at `min(segment.bytes, 2 GiB - 1)`, when `segment.ms` has passed since its first
//! append, when its relative offsets would overflow, or when an index is full.
//!
//! # Reads
//!
//! Segment data is read through read-only maps, and [`Log::read`] returns
//! `bytes::Bytes` built with `Bytes::from_owner` over an `Arc<Mmap>`: zero-copy slices
//! on batch boundaries, starting with the batch that contains the requested offset.
//! The active segment's map is made longer than the file (geometric growth) so it is
//! not remapped per append; only bytes below the published size are ever touched.
//! A map handed out in `Bytes` stays valid whatever the log does next: deleted segments
//! are only unlinked, compaction renames a new file over the old one, and truncation
//! cuts a file in place only when no reader holds its map (otherwise the kept prefix
//! is copied to a new inode), so a reader can never hit `SIGBUS`.
//!
//! Every batch is CRC-checked before it is first served: batches appended by this
//! process were checked on append, recovered batches at open; batches of a segment
//! opened after a clean shutdown are checked on their first read (a per-segment
//! "verified up to" watermark). A batch that fails is reported with
//! [`StorageError::CorruptBatch`] and counted in [`LogStats::corrupt_batches`]; a
//! read stops before it and never skips it.
//!
//! # Write path: `write()` into the file, not a writable map
//!
//! Appends go through `pwrite` on the segment file at the current end. A writable
//! mmap needs the file preallocated, then trimmed at roll, and crash recovery must
//! then tell zeros from data. It takes a page fault per 4 KiB on first touch, and the
//! only way it reports a write error (disk full, I/O error) is `SIGBUS`. Measured on
//! the 2-core benchmark machine with `storage_bench` (see `benches/README.md`),
//! copying the same batches into a writable map of a preallocated file was 1.2x-1.4x
//! the speed of `write()` for 16 KiB batches in three runs out of four (0.86x in the
//! fourth), but only 0.54x-0.67x for 1 MiB batches. No clear win, and the error
//! handling and recovery costs above, so the log keeps the simpler `write()` path.
//! Readers still see appended bytes through their maps, because a shared file map
//! and the page cache are the same pages.
//!
//! # Durability ([`FlushPolicy`])
//!
//! `durable_offset()` is the promise: every offset below it has been fsync'd
//! (`fdatasync` of the segment data; rolled segments also fsync their index files).
//!
//! - [`FlushPolicy::EveryAppend`]: `append` returns only after its batches are durable.
//!   Concurrent appenders share fsyncs (group commit, see [`Log::wait_durable`]): one
//!   thread fsyncs for everyone who appended before it started.
//! - [`FlushPolicy::IntervalMs`]: data is fsync'd by the first append after the interval,
//!   or by the [`LogManager`] background thread, so at most about that long (plus one
//!   fsync) of acknowledged appends can be lost in a power failure.
//! - [`FlushPolicy::Os`] (default, as Kafka): no fsync on the append path; the page
//!   cache is written back by the kernel. A process crash loses nothing; a power
//!   failure can lose anything after `durable_offset()`. Rolled segments are still
//!   fsync'd by the background thread so the recovery point advances. Producers that
//!   need a local fsync can call `flush`/`wait_durable`.
//!
//! # Recovery
//!
//! At open the `.clean_shutdown` marker is read and removed. If present, and the active
//! segment still has the recorded size and ends with the recorded batch intact (one
//! batch CRC-checked), the log is trusted: nothing is scanned, indexes are mapped
//! lazily, so opening thousands of partitions costs a directory listing and a few
//! small reads each. Otherwise every batch of every segment from the one holding the
//! recovery point on is validated (length, magic 2, offsets increasing, CRC-32C via
//! `weir_protocol::records::verify_batch`); at the first invalid batch its segment is
//! truncated and later segments deleted (a torn tail; if it was not the last segment it
//! is also counted as corrupt), and the scanned segments' indexes are rewritten.
//! Segments before the recovery point were fsync'd whole and are not rescanned:
//! corruption there is caught by the first-read CRC check above. Independently, an
//! index that is missing, not a whole number of entries, or not monotonic and inside
//! its segment is rebuilt from the batch headers the first time it is needed
//! ([`LogStats::index_rebuilds`]). The base offset and leader epoch of a batch are
//! outside its CRC by protocol design; recovery only checks that offsets increase.
//!
//! # Retention and compaction
//!
//! [`Log::enforce_retention`] deletes whole closed segments from the front by
//! `retention.ms` (a segment's largest timestamp, or its mtime when it has none) and
//! `retention.bytes`, and segments wholly below the log start; never the active one.
//! [`Log::compact`] implements `cleanup.policy=compact` (see the `compaction` module):
//! the latest record per key survives, tombstones go once `delete.retention.ms` old,
//! offsets never change, and only closed segments are rewritten, off the log's lock,
//! then swapped in atomically.
//!
//! # Scale
//!
//! Open descriptors and maps are bounded by a process-wide LRU ([`HandleCache`], shared
//! by a [`LogManager`]'s logs): a segment's file, data map and index maps are opened on
//! use and closed when it falls out of the cache; outstanding `Bytes` keep their maps.
//!
//! # Locking
//!
//! Each log has one `RwLock` over its segment list: appends, truncation, retention and
//! the compaction swap take it for writing; reads take it for reading for the time it
//! takes to walk batch headers (no data is copied). Validation of a record set's CRCs
//! happens before the lock is taken for record sets up to 512 KiB, and under it,
//! fused with the write, for larger ones (see "Append cost"); fsyncs happen outside it.
//!
//! # Append cost
//!
//! `append` validates each batch once (header parse: magic, length and record count;
//! then CRC-32C with `crc-fast`), assigns offsets in place, and writes the record set
//! with one `pwrite` (up to 512 KiB) or in 256 KiB chunks (larger record sets, see
//! below); the index entries go through the writable index maps. Profiled with
//! `perf` (`benches/src/bin/append_probe.rs`), 256 MiB of 16 KiB batches: ~75% of
//! the time is the kernel's `write()` (the same work as the baseline's), ~20% the
//! CRC pass, ~4% everything else (locks, offset and index bookkeeping, clock). The
//! bookkeeping used to be ~7%, and a roll blocked on fsyncs. What changed:
//!
//! - writable index maps are `madvise(MADV_RANDOM)`: the first write to each page of
//!   the (mostly sparse) preallocated index file used to trigger readahead that
//!   zero-filled, and at roll truncated again, up to megabytes of holes (3-4%);
//! - the LRU of open handles is not updated when the segment touched is already the
//!   most recent one (every append to the active segment; 1.3%);
//! - a roll no longer msyncs and fsyncs the sealed segment's index files while it
//!   holds the log's write lock (every append and read waited for it): `sync_all`
//!   (the background flush, `flush`, group commit) fsyncs them with the segment
//!   data before the recovery point moves past the segment, which is what recovery
//!   relies on; a clean close still fsyncs them;
//! - validation parses each batch header once (it used to parse it again inside
//!   `verify_batch`); the checks are the same: magic, length, CRC-32C.
//!
//! The CRC pass is what is left between `append` and a plain `write()` of the same
//! bytes. It is bound by memory bandwidth, not by the CRC kernel: on the benchmark
//! VM `crc-fast` checks ~40,000 MiB/s of cache-resident data but only 7,000-9,000
//! MiB/s of data coming from DRAM, and two threads get no more than one
//! (`crc_probe`). Checked in full before the write, a batch that is cold in DRAM is
//! read from memory by the CRC pass alone, and nothing overlaps that pass (the
//! kernel's copy then finds the bytes in cache but gains little from it: filling
//! page-cache pages bounds it, not reading the source).
//!
//! So a record set over 512 KiB is checked *while* it is written, under the log's
//! write lock (`segment::write_checking_crc`): all headers are checked first, then
//! each 256 KiB chunk is `pwrite`n and CRC-checked right after, from L2, where the
//! kernel's copy (which read it from DRAM, as a plain `write()` does) left it. What
//! keeps "a bad batch is rejected and nothing is appended" true although bytes reach
//! the file before the last CRC is checked:
//!
//! - nothing looks past the segment's `size()` until the append succeeds: readers
//!   are bounded by it and by the log end, which move only after every batch of the
//!   record set checked out;
//! - on a CRC mismatch or an I/O error the file is cut back to `size()` and the
//!   error (`InvalidBatch` with the bad batch's position) returned; if even the cut
//!   fails, the segment remembers it and the next append or close cuts first;
//! - the first page-aligned piece (it holds the first batch header) is written last,
//!   so after a crash in the middle recovery finds zeros where the record set
//!   starts and cuts the tail there (recovery CRC-checks the whole active segment
//!   after an unclean shutdown; the recovery point only ever names a segment base of
//!   fsync'd, rolled segments, never a position inside unchecked bytes). A clean
//!   shutdown marker is written under the write lock, so never mid-append.
//!
//! One visible difference: an append that rolls the segment and then fails its CRC
//! check leaves the (empty) new segment in place, as `roll()` would. Smaller record
//! sets are checked before the lock, as before: they stay in cache between check and
//! write anyway, and concurrent producers to one partition check them in parallel.
//! Buffering small batches in user space to save syscalls was rejected: under
//! `FlushPolicy::Os` an acknowledged append must survive a process crash, so its
//! bytes must be in the page cache before `append` returns. Checking each chunk's
//! CRC *before* writing it measured no better than the separate pass (the check
//! still does the DRAM read alone). Figures: `benches/README.md`, "Append path,
//! profiled" and "Append: CRC check fused with the write".

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

pub use cache::{default_open_segments, HandleCache, DEFAULT_OPEN_SEGMENTS};
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
