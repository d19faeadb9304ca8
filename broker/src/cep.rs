//! Complex event processing on the broker: the HTTP API over `weir-cep` and the
//! engine stage that feeds it committed records and appends its outputs.
//!
//! * `POST /api/cep/patterns` (JSON, or `Content-Type: application/sql` for the
//!   `MATCH_RECOGNIZE` form) registers a definition: 201 `{"id"}`; an invalid one
//!   gets 400 `{"error", "field", "position"}` and nothing is registered; a taken
//!   id gets 409. `GET /api/cep/patterns`, `GET`/`DELETE /api/cep/patterns/{id}`,
//!   `POST /api/cep/patterns/{id}/pause` and `/resume`; the same routes under
//!   `/api/analytics/queries` (one engine serves both). `GET /api/cep/stats`:
//!   per definition events in, matches out, partial matches held and lag (records of
//!   its source partitions not read yet), per source partition the stage's
//!   position, and `timings`: histograms (count, p50, p99, p99.9, max in ms) of the
//!   age of the newest record a pass read, the matching, the checkpoint's commit, the
//!   outputs' commit, and the stage's wake-up, i.e. where a match's latency goes.
//!   `GET /api/cep/matches?pattern=ID` (all definitions without `pattern`):
//!   a live Server-Sent Events stream of the outputs written from now on (event name
//!   = output kind: `match`, `window_result`, `alert`, `late`, `dead_letter`; data =
//!   `{"pattern", "kind", "topic", "partition", "offset", "timestamp", "key",
//!   "value"}`); it starts with a `: subscribed` comment, and a slow reader gets a
//!   `lagged` event with the number of outputs it missed. `GET /api/openapi.json`:
//!   the OpenAPI document of every route of the HTTP listener.
//! * Definitions live in the internal compacted topic `__cep_definitions` (key =
//!   id, value = `{"definition": ..., "paused": bool, "from": [[topic, partition,
//!   offset], ...]}`, a tombstone on delete) and
//!   are registered again at start, paused ones paused.
//! * The stage (one per shard, see "In a cluster") reads records below each source
//!   partition's committed high watermark, feeds
//!   [`Engine::process`], calls [`Engine::on_processing_time`] at least every
//!   [`TICK`], and appends the outputs to their topics (created on first use with
//!   the broker's defaults, whatever `auto.create.topics.enable` says), keyed
//!   outputs to the partition of their key, each partition's outputs committed
//!   (see "Durability" below).
//!   Alert outputs with a webhook are then POSTed to it (JSON, 3 attempts, counted
//!   in the stats; delivery is at least once and not part of the checkpoint).
//! * Where reading starts: a definition sees only records appended after it was
//!   registered (its source partitions that exist are read from their high
//!   watermark then; partitions created later from their start). A source that
//!   other definitions already read continues from the stage's current position.
//!
//! ## Exactly-once outputs (snapshots and a write-ahead log)
//!
//! The stage is a deterministic state machine over the records it reads, and its
//! outputs are made idempotent with a write-ahead log in the internal topic
//! `__cep_checkpoints` (each shard, see below, in its own partition; what follows is
//! per shard):
//!
//! 1. A pass reads a range of records from each source partition, feeds the engine
//!    (merged by record timestamp across partitions, each partition in offset order:
//!    `process_merged`),
//!    calls [`Engine::on_processing_time`] with the pass's clock reading, and collects
//!    the outputs. It assigns each output its partition and notes, per output
//!    partition, the partition's end offset before the write. (A pass that read and
//!    wrote nothing is not recorded; the next log entry carries the last such clock
//!    reading, replayed before its own reads: its timers can only have expired state,
//!    and a later reading subsumes earlier ones.)
//! 2. Before any output is appended, one record describing the pass is appended (and
//!    committed when the pass has outputs): either a **snapshot** (the engine's full
//!    state from [`Engine::checkpoint`]: definitions, pause state, partial matches,
//!    windows, watermarks, processed offsets) or a small **log entry** (the ranges
//!    read, in order, and the clock reading), each with the read positions after the
//!    pass and the pass's planned writes (partition, end offset before the write,
//!    the output records themselves).
//! 3. The outputs are appended and committed.
//!
//! Snapshots and log entries share one sequence of numbers. A snapshot is taken every
//! [`SNAPSHOT_INTERVAL`] (or [`SNAPSHOT_EVERY`] entries; less often if snapshots take
//! more than 2% of the time): after the pass's log entry, the state is captured under
//! the engine lock without encoding it ([`Engine::capture`], events shared), and a
//! thread of its own encodes and appends it (numbered like that entry), then trims
//! the log to the entries after it, while the stage goes on. Snapshots are appended in
//! pieces of [`SNAPSHOT_CHUNK_BYTES`], each committed before the next, so that the
//! stage's own log entries never queue behind a multi-megabyte append (and no Raft
//! entry is that large); recovery uses a snapshot only when it finds all its pieces.
//! The first pass after any
//! change of definitions or pause state writes a snapshot itself, with a new number,
//! instead of a log entry (so that replaying a log entry always runs the definitions it
//! ran with). At start, the snapshot with the highest number is restored and the log
//! entries numbered after it are replayed in order (the same ranges in the same order,
//! the same clock readings; their outputs are dropped, they were recorded), which
//! rebuilds the state the stage had after its last recorded pass. Then every recorded
//! planned write is
//! redone idempotently: for each output partition, the records from the recorded end
//! offset on are compared in order with the planned ones, and only those not found
//! (the suffix a crash cut off) are appended. A crash before step 2 completes loses
//! nothing (the pass is not recorded, its records are read and matched again, its
//! outputs were never written), a crash between 2 and 3 is completed by the redo, and
//! a crash after 3 finds every planned record present. Every output is thus written
//! exactly once. (Redo looks among the batches of the shard's own producer id, see
//! "In a cluster"; for planned writes recorded by versions without it, among all
//! records, where a client's identical record could be taken for one of them.)
//!
//! Definitions and pause state come from `__cep_definitions` (the source of truth):
//! at start, restored definitions deleted or replaced since the snapshot are dropped,
//! and ones registered since then (a crash within the moment between a registration
//! and the next pass, or a registration on another node) start with empty state where
//! their new source topics were when registered (the registration record carries the
//! committed high watermarks the registering node saw, `"from"`). Source partitions the
//! snapshot does not know (the topic was created after it) are read from their start.
//!
//! ## Durability
//!
//! "Committed" is the Raft commit: a majority of the replicas wrote the record, each
//! under its topic's flush policy, as for an acks=all produce in a cluster. On a single
//! node (a one-voter group) that is the record written to the log, as for acks=1: the
//! stage does not add the fsync that an acks=all produce gets there. So outputs are
//! exactly once across a process crash (`kill -9`: the page cache survives it) and a
//! minority of dead nodes. Across power loss of a single node they are only with
//! `flush.messages=1` on `__cep_checkpoints` and the output topics (or broker-wide
//! `log.flush.interval.messages=1`), which makes every commit an fsync; then the log
//! entry of a pass is on disk before its outputs are written, and they are on disk
//! before the next pass. Without it, a power loss can lose the tail of both, or keep an
//! output whose log entry was lost, which the restart then writes again; the source
//! records, unless fsync'd themselves, are at the same risk. Why not fsync always: a
//! pass waits for two commits, a few hundred passes a second at 50,000 events/s, and on
//! the virtual machines this was measured on each fsync cost a quarter of the broker's
//! CPU (the block device's doorbell is a VM exit) and most of a match's tail latency
//! (benches/README.md, "cep-s5, end to end").
//!
//! ## In a cluster: shards, each on the leader of its checkpoint partition
//!
//! Every partition is a Raft group (a single node is a one-voter cluster), and so are
//! the two internal topics. The work is split into shards ([`CepNode`]), one per
//! partition of `__cep_checkpoints` (created with one per cluster node; one on a single
//! node). Patterns get the source partitions `p ≡ shard (mod shards)`; a windowed query
//! or alert rule all of its source in the shard its id hashes to
//! ([`weir_cep::Engine::set_shard`]). Shard `i` runs on the Raft leader of
//! `__cep_checkpoints-i`, which has the same preferred leader as partition `i` (and
//! `i + shards`, ...) of every topic, so patterns run where their source partitions are
//! led while leadership is where it is preferred. Each shard's loop (`Cep::run`) follows
//! its partition's leadership:
//!
//! * On gaining it, once everything in the new leader's log is committed (its high
//!   watermark reached its log end, as the consumer-group coordinator waits before
//!   loading), the node recovers the shard exactly as a restart does: newest committed
//!   snapshot, committed log entries replayed (after its replicas of the source
//!   partitions caught up with the ranges they name), definitions applied, recorded
//!   planned writes redone idempotently. Only then does it run passes.
//! * On losing it (or another term), it stops: the current pass ends (its appends fail
//!   with not-leader, and a wait for a commit gives up within `COMMIT_POLL` of this node
//!   stepping down; outputs are not written once leadership is gone), the engine
//!   state is dropped, and only the definitions are kept (for listing).
//! * The checkpoint record of a pass is committed by a majority before any output is
//!   written, and a pass's writes (one per output partition, all under way at once)
//!   are committed (acks=all) before the next pass, so a new leader has every pass
//!   whose outputs may exist. A pass whose checkpoint or
//!   outputs cannot be written is not retried piecemeal: the shard drops its state
//!   and recovers from its checkpoint partition, whose redo completes the writes.
//! * It reads source partitions below their committed high watermark, from this node's
//!   replica (a follower's replica holds every committed record below its own high
//!   watermark). A source partition with no replica on the shard's node is read from
//!   its leader through the broker's Kafka client (a fetch answers committed records
//!   only; listed in the stats as `remote_sources`): the stage asks for its high
//!   watermark every pass and looks at it at least every [`TICK`] (local replicas wake
//!   the stage when they grow).
//! * Outputs go to the partition's leader: appended here when this node leads it, else
//!   forwarded with acks=all through the broker's Kafka client (as HTTP ingest does).
//!   A planned write's end offset is the log end where this node leads the partition,
//!   else the leader's high watermark. Redo compares with committed records only: on
//!   this node's replica once it caught up with the leader's high watermark (a leader
//!   first waits until its whole log is committed), or fetched from the leader. Shards
//!   may write to the same output partition; redo looks for its planned records in
//!   order among the batches of its own producer id (below), so other shards' and
//!   clients' records, identical ones included, do not disturb it.
//! * Definitions: `POST`/`DELETE`/pause/resume work on every node: the record goes to
//!   the leader of `__cep_definitions-0` (forwarded with acks=all when another node
//!   leads it) and is committed before the answer. Every shard on every node applies
//!   the committed records of the definitions topic as they change (a running one
//!   before each pass), so `GET /api/cep/patterns` lists them everywhere. Two
//!   registrations of one id on two nodes at once can both succeed (the later record
//!   wins).
//! * `GET /api/cep/stats` and `GET /api/cep/matches` answer for the whole cluster on
//!   any node: the node asks every other member (`?scope=node`, at the HTTP address
//!   each gave in its Raft hello) and merges: counters and lag summed per definition,
//!   positions listed with their node, each shard with the node that runs it, each
//!   node's timings under `nodes` (an unreachable node is listed so); the live stream
//!   follows every other node's stream (again after it ended) before its greeting.
//!   `?scope=node`: the shards of the node asked only.
//!
//! * A deposed stage (cut off by a network partition, or paused, rather than killed)
//!   cannot record another pass: its checkpoint appends need a majority. But the
//!   write of its last recorded pass may still be on its way to an output partition's
//!   leader when the new stage redoes it. Each shard therefore writes as an
//!   idempotent producer (KIP-98) of its own: producer id `CEP_PRODUCER_ID_BASE` +
//!   shard, and per output partition an epoch and sequence numbers that the planned
//!   write records (`PlannedWrite::producer`; the snapshot header holds where the
//!   producer stands on each partition). The redo sends the very batches the pass
//!   planned, with the same sequence numbers, so the leader appends whichever copy
//!   arrives first and acknowledges the other without appending it; a copy older
//!   than the leader's last five batches of the producer is refused. Where the
//!   leader's producer state does not continue from the planned write (the records
//!   that held it were deleted by retention and the broker restarted, or the
//!   checkpoint topic was recreated), the redo writes under a newer epoch from
//!   sequence 0, which also fences any older copy (`Cep::append_missing`).
//!
//! Limits: the number of shards is fixed when `__cep_checkpoints` is created; a query
//! runs in one shard; event time advances per shard; a failover costs an election plus
//! a recovery (restore and replay since the last snapshot). Webhook deliveries stay at
//! least once.

pub mod httpc;

use crate::client::partitioner::partition_for_key;
use crate::metadata::{is_internal_topic, now_ms};
use crate::partition::Partition;
use crate::state::Broker;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{btree_map, BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, Notify};
use weir_cep::{
    parse_definition_json, parse_sql, CepError, Definition, Engine, Limits, Output, OutputKind,
    Shard,
};
use weir_protocol::compression::Compression;
use weir_protocol::records::{self, BatchBuilder};

/// The compacted topic holding the registered definitions.
pub const DEFINITIONS_TOPIC: &str = "__cep_definitions";
/// The compacted topic holding the stage's write-ahead checkpoints.
pub const CHECKPOINT_TOPIC: &str = "__cep_checkpoints";
const SNAPSHOT_MAGIC: &[u8; 4] = b"WCP1";
/// A piece of a snapshot: `WCS1`, sequence number (u64), index and count (u32 each,
/// big-endian), then that piece of the `WCP1` bytes.
const SNAPSHOT_CHUNK_MAGIC: &[u8; 4] = b"WCS1";
/// Snapshots are appended in pieces of at most this many bytes, each committed before
/// the next: the stage's log entries, appended to the same partition and waiting for
/// their own commits, then queue behind one piece at most instead of a whole
/// multi-megabyte snapshot (and a Raft entry stays small enough to replicate).
/// (Tiny in unit tests, so that their snapshots come in several pieces.)
const SNAPSHOT_CHUNK_BYTES: usize = if cfg!(test) { 1 << 10 } else { 512 << 10 };
const LOG_ENTRY_MAGIC: &[u8; 4] = b"WWL1";
/// Largest checkpoint record (compressed).
const CHECKPOINT_MAX_BYTES: &str = "536870912";
/// A snapshot of the engine state is written at least this often while records flow
/// (or less often when snapshots are slow: at most 2% of the stage's time).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);
/// The interval is at least this many times the last snapshot's duration.
const SNAPSHOT_COST_FACTOR: u32 = 50;
/// ... or after this many log entries.
pub const SNAPSHOT_EVERY: u64 = 20_000;
/// Segment size of the checkpoint topic (the log is trimmed segment by segment).
const CHECKPOINT_SEGMENT_BYTES: &str = "67108864";
/// How often a node that does not run the stage trims its replica of the checkpoint log.
const REPLICA_TRIM_INTERVAL: Duration = Duration::from_secs(10);
/// Passes slower than this are logged (at debug), with where their time went.
const SLOW_PASS: Duration = Duration::from_millis(5);
/// The longest the stage sleeps without new data (processing-time timers).
pub const TICK: Duration = Duration::from_millis(500);
/// Bytes read from one partition per pass.
const READ_BYTES: usize = 1 << 20;
/// Largest decompressed batch the stage decodes.
const MAX_UNCOMPRESSED: usize = 1 << 30;
/// Bytes of output records per batch written.
const OUTPUT_BATCH_BYTES: usize = 512 << 10;
/// Producer ids of the shards' idempotent output batches: shard `i` writes as
/// `CEP_PRODUCER_ID_BASE + i`. Far above any id InitProducerId hands out (those count
/// up from 0 in blocks), so no client's producer shares one.
const CEP_PRODUCER_ID_BASE: i64 = 0x7EED_0000_0000_0000;
/// Outputs buffered for live (SSE) subscribers before a slow one lags.
const LIVE_BUFFER: usize = 4096;
/// Webhook delivery: attempts and the timeout of each.
const WEBHOOK_ATTEMPTS: u32 = 3;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the stage waits for a replicated append (checkpoint or output) to be
/// committed by a majority, or for a forwarded one to be acknowledged.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait for a commit asks whether this node still leads the partition.
const COMMIT_POLL: Duration = Duration::from_millis(250);
/// How long recovery waits for a local replica to catch up with records it must read.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a node that does not run the stage looks at the checkpoint partition's
/// leadership and at the definitions topic.
const LEADERSHIP_POLL: Duration = Duration::from_millis(200);
/// The longest a fetch from another node's partition waits for records (the stage
/// asks only when the leader's high watermark says there are some).
const REMOTE_FETCH_WAIT: Duration = Duration::from_millis(500);
/// Pause after a failed recovery before the next attempt.
const RECOVERY_BACKOFF: Duration = Duration::from_secs(1);

pub struct Cep {
    broker: Arc<Broker>,
    /// Which part of the work this stage does: its partition of `__cep_checkpoints`,
    /// and the engine's shard (see [`CepNode`]).
    shard: Shard,
    engine: Mutex<Engine>,
    /// Next offset the stage reads, per source (topic, partition).
    positions: Mutex<HashMap<(String, i32), i64>>,
    /// The shard producer's next epoch and sequence number per output (topic,
    /// partition); planned writes take theirs from here ([`Cep::plan`]).
    producers: Mutex<HashMap<(String, i32), ProducerSeq>>,
    /// Serialises register/remove/pause (engine change plus definitions-topic append).
    admin: Mutex<()>,
    changed: Notify,
    stop: AtomicBool,
    /// The stage's thread.
    task: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_partition: AtomicUsize,
    /// Bumped (under the engine lock) by every change of definitions or pause state.
    admin_epoch: AtomicU64,
    /// The stage's write-ahead log bookkeeping.
    wal: Arc<Mutex<WalState>>,
    /// A periodic snapshot being encoded and written on its own thread.
    snapshot_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Outputs written, for `GET /api/cep/matches`.
    live: broadcast::Sender<Arc<Published>>,
    /// Where webhook deliveries run (set by `start_stage`).
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    webhooks: Arc<WebhookCounters>,
    /// The Raft term of its partition of `__cep_checkpoints` in which this node runs the stage (it
    /// leads that partition and recovered the state from it); 0: not running it.
    stage_term: Arc<AtomicU64>,
    /// A pass could not be recorded or its outputs not written: the state is dropped
    /// and recovered again from the checkpoint topic (whose redo completes the writes).
    needs_recovery: AtomicBool,
    /// The definitions topic's high watermark when its definitions were last applied.
    definitions_seen: AtomicI64,
    /// Source partitions with no replica on this node (read from their leaders), with
    /// the high watermark the leader last reported (-1: none yet).
    unhosted: Mutex<BTreeMap<(String, i32), i64>>,
    /// Where the stage's time goes, for `GET /api/cep/stats`.
    timings: Mutex<StageTimings>,
    /// This node's replica of the checkpoint topic while another node runs the stage.
    replica_trim: Mutex<ReplicaTrim>,
    /// Tests: stop a pass right after its checkpoint, as a crash there would.
    #[cfg(test)]
    crash_after_checkpoint: AtomicBool,
}

/// Histograms (microseconds) of the stage's passes since start: what an operator needs
/// to see where the end-to-end latency of a match goes.
struct StageTimings {
    /// Age of the newest record a pass read, when the pass started reading (record
    /// timestamp to now: the producer's batching, the produce and its commit, and the
    /// stage's wake-up; meaningful for producer-set timestamps on one clock).
    record_age: hdrhistogram::Histogram<u64>,
    /// Reading and matching (the engine), per pass that read records.
    process: hdrhistogram::Histogram<u64>,
    /// Recording the pass (log entry or snapshot, until committed).
    checkpoint: hdrhistogram::Histogram<u64>,
    /// Writing the pass's outputs (until committed), per pass with outputs.
    write: hdrhistogram::Histogram<u64>,
    /// From the idle stage's thread being woken by new records to its pass starting.
    handoff: hdrhistogram::Histogram<u64>,
}

impl StageTimings {
    fn new() -> StageTimings {
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
        };
        StageTimings {
            record_age: h(),
            process: h(),
            checkpoint: h(),
            write: h(),
            handoff: h(),
        }
    }

    fn summary(h: &hdrhistogram::Histogram<u64>) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "count": h.len(),
            "p50_ms": ms(h.value_at_quantile(0.5)),
            "p99_ms": ms(h.value_at_quantile(0.99)),
            "p999_ms": ms(h.value_at_quantile(0.999)),
            "max_ms": ms(h.max()),
        })
    }

    /// Adds another stage's samples (the node's shards, merged for the stats).
    fn add(&mut self, other: &StageTimings) {
        for (mine, theirs) in [
            (&mut self.record_age, &other.record_age),
            (&mut self.process, &other.process),
            (&mut self.checkpoint, &other.checkpoint),
            (&mut self.write, &other.write),
            (&mut self.handoff, &other.handoff),
        ] {
            // Same bounds on both sides: cannot fail.
            let _ = mine.add(theirs);
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "record_age": Self::summary(&self.record_age),
            "process": Self::summary(&self.process),
            "checkpoint": Self::summary(&self.checkpoint),
            "write": Self::summary(&self.write),
            "handoff": Self::summary(&self.handoff),
        })
    }
}

