//! Incremental fetch sessions (KIP-227). A consumer's first fetch with epoch 0
//! creates a session holding its partitions; later fetches name only what
//! changed, and the broker answers only for partitions with news.

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct SessionPartition {
    pub topic_id: Uuid,
    pub fetch_offset: i64,
    pub max_bytes: i32,
    /// What the last response told the client, to decide if there is news.
    pub last_high_watermark: i64,
    pub last_log_start: i64,
}

#[derive(Debug, Default)]
pub struct Session {
    /// The epoch the next request must carry.
    pub next_epoch: i32,
    pub partitions: BTreeMap<(String, i32), SessionPartition>,
    last_used: u64,
}

pub struct FetchSessions {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    next_id: i32,
    clock: u64,
    sessions: HashMap<i32, Session>,
}

fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

impl FetchSessions {
    pub fn new(capacity: usize) -> Self {
        FetchSessions {
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            capacity,
        }
    }

    /// Creates a session; evicts the least recently used one when full.
    pub fn create(&self, partitions: BTreeMap<(String, i32), SessionPartition>) -> i32 {
        let mut inner = self.inner.lock();
        if self.capacity == 0 {
            return 0;
        }
        if inner.sessions.len() >= self.capacity {
            if let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)
            {
                inner.sessions.remove(&oldest);
            }
        }
        let mut id = inner.next_id;
        while id == 0 || inner.sessions.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        inner.next_id = id.wrapping_add(1).max(1);
        inner.clock += 1;
        let last_used = inner.clock;
        inner.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions,
                last_used,
            },
        );
        id
    }

    pub fn remove(&self, id: i32) {
        self.inner.lock().sessions.remove(&id);
    }

    /// Runs `f` on session `id` if `epoch` is the one it expects, then advances the epoch.
    pub fn with_session<R>(
        &self,
        id: i32,
        epoch: i32,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<R, ResponseError> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let session = inner
            .sessions
            .get_mut(&id)
            .ok_or(ResponseError::FetchSessionIdNotFound)?;
        if session.next_epoch != epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch);
        }
        session.last_used = clock;
        let result = f(session);
        session.next_epoch = next_epoch(epoch);
        Ok(result)
    }

    /// Updates what was last reported for a partition of a session.
    pub fn record_sent(&self, id: i32, key: &(String, i32), high_watermark: i64, log_start: i64) {
        if let Some(p) = self
            .inner
            .lock()
            .sessions
            .get_mut(&id)
            .and_then(|s| s.partitions.get_mut(key))
        {
            p.last_high_watermark = high_watermark;
            p.last_log_start = log_start;
        }
    }

    /// True when a session partition's high watermark and log start are what the
    /// client was last told: an incremental response can leave it out.
    pub fn with_peek(
        &self,
        id: i32,
        key: &(String, i32),
        high_watermark: i64,
        log_start: i64,
    ) -> bool {
        self.inner
            .lock()
            .sessions
            .get(&id)
            .and_then(|s| s.partitions.get(key))
            .is_some_and(|p| {
                p.last_high_watermark == high_watermark && p.last_log_start == log_start
            })
    }

    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: i64) -> SessionPartition {
        SessionPartition {
            topic_id: Uuid::nil(),
            fetch_offset: offset,
            max_bytes: 1,
            last_high_watermark: -1,
            last_log_start: -1,
        }
    }

    #[test]
    fn epochs_must_follow_each_other() {
        let s = FetchSessions::new(10);
        let id = s.create(BTreeMap::from([(("t".to_string(), 0), part(0))]));
        assert!(id > 0);
        assert_eq!(s.with_session(id, 1, |x| x.partitions.len()), Ok(1));
        assert_eq!(
            s.with_session(id, 1, |_| ()),
            Err(ResponseError::InvalidFetchSessionEpoch)
        );
        assert_eq!(s.with_session(id, 2, |_| ()), Ok(()));
        assert_eq!(
            s.with_session(id + 100, 1, |_| ()),
            Err(ResponseError::FetchSessionIdNotFound)
        );
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let s = FetchSessions::new(2);
        let a = s.create(BTreeMap::new());
        let b = s.create(BTreeMap::new());
        s.with_session(a, 1, |_| ()).unwrap();
        let c = s.create(BTreeMap::new());
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.with_session(b, 1, |_| ()),
            Err(ResponseError::FetchSessionIdNotFound)
        );
        assert!(s.with_session(c, 1, |_| ()).is_ok());
    }
}
