//! The classic group protocol as Apache Kafka's GroupCoordinator runs it, as a
//! deterministic state machine: every operation takes the current time, and
//! [`Groups::tick`] runs the timers (session expiry, the end of the join phase,
//! offset retention). Answers that must wait (JoinGroup until the join phase
//! ends, a follower's SyncGroup until the leader's) are oneshot channels.
//!
//! Writes to `__consumer_offsets` are queued in [`Groups::writes`]; the
//! coordinator appends them before it releases the lock.

use super::group::{Committed, Group, GroupState, JoinResult, Member, SyncResult};
use super::records::{GroupValue, MemberValue, OffsetValue};
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use std::collections::{BTreeMap, HashMap};
use tokio::sync::oneshot;

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i64,
    pub offsets_retention_ms: i64,
    pub offsets_retention_check_ms: i64,
    pub max_metadata_bytes: usize,
    /// KIP-848: group.consumer.heartbeat.interval.ms and group.consumer.session.timeout.ms.
    pub consumer_heartbeat_interval_ms: i32,
    pub consumer_session_timeout_ms: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 0,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_ms: 60_000,
            max_metadata_bytes: 4096,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_session_timeout_ms: 45_000,
        }
    }
}

/// An answer now, or one to wait for.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

impl<T> Reply<T> {
    /// Waits for the answer; `lost` is used if the coordinator dropped the waiter.
    pub async fn wait(self, lost: impl FnOnce() -> T) -> T {
        match self {
            Reply::Now(t) => t,
            Reply::Later(rx) => rx.await.unwrap_or_else(|_| lost()),
        }
    }
}

/// A pending write to `__consumer_offsets` (`None` = tombstone).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        value: Option<GroupValue>,
    },
    /// A consumer-protocol (KIP-848) group's state, encoded.
    Consumer {
        group: String,
        value: Option<Vec<u8>>,
    },
}