fn record_us(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Where this node stands with its shard's partition of `__cep_checkpoints`, whose Raft
/// leader runs the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageLeadership {
    /// Another node leads it (or none does, or it has no replica here).
    Follower,
    /// Led by this node in this term, but entries of earlier leaders (or its own
    /// appends in flight) are not all committed yet.
    CatchingUp(u64),
    /// Led by this node in this term and everything in its log is committed.
    Ready(u64),
}

/// A source partition as the stage reads it.
enum Source {
    /// A replica on this node: read from its log below its committed high watermark.
    Local(Arc<Partition>),
    /// No replica on this node: read from its leader through the broker's Kafka client
    /// (a Kafka fetch answers committed records only).
    Remote { topic: String, index: i32 },
}

impl Source {
    fn topic(&self) -> &str {
        match self {
            Source::Local(p) => &p.topic,
            Source::Remote { topic, .. } => topic,
        }
    }

    fn index(&self) -> i32 {
        match self {
            Source::Local(p) => p.index,
            Source::Remote { index, .. } => *index,
        }
    }
}

struct WalState {
    last_snapshot: Instant,
    /// How long the last snapshot took to encode and write.
    snapshot_cost: Duration,
    /// `admin_epoch` of the engine state in the last snapshot (u64::MAX: none since start).
    snapshot_epoch: u64,
    /// Log entries since the last snapshot.
    entries: u64,
    /// The clock of the last pass not recorded since the last record.
    idle_now: Option<i64>,
    seq: u64,
}

impl WalState {
    fn new() -> Self {
        WalState {
            last_snapshot: Instant::now(),
            snapshot_cost: Duration::ZERO,
            // The state after a recovery is not in any snapshot yet.
            snapshot_epoch: u64::MAX,
            entries: 0,
            idle_now: None,
            seq: 0,
        }
    }
}

/// A source range read by a pass: topic, partition, from, to (exclusive).
type ReadRange = (String, i32, i64, i64);

/// A pass recorded without the engine state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogEntry {
    /// Sequence number (snapshots and log entries share the sequence).
    #[serde(default)]
    seq: u64,
    /// The clock of the last pass before this one that was not recorded (it read
    /// nothing and wrote nothing, but its timers may have expired state); replayed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_now_ms: Option<i64>,
    reads: Vec<ReadRange>,
    /// The pass fed its reads to the engine merged by timestamp ([`process_merged`]);
    /// entries of older versions fed them range by range, and are replayed so.
    #[serde(default)]
    merged: bool,
    now_ms: i64,
    positions: Vec<(String, i32, i64)>,
    writes: Vec<PlannedWrite>,
}

/// What the checkpoint topic holds from its last snapshot on.
struct Recovered {
    header: CheckpointHeader,
    state: Vec<u8>,
    /// The entries after the snapshot, by sequence number.
    entries: Vec<LogEntry>,
    /// The largest sequence number found.
    max_seq: u64,
}

#[derive(Default)]
struct WebhookCounters {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// An output as written: what live subscribers see.
#[derive(Debug, Clone)]
pub struct Published {
    pub definition_id: String,
    pub kind: &'static str,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl Published {
    fn to_json(&self) -> Value {
        json!({
            "pattern": self.definition_id,
            "kind": self.kind,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp_ms,
            "key": self.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "value": serde_json::from_slice::<Value>(&self.value)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.value).into_owned())),
        })
    }
}

fn kind_name(k: &OutputKind) -> &'static str {
    match k {
        OutputKind::Match => "match",
        OutputKind::Late => "late",
        OutputKind::DeadLetter => "dead_letter",
        OutputKind::WindowResult => "window_result",
        OutputKind::Alert { .. } => "alert",
    }
}

/// One output record planned for a partition (part of a checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PlannedRecord {
    #[serde(with = "weir_cep::event::bytes_text::option")]
    key: Option<Vec<u8>>,
    #[serde(with = "weir_cep::event::bytes_text")]
    value: Vec<u8>,
    timestamp_ms: i64,
    definition_id: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook: Option<String>,
}

/// The outputs of one pass for one partition, and its end offset before they were written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PlannedWrite {
    topic: String,
    partition: i32,
    end_offset: i64,
    records: Vec<PlannedRecord>,
    /// The epoch and sequence number of its first record, as the shard's idempotent
    /// producer (`CEP_PRODUCER_ID_BASE` + shard); each batch's base sequence follows
    /// from it. None in checkpoints of versions without it: written without a producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    producer: Option<ProducerSeq>,
}

/// Where a shard's idempotent producer stands on one output partition (KIP-98): the
/// epoch and the sequence number of a record. The same planned write is always sent
/// as the same batches with the same sequence numbers, so that the partition's leader
/// appends it once however often it arrives: from the pass that planned it, from a
/// deposed stage whose write was still on its way, or from the redo of the stage that
/// took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerSeq {
    epoch: i16,
    seq: i32,
}

impl ProducerSeq {
    /// The sequence number `records` records further on (sequences wrap as in Kafka).
    fn plus(self, records: usize) -> ProducerSeq {
        let seq = (i64::from(self.seq) + records as i64) % (i64::from(i32::MAX) + 1);
        ProducerSeq {
            epoch: self.epoch,
            seq: seq as i32,
        }
    }
}

/// A write the partition's leader refused, or that could not reach it.
#[derive(Debug)]
struct WriteFailed {
    message: String,
    /// The leader refused the producer's epoch or sequence number: its producer state
    /// does not continue from this write (lost with the records that held it, or a
    /// newer epoch was used there), so nothing of the write was appended.
    sequence: bool,
}

impl WriteFailed {
    fn other(message: String) -> WriteFailed {
        WriteFailed {
            message,
            sequence: false,
        }
    }

    fn of_code(code: i16, message: String) -> WriteFailed {
        use kafka_protocol::error::ResponseError as E;
        let sequence = [
            E::OutOfOrderSequenceNumber,
            E::InvalidProducerEpoch,
            E::UnknownProducerId,
            E::ProducerFenced,
        ]
        .iter()
        .any(|e| e.code() == code);
        WriteFailed { message, sequence }
    }
}

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An output write under way.
enum InFlight {
    /// Appended to this node's leader replica, batch by batch; their commits are
    /// awaited. The first offset of the write.
    Local(Arc<Partition>, Vec<crate::partition::Appended>, i64),
    /// Forwarded to the partition's leader (acks=all); answers the first offset.
    Remote(tokio::task::JoinHandle<Result<i64, WriteFailed>>),
    /// Nothing to write, or written already (no runtime to run it alongside others).
    Done(Result<i64, WriteFailed>),
}

/// A checkpoint's header (the engine state follows it in the record).
#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointHeader {
    /// The sequence number of the last log entry (or snapshot) this state includes.
    #[serde(default)]
    seq: u64,
    positions: Vec<(String, i32, i64)>,
    writes: Vec<PlannedWrite>,
    /// The shard producer's next epoch and sequence number per output partition
    /// (topic, partition, epoch, sequence), after `writes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    producers: Vec<(String, i32, i16, i32)>,
}

/// A definition as stored in the definitions topic.
#[derive(Debug, Clone)]
struct Stored {
    id: String,
    json: String,
    paused: bool,
    /// Where its source partitions started when it was registered (their committed
    /// high watermarks on the registering node): the stage may learn of a
    /// definition registered on another node a moment later.
    from: Vec<(String, i32, i64)>,
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

/// Equal definitions (JSON compared as values, not text).
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Cep {
    /// Creates the internal topics if missing, `__cep_checkpoints` with `shards`
    /// partitions. Returns its partition count: the number of shards, fixed when it was
    /// created (a shard's state lives in its partition).
    fn ensure_topics(broker: &Arc<Broker>, shards: i32) -> anyhow::Result<u32> {
        for (topic, partitions, configs) in [
            (DEFINITIONS_TOPIC, 1, vec![("cleanup.policy", "compact")]),
            (
                CHECKPOINT_TOPIC,
                shards.max(1),
                vec![
                    ("cleanup.policy", "compact"),
                    ("max.message.bytes", CHECKPOINT_MAX_BYTES),
                    ("segment.bytes", CHECKPOINT_SEGMENT_BYTES),
                ],
            ),
        ] {
            if broker.topic(topic).is_none() {
                let configs: BTreeMap<String, String> = configs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if let Err((_, m)) =
                    broker.create_topic(topic, partitions, -1, configs.clone(), false)
                {
                    // An older broker may not know a config: retry with compaction only.
                    tracing::warn!(topic, error = %m, "creating with its configs failed; retrying with cleanup.policy=compact only");
                    let minimal =
                        BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
                    broker
                        .create_topic(topic, partitions, -1, minimal, false)
                        .map_err(|(_, m)| anyhow::anyhow!("creating {topic}: {m}"))?;
                }
            }
        }
        let count = broker
            .topic(CHECKPOINT_TOPIC)
            .map(|t| t.partitions)
            .ok_or_else(|| anyhow::anyhow!("{CHECKPOINT_TOPIC} does not exist yet"))?;
        u32::try_from(count)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| anyhow::anyhow!("{CHECKPOINT_TOPIC} has {count} partitions"))
    }

    /// A single node's only stage (tests): the internal topics with one shard.
    #[cfg(test)]
    pub fn open(broker: Arc<Broker>) -> anyhow::Result<Arc<Cep>> {
        let count = Self::ensure_topics(&broker, 1)?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self::open_shard(
            broker,
            Shard { index: 0, count },
            live,
            Arc::new(WebhookCounters::default()),
        )
    }

