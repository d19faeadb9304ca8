//! OffsetDelete: removes committed offsets of a group, except for topics its
//! members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC).

use super::{Pending, RequestContext};
use crate::state::Broker;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    OffsetDeleteRequest, OffsetDeleteResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _ctx: &RequestContext, req: OffsetDeleteRequest) -> Pending {
    let topics: Vec<(String, Vec<i32>)> = req
        .topics
        .into_iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions
                    .into_iter()
                    .map(|p| p.partition_index)
                    .collect(),
            )
        })
        .collect();
    let (result, durable) = broker
        .groups
        .run_for(&req.group_id.0, |g| {
            g.delete_offsets(&req.group_id.0, topics)
        })
        .unwrap_or_else(|e| (Err(e), crate::coordinator::Durable::default()));
    Box::pin(async move {
        if let Err(e) = durable.wait().await {
            tracing::error!(error = %e, "offset deletion not durable");
        }
        let resp = match result {
            Err(e) => OffsetDeleteResponse::default().with_error_code(e.code()),
            Ok(topics) => {
                let topics = topics
                    .into_iter()
                    .map(|(name, parts)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, code)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect();
                        OffsetDeleteResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetDeleteResponse::default().with_topics(topics)
            }
        };
        Some(ResponseKind::OffsetDelete(resp))
    })
}
