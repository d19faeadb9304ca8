//! Cluster mode glue: the metadata Raft group (the controller, as KRaft is for
//! Kafka) and replica placement.
//!
//! Every node is a voter of the metadata group, whose log is the existing
//! `__cluster_metadata-0`. A metadata change is proposed from any node (a
//! follower forwards it to the leader), committed by a majority, and applied on
//! every node in log order; applying a topic record opens or removes the local
//! replicas of its partitions.

use crate::metadata::MetadataStore;
use crate::replication::node::StateMachine;
use crate::replication::{EntryMeta, RaftLog};
use raft::prelude::Entry;
use std::sync::Arc;

pub struct MetaMachine {
    pub store: Arc<MetadataStore>,
}

impl StateMachine for MetaMachine {
    fn persisted(&mut self, _entries: &[(Entry, EntryMeta)], _truncated: bool, _log: &RaftLog) {}

    fn committed(&mut self, entries: &[Entry]) {
        for e in entries {
            if !e.data.is_empty() {
                self.store.apply_entry(&e.data);
            }
        }
    }

    fn leadership(&mut self, leader: bool) {
        if !leader || !self.store.cluster_id().is_empty() {
            return;
        }
        // The first controller names the cluster. Not from inside the group's
        // lock: the proposal waits for its own commit.
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                if let Err(e) = store.ensure_cluster_id() {
                    tracing::warn!(error = %format!("{e:#}"), "recording the cluster id");
                }
            });
        }
    }
}

/// Places `partitions` partitions with `rf` replicas each over `nodes` (sorted
/// ids): replica lists start at successive nodes, so both replicas and (through
/// the first replica, the preferred leader) leadership spread evenly.
pub fn assign_replicas(
    nodes: &[i32],
    first_partition: i32,
    partitions: i32,
    rf: usize,
) -> Vec<Vec<i32>> {
    let n = nodes.len().max(1);
    (first_partition..first_partition + partitions)
        .map(|p| {
            (0..rf.min(nodes.len()))
                .map(|r| nodes[(p as usize + r) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_spread_over_nodes() {
        let a = assign_replicas(&[1, 2, 3], 0, 6, 3);
        assert_eq!(a[0], vec![1, 2, 3]);
        assert_eq!(a[1], vec![2, 3, 1]);
        // Each node is the first replica (preferred leader) of two partitions.
        for node in 1..=3 {
            assert_eq!(a.iter().filter(|r| r[0] == node).count(), 2);
        }
        assert_eq!(assign_replicas(&[1, 2, 3], 3, 1, 1), vec![vec![1]]);
    }
}
