//! CreateTopics: one result per requested topic, each with its own error
//! (TOPIC_ALREADY_EXISTS, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR,
//! INVALID_CONFIG, INVALID_TOPIC_EXCEPTION, INVALID_REPLICA_ASSIGNMENT) and
//! message; `validate_only` checks everything and creates nothing. From v5 the
//! result carries the partition count, replication factor and every topic config.

use super::RequestContext;
use crate::metadata::TopicMeta;
use crate::state::{Broker, TopicError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashMap};

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let version = ctx.version();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *counts.entry(t.name.0.to_string()).or_default() += 1;
    }
    let topics = req
        .topics
        .iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let outcome = if counts.get(&name).copied().unwrap_or(0) > 1 {
                Err((
                    ResponseError::InvalidRequest,
                    format!("topic '{name}' appears more than once in the request"),
                ))
            } else {
                create_one(broker, topic, req.validate_only)
            };
            if let Err((code, message)) = &outcome {
                tracing::debug!(topic = name, ?code, %message, "CreateTopics refused");
            }
            result_entry(broker, version, topic, outcome)
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn create_one(
    broker: &Broker,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<TopicMeta, TopicError> {
    let name = topic.name.0.as_str();
    if broker.topic(name).is_some() {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("topic '{name}' already exists"),
        ));
    }
    let mut configs = BTreeMap::new();
    for c in &topic.configs {
        let key = c.name.to_string();
        let Some(value) = &c.value else {
            return Err((
                ResponseError::InvalidConfig,
                format!("topic config {key} has a null value"),
            ));
        };
        if configs.insert(key.clone(), value.to_string()).is_some() {
            return Err((
                ResponseError::InvalidRequest,
                format!("topic config {key} is given more than once"),
            ));
        }
    }
    let (partitions, replication_factor) = if topic.assignments.is_empty() {
        (topic.num_partitions, topic.replication_factor)
    } else {
        check_assignments(broker, topic)?
    };
    broker.create_topic(name, partitions, replication_factor, configs, validate_only)
}

/// Manual replica assignments are accepted when they place every partition on
/// this node alone; they then decide the partition count and replication factor.
fn check_assignments(broker: &Broker, topic: &CreatableTopic) -> Result<(i32, i16), TopicError> {
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        return Err((
            ResponseError::InvalidRequest,
            "num_partitions and replication_factor must be -1 when replica assignments are given"
                .to_string(),
        ));
    }
    let node = broker.node_id();
    let invalid = |m: String| (ResponseError::InvalidReplicaAssignment, m);
    let mut indexes: Vec<i32> = topic
        .assignments
        .iter()
        .map(|a| a.partition_index)
        .collect();
    indexes.sort_unstable();
    if indexes
        .iter()
        .enumerate()
        .any(|(i, p)| *p as i64 != i as i64)
    {
        return Err(invalid(format!(
            "replica assignment partitions {indexes:?} are not a consecutive 0-based sequence"
        )));
    }
    for a in &topic.assignments {
        let replicas: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
        if replicas.is_empty() {
            return Err(invalid(format!(
                "partition {} has an empty replica list",
                a.partition_index
            )));
        }
        if let Some(other) = replicas.iter().find(|b| **b != node) {
            return Err(invalid(format!(
                "partition {} is assigned to broker {other}, but this cluster has only broker {node}",
                a.partition_index
            )));
        }
        if replicas.len() > 1 {
            return Err(invalid(format!(
                "partition {} lists broker {node} more than once",
                a.partition_index
            )));
        }
    }
    Ok((topic.assignments.len() as i32, 1))
}

