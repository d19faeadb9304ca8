//! Classic consumer-group membership (the "consumer" protocol type with a range
//! assignor): FindCoordinator, JoinGroup, SyncGroup, Heartbeat in the background,
//! OffsetFetch, OffsetCommit and LeaveGroup.
//!
//! Assignment covers one topic. The member talks to its coordinator on a
//! connection of its own, so a JoinGroup that waits for the rebalance does not
//! hold up fetches.

use super::error::{codes, ClientError, Result};
use super::{s, topic_name, Client, Connection};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group_id: String,
    pub topic: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
}

impl GroupConfig {
    pub fn new(group_id: &str, topic: &str) -> Self {
        GroupConfig {
            group_id: group_id.to_string(),
            topic: topic.to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    generation: i32,
}

/// A joined member of a consumer group.
pub struct GroupMember {
    client: Client,
    cfg: GroupConfig,
    coordinator: Arc<Connection>,
    membership: Arc<Mutex<Membership>>,
    assignment: Vec<i32>,
    rejoin: Arc<AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

fn check(code: i16, context: impl Into<String>) -> Result<()> {
    match ClientError::from_code(code, None, context) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The subscription a member sends in JoinGroup: version 0 of ConsumerProtocolSubscription.
pub fn encode_subscription(topics: &[&str]) -> Result<Bytes> {
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| s(t)).collect());
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    sub.encode(&mut buf, 0)
        .map_err(|e| ClientError::Protocol(format!("encoding a subscription: {e}")))?;
    Ok(buf.freeze())
}

pub fn decode_subscription(mut b: Bytes) -> Result<ConsumerProtocolSubscription> {
    if b.len() < 2 {
        return Err(ClientError::Protocol(
            "member subscription is too short".into(),
        ));
    }
    let version = b.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut b, version)
        .map_err(|e| ClientError::Protocol(format!("bad member subscription: {e}")))
}

pub fn encode_assignment(topic: &str, partitions: &[i32]) -> Result<Bytes> {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        AssignedTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(partitions.to_vec()),
    ]);
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    a.encode(&mut buf, 0)
        .map_err(|e| ClientError::Protocol(format!("encoding an assignment: {e}")))?;
    Ok(buf.freeze())
}

/// The partitions of `topic` in an assignment blob (empty blob: nothing assigned).
pub fn decode_assignment(mut b: Bytes, topic: &str) -> Result<Vec<i32>> {
    if b.is_empty() {
        return Ok(vec![]);
    }
    if b.len() < 2 {
        return Err(ClientError::Protocol("assignment is too short".into()));
    }
    let version = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, version)
        .map_err(|e| ClientError::Protocol(format!("bad assignment: {e}")))?;
    let mut parts: Vec<i32> = a
        .assigned_partitions
        .into_iter()
        .filter(|t| t.topic.0.as_str() == topic)
        .flat_map(|t| t.partitions)
        .collect();
    parts.sort_unstable();
    parts.dedup();
    Ok(parts)
}

/// Kafka's RangeAssignor for one topic: members sorted by id, each gets a
/// contiguous range; the first `partitions % members` get one extra.
pub fn range_assign(members: &[String], partitions: &[i32]) -> BTreeMap<String, Vec<i32>> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut parts = partitions.to_vec();
    parts.sort_unstable();
    let mut out = BTreeMap::new();
    if sorted.is_empty() {
        return out;
    }
    let per = parts.len() / sorted.len();
    let extra = parts.len() % sorted.len();
    let mut at = 0;
    for (i, m) in sorted.into_iter().enumerate() {
        let n = per + usize::from(i < extra);
        out.insert(m.clone(), parts[at..at + n].to_vec());
        at += n;
    }
    out
}

impl GroupMember {
    /// Finds the coordinator and joins the group.
    pub async fn join(client: Client, cfg: GroupConfig) -> Result<GroupMember> {
        let coordinator = find_coordinator(&client, &cfg.group_id).await?;
        let mut m = GroupMember {
            client,
            cfg,
            coordinator,
            membership: Arc::new(Mutex::new(Membership {
                member_id: String::new(),
                generation: -1,
            })),
            assignment: vec![],
            rejoin: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
        };
        m.rejoin().await?;
        Ok(m)
    }

    pub fn assignment(&self) -> Vec<i32> {
        self.assignment.clone()
    }

    pub fn member_id(&self) -> String {
        self.membership.lock().member_id.clone()
    }

    pub fn generation(&self) -> i32 {
        self.membership.lock().generation
    }

    /// Whether the heartbeat saw a rebalance: call [`rejoin`](Self::rejoin).
    pub fn needs_rejoin(&self) -> bool {
        self.rejoin.load(Ordering::Relaxed)
    }

