//! Complex event processing on the broker: the HTTP API over `weir-cep` and the
//! engine stage that feeds it committed records and appends its outputs.
//!
//! * `POST /api/cep/patterns` (JSON, or `Content-Type: application/sql` for the
//!   `MATCH_RECOGNIZE` form) registers a definition: 201 `{"id"}`; an invalid one
//!   gets 400 `{"error", "field", "position"}` and nothing is registered; a taken
//!   id gets 409. `GET /api/cep/patterns`, `GET`/`DELETE /api/cep/patterns/{id}`,
//!   `POST /api/cep/patterns/{id}/pause` and `/resume`; the same routes under
//!   `/api/analytics/queries` (one engine serves both). `GET /api/cep/stats`:
//!   per-definition counters and, per source partition, the stage's position.
//! * Definitions live in the internal compacted topic `__cep_definitions` (key =
//!   id, value = the definition as JSON, a tombstone on delete) and are registered
//!   again at start. Pause state is not persisted: after a restart every
//!   definition runs.
//! * The stage reads records below each source partition's high watermark, feeds
//!   [`Engine::process`], calls [`Engine::on_processing_time`] at least every
//!   [`TICK`], and appends the outputs to their topics (created on first use with
//!   the broker's defaults, whatever `auto.create.topics.enable` says), keyed
//!   outputs to the partition of their key, each partition's outputs fsync'd.
//! * Where reading starts: a definition sees only records appended after it was
//!   registered (its source partitions that exist are read from their high
//!   watermark then; partitions created later from their start). A source that
//!   other definitions already read continues from the stage's current position.
//!   At broker start every source is read from its high watermark: there is no
//!   checkpoint yet, so partial matches and windows do not survive a restart and
//!   records appended while the stage lagged behind at shutdown are not matched.

use crate::client::partitioner::partition_for_key;
use crate::metadata::{is_internal_topic, now_ms};
use crate::partition::Partition;
use crate::state::Broker;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use weir_cep::{parse_definition_json, parse_sql, CepError, Definition, Engine, Limits, Output};
use weir_protocol::compression::Compression;
use weir_protocol::records::{self, BatchBuilder};

/// The compacted topic holding the registered definitions.
pub const DEFINITIONS_TOPIC: &str = "__cep_definitions";
/// The longest the stage sleeps without new data (processing-time timers).
pub const TICK: Duration = Duration::from_millis(500);
/// Bytes read from one partition per pass.
const READ_BYTES: usize = 1 << 20;
/// Largest decompressed batch the stage decodes.
const MAX_UNCOMPRESSED: usize = 256 << 20;
/// Bytes of output records per batch written.
const OUTPUT_BATCH_BYTES: usize = 512 << 10;

pub struct Cep {
    broker: Arc<Broker>,
    engine: Mutex<Engine>,
    /// Next offset the stage reads, per source (topic, partition).
    positions: Mutex<HashMap<(String, i32), i64>>,
    /// Serialises register/remove (engine change plus definitions-topic append).
    admin: Mutex<()>,
    changed: Notify,
    stop: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    next_partition: AtomicUsize,
}

/// An API failure: status and message (plus the CEP error's field and position).
#[derive(Debug)]
pub struct Failure(StatusCode, Value);

impl Failure {
    fn msg(status: StatusCode, message: impl Into<String>) -> Self {
        Failure(status, json!({ "error": message.into() }))
    }

