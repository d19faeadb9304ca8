//! CreatePartitions: raises a topic's partition count; one result per topic,
//! each with its own error and message; `validate_only` changes nothing.

use super::RequestContext;
use crate::state::{Broker, TopicError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;
use std::collections::HashMap;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *counts.entry(t.name.0.to_string()).or_default() += 1;
    }
    let results = req
        .topics
        .iter()
        .map(|topic| {
            let name = topic.name.0.as_str();
            let outcome = if counts.get(name).copied().unwrap_or(0) > 1 {
                Err((
                    ResponseError::InvalidRequest,
                    format!("topic '{name}' appears more than once in the request"),
                ))
            } else {
                grow(broker, topic, req.validate_only)
            };
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            match outcome {
                Ok(()) => result.with_error_message(None),
                Err((code, message)) => {
                    tracing::debug!(topic = name, ?code, %message, "CreatePartitions refused");
                    result
                        .with_error_code(code.code())
                        .with_error_message(Some(StrBytes::from_string(message)))
                }
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

fn grow(
    broker: &Broker,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), TopicError> {
    let name = topic.name.0.as_str();
    super::delete_topics::refuse_internal(name, "partition count cannot be changed")?;
    // The count is checked before the assignments, as Kafka does.
    broker.create_partitions(name, topic.count, true)?;
    if let Some(assignments) = &topic.assignments {
        let current = broker.topic(name).map_or(0, |t| t.partitions);
        let added = i64::from(topic.count) - i64::from(current);
        let invalid = |m: String| (ResponseError::InvalidReplicaAssignment, m);
        if assignments.len() as i64 != added {
            return Err(invalid(format!(
                "adding {added} partitions to '{name}' needs {added} replica assignments, got {}",
                assignments.len()
            )));
        }
        let node = broker.node_id();
        for (i, a) in assignments.iter().enumerate() {
            let replicas: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
            if replicas != [node] {
                return Err(invalid(format!(
                    "new partition {} is assigned to brokers {replicas:?}, but this cluster has only broker {node}",
                    i64::from(current) + i as i64
                )));
            }
        }
    }
    broker.create_partitions(name, topic.count, validate_only)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, assert_encodes, broker, create, ctx, reopen,
    };
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment;
    use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind, TopicName};

    fn topic(name: &str, count: i32) -> CreatePartitionsTopic {
        CreatePartitionsTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_count(count)
            .with_assignments(None)
    }

    fn run(
        b: &Broker,
        version: i16,
        topics: Vec<CreatePartitionsTopic>,
        validate_only: bool,
    ) -> CreatePartitionsResponse {
        let req = CreatePartitionsRequest::default()
            .with_topics(topics)
            .with_validate_only(validate_only);
        let resp = handle(b, &ctx(ApiKey::CreatePartitions, version), req);
        assert_encodes(
            ApiKey::CreatePartitions,
            version,
            ResponseKind::CreatePartitions(resp.clone()),
        );
        resp
    }

    #[test]
    fn per_topic_errors_in_every_version() {
        for version in advertised_versions(ApiKey::CreatePartitions) {
            let b = broker();
            create(&b, "a", 1);
            create(&b, "b", 3);
            create(&b, "c", 1);
            let node = b.node_id();
            let assigned = |brokers: Vec<Vec<i32>>| {
                Some(
                    brokers
                        .into_iter()
                        .map(|ids| {
                            CreatePartitionsAssignment::default()
                                .with_broker_ids(ids.into_iter().map(BrokerId).collect())
                        })
                        .collect(),
                )
            };
            let resp = run(
                &b,
                version,
                vec![
                    topic("a", 4),
                    topic("b", 2),
                    topic("missing", 2),
                    topic("c", 3).with_assignments(assigned(vec![vec![node], vec![node + 1]])),
                    topic("c", 3),
                ],
                false,
            );
            let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
            assert_eq!(
                codes,
                vec![
                    0,
                    ResponseError::InvalidPartitions.code(),
                    ResponseError::UnknownTopicOrPartition.code(),
                    ResponseError::InvalidRequest.code(),
                    ResponseError::InvalidRequest.code(),
                ],
                "v{version}"
            );
            assert_eq!(resp.results[0].error_message, None);
            assert!(resp.results[1]
                .error_message
                .as_ref()
                .unwrap()
                .contains("must be larger"));
            assert_eq!(b.topic("a").unwrap().partitions, 4);
            assert!(b.partition("a", 3).is_some());

            let resp = run(
                &b,
                version,
                vec![topic("c", 3).with_assignments(assigned(vec![vec![node], vec![node + 1]]))],
                false,
            );
            assert_eq!(
                resp.results[0].error_code,
                ResponseError::InvalidReplicaAssignment.code()
            );
            let resp = run(
                &b,
                version,
                vec![topic("c", 3).with_assignments(assigned(vec![vec![node]]))],
                false,
            );
            assert_eq!(
                resp.results[0].error_code,
                ResponseError::InvalidReplicaAssignment.code()
            );
            let resp = run(
                &b,
                version,
                vec![topic("c", 3).with_assignments(assigned(vec![vec![node], vec![node]]))],
                false,
            );
            assert_eq!(resp.results[0].error_code, 0);
            assert_eq!(b.topic("c").unwrap().partitions, 3);

            let b = reopen(b);
            assert_eq!(b.topic("a").unwrap().partitions, 4);
            assert!(b.partition("a", 3).is_some());
        }
    }

    #[test]
    fn validate_only_changes_nothing() {
        let b = broker();
        create(&b, "a", 1);
        let resp = run(&b, 3, vec![topic("a", 5), topic("missing", 2)], true);
        assert_eq!(resp.results[0].error_code, 0);
        assert_eq!(
            resp.results[1].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert_eq!(b.topic("a").unwrap().partitions, 1);
        assert!(b.partition("a", 1).is_none());
    }
}
