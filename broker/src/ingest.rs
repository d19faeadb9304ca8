//! Ingest without a Kafka client: the broker side of `weir-ingest`.
//!
//! * [`Sink`] on [`Broker`]: partition choice (explicit, else murmur2 of the key
//!   like Kafka's default partitioner, else one partition per call taken round
//!   robin), one or more v2 batches per partition (each within the topic's
//!   `max.message.bytes`) appended as one record set, then fsync'd before the
//!   offsets are returned, like acks=all.
//! * `POST /ingest/{topic}`: one JSON value, an array, or NDJSON
//!   (`Content-Type: application/x-ndjson`); `?key=FIELD` or `X-Weir-Key: FIELD`
//!   names the key field, `?partition=N` pins the partition.
//! * `GET /ingest/{topic}/ws`: WebSocket; each text message is one JSON event, an
//!   array or an NDJSON batch, answered by one JSON ack (`seq`, `offsets`) or error.
//! * `GET`/`POST /api/collectors`, `DELETE /api/collectors/{name}`: file collectors
//!   at run time, persisted in `<data dir>/.ingest/collectors.json`.
//!
//! All or nothing: every record of a request is validated and placed before
//! anything is appended, and each partition's record set is appended atomically.
//! A request spanning several partitions can still be half-applied if the
//! storage fails between two partitions' appends (reported as a 500).

use crate::client::partitioner::partition_for_key;
use crate::metadata::now_ms;
use crate::metrics::Metrics;
use crate::state::Broker;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use weir_ingest::{
    parse_body, BodyFormat, FileCollectorConfig, IngestRecord, Pipeline, Routed, Sink, SinkError,
    Tailer,
};
use weir_protocol::compression::Compression;
use weir_protocol::records::BatchBuilder;

/// Bytes of a v2 batch header, and a record's worst-case framing overhead.
const BATCH_OVERHEAD: usize = 61;
const RECORD_OVERHEAD: usize = 32;
/// Messages a WebSocket connection may have queued before it stops reading.
const WS_QUEUE: usize = 8;

static NEXT_PARTITION: AtomicUsize = AtomicUsize::new(0);

/// The runtime that forwarded appends run on (file collectors call the sink
/// from threads of their own); set when ingest starts.
static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Cluster mode: a Kafka client for records whose partition another node
/// leads (connected on first use).
static FORWARDER: parking_lot::Mutex<Option<Arc<crate::client::Client>>> =
    parking_lot::Mutex::new(None);

/// The client id of the forwarding client, followed by the node id. The produce
/// handler accepts records for `__cep_definitions` from it (CEP registrations on a
/// node that does not lead that partition); a label, not an authentication.
pub const FORWARDER_CLIENT_PREFIX: &str = "weir-forwarder-";

/// How long an ingest append waits for a majority (cluster) or a forwarded produce.
const REPLICATED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, SinkError> {
    let handle = match tokio::runtime::Handle::try_current() {
        Ok(h) => h,
        Err(_) => RUNTIME
            .get()
            .cloned()
            .ok_or_else(|| SinkError::Storage("no runtime to wait on".into()))?,
    };
    Ok(handle.block_on(f))
}

impl Broker {
    /// A client for forwarding records to the leaders of partitions this node
    /// does not lead.
    pub(crate) fn forwarder(&self) -> Result<Arc<crate::client::Client>, SinkError> {
        if let Some(c) = FORWARDER.lock().clone() {
            return Ok(c);
        }
        let bootstrap: Vec<String> = self
            .live_brokers()
            .into_iter()
            .map(|(_, h, p)| format!("{h}:{p}"))
            .collect();
        let config = crate::client::ClientConfig {
            client_id: format!("{FORWARDER_CLIENT_PREFIX}{}", self.node_id()),
            ..crate::client::ClientConfig::default()
        };
        let client = block_on(crate::client::Client::connect(&bootstrap.join(","), config))?
            .map_err(|e| SinkError::Storage(format!("connecting to the cluster: {e}")))?;
        let client = Arc::new(client);
        *FORWARDER.lock() = Some(client.clone());
        Ok(client)
    }
}

