//! The group coordinator: Kafka's classic consumer-group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and committed offsets. A single node
//! coordinates every group; in a cluster `__consumer_offsets` is replicated like
//! any topic and the Raft leader of a group's partition coordinates the group,
//! loading it from the partition when it becomes leader (as Kafka's coordinator
//! follows the leadership of its partitions).
//!
//! [`machine::Groups`] holds the state and runs the protocol; this module puts it
//! behind one lock, persists what it writes to the compacted internal topic
//! `__consumer_offsets` (appended under the lock, so the log order is the order
//! of the changes; offset commits are answered once fsync'd), reloads it at
//! start, and runs its timers on a thread of their own.

pub mod consumer_group;
pub mod consumer_protocol;
pub mod group;
pub mod machine;
pub mod records;

#[cfg(test)]
mod consumer_group_tests;
#[cfg(test)]
mod tests;

use crate::config::BrokerConfig;
use crate::metadata::now_ms;
use crate::partition::Partition;
use crate::replication::Ticket;
use crate::state::Broker;
use anyhow::Context;
use bytes::Bytes;
use consumer_group::ConsumerGroup;
use kafka_protocol::error::ResponseError;
use machine::{Config, Groups, Write};
use parking_lot::Mutex;
use records::{GroupValue, OffsetValue, RecordKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;
use weir_protocol::compression::Compression;
use weir_protocol::records::{decode_records, BatchBuilder};
use weir_storage::Log;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of `__consumer_offsets` when a single node creates it (it
/// coordinates every group; an existing topic keeps its count). A cluster uses
/// `offsets.topic.num.partitions`.
pub const OFFSETS_TOPIC_PARTITIONS: i32 = 1;
const TICK: Duration = Duration::from_millis(100);

/// Offsets whose durability an answer waits for.
#[derive(Default)]
pub struct Durable {
    waits: Vec<Wait>,
    error: Option<String>,
}

enum Wait {
    /// Single node: fsync'd up to the offset.
    Fsync(Arc<Log>, i64),
    /// Cluster mode: the Raft entry committed by a majority.
    Commit(Arc<Partition>, Ticket),
}

/// How long a write to a replicated `__consumer_offsets` partition may take to
/// commit before the answer is an error (Kafka's `offsets.commit.timeout.ms`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

impl Durable {
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty() && self.error.is_none()
    }

    /// Adds `other`'s waits (a request touching groups of several partitions).
    pub fn merge(&mut self, other: Durable) {
        self.waits.extend(other.waits);
        if self.error.is_none() {
            self.error = other.error;
        }
    }

    /// Waits until every write is fsync'd (single node) or committed (cluster).
    pub async fn wait(self) -> Result<(), String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        for wait in self.waits {
            match wait {
                Wait::Fsync(log, offset) => {
                    match tokio::task::spawn_blocking(move || log.wait_durable(offset)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(e) => return Err(format!("fsync task failed: {e}")),
                    }
                }
                Wait::Commit(partition, ticket) => partition
                    .wait_committed(ticket, COMMIT_TIMEOUT)
                    .await
                    .map_err(|(code, msg)| format!("{code:?}: {msg}"))?,
            }
        }
        Ok(())
    }
}

/// Where the groups are stored.
enum Backing {
    /// Not attached yet (tests keep groups in memory only).
    Memory,
    /// Single node: this node coordinates every group and appends to the
    /// `__consumer_offsets` logs directly.
    Local(Vec<Arc<Log>>),
    /// Cluster mode: `__consumer_offsets` is replicated like any topic; this node
    /// coordinates the groups of the partitions it leads (one slot per partition).
    Replicated(Vec<Slot>),
}

struct Slot {
    partition: Option<Arc<Partition>>,
    owned: Owned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    /// Another node (or none) leads the partition.
    No,
    /// This node leads it but has not yet loaded everything committed before.
    Loading,
    /// This node leads it in `term` and its groups are loaded.
    Yes { term: u64 },
}

