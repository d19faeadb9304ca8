//! DescribeCluster: this broker, the cluster id, and this broker as controller.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

/// Kafka's "authorized operations not requested / not known" marker.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;
const ENDPOINT_BROKERS: i8 = 1;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let node = BrokerId(broker.node_id());
    let response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.meta.cluster_id()))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED)
        .with_error_message(None);
    // endpoint_type exists from v1; before, it is always "brokers".
    if ctx.version() >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return response
            .with_endpoint_type(req.endpoint_type)
            .with_controller_id(BrokerId(-1))
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_string(format!(
                "endpoint type {} is not supported; this listener describes brokers (1) only",
                req.endpoint_type
            ))));
    }
    let _ = node;
    response.with_brokers(
        broker
            .live_brokers()
            .into_iter()
            .map(|(id, host, port)| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(id))
                    .with_host(StrBytes::from_string(host))
                    .with_port(port)
                    .with_rack(None)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{advertised_versions, assert_encodes, broker, ctx};
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    #[test]
    fn describes_this_broker_in_every_version() {
        for version in advertised_versions(ApiKey::DescribeCluster) {
            let b = broker();
            let req =
                DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
            let resp = handle(&b, &ctx(ApiKey::DescribeCluster, version), req);
            assert_encodes(
                ApiKey::DescribeCluster,
                version,
                ResponseKind::DescribeCluster(resp.clone()),
            );
            assert_eq!(resp.error_code, 0);
            assert_eq!(resp.cluster_id.as_str(), b.meta.cluster_id());
            assert!(!resp.cluster_id.is_empty());
            assert_eq!(resp.controller_id, BrokerId(b.node_id()));
            assert_eq!(resp.brokers.len(), 1);
            assert_eq!(resp.brokers[0].broker_id, BrokerId(b.node_id()));
            assert_eq!(resp.brokers[0].host.as_str(), b.config.advertised_host);
            assert_eq!(resp.brokers[0].port, b.config.advertised_port);
        }
    }

    #[test]
    fn controller_endpoint_is_refused() {
        let b = broker();
        let req = DescribeClusterRequest::default().with_endpoint_type(2);
        let resp = handle(&b, &ctx(ApiKey::DescribeCluster, 1), req);
        assert_encodes(
            ApiKey::DescribeCluster,
            1,
            ResponseKind::DescribeCluster(resp.clone()),
        );
        assert_eq!(
            resp.error_code,
            ResponseError::UnsupportedEndpointType.code()
        );
        assert!(resp.error_message.is_some());
    }
}
