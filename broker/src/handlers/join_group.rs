//! JoinGroup: the answer waits until the group's join phase completes (all
//! known members rejoined, or the rebalance timeout passed). v4+ (KIP-394): a
//! new dynamic member first gets MEMBER_ID_REQUIRED with its id.

use super::{Pending, RequestContext};
use crate::coordinator::group::JoinResult;
use crate::coordinator::machine::JoinParams;
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: JoinGroupRequest) -> Pending {
    let version = ctx.version();
    let params = JoinParams {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        client_id: ctx
            .header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{}", ctx.peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = params.member_id.clone();
    let group_id = params.group_id.clone();
    let reply = match broker
        .groups
        .run_for(&group_id, |g| g.join(params, now_ms()))
    {
        Ok((reply, _)) => reply,
        Err(e) => {
            let result = JoinResult::error(e.code(), &member_id);
            return Box::pin(
                async move { Some(ResponseKind::JoinGroup(response(result, version))) },
            );
        }
    };
    Box::pin(async move {
        let lost = || JoinResult::error(ResponseError::CoordinatorNotAvailable.code(), &member_id);
        let result = reply.wait(lost).await;
        Some(ResponseKind::JoinGroup(response(result, version)))
    })
}

/// The response for `version`: fields the version lacks keep their defaults.
pub fn response(r: JoinResult, version: i16) -> JoinGroupResponse {
    let members = r
        .members
        .into_iter()
        .map(|m| {
            let member = JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(m.member_id))
                .with_metadata(m.metadata);
            if version >= 5 {
                member.with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
            } else {
                member
            }
        })
        .collect();
    let protocol_name = r.protocol_name.map(StrBytes::from_string);
    let mut resp = JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_leader(StrBytes::from_string(r.leader))
        .with_member_id(StrBytes::from_string(r.member_id))
        .with_members(members);
    if version >= 7 {
        resp = resp
            .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(protocol_name);
    } else {
        resp = resp.with_protocol_name(Some(protocol_name.unwrap_or_default()));
    }
    if version >= 9 {
        resp = resp.with_skip_assignment(r.skip_assignment);
    }
    resp
}
