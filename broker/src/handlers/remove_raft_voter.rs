//! RemoveRaftVoter (KIP-853): takes a node out of the cluster. The removal is
//! committed in the metadata log; the controller removes the node from the
//! metadata group (handing leadership over first if it leads) and no new
//! replica is placed on it. Its partitions must be moved off first
//! (`weir cluster remove-node` does that with AlterPartitionReassignments); a
//! node still holding replicas is refused.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{RemoveRaftVoterRequest, RemoveRaftVoterResponse};
use kafka_protocol::protocol::StrBytes;

fn refuse(code: ResponseError, message: String) -> RemoveRaftVoterResponse {
    RemoveRaftVoterResponse::default()
        .with_error_code(code.code())
        .with_error_message(Some(StrBytes::from_string(message)))
}

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: RemoveRaftVoterRequest,
) -> RemoveRaftVoterResponse {
    if broker.meta_group.is_none() {
        return refuse(
            ResponseError::UnsupportedVersion,
            "a single node has no controller quorum to remove a voter from".into(),
        );
    }
    let id = req.voter_id;
    let members = broker.cluster_nodes();
    if !members.contains(&id) {
        return refuse(
            ResponseError::VoterNotFound,
            format!("node {id} is not a member"),
        );
    }
    if members.len() <= 1 {
        return refuse(
            ResponseError::InvalidRequest,
            "the last member cannot be removed".into(),
        );
    }
    let hosted: Vec<String> = broker
        .meta
        .topics()
        .iter()
        .flat_map(|t| {
            (0..t.partitions)
                .filter(|&p| {
                    broker.replicas_of(t, p).contains(&id)
                        || t.reassigning.get(&p).is_some_and(|r| r.contains(&id))
                })
                .map(|p| format!("{}-{p}", t.name))
                .collect::<Vec<_>>()
        })
        .collect();
    if !hosted.is_empty() {
        return refuse(
            ResponseError::InvalidRequest,
            format!(
                "node {id} still holds {} replica(s) (e.g. {}); move them with AlterPartitionReassignments first",
                hosted.len(),
                hosted.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if let Err(e) = broker.meta.remove_node(id) {
        return refuse(ResponseError::RequestTimedOut, format!("{e:#}"));
    }
    // Answer once the controller quorum no longer counts the node (as Kafka
    // does), so that stopping it right after cannot cost the quorum.
    let Some(meta_group) = &broker.meta_group else {
        return RemoveRaftVoterResponse::default();
    };
    let removed = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if !meta_group.inspect(|g| g.voters()).contains(&(id as u64)) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    });
    if removed {
        RemoveRaftVoterResponse::default()
    } else {
        refuse(
            ResponseError::RequestTimedOut,
            format!(
                "node {id} is leaving, but the controller quorum has not dropped it within 30 s"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    #[test]
    fn a_single_node_refuses_with_a_reason_in_every_version() {
        for version in advertised_versions(ApiKey::RemoveRaftVoter) {
            let b = broker();
            let resp = handle(
                &b,
                &ctx(ApiKey::RemoveRaftVoter, version),
                RemoveRaftVoterRequest::default().with_voter_id(1),
            );
            assert_encodes(
                ApiKey::RemoveRaftVoter,
                version,
                ResponseKind::RemoveRaftVoter(resp.clone()),
            );
            assert_eq!(resp.error_code, ResponseError::UnsupportedVersion.code());
        }
    }
}
