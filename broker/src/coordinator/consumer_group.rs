//! KIP-848, the "consumer" group protocol (ConsumerGroupHeartbeat), as Apache
//! Kafka's GroupMetadataManager runs it, as a deterministic state machine:
//!
//! - the **group epoch** advances on every change of membership, subscriptions,
//!   preferred server assignor or subscribed topics' partition counts;
//! - the **target assignment** is recomputed by the server-side assignor
//!   (`uniform`, the default, or `range`) whenever it is older than the group
//!   epoch; its epoch is the group epoch it was computed for;
//! - each member **reconciles** towards its target one heartbeat at a time
//!   (Kafka's CurrentAssignmentBuilder): partitions it must give up are
//!   revoked first (the member keeps its epoch until it reports, in the
//!   heartbeat's `topic_partitions`, that it no longer owns them); a partition
//!   is given to its new owner only once no other member holds or is still
//!   revoking it; the member then moves to the target's epoch;
//! - members expire after `group.consumer.session.timeout.ms` without a
//!   heartbeat and are fenced when they take longer than their rebalance
//!   timeout to revoke partitions;
//! - epoch -1 leaves the group, epoch -2 (static members, with an instance id)
//!   leaves temporarily: the member keeps its assignment until a new member
//!   with the same instance id takes it over or its session expires.
//!
//! A group is either classic or consumer: the consumer state lives in
//! [`Group::consumer`] while the committed offsets stay in [`Group::offsets`].
//! An empty classic group becomes a consumer group on the first heartbeat, and
//! an empty consumer group a classic one on the first JoinGroup; otherwise the
//! other protocol is refused (GROUP_ID_NOT_FOUND for a heartbeat, as Kafka does
//! with its migration policy off; INCONSISTENT_GROUP_PROTOCOL for JoinGroup).
//!
//! Persistence: the whole consumer state (epochs, assignor, topic snapshot,
//! members with subscriptions, epochs, assignments and targets) is written as
//! one record per group to `__consumer_offsets` (see
//! [`super::records::RecordKey::ConsumerGroup`]) whenever it changes, so a
//! restarted broker keeps the group; heartbeat timers restart at load.

use super::group::Group;
use super::machine::{Groups, Write};
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// A topic partition by name.
pub type Tp = (String, i32);

pub const ASSIGNORS: &[&str] = &["uniform", "range"];
pub const DEFAULT_ASSIGNOR: &str = "uniform";
/// Epoch of a member that left (the value the leave request carries).
pub const LEAVE_EPOCH: i32 = -1;
/// Epoch of a static member that left temporarily.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

fn code(e: ResponseError) -> i16 {
    e.code()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Stable,
    /// Waiting for the member to revoke `pending_revocation`.
    UnrevokedPartitions,
    /// Part of the target is still held by other members.
    UnreleasedPartitions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Sorted, without duplicates.
    pub subscribed: Vec<String>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    /// What the member has been told it owns.
    pub assigned: BTreeSet<Tp>,
    /// What it must give up before it moves on.
    pub pending_revocation: BTreeSet<Tp>,
    #[serde(skip)]
    pub last_heartbeat: i64,
    /// When a member that must revoke partitions is fenced (0 = none).
    #[serde(skip)]
    pub revocation_deadline: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: BTreeMap<String, CgMember>,
    /// instance id -> member id.
    pub static_members: BTreeMap<String, String>,
    /// member id -> target assignment.
    pub target: BTreeMap<String, BTreeSet<Tp>>,
    /// The subscribed topics as last seen: name -> (id, partitions).
    pub topics: BTreeMap<String, (Uuid, i32)>,
}

