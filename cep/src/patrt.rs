//! A registered pattern: time handling, keys, state limits and outputs around the matcher.

use crate::clock::{Clock, TimeSpec};
use crate::def::PatternDef;
use crate::emit::{compile_expr, Output, OutputKind, Template};
use crate::engine::{Limits, Stats};
use crate::error::CepError;
use crate::event::{Event, FieldTable, SourceRecord};
use crate::expr::{EventCtx, Expr};
use crate::keystr::KeyStr;
use crate::keytable::KeyTable;
use crate::pattern::{
    Completed, KeyState, MatchCounters, Matcher, Node, PathCtx, Pattern, Run, Runs,
};
use crate::prefetch;
use crate::value::{write_num, write_str};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

pub(crate) struct Buffered {
    time: i64,
    arrival: u64,
    ev: Arc<Event>,
}

impl PartialEq for Buffered {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.arrival) == (o.time, o.arrival)
    }
}
impl Eq for Buffered {}
impl PartialOrd for Buffered {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Buffered {
    fn cmp(&self, o: &Self) -> Ordering {
        // min-heap on (time, arrival)
        (o.time, o.arrival).cmp(&(self.time, self.arrival))
    }
}

/// Events held for reordering, released in (time, arrival) order. Most streams arrive
/// nearly in order, so an event not older than the newest one held goes to the back of a
/// queue (O(1), and the queue stays sorted because arrival numbers grow); only events
/// that arrive out of order pay for the heap. The smaller head of the two is next.
#[derive(Default)]
pub(crate) struct ReorderBuffer {
    in_order: VecDeque<Buffered>,
    late: BinaryHeap<Buffered>,
}

impl ReorderBuffer {
    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.late.len()
    }

    pub(crate) fn push(&mut self, b: Buffered) {
        match self.in_order.back() {
            Some(last) if (b.time, b.arrival) < (last.time, last.arrival) => self.late.push(b),
            _ => self.in_order.push_back(b),
        }
    }