fn topic_error((code, message): crate::state::TopicError) -> SinkError {
    match code {
        ResponseError::UnknownTopicOrPartition => SinkError::UnknownTopic(message),
        ResponseError::InvalidTopicException => SinkError::Invalid(message),
        _ => SinkError::Storage(message),
    }
}

impl Sink for Broker {
    fn append(
        &self,
        topic: &str,
        records: Vec<IngestRecord>,
    ) -> Result<Vec<(i32, i64)>, SinkError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let meta = match self.topic(topic) {
            Some(t) => t,
            None if self.auto_create_enabled() => self.auto_create(topic).map_err(topic_error)?,
            None => {
                return Err(SinkError::UnknownTopic(format!(
                    "topic '{topic}' does not exist"
                )))
            }
        };
        let count = meta.partitions.max(1);
        // Cluster mode: records without a key or partition go to a partition
        // this node leads, when it leads any (no forwarding hop).
        let led: Vec<i32> = if self.raft.is_some() {
            (0..count)
                .filter(|&p| self.partition(topic, p).is_some_and(|x| x.is_leader()))
                .collect()
        } else {
            Vec::new()
        };
        let next = NEXT_PARTITION.fetch_add(1, Ordering::Relaxed);
        let sticky = if led.is_empty() {
            (next % count as usize) as i32
        } else {
            led[next % led.len()]
        };
        // Place every record first: nothing is appended unless all can be.
        let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            let p = match (r.partition, &r.key) {
                (Some(p), _) if !(0..count).contains(&p) => {
                    return Err(SinkError::InvalidPartition(format!(
                        "topic '{topic}' has no partition {p} (it has {count})"
                    )))
                }
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, count as usize),
                (None, None) => sticky,
            };
            by_partition.entry(p).or_default().push(i);
        }
        let now = now_ms();
        if self.raft.is_some() {
            return self.append_replicated(topic, &meta, &records, by_partition, now);
        }
        let mut sets = Vec::with_capacity(by_partition.len());
        for (p, indexes) in &by_partition {
            let partition = self.partition(topic, *p).ok_or_else(|| {
                SinkError::UnknownTopic(format!("this server does not host {topic}-{p}"))
            })?;
            let max = partition.config.read().max_message_bytes();
            let set = record_set(&records, indexes, now, max)?;
            sets.push((partition, set, indexes));
        }
        let mut out = vec![(0, -1); records.len()];
        let mut durable = Vec::with_capacity(sets.len());
        for (partition, mut set, indexes) in sets {
            let size = set.len();
            let appended =
                partition
                    .append(&mut set, now)
                    .map_err(|(code, message)| match code {
                        ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge => {
                            SinkError::TooLarge(message)
                        }
                        ResponseError::CorruptMessage | ResponseError::InvalidRecord => {
                            SinkError::Invalid(message)
                        }
                        _ => SinkError::Storage(message),
                    })?;
            Metrics::add(&self.metrics.produced_bytes, size as u64);
            Metrics::inc(&self.metrics.produced_batches);
            for (n, i) in indexes.iter().enumerate() {
                out[*i] = (partition.index, appended.base_offset + n as i64);
            }
            durable.push((partition.log.clone(), appended.last_offset));
        }
        for (log, offset) in durable {
            log.wait_durable(offset)
                .map_err(|e| SinkError::Storage(e.to_string()))?;
        }
        Ok(out)
    }

    fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, SinkError> {
        if self.raft.is_some() {
            // Committed ends: what consumers see.
            let Some(meta) = self.topic(topic) else {
                return Ok(Vec::new());
            };
            return Ok((0..meta.partitions)
                .map(|p| self.partition(topic, p).map_or(0, |p| p.high_watermark()))
                .collect());
        }
        let Some(meta) = self.topic(topic) else {
            return Ok(Vec::new());
        };
        Ok((0..meta.partitions)
            .map(|p| {
                self.partition(topic, p)
                    .map_or(0, |p| p.log.log_end_offset())
            })
            .collect())
    }
}

