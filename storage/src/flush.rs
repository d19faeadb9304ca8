//! Group commit: one thread at a time fsyncs on behalf of everyone waiting; callers
//! that arrive during an fsync wait for it and, if their data was appended after it
//! started, one of them leads the next round. N concurrent `wait_durable` callers thus
//! cost about two fsyncs, not N.

use crate::error::Result;
use crate::log::Log;
use crate::recovery::{write_small_file, RECOVERY_POINT};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) struct GroupCommit {
    state: Mutex<GcState>,
    cv: Condvar,
}

struct GcState {
    /// Every offset below this is on stable storage.
    durable: i64,
    in_progress: bool,
    /// Bumped by truncation: an fsync round that began before it must not raise `durable`.
    epoch: u64,
}

impl GroupCommit {
    pub fn new(durable: i64) -> Self {
        GroupCommit {
            state: Mutex::new(GcState {
                durable,
                in_progress: false,
                epoch: 0,
            }),
            cv: Condvar::new(),
        }
    }

    pub fn durable(&self) -> i64 {
        self.state.lock().durable
    }

    /// After a truncation to `end`.
    pub fn truncated(&self, end: i64) {
        let mut g = self.state.lock();
        g.durable = g.durable.min(end);
        g.epoch += 1;
    }
}

impl Log {
    /// Blocks until every offset `<= offset` is fsync'd (or, for an offset at or past
    /// the log end, until everything appended so far is), sharing fsyncs among callers.
    pub fn wait_durable(&self, offset: i64) -> Result<()> {
        let gc = &self.gc;
        loop {
            // Read before taking the group-commit lock (lock order: state, then gc).
            let target = offset.min(self.log_end_offset() - 1);
            let mut g = gc.state.lock();
            if g.durable > target {
                return Ok(());
            }
            if g.in_progress {
                gc.cv.wait(&mut g);
                continue;
            }
            g.in_progress = true;
            let epoch = g.epoch;
            drop(g);
            let res = self.sync_round();
            let mut g = gc.state.lock();
            g.in_progress = false;
            gc.cv.notify_all();
            let end = res?;
            if g.epoch == epoch {
                g.durable = g.durable.max(end);
            }
        }
    }

    /// fsyncs everything appended so far (group commit).
    pub fn flush(&self) -> Result<()> {
        let end = self.log_end_offset();
        if self.durable_offset() >= end {
            return Ok(());
        }
        self.wait_durable(end - 1)
    }

    /// One fsync round: rolled-but-unsynced segments (data and indexes), then the
    /// active segment's data. Returns the log end offset it covers.
    fn sync_round(&self) -> Result<i64> {
        let (end, rolled, active) = {
            let st = self.state.read();
            if st.closed {
                return Err(crate::error::StorageError::Closed {
                    path: self.dir.clone(),
                });
            }
            let active = st.active().clone();
            let file = {
                let mut inner = active.lock();
                active.file(&mut inner)?
            };
            (st.log_end, st.unflushed.clone(), (active, file))
        };
        for seg in &rolled {
            seg.sync_all()?;
        }
        active.0.sync_data(&active.1)?;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.last_flush_ms
            .store(crate::log::now_ms(), Ordering::Relaxed);
        if !rolled.is_empty() {
            let mut st = self.state.write();
            if st.closed {
                return Ok(end);
            }
            st.unflushed
                .retain(|s| !rolled.iter().any(|r| Arc::ptr_eq(r, s)));
            let point = st.unflushed.first().map_or(active.0.base, |s| s.base);
            if point > st.recovery_point {
                st.recovery_point = point;
                write_small_file(
                    &self.dir.join(RECOVERY_POINT),
                    point.to_string().as_bytes(),
                    false,
                )?;
            }
        }
        Ok(end)
    }

    /// fsyncs rolled segments only (the background thread's job under `FlushPolicy::Os`),
    /// so that recovery after a crash only has to scan the active segment.
    pub fn flush_rolled(&self) -> Result<()> {
        let rolled = self.state.read().unflushed.clone();
        if rolled.is_empty() {
            return Ok(());
        }
        for seg in &rolled {
            seg.sync_all()?;
        }
        let mut st = self.state.write();
        if st.closed {
            return Ok(());
        }
        st.unflushed
            .retain(|s| !rolled.iter().any(|r| Arc::ptr_eq(r, s)));
        let point = st.unflushed.first().map_or(st.active().base, |s| s.base);
        if point > st.recovery_point {
            st.recovery_point = point;
            write_small_file(
                &self.dir.join(RECOVERY_POINT),
                point.to_string().as_bytes(),
                false,
            )?;
        }
        Ok(())
    }
}
