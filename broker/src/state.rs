//! The broker's shared state: configuration, cluster metadata, partitions.

use crate::config::BrokerConfig;
use crate::fetch_session::FetchSessions;
use crate::metadata::{validate_topic_name, MetadataStore, TopicMeta, METADATA_TOPIC};
use crate::metrics::Metrics;
use crate::partition::Partition;
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
    pub meta: MetadataStore,
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
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let defaults = EffectiveConfig::resolve(&config, &BTreeMap::new()).log_config();
        let logs = LogManager::open(&config.data_dir, defaults)
            .with_context(|| format!("opening logs in {}", config.data_dir.display()))?;
        let meta_log = logs
            .get_or_create(METADATA_TOPIC, 0, MetadataStore::log_config())
            .context("opening the metadata log")?;
        let meta = MetadataStore::open(meta_log)?;
        let groups =
            crate::coordinator::GroupCoordinator::new(crate::coordinator::config_from(&config));
        let broker = Arc::new(Broker {
            config,
            meta,
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
        broker.open_group_coordinator()?;
        Ok(broker)
    }

    fn open_partitions(&self, topic: &TopicMeta, from: i32) -> anyhow::Result<()> {
        let effective = EffectiveConfig::resolve(&self.config, &topic.configs);
        let log_config = effective.log_config();
        for index in from..topic.partitions {
            let log = self
                .logs
                .get_or_create(&topic.name, index, log_config.clone())
                .with_context(|| format!("opening partition {}-{index}", topic.name))?;
            // Logs found at start were opened with the defaults; apply the topic's own.
            log.update_config(log_config.clone());
            let partition = Arc::new(Partition::new(&topic.name, index, log, effective.clone()));
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
        let brokers = 1;
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
            });
        }
        let topic = self
            .meta
            .create_topic(name, partitions, rf, configs)
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
        self.meta
            .set_partition_count(name, total)
            .map_err(|e| (ResponseError::KafkaStorageError, format!("{e:#}")))?;
        let updated = TopicMeta {
            partitions: total,
            ..topic.clone()
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

    /// Clean shutdown: every log flushed and marked clean.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        self.logs.shutdown().context("closing logs")
    }
}
