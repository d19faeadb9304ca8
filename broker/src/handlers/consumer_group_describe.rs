//! ConsumerGroupDescribe (KIP-848): consumer-protocol groups with their epochs,
//! assignor and members (current and target assignments).

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

fn assignment(parts: Vec<(Uuid, String, Vec<i32>)>) -> Assignment {
    Assignment::default().with_topic_partitions(
        parts
            .into_iter()
            .map(|(id, name, ps)| {
                TopicPartitions::default()
                    .with_topic_id(id)
                    .with_topic_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(ps)
            })
            .collect(),
    )
}

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let version = ctx.version();
    let groups = req
        .group_ids
        .into_iter()
        .map(|id| {
            let base = DescribedGroup::default().with_group_id(id.clone());
            if id.0.is_empty() {
                return base.with_error_code(ResponseError::InvalidGroupId.code());
            }
            let described = match broker
                .groups
                .read_for(&id.0, |g| g.describe_consumer(&id.0))
            {
                Ok(d) => d,
                Err(e) => {
                    return base.with_error_code(e.code()).with_error_message(Some(
                        StrBytes::from_string(format!(
                            "this broker does not coordinate group {}",
                            &*id.0
                        )),
                    ))
                }
            };
            let d = match described {
                Ok(d) => d,
                Err(e) => {
                    return base
                        .with_error_code(e.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "group {} is not a consumer group",
                            &*id.0
                        ))))
                        .with_group_state(StrBytes::from_static_str("Dead"))
                }
            };
            let members = d
                .members
                .into_iter()
                .map(|m| {
                    let member = Member::default()
                        .with_member_id(StrBytes::from_string(m.member.member_id))
                        .with_instance_id(m.member.instance_id.map(StrBytes::from_string))
                        .with_rack_id(m.member.rack_id.map(StrBytes::from_string))
                        .with_member_epoch(m.member.epoch)
                        .with_client_id(StrBytes::from_string(m.member.client_id))
                        .with_client_host(StrBytes::from_string(m.member.client_host))
                        .with_subscribed_topic_names(
                            m.member
                                .subscribed
                                .into_iter()
                                .map(|t| TopicName(StrBytes::from_string(t)))
                                .collect(),
                        )
                        .with_assignment(assignment(m.assignment))
                        .with_target_assignment(assignment(m.target));
                    if version >= 1 {
                        // 1 = consumer protocol member (0 = classic).
                        member.with_member_type(1)
                    } else {
                        member
                    }
                })
                .collect();
            base.with_group_state(StrBytes::from_static_str(d.state))
                .with_group_epoch(d.epoch)
                .with_assignment_epoch(d.assignment_epoch)
                .with_assignor_name(StrBytes::from_string(d.assignor))
                .with_members(members)
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
