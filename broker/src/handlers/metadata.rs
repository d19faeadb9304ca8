//! Metadata: brokers, topics and partition leaders; creates missing topics when
//! the client allows it and `auto.create.topics.enable` is on (Kafka's default).

use super::RequestContext;
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// Kafka's "authorized operations not requested" marker.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub fn handle(broker: &Broker, ctx: &RequestContext, req: MetadataRequest) -> MetadataResponse {
    let version = ctx.version();
    // Before v4 there is no flag and auto-creation is implied.
    let client_allows_create = version < 4 || req.allow_auto_topic_creation;
    let topics = match req.topics {
        // v0: an empty list means all topics; v1+: null means all topics.
        None => broker
            .meta
            .topics()
            .iter()
            .map(|t| topic_entry(broker, t))
            .collect(),
        Some(list) if list.is_empty() && version == 0 => broker
            .meta
            .topics()
            .iter()
            .map(|t| topic_entry(broker, t))
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|requested| {
                let name = match (&requested.name, requested.topic_id.is_nil()) {
                    (Some(n), _) => n.0.to_string(),
                    (None, false) => match broker.meta.topic_name_by_id(&requested.topic_id) {
                        Some(n) => n,
                        None => {
                            return MetadataResponseTopic::default()
                                .with_error_code(ResponseError::UnknownTopicId.code())
                                .with_topic_id(requested.topic_id)
                                .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
                        }
                    },
                    (None, true) => String::new(),
                };
                lookup_or_create(broker, &name, client_allows_create)
            })
            .collect(),
    };
    let cluster_id = broker.meta.cluster_id();
    MetadataResponse::default()
        .with_brokers(
            broker
                .live_brokers()
                .into_iter()
                .map(|(id, host, port)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(id))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port)
                })
                .collect(),
        )
        .with_cluster_id((!cluster_id.is_empty()).then(|| StrBytes::from_string(cluster_id)))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

fn error_entry(name: &str, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

fn lookup_or_create(
    broker: &Broker,
    name: &str,
    client_allows_create: bool,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.topic(name) {
        return topic_entry(broker, &topic);
    }
    if validate_topic_name(name).is_err() {
        return error_entry(name, ResponseError::InvalidTopicException);
    }
    if !(client_allows_create && broker.auto_create_enabled()) {
        return error_entry(name, ResponseError::UnknownTopicOrPartition);
    }
    match broker.auto_create(name) {
        Ok(topic) => topic_entry(broker, &topic),
        Err((code, message)) => {
            tracing::warn!(topic = name, %message, "auto-creating topic failed");
            error_entry(name, code)
        }
    }
}

fn topic_entry(broker: &Broker, topic: &TopicMeta) -> MetadataResponseTopic {
    let partitions = (0..topic.partitions)
        .map(|index| {
            let replicas: Vec<BrokerId> = broker
                .replicas_of(topic, index)
                .into_iter()
                .map(BrokerId)
                .collect();
            let (leader, epoch) = broker.partition_leader(&topic.name, index);
            // A leader clients cannot reach yet is no leader to them.
            let leader = if leader >= 0 && broker.broker_address(leader).is_none() {
                -1
            } else {
                leader
            };
            let entry = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(epoch)
                .with_replica_nodes(replicas.clone())
                .with_isr_nodes(replicas);
            if leader < 0 {
                entry.with_error_code(ResponseError::LeaderNotAvailable.code())
            } else {
                entry
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(crate::metadata::is_internal_topic(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}