/// What [`GroupCoordinator::sync_ownership`] learned of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Not led by this node (or not hosted here).
    Follower,
    /// Led by this node in `term`; entries of earlier leaders are not all
    /// committed yet (or, once loaded, this node's own writes are in flight).
    CatchingUp { term: u64 },
    /// Led by this node in `term` and everything in its log is committed.
    Ready { term: u64 },
}

struct State {
    groups: Groups,
    backing: Backing,
}

struct Inner {
    state: Mutex<State>,
}

impl State {
    /// None when this node coordinates `group`; otherwise the error a request
    /// for it gets (clients then look the coordinator up again).
    fn owner_error(&self, group: &str) -> Option<ResponseError> {
        let Backing::Replicated(slots) = &self.backing else {
            return None;
        };
        if slots.is_empty() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        match slots[records::partition_for(group, slots.len())].owned {
            Owned::Yes { .. } => None,
            Owned::Loading => Some(ResponseError::CoordinatorLoadInProgress),
            Owned::No => Some(ResponseError::NotCoordinator),
        }
    }

    /// Appends queued writes, one batch per `__consumer_offsets` partition.
    fn persist(&mut self, writes: Vec<Write>) -> Durable {
        let mut durable = Durable::default();
        if writes.is_empty() {
            return durable;
        }
        let partitions = match &self.backing {
            Backing::Memory => return durable,
            Backing::Local(logs) => logs.len(),
            Backing::Replicated(slots) => slots.len(),
        };
        let mut by_partition: BTreeMap<usize, Vec<Write>> = BTreeMap::new();
        for w in writes {
            by_partition
                .entry(records::partition_for(w.group(), partitions))
                .or_default()
                .push(w);
        }
        let now = now_ms();
        for (partition, writes) in by_partition {
            let mut builder = BatchBuilder::new(Compression::None);
            for w in &writes {
                let (key, value) = encode_write(w);
                builder.push(now, Some(&key), value.as_deref(), &[]);
            }
            let mut batch = match builder.build() {
                Ok(b) => b,
                Err(e) => {
                    durable.error = Some(e.to_string());
                    continue;
                }
            };
            let result = match &self.backing {
                Backing::Memory => Ok(None),
                Backing::Local(logs) => match logs.get(partition) {
                    None => Ok(None),
                    Some(log) => log
                        .append(&mut batch, 0)
                        .map(|info| Some(Wait::Fsync(log.clone(), info.last_offset)))
                        .map_err(|e| e.to_string()),
                },
                Backing::Replicated(slots) => match slots.get(partition) {
                    Some(Slot {
                        partition: Some(p),
                        owned: Owned::Yes { .. },
                    }) => p
                        .append_with_acks(&mut batch, now, true)
                        .map(|a| a.commit.map(|ticket| Wait::Commit(p.clone(), ticket)))
                        .map_err(|(code, msg)| format!("{code:?}: {msg}")),
                    _ => Err(format!(
                        "this node no longer leads {OFFSETS_TOPIC}-{partition}"
                    )),
                },
            };
            match result {
                Ok(wait) => durable.waits.extend(wait),
                Err(e) => {
                    tracing::error!(partition, error = %e, "appending to __consumer_offsets failed");
                    durable.error = Some(e);
                }
            }
        }
        durable
    }
}

fn encode_write(w: &Write) -> (Vec<u8>, Option<Vec<u8>>) {
    match w {
        Write::Offset {
            group,
            topic,
            partition,
            value,
        } => (
            records::encode_key(&RecordKey::Offset {
                group: group.clone(),
                topic: topic.clone(),
                partition: *partition,
            }),
            value.as_ref().map(records::encode_offset),
        ),
        Write::Group { group, value } => (
            records::encode_key(&RecordKey::Group {
                group: group.clone(),
            }),
            value.as_ref().map(records::encode_group),
        ),
        Write::Consumer { group, value } => (
            records::encode_key(&RecordKey::ConsumerGroup {
                group: group.clone(),
            }),
            value.as_deref().map(records::encode_consumer_group),
        ),
    }
}

