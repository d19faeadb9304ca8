//! IncrementalAlterConfigs: SET / DELETE / APPEND / SUBTRACT per key on a
//! topic's configs; the other configs stay as they are. APPEND and SUBTRACT
//! apply to list configs (cleanup.policy) only. `validate_only` checks and
//! changes nothing.

use super::alter_configs::{per_resource, read_only_broker_configs, CONFIG_WRITES};
use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::RequestContext;
use crate::state::{Broker, TopicError};
use crate::topic_config;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use std::collections::HashSet;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Topic configs whose values are comma-separated lists.
const LIST_CONFIGS: &[&str] = &["cleanup.policy"];

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let outcomes = per_resource(
        "IncrementalAlterConfigs",
        &req.resources,
        |r| (r.resource_type, r.resource_name.as_str()),
        |r| alter(broker, r, req.validate_only),
    );
    let responses = req
        .resources
        .iter()
        .zip(outcomes)
        .map(|(resource, (code, message))| {
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

fn alter(
    broker: &Broker,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), TopicError> {
    match resource.resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => return Err(read_only_broker_configs()),
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} is not supported; only topics (2) can be altered"),
            ))
        }
    }
    let name = resource.resource_name.as_str();
    let invalid_config = |m: String| (ResponseError::InvalidConfig, m);
    let mut seen = HashSet::new();
    for op in &resource.configs {
        if !seen.insert(op.name.as_str()) {
            return Err((
                ResponseError::InvalidRequest,
                format!("config {} is given more than once", op.name),
            ));
        }
    }
    let _guard = CONFIG_WRITES.lock();
    let Some(topic) = broker.topic(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        ));
    };
    let effective = broker.effective_config(&topic);
    let mut configs = topic.configs.clone();
    for op in &resource.configs {
        let key = op.name.as_str();
        if !topic_config::is_known(key) {
            return Err(invalid_config(format!("unknown topic config {key:?}")));
        }
        let value = op.value.as_ref().map(|v| v.as_str());
        let is_list = LIST_CONFIGS.contains(&key);
        match op.config_operation {
            OP_SET => {
                let value = value.ok_or_else(|| invalid_config(format!("SET of {key} has a null value")))?;
                configs.insert(key.to_string(), value.to_string());
            }
            OP_DELETE => {
                configs.remove(key);
            }
            OP_APPEND | OP_SUBTRACT => {
                let verb = if op.config_operation == OP_APPEND { "APPEND" } else { "SUBTRACT" };
                if !is_list {
                    return Err(invalid_config(format!("{verb} applies only to list configs, and {key} is not one")));
                }
                let value = value.ok_or_else(|| invalid_config(format!("{verb} to {key} has a null value")))?;
                let current = configs.get(key).map(String::as_str).unwrap_or_else(|| effective.get(key));
                let mut items = split_list(current);
                let change = split_list(value);
                if op.config_operation == OP_APPEND {
                    for item in change {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                } else {
                    items.retain(|i| !change.contains(i));
                }
                configs.insert(key.to_string(), items.join(","));
            }
            other => {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("unknown config operation {other} for {key}; expected 0 (SET), 1 (DELETE), 2 (APPEND) or 3 (SUBTRACT)"),
                ))
            }
        }
    }
    broker.set_topic_configs(name, configs, validate_only)
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
    use kafka_protocol::messages::{ApiKey, ResponseKind};
    use kafka_protocol::protocol::StrBytes;
    use std::collections::BTreeMap;

    fn resource(kind: i8, name: &str, ops: &[(&str, i8, Option<&str>)]) -> AlterConfigsResource {
        AlterConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_config_operation(*op)
                            .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )
    }

    fn run(
        b: &Broker,
        version: i16,
        resources: Vec<AlterConfigsResource>,
        validate_only: bool,
    ) -> IncrementalAlterConfigsResponse {
        let req = IncrementalAlterConfigsRequest::default()
            .with_resources(resources)
            .with_validate_only(validate_only);
        let resp = handle(b, &ctx(ApiKey::IncrementalAlterConfigs, version), req);
        assert_encodes(
            ApiKey::IncrementalAlterConfigs,
            version,
            ResponseKind::IncrementalAlterConfigs(resp.clone()),
        );
        resp
    }

    fn configs(b: &Broker, topic: &str) -> BTreeMap<String, String> {
        b.topic(topic).unwrap().configs
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operations_in_every_version() {
        for version in advertised_versions(ApiKey::IncrementalAlterConfigs) {
            let b = broker();
            b.create_topic(
                "t",
                1,
                1,
                map(&[("retention.ms", "1234"), ("flush.ms", "10")]),
                false,
            )
            .unwrap();

            let resp = run(
                &b,
                version,
                vec![resource(
                    RESOURCE_TOPIC,
                    "t",
                    &[
                        ("segment.bytes", OP_SET, Some("1048576")),
                        ("flush.ms", OP_DELETE, None),
                        ("cleanup.policy", OP_APPEND, Some("compact")),
                    ],
                )],
                false,
            );
            assert_eq!(resp.responses[0].error_code, 0, "v{version}");
            assert_eq!(resp.responses[0].error_message, None);
            assert_eq!(
                configs(&b, "t"),
                map(&[
                    ("cleanup.policy", "delete,compact"),
                    ("retention.ms", "1234"),
                    ("segment.bytes", "1048576")
                ])
            );

            let resp = run(
                &b,
                version,
                vec![resource(
                    RESOURCE_TOPIC,
                    "t",
                    &[("cleanup.policy", OP_SUBTRACT, Some("delete"))],
                )],
                false,
            );
            assert_eq!(resp.responses[0].error_code, 0);
            assert_eq!(
                configs(&b, "t").get("cleanup.policy").map(String::as_str),
                Some("compact")
            );

            let resp = run(
                &b,
                version,
                vec![
                    resource(RESOURCE_TOPIC, "t", &[("no.such", OP_SET, Some("1"))]),
                    resource(
                        RESOURCE_TOPIC,
                        "missing",
                        &[("retention.ms", OP_SET, Some("1"))],
                    ),
                    resource(
                        RESOURCE_BROKER,
                        "1",
                        &[("num.partitions", OP_SET, Some("3"))],
                    ),
                ],
                false,
            );
            let codes: Vec<i16> = resp.responses.iter().map(|r| r.error_code).collect();
            assert_eq!(
                codes,
                vec![
                    ResponseError::InvalidConfig.code(),
                    ResponseError::UnknownTopicOrPartition.code(),
                    ResponseError::InvalidRequest.code()
                ]
            );
            assert!(resp.responses[0]
                .error_message
                .as_ref()
                .unwrap()
                .contains("unknown topic config \"no.such\""));

            for ops in [
                vec![("retention.ms", OP_APPEND, Some("5"))],
                vec![("retention.ms", OP_SET, Some("soon"))],
                vec![("retention.ms", OP_SET, None)],
                vec![("cleanup.policy", OP_SUBTRACT, Some("compact"))],
            ] {
                let resp = run(
                    &b,
                    version,
                    vec![resource(RESOURCE_TOPIC, "t", &ops)],
                    false,
                );
                assert_eq!(
                    resp.responses[0].error_code,
                    ResponseError::InvalidConfig.code(),
                    "{ops:?}"
                );
                assert!(resp.responses[0]
                    .error_message
                    .as_ref()
                    .is_some_and(|m| !m.is_empty()));
            }
            let resp = run(
                &b,
                version,
                vec![resource(
                    RESOURCE_TOPIC,
                    "t",
                    &[("retention.ms", 9, Some("5"))],
                )],
                false,
            );
            assert_eq!(
                resp.responses[0].error_code,
                ResponseError::InvalidRequest.code()
            );
            let resp = run(
                &b,
                version,
                vec![resource(
                    RESOURCE_TOPIC,
                    "t",
                    &[
                        ("retention.ms", OP_SET, Some("5")),
                        ("retention.ms", OP_DELETE, None),
                    ],
                )],
                false,
            );
            assert_eq!(
                resp.responses[0].error_code,
                ResponseError::InvalidRequest.code()
            );

            let before = configs(&b, "t");
            let resp = run(
                &b,
                version,
                vec![resource(
                    RESOURCE_TOPIC,
                    "t",
                    &[("retention.ms", OP_SET, Some("99"))],
                )],
                true,
            );
            assert_eq!(resp.responses[0].error_code, 0);
            assert_eq!(configs(&b, "t"), before);
        }
    }
}
