//! Fetch: long polling on min_bytes / max_wait_ms, max_bytes and
//! partition_max_bytes with KIP-74's "at least one batch", and incremental
//! fetch sessions (KIP-227). A fetch at an offset inside a batch returns that
//! whole batch; the client drops the records before its offset.

use super::{Pending, RequestContext};
use crate::fetch_session::SessionPartition;
use crate::metrics::Metrics;
use crate::state::Broker;
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// One partition to read in this fetch.
#[derive(Debug, Clone)]
struct Target {
    topic: String,
    topic_id: Uuid,
    partition: i32,
    fetch_offset: i64,
    max_bytes: i32,
    /// Set when the topic could not be resolved; answered with this error.
    error: Option<ResponseError>,
}

struct Read {
    target: Target,
    error: Option<ResponseError>,
    high_watermark: i64,
    log_start: i64,
    records: Bytes,
}

/// How the request relates to fetch sessions.
enum Mode {
    Sessionless,
    Full { session_id: i32 },
    Incremental { session_id: i32 },
}

const READ_COMMITTED: i8 = 1;

pub fn handle(broker: Arc<Broker>, ctx: &RequestContext, req: FetchRequest) -> Pending {
    let version = ctx.version();
    Box::pin(async move { Some(ResponseKind::Fetch(fetch(broker, version, req).await)) })
}

async fn fetch(broker: Arc<Broker>, version: i16, req: FetchRequest) -> FetchResponse {
    let requested = resolve_targets(&broker, &req);
    // Sessions exist from v7 on; older requests are always sessionless.
    let sessions = if version >= 7 {
        session_targets(&broker, &req, requested)
    } else {
        Ok((Mode::Sessionless, requested))
    };
    let (mode, targets) = match sessions {
        Ok(x) => x,
        Err(e) => {
            return FetchResponse::default()
                .with_error_code(e.code())
                .with_session_id(0)
        }
    };
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX
    } else {
        req.max_bytes
    } as usize;
    let min_bytes = req.min_bytes.max(0) as usize;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let reads = loop {
        let waiter = Arc::new(Notify::new());
        for t in &targets {
            if let Some(p) = broker.partition(&t.topic, t.partition) {
                p.add_waiter(waiter.clone());
            }
        }
        let reads = read_all(&broker, &targets, max_bytes);
        let bytes: usize = reads.iter().map(|r| r.records.len()).sum();
        let any_error = reads.iter().any(|r| r.error.is_some());
        if bytes >= min_bytes.max(1) || any_error || tokio::time::Instant::now() >= deadline {
            break reads;
        }
        if tokio::time::timeout_at(deadline, waiter.notified())
            .await
            .is_err()
        {
            // Timed out: one last read so that data that arrived just now is served.
            break read_all(&broker, &targets, max_bytes);
        }
    };
    let session_id = match mode {
        Mode::Sessionless => 0,
        Mode::Full { session_id } | Mode::Incremental { session_id } => session_id,
    };
    let incremental = matches!(mode, Mode::Incremental { .. });
    let read_committed = req.isolation_level == READ_COMMITTED;
    let mut by_topic: BTreeMap<(String, Uuid), Vec<PartitionData>> = BTreeMap::new();
    let mut order: Vec<(String, Uuid)> = Vec::new();
    for read in reads {
        let key = (read.target.topic.clone(), read.target.topic_id);
        if session_id != 0 {
            let partition_key = (read.target.topic.clone(), read.target.partition);
            if incremental && read.records.is_empty() && read.error.is_none() {
                let unchanged = broker.fetch_sessions.with_peek(
                    session_id,
                    &partition_key,
                    read.high_watermark,
                    read.log_start,
                );
                if unchanged {
                    continue;
                }
            }
            broker.fetch_sessions.record_sent(
                session_id,
                &partition_key,
                read.high_watermark,
                read.log_start,
            );
        }
        Metrics::add(&broker.metrics.fetched_bytes, read.records.len() as u64);
        let data = PartitionData::default()
            .with_partition_index(read.target.partition)
            .with_error_code(read.error.map_or(0, |e| e.code()))
            .with_high_watermark(read.high_watermark)
            .with_last_stable_offset(read.high_watermark)
            .with_log_start_offset(read.log_start)
            .with_aborted_transactions(if read_committed {
                Some(Vec::new())
            } else {
                None
            })
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(read.records));
        if !by_topic.contains_key(&key) {
            order.push(key.clone());
        }
        by_topic.entry(key).or_default().push(data);
    }
    let responses = order
        .into_iter()
        .filter_map(|key| {
            let partitions = by_topic.remove(&key)?;
            let (name, id) = key;
            let mut topic = FetchableTopicResponse::default().with_partitions(partitions);
            if version >= 13 {
                topic = topic.with_topic_id(id);
            } else {
                topic = topic.with_topic(TopicName(StrBytes::from_string(name)));
            }
            Some(topic)
        })
        .collect();
    FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(responses)
}

fn resolve_targets(broker: &Broker, req: &FetchRequest) -> Vec<Target> {
    let mut out = Vec::new();
    for topic in &req.topics {
        let (name, id, error) = if topic.topic_id.is_nil() {
            let name = topic.topic.0.to_string();
            let id = broker.topic(&name).map_or(Uuid::nil(), |t| t.id);
            (name, id, None)
        } else {
            match broker.meta.topic_name_by_id(&topic.topic_id) {
                Some(name) => (name, topic.topic_id, None),
                None => (
                    String::new(),
                    topic.topic_id,
                    Some(ResponseError::UnknownTopicId),
                ),
            }
        };
        for p in &topic.partitions {
            out.push(Target {
                topic: name.clone(),
                topic_id: id,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                error,
            });
        }
    }
    out
}

