//! One partition on this broker: its log, its idempotent-producer state, and
//! the fetch requests waiting for new data.

use crate::producer_state::{ProducerStates, SeqCheck};
use crate::replication::node::{GroupHandle, RaftNode, StateMachine};
use crate::replication::{EntryMeta, Outcome, RaftLog, Ticket};
use crate::topic_config::EffectiveConfig;
use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use raft::prelude::Entry;
use std::sync::Arc;
use tokio::sync::Notify;
use weir_protocol::records::{self, BatchHeader};
use weir_storage::{Log, StorageError};

pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: Arc<Log>,
    pub config: RwLock<EffectiveConfig>,
    /// The leader epoch stamped into appended batches on a single node (a
    /// replicated partition uses the Raft term).
    pub leader_epoch: i32,
    /// Set when the partition is a Raft group (cluster mode).
    pub replica: Option<Arc<GroupHandle<PartitionMachine>>>,
    /// The nodes holding a replica (this node alone on a single node).
    pub replicas: Vec<i32>,
    /// Held across the idempotence check and the append so that both see the same
    /// state, and batches of one producer are appended in sequence order. A
    /// replicated partition keeps it inside its Raft group instead.
    producers: Mutex<ProducerStates>,
    waiters: Arc<Mutex<Vec<Arc<Notify>>>>,
}

/// A replicated partition's state derived from its log: idempotent producers'
/// sequences, updated as entries are written on every replica (so a new leader
/// has them), rebuilt when a divergent tail is truncated.
pub struct PartitionMachine {
    producers: ProducerStates,
}

impl StateMachine for PartitionMachine {
    fn persisted(&mut self, entries: &[(Entry, EntryMeta)], truncated: bool, log: &RaftLog) {
        if truncated {
            self.producers = producer_states_from(log.log());
            return;
        }
        for (entry, meta) in entries {
            // The entry holds the batches as proposed; offsets come from `meta`.
            let mut next = meta.base;
            for batch in records::batches(&entry.data) {
                let Ok((header, _)) = batch else { break };
                self.producers.record(&header, next);
                next += i64::from(header.last_offset_delta) + 1;
            }
        }
    }

    fn committed(&mut self, _entries: &[Entry]) {}
}

/// Replays batch headers so idempotent producers keep their sequence state
/// across restarts. A future snapshot file will make this O(1).
fn producer_states_from(log: &Log) -> ProducerStates {
    let mut states = ProducerStates::default();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Ok(read) = log.read(offset, 4 << 20, true) else {
            break;
        };
        if read.batches.is_empty() {
            break;
        }
        for chunk in &read.batches {
            for batch in records::batches(chunk) {
                let Ok((header, _)) = batch else { break };
                states.record(&header, header.base_offset);
                offset = header.last_offset() + 1;
            }
        }
    }
    states
}

/// What an append produced, for the produce response.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// False when the batch was a retried duplicate and nothing was written.
    pub wrote: bool,
    /// Replicated: the Raft entry to wait for before acks=all is answered.
    pub commit: Option<Ticket>,
}

pub type AppendError = (ResponseError, String);

