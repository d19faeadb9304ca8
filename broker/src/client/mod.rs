//! Weir's own async Kafka client, used by the `weir` CLI tools and `weir bench`.
//!
//! It speaks plain Kafka, so it works against any Kafka broker (Weir, Apache
//! Kafka, Redpanda):
//!
//! - connects to a bootstrap address, negotiates API versions per connection
//!   (ApiVersions v3, falling back to v0) and uses, per API, the highest version
//!   both sides support;
//! - learns brokers and partition leaders from Metadata and opens one connection
//!   per broker lazily; requests are pipelined on a connection ([`conn`]);
//! - routes partition requests to the leader and, on `NOT_LEADER_OR_FOLLOWER`,
//!   `UNKNOWN_TOPIC_OR_PARTITION` and similar errors, refreshes metadata and retries
//!   a bounded number of times.
//!
//! Errors carry Kafka's error code name and what the client was doing.

pub mod conn;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod versions;

pub use conn::{ConnConfig, Connection, PendingResponse};
pub use error::{codes, error_name, ClientError, Result};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Pseudo node id of the bootstrap connection.
const BOOTSTRAP_NODE: i32 = i32::MIN;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub client_id: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Retries after a retriable error (leader moved, topic not yet known, ...).
    pub max_retries: u32,
    /// Backoff before the first retry; grows linearly.
    pub retry_backoff: Duration,
    /// Largest response accepted (a Fetch answer can be large).
    pub max_response_bytes: usize,
    /// Ask brokers to create unknown topics on Metadata (Kafka's `allow.auto.create.topics`).
    pub allow_auto_topic_creation: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: "weir".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_retries: 5,
            retry_backoff: Duration::from_millis(100),
            max_response_bytes: 256 << 20,
            allow_auto_topic_creation: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }
}

fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    pub error_code: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: Uuid,
    pub error_code: i16,
    pub is_internal: bool,
    pub partitions: BTreeMap<i32, PartitionInfo>,
}

impl TopicInfo {
    pub fn error(&self) -> Option<ClientError> {
        ClientError::from_code(self.error_code, None, format!("topic {}", self.name))
    }
}

/// The answer to a Metadata request.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: Vec<TopicInfo>,
}

#[derive(Debug, Default)]
struct Cache {
    controller_id: i32,
    brokers: BTreeMap<i32, BrokerInfo>,
    topics: HashMap<String, TopicInfo>,
}

/// Where ListOffsets should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The first offset whose timestamp is at or after this (ms since the epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    fn wire(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(t) => t,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    /// Offset of the first record; -1 with acks=0.
    pub base_offset: i64,
    pub log_append_time: i64,
    pub log_start_offset: i64,
}

/// One partition to fetch in a multi-partition Fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionRequest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: i32,
}

/// One partition of a Fetch answer. `records` holds whole record batches (and
/// possibly a partial one at the end); iterate with `weir_protocol::records::batches`.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    pub error_message: Option<String>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

impl FetchedPartition {
    pub fn error(&self) -> Option<ClientError> {
        ClientError::from_code(
            self.error_code,
            self.error_message.as_deref(),
            format!("fetching {}-{}", self.topic, self.partition),
        )
    }
}

/// A config entry of DescribeConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub read_only: bool,
    pub is_sensitive: bool,
    /// Kafka's ConfigSource: 1 dynamic topic, 4 static broker, 5 default, ...; -1 unknown.
    pub source: i8,
}

impl ConfigEntry {
    pub fn source_name(&self) -> &'static str {
        match self.source {
            1 => "DYNAMIC_TOPIC_CONFIG",
            2 => "DYNAMIC_BROKER_CONFIG",
            3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
            4 => "STATIC_BROKER_CONFIG",
            5 => "DEFAULT_CONFIG",
            6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
            7 => "CLIENT_METRICS_CONFIG",
            8 => "GROUP_CONFIG",
            _ => "UNKNOWN",
        }
    }
}

/// IncrementalAlterConfigs operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterOp {
    Set = 0,
    Delete = 1,
    Append = 2,
    Subtract = 3,
}

/// ConfigResource type of a topic.
const RESOURCE_TOPIC: i8 = 2;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic_name(v: &str) -> TopicName {
    TopicName(s(v))
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

struct Inner {
    bootstrap: Vec<String>,
    cfg: ClientConfig,
    conn_cfg: ConnConfig,
    slots: Mutex<HashMap<i32, Slot>>,
    cache: RwLock<Cache>,
}

/// A Kafka client; cheap to clone (clones share connections and metadata).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .finish()
    }
}