pub struct GroupCoordinator {
    inner: Arc<Inner>,
}

/// The coordinator's settings from the broker's.
pub fn config_from(broker: &BrokerConfig) -> Config {
    let mut c = Config::default();
    if let Ok(minutes) = broker.i64("offsets.retention.minutes") {
        c.offsets_retention_ms = minutes.max(1).saturating_mul(60_000);
    }
    if let Ok(ms) = broker.i64("group.initial.rebalance.delay.ms") {
        c.initial_rebalance_delay_ms = ms.max(0);
    }
    if let Ok(ms) = broker.i64("group.consumer.heartbeat.interval.ms") {
        c.consumer_heartbeat_interval_ms = ms.clamp(1, i64::from(i32::MAX)) as i32;
    }
    if let Ok(ms) = broker.i64("group.consumer.session.timeout.ms") {
        c.consumer_session_timeout_ms = ms.clamp(1, i64::from(i32::MAX)) as i32;
    }
    c
}

impl GroupCoordinator {
    /// A coordinator without storage; [`GroupCoordinator::open`] attaches it.
    pub fn new(config: Config) -> Self {
        GroupCoordinator {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    groups: Groups::new(config),
                    backing: Backing::Memory,
                }),
            }),
        }
    }

    /// Loads the groups and offsets stored in `logs` (the partitions of
    /// `__consumer_offsets`) and writes there from now on (single node).
    pub fn open(&self, logs: Vec<Arc<Log>>, now: i64) -> anyhow::Result<()> {
        let mut loaded = Loaded::default();
        for log in &logs {
            replay(log, &mut loaded).with_context(|| format!("loading {}", log.dir().display()))?;
        }
        loaded.log_summary("loaded consumer groups");
        let mut st = self.inner.state.lock();
        loaded.install(&mut st.groups, now);
        st.backing = Backing::Local(logs);
        Ok(())
    }

    /// Cluster mode: groups are coordinated by the leaders of the replicated
    /// `__consumer_offsets` partitions; [`GroupCoordinator::sync_ownership`]
    /// keeps this node's share current.
    pub fn open_replicated(&self) {
        self.inner.state.lock().backing = Backing::Replicated(Vec::new());
    }

    /// Cluster mode: brings partition `index` (of `count`) in line with this
    /// node's leadership of it. On becoming a ready leader the partition's
    /// groups are loaded from its log (everything in it is committed then); on
    /// losing leadership they are dropped. A leader still catching up answers
    /// COORDINATOR_LOAD_IN_PROGRESS.
    pub fn sync_ownership(
        &self,
        index: usize,
        count: usize,
        partition: Option<Arc<Partition>>,
        leadership: Leadership,
    ) {
        let previous = {
            let mut st = self.inner.state.lock();
            let State { groups, backing } = &mut *st;
            let Backing::Replicated(slots) = backing else {
                return;
            };
            if slots.len() != count {
                // First sight of the topic (its partition count never changes).
                groups.groups.clear();
                slots.clear();
                slots.extend((0..count).map(|_| Slot {
                    partition: None,
                    owned: Owned::No,
                }));
            }
            let Some(slot) = slots.get_mut(index) else {
                return;
            };
            slot.partition = partition.clone();
            let previous = slot.owned;
            let next = match leadership {
                Leadership::Follower => Owned::No,
                // Own writes awaiting commit also leave the high watermark
                // behind the log end: a loaded leader of the same term stays.
                Leadership::CatchingUp { term } => match previous {
                    Owned::Yes { term: t } if t == term => previous,
                    _ => Owned::Loading,
                },
                Leadership::Ready { term } => match previous {
                    Owned::Yes { term: t } if t == term => previous,
                    // Loaded below, outside the lock.
                    _ => Owned::Loading,
                },
            };
            slot.owned = next;
            if matches!(previous, Owned::Yes { .. }) && next != previous {
                groups
                    .groups
                    .retain(|id, _| records::partition_for(id, count) != index);
                tracing::info!(
                    partition = index,
                    "no longer coordinating the groups of {OFFSETS_TOPIC}-{index}"
                );
            }
            previous
        };
        let Leadership::Ready { term } = leadership else {
            return;
        };
        if previous == (Owned::Yes { term }) {
            return;
        }
        let Some(partition) = partition else { return };
        // Replayed without the lock: nothing else writes this partition while
        // it is not owned, and requests for its groups get LOAD_IN_PROGRESS.
        let mut loaded = Loaded::default();
        if let Err(e) = replay(&partition.log, &mut loaded) {
            tracing::error!(partition = index, error = %format!("{e:#}"), "loading consumer groups");
            return;
        }
        let mut st = self.inner.state.lock();
        let State { groups, backing } = &mut *st;
        let Backing::Replicated(slots) = backing else {
            return;
        };
        let Some(slot) = slots.get_mut(index) else {
            return;
        };
        if slot.owned != Owned::Loading || slots.len() != count {
            return; // leadership moved on while loading
        }
        // Groups a racing request created meanwhile are replaced by the log's.
        groups
            .groups
            .retain(|id, _| records::partition_for(id, count) != index);
        loaded.log_summary(&format!(
            "coordinating the groups of {OFFSETS_TOPIC}-{index}"
        ));
        loaded.install(groups, now_ms());
        slots[index].owned = Owned::Yes { term };
    }

    /// The `__consumer_offsets` partitions this node coordinates (cluster mode).
    pub fn owned_partitions(&self) -> Vec<usize> {
        match &self.inner.state.lock().backing {
            Backing::Replicated(slots) => slots
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.owned, Owned::Yes { .. }))
                .map(|(i, _)| i)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Runs the timers every 100 ms on a thread that ends with the coordinator.
    pub fn start_timer(&self) -> anyhow::Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("weir-group-timer".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(inner) = weak.upgrade() else { return };
                let mut st = inner.state.lock();
                st.groups.tick(now_ms());
                let writes = std::mem::take(&mut st.groups.writes);
                let _ = st.persist(writes);
            })
            .context("starting the group timer thread")?;
        Ok(())
    }

    /// Runs `f` on the groups under the lock and appends what it wrote.
    pub fn run<R>(&self, f: impl FnOnce(&mut Groups) -> R) -> (R, Durable) {
        let mut st = self.inner.state.lock();
        let r = f(&mut st.groups);
        let writes = std::mem::take(&mut st.groups.writes);
        let durable = st.persist(writes);
        (r, durable)
    }

    /// [`GroupCoordinator::run`] for a request about `group`: an error instead
    /// when this node does not coordinate it (checked under the same lock, so
    /// coordination cannot move away in between).
    pub fn run_for<R>(
        &self,
        group: &str,
        f: impl FnOnce(&mut Groups) -> R,
    ) -> Result<(R, Durable), ResponseError> {
        let mut st = self.inner.state.lock();
        if let Some(e) = st.owner_error(group) {
            return Err(e);
        }
        let r = f(&mut st.groups);
        let writes = std::mem::take(&mut st.groups.writes);
        let durable = st.persist(writes);
        Ok((r, durable))
    }

    /// Read-only access.
    pub fn read<R>(&self, f: impl FnOnce(&Groups) -> R) -> R {
        f(&self.inner.state.lock().groups)
    }

    /// Read-only access for a request about `group` (see [`GroupCoordinator::run_for`]).
    pub fn read_for<R>(
        &self,
        group: &str,
        f: impl FnOnce(&Groups) -> R,
    ) -> Result<R, ResponseError> {
        let st = self.inner.state.lock();
        match st.owner_error(group) {
            Some(e) => Err(e),
            None => Ok(f(&st.groups)),
        }
    }
}

