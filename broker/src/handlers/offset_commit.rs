//! OffsetCommit: validates the member and generation, stores offset, leader
//! epoch and metadata in `__consumer_offsets`, and answers once that is fsync'd.

use super::{Pending, RequestContext};
use crate::coordinator::machine::{CommitParams, OffsetToCommit};
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, ResponseKind, TopicName,
};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: OffsetCommitRequest) -> Pending {
    let version = ctx.version();
    let group_id = req.group_id.0.to_string();
    let params = CommitParams {
        group_id: group_id.clone(),
        generation: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        group_instance_id: if version >= 7 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        },
    };
    // (topic, partition, error) in request order; `None` = to commit.
    let mut results: Vec<(TopicName, Vec<(i32, Option<i16>)>)> =
        Vec::with_capacity(req.topics.len());
    let mut to_commit = Vec::new();
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let mut parts = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            if broker.partition(&name, p.partition_index).is_none() {
                parts.push((
                    p.partition_index,
                    Some(ResponseError::UnknownTopicOrPartition.code()),
                ));
                continue;
            }
            parts.push((p.partition_index, None));
            to_commit.push(OffsetToCommit {
                topic: name.clone(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.map(|m| m.to_string()),
            });
        }
        results.push((topic.name, parts));
    }
    let now = now_ms();
    let (outcome, durable) = broker
        .groups
        .run_for(&group_id, |g| match g.validate_commit(&params, now) {
            Ok(()) => Ok(g.commit(&group_id, to_commit, now)),
            Err(e) => Err(e.code()),
        })
        .unwrap_or_else(|e| (Err(e.code()), crate::coordinator::Durable::default()));
    Box::pin(async move {
        let stored = durable.wait().await;
        if let Err(e) = &stored {
            tracing::error!(group = %group_id, error = %e, "offset commit not durable");
        }
        let mut codes = match &outcome {
            Ok(codes) => codes.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let topics = results
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|(index, err)| {
                        let code = match (err, &outcome) {
                            (Some(code), _) => code,
                            (None, Err(code)) => *code,
                            (None, Ok(_)) if stored.is_err() => {
                                ResponseError::CoordinatorNotAvailable.code()
                            }
                            (None, Ok(_)) => codes.next().unwrap_or(0),
                        };
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(index)
                            .with_error_code(code)
                    })
                    .collect();
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(partitions)
            })
            .collect();
        let _ = version;
        Some(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(topics),
        ))
    })
}