impl Client {
    /// Connects to the bootstrap broker(s) (`HOST:PORT`, comma-separated for several)
    /// and negotiates API versions. Metadata is fetched on first use.
    pub async fn connect(bootstrap: &str, cfg: ClientConfig) -> Result<Client> {
        let bootstrap: Vec<String> = bootstrap
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if bootstrap.is_empty() {
            return Err(ClientError::Invalid("no bootstrap address given".into()));
        }
        let conn_cfg = ConnConfig {
            client_id: cfg.client_id.clone(),
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            max_response_bytes: cfg.max_response_bytes,
        };
        let client = Client {
            inner: Arc::new(Inner {
                bootstrap,
                cfg,
                conn_cfg,
                slots: Mutex::new(HashMap::new()),
                cache: RwLock::new(Cache {
                    controller_id: -1,
                    ..Default::default()
                }),
            }),
        };
        client.connection(BOOTSTRAP_NODE).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    // ---------------------------------------------------------------- connections

    /// The connection to broker `node` (opened if needed; `BOOTSTRAP_NODE` for the bootstrap).
    pub async fn connection(&self, node: i32) -> Result<Arc<Connection>> {
        let addr = if node == BOOTSTRAP_NODE {
            None
        } else {
            let cache = self.inner.cache.read();
            let b = cache.brokers.get(&node).ok_or_else(|| {
                ClientError::Invalid(format!("broker {node} is not in the cluster metadata"))
            })?;
            Some(b.addr())
        };
        self.connection_to(node, addr.as_deref()).await
    }

    /// The connection to `node` at `addr` (coordinators come with their address).
    async fn connection_to(&self, node: i32, addr: Option<&str>) -> Result<Arc<Connection>> {
        let slot = self.inner.slots.lock().entry(node).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.is_alive() && addr.is_none_or(|a| a == c.addr()) {
                return Ok(c.clone());
            }
        }
        let conn = match addr {
            Some(a) => Connection::connect(a, &self.inner.conn_cfg).await?,
            None => {
                let mut last = None;
                let mut found = None;
                for a in &self.inner.bootstrap {
                    match Connection::connect(a, &self.inner.conn_cfg).await {
                        Ok(c) => {
                            found = Some(c);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match found {
                    Some(c) => c,
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            ClientError::Invalid("no bootstrap address".into())
                        }))
                    }
                }
            }
        };
        let conn = Arc::new(conn);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Any live connection: the bootstrap one, then any broker's.
    pub async fn any_connection(&self) -> Result<Arc<Connection>> {
        match self.connection(BOOTSTRAP_NODE).await {
            Ok(c) => Ok(c),
            Err(e) => {
                let nodes: Vec<i32> = self.inner.cache.read().brokers.keys().copied().collect();
                for n in nodes {
                    if let Ok(c) = self.connection(n).await {
                        return Ok(c);
                    }
                }
                Err(e)
            }
        }
    }

    /// The controller's connection if known (CreateTopics and friends on ZooKeeper-era
    /// Kafka must go there), else any.
    async fn controller_connection(&self) -> Result<Arc<Connection>> {
        let controller = self.inner.cache.read().controller_id;
        if controller < 0 {
            self.metadata(Some(&[])).await?;
        }
        let controller = self.inner.cache.read().controller_id;
        if controller >= 0 {
            if let Ok(c) = self.connection(controller).await {
                return Ok(c);
            }
        }
        self.any_connection().await
    }