impl Partition {
    pub fn new(topic: &str, index: i32, log: Arc<Log>, config: EffectiveConfig) -> Self {
        let producers = producer_states_from(&log);
        Partition {
            topic: topic.to_string(),
            index,
            log,
            config: RwLock::new(config),
            leader_epoch: 0,
            replica: None,
            replicas: Vec::new(),
            producers: Mutex::new(producers),
            waiters: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A partition replicated by a Raft group of `replicas` (node ids).
    pub fn new_replicated(
        topic: &str,
        index: i32,
        log: Arc<Log>,
        config: EffectiveConfig,
        node: &RaftNode,
        replicas: &[i32],
        initial: &[i32],
    ) -> anyhow::Result<Self> {
        let voters: Vec<u64> = replicas.iter().map(|&r| r as u64).collect();
        // A new replica starts from the configuration before the first entry and
        // applies the log's configuration changes in order.
        let initial: Vec<u64> = initial.iter().map(|&r| r as u64).collect();
        let raft_log = RaftLog::open(log.clone(), &initial)?;
        let producers = producer_states_from(&log);
        let waiters: Arc<Mutex<Vec<Arc<Notify>>>> = Arc::new(Mutex::new(Vec::new()));
        let wake = waiters.clone();
        let handle = node.open_group(
            (Arc::from(topic), index),
            raft_log,
            PartitionMachine { producers },
            config.flush_every_append(),
            false,
            voters.first().copied().unwrap_or(0),
            Box::new(move || {
                for w in std::mem::take(&mut *wake.lock()) {
                    w.notify_one();
                }
            }),
        )?;
        Ok(Partition {
            topic: topic.to_string(),
            index,
            log,
            config: RwLock::new(config),
            leader_epoch: 0,
            replica: Some(handle),
            replicas: replicas.to_vec(),
            producers: Mutex::new(ProducerStates::default()),
            waiters,
        })
    }

    /// The offset below which records are committed and visible to consumers: the
    /// log end on a single node, the Raft commit index's offset when replicated.
    pub fn high_watermark(&self) -> i64 {
        match &self.replica {
            Some(r) => r.high_watermark(),
            None => self.log.log_end_offset(),
        }
    }

    /// Whether this node serves produce and fetch for the partition.
    pub fn is_leader(&self) -> bool {
        self.replica.as_ref().is_none_or(|r| r.is_leader())
    }

    /// The node id of the leader (-1 if none is known).
    pub fn leader_id(&self, me: i32) -> i32 {
        match &self.replica {
            None => me,
            Some(r) => match r.leader() {
                0 => -1,
                id => id as i32,
            },
        }
    }

    pub fn current_leader_epoch(&self) -> i32 {
        match &self.replica {
            None => self.leader_epoch,
            Some(r) => r.term() as i32,
        }
    }

    /// Waits until a replicated append is committed by a majority.
    pub async fn wait_committed(
        &self,
        ticket: Ticket,
        timeout: std::time::Duration,
    ) -> Result<(), AppendError> {
        match self.committed(ticket, timeout).await? {
            None => Ok(()),
            Some(last) => {
                let log = self.log.clone();
                match tokio::task::spawn_blocking(move || log.wait_durable(last)).await {
                    Ok(r) => r.map_err(fsync_failed),
                    Err(e) => Err((
                        ResponseError::KafkaStorageError,
                        format!("fsync task failed: {e}"),
                    )),
                }
            }
        }
    }

    /// [`Partition::wait_committed`] for a thread that may block (HTTP/file ingest):
    /// the fsync of a one-voter group runs on the calling thread instead of being
    /// handed to the blocking pool and back.
    pub fn wait_committed_blocking(
        &self,
        ticket: Ticket,
        timeout: std::time::Duration,
    ) -> Result<(), AppendError> {
        let committed = crate::ingest::block_on(self.committed(ticket, timeout))
            .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))??;
        match committed {
            None => Ok(()),
            Some(last) => self.log.wait_durable(last).map_err(fsync_failed),
        }
    }

    /// Waits until a replicated append is committed (a majority of the replicas wrote
    /// it, each under its flush policy), without the extra fsync that acks=all adds on
    /// a one-voter group: the promise of acks=1 on a single node, of acks=all in a
    /// cluster. For a thread that may block (the CEP stage).
    pub fn wait_replicated_blocking(
        &self,
        ticket: Ticket,
        timeout: std::time::Duration,
    ) -> Result<(), AppendError> {
        crate::ingest::block_on(self.committed(ticket, timeout))
            .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?
            .map(|_| ())
    }