fn append_error((code, message): crate::partition::AppendError) -> SinkError {
    match code {
        ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge => {
            SinkError::TooLarge(message)
        }
        ResponseError::CorruptMessage | ResponseError::InvalidRecord => SinkError::Invalid(message),
        _ => SinkError::Storage(message),
    }
}

impl Broker {
    /// Cluster mode: appends each partition's records on this node when it
    /// leads the partition, else forwards them to the leader with acks=all;
    /// answers once every record is committed by a majority (what acks=all
    /// promises to a Kafka producer).
    fn append_replicated(
        &self,
        topic: &str,
        meta: &crate::metadata::TopicMeta,
        records: &[IngestRecord],
        by_partition: BTreeMap<i32, Vec<usize>>,
        now: i64,
    ) -> Result<Vec<(i32, i64)>, SinkError> {
        let max = self.effective_config(meta).max_message_bytes();
        let mut out = vec![(0, -1); records.len()];
        let mut commits = Vec::new();
        for (p, indexes) in &by_partition {
            let mut set = record_set(records, indexes, now, max)?;
            let size = set.len();
            let base = match self.partition(topic, *p).filter(|x| x.is_leader()) {
                Some(partition) => {
                    let appended = partition
                        .append_with_acks(&mut set, now, true)
                        .map_err(append_error)?;
                    if let Some(ticket) = appended.commit {
                        commits.push((partition.clone(), ticket));
                    }
                    appended.base_offset
                }
                None => {
                    let client = self.forwarder()?;
                    let produced = block_on(client.produce(
                        topic,
                        *p,
                        bytes::Bytes::from(set),
                        -1,
                        REPLICATED_TIMEOUT,
                    ))?
                    .map_err(|e| {
                        SinkError::Storage(format!("forwarding to the leader of {topic}-{p}: {e}"))
                    })?;
                    produced.base_offset
                }
            };
            Metrics::add(&self.metrics.produced_bytes, size as u64);
            Metrics::inc(&self.metrics.produced_batches);
            for (n, i) in indexes.iter().enumerate() {
                out[*i] = (*p, base + n as i64);
            }
        }
        for (partition, ticket) in commits {
            partition
                .wait_committed_blocking(ticket, REPLICATED_TIMEOUT)
                .map_err(|(_, message)| SinkError::Storage(message))?;
        }
        Ok(out)
    }
}

/// Batches of the given records, each within `max` bytes, concatenated.
fn record_set(
    records: &[IngestRecord],
    indexes: &[usize],
    now: i64,
    max: usize,
) -> Result<Vec<u8>, SinkError> {
    let mut set = Vec::new();
    let mut builder = BatchBuilder::new(Compression::None);
    let flush = |builder: BatchBuilder, set: &mut Vec<u8>| -> Result<(), SinkError> {
        let bytes = builder
            .build()
            .map_err(|e| SinkError::Storage(e.to_string()))?;
        set.extend_from_slice(&bytes);
        Ok(())
    };
    for i in indexes {
        let r = &records[*i];
        let size = r.value.len() + r.key.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD;
        if size + BATCH_OVERHEAD > max {
            return Err(SinkError::TooLarge(format!(
                "record {} of {} bytes does not fit in max.message.bytes={max}",
                i + 1,
                size
            )));
        }
        if !builder.is_empty() && builder.uncompressed_size() + size + BATCH_OVERHEAD > max {
            flush(
                std::mem::replace(&mut builder, BatchBuilder::new(Compression::None)),
                &mut set,
            )?;
        }
        builder.push(now, r.key.as_deref(), Some(&r.value), &[]);
    }
    if !builder.is_empty() {
        flush(builder, &mut set)?;
    }
    Ok(set)
}

/// Where a collector came from: the TOML file (back at every start) or the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Origin {
    Config,
    Api,
}