    async fn retrying<T, F, Fut>(&self, topic: Option<&str>, mut attempt_fn: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match attempt_fn().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.inner.cfg.max_retries && e.is_retriable() => {
                    tracing::debug!(error = %e, attempt, "retrying");
                    attempt += 1;
                    tokio::time::sleep(self.inner.cfg.retry_backoff * attempt).await;
                    if e.needs_metadata_refresh() {
                        let topics: Vec<&str> = topic.into_iter().collect();
                        let _ = self.metadata(Some(&topics)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    // ---------------------------------------------------------------- metadata

    /// Fetches metadata: all topics with `None`, only brokers with `Some(&[])`.
    /// Updates the cache of leaders and brokers.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<Metadata> {
        let conn = self.any_connection().await?;
        let auto_create = self.inner.cfg.allow_auto_topic_creation;
        let (version, resp) = conn
            .call(ApiKey::Metadata, |v| {
                let mut req = MetadataRequest::default();
                req.topics = match topics {
                    None if v == 0 => Some(vec![]),
                    None => None,
                    Some(list) => Some(
                        list.iter()
                            .map(|t| {
                                metadata_request::MetadataRequestTopic::default()
                                    .with_name(Some(topic_name(t)))
                            })
                            .collect(),
                    ),
                };
                if v >= 4 {
                    req.allow_auto_topic_creation = auto_create;
                }
                RequestKind::Metadata(req)
            })
            .await?;
        let ResponseKind::Metadata(resp) = resp else {
            return Err(ClientError::Protocol(
                "Metadata answered with another response type".into(),
            ));
        };
        if version >= 13 {
            if let Some(e) = ClientError::from_code(resp.error_code, None, "Metadata") {
                return Err(e);
            }
        }
        let md = Metadata {
            cluster_id: resp.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: resp.controller_id.0,
            brokers: resp
                .brokers
                .iter()
                .map(|b| {
                    (
                        b.node_id.0,
                        BrokerInfo {
                            node_id: b.node_id.0,
                            host: b.host.to_string(),
                            port: b.port,
                            rack: b.rack.as_ref().map(|r| r.to_string()),
                        },
                    )
                })
                .collect(),
            topics: resp
                .topics
                .iter()
                .map(|t| TopicInfo {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    id: t.topic_id,
                    error_code: t.error_code,
                    is_internal: t.is_internal,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| {
                            (
                                p.partition_index,
                                PartitionInfo {
                                    partition: p.partition_index,
                                    error_code: p.error_code,
                                    leader: p.leader_id.0,
                                    leader_epoch: p.leader_epoch,
                                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                                    offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                                },
                            )
                        })
                        .collect(),
                })
                .collect(),
        };
        {
            let mut cache = self.inner.cache.write();
            if !md.brokers.is_empty() {
                cache.brokers = md.brokers.clone();
            }
            cache.controller_id = md.controller_id;
            if topics.is_none() {
                cache.topics.clear();
            }
            for t in &md.topics {
                if t.error_code == 0 {
                    cache.topics.insert(t.name.clone(), t.clone());
                } else {
                    cache.topics.remove(&t.name);
                }
            }
        }
        Ok(md)
    }

    /// A topic's metadata from the cache, fetched if missing.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo> {
        if let Some(t) = self.inner.cache.read().topics.get(topic) {
            return Ok(t.clone());
        }
        // A topic that is being created (or auto-created by this very request)
        // answers LEADER_NOT_AVAILABLE for a moment: ask again. A topic that does
        // not exist fails at once.
        let mut attempt = 0;
        loop {
            let md = self.metadata(Some(&[topic])).await?;
            let t = md
                .topics
                .into_iter()
                .find(|t| t.name == topic)
                .ok_or_else(|| {
                    ClientError::Protocol(format!("Metadata did not mention topic {topic}"))
                })?;
            let leaderless = t.partitions.is_empty() || t.partitions.values().any(|p| p.leader < 0);
            match t.error() {
                Some(e)
                    if e.kafka_code() == Some(codes::LEADER_NOT_AVAILABLE)
                        && attempt < self.inner.cfg.max_retries =>
                {
                    tracing::debug!(error = %e, "topic not ready");
                }
                Some(e) => return Err(e),
                None if leaderless && attempt < self.inner.cfg.max_retries => {}
                None => return Ok(t),
            }
            attempt += 1;
            tokio::time::sleep(self.inner.cfg.retry_backoff * attempt).await;
        }
    }

    /// Number of partitions of a topic.
    pub async fn partition_count(&self, topic: &str) -> Result<usize> {
        Ok(self.topic(topic).await?.partitions.len())
    }

    /// The leader's node id and epoch of a partition, from the cache or fresh metadata.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<(i32, i32)> {
        let t = self.topic(topic).await?;
        let Some(p) = t.partitions.get(&partition) else {
            return Err(ClientError::from_code(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                Some(&format!(
                    "topic {topic} has {} partitions",
                    t.partitions.len()
                )),
                format!("partition {topic}-{partition}"),
            )
            .unwrap_or_else(|| ClientError::Invalid("unknown partition".into())));
        };
        if p.leader < 0 || p.error_code == codes::LEADER_NOT_AVAILABLE {
            // Drop the cache entry so that the retry asks the cluster again.
            self.inner.cache.write().topics.remove(topic);
            return Err(ClientError::from_code(
                codes::LEADER_NOT_AVAILABLE,
                None,
                format!("partition {topic}-{partition}"),
            )
            .unwrap_or_else(|| ClientError::Invalid("no leader".into())));
        }
        Ok((p.leader, p.leader_epoch))
    }

    fn invalidate(&self, topic: &str) {
        self.inner.cache.write().topics.remove(topic);
    }

    // ---------------------------------------------------------------- produce

