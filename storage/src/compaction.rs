//! Log compaction (`cleanup.policy=compact`): keeps the latest record of each key.
//!
//! The cleaner builds a key -> latest offset map over the whole log (closed segments
//! and the active segment as it was when cleaning began), then rewrites each closed
//! segment that loses records into `<base>.log.cleaned` plus fresh indexes, without
//! holding the log's lock, and swaps it in under the lock only if the segment is
//! unchanged meanwhile. Offsets never change: a rewritten batch keeps its base offset
//! and `lastOffsetDelta` and each record its offset delta. Tombstones (null values)
//! that are their key's latest record survive until their timestamp is
//! `delete.retention.ms` old. Records without a key and control batches are kept.
//! Readers holding `Bytes` of the old file keep reading the old (unlinked) inode.

use crate::error::{IoContext, Result, StorageError};
use crate::index::{IndexFile, OFFSET_ENTRY};
use crate::log::{Log, MAX_UNCOMPRESSED};
use crate::segment::{remove_if_exists, IdxCursor, Segment};
use crate::time_index::TIME_ENTRY;
use bytes::Bytes;
use memmap2::Mmap;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use weir_protocol::records::{self, BatchBuilder, BatchHeader, Record, TimestampType};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_cleaned: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

struct Snap {
    seg: Arc<Segment>,
    map: Option<Arc<Mmap>>,
    pos: u64,
    size: u64,
}

impl Log {
    /// Compacts closed segments if the cleanup policy includes `compact`.
    pub fn compact(&self, now_ms: i64) -> Result<CompactionStats> {
        let config = self.config();
        let mut stats = CompactionStats::default();
        if !config.cleanup_policy.compacts() {
            return Ok(stats);
        }
        let _one_at_a_time = self.cleaning.lock();
        let snaps: Vec<Snap> = {
            let st = self.state.read();
            if st.closed {
                return Ok(stats);
            }
            let mut v = Vec::new();
            for seg in st.segments.values() {
                let (map, pos, size) = match self.open_for_read(&st, seg, seg.base)? {
                    Some((m, p, s)) => (Some(m), p, s),
                    None => (None, 0, 0),
                };
                v.push(Snap {
                    seg: seg.clone(),
                    map,
                    pos,
                    size,
                });
            }
            v
        };
        let Some((_active, closed)) = snaps.split_last() else {
            return Ok(stats);
        };
        if closed.is_empty() {
            return Ok(stats);
        }

        // Pass 1: latest offset of every key.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for s in &snaps {
            self.for_each_batch(s, |_, h, batch| {
                if h.is_control() {
                    return Ok(());
                }
                for r in decode(self, s, h, batch)? {
                    if let Some(k) = r.key {
                        latest.insert(k, r.offset);
                    }
                }
                Ok(())
            })?;
        }