impl Write {
    pub fn group(&self) -> &str {
        match self {
            Write::Offset { group, .. }
            | Write::Group { group, .. }
            | Write::Consumer { group, .. } => group,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinParams {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ (KIP-394): a new dynamic member must first get an id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone)]
pub struct SyncParams {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone)]
pub struct CommitParams {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OffsetToCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupState,
    /// The state as Kafka names it (consumer groups have their own states).
    pub state_name: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
    pub state_name: &'static str,
    /// "classic" or "consumer" (ListGroups v5).
    pub group_type: &'static str,
}

#[derive(Default)]
pub struct Groups {
    pub groups: HashMap<String, Group>,
    pub config: Config,
    pub writes: Vec<Write>,
    last_expiry_check: i64,
    /// Rebalances started, for tests and metrics.
    pub rebalances: u64,
}

fn new_member_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl Groups {
    pub fn new(config: Config) -> Self {
        Groups {
            config,
            ..Default::default()
        }
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    // ------------------------------------------------------------------ JoinGroup

    pub fn join(&mut self, p: JoinParams, now: i64) -> Reply<JoinResult> {
        let fail = |e: ResponseError| Reply::Now(JoinResult::error(code(e), &p.member_id));
        if p.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        if p.session_timeout_ms < self.config.min_session_timeout_ms
            || p.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let exists = self.groups.contains_key(&p.group_id);
        if !exists && !p.member_id.is_empty() {
            return fail(ResponseError::UnknownMemberId);
        }
        let group = self
            .groups
            .entry(p.group_id.clone())
            .or_insert_with(|| Group::new(&p.group_id, now));
        if let Some(cg) = &group.consumer {
            // Groups of the two protocols do not mix; an empty consumer group
            // becomes a classic one.
            if !cg.members.is_empty() {
                return fail(ResponseError::InconsistentGroupProtocol);
            }
            tracing::info!(group = %p.group_id, "the empty consumer group becomes a classic group");
            group.consumer = None;
            group.protocol_type = None;
            self.writes
                .push(super::consumer_group::consumer_record(group));
        }
        if !group.supports(&p.protocol_type, &p.protocols) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let (tx, rx) = oneshot::channel();
        let immediate = if p.member_id.is_empty() {
            join_new(
                group,
                &self.config,
                &mut self.writes,
                &mut self.rebalances,
                p,
                tx,
                now,
            )
        } else {
            join_known(
                group,
                &self.config,
                &mut self.writes,
                &mut self.rebalances,
                p,
                tx,
                now,
            )
        };
        match immediate {
            Some(result) => Reply::Now(result),
            None => Reply::Later(rx),
        }
    }

    // ------------------------------------------------------------------ SyncGroup

    pub fn sync(&mut self, p: SyncParams, now: i64) -> Reply<SyncResult> {
        let fail = |e: ResponseError| Reply::Now(SyncResult::error(code(e)));
        let Some(group) = self.groups.get_mut(&p.group_id) else {
            return fail(ResponseError::UnknownMemberId);
        };
        if let Err(e) = validate_member(group, &p.member_id, p.group_instance_id.as_deref()) {
            return fail(e);
        }
        if p.generation != group.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        if p.protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || p.protocol_name
                .as_ref()
                .is_some_and(|n| Some(n) != group.protocol.as_ref())
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let protocol_type = group.protocol_type.clone();
        let protocol_name = group.protocol.clone();
        match group.state {
            GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let Some(member) = group.members.get_mut(&p.member_id) else {
                    return fail(ResponseError::UnknownMemberId);
                };
                member.last_heartbeat = now;
                Reply::Now(SyncResult {
                    error: NONE,
                    protocol_type,
                    protocol_name,
                    assignment: member.assignment.clone(),
                })
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let Some(member) = group.members.get_mut(&p.member_id) else {
                    return fail(ResponseError::UnknownMemberId);
                };
                member.last_heartbeat = now;
                member.answer_sync(SyncResult::error(code(ResponseError::RebalanceInProgress)));
                member.sync_waiter = Some(tx);
                if group.is_leader(&p.member_id) {
                    let mut assignments: HashMap<String, Bytes> =
                        p.assignments.into_iter().collect();
                    for m in group.members.values_mut() {
                        m.assignment = assignments.remove(&m.member_id).unwrap_or_default();
                    }
                    group.transition(GroupState::Stable, now);
                    for m in group.members.values_mut() {
                        let result = SyncResult {
                            error: NONE,
                            protocol_type: protocol_type.clone(),
                            protocol_name: protocol_name.clone(),
                            assignment: m.assignment.clone(),
                        };
                        m.answer_sync(result);
                        m.last_heartbeat = now;
                    }
                    self.writes.push(group_record(group));
                }
                Reply::Later(rx)
            }
        }
    }

    // ------------------------------------------------------------------ Heartbeat

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if let Err(e) = validate_member(group, member_id, instance_id) {
            return code(e);
        }
        if generation != group.generation {
            return code(ResponseError::IllegalGeneration);
        }
        let state = group.state;
        let Some(member) = group.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        match state {
            GroupState::Empty | GroupState::Dead => code(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                member.last_heartbeat = now;
                code(ResponseError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.last_heartbeat = now;
                NONE
            }
        }
    }

    // ------------------------------------------------------------------ LeaveGroup

    /// Removes members; `(member id, instance id)` each, answered in order.
    pub fn leave(
        &mut self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now: i64,
    ) -> Vec<i16> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![code(ResponseError::UnknownMemberId); members.len()];
        };
        let mut out = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let target = match instance_id {
                Some(instance) => match group.static_members.get(instance) {
                    Some(current) if member_id.is_empty() || member_id == current => {
                        Ok(current.clone())
                    }
                    Some(_) => Err(ResponseError::FencedInstanceId),
                    None => Err(ResponseError::UnknownMemberId),
                },
                None if group.pending.remove(member_id).is_some() => {
                    try_complete_join(group, &self.config, &mut self.writes, now);
                    out.push(NONE);
                    continue;
                }
                None if group.members.contains_key(member_id) => Ok(member_id.clone()),
                None => Err(ResponseError::UnknownMemberId),
            };
            match target {
                Ok(id) => {
                    tracing::debug!(group = group_id, member = %id, "member left the group");
                    remove_member(
                        group,
                        &self.config,
                        &mut self.writes,
                        &mut self.rebalances,
                        &id,
                        now,
                    );
                    out.push(NONE);
                }
                Err(e) => out.push(code(e)),
            }
        }
        out
    }

    // ------------------------------------------------------------------ offsets

    /// Validates a commit (Kafka's validateOffsetCommit); `Err` applies to every partition.
    pub fn validate_commit(&mut self, p: &CommitParams, now: i64) -> Result<(), ResponseError> {
        if p.group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let simple = p.generation < 0 && p.member_id.is_empty() && p.group_instance_id.is_none();
        let Some(group) = self.groups.get_mut(&p.group_id) else {
            if p.generation < 0 {
                self.groups
                    .insert(p.group_id.clone(), Group::new(&p.group_id, now));
                return Ok(());
            }
            return Err(ResponseError::IllegalGeneration);
        };
        if let Some(cg) = &group.consumer {
            return Groups::validate_consumer_commit(cg, &p.member_id, p.generation);
        }
        match group.state {
            GroupState::Dead => Err(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty if p.generation < 0 => Ok(()),
            _ if !simple => {
                validate_member(group, &p.member_id, p.group_instance_id.as_deref())?;
                if p.generation != group.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
                if group.state == GroupState::CompletingRebalance {
                    return Err(ResponseError::RebalanceInProgress);
                }
                if let Some(m) = group.members.get_mut(&p.member_id) {
                    // A commit shows the member is alive, as in Kafka.
                    m.last_heartbeat = m.last_heartbeat.max(now);
                }
                Ok(())
            }
            GroupState::Empty => Ok(()),
            _ => Err(ResponseError::UnknownMemberId),
        }
    }

    /// Commits offsets (after `validate_commit`); one error code per offset.
    pub fn commit(&mut self, group_id: &str, offsets: Vec<OffsetToCommit>, now: i64) -> Vec<i16> {
        let max = self.config.max_metadata_bytes;
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![code(ResponseError::CoordinatorNotAvailable); offsets.len()];
        };
        offsets
            .into_iter()
            .map(|o| {
                let metadata = o.metadata.unwrap_or_default();
                if metadata.len() > max {
                    return code(ResponseError::OffsetMetadataTooLarge);
                }
                let committed = Committed {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata,
                    commit_timestamp: now,
                };
                self.writes.push(Write::Offset {
                    group: group_id.to_string(),
                    topic: o.topic.clone(),
                    partition: o.partition,
                    value: Some(OffsetValue {
                        offset: committed.offset,
                        leader_epoch: committed.leader_epoch,
                        metadata: committed.metadata.clone(),
                        commit_timestamp: now,
                    }),
                });
                group.offsets.insert((o.topic, o.partition), committed);
                NONE
            })
            .collect()
    }

    /// Committed offsets; `topics: None` = every committed partition.
    pub fn fetch(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<(i32, Option<Committed>)>)> {
        let group = self.groups.get(group_id);
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let parts = partitions
                        .into_iter()
                        .map(|p| {
                            (
                                p,
                                group.and_then(|g| g.offsets.get(&(topic.clone(), p)).cloned()),
                            )
                        })
                        .collect();
                    (topic, parts)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<Committed>)>> = BTreeMap::new();
                if let Some(g) = group {
                    for ((topic, p), c) in &g.offsets {
                        by_topic
                            .entry(topic.clone())
                            .or_default()
                            .push((*p, Some(c.clone())));
                    }
                }
                by_topic.into_iter().collect()
            }
        }
    }

    /// OffsetDelete: `Err` is the top-level error.
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, i16)>)>, ResponseError> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound);
        };
        if group.state == GroupState::Dead {
            return Err(ResponseError::GroupIdNotFound);
        }
        let subscribed = if group.is_empty() {
            Some(Vec::new())
        } else if let Some(cg) = &group.consumer {
            Some(cg.subscribed_topics().into_iter().collect())
        } else {
            match group.subscribed_topics() {
                Some(t) => Some(t),
                None => return Err(ResponseError::NonEmptyGroup),
            }
        };
        let subscribed = subscribed.unwrap_or_default();
        let mut out = Vec::new();
        for (topic, partitions) in topics {
            let mut results = Vec::new();
            for p in partitions {
                if subscribed.contains(&topic) {
                    results.push((p, code(ResponseError::GroupSubscribedToTopic)));
                    continue;
                }
                if group.offsets.remove(&(topic.clone(), p)).is_some() {
                    self.writes.push(Write::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: p,
                        value: None,
                    });
                }
                results.push((p, NONE));
            }
            out.push((topic, results));
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ admin

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        let g = self.groups.get(group_id)?;
        if let Some(cg) = &g.consumer {
            return Some(super::consumer_group::classic_summary(g, cg));
        }
        let stable = g.state == GroupState::Stable;
        let protocol = if stable {
            g.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let mut members: Vec<&Member> = g.members.values().collect();
        members.sort_by_key(|m| m.seq);
        let members = members
            .into_iter()
            .map(|m| MemberSummary {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata_for(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        Some(GroupSummary {
            group_id: g.id.clone(),
            state: g.state,
            state_name: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        })
    }

    pub fn list(&self) -> Vec<GroupListing> {
        let mut out: Vec<GroupListing> = self
            .groups
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
                state_name: g
                    .consumer
                    .as_ref()
                    .map_or(g.state.name(), |c| c.state_name()),
                group_type: if g.consumer.is_some() {
                    "consumer"
                } else {
                    "classic"
                },
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// DeleteGroups for one group.
    pub fn delete_group(&mut self, group_id: &str) -> i16 {
        if group_id.is_empty() {
            return code(ResponseError::InvalidGroupId);
        }
        let Some(group) = self.groups.get(group_id) else {
            return code(ResponseError::GroupIdNotFound);
        };
        match group.state {
            GroupState::Dead => code(ResponseError::GroupIdNotFound),
            GroupState::Empty if !group.is_empty() => code(ResponseError::NonEmptyGroup),
            GroupState::Empty => {
                self.remove_group(group_id);
                NONE
            }
            _ => code(ResponseError::NonEmptyGroup),
        }
    }

    fn remove_group(&mut self, group_id: &str) {
        let Some(group) = self.groups.remove(group_id) else {
            return;
        };
        for (topic, partition) in group.offsets.keys() {
            self.writes.push(Write::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            });
        }
        if group.consumer.is_some() {
            self.writes.push(Write::Consumer {
                group: group_id.to_string(),
                value: None,
            });
        }
        self.writes.push(Write::Group {
            group: group_id.to_string(),
            value: None,
        });
    }

    // ------------------------------------------------------------------ timers

    /// Runs every timer that is due at `now`.
    pub fn tick(&mut self, now: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in &ids {
            let Some(group) = self.groups.get_mut(id) else {
                continue;
            };
            // KIP-394 ids never used.
            group.pending.retain(|_, deadline| *deadline > now);
            // Members silent for their session timeout, unless waiting for an answer.
            let mut expired: Vec<(u64, String)> = group
                .members
                .values()
                .filter(|m| m.join_waiter.is_none() && m.sync_waiter.is_none())
                .filter(|m| m.last_heartbeat + i64::from(m.session_timeout_ms) <= now)
                .map(|m| (m.seq, m.member_id.clone()))
                .collect();
            expired.sort();
            for (_, member_id) in expired {
                tracing::info!(group = %id, member = %member_id, "member session expired");
                remove_member(
                    group,
                    &self.config,
                    &mut self.writes,
                    &mut self.rebalances,
                    &member_id,
                    now,
                );
            }
            if group.state == GroupState::PreparingRebalance {
                if now >= group.join_deadline {
                    complete_join(group, &mut self.writes, now);
                } else {
                    try_complete_join(group, &self.config, &mut self.writes, now);
                }
            }
        }
        self.tick_consumer_groups(now);
        if now - self.last_expiry_check >= self.config.offsets_retention_check_ms {
            self.last_expiry_check = now;
            self.expire_offsets(now);
        }
    }

    /// Offsets of groups without members expire `offsets.retention.ms` after the
    /// later of their commit and the group becoming empty; an empty group without
    /// offsets is removed.
    pub fn expire_offsets(&mut self, now: i64) {
        let retention = self.config.offsets_retention_ms;
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            if group.state != GroupState::Empty || !group.is_empty() {
                continue;
            }
            let since = group.state_since;
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, c)| c.commit_timestamp.max(since) + retention <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for (topic, partition) in expired {
                group.offsets.remove(&(topic.clone(), partition));
                self.writes.push(Write::Offset {
                    group: group.id.clone(),
                    topic,
                    partition,
                    value: None,
                });
            }
            if group.offsets.is_empty() && group.pending.is_empty() {
                dead.push(group.id.clone());
            }
        }
        for id in dead {
            tracing::info!(group = %id, "removing an empty group without offsets");
            self.remove_group(&id);
        }
    }

    // ------------------------------------------------------------------ loading

    /// Rebuilds groups from the latest value of each `__consumer_offsets` key.
    pub fn load(
        &mut self,
        groups: HashMap<String, GroupValue>,
        offsets: HashMap<(String, String, i32), OffsetValue>,
        now: i64,
    ) {
        for (id, value) in groups {
            let mut group = Group::new(&id, now);
            group.generation = value.generation;
            group.protocol_type =
                (!value.protocol_type.is_empty()).then_some(value.protocol_type.clone());
            if value.state_timestamp > 0 {
                group.state_since = value.state_timestamp;
            }
            if !value.members.is_empty() {
                group.protocol = value.protocol.clone();
                group.leader = value.leader.clone();
                let protocol = value.protocol.clone().unwrap_or_default();
                for m in value.members {
                    let seq = group.next_seq;
                    group.next_seq += 1;
                    if let Some(instance) = &m.group_instance_id {
                        group
                            .static_members
                            .insert(instance.clone(), m.member_id.clone());
                    }
                    group.members.insert(
                        m.member_id.clone(),
                        Member {
                            member_id: m.member_id,
                            group_instance_id: m.group_instance_id,
                            client_id: m.client_id,
                            client_host: m.client_host,
                            session_timeout_ms: m.session_timeout_ms,
                            rebalance_timeout_ms: m.rebalance_timeout_ms,
                            protocols: vec![(protocol.clone(), m.subscription)],
                            assignment: m.assignment,
                            join_waiter: None,
                            sync_waiter: None,
                            last_heartbeat: now,
                            seq,
                        },
                    );
                }
                if group
                    .leader
                    .as_ref()
                    .is_none_or(|l| !group.members.contains_key(l))
                {
                    group.leader = group.members.keys().next().cloned();
                }
                group.state = GroupState::Stable;
            }
            self.groups.insert(id, group);
        }
        for ((group_id, topic, partition), v) in offsets {
            let group = self
                .groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(&group_id, now));
            group.offsets.insert(
                (topic, partition),
                Committed {
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata,
                    commit_timestamp: v.commit_timestamp,
                },
            );
        }
    }
}

