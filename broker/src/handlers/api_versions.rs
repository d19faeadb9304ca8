//! ApiVersions: what this broker speaks. Each entry is advertised only when its
//! handler implements that version completely; clients pick the highest common one.

use super::RequestContext;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

/// (api, min, max) advertised.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    // Produce is advertised from v0 because librdkafka < 2.11.1 switches off gzip,
    // snappy and lz4 when the lowest Produce version is 3 (as Apache Kafka 4.0
    // does); v0-2 requests (message format v0/v1) are refused one by one.
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::InitProducerId, 0, 4),
    // Consumer groups (classic protocol): librdkafka needs the whole set.
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // KIP-848: librdkafka uses group.protocol=consumer only when these are advertised.
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
];

/// Versions below these are advertised for compatibility but cannot be decoded.
const REFUSED_BELOW: &[(ApiKey, i16)] = &[(ApiKey::Produce, 3)];

pub fn advertised(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

/// True when a request of this version can be decoded and handled.
pub fn handles(key: ApiKey, version: i16) -> bool {
    let Some((min, max)) = advertised(key) else {
        return false;
    };
    let floor = REFUSED_BELOW
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(min, |(_, v)| *v);
    version >= floor.max(min) && version <= max
}

pub fn response(error: Option<ResponseError>) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    // Tagged fields keep their defaults (and are thus left out on the wire, as
    // Apache Kafka does): librdkafka 2.0.2 fails the handshake otherwise.
    ApiVersionsResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_api_keys(api_keys)
}

pub fn handle(_ctx: &RequestContext, _req: ApiVersionsRequest) -> ApiVersionsResponse {
    response(None)
}
