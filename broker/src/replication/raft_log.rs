//! The partition log as a Raft log (Redpanda's design): Raft entries are not
//! stored a second time. Entry `i`'s data IS the record set written to the
//! partition log, and a small sidecar file maps each Raft index to its term and
//! the Kafka offsets its records occupy.
//!
//! Why a sidecar: Raft indexes are dense (one per entry) while an entry holds a
//! whole produce request (many records, many offsets), and Raft also writes
//! entries without records (the no-op a new leader appends). The sidecar holds
//! 32 bytes per entry (`index, term, base offset, end offset`), so the data is
//! written once and the mapping costs one small `write()` per Ready.
//!
//! Offsets are assigned when an entry is persisted, from the end of the previous
//! entry, and the term is stamped into each batch's partition leader epoch. The
//! Log Matching property makes both identical on every replica: the data on disk
//! is byte-identical for the same committed prefix.
//!
//! Recovery: the log recovers first (a torn tail is cut). Sidecar records whose
//! offsets reach past the recovered log end are dropped, and log data after the
//! last sidecar record (its record was never written, so the entry was never
//! reported persisted) is truncated. Term and vote are written before any message
//! that depends on them leaves (Raft's rule), and fsync'd when the partition
//! fsyncs its entries (`flush.messages=1`, and always for the metadata log); the
//! commit index is persisted lazily (Raft recovers it from the leader).
//!
//! Configuration changes (replicas added or removed) are Raft entries without
//! records: their sidecar record covers no offsets, and their payload is kept in
//! a second small file, `raft.confs`, written before the sidecar record. The
//! configuration they produce is written to the state file when they are
//! applied, with the index of the last one applied, so a restart neither loses
//! nor re-applies one.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_protocol::records;
use weir_storage::Log;

const ENTRIES_FILE: &str = "raft.entries";
const STATE_FILE: &str = "raft.state";
const CONFS_FILE: &str = "raft.confs";
const RECORD_LEN: usize = 32;
const MAX_ENTRIES_PER_READ: u64 = 1024;

/// Where one Raft entry's records sit in the partition log. `base == end` for an
/// entry without records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    pub term: u64,
    pub base: i64,
    pub end: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct PersistedState {
    term: u64,
    vote: u64,
    commit: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// The last configuration change entry applied to `voters`/`learners`.
    #[serde(default)]
    conf_index: u64,
    /// The configuration before the first entry (empty in files written before
    /// configuration changes existed: then `voters` never changed).
    #[serde(default)]
    initial_voters: Vec<u64>,
    /// The entry before the first one in the sidecar (a "snapshot" of the prefix
    /// that retention or an adopted single-node log already holds).
    snapshot_index: u64,
    snapshot_term: u64,
    /// The Kafka offset at which entry `snapshot_index + 1` starts.
    base_offset: i64,
}

pub struct RaftLog {
    log: Arc<Log>,
    dir: PathBuf,
    entries_file: File,
    state: PersistedState,
    /// `metas[k]` describes entry `state.snapshot_index + 1 + k`.
    metas: Vec<EntryMeta>,
    /// Configuration change entries: index -> (type, payload).
    confs: std::collections::BTreeMap<u64, (EntryType, Bytes)>,
    /// The commit index last written to the state file.
    persisted_commit: u64,
    /// fsync the term and vote as they change. Follows the partition's flush
    /// policy: with the default (page cache), a vote survives a process crash
    /// but not power loss, exactly like the entries it guards; fsync'ing votes
    /// of thousands of groups one file at a time stalled elections.
    pub sync_state: bool,
}

