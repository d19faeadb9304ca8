//! The Raft side of one broker (TiKV's raftstore in miniature): every group this
//! node hosts, a ticker, and the inbox of messages from peers. Each event on a
//! group (a tick, a message, a proposal) is followed by a pass over its Ready
//! under the group's lock; messages go to the transport, which coalesces them
//! per peer across groups.

use super::group::{Outcome, ReadyOutput, ReplicaGroup, Ticket, TICK_MS};
use super::raft_log::{EntryMeta, RaftLog};
use super::transport::{GroupKey, Inbound, Transport};
use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use raft::prelude::{Entry, Message};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a group's owner does with its entries.
pub trait StateMachine: Send + 'static {
    /// Entries this node wrote, with their offsets. `truncated`: a divergent
    /// tail was dropped first, so state derived from the log must be rebuilt.
    fn persisted(&mut self, entries: &[(Entry, EntryMeta)], truncated: bool, log: &RaftLog);
    /// Entries a majority holds, in order (each exactly once per process).
    fn committed(&mut self, entries: &[Entry]);
    /// This node became leader (true) or stopped being leader.
    fn leadership(&mut self, _leader: bool) {}
}

struct Inner<S> {
    group: ReplicaGroup,
    sm: S,
    pending: Vec<(Ticket, oneshot::Sender<Outcome>)>,
    was_leader: bool,
}

pub struct GroupHandle<S> {
    key: GroupKey,
    inner: Mutex<Inner<S>>,
    transport: Arc<Transport>,
    hw: AtomicI64,
    leader: AtomicU64,
    term: AtomicU64,
    is_leader: AtomicBool,
    stopped: AtomicBool,
    /// The replica that should lead when it can (0: none).
    preferred: AtomicU64,
    /// When this node last received anything from each peer.
    last_heard: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    on_progress: Box<dyn Fn() + Send + Sync>,
}

impl<S: StateMachine> GroupHandle<S> {
    /// The replica leadership returns to (the first of a reassigned set).
    pub fn set_preferred(&self, node: u64) {
        self.preferred.store(node, Ordering::Relaxed);
    }

    pub fn key(&self) -> &GroupKey {
        &self.key
    }

    /// The Kafka offset below which records are committed (on this node's log).
    pub fn high_watermark(&self) -> i64 {
        self.hw.load(Ordering::Acquire)
    }

    /// The leader this node knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    /// Voters heard from within an election timeout, this node included
    /// (Kafka's in-sync replicas, for `min.insync.replicas`). raft-rs's own
    /// `recent_active` is reset at every quorum check, so it would flap.
    pub fn live_voters(&self, group: &ReplicaGroup) -> usize {
        let heard = self.last_heard.lock();
        let window = Duration::from_millis(TICK_MS * super::group::ELECTION_TICKS as u64);
        group
            .voters()
            .into_iter()
            .filter(|v| *v == group.id() || heard.get(v).is_some_and(|t| t.elapsed() < window))
            .count()
    }

    /// Reads the group under its lock without handling a Ready (nothing changes).
    pub fn inspect<R>(&self, f: impl FnOnce(&ReplicaGroup) -> R) -> R {
        f(&self.inner.lock().group)
    }

    /// Runs `f` with the group and its state machine under the group's lock, then
    /// handles the Ready. Proposals happen inside `f`, so checks made against the
    /// state machine and the proposal are atomic.
    pub fn with<R>(&self, f: impl FnOnce(&mut ReplicaGroup, &mut S) -> R) -> anyhow::Result<R> {
        if self.stopped.load(Ordering::Acquire) {
            anyhow::bail!("raft group stopped after a storage error");
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let r = guarded(|| {
            let r = f(&mut inner.group, &mut inner.sm);
            self.drive_locked(inner).map(|()| r)
        });
        if let Err(e) = &r {
            self.fail(anyhow::anyhow!("{e:#}"));
        }
        r
    }

    /// A receiver resolved when `ticket` commits or is lost.
    pub fn watch(&self, ticket: Ticket) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        match inner.group.outcome(ticket) {
            Outcome::Pending => inner.pending.push((ticket, tx)),
            done => {
                let _ = tx.send(done);
            }
        }
        rx
    }

