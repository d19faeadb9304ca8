//! One partition on this broker: its log, its idempotent-producer state, and
//! the fetch requests waiting for new data.

use crate::producer_state::{ProducerStates, SeqCheck};
use crate::topic_config::EffectiveConfig;
use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use tokio::sync::Notify;
use weir_protocol::records::{self, BatchHeader};
use weir_storage::{Log, StorageError};

pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: Arc<Log>,
    pub config: RwLock<EffectiveConfig>,
    /// The leader epoch stamped into appended batches (Raft term once replicated).
    pub leader_epoch: i32,
    /// Held across the idempotence check and the append so that both see the same
    /// state, and batches of one producer are appended in sequence order.
    producers: Mutex<ProducerStates>,
    waiters: Mutex<Vec<Arc<Notify>>>,
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
}

pub type AppendError = (ResponseError, String);

impl Partition {
    pub fn new(topic: &str, index: i32, log: Arc<Log>, config: EffectiveConfig) -> Self {
        let partition = Partition {
            topic: topic.to_string(),
            index,
            log,
            config: RwLock::new(config),
            leader_epoch: 0,
            producers: Mutex::new(ProducerStates::default()),
            waiters: Mutex::new(Vec::new()),
        };
        partition.rebuild_producer_state();
        partition
    }

    /// Replays batch headers so idempotent producers keep their sequence state
    /// across restarts. A future snapshot file will make this O(1).
    fn rebuild_producer_state(&self) {
        let mut states = self.producers.lock();
        let mut offset = self.log.log_start_offset();
        while offset < self.log.log_end_offset() {
            let Ok(read) = self.log.read(offset, 4 << 20, true) else {
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
    }

    /// The offset below which records are committed and visible to consumers. On a
    /// single node an appended record is committed; replication will make this the
    /// Raft commit index.
    pub fn high_watermark(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// Validates and appends a produce request's record set for this partition.
    /// Headers are checked here; the storage engine checks each CRC once as it
    /// appends, and appends nothing if any batch is bad.
    pub fn append(&self, record_set: &mut [u8], now_ms: i64) -> Result<Appended, AppendError> {
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
        })
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
