//! Opening a log directory: discovering segments, trusting a clean-shutdown marker
//! (after checking the tail batch it names) or else validating every batch after the
//! recovery point, truncating a torn or corrupt tail and rebuilding indexes.

use crate::cache::HandleCache;
use crate::config::LogConfig;
use crate::error::{IoContext, Result, StorageError};
use crate::index::{self, IndexFile, OFFSET_ENTRY};
use crate::segment::{remove_if_exists, IdxCursor, Segment};
use crate::stats::Stats;
use crate::time_index::{self, TIME_ENTRY};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use weir_protocol::records::{verify_batch, BatchHeader};

pub(crate) const CLEAN_SHUTDOWN: &str = ".clean_shutdown";
pub(crate) const RECOVERY_POINT: &str = "recovery-point";
pub(crate) const LOG_START: &str = "log-start-offset";

/// Result of walking the batches of a segment's bytes.
pub(crate) struct Scan {
    /// Bytes of whole, valid batches from the start.
    pub valid_len: u64,
    pub batches: u64,
    /// Position and reason of the first invalid batch, if any.
    pub error: Option<(u64, String)>,
    pub index: Vec<u8>,
    pub time: Vec<u8>,
    pub cursor: IdxCursor,
    pub last_offset: Option<i64>,
    pub last_pos: Option<u64>,
}

/// Walks `data` batch by batch, checking length, magic, offset order and (if
/// `verify`) the CRC, and builds index entries as appends would have.
pub(crate) fn scan(data: &[u8], base: i64, verify: bool, interval: u32) -> Scan {
    let mut s = Scan {
        valid_len: 0,
        batches: 0,
        error: None,
        index: Vec::new(),
        time: Vec::new(),
        cursor: IdxCursor::new(interval),
        last_offset: None,
        last_pos: None,
    };
    let mut pos = 0usize;
    let mut next_min = base;
    while pos < data.len() {
        let rest = &data[pos..];
        let h = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                s.error = Some((pos as u64, e.to_string()));
                break;
            }
        };
        let len = h.total_len();
        if rest.len() < len {
            s.error = Some((
                pos as u64,
                format!("batch of {len} bytes is cut short at {} bytes", rest.len()),
            ));
            break;
        }
        if verify {
            if let Err(e) = verify_batch(&rest[..len]) {
                s.error = Some((pos as u64, e.to_string()));
                break;
            }
        }
        if h.base_offset < next_min || h.last_offset() - base > i64::from(i32::MAX) {
            s.error = Some((
                pos as u64,
                format!(
                    "batch offsets {}..={} out of order (expected >= {next_min})",
                    h.base_offset,
                    h.last_offset()
                ),
            ));
            break;
        }
        let (oe, te) = s.cursor.step(base, pos as u64, &h);
        if let Some(e) = oe {
            s.index.extend_from_slice(&e);
        }
        if let Some(e) = te {
            s.time.extend_from_slice(&e);
        }
        next_min = h.last_offset() + 1;
        s.last_offset = Some(h.last_offset());
        s.last_pos = Some(pos as u64);
        s.batches += 1;
        pos += len;
        s.valid_len = pos as u64;
    }
    s
}

pub(crate) struct Opened {
    pub segments: BTreeMap<i64, Arc<Segment>>,
    pub log_start: i64,
    pub log_end: i64,
    pub recovery_point: i64,
    /// The log was opened after a clean shutdown (its recovery-point file is current).
    pub clean: bool,
}

struct Marker {
    end: i64,
    size: u64,
    last_pos: Option<u64>,
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(dir.join(CLEAN_SHUTDOWN)).ok()?;
    let mut parts = text.split_whitespace();
    let end = parts.next()?.parse().ok()?;
    let size = parts.next()?.parse().ok()?;
    let last_pos = match parts.next()? {
        "-" => None,
        p => Some(p.parse().ok()?),
    };
    Some(Marker {
        end,
        size,
        last_pos,
    })
}

pub(crate) fn write_marker(dir: &Path, end: i64, size: u64, last_pos: Option<u64>) -> Result<()> {
    let text = format!(
        "{end} {size} {}\n",
        last_pos.map_or("-".to_string(), |p| p.to_string())
    );
    write_small_file(&dir.join(CLEAN_SHUTDOWN), text.as_bytes(), true)
}

