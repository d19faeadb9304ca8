//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), earliest local
//! (-4, the same as earliest here), or the first offset at or after a timestamp.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let base = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    match lookup(broker, &topic.name.0, p.partition_index, p.timestamp) {
                        Ok((offset, timestamp)) => {
                            let r = base.with_offset(offset).with_timestamp(timestamp);
                            // leader_epoch exists from v4 on; setting it earlier fails encoding.
                            if ctx.version() >= 4 {
                                r.with_leader_epoch(0)
                            } else {
                                r
                            }
                        }
                        Err(e) => base
                            .with_error_code(e.code())
                            .with_offset(-1)
                            .with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn lookup(
    broker: &Broker,
    topic: &str,
    index: i32,
    timestamp: i64,
) -> Result<(i64, i64), ResponseError> {
    let partition = broker.partition(topic, index).ok_or_else(|| {
        if broker.topic(topic).is_some_and(|m| index < m.partitions) {
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        }
    })?;
    if !partition.is_leader() {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    let log = &partition.log;
    let storage = |e: weir_storage::StorageError| {
        tracing::error!(topic, partition = index, error = %e, "ListOffsets");
        ResponseError::KafkaStorageError
    };
    Ok(match timestamp {
        LATEST => (partition.high_watermark(), -1),
        EARLIEST | EARLIEST_LOCAL => (log.log_start_offset(), -1),
        MAX_TIMESTAMP => log
            .max_timestamp()
            .map_err(storage)?
            .map_or((-1, -1), |(ts, offset)| (offset, ts)),
        ts if ts >= 0 => log
            .offset_for_timestamp(ts)
            .map_err(storage)?
            .map_or((-1, -1), |(offset, ts)| (offset, ts)),
        _ => return Err(ResponseError::InvalidRequest),
    })
}
