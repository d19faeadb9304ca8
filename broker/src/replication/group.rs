//! One Raft group (a partition, or the metadata log) on this node: raft-rs's
//! `RawNode` over the partition log, and the Ready handling that persists
//! entries, hands out messages and reports what became committed.
//!
//! This type does no I/O besides the log's files and never blocks on the
//! network: the caller moves messages (a TCP transport in the broker, a seeded
//! scheduler in the simulation test), so the same code runs in both.

use super::raft_log::{EntryMeta, RaftLog};
use anyhow::{bail, Context};
use raft::prelude::*;
use raft::{Config, RawNode, StateRole};

/// Raft timing, in ticks (the broker ticks every `TICK_MS`).
pub const TICK_MS: u64 = 100;
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;

/// A proposal's place in the log; it is acknowledged once committed with this term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub index: u64,
    pub term: u64,
}

/// What became of a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed by a majority at these offsets.
    Committed(EntryMeta),
    /// Replaced by another leader's entry: it will never commit.
    Lost,
    /// Not decided yet.
    Pending,
}

/// Where a reconfiguration toward a target replica set stands (see
/// [`ReplicaGroup::reconfigure_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconfig {
    /// Only the leader changes the configuration.
    NotLeader,
    /// A change was proposed, or one is still being applied.
    InProgress(String),
    /// Waiting for a new replica to catch up before it may vote.
    CatchingUp(u64),
    /// The voters are exactly the target.
    Done,
}

/// A learner this close to the leader's last index may become a voter.
const CAUGHT_UP_ENTRIES: u64 = 64;

/// What one pass over a Ready produced.
#[derive(Default)]
pub struct ReadyOutput {
    pub messages: Vec<Message>,
    /// Entries this node persisted, with the offsets they were given.
    pub persisted: Vec<(Entry, EntryMeta)>,
    /// Committed entries to apply, in order (configuration changes are applied
    /// by the group itself and not listed).
    pub committed: Vec<Entry>,
    /// The log was truncated (a divergent tail dropped): derived state such as
    /// producer sequences must be rebuilt.
    pub truncated: bool,
}

pub struct ReplicaGroup {
    node: RawNode<RaftLog>,
    /// fsync every Ready's entries before they count as persisted (`flush.messages=1`).
    pub sync_every_ready: bool,
    /// Write the commit index whenever it moves (the metadata log: a node must
    /// not forget at restart which topics exist).
    pub persist_commit: bool,
}