    /// (Re)joins: JoinGroup, assignment if leader, SyncGroup; restarts the heartbeat.
    pub async fn rejoin(&mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.join_once().await {
                Ok(()) => break,
                Err(e) if attempts < 20 => {
                    match e.kafka_code() {
                        Some(codes::UNKNOWN_MEMBER_ID) => self.membership.lock().member_id.clear(),
                        Some(codes::REBALANCE_IN_PROGRESS) | Some(codes::ILLEGAL_GENERATION) => {}
                        Some(codes::NOT_COORDINATOR)
                        | Some(codes::COORDINATOR_NOT_AVAILABLE)
                        | None
                            if e.is_retriable() =>
                        {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            self.coordinator =
                                find_coordinator(&self.client, &self.cfg.group_id).await?;
                        }
                        Some(codes::COORDINATOR_LOAD_IN_PROGRESS) => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        _ => return Err(e),
                    }
                    tracing::debug!(error = %e, "rejoining group");
                }
                Err(e) => return Err(e),
            }
        }
        self.rejoin.store(false, Ordering::Relaxed);
        self.heartbeat = Some(tokio::spawn(heartbeat_loop(
            self.coordinator.clone(),
            self.cfg.clone(),
            self.membership.clone(),
            self.rejoin.clone(),
        )));
        Ok(())
    }

    async fn join_once(&mut self) -> Result<()> {
        let group = self.cfg.group_id.clone();
        let metadata = encode_subscription(&[&self.cfg.topic])?;
        let (session, rebalance) = (self.cfg.session_timeout, self.cfg.rebalance_timeout);
        let conn = self.coordinator.clone();
        let version = conn.version(ApiKey::JoinGroup)?;
        let join = loop {
            let member_id = self.membership.lock().member_id.clone();
            let mut req = JoinGroupRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_session_timeout_ms(session.as_millis() as i32)
                .with_member_id(s(&member_id))
                .with_protocol_type(s(PROTOCOL_TYPE))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(s(ASSIGNOR))
                .with_metadata(metadata.clone())]);
            if version >= 1 {
                req.rebalance_timeout_ms = rebalance.as_millis() as i32;
            }
            let resp = conn
                .send(
                    ApiKey::JoinGroup,
                    version,
                    &RequestKind::JoinGroup(req),
                    true,
                    rebalance,
                )?
                .response()
                .await?;
            let ResponseKind::JoinGroup(resp) = resp else {
                return Err(ClientError::Protocol(
                    "JoinGroup answered with another response type".into(),
                ));
            };
            if resp.error_code == codes::MEMBER_ID_REQUIRED {
                // KIP-394: join again with the id the coordinator gave us.
                self.membership.lock().member_id = resp.member_id.to_string();
                continue;
            }
            check(resp.error_code, format!("joining group {group}"))?;
            break resp;
        };
        let member_id = join.member_id.to_string();
        {
            let mut m = self.membership.lock();
            m.member_id = member_id.clone();
            m.generation = join.generation_id;
        }
        let mut assignments = vec![];
        if join.leader.as_str() == member_id {
            let mut subscribers = vec![];
            for m in &join.members {
                let sub = decode_subscription(m.metadata.clone())?;
                if sub.topics.iter().any(|t| t.as_str() == self.cfg.topic) {
                    subscribers.push(m.member_id.to_string());
                }
            }
            let md = self.client.metadata(Some(&[&self.cfg.topic])).await?;
            let parts: Vec<i32> = md
                .topics
                .iter()
                .find(|t| t.name == self.cfg.topic)
                .map(|t| t.partitions.keys().copied().collect())
                .unwrap_or_default();
            let plan = range_assign(&subscribers, &parts);
            for m in &join.members {
                let mine = plan.get(m.member_id.as_str()).cloned().unwrap_or_default();
                assignments.push(
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(m.member_id.clone())
                        .with_assignment(encode_assignment(&self.cfg.topic, &mine)?),
                );
            }
        }
        let (_, resp) = conn
            .call(ApiKey::SyncGroup, |v| {
                let mut req = SyncGroupRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_generation_id(join.generation_id)
                    .with_member_id(s(&member_id))
                    .with_assignments(assignments);
                if v >= 5 {
                    req.protocol_type = Some(s(PROTOCOL_TYPE));
                    req.protocol_name = Some(s(ASSIGNOR));
                }
                RequestKind::SyncGroup(req)
            })
            .await?;
        let ResponseKind::SyncGroup(resp) = resp else {
            return Err(ClientError::Protocol(
                "SyncGroup answered with another response type".into(),
            ));
        };
        check(resp.error_code, format!("syncing group {group}"))?;
        self.assignment = decode_assignment(resp.assignment, &self.cfg.topic)?;
        tracing::debug!(group, member_id, generation = join.generation_id, assignment = ?self.assignment, "joined group");
        Ok(())
    }

    /// Committed offsets of the assigned partitions (those with a commit).
    pub async fn committed(&self) -> Result<HashMap<i32, i64>> {
        let group = self.cfg.group_id.as_str();
        let topic = self.cfg.topic.as_str();
        let parts = self.assignment.clone();
        let (version, resp) = self
            .coordinator
            .call(ApiKey::OffsetFetch, |v| {
                if v >= 8 {
                    RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
                            offset_fetch_request::OffsetFetchRequestGroup::default()
                                .with_group_id(GroupId(s(group)))
                                .with_topics(Some(vec![
                                    offset_fetch_request::OffsetFetchRequestTopics::default()
                                        .with_name(topic_name(topic))
                                        .with_partition_indexes(parts.clone()),
                                ])),
                        ]))
                } else {
                    RequestKind::OffsetFetch(
                        OffsetFetchRequest::default()
                            .with_group_id(GroupId(s(group)))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partition_indexes(parts.clone()),
                            ])),
                    )
                }
            })
            .await?;
        let ResponseKind::OffsetFetch(resp) = resp else {
            return Err(ClientError::Protocol(
                "OffsetFetch answered with another response type".into(),
            ));
        };
        let ctx = format!("fetching committed offsets of group {group}");
        let mut out = HashMap::new();
        let mut add = |p: i32, off: i64, code: i16| -> Result<()> {
            check(code, ctx.clone())?;
            if off >= 0 {
                out.insert(p, off);
            }
            Ok(())
        };
        if version >= 8 {
            for g in resp
                .groups
                .into_iter()
                .filter(|g| g.group_id.0.as_str() == group)
            {
                check(
                    g.error_code,
                    format!("fetching committed offsets of group {group}"),
                )?;
                for t in g.topics.into_iter().filter(|t| t.name.0.as_str() == topic) {
                    for p in t.partitions {
                        add(p.partition_index, p.committed_offset, p.error_code)?;
                    }
                }
            }
        } else {
            check(
                resp.error_code,
                format!("fetching committed offsets of group {group}"),
            )?;
            for t in resp
                .topics
                .into_iter()
                .filter(|t| t.name.0.as_str() == topic)
            {
                for p in t.partitions {
                    add(p.partition_index, p.committed_offset, p.error_code)?;
                }
            }
        }
        Ok(out)
    }

    /// Commits `positions` (next offset to consume per partition) for assigned partitions.
    pub async fn commit(&self, positions: &BTreeMap<i32, i64>) -> Result<()> {
        let parts: Vec<_> = positions
            .iter()
            .filter(|(p, _)| self.assignment.contains(p))
            .map(|(&p, &o)| {
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(o)
            })
            .collect();
        if parts.is_empty() {
            return Ok(());
        }
        let (member_id, generation) = {
            let m = self.membership.lock();
            (m.member_id.clone(), m.generation)
        };
        let group = self.cfg.group_id.as_str();
        let (_, resp) = self
            .coordinator
            .call(ApiKey::OffsetCommit, |_| {
                RequestKind::OffsetCommit(
                    OffsetCommitRequest::default()
                        .with_group_id(GroupId(s(group)))
                        .with_generation_id_or_member_epoch(generation)
                        .with_member_id(s(&member_id))
                        .with_topics(vec![
                            offset_commit_request::OffsetCommitRequestTopic::default()
                                .with_name(topic_name(&self.cfg.topic))
                                .with_partitions(parts),
                        ]),
                )
            })
            .await?;
        let ResponseKind::OffsetCommit(resp) = resp else {
            return Err(ClientError::Protocol(
                "OffsetCommit answered with another response type".into(),
            ));
        };
        for t in resp.topics {
            for p in t.partitions {
                if let Some(e) = ClientError::from_code(
                    p.error_code,
                    None,
                    format!(
                        "committing offset of {}-{} for group {group}",
                        self.cfg.topic, p.partition_index
                    ),
                ) {
                    if matches!(
                        p.error_code,
                        codes::REBALANCE_IN_PROGRESS
                            | codes::ILLEGAL_GENERATION
                            | codes::UNKNOWN_MEMBER_ID
                    ) {
                        self.rejoin.store(true, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Leaves the group (LeaveGroup) and stops the heartbeat.
    pub async fn leave(mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let member_id = self.member_id();
        if member_id.is_empty() {
            return Ok(());
        }
        let group = self.cfg.group_id.as_str();
        let (_, resp) = self
            .coordinator
            .call(ApiKey::LeaveGroup, |v| {
                let mut req = LeaveGroupRequest::default().with_group_id(GroupId(s(group)));
                if v >= 3 {
                    req.members = vec![leave_group_request::MemberIdentity::default()
                        .with_member_id(s(&member_id))];
                } else {
                    req.member_id = s(&member_id);
                }
                RequestKind::LeaveGroup(req)
            })
            .await?;
        let ResponseKind::LeaveGroup(resp) = resp else {
            return Err(ClientError::Protocol(
                "LeaveGroup answered with another response type".into(),
            ));
        };
        check(resp.error_code, format!("leaving group {group}"))?;
        for m in resp.members {
            check(m.error_code, format!("leaving group {group}"))?;
        }
        Ok(())
    }
}

async fn find_coordinator(client: &Client, group: &str) -> Result<Arc<Connection>> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let conn = client.any_connection().await?;
        let (version, resp) = conn
            .call(ApiKey::FindCoordinator, |v| {
                let mut req = FindCoordinatorRequest::default();
                if v >= 4 {
                    req.coordinator_keys = vec![s(group)];
                } else {
                    req.key = s(group);
                }
                RequestKind::FindCoordinator(req)
            })
            .await?;
        let ResponseKind::FindCoordinator(resp) = resp else {
            return Err(ClientError::Protocol(
                "FindCoordinator answered with another response type".into(),
            ));
        };
        let (code, msg, node, host, port) = if version >= 4 {
            let c = resp
                .coordinators
                .into_iter()
                .find(|c| c.key.as_str() == group)
                .ok_or_else(|| {
                    ClientError::Protocol(
                        "FindCoordinator response does not mention the group".into(),
                    )
                })?;
            (c.error_code, c.error_message, c.node_id.0, c.host, c.port)
        } else {
            (
                resp.error_code,
                resp.error_message,
                resp.node_id.0,
                resp.host,
                resp.port,
            )
        };
        match ClientError::from_code(
            code,
            msg.as_ref().map(|m| m.as_str()),
            format!("finding the coordinator of group {group}"),
        ) {
            Some(e) if e.is_retriable() && attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(e) => return Err(e),
            None => {}
        }
        // A connection of its own, keyed apart from the broker's data connection.
        let key = i32::MAX - node.max(0);
        return client
            .connection_to(key, Some(&super::host_port(host.as_str(), port)))
            .await;
    }
}

async fn heartbeat_loop(
    conn: Arc<Connection>,
    cfg: GroupConfig,
    membership: Arc<Mutex<Membership>>,
    rejoin: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(cfg.heartbeat_interval).await;
        let (member_id, generation) = {
            let m = membership.lock();
            (m.member_id.clone(), m.generation)
        };
        let result = conn
            .call(ApiKey::Heartbeat, |_| {
                RequestKind::Heartbeat(
                    HeartbeatRequest::default()
                        .with_group_id(GroupId(s(&cfg.group_id)))
                        .with_generation_id(generation)
                        .with_member_id(s(&member_id)),
                )
            })
            .await;
        match result {
            Ok((_, ResponseKind::Heartbeat(r))) if r.error_code == 0 => {}
            Ok((_, ResponseKind::Heartbeat(r))) => {
                tracing::debug!(code = r.error_code, "heartbeat asks for a rejoin");
                if r.error_code == codes::UNKNOWN_MEMBER_ID {
                    membership.lock().member_id.clear();
                }
                rejoin.store(true, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                rejoin.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignor_matches_kafka() {
        let members = vec!["b".to_string(), "a".to_string(), "c".to_string()];
        let plan = range_assign(&members, &[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(plan["a"], vec![0, 1, 2]);
        assert_eq!(plan["b"], vec![3, 4]);
        assert_eq!(plan["c"], vec![5, 6]);
        let plan = range_assign(&members, &[0]);
        assert_eq!(
            (plan["a"].len(), plan["b"].len(), plan["c"].len()),
            (1, 0, 0)
        );
        assert!(range_assign(&[], &[0, 1]).is_empty());
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let sub = decode_subscription(encode_subscription(&["t1", "t2"]).unwrap()).unwrap();
        assert_eq!(
            sub.topics.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["t1", "t2"]
        );
        let a = encode_assignment("t", &[3, 1]).unwrap();
        assert_eq!(decode_assignment(a.clone(), "t").unwrap(), vec![1, 3]);
        assert_eq!(decode_assignment(a, "other").unwrap(), Vec::<i32>::new());
        assert_eq!(
            decode_assignment(Bytes::new(), "t").unwrap(),
            Vec::<i32>::new()
        );
        assert!(decode_assignment(Bytes::from_static(&[0]), "t").is_err());
        assert!(decode_subscription(Bytes::from_static(&[0, 0, 0xff])).is_err());
    }
}
