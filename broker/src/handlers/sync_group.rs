//! SyncGroup: the leader's request carries the assignments; followers wait for
//! it. The answer always carries an assignment blob, empty if need be.

use super::{Pending, RequestContext};
use crate::coordinator::group::SyncResult;
use crate::coordinator::machine::SyncParams;
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ResponseKind, SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: SyncGroupRequest) -> Pending {
    let version = ctx.version();
    let params = SyncParams {
        group_id: req.group_id.0.to_string(),
        generation: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        protocol_type: req.protocol_type.map(|s| s.to_string()),
        protocol_name: req.protocol_name.map(|s| s.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let group_id = params.group_id.clone();
    let reply = match broker
        .groups
        .run_for(&group_id, |g| g.sync(params, now_ms()))
    {
        Ok((reply, _)) => reply,
        Err(e) => {
            let result = SyncResult::error(e.code());
            return Box::pin(
                async move { Some(ResponseKind::SyncGroup(response(result, version))) },
            );
        }
    };
    Box::pin(async move {
        let result = reply
            .wait(|| SyncResult::error(ResponseError::CoordinatorNotAvailable.code()))
            .await;
        Some(ResponseKind::SyncGroup(response(result, version)))
    })
}

pub fn response(r: SyncResult, version: i16) -> SyncGroupResponse {
    let resp = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_assignment(r.assignment);
    if version >= 5 {
        resp.with_protocol_type(r.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(r.protocol_name.map(StrBytes::from_string))
    } else {
        resp
    }
}