/// The group's metadata record (written when a generation becomes Stable or Empty).
pub fn group_record(group: &Group) -> Write {
    let protocol = group.protocol.clone().unwrap_or_default();
    let mut members: Vec<&Member> = group.members.values().collect();
    members.sort_by_key(|m| m.seq);
    Write::Group {
        group: group.id.clone(),
        value: Some(GroupValue {
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            generation: group.generation,
            protocol: group.protocol.clone(),
            leader: group.leader.clone(),
            state_timestamp: group.state_since,
            members: members
                .into_iter()
                .map(|m| MemberValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }),
    }
}

/// The member id must be in the group, and a static member's instance id must
/// map to it (else it has been fenced by a newer instance).
fn validate_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    if let Some(instance) = instance_id {
        match group.static_members.get(instance) {
            Some(current) if current == member_id => {}
            Some(_) => return Err(ResponseError::FencedInstanceId),
            None => return Err(ResponseError::UnknownMemberId),
        }
    }
    if !group.members.contains_key(member_id) {
        return Err(ResponseError::UnknownMemberId);
    }
    Ok(())
}

fn new_member(p: &JoinParams, member_id: String, seq: u64, now: i64) -> Member {
    Member {
        member_id,
        group_instance_id: p.group_instance_id.clone(),
        client_id: p.client_id.clone(),
        client_host: p.client_host.clone(),
        session_timeout_ms: p.session_timeout_ms,
        rebalance_timeout_ms: p.rebalance_timeout_ms,
        protocols: p.protocols.clone(),
        assignment: Bytes::new(),
        join_waiter: None,
        sync_waiter: None,
        last_heartbeat: now,
        seq,
    }
}

