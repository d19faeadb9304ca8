//! DeleteGroups: only groups without members (NON_EMPTY_GROUP otherwise); their
//! offsets and metadata get tombstones in `__consumer_offsets`.

use super::{Pending, RequestContext};
use crate::state::Broker;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, ResponseKind};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _ctx: &RequestContext, req: DeleteGroupsRequest) -> Pending {
    let mut durable = crate::coordinator::Durable::default();
    let codes: Vec<i16> = req
        .groups_names
        .iter()
        .map(
            |id| match broker.groups.run_for(&id.0, |g| g.delete_group(&id.0)) {
                Ok((code, written)) => {
                    durable.merge(written);
                    code
                }
                Err(e) => e.code(),
            },
        )
        .collect();
    Box::pin(async move {
        if let Err(e) = durable.wait().await {
            tracing::error!(error = %e, "group deletion not durable");
        }
        let results = req
            .groups_names
            .into_iter()
            .zip(codes)
            .map(|(id, code)| {
                DeletableGroupResult::default()
                    .with_group_id(id)
                    .with_error_code(code)
            })
            .collect();
        Some(ResponseKind::DeleteGroups(
            DeleteGroupsResponse::default().with_results(results),
        ))
    })
}
