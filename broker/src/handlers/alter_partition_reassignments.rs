//! AlterPartitionReassignments: moves partitions to other replicas, or changes
//! their replication factor (cluster mode; see `crate::reassign`). A `null`
//! replica list cancels a reassignment in progress. v1 (KIP-860) may forbid
//! changing the replication factor.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let allow_rf_change = ctx.version() < 1 || req.allow_replication_factor_change;
    let responses = req
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let target: Option<Vec<i32>> =
                        p.replicas.map(|r| r.into_iter().map(|b| b.0).collect());
                    let result = match (&target, broker.topic(&name)) {
                        (Some(t), Some(meta))
                            if !allow_rf_change
                                && (0..meta.partitions).contains(&p.partition_index)
                                && t.len()
                                    != broker.replicas_of(&meta, p.partition_index).len() =>
                        {
                            Err((
                                ResponseError::InvalidReplicationFactor,
                                "the request does not allow changing the replication factor"
                                    .to_string(),
                            ))
                        }
                        _ => broker.reassign_partition(&name, p.partition_index, target),
                    };
                    let (code, message) = match result {
                        Ok(()) => (0, None),
                        Err((code, msg)) => (code.code(), Some(StrBytes::from_string(msg))),
                    };
                    ReassignablePartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                        .with_error_message(message)
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    name,
                )))
                .with_partitions(partitions)
        })
        .collect();
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind, TopicName};

    #[test]
    fn a_single_node_refuses_with_a_reason_in_every_version() {
        for version in advertised_versions(ApiKey::AlterPartitionReassignments) {
            let b = broker();
            b.create_topic("t", 1, 1, Default::default(), false)
                .unwrap();
            let req = AlterPartitionReassignmentsRequest::default().with_topics(vec![
                ReassignableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(0)
                        .with_replicas(Some(vec![BrokerId(1), BrokerId(2)]))]),
            ]);
            let resp = handle(&b, &ctx(ApiKey::AlterPartitionReassignments, version), req);
            assert_encodes(
                ApiKey::AlterPartitionReassignments,
                version,
                ResponseKind::AlterPartitionReassignments(resp.clone()),
            );
            let p = &resp.responses[0].partitions[0];
            assert_eq!(p.error_code, ResponseError::InvalidReplicaAssignment.code());
            assert!(p.error_message.is_some());
        }
    }
}