pub fn raft_config(id: u64, applied: u64) -> Config {
    Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        max_committed_size_per_ready: 16 << 20,
        // A partitioned leader notices it lost its majority and steps down, so it
        // stops taking writes it cannot commit.
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

impl ReplicaGroup {
    pub fn new(id: u64, log: RaftLog, logger: &slog::Logger) -> anyhow::Result<ReplicaGroup> {
        let applied = log.commit();
        let config = raft_config(id, applied);
        config.validate().context("raft configuration")?;
        let node = RawNode::new(&config, log, logger).context("starting a raft group")?;
        Ok(ReplicaGroup {
            node,
            sync_every_ready: false,
            persist_commit: false,
        })
    }

    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn log(&self) -> &RaftLog {
        self.node.store()
    }

    /// The Kafka offset below which records are committed.
    pub fn high_watermark(&self) -> i64 {
        // Only entries this node has persisted count: committed may be ahead of
        // what a lagging follower wrote.
        let idx = self.commit_index().min(self.log().last_index());
        self.log().offset_after(idx)
    }

    /// The voters, sorted.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    pub fn learners(&self) -> Vec<u64> {
        let mut l: Vec<u64> = self
            .node
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        l.sort_unstable();
        l
    }

    /// One step of moving the voters to `target`, one single-node change at a
    /// time (each is safe on its own, so no joint consensus is needed): add the
    /// missing replicas as learners, promote each once it has caught up, then
    /// remove the replicas not in the target; a leader that is to be removed
    /// first hands leadership to a caught-up target voter. Call it again until
    /// it returns `Done`.
    pub fn reconfigure_step(&mut self, target: &[u64]) -> anyhow::Result<Reconfig> {
        if !self.is_leader() || target.is_empty() {
            return Ok(Reconfig::NotLeader);
        }
        let raft = &self.node.raft;
        if raft.pending_conf_index > raft.raft_log.applied {
            return Ok(Reconfig::InProgress(
                "a configuration change is being applied".into(),
            ));
        }
        let last = raft.raft_log.last_index();
        let voters = self.voters();
        let learners = self.learners();
        let change = |node: u64, ty: ConfChangeType| {
            let mut cc = ConfChange::default();
            cc.node_id = node;
            cc.set_change_type(ty);
            cc
        };
        let propose = |g: &mut Self, cc: ConfChange, what: String| -> anyhow::Result<Reconfig> {
            g.node
                .propose_conf_change(Vec::new(), cc)
                .with_context(|| format!("proposing: {what}"))?;
            Ok(Reconfig::InProgress(what))
        };
        for &n in target {
            if !voters.contains(&n) && !learners.contains(&n) {
                return propose(
                    self,
                    change(n, ConfChangeType::AddLearnerNode),
                    format!("adding {n} as a learner"),
                );
            }
        }
        for &n in target {
            if learners.contains(&n) {
                let matched = self.node.raft.prs().get(n).map_or(0, |p| p.matched);
                if matched + CAUGHT_UP_ENTRIES < last {
                    return Ok(Reconfig::CatchingUp(n));
                }
                return propose(
                    self,
                    change(n, ConfChangeType::AddNode),
                    format!("promoting {n} to voter"),
                );
            }
        }
        let me = self.id();
        if !voters.contains(&me) {
            // Removed by a change an earlier leader proposed and this one
            // committed: raft-rs keeps such a leader leading, so hand over.
            return Ok(self.hand_over(target, last));
        }
        for &n in voters.iter().chain(learners.iter()) {
            if target.contains(&n) {
                continue;
            }
            if n == me {
                return Ok(self.hand_over(target, last));
            }
            return propose(
                self,
                change(n, ConfChangeType::RemoveNode),
                format!("removing {n}"),
            );
        }
        Ok(Reconfig::Done)
    }

    /// Hands leadership to a target voter that has every entry (up to `last`).
    fn hand_over(&mut self, target: &[u64], last: u64) -> Reconfig {
        let me = self.id();
        let voters = self.voters();
        let to = target.iter().copied().find(|&t| {
            t != me
                && voters.contains(&t)
                && self
                    .node
                    .raft
                    .prs()
                    .get(t)
                    .is_some_and(|p| p.matched == last)
        });
        match to {
            Some(to) => {
                if self.node.raft.lead_transferee.is_none() {
                    self.node.transfer_leader(to);
                }
                Reconfig::InProgress(format!("handing leadership to {to}"))
            }
            None => Reconfig::InProgress("waiting for a target replica to catch up".into()),
        }
    }

    /// Applies committed configuration changes (each once: the state file
    /// records the last one applied) and drops them from `committed`.
    fn apply_conf_changes(&mut self, committed: &mut Vec<Entry>) -> anyhow::Result<()> {
        if committed
            .iter()
            .all(|e| e.get_entry_type() == EntryType::EntryNormal)
        {
            return Ok(());
        }
        for e in committed.iter() {
            let ty = e.get_entry_type();
            if ty == EntryType::EntryNormal || e.index <= self.log().conf().2 {
                continue;
            }
            let cs = if ty == EntryType::EntryConfChange {
                let mut cc = ConfChange::default();
                protobuf::Message::merge_from_bytes(&mut cc, &e.data)
                    .context("decoding a configuration change")?;
                self.node.apply_conf_change(&cc)
            } else {
                let mut cc = ConfChangeV2::default();
                protobuf::Message::merge_from_bytes(&mut cc, &e.data)
                    .context("decoding a configuration change")?;
                self.node.apply_conf_change(&cc)
            }
            .context("applying a configuration change")?;
            tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "configuration changed");
            self.node.mut_store().set_conf(&cs, e.index)?;
            let me = self.id();
            if self.is_leader() && !cs.voters.contains(&me) {
                // This leader committed its own removal (proposed by an earlier
                // leader). raft-rs cannot lead without its own progress, so it
                // steps down at once; the remaining voters elect a leader.
                tracing::info!(
                    index = e.index,
                    "removed from the group while leading; stepping down"
                );
                let term = self.term();
                self.node.raft.become_follower(term, raft::INVALID_ID);
            }
        }
        committed.retain(|e| e.get_entry_type() == EntryType::EntryNormal);
        Ok(())
    }

    pub fn tick(&mut self) -> bool {
        self.node.tick()
    }

    pub fn campaign(&mut self) -> anyhow::Result<()> {
        self.node.campaign().context("campaign")
    }

    /// Hands leadership to `preferred` (the partition's first replica, so that
    /// leaders spread evenly) when it is live and has every entry. Returns
    /// whether a transfer started.
    pub fn transfer_to_preferred(&mut self, preferred: u64, preferred_live: bool) -> bool {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader
            || preferred == 0
            || preferred == raft.id
            || raft.lead_transferee.is_some()
        {
            return false;
        }
        let Some(pr) = raft.prs().get(preferred) else {
            return false;
        };
        // `recent_active` is reset at every quorum check, so liveness comes from
        // the caller (when the node last heard from that peer).
        if !preferred_live || pr.matched != raft.raft_log.last_index() {
            return false;
        }
        self.node.transfer_leader(preferred);
        true
    }

    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    pub fn step(&mut self, msg: Message) -> anyhow::Result<()> {
        match self.node.step(msg) {
            Ok(()) => Ok(()),
            // A message from a removed peer, or a stale response: not an error of ours.
            Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e).context("raft step"),
        }
    }

    /// Proposes on any node: a follower forwards the proposal to the leader it
    /// knows (raft-rs does), so the caller learns the outcome by applying.
    pub fn propose_anywhere(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.node
            .propose(Vec::new(), data)
            .context("no leader to take the proposal")
    }

    /// Proposes records; only the leader accepts. The ticket resolves through
    /// [`ReplicaGroup::outcome`].
    pub fn propose(&mut self, data: Vec<u8>) -> anyhow::Result<Ticket> {
        if !self.is_leader() {
            bail!("not the leader");
        }
        let before = self.node.raft.raft_log.last_index();
        self.node
            .propose(Vec::new(), data)
            .context("raft proposal dropped")?;
        let index = self.node.raft.raft_log.last_index();
        if index != before + 1 {
            bail!("raft proposal dropped");
        }
        Ok(Ticket {
            index,
            term: self.node.raft.term,
        })
    }

    pub fn outcome(&self, ticket: Ticket) -> Outcome {
        let log = self.log();
        match log.meta(ticket.index) {
            Some(meta) if meta.term != ticket.term => Outcome::Lost,
            Some(meta) if self.commit_index() >= ticket.index => Outcome::Committed(meta),
            Some(_) => Outcome::Pending,
            // Not persisted yet here (the leader writes after proposing), or
            // truncated away when this node lost leadership.
            None if self.is_leader() && self.term() == ticket.term => Outcome::Pending,
            None if self.node.raft.raft_log.last_index() >= ticket.index
                && self.node.raft.raft_log.term(ticket.index).ok() == Some(ticket.term) =>
            {
                Outcome::Pending
            }
            None => Outcome::Lost,
        }
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Handles one Ready: sends nothing itself, persists, and returns messages and
    /// committed entries for the caller.
    pub fn process_ready(&mut self) -> anyhow::Result<ReadyOutput> {
        let mut out = ReadyOutput::default();
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut rd = self.node.ready();
        // A leader's appends go out before it persists (Raft allows it: the
        // leader counts itself only once persisted).
        out.messages.extend(rd.take_messages());
        if !rd.snapshot().is_empty() {
            // Behind the leader's log start: restart from the leader's.
            let snap = rd.snapshot().clone();
            self.node
                .mut_store()
                .apply_snapshot(&snap)
                .context("installing a raft snapshot")?;
            out.truncated = true;
        }
        out.committed.extend(rd.take_committed_entries());
        if !rd.entries().is_empty() {
            let before_last = self.log().last_index();
            let first = rd.entries()[0].index;
            out.truncated = first <= before_last;
            let entries = rd.take_entries();
            self.node
                .mut_store()
                .append(&entries)
                .context("persisting raft entries")?;
            if self.sync_every_ready {
                self.log().sync()?;
            }
            for e in entries {
                if let Some(meta) = self.log().meta(e.index) {
                    out.persisted.push((e, meta));
                }
            }
        }
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs)?;
        }
        out.messages.extend(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        if self.persist_commit && self.log().commit() != self.log().persisted_commit() {
            self.node.mut_store().persist_state()?;
        }
        out.messages.extend(light.take_messages());
        out.committed.extend(light.take_committed_entries());
        let mut committed = std::mem::take(&mut out.committed);
        self.apply_conf_changes(&mut committed)?;
        out.committed = committed;
        self.node.advance_apply();
        Ok(out)
    }

    /// Writes the commit index if it moved (clean shutdown, periodic checkpoint).
    pub fn persist_state(&mut self) -> anyhow::Result<()> {
        if self.log().commit() != self.log().persisted_commit() {
            self.node.mut_store().persist_state()?;
        }
        Ok(())
    }
}