/// The latest value of every key of some `__consumer_offsets` partitions.
#[derive(Default)]
struct Loaded {
    groups: HashMap<String, GroupValue>,
    offsets: HashMap<(String, String, i32), OffsetValue>,
    consumer: HashMap<String, ConsumerGroup>,
}

impl Loaded {
    fn install(self, groups: &mut Groups, now: i64) {
        groups.load(self.groups, self.offsets, now);
        groups.load_consumer_groups(self.consumer, now);
    }

    fn log_summary(&self, what: &str) {
        tracing::info!(
            groups = self.groups.len(),
            offsets = self.offsets.len(),
            consumer_protocol_groups = self.consumer.len(),
            "{what}"
        );
    }
}

/// Applies every record of a `__consumer_offsets` partition: the last value of a
/// key wins, a tombstone removes it.
fn replay(log: &Log, loaded: &mut Loaded) -> anyhow::Result<()> {
    let Loaded {
        groups,
        offsets,
        consumer,
    } = loaded;
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 4 << 20, true).context("reading")?;
        if read.batches.is_empty() {
            break;
        }
        for batch in read.batches {
            let decoded = decode_records(&batch, 256 << 20).context("decoding a batch")?;
            for record in decoded {
                offset = offset.max(record.offset + 1);
                let Some(key) = record.key else { continue };
                let key = match records::decode_key(key) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(offset = record.offset, error = %e, "skipping an unreadable __consumer_offsets key");
                        continue;
                    }
                };
                if let RecordKey::ConsumerGroup { group } = key {
                    apply_consumer(group, record.value, record.offset, consumer);
                    continue;
                }
                apply(key, record.value, record.offset, groups, offsets);
            }
            // Batches emptied by compaction still advance the position.
            if let Ok(h) = weir_protocol::records::BatchHeader::parse(&batch) {
                offset = offset.max(h.last_offset() + 1);
            }
        }
    }
    Ok(())
}