    fn cep(status: StatusCode, e: &CepError) -> Self {
        let mut v = json!({ "error": e.to_string(), "message": e.message });
        if let Some(c) = &e.context {
            v["field"] = json!(c);
        }
        if let Some(p) = &e.position {
            v["position"] = json!({"line": p.line, "column": p.column, "offset": p.offset});
        }
        Failure(status, v)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

impl Cep {
    /// Creates the definitions topic if needed and registers the stored definitions.
    /// Blocking (reads the definitions log).
    pub fn open(broker: Arc<Broker>) -> anyhow::Result<Arc<Cep>> {
        if broker.topic(DEFINITIONS_TOPIC).is_none() {
            let configs = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
            broker
                .create_topic(DEFINITIONS_TOPIC, 1, -1, configs, false)
                .map_err(|(_, m)| anyhow::anyhow!("creating {DEFINITIONS_TOPIC}: {m}"))?;
        }
        let cep = Arc::new(Cep {
            broker,
            engine: Mutex::new(Engine::new(Limits::default())),
            positions: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
            changed: Notify::new(),
            stop: AtomicBool::new(false),
            task: Mutex::new(None),
            next_partition: AtomicUsize::new(0),
        });
        let stored = cep.load_stored()?;
        let mut engine = cep.engine.lock();
        for (id, text) in stored {
            match parse_definition_json(&text).and_then(|d| engine.register(d)) {
                Ok(_) => tracing::info!(definition = %id, "CEP definition loaded"),
                Err(e) => {
                    tracing::error!(definition = %id, error = %e, "not loading a stored CEP definition")
                }
            }
        }
        for topic in engine.sources() {
            cep.seed_positions(&topic, true);
        }
        drop(engine);
        Ok(cep)
    }

    /// The live definitions of the definitions topic, oldest registration first.
    fn load_stored(&self) -> anyhow::Result<Vec<(String, String)>> {
        let Some(p) = self.broker.partition(DEFINITIONS_TOPIC, 0) else {
            return Ok(Vec::new());
        };
        let hw = p.high_watermark();
        let mut latest: HashMap<String, (i64, Option<String>)> = HashMap::new();
        let mut pos = p.log.log_start_offset();
        while pos < hw {
            let read = p.log.read(pos, READ_BYTES, true)?;
            if read.batches.is_empty() {
                break;
            }
            let before = pos;
            for chunk in &read.batches {
                let (recs, next) = decode_chunk(chunk, pos, hw);
                pos = next;
                for r in recs {
                    let Some(key) = r.key.as_ref().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    let value = r
                        .value
                        .as_ref()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string);
                    latest.insert(key.to_string(), (r.offset, value));
                }
            }
            if pos == before {
                break;
            }
        }
        let mut live: Vec<(i64, String, String)> = latest
            .into_iter()
            .filter_map(|(id, (offset, v))| v.map(|v| (offset, id, v)))
            .collect();
        live.sort();
        Ok(live.into_iter().map(|(_, id, v)| (id, v)).collect())
    }

    /// Sets the position of each existing partition of `topic` to its high watermark
    /// (only records appended from now on are processed): all of them when `reset`
    /// (a topic no definition read until now), else those not read yet.
    fn seed_positions(&self, topic: &str, reset: bool) {
        let Some(meta) = self.broker.topic(topic) else {
            // Not there yet: its partitions are read from their start once it exists.
            self.positions.lock().retain(|(t, _), _| t != topic);
            return;
        };
        let mut positions = self.positions.lock();
        if reset {
            positions.retain(|(t, _), _| t != topic);
        }
        for p in 0..meta.partitions {
            if let Some(part) = self.broker.partition(topic, p) {
                positions
                    .entry((topic.to_string(), p))
                    .or_insert_with(|| part.high_watermark());
            }
        }
    }

    /// Appends one record (a tombstone when `value` is None) to the definitions topic, durably.
    fn persist(&self, id: &str, value: Option<&[u8]>) -> Result<(), String> {
        let p = self
            .broker
            .partition(DEFINITIONS_TOPIC, 0)
            .ok_or_else(|| format!("{DEFINITIONS_TOPIC} is not open"))?;
        let now = now_ms();
        let mut b = BatchBuilder::new(Compression::None);
        b.push(now, Some(id.as_bytes()), value, &[]);
        let mut set = b.build().map_err(|e| e.to_string())?;
        let appended = p.append(&mut set, now).map_err(|(_, m)| m)?;
        p.log
            .wait_durable(appended.last_offset)
            .map_err(|e| e.to_string())
    }

    /// Parses and registers a definition and stores it. Blocking.
    pub fn register(&self, text: &str, sql: bool) -> Result<String, Failure> {
        let def: Definition = if sql {
            parse_sql(text)
        } else {
            parse_definition_json(text)
        }
        .map_err(|e| Failure::cep(StatusCode::BAD_REQUEST, &e))?;
        let json = def.to_json();
        let _admin = self.admin.lock();
        let id = {
            let mut engine = self.engine.lock();
            let before = engine.sources();
            let id = engine.register(def).map_err(|e| {
                let status = if e.message.contains("already exists") {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::BAD_REQUEST
                };
                Failure::cep(status, &e)
            })?;
            if let Some(info) = engine.definitions().into_iter().find(|d| d.id == id) {
                for t in &info.sources {
                    self.seed_positions(t, !before.contains(t));
                }
            }
            id
        };
        if let Err(e) = self.persist(&id, Some(json.as_bytes())) {
            self.engine.lock().remove(&id);
            return Err(Failure::msg(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing the definition: {e}"),
            ));
        }
        tracing::info!(definition = %id, "CEP definition registered");
        self.changed.notify_one();
        Ok(id)
    }

    /// Removes a definition and writes its tombstone. Blocking. False: unknown id.
    pub fn remove(&self, id: &str) -> Result<bool, Failure> {
        let _admin = self.admin.lock();
        let Some(info) = self
            .engine
            .lock()
            .definitions()
            .into_iter()
            .find(|d| d.id == id)
        else {
            return Ok(false);
        };
        self.persist(id, None).map_err(|e| {
            Failure::msg(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing the deletion: {e}"),
            )
        })?;
        self.engine.lock().remove(id);
        tracing::info!(definition = %id, kind = %info.kind, "CEP definition removed");
        Ok(true)
    }

    fn describe(info: &weir_cep::DefinitionInfo) -> Value {
        json!({
            "id": info.id,
            "kind": info.kind,
            "sources": info.sources,
            "paused": info.paused,
            "definition": serde_json::from_str::<Value>(&info.json).unwrap_or(Value::String(info.json.clone())),
        })
    }

    pub fn list(&self) -> Value {
        Value::Array(
            self.engine
                .lock()
                .definitions()
                .iter()
                .map(Self::describe)
                .collect(),
        )
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        self.engine
            .lock()
            .definitions()
            .iter()
            .find(|d| d.id == id)
            .map(Self::describe)
    }

    pub fn set_paused(&self, id: &str, paused: bool) -> bool {
        let mut engine = self.engine.lock();
        if paused {
            engine.pause(id)
        } else {
            engine.resume(id)
        }
    }

    pub fn stats(&self) -> Value {
        let defs: Vec<Value> = self
            .engine
            .lock()
            .stats()
            .into_iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "events_in": s.stats.events_in,
                    "outputs": s.stats.outputs,
                    "evictions": s.stats.evictions,
                    "late": s.stats.late,
                    "not_json": s.stats.not_json,
                    "invalid_time": s.stats.invalid_time,
                    "suppressed": s.stats.suppressed,
                    "partial_matches": s.partial_matches,
                    "keys": s.keys,
                    "windows_open": s.windows_open,
                })
            })
            .collect();
        let mut sources: Vec<(String, i32, i64)> = self
            .positions
            .lock()
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        sources.sort();
        let sources: Vec<Value> = sources
            .into_iter()
            .map(|(t, p, o)| {
                let hw = self.broker.partition(&t, p).map(|x| x.high_watermark());
                json!({"topic": t, "partition": p, "position": o, "high_watermark": hw})
            })
            .collect();
        json!({ "definitions": defs, "sources": sources })
    }

    /// The source partitions with the position to read from (positions of new ones set).
    fn source_partitions(&self) -> Vec<(Arc<Partition>, i64)> {
        let sources = self.engine.lock().sources();
        let mut out = Vec::new();
        let mut positions = self.positions.lock();
        for topic in sources {
            let Some(meta) = self.broker.topic(&topic) else {
                continue;
            };
            for p in 0..meta.partitions {
                let Some(part) = self.broker.partition(&topic, p) else {
                    continue;
                };
                let start = part.log.log_start_offset();
                let pos = positions.entry((topic.clone(), p)).or_insert(start);
                // Deleted and recreated, or truncated by retention.
                if *pos > part.high_watermark() || *pos < start {
                    *pos = start;
                }
                out.push((part, *pos));
            }
        }
        out
    }

    /// One pass over every source partition; true if any record was read. Blocking.
    fn pass(&self) -> bool {
        let mut progressed = false;
        let mut outputs = Vec::new();
        for (part, pos) in self.source_partitions() {
            let hw = part.high_watermark();
            if pos >= hw {
                continue;
            }
            let read = match part.log.read(pos, READ_BYTES, true) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "CEP stage cannot read");
                    continue;
                }
            };
            let mut next = pos;
            {
                let mut engine = self.engine.lock();
                for chunk in &read.batches {
                    let (recs, after) = decode_chunk(chunk, next, hw);
                    next = after;
                    for r in recs {
                        let headers: Vec<(&str, &[u8])> = r
                            .headers
                            .iter()
                            .filter_map(|h| {
                                std::str::from_utf8(&h.key)
                                    .ok()
                                    .map(|k| (k, h.value.as_deref().unwrap_or(&[])))
                            })
                            .collect();
                        let rec = weir_cep::SourceRecord {
                            topic: &part.topic,
                            partition: part.index,
                            offset: r.offset,
                            timestamp_ms: r.timestamp,
                            key: r.key.as_deref(),
                            value: r.value.as_deref().unwrap_or(&[]),
                            headers: &headers,
                        };
                        outputs.extend(engine.process(&rec));
                    }
                }
            }
            if next > pos {
                progressed = true;
                self.positions
                    .lock()
                    .insert((part.topic.clone(), part.index), next);
            }
        }
        outputs.extend(self.engine.lock().on_processing_time(now_ms()));
        self.write(outputs);
        progressed
    }

    /// Appends outputs to their topics. Failures are logged (outputs are lost).
    fn write(&self, outputs: Vec<Output>) {
        let mut by_topic: BTreeMap<String, Vec<Output>> = BTreeMap::new();
        for o in outputs {
            by_topic.entry(o.topic.clone()).or_default().push(o);
        }
        for (topic, outs) in by_topic {
            if let Err(e) = self.write_topic(&topic, outs) {
                tracing::error!(topic = %topic, error = %e, "CEP outputs not written");
            }
        }
    }

    fn write_topic(&self, topic: &str, outs: Vec<Output>) -> Result<(), String> {
        if is_internal_topic(topic) || topic == DEFINITIONS_TOPIC {
            return Err("outputs cannot go to an internal topic".into());
        }
        let meta = match self.broker.topic(topic) {
            Some(m) => m,
            None => self.broker.auto_create(topic).map_err(|(_, m)| m)?,
        };
        let count = meta.partitions.max(1);
        let mut by_partition: BTreeMap<i32, Vec<Output>> = BTreeMap::new();
        for o in outs {
            let p = match &o.key {
                Some(k) => partition_for_key(k, count as usize),
                None => {
                    (self.next_partition.fetch_add(1, Ordering::Relaxed) % count as usize) as i32
                }
            };
            by_partition.entry(p).or_default().push(o);
        }
        let now = now_ms();
        for (p, outs) in by_partition {
            let part = self
                .broker
                .partition(topic, p)
                .ok_or_else(|| format!("{topic}-{p} is not open"))?;
            let mut set = Vec::new();
            let mut b = BatchBuilder::new(Compression::None);
            for o in &outs {
                if !b.is_empty() && b.uncompressed_size() + o.value.len() > OUTPUT_BATCH_BYTES {
                    let full = std::mem::replace(&mut b, BatchBuilder::new(Compression::None));
                    set.extend_from_slice(&full.build().map_err(|e| e.to_string())?);
                }
                b.push(o.timestamp_ms, o.key.as_deref(), Some(&o.value), &[]);
            }
            if !b.is_empty() {
                set.extend_from_slice(&b.build().map_err(|e| e.to_string())?);
            }
            let appended = part.append(&mut set, now).map_err(|(_, m)| m)?;
            part.log
                .wait_durable(appended.last_offset)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts the engine stage on the current tokio runtime.
    pub fn start_stage(self: &Arc<Self>) {
        let cep = self.clone();
        let handle = tokio::spawn(async move { cep.run().await });
        *self.task.lock() = Some(handle);
    }

    async fn run(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            let cep = self.clone();
            let progressed = match tokio::task::spawn_blocking(move || cep.pass()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "CEP stage pass failed");
                    false
                }
            };
            if progressed {
                continue;
            }
            // Register for new data, then look again so that an append in between wakes us.
            let notify = Arc::new(Notify::new());
            let mut pending = false;
            for (part, pos) in self.source_partitions() {
                part.add_waiter(notify.clone());
                pending |= part.high_watermark() > pos;
            }
            if pending {
                continue;
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Stops the stage and waits for its current pass to end.
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.changed.notify_one();
        let handle = self.task.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

/// The records of a chunk of batches with offsets in `from..hw`, and the offset to
/// read next (past whole batches, even when compaction removed their last records).
/// Undecodable batches are logged and skipped.
fn decode_chunk(chunk: &Bytes, from: i64, hw: i64) -> (Vec<records::Record>, i64) {
    let mut out = Vec::new();
    let mut next = from;
    let mut start = 0usize;
    for batch in records::batches(chunk) {
        let (header, slice) = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "CEP stage: bad batch");
                break;
            }
        };
        let range = start..start + slice.len();
        start = range.end;
        if header.last_offset() < from || header.base_offset >= hw {
            continue;
        }
        next = next.max((header.last_offset() + 1).min(hw));
        if header.is_control() {
            continue;
        }
        match records::decode_records(&chunk.slice(range), MAX_UNCOMPRESSED) {
            Ok(recs) => out.extend(
                recs.into_iter()
                    .filter(|r| r.offset >= from && r.offset < hw),
            ),
            Err(e) => {
                tracing::warn!(base_offset = header.base_offset, error = %e, "CEP stage: undecodable batch skipped")
            }
        }
    }
    (out, next)
}