/// JoinGroup with an empty member id. `Some` = answer now.
fn join_new(
    group: &mut Group,
    config: &Config,
    writes: &mut Vec<Write>,
    rebalances: &mut u64,
    p: JoinParams,
    tx: oneshot::Sender<JoinResult>,
    now: i64,
) -> Option<JoinResult> {
    if let Some(instance) = p.group_instance_id.clone() {
        if let Some(old_id) = group.static_members.get(&instance).cloned() {
            return rejoin_static(group, config, writes, rebalances, p, &old_id, tx, now);
        }
        let member_id = new_member_id(&instance);
        group.static_members.insert(instance, member_id.clone());
        add_member_and_rebalance(group, config, writes, rebalances, &p, member_id, tx, now);
        return None;
    }
    let prefix = if p.client_id.is_empty() {
        "member"
    } else {
        p.client_id.as_str()
    };
    let member_id = new_member_id(prefix);
    if p.require_known_member_id {
        group
            .pending
            .insert(member_id.clone(), now + i64::from(p.session_timeout_ms));
        return Some(JoinResult::error(
            code(ResponseError::MemberIdRequired),
            &member_id,
        ));
    }
    add_member_and_rebalance(group, config, writes, rebalances, &p, member_id, tx, now);
    None
}

/// A static member came back (with an empty member id) while its old
/// incarnation is still a member: the new one takes its place and assignment.
#[allow(clippy::too_many_arguments)]
fn rejoin_static(
    group: &mut Group,
    config: &Config,
    writes: &mut Vec<Write>,
    rebalances: &mut u64,
    p: JoinParams,
    old_id: &str,
    tx: oneshot::Sender<JoinResult>,
    now: i64,
) -> Option<JoinResult> {
    let instance = p.group_instance_id.clone().unwrap_or_default();
    let Some(mut member) = group.members.remove(old_id) else {
        group.static_members.remove(&instance);
        let member_id = new_member_id(&instance);
        group.static_members.insert(instance, member_id.clone());
        add_member_and_rebalance(group, config, writes, rebalances, &p, member_id, tx, now);
        return None;
    };
    let fenced = code(ResponseError::FencedInstanceId);
    member.answer_join(JoinResult::error(fenced, old_id));
    member.answer_sync(SyncResult::error(fenced));
    let new_id = new_member_id(&instance);
    tracing::info!(group = %group.id, instance = %instance, old = %old_id, new = %new_id, "static member rejoined");
    let old_protocols = std::mem::replace(&mut member.protocols, p.protocols.clone());
    member.member_id = new_id.clone();
    member.client_id = p.client_id.clone();
    member.client_host = p.client_host.clone();
    member.session_timeout_ms = p.session_timeout_ms;
    member.rebalance_timeout_ms = p.rebalance_timeout_ms;
    member.last_heartbeat = now;
    let was_leader = group.is_leader(old_id);
    group.members.insert(new_id.clone(), member);
    group.static_members.insert(instance, new_id.clone());
    if was_leader {
        group.leader = Some(new_id.clone());
    }
    match group.state {
        GroupState::Stable => {
            let selected = group.select_protocol();
            let unchanged_selection = selected.is_some() && selected == group.protocol;
            let same_metadata = group.protocol.as_deref().is_some_and(|proto| {
                let old = old_protocols
                    .iter()
                    .find(|(n, _)| n == proto)
                    .map(|(_, m)| m);
                let new = p.protocols.iter().find(|(n, _)| n == proto).map(|(_, m)| m);
                old == new
            });
            if !(unchanged_selection && same_metadata) {
                update_member_and_rebalance(
                    group, config, writes, rebalances, &p, &new_id, tx, now,
                );
                return None;
            }
            writes.push(group_record(group));
            Some(JoinResult {
                error: NONE,
                generation: group.generation,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol.clone(),
                leader: group.leader.clone().unwrap_or_default(),
                member_id: new_id,
                members: if was_leader {
                    group.member_metadata()
                } else {
                    Vec::new()
                },
                skip_assignment: was_leader,
            })
        }
        _ => {
            update_member_and_rebalance(group, config, writes, rebalances, &p, &new_id, tx, now);
            None
        }
    }
}

