//! A process-wide LRU cap on open segment resources (log file descriptor, data map
//! and index maps), so thousands of partitions with many segments each stay within
//! the fd limit and `vm.max_map_count`. Evicting a segment only drops the cache's
//! references: a map still referenced by `Bytes` handed to a reader stays valid
//! until the reader drops them, and the segment reopens lazily on its next use.

use crate::segment::Segment;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Default number of segments whose resources may be open at once when the fd limit
/// cannot be read. Each open segment holds one descriptor and up to three maps.
pub const DEFAULT_OPEN_SEGMENTS: usize = 1024;

/// Half the process's soft `RLIMIT_NOFILE` (the rest is left for sockets), at most 16384.
pub fn default_open_segments() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        ((lim.rlim_cur / 2) as usize).clamp(64, 16384)
    } else {
        DEFAULT_OPEN_SEGMENTS
    }
}

pub struct HandleCache {
    cap: usize,
    next_id: AtomicU64,
    /// Id of the most recently touched segment (0: none), so that touching it again
    /// (every append to the same active segment) skips the lock and the LRU update.
    /// Only written under `inner`'s lock; whenever it names a segment, that segment is
    /// in the LRU (it is the newest entry, and `forget` clears it).
    mru: AtomicU64,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    by_id: HashMap<u64, (u64, Weak<Segment>)>,
    by_tick: BTreeMap<u64, u64>,
}

impl HandleCache {
    pub fn new(cap: usize) -> Arc<HandleCache> {
        Arc::new(HandleCache {
            cap: cap.max(1),
            next_id: AtomicU64::new(1),
            mru: AtomicU64::new(0),
            inner: Mutex::new(Lru::default()),
        })
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks `seg` as just used (its resources are open) and closes the least
    /// recently used segments beyond the cap. Must be called with no segment locked.
    pub(crate) fn touch(&self, seg: &Arc<Segment>) {
        if self.mru.load(Ordering::Acquire) == seg.id() {
            // Already the newest entry: nothing would change (a racing touch of
            // another segment only makes this one slightly less recent).
            return;
        }
        let mut victims = Vec::new();
        {
            let mut lru = self.inner.lock();
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((old, _)) = lru.by_id.insert(seg.id(), (tick, Arc::downgrade(seg))) {
                lru.by_tick.remove(&old);
            }
            lru.by_tick.insert(tick, seg.id());
            self.mru.store(seg.id(), Ordering::Release);
            while lru.by_id.len() > self.cap {
                let Some((&t, &id)) = lru.by_tick.iter().next() else {
                    break;
                };
                lru.by_tick.remove(&t);
                if let Some((_, w)) = lru.by_id.remove(&id) {
                    victims.push(w);
                }
            }
        }
        for v in victims {
            if let Some(s) = v.upgrade() {
                s.release_handles();
            }
        }
    }

    pub(crate) fn forget(&self, id: u64) {
        let mut lru = self.inner.lock();
        let _ = self
            .mru
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire);
        if let Some((t, _)) = lru.by_id.remove(&id) {
            lru.by_tick.remove(&t);
        }
    }

    /// Segments whose resources are currently open (as far as the cache knows).
    pub fn open_segments(&self) -> usize {
        self.inner.lock().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;

    #[test]
    fn touching_the_newest_segment_again_keeps_the_lru_exact() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HandleCache::new(1);
        let config = LogConfig::default();
        // `create` touches each new segment; with a cap of 1, `b` evicts `a`.
        let a = Segment::create(dir.path(), 0, &config, &cache).unwrap();
        let b = Segment::create(dir.path(), 10, &config, &cache).unwrap();
        assert_eq!(cache.open_segments(), 1);
        assert_eq!(cache.mru.load(Ordering::Relaxed), b.id());
        // Fast path: nothing changes.
        cache.touch(&b);
        assert_eq!(cache.open_segments(), 1);
        // `a` is not the newest: it is re-registered and evicts `b`.
        cache.touch(&a);
        assert_eq!(cache.mru.load(Ordering::Relaxed), a.id());
        assert!(cache.inner.lock().by_id.contains_key(&a.id()));
        assert!(!cache.inner.lock().by_id.contains_key(&b.id()));
        // Dropping the newest segment clears the fast path.
        let a_id = a.id();
        drop(a);
        assert_eq!(cache.mru.load(Ordering::Relaxed), 0);
        assert!(!cache.inner.lock().by_id.contains_key(&a_id));
        assert_eq!(cache.open_segments(), 0);
    }
}
