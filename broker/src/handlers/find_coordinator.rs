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
    // agree on one coordinator.
    let id = broker.controller_id();
    let Some((host, port)) = broker.broker_address(id) else {
        let code = ResponseError::CoordinatorNotAvailable.code();
        let msg = Some(StrBytes::from_static_str("no controller elected yet"));
        if ctx.version() >= 4 {
            let coordinators = req
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_host(StrBytes::default())
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(msg.clone())
                })
                .collect();
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        return FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::default())
            .with_port(-1)
            .with_error_code(code)
            .with_error_message(if ctx.version() >= 1 { msg } else { None });
    };
    let node = BrokerId(id);
    let host = StrBytes::from_string(host);
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
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port)
    }
}
