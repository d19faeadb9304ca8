//! Cluster mode: partition reassignment (Kafka's AlterPartitionReassignments and
//! ListPartitionReassignments), which also changes a partition's replication
//! factor. The target is committed in the metadata log; every node in it opens
//! a replica; the partition's Raft leader then moves the group's voters to the
//! target one single-node change at a time (new replicas join as learners and
//! vote only once caught up, so availability never depends on a replica that
//! has not copied the log), hands leadership over if it is itself removed, and
//! commits the completion, after which nodes outside the target drop their
//! replica.

use crate::metadata::TopicMeta;
use crate::replication::group::Reconfig;
use crate::state::{Broker, TopicError};
use kafka_protocol::error::ResponseError;
use std::sync::Arc;
use std::time::Duration;

/// How often leaders advance reassignments.
const STEP: Duration = Duration::from_millis(200);

/// One partition's reassignment, as ListPartitionReassignments reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ongoing {
    pub topic: String,
    pub partition: i32,
    /// Every replica involved (current and target), as Kafka lists them.
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

impl Broker {
    /// Starts moving partition `partition` of `topic` to `target` (`None`
    /// cancels: the partition returns to its current replicas).
    pub fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        target: Option<Vec<i32>>,
    ) -> Result<(), TopicError> {
        if self.raft.is_none() {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "a single node has nowhere to move replicas".into(),
            ));
        }
        let Some(meta) = self.topic(topic) else {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{topic}' does not exist"),
            ));
        };
        if !(0..meta.partitions).contains(&partition) {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{topic}' has no partition {partition}"),
            ));
        }
        let target = match target {
            Some(t) => t,
            None => {
                if !meta.reassigning.contains_key(&partition) {
                    return Err((
                        ResponseError::NoReassignmentInProgress,
                        format!("{topic}-{partition} is not being reassigned"),
                    ));
                }
                self.replicas_of(&meta, partition)
            }
        };
        if target.is_empty() {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "the replica list is empty".into(),
            ));
        }
        let nodes = self.cluster_nodes();
        let mut seen = std::collections::BTreeSet::new();
        for &n in &target {
            if !nodes.contains(&n) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!("broker {n} is not a member of the cluster (members: {nodes:?})"),
                ));
            }
            if !seen.insert(n) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!("broker {n} appears twice in {target:?}"),
                ));
            }
        }
        self.meta
            .start_reassignment(topic, partition, target)
            .map_err(|e| (ResponseError::RequestTimedOut, format!("{e:#}")))
    }

    /// Reassignments not yet completed, of `topics` (all when `None`).
    pub fn ongoing_reassignments(&self, topics: Option<&[(String, Vec<i32>)]>) -> Vec<Ongoing> {
        let mut out = Vec::new();
        let metas: Vec<TopicMeta> = match topics {
            None => self.meta.topics(),
            Some(ts) => ts.iter().filter_map(|(t, _)| self.topic(t)).collect(),
        };
        for meta in metas {
            let wanted: Option<&Vec<i32>> =
                topics.and_then(|ts| ts.iter().find(|(t, _)| *t == meta.name).map(|(_, p)| p));
            for (&partition, target) in &meta.reassigning {
                if wanted.is_some_and(|w| !w.contains(&partition)) {
                    continue;
                }
                let current = self.replicas_of(&meta, partition);
                let mut replicas = target.clone();
                for r in &current {
                    if !replicas.contains(r) {
                        replicas.push(*r);
                    }
                }
                out.push(Ongoing {
                    topic: meta.name.clone(),
                    partition,
                    adding: target
                        .iter()
                        .copied()
                        .filter(|r| !current.contains(r))
                        .collect(),
                    removing: current
                        .iter()
                        .copied()
                        .filter(|r| !target.contains(r))
                        .collect(),
                    replicas,
                });
            }
        }
        out
    }

    /// Cluster membership: connects to nodes that joined and forgets nodes that
    /// left; on the controller, moves the metadata group's voters to the
    /// founders plus the registered nodes, without the removed ones.
    pub fn step_membership(&self) {
        let (Some(node), Some(meta_group)) = (&self.raft, &self.meta_group) else {
            return;
        };
        let me = self.node_id();
        let registered = self.meta.registered_nodes();
        let removed = self.meta.removed_nodes();
        for (id, addr) in &registered {
            node.transport.add_peer(*id as u64, addr);
        }
        for id in &removed {
            if *id != me {
                node.transport.remove_peer(*id as u64);
            }
        }
        if !meta_group.is_leader() {
            return;
        }
        let mut target: std::collections::BTreeSet<u64> = meta_group
            .inspect(|g| g.log().founders())
            .into_iter()
            .collect();
        target.extend(registered.keys().map(|&id| id as u64));
        for id in &removed {
            target.remove(&(*id as u64));
        }
        let target: Vec<u64> = target.into_iter().collect();
        match meta_group.with(|g, _| g.reconfigure_step(&target)) {
            Ok(Ok(Reconfig::InProgress(what))) => {
                tracing::info!("controller membership: {what}")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "controller membership step failed")
            }
        }
    }

    /// One pass: every partition this node leads that has a target takes its
    /// next configuration step; a finished one is recorded as completed.
    pub fn step_reassignments(&self) {
        self.step_membership();
        for meta in self.meta.topics() {
            for (&index, target) in &meta.reassigning {
                let Some(partition) = self.partition(&meta.name, index) else {
                    continue;
                };
                let Some(replica) = &partition.replica else {
                    continue;
                };
                let target_ids: Vec<u64> = target.iter().map(|&n| n as u64).collect();
                let step = replica.with(|g, _| g.reconfigure_step(&target_ids));
                match step {
                    Ok(Ok(Reconfig::Done)) => {
                        tracing::info!(topic = %meta.name, partition = index, replicas = ?target, "reassignment complete");
                        if let Some(&first) = target.first() {
                            replica.set_preferred(first as u64);
                        }
                        if let Err(e) =
                            self.meta
                                .complete_reassignment(&meta.name, index, target.clone())
                        {
                            tracing::warn!(topic = %meta.name, partition = index, error = %format!("{e:#}"), "recording a completed reassignment");
                        }
                    }
                    Ok(Ok(Reconfig::InProgress(what))) => {
                        tracing::info!(topic = %meta.name, partition = index, "reassignment: {what}")
                    }
                    Ok(Ok(Reconfig::CatchingUp(node))) => {
                        tracing::debug!(topic = %meta.name, partition = index, node, "reassignment: waiting for the new replica to catch up")
                    }
                    Ok(Ok(Reconfig::NotLeader)) => {}
                    Ok(Err(e)) | Err(e) => {
                        tracing::warn!(topic = %meta.name, partition = index, error = %format!("{e:#}"), "reassignment step failed")
                    }
                }
            }
        }
    }

    /// Cluster mode: advances reassignments every 200 ms on a thread that ends
    /// with the broker.
    pub fn follow_reassignments(self: &Arc<Self>) -> anyhow::Result<()> {
        self.every("weir-reassign", STEP, Broker::step_reassignments)
    }
}