    /// The stage of one shard: restores its last checkpoint, registers the stored
    /// definitions and redoes the checkpoint's planned writes when this node leads the
    /// shard's checkpoint partition. Blocking.
    fn open_shard(
        broker: Arc<Broker>,
        shard: Shard,
        live: broadcast::Sender<Arc<Published>>,
        webhooks: Arc<WebhookCounters>,
    ) -> anyhow::Result<Arc<Cep>> {
        let mut engine = Engine::new(Limits::default());
        engine.set_shard(shard);
        let cep = Arc::new(Cep {
            broker,
            shard,
            engine: Mutex::new(engine),
            positions: Mutex::new(HashMap::new()),
            producers: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
            changed: Notify::new(),
            stop: AtomicBool::new(false),
            task: Mutex::new(None),
            next_partition: AtomicUsize::new(0),
            admin_epoch: AtomicU64::new(0),
            snapshot_thread: Mutex::new(None),
            wal: Arc::new(Mutex::new(WalState::new())),
            live,
            // Redone alert outputs at start deliver their webhooks on the caller's runtime.
            runtime: Mutex::new(tokio::runtime::Handle::try_current().ok()),
            webhooks,
            stage_term: Arc::new(AtomicU64::new(0)),
            needs_recovery: AtomicBool::new(false),
            definitions_seen: AtomicI64::new(i64::MIN),
            unhosted: Mutex::new(BTreeMap::new()),
            timings: Mutex::new(StageTimings::new()),
            replica_trim: Mutex::new(ReplicaTrim::default()),
            #[cfg(test)]
            crash_after_checkpoint: AtomicBool::new(false),
        });
        // The definitions, for listing on every node (the stage, if this node runs
        // it, restores them with its state below or when it gains leadership).
        cep.sync_definitions();
        // A single node leads the checkpoint partition from the start: recover now,
        // as a restart always did. In a cluster the stage's loop follows leadership.
        if let StageLeadership::Ready(term) = cep.checkpoint_leadership() {
            match cep.recover() {
                Ok(()) => {
                    cep.stage_term.store(term, Ordering::Release);
                    tracing::info!(
                        term,
                        shard = cep.shard.index,
                        "running the CEP stage (this node leads {CHECKPOINT_TOPIC}-{})",
                        cep.ckpt()
                    );
                }
                // The stage's loop tries again.
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "CEP stage recovery failed")
                }
            }
        }
        Ok(cep)
    }

    /// This shard's partition of `__cep_checkpoints`.
    fn ckpt(&self) -> i32 {
        self.shard.index as i32
    }

    /// Where this node stands with the checkpoint partition.
    fn checkpoint_leadership(&self) -> StageLeadership {
        let Some(p) = self.broker.partition(CHECKPOINT_TOPIC, self.ckpt()) else {
            return StageLeadership::Follower;
        };
        if !p.is_leader() {
            return StageLeadership::Follower;
        }
        // A partition without Raft has epoch 0; 0 means "not running" in `stage_term`.
        let term = (p.current_leader_epoch().max(0) as u64).max(1);
        // Everything in a new leader's log is committed once the high watermark
        // reaches its end (its first entry of the term commits earlier leaders' tails).
        if p.high_watermark() >= p.log.log_end_offset() {
            StageLeadership::Ready(term)
        } else {
            StageLeadership::CatchingUp(term)
        }
    }

    /// Whether this node still runs the stage in the term it recovered in.
    fn still_stage(&self) -> bool {
        let term = self.stage_term.load(Ordering::Acquire);
        term != 0
            && matches!(self.checkpoint_leadership(),
                StageLeadership::Ready(t) | StageLeadership::CatchingUp(t) if t == term)
    }

    /// The node running the stage: the leader of its partition of `__cep_checkpoints` (-1: none known).
    pub fn stage_node(&self) -> i32 {
        self.broker
            .partition_leader(CHECKPOINT_TOPIC, self.ckpt())
            .0
    }

    /// Drops the engine state (definitions included), positions and log bookkeeping.
    /// Called with the engine lock held.
    fn reset_locked(&self, engine: &mut Engine) {
        *engine = Engine::new(Limits::default());
        engine.set_shard(self.shard);
        self.positions.lock().clear();
        self.producers.lock().clear();
        self.unhosted.lock().clear();
        *self.wal.lock() = WalState::new();
        self.admin_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits for the periodic snapshot thread, if one runs (its append fails once this
    /// node is not the stage, but a stale one must not land after a new recovery).
    fn join_snapshot_thread(&self) {
        let handle = self.snapshot_thread.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Rebuilds the stage's state from the committed checkpoint topic: restores the
    /// newest snapshot, replays the log entries after it, applies the definitions
    /// topic, and redoes the recorded planned writes idempotently. Blocking.
    fn recover(&self) -> anyhow::Result<()> {
        self.join_snapshot_thread();
        let _admin = self.admin.lock();
        let (stored, definitions_hw) = self.load_stored()?;
        let recovered = match self.load_checkpoints() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the CEP checkpoints cannot be read: starting from the high watermarks, without state");
                None
            }
        };
        let mut engine = self.engine.lock();
        self.reset_locked(&mut engine);
        let mut header = CheckpointHeader::default();
        if let Some(rec) = recovered {
            self.wal.lock().seq = rec.max_seq;
            match engine.restore(&rec.state) {
                Ok(()) => {
                    let entries = rec.entries.len();
                    header = rec.header;
                    for entry in rec.entries {
                        if let Err(e) = self.replay(&mut engine, &entry) {
                            // Not running the stage: dropped and recovered again.
                            self.reset_locked(&mut engine);
                            anyhow::bail!("{e}");
                        }
                        header.positions = entry.positions;
                        header.writes.extend(entry.writes);
                    }
                    tracing::info!(
                        entries,
                        positions = header.positions.len(),
                        writes = header.writes.len(),
                        "CEP snapshot restored and log replayed"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "the last CEP snapshot cannot be restored: starting from the high watermarks, without state")
                }
            }
        }
        // Where the shard's producer stands on each output partition: as of the
        // snapshot, then past every write recorded since.
        {
            let mut producers = self.producers.lock();
            for (t, p, epoch, seq) in &header.producers {
                producers.insert(
                    (t.clone(), *p),
                    ProducerSeq {
                        epoch: *epoch,
                        seq: *seq,
                    },
                );
            }
        }
        self.note_producer_seqs(&header.writes);
        // The definitions topic is the truth: drop restored definitions deleted or
        // replaced since the checkpoint, register new ones, apply pause state.
        let (_, added, restored_sources) = apply_stored(&mut engine, &stored);
        {
            let mut positions = self.positions.lock();
            for (t, p, o) in &header.positions {
                if restored_sources.contains(t) {
                    positions.insert((t.clone(), *p), *o);
                }
            }
        }
        // Sources of definitions registered since the checkpoint: from where they
        // were when registered. (Partitions of restored sources that the checkpoint
        // does not know were created after it: read from their start.)
        let mut seeded: Vec<String> = Vec::new();
        for s in &added {
            for t in sources_of(&engine, &s.id) {
                if !restored_sources.contains(&t) && !seeded.contains(&t) {
                    self.seed_positions_from(&t, true, &s.from);
                    seeded.push(t);
                }
            }
        }
        drop(engine);
        self.definitions_seen
            .store(definitions_hw, Ordering::Release);
        for w in &header.writes {
            let (present, appended) = self.redo(w).map_err(|e| {
                anyhow::anyhow!(
                    "redoing the CEP outputs of the last checkpoint to {}-{}: {e}",
                    w.topic,
                    w.partition
                )
            })?;
            tracing::info!(
                topic = %w.topic,
                partition = w.partition,
                present,
                appended,
                "CEP outputs of the last checkpoint checked"
            );
        }
        self.needs_recovery.store(false, Ordering::Release);
        Ok(())
    }

    /// Stops running the stage: drops its state and keeps only the definitions (for
    /// listing). Its appends in flight fail with not-leader; the next stage redoes
    /// whatever it recorded. Blocking.
    fn relinquish(&self) {
        self.stage_term.store(0, Ordering::Release);
        self.join_snapshot_thread();
        {
            let _admin = self.admin.lock();
            let mut engine = self.engine.lock();
            self.reset_locked(&mut engine);
        }
        self.needs_recovery.store(false, Ordering::Release);
        self.definitions_seen.store(i64::MIN, Ordering::Release);
        self.sync_definitions();
        tracing::info!(
            shard = self.shard.index,
            "not running the CEP stage any more (this node does not lead {CHECKPOINT_TOPIC}-{})",
            self.ckpt()
        );
    }

    /// On a node that does not run the stage: trims its replica of the checkpoint topic
    /// as the stage trims its own after each snapshot (the stage's trim is not
    /// replicated), up to the newest complete snapshot and the log entries numbered
    /// after it. Reads only what was committed since the last look, at most every
    /// [`REPLICA_TRIM_INTERVAL`].
    fn trim_checkpoint_replica(&self) {
        let Some(p) = self.broker.partition(CHECKPOINT_TOPIC, self.ckpt()) else {
            return;
        };
        let mut trim = self.replica_trim.lock();
        if p.is_leader()
            || trim
                .last
                .is_some_and(|t| t.elapsed() < REPLICA_TRIM_INTERVAL)
        {
            return;
        }
        trim.last = Some(Instant::now());
        let hw = p.high_watermark();
        let start = p.log.log_start_offset();
        if trim.next < start {
            *trim = ReplicaTrim {
                last: trim.last,
                next: start,
                ..ReplicaTrim::default()
            };
        }
        let mut pos = trim.next;
        while pos < hw {
            let read = match p.log.read(pos, READ_BYTES, true) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the checkpoint replica to trim it");
                    return;
                }
            };
            if read.batches.is_empty() {
                break;
            }
            let before = pos;
            for chunk in &read.batches {
                let (recs, next) = decode_chunk(chunk, pos, hw);
                pos = next;
                for r in recs {
                    trim.note(r.offset, r.key.as_deref(), r.value.as_deref());
                }
            }
            if pos == before {
                break;
            }
        }
        trim.next = pos;
        if let Some(keep_from) = trim.keep_from() {
            if keep_from > start {
                match p.log.delete_before(keep_from) {
                    Ok(low) => tracing::debug!(low, "checkpoint replica trimmed"),
                    Err(e) => tracing::warn!(error = %e, "checkpoint replica not trimmed"),
                }
            }
            trim.forget_before(keep_from);
        }
    }

    /// Applies the definitions topic's committed records to the engine when they
    /// changed since the last look: definitions registered, deleted or paused on
    /// another node. Blocking.
    fn sync_definitions(&self) {
        let hw = self
            .broker
            .partition(DEFINITIONS_TOPIC, 0)
            .map_or(-1, |p| p.high_watermark());
        if hw == self.definitions_seen.load(Ordering::Acquire) {
            return;
        }
        let _admin = self.admin.lock();
        let (stored, hw) = match self.load_stored() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the CEP definitions");
                return;
            }
        };
        let mut engine = self.engine.lock();
        let (changed, added) = {
            // Sources still read by a kept definition continue from their position.
            let (changed, added, mut sources) = apply_stored(&mut engine, &stored);
            for s in &added {
                for t in sources_of(&engine, &s.id) {
                    let fresh = !sources.contains(&t);
                    self.seed_positions_from(&t, fresh, &s.from);
                    sources.push(t);
                }
            }
            (changed, added.len())
        };
        if changed {
            self.admin_epoch.fetch_add(1, Ordering::AcqRel);
        }
        drop(engine);
        self.definitions_seen.store(hw, Ordering::Release);
        if changed {
            tracing::info!(added, "CEP definitions updated from {DEFINITIONS_TOPIC}");
            self.changed.notify_one();
        }
    }

    /// The live definitions of the definitions topic, oldest registration first.
    /// Only committed records are read; returns the high watermark read up to too.
    fn load_stored(&self) -> anyhow::Result<(Vec<Stored>, i64)> {
        let Some(p) = self.broker.partition(DEFINITIONS_TOPIC, 0) else {
            return Ok((Vec::new(), -1));
        };
        let hw = p.high_watermark();
        // id -> (offset of first registration, latest value, registration's value)
        let mut latest: HashMap<String, (i64, Option<String>, Option<String>)> = HashMap::new();
        let mut pos = p.log.log_start_offset();
        while pos < hw {
            let read = p
                .log
                .read(pos, READ_BYTES, true)
                .map_err(|e| anyhow::anyhow!("reading {DEFINITIONS_TOPIC}-0 at {pos}: {e}"))?;
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
                    // A pause or resume keeps the registration's place in the order.
                    let update =
                        value.is_some() && matches!(latest.get(key), Some((_, Some(_), _)));
                    match latest.get_mut(key) {
                        Some(entry) if update => entry.1 = value,
                        _ => {
                            latest.insert(key.to_string(), (r.offset, value.clone(), value));
                        }
                    }
                }
            }
            if pos == before {
                break;
            }
        }
        let mut live: Vec<(i64, Stored)> = Vec::new();
        for (id, (offset, v, registered)) in latest {
            let Some(v) = v else { continue };
            // Where the sources started: recorded with the registration (a pause or
            // resume record does not repeat it).
            let from = registered
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
                .and_then(|r| r.get("from").cloned())
                .and_then(|f| serde_json::from_value::<Vec<(String, i32, i64)>>(f).ok())
                .unwrap_or_default();
            let (json, paused) = match serde_json::from_str::<Value>(&v) {
                // {"definition": {...}, "paused": bool}; older records hold the definition itself.
                Ok(Value::Object(o)) if o.contains_key("definition") && !o.contains_key("id") => {
                    let def = match o.get("definition") {
                        Some(Value::String(s)) => s.clone(),
                        Some(d) => d.to_string(),
                        None => continue,
                    };
                    (
                        def,
                        o.get("paused").and_then(Value::as_bool).unwrap_or(false),
                    )
                }
                _ => (v, false),
            };
            live.push((
                offset,
                Stored {
                    id,
                    json,
                    paused,
                    from,
                },
            ));
        }
        live.sort_by_key(|(o, _)| *o);
        Ok((live.into_iter().map(|(_, s)| s).collect(), hw))
    }

    /// The latest snapshot of the checkpoint topic (highest sequence number) and the log
    /// entries after it. A periodic snapshot is written by another thread while log
    /// entries go on, so entries after it in sequence may precede it in the log.
    fn load_checkpoints(&self) -> anyhow::Result<Option<Recovered>> {
        let Some(p) = self.broker.partition(CHECKPOINT_TOPIC, self.ckpt()) else {
            return Ok(None);
        };
        let hw = p.high_watermark();
        let mut pos = p.log.log_start_offset();
        let mut best: Option<(CheckpointHeader, Vec<u8>)> = None;
        let mut entries: Vec<LogEntry> = Vec::new();
        let mut pieces = SnapshotPieces::default();
        let mut max_seq = 0u64;
        while pos < hw {
            let read = p.log.read(pos, READ_BYTES, true).map_err(|e| {
                anyhow::anyhow!("reading {CHECKPOINT_TOPIC}-{} at {pos}: {e}", p.index)
            })?;
            if read.batches.is_empty() {
                break;
            }
            let before = pos;
            for chunk in &read.batches {
                let (recs, next) = decode_chunk(chunk, pos, hw);
                pos = next;
                for r in recs {
                    let Some(value) = r.value else { continue };
                    if value.starts_with(SNAPSHOT_MAGIC) {
                        let (header, state) = decode_snapshot(&value)
                            .map_err(|e| anyhow::anyhow!("snapshot at offset {}: {e}", r.offset))?;
                        max_seq = max_seq.max(header.seq);
                        if best.as_ref().is_none_or(|(h, _)| header.seq >= h.seq) {
                            best = Some((header, state));
                        }
                    } else if value.starts_with(SNAPSHOT_CHUNK_MAGIC) {
                        let seq = pieces.add(&value).map_err(|e| {
                            anyhow::anyhow!("snapshot piece at offset {}: {e}", r.offset)
                        })?;
                        max_seq = max_seq.max(seq);
                    } else if let Some(json) = value.strip_prefix(LOG_ENTRY_MAGIC) {
                        let entry: LogEntry = serde_json::from_slice(json).map_err(|e| {
                            anyhow::anyhow!("log entry at offset {}: {e}", r.offset)
                        })?;
                        max_seq = max_seq.max(entry.seq);
                        entries.push(entry);
                    } else {
                        anyhow::bail!(
                            "unknown record at offset {} of {CHECKPOINT_TOPIC}",
                            r.offset
                        );
                    }
                }
            }
            if pos == before {
                break;
            }
        }
        if let Some((seq, bytes)) = pieces.newest_complete() {
            if best.as_ref().is_none_or(|(h, _)| seq >= h.seq) {
                let (header, state) = decode_snapshot(&bytes)
                    .map_err(|e| anyhow::anyhow!("snapshot {seq} (in pieces): {e}"))?;
                best = Some((header, state));
            }
        }
        let Some((header, state)) = best else {
            return Ok(None);
        };
        entries.retain(|e| e.seq > header.seq);
        entries.sort_by_key(|e| e.seq);
        Ok(Some(Recovered {
            header,
            state,
            entries,
            max_seq,
        }))
    }

    /// Re-runs a recorded pass on `engine` (its outputs were recorded with it).
    /// Errs when a source partition that still exists cannot be read (recovery is
    /// retried: replaying less would rebuild another state).
    fn replay(&self, engine: &mut Engine, entry: &LogEntry) -> Result<(), String> {
        let mut dropped = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        if let Some(t) = entry.idle_now_ms {
            let _ = engine.on_processing_time(t);
        }
        for (topic, partition, from, to) in &entry.reads {
            if self
                .broker
                .topic(topic)
                .is_none_or(|m| *partition >= m.partitions)
            {
                tracing::warn!(topic = %topic, partition, "CEP replay: the source partition is gone");
                continue;
            }
            let src = self.source(topic, *partition);
            if let Source::Local(part) = &src {
                // A new stage's replica may still be catching up with records the
                // previous stage read (they are committed, so they arrive).
                if !wait_for(|| part.high_watermark() >= *to, CATCH_UP_TIMEOUT) {
                    tracing::warn!(topic = %topic, partition, to, high_watermark = part.high_watermark(), "CEP replay: the local replica did not catch up; replaying what it has");
                }
            }
            let mut pos = *from;
            let mut run = Vec::new();
            while pos < *to {
                let (recs, next) = self
                    .read_source(&src, pos, *to)
                    .map_err(|e| format!("CEP replay of {topic}-{partition}: {e}"))?;
                if entry.merged {
                    run.extend(recs);
                } else {
                    // Written before merged passes: partition by partition.
                    process_records(engine, topic, *partition, &recs, &mut dropped);
                    dropped.clear();
                }
                if next <= pos {
                    break;
                }
                pos = next;
            }
            runs.push((topic.clone(), *partition, run));
        }
        if entry.merged {
            process_merged(engine, &runs, &mut dropped);
        }
        let _ = engine.on_processing_time(entry.now_ms);
        Ok(())
    }

    /// Sets the position of each existing partition of `topic` to its high watermark
    /// (only records appended from now on are processed): all of them when `reset`
    /// (a topic no definition read until now), else those not read yet.
    fn seed_positions(&self, topic: &str, reset: bool) {
        self.seed_positions_from(topic, reset, &[]);
    }

    /// [`Cep::seed_positions`], with the positions in `from` (recorded when the
    /// definition was registered, maybe on another node) instead of the current high
    /// watermark where it has them.
    fn seed_positions_from(&self, topic: &str, reset: bool, from: &[(String, i32, i64)]) {
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
            let recorded = from
                .iter()
                .find(|(t, q, _)| t == topic && *q == p)
                .map(|(_, _, o)| *o);
            let start = match (recorded, self.broker.partition(topic, p)) {
                (Some(o), _) => o,
                (None, Some(part)) => part.high_watermark(),
                // No replica here: the leader's high watermark.
                (None, None) => match self.remote_offset(topic, p, true) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(topic, partition = p, error = %e, "CEP: where to start reading is unknown; reading the partition from its start");
                        continue;
                    }
                },
            };
            positions.entry((topic.to_string(), p)).or_insert(start);
        }
    }

    /// The committed high watermark of each partition of the given topics (asked of the
    /// leader where this node has no replica): where a definition registered now
    /// starts reading them.
    fn start_positions(&self, topics: &[String]) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for topic in topics {
            let Some(meta) = self.broker.topic(topic) else {
                continue;
            };
            for p in 0..meta.partitions {
                let hw = match self.broker.partition(topic, p) {
                    Some(part) => Ok(part.high_watermark()),
                    None => self.remote_offset(topic, p, true),
                };
                match hw {
                    Ok(hw) => out.push((topic.clone(), p, hw)),
                    // The stage then starts at the high watermark it sees.
                    Err(e) => {
                        tracing::warn!(topic, partition = p, error = %e, "CEP: high watermark unknown at registration")
                    }
                }
            }
        }
        out
    }

    /// Appends one record (a tombstone when `value` is None) to the definitions topic, durably.
    /// Committed by a majority when replicated: on this node if it leads the topic's
    /// partition, else forwarded to its leader with acks=all. Returns once this node's
    /// replica has it too, so that listing here shows the change.
    fn persist(&self, id: &str, value: Option<&[u8]>) -> Result<(), String> {
        let now = now_ms();
        let mut b = BatchBuilder::new(Compression::None);
        b.push(now, Some(id.as_bytes()), value, &[]);
        let set = b.build().map_err(|e| e.to_string())?;
        let local = self.broker.partition(DEFINITIONS_TOPIC, 0);
        let last = self.append_to(DEFINITIONS_TOPIC, 0, set)?;
        if let Some(p) = local {
            if !wait_for(|| p.high_watermark() > last, COMMIT_TIMEOUT) {
                return Err(format!(
                    "stored, but this node's replica of {DEFINITIONS_TOPIC}-0 did not catch up"
                ));
            }
            self.definitions_seen.store(i64::MIN, Ordering::Release);
        }
        Ok(())
    }

    /// Appends a record set to a partition and waits until it is committed: on this
    /// node if it leads the partition (acks=all: refused below min.insync.replicas),
    /// else forwarded to the leader with acks=all. Returns the last offset written.
    fn append_to(&self, topic: &str, partition: i32, mut set: Vec<u8>) -> Result<i64, String> {
        let local = self
            .broker
            .partition(topic, partition)
            .filter(|p| p.is_leader());
        if let Some(part) = local {
            let appended = part
                .append_with_acks(&mut set, now_ms(), true)
                .map_err(|(_, m)| format!("appending to {topic}-{partition}: {m}"))?;
            wait_appended(&part, &appended)
                .map_err(|e| format!("appending to {topic}-{partition}: {e}"))?;
            return Ok(appended.last_offset);
        }
        let count = records::batches(&set)
            .filter_map(|b| b.ok())
            .map(|(h, _)| i64::from(h.last_offset_delta) + 1)
            .sum::<i64>();
        let client = self.broker.forwarder().map_err(|e| {
            format!("connecting to the cluster to reach the leader of {topic}-{partition}: {e}")
        })?;
        let produced = crate::ingest::block_on(client.produce(
            topic,
            partition,
            Bytes::from(set),
            -1,
            COMMIT_TIMEOUT,
        ))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("forwarding to the leader of {topic}-{partition}: {e}"))?;
        Ok(produced.base_offset + count - 1)
    }

    /// The stored form of a definition.
    fn stored_value(json: &str, paused: bool, from: &[(String, i32, i64)]) -> Vec<u8> {
        let def = serde_json::from_str::<Value>(json).unwrap_or(Value::String(json.to_string()));
        let mut v = json!({ "definition": def, "paused": paused });
        if !from.is_empty() {
            v["from"] = json!(from);
        }
        v.to_string().into_bytes()
    }

    /// Parses and registers a definition and stores it. Blocking.
    pub fn register(&self, text: &str, sql: bool) -> Result<String, Failure> {
        let def: Definition = if sql {
            parse_sql(text)
        } else {
            parse_definition_json(text)
        }
        .map_err(|e| Failure::cep(StatusCode::BAD_REQUEST, &e))?;
        if let Definition::Alert(a) = &def {
            if let Some(url) = &a.emit.webhook {
                httpc::parse_url(url).map_err(|e| {
                    Failure(
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("emit.webhook: {e}"), "field": "emit.webhook"}),
                    )
                })?;
            }
        }
        let json = def.to_json();
        // Registrations on other nodes first (a taken id is a conflict).
        self.sync_definitions();
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
            self.admin_epoch.fetch_add(1, Ordering::AcqRel);
            let mut sources = Vec::new();
            if let Some(info) = engine.definitions().into_iter().find(|d| d.id == id) {
                for t in &info.sources {
                    self.seed_positions(t, !before.contains(t));
                }
                sources = info.sources;
            }
            (id, self.start_positions(&sources))
        };
        let (id, from) = id;
        if let Err(e) = self.persist(&id, Some(&Self::stored_value(&json, false, &from))) {
            let mut engine = self.engine.lock();
            engine.remove(&id);
            self.admin_epoch.fetch_add(1, Ordering::AcqRel);
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
        self.sync_definitions();
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
        {
            let mut engine = self.engine.lock();
            engine.remove(id);
            self.admin_epoch.fetch_add(1, Ordering::AcqRel);
        }
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

    /// Pauses or resumes a definition and stores that. Blocking. False: unknown id.
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<bool, Failure> {
        self.sync_definitions();
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
        if info.paused != paused {
            self.persist(id, Some(&Self::stored_value(&info.json, paused, &[])))
                .map_err(|e| {
                    Failure::msg(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("storing the pause state: {e}"),
                    )
                })?;
        }
        let mut engine = self.engine.lock();
        self.admin_epoch.fetch_add(1, Ordering::AcqRel);
        Ok(if paused {
            engine.pause(id)
        } else {
            engine.resume(id)
        })
    }

    /// Records of `topic` not read by the stage yet.
    fn lag(&self, topic: &str, positions: &HashMap<(String, i32), i64>, engine: &Engine) -> i64 {
        let Some(meta) = self.broker.topic(topic) else {
            return 0;
        };
        (0..meta.partitions)
            .filter(|&p| engine.reads(topic, p))
            .filter_map(|p| {
                let part = self.broker.partition(topic, p)?;
                let pos = positions
                    .get(&(topic.to_string(), p))
                    .copied()
                    .unwrap_or_else(|| part.log.log_start_offset());
                Some((part.high_watermark() - pos).max(0))
            })
            .sum()
    }

    pub fn stats(&self) -> Value {
        let engine = self.engine.lock();
        let (rows, infos) = (engine.stats(), engine.definitions());
        let positions: HashMap<(String, i32), i64> = self
            .positions
            .lock()
            .iter()
            .filter(|((t, p), _)| engine.reads(t, *p))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let remote = self.unhosted.lock().clone();
        let defs: Vec<Value> = rows
            .into_iter()
            .map(|s| {
                let sources = infos
                    .iter()
                    .find(|i| i.id == s.id)
                    .map(|i| i.sources.clone())
                    .unwrap_or_default();
                let lag: i64 = sources
                    .iter()
                    .map(|t| self.lag(t, &positions, &engine))
                    .sum();
                json!({
                    "id": s.id,
                    "events_in": s.stats.events_in,
                    "matches_out": s.stats.outputs,
                    "outputs": s.stats.outputs,
                    "partial_matches": s.partial_matches,
                    "lag": lag,
                    "evictions": s.stats.evictions,
                    "late": s.stats.late,
                    "not_json": s.stats.not_json,
                    "invalid_time": s.stats.invalid_time,
                    "suppressed": s.stats.suppressed,
                    "keys": s.keys,
                    "windows_open": s.windows_open,
                })
            })
            .collect();
        drop(engine);
        let mut sources: Vec<(String, i32, i64)> = positions
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        sources.sort();
        let sources: Vec<Value> = sources
            .into_iter()
            .map(|(t, p, o)| {
                // Read from another node: its high watermark as of the last pass.
                let hw = match self.broker.partition(&t, p) {
                    Some(x) => Some(x.high_watermark()),
                    None => remote.get(&(t.clone(), p)).copied(),
                };
                json!({"topic": t, "partition": p, "position": o, "high_watermark": hw})
            })
            .collect();
        let unhosted: Vec<Value> = remote
            .iter()
            .map(|((t, p), hw)| json!({"topic": t, "partition": p, "high_watermark": hw}))
            .collect();
        json!({
            // This shard runs on the leader of its partition of __cep_checkpoints; elsewhere
            // the counters and positions are empty (the definitions are listed).
            "stage_node": self.stage_node(),
            "stage_running": self.stage_term.load(Ordering::Acquire) != 0,
            "remote_sources": unhosted,
            "definitions": defs,
            "sources": sources,
            "live_subscribers": self.live.receiver_count(),
            "timings": self.timings.lock().to_json(),
            "webhooks": {
                "sent": self.webhooks.sent.load(Ordering::Relaxed),
                "failed": self.webhooks.failed.load(Ordering::Relaxed),
            },
        })
    }

    /// The source partitions with the position to read from (positions of new ones set).
    /// Never blocks on the network (the stage's loop calls it on the runtime).
    fn source_partitions(&self) -> Vec<(Source, i64)> {
        // This shard's partitions of each source topic.
        let wanted: Vec<(String, Vec<i32>)> = {
            let engine = self.engine.lock();
            engine
                .sources()
                .into_iter()
                .filter_map(|topic| {
                    let meta = self.broker.topic(&topic)?;
                    let mine = (0..meta.partitions)
                        .filter(|&p| engine.reads(&topic, p))
                        .collect();
                    Some((topic, mine))
                })
                .collect()
        };
        let mut out = Vec::new();
        let mut positions = self.positions.lock();
        for (topic, mine) in wanted {
            for p in mine {
                let Some(part) = self.broker.partition(&topic, p) else {
                    // No replica here: read from the leader. A partition not read yet
                    // starts at 0 (a fetch below the log start moves to it).
                    if let btree_map::Entry::Vacant(v) =
                        self.unhosted.lock().entry((topic.clone(), p))
                    {
                        v.insert(-1);
                        tracing::info!(topic = %topic, partition = p, "CEP source partition has no replica on the stage's node: read from its leader");
                    }
                    let pos = *positions.entry((topic.clone(), p)).or_insert(0);
                    out.push((
                        Source::Remote {
                            topic: topic.clone(),
                            index: p,
                        },
                        pos,
                    ));
                    continue;
                };
                let start = part.log.log_start_offset();
                let pos = positions.entry((topic.clone(), p)).or_insert(start);
                // Deleted and recreated, or truncated by retention. A follower's
                // replica may lag the position (recorded by another node): only a
                // leader, which holds every committed record, can tell.
                let beyond = if part.is_leader() {
                    *pos > part.high_watermark().max(part.log.log_end_offset())
                } else {
                    false
                };
                if beyond || *pos < start {
                    *pos = start;
                }
                out.push((Source::Local(part), *pos));
            }
        }
        out
    }

    /// A source partition: this node's replica, else its leader.
    fn source(&self, topic: &str, index: i32) -> Source {
        match self.broker.partition(topic, index) {
            Some(p) => Source::Local(p),
            None => Source::Remote {
                topic: topic.to_string(),
                index,
            },
        }
    }

    /// The committed high watermark of a source partition (asked of its leader when
    /// this node has no replica).
    fn source_high_watermark(&self, src: &Source) -> Result<i64, String> {
        match src {
            Source::Local(p) => Ok(p.high_watermark()),
            Source::Remote { topic, index } => self.remote_offset(topic, *index, true),
        }
    }

    /// ListOffsets (latest: the high watermark, or earliest) of a partition, from its leader.
    fn remote_offset(&self, topic: &str, index: i32, latest: bool) -> Result<i64, String> {
        let client = self.broker.forwarder().map_err(|e| {
            format!("connecting to the cluster to reach the leader of {topic}-{index}: {e}")
        })?;
        let spec = if latest {
            crate::client::OffsetSpec::Latest
        } else {
            crate::client::OffsetSpec::Earliest
        };
        crate::ingest::block_on(client.list_offset(topic, index, spec))
            .map_err(|e| e.to_string())?
            .map(|(offset, _)| offset)
            .map_err(|e| format!("the offsets of {topic}-{index}: {e}"))
    }

    /// Committed records of a source partition from `from` up to `end` (exclusive; at
    /// most about [`READ_BYTES`] of them) and the offset to read next.
    fn read_source(
        &self,
        src: &Source,
        from: i64,
        end: i64,
    ) -> Result<(Vec<records::Record>, i64), String> {
        if from >= end {
            return Ok((Vec::new(), from));
        }
        match src {
            Source::Local(part) => {
                let read = part
                    .log
                    .read(from, READ_BYTES, true)
                    .map_err(|e| format!("reading {}-{} at {from}: {e}", part.topic, part.index))?;
                let mut out = Vec::new();
                let mut next = from;
                for chunk in &read.batches {
                    let (recs, after) = decode_chunk(chunk, next, end);
                    next = after;
                    out.extend(recs);
                }
                Ok((out, next))
            }
            Source::Remote { topic, index } => {
                let client = self.broker.forwarder().map_err(|e| {
                    format!(
                        "connecting to the cluster to read {topic}-{index} from its leader: {e}"
                    )
                })?;
                let fetched = crate::ingest::block_on(client.fetch(
                    topic,
                    *index,
                    from,
                    READ_BYTES as i32,
                    REMOTE_FETCH_WAIT,
                ))
                .map_err(|e| e.to_string())?;
                let fetched = match fetched {
                    Ok(f) => f,
                    // Below the log start (retention): continue from there, as with
                    // a local replica.
                    Err(e) if e.kafka_code() == Some(1) => {
                        let start = self.remote_offset(topic, *index, false)?;
                        return Ok((Vec::new(), start.max(from).min(end)));
                    }
                    Err(e) => {
                        return Err(format!(
                            "fetching {topic}-{index} at {from} from its leader: {e}"
                        ))
                    }
                };
                let end = end.min(fetched.high_watermark);
                Ok(decode_chunk(&fetched.records, from, end))
            }
        }
    }

    /// One pass over every source partition; true if any record was read. Blocking.
    fn pass(&self) -> bool {
        let pass_started = Instant::now();
        // Definitions registered, deleted or paused on other nodes.
        self.sync_definitions();
        let mut outputs = Vec::new();
        let mut reads: Vec<ReadRange> = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        for (src, pos) in self.source_partitions() {
            let read = self.source_high_watermark(&src).and_then(|hw| {
                if let Source::Remote { topic, index } = &src {
                    self.unhosted.lock().insert((topic.clone(), *index), hw);
                }
                self.read_source(&src, pos, hw)
            });
            let (recs, next) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic = %src.topic(), partition = src.index(), error = %e, "CEP stage cannot read");
                    continue;
                }
            };
            if next <= pos {
                continue;
            }
            if let Some(newest) = recs.iter().map(|r| r.timestamp).max() {
                let age = Duration::from_millis(now_ms().saturating_sub(newest).max(0) as u64);
                record_us(&mut self.timings.lock().record_age, age);
            }
            reads.push((src.topic().to_string(), src.index(), pos, next));
            runs.push((src.topic().to_string(), src.index(), recs));
        }
        if !runs.is_empty() {
            let started = Instant::now();
            let mut engine = self.engine.lock();
            process_merged(&mut engine, &runs, &mut outputs);
            record_us(&mut self.timings.lock().process, started.elapsed());
            // Under the engine lock: a snapshot never sees the engine past records
            // whose position is not recorded.
            let mut positions = self.positions.lock();
            for (topic, partition, _, next) in &reads {
                positions.insert((topic.clone(), *partition), *next);
            }
        }
        let now = now_ms();
        outputs.extend(self.engine.lock().on_processing_time(now));
        let progressed = !reads.is_empty();
        let events: i64 = reads.iter().map(|r| r.3 - r.2).sum();
        let (n_outputs, matched) = (outputs.len(), pass_started.elapsed());
        self.commit(outputs, reads, now);
        let took = pass_started.elapsed();
        if took >= SLOW_PASS {
            tracing::debug!(
                total_ms = took.as_secs_f64() * 1e3,
                read_and_match_ms = matched.as_secs_f64() * 1e3,
                record_and_write_ms = (took - matched).as_secs_f64() * 1e3,
                offsets = events,
                outputs = n_outputs,
                "CEP slow pass"
            );
        }
        progressed
    }

    /// Records the pass (a snapshot or a log entry, with the planned writes), then
    /// writes the outputs.
    fn commit(&self, outputs: Vec<Output>, reads: Vec<ReadRange>, now: i64) {
        let epoch = self.admin_epoch.load(Ordering::Acquire);
        let busy = !outputs.is_empty() || !reads.is_empty();
        // A change of definitions or pause state (or a gap in the log): a snapshot now,
        // on this thread. Otherwise, periodically: a log entry, then a snapshot encoded
        // and written by another thread.
        let (forced, periodic) = {
            let wal = self.wal.lock();
            (
                wal.snapshot_epoch != epoch,
                busy && (wal.last_snapshot.elapsed()
                    >= SNAPSHOT_INTERVAL.max(wal.snapshot_cost * SNAPSHOT_COST_FACTOR)
                    || wal.entries >= SNAPSHOT_EVERY),
            )
        };
        let snapshot = forced;
        if !busy && !snapshot {
            // Timers ran without effect on outputs; the next log entry replays the
            // latest such clock reading before its own reads (later readings subsume
            // earlier ones).
            self.wal.lock().idle_now = Some(now);
            return;
        }
        let writes = match self.plan(outputs) {
            Ok(w) => w,
            Err(e) => {
                // The engine is past records whose pass is not recorded: start over
                // from the last recorded pass.
                tracing::error!(error = %e, "CEP pass not recorded (its outputs cannot be placed): recovering from the last recorded pass");
                self.needs_recovery.store(true, Ordering::Release);
                return;
            }
        };
        let started = Instant::now();
        let recorded = if snapshot {
            self.write_snapshot(&writes)
        } else {
            self.write_log_entry(reads, now, &writes).map(|()| {
                if periodic {
                    self.start_snapshot();
                }
            })
        };
        if let Err(e) = recorded {
            // Writing outputs of an unrecorded pass could duplicate them (the next
            // stage reads and matches the records again), so none are written: the
            // state is recovered from the last recorded pass and the records read again.
            self.wal.lock().snapshot_epoch = u64::MAX;
            tracing::error!(error = %e, "CEP pass not recorded: its outputs are not written; recovering from the last recorded pass");
            self.needs_recovery.store(true, Ordering::Release);
            return;
        }
        record_us(&mut self.timings.lock().checkpoint, started.elapsed());
        #[cfg(test)]
        if self.crash_after_checkpoint.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        // Leadership moved: the new stage redoes this pass's writes.
        if !self.still_stage() {
            tracing::warn!(shard = self.shard.index, "CEP stage lost leadership of {CHECKPOINT_TOPIC}-{} before writing its outputs: the new stage writes them", self.ckpt());
            self.needs_recovery.store(true, Ordering::Release);
            return;
        }
        // Every output partition's write at once (one per partition, each recorded
        // above), then their commits.
        let mut failed = false;
        let mut under_way = Vec::with_capacity(writes.len());
        for w in &writes {
            match self.start_planned(w, &w.records, w.producer) {
                Ok(p) => under_way.push((w, p)),
                Err(e) => {
                    tracing::error!(topic = %w.topic, partition = w.partition, error = %e, "CEP outputs not written: recovering, which redoes them");
                    failed = true;
                    break;
                }
            }
        }
        for (w, pending) in under_way {
            match self.finish_planned(pending) {
                Ok(base) => self.publish(w, base),
                Err(e) => {
                    // Recovery redoes the recorded writes (appending only what is missing).
                    tracing::error!(topic = %w.topic, partition = w.partition, error = %e, "CEP outputs not written: recovering, which redoes them");
                    failed = true;
                }
            }
        }
        if failed {
            self.needs_recovery.store(true, Ordering::Release);
            return;
        }
        if !writes.is_empty() {
            record_us(&mut self.timings.lock().write, started.elapsed());
        }
    }

    /// Assigns outputs to partitions (creating output topics) and notes their end offsets.
    /// Errs when an output partition's end offset cannot be learnt.
    fn plan(&self, outputs: Vec<Output>) -> Result<Vec<PlannedWrite>, String> {
        let mut by_topic: BTreeMap<String, Vec<Output>> = BTreeMap::new();
        for o in outputs {
            by_topic.entry(o.topic.clone()).or_default().push(o);
        }
        let mut writes = Vec::new();
        for (topic, outs) in by_topic {
            if is_internal_topic(&topic) || topic == DEFINITIONS_TOPIC || topic == CHECKPOINT_TOPIC
            {
                tracing::error!(topic = %topic, dropped = outs.len(), "CEP outputs cannot go to an internal topic");
                continue;
            }
            let meta = match self.broker.topic(&topic) {
                Some(m) => m,
                None => match self.broker.auto_create(&topic) {
                    Ok(m) => m,
                    Err((_, m)) => {
                        tracing::error!(topic = %topic, error = %m, dropped = outs.len(), "CEP output topic cannot be created");
                        continue;
                    }
                },
            };
            let count = meta.partitions.max(1);
            let mut by_partition: BTreeMap<i32, Vec<PlannedRecord>> = BTreeMap::new();
            for o in outs {
                let p = match &o.key {
                    Some(k) => partition_for_key(k, count as usize),
                    None => {
                        (self.next_partition.fetch_add(1, Ordering::Relaxed) % count as usize)
                            as i32
                    }
                };
                let webhook = match &o.kind {
                    OutputKind::Alert { webhook } => webhook.clone(),
                    _ => None,
                };
                by_partition.entry(p).or_default().push(PlannedRecord {
                    key: o.key,
                    value: o.value,
                    timestamp_ms: o.timestamp_ms,
                    kind: kind_name(&o.kind).to_string(),
                    definition_id: o.definition_id,
                    webhook,
                });
            }
            for (p, records) in by_partition {
                let end_offset = self.end_offset(&topic, p)?;
                let producer = Some(self.take_producer_seq(&topic, p, records.len()));
                writes.push(PlannedWrite {
                    topic: topic.clone(),
                    partition: p,
                    end_offset,
                    records,
                    producer,
                });
            }
        }
        Ok(writes)
    }

    /// An offset at or before where records appended to the partition now land: the
    /// log end where this node leads it, else the leader's high watermark (only the
    /// stage writes output records, and it waits for each write's commit).
    fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, String> {
        if let Some(part) = self
            .broker
            .partition(topic, partition)
            .filter(|p| p.is_leader())
        {
            return Ok(part.log.log_end_offset());
        }
        let client = self.broker.forwarder().map_err(|e| {
            format!("connecting to the cluster to reach the leader of {topic}-{partition}: {e}")
        })?;
        let (offset, _) = crate::ingest::block_on(client.list_offset(
            topic,
            partition,
            crate::client::OffsetSpec::Latest,
        ))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the end offset of {topic}-{partition}: {e}"))?;
        Ok(offset)
    }

    /// The producer id of this shard's output batches.
    fn producer_id(&self) -> i64 {
        CEP_PRODUCER_ID_BASE + self.shard.index as i64
    }

    /// The epoch and first sequence number of a write of `records` records to the
    /// partition, and the producer's next ones past it.
    fn take_producer_seq(&self, topic: &str, partition: i32, records: usize) -> ProducerSeq {
        let mut producers = self.producers.lock();
        let next = producers
            .entry((topic.to_string(), partition))
            .or_insert(ProducerSeq { epoch: 0, seq: 0 });
        let this = *next;
        *next = this.plus(records);
        this
    }

    /// Sets where the producer stands on each partition after `writes` (in order).
    fn note_producer_seqs(&self, writes: &[PlannedWrite]) {
        let mut producers = self.producers.lock();
        for w in writes {
            if let Some(p) = w.producer {
                producers.insert((w.topic.clone(), w.partition), p.plus(w.records.len()));
            }
        }
    }

    fn producers_vec(&self) -> Vec<(String, i32, i16, i32)> {
        self.producers
            .lock()
            .iter()
            .map(|((t, p), s)| (t.clone(), *p, s.epoch, s.seq))
            .collect()
    }

    fn positions_vec(&self) -> Vec<(String, i32, i64)> {
        self.positions
            .lock()
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect()
    }

    /// Appends one record to the checkpoint topic; durably when `durable`. Returns its offset.
    fn append_checkpoint(&self, key: &[u8], value: &[u8], durable: bool) -> Result<i64, String> {
        let p = self
            .broker
            .partition(CHECKPOINT_TOPIC, self.ckpt())
            .ok_or_else(|| format!("{CHECKPOINT_TOPIC}-{} is not open", self.ckpt()))?;
        append_checkpoint_to(&p, key, value, durable)
    }

    /// Appends a snapshot (state, positions, planned writes), durably, and trims the
    /// checkpoint log to start at it.
    fn write_snapshot(&self, writes: &[PlannedWrite]) -> Result<(), String> {
        let started = Instant::now();
        let (state, positions, producers, epoch) = {
            // All under the engine lock (pass updates positions under it too).
            let engine = self.engine.lock();
            (
                engine.checkpoint(),
                self.positions_vec(),
                self.producers_vec(),
                self.admin_epoch.load(Ordering::Acquire),
            )
        };
        let seq = {
            // A sequence number of its own: greater than that of any periodic
            // snapshot captured before (which may still be being written).
            let mut wal = self.wal.lock();
            wal.seq += 1;
            wal.seq
        };
        let header = CheckpointHeader {
            seq,
            positions,
            writes: writes.to_vec(),
            producers,
        };
        let value = encode_snapshot(&header, &state)?;
        let p = self
            .broker
            .partition(CHECKPOINT_TOPIC, self.ckpt())
            .ok_or_else(|| format!("{CHECKPOINT_TOPIC}-{} is not open", self.ckpt()))?;
        let offset = append_snapshot_to(&p, seq, &value, || Ok(()))?;
        let cost = started.elapsed();
        tracing::debug!(
            bytes = value.len(),
            ms = cost.as_millis() as u64,
            "CEP snapshot written"
        );
        {
            let mut wal = self.wal.lock();
            wal.snapshot_epoch = epoch;
            wal.last_snapshot = Instant::now();
            wal.snapshot_cost = cost;
            wal.entries = 0;
            wal.idle_now = None;
        }
        // Everything before the snapshot is committed (it is): trimmed on this node's
        // replica (other replicas keep theirs; recovery reads from the newest snapshot).
        if let Some(p) = self.broker.partition(CHECKPOINT_TOPIC, self.ckpt()) {
            if p.is_leader() {
                if let Err(e) = p.log.delete_before(offset) {
                    tracing::warn!(error = %e, "CEP checkpoint log not trimmed");
                }
            }
        }
        Ok(())
    }

    /// Captures the state (after the log entry just written) and writes it as a snapshot
    /// on another thread; then trims the log to the entries after it. At most one runs.
    fn start_snapshot(&self) {
        let mut slot = self.snapshot_thread.lock();
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = slot.take() {
            let _ = h.join();
        }
        let Some(p) = self.broker.partition(CHECKPOINT_TOPIC, self.ckpt()) else {
            return;
        };
        let started = Instant::now();
        let (captured, (positions, producers), seq) = {
            let engine = self.engine.lock();
            let seq = {
                let mut wal = self.wal.lock();
                wal.entries = 0;
                wal.last_snapshot = Instant::now();
                wal.seq
            };
            (
                engine.capture(),
                (self.positions_vec(), self.producers_vec()),
                seq,
            )
        };
        // Entries after the captured state are appended from here on.
        let trim_to = p.log.log_end_offset();
        let wal = self.wal.clone();
        // Written only while this node runs the stage in the same term: a snapshot of a
        // deposed stage must not land after a new one recovered.
        let stage_term = self.stage_term.clone();
        let term = stage_term.load(Ordering::Acquire);
        let spawned = std::thread::Builder::new()
            .name("cep-snapshot".into())
            .spawn(move || {
                lower_priority();
                let encode_started = Instant::now();
                let state = captured.encode();
                let encode_ms = encode_started.elapsed().as_millis() as u64;
                // The capture shares the engine's per-key state; while it is alive, the
                // stage copies each key it changes. Release it before the slow append.
                drop(captured);
                let header = CheckpointHeader {
                    seq,
                    positions,
                    writes: Vec::new(),
                    producers,
                };
                let result = encode_snapshot(&header, &state).and_then(|value| {
                    append_snapshot_to(&p, seq, &value, || {
                        if stage_term.load(Ordering::Acquire) != term {
                            return Err("this node stopped running the stage".to_string());
                        }
                        Ok(())
                    })
                    .map(|_| value.len())
                });
                match result {
                    Ok(bytes) => {
                        let cost = started.elapsed();
                        tracing::debug!(bytes, ms = cost.as_millis() as u64, encode_ms, seq, "CEP snapshot written");
                        wal.lock().snapshot_cost = cost;
                        if p.is_leader() {
                            if let Err(e) = p.log.delete_before(trim_to) {
                                tracing::warn!(error = %e, "CEP checkpoint log not trimmed");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "CEP snapshot not written (the log entries since the last one are kept)")
                    }
                }
            });
        match spawned {
            Ok(h) => *slot = Some(h),
            Err(e) => tracing::warn!(error = %e, "cannot start the CEP snapshot thread"),
        }
    }

    /// Appends a log entry (ranges read, clock, positions, planned writes); durably if
    /// outputs follow it.
    fn write_log_entry(
        &self,
        reads: Vec<ReadRange>,
        now: i64,
        writes: &[PlannedWrite],
    ) -> Result<(), String> {
        let (seq, idle_now_ms) = {
            let mut wal = self.wal.lock();
            wal.seq += 1;
            wal.entries += 1;
            (wal.seq, wal.idle_now.take())
        };
        let entry = LogEntry {
            seq,
            idle_now_ms,
            reads,
            merged: true,
            now_ms: now,
            positions: self.positions_vec(),
            writes: writes.to_vec(),
        };
        let mut value = LOG_ENTRY_MAGIC.to_vec();
        serde_json::to_writer(&mut value, &entry)
            .map_err(|e| format!("encoding a log entry: {e}"))?;
        let key = format!("log/{}/{seq}", now_ms());
        self.append_checkpoint(key.as_bytes(), &value, !writes.is_empty())?;
        Ok(())
    }

    /// Appends `records` to the planned partition, committed; returns the first offset.
    /// Committed by a majority (written, on a single node); forwarded to the partition's
    /// leader when another node leads it. `producer`: the epoch and sequence number of
    /// the first of `records` (None: written without a producer id).
    fn append_planned(
        &self,
        w: &PlannedWrite,
        records: &[PlannedRecord],
        producer: Option<ProducerSeq>,
    ) -> Result<i64, WriteFailed> {
        let pending = self.start_planned(w, records, producer)?;
        self.finish_planned(pending)
    }

    /// Starts appending `records` to the planned partition ([`Cep::finish_planned`]
    /// waits for the commit): a pass's writes to several partitions are under way at
    /// once, each partition's in order.
    fn start_planned(
        &self,
        w: &PlannedWrite,
        records: &[PlannedRecord],
        producer: Option<ProducerSeq>,
    ) -> Result<InFlight, WriteFailed> {
        let batches = output_batches(records, producer.map(|p| (self.producer_id(), p)))
            .map_err(WriteFailed::other)?;
        let requests: Vec<Vec<u8>> = if producer.is_some() {
            // An idempotent produce carries one batch.
            batches.into_iter().map(|(_, b)| b).collect()
        } else if batches.is_empty() {
            Vec::new()
        } else {
            vec![batches.into_iter().flat_map(|(_, b)| b).collect()]
        };
        if requests.is_empty() {
            return Ok(InFlight::Done(Ok(w.end_offset)));
        }
        let (topic, partition) = (w.topic.as_str(), w.partition);
        let local = self
            .broker
            .partition(topic, partition)
            .filter(|p| p.is_leader());
        if let Some(part) = local {
            let mut appended = Vec::with_capacity(requests.len());
            for mut set in requests {
                let a = part
                    .append_with_acks(&mut set, now_ms(), true)
                    .map_err(|(e, m)| {
                        WriteFailed::of_code(
                            e.code(),
                            format!("appending to {topic}-{partition}: {m}"),
                        )
                    })?;
                appended.push(a);
            }
            let first = appended.first().map_or(w.end_offset, |a| a.base_offset);
            return Ok(InFlight::Local(part, appended, first));
        }
        let client = self.broker.forwarder().map_err(|e| {
            WriteFailed::other(format!(
                "connecting to the cluster to reach the leader of {topic}-{partition}: {e}"
            ))
        })?;
        let (t, name, end) = (
            topic.to_string(),
            format!("{topic}-{partition}"),
            w.end_offset,
        );
        let forward = async move {
            // In order, each after the last was acknowledged: the leader takes an
            // idempotent producer's batches in sequence order only.
            let mut first = None;
            for set in requests {
                let r = client
                    .produce(&t, partition, Bytes::from(set), -1, COMMIT_TIMEOUT)
                    .await
                    .map_err(|e| {
                        WriteFailed::of_code(
                            e.kafka_code().unwrap_or(0),
                            format!("forwarding to the leader of {name}: {e}"),
                        )
                    })?;
                first.get_or_insert(r.base_offset);
            }
            Ok(first.unwrap_or(end))
        };
        Ok(match tokio::runtime::Handle::try_current() {
            Ok(rt) => InFlight::Remote(rt.spawn(forward)),
            Err(_) => InFlight::Done(
                crate::ingest::block_on(forward)
                    .map_err(|e| WriteFailed::other(e.to_string()))
                    .and_then(|r| r),
            ),
        })
    }

    /// Waits for a write [`Cep::start_planned`] started; returns its first offset.
    fn finish_planned(&self, pending: InFlight) -> Result<i64, WriteFailed> {
        match pending {
            InFlight::Local(part, appended, first) => {
                for a in &appended {
                    let done = if a.wrote {
                        wait_appended(&part, a)
                    } else if wait_for(|| part.high_watermark() > a.last_offset, COMMIT_TIMEOUT) {
                        // A batch sent before (the leader answered with its offsets):
                        // done once that one is committed.
                        Ok(())
                    } else {
                        Err(format!(
                            "offset {} was not committed in time",
                            a.last_offset
                        ))
                    };
                    done.map_err(|e| {
                        WriteFailed::other(format!(
                            "appending to {}-{}: {e}",
                            part.topic, part.index
                        ))
                    })?;
                }
                Ok(first)
            }
            InFlight::Remote(task) => crate::ingest::block_on(task)
                .map_err(|e| WriteFailed::other(e.to_string()))?
                .map_err(|e| WriteFailed::other(e.to_string()))?
                .map_err(|e| WriteFailed {
                    message: format!("forwarded write: {}", e.message),
                    ..e
                }),
            InFlight::Done(result) => result,
        }
    }

    /// Completes a checkpoint's planned write: appends the planned records not found, in
    /// order, from its end offset on. Returns (records present, records appended).
    fn redo(&self, w: &PlannedWrite) -> Result<(usize, usize), String> {
        let name = format!("{}-{}", w.topic, w.partition);
        if self
            .broker
            .topic(&w.topic)
            .is_none_or(|m| w.partition >= m.partitions)
        {
            // Deleted since: nothing to complete (retrying could not help).
            tracing::warn!(partition = %name, "CEP outputs of the last checkpoint not redone: the partition does not exist any more");
            return Ok((0, 0));
        }
        let mut found = 0usize;
        // The planned records in order, among the partition's records: among this
        // shard's batches when it wrote them as its producer (older checkpoints: among
        // all records, where only the stage should write records equal to them).
        let only = w.producer.map(|_| self.producer_id());
        let compare = |recs: Vec<records::Record>, found: &mut usize| {
            for r in recs {
                let Some(want) = w.records.get(*found) else {
                    break;
                };
                if r.key.as_deref() == want.key.as_deref()
                    && r.value.as_deref() == Some(want.value.as_slice())
                {
                    *found += 1;
                }
            }
        };
        match self.broker.partition(&w.topic, w.partition) {
            Some(part) => {
                // Committed records only, once the partition's records are settled:
                // writes the previous stage had in flight commit (or are dropped)
                // moments after it died.
                let end = if part.is_leader() {
                    if !wait_for(
                        || part.high_watermark() >= part.log.log_end_offset(),
                        CATCH_UP_TIMEOUT,
                    ) {
                        tracing::warn!(partition = %name, "CEP redo: records of the output partition still not committed; comparing with the committed ones");
                    }
                    part.high_watermark()
                } else {
                    // A follower learns of commits a moment after its leader.
                    let leader_hw = self.end_offset(&w.topic, w.partition)?;
                    if !wait_for(|| part.high_watermark() >= leader_hw, CATCH_UP_TIMEOUT) {
                        return Err(format!(
                            "this node's replica of {name} did not catch up with its leader's high watermark {leader_hw}"
                        ));
                    }
                    part.high_watermark()
                };
                let mut pos = w.end_offset.max(part.log.log_start_offset());
                while pos < end && found < w.records.len() {
                    let read = part
                        .log
                        .read(pos, READ_BYTES, true)
                        .map_err(|e| format!("reading {name} at {pos}: {e}"))?;
                    if read.batches.is_empty() {
                        break;
                    }
                    let before = pos;
                    for chunk in &read.batches {
                        let (recs, next) = decode_chunk_of(chunk, pos, end, only);
                        pos = next;
                        compare(recs, &mut found);
                    }
                    if pos == before {
                        break;
                    }
                }
            }
            None => {
                // No replica on this node: the leader's committed records.
                let client = self.broker.forwarder().map_err(|e| {
                    format!("connecting to the cluster to read {name} from its leader: {e}")
                })?;
                let mut pos = w.end_offset;
                while found < w.records.len() {
                    let fetched = crate::ingest::block_on(client.fetch(
                        &w.topic,
                        w.partition,
                        pos,
                        READ_BYTES as i32,
                        Duration::from_millis(100),
                    ))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("fetching {name} at {pos} from its leader: {e}"))?;
                    let hw = fetched.high_watermark;
                    if pos >= hw {
                        break;
                    }
                    let (recs, next) = decode_chunk_of(&fetched.records, pos, hw, only);
                    compare(recs, &mut found);
                    if next <= pos {
                        break;
                    }
                    pos = next;
                }
            }
        }
        let missing = w.records.len() - found;
        if missing > 0 {
            let (from, base) = self.append_missing(w, found)?;
            let rest = PlannedWrite {
                records: w.records[from..].to_vec(),
                ..w.clone()
            };
            self.publish(&rest, base);
        }
        Ok((found, missing))
    }

    /// Appends a planned write's records from the first one not found (`found`) on;
    /// returns the index of the first record sent and the offset it got.
    ///
    /// As the shard's producer, they go as the batches the pass planned, with the same
    /// sequence numbers, from the batch holding the first missing record: should a
    /// deposed stage's copy of the write still be on its way, the leader appends
    /// whichever arrives first and acknowledges the other without appending it. When
    /// the leader's producer state does not continue from the planned sequence (the
    /// records that held it were deleted, or an epoch was bumped before), the records
    /// are sent under a newer epoch from sequence 0, which also fences any copy still
    /// on its way; the shard's producer goes on from there.
    fn append_missing(&self, w: &PlannedWrite, found: usize) -> Result<(usize, i64), String> {
        let key = (w.topic.clone(), w.partition);
        let Some(planned) = w.producer else {
            let base = self
                .append_planned(w, &w.records[found..], None)
                .map_err(|e| e.message)?;
            return Ok((found, base));
        };
        // An earlier redo in this recovery bumped the epoch here: go on from that.
        let bumped = self
            .producers
            .lock()
            .get(&key)
            .copied()
            .filter(|cur| cur.epoch > planned.epoch);
        let (mut from, mut producer) = match bumped {
            Some(cur) => (found, cur),
            None => {
                let starts = output_batches(&w.records, Some((self.producer_id(), planned)))?;
                let from = starts
                    .iter()
                    .map(|(i, _)| *i)
                    .take_while(|i| *i <= found)
                    .last()
                    .unwrap_or(0);
                (from, planned.plus(from))
            }
        };
        let mut step: i16 = 1;
        loop {
            match self.append_planned(w, &w.records[from..], Some(producer)) {
                Ok(base) => {
                    if bumped.is_some() || producer.epoch != planned.epoch {
                        self.producers
                            .lock()
                            .insert(key, producer.plus(w.records.len() - from));
                    }
                    return Ok((from, base));
                }
                Err(e) if e.sequence => {
                    let epoch = producer.epoch.checked_add(step).ok_or_else(|| {
                        format!("no producer epoch left to write with: {}", e.message)
                    })?;
                    tracing::warn!(
                        topic = %w.topic,
                        partition = w.partition,
                        error = %e.message,
                        epoch,
                        "CEP redo: the partition's producer state does not continue from the planned write; writing under a newer epoch"
                    );
                    producer = ProducerSeq { epoch, seq: 0 };
                    // Fresh sequence numbers: only what is missing.
                    from = found;
                    // Where an epoch far above was used, a few doublings reach past it.
                    step = step.saturating_mul(2);
                }
                Err(e) => return Err(e.message),
            }
        }
    }

    /// Tells live subscribers about written outputs and delivers webhooks.
    fn publish(&self, w: &PlannedWrite, base_offset: i64) {
        for (i, r) in w.records.iter().enumerate() {
            if self.live.receiver_count() > 0 {
                let kind = match r.kind.as_str() {
                    "match" => "match",
                    "late" => "late",
                    "dead_letter" => "dead_letter",
                    "window_result" => "window_result",
                    "alert" => "alert",
                    _ => "output",
                };
                let _ = self.live.send(Arc::new(Published {
                    definition_id: r.definition_id.clone(),
                    kind,
                    topic: w.topic.clone(),
                    partition: w.partition,
                    offset: base_offset + i as i64,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key.clone(),
                    value: r.value.clone(),
                }));
            }
            if let Some(url) = &r.webhook {
                self.deliver_webhook(url.clone(), r.value.clone());
            }
        }
    }

    fn deliver_webhook(&self, url: String, body: Vec<u8>) {
        let Some(rt) = self.runtime.lock().clone() else {
            tracing::warn!(url = %url, "no runtime for webhook delivery (stage not started)");
            self.webhooks.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let counters = self.webhooks.clone();
        rt.spawn(async move {
            let target = match httpc::parse_url(&url) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "alert webhook not delivered");
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut last = String::new();
            for attempt in 0..WEBHOOK_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                match httpc::request(
                    &target.authority,
                    "POST",
                    &target.path,
                    Some(("application/json", &body)),
                    WEBHOOK_TIMEOUT,
                )
                .await
                {
                    Ok(r) if r.is_success() => {
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(r) => last = format!("answered {}", r.status),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            tracing::warn!(url = %url, error = %last, "alert webhook not delivered after {WEBHOOK_ATTEMPTS} attempts");
            counters.failed.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Starts the engine stage on the current tokio runtime.
    pub fn start_stage(self: &Arc<Self>) {
        let rt = tokio::runtime::Handle::current();
        *self.runtime.lock() = Some(rt.clone());
        let cep = self.clone();
        // A thread of its own: a pass blocks (fsyncs, commits), and handing each pass to
        // the blocking pool and back cost two cross-thread wake-ups per pass, which on a
        // busy machine is where a match's latency went.
        let spawned = std::thread::Builder::new()
            .name("weir-cep-stage".into())
            .spawn(move || {
                let _entered = rt.enter();
                cep.run(&rt)
            });
        match spawned {
            Ok(h) => *self.task.lock() = Some(h),
            Err(e) => tracing::error!(error = %e, "cannot start the CEP stage thread"),
        }
    }

    /// Runs `f`, logging a panic instead of ending the stage's thread with it.
    fn guarded<T>(&self, what: &str, f: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::error!("CEP stage: {what} panicked");
                None
            }
        }
    }

    /// Waits (on the stage's thread) until `changed` is notified or `timeout` passes.
    fn idle(&self, rt: &tokio::runtime::Handle, timeout: Duration) {
        rt.block_on(async {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(timeout) => {}
            }
        });
    }

    /// The stage's loop, on its own thread. It runs passes only while this node leads
    /// its partition of `__cep_checkpoints` in the term it recovered in; on gaining that leadership
    /// (once everything in its log is committed) it recovers, on losing it (or after a
    /// pass that could not be recorded or written) it drops the state.
    fn run(self: Arc<Self>, rt: &tokio::runtime::Handle) {
        let mut woken: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            let leadership = self.checkpoint_leadership();
            let active = self.stage_term.load(Ordering::Acquire);
            let running = active != 0
                && !self.needs_recovery.load(Ordering::Acquire)
                && matches!(leadership,
                    StageLeadership::Ready(t) | StageLeadership::CatchingUp(t) if t == active);
            if !running {
                if active != 0 || self.needs_recovery.load(Ordering::Acquire) {
                    self.guarded("stopping", || self.relinquish());
                    continue;
                }
                if let StageLeadership::Ready(term) = leadership {
                    match self.guarded("recovery", || self.recover()) {
                        Some(Ok(())) => {
                            self.stage_term.store(term, Ordering::Release);
                            tracing::info!(
                                term,
                                shard = self.shard.index,
                                "running the CEP stage (this node leads {CHECKPOINT_TOPIC}-{})",
                                self.ckpt()
                            );
                        }
                        Some(Err(e)) => {
                            tracing::error!(error = %format!("{e:#}"), "CEP stage recovery failed; retrying");
                            self.idle(rt, RECOVERY_BACKOFF);
                        }
                        None => self.idle(rt, RECOVERY_BACKOFF),
                    }
                    continue;
                }
                // Not the stage: keep the definitions current for listing, and this
                // node's copy of the checkpoint log as short as the stage keeps its own.
                self.guarded("reading definitions", || self.sync_definitions());
                self.guarded("trimming the checkpoint replica", || {
                    self.trim_checkpoint_replica()
                });
                self.idle(rt, LEADERSHIP_POLL);
                continue;
            }
            if let Some(at) = woken.take() {
                record_us(&mut self.timings.lock().handoff, at.elapsed());
            }
            let progressed = self.guarded("pass", || self.pass()).unwrap_or(false);
            if progressed {
                continue;
            }
            // Register for new data, then look again so that an append in between wakes us.
            let notify = Arc::new(Notify::new());
            let mut pending = false;
            // Partitions read from another node are looked at every TICK.
            for (src, pos) in self.source_partitions() {
                if let Source::Local(part) = src {
                    part.add_waiter(notify.clone());
                    pending |= part.high_watermark() > pos;
                }
            }
            // Definitions registered on other nodes wake the stage too.
            if let Some(p) = self.broker.partition(DEFINITIONS_TOPIC, 0) {
                p.add_waiter(notify.clone());
                pending |= p.high_watermark() != self.definitions_seen.load(Ordering::Acquire);
            }
            if pending || self.needs_recovery.load(Ordering::Acquire) {
                continue;
            }
            rt.block_on(async {
                tokio::select! {
                    _ = notify.notified() => woken = Some(Instant::now()),
                    _ = self.changed.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            });
        }
    }

    /// Stops the stage and waits for its current pass to end.
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.changed.notify_one();
        let handle = self.task.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let snapshot = self.snapshot_thread.lock().take();
        if let Some(h) = snapshot {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// This node's CEP: one stage per shard, the HTTP API over them.
///
/// The work is split into shards, one per partition of `__cep_checkpoints` (as many as
/// the cluster had nodes when the topic was created: one on a single node). Shard `i`
/// runs on the Raft leader of `__cep_checkpoints-i` with its own engine state, positions
/// and write-ahead log in that partition; patterns get the source partitions
/// `p ≡ i (mod shards)`, windowed queries and alert rules all of their source in the
/// shard their id hashes to ([`Engine::set_shard`]). Partition `p` of every topic and
/// `__cep_checkpoints-(p mod shards)` have the same preferred leader (replica lists start
/// at node `p mod nodes`, and leadership returns to the first replica), so while
/// leadership is where it is preferred each source partition's patterns run on the node
/// that leads it, and the stages spread over the cluster.
pub struct CepNode {
    /// By shard index; the first also answers the definition routes (every shard
    /// holds every definition; the others apply changes from the definitions topic).
    shards: Vec<Arc<Cep>>,
    live: broadcast::Sender<Arc<Published>>,
}

impl CepNode {
    /// Creates the internal topics if missing (`__cep_checkpoints` with one partition
    /// per cluster node) and opens every shard's stage. Blocking.
    pub fn open(broker: Arc<Broker>) -> anyhow::Result<Arc<CepNode>> {
        let nodes = broker.cluster_nodes().len().max(1);
        Self::open_with(broker, i32::try_from(nodes).unwrap_or(1))
    }

    /// [`CepNode::open`] with `shards` partitions should the checkpoint topic be created.
    pub fn open_with(broker: Arc<Broker>, shards: i32) -> anyhow::Result<Arc<CepNode>> {
        let count = Cep::ensure_topics(&broker, shards)?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let webhooks = Arc::new(WebhookCounters::default());
        let shards = (0..count)
            .map(|index| {
                Cep::open_shard(
                    broker.clone(),
                    Shard { index, count },
                    live.clone(),
                    webhooks.clone(),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(CepNode { shards, live }))
    }

    fn broker(&self) -> &Arc<Broker> {
        &self.primary().broker
    }

    fn primary(&self) -> &Arc<Cep> {
        // `open_with` makes at least one (`ensure_topics` refuses zero partitions).
        &self.shards[0]
    }

    /// The shards' stages, one thread each.
    pub fn start_stage(&self) {
        for s in &self.shards {
            s.start_stage();
        }
    }

    pub async fn stop(&self) {
        for s in &self.shards {
            s.stop().await;
        }
    }

    /// The other shards pick up a change of definitions now rather than at their next
    /// look (each shard's stage also applies the definitions topic before every pass).
    fn sync_others(&self) {
        for s in &self.shards[1..] {
            s.sync_definitions();
        }
    }

    pub fn register(&self, text: &str, sql: bool) -> Result<String, Failure> {
        let id = self.primary().register(text, sql)?;
        self.sync_others();
        Ok(id)
    }

    pub fn remove(&self, id: &str) -> Result<bool, Failure> {
        let removed = self.primary().remove(id)?;
        self.sync_others();
        Ok(removed)
    }

    pub fn set_paused(&self, id: &str, paused: bool) -> Result<bool, Failure> {
        let done = self.primary().set_paused(id, paused)?;
        self.sync_others();
        Ok(done)
    }

    pub fn list(&self) -> Value {
        self.primary().list()
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        self.primary().get(id)
    }

    /// The shards this node runs, merged: per definition the sums of their counters
    /// (and lag), their source positions, their timings; `shards` says which node runs
    /// each shard. In a cluster every node answers for its own shards only.
    pub fn stats(&self) -> Value {
        let mut defs: Vec<Value> = Vec::new();
        let (mut sources, mut remote, mut shards) = (Vec::new(), Vec::new(), Vec::new());
        let mut timings = StageTimings::new();
        let mut webhooks = json!({});
        for s in &self.shards {
            let mut one = s.stats();
            let running = one["stage_running"].as_bool().unwrap_or(false);
            shards.push(json!({
                "shard": s.shard.index,
                "node": one["stage_node"],
                "running": running,
            }));
            timings.add(&s.timings.lock());
            webhooks = one["webhooks"].take();
            // A shard another node runs has empty counters and a lag meaningless here.
            add_definition_rows(&mut defs, &one["definitions"], running);
            if running {
                for mut src in one["sources"].as_array().cloned().unwrap_or_default() {
                    src["shard"] = json!(s.shard.index);
                    sources.push(src);
                }
                remote.extend(
                    one["remote_sources"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        }
        let running_here = shards.iter().any(|s| s["running"] == json!(true));
        json!({
            // Shard 0's node (a single stage's node before shards; kept for scripts).
            "stage_node": self.primary().stage_node(),
            "stage_running": running_here,
            "shards": shards,
            "remote_sources": remote,
            "definitions": defs,
            "sources": sources,
            "live_subscribers": self.live.receiver_count(),
            "timings": timings.to_json(),
            "webhooks": webhooks,
        })
    }
}

/// Lowers the calling thread's CPU priority (nice 10). The snapshot thread encodes
/// tens of megabytes of JSON (hundreds of milliseconds of CPU) while the stage goes on;
/// on a busy machine it should take idle CPU, not the stage's (whose passes are what
/// the end-to-end latency waits for). Best effort: a failure leaves the priority as is.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes no pointers; on Linux, PRIO_PROCESS with id 0 applies to
    // the calling thread only.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Appends one record to the checkpoint partition; durably when `durable`. Returns its offset.
fn append_checkpoint_to(
    p: &Partition,
    key: &[u8],
    value: &[u8],
    durable: bool,
) -> Result<i64, String> {
    let now = now_ms();
    let compression = if value.len() > 4096 {
        Compression::Lz4
    } else {
        Compression::None
    };
    let mut b = BatchBuilder::new(compression);
    b.push(now, Some(key), Some(value), &[]);
    let mut set = b.build().map_err(|e| e.to_string())?;
    // Only the stage (the partition's leader) appends; a deposed one fails here.
    let appended = p
        .append(&mut set, now)
        .map_err(|(_, m)| format!("appending to {CHECKPOINT_TOPIC}-{}: {m}", p.index))?;
    if durable {
        wait_appended(p, &appended)
            .map_err(|e| format!("appending to {CHECKPOINT_TOPIC}-{}: {e}", p.index))?;
    }
    Ok(appended.base_offset)
}

/// Appends a snapshot's bytes (`WCP1`, from [`encode_snapshot`]) in pieces of
/// [`SNAPSHOT_CHUNK_BYTES`], each committed before the next (`go_on` is asked before
/// each); returns the offset of the first. Recovery uses a snapshot only once it finds
/// every piece, so a crash in between leaves the previous snapshot in charge.
fn append_snapshot_to(
    p: &Partition,
    seq: u64,
    value: &[u8],
    go_on: impl Fn() -> Result<(), String>,
) -> Result<i64, String> {
    let count = value.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
    let count32 = u32::try_from(count).map_err(|_| "snapshot too large".to_string())?;
    let mut first = None;
    for (i, piece) in value.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
        go_on()?;
        let chunk = snapshot_piece(seq, i as u32, count32, piece);
        // Unique keys: compaction must never keep a newer, incomplete snapshot's piece
        // in place of an older complete one's.
        let key = format!("snapshot/{seq}/{i}");
        let offset = append_checkpoint_to(p, key.as_bytes(), &chunk, true)?;
        first.get_or_insert(offset);
    }
    first.ok_or_else(|| "empty snapshot".to_string())
}

/// A `WCS1` record: a snapshot's `index`th piece of `count`.
fn snapshot_piece(seq: u64, index: u32, count: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(PIECE_HEADER_LEN + body.len());
    v.extend_from_slice(SNAPSHOT_CHUNK_MAGIC);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&index.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(body);
    v
}

const PIECE_HEADER_LEN: usize = 20;

/// A `WCS1` record's (sequence number, index, count); None if it is not one or is cut.
fn piece_header(value: &[u8]) -> Option<(u64, u32, u32)> {
    if !value.starts_with(SNAPSHOT_CHUNK_MAGIC) {
        return None;
    }
    let seq = u64::from_be_bytes(value.get(4..12)?.try_into().ok()?);
    let index = u32::from_be_bytes(value.get(12..16)?.try_into().ok()?);
    let count = u32::from_be_bytes(value.get(16..20)?.try_into().ok()?);
    Some((seq, index, count))
}

/// The pieces of snapshots found while reading the checkpoint topic, by sequence number.
#[derive(Default)]
struct SnapshotPieces {
    by_seq: BTreeMap<u64, (u32, BTreeMap<u32, Bytes>)>,
}

impl SnapshotPieces {
    /// Notes a `WCS1` record; errs on a malformed one.
    fn add(&mut self, value: &Bytes) -> Result<u64, String> {
        let (seq, index, count) =
            piece_header(value).ok_or_else(|| "truncated snapshot piece".to_string())?;
        if index >= count {
            return Err(format!("snapshot piece {index} of {count}"));
        }
        let entry = self
            .by_seq
            .entry(seq)
            .or_insert_with(|| (count, BTreeMap::new()));
        if entry.0 != count {
            // A second attempt at the same number, cut differently: the newer one counts.
            *entry = (count, BTreeMap::new());
        }
        entry.1.insert(index, value.slice(PIECE_HEADER_LEN..));
        Ok(seq)
    }

    /// The bytes of the complete snapshot with the highest sequence number.
    fn newest_complete(&self) -> Option<(u64, Vec<u8>)> {
        self.by_seq.iter().rev().find_map(|(seq, (count, pieces))| {
            (pieces.len() == *count as usize).then(|| {
                let mut out = Vec::with_capacity(pieces.values().map(Bytes::len).sum());
                for piece in pieces.values() {
                    out.extend_from_slice(piece);
                }
                (*seq, out)
            })
        })
    }
}

/// What a replica of the checkpoint topic holds, as far as trimming it goes: where
/// each snapshot's pieces and each log entry are.
#[derive(Default)]
struct ReplicaTrim {
    /// The next offset to look at.
    next: i64,
    /// When the replica was last looked at.
    last: Option<Instant>,
    /// Per snapshot number: pieces expected (0: a snapshot in one record), pieces
    /// seen, offset of its first.
    snapshots: BTreeMap<u64, (u32, u32, i64)>,
    /// Per log entry number: its offset.
    entries: BTreeMap<u64, i64>,
}

impl ReplicaTrim {
    /// Notes one record of the checkpoint topic (by its key, and a piece's header).
    fn note(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let key = key.and_then(|k| std::str::from_utf8(k).ok()).unwrap_or("");
        let value = value.unwrap_or(&[]);
        if let Some((seq, _, count)) = piece_header(value) {
            let entry = self.snapshots.entry(seq).or_insert((count, 0, offset));
            if entry.0 != count {
                *entry = (count, 0, offset);
            }
            entry.1 += 1;
        } else if value.starts_with(SNAPSHOT_MAGIC) {
            // A snapshot in one record (before pieces): its number is in its header.
            if let Ok((header, _)) = decode_snapshot_header(value) {
                self.snapshots.insert(header.seq, (0, 0, offset));
            }
        } else if let Some(seq) = key
            .strip_prefix("log/")
            .and_then(|rest| rest.rsplit('/').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.entries.insert(seq, offset);
        }
    }

    /// Where the replica may start: the first record of the newest complete snapshot
    /// or anything numbered after it (entries appended while it was written, a newer
    /// snapshot still being written), whichever comes first. None: no complete one.
    fn keep_from(&self) -> Option<i64> {
        let (&seq, &(_, _, first)) = self
            .snapshots
            .iter()
            .rev()
            .find(|(_, (count, seen, _))| *count == 0 || seen >= count)?;
        let later_entries = self.entries.range(seq + 1..).map(|(_, &o)| o);
        let later_snapshots = self.snapshots.range(seq + 1..).map(|(_, &(_, _, o))| o);
        Some(later_entries.chain(later_snapshots).fold(first, i64::min))
    }

    fn forget_before(&mut self, offset: i64) {
        self.snapshots.retain(|_, (_, _, first)| *first >= offset);
        self.entries.retain(|_, o| *o >= offset);
    }
}

/// Waits until an append is committed by a majority of the partition's replicas,
/// each under its flush policy (on a single node: written, and fsync'd only under
/// `flush.messages=1`), or durable on a partition without Raft. See the module doc,
/// "Durability", for why the stage does not add an fsync of its own.
fn wait_appended(p: &Partition, appended: &crate::partition::Appended) -> Result<(), String> {
    match appended.commit {
        // In slices, asking in between whether this node still leads the partition: a
        // leader cut off from the others steps down (check-quorum) and cannot commit
        // anything more, so waiting out the whole timeout would only keep a deposed
        // stage believing it runs. (Whether the records commit is then up to the new
        // leader; the stage that takes over finds out from the log.)
        Some(ticket) => {
            let deadline = Instant::now() + COMMIT_TIMEOUT;
            loop {
                let slice = COMMIT_POLL.min(deadline.saturating_duration_since(Instant::now()));
                match p.wait_replicated_blocking(ticket, slice) {
                    Ok(()) => return Ok(()),
                    Err((kafka_protocol::error::ResponseError::RequestTimedOut, m)) => {
                        if Instant::now() >= deadline {
                            return Err(m);
                        }
                        if !p.is_leader() {
                            return Err(format!(
                                "this node stopped leading {}-{} before the records were committed",
                                p.topic, p.index
                            ));
                        }
                    }
                    Err((_, m)) => return Err(m),
                }
            }
        }
        None => p
            .log
            .wait_durable(appended.last_offset)
            .map_err(|e| format!("fsync: {e}")),
    }
}

/// Polls `done` until it holds or `timeout` passes; whether it held.
fn wait_for(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sources of definition `id`.
fn sources_of(engine: &Engine, id: &str) -> Vec<String> {
    engine
        .definitions()
        .into_iter()
        .find(|d| d.id == id)
        .map(|d| d.sources)
        .unwrap_or_default()
}

/// Brings the engine's definitions and pause state in line with the definitions topic:
/// drops definitions deleted or replaced since, registers the ones it does not run.
/// Returns whether anything changed, the definitions registered, and the sources of
/// the definitions kept (read before: they continue from their positions).
fn apply_stored<'a>(
    engine: &mut Engine,
    stored: &'a [Stored],
) -> (bool, Vec<&'a Stored>, Vec<String>) {
    let mut changed = false;
    for info in engine.definitions() {
        let keep = stored
            .iter()
            .any(|s| s.id == info.id && same_json(&s.json, &info.json));
        if !keep {
            engine.remove(&info.id);
            changed = true;
            tracing::info!(definition = %info.id, "CEP definition deleted or replaced since: dropped");
        }
    }
    let kept_sources = engine.sources();
    let mut added = Vec::new();
    for s in stored {
        let current = engine.definitions().into_iter().find(|d| d.id == s.id);
        let paused = match current {
            Some(d) => d.paused,
            None => match parse_definition_json(&s.json).and_then(|d| engine.register(d)) {
                Ok(_) => {
                    tracing::info!(definition = %s.id, "CEP definition loaded");
                    changed = true;
                    added.push(s);
                    false
                }
                Err(e) => {
                    tracing::error!(definition = %s.id, error = %e, "not loading a stored CEP definition");
                    continue;
                }
            },
        };
        if paused != s.paused {
            changed = true;
            if s.paused {
                engine.pause(&s.id);
            } else {
                engine.resume(&s.id);
            }
        }
    }
    (changed, added, kept_sources)
}

/// Feeds decoded records of `part` to the engine.
/// Records one pass read from one source partition.
type Run = (String, i32, Vec<records::Record>);

/// Feeds a pass's records to the engine in timestamp order across its source
/// partitions, each partition's records in offset order: a merge of the partitions'
/// runs that always takes the run whose next record is oldest (ties: the run read
/// first), as Kafka Streams picks the next record of a task. Partition by partition,
/// the records of one partition read far ahead of another's would push event time past
/// the other's and make its records late. Deterministic, so a replay feeds the same
/// order.
fn process_merged(engine: &mut Engine, runs: &[Run], outputs: &mut Vec<Output>) {
    use std::cmp::Reverse;
    let mut heads: std::collections::BinaryHeap<Reverse<(i64, usize)>> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, recs))| recs.first().map(|r| Reverse((r.timestamp, i))))
        .collect();
    let mut next = vec![0usize; runs.len()];
    while let Some(Reverse((_, i))) = heads.pop() {
        let (topic, partition, recs) = &runs[i];
        let n = next[i];
        if let Some(r) = recs.get(n) {
            process_records(engine, topic, *partition, std::slice::from_ref(r), outputs);
        }
        next[i] = n + 1;
        if let Some(r) = recs.get(n + 1) {
            heads.push(Reverse((r.timestamp, i)));
        }
    }
}

fn process_records(
    engine: &mut Engine,
    topic: &str,
    partition: i32,
    recs: &[records::Record],
    outputs: &mut Vec<Output>,
) {
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
            topic,
            partition,
            offset: r.offset,
            timestamp_ms: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref().unwrap_or(&[]),
            headers: &headers,
        };
        outputs.extend(engine.process(&rec));
    }
}

/// `WCP1`, the header's length (u32 big-endian), the header (JSON), the engine state.
fn encode_snapshot(header: &CheckpointHeader, state: &[u8]) -> Result<Vec<u8>, String> {
    let h = serde_json::to_vec(header).map_err(|e| format!("encoding a checkpoint: {e}"))?;
    let len = u32::try_from(h.len()).map_err(|_| "checkpoint header too large".to_string())?;
    let mut out = Vec::with_capacity(8 + h.len() + state.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(state);
    Ok(out)
}

/// The batches `records` are written as (a new one when the values would pass
/// [`OUTPUT_BATCH_BYTES`]), each with the index of its first record. With a producer
/// (id, epoch and sequence number of the first record), each batch carries the
/// sequence number of its first record: the same records always give the same batches.
fn output_batches(
    records: &[PlannedRecord],
    producer: Option<(i64, ProducerSeq)>,
) -> Result<Vec<(usize, Vec<u8>)>, String> {
    let builder = |first: usize| {
        let b = BatchBuilder::new(Compression::None);
        match producer {
            Some((id, p)) => {
                let s = p.plus(first);
                b.producer(id, s.epoch, s.seq)
            }
            None => b,
        }
    };
    let mut out = Vec::new();
    let (mut b, mut first) = (builder(0), 0usize);
    for (i, r) in records.iter().enumerate() {
        if !b.is_empty() && b.uncompressed_size() + r.value.len() > OUTPUT_BATCH_BYTES {
            let full = std::mem::replace(&mut b, builder(i));
            out.push((first, full.build().map_err(|e| e.to_string())?));
            first = i;
        }
        b.push(r.timestamp_ms, r.key.as_deref(), Some(&r.value), &[]);
    }
    if !b.is_empty() {
        out.push((first, b.build().map_err(|e| e.to_string())?));
    }
    Ok(out)
}

/// A one-record snapshot's header and the offset of its state in `bytes`.
fn decode_snapshot_header(bytes: &[u8]) -> Result<(CheckpointHeader, usize), String> {
    let rest = bytes
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or("not a checkpoint (bad magic)")?;
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("truncated checkpoint")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let header = rest.get(4..4 + len).ok_or("truncated checkpoint header")?;
    let header: CheckpointHeader =
        serde_json::from_slice(header).map_err(|e| format!("bad checkpoint header: {e}"))?;
    Ok((header, SNAPSHOT_MAGIC.len() + 4 + len))
}

fn decode_snapshot(bytes: &[u8]) -> Result<(CheckpointHeader, Vec<u8>), String> {
    let (header, at) = decode_snapshot_header(bytes)?;
    Ok((header, bytes[at..].to_vec()))
}

/// The records of a chunk of batches with offsets in `from..hw`, and the offset to
/// read next (past whole batches, even when compaction removed their last records).
/// Undecodable batches are logged and skipped.
fn decode_chunk(chunk: &Bytes, from: i64, hw: i64) -> (Vec<records::Record>, i64) {
    decode_chunk_of(chunk, from, hw, None)
}

/// [`decode_chunk`], with `producer`: only the records of that producer id's batches
/// (the offset to read next still passes every batch).
fn decode_chunk_of(
    chunk: &Bytes,
    from: i64,
    hw: i64,
    producer: Option<i64>,
) -> (Vec<records::Record>, i64) {
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
        if header.is_control() || producer.is_some_and(|id| header.producer_id != id) {
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

pub fn router(cep: Arc<CepNode>) -> Router {
    Router::new()
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/cep/stats", get(stats))
        .route("/api/cep/matches", get(matches))
        .route("/api/cep/patterns", get(list).post(create))
        .route("/api/cep/patterns/{id}", get(get_one).delete(delete_one))
        .route("/api/cep/patterns/{id}/pause", post(pause))
        .route("/api/cep/patterns/{id}/resume", post(resume))
        .route("/api/analytics/queries", get(list).post(create))
        .route(
            "/api/analytics/queries/{id}",
            get(get_one).delete(delete_one),
        )
        .route("/api/analytics/queries/{id}/pause", post(pause))
        .route("/api/analytics/queries/{id}/resume", post(resume))
        .with_state(cep)
}

async fn create(State(cep): State<Arc<CepNode>>, headers: HeaderMap, body: Bytes) -> Response {
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

async fn list(State(cep): State<Arc<CepNode>>) -> Response {
    axum::Json(cep.list()).into_response()
}

fn not_found(id: &str) -> Response {
    Failure::msg(StatusCode::NOT_FOUND, format!("no definition {id:?}")).into_response()
}

async fn get_one(State(cep): State<Arc<CepNode>>, Path(id): Path<String>) -> Response {
    match cep.get(&id) {
        Some(v) => axum::Json(v).into_response(),
        None => not_found(&id),
    }
}

async fn delete_one(State(cep): State<Arc<CepNode>>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || cep.remove(&id2)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => not_found(&id),
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure::msg(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn pause(State(cep): State<Arc<CepNode>>, Path(id): Path<String>) -> Response {
    set_paused(cep, id, true).await
}

async fn resume(State(cep): State<Arc<CepNode>>, Path(id): Path<String>) -> Response {
    set_paused(cep, id, false).await
}

async fn set_paused(cep: Arc<CepNode>, id: String, paused: bool) -> Response {
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || cep.set_paused(&id2, paused)).await {
        Ok(Ok(true)) => axum::Json(json!({ "id": id, "paused": paused })).into_response(),
        Ok(Ok(false)) => not_found(&id),
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure::msg(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// How long a node waits for another node's part of a cluster-wide answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Before following another node's live stream again after it ended.
const PEER_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
struct ScopeQuery {
    scope: Option<String>,
}

/// `scope=node`: this node's shards only (what nodes ask each other); `scope=cluster`
/// (the default): every node's.
fn node_scope(scope: Option<&str>) -> Result<bool, Failure> {
    match scope {
        None | Some("cluster") => Ok(false),
        Some("node") => Ok(true),
        Some(other) => Err(Failure::msg(
            StatusCode::BAD_REQUEST,
            format!("scope must be \"node\" or \"cluster\", not {other:?}"),
        )),
    }
}

async fn stats(State(cep): State<Arc<CepNode>>, Query(q): Query<ScopeQuery>) -> Response {
    let local_only = match node_scope(q.scope.as_deref()) {
        Ok(l) => l,
        Err(f) => return f.into_response(),
    };
    let local = cep.stats();
    let peers = if local_only {
        Vec::new()
    } else {
        cep.broker().peer_http()
    };
    if peers.is_empty() {
        return axum::Json(local).into_response();
    }
    let mut asks = tokio::task::JoinSet::new();
    for (node, addr) in peers {
        asks.spawn(async move {
            let answer = httpc::request(
                &addr,
                "GET",
                "/api/cep/stats?scope=node",
                None,
                PEER_TIMEOUT,
            )
            .await;
            let stats = match answer {
                Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body).ok(),
                Ok(r) => {
                    tracing::debug!(node, status = r.status, "CEP stats of another node");
                    None
                }
                Err(e) => {
                    tracing::debug!(node, error = %format!("{e:#}"), "CEP stats of another node");
                    None
                }
            };
            (node, stats)
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = asks.join_next().await {
        if let Ok(a) = done {
            answers.push(a);
        }
    }
    answers.sort_by_key(|(node, _)| *node);
    axum::Json(merge_cluster_stats(cep.broker().node_id(), local, answers)).into_response()
}

/// Adds `definitions` rows of stats (a shard's, or a node's) into `sums` by id, every
/// number summed; not `counted`: a definition not listed yet is, with zeros.
fn add_definition_rows(sums: &mut Vec<Value>, rows: &Value, counted: bool) {
    for row in rows.as_array().into_iter().flatten() {
        let Some(row) = row.as_object() else { continue };
        let Some(sum) = sums.iter_mut().find(|d| d.get("id") == row.get("id")) else {
            let mut first = row.clone();
            if !counted {
                for (_, v) in first.iter_mut().filter(|(k, _)| k.as_str() != "id") {
                    *v = json!(0);
                }
            }
            sums.push(Value::Object(first));
            continue;
        };
        if !counted {
            continue;
        }
        for (k, add) in row {
            if let (Some(a), Some(m)) = (add.as_i64(), sum[k.as_str()].as_i64()) {
                sum[k.as_str()] = json!(m + a);
            }
        }
    }
}

/// Every node's stats (`scope=node`: the shards it runs) as one: per definition the
/// sums of the counters and lag, every node's source positions (with `node`), each
/// shard with the node that runs it, per node its timings (`nodes`; unreachable
/// nodes are listed so). `timings` and `live_subscribers` stay this node's.
fn merge_cluster_stats(me: i32, local: Value, peers: Vec<(i32, Option<Value>)>) -> Value {
    fn tagged(rows: &Value, node: i32) -> Vec<Value> {
        rows.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let mut r = r.clone();
                r["node"] = json!(node);
                r
            })
            .collect()
    }
    let mut out = local.clone();
    let mut nodes = vec![json!({
        "node": me,
        "reachable": true,
        "stage_running": local["stage_running"],
        "timings": local["timings"],
    })];
    let mut sources = tagged(&local["sources"], me);
    let mut remote = tagged(&local["remote_sources"], me);
    let mut shards: Vec<Value> = local["shards"].as_array().cloned().unwrap_or_default();
    for sh in &mut shards {
        if sh["running"] == json!(true) {
            sh["node"] = json!(me);
        }
    }
    let mut defs: Vec<Value> = local["definitions"].as_array().cloned().unwrap_or_default();
    let (mut sent, mut failed) = (
        local["webhooks"]["sent"].as_i64().unwrap_or(0),
        local["webhooks"]["failed"].as_i64().unwrap_or(0),
    );
    for (node, answer) in peers {
        let Some(v) = answer else {
            nodes.push(json!({"node": node, "reachable": false}));
            continue;
        };
        nodes.push(json!({
            "node": node,
            "reachable": true,
            "stage_running": v["stage_running"],
            "timings": v["timings"],
        }));
        sources.extend(tagged(&v["sources"], node));
        remote.extend(tagged(&v["remote_sources"], node));
        for theirs in v["shards"].as_array().into_iter().flatten() {
            if theirs["running"] != json!(true) {
                continue;
            }
            if let Some(sh) = shards.iter_mut().find(|s| s["shard"] == theirs["shard"]) {
                sh["node"] = json!(node);
            }
        }
        add_definition_rows(&mut defs, &v["definitions"], true);
        sent += v["webhooks"]["sent"].as_i64().unwrap_or(0);
        failed += v["webhooks"]["failed"].as_i64().unwrap_or(0);
    }
    sources.sort_by_key(|r| (r["topic"].to_string(), r["partition"].as_i64()));
    out["definitions"] = json!(defs);
    out["sources"] = json!(sources);
    out["remote_sources"] = json!(remote);
    out["shards"] = json!(shards);
    out["nodes"] = json!(nodes);
    out["webhooks"] = json!({"sent": sent, "failed": failed});
    out
}

#[derive(Debug, Deserialize)]
struct MatchesQuery {
    pattern: Option<String>,
    scope: Option<String>,
}

/// An event of another node's live stream, as this node's stream carries it.
fn peer_event(v: &Value) -> SseEvent {
    match v["kind"].as_str() {
        Some(kind) => SseEvent::default()
            .event(kind)
            .id(format!(
                "{}/{}/{}",
                v["topic"].as_str().unwrap_or(""),
                v["partition"],
                v["offset"]
            ))
            .data(v.to_string()),
        // Its `lagged` event ({"missed": n}).
        None => SseEvent::default().event("lagged").data(v.to_string()),
    }
}

/// Follows another node's live stream (`scope=node`) into `tx` until `tx` closes
/// (noticed at the latest at that node's next keep-alive), again after it ends (the
/// node restarted). `ready` fires once its stream answered (or the first try failed).
async fn follow_peer(
    node: i32,
    addr: String,
    pattern: Option<String>,
    tx: mpsc::Sender<SseEvent>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let path = match &pattern {
        Some(p) => format!(
            "/api/cep/matches?scope=node&pattern={}",
            httpc::encode_segment(p)
        ),
        None => "/api/cep/matches?scope=node".to_string(),
    };
    let mut ready = Some(ready);
    while !tx.is_closed() {
        let mut parser = httpc::SseParser::default();
        let mut missed = 0u64;
        let ended = httpc::exchange(&addr, "GET", &path, None, |status, bytes| {
            if status != 200 || tx.is_closed() {
                return std::ops::ControlFlow::Break(());
            }
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            for data in parser.push(bytes) {
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if missed > 0
                    && tx
                        .try_send(
                            SseEvent::default()
                                .event("lagged")
                                .data(json!({ "missed": missed }).to_string()),
                        )
                        .is_ok()
                {
                    missed = 0;
                }
                // A full channel: the reader is slow; counted as a local subscriber's lag is.
                if tx.try_send(peer_event(&v)).is_err() {
                    missed += 1;
                }
            }
            std::ops::ControlFlow::Continue(())
        })
        .await;
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        match ended {
            Ok(status) if status != 200 => {
                tracing::debug!(node, status, "following another node's CEP stream")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(node, error = %format!("{e:#}"), "following another node's CEP stream")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(PEER_RETRY).await;
    }
}

/// Server-Sent Events from an mpsc receiver.
struct LiveStream(mpsc::Receiver<SseEvent>);

impl futures_core::Stream for LiveStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

async fn matches(State(cep): State<Arc<CepNode>>, Query(q): Query<MatchesQuery>) -> Response {
    let local_only = match node_scope(q.scope.as_deref()) {
        Ok(l) => l,
        Err(f) => return f.into_response(),
    };
    if let Some(id) = &q.pattern {
        if cep.get(id).is_none() {
            return not_found(id);
        }
    }
    let mut rx = cep.live.subscribe();
    // Other nodes' outputs cannot wait for room here (they arrive in a callback) and are
    // dropped, as `lagged`, when it is full: they get the same allowance as this node's
    // own (the broadcast channel's), or a burst of matches released together on another
    // node would lag a reader that is only briefly behind.
    let (tx, out) = mpsc::channel::<SseEvent>(LIVE_BUFFER);
    // Every other node's stream too (their shards' outputs), followed before the
    // greeting so that it means every node's outputs from then on.
    let mut ready = Vec::new();
    if !local_only {
        for (node, addr) in cep.broker().peer_http() {
            let (done, wait) = tokio::sync::oneshot::channel();
            ready.push(wait);
            tokio::spawn(follow_peer(node, addr, q.pattern.clone(), tx.clone(), done));
        }
    }
    let filter = q.pattern.clone();
    let greeting = match &filter {
        Some(id) => format!("subscribed to {id}"),
        None => "subscribed to every definition".to_string(),
    };
    tokio::spawn(async move {
        for wait in ready {
            let _ = tokio::time::timeout(PEER_TIMEOUT, wait).await;
        }
        if tx
            .send(SseEvent::default().comment(greeting))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let ev = tokio::select! {
                _ = tx.closed() => return,
                r = rx.recv() => match r {
                    Ok(p) => {
                        if filter.as_deref().is_some_and(|f| f != p.definition_id) {
                            continue;
                        }
                        SseEvent::default()
                            .event(p.kind)
                            .id(format!("{}/{}/{}", p.topic, p.partition, p.offset))
                            .data(p.to_json().to_string())
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                        .event("lagged")
                        .data(json!({ "missed": n }).to_string()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    Sse::new(LiveStream(out))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

/// The OpenAPI 3.1 document of the HTTP listener (health, metrics, ingest, CEP).
pub fn openapi() -> Value {
    fn op(summary: &str, responses: &[(&str, &str)]) -> Value {
        let mut r = serde_json::Map::new();
        for (code, desc) in responses {
            r.insert(code.to_string(), json!({ "description": desc }));
        }
        json!({ "summary": summary, "responses": r })
    }
    fn with_params(mut v: Value, names: &[&str]) -> Value {
        let params: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        v["parameters"] = Value::Array(params);
        v
    }
    let definition_body = json!({
        "required": true,
        "content": {
            "application/json": {"schema": {"type": "object", "description": "a pattern, windowed query or alert rule (see cep/src/lib.rs)"}},
            "application/sql": {"schema": {"type": "string", "description": "INSERT INTO ... SELECT ... MATCH_RECOGNIZE (...)"}}
        }
    });
    let mut paths = serde_json::Map::new();
    paths.insert(
        "/health".into(),
        json!({"get": op("Liveness", &[("200", "ok")])}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": op("Prometheus metrics", &[("200", "text exposition format")])}),
    );
    paths.insert(
        "/ingest/{topic}".into(),
        with_params(
            json!({"post": op("Ingest events (JSON, NDJSON or text) into a topic", &[("200", "records appended"), ("400", "invalid body"), ("413", "body too large")])}),
            &["topic"],
        ),
    );
    paths.insert(
        "/ingest/{topic}/ws".into(),
        with_params(
            json!({"get": op("Ingest events over a WebSocket", &[("101", "switching protocols"), ("400", "not a WebSocket upgrade")])}),
            &["topic"],
        ),
    );
    paths.insert(
        "/api/collectors".into(),
        json!({
            "get": op("List ingest collectors", &[("200", "collectors")]),
            "post": op("Add an ingest collector", &[("201", "added"), ("400", "invalid collector")]),
        }),
    );
    paths.insert(
        "/api/collectors/{name}".into(),
        with_params(
            json!({"delete": op("Remove an ingest collector", &[("204", "removed"), ("404", "unknown collector")])}),
            &["name"],
        ),
    );
    paths.insert(
        "/api/openapi.json".into(),
        json!({"get": op("This document", &[("200", "OpenAPI 3.1")])}),
    );
    paths.insert(
        "/api/cep/stats".into(),
        json!({"get": {
            "summary": "Per definition: events in, matches out, partial matches held, lag, summed over the cluster's shards; per source partition: its shard's position and node; which node runs each shard (shards); per node its stage timings (nodes)",
            "parameters": [{"name": "scope", "in": "query", "required": false, "schema": {"type": "string", "enum": ["cluster", "node"]}, "description": "node: only the shards this node runs (default: cluster)"}],
            "responses": {"200": {"description": "stats"}, "400": {"description": "invalid scope"}}
        }}),
    );
    paths.insert(
        "/api/cep/matches".into(),
        json!({"get": {
            "summary": "Live Server-Sent Events stream of the outputs written from now on, by every node's shards",
            "parameters": [
                {"name": "pattern", "in": "query", "required": false, "schema": {"type": "string"}, "description": "only this definition's outputs"},
                {"name": "scope", "in": "query", "required": false, "schema": {"type": "string", "enum": ["cluster", "node"]}, "description": "node: only the outputs of the shards this node runs (default: cluster)"}
            ],
            "responses": {
                "200": {"description": "text/event-stream; events match, window_result, alert, late, dead_letter, lagged", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "400": {"description": "invalid scope"},
                "404": {"description": "unknown definition"}
            }
        }}),
    );
    for (base, what) in [
        ("/api/cep/patterns", "pattern"),
        ("/api/analytics/queries", "windowed query or alert rule"),
    ] {
        let mut create = op(
            &format!("Register a {what} (any definition kind is accepted)"),
            &[
                ("201", "registered: {\"id\"}"),
                (
                    "400",
                    "invalid definition: {\"error\", \"field\", \"position\"}; nothing registered",
                ),
                ("409", "the id is taken"),
            ],
        );
        create["requestBody"] = definition_body.clone();
        paths.insert(
            base.into(),
            json!({"get": op("List the definitions", &[("200", "definitions")]), "post": create}),
        );
        paths.insert(
            format!("{base}/{{id}}"),
            with_params(
                json!({
                    "get": op("One definition", &[("200", "the definition"), ("404", "unknown id")]),
                    "delete": op("Delete a definition", &[("204", "deleted"), ("404", "unknown id")]),
                }),
                &["id"],
            ),
        );
        for action in ["pause", "resume"] {
            paths.insert(
                format!("{base}/{{id}}/{action}"),
                with_params(
                    json!({"post": op(&format!("{action} a definition (kept across restarts)"), &[("200", "{\"id\", \"paused\"}"), ("404", "unknown id")])}),
                    &["id"],
                ),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weir HTTP API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
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
        let at_1: Vec<(i64, String)> = values.iter().map(|v| (1, v.clone())).collect();
        produce_at(b, topic, 0, &at_1);
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

    /// Arrival order, so that which shard reads a partition first cannot matter.
    const BRUTE_ARRIVAL: &str = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
      "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
                {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
      "within": "60s", "skip": "past_last_event",
      "emit": {"topic": "alerts", "key": "user", "value": {"user": "ok.user", "fails": "count(fail)"}}}"#;

    #[test]
    fn shards_split_the_source_partitions_and_each_recovers_its_own() {
        let tb = broker();
        tb.broker
            .create_topic("auth", 4, -1, BTreeMap::new(), false)
            .unwrap();
        let node = CepNode::open_with(tb.broker.clone(), 2).unwrap();
        assert_eq!(node.shards.len(), 2);
        assert_eq!(tb.broker.topic(CHECKPOINT_TOPIC).unwrap().partitions, 2);
        node.register(BRUTE_ARRIVAL, false).unwrap();
        let users: Vec<String> = (0..8).map(|k| format!("u{k}")).collect();
        for (k, u) in users.iter().enumerate() {
            let evs = [false, false, false, true].map(|ok| login(u, ok, 1000 + k as i64));
            produce_at(&tb.broker, "auth", k as i32 % 4, &evs.map(|v| (1, v)));
        }
        // Shard 0 (partitions 0 and 2) crashes after recording its pass.
        node.shards[0]
            .crash_after_checkpoint
            .store(true, Ordering::Release);
        for s in &node.shards {
            while s.pass() {}
        }
        let stats = node.stats();
        assert_eq!(stats["shards"].as_array().unwrap().len(), 2);
        assert!(stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["running"] == true));
        let mut read: Vec<(u64, u64)> = stats["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["shard"].as_u64().unwrap(),
                    s["partition"].as_u64().unwrap(),
                )
            })
            .collect();
        read.sort();
        assert_eq!(read, vec![(0, 0), (0, 2), (1, 1), (1, 3)]);
        assert_eq!(stats["definitions"][0]["events_in"], 32);
        let alerted = |b: &Broker| {
            let mut v: Vec<String> = read_all(b, "alerts")
                .iter()
                .map(|a| a["user"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(alerted(&tb.broker), vec!["u1", "u3", "u5", "u7"]);
        drop(node);
        let tb = reopen(tb);
        let node = CepNode::open_with(tb.broker.clone(), 5).unwrap();
        assert_eq!(node.shards.len(), 2, "the topic's partition count rules");
        // Shard 0's recovery redid its recorded writes; nothing is repeated.
        assert_eq!(alerted(&tb.broker), users);
        for s in &node.shards {
            while s.pass() {}
        }
        assert_eq!(alerted(&tb.broker), users);
        assert_eq!(node.stats()["definitions"][0]["events_in"], 32);
        assert_eq!(node.stats()["definitions"][0]["lag"], 0);
    }

    fn produce_at(b: &Broker, topic: &str, partition: i32, events: &[(i64, String)]) {
        let p = b.partition(topic, partition).unwrap();
        let mut builder = BatchBuilder::new(Compression::None);
        for (ts, v) in events {
            builder.push(*ts, None, Some(v.as_bytes()), &[]);
        }
        let mut set = builder.build().unwrap();
        p.append(&mut set, now_ms()).unwrap();
    }

    #[test]
    fn a_pass_merges_its_partitions_by_timestamp_and_its_replay_does_too() {
        let tb = broker();
        tb.broker
            .create_topic("auth", 2, -1, BTreeMap::new(), false)
            .unwrap();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        // No out-of-orderness allowed: partition 0 read to its end first would move
        // event time past all of partition 1's records.
        cep.register(&BRUTE.replace("\"5s\"", "\"0s\""), false)
            .unwrap();
        produce_at(&tb.broker, "auth", 0, &[(500, login("x", true, 500))]);
        while cep.pass() {}
        let ev = |user: &str, ok: bool, ts: i64| (ts, login(user, ok, ts));
        produce_at(
            &tb.broker,
            "auth",
            0,
            &[
                ev("alice", false, 1000),
                ev("alice", false, 2000),
                ev("alice", false, 3000),
                ev("alice", true, 4000),
                (
                    9000,
                    r#"{"user":"zed","type":"logout","ts":9000}"#.to_string(),
                ),
            ],
        );
        produce_at(
            &tb.broker,
            "auth",
            1,
            &[
                ev("bob", false, 1500),
                ev("bob", false, 2500),
                ev("bob", false, 3500),
                ev("bob", true, 4500),
            ],
        );
        // The pass is recorded as a log entry; a crash before its outputs are written.
        cep.crash_after_checkpoint.store(true, Ordering::Release);
        while cep.pass() {}
        assert_eq!(cep.wal.lock().entries, 1, "recorded as a log entry");
        let late = |c: &Cep| c.stats()["definitions"][0]["late"].clone();
        assert_eq!(late(&cep), 0);
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let mut users: Vec<String> = read_all(&tb.broker, "alerts")
            .iter()
            .map(|a| a["user"].as_str().unwrap().to_string())
            .collect();
        users.sort();
        assert_eq!(users, vec!["alice", "bob"]);
        // The replay merged the entry's reads as the pass did: nothing was late.
        assert_eq!(late(&cep), 0);
        while cep.pass() {}
        assert_eq!(read_all(&tb.broker, "alerts").len(), 2);
    }

    #[test]
    fn cluster_stats_sum_every_nodes_shards() {
        let node = |running: &[u64], events: i64, lag: i64, partition: i64| {
            json!({
                "stage_running": !running.is_empty(),
                "shards": (0..3u64).map(|i| json!({"shard": i, "node": 1, "running": running.contains(&i)})).collect::<Vec<_>>(),
                "definitions": [{"id": "p", "events_in": events, "lag": lag, "partial_matches": 1}],
                "sources": [{"topic": "auth", "partition": partition, "position": events}],
                "remote_sources": [],
                "timings": {"process": {"count": events}},
                "webhooks": {"sent": 1, "failed": 0},
                "live_subscribers": 0,
            })
        };
        let merged = merge_cluster_stats(
            1,
            node(&[0], 10, 1, 0),
            vec![
                (2, Some(node(&[1], 20, 2, 1))),
                (3, None),
                (4, Some(node(&[2], 30, 3, 2))),
            ],
        );
        assert_eq!(
            merged["definitions"],
            json!([{"id": "p", "events_in": 60, "lag": 6, "partial_matches": 3}])
        );
        let placed: Vec<(u64, i64)> = merged["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["shard"].as_u64().unwrap(), s["node"].as_i64().unwrap()))
            .collect();
        assert_eq!(placed, vec![(0, 1), (1, 2), (2, 4)]);
        let read: Vec<(i64, i64)> = merged["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["partition"].as_i64().unwrap(),
                    s["node"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(read, vec![(0, 1), (1, 2), (2, 4)]);
        let reachable: Vec<(i64, bool)> = merged["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_i64().unwrap(),
                    n["reachable"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(reachable, vec![(1, true), (2, true), (3, false), (4, true)]);
        assert_eq!(merged["webhooks"], json!({"sent": 3, "failed": 0}));
        assert_eq!(merged["timings"], json!({"process": {"count": 10}}));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn http_handlers() {
        let tb = broker();
        let cep = CepNode::open_with(tb.broker.clone(), 1).unwrap();
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
        let scope = |s: Option<&str>| {
            Query(ScopeQuery {
                scope: s.map(str::to_string),
            })
        };
        assert_eq!(
            stats(State(cep.clone()), scope(None)).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            stats(State(cep.clone()), scope(Some("node")))
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            stats(State(cep.clone()), scope(Some("everywhere")))
                .await
                .status(),
            StatusCode::BAD_REQUEST
        );
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

    /// Appends a record to the definitions topic as another node's registration would.
    fn store_elsewhere(b: &Broker, id: &str, value: Option<&str>) {
        let p = b.partition(DEFINITIONS_TOPIC, 0).unwrap();
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(now_ms(), Some(id.as_bytes()), value.map(str::as_bytes), &[]);
        let mut set = builder.build().unwrap();
        p.append(&mut set, now_ms()).unwrap();
    }

    #[test]
    fn definitions_stored_by_another_node_are_applied_from_their_recorded_start() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        // Before the registration's recorded start: not read.
        let old: Vec<String> = (1..=3).map(|i| login("carol", false, i * 1000)).collect();
        produce(&tb.broker, "auth", &old);
        let start = tb.broker.partition("auth", 0).unwrap().high_watermark();
        let def: Value = serde_json::from_str(BRUTE).unwrap();
        let value = json!({"definition": def, "paused": false, "from": [["auth", 0, start]]});
        // The stage learns of it only now, after more records arrived.
        produce(
            &tb.broker,
            "auth",
            &[
                login("carol", true, 4000),
                login("alice", false, 5000),
                login("alice", false, 6000),
                login("alice", false, 7000),
                login("alice", true, 8000),
            ],
        );
        store_elsewhere(&tb.broker, "brute-force", Some(&value.to_string()));
        produce(&tb.broker, "auth", &[login("zed", false, 100_000)]);
        while cep.pass() {}
        assert_eq!(cep.list()[0]["id"], "brute-force");
        assert_eq!(
            read_all(&tb.broker, "alerts"),
            vec![json!({"user": "alice", "fails": 3, "first_fail": 5000})]
        );
        // Deleted on another node: dropped here at the next pass.
        store_elsewhere(&tb.broker, "brute-force", None);
        cep.pass();
        assert_eq!(cep.list(), json!([]));
        // A restart starts it where its record says too (no checkpoint knows it).
        store_elsewhere(&tb.broker, "brute-force", Some(&value.to_string()));
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        assert_eq!(cep.list()[0]["id"], "brute-force");
        let positions = cep.positions.lock().clone();
        assert_eq!(positions.get(&("auth".to_string(), 0)), Some(&start));
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

    fn login_at(user: &str, ok: bool, ts: i64) -> String {
        login(user, ok, ts)
    }

    #[test]
    fn crash_after_checkpoint_is_redone_once_and_state_survives() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        // alice matches once carol's events move the watermark past her success;
        // carol's two failures are a partial match held across the crash.
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("alice", false, 1000),
                login_at("alice", false, 2000),
                login_at("alice", false, 3000),
                login_at("alice", true, 4000),
                login_at("carol", false, 10_000),
                login_at("carol", false, 11_000),
            ],
        );
        cep.crash_after_checkpoint.store(true, Ordering::Release);
        while cep.pass() {}
        // The checkpoint holds alice's match; the crash came before it was written.
        assert_eq!(read_all(&tb.broker, "alerts"), Vec::<Value>::new());
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let alice = json!({"user": "alice", "fails": 3, "first_fail": 1000});
        assert_eq!(read_all(&tb.broker, "alerts"), vec![alice.clone()]);
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("carol", false, 12_000),
                login_at("carol", true, 13_000),
                login_at("zed", false, 100_000),
            ],
        );
        while cep.pass() {}
        let carol = json!({"user": "carol", "fails": 3, "first_fail": 10_000});
        assert_eq!(
            read_all(&tb.broker, "alerts"),
            vec![alice.clone(), carol.clone()]
        );
        // A pass recorded as a log entry (not a snapshot), then a crash before its write:
        // the restart replays the entry on the snapshot (erin's failure is state only the
        // replay rebuilds) and redoes the write.
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("dave", false, 110_000),
                login_at("dave", false, 111_000),
                login_at("dave", false, 112_000),
                login_at("dave", true, 113_000),
                login_at("erin", false, 120_000),
            ],
        );
        cep.crash_after_checkpoint.store(true, Ordering::Release);
        while cep.pass() {}
        assert_eq!(
            cep.wal.lock().entries,
            1,
            "the pass was recorded as a log entry"
        );
        assert_eq!(read_all(&tb.broker, "alerts").len(), 2);
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let dave = json!({"user": "dave", "fails": 3, "first_fail": 110_000});
        assert_eq!(
            read_all(&tb.broker, "alerts"),
            vec![alice.clone(), carol.clone(), dave.clone()]
        );
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("erin", false, 121_000),
                login_at("erin", false, 122_000),
                login_at("erin", true, 123_000),
                login_at("zed", false, 200_000),
            ],
        );
        while cep.pass() {}
        let erin = json!({"user": "erin", "fails": 3, "first_fail": 120_000});
        let all = vec![alice, carol, dave, erin];
        assert_eq!(read_all(&tb.broker, "alerts"), all);
        let ck = tb.broker.partition(CHECKPOINT_TOPIC, 0).unwrap();
        assert!(
            ck.log.log_start_offset() > 0,
            "the checkpoint log is trimmed at snapshots"
        );
        // A restart after the write: the redo finds the records, nothing is repeated.
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        while cep.pass() {}
        assert_eq!(read_all(&tb.broker, "alerts"), all);
        assert_eq!(cep.stats()["definitions"][0]["lag"], 0);
    }

    /// (sequence number, index, count) of each snapshot piece in the checkpoint log.
    fn snapshot_pieces(b: &Broker) -> Vec<(u64, u32, u32)> {
        let p = b.partition(CHECKPOINT_TOPIC, 0).unwrap();
        let read = p
            .log
            .read(p.log.log_start_offset(), 64 << 20, true)
            .unwrap();
        let mut out = Vec::new();
        for chunk in &read.batches {
            for r in decode_chunk(chunk, 0, i64::MAX).0 {
                out.extend(piece_header(&r.value.unwrap_or_default()));
            }
        }
        out
    }

    #[test]
    fn a_replica_is_trimmed_to_the_newest_complete_snapshot_and_what_follows_it() {
        let piece = |seq: u64, index: u32, count: u32| snapshot_piece(seq, index, count, b"state");
        let entry = |seq: u64| format!("log/1700000000000/{seq}");
        let one_record = encode_snapshot(
            &CheckpointHeader {
                seq: 3,
                ..CheckpointHeader::default()
            },
            b"{}",
        )
        .unwrap();
        let mut t = ReplicaTrim::default();
        assert_eq!(t.keep_from(), None, "nothing to trim to yet");
        t.note(0, Some(b"snapshot"), Some(&one_record));
        t.note(3, Some(entry(4).as_bytes()), Some(b"WWL1{}"));
        assert_eq!(t.keep_from(), Some(0));
        t.note(10, Some(b"snapshot/5/0"), Some(&piece(5, 0, 2)));
        assert_eq!(t.keep_from(), Some(0), "snapshot 5 is not complete");
        t.note(11, Some(entry(6).as_bytes()), Some(b"WWL1{}"));
        t.note(12, Some(b"snapshot/5/1"), Some(&piece(5, 1, 2)));
        assert_eq!(t.keep_from(), Some(10));
        // A newer snapshot being written, and an entry written meanwhile.
        t.note(19, Some(entry(8).as_bytes()), Some(b"WWL1{}"));
        t.note(20, Some(b"snapshot/7/0"), Some(&piece(7, 0, 3)));
        assert_eq!(t.keep_from(), Some(10));
        t.forget_before(10);
        t.note(21, Some(b"snapshot/7/1"), Some(&piece(7, 1, 3)));
        t.note(22, Some(b"snapshot/7/2"), Some(&piece(7, 2, 3)));
        assert_eq!(
            t.keep_from(),
            Some(19),
            "entry 8 was written after snapshot 7's capture"
        );
        t.forget_before(19);
        assert_eq!(t.snapshots.len(), 1);
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn snapshot_pieces_are_used_only_when_complete() {
        let piece = |seq: u64, index: u32, count: u32, body: &[u8]| {
            Bytes::from(snapshot_piece(seq, index, count, body))
        };
        let mut p = SnapshotPieces::default();
        assert_eq!(p.add(&piece(7, 1, 2, b"def")), Ok(7));
        assert_eq!(p.add(&piece(7, 0, 2, b"abc")), Ok(7));
        assert_eq!(p.add(&piece(9, 0, 3, b"xyz")), Ok(9)); // torn: 1 of 3
        assert_eq!(p.newest_complete(), Some((7, b"abcdef".to_vec())));
        assert!(p.add(&piece(9, 3, 3, b"")).is_err());
        assert!(p.add(&Bytes::from_static(b"WCS1\0\0")).is_err());
        assert_eq!(p.newest_complete(), Some((7, b"abcdef".to_vec())));
    }

    #[test]
    fn periodic_snapshot_on_its_thread_then_crash_after_a_log_entry() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("alice", false, 1000),
                login_at("alice", false, 2000),
                login_at("alice", false, 3000),
                login_at("alice", true, 4000),
            ],
        );
        while cep.pass() {} // the registration's snapshot, on this thread
                            // Make the next pass take a periodic snapshot (log entry, then the thread).
        if let Some(past) = Instant::now().checked_sub(SNAPSHOT_INTERVAL * 2) {
            cep.wal.lock().last_snapshot = past;
        }
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("carol", false, 10_000),
                login_at("carol", false, 11_000),
            ],
        );
        while cep.pass() {}
        let handle = cep.snapshot_thread.lock().take();
        handle.expect("a snapshot thread").join().unwrap();
        let ck = tb.broker.partition(CHECKPOINT_TOPIC, 0).unwrap();
        let start = ck.log.log_start_offset();
        assert!(
            start > 0,
            "trimmed to the entries after the periodic snapshot"
        );
        // A replica on a node without the stage is trimmed by its own rule to the same
        // place (here read from the leader's trimmed log: it finds what it must keep).
        let mut replica = ReplicaTrim::default();
        let read = ck.log.read(start, 64 << 20, true).unwrap();
        for chunk in &read.batches {
            for r in decode_chunk(chunk, start, ck.high_watermark()).0 {
                replica.note(r.offset, r.key.as_deref(), r.value.as_deref());
            }
        }
        assert_eq!(replica.keep_from(), Some(start));
        // A pass recorded after the snapshot, then a crash before its outputs.
        produce(
            &tb.broker,
            "auth",
            &[
                login_at("carol", false, 12_000),
                login_at("carol", true, 13_000),
            ],
        );
        produce(&tb.broker, "auth", &[login_at("zed", false, 100_000)]);
        cep.crash_after_checkpoint.store(true, Ordering::Release);
        while cep.pass() {}
        // The periodic snapshot came in several pieces; and a newer snapshot was cut off
        // by the crash after its first piece: recovery must not use it.
        let pieces = snapshot_pieces(&tb.broker);
        assert!(pieces.iter().any(|&(_, _, count)| count > 1), "{pieces:?}");
        let torn_seq = cep.wal.lock().seq + 1;
        let torn = snapshot_piece(torn_seq, 0, 2, b"WCP1 and then nothing");
        cep.append_checkpoint(b"snapshot/torn/0", &torn, true)
            .unwrap();
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let alice = json!({"user": "alice", "fails": 3, "first_fail": 1000});
        let carol = json!({"user": "carol", "fails": 3, "first_fail": 10_000});
        assert_eq!(
            read_all(&tb.broker, "alerts"),
            vec![alice.clone(), carol.clone()]
        );
        while cep.pass() {}
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        while cep.pass() {}
        assert_eq!(read_all(&tb.broker, "alerts"), vec![alice, carol]);
    }

    /// A planned output record `{"n": i}` keyed `k`.
    fn rec(i: i64) -> PlannedRecord {
        PlannedRecord {
            key: Some(b"k".to_vec()),
            value: format!("{{\"n\":{i}}}").into_bytes(),
            timestamp_ms: i,
            definition_id: "d".into(),
            kind: "match".into(),
            webhook: None,
        }
    }

    #[test]
    fn redo_appends_only_the_missing_suffix() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        produce(&tb.broker, "out", &[r#"{"before":true}"#.to_string()]);
        // As recorded by versions that wrote without a producer id.
        let w = PlannedWrite {
            topic: "out".into(),
            partition: 0,
            end_offset: 1,
            records: vec![rec(1), rec(2), rec(3)],
            producer: None,
        };
        // The first planned record made it, then another client's record.
        cep.append_planned(&w, &w.records[..1], None).unwrap();
        produce(&tb.broker, "out", &[r#"{"other":true}"#.to_string()]);
        assert_eq!(cep.redo(&w).unwrap(), (1, 2));
        assert_eq!(cep.redo(&w).unwrap(), (3, 0));
        assert_eq!(
            read_all(&tb.broker, "out"),
            vec![
                json!({"before": true}),
                json!({"n": 1}),
                json!({"other": true}),
                json!({"n": 2}),
                json!({"n": 3})
            ]
        );
        let (h, state) = decode_snapshot(
            &encode_snapshot(
                &CheckpointHeader {
                    seq: 9,
                    positions: vec![("auth".into(), 0, 7)],
                    writes: vec![w.clone()],
                    producers: Vec::new(),
                },
                b"{}",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (h.seq, h.positions, h.writes, state),
            (9, vec![("auth".to_string(), 0, 7)], vec![w], b"{}".to_vec())
        );
        assert!(decode_snapshot(b"WCP1\0\0\0\x09{}").is_err());
        assert!(decode_snapshot(b"nope").is_err());
    }

    /// Three failed logins of `user` a second apart from `t0`, a success, and an event
    /// at `release` (another user's) that moves event time past them: one match.
    fn brute_force_then(user: &str, t0: i64, release: i64) -> Vec<String> {
        let mut events: Vec<String> = (0..3)
            .map(|i| login_at(user, false, t0 + i * 1000))
            .collect();
        events.push(login_at(user, true, t0 + 3000));
        events.push(login_at("zed", false, release));
        events
    }

    /// The planned writes a shard's checkpoint partition records (snapshot and log).
    fn recorded_writes(cep: &Cep) -> Vec<PlannedWrite> {
        let rec = cep.load_checkpoints().unwrap().unwrap();
        let mut writes = rec.header.writes;
        for e in rec.entries {
            writes.extend(e.writes);
        }
        writes
    }

    #[test]
    fn a_write_still_on_its_way_from_a_deposed_stage_is_not_appended_twice() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        produce(
            &tb.broker,
            "auth",
            &brute_force_then("alice", 1000, 100_000),
        );
        // The pass is recorded; its write is "on its way" (not yet arrived).
        cep.crash_after_checkpoint.store(true, Ordering::Release);
        while cep.pass() {}
        drop(cep);
        // The stage that takes over redoes the write.
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let alice = json!({"user": "alice", "fails": 3, "first_fail": 1000});
        assert_eq!(read_all(&tb.broker, "alerts"), vec![alice.clone()]);
        let w = recorded_writes(&cep)
            .into_iter()
            .find(|w| w.topic == "alerts")
            .expect("the pass's write to alerts is recorded");
        assert_eq!(w.producer, Some(ProducerSeq { epoch: 0, seq: 0 }));
        // Now the deposed stage's copy arrives: acknowledged, not appended again.
        assert_eq!(cep.append_planned(&w, &w.records, w.producer).unwrap(), 0);
        assert_eq!(read_all(&tb.broker, "alerts"), vec![alice.clone()]);
        // Nothing more in the log (without the producer's sequence numbers the copy
        // would have been appended a second time: at offset 1).
        let p = cep.broker.partition("alerts", 0).unwrap();
        assert_eq!(p.log.log_end_offset(), 1);
        // The stage goes on with the next sequence numbers.
        produce(
            &tb.broker,
            "auth",
            &brute_force_then("bob", 101_000, 200_000),
        );
        while cep.pass() {}
        let bob = json!({"user": "bob", "fails": 3, "first_fail": 101_000});
        assert_eq!(
            read_all(&tb.broker, "alerts"),
            vec![alice.clone(), bob.clone()]
        );
        let next = recorded_writes(&cep)
            .into_iter()
            .rfind(|w| w.topic == "alerts")
            .and_then(|w| w.producer);
        assert_eq!(next, Some(ProducerSeq { epoch: 0, seq: 1 }));
        // A restart restores where the producer stands (snapshot header or log).
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        assert_eq!(
            cep.producers
                .lock()
                .get(&("alerts".to_string(), 0))
                .copied(),
            Some(ProducerSeq { epoch: 0, seq: 2 })
        );
        assert_eq!(read_all(&tb.broker, "alerts"), vec![alice, bob]);
    }

    #[test]
    fn redo_writes_under_a_newer_epoch_where_the_sequence_does_not_continue() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        produce(&tb.broker, "out", &[r#"{"before":true}"#.to_string()]);
        // Planned at sequence 7: the partition holds none of the producer's batches
        // (say retention deleted them and the broker restarted).
        let seq7 = ProducerSeq { epoch: 0, seq: 7 };
        let w = PlannedWrite {
            topic: "out".into(),
            partition: 0,
            end_offset: 1,
            records: vec![rec(1), rec(2)],
            producer: Some(seq7),
        };
        let refused = cep.append_planned(&w, &w.records, w.producer).unwrap_err();
        assert!(refused.sequence, "{}", refused.message);
        cep.note_producer_seqs(std::slice::from_ref(&w));
        assert_eq!(cep.redo(&w).unwrap(), (0, 2));
        assert_eq!(
            read_all(&tb.broker, "out"),
            vec![json!({"before": true}), json!({"n": 1}), json!({"n": 2})]
        );
        // Written under epoch 1 from 0; the shard goes on from there.
        let bumped = ProducerSeq { epoch: 1, seq: 2 };
        assert_eq!(
            cep.producers.lock().get(&("out".to_string(), 0)).copied(),
            Some(bumped)
        );
        assert_eq!(cep.take_producer_seq("out", 0, 1), bumped);
        // A copy of the old write arriving now is fenced by the newer epoch.
        let stale = cep.append_planned(&w, &w.records, w.producer).unwrap_err();
        assert!(stale.sequence, "{}", stale.message);
        assert_eq!(read_all(&tb.broker, "out").len(), 3);
        // Redo finds it all now; the next write continues the new epoch.
        assert_eq!(cep.redo(&w).unwrap(), (2, 0));
        let next = PlannedWrite {
            records: vec![rec(3)],
            producer: Some(bumped),
            end_offset: 3,
            ..w.clone()
        };
        assert_eq!(
            cep.append_planned(&next, &next.records, next.producer)
                .unwrap(),
            3
        );
        assert_eq!(read_all(&tb.broker, "out").len(), 4);
    }

    #[test]
    fn redo_looks_for_its_records_among_its_own_batches_only() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let rec = PlannedRecord {
            key: Some(b"alice".to_vec()),
            value: br#"{"user":"alice"}"#.to_vec(),
            timestamp_ms: 5,
            definition_id: "d".into(),
            kind: "match".into(),
            webhook: None,
        };
        // Another writer (a client, or another shard) put an identical record there.
        tb.broker.auto_create("out").unwrap();
        let mut set = BatchBuilder::new(Compression::None);
        set.push(5, Some(b"alice"), Some(br#"{"user":"alice"}"#), &[]);
        let mut set = set.build().unwrap();
        let p = tb.broker.partition("out", 0).unwrap();
        p.append(&mut set, now_ms()).unwrap();
        let w = PlannedWrite {
            topic: "out".into(),
            partition: 0,
            end_offset: 0,
            records: vec![rec.clone()],
            producer: Some(ProducerSeq { epoch: 0, seq: 0 }),
        };
        assert_eq!(
            cep.redo(&w).unwrap(),
            (0, 1),
            "the other writer's record is not ours"
        );
        assert_eq!(cep.redo(&w).unwrap(), (1, 0));
        assert_eq!(read_all(&tb.broker, "out").len(), 2);
        // A checkpoint without producer sequence numbers could only compare contents.
        let old = PlannedWrite {
            producer: None,
            ..w.clone()
        };
        assert_eq!(cep.redo(&old).unwrap(), (1, 0));
    }

    #[test]
    fn pause_state_and_order_survive_restarts() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        let other = BRUTE.replace("\"brute-force\"", "\"second\"");
        cep.register(&other, false).unwrap();
        assert!(cep.set_paused("brute-force", true).unwrap());
        assert!(!cep.set_paused("nope", true).unwrap());
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        let l = cep.list();
        assert_eq!(
            (l[0]["id"].as_str(), l[0]["paused"].as_bool()),
            (Some("brute-force"), Some(true))
        );
        assert_eq!(
            (l[1]["id"].as_str(), l[1]["paused"].as_bool()),
            (Some("second"), Some(false))
        );
        // Paused: records are read but not matched, also after the restart.
        let events: Vec<String> = vec![
            login("alice", false, 1000),
            login("alice", false, 2000),
            login("alice", false, 3000),
            login("alice", true, 4000),
            login("zed", false, 100_000),
        ];
        produce(&tb.broker, "auth", &events);
        while cep.pass() {}
        let stats = cep.stats();
        assert_eq!(stats["definitions"][0]["events_in"], 0, "{stats}");
        assert_eq!(stats["definitions"][1]["matches_out"], 1, "{stats}");
        assert!(cep.set_paused("brute-force", false).unwrap());
        drop(cep);
        let tb = reopen(tb);
        let cep = Cep::open(tb.broker.clone()).unwrap();
        assert_eq!(cep.list()[0]["paused"], false);
    }

    #[test]
    fn live_subscribers_see_written_outputs_and_stats_show_lag() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        let mut rx = cep.live.subscribe();
        let events: Vec<String> = vec![
            login("alice", false, 1000),
            login("alice", false, 2000),
            login("alice", false, 3000),
            login("alice", true, 4000),
            login("zed", false, 100_000),
        ];
        produce(&tb.broker, "auth", &events);
        let s = cep.stats();
        assert_eq!(s["definitions"][0]["lag"], 5, "{s}");
        assert_eq!(s["live_subscribers"], 1, "{s}");
        while cep.pass() {}
        let s = cep.stats();
        assert_eq!(s["definitions"][0]["lag"], 0, "{s}");
        // zed's event waits for the watermark.
        assert_eq!(s["definitions"][0]["events_in"], 4, "{s}");
        assert_eq!(s["definitions"][0]["matches_out"], 1, "{s}");
        let p = rx.try_recv().unwrap();
        assert_eq!(
            p.to_json(),
            json!({"pattern": "brute-force", "kind": "match", "topic": "alerts", "partition": 0,
                   "offset": 0, "timestamp": p.timestamp_ms, "key": "alice",
                   "value": {"user": "alice", "fails": 3, "first_fail": 1000}})
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn webhook_urls_are_checked_at_registration() {
        let tb = broker();
        let cep = Cep::open(tb.broker.clone()).unwrap();
        cep.register(BRUTE, false).unwrap();
        let rule = |url: &str| {
            format!(
                r#"{{"id": "hook", "source": {{"definition": "brute-force"}}, "condition": "fails >= 3",
                    "severity": "high", "emit": {{"topic": "pages", "webhook": "{url}"}}}}"#
            )
        };
        let e = cep
            .register(&rule("https://example.com/x"), false)
            .unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert_eq!(e.1["field"], "emit.webhook", "{}", e.1);
        assert!(cep.get("hook").is_none());
        cep.register(&rule("http://127.0.0.1:1/x"), false).unwrap();
    }

    /// Every `route(PATH, methods)` call of the HTTP listener's routers, from their source.
    fn registered_routes() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for src in [
            include_str!("http.rs"),
            include_str!("ingest.rs"),
            include_str!("cep.rs"),
        ] {
            // `.route(` then, after any whitespace (rustfmt may break the line), a literal.
            let marker = concat!(".rou", "te(");
            let mut rest = src;
            while let Some(i) = rest.find(marker) {
                rest = rest[i + marker.len()..].trim_start();
                let Some(lit) = rest.strip_prefix('"') else {
                    continue;
                };
                rest = lit;
                let Some(end) = rest.find('"') else { break };
                let path = rest[..end].to_string();
                let args_end = [concat!(".rou", "te("), ".with_state(", ".layer(", ";"]
                    .iter()
                    .filter_map(|m| rest.find(m))
                    .min()
                    .unwrap_or(rest.len());
                let args = &rest[end..args_end];
                for m in ["get", "post", "put", "delete", "patch"] {
                    let call = format!("{m}(");
                    let found = args.match_indices(&call).any(|(j, _)| {
                        j == 0
                            || !args.as_bytes()[j - 1].is_ascii_alphanumeric()
                                && args.as_bytes()[j - 1] != b'_'
                    });
                    if found {
                        out.push((path.clone(), m.to_string()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn openapi_lists_every_registered_route() {
        let routes = registered_routes();
        assert!(
            routes.len() >= 20,
            "route scan found too little: {routes:?}"
        );
        assert!(routes.contains(&("/api/cep/matches".into(), "get".into())));
        assert!(routes.contains(&("/api/collectors".into(), "post".into())));
        let doc = openapi();
        for (path, method) in &routes {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is not in /api/openapi.json"
            );
        }
        // And nothing documented that is not served.
        let paths = doc["paths"].as_object().unwrap();
        let documented: usize = paths
            .values()
            .map(|p| {
                p.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .count()
            })
            .sum();
        assert_eq!(documented, routes.len(), "{routes:?}");
    }
}