    /// Whether the next event comes from the queue (else from the heap).
    fn next_in_order(&self) -> Option<bool> {
        match (self.in_order.front(), self.late.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(a), Some(b)) => Some((a.time, a.arrival) < (b.time, b.arrival)),
        }
    }

    /// [`ReorderBuffer::pop`] if the next event's time is at most `t` (one comparison
    /// of the two heads instead of two: `peek_time`, then `pop`).
    fn pop_due(&mut self, t: i64) -> Option<Buffered> {
        if self.next_in_order()? {
            if self.in_order.front()?.time > t {
                return None;
            }
            self.in_order.pop_front()
        } else {
            if self.late.peek()?.time > t {
                return None;
            }
            self.late.pop()
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Buffered> {
        match self.next_in_order()? {
            true => self.in_order.pop_front(),
            false => self.late.pop(),
        }
    }

    /// Starts loading the events that come next out of the queue: they were buffered
    /// thousands of events ago and are no longer in cache. Events are usually released
    /// one per call of `process`, so each load overlaps with parsing a record instead of
    /// stalling matching. The loads are staged, each reading what the one before loaded:
    /// the event after the next two is loaded; the one after next, loaded a call ago,
    /// gets its string values (the partition key) fetched, so that
    /// [`PatternRt::prefetch_keys`] can read its key on the next call; the next one's
    /// record bytes are fetched (they are freed after it is handled, which writes to
    /// them, when nothing keeps the event).
    #[inline]
    fn prefetch_next(&self) {
        if let Some(b) = self.in_order.get(2) {
            let p = Arc::as_ptr(&b.ev) as *const u8;
            for line in 0..(std::mem::size_of::<Event>() + 16).div_ceil(64) {
                prefetch(p.wrapping_add(line * 64));
            }
        }
        if let Some(b) = self.in_order.get(1) {
            for v in b.ev.vals.iter() {
                // Short strings are inline in the event (loaded with it).
                if let crate::value::Val::Str(s) = v {
                    if !s.is_inline() {
                        prefetch(s.as_ptr());
                    }
                }
            }
        }
        if let Some(b) = self.in_order.front() {
            prefetch(b.ev.rec.value().as_ptr());
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Buffered> {
        self.in_order.iter().chain(self.late.iter())
    }
}

/// One key's state.
pub(crate) struct KeyEntry {
    st: KeyState,
    last: i64,
}

/// A key's entry in the map, with the time its state is due for expiry
/// ([`Matcher::expiry_due`]), so that a sweep passes keys not yet due without reading
/// their runs. The state is in the map itself, not behind a pointer: a stored event
/// then costs one allocation and one cache miss fewer when its key is looked up, and
/// again when its state expires.
pub(crate) struct KeySlot {
    due: i64,
    e: KeyEntry,
}

pub(crate) struct PatternRt {
    pub id: String,
    pat: Pattern,
    time: TimeSpec,
    partition_by: Option<Expr>,
    emit_topic: String,
    emit_key: Option<Expr>,
    emit_value: Option<Template>,
    clock: Clock,
    buffer: ReorderBuffer,
    arrival: u64,
    seq: u64,
    keys: KeyTable<KeySlot>,
    scratch: String,
    /// The key of the event after next, worked out by [`PatternRt::prefetch_keys`] a
    /// call before that event is next.
    ahead: KeyAhead,
    /// The partition whose key prefix (`partition` SEP, this many bytes) `scratch`
    /// starts with.
    scratch_prefix: Option<(i32, usize)>,
    /// Run vector lent to the matcher for each event (swapped with the key's), so that
    /// matching an event allocates no vector.
    spare_runs: Runs,
    last_sweep: i64,
    since_sweep: u64,
}

const SEP: char = '\u{1}';

/// A buffered event's key and its hash, worked out ahead of its turn.
#[derive(Default)]
struct KeyAhead {
    /// The event's arrival number (0: none yet; arrivals start at 1).
    arrival: u64,
    hash: u64,
    key: String,
}

impl PatternRt {
    pub fn new(def: &PatternDef, fields: &mut FieldTable) -> Result<PatternRt, CepError> {
        if def.source.topic.is_none() || def.source.definition.is_some() {
            return Err(
                CepError::new("a pattern reads one topic: give source.topic").in_field("source"),
            );
        }
        let pat = Pattern::compile(
            &def.steps,
            def.within.as_deref(),
            def.skip.as_deref(),
            fields,
        )?;
        let names: Vec<String> = pat.steps.iter().map(|s| s.name.clone()).collect();
        let time = TimeSpec::compile(def.event_time.as_ref(), def.time.as_deref(), fields)?;
        let partition_by = match &def.partition_by {
            Some(p) => Some(compile_expr(p, fields, &[], "partition_by")?),
            None => None,
        };
        let emit_key = match &def.emit.key {
            Some(k) => Some(compile_expr(k, fields, &names, "emit.key")?),
            None => None,
        };
        let emit_value = match &def.emit.value {
            Some(v) => Some(Template::compile(v, fields, &names, "emit.value")?),
            None => None,
        };
        if def.emit.topic.is_empty() {
            return Err(CepError::new("emit.topic is empty"));
        }
        Ok(PatternRt {
            id: def.id.clone(),
            pat,
            time,
            partition_by,
            emit_topic: def.emit.topic.clone(),
            emit_key,
            emit_value,
            clock: Clock::default(),
            buffer: ReorderBuffer::default(),
            arrival: 0,
            seq: 0,
            keys: KeyTable::default(),
            scratch: String::new(),
            ahead: KeyAhead::default(),
            scratch_prefix: None,
            spare_runs: Runs::new(),
            last_sweep: i64::MIN,
            since_sweep: 0,
        })
    }

    fn matcher<'a>(pat: &'a Pattern, limits: &Limits) -> Matcher<'a> {
        Matcher {
            pat,
            max_runs: limits.max_partial_matches_per_key.max(1),
            max_len: limits.max_match_events.max(1),
        }
    }

    fn now(&self) -> i64 {
        if self.time.event.is_some() {
            self.clock.watermark
        } else {
            self.clock.max_seen
        }
    }

    /// Whether matches embed their events (no `emit.value`): then the events must keep
    /// their records' bytes.
    pub fn outputs_whole_events(&self) -> bool {
        self.emit_value.is_none()
    }

    /// `src` is the record `ev` was parsed from (for a late output).
    pub fn on_event(
        &mut self,
        ev: Arc<Event>,
        src: &SourceRecord<'_>,
        limits: &Limits,
        st: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        let Some(t0) = self.time.time_of(&ev) else {
            st.invalid_time += 1;
            return;
        };
        match &self.time.event {
            None => {
                let t = self.clock.max_seen.max(t0);
                self.clock.max_seen = t;
                self.clock.watermark = t;
                self.handle(&ev, t, limits, st, out);
            }
            Some(es) => {
                let w = self.clock.watermark;
                if t0 < w.saturating_sub(es.lateness) {
                    st.late += 1;
                    if let Some(topic) = &es.late_topic {
                        out.push(late_output(&self.id, topic, src));
                    }
                    return;
                }
                if t0 < w {
                    // within allowed lateness: matched now, out of order
                    self.handle(&ev, t0, limits, st, out);
                    return;
                }
                if self.buffer.len() >= limits.max_buffered_events.max(1) {
                    // make room: release the oldest buffered event early
                    if let Some(b) = self.buffer.pop() {
                        st.evictions += 1;
                        self.handle(&b.ev, b.time, limits, st, out);
                    }
                }
                self.arrival += 1;
                self.buffer.push(Buffered {
                    time: t0,
                    arrival: self.arrival,
                    ev,
                });
                self.clock.observe(t0, &self.time);
                self.release(limits, st, out);
            }
        }
        self.maybe_sweep(limits, st, out);
    }

    fn release(&mut self, limits: &Limits, st: &mut Stats, out: &mut Vec<Output>) {
        while let Some(b) = self.buffer.pop_due(self.clock.watermark) {
            self.buffer.prefetch_next();
            self.prefetch_keys();
            self.handle(&b.ev, b.time, limits, st, out);
        }
    }

    /// Starts loading the key state the next buffered events will need, in two stages
    /// (see [`ReorderBuffer::prefetch_next`] for their events): the key table's bucket
    /// of the event after next, and, for the next event, whose bucket the previous call
    /// started loading, its partial matches' last path nodes (the first thing matching
    /// reads, each its own allocation) or, when they are not inline, its run vector.
    /// These misses then overlap with handling this event, where they would stall the
    /// next one. Only hints: nothing here changes what is matched.
    #[inline]
    fn prefetch_keys(&mut self) {
        let Some(Expr::Field(f)) = &self.partition_by else {
            return;
        };
        if let Some(b) = self.buffer.in_order.front() {
            let a = &self.ahead;
            if a.arrival == b.arrival {
                let runs = self
                    .keys
                    .find_index(a.hash, &a.key)
                    .and_then(|i| self.keys.at(i))
                    .map(|bk| &bk.val.e.st.runs);
                match runs {
                    Some(r) if r.spilled() => prefetch(r.as_ptr() as *const u8),
                    Some(r) => {
                        for run in r.iter() {
                            prefetch(Arc::as_ptr(&run.path) as *const u8);
                        }
                    }
                    None => {}
                }
            }
        }
        if let Some(b) = self.buffer.in_order.get(1) {
            let k = &mut self.ahead.key;
            k.clear();
            crate::value::write_i64(i64::from(b.ev.rec.partition), k);
            k.push(SEP);
            b.ev.get(*f).key_text(k);
            let hash = self.keys.hash(k.as_str());
            self.keys.prefetch(hash);
            self.ahead.arrival = b.arrival;
            self.ahead.hash = hash;
        }
    }

    fn handle(
        &mut self,
        ev: &Arc<Event>,
        t: i64,
        limits: &Limits,
        st: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        st.events_in += 1;
        self.seq += 1;
        let seq = self.seq;
        let mut key = std::mem::take(&mut self.scratch);
        // `scratch` starts with the previous event's partition and the separator (it is
        // only ever put back with that prefix): kept when the partition is the same.
        match self.scratch_prefix {
            Some((p, len)) if p == ev.rec.partition && len <= key.len() => key.truncate(len),
            _ => {
                key.clear();
                // Without `fmt`: `write!` of the partition was ~4% of the engine's time.
                crate::value::write_i64(i64::from(ev.rec.partition), &mut key);
                key.push(SEP);
                self.scratch_prefix = Some((ev.rec.partition, key.len()));
            }
        }
        match &self.partition_by {
            // A plain field (the usual `partition_by`): what `eval` returns for it.
            Some(Expr::Field(f)) => ev.get(*f).key_text(&mut key),
            Some(p) => p.eval(&EventCtx(ev)).key_text(&mut key),
            None => {}
        }
        let mut mc = MatchCounters::default();
        let matcher = Matcher {
            pat: &self.pat,
            max_runs: limits.max_partial_matches_per_key.max(1),
            max_len: limits.max_match_events.max(1),
        };
        let spare = &mut self.spare_runs;
        let hash = self.keys.hash(key.as_str());
        let ix = self.keys.find_index(hash, key.as_str());
        let done = match ix.and_then(|i| self.keys.at_mut(i)) {
            Some(b) => {
                let slot = &mut b.val;
                let e = &mut slot.e;
                e.last = t;
                let done = matcher.on_event(&mut e.st, ev, t, seq, &mut mc, spare);
                if e.st.is_empty() {
                    if let Some(i) = ix {
                        self.keys.remove_at(i);
                    }
                } else {
                    slot.due = matcher.expiry_due(&e.st);
                }
                done
            }
            None => {
                let mut e = KeyEntry {
                    st: KeyState::default(),
                    last: t,
                };
                let done = matcher.on_event(&mut e.st, ev, t, seq, &mut mc, spare);
                if !e.st.is_empty() {
                    let due = matcher.expiry_due(&e.st);
                    self.keys
                        .insert_new(hash, key.as_str().into(), KeySlot { due, e });
                }
                done
            }
        };
        st.evictions += mc.evictions;
        for m in &done {
            out.push(self.output(m, &key, st));
        }
        self.scratch = key;
        if self.keys.len() > limits.max_keys.max(1) {
            self.evict_keys(limits, st);
        }
    }

    fn evict_keys(&mut self, limits: &Limits, st: &mut Stats) {
        let target = limits.max_keys.max(1) - limits.max_keys.max(1) / 8;
        let mut all: Vec<(i64, KeyStr)> = self
            .keys
            .iter()
            .map(|(k, s)| (s.e.last, k.clone()))
            .collect();
        all.sort();
        let n = self.keys.len().saturating_sub(target);
        for (_, k) in all.into_iter().take(n) {
            if let Some(KeySlot { e, .. }) = self.keys.remove(&k) {
                st.evictions += (e.st.runs.len() + e.st.pending.len()) as u64;
            }
        }
    }

    fn maybe_sweep(&mut self, limits: &Limits, st: &mut Stats, out: &mut Vec<Output>) {
        self.since_sweep += 1;
        let now = self.now();
        let due = match self.pat.within {
            Some(w) => self.since_sweep >= 65_536 || now.saturating_sub(self.last_sweep) >= w,
            None => false,
        };
        if due {
            // Event time: an event up to the allowed lateness behind the watermark is
            // still matched, so a run is dropped only once even such an event cannot
            // extend it (else whether a late event matched would depend on when the
            // last sweep ran).
            let lateness = self.time.event.as_ref().map_or(0, |e| e.lateness);
            self.sweep(now, now.saturating_sub(lateness), limits, st, out);
        }
    }

    /// Drops the runs that no event at or after `horizon` can extend, and releases the
    /// matches they held back; `now` is the time the sweep runs at.
    fn sweep(
        &mut self,
        now: i64,
        horizon: i64,
        limits: &Limits,
        st: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        self.since_sweep = 0;
        self.last_sweep = now;
        let m = Self::matcher(&self.pat, limits);
        let mut released: Vec<(KeyStr, Vec<Completed>)> = Vec::new();
        // First the keys that are due (a pass over the table, which the hardware
        // prefetches: it is read in order), then those keys: with their indices known
        // ahead, the path nodes and events their expiry frees (each a cache miss: stored
        // long ago, anywhere in memory) are loaded a few keys ahead, so that the misses
        // overlap instead of stalling each key in turn.
        let due: Vec<usize> = self
            .keys
            .indices()
            .filter(|&i| self.keys.at(i).is_some_and(|b| horizon >= b.val.due))
            .collect();
        for (j, &i) in due.iter().enumerate() {
            self.load_ahead(&due, j, true);
            let Some(b) = self.keys.at_mut(i) else {
                continue;
            };
            let st = &mut b.val.e.st;
            let r = m.expire(st, horizon);
            if !r.is_empty() {
                released.push((b.key.clone(), r));
            }
            if st.is_empty() {
                self.keys.remove_at(i);
            } else {
                b.val.due = m.expiry_due(st);
            }
        }
        released.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, ms) in released {
            for m in &ms {
                out.push(self.output(m, &k, st));
            }
        }
    }

    /// Before the key in bucket `ixs[j]` is handled, starts loading what the keys a few
    /// places further on will need, a stage at a time (each stage reads what the one
    /// before loaded): their buckets, their runs when not inline, their runs' last path
    /// nodes and, with `events` (a sweep, which frees them), the nodes before those and
    /// the events of both: freeing a node or an event is an atomic count update, which
    /// waits for its cache line.
    #[inline]
    fn load_ahead(&self, ixs: &[usize], j: usize, events: bool) {
        const BUCKETS_AHEAD: usize = 20;
        const RUNS_AHEAD: usize = 16;
        const NODES_AHEAD: usize = 12;
        const PREV_AHEAD: usize = 8;
        const EVENTS_AHEAD: usize = 4;
        let runs_at = |ahead: usize| {
            ixs.get(j + ahead)
                .and_then(|&i| self.keys.at(i))
                .map(|b| &b.val.e.st.runs)
        };
        if let Some(&i) = ixs.get(j + BUCKETS_AHEAD) {
            self.keys.prefetch_bucket(i);
        }
        if let Some(r) = runs_at(RUNS_AHEAD).filter(|r| r.spilled()) {
            let p = r.as_ptr() as *const u8;
            for off in (0..std::mem::size_of_val::<[Run]>(r)).step_by(64) {
                prefetch(p.wrapping_add(off));
            }
        }
        for r in runs_at(NODES_AHEAD).into_iter().flatten() {
            prefetch(Arc::as_ptr(&r.path) as *const u8);
        }
        if events {
            for r in runs_at(PREV_AHEAD).into_iter().flatten() {
                if let Some(p) = &r.path.prev {
                    prefetch(Arc::as_ptr(p) as *const u8);
                }
            }
            for r in runs_at(EVENTS_AHEAD).into_iter().flatten() {
                prefetch(Arc::as_ptr(&r.path.ev) as *const u8);
                if let Some(p) = &r.path.prev {
                    prefetch(Arc::as_ptr(&p.ev) as *const u8);
                }
            }
        }
    }

    pub fn on_processing_time(
        &mut self,
        now: i64,
        limits: &Limits,
        st: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        if self.time.event.is_none() && now > self.clock.max_seen {
            self.clock.max_seen = now;
            self.clock.watermark = now;
            if self.pat.within.is_some() {
                self.sweep(now, now, limits, st, out);
            }
        }
    }

    /// End of input: releases buffered events, abandons partial matches, emits held matches.
    pub fn finish(&mut self, limits: &Limits, st: &mut Stats, out: &mut Vec<Output>) {
        self.clock.watermark = i64::MAX;
        self.release(limits, st, out);
        let m = Self::matcher(&self.pat, limits);
        let mut released: Vec<(KeyStr, Vec<Completed>)> = Vec::new();
        for (k, s) in self.keys.iter_mut() {
            let r = m.finish(&mut s.e.st);
            if !r.is_empty() {
                released.push((k.clone(), r));
            }
        }
        self.keys.clear();
        released.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, ms) in released {
            for m in &ms {
                out.push(self.output(m, &k, st));
            }
        }
    }

    fn output(&self, m: &Completed, key: &str, st: &mut Stats) -> Output {
        st.outputs += 1;
        let keytext = key.split_once(SEP).map(|x| x.1).unwrap_or("");
        let last = &m.path;
        let ctx = PathCtx {
            path: Some(last),
            cur: Some((&last.ev, usize::MAX)),
        };
        let mut v = String::with_capacity(128);
        match &self.emit_value {
            Some(t) => t.write(&ctx, &mut v),
            None => {
                let nodes = last.to_vec();
                v.push_str("{\"pattern\":");
                write_str(&self.id, &mut v);
                v.push_str(",\"key\":");
                if self.partition_by.is_some() {
                    write_str(keytext, &mut v);
                } else {
                    v.push_str("null");
                }
                v.push_str(",\"events\":{");
                let mut first = true;
                for (si, s) in self.pat.steps.iter().enumerate() {
                    if s.negated {
                        continue;
                    }
                    if !first {
                        v.push(',');
                    }
                    first = false;
                    write_str(&s.name, &mut v);
                    v.push_str(":[");
                    let mut f2 = true;
                    for n in nodes.iter().filter(|n| n.step as usize == si) {
                        if !f2 {
                            v.push(',');
                        }
                        f2 = false;
                        v.push_str(n.ev.value_text());
                    }
                    v.push(']');
                }
                v.push_str("},\"first_timestamp\":");
                write_num(nodes.first().map(|n| n.time).unwrap_or(0) as f64, &mut v);
                v.push_str(",\"last_timestamp\":");
                write_num(last.time as f64, &mut v);
                v.push('}');
            }
        }
        let key = match &self.emit_key {
            Some(k) => {
                let mut s = String::new();
                k.eval(&ctx).key_text(&mut s);
                Some(s.into_bytes())
            }
            None if self.partition_by.is_some() => Some(keytext.as_bytes().to_vec()),
            None => None,
        };
        Output {
            topic: self.emit_topic.clone(),
            key,
            value: v.into_bytes(),
            definition_id: self.id.clone(),
            kind: OutputKind::Match,
            timestamp_ms: last.time,
        }
    }

    pub fn partial_matches(&self) -> u64 {
        self.keys.values().map(|s| s.e.st.runs.len() as u64).sum()
    }
    pub fn keys(&self) -> u64 {
        self.keys.len() as u64
    }

    // ------------------------------------------------------------ checkpoint

    /// The state, sharing every event and path node (no deep copy: the broker captures
    /// under its engine lock, and the stage waits for that). Costs a copy of each key's
    /// runs (sharing their paths) and a pointer copy per buffered event;
    /// [`PatternCapture::to_snap`] does the rest on another thread.
    pub fn capture(&self) -> PatternCapture {
        // A copy of a run adds a reference to its path's last node: a cache miss per run
        // in a large state. Loaded a few keys ahead (as in the sweep), the misses overlap.
        let ixs: Vec<usize> = self.keys.indices().collect();
        let mut keys = Vec::with_capacity(ixs.len());
        let mut runs = Vec::with_capacity(self.keys.values().map(|s| s.e.st.runs.len()).sum());
        for (j, &i) in ixs.iter().enumerate() {
            self.load_ahead(&ixs, j, false);
            let Some(b) = self.keys.at(i) else {
                continue;
            };
            let e = &b.val.e;
            runs.extend(e.st.runs.iter().cloned());
            keys.push(CapturedKey {
                key: b.key.clone(),
                last: e.last,
                runs: e.st.runs.len() as u32,
                pending: e.st.pending.clone(),
            });
        }
        PatternCapture {
            clock: self.clock.clone(),
            arrival: self.arrival,
            seq: self.seq,
            last_sweep: self.last_sweep,
            since_sweep: self.since_sweep,
            buffer: self
                .buffer
                .iter()
                .map(|b| (b.time, b.arrival, b.ev.clone()))
                .collect(),
            keys,
            // One vector for all keys' runs: a copy of each key's own would allocate
            // for every key with more than one.
            runs,
        }
    }

    pub fn restore(&mut self, s: PatternSnap, reparse: &dyn Fn(&Event) -> Arc<Event>) {
        // Only `within` matters to `expiry_due`.
        let m = Self::matcher(&self.pat, &Limits::default());
        let events: Vec<Arc<Event>> = s.events.iter().map(|e| reparse(e)).collect();
        // Nodes refer to earlier nodes only; a bad index drops what refers to it.
        let mut built: Vec<Option<Arc<Node>>> = Vec::with_capacity(s.nodes.len());
        for n in &s.nodes {
            let prev = match n.prev {
                Some(i) if i < built.len() => match &built[i] {
                    Some(p) => Some(p.clone()),
                    None => {
                        built.push(None);
                        continue;
                    }
                },
                Some(_) => {
                    built.push(None);
                    continue;
                }
                None => None,
            };
            built.push(events.get(n.ev).map(|ev| {
                Arc::new(Node {
                    ev: ev.clone(),
                    seq: n.seq,
                    time: n.time,
                    step: n.step,
                    prev,
                })
            }));
        }
        let node = |i: usize| built.get(i).and_then(|n| n.clone());
        self.clock = s.clock;
        self.arrival = s.arrival;
        self.seq = s.seq;
        self.last_sweep = s.last_sweep;
        self.since_sweep = s.since_sweep;
        self.buffer = ReorderBuffer::default();
        for (time, arrival, ev) in s.buffer {
            self.buffer.push(Buffered {
                time,
                arrival,
                ev: reparse(&ev),
            });
        }
        self.keys = s
            .keys
            .into_iter()
            .map(|(k, ks)| {
                let runs = ks
                    .runs
                    .into_iter()
                    .filter_map(|mut r| {
                        let path = match r.node {
                            Some(i) => node(i),
                            None => build_path(std::mem::take(&mut r.path), reparse),
                        }?;
                        Some(r.to_run(path))
                    })
                    .collect();
                let mut pending: Vec<Completed> = ks
                    .pending
                    .into_iter()
                    .filter_map(|p| build_path(p, reparse).map(Completed::from_path))
                    .collect();
                pending.extend(
                    ks.pending_nodes
                        .into_iter()
                        .filter_map(|i| node(i).map(Completed::from_path)),
                );
                let st = KeyState { runs, pending };
                let due = m.expiry_due(&st);
                (
                    KeyStr::from(k.as_str()),
                    KeySlot {
                        due,
                        e: KeyEntry { st, last: ks.last },
                    },
                )
            })
            .collect();
    }
}