fn apply_consumer(
    group: String,
    value: Option<Bytes>,
    at: i64,
    consumer: &mut HashMap<String, ConsumerGroup>,
) {
    let Some(value) = value else {
        consumer.remove(&group);
        return;
    };
    let parsed = records::decode_consumer_group(value)
        .and_then(|json| serde_json::from_slice::<ConsumerGroup>(&json).map_err(|e| e.to_string()));
    match parsed {
        Ok(cg) => {
            consumer.insert(group, cg);
        }
        Err(e) => {
            tracing::warn!(offset = at, error = %e, "skipping an unreadable consumer group record")
        }
    }
}

fn apply(
    key: RecordKey,
    value: Option<Bytes>,
    at: i64,
    groups: &mut HashMap<String, GroupValue>,
    offsets: &mut HashMap<(String, String, i32), OffsetValue>,
) {
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            let k = (group, topic, partition);
            match value.map(records::decode_offset) {
                None => {
                    offsets.remove(&k);
                }
                Some(Ok(v)) => {
                    offsets.insert(k, v);
                }
                Some(Err(e)) => {
                    tracing::warn!(offset = at, error = %e, "skipping an unreadable offset commit")
                }
            }
        }
        RecordKey::ConsumerGroup { .. } => {}
        RecordKey::Group { group } => match value.map(records::decode_group) {
            None => {
                groups.remove(&group);
                offsets.retain(|(g, _, _), _| *g != group);
            }
            Some(Ok(v)) => {
                groups.insert(group, v);
            }
            Some(Err(e)) => {
                tracing::warn!(offset = at, error = %e, "skipping unreadable group metadata")
            }
        },
    }
}

