//! The broker's shared state: configuration, cluster metadata, partitions.

use crate::cluster::MetaMachine;
use crate::config::BrokerConfig;
use crate::fetch_session::FetchSessions;
use crate::metadata::{validate_topic_name, MetadataStore, TopicMeta, METADATA_TOPIC};
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::replication::node::{GroupHandle, RaftNode};
use crate::replication::RaftLog;
use crate::topic_config::{self, EffectiveConfig};
use anyhow::Context;
use kafka_protocol::error::ResponseError;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weir_storage::{LogConfig, LogManager};

pub type TopicError = (ResponseError, String);

pub struct Broker {
    pub config: BrokerConfig,
    pub meta: Arc<MetadataStore>,
    /// Cluster mode: this node's Raft groups and transport.
    pub raft: Option<Arc<RaftNode>>,
    /// Cluster mode: the metadata (controller) group.
    pub meta_group: Option<Arc<GroupHandle<MetaMachine>>>,
    pub logs: LogManager,
    pub fetch_sessions: FetchSessions,
    pub metrics: Metrics,
    /// Consumer groups and committed offsets.
    pub groups: crate::coordinator::GroupCoordinator,
    /// Topic -> partition index -> partition. Keyed by topic first so that the
    /// per-request lookup borrows the name instead of allocating a key.
    partitions: RwLock<HashMap<String, HashMap<i32, Arc<Partition>>>>,
}

impl Broker {
    pub fn open(config: BrokerConfig) -> anyhow::Result<Arc<Broker>> {
        Self::open_with(config, None)
    }

