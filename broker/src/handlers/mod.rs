//! One module per Kafka API. [`dispatch`] runs the part of a request that must
//! happen in arrival order (appends, metadata changes) and returns the rest
//! (durability waits, long polls) as a future that the connection awaits in
//! order, so pipelined requests overlap their waiting.

use crate::state::Broker;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

pub mod add_raft_voter;
#[cfg(test)]
pub(crate) mod admin_test_support;
pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_log_dirs;
pub mod fetch;
pub mod find_coordinator;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod remove_raft_voter;
// Consumer groups (issue 4).
pub mod delete_groups;
pub mod describe_groups;
pub mod heartbeat;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod sync_group;
// KIP-848 consumer groups.
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;

/// The response still to come; `None` means no response at all (acks=0).
pub type Pending = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

pub struct RequestContext {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub peer: SocketAddr,
}

impl RequestContext {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

pub fn ready(response: ResponseKind) -> Pending {
    Box::pin(std::future::ready(Some(response)))
}

/// Routes a decoded request to its handler. Only APIs listed in
/// [`api_versions::SUPPORTED`] reach this point.
pub async fn dispatch(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    body: RequestKind,
) -> Option<Pending> {
    let b = broker;
    Some(match body {
        RequestKind::ApiVersions(r) => {
            ready(ResponseKind::ApiVersions(api_versions::handle(ctx, r)))
        }
        RequestKind::Metadata(r) => ready(ResponseKind::Metadata(metadata::handle(b, ctx, r))),
        RequestKind::Produce(r) => produce::handle(b, ctx, r),
        RequestKind::Fetch(r) => fetch::handle(b.clone(), ctx, r),
        RequestKind::ListOffsets(r) => {
            ready(ResponseKind::ListOffsets(list_offsets::handle(b, ctx, r)))
        }
        RequestKind::InitProducerId(r) => ready(ResponseKind::InitProducerId(
            init_producer_id::handle(b, ctx, r),
        )),
        RequestKind::FindCoordinator(r) => ready(ResponseKind::FindCoordinator(
            find_coordinator::handle(b, ctx, r),
        )),
        RequestKind::CreateTopics(r) => {
            ready(ResponseKind::CreateTopics(create_topics::handle(b, ctx, r)))
        }
        RequestKind::DeleteTopics(r) => {
            ready(ResponseKind::DeleteTopics(delete_topics::handle(b, ctx, r)))
        }
        RequestKind::CreatePartitions(r) => ready(ResponseKind::CreatePartitions(
            create_partitions::handle(b, ctx, r),
        )),
        RequestKind::DescribeConfigs(r) => ready(ResponseKind::DescribeConfigs(
            describe_configs::handle(b, ctx, r),
        )),
        RequestKind::AlterConfigs(r) => {
            ready(ResponseKind::AlterConfigs(alter_configs::handle(b, ctx, r)))
        }
        RequestKind::IncrementalAlterConfigs(r) => ready(ResponseKind::IncrementalAlterConfigs(
            incremental_alter_configs::handle(b, ctx, r),
        )),
        RequestKind::DescribeCluster(r) => ready(ResponseKind::DescribeCluster(
            describe_cluster::handle(b, ctx, r),
        )),
        RequestKind::DeleteRecords(r) => ready(ResponseKind::DeleteRecords(
            delete_records::handle(b, ctx, r),
        )),
        RequestKind::OffsetForLeaderEpoch(r) => ready(ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch::handle(b, ctx, r),
        )),
        RequestKind::DescribeLogDirs(r) => ready(ResponseKind::DescribeLogDirs(
            describe_log_dirs::handle(b, ctx, r),
        )),
        RequestKind::AlterPartitionReassignments(r) => {
            ready(ResponseKind::AlterPartitionReassignments(
                alter_partition_reassignments::handle(b, ctx, r),
            ))
        }
        RequestKind::AddRaftVoter(r) => ready(ResponseKind::AddRaftVoter(add_raft_voter::handle(
            b, ctx, r,
        ))),
        RequestKind::RemoveRaftVoter(r) => ready(ResponseKind::RemoveRaftVoter(
            remove_raft_voter::handle(b, ctx, r),
        )),
        RequestKind::ListPartitionReassignments(r) => {
            ready(ResponseKind::ListPartitionReassignments(
                list_partition_reassignments::handle(b, ctx, r),
            ))
        }
        RequestKind::JoinGroup(r) => join_group::handle(b, ctx, r),
        RequestKind::SyncGroup(r) => sync_group::handle(b, ctx, r),
        RequestKind::Heartbeat(r) => ready(ResponseKind::Heartbeat(heartbeat::handle(b, ctx, r))),
        RequestKind::LeaveGroup(r) => {
            ready(ResponseKind::LeaveGroup(leave_group::handle(b, ctx, r)))
        }
        RequestKind::OffsetCommit(r) => offset_commit::handle(b, ctx, r),
        RequestKind::OffsetFetch(r) => {
            ready(ResponseKind::OffsetFetch(offset_fetch::handle(b, ctx, r)))
        }
        RequestKind::DescribeGroups(r) => ready(ResponseKind::DescribeGroups(
            describe_groups::handle(b, ctx, r),
        )),
        RequestKind::ListGroups(r) => {
            ready(ResponseKind::ListGroups(list_groups::handle(b, ctx, r)))
        }
        RequestKind::DeleteGroups(r) => delete_groups::handle(b, ctx, r),
        RequestKind::OffsetDelete(r) => offset_delete::handle(b, ctx, r),
        RequestKind::ConsumerGroupHeartbeat(r) => consumer_group_heartbeat::handle(b, ctx, r),
        RequestKind::ConsumerGroupDescribe(r) => ready(ResponseKind::ConsumerGroupDescribe(
            consumer_group_describe::handle(b, ctx, r),
        )),
        _ => return None,
    })
}