impl RaftLog {
    /// Opens (or creates, with `voters` as the initial configuration) the Raft
    /// state of the partition whose log is `log`.
    pub fn open(log: Arc<Log>, voters: &[u64]) -> anyhow::Result<RaftLog> {
        let dir = log.dir().to_path_buf();
        let state_path = dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<PersistedState>(&bytes)
                .with_context(|| format!("parsing {}", state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A new group, or a single-node log being adopted: what is already
                // in the log becomes the prefix before the first entry.
                let state = PersistedState {
                    term: 0,
                    vote: 0,
                    commit: 0,
                    voters: voters.to_vec(),
                    learners: Vec::new(),
                    conf_index: 0,
                    initial_voters: voters.to_vec(),
                    snapshot_index: 0,
                    snapshot_term: 0,
                    base_offset: log.log_end_offset(),
                };
                write_state(&state_path, &state, true)?;
                // A stale sidecar without a state file belongs to nothing.
                let _ = std::fs::remove_file(dir.join(ENTRIES_FILE));
                let _ = std::fs::remove_file(dir.join(CONFS_FILE));
                state
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
        };
        let entries_path = dir.join(ENTRIES_FILE);
        let mut entries_file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&entries_path)
            .with_context(|| format!("opening {}", entries_path.display()))?;
        let mut raw = Vec::new();
        entries_file
            .read_to_end(&mut raw)
            .with_context(|| format!("reading {}", entries_path.display()))?;
        let mut metas = Vec::with_capacity(raw.len() / RECORD_LEN);
        let mut expected_index = state.snapshot_index + 1;
        let mut expected_base = state.base_offset;
        let log_end = log.log_end_offset();
        for rec in raw.chunks_exact(RECORD_LEN) {
            let index = u64::from_le_bytes(rec[0..8].try_into()?);
            let term = u64::from_le_bytes(rec[8..16].try_into()?);
            let base = i64::from_le_bytes(rec[16..24].try_into()?);
            let end = i64::from_le_bytes(rec[24..32].try_into()?);
            // Anything out of sequence is a torn or stale tail: keep the prefix.
            if index != expected_index || base != expected_base || end < base || end > log_end {
                break;
            }
            metas.push(EntryMeta { term, base, end });
            expected_index += 1;
            expected_base = end;
        }
        let confs = read_confs(&dir.join(CONFS_FILE))?;
        let mut raft_log = RaftLog {
            log,
            dir,
            entries_file,
            persisted_commit: state.commit,
            state,
            metas,
            confs,
            sync_state: true,
        };
        // Payloads of entries past the recovered sidecar (or torn) are dropped.
        let last = raft_log.last_index();
        let stale = raft_log.confs.range(last + 1..).count();
        if stale > 0 || !confs_file_matches(&raft_log.dir.join(CONFS_FILE), &raft_log.confs)? {
            raft_log.confs.retain(|&i, _| i <= last);
            raft_log.rewrite_confs()?;
        }
        let valid_len = (raft_log.metas.len() * RECORD_LEN) as u64;
        if raw.len() as u64 != valid_len {
            tracing::warn!(
                dir = %raft_log.dir.display(),
                kept = raft_log.metas.len(),
                bytes = raw.len(),
                "raft sidecar had a torn or stale tail; truncating it"
            );
            raft_log.entries_file.set_len(valid_len)?;
        }
        let end = raft_log.end_offset();
        if raft_log.log.log_end_offset() > end {
            tracing::warn!(
                dir = %raft_log.dir.display(),
                from = raft_log.log.log_end_offset(),
                to = end,
                "truncating log data no raft entry accounts for"
            );
            raft_log.log.truncate_to(end)?;
        }
        raft_log.compact_deleted_prefix()?;
        let last = raft_log.last_index();
        if raft_log.state.commit > last {
            // Only possible if the OS lost written data (power loss without fsync).
            tracing::error!(
                dir = %raft_log.dir.display(),
                commit = raft_log.state.commit,
                last,
                "commit index beyond the recovered log; lowering it"
            );
            raft_log.state.commit = last;
        }
        Ok(raft_log)
    }

    /// Entries whose records retention, DeleteRecords or a trim removed are
    /// folded into the snapshot prefix at open: raft-rs must never be asked
    /// to replay them (it treats a missing committed entry as fatal). Data is
    /// only deleted below the high watermark, so they were committed and
    /// applied; configuration changes not yet applied stop the fold.
    fn compact_deleted_prefix(&mut self) -> anyhow::Result<()> {
        let log_start = self.log.log_start_offset();
        let mut n = self.metas.partition_point(|m| m.base < log_start);
        if let Some((&first_conf, _)) = self.confs.range(self.state.conf_index + 1..).next() {
            n = n.min(first_conf.saturating_sub(self.state.snapshot_index + 1) as usize);
        }
        if n == 0 {
            return Ok(());
        }
        let last = self.metas[n - 1];
        let index = self.state.snapshot_index + n as u64;
        tracing::info!(
            dir = %self.dir.display(),
            index,
            offset = last.end,
            "raft entries before the log start folded into the snapshot prefix"
        );
        self.metas.drain(..n);
        let mut out = Vec::with_capacity(self.metas.len() * RECORD_LEN);
        for (k, m) in self.metas.iter().enumerate() {
            out.extend_from_slice(&(index + 1 + k as u64).to_le_bytes());
            out.extend_from_slice(&m.term.to_le_bytes());
            out.extend_from_slice(&m.base.to_le_bytes());
            out.extend_from_slice(&m.end.to_le_bytes());
        }
        let path = self.dir.join(ENTRIES_FILE);
        let tmp = path.with_extension("entries.tmp");
        std::fs::write(&tmp, &out)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        self.entries_file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        self.confs.retain(|&i, _| i > index);
        self.rewrite_confs()?;
        self.state.snapshot_index = index;
        self.state.snapshot_term = last.term;
        self.state.base_offset = last.end;
        self.state.commit = self.state.commit.max(index);
        write_state(&self.dir.join(STATE_FILE), &self.state, true)?;
        self.persisted_commit = self.state.commit;
        Ok(())
    }

