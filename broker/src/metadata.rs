//! Cluster metadata (topics, their partition counts and configs, producer id
//! blocks) as a log of records on the storage engine. The broker replays it at
//! start; every change is appended and fsync'd before it is acknowledged. The
//! replication issue puts this log under the metadata Raft group.

use anyhow::{bail, Context};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;
use weir_protocol::compression::Compression;
use weir_protocol::records::{decode_records, BatchBuilder};
use weir_storage::{Log, LogConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum MetaRecord {
    ClusterId {
        id: String,
    },
    TopicCreated {
        name: String,
        id: Uuid,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        /// Node ids per partition (cluster mode); empty on a single node.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replicas: Vec<Vec<i32>>,
    },
    TopicDeleted {
        name: String,
    },
    PartitionsCreated {
        name: String,
        total: i32,
        /// Node ids of each new partition (cluster mode).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replicas: Vec<Vec<i32>>,
    },
    TopicConfigsReplaced {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `end` have been handed out (allocated in blocks). Written
    /// by earlier versions, which gave every node the same block in a cluster.
    ProducerIdBlock {
        end: i64,
    },
    /// `node` takes the next `size` producer ids, from the current end on. The
    /// block is decided when the record is applied, in log order, so two nodes
    /// asking at the same moment get different blocks.
    ProducerIdBlockTaken {
        node: i32,
        size: i64,
    },
    /// A partition's replicas are to become `target` (AlterPartitionReassignments;
    /// a target equal to the current replicas cancels a reassignment).
    ReassignmentStarted {
        name: String,
        partition: i32,
        target: Vec<i32>,
    },
    /// The partition's Raft voters are now `replicas`.
    ReassignmentCompleted {
        name: String,
        partition: i32,
        replicas: Vec<i32>,
    },
    /// A node joins the cluster (AddRaftVoter): peers connect to `raft_addr`, and
    /// the controller adds it to the metadata group.
    NodeRegistered {
        node_id: i32,
        raft_addr: String,
    },
    /// A node leaves the cluster (RemoveRaftVoter): the controller removes it from
    /// the metadata group and no new replica is placed on it.
    NodeRemoved {
        node_id: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Only the configs set on the topic; defaults come from the broker.
    pub configs: BTreeMap<String, String>,
    /// Node ids holding each partition (cluster mode); empty on a single node.
    pub replicas: Vec<Vec<i32>>,
    /// The replicas each partition was created with: its Raft group's
    /// configuration before the first entry, which a replica added later starts
    /// from (it then applies every configuration change in the log).
    pub initial_replicas: Vec<Vec<i32>>,
    /// Partitions being reassigned, with their target replicas.
    pub reassigning: BTreeMap<i32, Vec<i32>>,
}

#[derive(Debug, Default)]
struct MetaState {
    cluster_id: String,
    topics: BTreeMap<String, TopicMeta>,
    ids: HashMap<Uuid, String>,
    producer_id_end: i64,
    /// The latest block of producer ids each node took: [start, end).
    producer_id_blocks: BTreeMap<i32, (i64, i64)>,
    /// Nodes registered after the cluster was founded: id -> Raft address.
    registered: BTreeMap<i32, String>,
    /// Nodes removed from the cluster.
    removed: std::collections::BTreeSet<i32>,
}

impl MetaState {
    fn apply(&mut self, record: MetaRecord) {
        match record {
            MetaRecord::ClusterId { id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = id
                }
            }
            MetaRecord::TopicCreated {
                name,
                id,
                partitions,
                replication_factor,
                configs,
                replicas,
            } => {
                // Two nodes racing to create one topic: the first record wins.
                if self.topics.contains_key(&name) {
                    return;
                }
                self.ids.insert(id, name.clone());
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name,
                        id,
                        partitions,
                        replication_factor,
                        configs,
                        initial_replicas: replicas.clone(),
                        replicas,
                        reassigning: BTreeMap::new(),
                    },
                );
            }
            MetaRecord::TopicDeleted { name } => {
                if let Some(t) = self.topics.remove(&name) {
                    self.ids.remove(&t.id);
                }
            }
            MetaRecord::PartitionsCreated {
                name,
                total,
                replicas,
            } => {
                if let Some(t) = self.topics.get_mut(&name) {
                    if total > t.partitions {
                        if !t.replicas.is_empty() || !replicas.is_empty() {
                            t.initial_replicas.extend(replicas.iter().cloned());
                            t.replicas.extend(replicas);
                        }
                        t.partitions = total;
                    }
                }
            }
            MetaRecord::TopicConfigsReplaced { name, configs } => {
                if let Some(t) = self.topics.get_mut(&name) {
                    t.configs = configs;
                }
            }
            MetaRecord::ProducerIdBlock { end } => {
                self.producer_id_end = self.producer_id_end.max(end)
            }
            MetaRecord::ProducerIdBlockTaken { node, size } => {
                let start = self.producer_id_end;
                let end = start.saturating_add(size.clamp(1, MAX_PRODUCER_ID_BLOCK));
                self.producer_id_end = end;
                self.producer_id_blocks.insert(node, (start, end));
            }
            MetaRecord::ReassignmentStarted {
                name,
                partition,
                target,
            } => {
                if let Some(t) = self.topics.get_mut(&name) {
                    if (0..t.partitions).contains(&partition) && !target.is_empty() {
                        t.reassigning.insert(partition, target);
                    }
                }
            }
            MetaRecord::NodeRegistered { node_id, raft_addr } => {
                self.removed.remove(&node_id);
                self.registered.insert(node_id, raft_addr);
            }
            MetaRecord::NodeRemoved { node_id } => {
                self.registered.remove(&node_id);
                self.removed.insert(node_id);
            }
            MetaRecord::ReassignmentCompleted {
                name,
                partition,
                replicas,
            } => {
                if let Some(t) = self.topics.get_mut(&name) {
                    let idx = partition as usize;
                    // Only the completion of the reassignment still pending counts
                    // (a newer target may have replaced it).
                    if t.reassigning.get(&partition) == Some(&replicas) && idx < t.replicas.len() {
                        t.reassigning.remove(&partition);
                        t.replicas[idx] = replicas;
                    }
                }
            }
        }
    }
}