        // Pass 2: rewrite closed segments.
        for s in closed {
            let mut out: Vec<u8> = Vec::with_capacity(s.size as usize);
            let mut cursor = IdxCursor::new(config.index_interval_bytes);
            let (mut index, mut time) = (Vec::new(), Vec::new());
            let mut removed = 0u64;
            let mut last_pos = None;
            self.for_each_batch(s, |_, h, batch| {
                let kept: Vec<u8>;
                let bytes: &[u8] = if h.is_control() {
                    batch
                } else {
                    let recs = decode(self, s, h, batch)?;
                    let n = recs.len();
                    let keep: Vec<&Record> = recs
                        .iter()
                        .filter(|r| match &r.key {
                            None => true,
                            Some(k) => {
                                latest.get(k) == Some(&r.offset)
                                    && !(r.value.is_none()
                                        && r.timestamp.saturating_add(config.delete_retention_ms)
                                            <= now_ms)
                            }
                        })
                        .collect();
                    removed += (n - keep.len()) as u64;
                    if keep.len() == n {
                        batch
                    } else if keep.is_empty() {
                        return Ok(());
                    } else {
                        kept = rebuild(self, s, h, &keep)?;
                        &kept
                    }
                };
                let nh = BatchHeader::parse(bytes)
                    .map_err(|e| self.compaction_err(h.base_offset, e.to_string()))?;
                let pos = out.len() as u64;
                let (oe, te) = cursor.step(s.seg.base, pos, &nh);
                if let Some(e) = oe {
                    index.extend_from_slice(&e);
                }
                if let Some(e) = te {
                    time.extend_from_slice(&e);
                }
                last_pos = Some(pos);
                out.extend_from_slice(bytes);
                Ok(())
            })?;
            if removed == 0 {
                continue;
            }
            if let Some(e) = cursor.time_entry_if_new(s.seg.base) {
                time.extend_from_slice(&e);
            }
            stats.records_removed += removed;
            stats.bytes_before += s.size;
            stats.bytes_after += out.len() as u64;
            if self.swap_in(s, &out, &index, &time, cursor, last_pos)? {
                stats.segments_cleaned += 1;
            }
        }
        if stats.segments_cleaned > 0 {
            tracing::info!(dir = %self.dir.display(), ?stats, "compacted log");
        }
        Ok(stats)
    }

    fn compaction_err(&self, offset: i64, reason: String) -> StorageError {
        StorageError::Compaction {
            path: self.dir.clone(),
            offset,
            reason,
        }
    }

    fn for_each_batch(
        &self,
        s: &Snap,
        mut f: impl FnMut(u64, &BatchHeader, &Bytes) -> Result<()>,
    ) -> Result<()> {
        let Some(map) = &s.map else { return Ok(()) };
        let owner = Bytes::from_owner(crate::log::MapOwner(map.clone()));
        let mut err = None;
        self.walk(&s.seg, map, s.pos, s.size, i64::MIN, |pos, h, len| match f(
            pos,
            h,
            &owner.slice(pos as usize..pos as usize + len),
        ) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                err = Some(e);
                ControlFlow::Break(())
            }
        })?;
        err.map_or(Ok(()), Err)
    }

    /// Installs a cleaned segment if the original is still in place and unchanged.
    fn swap_in(
        &self,
        s: &Snap,
        data: &[u8],
        index: &[u8],
        time: &[u8],
        cursor: IdxCursor,
        last_pos: Option<u64>,
    ) -> Result<bool> {
        let seg = &s.seg;
        let cleaned = |p: &std::path::Path| {
            p.with_extension(format!(
                "{}.cleaned",
                p.extension().and_then(|e| e.to_str()).unwrap_or("")
            ))
        };
        let (log_c, idx_c, time_c) = (
            cleaned(&seg.log_path),
            cleaned(&seg.index_path),
            cleaned(&seg.time_path),
        );
        IndexFile::write_new(&log_c, data).ctx(&log_c)?;
        IndexFile::write_new(&idx_c, index).ctx(&idx_c)?;
        IndexFile::write_new(&time_c, time).ctx(&time_c)?;
        let mut st = self.state.write();
        let current = st.segments.get(&seg.base).cloned();
        let unchanged = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, seg))
            && seg.size() == s.size
            && !st.closed;
        if !unchanged || st.active().base == seg.base {
            drop(st);
            for p in [&log_c, &idx_c, &time_c] {
                remove_if_exists(p)?;
            }
            return Ok(false);
        }
        // Order matters for crash safety: drop the old indexes, then replace the log,
        // then install the new indexes (a missing index is rebuilt at open; a
        // leftover `.cleaned` file is deleted at open).
        seg.release_handles();
        remove_if_exists(&seg.index_path)?;
        remove_if_exists(&seg.time_path)?;
        std::fs::rename(&log_c, &seg.log_path).ctx(&seg.log_path)?;
        std::fs::rename(&idx_c, &seg.index_path).ctx(&seg.index_path)?;
        std::fs::rename(&time_c, &seg.time_path).ctx(&seg.time_path)?;
        let fresh = Arc::new(Segment::new(
            &self.dir,
            seg.base,
            data.len() as u64,
            true,
            &self.cache,
        ));
        {
            let mut inner = fresh.lock();
            inner.max_ts = Some((cursor.max_ts, cursor.max_ts_offset));
            inner.idx_entries = index.len() / OFFSET_ENTRY;
            inner.time_entries = time.len() / TIME_ENTRY;
            inner.last_batch_pos = last_pos;
        }
        fresh.set_verified(data.len() as u64);
        st.unflushed.retain(|u| !Arc::ptr_eq(u, seg));
        if data.is_empty() {
            st.segments.remove(&seg.base);
            fresh.delete_files()?;
        } else {
            st.segments.insert(seg.base, fresh);
        }
        Ok(true)
    }
}

fn decode(log: &Log, s: &Snap, h: &BatchHeader, batch: &Bytes) -> Result<Vec<Record>> {
    records::decode_records(batch, MAX_UNCOMPRESSED).map_err(|e| {
        log.compaction_err(h.base_offset, format!("{}: {e}", s.seg.log_path.display()))
    })
}

/// Re-encodes a batch with only `keep`, preserving its offsets, timestamps type,
/// producer fields, compression and leader epoch.
fn rebuild(log: &Log, s: &Snap, h: &BatchHeader, keep: &[&Record]) -> Result<Vec<u8>> {
    let codec = h
        .compression()
        .map_err(|e| log.compaction_err(h.base_offset, e.to_string()))?;
    let mut b = BatchBuilder::new(codec)
        .base_offset(h.base_offset)
        .base_timestamp(h.base_timestamp)
        .last_offset_delta(h.last_offset_delta)
        .producer(h.producer_id, h.producer_epoch, h.base_sequence)
        .transactional(h.is_transactional());
    for r in keep {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|x| (&x.key[..], x.value.as_deref()))
            .collect();
        b.push_at(
            (r.offset - h.base_offset) as i32,
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            &headers,
        );
    }
    let mut out = b.build().map_err(|e| {
        log.compaction_err(h.base_offset, format!("{}: {e}", s.seg.log_path.display()))
    })?;
    records::set_partition_leader_epoch(&mut out, h.partition_leader_epoch);
    if h.timestamp_type() == TimestampType::LogAppendTime {
        records::set_log_append_time(&mut out, h.max_timestamp);
    }
    Ok(out)
}