fn result_entry(
    broker: &Broker,
    version: i16,
    topic: &CreatableTopic,
    outcome: Result<TopicMeta, TopicError>,
) -> CreatableTopicResult {
    let base = CreatableTopicResult::default().with_name(topic.name.clone());
    match outcome {
        Ok(created) => {
            let result = base.with_error_message(None);
            if version < 5 {
                return result;
            }
            let configs = broker
                .effective_config(&created)
                .values
                .into_iter()
                .map(|(name, (value, source))| {
                    CreatableTopicConfigs::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_read_only(false)
                        .with_config_source(source.kafka_code())
                        .with_is_sensitive(false)
                })
                .collect();
            let result = result
                .with_num_partitions(created.partitions)
                .with_replication_factor(created.replication_factor)
                .with_configs(Some(configs));
            // topic_id exists from v7; validate_only leaves it nil, as Kafka does.
            if version >= 7 {
                result.with_topic_id(created.id)
            } else {
                result
            }
        }
        Err((code, message)) => base
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_string(message))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, assert_encodes, broker, create, ctx,
    };
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopicConfig,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind, TopicName};

    fn topic(name: &str, partitions: i32, rf: i16) -> CreatableTopic {
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
    }

    fn config(key: &str, value: &str) -> CreatableTopicConfig {
        CreatableTopicConfig::default()
            .with_name(StrBytes::from_string(key.to_string()))
            .with_value(Some(StrBytes::from_string(value.to_string())))
    }

    fn assignment(index: i32, brokers: &[i32]) -> CreatableReplicaAssignment {
        CreatableReplicaAssignment::default()
            .with_partition_index(index)
            .with_broker_ids(brokers.iter().map(|b| BrokerId(*b)).collect())
    }

    fn run(
        b: &Broker,
        version: i16,
        topics: Vec<CreatableTopic>,
        validate_only: bool,
    ) -> CreateTopicsResponse {
        let req = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_validate_only(validate_only)
            .with_timeout_ms(1000);
        let resp = handle(b, &ctx(ApiKey::CreateTopics, version), req);
        assert_encodes(
            ApiKey::CreateTopics,
            version,
            ResponseKind::CreateTopics(resp.clone()),
        );
        resp
    }

    #[test]
    fn per_topic_errors_in_every_version() {
        for version in advertised_versions(ApiKey::CreateTopics) {
            let b = broker();
            create(&b, "exists", 1);
            let resp = run(
                &b,
                version,
                vec![
                    topic("ok", 3, 1).with_configs(vec![config("retention.ms", "1000")]),
                    topic("exists", 1, 1),
                    topic("zero", 0, 1),
                    topic("rf3", 1, 3),
                    topic("badcfg", 1, 1).with_configs(vec![config("retention.ms", "soon")]),
                    topic("unknowncfg", 1, 1).with_configs(vec![config("no.such.config", "1")]),
                    topic("bad name!", 1, 1),
                    topic("defaults", -1, -1),
                    topic("dup", 1, 1),
                    topic("dup", 1, 1),
                ],
                false,
            );
            let codes: Vec<(String, i16)> = resp
                .topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.error_code))
                .collect();
            assert_eq!(
                codes,
                vec![
                    ("ok".into(), 0),
                    ("exists".into(), ResponseError::TopicAlreadyExists.code()),
                    ("zero".into(), ResponseError::InvalidPartitions.code()),
                    ("rf3".into(), ResponseError::InvalidReplicationFactor.code()),
                    ("badcfg".into(), ResponseError::InvalidConfig.code()),
                    ("unknowncfg".into(), ResponseError::InvalidConfig.code()),
                    (
                        "bad name!".into(),
                        ResponseError::InvalidTopicException.code()
                    ),
                    ("defaults".into(), 0),
                    ("dup".into(), ResponseError::InvalidRequest.code()),
                    ("dup".into(), ResponseError::InvalidRequest.code()),
                ],
                "v{version}"
            );
            for t in &resp.topics {
                if t.error_code == 0 {
                    assert_eq!(t.error_message, None);
                } else {
                    assert!(
                        t.error_message.as_ref().is_some_and(|m| !m.is_empty()),
                        "v{version} {t:?}"
                    );
                }
            }
            assert!(resp.topics[4]
                .error_message
                .as_ref()
                .unwrap()
                .contains("not a whole number"));
            assert!(resp.topics[5]
                .error_message
                .as_ref()
                .unwrap()
                .contains("unknown topic config"));
            let ok = b.topic("ok").unwrap();
            assert_eq!(ok.partitions, 3);
            assert_eq!(
                ok.configs.get("retention.ms").map(String::as_str),
                Some("1000")
            );
            assert!(b.partition("ok", 2).is_some());
            assert_eq!(b.topic("defaults").unwrap().partitions, 1);
            assert!(b.topic("zero").is_none() && b.topic("dup").is_none());
            let first = &resp.topics[0];
            if version >= 5 {
                assert_eq!((first.num_partitions, first.replication_factor), (3, 1));
                let configs = first.configs.as_ref().unwrap();
                assert_eq!(configs.len(), crate::topic_config::TOPIC_CONFIGS.len());
                let retention = configs
                    .iter()
                    .find(|c| c.name.as_str() == "retention.ms")
                    .unwrap();
                assert_eq!(
                    (retention.value.as_deref(), retention.config_source),
                    (Some("1000"), 1)
                );
                let segment = configs
                    .iter()
                    .find(|c| c.name.as_str() == "segment.bytes")
                    .unwrap();
                assert_eq!(
                    (segment.value.as_deref(), segment.config_source),
                    (Some("1073741824"), 5)
                );
            }
            if version >= 7 {
                assert_eq!(first.topic_id, ok.id);
                assert!(!ok.id.is_nil());
            }
        }
    }

    #[test]
    fn validate_only_creates_nothing() {
        for version in advertised_versions(ApiKey::CreateTopics) {
            let b = broker();
            let resp = run(
                &b,
                version,
                vec![topic("t", 4, 1), topic("zero", 0, 1)],
                true,
            );
            assert_eq!(resp.topics[0].error_code, 0);
            assert_eq!(
                resp.topics[1].error_code,
                ResponseError::InvalidPartitions.code()
            );
            if version >= 5 {
                assert_eq!(resp.topics[0].num_partitions, 4);
            }
            assert!(b.topic("t").is_none());
            assert!(b.partition("t", 0).is_none());
        }
    }

    #[test]
    fn manual_assignments() {
        let b = broker();
        let node = b.node_id();
        let resp = run(
            &b,
            7,
            vec![
                topic("good", -1, -1)
                    .with_assignments(vec![assignment(1, &[node]), assignment(0, &[node])]),
                topic("other-broker", -1, -1).with_assignments(vec![assignment(0, &[node + 1])]),
                topic("twice", -1, -1).with_assignments(vec![assignment(0, &[node, node])]),
                topic("gap", -1, -1)
                    .with_assignments(vec![assignment(0, &[node]), assignment(2, &[node])]),
                topic("empty", -1, -1).with_assignments(vec![assignment(0, &[])]),
                topic("both", 2, -1).with_assignments(vec![assignment(0, &[node])]),
            ],
            false,
        );
        let codes: Vec<i16> = resp.topics.iter().map(|t| t.error_code).collect();
        let bad = ResponseError::InvalidReplicaAssignment.code();
        assert_eq!(
            codes,
            vec![0, bad, bad, bad, bad, ResponseError::InvalidRequest.code()]
        );
        assert_eq!(b.topic("good").unwrap().partitions, 2);
        assert_eq!(resp.topics[0].num_partitions, 2);
        assert!(b.topic("other-broker").is_none());
    }

    #[test]
    fn null_config_value_is_invalid_config() {
        let b = broker();
        let t = topic("t", 1, 1).with_configs(vec![CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str("retention.ms"))
            .with_value(None)]);
        let resp = run(&b, 4, vec![t], false);
        assert_eq!(
            resp.topics[0].error_code,
            ResponseError::InvalidConfig.code()
        );
    }
}