struct Running {
    config: FileCollectorConfig,
    origin: Origin,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The ingest endpoints' state and the running file collectors.
pub struct Ingest {
    broker: Arc<Broker>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_body: usize,
    rules: HashMap<String, Arc<Pipeline>>,
    identity: Arc<Pipeline>,
    collectors: Mutex<BTreeMap<String, Running>>,
    dir: PathBuf,
}

impl Ingest {
    /// Reads the `[ingest]` config, starts the collectors of the config file and
    /// those added through the API before the last stop.
    pub fn start(broker: Arc<Broker>) -> anyhow::Result<Arc<Ingest>> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _ = RUNTIME.set(handle);
        }
        let config = broker.config.ingest.clone();
        let max_body = broker
            .config
            .i64("ingest.max.body.bytes")?
            .clamp(1, i64::from(u32::MAX)) as usize;
        let max_in_flight = broker
            .config
            .i64("ingest.max.in.flight.requests")?
            .clamp(1, 1 << 20) as usize;
        let mut rules = HashMap::new();
        for rule in &config.topic {
            let p = Pipeline::new(&rule.pipeline)
                .map_err(|e| anyhow::anyhow!("[[ingest.topic]] {}: {e}", rule.topic))?;
            rules.insert(rule.topic.clone(), Arc::new(p));
        }
        let dir = broker.config.data_dir.join(".ingest");
        let ingest = Arc::new(Ingest {
            broker,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            max_body,
            rules,
            identity: Arc::new(Pipeline::default()),
            collectors: Mutex::new(BTreeMap::new()),
            dir,
        });
        for c in config.file {
            let c = c.normalize().map_err(anyhow::Error::msg)?;
            ingest
                .launch(c, Origin::Config)
                .map_err(anyhow::Error::msg)?;
        }
        for c in ingest.load_saved()? {
            let name = c.name.clone();
            if let Err(e) = ingest.launch(c, Origin::Api) {
                tracing::error!(collector = %name, error = %e, "not starting a saved file collector");
            }
        }
        Ok(ingest)
    }

    fn saved_path(&self) -> PathBuf {
        self.dir.join("collectors.json")
    }

    fn load_saved(&self) -> anyhow::Result<Vec<FileCollectorConfig>> {
        let path = self.saved_path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    fn save(&self, collectors: &BTreeMap<String, Running>) -> Result<(), String> {
        let api: Vec<&FileCollectorConfig> = collectors
            .values()
            .filter(|r| r.origin == Origin::Api)
            .map(|r| &r.config)
            .collect();
        let bytes = serde_json::to_vec_pretty(&api).map_err(|e| e.to_string())?;
        weir_ingest::tailer::write_atomic(&self.saved_path(), &bytes)
            .map_err(|e| format!("saving collectors: {e}"))
    }

    fn launch(&self, config: FileCollectorConfig, origin: Origin) -> Result<(), String> {
        let mut collectors = self.collectors.lock();
        if collectors.contains_key(&config.name) {
            return Err(format!("a collector named {:?} exists", config.name));
        }
        let checkpoint = self
            .dir
            .join("checkpoints")
            .join(format!("{}.json", config.name));
        let sink: Arc<dyn Sink> = self.broker.clone();
        let tailer = Tailer::new(config.clone(), sink, checkpoint)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("collector-{}", config.name))
            .spawn({
                let stop = stop.clone();
                move || tailer.run(stop)
            })
            .map_err(|e| format!("starting the collector thread: {e}"))?;
        tracing::info!(collector = %config.name, path = %config.path, topic = %config.topic, "file collector started");
        collectors.insert(
            config.name.clone(),
            Running {
                config,
                origin,
                stop,
                thread: Some(thread),
            },
        );
        if origin == Origin::Api {
            self.save(&collectors)?;
        }
        Ok(())
    }

    /// Stops every collector (at shutdown); their checkpoints are already durable.
    pub fn stop(&self) {
        let mut collectors = self.collectors.lock();
        for r in collectors.values() {
            r.stop.store(true, Ordering::Relaxed);
        }
        for r in collectors.values_mut() {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn pipeline(&self, topic: &str) -> Arc<Pipeline> {
        self.rules
            .get(topic)
            .cloned()
            .unwrap_or_else(|| self.identity.clone())
    }

    fn topic_exists_or_creatable(&self, topic: &str) -> Result<(), Failure> {
        if self.broker.topic(topic).is_some() || self.broker.auto_create_enabled() {
            return Ok(());
        }
        Err(Failure(
            StatusCode::NOT_FOUND,
            format!("topic '{topic}' does not exist and auto.create.topics.enable is false"),
        ))
    }

    /// Parses, routes and appends one request's events; the JSON answer.
    async fn ingest(
        self: &Arc<Self>,
        topic: &str,
        body: &[u8],
        format: BodyFormat,
        key_field: Option<&str>,
        partition: Option<i32>,
    ) -> Result<String, Failure> {
        let events = parse_body(body, format)
            .map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?;
        self.topic_exists_or_creatable(topic)?;
        let pipeline = self.pipeline(topic);
        let mut records = Vec::with_capacity(events.len());
        let mut dead = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            match pipeline.route(event, key_field, partition) {
                Routed::Record(r) => records.push(r),
                Routed::DeadLetter(r, _) => dead.push(r),
                Routed::Rejected(reason) => {
                    return Err(Failure(
                        StatusCode::BAD_REQUEST,
                        format!("record {}: {reason}", i + 1),
                    ))
                }
            }
        }
        let dlq = pipeline.dead_letter_topic.clone();
        if let (Some(dlq), false) = (&dlq, dead.is_empty()) {
            self.topic_exists_or_creatable(dlq)?;
        }
        let broker = self.broker.clone();
        let topic_owned = topic.to_string();
        let n_dead = dead.len();
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, SinkError> {
            let offsets = broker.append(&topic_owned, records)?;
            if let (Some(dlq), false) = (dlq, dead.is_empty()) {
                broker.append(&dlq, dead)?;
            }
            Ok(offsets)
        })
        .await
        .map_err(|e| {
            Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("append task failed: {e}"),
            )
        })?;
        let offsets = result.map_err(sink_failure)?;
        let mut out = String::with_capacity(32 + offsets.len() * 32);
        let _ = write!(
            out,
            "{{\"topic\":{},\"count\":{},\"dead_letters\":{n_dead},\"offsets\":[",
            json!(topic),
            offsets.len()
        );
        for (i, (p, o)) in offsets.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"partition\":{p},\"offset\":{o}}}");
        }
        out.push_str("]}");
        Ok(out)
    }
}

struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"error": self.1}).to_string();
        let mut resp = (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

fn sink_failure(e: SinkError) -> Failure {
    let status = match &e {
        SinkError::UnknownTopic(_) => StatusCode::NOT_FOUND,
        SinkError::InvalidPartition(_) | SinkError::Invalid(_) => StatusCode::BAD_REQUEST,
        SinkError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        SinkError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        SinkError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Failure(status, e.to_string())
}

pub fn router(ingest: Arc<Ingest>) -> Router {
    let limit = ingest.max_body;
    Router::new()
        .route("/ingest/{topic}", post(post_events))
        .route("/ingest/{topic}/ws", get(websocket))
        .route("/api/collectors", get(list_collectors).post(add_collector))
        .route("/api/collectors/{name}", delete(remove_collector))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingest)
}

#[derive(Debug, Deserialize, Default)]
struct IngestParams {
    key: Option<String>,
    partition: Option<i32>,
}

fn key_field<'a>(params: &'a IngestParams, headers: &'a HeaderMap) -> Option<&'a str> {
    params
        .key
        .as_deref()
        .or_else(|| headers.get("x-weir-key").and_then(|v| v.to_str().ok()))
}

async fn post_events(
    State(ingest): State<Arc<Ingest>>,
    Path(topic): Path<String>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(_permit) = ingest.in_flight.clone().try_acquire_owned() else {
        return Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} ingest requests in flight; retry later",
                ingest.max_in_flight
            ),
        )
        .into_response();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if content_type.contains("ndjson")
        || content_type.contains("jsonlines")
        || content_type.contains("json-seq")
    {
        BodyFormat::Ndjson
    } else {
        BodyFormat::Json
    };
    match ingest
        .ingest(
            &topic,
            &body,
            format,
            key_field(&params, &headers),
            params.partition,
        )
        .await
    {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(f) => f.into_response(),
    }
}