    /// Opens the broker; with `raft`, in cluster mode (every partition and the
    /// metadata log replicated by Raft groups of this node).
    pub fn open_with(
        config: BrokerConfig,
        raft: Option<Arc<RaftNode>>,
    ) -> anyhow::Result<Arc<Broker>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let defaults = EffectiveConfig::resolve(&config, &BTreeMap::new()).log_config();
        let logs = LogManager::open(&config.data_dir, defaults)
            .with_context(|| format!("opening logs in {}", config.data_dir.display()))?;
        let meta_log = logs
            .get_or_create(METADATA_TOPIC, 0, MetadataStore::log_config())
            .context("opening the metadata log")?;
        let (meta, meta_group) = match &raft {
            None => (Arc::new(MetadataStore::open(meta_log)?), None),
            Some(node) => {
                let voters: Vec<u64> = config
                    .founders
                    .clone()
                    .unwrap_or_else(|| config.peers.keys().copied().collect());
                let raft_log = RaftLog::open(meta_log.clone(), &voters)
                    .context("opening the metadata raft log")?;
                let committed = raft_log.offset_after(raft_log.commit().min(raft_log.last_index()));
                let meta = Arc::new(MetadataStore::open_replicated(meta_log, committed)?);
                let group = node.open_group(
                    (Arc::from(METADATA_TOPIC), 0),
                    raft_log,
                    MetaMachine {
                        store: meta.clone(),
                    },
                    true,
                    true,
                    0,
                    Box::new(|| {}),
                )?;
                let proposer = group.clone();
                meta.set_proposer(Arc::new(move |batch: Vec<u8>| {
                    proposer.with(|g, _| g.propose_anywhere(batch))?
                }));
                (meta, Some(group))
            }
        };
        let groups =
            crate::coordinator::GroupCoordinator::new(crate::coordinator::config_from(&config));
        let broker = Arc::new(Broker {
            config,
            meta,
            raft,
            meta_group,
            logs,
            fetch_sessions: FetchSessions::new(1000),
            metrics: Metrics::default(),
            groups,
            partitions: RwLock::new(HashMap::new()),
        });
        // Logs of topics the metadata no longer has (a deletion interrupted by a
        // crash) are removed; every partition of every topic is opened.
        let topics: BTreeMap<String, TopicMeta> = broker
            .meta
            .topics()
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        for ((topic, partition), _) in broker.logs.logs() {
            // In cluster mode the locally known metadata may lag the cluster's:
            // deletions arrive as committed records instead.
            if broker.raft.is_some() {
                break;
            }
            let keep = topic == METADATA_TOPIC
                || topics.get(&topic).is_some_and(|t| partition < t.partitions);
            if !keep {
                tracing::warn!(topic, partition, "removing the log of a deleted topic");
                broker
                    .logs
                    .remove(&topic, partition)
                    .with_context(|| format!("removing {topic}-{partition}"))?;
            }
        }
        for topic in topics.values() {
            broker.open_partitions(topic, 0)?;
        }
        if broker.raft.is_some() {
            let weak = Arc::downgrade(&broker);
            broker.meta.set_listener(Arc::new(move |topic: &str| {
                if let Some(b) = weak.upgrade() {
                    b.reconcile_topic(topic);
                }
            }));
        }
        broker.open_group_coordinator()?;
        Ok(broker)
    }

    /// Cluster mode: brings local replicas in line with the committed metadata of
    /// `name` (called on every node as topic records are applied).
    fn reconcile_topic(&self, name: &str) {
        match self.topic(name) {
            Some(topic) => {
                if let Err(e) = self.open_partitions(&topic, 0) {
                    tracing::error!(topic = name, error = %format!("{e:#}"), "opening replicas");
                }
                self.drop_moved_replicas(&topic);
                let effective = EffectiveConfig::resolve(&self.config, &topic.configs);
                for index in 0..topic.partitions {
                    if let Some(p) = self.partition(name, index) {
                        p.log.update_config(effective.log_config());
                        *p.config.write() = effective.clone();
                        // Leadership returns to the first of the (reassigned) replicas.
                        if let (Some(r), Some(&first)) =
                            (&p.replica, self.replicas_of(&topic, index).first())
                        {
                            r.set_preferred(first as u64);
                        }
                    }
                }
            }
            None => {
                let removed = self.partitions.write().remove(name).unwrap_or_default();
                for (index, p) in removed {
                    if let Some(node) = &self.raft {
                        node.remove_group(&(Arc::from(name), index));
                    }
                    p.wake_waiters();
                    drop(p);
                    if let Err(e) = self.logs.remove(name, index) {
                        tracing::error!(topic = name, partition = index, error = %e, "removing a deleted topic's log");
                    }
                }
            }
        }
    }

    /// Cluster mode: removes local replicas that a completed reassignment moved
    /// away from this node (their Raft group no longer counts this node).
    fn drop_moved_replicas(&self, topic: &TopicMeta) {
        if self.raft.is_none() {
            return;
        }
        let me = self.node_id();
        let local: Vec<i32> = match self.partitions.read().get(&topic.name) {
            Some(ps) => ps.keys().copied().collect(),
            None => return,
        };
        for index in local {
            let keep = self.replicas_of(topic, index).contains(&me)
                || topic
                    .reassigning
                    .get(&index)
                    .is_some_and(|t| t.contains(&me));
            if keep {
                continue;
            }
            let removed = self
                .partitions
                .write()
                .get_mut(&topic.name)
                .and_then(|ps| ps.remove(&index));
            if let Some(p) = removed {
                if let Some(node) = &self.raft {
                    node.remove_group(&(Arc::from(topic.name.as_str()), index));
                }
                p.wake_waiters();
                drop(p);
                tracing::info!(topic = %topic.name, partition = index, "replica moved to other nodes; removing it here");
                if let Err(e) = self.logs.remove(&topic.name, index) {
                    tracing::error!(topic = %topic.name, partition = index, error = %e, "removing a moved replica's log");
                }
            }
        }
    }

    /// The replicas of partition `index` of `topic` (this node alone on a single node).
    pub fn replicas_of(&self, topic: &TopicMeta, index: i32) -> Vec<i32> {
        match topic.replicas.get(index as usize) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => vec![self.node_id()],
        }
    }

    /// Node ids of the cluster's members (this node alone on a single node):
    /// the metadata group's voters, without nodes being removed.
    pub fn cluster_nodes(&self) -> Vec<i32> {
        let Some(meta) = &self.meta_group else {
            return vec![self.node_id()];
        };
        let removed = self.meta.removed_nodes();
        let voters = meta.inspect(|g| g.voters());
        voters
            .into_iter()
            .map(|id| id as i32)
            .filter(|id| !removed.contains(id))
            .collect()
    }

    fn open_partitions(&self, topic: &TopicMeta, from: i32) -> anyhow::Result<()> {
        let effective = EffectiveConfig::resolve(&self.config, &topic.configs);
        let log_config = effective.log_config();
        for index in from..topic.partitions {
            if self.partition(&topic.name, index).is_some() {
                continue;
            }
            let replicas = self.replicas_of(topic, index);
            let hosted = replicas.contains(&self.node_id())
                || topic
                    .reassigning
                    .get(&index)
                    .is_some_and(|t| t.contains(&self.node_id()));
            if self.raft.is_some() && !hosted {
                continue; // hosted elsewhere
            }
            let initial = match topic.initial_replicas.get(index as usize) {
                Some(r) if !r.is_empty() => r.clone(),
                _ => replicas.clone(),
            };
            let log = self
                .logs
                .get_or_create(&topic.name, index, log_config.clone())
                .with_context(|| format!("opening partition {}-{index}", topic.name))?;
            // Logs found at start were opened with the defaults; apply the topic's own.
            log.update_config(log_config.clone());
            let partition = match &self.raft {
                None => Partition::new(&topic.name, index, log, effective.clone()),
                Some(node) => Partition::new_replicated(
                    &topic.name,
                    index,
                    log,
                    effective.clone(),
                    node,
                    &replicas,
                    &initial,
                )?,
            };
            let partition = Arc::new(partition);
            self.partitions
                .write()
                .entry(topic.name.clone())
                .or_default()
                .insert(index, partition);
        }
        Ok(())
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// Brokers clients may connect to: this node, plus (cluster mode) every peer
    /// that has introduced itself over the Raft transport.
    pub fn live_brokers(&self) -> Vec<(i32, String, i32)> {
        match &self.raft {
            None => vec![(
                self.node_id(),
                self.config.advertised_host.clone(),
                self.config.advertised_port,
            )],
            Some(node) => {
                // A node that said hello but is not (or no longer) a member is
                // not offered to clients.
                let members = self.cluster_nodes();
                let me = self.node_id();
                node.transport
                    .peers()
                    .into_iter()
                    .filter(|p| p.node_id as i32 == me || members.contains(&(p.node_id as i32)))
                    .map(|p| (p.node_id as i32, p.kafka_host, p.kafka_port))
                    .collect()
            }
        }
    }

    /// The HTTP listeners (host:port) of the other cluster members that introduced
    /// themselves over the Raft transport (empty on a single node).
    pub fn peer_http(&self) -> Vec<(i32, String)> {
        let Some(node) = &self.raft else {
            return Vec::new();
        };
        let members = self.cluster_nodes();
        let me = self.node_id();
        node.transport
            .peers()
            .into_iter()
            .filter(|p| {
                let id = p.node_id as i32;
                id != me && members.contains(&id) && !p.http.is_empty()
            })
            .map(|p| (p.node_id as i32, p.http))
            .collect()
    }

    /// The controller: the metadata group's leader (-1 while electing).
    pub fn controller_id(&self) -> i32 {
        match &self.meta_group {
            None => self.node_id(),
            Some(g) => match g.leader() {
                0 => -1,
                id => id as i32,
            },
        }
    }

    /// The leader of a partition and its epoch ((-1, -1) when unknown): from the
    /// local replica, or (cluster mode, no replica here) from the leader's own
    /// recent report over the Raft transport.
    pub fn partition_leader(&self, topic: &str, index: i32) -> (i32, i32) {
        if let Some(p) = self.partition(topic, index) {
            return (p.leader_id(self.node_id()), p.current_leader_epoch());
        }
        let reported = self
            .raft
            .as_ref()
            .and_then(|node| node.transport.reported_leader(&(Arc::from(topic), index)));
        match reported {
            Some((node, term)) => (node as i32, term as i32),
            None => (-1, -1),
        }
    }

    /// The address of broker `id`, if known.
    pub fn broker_address(&self, id: i32) -> Option<(String, i32)> {
        self.live_brokers()
            .into_iter()
            .find(|(n, _, _)| *n == id)
            .map(|(_, h, p)| (h, p))
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.partitions.read().get(topic)?.get(&index).cloned()
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.meta.topic(name)
    }

    pub fn effective_config(&self, topic: &TopicMeta) -> EffectiveConfig {
        EffectiveConfig::resolve(&self.config, &topic.configs)
    }

    pub fn auto_create_enabled(&self) -> bool {
        self.config
            .bool("auto.create.topics.enable")
            .unwrap_or(true)
    }

    /// Creates a topic with the broker's defaults (Metadata auto-creation).
    pub fn auto_create(&self, name: &str) -> Result<TopicMeta, TopicError> {
        let partitions = self
            .config
            .i64("num.partitions")
            .unwrap_or(1)
            .clamp(1, 100_000) as i32;
        match self.create_topic(name, partitions, -1, BTreeMap::new(), false) {
            Ok(t) => Ok(t),
            // Two clients racing to auto-create: the loser sees the winner's topic.
            Err((ResponseError::TopicAlreadyExists, _)) => self.topic(name).ok_or((
                ResponseError::UnknownTopicOrPartition,
                "topic vanished".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// Validates and (unless `validate_only`) creates a topic. A replication
    /// factor of -1 means the default.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta, TopicError> {
        validate_topic_name(name).map_err(|m| (ResponseError::InvalidTopicException, m))?;
        if name == METADATA_TOPIC {
            return Err((
                ResponseError::InvalidTopicException,
                format!("topic name '{name}' is reserved for Weir's metadata"),
            ));
        }
        if self.topic(name).is_some() {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("topic '{name}' already exists"),
            ));
        }
        let partitions = if partitions == -1 {
            self.config.i64("num.partitions").unwrap_or(1) as i32
        } else {
            partitions
        };
        if !(1..=100_000).contains(&partitions) {
            return Err((
                ResponseError::InvalidPartitions,
                format!("number of partitions must be 1 to 100000, got {partitions}"),
            ));
        }
        let rf = if replication_factor == -1 {
            self.config.i64("default.replication.factor").unwrap_or(1) as i16
        } else {
            replication_factor
        };
        let nodes = self.cluster_nodes();
        let brokers = nodes.len() as i16;
        if rf < 1 || rf > brokers {
            return Err((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} is not possible with {brokers} available broker(s)"
                ),
            ));
        }
        for (key, value) in &configs {
            topic_config::validate(key, value).map_err(|m| (ResponseError::InvalidConfig, m))?;
        }
        if validate_only {
            return Ok(TopicMeta {
                name: name.to_string(),
                id: uuid::Uuid::nil(),
                partitions,
                replication_factor: rf,
                configs,
                replicas: Vec::new(),
                initial_replicas: Vec::new(),
                reassigning: BTreeMap::new(),
            });
        }
        let replicas = if self.raft.is_some() {
            crate::cluster::assign_replicas(&nodes, 0, partitions, rf as usize)
        } else {
            Vec::new()
        };
        let topic = self
            .meta
            .create_topic(name, partitions, rf, configs, replicas)
            .map_err(|e| (ResponseError::TopicAlreadyExists, format!("{e:#}")))?;
        self.open_partitions(&topic, 0)
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let Some(topic) = self.topic(name) else {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' does not exist"),
            ));
        };
        self.meta
            .delete_topic(name)
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))?;
        if self.raft.is_some() {
            // Applying the record removed the replicas (on every node).
            tracing::info!(topic = name, "deleted topic");
            return Ok(());
        }
        let removed = self.partitions.write().remove(name).unwrap_or_default();
        for p in removed.values() {
            p.wake_waiters();
        }
        for index in 0..topic.partitions {
            if let Err(e) = self.logs.remove(name, index) {
                tracing::error!(topic = name, partition = index, error = %e, "removing a deleted topic's log");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    pub fn create_partitions(
        &self,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let Some(topic) = self.topic(name) else {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' does not exist"),
            ));
        };
        if total <= topic.partitions {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "topic '{name}' has {} partitions; the new count {total} must be larger",
                    topic.partitions
                ),
            ));
        }
        if total > 100_000 {
            return Err((
                ResponseError::InvalidPartitions,
                format!("{total} partitions is more than the limit of 100000"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let replicas = if self.raft.is_some() {
            crate::cluster::assign_replicas(
                &self.cluster_nodes(),
                topic.partitions,
                total - topic.partitions,
                topic.replication_factor.max(1) as usize,
            )
        } else {
            Vec::new()
        };
        self.meta
            .set_partition_count(name, total, replicas)
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))?;
        let Some(updated) = self.topic(name) else {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' was deleted"),
            ));
        };
        self.open_partitions(&updated, topic.partitions)
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))
    }

    /// Replaces a topic's configs (all of them) after validating each.
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let Some(topic) = self.topic(name) else {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' does not exist"),
            ));
        };
        for (key, value) in &configs {
            topic_config::validate(key, value).map_err(|m| (ResponseError::InvalidConfig, m))?;
        }
        if validate_only {
            return Ok(());
        }
        self.meta
            .replace_topic_configs(name, configs.clone())
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))?;
        let effective = EffectiveConfig::resolve(&self.config, &configs);
        let log_config: LogConfig = effective.log_config();
        for index in 0..topic.partitions {
            if let Some(p) = self.partition(name, index) {
                p.log.update_config(log_config.clone());
                *p.config.write() = effective.clone();
            }
        }
        Ok(())
    }

    /// Runs `task` every `period` on a thread named `name` that ends with the
    /// broker (it holds only a weak reference between runs).
    pub fn every(
        self: &Arc<Self>,
        name: &str,
        period: std::time::Duration,
        task: fn(&Broker),
    ) -> anyhow::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                std::thread::sleep(period);
                let Some(broker) = weak.upgrade() else { return };
                task(&broker);
            })
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(())
    }

    /// Clean shutdown: every log flushed and marked clean.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        if let Some(node) = &self.raft {
            node.close();
        }
        self.logs.shutdown().context("closing logs")
    }
}
