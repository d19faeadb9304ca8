//! The engine: registered definitions, dispatch of records, timers, stats, checkpoints.

use crate::alert::{AlertRt, AlertSnap};
use crate::def::{parse_definition_json, Definition};
use crate::emit::{Output, OutputKind};
use crate::error::CepError;
use crate::event::{Event, FieldTable, RawRecord, SourceRecord, StrCache};
use crate::patrt::{PatternCapture, PatternRt, PatternSnap};
use crate::window::{QueryRt, QuerySnap};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// State bounds. Exceeding one evicts state (the oldest first) and counts an eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Partial matches held per key (per pattern, source partition and partition key).
    pub max_partial_matches_per_key: usize,
    /// Events in one partial match.
    pub max_match_events: u32,
    /// Keys with state, per pattern.
    pub max_keys: usize,
    /// Groups with open windows (or anomaly history), per query.
    pub max_window_groups: usize,
    /// Events held for reordering (event time), per pattern.
    pub max_buffered_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_partial_matches_per_key: 1_000,
            max_match_events: 1_000,
            max_keys: 1_000_000,
            max_window_groups: 1_000_000,
            max_buffered_events: 1_000_000,
        }
    }
}

/// Counters of one definition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events processed (after reordering; for queries: that passed `where`).
    pub events_in: u64,
    /// Matches, window results or alerts emitted.
    pub outputs: u64,
    pub evictions: u64,
    pub late: u64,
    pub not_json: u64,
    /// Events whose event-time field was missing or not a number (skipped).
    pub invalid_time: u64,
    /// Alerts suppressed by their dedup key's suppression interval.
    pub suppressed: u64,
}

/// `Engine::stats()` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionStats {
    pub id: String,
    pub stats: Stats,
    /// Partial matches held now (patterns).
    pub partial_matches: u64,
    /// Keys (patterns) or groups (queries) with state now.
    pub keys: u64,
    /// Open windows now (queries).
    pub windows_open: u64,
}

/// `Engine::definitions()` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionInfo {
    pub id: String,
    /// "pattern", "query" or "alert".
    pub kind: String,
    /// Topics read (empty for an alert rule over another definition's outputs).
    pub sources: Vec<String>,
    pub paused: bool,
    /// The definition as JSON (SQL patterns are shown in their JSON form).
    pub json: String,
}

enum Rt {
    Pattern(Box<PatternRt>),
    Query(Box<QueryRt>),
    Alert(Box<AlertRt>),
}

struct DefRt {
    def: Definition,
    paused: bool,
    stats: Stats,
    rt: Rt,
    /// Which records of its source this engine's shard processes.
    sees: Sees,
    /// Whether it outputs whole records of its source: a pattern without `emit.value`
    /// (its matches list their events) or an alert rule (its alerts carry the record).
    /// Where no definition reading a topic does, its events are projected (see
    /// [`crate::event`]).
    keeps_records: bool,
}

impl Rt {
    fn keeps_records(&self) -> bool {
        match self {
            Rt::Pattern(p) => p.outputs_whole_events(),
            Rt::Query(_) => false,
            Rt::Alert(_) => true,
        }
    }
}

/// One of `count` engines that split the work over a cluster (see [`Engine::set_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// The shard that processes a pattern's records of source partition `partition`.
    pub fn of_partition(partition: i32, count: u32) -> u32 {
        partition.rem_euclid(count.max(1) as i32) as u32
    }

    /// The shard that runs a windowed query or alert rule: a hash of its id that every
    /// node computes alike (FNV-1a; not the process-seeded `std` hasher).
    pub fn of_definition(id: &str, count: u32) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in id.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h % count.max(1)
    }
}

/// Which records of its source topic a definition gets in this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sees {
    /// All of them: the only shard, or the home shard of a query or alert rule (their
    /// windows and dedup keys span partitions), or an alert rule fed by another
    /// definition's outputs (which exist only where that definition runs).
    All,
    /// A pattern (state per source partition and key): its partitions
    /// `p ≡ index (mod count)`.
    Partitions { index: u32, count: u32 },
    /// A query or alert rule whose home is another shard.
    Nothing,
}

