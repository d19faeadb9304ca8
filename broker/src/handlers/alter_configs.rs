//! AlterConfigs (the legacy, non-incremental one): the configs given replace
//! ALL of a topic's configs; a key left out (or given a null value) returns to
//! the broker's default. Broker settings are read-only. `validate_only` checks
//! and changes nothing.

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::RequestContext;
use crate::state::{Broker, TopicError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashMap};

/// Serialises every change of topic configs (AlterConfigs and the read-modify-write
/// of IncrementalAlterConfigs), so neither overwrites the other.
pub(super) static CONFIG_WRITES: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// Runs `alter` for each resource of an (Incremental)AlterConfigs request, refusing
/// resources named more than once, and gives each its (error code, message).
pub(super) fn per_resource<R>(
    api: &str,
    resources: &[R],
    key: impl Fn(&R) -> (i8, &str),
    mut alter: impl FnMut(&R) -> Result<(), TopicError>,
) -> Vec<(i16, Option<StrBytes>)> {
    let mut counts: HashMap<(i8, &str), usize> = HashMap::new();
    for r in resources {
        *counts.entry(key(r)).or_default() += 1;
    }
    resources
        .iter()
        .map(|r| {
            let (kind, name) = key(r);
            let outcome = if counts.get(&(kind, name)).copied().unwrap_or(0) > 1 {
                Err((
                    ResponseError::InvalidRequest,
                    format!("resource '{name}' appears more than once in the request"),
                ))
            } else {
                alter(r)
            };
            match outcome {
                Ok(()) => (0, None),
                Err((code, message)) => {
                    tracing::debug!(resource = name, ?code, %message, "{api} refused");
                    (code.code(), Some(StrBytes::from_string(message)))
                }
            }
        })
        .collect()
}

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let outcomes = per_resource(
        "AlterConfigs",
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
    AlterConfigsResponse::default().with_responses(responses)
}

fn alter(
    broker: &Broker,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), TopicError> {
    match resource.resource_type {
        RESOURCE_TOPIC => {
            // As in Kafka, null values are left out and a repeated key keeps its last value.
            let configs: BTreeMap<String, String> = resource
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), v.to_string()))
                })
                .collect();
            let _guard = CONFIG_WRITES.lock();
            broker.set_topic_configs(resource.resource_name.as_str(), configs, validate_only)
        }
        RESOURCE_BROKER => Err(read_only_broker_configs()),
        other => Err((
            ResponseError::InvalidRequest,
            format!("resource type {other} is not supported; only topics (2) can be altered"),
        )),
    }
}

pub(crate) fn read_only_broker_configs() -> TopicError {
    (
        ResponseError::InvalidRequest,
        "broker settings cannot be changed at runtime; set them in the [kafka] table of the config file or with --set"
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, assert_encodes, broker, ctx, reopen,
    };
    use kafka_protocol::messages::alter_configs_request::AlterableConfig;
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    fn resource(kind: i8, name: &str, configs: &[(&str, Option<&str>)]) -> AlterConfigsResource {
        AlterConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
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
    ) -> AlterConfigsResponse {
        let req = AlterConfigsRequest::default()
            .with_resources(resources)
            .with_validate_only(validate_only);
        let resp = handle(b, &ctx(ApiKey::AlterConfigs, version), req);
        assert_encodes(
            ApiKey::AlterConfigs,
            version,
            ResponseKind::AlterConfigs(resp.clone()),
        );
        resp
    }

    #[test]
    fn replaces_all_configs_in_every_version() {
        for version in advertised_versions(ApiKey::AlterConfigs) {
            let b = broker();
            let configs = BTreeMap::from([("retention.ms".to_string(), "1234".to_string())]);
            b.create_topic("t", 2, 1, configs, false).unwrap();
            b.create_topic("u", 1, 1, BTreeMap::new(), false).unwrap();

            let resp = run(
                &b,
                version,
                vec![
                    resource(
                        RESOURCE_TOPIC,
                        "t",
                        &[("segment.bytes", Some("1048576")), ("flush.ms", None)],
                    ),
                    resource(RESOURCE_TOPIC, "u", &[("retention.ms", Some("soon"))]),
                    resource(RESOURCE_TOPIC, "missing", &[]),
                    resource(RESOURCE_BROKER, "1", &[("num.partitions", Some("3"))]),
                ],
                false,
            );
            let codes: Vec<i16> = resp.responses.iter().map(|r| r.error_code).collect();
            assert_eq!(
                codes,
                vec![
                    0,
                    ResponseError::InvalidConfig.code(),
                    ResponseError::UnknownTopicOrPartition.code(),
                    ResponseError::InvalidRequest.code()
                ],
                "v{version}"
            );
            assert_eq!(resp.responses[0].error_message, None);
            assert!(resp.responses[1]
                .error_message
                .as_ref()
                .unwrap()
                .contains("retention.ms"));
            let t = b.topic("t").unwrap();
            assert_eq!(
                t.configs,
                BTreeMap::from([("segment.bytes".to_string(), "1048576".to_string())])
            );
            assert_eq!(
                b.partition("t", 1).unwrap().log.config().segment_bytes,
                1_048_576
            );
            assert!(b.topic("u").unwrap().configs.is_empty());

            let resp = run(
                &b,
                version,
                vec![resource(
                    RESOURCE_TOPIC,
                    "t",
                    &[("retention.ms", Some("5"))],
                )],
                true,
            );
            assert_eq!(resp.responses[0].error_code, 0);
            assert_eq!(b.topic("t").unwrap().configs.get("retention.ms"), None);

            let resp = run(
                &b,
                version,
                vec![resource(RESOURCE_TOPIC, "t", &[("no.such", Some("1"))])],
                false,
            );
            assert_eq!(
                resp.responses[0].error_code,
                ResponseError::InvalidConfig.code()
            );

            let b = reopen(b);
            assert_eq!(
                b.topic("t")
                    .unwrap()
                    .configs
                    .get("segment.bytes")
                    .map(String::as_str),
                Some("1048576")
            );
        }
    }
}