/// Applies KIP-227: which partitions this fetch covers, creating, updating or
/// closing the client's session as the (session id, epoch) pair says.
fn session_targets(
    broker: &Broker,
    req: &FetchRequest,
    requested: Vec<Target>,
) -> Result<(Mode, Vec<Target>), ResponseError> {
    let sessions = &broker.fetch_sessions;
    match (req.session_id, req.session_epoch) {
        (0, -1) => Ok((Mode::Sessionless, requested)),
        (id, -1) => {
            sessions.remove(id);
            Ok((Mode::Sessionless, requested))
        }
        (id, 0) => {
            if id != 0 {
                sessions.remove(id);
            }
            let parts = requested
                .iter()
                .filter(|t| t.error.is_none())
                .map(|t| {
                    let p = SessionPartition {
                        topic_id: t.topic_id,
                        fetch_offset: t.fetch_offset,
                        max_bytes: t.max_bytes,
                        last_high_watermark: -1,
                        last_log_start: -1,
                    };
                    ((t.topic.clone(), t.partition), p)
                })
                .collect();
            let session_id = sessions.create(parts);
            Ok((
                if session_id == 0 {
                    Mode::Sessionless
                } else {
                    Mode::Full { session_id }
                },
                requested,
            ))
        }
        (id, epoch) => {
            let forgotten: Vec<(String, i32)> = req
                .forgotten_topics_data
                .iter()
                .flat_map(|f| {
                    let name = if f.topic_id.is_nil() {
                        Some(f.topic.0.to_string())
                    } else {
                        broker.meta.topic_name_by_id(&f.topic_id)
                    };
                    let parts = f.partitions.clone();
                    name.into_iter()
                        .flat_map(move |n| parts.clone().into_iter().map(move |p| (n.clone(), p)))
                })
                .collect();
            let mut errors = Vec::new();
            let targets = sessions.with_session(id, epoch, |session| {
                for key in &forgotten {
                    session.partitions.remove(key);
                }
                for t in &requested {
                    if t.error.is_some() {
                        errors.push(t.clone());
                        continue;
                    }
                    let entry = session
                        .partitions
                        .entry((t.topic.clone(), t.partition))
                        .or_insert(SessionPartition {
                            topic_id: t.topic_id,
                            fetch_offset: t.fetch_offset,
                            max_bytes: t.max_bytes,
                            last_high_watermark: -1,
                            last_log_start: -1,
                        });
                    entry.fetch_offset = t.fetch_offset;
                    entry.max_bytes = t.max_bytes;
                }
                session
                    .partitions
                    .iter()
                    .map(|((topic, partition), p)| Target {
                        topic: topic.clone(),
                        topic_id: p.topic_id,
                        partition: *partition,
                        fetch_offset: p.fetch_offset,
                        max_bytes: p.max_bytes,
                        error: None,
                    })
                    .collect::<Vec<_>>()
            })?;
            let mut all = targets;
            all.extend(errors);
            Ok((Mode::Incremental { session_id: id }, all))
        }
    }
}

fn read_all(broker: &Broker, targets: &[Target], max_bytes: usize) -> Vec<Read> {
    let mut remaining = max_bytes;
    let mut served_any = false;
    targets
        .iter()
        .map(|t| {
            let mut read = Read { target: t.clone(), error: t.error, high_watermark: -1, log_start: -1, records: Bytes::new() };
            if read.error.is_some() {
                return read;
            }
            let Some(partition) = broker.partition(&t.topic, t.partition) else {
                // Cluster mode: the topic exists but another node holds the partition.
                let elsewhere = broker.topic(&t.topic).is_some_and(|m| t.partition < m.partitions);
                read.error = Some(if elsewhere {
                    ResponseError::NotLeaderOrFollower
                } else {
                    ResponseError::UnknownTopicOrPartition
                });
                return read;
            };
            if !partition.is_leader() {
                read.error = Some(ResponseError::NotLeaderOrFollower);
                return read;
            }
            let hw = partition.high_watermark();
            let log_start = partition.log.log_start_offset();
            read.high_watermark = hw;
            read.log_start = log_start;
            // Past the high watermark but inside the log is not out of range: a
            // new leader learns the commit index a moment after its election.
            if t.fetch_offset < log_start || t.fetch_offset > hw.max(partition.log.log_end_offset()) {
                read.error = Some(ResponseError::OffsetOutOfRange);
                return read;
            }
            if t.fetch_offset >= hw {
                return read;
            }
            let limit = (t.max_bytes.max(0) as usize).min(remaining);
            // KIP-74: the first partition with data returns at least one whole
            // batch even past the limits, or a large record could never be read.
            // Batches come as one slice per segment, and none at or past the high
            // watermark, so usually nothing is copied here.
            match partition.log.read_for_fetch(t.fetch_offset, limit, !served_any, hw) {
                Ok(result) => {
                    read.records = concat(result.batches);
                    remaining = remaining.saturating_sub(read.records.len());
                    served_any |= !read.records.is_empty();
                }
                Err(e) => {
                    tracing::error!(topic = %t.topic, partition = t.partition, error = %e, "fetch read failed");
                    read.error = Some(match e {
                        weir_storage::StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
                        _ => ResponseError::KafkaStorageError,
                    });
                }
            }
            read
        })
        .collect()
}

fn concat(mut batches: Vec<Bytes>) -> Bytes {
    match batches.len() {
        0 => Bytes::new(),
        1 => batches.pop().unwrap_or_default(),
        _ => {
            let total = batches.iter().map(Bytes::len).sum();
            let mut out = BytesMut::with_capacity(total);
            for b in batches {
                out.extend_from_slice(&b);
            }
            out.freeze()
        }
    }
}
