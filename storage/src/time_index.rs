//! The timestamp index: Kafka's 12-byte entries, an 8-byte timestamp and a 4-byte
//! offset relative to the segment base, big-endian. Each entry records the largest
//! timestamp seen so far in the segment and the last offset of the batch that holds
//! it, so timestamps never decrease along the file. The entry written when a segment
//! is sealed holds the segment's largest timestamp, which retention reads.

use crate::index::IndexFile;

pub(crate) const TIME_ENTRY: usize = 12;

pub(crate) fn time_entry(timestamp: i64, rel_offset: u32) -> [u8; TIME_ENTRY] {
    let mut e = [0u8; TIME_ENTRY];
    e[..8].copy_from_slice(&timestamp.to_be_bytes());
    e[8..].copy_from_slice(&rel_offset.to_be_bytes());
    e
}

pub(crate) fn parse_time_entry(e: &[u8]) -> (i64, u32) {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&e[..8]);
    (
        i64::from_be_bytes(ts),
        u32::from_be_bytes([e[8], e[9], e[10], e[11]]),
    )
}

/// The relative offset to start a timestamp search from: the offset of the last entry
/// whose timestamp is strictly below `ts` (every record up to it is older than `ts`).
pub(crate) fn lookup_offset(index: &IndexFile, ts: i64) -> Option<u32> {
    index
        .last_where(|e| parse_time_entry(e).0 < ts)
        .map(|i| parse_time_entry(index.entry(i)).1)
}

pub(crate) fn last_entry(index: &IndexFile) -> Option<(i64, u32)> {
    index
        .len()
        .checked_sub(1)
        .map(|i| parse_time_entry(index.entry(i)))
}

/// Timestamps non-decreasing, offsets non-decreasing and inside the segment.
pub(crate) fn time_index_sane(index: &IndexFile, max_rel_offset: Option<u64>) -> bool {
    let mut prev: Option<(i64, u32)> = None;
    for i in 0..index.len() {
        let (t, o) = parse_time_entry(index.entry(i));
        if max_rel_offset.is_some_and(|m| u64::from(o) > m) {
            return false;
        }
        if let Some((pt, po)) = prev {
            if t < pt || o < po {
                return false;
            }
        }
        prev = Some((t, o));
    }
    true
}
