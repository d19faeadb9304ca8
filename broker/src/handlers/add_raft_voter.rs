//! AddRaftVoter (KIP-853): admits a node to the cluster. Its Raft address is the
//! listener named `RAFT` (or the only one given). The registration is committed
//! in the metadata log; peers then connect to the node, and the controller adds
//! it to the metadata group (as a learner first, a voter once caught up). New
//! topics place replicas on it from then on; existing partitions move only
//! when reassigned, as in Kafka.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{AddRaftVoterRequest, AddRaftVoterResponse};
use kafka_protocol::protocol::StrBytes;

fn refuse(code: ResponseError, message: String) -> AddRaftVoterResponse {
    AddRaftVoterResponse::default()
        .with_error_code(code.code())
        .with_error_message(Some(StrBytes::from_string(message)))
}

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: AddRaftVoterRequest,
) -> AddRaftVoterResponse {
    if broker.meta_group.is_none() {
        return refuse(
            ResponseError::UnsupportedVersion,
            "a single node has no controller quorum to add a voter to; start nodes with --peers"
                .into(),
        );
    }
    let id = req.voter_id;
    if id <= 0 {
        return refuse(
            ResponseError::InvalidRequest,
            format!("voter id {id} must be positive"),
        );
    }
    if broker.cluster_nodes().contains(&id) {
        return refuse(
            ResponseError::DuplicateVoter,
            format!("node {id} is already a member"),
        );
    }
    let listener = req
        .listeners
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case("RAFT"))
        .or(if req.listeners.len() == 1 {
            req.listeners.first()
        } else {
            None
        });
    let Some(listener) = listener else {
        return refuse(
            ResponseError::InvalidRequest,
            "give the node's Raft address as a listener named RAFT".into(),
        );
    };
    if listener.host.is_empty() || listener.port == 0 {
        return refuse(
            ResponseError::InvalidRequest,
            "the RAFT listener needs a host and a port".into(),
        );
    }
    let addr = format!("{}:{}", listener.host, listener.port);
    match broker.meta.register_node(id, addr) {
        Ok(()) => AddRaftVoterResponse::default(),
        Err(e) => refuse(ResponseError::RequestTimedOut, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    #[test]
    fn a_single_node_refuses_with_a_reason_in_every_version() {
        for version in advertised_versions(ApiKey::AddRaftVoter) {
            let b = broker();
            let resp = handle(
                &b,
                &ctx(ApiKey::AddRaftVoter, version),
                AddRaftVoterRequest::default().with_voter_id(4),
            );
            assert_encodes(
                ApiKey::AddRaftVoter,
                version,
                ResponseKind::AddRaftVoter(resp.clone()),
            );
            assert_eq!(resp.error_code, ResponseError::UnsupportedVersion.code());
            assert!(resp.error_message.is_some());
        }
    }
}