impl Sees {
    fn of(def: &Definition, shard: Shard) -> Sees {
        if shard.count <= 1 {
            return Sees::All;
        }
        match def {
            Definition::Pattern(_) => Sees::Partitions {
                index: shard.index,
                count: shard.count,
            },
            Definition::Alert(a) if a.source.definition.is_some() => Sees::All,
            _ if Shard::of_definition(def.id(), shard.count) == shard.index => Sees::All,
            _ => Sees::Nothing,
        }
    }

    #[inline]
    fn partition(self, partition: i32) -> bool {
        match self {
            Sees::All => true,
            Sees::Partitions { index, count } => Shard::of_partition(partition, count) == index,
            Sees::Nothing => false,
        }
    }
}

impl DefRt {
    fn topic(&self) -> Option<&str> {
        match &self.def {
            Definition::Pattern(p) => p.source.topic.as_deref(),
            Definition::Query(q) => q.source.topic.as_deref(),
            Definition::Alert(a) => a.source.topic.as_deref(),
        }
    }
    fn dead_letter(&self) -> Option<&str> {
        match &self.def {
            Definition::Pattern(p) => p.source.dead_letter.as_deref(),
            Definition::Query(q) => q.source.dead_letter.as_deref(),
            Definition::Alert(a) => a.source.dead_letter.as_deref(),
        }
    }
    fn upstream(&self) -> Option<&str> {
        match &self.def {
            Definition::Alert(a) => a.source.definition.as_deref(),
            _ => None,
        }
    }
}

/// `t == Some(topic)`, short names compared as words (no `memcmp` call per record).
#[inline]
fn is_topic(t: Option<&str>, topic: &str) -> bool {
    t.is_some_and(|t| crate::event::bytes_eq(t.as_bytes(), topic.as_bytes()))
}

/// The CEP and streaming analytics engine. See the crate docs.
pub struct Engine {
    limits: Limits,
    fields: FieldTable,
    defs: Vec<DefRt>,
    shard: Shard,
    /// The last processed offset per (topic, partition): its index in `offset_vals`.
    offsets: BTreeMap<String, BTreeMap<i32, usize>>,
    offset_vals: Vec<i64>,
    /// The (topic, partition) of the previous record and its index in `offset_vals`:
    /// records come in runs of one partition, so most need no map lookup (two searches
    /// of B-trees, one with string comparisons, per record before).
    last_offset: Option<(String, i32, usize)>,
    topics: HashMap<String, Arc<str>>,
    last_topic: Option<Arc<str>>,
    /// Recent string field values, shared between events (see [`StrCache`]).
    strs: StrCache,
}