/// JoinGroup with a member id. `Some` = answer now.
fn join_known(
    group: &mut Group,
    config: &Config,
    writes: &mut Vec<Write>,
    rebalances: &mut u64,
    p: JoinParams,
    tx: oneshot::Sender<JoinResult>,
    now: i64,
) -> Option<JoinResult> {
    let fail = |e: ResponseError| Some(JoinResult::error(code(e), &p.member_id));
    if group.pending.contains_key(&p.member_id) && !group.members.contains_key(&p.member_id) {
        if p.group_instance_id.is_some() {
            return fail(ResponseError::UnknownMemberId);
        }
        let member_id = p.member_id.clone();
        add_member_and_rebalance(group, config, writes, rebalances, &p, member_id, tx, now);
        return None;
    }
    if let Err(e) = validate_member(group, &p.member_id, p.group_instance_id.as_deref()) {
        return fail(e);
    }
    let Some(member) = group.members.get(&p.member_id) else {
        return fail(ResponseError::UnknownMemberId);
    };
    let unchanged = member.matches(&p.protocols);
    match group.state {
        GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
        GroupState::PreparingRebalance => {
            update_member_and_rebalance(
                group,
                config,
                writes,
                rebalances,
                &p,
                &p.member_id,
                tx,
                now,
            );
            None
        }
        GroupState::CompletingRebalance if unchanged => {
            Some(current_generation(group, &p.member_id))
        }
        GroupState::Stable if unchanged && !group.is_leader(&p.member_id) => {
            Some(current_generation(group, &p.member_id))
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            update_member_and_rebalance(
                group,
                config,
                writes,
                rebalances,
                &p,
                &p.member_id,
                tx,
                now,
            );
            None
        }
    }
}