    pub fn tick(&self) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        let r = guarded(|| {
            if inner.group.tick() {
                self.drive_locked(&mut inner)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            self.fail(e);
        }
    }

    pub fn step(&self, msg: Message) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        let r = guarded(|| {
            inner.group.step(msg)?;
            self.drive_locked(&mut inner)
        });
        if let Err(e) = r {
            self.fail(e);
        }
    }

    /// Moves leadership back to the preferred replica (Kafka's
    /// auto.leader.rebalance), e.g. after that node restarted and caught up.
    pub fn rebalance(&self) {
        let live = self
            .last_heard
            .lock()
            .get(&self.preferred.load(Ordering::Relaxed))
            .is_some_and(|t| t.elapsed() < Duration::from_millis(TICK_MS * 5));
        let mut inner = self.inner.lock();
        let preferred = self.preferred.load(Ordering::Relaxed);
        if inner.group.transfer_to_preferred(preferred, live) {
            tracing::info!(partition = %format!("{}-{}", self.key.0, self.key.1), to = preferred, "moving leadership to the preferred replica");
            if let Err(e) = self.drive_locked(&mut inner) {
                self.fail(e);
            }
        }
    }

    fn fail(&self, e: anyhow::Error) {
        // A storage error makes the group unusable (raft-rs's contract): stop it
        // rather than acknowledge anything it can no longer persist.
        if !self.stopped.swap(true, Ordering::AcqRel) {
            tracing::error!(group = %format!("{}-{}", self.key.0, self.key.1), error = %format!("{e:#}"), "raft group stopped");
        }
    }

    fn drive_locked(&self, inner: &mut Inner<S>) -> anyhow::Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            anyhow::bail!("raft group stopped after a storage error");
        }
        let mut progressed = false;
        while inner.group.has_ready() {
            let ReadyOutput {
                messages,
                persisted,
                committed,
                truncated,
            } = inner.group.process_ready()?;
            for m in messages {
                self.transport.send(&self.key, m);
            }
            if !persisted.is_empty() || truncated {
                let log = inner.group.log();
                inner.sm.persisted(&persisted, truncated, log);
            }
            if !committed.is_empty() {
                inner.sm.committed(&committed);
            }
            progressed = true;
        }
        let leader = inner.group.is_leader();
        if leader != inner.was_leader {
            inner.was_leader = leader;
            inner.sm.leadership(leader);
        }
        self.hw
            .store(inner.group.high_watermark(), Ordering::Release);
        self.leader
            .store(inner.group.leader_id(), Ordering::Release);
        self.term.store(inner.group.term(), Ordering::Release);
        self.is_leader.store(leader, Ordering::Release);
        if !inner.pending.is_empty() {
            let group = &inner.group;
            let mut keep = Vec::with_capacity(inner.pending.len());
            for (ticket, tx) in inner.pending.drain(..) {
                match group.outcome(ticket) {
                    Outcome::Pending if !tx.is_closed() => keep.push((ticket, tx)),
                    Outcome::Pending => {}
                    done => {
                        let _ = tx.send(done);
                    }
                }
            }
            inner.pending = keep;
        }
        if progressed {
            (self.on_progress)();
        }
        Ok(())
    }

    fn close(&self) {
        let mut inner = self.inner.lock();
        if let Err(e) = inner.group.persist_state() {
            tracing::warn!(error = %format!("{e:#}"), "persisting raft state at shutdown");
        }
    }
}

/// raft-rs panics (`fatal!`) on storage errors it does not expect. One group's
/// failure must not take down the node's ticker and inbox, which serve every
/// other group: the panic becomes an error and the group stops.
fn guarded<R>(f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(anyhow::anyhow!("raft failed: {what}"))
        }
    }
}

/// Type-erased view for the node's ticker and inbox.
trait Driven: Send + Sync {
    fn tick(&self);
    fn rebalance(&self);
    fn step(&self, msg: Message);
    fn close(&self);
    /// The group's key and term while this node leads it.
    fn led(&self) -> Option<(GroupKey, u64)>;
}

impl<S: StateMachine> Driven for GroupHandle<S> {
    fn tick(&self) {
        GroupHandle::tick(self)
    }
    fn rebalance(&self) {
        GroupHandle::rebalance(self)
    }
    fn step(&self, msg: Message) {
        GroupHandle::step(self, msg)
    }
    fn close(&self) {
        GroupHandle::close(self)
    }
    fn led(&self) -> Option<(GroupKey, u64)> {
        self.is_leader().then(|| (self.key.clone(), self.term()))
    }
}

