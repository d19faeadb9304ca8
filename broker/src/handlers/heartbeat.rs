//! Heartbeat: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to
//! rejoin.

use super::RequestContext;
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

pub fn handle(broker: &Broker, _ctx: &RequestContext, req: HeartbeatRequest) -> HeartbeatResponse {
    let instance = req.group_instance_id.map(|s| s.to_string());
    let error = match broker.groups.run_for(&req.group_id.0, |g| {
        g.heartbeat(
            &req.group_id.0,
            &req.member_id,
            instance.as_deref(),
            req.generation_id,
            now_ms(),
        )
    }) {
        Ok((error, _)) => error,
        Err(e) => e.code(),
    };
    HeartbeatResponse::default().with_error_code(error)
}