    /// Produces one record set (one or more v2 record batches) to a partition's leader
    /// and waits for the answer. Retries on leader changes (and on connection
    /// failures before sending), refreshing metadata in between.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
        timeout: Duration,
    ) -> Result<ProduceResult> {
        let mut attempt = 0;
        loop {
            let result = match self
                .send_produce(topic, partition, records.clone(), acks, timeout)
                .await
            {
                Ok(pending) => pending.wait().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => return Ok(r),
                // A broken connection after sending may have appended the batch: only
                // errors that say it was not appended are retried.
                Err(e)
                    if attempt < self.inner.cfg.max_retries
                        && matches!(e, ClientError::Connect { .. } | ClientError::Kafka { .. })
                        && e.is_retriable() =>
                {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying produce");
                    if e.needs_metadata_refresh() {
                        self.invalidate(topic);
                    }
                    tokio::time::sleep(self.inner.cfg.retry_backoff * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Queues a Produce request on the leader's connection and returns once it is
    /// queued: record sets sent by consecutive calls are appended in that order.
    /// Await [`PendingProduce::wait`] for the result (no retries).
    pub async fn send_produce(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
        timeout: Duration,
    ) -> Result<PendingProduce> {
        let (leader, _) = self.leader(topic, partition).await?;
        let conn = self.connection(leader).await?;
        let mut version = conn.version(ApiKey::Produce)?;
        let topic_id = self
            .inner
            .cache
            .read()
            .topics
            .get(topic)
            .map(|t| t.id)
            .unwrap_or_default();
        if version >= 13 && topic_id.is_nil() {
            version = 12;
        }
        let mut td = produce_request::TopicProduceData::default().with_partition_data(vec![
            produce_request::PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records)),
        ]);
        if version >= 13 {
            td.topic_id = topic_id;
        } else {
            td.name = topic_name(topic);
        }
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
            .with_topic_data(vec![td]);
        let pending = conn.send(
            ApiKey::Produce,
            version,
            &RequestKind::Produce(req),
            acks != 0,
            timeout,
        )?;
        Ok(PendingProduce {
            pending,
            topic: topic.to_string(),
            partition,
            topic_id,
        })
    }

    // ---------------------------------------------------------------- fetch

    /// Fetches one partition from its leader, with retries on leader changes.
    /// A partition error (e.g. `OFFSET_OUT_OF_RANGE`) is returned as `Err`.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<FetchedPartition> {
        self.retrying(Some(topic), || async {
            let (leader, _) = self.leader(topic, partition).await?;
            let req = FetchPartitionRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes,
            };
            let mut parts = self
                .fetch_from(leader, std::slice::from_ref(&req), max_wait, 1, max_bytes)
                .await?;
            let p = parts.pop().ok_or_else(|| {
                ClientError::Protocol(format!(
                    "Fetch response does not mention {topic}-{partition}"
                ))
            })?;
            if let Some(e) = p.error() {
                if e.needs_metadata_refresh() {
                    self.invalidate(topic);
                }
                return Err(e);
            }
            Ok(p)
        })
        .await
    }

    /// One Fetch request to broker `node` for several partitions (which it should
    /// lead). Per-partition errors are in the results; no retries.
    pub async fn fetch_from(
        &self,
        node: i32,
        parts: &[FetchPartitionRequest],
        max_wait: Duration,
        min_bytes: i32,
        max_bytes: i32,
    ) -> Result<Vec<FetchedPartition>> {
        let conn = self.connection(node).await?;
        let mut version = conn.version(ApiKey::Fetch)?;
        // Topics in request order, with their ids (Fetch v13+ names topics by id).
        let mut topics: Vec<(String, Uuid)> = Vec::new();
        {
            let cache = self.inner.cache.read();
            for p in parts {
                if !topics.iter().any(|(t, _)| *t == p.topic) {
                    let id = cache.topics.get(&p.topic).map(|t| t.id).unwrap_or_default();
                    topics.push((p.topic.clone(), id));
                }
            }
        }
        if version >= 13 && topics.iter().any(|(_, id)| id.is_nil()) {
            version = 12;
        }
        let req_topics = topics
            .iter()
            .map(|(name, id)| {
                let mut ft = fetch_request::FetchTopic::default().with_partitions(
                    parts
                        .iter()
                        .filter(|p| &p.topic == name)
                        .map(|p| {
                            fetch_request::FetchPartition::default()
                                .with_partition(p.partition)
                                .with_fetch_offset(p.offset)
                                .with_partition_max_bytes(p.max_bytes)
                        })
                        .collect(),
                );
                if version >= 13 {
                    ft.topic_id = *id;
                } else {
                    ft.topic = topic_name(name);
                }
                ft
            })
            .collect();
        let req = FetchRequest::default()
            .with_max_wait_ms(max_wait.as_millis().min(i32::MAX as u128) as i32)
            .with_min_bytes(min_bytes)
            .with_max_bytes(max_bytes)
            .with_topics(req_topics);
        let resp = conn
            .send(
                ApiKey::Fetch,
                version,
                &RequestKind::Fetch(req),
                true,
                max_wait,
            )?
            .response()
            .await?;
        let ResponseKind::Fetch(resp) = resp else {
            return Err(ClientError::Protocol(
                "Fetch answered with another response type".into(),
            ));
        };
        if let Some(e) =
            ClientError::from_code(resp.error_code, None, format!("Fetch from broker {node}"))
        {
            return Err(e);
        }
        let mut out = Vec::with_capacity(parts.len());
        for t in resp.responses {
            let name = if version >= 13 {
                match topics.iter().find(|(_, id)| *id == t.topic_id) {
                    Some((n, _)) => n.clone(),
                    None => continue,
                }
            } else {
                t.topic.0.to_string()
            };
            for p in t.partitions {
                out.push(FetchedPartition {
                    topic: name.clone(),
                    partition: p.partition_index,
                    error_code: p.error_code,
                    error_message: None,
                    high_watermark: p.high_watermark,
                    last_stable_offset: p.last_stable_offset,
                    log_start_offset: p.log_start_offset,
                    records: p.records.unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- offsets

    /// ListOffsets for one partition: the offset (and its timestamp, -1 if none).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        spec: OffsetSpec,
    ) -> Result<(i64, i64)> {
        let mut r = self.list_offsets(topic, &[(partition, spec)]).await?;
        match r.pop() {
            Some((_, res)) => res,
            None => Err(ClientError::Protocol(format!(
                "ListOffsets did not answer for {topic}-{partition}"
            ))),
        }
    }

    /// ListOffsets for several partitions of a topic, each sent to its leader.
    /// Returns `(partition, Ok((offset, timestamp)) | Err)` in request order.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[(i32, OffsetSpec)],
    ) -> Result<Vec<(i32, Result<(i64, i64)>)>> {
        let mut results: Vec<Option<Result<(i64, i64)>>> =
            partitions.iter().map(|_| None).collect();
        let mut attempt = 0;
        loop {
            let todo: Vec<usize> = (0..partitions.len())
                .filter(|&i| match &results[i] {
                    None => true,
                    Some(Err(e)) => e.is_retriable(),
                    Some(Ok(_)) => false,
                })
                .collect();
            if todo.is_empty() || (attempt > 0 && attempt > self.inner.cfg.max_retries) {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(self.inner.cfg.retry_backoff * attempt).await;
                self.invalidate(topic);
            }
            attempt += 1;
            // Group by leader.
            let mut by_leader: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
            for &i in &todo {
                match self.leader(topic, partitions[i].0).await {
                    Ok((leader, _)) => by_leader.entry(leader).or_default().push(i),
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            // Kafka refuses a partition twice in one request: split into rounds.
            let mut rounds: Vec<(i32, Vec<usize>)> = Vec::new();
            for (leader, idx) in by_leader {
                let mut mine: Vec<Vec<usize>> = Vec::new();
                for i in idx {
                    let p = partitions[i].0;
                    match mine
                        .iter_mut()
                        .find(|r| r.iter().all(|&j| partitions[j].0 != p))
                    {
                        Some(r) => r.push(i),
                        None => mine.push(vec![i]),
                    }
                }
                rounds.extend(mine.into_iter().map(|r| (leader, r)));
            }
            for (leader, idx) in rounds {
                match self
                    .list_offsets_from(leader, topic, idx.iter().map(|&i| partitions[i]))
                    .await
                {
                    Ok(answers) => {
                        for &i in &idx {
                            let p = partitions[i].0;
                            results[i] = Some(match answers.get(&p) {
                                Some((code, off, ts)) => match ClientError::from_code(
                                    *code,
                                    None,
                                    format!("listing offsets of {topic}-{p}"),
                                ) {
                                    Some(e) => Err(e),
                                    None => Ok((*off, *ts)),
                                },
                                None => Err(ClientError::Protocol(format!(
                                    "ListOffsets response does not mention {topic}-{p}"
                                ))),
                            });
                        }
                    }
                    Err(e) => {
                        let retriable = e.is_retriable();
                        let msg = e.to_string();
                        for &i in &idx {
                            results[i] = Some(Err(if retriable {
                                ClientError::Disconnected {
                                    addr: format!("broker {leader}"),
                                    reason: msg.clone(),
                                }
                            } else {
                                ClientError::Protocol(msg.clone())
                            }));
                        }
                    }
                }
            }
        }
        Ok(partitions
            .iter()
            .zip(results)
            .map(|((p, _), r)| {
                (
                    *p,
                    r.unwrap_or_else(|| Err(ClientError::Invalid("not attempted".into()))),
                )
            })
            .collect())
    }

    async fn list_offsets_from(
        &self,
        node: i32,
        topic: &str,
        parts: impl Iterator<Item = (i32, OffsetSpec)>,
    ) -> Result<HashMap<i32, (i16, i64, i64)>> {
        let conn = self.connection(node).await?;
        let partitions: Vec<_> = parts
            .map(|(p, spec)| {
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(p)
                    .with_timestamp(spec.wire())
            })
            .collect();
        let timeout = self.inner.cfg.request_timeout;
        let (_, resp) = conn
            .call(ApiKey::ListOffsets, |v| {
                let mut req = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(partitions)]);
                if v >= 10 {
                    req.timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
                }
                RequestKind::ListOffsets(req)
            })
            .await?;
        let ResponseKind::ListOffsets(resp) = resp else {
            return Err(ClientError::Protocol(
                "ListOffsets answered with another response type".into(),
            ));
        };
        let mut out = HashMap::new();
        for t in resp
            .topics
            .into_iter()
            .filter(|t| t.name.0.as_str() == topic)
        {
            for p in t.partitions {
                out.insert(p.partition_index, (p.error_code, p.offset, p.timestamp));
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- admin

    /// CreateTopics for one topic. `partitions` / `replication_factor` of -1 mean
    /// the broker's defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
        validate_only: bool,
    ) -> Result<()> {
        let timeout = self.inner.cfg.request_timeout;
        self.retrying(None, || async {
            let conn = self.controller_connection().await?;
            let (_, resp) = conn
                .call(ApiKey::CreateTopics, |_| {
                    let topic = create_topics_request::CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(partitions)
                        .with_replication_factor(replication_factor)
                        .with_configs(
                            configs
                                .iter()
                                .map(|(k, v)| {
                                    create_topics_request::CreatableTopicConfig::default()
                                        .with_name(s(k))
                                        .with_value(Some(s(v)))
                                })
                                .collect(),
                        );
                    RequestKind::CreateTopics(
                        CreateTopicsRequest::default()
                            .with_topics(vec![topic])
                            .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
                            .with_validate_only(validate_only),
                    )
                })
                .await?;
            let ResponseKind::CreateTopics(resp) = resp else {
                return Err(ClientError::Protocol(
                    "CreateTopics answered with another response type".into(),
                ));
            };
            let t = resp
                .topics
                .iter()
                .find(|t| t.name.0.as_str() == name)
                .ok_or_else(|| {
                    ClientError::Protocol(format!("CreateTopics response does not mention {name}"))
                })?;
            match ClientError::from_code(
                t.error_code,
                t.error_message.as_ref().map(|m| m.as_str()),
                format!("creating topic {name}"),
            ) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
        .await
    }

    /// DeleteTopics; per-topic results in request order.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<Vec<(String, Result<()>)>> {
        let conn = self.controller_connection().await?;
        let timeout = self.inner.cfg.request_timeout;
        let (_, resp) = conn
            .call(ApiKey::DeleteTopics, |v| {
                let mut req = DeleteTopicsRequest::default()
                    .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32);
                if v >= 6 {
                    req.topics = names
                        .iter()
                        .map(|n| {
                            delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(topic_name(n)))
                        })
                        .collect();
                } else {
                    req.topic_names = names.iter().map(|n| topic_name(n)).collect();
                }
                RequestKind::DeleteTopics(req)
            })
            .await?;
        let ResponseKind::DeleteTopics(resp) = resp else {
            return Err(ClientError::Protocol(
                "DeleteTopics answered with another response type".into(),
            ));
        };
        for n in names {
            self.invalidate(n);
        }
        Ok(names
            .iter()
            .map(|n| {
                let r = match resp
                    .responses
                    .iter()
                    .find(|r| r.name.as_ref().is_some_and(|x| x.0.as_str() == *n))
                {
                    None => Err(ClientError::Protocol(format!(
                        "DeleteTopics response does not mention {n}"
                    ))),
                    Some(r) => match ClientError::from_code(
                        r.error_code,
                        r.error_message.as_ref().map(|m| m.as_str()),
                        format!("deleting topic {n}"),
                    ) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    },
                };
                (n.to_string(), r)
            })
            .collect())
    }

    /// CreatePartitions: grows a topic to `count` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<()> {
        let conn = self.controller_connection().await?;
        let timeout = self.inner.cfg.request_timeout;
        let (_, resp) = conn
            .call(ApiKey::CreatePartitions, |_| {
                RequestKind::CreatePartitions(
                    CreatePartitionsRequest::default()
                        .with_topics(vec![
                            create_partitions_request::CreatePartitionsTopic::default()
                                .with_name(topic_name(name))
                                .with_count(count)
                                .with_assignments(None),
                        ])
                        .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
                        .with_validate_only(validate_only),
                )
            })
            .await?;
        let ResponseKind::CreatePartitions(resp) = resp else {
            return Err(ClientError::Protocol(
                "CreatePartitions answered with another response type".into(),
            ));
        };
        self.invalidate(name);
        let r = resp
            .results
            .iter()
            .find(|r| r.name.0.as_str() == name)
            .ok_or_else(|| {
                ClientError::Protocol(format!("CreatePartitions response does not mention {name}"))
            })?;
        match ClientError::from_code(
            r.error_code,
            r.error_message.as_ref().map(|m| m.as_str()),
            format!("creating partitions of {name}"),
        ) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// AlterPartitionReassignments: each `(topic, partition, replicas)` moves the
    /// partition to `replicas` (`None` cancels). Returns each partition's result.
    pub async fn alter_reassignments(
        &self,
        moves: &[(String, i32, Option<Vec<i32>>)],
    ) -> Result<Vec<(String, i32, Result<()>)>> {
        let conn = self.controller_connection().await?;
        let timeout = self.inner.cfg.request_timeout;
        let mut by_topic: BTreeMap<&str, Vec<(i32, Option<Vec<i32>>)>> = BTreeMap::new();
        for (t, p, r) in moves {
            by_topic
                .entry(t.as_str())
                .or_default()
                .push((*p, r.clone()));
        }
        let topics: Vec<alter_partition_reassignments_request::ReassignableTopic> = by_topic
            .into_iter()
            .map(|(t, ps)| {
                alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(topic_name(t))
                    .with_partitions(
                        ps.into_iter()
                            .map(|(p, r)| {
                                alter_partition_reassignments_request::ReassignablePartition::default()
                                    .with_partition_index(p)
                                    .with_replicas(r.map(|r| r.into_iter().map(BrokerId).collect()))
                            })
                            .collect(),
                    )
            })
            .collect();
        let (_, resp) = conn
            .call(ApiKey::AlterPartitionReassignments, |_| {
                RequestKind::AlterPartitionReassignments(
                    AlterPartitionReassignmentsRequest::default()
                        .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
                        .with_topics(topics.clone()),
                )
            })
            .await?;
        let ResponseKind::AlterPartitionReassignments(resp) = resp else {
            return Err(ClientError::Protocol(
                "AlterPartitionReassignments answered with another response type".into(),
            ));
        };
        if let Some(e) = ClientError::from_code(
            resp.error_code,
            resp.error_message.as_ref().map(|m| m.as_str()),
            "reassigning partitions",
        ) {
            return Err(e);
        }
        let mut out = Vec::new();
        for t in resp.responses {
            for p in t.partitions {
                let result = match ClientError::from_code(
                    p.error_code,
                    p.error_message.as_ref().map(|m| m.as_str()),
                    format!("reassigning {}-{}", t.name.0.as_str(), p.partition_index),
                ) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                out.push((t.name.0.to_string(), p.partition_index, result));
            }
        }
        Ok(out)
    }

    /// ListPartitionReassignments of every partition: `(topic, partition,
    /// replicas, adding, removing)`.
    pub async fn list_reassignments(
        &self,
    ) -> Result<Vec<(String, i32, Vec<i32>, Vec<i32>, Vec<i32>)>> {
        let conn = self.controller_connection().await?;
        let (_, resp) = conn
            .call(ApiKey::ListPartitionReassignments, |_| {
                RequestKind::ListPartitionReassignments(
                    ListPartitionReassignmentsRequest::default().with_topics(None),
                )
            })
            .await?;
        let ResponseKind::ListPartitionReassignments(resp) = resp else {
            return Err(ClientError::Protocol(
                "ListPartitionReassignments answered with another response type".into(),
            ));
        };
        if let Some(e) = ClientError::from_code(
            resp.error_code,
            resp.error_message.as_ref().map(|m| m.as_str()),
            "listing reassignments",
        ) {
            return Err(e);
        }
        let ids = |v: Vec<BrokerId>| v.into_iter().map(|b| b.0).collect::<Vec<i32>>();
        Ok(resp
            .topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| {
                    (
                        name.clone(),
                        p.partition_index,
                        ids(p.replicas),
                        ids(p.adding_replicas),
                        ids(p.removing_replicas),
                    )
                })
            })
            .collect())
    }

    /// AddRaftVoter: admits node `id`, reachable for Raft at `host:port`.
    pub async fn add_raft_voter(&self, id: i32, host: &str, port: u16) -> Result<()> {
        let conn = self.controller_connection().await?;
        let listener = add_raft_voter_request::Listener::default()
            .with_name(StrBytes::from_static_str("RAFT"))
            .with_host(StrBytes::from_string(host.to_string()))
            .with_port(port);
        let (_, resp) = conn
            .call(ApiKey::AddRaftVoter, |_| {
                RequestKind::AddRaftVoter(
                    AddRaftVoterRequest::default()
                        .with_voter_id(id)
                        .with_timeout_ms(30_000)
                        .with_listeners(vec![listener.clone()]),
                )
            })
            .await?;
        let ResponseKind::AddRaftVoter(resp) = resp else {
            return Err(ClientError::Protocol(
                "AddRaftVoter answered with another response type".into(),
            ));
        };
        match ClientError::from_code(
            resp.error_code,
            resp.error_message.as_ref().map(|m| m.as_str()),
            format!("adding node {id}"),
        ) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// RemoveRaftVoter: takes node `id` out of the cluster.
    pub async fn remove_raft_voter(&self, id: i32) -> Result<()> {
        let conn = self.controller_connection().await?;
        let (_, resp) = conn
            .call(ApiKey::RemoveRaftVoter, |_| {
                RequestKind::RemoveRaftVoter(RemoveRaftVoterRequest::default().with_voter_id(id))
            })
            .await?;
        let ResponseKind::RemoveRaftVoter(resp) = resp else {
            return Err(ClientError::Protocol(
                "RemoveRaftVoter answered with another response type".into(),
            ));
        };
        match ClientError::from_code(
            resp.error_code,
            resp.error_message.as_ref().map(|m| m.as_str()),
            format!("removing node {id}"),
        ) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// DescribeConfigs of a topic (all its configs).
    pub async fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>> {
        let conn = self.any_connection().await?;
        let (_, resp) = conn
            .call(ApiKey::DescribeConfigs, |_| {
                RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(
                    vec![
                    describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(RESOURCE_TOPIC)
                        .with_resource_name(s(name))
                        .with_configuration_keys(None),
                ],
                ))
            })
            .await?;
        let ResponseKind::DescribeConfigs(resp) = resp else {
            return Err(ClientError::Protocol(
                "DescribeConfigs answered with another response type".into(),
            ));
        };
        let r = resp
            .results
            .into_iter()
            .find(|r| r.resource_name.as_str() == name)
            .ok_or_else(|| {
                ClientError::Protocol(format!("DescribeConfigs response does not mention {name}"))
            })?;
        if let Some(e) = ClientError::from_code(
            r.error_code,
            r.error_message.as_ref().map(|m| m.as_str()),
            format!("describing configs of topic {name}"),
        ) {
            return Err(e);
        }
        Ok(r.configs
            .into_iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                read_only: c.read_only,
                is_sensitive: c.is_sensitive,
                source: c.config_source,
            })
            .collect())
    }

    /// IncrementalAlterConfigs of a topic: `(name, op, value)` per config.
    pub async fn incremental_alter_topic_configs(
        &self,
        name: &str,
        ops: &[(String, AlterOp, Option<String>)],
        validate_only: bool,
    ) -> Result<()> {
        let conn = self.any_connection().await?;
        let (_, resp) = conn
            .call(ApiKey::IncrementalAlterConfigs, |_| {
                RequestKind::IncrementalAlterConfigs(
                    IncrementalAlterConfigsRequest::default()
                        .with_resources(vec![incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(RESOURCE_TOPIC)
                            .with_resource_name(s(name))
                            .with_configs(
                                ops.iter()
                                    .map(|(k, op, v)| {
                                        incremental_alter_configs_request::AlterableConfig::default()
                                            .with_name(s(k))
                                            .with_config_operation(*op as i8)
                                            .with_value(v.as_deref().map(s))
                                    })
                                    .collect(),
                            )])
                        .with_validate_only(validate_only),
                )
            })
            .await?;
        let ResponseKind::IncrementalAlterConfigs(resp) = resp else {
            return Err(ClientError::Protocol(
                "IncrementalAlterConfigs answered with another response type".into(),
            ));
        };
        alter_result(
            resp.responses.iter().map(|r| {
                (
                    r.resource_name.as_str(),
                    r.error_code,
                    r.error_message.as_ref(),
                )
            }),
            name,
        )
    }

    /// AlterConfigs (the legacy, non-incremental API): replaces all of a topic's
    /// dynamic configs with `configs`.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        configs: &[(String, String)],
        validate_only: bool,
    ) -> Result<()> {
        let conn = self.any_connection().await?;
        let (_, resp) = conn
            .call(ApiKey::AlterConfigs, |_| {
                RequestKind::AlterConfigs(
                    AlterConfigsRequest::default()
                        .with_resources(vec![alter_configs_request::AlterConfigsResource::default(
                        )
                        .with_resource_type(RESOURCE_TOPIC)
                        .with_resource_name(s(name))
                        .with_configs(
                            configs
                                .iter()
                                .map(|(k, v)| {
                                    alter_configs_request::AlterableConfig::default()
                                        .with_name(s(k))
                                        .with_value(Some(s(v)))
                                })
                                .collect(),
                        )])
                        .with_validate_only(validate_only),
                )
            })
            .await?;
        let ResponseKind::AlterConfigs(resp) = resp else {
            return Err(ClientError::Protocol(
                "AlterConfigs answered with another response type".into(),
            ));
        };
        alter_result(
            resp.responses.iter().map(|r| {
                (
                    r.resource_name.as_str(),
                    r.error_code,
                    r.error_message.as_ref(),
                )
            }),
            name,
        )
    }
}