// ---------------------------------------------------------------- HTTP

pub fn router(cep: Arc<Cep>) -> Router {
    let mut r = Router::new().route("/api/cep/stats", get(stats));
    for base in ["/api/cep/patterns", "/api/analytics/queries"] {
        r = r
            .route(base, get(list).post(create))
            .route(&format!("{base}/{{id}}"), get(get_one).delete(delete_one))
            .route(&format!("{base}/{{id}}/pause"), post(pause))
            .route(&format!("{base}/{{id}}/resume"), post(resume));
    }
    r.with_state(cep)
}

async fn create(State(cep): State<Arc<Cep>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let sql = ct.contains("sql");
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return Failure::msg(StatusCode::BAD_REQUEST, "the body is not UTF-8").into_response();
    };
    match tokio::task::spawn_blocking(move || cep.register(&text, sql)).await {
        Ok(Ok(id)) => (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response(),
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure::msg(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn list(State(cep): State<Arc<Cep>>) -> Response {
    axum::Json(cep.list()).into_response()
}

fn not_found(id: &str) -> Response {
    Failure::msg(StatusCode::NOT_FOUND, format!("no definition {id:?}")).into_response()
}

async fn get_one(State(cep): State<Arc<Cep>>, Path(id): Path<String>) -> Response {
    match cep.get(&id) {
        Some(v) => axum::Json(v).into_response(),
        None => not_found(&id),
    }
}

async fn delete_one(State(cep): State<Arc<Cep>>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || cep.remove(&id2)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => not_found(&id),
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure::msg(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn pause(State(cep): State<Arc<Cep>>, Path(id): Path<String>) -> Response {
    set_paused(&cep, &id, true)
}

async fn resume(State(cep): State<Arc<Cep>>, Path(id): Path<String>) -> Response {
    set_paused(&cep, &id, false)
}

fn set_paused(cep: &Cep, id: &str, paused: bool) -> Response {
    if cep.set_paused(id, paused) {
        axum::Json(json!({ "id": id, "paused": paused })).into_response()
    } else {
        not_found(id)
    }
}

async fn stats(State(cep): State<Arc<Cep>>) -> Response {
    axum::Json(cep.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{broker, reopen};

    const BRUTE: &str = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "5s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"#;

    fn produce(b: &Broker, topic: &str, values: &[String]) {
        let meta = match b.topic(topic) {
            Some(m) => m,
            None => b.auto_create(topic).unwrap(),
        };
        assert_eq!(meta.partitions, 1);
        let p = b.partition(topic, 0).unwrap();
        let mut builder = BatchBuilder::new(Compression::None);
        for v in values {
            builder.push(1, None, Some(v.as_bytes()), &[]);
        }
        let mut set = builder.build().unwrap();
        p.append(&mut set, now_ms()).unwrap();
    }

    fn read_all(b: &Broker, topic: &str) -> Vec<Value> {
        let Some(p) = b.partition(topic, 0) else {
            return Vec::new();
        };
        let hw = p.high_watermark();
        let read = p.log.read(0, 1 << 20, true).unwrap();
        read.batches
            .iter()
            .flat_map(|c| decode_chunk(c, 0, hw).0)
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            .collect()
    }

    fn login(user: &str, ok: bool, ts: i64) -> String {
        format!(r#"{{"user":"{user}","type":"login","success":{ok},"ts":{ts}}}"#)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn http_handlers() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let json_headers = HeaderMap::new();
        let mut sql_headers = HeaderMap::new();
        sql_headers.insert(header::CONTENT_TYPE, "application/sql".parse().unwrap());
        let r = create(
            State(cep.clone()),
            json_headers.clone(),
            Bytes::from_static(b"{\"id\": 1}"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = create(
            State(cep.clone()),
            sql_headers,
            Bytes::from_static(b"SELECT * FROM"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = create(
            State(cep.clone()),
            json_headers,
            Bytes::from_static(BRUTE.as_bytes()),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let id = || Path("brute-force".to_string());
        assert_eq!(
            get_one(State(cep.clone()), id()).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            pause(State(cep.clone()), id()).await.status(),
            StatusCode::OK
        );
        assert_eq!(cep.list()[0]["paused"], true);
        assert_eq!(
            resume(State(cep.clone()), id()).await.status(),
            StatusCode::OK
        );
        assert_eq!(stats(State(cep.clone())).await.status(), StatusCode::OK);
        assert_eq!(
            delete_one(State(cep.clone()), id()).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            delete_one(State(cep.clone()), id()).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_one(State(cep.clone()), id()).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            pause(State(cep.clone()), id()).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(list(State(cep)).await.status(), StatusCode::OK);
    }

    #[test]
    fn reregistered_source_starts_at_the_high_watermark() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        assert!(cep.remove("brute-force").unwrap());
        // Read by nobody: these must not be matched by the next registration.
        let old: Vec<String> = (1..=3).map(|i| login("carol", false, i * 1000)).collect();
        produce(&tb.broker, "auth", &old);
        cep.register(BRUTE, false).unwrap();
        produce(
            &tb.broker,
            "auth",
            &[login("carol", true, 4000), login("zed", false, 100_000)],
        );
        while cep.pass() {}
        assert_eq!(read_all(&tb.broker, "alerts"), Vec::<Value>::new());
    }

    #[test]
    fn register_match_persist_reload() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let bad = cep.register(r#"{"id": "x", "source": {"topic": "auth"}, "steps": [{"name": "a", "where": "x = = 1"}], "emit": {"topic": "o"}}"#, false);
        assert_eq!(bad.unwrap_err().0, StatusCode::BAD_REQUEST);
        let bad_sql = cep
            .register(
                "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A) DEFINE B AS true)",
                true,
            )
            .unwrap_err();
        assert_eq!(bad_sql.0, StatusCode::BAD_REQUEST);
        assert!(bad_sql.1["position"]["offset"].is_number(), "{}", bad_sql.1);
        assert_eq!(cep.list().as_array().unwrap().len(), 0);
        assert_eq!(cep.register(BRUTE, false).unwrap(), "brute-force");
        assert_eq!(
            cep.register(BRUTE, false).unwrap_err().0,
            StatusCode::CONFLICT
        );
        let events: Vec<String> = vec![
            login("alice", false, 1000),
            login("alice", false, 2000),
            login("alice", false, 3000),
            login("alice", true, 4000),
            login("bob", false, 5000),
            login("bob", false, 6000),
            login("bob", true, 7000),
            login("zed", false, 100_000),
        ];
        produce(&tb.broker, "auth", &events);
        while cep.pass() {}
        assert_eq!(
            read_all(&tb.broker, "alerts"),
            vec![json!({"user": "alice", "fails": 3, "first_fail": 1000})]
        );
        assert!(cep.stats()["definitions"][0]["events_in"].as_u64().unwrap() > 0);
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        assert_eq!(cep.list()[0]["id"], "brute-force");
        assert!(cep.remove("brute-force").unwrap());
        assert!(!cep.remove("brute-force").unwrap());
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        assert_eq!(cep.list().as_array().unwrap().len(), 0);
    }
}
