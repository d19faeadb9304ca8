//! ConsumerGroupHeartbeat (KIP-848): joins, heartbeats, reconciles and leaves a
//! consumer-protocol group; the state machine is
//! [`crate::coordinator::consumer_group`]. The answer waits until any change
//! of the group is durable in `__consumer_offsets`.

use super::{Pending, RequestContext};
use crate::coordinator::consumer_group::{HeartbeatParams, HeartbeatResult, TopicLookup};
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;
use uuid::Uuid;

/// Topic metadata from the broker.
pub struct BrokerTopics<'a>(pub &'a Broker);

impl TopicLookup for BrokerTopics<'_> {
    fn by_name(&self, name: &str) -> Option<(Uuid, i32)> {
        self.0.topic(name).map(|t| (t.id, t.partitions))
    }
    fn name_of(&self, id: &Uuid) -> Option<String> {
        self.0.meta.topic_name_by_id(id)
    }
}

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: ConsumerGroupHeartbeatRequest,
) -> Pending {
    let params = HeartbeatParams {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed: req
            .subscribed_topic_names
            .map(|ts| ts.into_iter().map(|t| t.0.to_string()).collect()),
        // librdkafka sends an empty regex with a list of names.
        regex: req
            .subscribed_topic_regex
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string()),
        server_assignor: req.server_assignor.map(|s| s.to_string()),
        owned: req.topic_partitions.map(|tps| {
            tps.into_iter()
                .map(|tp| (tp.topic_id, tp.partitions))
                .collect()
        }),
        client_id: ctx
            .header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{}", ctx.peer.ip()),
    };
    let topics = BrokerTopics(broker);
    let group_id = params.group_id.clone();
    let (result, durable) = broker
        .groups
        .run_for(&group_id, |g| {
            g.consumer_heartbeat(params, &topics, now_ms())
        })
        .unwrap_or_else(|e| {
            let refused = HeartbeatResult {
                error: e.code(),
                message: Some(format!("this broker does not coordinate group {group_id}")),
                ..Default::default()
            };
            (refused, crate::coordinator::Durable::default())
        });
    Box::pin(async move {
        let result = match durable.wait().await {
            Ok(()) => result,
            Err(e) => {
                tracing::error!(error = %e, "consumer group state not durable");
                HeartbeatResult {
                    error: ResponseError::CoordinatorNotAvailable.code(),
                    message: Some("the group state could not be stored".into()),
                    ..Default::default()
                }
            }
        };
        Some(ResponseKind::ConsumerGroupHeartbeat(response(result)))
    })
}

/// The response (v0 and v1 have the same fields).
pub fn response(r: HeartbeatResult) -> ConsumerGroupHeartbeatResponse {
    let assignment = r.assignment.map(|parts| {
        Assignment::default().with_topic_partitions(
            parts
                .into_iter()
                .map(|(id, ps)| {
                    TopicPartitions::default()
                        .with_topic_id(id)
                        .with_partitions(ps)
                })
                .collect(),
        )
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(r.error)
        .with_error_message(r.message.map(StrBytes::from_string))
        .with_member_id(r.member_id.map(StrBytes::from_string))
        .with_member_epoch(r.member_epoch)
        .with_heartbeat_interval_ms(r.heartbeat_interval_ms)
        .with_assignment(assignment)
}
