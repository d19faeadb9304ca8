//! [`Log`]: one partition's segmented log.

use crate::cache::{default_open_segments, HandleCache};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{Result, StorageError};
use crate::flush::GroupCommit;
use crate::recovery::{self, write_small_file, LOG_START};
use crate::segment::{Segment, FUSED_CHUNK};
use crate::stats::{LogStats, Stats};
use bytes::Bytes;
use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use weir_protocol::records::{self, BatchHeader, RecordError};

/// Decompression limit when decoding a stored batch (timestamp lookups, compaction).
pub(crate) const MAX_UNCOMPRESSED: usize = 256 << 20;

/// Record sets larger than this are CRC-checked while they are written, under the
/// write lock (see `segment::write_checking_crc`); smaller ones are checked in full
/// before the lock is taken. A small record set stays in cache between a separate
/// check and the write, so fusing gains nothing there, and checking before the lock
/// lets concurrent producers to one partition check their batches in parallel.
const FUSE_ABOVE: usize = 2 * FUSED_CHUNK;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What `append` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Largest `maxTimestamp` among the appended batches (-1 if none carries one).
    pub max_timestamp: i64,
    pub log_start_offset: i64,
}

/// Whole batches, each a zero-copy slice of a segment map.
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    pub batches: Vec<Bytes>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

impl ReadResult {
    pub fn size_bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
}

pub(crate) struct State {
    /// Never empty: the last segment is the active one.
    pub segments: BTreeMap<i64, Arc<Segment>>,
    pub log_start: i64,
    pub log_end: i64,
    /// Rolled segments not yet fsync'd.
    pub unflushed: Vec<Arc<Segment>>,
    pub recovery_point: i64,
    pub closed: bool,
}

impl State {
    /// The active segment. Invariant: `segments` is non-empty while the log is open
    /// (only a failed `truncate_fully_locked` can empty it, and it then closes the log);
    /// every caller checks `closed` first.
    pub fn active(&self) -> &Arc<Segment> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    pub fn next_base(&self, base: i64) -> Option<i64> {
        self.segments.range(base + 1..).next().map(|(b, _)| *b)
    }
}

/// A partition's log. `Send + Sync`; every method takes `&self`.
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: RwLock<LogConfig>,
    pub(crate) state: RwLock<State>,
    /// Mirror of `state.log_end`, readable without the lock.
    end: AtomicI64,
    pub(crate) gc: GroupCommit,
    pub(crate) stats: Stats,
    pub(crate) cache: Arc<HandleCache>,
    pub(crate) last_flush_ms: AtomicI64,
    /// One compaction at a time per log.
    pub(crate) cleaning: Mutex<()>,
}