const PRODUCER_ID_BLOCK: i64 = 1000;
/// Bound on a block's size as applied (a record is input too).
const MAX_PRODUCER_ID_BLOCK: i64 = 1 << 20;

/// The metadata log's directory name, `<topic>-<partition>` as Kafka's KRaft
/// names it, beside the partitions in the data dir.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Topics only the broker itself writes (Kafka's `Topic.isInternal`, plus
/// Weir's metadata log): clients cannot produce to, delete or grow them, and
/// Metadata marks them internal.
pub fn is_internal_topic(name: &str) -> bool {
    matches!(
        name,
        "__consumer_offsets"
            | "__transaction_state"
            | "__share_group_state"
            | "__cep_definitions"
            | "__cep_checkpoints"
            | METADATA_TOPIC
    )
}

/// Hands a metadata batch to the metadata Raft group (cluster mode).
pub type Proposer = Arc<dyn Fn(Vec<u8>) -> anyhow::Result<()> + Send + Sync>;
/// Told the name of each topic whose metadata changed, on every node.
pub type Listener = Arc<dyn Fn(&str) + Send + Sync>;

/// How long a metadata change waits to be committed and applied.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

pub struct MetadataStore {
    log: Arc<Log>,
    state: RwLock<MetaState>,
    /// Serialises writers so that validation and append see the same state.
    write: Mutex<()>,
    /// This node's current block of producer ids: the next one to hand out and the
    /// block's end. Empty at start: a restarted node takes a new block, because ids
    /// of its previous one may have been handed out before it stopped.
    next_producer_id: Mutex<(i64, i64)>,
    /// Cluster mode: changes go through Raft and are applied when committed.
    proposer: RwLock<Option<Proposer>>,
    listener: RwLock<Option<Listener>>,
    /// Changes proposed here, by request id, waiting to be applied.
    waiting: Mutex<HashMap<Uuid, std::sync::mpsc::Sender<()>>>,
    /// Replicated: the log is written only through Raft, never directly.
    replicated: std::sync::atomic::AtomicBool,
}

