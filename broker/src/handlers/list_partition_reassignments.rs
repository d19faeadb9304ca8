//! ListPartitionReassignments: partitions whose reassignment has not completed,
//! with every replica involved and which are being added or removed.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;

fn ids(v: Vec<i32>) -> Vec<BrokerId> {
    v.into_iter().map(BrokerId).collect()
}

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let mut by_topic: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    for o in broker.ongoing_reassignments(wanted.as_deref()) {
        by_topic.entry(o.topic).or_default().push(
            OngoingPartitionReassignment::default()
                .with_partition_index(o.partition)
                .with_replicas(ids(o.replicas))
                .with_adding_replicas(ids(o.adding))
                .with_removing_replicas(ids(o.removing)),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            OngoingTopicReassignment::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    #[test]
    fn nothing_in_progress_in_every_version() {
        for version in advertised_versions(ApiKey::ListPartitionReassignments) {
            let b = broker();
            let resp = handle(
                &b,
                &ctx(ApiKey::ListPartitionReassignments, version),
                ListPartitionReassignmentsRequest::default(),
            );
            assert_encodes(
                ApiKey::ListPartitionReassignments,
                version,
                ResponseKind::ListPartitionReassignments(resp.clone()),
            );
            assert!(resp.topics.is_empty());
        }
    }
}
