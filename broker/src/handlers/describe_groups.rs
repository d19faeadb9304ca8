//! DescribeGroups: state, protocol, and members (with metadata and assignment
//! when the group is Stable, as Kafka does).

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let version = ctx.version();
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let base = DescribedGroup::default().with_group_id(id.clone());
            let summary = match broker.groups.read_for(&id.0, |g| g.describe(&id.0)) {
                Ok(s) => s,
                Err(e) => return base.with_error_code(e.code()),
            };
            let Some(s) = summary else {
                let dead = base.with_group_state(StrBytes::from_static_str("Dead"));
                // v6 (KIP-1043) says the group does not exist; older versions answer Dead.
                return if version >= 6 {
                    dead.with_error_code(ResponseError::GroupIdNotFound.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "group {} not found",
                            &*id.0
                        ))))
                } else {
                    dead
                };
            };
            let members = s
                .members
                .into_iter()
                .map(|m| {
                    let member = DescribedGroupMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_client_id(StrBytes::from_string(m.client_id))
                        .with_client_host(StrBytes::from_string(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if version >= 4 {
                        member
                            .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                    } else {
                        member
                    }
                })
                .collect();
            base.with_group_state(StrBytes::from_static_str(s.state_name))
                .with_protocol_type(StrBytes::from_string(s.protocol_type))
                .with_protocol_data(StrBytes::from_string(s.protocol))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