fn compile(def: &Definition, fields: &mut FieldTable) -> Result<Rt, CepError> {
    Ok(match def {
        Definition::Pattern(p) => Rt::Pattern(Box::new(PatternRt::new(p, fields)?)),
        Definition::Query(q) => Rt::Query(Box::new(QueryRt::new(q, fields)?)),
        Definition::Alert(a) => Rt::Alert(Box::new(AlertRt::new(a, fields)?)),
    })
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Engine {
            limits,
            fields: FieldTable::default(),
            defs: Vec::new(),
            shard: Shard::default(),
            offsets: BTreeMap::new(),
            offset_vals: Vec::new(),
            last_offset: None,
            topics: HashMap::new(),
            last_topic: None,
            strs: StrCache::default(),
        }
    }

    /// Compiles and registers a definition; returns its id. On error nothing changes.
    pub fn register(&mut self, def: Definition) -> Result<String, CepError> {
        let id = def.id().to_string();
        if id.is_empty() || id.len() > 255 {
            return Err(CepError::new("id must be 1 to 255 characters").in_field("id"));
        }
        if self.defs.iter().any(|d| d.def.id() == id) {
            return Err(
                CepError::new(format!("a definition with id {id:?} already exists")).in_field("id"),
            );
        }
        if let Definition::Alert(a) = &def {
            if let Some(up) = &a.source.definition {
                if !self.defs.iter().any(|d| d.def.id() == up) {
                    return Err(CepError::new(format!("unknown definition {up:?}"))
                        .in_field("source.definition"));
                }
            }
        }
        let mut fields = self.fields.clone();
        let rt = compile(&def, &mut fields)?;
        self.fields = fields;
        let sees = Sees::of(&def, self.shard);
        let keeps_records = rt.keeps_records();
        self.defs.push(DefRt {
            def,
            paused: false,
            stats: Stats::default(),
            rt,
            sees,
            keeps_records,
        });
        Ok(id)
    }

    /// Makes this engine one of `shard.count` that split the work (each checkpointed on
    /// its own): patterns, whose state is per source partition and key, get the source
    /// partitions `p ≡ shard.index (mod shard.count)`; a windowed query or an alert
    /// rule over a topic gets all of its records in one shard (its windows and dedup
    /// keys span partitions), the one its id hashes to ([`Shard::of_definition`]), and
    /// nothing elsewhere. Every shard holds every definition (for listing); event time
    /// advances per shard, over the partitions it gets. One shard (the default) gets
    /// everything.
    pub fn set_shard(&mut self, shard: Shard) {
        self.shard = shard;
        for d in &mut self.defs {
            d.sees = Sees::of(&d.def, shard);
        }
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Whether any definition of this shard processes records of `topic`'s `partition`
    /// (paused ones included: they keep their place).
    pub fn reads(&self, topic: &str, partition: i32) -> bool {
        self.defs
            .iter()
            .any(|d| d.topic() == Some(topic) && d.sees.partition(partition))
    }

    /// Parses (JSON, or SQL when the text starts with INSERT/SELECT) and registers.
    pub fn register_text(&mut self, text: &str) -> Result<String, CepError> {
        let t = text.trim_start();
        let def = if t.starts_with('{') {
            parse_definition_json(text)?
        } else {
            crate::sql::parse_sql(text)?
        };
        self.register(def)
    }

    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.defs.len();
        self.defs.retain(|d| d.def.id() != id);
        before != self.defs.len()
    }

    pub fn pause(&mut self, id: &str) -> bool {
        self.set_paused(id, true)
    }

    pub fn resume(&mut self, id: &str) -> bool {
        self.set_paused(id, false)
    }

    fn set_paused(&mut self, id: &str, p: bool) -> bool {
        match self.defs.iter_mut().find(|d| d.def.id() == id) {
            Some(d) => {
                d.paused = p;
                true
            }
            None => false,
        }
    }

    pub fn definitions(&self) -> Vec<DefinitionInfo> {
        self.defs
            .iter()
            .map(|d| DefinitionInfo {
                id: d.def.id().to_string(),
                kind: d.def.kind().to_string(),
                sources: d.topic().map(|t| vec![t.to_string()]).unwrap_or_default(),
                paused: d.paused,
                json: d.def.to_json(),
            })
            .collect()
    }

    /// Topics the engine reads, sorted.
    pub fn sources(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .defs
            .iter()
            .filter_map(|d| d.topic().map(|t| t.to_string()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The last offset processed per (topic, partition): where to resume after a restore.
    pub fn offsets(&self) -> Vec<(String, i32, i64)> {
        self.offsets
            .iter()
            .flat_map(|(t, m)| {
                m.iter()
                    .map(move |(p, &i)| (t.clone(), *p, self.offset_vals[i]))
            })
            .collect()
    }

    /// Records `offset` as the last of (topic, partition) unless it is not past the one
    /// recorded (a replay duplicate: `false`).
    #[inline]
    fn advance_offset(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        if let Some((t, p, i)) = &self.last_offset {
            if *p == partition && crate::event::bytes_eq(t.as_bytes(), topic.as_bytes()) {
                let o = &mut self.offset_vals[*i];
                if offset <= *o {
                    return false;
                }
                *o = offset;
                return true;
            }
        }
        let m = match self.offsets.get_mut(topic) {
            Some(m) => m,
            None => self.offsets.entry(topic.to_string()).or_default(),
        };
        let i = match m.get(&partition) {
            Some(&i) => {
                let o = &mut self.offset_vals[i];
                if offset <= *o {
                    return false;
                }
                *o = offset;
                i
            }
            None => {
                let i = self.offset_vals.len();
                self.offset_vals.push(offset);
                m.insert(partition, i);
                i
            }
        };
        self.last_offset = Some((topic.to_string(), partition, i));
        true
    }

    /// Processes one record. A record at or below the last processed offset of its
    /// partition is a replay duplicate and is ignored.
    pub fn process(&mut self, rec: &SourceRecord<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.advance_offset(rec.topic, rec.partition, rec.offset) {
            return out;
        }
        // The last definition reading this topic gets the event itself, the others a
        // reference each (a pattern keeps the event: no count update for a copy that
        // would be dropped at the end of this call).
        let mut last = None;
        let mut keep_record = false;
        for (i, d) in self.defs.iter().enumerate() {
            if !d.paused && is_topic(d.topic(), rec.topic) && d.sees.partition(rec.partition) {
                last = Some(i);
                keep_record |= d.keeps_records;
            }
        }
        let Some(last) = last else {
            return out;
        };
        // The topic of the previous record first: records come in runs of one topic.
        let topic = match &self.last_topic {
            // Not stored again: one reference count update fewer per record.
            Some(t) if is_topic(Some(t), rec.topic) => t.clone(),
            _ => {
                let t = match self.topics.get(rec.topic) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = Arc::from(rec.topic);
                        self.topics.insert(rec.topic.to_string(), t.clone());
                        t
                    }
                };
                self.last_topic = Some(t.clone());
                t
            }
        };
        let ev = match self
            .fields
            .parse_shared(rec, topic, keep_record, &mut self.strs)
        {
            Ok(ev) => ev,
            Err(()) => {
                let mut sent: Vec<&str> = Vec::new();
                for d in self.defs.iter_mut().filter(|d| {
                    !d.paused && d.topic() == Some(rec.topic) && d.sees.partition(rec.partition)
                }) {
                    d.stats.not_json += 1;
                    if let Some(dl) = d.dead_letter() {
                        if !sent.contains(&dl) {
                            out.push(Output {
                                topic: dl.to_string(),
                                key: rec.key.map(|k| k.to_vec()),
                                value: rec.value.to_vec(),
                                definition_id: d.def.id().to_string(),
                                kind: OutputKind::DeadLetter,
                                timestamp_ms: rec.timestamp_ms,
                            });
                        }
                    }
                }
                // `sent` borrows defs; rebuild de-duplicated outputs
                let _ = &mut sent;
                let mut seen = Vec::new();
                out.retain(|o| {
                    if seen.contains(&o.topic) {
                        false
                    } else {
                        seen.push(o.topic.clone());
                        true
                    }
                });
                return out;
            }
        };
        let limits = self.limits;
        let mut ev = Some(ev);
        for i in 0..=last {
            let d = &mut self.defs[i];
            if d.paused || !is_topic(d.topic(), rec.topic) || !d.sees.partition(rec.partition) {
                continue;
            }
            let ev = match if i == last { ev.take() } else { ev.clone() } {
                Some(ev) => ev,
                None => break,
            };
            let start = out.len();
            match &mut d.rt {
                Rt::Pattern(p) => p.on_event(ev, rec, &limits, &mut d.stats, &mut out),
                Rt::Query(q) => q.on_event(&ev, rec, &limits, &mut d.stats, &mut out),
                Rt::Alert(a) => a.on_event(&ev, rec.timestamp_ms, &mut d.stats, &mut out),
            }
            if out.len() > start {
                self.chain(i, start, &mut out);
            }
        }
        out
    }

    /// Feeds the outputs `out[start..]` of definition `i` to alert rules watching it.
    fn chain(&mut self, i: usize, start: usize, out: &mut Vec<Output>) {
        let id = self.defs[i].def.id().to_string();
        let watchers: Vec<usize> = (0..self.defs.len())
            .filter(|&j| !self.defs[j].paused && self.defs[j].upstream() == Some(id.as_str()))
            .collect();
        if watchers.is_empty() {
            return;
        }
        let produced: Vec<Output> = out[start..]
            .iter()
            .filter(|o| matches!(o.kind, OutputKind::Match | OutputKind::WindowResult))
            .cloned()
            .collect();
        for o in produced {
            let raw = RawRecord::new(
                Arc::from(o.topic.as_str()),
                0,
                0,
                o.timestamp_ms,
                o.key.as_deref(),
                &o.value,
            );
            let Ok(ev) = self.fields.parse(raw) else {
                continue;
            };
            for &j in &watchers {
                let d = &mut self.defs[j];
                if let Rt::Alert(a) = &mut d.rt {
                    a.on_event(&ev, o.timestamp_ms, &mut d.stats, out);
                }
            }
        }
    }

    /// Advances processing time: processing-time windows fire, processing-time partial
    /// matches older than `within` expire.
    pub fn on_processing_time(&mut self, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        let limits = self.limits;
        for i in 0..self.defs.len() {
            let d = &mut self.defs[i];
            if d.paused {
                continue;
            }
            let start = out.len();
            match &mut d.rt {
                Rt::Pattern(p) => p.on_processing_time(now_ms, &limits, &mut d.stats, &mut out),
                Rt::Query(q) => q.on_processing_time(now_ms, &limits, &mut d.stats, &mut out),
                Rt::Alert(_) => {}
            }
            if out.len() > start {
                self.chain(i, start, &mut out);
            }
        }
        out
    }

    /// End of input (bounded replays, tests): releases events held for reordering, fires
    /// every open window, abandons partial matches and emits matches they were holding back.
    pub fn finish(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        let limits = self.limits;
        for i in 0..self.defs.len() {
            let d = &mut self.defs[i];
            let start = out.len();
            match &mut d.rt {
                Rt::Pattern(p) => p.finish(&limits, &mut d.stats, &mut out),
                Rt::Query(q) => q.finish(&limits, &mut d.stats, &mut out),
                Rt::Alert(_) => {}
            }
            if out.len() > start {
                self.chain(i, start, &mut out);
            }
        }
        out
    }

    pub fn stats(&self) -> Vec<DefinitionStats> {
        self.defs
            .iter()
            .map(|d| {
                let (partial_matches, keys, windows_open) = match &d.rt {
                    Rt::Pattern(p) => (p.partial_matches(), p.keys(), 0),
                    Rt::Query(q) => (0, q.keys(), q.windows_open()),
                    Rt::Alert(_) => (0, 0, 0),
                };
                DefinitionStats {
                    id: d.def.id().to_string(),
                    stats: d.stats,
                    partial_matches,
                    keys,
                    windows_open,
                }
            })
            .collect()
    }

    /// The full state (definitions, partial matches, windows, watermarks, offsets) as bytes
    /// (MessagePack). `restore` on any engine brings it back (and reads the JSON of older
    /// checkpoints).
    pub fn checkpoint(&self) -> Vec<u8> {
        self.capture().encode()
    }

    /// The state of [`Engine::checkpoint`], captured without encoding it, so that
    /// [`Captured::encode`], the costly part, can run on another thread while the engine
    /// goes on. Patterns' partial matches are copied, sharing their events and paths
    /// (which never change), so this is cheap enough to run under the broker's engine
    /// lock: a few milliseconds for 100,000 partial matches.
    pub fn capture(&self) -> Captured {
        Captured {
            limits: self.limits,
            fields: self.fields.paths().to_vec(),
            defs: self
                .defs
                .iter()
                .map(|d| CapturedDef {
                    kind: d.def.kind().to_string(),
                    json: d.def.to_json(),
                    paused: d.paused,
                    stats: d.stats,
                    state: match &d.rt {
                        Rt::Pattern(p) => CapturedRt::Pattern(p.capture()),
                        Rt::Query(q) => CapturedRt::Ready(RtSnap::Query(q.snapshot())),
                        Rt::Alert(a) => CapturedRt::Ready(RtSnap::Alert(a.snapshot())),
                    },
                })
                .collect(),
            offsets: self.offsets(),
        }
    }

    /// Replaces this engine's definitions and state with a checkpoint's (limits stay).
    /// On error the engine is unchanged.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), CepError> {
        // JSON (checkpoints written before MessagePack) begins with `{`; MessagePack's
        // map or array never does.
        let snap: Snapshot = if bytes.first() == Some(&b'{') {
            serde_json::from_slice(bytes)
                .map_err(|e| CepError::new(format!("invalid checkpoint: {e}")))?
        } else {
            rmp_serde::from_slice(bytes)
                .map_err(|e| CepError::new(format!("invalid checkpoint: {e}")))?
        };
        if snap.version != 1 {
            return Err(CepError::new(format!(
                "unsupported checkpoint version {}",
                snap.version
            )));
        }
        let mut e = Engine::new(self.limits);
        e.shard = self.shard;
        let mut states = Vec::new();
        for d in snap.defs {
            let def = parse_definition_json(&d.json)?;
            if def.kind() != d.kind {
                return Err(CepError::new(
                    "invalid checkpoint: definition kind mismatch",
                ));
            }
            e.register(def)?;
            if let Some(last) = e.defs.last_mut() {
                last.paused = d.paused;
                last.stats = d.stats;
            }
            states.push(d.state);
        }
        let fields = e.fields.clone();
        let reparse = |ev: &Event| -> Arc<Event> {
            if ev.is_projected() {
                // Its field values, by the ids of the engine that wrote the checkpoint.
                return Arc::new(Event {
                    rec: ev.rec.clone(),
                    vals: std::mem::ManuallyDrop::new(fields.remap(&ev.vals, &snap.fields)),
                });
            }
            Arc::new(fields.parse(ev.rec.clone()).unwrap_or_else(|_| Event {
                rec: ev.rec.clone(),
                vals: Default::default(),
            }))
        };
        for (d, s) in e.defs.iter_mut().zip(states) {
            match (&mut d.rt, s) {
                (Rt::Pattern(p), RtSnap::Pattern(s)) => p.restore(s, &reparse),
                (Rt::Query(q), RtSnap::Query(s)) => q.restore(s),
                (Rt::Alert(a), RtSnap::Alert(s)) => a.restore(s),
                _ => {
                    return Err(CepError::new(
                        "invalid checkpoint: state does not fit its definition",
                    ))
                }
            }
        }
        for (t, p, o) in snap.offsets {
            let m = e.offsets.entry(t).or_default();
            match m.get(&p) {
                // A repeated (topic, partition): the later entry wins, as before.
                Some(&i) => e.offset_vals[i] = o,
                None => {
                    m.insert(p, e.offset_vals.len());
                    e.offset_vals.push(o);
                }
            }
        }
        *self = e;
        Ok(())
    }
}