impl MetadataStore {
    /// The log configuration the metadata log needs: never deleted by retention.
    pub fn log_config() -> LogConfig {
        LogConfig {
            retention_ms: None,
            retention_bytes: None,
            ..LogConfig::default()
        }
    }

    pub fn open(log: Arc<Log>) -> anyhow::Result<Self> {
        let store = Self::open_until(log, i64::MAX)?;
        if store.state.read().cluster_id.is_empty() {
            let id = base64_url(Uuid::new_v4().as_bytes());
            store.commit(MetaRecord::ClusterId { id })?;
        }
        Ok(store)
    }

    /// Cluster mode: replays the committed prefix (offsets below `committed_end`);
    /// later records arrive through [`MetadataStore::apply_entry`].
    pub fn open_replicated(log: Arc<Log>, committed_end: i64) -> anyhow::Result<Self> {
        let store = Self::open_until(log, committed_end)?;
        store
            .replicated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(store)
    }

    fn open_until(log: Arc<Log>, end: i64) -> anyhow::Result<Self> {
        log.update_config(Self::log_config());
        let mut state = MetaState::default();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset().min(end) {
            let read = log
                .read(offset, 1 << 20, true)
                .context("reading metadata log")?;
            if read.batches.is_empty() {
                break;
            }
            for batch in read.batches {
                let records =
                    decode_records(&batch, 64 << 20).context("decoding metadata log batch")?;
                for record in records {
                    if record.offset >= end {
                        break;
                    }
                    offset = record.offset + 1;
                    let Some(value) = record.value else { continue };
                    let parsed: MetaRecord = serde_json::from_slice(&value)
                        .with_context(|| format!("metadata record at offset {}", record.offset))?;
                    state.apply(parsed);
                }
            }
        }
        Ok(MetadataStore {
            log,
            state: RwLock::new(state),
            write: Mutex::new(()),
            next_producer_id: Mutex::new((0, 0)),
            proposer: RwLock::new(None),
            listener: RwLock::new(None),
            waiting: Mutex::new(HashMap::new()),
            replicated: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn set_proposer(&self, proposer: Proposer) {
        *self.proposer.write() = Some(proposer);
    }

    pub fn set_listener(&self, listener: Listener) {
        *self.listener.write() = Some(listener);
    }

    /// Applies a committed metadata entry (every node, in log order).
    pub fn apply_entry(&self, data: &bytes::Bytes) {
        for batch in weir_protocol::records::batches(data) {
            let Ok((_, raw)) = batch else {
                tracing::error!("malformed metadata batch in a committed entry");
                return;
            };
            let batch = data.slice_ref(raw);
            let records = match decode_records(&batch, 64 << 20) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable metadata batch");
                    continue;
                }
            };
            for record in records {
                let Some(value) = record.value else { continue };
                let parsed: MetaRecord = match serde_json::from_slice(&value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable metadata record");
                        continue;
                    }
                };
                let topic = match &parsed {
                    MetaRecord::TopicCreated { name, .. }
                    | MetaRecord::TopicDeleted { name }
                    | MetaRecord::PartitionsCreated { name, .. }
                    | MetaRecord::TopicConfigsReplaced { name, .. }
                    | MetaRecord::ReassignmentStarted { name, .. }
                    | MetaRecord::ReassignmentCompleted { name, .. } => Some(name.clone()),
                    _ => None,
                };
                self.state.write().apply(parsed);
                if let Some(topic) = topic {
                    let listener = self.listener.read().clone();
                    if let Some(l) = listener {
                        l(&topic);
                    }
                }
                if let Some(key) = record.key {
                    if let Ok(id) = Uuid::from_slice(&key) {
                        if let Some(tx) = self.waiting.lock().remove(&id) {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
    }

    /// Builds the metadata batch for `record`, keyed by a request id in cluster mode.
    fn batch_for(record: &MetaRecord, key: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let value = serde_json::to_vec(record).context("encoding metadata record")?;
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(now_ms(), key, Some(&value), &[]);
        builder.build().context("building metadata batch")
    }

    /// Cluster mode: proposes and waits until this node applied the record.
    fn commit_replicated(&self, proposer: Proposer, record: MetaRecord) -> anyhow::Result<()> {
        let id = Uuid::new_v4();
        let batch = Self::batch_for(&record, Some(id.as_bytes()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.waiting.lock().insert(id, tx);
        let result = proposer(batch).and_then(|()| {
            let wait = || rx.recv_timeout(COMMIT_TIMEOUT);
            let got = match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(wait)
                }
                _ => wait(),
            };
            got.map_err(|_| anyhow::anyhow!("the metadata change was not committed within {COMMIT_TIMEOUT:?} (no controller quorum?)"))
        });
        self.waiting.lock().remove(&id);
        result
    }

    fn commit(&self, record: MetaRecord) -> anyhow::Result<()> {
        let mut proposer = self.proposer.read().clone();
        if proposer.is_none() && self.replicated.load(std::sync::atomic::Ordering::Relaxed) {
            // A one-voter group leads before its proposer is attached: wait for it
            // rather than write around Raft.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while proposer.is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                proposer = self.proposer.read().clone();
            }
            if proposer.is_none() {
                bail!("the metadata group is not ready yet");
            }
        }
        if let Some(proposer) = proposer {
            return self.commit_replicated(proposer, record);
        }
        let value = serde_json::to_vec(&record).context("encoding metadata record")?;
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(now_ms(), None, Some(&value), &[]);
        let mut batch = builder.build().context("building metadata batch")?;
        let info = self
            .log
            .append(&mut batch, 0)
            .context("appending to the metadata log")?;
        self.log
            .wait_durable(info.last_offset)
            .context("syncing the metadata log")?;
        self.state.write().apply(record);
        Ok(())
    }

    pub fn cluster_id(&self) -> String {
        self.state.read().cluster_id.clone()
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.state.read().topics.get(name).cloned()
    }

    pub fn topic_name_by_id(&self, id: &Uuid) -> Option<String> {
        self.state.read().ids.get(id).cloned()
    }

    pub fn topics(&self) -> Vec<TopicMeta> {
        self.state.read().topics.values().cloned().collect()
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        replicas: Vec<Vec<i32>>,
    ) -> anyhow::Result<TopicMeta> {
        let _guard = self.write.lock();
        if self.state.read().topics.contains_key(name) {
            bail!("topic {name} already exists");
        }
        let id = Uuid::new_v4();
        self.commit(MetaRecord::TopicCreated {
            name: name.to_string(),
            id,
            partitions,
            replication_factor,
            configs: configs.clone(),
            replicas: replicas.clone(),
        })?;
        // In cluster mode another node's record may have won the race.
        match self.topic(name) {
            Some(t) if t.id == id => Ok(t),
            Some(_) => bail!("topic {name} already exists"),
            None => bail!("topic {name} was deleted while being created"),
        }
    }

    /// Cluster mode: records the cluster id if none is set yet (the first
    /// controller leader does this).
    pub fn ensure_cluster_id(&self) -> anyhow::Result<()> {
        if !self.cluster_id().is_empty() {
            return Ok(());
        }
        let id = base64_url(Uuid::new_v4().as_bytes());
        self.commit(MetaRecord::ClusterId { id })
    }

    pub fn delete_topic(&self, name: &str) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::TopicDeleted {
            name: name.to_string(),
        })
    }

    pub fn set_partition_count(
        &self,
        name: &str,
        total: i32,
        replicas: Vec<Vec<i32>>,
    ) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::PartitionsCreated {
            name: name.to_string(),
            total,
            replicas,
        })
    }

