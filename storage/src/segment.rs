//! One segment: `<base>.log` (batches exactly as stored), `<base>.index` and
//! `<base>.timeindex`. Resources (descriptor, maps) are opened lazily and may be
//! closed at any time by the [`HandleCache`]; metadata needed to reopen them lives
//! in [`Inner`].

use crate::cache::HandleCache;
use crate::config::LogConfig;
use crate::error::{IoContext, Result, StorageError};
use crate::index::{self, IndexFile, OFFSET_ENTRY};
use crate::recovery;
use crate::stats::Stats;
use crate::time_index::{self, TIME_ENTRY};
use memmap2::{Mmap, MmapOptions};
use parking_lot::{Mutex, MutexGuard};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_protocol::records::{self, BatchCrc, BatchHeader, RecordError, CRC_START};

pub(crate) fn file_name(base: i64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// Where the next index entries go, and the running maximum timestamp.
#[derive(Clone, Debug)]
pub(crate) struct IdxCursor {
    pub interval: u64,
    pub bytes_since: u64,
    /// Largest batch max-timestamp so far and the last offset of its batch; -1 if none.
    pub max_ts: i64,
    pub max_ts_offset: i64,
    pub last_time_entry: Option<i64>,
}

impl IdxCursor {
    pub fn new(interval: u32) -> Self {
        IdxCursor {
            interval: u64::from(interval),
            bytes_since: 0,
            max_ts: -1,
            max_ts_offset: -1,
            last_time_entry: None,
        }
    }

    /// Index entries due for a batch about to be stored at `pos`.
    pub fn step(
        &mut self,
        base: i64,
        pos: u64,
        h: &BatchHeader,
    ) -> (Option<[u8; OFFSET_ENTRY]>, Option<[u8; TIME_ENTRY]>) {
        if h.max_timestamp > self.max_ts {
            self.max_ts = h.max_timestamp;
            self.max_ts_offset = h.last_offset();
        }
        let mut out = (None, None);
        if self.bytes_since > self.interval {
            out.0 = Some(index::offset_entry(
                (h.last_offset() - base) as u32,
                pos as u32,
            ));
            out.1 = self.time_entry_if_new(base);
            self.bytes_since = 0;
        }
        self.bytes_since += h.total_len() as u64;
        out
    }

    /// A time-index entry for the current maximum, if it is newer than the last one.
    pub fn time_entry_if_new(&mut self, base: i64) -> Option<[u8; TIME_ENTRY]> {
        if self.max_ts_offset >= base && self.last_time_entry.is_none_or(|t| self.max_ts > t) {
            self.last_time_entry = Some(self.max_ts);
            Some(time_index::time_entry(
                self.max_ts,
                (self.max_ts_offset - base) as u32,
            ))
        } else {
            None
        }
    }
}

pub(crate) struct Inner {
    pub sealed: bool,
    /// (largest timestamp, last offset of its batch); `None` until loaded for segments
    /// found on disk; `Some((-1, -1))` when the segment holds no timestamps.
    pub max_ts: Option<(i64, i64)>,
    /// Active segment only: index append state and entry counts.
    pub cursor: Option<IdxCursor>,
    pub idx_entries: usize,
    pub time_entries: usize,
    /// Wall-clock ms of the first append (or first batch's timestamp after reopen), for `segment.ms`.
    pub roll_base_ms: Option<i64>,
    /// Position of the last batch (checked against the clean-shutdown marker).
    pub last_batch_pos: Option<u64>,
    /// A failed append wrote past `size()` and cutting the file back failed too: the
    /// next append (or a clean close) must cut it before going on, so that bytes of a
    /// rejected request can never be found by recovery as a valid tail.
    pub tail_dirty: bool,
    file: Option<Arc<File>>,
    map: Option<Arc<Mmap>>,
    index: Option<IndexFile>,
    time: Option<IndexFile>,
}

pub(crate) struct Segment {
    pub base: i64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_path: PathBuf,
    id: u64,
    /// Bytes of whole batches visible to readers.
    size: AtomicU64,
    /// Every batch below this position has been CRC-checked (at append, recovery or read).
    verified: AtomicU64,
    /// Position of the last corrupt batch reported (u64::MAX: none), to count each once.
    corrupt_reported: AtomicU64,
    inner: Mutex<Inner>,
    cache: Arc<HandleCache>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

impl Segment {
    pub fn new(
        dir: &Path,
        base: i64,
        size: u64,
        sealed: bool,
        cache: &Arc<HandleCache>,
    ) -> Segment {
        Segment {
            base,
            log_path: dir.join(file_name(base, "log")),
            index_path: dir.join(file_name(base, "index")),
            time_path: dir.join(file_name(base, "timeindex")),
            id: cache.next_id(),
            size: AtomicU64::new(size),
            verified: AtomicU64::new(0),
            corrupt_reported: AtomicU64::new(u64::MAX),
            inner: Mutex::new(Inner {
                sealed,
                max_ts: None,
                cursor: None,
                idx_entries: 0,
                time_entries: 0,
                roll_base_ms: None,
                last_batch_pos: None,
                tail_dirty: false,
                file: None,
                map: None,
                index: None,
                time: None,
            }),
            cache: cache.clone(),
        }
    }

    /// Creates a new, empty active segment (replacing any stale files of that name).
    pub fn create(
        dir: &Path,
        base: i64,
        config: &LogConfig,
        cache: &Arc<HandleCache>,
    ) -> Result<Arc<Segment>> {
        let seg = Segment::new(dir, base, 0, false, cache);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&seg.log_path)
            .ctx(&seg.log_path)?;
        for p in [&seg.index_path, &seg.time_path] {
            remove_if_exists(p)?;
        }
        {
            let mut inner = seg.inner.lock();
            inner.file = Some(Arc::new(file));
            inner.max_ts = Some((-1, -1));
            inner.cursor = Some(IdxCursor::new(config.index_interval_bytes));
        }
        let seg = Arc::new(seg);
        seg.cache.touch(&seg);
        Ok(seg)
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    pub fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Release);
        self.verified.fetch_min(size, Ordering::AcqRel);
    }
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Acquire)
    }
    pub fn set_verified(&self, pos: u64) {
        self.verified.store(pos, Ordering::Release);
    }
    /// Records that the batch at `pos..end` passed its CRC check.
    pub fn mark_verified(&self, pos: u64, end: u64) {
        let _ = self
            .verified
            .compare_exchange(pos, end, Ordering::AcqRel, Ordering::Acquire);
    }

    /// True the first time a corrupt batch at `pos` is reported.
    pub fn first_report_of_corruption(&self, pos: u64) -> bool {
        self.corrupt_reported.swap(pos, Ordering::AcqRel) != pos
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Drops descriptors and maps (called by the cache). Readers keep their own `Arc`s.
    pub fn release_handles(&self) {
        let mut inner = self.inner.lock();
        inner.file = None;
        inner.map = None;
        inner.index = None;
        inner.time = None;
    }

    pub fn io_err(&self, source: std::io::Error) -> StorageError {
        StorageError::Io {
            path: self.log_path.clone(),
            source,
        }
    }

    pub fn file(&self, inner: &mut Inner) -> Result<Arc<File>> {
        if let Some(f) = &inner.file {
            return Ok(f.clone());
        }
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.log_path)
                .ctx(&self.log_path)?,
        );
        inner.file = Some(f.clone());
        Ok(f)
    }

    /// A read-only map covering at least `need` bytes (`None` when `need` is 0). The
    /// active segment's map extends past the end of the file so that it is not
    /// remapped for every append; only bytes below `size()` are ever read, and the
    /// file is never shrunk under a map that a reader still holds (see `truncate`).
    pub fn map(&self, inner: &mut Inner, need: u64) -> Result<Option<Arc<Mmap>>> {
        if need == 0 {
            return Ok(None);
        }
        if let Some(m) = &inner.map {
            if m.len() as u64 >= need {
                return Ok(Some(m.clone()));
            }
        }
        let file = self.file(inner)?;
        let len = if inner.sealed {
            need
        } else {
            let old = inner.map.as_ref().map_or(0, |m| m.len() as u64);
            (need + (need / 2).clamp(64 << 10, 64 << 20))
                .max(old * 2)
                .next_multiple_of(4096)
        };
        let len = usize::try_from(len)
            .map_err(|_| self.io_err(std::io::Error::other("segment too large to map")))?;
        // SAFETY: segment files are only modified by this process: appended past
        // `size()`, or shrunk by `truncate` only when no other reference to the map exists.
        let map = unsafe { MmapOptions::new().len(len).map(&*file) }.ctx(&self.log_path)?;
        let map = Arc::new(map);
        inner.map = Some(map.clone());
        Ok(Some(map))
    }

    /// Loads (or rebuilds) both indexes. Sealed segments get read-only maps of trimmed
    /// files; the active segment writable, preallocated ones.
    pub fn ensure_indexes(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        stats: &Stats,
        next_base: Option<i64>,
    ) -> Result<()> {
        if inner.index.is_some() && inner.time.is_some() {
            return Ok(());
        }
        let max_rel = next_base.map(|n| (n - self.base - 1).max(0) as u64);
        if inner.sealed {
            let idx = IndexFile::open_ro(&self.index_path, OFFSET_ENTRY)
                .ok()
                .filter(|i| index::offset_index_sane(i, max_rel, self.size()));
            let time = IndexFile::open_ro(&self.time_path, TIME_ENTRY)
                .ok()
                .filter(|t| time_index::time_index_sane(t, max_rel));
            match (idx, time) {
                (Some(i), Some(t)) => {
                    if inner.max_ts.is_none() {
                        inner.max_ts = Some(
                            time_index::last_entry(&t)
                                .map_or((-1, -1), |(ts, o)| (ts, self.base + i64::from(o))),
                        );
                    }
                    inner.index = Some(i);
                    inner.time = Some(t);
                }
                _ => {
                    self.rebuild_indexes(inner, config, stats)?;
                    inner.index = Some(
                        IndexFile::open_ro(&self.index_path, OFFSET_ENTRY).ctx(&self.index_path)?,
                    );
                    inner.time =
                        Some(IndexFile::open_ro(&self.time_path, TIME_ENTRY).ctx(&self.time_path)?);
                }
            }
        } else {
            if inner.cursor.is_none() {
                // Reopened active segment with no known index state: rebuild it.
                self.rebuild_indexes(inner, config, stats)?;
            }
            let i = IndexFile::open_rw(
                &self.index_path,
                OFFSET_ENTRY,
                config.segment_index_bytes,
                inner.idx_entries,
            )
            .ctx(&self.index_path)?;
            let t = IndexFile::open_rw(
                &self.time_path,
                TIME_ENTRY,
                config.segment_index_bytes,
                inner.time_entries,
            )
            .ctx(&self.time_path)?;
            inner.index = Some(i);
            inner.time = Some(t);
        }
        Ok(())
    }

    /// Rewrites both index files from a walk over the batch headers (no CRC checks:
    /// reads check CRCs). Sets the max timestamp and, for the active segment, the cursor.
    pub fn rebuild_indexes(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        stats: &Stats,
    ) -> Result<()> {
        stats.index_rebuilds.fetch_add(1, Ordering::Relaxed);
        inner.index = None;
        inner.time = None;
        let size = self.size();
        let map = self.map(inner, size)?;
        let data = map.as_deref().map_or(&[][..], |m| &m[..size as usize]);
        let scan = recovery::scan(data, self.base, false, config.index_interval_bytes);
        tracing::info!(path = %self.log_path.display(), batches = scan.batches, "rebuilt segment indexes");
        self.install_scan(inner, scan)
    }

    /// Writes the index files a scan built and takes over its state.
    pub fn install_scan(&self, inner: &mut Inner, mut scan: recovery::Scan) -> Result<()> {
        inner.index = None;
        inner.time = None;
        if inner.sealed {
            if let Some(e) = scan.cursor.time_entry_if_new(self.base) {
                scan.time.extend_from_slice(&e);
            }
        }
        IndexFile::write_new(&self.index_path, &scan.index).ctx(&self.index_path)?;
        IndexFile::write_new(&self.time_path, &scan.time).ctx(&self.time_path)?;
        inner.max_ts = Some((scan.cursor.max_ts, scan.cursor.max_ts_offset));
        inner.idx_entries = scan.index.len() / OFFSET_ENTRY;
        inner.time_entries = scan.time.len() / TIME_ENTRY;
        inner.last_batch_pos = scan.last_pos;
        inner.cursor = if inner.sealed {
            None
        } else {
            Some(scan.cursor)
        };
        Ok(())
    }

    pub fn index<'a>(&self, inner: &'a Inner) -> Option<(&'a IndexFile, &'a IndexFile)> {
        Some((inner.index.as_ref()?, inner.time.as_ref()?))
    }

    /// Position of the last indexed batch at or before `offset` (a scan start).
    pub fn position_for(&self, inner: &Inner, offset: i64) -> u64 {
        let rel = (offset - self.base).clamp(0, u32::MAX as i64) as u32;
        inner
            .index
            .as_ref()
            .map_or(0, |i| u64::from(index::lookup_position(i, rel)))
    }

    /// Free entries left in the active segment's indexes.
    pub fn index_room(&self, inner: &Inner) -> usize {
        let room = |i: &Option<IndexFile>| i.as_ref().map_or(0, IndexFile::free);
        room(&inner.index).min(room(&inner.time))
    }

    /// Appends `data` (whole batches with offsets assigned, headers checked) at the end.
    ///
    /// If `crc_checked` is false, each batch's CRC-32C is checked here, fused with the
    /// write (see [`write_checking_crc`]); a mismatch cuts the file back to where it
    /// was and returns `InvalidBatch` with nothing appended: `size()`, the indexes and
    /// the log end only move after every byte of `data` was checked and written.
    pub fn append(
        &self,
        inner: &mut Inner,
        data: &[u8],
        headers: &[(BatchHeader, std::ops::Range<usize>)],
        crc_checked: bool,
        now_ms: i64,
    ) -> Result<()> {
        debug_assert!(!inner.sealed, "append to a sealed segment");
        let pos = self.size();
        let file = self.file(inner)?;
        self.settle_tail(inner, &file)?;
        let written = if crc_checked {
            file.write_all_at(data, pos)
                .map_err(|e| (Failure::Io(e), true))
        } else {
            write_checking_crc(&file, pos, data, headers)
        };
        if let Err((failure, wrote)) = written {
            if wrote {
                if let Err(e) = file.set_len(pos) {
                    inner.tail_dirty = true;
                    tracing::error!(path = %self.log_path.display(), position = pos, error = %e,
                        "cannot cut a failed append back; retrying before the next append");
                }
            }
            return Err(match failure {
                Failure::Io(e) => self.io_err(e),
                Failure::Invalid { position, source } => {
                    StorageError::InvalidBatch { position, source }
                }
            });
        }
        let Inner {
            cursor,
            index,
            time,
            idx_entries,
            time_entries,
            max_ts,
            ..
        } = inner;
        let cursor = cursor.get_or_insert_with(|| IdxCursor::new(4096));
        for (h, range) in headers {
            let (oe, te) = cursor.step(self.base, pos + range.start as u64, h);
            if let (Some(e), Some(i)) = (oe, index.as_mut()) {
                if i.push(&e) {
                    *idx_entries += 1;
                }
            }
            if let (Some(e), Some(t)) = (te, time.as_mut()) {
                if t.push(&e) {
                    *time_entries += 1;
                }
            }
        }
        *max_ts = Some((cursor.max_ts, cursor.max_ts_offset));
        inner.last_batch_pos = headers.last().map(|(_, r)| pos + r.start as u64);
        inner.roll_base_ms.get_or_insert(now_ms);
        let end = pos + data.len() as u64;
        self.size.store(end, Ordering::Release);
        self.mark_verified(pos, end);
        Ok(())
    }

    /// Cuts bytes a failed append left past `size()` (see `Inner::tail_dirty`).
    pub fn settle_tail(&self, inner: &mut Inner, file: &File) -> Result<()> {
        if inner.tail_dirty {
            file.set_len(self.size()).ctx(&self.log_path)?;
            inner.tail_dirty = false;
        }
        Ok(())
    }

    /// Turns the active segment into a sealed one: final time-index entry, indexes
    /// trimmed to their entries. No fsync here; `sync_all` does that later.
    pub fn seal(&self, inner: &mut Inner) -> Result<()> {
        if inner.sealed {
            return Ok(());
        }
        self.trim_indexes(inner, false)?;
        inner.sealed = true;
        inner.cursor = None;
        inner.map = None; // remapped at exact size on next read
        Ok(())
    }

    /// Writes the final time entry and trims the index files (seal and clean close),
    /// fsyncing them if `sync` (a clean close; a rolled segment's index files are
    /// fsync'd with its data by `sync_all` before the recovery point moves past it).
    pub fn trim_indexes(&self, inner: &mut Inner, sync: bool) -> Result<()> {
        if let (Some(c), Some(t)) = (inner.cursor.as_mut(), inner.time.as_mut()) {
            if let Some(e) = c.time_entry_if_new(self.base) {
                if t.push(&e) {
                    inner.time_entries += 1;
                }
            }
        }
        if let Some(i) = inner.index.take() {
            i.seal(&self.index_path, sync).ctx(&self.index_path)?;
        }
        if let Some(t) = inner.time.take() {
            t.seal(&self.time_path, sync).ctx(&self.time_path)?;
        }
        Ok(())
    }

    /// fsyncs the data file only (the active segment's indexes are rebuilt by recovery).
    pub fn sync_data(&self, file: &File) -> Result<()> {
        file.sync_data().ctx(&self.log_path)
    }

    /// fsyncs the data file and both index files of a sealed segment.
    pub fn sync_all(&self) -> Result<()> {
        let file = {
            let mut inner = self.inner.lock();
            self.file(&mut inner)?
        };
        file.sync_data().ctx(&self.log_path)?;
        for p in [&self.index_path, &self.time_path] {
            if let Ok(f) = File::open(p) {
                f.sync_all().ctx(p)?;
            }
        }
        Ok(())
    }

    /// Largest timestamp in the segment and the last offset of its batch.
    pub fn max_timestamp(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        stats: &Stats,
        next_base: Option<i64>,
    ) -> Result<(i64, i64)> {
        if let Some(m) = inner.max_ts {
            return Ok(m);
        }
        self.ensure_indexes(inner, config, stats, next_base)?;
        Ok(inner.max_ts.unwrap_or((-1, -1)))
    }

    /// Shrinks the segment to `len` bytes. If a reader still holds the data map, the
    /// kept prefix is copied to a new file renamed over the old one, so that the old
    /// inode (and the reader's map) stays intact; otherwise the file is cut in place.
    pub fn truncate(&self, inner: &mut Inner, len: u64) -> Result<()> {
        let shared = inner.map.as_ref().is_some_and(|m| Arc::strong_count(m) > 1);
        inner.map = None;
        inner.index = None;
        inner.time = None;
        if shared {
            let tmp = self.log_path.with_extension("log.truncating");
            let src = self.file(inner)?;
            let dst = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .ctx(&tmp)?;
            copy_range(&src, &dst, len).ctx(&tmp)?;
            std::fs::rename(&tmp, &self.log_path).ctx(&self.log_path)?;
            inner.file = Some(Arc::new(dst));
        } else {
            self.file(inner)?.set_len(len).ctx(&self.log_path)?;
        }
        self.set_size(len);
        Ok(())
    }

    /// Removes the segment's files. Maps held by readers stay valid (unlinked inodes).
    pub fn delete_files(&self) -> Result<()> {
        self.release_handles();
        for p in [&self.log_path, &self.index_path, &self.time_path] {
            remove_if_exists(p)?;
        }
        Ok(())
    }

    /// Reads the header of the first batch (for `segment.ms` after a reopen).
    pub fn first_batch_timestamp(&self, inner: &mut Inner) -> Option<i64> {
        let map = self.map(inner, self.size()).ok()??;
        BatchHeader::parse(&map[..]).ok().map(|h| h.max_timestamp)
    }
}

