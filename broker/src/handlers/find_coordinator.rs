//! FindCoordinator: a single node coordinates every group. In a cluster a
//! group's coordinator is the leader of its `__consumer_offsets` partition, and
//! transactional ids (key type 1) go to the controller. Batched lookups (v4+)
//! answer one entry per key.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

/// Kafka's CoordinatorType of a transactional id.
const TRANSACTION: i8 = 1;

struct Answer {
    node: BrokerId,
    host: StrBytes,
    port: i32,
    error: i16,
    message: Option<StrBytes>,
}

fn lookup(broker: &Broker, key_type: i8, key: &str) -> Answer {
    let node = if key_type == TRANSACTION {
        match broker.controller_id() {
            -1 => Err("no controller elected yet".to_string()),
            id => Ok(id),
        }
    } else {
        broker.group_coordinator_of(key)
    };
    let found = node.and_then(|id| {
        broker
            .broker_address(id)
            .map(|(host, port)| (id, host, port))
            .ok_or_else(|| format!("coordinator {id} is not reachable yet"))
    });
    match found {
        Ok((id, host, port)) => Answer {
            node: BrokerId(id),
            host: StrBytes::from_string(host),
            port,
            error: 0,
            message: None,
        },
        Err(message) => Answer {
            node: BrokerId(-1),
            host: StrBytes::default(),
            port: -1,
            error: ResponseError::CoordinatorNotAvailable.code(),
            message: Some(StrBytes::from_string(message)),
        },
    }
}

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    if ctx.version() >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let a = lookup(broker, req.key_type, &key);
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(a.node)
                    .with_host(a.host)
                    .with_port(a.port)
                    .with_error_code(a.error)
                    .with_error_message(a.message)
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        // key_type exists from v1 on (v0 asks for groups only).
        let key_type = if ctx.version() >= 1 { req.key_type } else { 0 };
        let a = lookup(broker, key_type, &req.key);
        // error_message exists from v1 on; setting it in v0 fails encoding.
        FindCoordinatorResponse::default()
            .with_node_id(a.node)
            .with_host(a.host)
            .with_port(a.port)
            .with_error_code(a.error)
            .with_error_message(if ctx.version() >= 1 { a.message } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    #[test]
    fn names_this_node_in_every_version() {
        for version in advertised_versions(ApiKey::FindCoordinator) {
            let b = broker();
            let req = FindCoordinatorRequest::default()
                .with_key(StrBytes::from_static_str("g"))
                .with_coordinator_keys(vec![StrBytes::from_static_str("g")]);
            let resp = handle(&b, &ctx(ApiKey::FindCoordinator, version), req);
            assert_encodes(
                ApiKey::FindCoordinator,
                version,
                ResponseKind::FindCoordinator(resp.clone()),
            );
            let (node, port, error) = if version >= 4 {
                let c = &resp.coordinators[0];
                (c.node_id, c.port, c.error_code)
            } else {
                (resp.node_id, resp.port, resp.error_code)
            };
            assert_eq!(
                (node, port, error),
                (BrokerId(b.node_id()), b.config.advertised_port, 0)
            );
        }
    }
}