    /// The founding voters recorded in the Raft state under `dir`, if any.
    pub fn founders_in(dir: &Path) -> Option<Vec<u64>> {
        let bytes = std::fs::read(dir.join(STATE_FILE)).ok()?;
        let state: PersistedState = serde_json::from_slice(&bytes).ok()?;
        Some(if state.initial_voters.is_empty() {
            state.voters
        } else {
            state.initial_voters
        })
    }

    /// The configuration before the first entry.
    pub fn founders(&self) -> Vec<u64> {
        if self.state.initial_voters.is_empty() {
            self.state.voters.clone()
        } else {
            self.state.initial_voters.clone()
        }
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub fn last_index(&self) -> u64 {
        self.state.snapshot_index + self.metas.len() as u64
    }

    pub fn first_index(&self) -> u64 {
        self.state.snapshot_index + 1
    }

    /// The Kafka offset after the last entry.
    pub fn end_offset(&self) -> i64 {
        self.metas.last().map_or(self.state.base_offset, |m| m.end)
    }

    /// The Kafka offset after entry `index` (the high watermark when it is the
    /// commit index).
    pub fn offset_after(&self, index: u64) -> i64 {
        if index <= self.state.snapshot_index {
            return self.state.base_offset;
        }
        let k = (index - self.state.snapshot_index - 1) as usize;
        match self.metas.get(k) {
            Some(m) => m.end,
            None => self.end_offset(),
        }
    }

    pub fn meta(&self, index: u64) -> Option<EntryMeta> {
        if index <= self.state.snapshot_index {
            return None;
        }
        self.metas
            .get((index - self.state.snapshot_index - 1) as usize)
            .copied()
    }

    /// OffsetForLeaderEpoch: the largest term at or below `epoch` that has
    /// entries, and the offset where the next term's entries start (the log end
    /// if none). `None` when no entry has a term at or below `epoch`.
    pub fn epoch_end(&self, epoch: u64) -> Option<(u64, i64)> {
        // Terms never decrease along the log.
        let after = self.metas.partition_point(|m| m.term <= epoch);
        if after == 0 {
            return None;
        }
        let term = self.metas[after - 1].term;
        let end = self.metas.get(after).map_or(self.end_offset(), |m| m.base);
        Some((term, end))
    }

    pub fn commit(&self) -> u64 {
        self.state.commit
    }

    pub fn term(&self) -> u64 {
        self.state.term
    }

    /// Persists entries from a Ready. Entries at or below the last index replace
    /// the conflicting tail (the log and the sidecar are truncated first). All
    /// records of the Ready are written with one `append`.
    pub fn append(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index > self.last_index() + 1 || first.index <= self.state.snapshot_index {
            bail!(
                "raft entries start at {} but the log holds {}..={}",
                first.index,
                self.first_index(),
                self.last_index()
            );
        }
        if first.index <= self.last_index() {
            self.truncate_after(first.index - 1)?;
        }
        // Entries of one Ready usually share a term; batches are stamped per term.
        let mut start = 0;
        while start < entries.len() {
            let term = entries[start].term;
            let mut stop = start;
            while stop < entries.len() && entries[stop].term == term {
                stop += 1;
            }
            self.append_same_term(&entries[start..stop], term)?;
            start = stop;
        }
        Ok(())
    }

    fn append_same_term(&mut self, entries: &[Entry], term: u64) -> anyhow::Result<()> {
        let size: usize = entries.iter().map(|e| e.data.len()).sum();
        let mut buf = BytesMut::with_capacity(size);
        // Records per entry, to derive each entry's offsets from the one append.
        let mut counts = Vec::with_capacity(entries.len());
        let mut conf_records = Vec::new();
        for e in entries {
            if e.get_entry_type() != EntryType::EntryNormal {
                // No records: the payload goes to the confs file.
                conf_records.extend_from_slice(&encode_conf(e.index, e.get_entry_type(), &e.data));
                self.confs
                    .insert(e.index, (e.get_entry_type(), e.data.clone()));
                counts.push(0);
                continue;
            }
            let mut records = 0i64;
            for batch in records::batches(&e.data) {
                let (header, _) = batch.context("a raft entry holds a malformed record batch")?;
                records += i64::from(header.last_offset_delta) + 1;
            }
            counts.push(records);
            buf.extend_from_slice(&e.data);
        }
        if !conf_records.is_empty() {
            let path = self.dir.join(CONFS_FILE);
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            f.write_all(&conf_records)
                .and_then(|_| f.sync_data())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let mut next = self.end_offset();
        if !buf.is_empty() {
            let epoch = i32::try_from(term).context("raft term beyond the leader epoch range")?;
            let info = self
                .log
                .append(&mut buf, epoch)
                .context("appending raft entries to the partition log")?;
            if info.base_offset != next {
                bail!(
                    "partition log end {} differs from the raft log end {next}",
                    info.base_offset
                );
            }
        }
        let mut out = Vec::with_capacity(entries.len() * RECORD_LEN);
        for (e, n) in entries.iter().zip(counts) {
            let meta = EntryMeta {
                term,
                base: next,
                end: next + n,
            };
            next = meta.end;
            out.extend_from_slice(&e.index.to_le_bytes());
            out.extend_from_slice(&meta.term.to_le_bytes());
            out.extend_from_slice(&meta.base.to_le_bytes());
            out.extend_from_slice(&meta.end.to_le_bytes());
            self.metas.push(meta);
        }
        self.entries_file
            .write_all(&out)
            .context("writing the raft sidecar")?;
        Ok(())
    }

    /// Drops every entry after `index`, and their records.
    fn truncate_after(&mut self, index: u64) -> anyhow::Result<()> {
        let keep = (index - self.state.snapshot_index) as usize;
        if keep >= self.metas.len() {
            return Ok(());
        }
        let end = self.offset_after(index);
        tracing::info!(
            dir = %self.dir.display(),
            index,
            offset = end,
            "truncating a divergent raft tail"
        );
        self.metas.truncate(keep);
        self.entries_file
            .set_len((keep * RECORD_LEN) as u64)
            .context("truncating the raft sidecar")?;
        if self.confs.range(index + 1..).next().is_some() {
            self.confs.retain(|&i, _| i <= index);
            self.rewrite_confs()?;
        }
        self.log
            .truncate_to(end)
            .context("truncating the partition log")?;
        Ok(())
    }

    /// Rewrites the confs file from memory (after a truncation; rare).
    fn rewrite_confs(&self) -> anyhow::Result<()> {
        let path = self.dir.join(CONFS_FILE);
        let tmp = path.with_extension("confs.tmp");
        let mut bytes = Vec::new();
        for (index, (ty, data)) in &self.confs {
            bytes.extend_from_slice(&encode_conf(*index, *ty, data));
        }
        std::fs::write(&tmp, &bytes)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// The configuration in effect (voters, learners) and the index of the last
    /// configuration change applied to it.
    pub fn conf(&self) -> (Vec<u64>, Vec<u64>, u64) {
        (
            self.state.voters.clone(),
            self.state.learners.clone(),
            self.state.conf_index,
        )
    }

    /// Records the configuration produced by applying the change at `index`
    /// (written and fsync'd at once: a restart must start from it).
    pub fn set_conf(&mut self, cs: &ConfState, index: u64) -> anyhow::Result<()> {
        self.state.voters = cs.voters.clone();
        self.state.learners = cs.learners.clone();
        self.state.conf_index = index;
        write_state(&self.dir.join(STATE_FILE), &self.state, true)?;
        self.persisted_commit = self.state.commit;
        Ok(())
    }

    /// Installs a leader's snapshot (see `snapshot`): the log restarts, empty, at
    /// the offset the next entry starts at, and the Raft state starts after the
    /// snapshot's index, with its configuration.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> anyhow::Result<()> {
        let data: SnapshotData =
            serde_json::from_slice(&snap.data).context("decoding a raft snapshot")?;
        let meta = snap.get_metadata();
        tracing::warn!(
            dir = %self.dir.display(),
            index = meta.index,
            offset = data.base_offset,
            "behind the leader's log start: restarting the log at the leader's"
        );
        self.log
            .reset_to(data.base_offset)
            .context("restarting the partition log")?;
        self.metas.clear();
        self.entries_file
            .set_len(0)
            .context("truncating the raft sidecar")?;
        self.confs.clear();
        self.rewrite_confs()?;
        let cs = meta.get_conf_state();
        self.state.snapshot_index = meta.index;
        self.state.snapshot_term = meta.term;
        self.state.base_offset = data.base_offset;
        self.state.voters = cs.voters.clone();
        self.state.learners = cs.learners.clone();
        self.state.conf_index = self.state.conf_index.max(meta.index);
        self.state.commit = self.state.commit.max(meta.index);
        self.state.term = self.state.term.max(meta.term);
        write_state(&self.dir.join(STATE_FILE), &self.state, true)?;
        self.persisted_commit = self.state.commit;
        Ok(())
    }

    /// fsyncs the log and the sidecar (under `flush.messages=1` or on request).
    pub fn sync(&self) -> anyhow::Result<()> {
        self.log.flush().context("fsync of the partition log")?;
        self.entries_file
            .sync_data()
            .context("fsync of the raft sidecar")?;
        Ok(())
    }

    /// Records a HardState from a Ready. Term and vote are fsync'd at once; a
    /// change of the commit index alone is written lazily.
    pub fn set_hard_state(&mut self, hs: &HardState) -> anyhow::Result<()> {
        let durable_change = hs.term != self.state.term || hs.vote != self.state.vote;
        self.state.term = hs.term;
        self.state.vote = hs.vote;
        self.state.commit = hs.commit;
        if durable_change {
            write_state(&self.dir.join(STATE_FILE), &self.state, self.sync_state)?;
            self.persisted_commit = self.state.commit;
        }
        Ok(())
    }

    pub fn persisted_commit(&self) -> u64 {
        self.persisted_commit
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.state.commit = commit;
    }

    /// Writes the commit index (clean shutdown, or periodically).
    pub fn persist_state(&mut self) -> anyhow::Result<()> {
        write_state(&self.dir.join(STATE_FILE), &self.state, self.sync_state)?;
        self.persisted_commit = self.state.commit;
        Ok(())
    }

    /// The batches of offsets `[base, end)`, zero-copy slices of the segment maps,
    /// each with its base offset.
    fn batches_between(&self, base: i64, end: i64) -> Result<Vec<(i64, Bytes)>, RaftStorageError> {
        let mut out = Vec::new();
        let mut next = base;
        while next < end {
            let read = self
                .log
                .read_for_fetch(next, 64 << 20, true, end)
                .map_err(|e| storage_unavailable(&self.dir, e))?;
            if read.batches.is_empty() {
                return Err(storage_unavailable(
                    &self.dir,
                    format!("records {next}..{end} missing"),
                ));
            }
            for chunk in read.batches {
                for batch in records::batches(&chunk) {
                    let (header, range) = batch.map_err(|e| storage_unavailable(&self.dir, e))?;
                    if header.base_offset >= end {
                        break;
                    }
                    next = header.last_offset() + 1;
                    out.push((header.base_offset, chunk.slice_ref(range)));
                }
            }
        }
        Ok(out)
    }
}

/// Joins an entry's batches (usually one slice already).
fn join(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for p in many {
                joined.extend_from_slice(p);
            }
            joined.freeze()
        }
    }
}