/// How many bytes of a record set are written and then CRC-checked at a time when the
/// check is fused with the write: small enough that the chunk is still in the CPU's
/// L2 cache (1.25 MiB per core here) after the kernel copied it into the page cache,
/// large enough that the extra `pwrite` calls cost little (64 KiB chunks were
/// clearly slower in the chunked experiments, 256 and 512 KiB alike within the
/// noise; see benches/README.md).
pub(crate) const FUSED_CHUNK: usize = 256 << 10;

/// Why an append's write failed.
pub(crate) enum Failure {
    Io(std::io::Error),
    Invalid {
        position: usize,
        source: RecordError,
    },
}

/// Running CRC-32C check over a record set's batches, fed byte ranges in order.
struct CrcCheck<'a> {
    data: &'a [u8],
    batches: std::iter::Peekable<std::slice::Iter<'a, (BatchHeader, std::ops::Range<usize>)>>,
    /// CRC state of a batch that started in an earlier range.
    crc: BatchCrc,
}

impl CrcCheck<'_> {
    /// Checks every batch byte in `from..to` (`from` is where the previous call
    /// stopped); fails on the first batch whose CRC does not match.
    fn check(&mut self, from: usize, to: usize) -> std::result::Result<(), Failure> {
        let mut p = from;
        while p < to {
            let Some((h, range)) = self.batches.peek() else {
                break;
            };
            let computed = if range.start >= p && range.end <= to {
                // Whole batch inside the range: one call, no running state.
                Some(records::compute_crc(&self.data[range.clone()]))
            } else {
                let a = p.max(range.start + CRC_START);
                let b = range.end.min(to);
                if a < b {
                    self.crc.update(&self.data[a..b]);
                }
                (range.end <= to).then(|| std::mem::take(&mut self.crc).finish())
            };
            match computed {
                Some(c) if c != h.crc => {
                    return Err(Failure::Invalid {
                        position: range.start,
                        source: RecordError::CrcMismatch {
                            stored: h.crc,
                            computed: c,
                        },
                    })
                }
                Some(_) => {
                    p = range.end;
                    self.batches.next();
                }
                None => p = to,
            }
        }
        Ok(())
    }
}

