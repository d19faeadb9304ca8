//! Produce: validate and append each partition's record set in arrival order,
//! then (for acks=all, or topics with flush.messages=1) wait until the data is
//! fsync'd before answering. acks=0 gets no response at all, errors included.

use super::{Pending, RequestContext};
use crate::metadata::now_ms;
use crate::metrics::Metrics;
use crate::partition::{AppendError, Appended, Partition};
use crate::state::Broker;
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;
use uuid::Uuid;
use weir_storage::Log;

struct PartitionOutcome {
    index: i32,
    result: Result<Appended, AppendError>,
    /// Set when the answer must wait for this offset to be durable.
    durable: Option<(Arc<Log>, i64)>,
    /// Replicated acks=all: the answer waits for a majority to commit.
    commit: Option<(Arc<Partition>, crate::replication::Ticket)>,
}

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: ProduceRequest) -> Pending {
    let acks = req.acks;
    let now = now_ms();
    // From another node's forwarding client (see `append_one`).
    let forwarded = ctx
        .header
        .client_id
        .as_ref()
        .is_some_and(|c| c.starts_with(crate::ingest::FORWARDER_CLIENT_PREFIX));
    let mut topics: Vec<(TopicName, Uuid, Vec<PartitionOutcome>)> =
        Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = if topic.topic_id.is_nil() {
            Some(topic.name.0.to_string())
        } else {
            broker.meta.topic_name_by_id(&topic.topic_id)
        };
        let outcomes = topic
            .partition_data
            .into_iter()
            .map(|p| {
                let mut commit = None;
                let (result, durable) = if !matches!(acks, -1 | 0 | 1) {
                    let message = format!("acks={acks} is not 0, 1 or -1");
                    (Err((ResponseError::InvalidRequiredAcks, message)), None)
                } else {
                    match &name {
                        Some(name) => match append_one(broker, name, p.index, p.records, acks, now, forwarded) {
                            Ok((a, partition)) if partition.replica.is_some() => {
                                // Replicated: durability is a majority's (under each
                                // replica's flush policy), not this node's fsync.
                                if acks == -1 {
                                    commit = a.commit.map(|t| (partition.clone(), t));
                                }
                                (Ok(a), None)
                            }
                            Ok((a, partition)) => {
                                let must_sync = acks == -1 || partition.config.read().flush_every_append();
                                let durable = (a.wrote && must_sync).then(|| (partition.log.clone(), a.last_offset));
                                (Ok(a), durable)
                            }
                            Err(e) => (Err(e), None),
                        },
                        None => (Err((ResponseError::UnknownTopicId, "unknown topic id".to_string())), None),
                    }
                };
                if let Err((code, message)) = &result {
                    Metrics::inc(&broker.metrics.produce_errors);
                    tracing::debug!(topic = ?name, partition = p.index, ?code, %message, "produce refused");
                }
                PartitionOutcome { index: p.index, result, durable, commit }
            })
            .collect();
        topics.push((topic.name, topic.topic_id, outcomes));
    }
    let version = ctx.version();
    let timeout = std::time::Duration::from_millis(req.timeout_ms.clamp(1, 300_000) as u64);
    Box::pin(async move {
        wait_durable(&mut topics).await;
        wait_committed(&mut topics, timeout).await;
        if acks == 0 {
            return None;
        }
        Some(ResponseKind::Produce(response(topics, version)))
    })
}

fn append_one(
    broker: &Broker,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
    acks: i16,
    now: i64,
    forwarded: bool,
) -> Result<(Appended, Arc<Partition>), AppendError> {
    // A CEP registration on a node that does not lead __cep_definitions-0 reaches
    // its leader through that node's forwarding client.
    let cep_forward = forwarded && topic == crate::cep::DEFINITIONS_TOPIC;
    if crate::metadata::is_internal_topic(topic) && !cep_forward {
        return Err((
            ResponseError::InvalidTopicException,
            format!("cannot append to internal topic {topic}"),
        ));
    }
    let partition = broker.partition(topic, index).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("this server does not host {topic}-{index}"),
        )
    })?;
    if acks == -1 && partition.replica.is_none() {
        let min_isr = partition.config.read().min_insync_replicas();
        let in_sync = 1;
        if min_isr > in_sync {
            return Err((
                ResponseError::NotEnoughReplicas,
                format!("min.insync.replicas={min_isr} but only {in_sync} replica is in sync"),
            ));
        }
    }
    let records = records.ok_or((ResponseError::CorruptMessage, "null record set".to_string()))?;
    let size = records.len();
    // The frame buffer is usually ours alone, so this takes it without a copy.
    let mut buf = records
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let appended = partition.append_with_acks(&mut buf, now, acks == -1)?;
    if appended.wrote {
        Metrics::add(&broker.metrics.produced_bytes, size as u64);
        Metrics::inc(&broker.metrics.produced_batches);
    }
    Ok((appended, partition))
}

/// Replicated acks=all: waits until a majority has each partition's entry.
async fn wait_committed(
    topics: &mut [(TopicName, Uuid, Vec<PartitionOutcome>)],
    timeout: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    for (_, _, outcomes) in topics.iter_mut() {
        for outcome in outcomes.iter_mut() {
            let Some((partition, ticket)) = outcome.commit.take() else {
                continue;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = partition.wait_committed(ticket, left).await {
                outcome.result = Err(e);
            }
        }
    }
}

/// Waits for every partition that needs it to be fsync'd; the storage engine
/// shares one fsync among concurrent waiters (group commit).
async fn wait_durable(topics: &mut [(TopicName, Uuid, Vec<PartitionOutcome>)]) {
    for (_, _, outcomes) in topics.iter_mut() {
        for outcome in outcomes.iter_mut() {
            let Some((log, offset)) = outcome.durable.take() else {
                continue;
            };
            let synced = tokio::task::spawn_blocking(move || log.wait_durable(offset)).await;
            let failure = match synced {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("fsync task failed: {e}")),
            };
            if let Some(message) = failure {
                tracing::error!(%message, "produce: waiting for durability failed");
                outcome.result = Err((ResponseError::KafkaStorageError, message));
            }
        }
    }
}

fn response(
    topics: Vec<(TopicName, Uuid, Vec<PartitionOutcome>)>,
    version: i16,
) -> ProduceResponse {
    let responses = topics
        .into_iter()
        .map(|(name, topic_id, outcomes)| {
            let partition_responses = outcomes
                .into_iter()
                .map(|o| {
                    let base = PartitionProduceResponse::default().with_index(o.index);
                    match o.result {
                        Ok(a) => base
                            .with_base_offset(a.base_offset)
                            .with_log_append_time_ms(a.log_append_time)
                            .with_log_start_offset(a.log_start_offset),
                        Err((code, message)) => base
                            .with_error_code(code.code())
                            .with_base_offset(-1)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(-1)
                            .with_error_message(
                                (version >= 8).then(|| StrBytes::from_string(message)),
                            ),
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(name)
                .with_topic_id(topic_id)
                .with_partition_responses(partition_responses)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}