/// An engine state captured by [`Engine::capture`].
pub struct Captured {
    limits: Limits,
    /// The field table's paths by id (projected events hold their values by id).
    fields: Vec<String>,
    defs: Vec<CapturedDef>,
    offsets: Vec<(String, i32, i64)>,
}

struct CapturedDef {
    kind: String,
    json: String,
    paused: bool,
    stats: Stats,
    state: CapturedRt,
}

enum CapturedRt {
    Pattern(PatternCapture),
    Ready(RtSnap),
}

impl Captured {
    /// The checkpoint bytes ([`Engine::restore`] reads them).
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(&self.snapshot()).unwrap_or_default()
    }

    /// The same state as JSON, the encoding of checkpoints before MessagePack (which
    /// [`Engine::restore`] still reads); for compatibility tests.
    #[doc(hidden)]
    pub fn encode_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.snapshot()).unwrap_or_default()
    }

    fn snapshot(&self) -> Snapshot {
        // MessagePack with field names (`encode`): like JSON self-describing (fields with
        // defaults may be absent), at about 70% of its size, and read back without
        // parsing the records' JSON values out of escaped strings.
        Snapshot {
            version: 1,
            limits: self.limits,
            fields: self.fields.clone(),
            defs: self
                .defs
                .iter()
                .map(|d| DefSnap {
                    kind: d.kind.clone(),
                    json: d.json.clone(),
                    paused: d.paused,
                    stats: d.stats,
                    state: match &d.state {
                        CapturedRt::Pattern(p) => RtSnap::Pattern(p.to_snap()),
                        CapturedRt::Ready(s) => s.clone(),
                    },
                })
                .collect(),
            offsets: self.offsets.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    limits: Limits,
    /// Field paths by id, for the values of projected events (absent before them).
    #[serde(default)]
    fields: Vec<String>,
    defs: Vec<DefSnap>,
    offsets: Vec<(String, i32, i64)>,
}

#[derive(Serialize, Deserialize)]
struct DefSnap {
    kind: String,
    json: String,
    paused: bool,
    stats: Stats,
    state: RtSnap,
}

#[derive(Clone, Serialize, Deserialize)]
enum RtSnap {
    Pattern(PatternSnap),
    Query(QuerySnap),
    Alert(AlertSnap),
}