/// The current generation's JoinGroup answer (a member that lost its answer).
fn current_generation(group: &Group, member_id: &str) -> JoinResult {
    let leader = group.is_leader(member_id);
    JoinResult {
        error: NONE,
        generation: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        leader: group.leader.clone().unwrap_or_default(),
        member_id: member_id.to_string(),
        members: if leader {
            group.member_metadata()
        } else {
            Vec::new()
        },
        skip_assignment: false,
    }
}

#[allow(clippy::too_many_arguments)]
fn add_member_and_rebalance(
    group: &mut Group,
    config: &Config,
    writes: &mut Vec<Write>,
    rebalances: &mut u64,
    p: &JoinParams,
    member_id: String,
    tx: oneshot::Sender<JoinResult>,
    now: i64,
) {
    group.pending.remove(&member_id);
    let seq = group.next_seq;
    group.next_seq += 1;
    let mut member = new_member(p, member_id.clone(), seq, now);
    member.join_waiter = Some(tx);
    if group.members.is_empty() {
        group.protocol_type = Some(p.protocol_type.clone());
    }
    group.members.insert(member_id.clone(), member);
    if group.leader.is_none() {
        group.leader = Some(member_id);
    }
    maybe_prepare_rebalance(group, config, rebalances, now);
    try_complete_join(group, config, writes, now);
}