pub(crate) fn read_offset_file(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes a small file atomically (temp file + rename); `durable` fsyncs file and directory.
pub(crate) fn write_small_file(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).ctx(&tmp)?;
    f.write_all(data).ctx(&tmp)?;
    if durable {
        f.sync_all().ctx(&tmp)?;
    }
    drop(f);
    std::fs::rename(&tmp, path).ctx(path)?;
    if durable {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .ctx(dir)?;
        }
    }
    Ok(())
}

fn parse_segment_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

pub(crate) fn open_dir(
    dir: &Path,
    config: &LogConfig,
    cache: &Arc<HandleCache>,
    stats: &Stats,
    now_ms: i64,
) -> Result<Opened> {
    std::fs::create_dir_all(dir).ctx(dir)?;
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(dir)? {
        let entry = entry.ctx(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if [".cleaned", ".tmp", ".truncating", ".deleted"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            remove_if_exists(&entry.path())?;
        } else if let Some(base) = parse_segment_name(name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let marker = read_marker(dir);
    remove_if_exists(&dir.join(CLEAN_SHUTDOWN))?;
    let start_checkpoint = read_offset_file(&dir.join(LOG_START));

    if bases.is_empty() {
        let base = start_checkpoint.unwrap_or(0).max(0);
        let seg = Segment::create(dir, base, config, cache)?;
        return Ok(Opened {
            segments: BTreeMap::from([(base, seg)]),
            log_start: base,
            log_end: base,
            recovery_point: base,
            clean: false,
        });
    }

    let mut segments = BTreeMap::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(crate::segment::file_name(base, "log"));
        let size = std::fs::metadata(&path).ctx(&path)?.len();
        let sealed = i + 1 < bases.len();
        segments.insert(base, Arc::new(Segment::new(dir, base, size, sealed, cache)));
    }
    let last = segments
        .values()
        .next_back()
        .cloned()
        .ok_or_else(|| StorageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("no segments"),
        })?;

    let clean_end = marker.and_then(|m| clean_tail_ok(&last, &m, stats).then_some(m.end));
    let log_end = match clean_end {
        Some(end) => {
            load_active_state(&last, config, stats)?;
            end
        }
        None => {
            let point = read_offset_file(&dir.join(RECOVERY_POINT)).unwrap_or(i64::MIN);
            recover(dir, &mut segments, point, config, stats)?
        }
    };
    let active = segments
        .values()
        .next_back()
        .cloned()
        .ok_or_else(|| StorageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("no segments after recovery"),
        })?;
    {
        let mut inner = active.lock();
        let first_ts = active.first_batch_timestamp(&mut inner).filter(|t| *t >= 0);
        inner.roll_base_ms = if active.size() > 0 {
            Some(first_ts.unwrap_or(now_ms).min(now_ms))
        } else {
            None
        };
    }
    let first = segments.keys().next().copied().unwrap_or(0);
    let log_start = start_checkpoint.unwrap_or(first).max(first).min(log_end);
    let recovery_point = if clean_end.is_some() {
        log_end
    } else {
        active.base
    };
    Ok(Opened {
        segments,
        log_start,
        log_end,
        recovery_point,
        clean: clean_end.is_some(),
    })
}

/// The clean-shutdown marker is trusted only if the active segment still ends with
/// the batch it names, intact: one batch checked instead of a scan.
fn clean_tail_ok(last: &Arc<Segment>, m: &Marker, stats: &Stats) -> bool {
    if last.size() != m.size {
        return false;
    }
    let Some(pos) = m.last_pos else {
        return m.size == 0 && m.end >= last.base;
    };
    let mut inner = last.lock();
    let Ok(Some(map)) = last.map(&mut inner, m.size) else {
        return false;
    };
    let Some(tail) = map.get(pos as usize..m.size as usize) else {
        return false;
    };
    stats
        .batches_scanned_at_open
        .fetch_add(1, Ordering::Relaxed);
    match verify_batch(tail) {
        Ok(h) if h.last_offset() + 1 == m.end => {
            inner.last_batch_pos = Some(pos);
            true
        }
        _ => false,
    }
}