pub(crate) struct MapOwner(pub(crate) Arc<Mmap>);
impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Log {
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        Log::open_with_cache(dir, config, HandleCache::new(default_open_segments()))
    }

    /// Opens a log whose open files and maps count against a shared `cache`.
    pub fn open_with_cache(dir: &Path, config: LogConfig, cache: Arc<HandleCache>) -> Result<Log> {
        let stats = Stats::default();
        let now = now_ms();
        let opened = recovery::open_dir(dir, &config, &cache, &stats, now)?;
        if !opened.clean {
            write_small_file(
                &dir.join(recovery::RECOVERY_POINT),
                opened.recovery_point.to_string().as_bytes(),
                false,
            )?;
        }
        let log = Log {
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            end: AtomicI64::new(opened.log_end),
            gc: GroupCommit::new(opened.log_end),
            stats,
            cache,
            last_flush_ms: AtomicI64::new(now),
            cleaning: Mutex::new(()),
            state: RwLock::new(State {
                segments: opened.segments,
                log_start: opened.log_start,
                log_end: opened.log_end,
                unflushed: Vec::new(),
                recovery_point: opened.recovery_point,
                closed: false,
            }),
        };
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> LogStats {
        self.stats.snapshot()
    }

    /// Distinct corrupt batches found in stored data.
    pub fn corrupt_batches(&self) -> u64 {
        self.stats.corrupt_batches.load(Ordering::Relaxed)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.read().log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.end.load(Ordering::Acquire)
    }

    pub fn durable_offset(&self) -> i64 {
        self.gc.durable()
    }

    pub fn config(&self) -> LogConfig {
        self.config.read().clone()
    }

    pub fn update_config(&self, config: LogConfig) {
        *self.config.write() = config;
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.read().segments.values().map(|s| s.size()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.state.read().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.state.read().segments.keys().copied().collect()
    }

    fn closed_err(&self) -> StorageError {
        StorageError::Closed {
            path: self.dir.clone(),
        }
    }

    pub(crate) fn set_end(&self, st: &mut State, end: i64) {
        st.log_end = end;
        self.end.store(end, Ordering::Release);
    }

    /// Appends a produce request's record set, assigning offsets from the log end.
    pub fn append(&self, record_set: &mut [u8], leader_epoch: i32) -> Result<AppendInfo> {
        let crc_checked = record_set.len() <= FUSE_ABOVE;
        let mut batches = validate(record_set, crc_checked)?;
        let config = self.config();
        let now = now_ms();
        let st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        let base_offset = st.log_end;
        let mut next = base_offset;
        for (h, range) in &mut batches {
            let batch = &mut record_set[range.clone()];
            records::set_base_offset(batch, next);
            records::set_partition_leader_epoch(batch, leader_epoch);
            h.base_offset = next;
            h.partition_leader_epoch = leader_epoch;
            next = h.last_offset() + 1;
        }
        let last_offset = next - 1;
        self.write_appended(
            st,
            record_set,
            &batches,
            crc_checked,
            base_offset,
            last_offset,
            &config,
            now,
        )
    }

    /// Appends batches that already carry their offsets (replication). The first must
    /// start at or after the log end, and offsets must increase.
    pub fn append_as_follower(&self, record_set: &[u8]) -> Result<AppendInfo> {
        let crc_checked = record_set.len() <= FUSE_ABOVE;
        let batches = validate(record_set, crc_checked)?;
        let config = self.config();
        let now = now_ms();
        let st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        let mut expected = st.log_end;
        for (h, range) in &batches {
            if h.base_offset < expected {
                return Err(StorageError::NonSequentialOffset {
                    position: range.start,
                    expected,
                    got: h.base_offset,
                });
            }
            expected = h.last_offset() + 1;
        }
        let (first, _) = &batches[0];
        let base_offset = first.base_offset;
        let last_offset = expected - 1;
        self.write_appended(
            st,
            record_set,
            &batches,
            crc_checked,
            base_offset,
            last_offset,
            &config,
            now,
        )
    }

    /// Writes batches holding `base_offset..=last_offset` (headers checked; CRCs
    /// too if `crc_checked`, else while writing) under the write lock, then runs the
    /// post-append work (flush policy, roll) without it.
    #[allow(clippy::too_many_arguments)]
    fn write_appended(
        &self,
        mut st: parking_lot::RwLockWriteGuard<'_, State>,
        record_set: &[u8],
        batches: &[(BatchHeader, Range<usize>)],
        crc_checked: bool,
        base_offset: i64,
        last_offset: i64,
        config: &LogConfig,
        now: i64,
    ) -> Result<AppendInfo> {
        self.append_locked(
            &mut st,
            record_set,
            batches,
            crc_checked,
            base_offset,
            last_offset,
            config,
            now,
        )?;
        let log_start_offset = st.log_start;
        drop(st);
        self.after_append(last_offset, config, now)?;
        let max_timestamp = batches
            .iter()
            .map(|(h, _)| h.max_timestamp)
            .max()
            .unwrap_or(-1);
        Ok(AppendInfo {
            base_offset,
            last_offset,
            max_timestamp,
            log_start_offset,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn append_locked(
        &self,
        st: &mut State,
        data: &[u8],
        batches: &[(BatchHeader, Range<usize>)],
        crc_checked: bool,
        base_offset: i64,
        last_offset: i64,
        config: &LogConfig,
        now: i64,
    ) -> Result<()> {
        let mut active = st.active().clone();
        if last_offset - base_offset > i64::from(i32::MAX) {
            return Err(StorageError::InvalidBatch {
                position: 0,
                source: RecordError::Corrupt(format!(
                    "record set spans offsets {base_offset}..={last_offset}"
                )),
            });
        }
        let must_roll = {
            let mut inner = active.lock();
            active.ensure_indexes(&mut inner, config, &self.stats, None)?;
            let size = active.size();
            // Relative offsets are 32-bit: a follower batch far past the segment base
            // (a compacted leader's gap) needs a segment of its own.
            last_offset - active.base > i64::from(i32::MAX)
                || (size > 0
                    && (size + data.len() as u64 > config.effective_segment_bytes()
                        || config.segment_ms.is_some_and(|ms| {
                            inner.roll_base_ms.is_some_and(|t| now - t >= ms as i64)
                        })
                        || active.index_room(&inner) < batches.len() + 2))
        };
        if must_roll {
            self.roll_to(st, config, base_offset.max(st.log_end))?;
            active = st.active().clone();
        }
        {
            let mut inner = active.lock();
            active.ensure_indexes(&mut inner, config, &self.stats, None)?;
            active.append(&mut inner, data, batches, crc_checked, now)?;
        }
        self.cache.touch(&active);
        self.set_end(st, last_offset + 1);
        Ok(())
    }

    fn after_append(&self, last_offset: i64, config: &LogConfig, now: i64) -> Result<()> {
        match config.flush {
            FlushPolicy::EveryAppend => self.wait_durable(last_offset),
            FlushPolicy::IntervalMs(ms)
                if now - self.last_flush_ms.load(Ordering::Relaxed) >= ms as i64 =>
            {
                self.flush()
            }
            _ => Ok(()),
        }
    }

    /// Seals the active segment and starts a new one at the log end.
    pub(crate) fn roll_locked(&self, st: &mut State, config: &LogConfig) -> Result<()> {
        let end = st.log_end;
        self.roll_to(st, config, end)
    }

    /// Seals the active segment and starts a new one at `base` (>= the log end).
    fn roll_to(&self, st: &mut State, config: &LogConfig, base: i64) -> Result<()> {
        debug_assert!(base >= st.log_end);
        let old = st.active().clone();
        if old.size() == 0 && old.base == base {
            return Ok(());
        }
        {
            let mut inner = old.lock();
            old.seal(&mut inner)?;
        }
        let seg = Segment::create(&self.dir, base, config, &self.cache)?;
        st.segments.insert(seg.base, seg);
        st.unflushed.push(old);
        self.stats.segments_rolled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Rolls the active segment now (if it holds anything).
    pub fn roll(&self) -> Result<()> {
        let config = self.config();
        let mut st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        self.roll_locked(&mut st, &config)
    }

    /// Rolls the active segment if `segment.ms` has passed (called by the background thread).
    pub fn maybe_roll_by_time(&self, now: i64) -> Result<bool> {
        let config = self.config();
        let Some(ms) = config.segment_ms else {
            return Ok(false);
        };
        let mut st = self.state.write();
        if st.closed {
            return Ok(false);
        }
        let active = st.active().clone();
        let due = active.size() > 0
            && active
                .lock()
                .roll_base_ms
                .is_some_and(|t| now - t >= ms as i64);
        if due {
            self.roll_locked(&mut st, &config)?;
        }
        Ok(due)
    }

    pub(crate) fn corrupt(&self, seg: &Segment, position: u64, reason: String) -> StorageError {
        if seg.first_report_of_corruption(position) {
            self.stats.corrupt_batches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %seg.log_path.display(), position, %reason, "corrupt batch in stored data");
        }
        StorageError::CorruptBatch {
            path: seg.log_path.clone(),
            position,
            segment_base: seg.base,
            reason,
        }
    }

    /// Map of `seg` covering its current size and the scan start position for `offset`.
    pub(crate) fn open_for_read(
        &self,
        st: &State,
        seg: &Arc<Segment>,
        offset: i64,
    ) -> Result<Option<(Arc<Mmap>, u64, u64)>> {
        let size = seg.size();
        if size == 0 {
            return Ok(None);
        }
        let config = self.config.read().clone();
        let r = {
            let mut inner = seg.lock();
            seg.ensure_indexes(&mut inner, &config, &self.stats, st.next_base(seg.base))?;
            let pos = if offset > seg.base {
                seg.position_for(&inner, offset)
            } else {
                0
            };
            seg.map(&mut inner, size)?.map(|m| (m, pos.min(size), size))
        };
        self.cache.touch(seg);
        Ok(r)
    }

    /// Walks whole batches of `seg` from `pos`, skipping those wholly below
    /// `min_offset` and CRC-checking the others unless already verified.
    pub(crate) fn walk<B>(
        &self,
        seg: &Segment,
        map: &[u8],
        mut pos: u64,
        size: u64,
        min_offset: i64,
        mut f: impl FnMut(u64, &BatchHeader, usize) -> ControlFlow<B>,
    ) -> Result<Option<B>> {
        while pos < size {
            let rest = &map[pos as usize..size as usize];
            let h = BatchHeader::parse(rest).map_err(|e| self.corrupt(seg, pos, e.to_string()))?;
            let len = h.total_len();
            if len > rest.len() {
                return Err(self.corrupt(
                    seg,
                    pos,
                    format!("batch of {len} bytes runs past the segment end"),
                ));
            }
            if h.last_offset() < min_offset {
                // Only hopped over, never served: its CRC is checked when it is read.
                pos += len as u64;
                continue;
            }
            if pos >= seg.verified() {
                records::verify_batch(&rest[..len])
                    .map_err(|e| self.corrupt(seg, pos, e.to_string()))?;
                seg.mark_verified(pos, pos + len as u64);
            }
            if let ControlFlow::Break(b) = f(pos, &h, len) {
                return Ok(Some(b));
            }
            pos += len as u64;
        }
        Ok(None)
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (at least one
    /// batch if `min_one`), one `Bytes` per batch. A corrupt stored batch ends the read:
    /// batches before it are returned; a read starting at it fails with `CorruptBatch`.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadResult> {
        self.read_batches(offset, max_bytes, min_one, i64::MAX, false)
    }

    /// Like [`Log::read`] for serving consumers: stops before the first batch whose
    /// base offset is `max_offset` or more (the high watermark), and returns each
    /// segment's run of adjacent batches as ONE `Bytes` slice of the map, so that a
    /// fetch response can carry them without copying batch by batch.
    pub fn read_for_fetch(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        max_offset: i64,
    ) -> Result<ReadResult> {
        self.read_batches(offset, max_bytes, min_one, max_offset, true)
    }

    fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        max_offset: i64,
        coalesce: bool,
    ) -> Result<ReadResult> {
        let st = self.state.read();
        let mut out = ReadResult {
            batches: Vec::new(),
            log_start_offset: st.log_start,
            log_end_offset: st.log_end,
        };
        if offset < st.log_start || offset > st.log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: st.log_start,
                log_end: st.log_end,
            });
        }
        let start = st
            .segments
            .range(..=offset)
            .next_back()
            .map_or(i64::MIN, |(b, _)| *b);
        let mut total = 0usize;
        for seg in st.segments.range(start..).map(|(_, s)| s) {
            let Some((map, pos, size)) = self.open_for_read(&st, seg, offset)? else {
                continue;
            };
            let owner = Bytes::from_owner(MapOwner(map.clone()));
            // With `coalesce`, the byte range of this segment's batches so far.
            let mut run: Option<(usize, usize)> = None;
            let res = self.walk(seg, &map, pos, size, offset, |pos, h, len| {
                if h.last_offset() < offset {
                    return ControlFlow::Continue(());
                }
                if h.base_offset >= max_offset {
                    return ControlFlow::Break(());
                }
                let nothing_yet = out.batches.is_empty() && run.is_none();
                if total + len > max_bytes && !(min_one && nothing_yet) {
                    return ControlFlow::Break(());
                }
                let (from, to) = (pos as usize, pos as usize + len);
                if coalesce {
                    run = Some(run.map_or((from, to), |(start, _)| (start, to)));
                } else {
                    out.batches.push(owner.slice(from..to));
                }
                total += len;
                ControlFlow::Continue(())
            });
            if let Some((from, to)) = run {
                out.batches.push(owner.slice(from..to));
            }
            match res {
                Ok(Some(())) => break,
                Ok(None) => {}
                Err(e) if out.batches.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Offset and timestamp of the first record whose timestamp is `>= ts` (ListOffsets).
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let config = self.config();
        let st = self.state.read();
        let bases: Vec<i64> = st.segments.keys().copied().collect();
        for (i, base) in bases.iter().enumerate() {
            let Some(seg) = st.segments.get(base) else {
                continue;
            };
            let next_base = bases.get(i + 1).copied();
            let (max_ts, _) = {
                let mut inner = seg.lock();
                seg.max_timestamp(&mut inner, &config, &self.stats, next_base)?
            };
            if max_ts < ts || (next_base.is_some_and(|n| n <= st.log_start)) {
                continue;
            }
            let from = {
                let mut inner = seg.lock();
                seg.ensure_indexes(&mut inner, &config, &self.stats, next_base)?;
                let (_, time) = seg.index(&inner).ok_or_else(|| self.closed_err())?;
                crate::time_index::lookup_offset(time, ts)
                    .map_or(seg.base, |rel| seg.base + i64::from(rel))
            };
            let from = from.max(st.log_start);
            let Some((map, pos, size)) = self.open_for_read(&st, seg, from)? else {
                continue;
            };
            let owner = Bytes::from_owner(MapOwner(map.clone()));
            let log_start = st.log_start;
            let mut decode_err = None;
            let found = self.walk(seg, &map, pos, size, log_start, |pos, h, len| {
                if h.max_timestamp < ts || h.last_offset() < log_start {
                    return ControlFlow::Continue(());
                }
                match records::decode_records(
                    &owner.slice(pos as usize..pos as usize + len),
                    MAX_UNCOMPRESSED,
                ) {
                    Ok(recs) => match recs
                        .iter()
                        .find(|r| r.timestamp >= ts && r.offset >= log_start)
                    {
                        Some(r) => ControlFlow::Break((r.offset, r.timestamp)),
                        None => ControlFlow::Continue(()),
                    },
                    Err(e) => {
                        decode_err = Some((pos, e.to_string()));
                        ControlFlow::Break((-1, -1))
                    }
                }
            })?;
            if let Some((pos, reason)) = decode_err {
                return Err(self.corrupt(seg, pos, reason));
            }
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The largest timestamp in the log and the offset of the (first) record holding it.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>> {
        let config = self.config();
        let st = self.state.read();
        let mut best: Option<(i64, i64, i64)> = None; // (ts, batch last offset, segment base)
        let bases: Vec<i64> = st.segments.keys().copied().collect();
        for (i, base) in bases.iter().enumerate() {
            let Some(seg) = st.segments.get(base) else {
                continue;
            };
            if seg.size() == 0 {
                continue;
            }
            let (ts, off) = {
                let mut inner = seg.lock();
                seg.max_timestamp(&mut inner, &config, &self.stats, bases.get(i + 1).copied())?
            };
            if off >= 0 && best.is_none_or(|(b, _, _)| ts > b) {
                best = Some((ts, off, *base));
            }
        }
        let Some((ts, off, base)) = best else {
            return Ok(None);
        };
        let Some(seg) = st.segments.get(&base) else {
            return Ok(Some((ts, off)));
        };
        let Some((map, pos, size)) = self.open_for_read(&st, seg, off)? else {
            return Ok(Some((ts, off)));
        };
        let owner = Bytes::from_owner(MapOwner(map.clone()));
        let exact = self.walk(seg, &map, pos, size, off, |pos, h, len| {
            if h.last_offset() < off {
                return ControlFlow::Continue(());
            }
            let recs = records::decode_records(
                &owner.slice(pos as usize..pos as usize + len),
                MAX_UNCOMPRESSED,
            )
            .unwrap_or_default();
            ControlFlow::Break(recs.iter().find(|r| r.timestamp == ts).map(|r| r.offset))
        })?;
        Ok(Some((ts, exact.flatten().unwrap_or(off))))
    }

    /// Removes every offset `>= offset`. A batch containing `offset` is removed whole,
    /// so the new log end is `min(offset, base of that batch)`; if that is below the log
    /// start, the log is emptied and restarts at the log start. An `offset` at or below
    /// the log start empties the log and restarts it at `offset`.
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        let config = self.config();
        let mut st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        if offset >= st.log_end {
            return Ok(());
        }
        if offset <= st.log_start {
            return self.truncate_fully_locked(&mut st, offset, &config);
        }
        let doomed: Vec<i64> = st.segments.range(offset..).map(|(b, _)| *b).collect();
        for b in doomed {
            if let Some(s) = st.segments.remove(&b) {
                s.delete_files()?;
            }
        }
        let seg = st.active().clone();
        let (cut, new_end) = match self.open_for_read(&st, &seg, offset)? {
            None => (0, offset),
            Some((map, pos, size)) => {
                let hit = self.walk(&seg, &map, pos, size, offset, |pos, h, _| {
                    if h.last_offset() >= offset {
                        ControlFlow::Break((pos, offset.min(h.base_offset)))
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                match hit {
                    Ok(Some(x)) => x,
                    Ok(None) => (size, offset),
                    // A corrupt batch at or before the cut: cut there; it is being removed anyway.
                    Err(StorageError::CorruptBatch { position, .. }) => (position, offset),
                    Err(e) => return Err(e),
                }
            }
        };
        if new_end < st.log_start {
            // The batch holding `offset` also holds the log start: nothing above the
            // start survives, and the start never moves back.
            let start = st.log_start;
            return self.truncate_fully_locked(&mut st, start, &config);
        }
        {
            let mut inner = seg.lock();
            seg.truncate(&mut inner, cut)?;
            inner.sealed = false;
            inner.cursor = None;
            seg.rebuild_indexes(&mut inner, &config, &self.stats)?;
            self.stats.index_rebuilds.fetch_sub(1, Ordering::Relaxed);
            inner.roll_base_ms = if cut > 0 {
                inner.roll_base_ms.or(Some(now_ms()))
            } else {
                None
            };
        }
        st.unflushed
            .retain(|s| !Arc::ptr_eq(s, &seg) && s.base < offset);
        self.set_end(&mut st, new_end);
        self.gc.truncated(new_end);
        Ok(())
    }

    /// Empties the log and restarts it at `offset` (any offset, also past the
    /// end): a replica that fell behind its leader's log start adopts the
    /// leader's start this way, as a Kafka follower does.
    pub fn reset_to(&self, offset: i64) -> Result<()> {
        if offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset(),
                log_end: self.log_end_offset(),
            });
        }
        let config = self.config();
        let mut st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        self.truncate_fully_locked(&mut st, offset, &config)
    }

    /// Deletes every segment and restarts the log, empty, at `offset`. Old files are
    /// unlinked before the new segment is created (never truncated under a reader's
    /// map). On an I/O error midway the log is taken offline (closed): it may have no
    /// segment left.
    fn truncate_fully_locked(&self, st: &mut State, offset: i64, config: &LogConfig) -> Result<()> {
        let r = (|| {
            for (_, s) in std::mem::take(&mut st.segments) {
                s.delete_files()?;
            }
            st.unflushed.clear();
            let seg = Segment::create(&self.dir, offset, config, &self.cache)?;
            st.segments.insert(offset, seg);
            st.log_start = offset;
            self.write_log_start(offset)
        })();
        if let Err(e) = r {
            tracing::error!(dir = %self.dir.display(), error = %e, "truncation failed; taking the log offline");
            if st.segments.is_empty() {
                st.closed = true;
            }
            return Err(e);
        }
        self.set_end(st, offset);
        self.gc.truncated(offset);
        Ok(())
    }

    /// Empties the log and restarts it at `offset` (Kafka's truncateFullyAndStartAt).
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<()> {
        let config = self.config();
        let mut st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        self.truncate_fully_locked(&mut st, offset, &config)
    }

    pub(crate) fn write_log_start(&self, offset: i64) -> Result<()> {
        write_small_file(
            &self.dir.join(LOG_START),
            offset.to_string().as_bytes(),
            false,
        )
    }

    /// Removes segments from the front while `doomed(segment, next base)` holds, never
    /// the active one; raises the log start to the first remaining segment if needed.
    pub(crate) fn delete_front_locked(
        &self,
        st: &mut State,
        mut doomed: impl FnMut(&Arc<Segment>, i64) -> bool,
    ) -> Result<usize> {
        let mut n = 0;
        loop {
            let mut it = st.segments.iter();
            let (Some((_, first)), Some((&next, _))) = (it.next(), it.next()) else {
                break;
            };
            let first = first.clone();
            if !doomed(&first, next) {
                break;
            }
            st.segments.remove(&first.base);
            st.unflushed.retain(|s| !Arc::ptr_eq(s, &first));
            first.delete_files()?;
            n += 1;
            if st.log_start < next {
                st.log_start = next;
                self.write_log_start(next)?;
            }
        }
        Ok(n)
    }

    /// DeleteRecords: raises the log start to `offset` and deletes segments wholly below it.
    pub fn delete_before(&self, offset: i64) -> Result<i64> {
        let mut st = self.state.write();
        if st.closed {
            return Err(self.closed_err());
        }
        if offset > st.log_end || offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: st.log_start,
                log_end: st.log_end,
            });
        }
        if offset <= st.log_start {
            return Ok(st.log_start);
        }
        st.log_start = offset;
        self.write_log_start(offset)?;
        self.delete_front_locked(&mut st, |_, next| next <= offset)?;
        Ok(st.log_start)
    }

    /// fsyncs everything, trims the active indexes and writes the clean-shutdown marker.
    /// Further appends fail with `Closed`. Idempotent.
    pub fn close(&self) -> Result<()> {
        let mut st = self.state.write();
        if st.closed {
            return Ok(());
        }
        for seg in std::mem::take(&mut st.unflushed) {
            seg.sync_all()?;
        }
        let active = st.active().clone();
        let last_pos = {
            let mut inner = active.lock();
            let file = active.file(&mut inner)?;
            // The marker must describe the file exactly: no bytes of a failed append.
            active.settle_tail(&mut inner, &file)?;
            active.sync_data(&file)?;
            active.trim_indexes(&mut inner, true)?;
            inner.cursor = None;
            inner.last_batch_pos
        };
        let end = st.log_end;
        write_small_file(
            &self.dir.join(recovery::RECOVERY_POINT),
            end.to_string().as_bytes(),
            false,
        )?;
        recovery::write_marker(&self.dir, end, active.size(), last_pos)?;
        st.closed = true;
        for s in st.segments.values() {
            s.release_handles();
        }
        st.recovery_point = end;
        Ok(())
    }

    /// Closes the log and removes its directory.
    pub fn delete(self) -> Result<()> {
        self.delete_in_place()
    }

    /// Marks the log closed and removes its directory (for owners holding an `Arc`).
    pub(crate) fn delete_in_place(&self) -> Result<()> {
        {
            let mut st = self.state.write();
            st.closed = true;
            for s in st.segments.values() {
                s.release_handles();
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Io {
                path: self.dir.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "closing log on drop failed");
        }
    }
}

/// Validates a record set: whole v2 batches (length, magic, record count), nothing
/// left over, and, if `check_crc`, good CRCs (otherwise the append checks them while
/// writing, before anything becomes visible). Every header is checked here, before
/// anything is written.
fn validate(record_set: &[u8], check_crc: bool) -> Result<Vec<(BatchHeader, Range<usize>)>> {
    if record_set.is_empty() {
        return Err(StorageError::EmptyRecordSet);
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < record_set.len() {
        let rest = &record_set[pos..];
        let err = |source| StorageError::InvalidBatch {
            position: pos,
            source,
        };
        let h = BatchHeader::parse(rest).map_err(err)?;
        let len = h.total_len();
        if rest.len() < len {
            return Err(err(RecordError::Truncated {
                have: rest.len(),
                need: len,
            }));
        }
        // The checks of `records::verify_batch` (magic and length by the parse above),
        // without parsing the header a second time.
        if check_crc {
            let computed = records::compute_crc(&rest[..len]);
            if computed != h.crc {
                return Err(err(RecordError::CrcMismatch {
                    stored: h.crc,
                    computed,
                }));
            }
        }
        out.push((h, pos..pos + len));
        pos += len;
    }
    Ok(out)
}