#[allow(clippy::too_many_arguments)]
fn update_member_and_rebalance(
    group: &mut Group,
    config: &Config,
    writes: &mut Vec<Write>,
    rebalances: &mut u64,
    p: &JoinParams,
    member_id: &str,
    tx: oneshot::Sender<JoinResult>,
    now: i64,
) {
    if let Some(member) = group.members.get_mut(member_id) {
        member.protocols = p.protocols.clone();
        member.session_timeout_ms = p.session_timeout_ms;
        member.rebalance_timeout_ms = p.rebalance_timeout_ms;
        member.client_id = p.client_id.clone();
        member.client_host = p.client_host.clone();
        member.last_heartbeat = now;
        member.answer_join(JoinResult::error(
            code(ResponseError::RebalanceInProgress),
            member_id,
        ));
        member.join_waiter = Some(tx);
    }
    maybe_prepare_rebalance(group, config, rebalances, now);
    try_complete_join(group, config, writes, now);
}

fn maybe_prepare_rebalance(group: &mut Group, config: &Config, rebalances: &mut u64, now: i64) {
    if matches!(
        group.state,
        GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
    ) {
        prepare_rebalance(group, config, rebalances, now);
    }
}

fn prepare_rebalance(group: &mut Group, config: &Config, rebalances: &mut u64, now: i64) {
    if group.state == GroupState::CompletingRebalance {
        let rebalancing = code(ResponseError::RebalanceInProgress);
        for m in group.members.values_mut() {
            m.assignment = Bytes::new();
            m.answer_sync(SyncResult::error(rebalancing));
        }
    }
    let was_empty = group.state == GroupState::Empty;
    group.transition(GroupState::PreparingRebalance, now);
    group.join_deadline = now + group.max_rebalance_timeout();
    group.join_not_before = if was_empty {
        (now + config.initial_rebalance_delay_ms).min(group.join_deadline)
    } else {
        now
    };
    *rebalances += 1;
    tracing::info!(group = %group.id, generation = group.generation, "preparing to rebalance");
}