fn storage_unavailable(dir: &Path, e: impl std::fmt::Display) -> RaftStorageError {
    tracing::error!(dir = %dir.display(), error = %e, "reading raft entries");
    RaftStorageError::Other(Box::new(std::io::Error::other(format!(
        "{}: {e}",
        dir.display()
    ))))
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut hs = HardState::default();
        hs.term = self.state.term;
        hs.vote = self.state.vote;
        hs.commit = self.state.commit;
        let cs = ConfState::from((self.state.voters.clone(), self.state.learners.clone()));
        Ok(RaftState::new(hs, cs))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.state.snapshot_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        // Byte sizes are known only after reading, so a call returns at most
        // MAX_ENTRIES_PER_READ entries (raft-rs accepts fewer than asked for).
        let mut metas = Vec::new();
        for index in low..high.min(low + MAX_ENTRIES_PER_READ) {
            let Some(meta) = self.meta(index) else {
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            };
            metas.push((index, meta));
        }
        let (Some((_, first)), Some((_, last))) = (metas.first(), metas.last()) else {
            return Ok(Vec::new());
        };
        // Retention may have deleted the records of old entries: to raft-rs they
        // are compacted (it would need a snapshot, which returns "unavailable").
        // A read failure is reported the same way: raft-rs treats any other
        // storage error as fatal.
        if first.base < self.log.log_start_offset() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        let batches = self
            .batches_between(first.base, last.end)
            .map_err(|_| raft::Error::Store(RaftStorageError::Compacted))?;
        let mut out = Vec::with_capacity(metas.len());
        let mut size = 0u64;
        let mut it = batches.into_iter().peekable();
        for (index, meta) in metas {
            let mut parts = Vec::new();
            while let Some((base, _)) = it.peek() {
                if *base >= meta.end {
                    break;
                }
                if let Some((_, b)) = it.next() {
                    parts.push(b);
                }
            }
            let mut e = Entry::default();
            e.index = index;
            e.term = meta.term;
            match self.confs.get(&index) {
                Some((ty, data)) => {
                    e.set_entry_type(*ty);
                    e.data = data.clone();
                }
                None => {
                    e.set_entry_type(EntryType::EntryNormal);
                    e.data = join(&parts);
                }
            }
            size += e.data.len() as u64;
            // At least one entry, as raft-rs requires.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.state.snapshot_index {
            return Ok(self.state.snapshot_term);
        }
        if idx < self.state.snapshot_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        match self.meta(idx) {
            Some(m) => Ok(m.term),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    /// A replica that needs entries whose records retention deleted gets a
    /// "snapshot" that holds no data: the last entry before the first readable
    /// one, its term, the configuration, and the offset the next entry starts
    /// at. The replica empties its log and restarts it at that offset (what a
    /// Kafka follower does when it falls behind the leader's log start), then
    /// copies the entries that follow.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable);
        let log_start = self.log.log_start_offset();
        // The first entry whose records are all still in the log.
        let skip = self.metas.partition_point(|m| m.base < log_start) as u64;
        let index = (self.state.snapshot_index + skip).min(self.state.commit);
        if index == 0 || index < self.state.snapshot_index {
            return Err(unavailable());
        }
        let term = if index == self.state.snapshot_index {
            self.state.snapshot_term
        } else {
            self.meta(index).ok_or_else(unavailable)?.term
        };
        let mut snap = Snapshot::default();
        snap.data = serde_json::to_vec(&SnapshotData {
            base_offset: self.offset_after(index),
        })
        .map_err(|_| unavailable())?
        .into();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(ConfState::from((
            self.state.voters.clone(),
            self.state.learners.clone(),
        )));
        Ok(snap)
    }
}

