//! Replication: every partition (and the metadata log) is a Raft group driven
//! by raft-rs, with the partition log itself as the Raft log.
//!
//! - [`raft_log`]: raft-rs's `Storage` over a partition log plus a sidecar index.
//! - [`group`]: one group's Ready handling, free of networking so that the
//!   deterministic simulation test (`broker/tests/raft_sim.rs`) drives the same code.
//! - [`node`]: every group of this broker, its ticker and inbox.
//! - [`transport`]: TCP between nodes, messages coalesced per peer.
//! - [`slog_bridge`]: raft-rs logs through slog; this forwards it to tracing.

pub mod group;
pub mod node;
pub mod raft_log;
pub mod slog_bridge;
pub mod transport;

pub use group::{Outcome, ReadyOutput, ReplicaGroup, Ticket};
pub use raft_log::{EntryMeta, RaftLog};