/// A pattern's state as captured by [`PatternRt::capture`] (shared, not copied).
pub struct PatternCapture {
    clock: Clock,
    arrival: u64,
    seq: u64,
    last_sweep: i64,
    since_sweep: u64,
    buffer: Vec<(i64, u64, Arc<Event>)>,
    keys: Vec<CapturedKey>,
    /// The keys' runs, in the order of `keys` (each key's `runs` of them).
    runs: Vec<Run>,
}

struct CapturedKey {
    key: KeyStr,
    last: i64,
    runs: u32,
    pending: Vec<Completed>,
}

impl PatternCapture {
    /// The serialisable form (the costly part: runs off the engine lock).
    pub fn to_snap(&self) -> PatternSnap {
        // Partial matches share path prefixes and events: each node and event is
        // written once, in a table, and referenced by index.
        let mut table = NodeTable::default();
        let mut runs = self.runs.iter();
        let mut keys: Vec<(String, KeySnap)> = self
            .keys
            .iter()
            .map(|k| {
                (
                    k.key.to_string(),
                    KeySnap {
                        last: k.last,
                        runs: runs
                            .by_ref()
                            .take(k.runs as usize)
                            .map(|r| RunSnap::of(r, &mut table))
                            .collect(),
                        pending: Vec::new(),
                        pending_nodes: k.pending.iter().map(|c| table.intern(&c.path)).collect(),
                    },
                )
            })
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut buffer = self.buffer.clone();
        buffer.sort_by_key(|b| (b.0, b.1));
        PatternSnap {
            clock: self.clock.clone(),
            arrival: self.arrival,
            seq: self.seq,
            last_sweep: self.last_sweep,
            since_sweep: self.since_sweep,
            buffer,
            keys,
            nodes: table.nodes,
            events: table.events,
        }
    }
}

