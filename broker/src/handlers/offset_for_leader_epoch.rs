//! OffsetForLeaderEpoch: the end offset of a leader epoch (KIP-101 / KIP-279),
//! used by consumers to detect log truncation. On this single node every batch
//! carries the partition's one leader epoch, so a known epoch ends at the log
//! end offset, and a newer (or undefined) one is UNDEFINED (-1, -1).

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

const UNDEFINED_EPOCH: i32 = -1;
const UNDEFINED_OFFSET: i64 = -1;
/// current_leader_epoch = -1: the client does not ask for a fencing check.
const NO_EPOCH_CHECK: i32 = -1;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let base = EpochEndOffset::default().with_partition(p.partition);
                    match end_offset(
                        broker,
                        &topic.topic.0,
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    ) {
                        Ok((epoch, offset)) => {
                            base.with_leader_epoch(epoch).with_end_offset(offset)
                        }
                        Err(code) => base
                            .with_error_code(code.code())
                            .with_leader_epoch(UNDEFINED_EPOCH)
                            .with_end_offset(UNDEFINED_OFFSET),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

fn end_offset(
    broker: &Broker,
    topic: &str,
    index: i32,
    current: i32,
    requested: i32,
) -> Result<(i32, i64), ResponseError> {
    let partition = broker
        .partition(topic, index)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    if let Some(replica) = &partition.replica {
        // Replicated: epochs are Raft terms, and each batch carries its term.
        if !replica.is_leader() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let ours = replica.term() as i32;
        if current != NO_EPOCH_CHECK && current != ours {
            return Err(if current < ours {
                ResponseError::FencedLeaderEpoch
            } else {
                ResponseError::UnknownLeaderEpoch
            });
        }
        if requested < 0 {
            return Ok((UNDEFINED_EPOCH, UNDEFINED_OFFSET));
        }
        let found = replica.inspect(|g| g.log().epoch_end(requested as u64));
        return Ok(match found {
            Some((term, end)) => (term as i32, end),
            None => (UNDEFINED_EPOCH, UNDEFINED_OFFSET),
        });
    }
    let ours = partition.leader_epoch;
    if current != NO_EPOCH_CHECK {
        if current < ours {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        if current > ours {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
    }
    if requested < 0 || requested > ours {
        return Ok((UNDEFINED_EPOCH, UNDEFINED_OFFSET));
    }
    Ok((ours, partition.log.log_end_offset()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, append, assert_encodes, broker, create, ctx,
    };
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn epochs_in_every_version() {
        for version in advertised_versions(ApiKey::OffsetForLeaderEpoch) {
            let b = broker();
            create(&b, "t", 1);
            append(&b, "t", 0, 5);
            // (partition, current_leader_epoch, leader_epoch)
            let asks = [
                (0, -1, 0),
                (0, 0, 0),
                (0, -1, 1),
                (0, -1, -1),
                (0, 1, 0),
                (1, -1, 0),
            ];
            let partitions = asks
                .iter()
                .map(|(p, current, epoch)| {
                    OffsetForLeaderPartition::default()
                        .with_partition(*p)
                        .with_current_leader_epoch(*current)
                        .with_leader_epoch(*epoch)
                })
                .collect();
            let mut req = OffsetForLeaderEpochRequest::default().with_topics(vec![
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(partitions),
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("missing")))
                    .with_partitions(vec![
                        OffsetForLeaderPartition::default().with_leader_epoch(0)
                    ]),
            ]);
            if version >= 3 {
                req = req.with_replica_id(BrokerId(-1));
            }
            let resp = handle(&b, &ctx(ApiKey::OffsetForLeaderEpoch, version), req);
            assert_encodes(
                ApiKey::OffsetForLeaderEpoch,
                version,
                ResponseKind::OffsetForLeaderEpoch(resp.clone()),
            );
            let got: Vec<(i16, i32, i64)> = resp
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
                })
                .collect();
            let unknown = ResponseError::UnknownTopicOrPartition.code();
            assert_eq!(
                got,
                vec![
                    (0, 0, 5),
                    (0, 0, 5),
                    (0, -1, -1),
                    (0, -1, -1),
                    (ResponseError::UnknownLeaderEpoch.code(), -1, -1),
                    (unknown, -1, -1),
                    (unknown, -1, -1),
                ],
                "v{version}"
            );
        }
    }
}