fn try_complete_join(group: &mut Group, _config: &Config, writes: &mut Vec<Write>, now: i64) {
    if group.state == GroupState::PreparingRebalance
        && group.all_joined()
        && now >= group.join_not_before
    {
        complete_join(group, writes, now);
    }
}

/// Ends the join phase: members that did not rejoin (dynamic ones) are removed,
/// the generation advances and every joined member gets its answer.
fn complete_join(group: &mut Group, writes: &mut Vec<Write>, now: i64) {
    let gone: Vec<String> = group
        .members
        .values()
        .filter(|m| !m.awaiting_join() && m.group_instance_id.is_none())
        .map(|m| m.member_id.clone())
        .collect();
    for id in gone {
        tracing::info!(group = %group.id, member = %id, "member did not rejoin in time");
        if let Some(mut m) = group.members.remove(&id) {
            m.answer_sync(SyncResult::error(code(ResponseError::UnknownMemberId)));
        }
    }
    if !group.members.is_empty() && !group.members.values().any(Member::awaiting_join) {
        // Only static members that have not rejoined: wait for them (or their expiry).
        group.join_deadline = now + group.max_rebalance_timeout();
        return;
    }
    // The leader must be a member that rejoined.
    let leader_ok = group
        .leader
        .as_ref()
        .and_then(|l| group.members.get(l))
        .is_some_and(Member::awaiting_join);
    if !leader_ok {
        let mut joined: Vec<&Member> = group
            .members
            .values()
            .filter(|m| m.awaiting_join())
            .collect();
        joined.sort_by_key(|m| m.seq);
        group.leader = joined.first().map(|m| m.member_id.clone());
    }
    group.generation += 1;
    group.pending.clear();
    if group.members.is_empty() {
        group.protocol = None;
        group.leader = None;
        group.transition(GroupState::Empty, now);
        tracing::info!(group = %group.id, generation = group.generation, "group is empty");
        writes.push(group_record(group));
        return;
    }
    group.protocol = group.select_protocol();
    group.transition(GroupState::CompletingRebalance, now);
    tracing::info!(group = %group.id, generation = group.generation, members = group.members.len(),
        protocol = ?group.protocol, "join phase complete");
    let all = group.member_metadata();
    let leader = group.leader.clone().unwrap_or_default();
    let (generation, protocol_type, protocol_name) = (
        group.generation,
        group.protocol_type.clone(),
        group.protocol.clone(),
    );
    for m in group.members.values_mut() {
        m.last_heartbeat = now;
        let result = JoinResult {
            error: NONE,
            generation,
            protocol_type: protocol_type.clone(),
            protocol_name: protocol_name.clone(),
            leader: leader.clone(),
            member_id: m.member_id.clone(),
            members: if m.member_id == leader {
                all.clone()
            } else {
                Vec::new()
            },
            skip_assignment: false,
        };
        m.answer_join(result);
    }
}

/// Removes a member (left, expired or fenced) and rebalances the rest.
fn remove_member(
    group: &mut Group,
    config: &Config,
    writes: &mut Vec<Write>,
    rebalances: &mut u64,
    member_id: &str,
    now: i64,
) {
    let Some(mut member) = group.members.remove(member_id) else {
        return;
    };
    let unknown = code(ResponseError::UnknownMemberId);
    member.answer_join(JoinResult::error(unknown, member_id));
    member.answer_sync(SyncResult::error(unknown));
    if let Some(instance) = &member.group_instance_id {
        if group.static_members.get(instance).map(String::as_str) == Some(member_id) {
            group.static_members.remove(instance);
        }
    }
    if group.is_leader(member_id) {
        let mut rest: Vec<&Member> = group.members.values().collect();
        rest.sort_by_key(|m| m.seq);
        group.leader = rest.first().map(|m| m.member_id.clone());
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, config, rebalances, now);
            try_complete_join(group, config, writes, now);
        }
        GroupState::PreparingRebalance => try_complete_join(group, config, writes, now),
        GroupState::Empty | GroupState::Dead => {}
    }
}