impl ConsumerGroup {
    /// Kafka's consumer group states.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self.members.values().any(|m| {
            m.epoch != STATIC_LEAVE_EPOCH
                && (m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        }) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.subscribed.iter().cloned())
            .collect()
    }

    fn bump(&mut self) {
        self.epoch += 1;
    }

    /// The preferred assignor: the one most members name (ties: by name).
    fn preferred_assignor(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for (name, n) in votes {
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((name, n));
            }
        }
        best.map_or(DEFAULT_ASSIGNOR, |(n, _)| n).to_string()
    }

    /// Recomputes the target assignment when it is older than the group epoch.
    fn maybe_compute_target(&mut self) {
        if self.assignment_epoch >= self.epoch {
            return;
        }
        let members: Vec<(String, Vec<String>)> = self
            .members
            .values()
            .map(|m| (m.member_id.clone(), m.subscribed.clone()))
            .collect();
        let partitions: BTreeMap<String, i32> = self
            .topics
            .iter()
            .map(|(t, (_, n))| (t.clone(), *n))
            .collect();
        self.target = match self.assignor.as_str() {
            "range" => assign_range(&members, &partitions),
            _ => assign_uniform(&members, &partitions, &self.target),
        };
        self.assignment_epoch = self.epoch;
        tracing::info!(epoch = self.epoch, assignor = %self.assignor, members = members.len(),
            "computed a consumer group target assignment");
    }

    /// Partitions held (assigned or still being revoked) by members other than `except`.
    fn held_by_others(&self, except: &str) -> HashSet<Tp> {
        self.members
            .values()
            .filter(|m| m.member_id != except)
            .flat_map(|m| {
                m.assigned
                    .iter()
                    .chain(m.pending_revocation.iter())
                    .cloned()
            })
            .collect()
    }

    /// One reconciliation step of `member_id` (Kafka's CurrentAssignmentBuilder).
    /// `owned`: what the member reported it owns (`None` = unchanged).
    fn reconcile(&mut self, member_id: &str, owned: Option<&BTreeSet<Tp>>, now: i64) {
        let target_epoch = self.assignment_epoch;
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let held = self.held_by_others(member_id);
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        let step = match m.state {
            MemberState::Stable => m.epoch != target_epoch || m.assigned != target,
            MemberState::UnrevokedPartitions => {
                owned.is_some_and(|o| o.is_disjoint(&m.pending_revocation))
            }
            MemberState::UnreleasedPartitions => true,
        };
        if !step {
            return;
        }
        let keep: BTreeSet<Tp> = m.assigned.intersection(&target).cloned().collect();
        let revoke: BTreeSet<Tp> = m.assigned.difference(&target).cloned().collect();
        if !revoke.is_empty() {
            m.assigned = keep;
            m.pending_revocation = revoke;
            m.state = MemberState::UnrevokedPartitions;
            m.revocation_deadline = now + i64::from(m.rebalance_timeout_ms.max(0));
            return;
        }
        let mut assigned = keep;
        let mut unreleased = false;
        for tp in target.difference(&m.assigned) {
            if held.contains(tp) {
                unreleased = true;
            } else {
                assigned.insert(tp.clone());
            }
        }
        m.assigned = assigned;
        m.pending_revocation.clear();
        m.revocation_deadline = 0;
        m.state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = target_epoch;
        }
    }

    /// Removes a member for good (left, expired or fenced); the group rebalances.
    fn remove_member(&mut self, member_id: &str) -> bool {
        let Some(m) = self.members.remove(member_id) else {
            return false;
        };
        if let Some(instance) = &m.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        self.target.remove(member_id);
        self.assignor = self.preferred_assignor();
        self.bump();
        self.maybe_compute_target();
        true
    }

    /// The member's assigned partitions by topic id, for responses.
    pub fn by_topic_id(&self, parts: &BTreeSet<Tp>) -> Vec<(Uuid, String, Vec<i32>)> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in parts {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        by_topic
            .into_iter()
            .filter_map(|(t, ps)| self.topics.get(t).map(|(id, _)| (*id, t.to_string(), ps)))
            .collect()
    }
}

/// Topic metadata the heartbeat needs.
pub trait TopicLookup {
    /// (topic id, partition count) of a topic.
    fn by_name(&self, name: &str) -> Option<(Uuid, i32)>;
    fn name_of(&self, id: &Uuid) -> Option<String>;
}

