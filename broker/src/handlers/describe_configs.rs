//! DescribeConfigs: every topic config of a topic (set on the topic:
//! DYNAMIC_TOPIC_CONFIG, otherwise the broker's value: DEFAULT_CONFIG), and the
//! broker's `[kafka]` settings (read-only). `configuration_keys` filters the
//! entries; an unknown topic is an error of that resource alone.

use super::RequestContext;
use crate::config::KAFKA_DEFAULTS;
use crate::metadata::validate_topic_name;
use crate::state::{Broker, TopicError};
use crate::topic_config::{ConfigSource, TOPIC_CONFIGS};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

/// Kafka's ConfigResource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's DescribeConfigs config sources.
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types (DescribeConfigs v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// One config entry before it is shaped for a version.
struct Entry {
    name: String,
    value: String,
    source: i8,
    read_only: bool,
    config_type: i8,
    /// (name, value, source), most specific first.
    synonyms: Vec<(String, String, i8)>,
}

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let version = ctx.version();
    let results = req
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe(broker, &resource) {
                Ok(entries) => {
                    let configs = entries
                        .into_iter()
                        .map(|e| entry(e, version, req.include_synonyms))
                        .collect();
                    result.with_error_message(None).with_configs(configs)
                }
                Err((code, message)) => {
                    tracing::debug!(resource = %resource.resource_name, ?code, %message, "DescribeConfigs refused");
                    result.with_error_code(code.code()).with_error_message(Some(StrBytes::from_string(message)))
                }
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(broker: &Broker, resource: &DescribeConfigsResource) -> Result<Vec<Entry>, TopicError> {
    let mut entries = match resource.resource_type {
        RESOURCE_TOPIC => topic_entries(broker, resource.resource_name.as_str())?,
        RESOURCE_BROKER => broker_entries(broker, resource.resource_name.as_str())?,
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!(
                    "resource type {other} is not supported; only topics (2) and brokers (4) are"
                ),
            ))
        }
    };
    // A null or empty key list means every config.
    if let Some(keys) = resource
        .configuration_keys
        .as_ref()
        .filter(|k| !k.is_empty())
    {
        entries.retain(|e| keys.iter().any(|k| k.as_str() == e.name));
    }
    Ok(entries)
}

fn topic_entries(broker: &Broker, name: &str) -> Result<Vec<Entry>, TopicError> {
    let Some(topic) = broker.topic(name) else {
        if let Err(message) = validate_topic_name(name) {
            return Err((ResponseError::InvalidTopicException, message));
        }
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        ));
    };
    let effective = broker.effective_config(&topic);
    Ok(TOPIC_CONFIGS
        .iter()
        .map(|(key, broker_key)| {
            let (value, source) = effective
                .values
                .get(*key)
                .cloned()
                .unwrap_or((String::new(), ConfigSource::Default));
            let broker_value = broker
                .config
                .get(broker_key)
                .unwrap_or_default()
                .to_string();
            let mut synonyms = Vec::new();
            if source == ConfigSource::Topic {
                synonyms.push((key.to_string(), value.clone(), source.kafka_code()));
            }
            synonyms.push((broker_key.to_string(), broker_value, SOURCE_DEFAULT));
            Entry {
                name: key.to_string(),
                value,
                source: source.kafka_code(),
                read_only: false,
                config_type: topic_config_type(key),
                synonyms,
            }
        })
        .collect())
}

fn broker_entries(broker: &Broker, name: &str) -> Result<Vec<Entry>, TopicError> {
    // An empty name means the cluster-wide defaults, which here are the same.
    let node = broker.node_id();
    if !name.is_empty() && name != node.to_string() {
        return Err((
            ResponseError::InvalidRequest,
            format!("broker '{name}' is not this broker; expected {node} or an empty name"),
        ));
    }
    Ok(broker
        .config
        .kafka
        .iter()
        .map(|(key, value)| {
            let default = KAFKA_DEFAULTS
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, v, _)| *v);
            let source = if default == Some(value.as_str()) {
                SOURCE_DEFAULT
            } else {
                SOURCE_STATIC_BROKER
            };
            Entry {
                name: key.clone(),
                value: value.clone(),
                source,
                read_only: true,
                config_type: broker_config_type(key, value),
                synonyms: vec![(key.clone(), value.clone(), source)],
            }
        })
        .collect())
}

fn entry(e: Entry, version: i16, include_synonyms: bool) -> DescribeConfigsResourceResult {
    let synonyms = if include_synonyms {
        e.synonyms
            .into_iter()
            .map(|(name, value, source)| {
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_string(name))
                    .with_value(Some(StrBytes::from_string(value)))
                    .with_source(source)
            })
            .collect()
    } else {
        Vec::new()
    };
    let result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(e.read_only)
        .with_config_source(e.source)
        .with_is_sensitive(false)
        .with_synonyms(synonyms)
        .with_documentation(None);
    // config_type exists from v3.
    if version >= 3 {
        result.with_config_type(e.config_type)
    } else {
        result
    }
}