    /// Records that partition `partition` of `name` is to move to `target`.
    pub fn start_reassignment(
        &self,
        name: &str,
        partition: i32,
        target: Vec<i32>,
    ) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::ReassignmentStarted {
            name: name.to_string(),
            partition,
            target,
        })
    }

    /// Records a node joining the cluster with its Raft address.
    pub fn register_node(&self, node_id: i32, raft_addr: String) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::NodeRegistered { node_id, raft_addr })
    }

    /// Records a node leaving the cluster.
    pub fn remove_node(&self, node_id: i32) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::NodeRemoved { node_id })
    }

    /// Nodes registered after the founding (id -> Raft address).
    pub fn registered_nodes(&self) -> BTreeMap<i32, String> {
        self.state.read().registered.clone()
    }

    /// Nodes removed from the cluster.
    pub fn removed_nodes(&self) -> std::collections::BTreeSet<i32> {
        self.state.read().removed.clone()
    }

    /// Records that the partition's voters reached `replicas`.
    pub fn complete_reassignment(
        &self,
        name: &str,
        partition: i32,
        replicas: Vec<i32>,
    ) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::ReassignmentCompleted {
            name: name.to_string(),
            partition,
            replicas,
        })
    }

    pub fn replace_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let _guard = self.write.lock();
        self.commit(MetaRecord::TopicConfigsReplaced {
            name: name.to_string(),
            configs,
        })
    }

    /// A producer id never handed out before, also across restarts: ids are
    /// reserved in blocks, each block recorded in the log before it is used.
    /// A producer id no node has handed out: from this node's block, taking a new
    /// block through the metadata log when it is used up.
    pub fn allocate_producer_id(&self, node: i32) -> anyhow::Result<i64> {
        let mut block = self.next_producer_id.lock();
        if block.0 >= block.1 {
            let _guard = self.write.lock();
            self.commit(MetaRecord::ProducerIdBlockTaken {
                node,
                size: PRODUCER_ID_BLOCK,
            })?;
            // Applied before commit returns; this node's requests are serialised by
            // the lock held here, so the entry is the block just taken.
            *block = self
                .state
                .read()
                .producer_id_blocks
                .get(&node)
                .copied()
                .context("the producer id block taken is not in the metadata state")?;
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }

    pub fn close(&self) -> anyhow::Result<()> {
        self.log.close().context("closing the metadata log")
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Kafka cluster ids are 22-character URL-safe base64 UUIDs.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long; the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("topic name {name:?} contains {c:?}; allowed are ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> MetadataStore {
        let log = Log::open(
            &dir.join("__cluster_metadata-0"),
            MetadataStore::log_config(),
        )
        .unwrap();
        MetadataStore::open(Arc::new(log)).unwrap()
    }

    #[test]
    fn producer_id_blocks_are_disjoint_per_node_and_in_log_order() {
        let mut state = MetaState::default();
        state.apply(MetaRecord::ProducerIdBlock { end: 1000 });
        for node in [1, 2, 1, 3] {
            state.apply(MetaRecord::ProducerIdBlockTaken { node, size: 1000 });
        }
        // Node 1's second block replaced its first; blocks start after the old records' end.
        assert_eq!(state.producer_id_blocks.get(&2), Some(&(2000, 3000)));
        assert_eq!(state.producer_id_blocks.get(&1), Some(&(3000, 4000)));
        assert_eq!(state.producer_id_blocks.get(&3), Some(&(4000, 5000)));
        // A block size from the log is bounded.
        state.apply(MetaRecord::ProducerIdBlockTaken {
            node: 4,
            size: i64::MAX,
        });
        let (start, end) = state.producer_id_blocks[&4];
        assert_eq!(end - start, MAX_PRODUCER_ID_BLOCK);
        state.apply(MetaRecord::ProducerIdBlockTaken { node: 5, size: -7 });
        let (start, end) = state.producer_id_blocks[&5];
        assert_eq!(end - start, 1);
    }

    #[test]
    fn topics_and_producer_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, pid) = {
            let store = open(dir.path());
            store
                .create_topic(
                    "a",
                    3,
                    1,
                    BTreeMap::from([("retention.ms".into(), "5".into())]),
                    Vec::new(),
                )
                .unwrap();
            store
                .create_topic("b", 1, 1, BTreeMap::new(), Vec::new())
                .unwrap();
            store.set_partition_count("a", 5, Vec::new()).unwrap();
            store.delete_topic("b").unwrap();
            let pid = store.allocate_producer_id(1).unwrap();
            store.close().unwrap();
            (store.cluster_id(), pid)
        };
        let store = open(dir.path());
        assert_eq!(store.cluster_id(), cluster);
        assert_eq!(cluster.len(), 22);
        let a = store.topic("a").unwrap();
        assert_eq!(a.partitions, 5);
        assert_eq!(a.configs.get("retention.ms").map(String::as_str), Some("5"));
        assert!(store.topic("b").is_none());
        assert!(
            store.allocate_producer_id(1).unwrap() > pid,
            "producer ids are never reused"
        );
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("bad name").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
