//! FindCoordinator: this node coordinates every group (single node). Batched
//! lookups (v4+) answer one entry per key.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    // Cluster mode: the controller coordinates every group, so that all nodes
    // agree on one coordinator. While none is elected, the answer is an error.
    let id = broker.controller_id();
    let (node, host, port, error, message) = match broker.broker_address(id) {
        Some((host, port)) => (BrokerId(id), StrBytes::from_string(host), port, 0, None),
        None => (
            BrokerId(-1),
            StrBytes::default(),
            -1,
            ResponseError::CoordinatorNotAvailable.code(),
            Some(StrBytes::from_static_str("no controller elected yet")),
        ),
    };
    if ctx.version() >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(error)
                    .with_error_message(message.clone())
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        // error_message exists from v1 on; setting it in v0 fails encoding.
        FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port)
            .with_error_code(error)
            .with_error_message(if ctx.version() >= 1 { message } else { None })
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