async fn websocket(
    State(ingest): State<Arc<Ingest>>,
    Path(topic): Path<String>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(f) = ingest.topic_exists_or_creatable(&topic) {
        return f.into_response();
    }
    let key = key_field(&params, &headers).map(str::to_string);
    let max = ingest.max_body;
    ws.max_message_size(max)
        .on_upgrade(move |socket| ws_session(ingest, topic, key, params.partition, socket))
}

/// Reads messages while the bounded queue has room (a slow client, or a slow
/// disk, stops the reading: TCP pushes back), appends them in order on a worker,
/// and sends one ack per message, in order.
async fn ws_session(
    ingest: Arc<Ingest>,
    topic: String,
    key: Option<String>,
    partition: Option<i32>,
    mut socket: WebSocket,
) {
    let (work_tx, mut work_rx) = mpsc::channel::<(u64, Bytes)>(WS_QUEUE);
    let (ack_tx, mut ack_rx) = mpsc::channel::<String>(WS_QUEUE);
    let worker = tokio::spawn({
        let ingest = ingest.clone();
        async move {
            while let Some((seq, body)) = work_rx.recv().await {
                let ack = match ingest.ingest(&topic, &body, BodyFormat::Json, key.as_deref(), partition).await {
                    Ok(json) => format!("{{\"seq\":{seq},\"ok\":true,\"result\":{json}}}"),
                    Err(Failure(status, message)) => {
                        json!({"seq": seq, "ok": false, "status": status.as_u16(), "error": message}).to_string()
                    }
                };
                if ack_tx.send(ack).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut seq = 0u64;
    let mut open = true;
    while open {
        tokio::select! {
            ack = ack_rx.recv() => match ack {
                Some(ack) => {
                    if socket.send(Message::Text(ack.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            msg = socket.recv(), if work_tx.capacity() > 0 => {
                let body = match msg {
                    Some(Ok(Message::Text(t))) => Bytes::from(t.as_str().to_owned()),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        open = false;
                        continue;
                    }
                };
                seq += 1;
                if work_tx.try_send((seq, body)).is_err() {
                    break;
                }
            }
        }
    }
    // The client closed: answer what was queued, then stop.
    drop(work_tx);
    while let Some(ack) = ack_rx.recv().await {
        if socket.send(Message::Text(ack.into())).await.is_err() {
            break;
        }
    }
    let _ = worker.await;
}

async fn list_collectors(State(ingest): State<Arc<Ingest>>) -> Response {
    let collectors = ingest.collectors.lock();
    let list: Vec<Value> = collectors
        .values()
        .map(|r| {
            let mut v = serde_json::to_value(&r.config).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("origin".into(), json!(r.origin));
            }
            v
        })
        .collect();
    axum::Json(json!({ "collectors": list })).into_response()
}

async fn add_collector(State(ingest): State<Arc<Ingest>>, body: Bytes) -> Response {
    let config: FileCollectorConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return Failure(StatusCode::BAD_REQUEST, format!("collector: {e}")).into_response()
        }
    };
    let config = match config.normalize() {
        Ok(c) => c,
        Err(e) => return Failure(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let name = config.name.clone();
    let ingest2 = ingest.clone();
    let launched = tokio::task::spawn_blocking(move || ingest2.launch(config, Origin::Api)).await;
    match launched {
        Ok(Ok(())) => (StatusCode::CREATED, axum::Json(json!({ "name": name }))).into_response(),
        Ok(Err(e)) if e.contains("exists") => Failure(StatusCode::CONFLICT, e).into_response(),
        Ok(Err(e)) => Failure(StatusCode::BAD_REQUEST, e).into_response(),
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn remove_collector(State(ingest): State<Arc<Ingest>>, Path(name): Path<String>) -> Response {
    let ingest2 = ingest.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let mut collectors = ingest2.collectors.lock();
        let Some(mut r) = collectors.remove(&name) else {
            return Ok(false);
        };
        r.stop.store(true, Ordering::Relaxed);
        if let Some(t) = r.thread.take() {
            let _ = t.join();
        }
        ingest2.save(&collectors)?;
        Ok(true)
    })
    .await;
    match removed {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => Failure(StatusCode::NOT_FOUND, "no such collector".into()).into_response(),
        Ok(Err(e)) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
