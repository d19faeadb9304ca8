//! API version negotiation: for each API, the highest version that both the broker
//! (from its ApiVersions answer) and this client (the request structs of
//! `kafka-protocol`) support.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Message, VersionRange};
use std::collections::HashMap;

/// The versions this client can encode for an API: the request struct's range.
/// (`ApiKey::valid_versions` is the union of request and response ranges, which is
/// wider for some APIs.)
pub fn client_range(api: ApiKey) -> Option<VersionRange> {
    Some(match api {
        ApiKey::Produce => ProduceRequest::VERSIONS,
        ApiKey::Fetch => FetchRequest::VERSIONS,
        ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
        ApiKey::Metadata => MetadataRequest::VERSIONS,
        ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
        ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
        ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
        ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
        ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
        ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
        ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
        ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
        ApiKey::DescribeConfigs => DescribeConfigsRequest::VERSIONS,
        ApiKey::AlterConfigs => AlterConfigsRequest::VERSIONS,
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::VERSIONS,
        ApiKey::CreatePartitions => CreatePartitionsRequest::VERSIONS,
        ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
        ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
        ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
        ApiKey::DeleteRecords => DeleteRecordsRequest::VERSIONS,
        ApiKey::DeleteGroups => DeleteGroupsRequest::VERSIONS,
        ApiKey::OffsetDelete => OffsetDeleteRequest::VERSIONS,
        ApiKey::AlterPartitionReassignments => AlterPartitionReassignmentsRequest::VERSIONS,
        ApiKey::ListPartitionReassignments => ListPartitionReassignmentsRequest::VERSIONS,
        ApiKey::AddRaftVoter => AddRaftVoterRequest::VERSIONS,
        ApiKey::RemoveRaftVoter => RemoveRaftVoterRequest::VERSIONS,
        _ => return None,
    })
}

/// Negotiated versions of one broker connection.
#[derive(Debug, Clone, Default)]
pub struct ApiVersionTable {
    /// api key -> (broker min, broker max)
    broker: HashMap<i16, (i16, i16)>,
}

impl ApiVersionTable {
    pub fn from_response(resp: &ApiVersionsResponse) -> Self {
        let broker = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        ApiVersionTable { broker }
    }

    /// The version to use for `api`, or `None` when the ranges do not overlap.
    pub fn version(&self, api: ApiKey) -> Option<i16> {
        let (bmin, bmax) = *self.broker.get(&(api as i16))?;
        let ours = client_range(api)?;
        let common = ours.intersect(&VersionRange {
            min: bmin,
            max: bmax,
        });
        (!common.is_empty()).then_some(common.max)
    }

    /// The broker's advertised range for `api`.
    pub fn broker_range(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.broker.get(&(api as i16)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn table(entries: &[(ApiKey, i16, i16)]) -> ApiVersionTable {
        let resp = ApiVersionsResponse::default().with_api_keys(
            entries
                .iter()
                .map(|(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        );
        ApiVersionTable::from_response(&resp)
    }

    #[test]
    fn picks_highest_common_version() {
        let t = table(&[
            (ApiKey::Produce, 0, 9),
            (ApiKey::Fetch, 0, 99),
            (ApiKey::Metadata, 0, 2),
            (ApiKey::Heartbeat, 20, 30),
        ]);
        assert_eq!(t.version(ApiKey::Produce), Some(9));
        assert_eq!(
            t.version(ApiKey::Fetch),
            Some(FetchRequest::VERSIONS.max),
            "capped to what we can encode"
        );
        assert_eq!(t.version(ApiKey::Metadata), Some(2));
        assert_eq!(t.version(ApiKey::Heartbeat), None, "no overlap");
        assert_eq!(t.version(ApiKey::CreateTopics), None, "not advertised");
    }

    #[test]
    fn produce_below_v3_is_not_usable() {
        let t = table(&[(ApiKey::Produce, 0, 2)]);
        assert_eq!(t.version(ApiKey::Produce), None);
    }
}
