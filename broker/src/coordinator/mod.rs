//! The group coordinator: Kafka's classic consumer-group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and committed offsets, for every group (a
//! single node coordinates them all).
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
use crate::state::Broker;
use anyhow::Context;
use bytes::Bytes;
use consumer_group::ConsumerGroup;
use machine::{Config, Groups, Write};
use parking_lot::{Mutex, RwLock};
use records::{GroupValue, OffsetValue, RecordKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;
use weir_protocol::compression::Compression;
use weir_protocol::records::{decode_records, BatchBuilder};
use weir_storage::Log;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of `__consumer_offsets` when this broker creates it (one node
/// coordinates every group; an existing topic keeps its count).
pub const OFFSETS_TOPIC_PARTITIONS: i32 = 1;
const TICK: Duration = Duration::from_millis(100);

/// Offsets whose durability an answer waits for.
#[derive(Default)]
pub struct Durable {
    waits: Vec<(Arc<Log>, i64)>,
    error: Option<String>,
}

impl Durable {
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty() && self.error.is_none()
    }

    /// Waits until every write is fsync'd.
    pub async fn wait(self) -> Result<(), String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        for (log, offset) in self.waits {
            match tokio::task::spawn_blocking(move || log.wait_durable(offset)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(e) => return Err(format!("fsync task failed: {e}")),
            }
        }
        Ok(())
    }
}

struct Inner {
    groups: Mutex<Groups>,
    logs: RwLock<Vec<Arc<Log>>>,
}

impl Inner {
    /// Appends queued writes, one batch per `__consumer_offsets` partition.
    fn persist(&self, writes: Vec<Write>) -> Durable {
        let mut durable = Durable::default();
        if writes.is_empty() {
            return durable;
        }
        let logs = self.logs.read();
        if logs.is_empty() {
            return durable; // in-memory (tests)
        }
        let mut by_partition: BTreeMap<usize, Vec<Write>> = BTreeMap::new();
        for w in writes {
            by_partition
                .entry(records::partition_for(w.group(), logs.len()))
                .or_default()
                .push(w);
        }
        let now = now_ms();
        for (partition, writes) in by_partition {
            let Some(log) = logs.get(partition) else {
                continue;
            };
            let mut builder = BatchBuilder::new(Compression::None);
            for w in &writes {
                let (key, value) = encode_write(w);
                builder.push(now, Some(&key), value.as_deref(), &[]);
            }
            let result = builder
                .build()
                .map_err(|e| e.to_string())
                .and_then(|mut batch| log.append(&mut batch, 0).map_err(|e| e.to_string()));
            match result {
                Ok(info) => durable.waits.push((log.clone(), info.last_offset)),
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
                groups: Mutex::new(Groups::new(config)),
                logs: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Loads the groups and offsets stored in `logs` (the partitions of
    /// `__consumer_offsets`) and writes there from now on.
    pub fn open(&self, logs: Vec<Arc<Log>>, now: i64) -> anyhow::Result<()> {
        let mut groups: HashMap<String, GroupValue> = HashMap::new();
        let mut offsets: HashMap<(String, String, i32), OffsetValue> = HashMap::new();
        let mut consumer: HashMap<String, ConsumerGroup> = HashMap::new();
        for log in &logs {
            replay(log, &mut groups, &mut offsets, &mut consumer)
                .with_context(|| format!("loading {}", log.dir().display()))?;
        }
        tracing::info!(
            groups = groups.len(),
            offsets = offsets.len(),
            consumer_protocol_groups = consumer.len(),
            "loaded consumer groups"
        );
        let mut g = self.inner.groups.lock();
        g.load(groups, offsets, now);
        g.load_consumer_groups(consumer, now);
        drop(g);
        *self.inner.logs.write() = logs;
        Ok(())
    }

    /// Runs the timers every 100 ms on a thread that ends with the coordinator.
    pub fn start_timer(&self) -> anyhow::Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("weir-group-timer".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(inner) = weak.upgrade() else { return };
                let mut groups = inner.groups.lock();
                groups.tick(now_ms());
                let writes = std::mem::take(&mut groups.writes);
                let _ = inner.persist(writes);
            })
            .context("starting the group timer thread")?;
        Ok(())
    }

    /// Runs `f` on the groups under the lock and appends what it wrote.
    pub fn run<R>(&self, f: impl FnOnce(&mut Groups) -> R) -> (R, Durable) {
        let mut groups = self.inner.groups.lock();
        let r = f(&mut groups);
        let writes = std::mem::take(&mut groups.writes);
        let durable = self.inner.persist(writes);
        (r, durable)
    }

    /// Read-only access.
    pub fn read<R>(&self, f: impl FnOnce(&Groups) -> R) -> R {
        f(&self.inner.groups.lock())
    }
}

/// Applies every record of a `__consumer_offsets` partition: the last value of a
/// key wins, a tombstone removes it.
fn replay(
    log: &Log,
    groups: &mut HashMap<String, GroupValue>,
    offsets: &mut HashMap<(String, String, i32), OffsetValue>,
    consumer: &mut HashMap<String, ConsumerGroup>,
) -> anyhow::Result<()> {
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
            // Cluster mode: the controller coordinates groups from node-local
            // offsets logs. Replicating __consumer_offsets (and moving the
            // coordinator with its partitions' leaders) is not built yet.
            let configs = BTreeMap::from([
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), (100 << 20).to_string()),
            ]);
            let log_config =
                crate::topic_config::EffectiveConfig::resolve(&self.config, &configs).log_config();
            let mut logs = Vec::new();
            for index in 0..OFFSETS_TOPIC_PARTITIONS {
                let log = self
                    .logs
                    .get_or_create(OFFSETS_TOPIC, index, log_config.clone())
                    .with_context(|| format!("opening {OFFSETS_TOPIC}-{index}"))?;
                log.update_config(log_config.clone());
                logs.push(log);
            }
            self.groups.open(logs, now_ms())?;
            return self.groups.start_timer();
        }
        let topic = match self.topic(OFFSETS_TOPIC) {
            Some(t) => t,
            None => {
                let configs = BTreeMap::from([
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    ("segment.bytes".to_string(), (100 << 20).to_string()),
                ]);
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
}