fn topic_config_type(key: &str) -> i8 {
    match key {
        "cleanup.policy" => TYPE_LIST,
        "compression.type" | "message.timestamp.type" => TYPE_STRING,
        "index.interval.bytes" | "max.message.bytes" | "min.insync.replicas" | "segment.bytes" => {
            TYPE_INT
        }
        _ => TYPE_LONG,
    }
}

fn broker_config_type(key: &str, value: &str) -> i8 {
    if key == "log.cleanup.policy" {
        TYPE_LIST
    } else if value == "true" || value == "false" {
        TYPE_BOOLEAN
    } else if key.ends_with(".ms") || key.ends_with("retention.bytes") || key.ends_with(".messages")
    {
        TYPE_LONG
    } else if value.parse::<i64>().is_ok() {
        TYPE_INT
    } else {
        TYPE_STRING
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::{ApiKey, ResponseKind};
    use std::collections::BTreeMap;

    fn resource(kind: i8, name: &str, keys: Option<&[&str]>) -> DescribeConfigsResource {
        DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configuration_keys(keys.map(|k| {
                k.iter()
                    .map(|s| StrBytes::from_string(s.to_string()))
                    .collect()
            }))
    }

    fn run(
        b: &Broker,
        version: i16,
        resources: Vec<DescribeConfigsResource>,
        synonyms: bool,
    ) -> DescribeConfigsResponse {
        let req = DescribeConfigsRequest::default()
            .with_resources(resources)
            .with_include_synonyms(synonyms);
        let resp = handle(b, &ctx(ApiKey::DescribeConfigs, version), req);
        assert_encodes(
            ApiKey::DescribeConfigs,
            version,
            ResponseKind::DescribeConfigs(resp.clone()),
        );
        resp
    }

    #[test]
    fn topics_brokers_and_errors_in_every_version() {
        for version in advertised_versions(ApiKey::DescribeConfigs) {
            let b = broker();
            let configs = BTreeMap::from([("retention.ms".to_string(), "1234".to_string())]);
            b.create_topic("t", 1, 1, configs, false).unwrap();
            for synonyms in [false, true] {
                let resp = run(
                    &b,
                    version,
                    vec![
                        resource(RESOURCE_TOPIC, "t", None),
                        resource(
                            RESOURCE_TOPIC,
                            "t",
                            Some(&["retention.ms", "segment.bytes", "no.such"]),
                        ),
                        resource(RESOURCE_TOPIC, "missing", None),
                        resource(RESOURCE_BROKER, &b.node_id().to_string(), None),
                        resource(RESOURCE_BROKER, "", Some(&["num.partitions"])),
                        resource(RESOURCE_BROKER, "99", None),
                        resource(8, "1", None),
                    ],
                    synonyms,
                );
                let r = &resp.results;
                assert_eq!(r[0].error_code, 0);
                assert_eq!(r[0].error_message, None);
                assert_eq!(r[0].configs.len(), TOPIC_CONFIGS.len());
                let retention = r[0]
                    .configs
                    .iter()
                    .find(|c| c.name.as_str() == "retention.ms")
                    .unwrap();
                assert_eq!(retention.value.as_deref(), Some("1234"));
                assert_eq!(retention.config_source, 1);
                assert!(!retention.read_only && !retention.is_sensitive);
                let segment = r[0]
                    .configs
                    .iter()
                    .find(|c| c.name.as_str() == "segment.bytes")
                    .unwrap();
                assert_eq!(
                    (segment.value.as_deref(), segment.config_source),
                    (Some("1073741824"), 5)
                );
                if version >= 3 {
                    assert_eq!(retention.config_type, TYPE_LONG);
                    assert_eq!(segment.config_type, TYPE_INT);
                }
                if synonyms {
                    assert_eq!(retention.synonyms.len(), 2);
                    assert_eq!(retention.synonyms[1].name.as_str(), "log.retention.ms");
                } else {
                    assert!(retention.synonyms.is_empty());
                }
                let names: Vec<&str> = r[1].configs.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, vec!["retention.ms", "segment.bytes"]);
                assert_eq!(
                    r[2].error_code,
                    ResponseError::UnknownTopicOrPartition.code()
                );
                assert!(r[2]
                    .error_message
                    .as_ref()
                    .unwrap()
                    .contains("does not exist"));
                assert_eq!(r[3].error_code, 0);
                assert_eq!(r[3].configs.len(), b.config.kafka.len());
                assert!(r[3].configs.iter().all(|c| c.read_only));
                assert_eq!(r[4].configs.len(), 1);
                assert_eq!(
                    (
                        r[4].configs[0].value.as_deref(),
                        r[4].configs[0].config_source
                    ),
                    (Some("1"), 5)
                );
                assert_eq!(r[5].error_code, ResponseError::InvalidRequest.code());
                assert_eq!(r[6].error_code, ResponseError::InvalidRequest.code());
            }
        }
    }
}