pub struct RaftNode {
    pub id: u64,
    pub transport: Arc<Transport>,
    groups: RwLock<HashMap<GroupKey, Arc<dyn Driven>>>,
    last_heard: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    logger: slog::Logger,
}

impl RaftNode {
    pub fn new(id: u64, transport: Arc<Transport>) -> Arc<RaftNode> {
        Arc::new(RaftNode {
            id,
            transport,
            groups: RwLock::new(HashMap::new()),
            last_heard: Arc::new(Mutex::new(HashMap::new())),
            logger: super::slog_bridge::logger(&format!("node-{id}")),
        })
    }

    /// Starts the ticker and the inbox consumer.
    pub fn run(self: &Arc<Self>, mut inbox: mpsc::UnboundedReceiver<Inbound>) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(TICK_MS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks: u64 = 0;
            loop {
                interval.tick().await;
                ticks += 1;
                let groups: Vec<Arc<dyn Driven>> = node.groups.read().values().cloned().collect();
                // The commit index is written every 5 s (as Kafka checkpoints its
                // high watermark), so a restarted node serves up to it at once.
                let checkpoint = ticks.is_multiple_of(50);
                // Peers learn which groups this node leads (for partitions
                // they hold no replica of) every half second.
                if ticks.is_multiple_of(5) {
                    let led: Vec<(GroupKey, u64)> = groups.iter().filter_map(|g| g.led()).collect();
                    node.transport.report_leaders(&led);
                }
                for g in groups {
                    g.tick();
                    if checkpoint {
                        g.close();
                        g.rebalance();
                    }
                }
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            while let Some(Inbound { group, msg }) = inbox.recv().await {
                node.last_heard
                    .lock()
                    .insert(msg.from, std::time::Instant::now());
                let g = node.groups.read().get(&group).cloned();
                match g {
                    Some(g) => g.step(msg),
                    None => {
                        tracing::trace!(topic = %group.0, partition = group.1, "message for a group not hosted here (yet)")
                    }
                }
            }
        });
    }

    /// Opens a group over `log` and registers it; returns the existing one if
    /// the key is already hosted.
    pub fn open_group<S: StateMachine>(
        &self,
        key: GroupKey,
        log: RaftLog,
        sm: S,
        sync_every_ready: bool,
        persist_commit: bool,
        preferred: u64,
        on_progress: Box<dyn Fn() + Send + Sync>,
    ) -> anyhow::Result<Arc<GroupHandle<S>>> {
        let logger = self
            .logger
            .new(slog::o!("partition" => format!("{}-{}", key.0, key.1)));
        let mut log = log;
        log.sync_state = sync_every_ready;
        let mut group = ReplicaGroup::new(self.id, log, &logger)
            .with_context(|| format!("starting raft group {}-{}", key.0, key.1))?;
        group.sync_every_ready = sync_every_ready;
        group.persist_commit = persist_commit;
        let hw = group.high_watermark();
        let handle = Arc::new(GroupHandle {
            key: key.clone(),
            inner: Mutex::new(Inner {
                group,
                sm,
                pending: Vec::new(),
                was_leader: false,
            }),
            transport: self.transport.clone(),
            hw: AtomicI64::new(hw),
            leader: AtomicU64::new(0),
            term: AtomicU64::new(0),
            is_leader: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            preferred: AtomicU64::new(preferred),
            last_heard: self.last_heard.clone(),
            on_progress,
        });
        {
            // A single voter elects itself at once instead of after a timeout, and
            // a new group's preferred replica campaigns at once, so that leaders
            // start out spread evenly instead of moving there later.
            let mut inner = handle.inner.lock();
            let fresh = inner.group.term() == 0 && inner.group.log().last_index() == 0;
            if inner.group.voters() == vec![self.id] || (fresh && preferred == self.id) {
                inner.group.campaign()?;
            }
            let inner = &mut *inner;
            handle.drive_locked(inner)?;
        }
        self.groups.write().insert(key, handle.clone());
        Ok(handle)
    }

    pub fn remove_group(&self, key: &GroupKey) {
        if let Some(g) = self.groups.write().remove(key) {
            g.close();
        }
    }

    pub fn close(&self) {
        for g in self.groups.read().values() {
            g.close();
        }
    }
}
