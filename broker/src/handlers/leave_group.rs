//! LeaveGroup: one member (v0-2) or a batch of members, possibly by
//! group.instance.id (v3+), leave; the rest of the group rebalances.

use super::RequestContext;
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

pub fn handle(broker: &Broker, ctx: &RequestContext, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let version = ctx.version();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let codes = match broker.groups.run_for(&req.group_id.0, |g| {
        g.leave(&req.group_id.0, &members, now_ms())
    }) {
        Ok((codes, _)) => codes,
        Err(e) => vec![e.code(); members.len().max(1)],
    };
    if version >= 3 {
        let responses = req
            .members
            .into_iter()
            .zip(codes)
            .map(|(m, code)| {
                MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(code)
            })
            .collect();
        LeaveGroupResponse::default().with_members(responses)
    } else {
        LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
    }
}
