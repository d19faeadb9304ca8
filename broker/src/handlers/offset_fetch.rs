//! OffsetFetch: committed offsets with their leader epoch and metadata, exactly
//! as committed; -1 for partitions without a commit. Null topics = every
//! committed partition. v8+ asks for several groups at once; v9 carries the
//! member id and epoch of consumer-protocol (KIP-848) members, checked as
//! Kafka does (UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH).

use super::RequestContext;
use crate::coordinator::group::Committed;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

type Fetched = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// The group's committed offsets, or the error when this broker does not
/// coordinate the group.
fn fetch(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Fetched, ResponseError> {
    broker.groups.read_for(group, |g| g.fetch(group, topics))
}

fn parts(c: &Option<Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.clone()),
        None => (-1, -1, String::new()),
    }
}

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let version = ctx.version();
    if version >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                // v9 (KIP-848): a consumer group member's epoch must be current.
                let check = broker
                    .groups
                    .read_for(&g.group_id.0, |groups| {
                        groups.validate_offset_fetch(
                            &g.group_id.0,
                            g.member_id.as_deref(),
                            g.member_epoch,
                        )
                    })
                    .and_then(|checked| checked);
                if let Err(e) = check {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(e.code());
                }
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let fetched = match fetch(broker, &g.group_id.0, topics) {
                    Ok(f) => f,
                    Err(e) => {
                        return OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(e.code())
                    }
                };
                let topics = fetched
                    .into_iter()
                    .map(|(name, ps)| {
                        let partitions = ps
                            .iter()
                            .map(|(index, c)| {
                                let (offset, epoch, metadata) = parts(c);
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(*index)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(StrBytes::from_string(metadata)))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(StrBytes::from_string(name)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    // v1 has no "all topics" (null is v2+).
    let topics = match req.topics {
        Some(ts) => Some(
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect(),
        ),
        None if version >= 2 => None,
        None => Some(Vec::new()),
    };
    let fetched = match fetch(broker, &req.group_id.0, topics.clone()) {
        Ok(f) => f,
        Err(e) => return refused(e, version, topics),
    };
    let topics = fetched
        .into_iter()
        .map(|(name, ps)| {
            let partitions = ps
                .iter()
                .map(|(index, c)| {
                    let (offset, epoch, metadata) = parts(c);
                    let p = OffsetFetchResponsePartition::default()
                        .with_partition_index(*index)
                        .with_committed_offset(offset)
                        .with_metadata(Some(StrBytes::from_string(metadata)));
                    if version >= 5 {
                        p.with_committed_leader_epoch(epoch)
                    } else {
                        p
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// The answer before v8 when this broker does not coordinate the group: the
/// top-level error from v2 on; v0 and v1 have none, so every asked partition
/// carries it (as Kafka answers).
fn refused(
    e: ResponseError,
    version: i16,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> OffsetFetchResponse {
    if version >= 2 {
        return OffsetFetchResponse::default().with_error_code(e.code());
    }
    let topics = topics
        .unwrap_or_default()
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|index| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(index)
                                .with_committed_offset(-1)
                                .with_metadata(Some(StrBytes::default()))
                                .with_error_code(e.code())
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}