impl TopicLookup for HashMap<String, (Uuid, i32)> {
    fn by_name(&self, name: &str) -> Option<(Uuid, i32)> {
        self.get(name).copied()
    }
    fn name_of(&self, id: &Uuid) -> Option<String> {
        self.iter()
            .find(|(_, (i, _))| i == id)
            .map(|(n, _)| n.clone())
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeartbeatParams {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed: Option<Vec<String>>,
    pub regex: Option<String>,
    pub server_assignor: Option<String>,
    /// Owned partitions by topic id (`None` = unchanged since the last heartbeat).
    pub owned: Option<Vec<(Uuid, Vec<i32>)>>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatResult {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: Option<String>,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment (topic id, partitions), when it must be sent.
    pub assignment: Option<Vec<(Uuid, Vec<i32>)>>,
}

impl HeartbeatResult {
    fn error(e: ResponseError, message: impl Into<String>) -> Self {
        HeartbeatResult {
            error: code(e),
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

/// ConsumerGroupDescribe's view of a member.
#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member: CgMember,
    pub assignment: Vec<(Uuid, String, Vec<i32>)>,
    pub target: Vec<(Uuid, String, Vec<i32>)>,
}

#[derive(Debug, Clone)]
pub struct DescribedConsumerGroup {
    pub group_id: String,
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<DescribedMember>,
}

fn new_member_id() -> String {
    // Kafka's members ids are Uuid.randomUuid().toString() (v0) or client-made (v1).
    Uuid::new_v4().to_string()
}

impl Groups {
    /// ConsumerGroupHeartbeat.
    pub fn consumer_heartbeat(
        &mut self,
        p: HeartbeatParams,
        topics: &dyn TopicLookup,
        now: i64,
    ) -> HeartbeatResult {
        let interval = self.config.consumer_heartbeat_interval_ms;
        if let Err(r) = validate_heartbeat(&p) {
            return r;
        }
        if p.regex.is_some() {
            return HeartbeatResult::error(
                ResponseError::InvalidRegularExpression,
                "regular expression subscriptions are not supported by this broker",
            );
        }
        let joining = p.member_epoch == 0;
        let group = match self.groups.get_mut(&p.group_id) {
            Some(g) => g,
            None if joining => self
                .groups
                .entry(p.group_id.clone())
                .or_insert_with(|| Group::new(&p.group_id, now)),
            None => {
                return HeartbeatResult::error(
                    ResponseError::UnknownMemberId,
                    format!("group {} does not exist", p.group_id),
                )
            }
        };
        if group.consumer.is_none() {
            if !group.members.is_empty() || !group.pending.is_empty() {
                return HeartbeatResult::error(
                    ResponseError::GroupIdNotFound,
                    format!("group {} is not a consumer group", p.group_id),
                );
            }
            tracing::info!(group = %p.group_id, "the group uses the consumer protocol");
            group.consumer = Some(Box::new(ConsumerGroup {
                assignor: DEFAULT_ASSIGNOR.to_string(),
                ..Default::default()
            }));
            group.protocol_type = Some("consumer".into());
        }
        let group_id = group.id.clone();
        let Some(cg) = group.consumer.as_deref_mut() else {
            return HeartbeatResult::error(ResponseError::CoordinatorNotAvailable, "no state");
        };
        let result = heartbeat(cg, p, topics, interval, now);
        let dirty = result.1;
        if cg.members.is_empty() {
            group.state_since = now;
        }
        if dirty {
            self.writes.push(consumer_record(group));
        }
        tracing::trace!(group = %group_id, error = result.0.error, "consumer heartbeat");
        result.0
    }

    /// ConsumerGroupDescribe of one group; `Err` = not a (consumer) group.
    pub fn describe_consumer(
        &self,
        group_id: &str,
    ) -> Result<DescribedConsumerGroup, ResponseError> {
        let Some(group) = self.groups.get(group_id) else {
            return Err(ResponseError::GroupIdNotFound);
        };
        let Some(cg) = group.consumer.as_deref() else {
            return Err(ResponseError::GroupIdNotFound);
        };
        let members = cg
            .members
            .values()
            .map(|m| DescribedMember {
                member: m.clone(),
                assignment: cg.by_topic_id(&m.assigned),
                target: cg.by_topic_id(&cg.target.get(&m.member_id).cloned().unwrap_or_default()),
            })
            .collect();
        Ok(DescribedConsumerGroup {
            group_id: group_id.to_string(),
            state: cg.state_name(),
            epoch: cg.epoch,
            assignment_epoch: cg.assignment_epoch,
            assignor: cg.assignor.clone(),
            members,
        })
    }

    /// Session and revocation timers of the consumer groups.
    pub(crate) fn tick_consumer_groups(&mut self, now: i64) {
        let session = i64::from(self.config.consumer_session_timeout_ms);
        for group in self.groups.values_mut() {
            let Some(cg) = group.consumer.as_deref_mut() else {
                continue;
            };
            let expired: Vec<(String, &'static str)> = cg
                .members
                .values()
                .filter_map(|m| {
                    if m.last_heartbeat + session <= now {
                        Some((m.member_id.clone(), "session expired"))
                    } else if m.state == MemberState::UnrevokedPartitions
                        && m.revocation_deadline > 0
                        && m.revocation_deadline <= now
                    {
                        Some((
                            m.member_id.clone(),
                            "did not revoke within its rebalance timeout",
                        ))
                    } else {
                        None
                    }
                })
                .collect();
            if expired.is_empty() {
                continue;
            }
            for (member_id, why) in expired {
                tracing::info!(group = %group.id, member = %member_id, why, "removing a consumer group member");
                cg.remove_member(&member_id);
            }
            if cg.members.is_empty() {
                group.state_since = now;
            }
            self.writes.push(consumer_record(group));
        }
    }

    /// OffsetCommit from a member of a consumer group (Kafka's
    /// ConsumerGroup.validateOffsetCommit): the member epoch must be current.
    pub(crate) fn validate_consumer_commit(
        cg: &ConsumerGroup,
        member_id: &str,
        epoch: i32,
    ) -> Result<(), ResponseError> {
        if epoch < 0 && cg.members.is_empty() {
            return Ok(());
        }
        let Some(m) = cg.members.get(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        validate_epoch(epoch, m.epoch)
    }

    /// OffsetFetch v9 with a member id and epoch: `Err` is the group's error.
    pub fn validate_offset_fetch(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        epoch: i32,
    ) -> Result<(), ResponseError> {
        let Some(member_id) = member_id else {
            return Ok(());
        };
        if epoch < 0 && member_id.is_empty() {
            return Ok(());
        }
        let Some(cg) = self
            .groups
            .get(group_id)
            .and_then(|g| g.consumer.as_deref())
        else {
            return Ok(());
        };
        let Some(m) = cg.members.get(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        validate_epoch(epoch, m.epoch)
    }

    /// Rebuilds consumer groups from their stored records (after [`Groups::load`]).
    pub fn load_consumer_groups(&mut self, stored: HashMap<String, ConsumerGroup>, now: i64) {
        for (id, mut cg) in stored {
            for m in cg.members.values_mut() {
                m.last_heartbeat = now;
                if m.state == MemberState::UnrevokedPartitions {
                    m.revocation_deadline = now + i64::from(m.rebalance_timeout_ms.max(0));
                }
            }
            let group = self
                .groups
                .entry(id.clone())
                .or_insert_with(|| Group::new(&id, now));
            group.members.clear();
            group.static_members.clear();
            group.protocol_type = Some("consumer".into());
            group.consumer = Some(Box::new(cg));
        }
    }
}

fn validate_epoch(received: i32, current: i32) -> Result<(), ResponseError> {
    if received > current {
        Err(ResponseError::FencedMemberEpoch)
    } else if received < current {
        Err(ResponseError::StaleMemberEpoch)
    } else {
        Ok(())
    }
}

/// The group's consumer-protocol record (tombstone when it is no longer one).
pub fn consumer_record(group: &Group) -> Write {
    Write::Consumer {
        group: group.id.clone(),
        value: group
            .consumer
            .as_deref()
            .and_then(|cg| serde_json::to_vec(cg).ok()),
    }
}

fn validate_heartbeat(p: &HeartbeatParams) -> Result<(), HeartbeatResult> {
    let invalid = |m: &str| Err(HeartbeatResult::error(ResponseError::InvalidRequest, m));
    if p.group_id.is_empty() {
        return invalid("GroupId can't be empty.");
    }
    if p.instance_id.as_deref() == Some("") {
        return invalid("InstanceId can't be empty.");
    }
    if p.rack_id.as_deref() == Some("") {
        return invalid("RackId can't be empty.");
    }
    match p.member_epoch {
        0 => {
            if p.rebalance_timeout_ms == -1 {
                return invalid("RebalanceTimeoutMs must be provided in first request.");
            }
            if p.owned.as_ref().is_some_and(|o| !o.is_empty()) {
                return invalid("TopicPartitions must be empty when (re-)joining.");
            }
            if p.subscribed.is_none() && p.regex.is_none() {
                return invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                );
            }
        }
        LEAVE_EPOCH | STATIC_LEAVE_EPOCH => {
            if p.member_id.is_empty() {
                return invalid("MemberId can't be empty.");
            }
        }
        e if e > 0 => {
            if p.member_id.is_empty() {
                return invalid("MemberId can't be empty.");
            }
        }
        e => return invalid(&format!("MemberEpoch {e} is invalid.")),
    }
    if let Some(a) = &p.server_assignor {
        if !ASSIGNORS.contains(&a.as_str()) {
            return Err(HeartbeatResult::error(
                ResponseError::UnsupportedAssignor,
                format!(
                    "ServerAssignor {a} is not supported. Supported assignors: uniform, range."
                ),
            ));
        }
    }
    Ok(())
}

/// The heartbeat on a consumer group; `.1` = the group changed (write it).
fn heartbeat(
    cg: &mut ConsumerGroup,
    p: HeartbeatParams,
    topics: &dyn TopicLookup,
    interval: i32,
    now: i64,
) -> (HeartbeatResult, bool) {
    let fail = |e: ResponseError, m: String| (HeartbeatResult::error(e, m), false);
    if p.member_epoch == LEAVE_EPOCH || p.member_epoch == STATIC_LEAVE_EPOCH {
        return leave(cg, &p, interval);
    }
    let mut dirty = false;
    let mut new_member = false;
    // ------------------------------------------------------------ find the member
    let member_id = if p.member_epoch == 0 {
        match join(cg, &p, now) {
            Ok((id, new)) => {
                dirty = true;
                new_member = new;
                id
            }
            Err(e) => return (e, false),
        }
    } else {
        if let Some(instance) = &p.instance_id {
            match cg.static_members.get(instance) {
                None => {
                    return fail(
                        ResponseError::UnknownMemberId,
                        format!("instance {instance} is not in the group"),
                    )
                }
                Some(current) if *current != p.member_id => {
                    return fail(
                        ResponseError::FencedInstanceId,
                        format!("instance {instance} is now member {current}"),
                    )
                }
                Some(_) => {}
            }
        }
        let Some(m) = cg.members.get(&p.member_id) else {
            return fail(
                ResponseError::UnknownMemberId,
                format!("member {} is not in the group", p.member_id),
            );
        };
        let owned_subset = owned_names(&p, cg, topics).is_some_and(|o| o.is_subset(&m.assigned));
        if p.member_epoch > m.epoch
            || (p.member_epoch < m.epoch && !(p.member_epoch == m.previous_epoch && owned_subset))
        {
            return fail(
                ResponseError::FencedMemberEpoch,
                format!(
                    "member epoch {} is fenced: the coordinator has {}; abandon all partitions and rejoin",
                    p.member_epoch, m.epoch
                ),
            );
        }
        p.member_id.clone()
    };
    let owned = owned_names(&p, cg, topics);
    // ------------------------------------------------------------ update the member
    let Some(m) = cg.members.get_mut(&member_id) else {
        return fail(
            ResponseError::UnknownMemberId,
            format!("member {member_id} vanished"),
        );
    };
    let before = (
        m.epoch,
        m.state,
        m.assigned.clone(),
        m.pending_revocation.clone(),
    );
    m.last_heartbeat = now;
    m.client_id = p.client_id.clone();
    m.client_host = p.client_host.clone();
    if p.rebalance_timeout_ms > 0 && m.rebalance_timeout_ms != p.rebalance_timeout_ms {
        m.rebalance_timeout_ms = p.rebalance_timeout_ms;
        dirty = true;
    }
    if p.rack_id.is_some() && m.rack_id != p.rack_id {
        m.rack_id = p.rack_id.clone();
        dirty = true;
    }
    let mut bump = new_member;
    if let Some(names) = &p.subscribed {
        let mut names = names.clone();
        names.sort();
        names.dedup();
        if names != m.subscribed {
            tracing::info!(member = %member_id, topics = ?names, "consumer group member subscription changed");
            m.subscribed = names;
            bump = true;
        }
    }
    if p.server_assignor.is_some() && m.server_assignor != p.server_assignor {
        m.server_assignor = p.server_assignor.clone();
        bump = true;
    }
    // ------------------------------------------------------------ group epoch
    let assignor = cg.preferred_assignor();
    if assignor != cg.assignor {
        cg.assignor = assignor;
        bump = true;
    }
    let snapshot: BTreeMap<String, (Uuid, i32)> = cg
        .subscribed_topics()
        .into_iter()
        .filter_map(|t| topics.by_name(&t).map(|meta| (t, meta)))
        .collect();
    if snapshot != cg.topics {
        cg.topics = snapshot;
        bump = true;
    }
    if bump {
        cg.bump();
        dirty = true;
    }
    if cg.assignment_epoch < cg.epoch {
        cg.maybe_compute_target();
        dirty = true;
    }
    // ------------------------------------------------------------ reconcile
    cg.reconcile(&member_id, owned.as_ref(), now);
    let Some(m) = cg.members.get(&member_id) else {
        return fail(
            ResponseError::UnknownMemberId,
            format!("member {member_id} vanished"),
        );
    };
    let assignment_changed = before.2 != m.assigned;
    if before.0 != m.epoch
        || before.1 != m.state
        || assignment_changed
        || before.3 != m.pending_revocation
    {
        dirty = true;
    }
    let full = p.member_epoch == 0
        || (p.rebalance_timeout_ms != -1 && p.subscribed.is_some() && p.owned.is_some());
    let assignment = (full || assignment_changed).then(|| {
        cg.by_topic_id(&m.assigned)
            .into_iter()
            .map(|(id, _, ps)| (id, ps))
            .collect()
    });
    (
        HeartbeatResult {
            error: 0,
            message: None,
            member_id: Some(member_id),
            member_epoch: m.epoch,
            heartbeat_interval_ms: interval,
            assignment,
        },
        dirty,
    )
}

/// The owned partitions by name (unknown topic ids are left out).
fn owned_names(
    p: &HeartbeatParams,
    cg: &ConsumerGroup,
    topics: &dyn TopicLookup,
) -> Option<BTreeSet<Tp>> {
    let owned = p.owned.as_ref()?;
    let mut out = BTreeSet::new();
    for (id, parts) in owned {
        let name = cg
            .topics
            .iter()
            .find(|(_, (i, _))| i == id)
            .map(|(n, _)| n.clone())
            .or_else(|| topics.name_of(id));
        if let Some(name) = name {
            out.extend(parts.iter().map(|p| (name.clone(), *p)));
        }
    }
    Some(out)
}

/// A heartbeat with epoch 0: a new member, a member rejoining after it was
/// fenced, or a static member taking over its instance id. `.1` = a new
/// member (the group epoch advances).
fn join(
    cg: &mut ConsumerGroup,
    p: &HeartbeatParams,
    now: i64,
) -> Result<(String, bool), HeartbeatResult> {
    if let Some(instance) = &p.instance_id {
        if let Some(old_id) = cg.static_members.get(instance).cloned() {
            let Some(old) = cg.members.get(&old_id) else {
                cg.static_members.remove(instance);
                return Ok((add_member(cg, p, now), true));
            };
            if old.epoch != STATIC_LEAVE_EPOCH && old_id != p.member_id {
                return Err(HeartbeatResult::error(
                    ResponseError::UnreleasedInstanceId,
                    format!(
                        "instance {instance} is still used by member {old_id}: it must leave first"
                    ),
                ));
            }
            // The new incarnation takes over the old one's assignment and epoch.
            let new_id = if p.member_id.is_empty() {
                new_member_id()
            } else {
                p.member_id.clone()
            };
            let Some(mut m) = cg.members.remove(&old_id) else {
                return Ok((add_member(cg, p, now), true));
            };
            tracing::info!(instance = %instance, old = %old_id, new = %new_id, "static consumer group member replaced");
            let rejoin_same = old_id == new_id && m.epoch != STATIC_LEAVE_EPOCH;
            if m.epoch == STATIC_LEAVE_EPOCH {
                m.epoch = m.previous_epoch;
            }
            if rejoin_same {
                // Same member after a fence: it abandoned everything.
                m.assigned.clear();
                m.pending_revocation.clear();
                m.state = MemberState::Stable;
                m.previous_epoch = m.epoch;
                m.epoch = 0;
            }
            m.member_id = new_id.clone();
            m.last_heartbeat = now;
            if let Some(t) = cg.target.remove(&old_id) {
                cg.target.insert(new_id.clone(), t);
            }
            cg.members.insert(new_id.clone(), m);
            cg.static_members.insert(instance.clone(), new_id.clone());
            return Ok((new_id, false));
        }
        return Ok((add_member(cg, p, now), true));
    }
    if !p.member_id.is_empty() {
        if let Some(m) = cg.members.get_mut(&p.member_id) {
            // A fenced member rejoins with its id: it owns nothing any more.
            tracing::info!(member = %p.member_id, epoch = m.epoch, "consumer group member rejoins");
            m.assigned.clear();
            m.pending_revocation.clear();
            m.state = MemberState::Stable;
            m.revocation_deadline = 0;
            if m.epoch != 0 {
                m.previous_epoch = m.epoch;
            }
            m.epoch = 0;
            return Ok((p.member_id.clone(), false));
        }
    }
    Ok((add_member(cg, p, now), true))
}

fn add_member(cg: &mut ConsumerGroup, p: &HeartbeatParams, now: i64) -> String {
    let member_id = if p.member_id.is_empty() {
        new_member_id()
    } else {
        p.member_id.clone()
    };
    let mut subscribed = p.subscribed.clone().unwrap_or_default();
    subscribed.sort();
    subscribed.dedup();
    tracing::info!(member = %member_id, instance = ?p.instance_id, topics = ?subscribed, "consumer group member joins");
    if let Some(instance) = &p.instance_id {
        cg.static_members
            .insert(instance.clone(), member_id.clone());
    }
    cg.members.insert(
        member_id.clone(),
        CgMember {
            member_id: member_id.clone(),
            instance_id: p.instance_id.clone(),
            rack_id: p.rack_id.clone(),
            client_id: p.client_id.clone(),
            client_host: p.client_host.clone(),
            subscribed,
            server_assignor: p.server_assignor.clone(),
            rebalance_timeout_ms: p.rebalance_timeout_ms,
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: BTreeSet::new(),
            pending_revocation: BTreeSet::new(),
            last_heartbeat: now,
            revocation_deadline: 0,
        },
    );
    member_id
}

/// Epoch -1 (leave) or -2 (a static member's temporary leave).
fn leave(cg: &mut ConsumerGroup, p: &HeartbeatParams, interval: i32) -> (HeartbeatResult, bool) {
    let target = match &p.instance_id {
        Some(instance) => match cg.static_members.get(instance) {
            Some(current) if *current == p.member_id => Ok(current.clone()),
            Some(current) => Err((
                ResponseError::FencedInstanceId,
                format!("instance {instance} is now member {current}"),
            )),
            None => Err((
                ResponseError::UnknownMemberId,
                format!("instance {instance} is not in the group"),
            )),
        },
        None if cg.members.contains_key(&p.member_id) => Ok(p.member_id.clone()),
        None => Err((
            ResponseError::UnknownMemberId,
            format!("member {} is not in the group", p.member_id),
        )),
    };
    let member_id = match target {
        Ok(id) => id,
        Err((e, m)) => return (HeartbeatResult::error(e, m), false),
    };
    let temporary = p.member_epoch == STATIC_LEAVE_EPOCH && p.instance_id.is_some();
    if temporary {
        if let Some(m) = cg.members.get_mut(&member_id) {
            tracing::info!(member = %member_id, "static consumer group member leaves temporarily");
            if m.epoch != STATIC_LEAVE_EPOCH {
                m.previous_epoch = m.epoch;
            }
            m.epoch = STATIC_LEAVE_EPOCH;
        }
    } else {
        tracing::info!(member = %member_id, "consumer group member leaves");
        cg.remove_member(&member_id);
    }
    (
        HeartbeatResult {
            error: 0,
            message: None,
            member_id: Some(member_id),
            member_epoch: p.member_epoch,
            heartbeat_interval_ms: interval,
            assignment: None,
        },
        true,
    )
}

// ---------------------------------------------------------------- assignors

fn all_partitions(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> Vec<Tp> {
    let topics: BTreeSet<&String> = members.iter().flat_map(|(_, s)| s.iter()).collect();
    let mut out = Vec::new();
    for t in topics {
        if let Some(n) = partitions.get(t) {
            out.extend((0..*n).map(|p| (t.clone(), p)));
        }
    }
    out
}

/// `uniform`: as even as the subscriptions allow, sticky (a partition stays
/// with its current target owner unless balance requires a move).
pub fn assign_uniform(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
    previous: &BTreeMap<String, BTreeSet<Tp>>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let subs: HashMap<&str, HashSet<&str>> = members
        .iter()
        .map(|(id, s)| (id.as_str(), s.iter().map(String::as_str).collect()))
        .collect();
    let mut out: BTreeMap<String, BTreeSet<Tp>> = members
        .iter()
        .map(|(id, _)| (id.clone(), BTreeSet::new()))
        .collect();
    let valid = |tp: &Tp| {
        partitions
            .get(&tp.0)
            .is_some_and(|n| tp.1 >= 0 && tp.1 < *n)
    };
    let mut owned: HashSet<Tp> = HashSet::new();
    for (id, prev) in previous {
        let Some(s) = subs.get(id.as_str()) else {
            continue;
        };
        for tp in prev {
            if valid(tp) && s.contains(tp.0.as_str()) && owned.insert(tp.clone()) {
                if let Some(set) = out.get_mut(id) {
                    set.insert(tp.clone());
                }
            }
        }
    }
    for tp in all_partitions(members, partitions) {
        if owned.contains(&tp) {
            continue;
        }
        let best = out
            .iter()
            .filter(|(id, _)| {
                subs.get(id.as_str())
                    .is_some_and(|s| s.contains(tp.0.as_str()))
            })
            .min_by_key(|(id, set)| (set.len(), (*id).clone()))
            .map(|(id, _)| id.clone());
        if let Some(id) = best {
            owned.insert(tp.clone());
            if let Some(set) = out.get_mut(&id) {
                set.insert(tp);
            }
        }
    }
    // Balance: move partitions from the most to the least loaded members.
    let limit = owned.len() * members.len() + 16;
    for _ in 0..limit {
        let mut order: Vec<(usize, String)> =
            out.iter().map(|(id, s)| (s.len(), id.clone())).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut moved = None;
        'search: for (heavy_n, heavy) in &order {
            for (light_n, light) in order.iter().rev() {
                if *heavy_n <= light_n + 1 {
                    break;
                }
                let Some(ls) = subs.get(light.as_str()) else {
                    continue;
                };
                let candidate = out.get(heavy).and_then(|s| {
                    s.iter()
                        .rev()
                        .find(|tp| ls.contains(tp.0.as_str()))
                        .cloned()
                });
                if let Some(tp) = candidate {
                    moved = Some((heavy.clone(), light.clone(), tp));
                    break 'search;
                }
            }
        }
        let Some((from, to, tp)) = moved else { break };
        if let Some(s) = out.get_mut(&from) {
            s.remove(&tp);
        }
        if let Some(s) = out.get_mut(&to) {
            s.insert(tp);
        }
    }
    out
}

/// `range`: per topic, contiguous ranges of partitions to the subscribed
/// members in member id order (the first ones get one more when it does not divide).
pub fn assign_range(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out: BTreeMap<String, BTreeSet<Tp>> = members
        .iter()
        .map(|(id, _)| (id.clone(), BTreeSet::new()))
        .collect();
    let topics: BTreeSet<&String> = members.iter().flat_map(|(_, s)| s.iter()).collect();
    for topic in topics {
        let Some(&n) = partitions.get(topic) else {
            continue;
        };
        let mut subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.contains(topic))
            .map(|(id, _)| id)
            .collect();
        subscribers.sort();
        let k = subscribers.len() as i32;
        if k == 0 {
            continue;
        }
        let (per, extra) = (n / k, n % k);
        let mut next = 0;
        for (i, id) in subscribers.into_iter().enumerate() {
            let count = per + i32::from((i as i32) < extra);
            if let Some(set) = out.get_mut(id) {
                set.extend((next..next + count).map(|p| (topic.clone(), p)));
            }
            next += count;
        }
    }
    out
}

/// DescribeGroups' (classic) view of a consumer group: members with their
/// subscription and assignment in the embedded consumer protocol's format.
pub fn classic_summary(g: &Group, cg: &ConsumerGroup) -> super::machine::GroupSummary {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::{
        ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};
    fn encode(version: i16, m: &impl Encodable) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        if m.encode(&mut buf, version).is_err() {
            return bytes::Bytes::new();
        }
        buf.freeze()
    }
    let members = cg
        .members
        .values()
        .map(|m| {
            let sub = ConsumerProtocolSubscription::default().with_topics(
                m.subscribed
                    .iter()
                    .map(|t| StrBytes::from_string(t.clone()))
                    .collect(),
            );
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (t, p) in &m.assigned {
                by_topic.entry(t.as_str()).or_default().push(*p);
            }
            let asg = ConsumerProtocolAssignment::default().with_assigned_partitions(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        TopicPartition::default()
                            .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
            super::machine::MemberSummary {
                member_id: m.member_id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: encode(0, &sub),
                assignment: encode(0, &asg),
            }
        })
        .collect();
    super::machine::GroupSummary {
        group_id: g.id.clone(),
        state: g.state,
        state_name: cg.state_name(),
        protocol_type: "consumer".into(),
        protocol: cg.assignor.clone(),
        members,
    }
}