/// The original record (from its source: the event may be projected) to a late topic.
pub(crate) fn late_output(id: &str, topic: &str, src: &SourceRecord<'_>) -> Output {
    Output {
        topic: topic.to_string(),
        key: src.key.map(<[u8]>::to_vec),
        value: src.value.to_vec(),
        definition_id: id.to_string(),
        kind: OutputKind::Late,
        timestamp_ms: src.timestamp_ms,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSnap {
    ev: Event,
    seq: u64,
    time: i64,
    step: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSnap {
    step: u16,
    count: u32,
    waiting: bool,
    mask: u64,
    start_seq: u64,
    start_time: i64,
    len: u32,
    /// Older snapshots: the path's events in full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    path: Vec<NodeSnap>,
    /// The path's last node in the snapshot's node table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<usize>,
}

/// A path node in a snapshot: its event and the previous node, by index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRec {
    ev: usize,
    seq: u64,
    time: i64,
    step: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<usize>,
}

/// Builds a snapshot's node and event tables (each shared node and event once).
#[derive(Default)]
struct NodeTable {
    nodes: Vec<NodeRec>,
    events: Vec<Arc<Event>>,
    // Keyed by address: foldhash, not SipHash (which was most of a snapshot's encoding).
    node_ix: hashbrown::HashMap<*const Node, usize, foldhash::fast::RandomState>,
    event_ix: hashbrown::HashMap<*const Event, usize, foldhash::fast::RandomState>,
}

impl NodeTable {
    /// The index of `last` (adding it and its ancestors not in the table yet).
    fn intern(&mut self, last: &Arc<Node>) -> usize {
        if let Some(&i) = self.node_ix.get(&Arc::as_ptr(last)) {
            return i;
        }
        // Newest first, up to the first ancestor already in the table.
        let mut chain: Vec<&Node> = Vec::new();
        let mut known: Option<usize> = None;
        let mut cur: Option<&Node> = Some(last);
        while let Some(n) = cur {
            if let Some(&i) = self.node_ix.get(&(n as *const Node)) {
                known = Some(i);
                break;
            }
            chain.push(n);
            cur = n.prev.as_deref();
        }
        let mut prev = known;
        for n in chain.into_iter().rev() {
            let ev = match self.event_ix.get(&Arc::as_ptr(&n.ev)) {
                Some(&e) => e,
                None => {
                    self.events.push(n.ev.clone());
                    let e = self.events.len() - 1;
                    self.event_ix.insert(Arc::as_ptr(&n.ev), e);
                    e
                }
            };
            self.nodes.push(NodeRec {
                ev,
                seq: n.seq,
                time: n.time,
                step: n.step,
                prev,
            });
            let i = self.nodes.len() - 1;
            self.node_ix.insert(n as *const Node, i);
            prev = Some(i);
        }
        prev.unwrap_or(0)
    }
}

fn build_path(p: Vec<NodeSnap>, reparse: &dyn Fn(&Event) -> Arc<Event>) -> Option<Arc<Node>> {
    let mut cur: Option<Arc<Node>> = None;
    for n in p {
        cur = Some(Arc::new(Node {
            ev: reparse(&n.ev),
            seq: n.seq,
            time: n.time,
            step: n.step,
            prev: cur,
        }));
    }
    cur
}

impl RunSnap {
    fn of(r: &Run, table: &mut NodeTable) -> RunSnap {
        RunSnap {
            step: r.step,
            count: r.count,
            waiting: r.waiting,
            mask: r.mask,
            start_seq: r.start_seq,
            start_time: r.start_time,
            len: r.len,
            path: Vec::new(),
            node: Some(table.intern(&r.path)),
        }
    }
    #[allow(clippy::wrong_self_convention)]
    fn to_run(self, path: Arc<Node>) -> Run {
        Run {
            step: self.step,
            count: self.count,
            waiting: self.waiting,
            mask: self.mask,
            start_seq: self.start_seq,
            start_time: self.start_time,
            len: self.len,
            path,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySnap {
    last: i64,
    runs: Vec<RunSnap>,
    /// Older snapshots: held matches' paths in full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<Vec<NodeSnap>>,
    /// Held matches' last nodes in the snapshot's node table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending_nodes: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatternSnap {
    clock: Clock,
    arrival: u64,
    seq: u64,
    last_sweep: i64,
    since_sweep: u64,
    buffer: Vec<(i64, u64, Arc<Event>)>,
    keys: Vec<(String, KeySnap)>,
    #[serde(default)]
    nodes: Vec<NodeRec>,
    #[serde(default)]
    events: Vec<Arc<Event>>,
}