/// What a snapshot carries: where the entry after it starts.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    base_offset: i64,
}

/// One record of the confs file: `[index u64][type u32][len u32][payload]`.
fn encode_conf(index: u64, ty: EntryType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(ty as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Reads the confs file, keeping the longest well-formed prefix.
fn read_confs(path: &Path) -> anyhow::Result<std::collections::BTreeMap<u64, (EntryType, Bytes)>> {
    let mut confs = std::collections::BTreeMap::new();
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(confs),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut at = 0usize;
    while raw.len() >= at + 16 {
        let index = u64::from_le_bytes(raw[at..at + 8].try_into()?);
        let ty = u32::from_le_bytes(raw[at + 8..at + 12].try_into()?);
        let len = u32::from_le_bytes(raw[at + 12..at + 16].try_into()?) as usize;
        let Some(data) = raw.get(at + 16..at + 16 + len) else {
            break; // torn tail
        };
        let ty = match ty {
            1 => EntryType::EntryConfChange,
            2 => EntryType::EntryConfChangeV2,
            _ => break,
        };
        confs.insert(index, (ty, Bytes::copy_from_slice(data)));
        at += 16 + len;
    }
    Ok(confs)
}

/// Whether the file holds exactly `confs` (false after a torn write).
fn confs_file_matches(
    path: &Path,
    confs: &std::collections::BTreeMap<u64, (EntryType, Bytes)>,
) -> anyhow::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let expected: u64 = confs.values().map(|(_, d)| 16 + d.len() as u64).sum();
    Ok(len == expected)
}

/// Replaces the state file atomically (write, rename); `sync` also makes it
/// durable against power loss (fsync of the file and the directory).
fn write_state(path: &Path, state: &PersistedState, sync: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("state.tmp");
    let bytes = serde_json::to_vec(state)?;
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if !sync {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