    /// Waits for the commit; the last offset still to fsync when a one-voter group
    /// committed records on its own write (acks=all keeps the single-node promise of
    /// an fsync before the answer).
    async fn committed(
        &self,
        ticket: Ticket,
        timeout: std::time::Duration,
    ) -> Result<Option<i64>, AppendError> {
        let Some(handle) = &self.replica else {
            return Ok(None);
        };
        // The group's own configuration, not the replica list it was opened
        // with: a reassignment may have changed the number of voters since.
        let one_voter = handle.inspect(|g| g.voters().len() == 1);
        let rx = handle.watch(ticket);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Outcome::Committed(meta))) if one_voter && meta.end > meta.base => {
                Ok(Some(meta.end - 1))
            }
            Ok(Ok(Outcome::Committed(_))) => Ok(None),
            Ok(Ok(Outcome::Lost)) | Ok(Err(_)) | Ok(Ok(Outcome::Pending)) => Err((
                ResponseError::NotLeaderOrFollower,
                "leadership changed before the records were committed".into(),
            )),
            Err(_) => Err((
                ResponseError::RequestTimedOut,
                "records not committed by a majority within the request timeout".into(),
            )),
        }
    }

    /// Validates and appends a produce request's record set for this partition.
    /// Headers are checked here; the storage engine checks each CRC once as it
    /// appends, and appends nothing if any batch is bad.
    pub fn append(&self, record_set: &mut [u8], now_ms: i64) -> Result<Appended, AppendError> {
        self.append_with_acks(record_set, now_ms, false)
    }

    /// `acks_all`: refuse with NOT_ENOUGH_REPLICAS when fewer replicas than
    /// `min.insync.replicas` are live (replicated partitions).
    pub fn append_with_acks(
        &self,
        record_set: &mut [u8],
        now_ms: i64,
        acks_all: bool,
    ) -> Result<Appended, AppendError> {
        let batches = records::parse_record_set(record_set).map_err(record_error)?;
        if batches.is_empty() {
            return Err((
                ResponseError::CorruptMessage,
                "produce request has no record batch".into(),
            ));
        }
        let config = self.config.read().clone();
        let max = config.max_message_bytes();
        for (header, range) in &batches {
            if range.len() > max {
                return Err((
                    ResponseError::MessageTooLarge,
                    format!(
                        "record batch of {} bytes exceeds max.message.bytes={max}",
                        range.len()
                    ),
                ));
            }
            if header.is_transactional() || header.is_control() {
                return Err((
                    ResponseError::InvalidRecord,
                    "transactional record batches are not supported yet".into(),
                ));
            }
        }
        let log_append_time = config.log_append_time();
        if log_append_time {
            // Restamping recomputes the CRC, so check the producer's CRC first.
            records::validate_record_set(record_set).map_err(record_error)?;
            for (_, range) in &batches {
                records::set_log_append_time(&mut record_set[range.clone()], now_ms);
            }
        }
        if let Some(handle) = &self.replica {
            return self.append_replicated(
                handle,
                record_set,
                &batches,
                acks_all,
                log_append_time,
                now_ms,
            );
        }
        let mut producers = self.producers.lock();
        let idempotent: Vec<&BatchHeader> = batches
            .iter()
            .map(|(h, _)| h)
            .filter(|h| h.has_producer_id())
            .collect();
        if !idempotent.is_empty() {
            if batches.len() != 1 {
                return Err((
                    ResponseError::InvalidRecord,
                    "an idempotent produce must carry one batch per partition".into(),
                ));
            }
            if let SeqCheck::Duplicate { base_offset } = producers.check(idempotent[0])? {
                let last = base_offset + i64::from(idempotent[0].last_offset_delta);
                return Ok(Appended {
                    base_offset,
                    last_offset: last,
                    log_append_time: -1,
                    log_start_offset: self.log.log_start_offset(),
                    wrote: false,
                    commit: None,
                });
            }
        }
        let info = self
            .log
            .append(record_set, self.leader_epoch)
            .map_err(storage_error)?;
        // Each batch got consecutive offsets starting at info.base_offset.
        let mut next = info.base_offset;
        for (header, _) in &batches {
            producers.record(header, next);
            next += i64::from(header.last_offset_delta) + 1;
        }
        drop(producers);
        self.wake_waiters();
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time: if log_append_time { now_ms } else { -1 },
            log_start_offset: info.log_start_offset,
            wrote: true,
            commit: None,
        })
    }

    fn append_replicated(
        &self,
        handle: &GroupHandle<PartitionMachine>,
        record_set: &[u8],
        batches: &[(BatchHeader, std::ops::Range<usize>)],
        acks_all: bool,
        log_append_time: bool,
        now_ms: i64,
    ) -> Result<Appended, AppendError> {
        let min_isr = i64::from(self.config.read().min_insync_replicas());
        let idempotent: Vec<&BatchHeader> = batches
            .iter()
            .map(|(h, _)| h)
            .filter(|h| h.has_producer_id())
            .collect();
        if !idempotent.is_empty() && batches.len() != 1 {
            return Err((
                ResponseError::InvalidRecord,
                "an idempotent produce must carry one batch per partition".into(),
            ));
        }
        // The storage engine checks CRCs as it appends, which on a replica is
        // after the entry is in the Raft log: check them before proposing.
        if !log_append_time {
            records::validate_record_set(record_set).map_err(record_error)?;
        }
        enum Step {
            Duplicate(i64),
            Proposed(Ticket),
        }
        let step = handle
            .with(|group, sm| -> Result<Step, AppendError> {
                if !group.is_leader() {
                    return Err((
                        ResponseError::NotLeaderOrFollower,
                        format!(
                            "this node is not the leader of {}-{}",
                            self.topic, self.index
                        ),
                    ));
                }
                if acks_all {
                    let live = handle.live_voters(group) as i64;
                    if live < min_isr {
                        return Err((
                            ResponseError::NotEnoughReplicas,
                            format!(
                                "min.insync.replicas={min_isr} but only {live} replica(s) are live"
                            ),
                        ));
                    }
                }
                if let Some(h) = idempotent.first() {
                    if let SeqCheck::Duplicate { base_offset } = sm.producers.check(h)? {
                        return Ok(Step::Duplicate(base_offset));
                    }
                }
                let ticket = group
                    .propose(record_set.to_vec())
                    .map_err(|e| (ResponseError::NotLeaderOrFollower, format!("{e:#}")))?;
                Ok(Step::Proposed(ticket))
            })
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))??;
        match step {
            Step::Duplicate(base_offset) => Ok(Appended {
                base_offset,
                last_offset: base_offset + i64::from(batches[0].0.last_offset_delta),
                log_append_time: -1,
                log_start_offset: self.log.log_start_offset(),
                wrote: false,
                commit: None,
            }),
            Step::Proposed(ticket) => {
                // The leader wrote the entry in the Ready that followed the proposal.
                let meta = handle
                    .inspect(|group| group.log().meta(ticket.index))
                    .filter(|m| m.term == ticket.term)
                    .ok_or((
                        ResponseError::NotLeaderOrFollower,
                        "leadership changed while appending".to_string(),
                    ))?;
                Ok(Appended {
                    base_offset: meta.base,
                    last_offset: meta.end - 1,
                    log_append_time: if log_append_time { now_ms } else { -1 },
                    log_start_offset: self.log.log_start_offset(),
                    wrote: true,
                    commit: Some(ticket),
                })
            }
        }
    }

    /// Registers a fetch waiting for data; it is woken by the next append.
    pub fn add_waiter(&self, waiter: Arc<Notify>) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|w| Arc::strong_count(w) > 1);
        waiters.push(waiter);
    }

    pub fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for w in waiters {
            w.notify_one();
        }
    }
}

fn record_error(e: records::RecordError) -> AppendError {
    let code = match e {
        records::RecordError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        _ => ResponseError::CorruptMessage,
    };
    (code, e.to_string())
}

pub fn storage_error(e: StorageError) -> AppendError {
    match e {
        StorageError::InvalidBatch { source, .. } => record_error(source),
        StorageError::OffsetOutOfRange { .. } => (ResponseError::OffsetOutOfRange, e.to_string()),
        e => (ResponseError::KafkaStorageError, e.to_string()),
    }
}

fn fsync_failed(e: weir_storage::StorageError) -> (ResponseError, String) {
    (
        ResponseError::KafkaStorageError,
        format!("fsync failed: {e}"),
    )
}