/// Restores the active segment's index cursor from its (trimmed, clean) index files.
fn load_active_state(seg: &Arc<Segment>, config: &LogConfig, stats: &Stats) -> Result<()> {
    let mut inner = seg.lock();
    let idx = IndexFile::open_ro(&seg.index_path, OFFSET_ENTRY)
        .ok()
        .filter(|i| index::offset_index_sane(i, None, seg.size()));
    let time = IndexFile::open_ro(&seg.time_path, TIME_ENTRY)
        .ok()
        .filter(|t| time_index::time_index_sane(t, None));
    match (idx, time) {
        (Some(idx), Some(time)) => {
            let last_pos = idx
                .len()
                .checked_sub(1)
                .map_or(0, |i| u64::from(index::parse_offset_entry(idx.entry(i)).1));
            let mut cursor = IdxCursor::new(config.index_interval_bytes);
            cursor.bytes_since = seg.size().saturating_sub(last_pos);
            if let Some((ts, rel)) = time_index::last_entry(&time) {
                cursor.max_ts = ts;
                cursor.max_ts_offset = seg.base + i64::from(rel);
                cursor.last_time_entry = Some(ts);
            }
            inner.max_ts = Some((cursor.max_ts, cursor.max_ts_offset));
            inner.idx_entries = idx.len();
            inner.time_entries = time.len();
            inner.cursor = Some(cursor);
        }
        _ => seg.rebuild_indexes(&mut inner, config, stats)?,
    }
    Ok(())
}

/// Unclean open: validates every batch of every segment from the one holding the
/// recovery point on. The first invalid batch ends the log: its segment is cut there
/// and later segments are deleted. Returns the log end offset.
fn recover(
    dir: &Path,
    segments: &mut BTreeMap<i64, Arc<Segment>>,
    recovery_point: i64,
    config: &LogConfig,
    stats: &Stats,
) -> Result<i64> {
    let from = segments
        .range(..=recovery_point)
        .next_back()
        .map(|(b, _)| *b)
        .unwrap_or(i64::MIN);
    let to_scan: Vec<Arc<Segment>> = segments.range(from..).map(|(_, s)| s.clone()).collect();
    let last_base = segments.keys().next_back().copied().unwrap_or(0);
    tracing::info!(dir = %dir.display(), segments = to_scan.len(), "recovering log after unclean shutdown");
    let mut cut_after: Option<i64> = None;
    let mut end = last_base;
    for seg in &to_scan {
        let mut inner = seg.lock();
        let size = seg.size();
        let scan = {
            let map = seg.map(&mut inner, size)?;
            let data = map.as_deref().map_or(&[][..], |m| &m[..size as usize]);
            scan(data, seg.base, true, config.index_interval_bytes)
        };
        stats
            .batches_scanned_at_open
            .fetch_add(scan.batches, Ordering::Relaxed);
        if let Some((pos, reason)) = &scan.error {
            let lost = size - scan.valid_len;
            if seg.base != last_base {
                stats.corrupt_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %seg.log_path.display(), position = pos, %reason, "corrupt batch in a segment that was never flushed; truncating the log there");
            } else {
                tracing::warn!(path = %seg.log_path.display(), position = pos, %reason, lost, "truncating torn tail");
            }
            stats
                .truncated_bytes_at_open
                .fetch_add(lost, Ordering::Relaxed);
            seg.truncate(&mut inner, scan.valid_len)?;
            cut_after = Some(seg.base);
        }
        let is_last = cut_after.is_some() || seg.base == last_base;
        if is_last {
            end = scan.last_offset.map_or(seg.base, |o| o + 1);
        }
        seg.set_verified(scan.valid_len);
        inner.sealed = !is_last;
        seg.install_scan(&mut inner, scan)?;
        if seg.size() > 0 {
            let file = seg.file(&mut inner)?;
            seg.sync_data(&file)?;
        }
        if cut_after.is_some() {
            break;
        }
    }
    if let Some(cut) = cut_after {
        let doomed: Vec<i64> = segments.range(cut + 1..).map(|(b, _)| *b).collect();
        for b in doomed {
            if let Some(s) = segments.remove(&b) {
                s.delete_files()?;
            }
        }
    }
    Ok(end)
}