impl Broker {
    /// Creates `__consumer_offsets` if needed and attaches the group coordinator
    /// to it (called once by [`Broker::open`]).
    pub fn open_group_coordinator(&self) -> anyhow::Result<()> {
        if self.raft.is_some() {
            // Cluster mode: the topic is created through the controller once one
            // is elected (`ensure_offsets_topic`), and coordination follows the
            // leadership of its partitions (`follow_group_coordination`).
            self.groups.open_replicated();
            return self.groups.start_timer();
        }
        let topic = match self.topic(OFFSETS_TOPIC) {
            Some(t) => t,
            None => {
                let configs = Self::offsets_topic_configs();
                self.create_topic(OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS, -1, configs, false)
                    .map_err(|(code, msg)| {
                        anyhow::anyhow!("creating {OFFSETS_TOPIC}: {code:?}: {msg}")
                    })?
            }
        };
        let mut logs = Vec::new();
        for index in 0..topic.partitions {
            let p = self
                .partition(OFFSETS_TOPIC, index)
                .with_context(|| format!("{OFFSETS_TOPIC}-{index} is not open"))?;
            logs.push(p.log.clone());
        }
        self.groups.open(logs, now_ms())?;
        self.groups.start_timer()
    }

    fn offsets_topic_configs() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("segment.bytes".to_string(), (100 << 20).to_string()),
        ])
    }

    /// Cluster mode: creates the replicated `__consumer_offsets` unless it
    /// exists (every node tries at start; one wins).
    pub fn ensure_offsets_topic(&self) -> Result<(), crate::state::TopicError> {
        if self.topic(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        let partitions = self
            .config
            .i64("offsets.topic.num.partitions")
            .unwrap_or(16)
            .clamp(1, 1000) as i32;
        let nodes = self.cluster_nodes().len() as i64;
        let rf = self
            .config
            .i64("offsets.topic.replication.factor")
            .unwrap_or(3)
            .clamp(1, nodes.max(1)) as i16;
        match self.create_topic(
            OFFSETS_TOPIC,
            partitions,
            rf,
            Self::offsets_topic_configs(),
            false,
        ) {
            Ok(_) => Ok(()),
            Err((kafka_protocol::error::ResponseError::TopicAlreadyExists, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cluster mode: one pass over the partitions of `__consumer_offsets`,
    /// handing each partition's groups to this node while it leads it.
    pub fn sync_group_coordination(&self) {
        let Some(topic) = self.topic(OFFSETS_TOPIC) else {
            return;
        };
        let count = topic.partitions.max(0) as usize;
        for index in 0..topic.partitions {
            let partition = self.partition(OFFSETS_TOPIC, index);
            let leadership = match &partition {
                Some(p) if p.is_leader() => {
                    // Everything in a new leader's log is committed once the
                    // high watermark reaches its end (its first entry of the
                    // term commits the earlier leaders' tails).
                    let term = p.current_leader_epoch().max(0) as u64;
                    if p.high_watermark() >= p.log.log_end_offset() {
                        Leadership::Ready { term }
                    } else {
                        Leadership::CatchingUp { term }
                    }
                }
                _ => Leadership::Follower,
            };
            self.groups
                .sync_ownership(index as usize, count, partition, leadership);
        }
    }

    /// Cluster mode: keeps group coordination in step with partition
    /// leadership, every 100 ms, on a thread that ends with the broker.
    pub fn follow_group_coordination(self: &Arc<Self>) -> anyhow::Result<()> {
        self.every(
            "weir-group-leadership",
            TICK,
            Broker::sync_group_coordination,
        )
    }

    /// The node coordinating `group`: this node on a single node; in a cluster
    /// the leader of the group's `__consumer_offsets` partition.
    pub fn group_coordinator_of(&self, group: &str) -> Result<i32, String> {
        if self.raft.is_none() {
            return Ok(self.node_id());
        }
        let Some(topic) = self.topic(OFFSETS_TOPIC) else {
            return Err(format!("{OFFSETS_TOPIC} is not created yet"));
        };
        let index = records::partition_for(group, topic.partitions.max(0) as usize) as i32;
        match self.partition_leader(OFFSETS_TOPIC, index).0 {
            -1 => Err(format!("{OFFSETS_TOPIC}-{index} has no leader yet")),
            id => Ok(id),
        }
    }
}
