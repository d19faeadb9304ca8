//! Fixed-width, mmap'd index files, and the sparse offset index built on them.
//!
//! Offset index entries are Kafka's: 4-byte offset relative to the segment's base
//! offset, 4-byte byte position of a batch in the `.log` file, both big-endian. An
//! entry `(last offset of a batch, position of that batch)` is written every
//! `index.interval.bytes` of batches. The active segment's index file is preallocated
//! to `segment.index.bytes` and mapped writable; it is trimmed to its entries when
//! the segment is rolled or the log closed cleanly, and mapped read-only afterwards.

use memmap2::{Mmap, MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub(crate) enum Map {
    Empty,
    Ro(Mmap),
    Rw(MmapMut),
}

/// A file of fixed-width entries, mapped into memory.
pub(crate) struct IndexFile {
    width: usize,
    map: Map,
    entries: usize,
    /// Not kept: `seal` reopens the file by path.
    file: Option<File>,
}

impl IndexFile {
    /// Maps an existing index read-only. Fails with `InvalidData` when the length is
    /// not a whole number of entries.
    pub fn open_ro(path: &Path, width: usize) -> io::Result<IndexFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if (len / width) * width != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("index length {len} is not a multiple of {width}"),
            ));
        }
        let map = if len == 0 {
            Map::Empty
        } else {
            // SAFETY: index files are only written by this process through this module;
            // a read-only map of a file that is never truncated while mapped read-only.
            Map::Ro(unsafe { MmapOptions::new().len(len).map(&file)? })
        };
        Ok(IndexFile {
            width,
            map,
            entries: len / width,
            file: None,
        })
    }

    /// Opens (creating if needed) an index for appending, preallocated to `max_bytes`
    /// rounded down to whole entries, holding `entries` valid entries.
    pub fn open_rw(
        path: &Path,
        width: usize,
        max_bytes: u32,
        entries: usize,
    ) -> io::Result<IndexFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let cap = ((max_bytes as usize) / width).max(entries + 1).max(2) * width;
        file.set_len(cap as u64)?;
        // SAFETY: the file is sized above and only this process writes it; the map is
        // dropped before the file is ever shrunk (see `seal`).
        let map = unsafe { MmapOptions::new().len(cap).map_mut(&file)? };
        // Entries are written front to back, a page at a time, into a mostly sparse
        // file. Without this hint, the first write fault on each page triggers
        // readahead that zero-fills (and later has to truncate) up to megabytes of
        // holes beyond the last entry; with it, each fault maps just its page. It
        // was 3-4% of `append` time in `storage_bench` (see the crate docs). Only a
        // hint: if the kernel refuses it, appends still work, just slower.
        let _ = map.advise(memmap2::Advice::Random);
        Ok(IndexFile {
            width,
            map: Map::Rw(map),
            entries,
            file: Some(file),
        })
    }

    /// Writes a complete index file from `data` (used by rebuilds and compaction).
    pub fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension(format!(
            "{}.tmp",
            path.extension().and_then(|e| e.to_str()).unwrap_or("idx")
        ));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        drop(f);
        std::fs::rename(&tmp, path)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::Empty => &[],
            Map::Ro(m) => m,
            Map::Rw(m) => m,
        }
    }

    pub fn entry(&self, i: usize) -> &[u8] {
        debug_assert!(i < self.entries);
        &self.bytes()[i * self.width..(i + 1) * self.width]
    }

    /// Entries that can still be pushed (0 for read-only indexes).
    pub fn free(&self) -> usize {
        match &self.map {
            Map::Rw(m) => (m.len() / self.width).saturating_sub(self.entries),
            _ => 0,
        }
    }

    /// Appends one entry; false when the index is full or read-only.
    pub fn push(&mut self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.width);
        let at = self.entries * self.width;
        match &mut self.map {
            Map::Rw(m) if at + self.width <= m.len() => {
                m[at..at + self.width].copy_from_slice(entry);
                self.entries += 1;
                true
            }
            _ => false,
        }
    }

    /// Largest `i` with `pred(entry(i))` true, assuming `pred` is true on a prefix.
    pub fn last_where(&self, pred: impl Fn(&[u8]) -> bool) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.entry(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Shrinks a writable index to its entries, and with `sync` msyncs and fsyncs it.
    /// The map is dropped first. Without `sync` the entries written through the map
    /// stay in the page cache until the file is fsync'd (which covers them).
    pub fn seal(self, path: &Path, sync: bool) -> io::Result<()> {
        let IndexFile {
            width,
            map,
            entries,
            file,
        } = self;
        if let (true, Map::Rw(m)) = (sync, &map) {
            m.flush()?;
        }
        drop(map);
        let file = match file {
            Some(f) => f,
            None => OpenOptions::new().write(true).open(path)?,
        };
        file.set_len((entries * width) as u64)?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    }
}

pub(crate) const OFFSET_ENTRY: usize = 8;

pub(crate) fn offset_entry(rel_offset: u32, position: u32) -> [u8; OFFSET_ENTRY] {
    let mut e = [0u8; OFFSET_ENTRY];
    e[..4].copy_from_slice(&rel_offset.to_be_bytes());
    e[4..].copy_from_slice(&position.to_be_bytes());
    e
}

pub(crate) fn parse_offset_entry(e: &[u8]) -> (u32, u32) {
    (
        u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
        u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
    )
}

/// Byte position to start scanning from for `rel_offset`: the position of the last
/// indexed batch whose last offset is `<= rel_offset`, or 0.
pub(crate) fn lookup_position(index: &IndexFile, rel_offset: u32) -> u32 {
    match index.last_where(|e| parse_offset_entry(e).0 <= rel_offset) {
        Some(i) => parse_offset_entry(index.entry(i)).1,
        None => 0,
    }
}

/// Checks an offset index loaded from disk: offsets strictly increasing and inside
/// the segment, positions increasing and inside the log file.
pub(crate) fn offset_index_sane(
    index: &IndexFile,
    max_rel_offset: Option<u64>,
    log_size: u64,
) -> bool {
    let mut prev: Option<(u32, u32)> = None;
    for i in 0..index.len() {
        let (o, p) = parse_offset_entry(index.entry(i));
        if u64::from(p) >= log_size.max(1) || max_rel_offset.is_some_and(|m| u64::from(o) > m) {
            return false;
        }
        if let Some((po, pp)) = prev {
            if o <= po || p <= pp {
                return false;
            }
        }
        prev = Some((o, p));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_lookup_seal_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = IndexFile::open_rw(&path, OFFSET_ENTRY, 64, 0).unwrap();
        for i in 0..5u32 {
            assert!(idx.push(&offset_entry(i * 10 + 9, i * 1000)));
        }
        assert_eq!(lookup_position(&idx, 0), 0);
        assert_eq!(lookup_position(&idx, 9), 0);
        assert_eq!(lookup_position(&idx, 25), 1000);
        assert_eq!(lookup_position(&idx, 1000), 4000);
        idx.seal(&path, true).unwrap();
        let idx = IndexFile::open_ro(&path, OFFSET_ENTRY).unwrap();
        assert_eq!(idx.len(), 5);
        assert!(offset_index_sane(&idx, Some(100), 5000));
        assert!(!offset_index_sane(&idx, Some(100), 3000));
    }
}