fn alter_result<'a>(
    mut results: impl Iterator<Item = (&'a str, i16, Option<&'a StrBytes>)>,
    name: &str,
) -> Result<()> {
    let (_, code, msg) = results.find(|(n, _, _)| *n == name).ok_or_else(|| {
        ClientError::Protocol(format!(
            "the alter configs response does not mention {name}"
        ))
    })?;
    match ClientError::from_code(
        code,
        msg.map(|m| m.as_str()),
        format!("altering configs of topic {name}"),
    ) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A Produce request on its way (see [`Client::send_produce`]).
pub struct PendingProduce {
    pending: PendingResponse,
    topic: String,
    partition: i32,
    topic_id: Uuid,
}

impl PendingProduce {
    pub async fn wait(self) -> Result<ProduceResult> {
        let Some(resp) = self.pending.recv().await? else {
            return Ok(ProduceResult {
                base_offset: -1,
                log_append_time: -1,
                log_start_offset: -1,
            });
        };
        let ResponseKind::Produce(resp) = resp else {
            return Err(ClientError::Protocol(
                "Produce answered with another response type".into(),
            ));
        };
        let p = resp
            .responses
            .iter()
            .filter(|t| {
                t.name.0.as_str() == self.topic
                    || (!self.topic_id.is_nil() && t.topic_id == self.topic_id)
            })
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == self.partition)
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "Produce response does not mention {}-{}",
                    self.topic, self.partition
                ))
            })?;
        if let Some(e) = ClientError::from_code(
            p.error_code,
            p.error_message.as_ref().map(|m| m.as_str()),
            format!("producing to {}-{}", self.topic, self.partition),
        ) {
            return Err(e);
        }
        Ok(ProduceResult {
            base_offset: p.base_offset,
            log_append_time: p.log_append_time_ms,
            log_start_offset: p.log_start_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 9092), "[::1]:9092");
        assert_eq!(host_port("localhost", 9092), "localhost:9092");
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let err = Client::connect(&format!("127.0.0.1:{port}"), cfg)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(Client::connect(" , ", ClientConfig::default())
            .await
            .is_err());
    }
}
