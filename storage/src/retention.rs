//! Retention: deleting whole old segments by `retention.ms` and `retention.bytes`,
//! and segments wholly below the log start offset. The active segment is never deleted.

use crate::error::Result;
use crate::log::Log;
use std::time::UNIX_EPOCH;

impl Log {
    /// Deletes segments due for deletion at `now_ms`; returns how many.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let config = self.config();
        let mut st = self.state.write();
        if st.closed {
            return Ok(0);
        }
        let start = st.log_start;
        let mut n = self.delete_front_locked(&mut st, |_, next| next <= start)?;
        if !config.cleanup_policy.deletes() {
            return Ok(n);
        }
        if let Some(ms) = config.retention_ms {
            let cutoff = now_ms.saturating_sub(ms);
            let stats = &self.stats;
            n += self.delete_front_locked(&mut st, |seg, next| {
                let max_ts = {
                    let mut inner = seg.lock();
                    seg.max_timestamp(&mut inner, &config, stats, Some(next))
                        .map_or(i64::MAX, |(ts, _)| ts)
                };
                // Segments without timestamps age by their file's modification time.
                let age_ts = if max_ts >= 0 {
                    max_ts
                } else {
                    std::fs::metadata(&seg.log_path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(i64::MAX, |d| d.as_millis() as i64)
                };
                age_ts < cutoff
            })?;
        }
        if let Some(limit) = config.retention_bytes {
            let total: u64 = st.segments.values().map(|s| s.size()).sum();
            let mut excess = total as i64 - limit as i64;
            n += self.delete_front_locked(&mut st, |seg, _| {
                let size = seg.size() as i64;
                if excess - size >= 0 {
                    excess -= size;
                    true
                } else {
                    false
                }
            })?;
        }
        if n > 0 {
            tracing::info!(dir = %self.dir.display(), segments = n, "retention deleted segments");
        }
        Ok(n)
    }
}