/// Writes `data` (headers already checked) at `at` and checks every batch's CRC-32C,
/// chunk by chunk: `pwrite` a chunk of about [`FUSED_CHUNK`], then check its CRC.
///
/// Why in this order: a batch that comes cold from DRAM has to be read from memory
/// once whatever the order. Checked first, the CRC pass does that read on its own,
/// at single-thread memory bandwidth, and nothing overlaps it; the kernel's copy
/// then gains little from finding the bytes in cache, because filling page-cache
/// pages, not reading the source, bounds it. Written first, the kernel's copy pulls
/// the chunk in while it writes (as a plain `write()` does), and the check reads it
/// from L2 at several times the speed.
///
/// The price is that bytes reach the file before they are known to be good. That is
/// safe because nothing looks past `size()` until the append succeeds (readers are
/// bounded by it; recovery CRC-checks the active segment and cuts it at the first
/// bad batch), and the caller cuts the file back on failure. The first page-aligned
/// piece (which holds the first batch's header) is written last, once everything
/// else checked out: until then the file holds zeros where the request starts, so a
/// crash in the middle never leaves a valid-looking prefix of a request that would
/// have been rejected. The error's bool says whether anything was written.
pub(crate) fn write_checking_crc(
    file: &File,
    at: u64,
    data: &[u8],
    headers: &[(BatchHeader, std::ops::Range<usize>)],
) -> std::result::Result<(), (Failure, bool)> {
    let page_end = |pos: usize| ((at + pos as u64).next_multiple_of(4096) - at) as usize;
    let mut check = CrcCheck {
        data,
        batches: headers.iter().peekable(),
        crc: BatchCrc::new(),
    };
    // The head covers at least the first batch header (whole header bytes are zero
    // until the end) and ends on a page boundary of the file.
    let head = page_end(records::BATCH_HEADER_LEN).min(data.len());
    check.check(0, head).map_err(|f| (f, false))?;
    let mut start = head;
    while start < data.len() {
        let end = page_end(start + FUSED_CHUNK).min(data.len());
        file.write_all_at(&data[start..end], at + start as u64)
            .map_err(|e| (Failure::Io(e), true))?;
        check.check(start, end).map_err(|f| (f, true))?;
        start = end;
    }
    file.write_all_at(&data[..head], at)
        .map_err(|e| (Failure::Io(e), true))
}

pub(crate) fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn copy_range(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], at)?;
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    dst.set_len(len)?;
    dst.sync_data()
}
