//! Windowed analytics queries: tumbling, hopping and session windows, grouped aggregates,
//! sketches and anomaly scores.

use crate::clock::{Clock, TimeSpec};
use crate::def::{AggregatesDef, QueryDef};
use crate::emit::{compile_expr, Output, OutputKind};
use crate::engine::{Limits, Stats};
use crate::error::{parse_duration, CepError};
use crate::event::{Event, FieldTable, SourceRecord};
use crate::expr::{self, Ast, EventCtx, Expr};
use crate::patrt::late_output;
use crate::sketch::{hash64, DDSketch, Hll, TopK};
use crate::value::{write_json, write_num, write_str, Val};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::{BTreeMap, VecDeque};

/// Groups by key text: foldhash (seeded per map) instead of SipHash, as for pattern keys.
type GroupMap = hashbrown::HashMap<Box<str>, Group, foldhash::fast::RandomState>;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Win {
    Tumbling(i64),
    Hopping(i64, i64),
    Session(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum AggKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Percentile(f64),
    CountDistinct,
    TopK(usize),
    ZScore { threshold: f64, history: usize },
    Ewma { alpha: f64, threshold: f64 },
}

#[derive(Debug, Clone)]
struct Agg {
    name: String,
    kind: AggKind,
    arg: Option<Expr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Acc {
    Count(u64),
    Sum(f64),
    Avg(f64, u64),
    Min(Option<Val>),
    Max(Option<Val>),
    Pct(DDSketch),
    Distinct(Hll),
    Top(TopK),
    Anom {
        last: Option<f64>,
        max_abs: f64,
        anomalies: u64,
        value: Option<f64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Hist {
    None,
    Z {
        buf: VecDeque<f64>,
        sum: f64,
        sumsq: f64,
    },
    Ewma {
        mean: Option<f64>,
        var: f64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Win1 {
    start: i64,
    end: i64,
    fired: bool,
    accs: Vec<Acc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    vals: Vec<Val>,
    windows: Vec<Win1>,
    hist: Vec<Hist>,
    last: i64,
}

pub(crate) struct QueryRt {
    id: String,
    time: TimeSpec,
    filter: Option<Expr>,
    group: Vec<(String, Expr)>,
    aggs: Vec<Agg>,
    win: Win,
    emit_topic: String,
    clock: Clock,
    groups: GroupMap,
    timers: BTreeMap<i64, Vec<(Box<str>, i64, bool)>>,
    scratch: String,
    has_hist: bool,
}

fn agg_from_call(
    name: &str,
    func: &str,
    args: &[Ast],
    text: &str,
    fields: &mut FieldTable,
) -> Result<Agg, CepError> {
    let mut sc = expr::Scope {
        fields,
        steps: &[],
        current_step: None,
        text,
    };
    let num_arg = |i: usize| -> Result<Option<f64>, CepError> {
        match args.get(i) {
            None => Ok(None),
            Some(Ast::Lit(Val::Num(n), _)) => Ok(Some(*n)),
            Some(a) => Err(CepError::at(
                format!("argument {} of {func}(...) must be a number", i + 1),
                text,
                a.pos(),
            )),
        }
    };
    let kind = match func {
        "count" => AggKind::Count,
        "sum" => AggKind::Sum,
        "avg" => AggKind::Avg,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        "percentile" => {
            let p = num_arg(1)?.unwrap_or(0.5);
            let p = if p > 1.0 { p / 100.0 } else { p };
            if !(0.0..=1.0).contains(&p) {
                return Err(CepError::new(format!("percentile p must be in [0, 1], got {p}")));
            }
            AggKind::Percentile(p)
        }
        "count_distinct" => AggKind::CountDistinct,
        "top_k" => {
            let k = num_arg(1)?.unwrap_or(10.0);
            if !(1.0..=1000.0).contains(&k) {
                return Err(CepError::new("top_k k must be in 1..=1000"));
            }
            AggKind::TopK(k as usize)
        }
        "zscore" => {
            let t = num_arg(1)?.unwrap_or(3.0);
            let h = num_arg(2)?.unwrap_or(100.0);
            if !(2.0..=100_000.0).contains(&h) {
                return Err(CepError::new("zscore history must be in 2..=100000"));
            }
            AggKind::ZScore { threshold: t, history: h as usize }
        }
        "ewma" => {
            let a = num_arg(1)?.unwrap_or(0.3);
            let t = num_arg(2)?.unwrap_or(3.0);
            if !(a > 0.0 && a <= 1.0) {
                return Err(CepError::new("ewma alpha must be in (0, 1]"));
            }
            AggKind::Ewma { alpha: a, threshold: t }
        }
        f => {
            return Err(CepError::new(format!(
                "unknown aggregate {f:?}: expected count, sum, avg, min, max, percentile, count_distinct, top_k, zscore, ewma"
            )))
        }
    };
    let arg = match args.first() {
        None => None,
        Some(Ast::Path(p, _)) if p.len() == 1 && p[0] == "*" => None,
        Some(a) => Some(expr::compile(a, &mut sc)?),
    };
    if arg.is_none() && kind != AggKind::Count {
        return Err(CepError::new(format!("{func} needs a field")));
    }
    Ok(Agg {
        name: name.to_string(),
        kind,
        arg,
    })
}

impl QueryRt {
    pub fn new(def: &QueryDef, fields: &mut FieldTable) -> Result<QueryRt, CepError> {
        if def.source.topic.is_none() || def.source.definition.is_some() {
            return Err(
                CepError::new("a query reads one topic: give source.topic").in_field("source")
            );
        }
        let time = TimeSpec::compile(def.event_time.as_ref(), def.time.as_deref(), fields)?;
        let dur = |s: &Option<String>, f: &str| -> Result<i64, CepError> {
            let Some(s) = s else {
                return Err(CepError::new(format!("window.{f} is required")));
            };
            let d = parse_duration(s).map_err(|e| e.in_field(format!("window.{f}")))?;
            if d <= 0 {
                return Err(CepError::new(format!("window.{f} must be positive")));
            }
            Ok(d)
        };
        let win = match def.window.kind.as_str() {
            "tumbling" => Win::Tumbling(dur(&def.window.size, "size")?),
            "hopping" | "sliding" => {
                let size = dur(&def.window.size, "size")?;
                let slide = dur(&def.window.slide, "slide")?;
                if slide > size || size / slide > 1000 {
                    return Err(CepError::new(
                        "window.slide must be <= size, and size/slide <= 1000",
                    ));
                }
                Win::Hopping(size, slide)
            }
            "session" => Win::Session(dur(&def.window.gap, "gap")?),
            o => {
                return Err(CepError::new(format!(
                    "unknown window type {o:?}: expected tumbling, hopping or session"
                ))
                .in_field("window.type"))
            }
        };
        let filter = match &def.filter {
            Some(f) => Some(compile_expr(f, fields, &[], "where")?),
            None => None,
        };
        let mut group = Vec::new();
        for (i, g) in def.group_by.iter().enumerate() {
            group.push((
                g.clone(),
                compile_expr(g, fields, &[], &format!("group_by[{i}]"))?,
            ));
        }
        let mut aggs = Vec::new();
        match &def.aggregates {
            AggregatesDef::List(list) => {
                for (i, a) in list.iter().enumerate() {
                    let mut args = Vec::new();
                    let ctx = format!("aggregates[{i}]");
                    if let Some(f) = &a.field {
                        args.push(expr::parse(f).map_err(|e| e.in_field(format!("{ctx}.field")))?);
                    } else if a.func != "count" {
                        return Err(
                            CepError::new(format!("{} needs a field", a.func)).in_field(ctx)
                        );
                    }
                    let extra = match a.func.as_str() {
                        "percentile" => vec![a.p],
                        "top_k" => vec![a.k.map(|k| k as f64)],
                        "zscore" => vec![a.threshold, a.k.map(|k| k as f64)],
                        "ewma" => vec![a.alpha, a.threshold],
                        _ => vec![],
                    };
                    if args.is_empty() && !extra.is_empty() {
                        args.push(Ast::Path(vec!["*".into()], 0));
                    }
                    let mut defaults = [0.5, 10.0, 3.0, 100.0, 0.3, 3.0].into_iter();
                    let _ = &mut defaults;
                    for (j, x) in extra.iter().enumerate() {
                        let d = match (a.func.as_str(), j) {
                            ("percentile", _) => 0.5,
                            ("top_k", _) => 10.0,
                            ("zscore", 0) => 3.0,
                            ("zscore", _) => 100.0,
                            ("ewma", 0) => 0.3,
                            _ => 3.0,
                        };
                        args.push(Ast::Lit(Val::Num(x.unwrap_or(d)), 0));
                    }
                    let text = a.field.clone().unwrap_or_default();
                    aggs.push(
                        agg_from_call(&a.name, &a.func, &args, &text, fields)
                            .map_err(|e| e.in_field(ctx))?,
                    );
                }
            }
            AggregatesDef::Map(m) => {
                for (name, v) in m {
                    let ctx = format!("aggregates.{name}");
                    let Some(text) = v.as_str() else {
                        return Err(CepError::new(
                            "expected a string such as \"percentile(latency, 0.99)\"",
                        )
                        .in_field(ctx));
                    };
                    let ast = if text.trim() == "count(*)" || text.trim() == "count()" {
                        Ast::Call("count".into(), vec![], 0)
                    } else {
                        expr::parse(text).map_err(|e| e.in_field(ctx.clone()))?
                    };
                    let Ast::Call(func, args, _) = &ast else {
                        return Err(CepError::new(
                            "expected an aggregate call such as count() or avg(x)",
                        )
                        .in_field(ctx));
                    };
                    aggs.push(
                        agg_from_call(name, func, args, text, fields)
                            .map_err(|e| e.in_field(ctx))?,
                    );
                }
            }
        }
        if aggs.is_empty() {
            return Err(CepError::new("at least one aggregate is required").in_field("aggregates"));
        }
        let has_hist = aggs
            .iter()
            .any(|a| matches!(a.kind, AggKind::ZScore { .. } | AggKind::Ewma { .. }));
        Ok(QueryRt {
            id: def.id.clone(),
            time,
            filter,
            group,
            aggs,
            win,
            emit_topic: def.emit.topic.clone(),
            clock: Clock::default(),
            groups: GroupMap::default(),
            timers: BTreeMap::new(),
            scratch: String::new(),
            has_hist,
        })
    }

    fn lateness(&self) -> i64 {
        self.time.event.as_ref().map(|e| e.lateness).unwrap_or(0)
    }

    fn new_accs(aggs: &[Agg]) -> Vec<Acc> {
        aggs.iter()
            .map(|a| match &a.kind {
                AggKind::Count => Acc::Count(0),
                AggKind::Sum => Acc::Sum(0.0),
                AggKind::Avg => Acc::Avg(0.0, 0),
                AggKind::Min => Acc::Min(None),
                AggKind::Max => Acc::Max(None),
                AggKind::Percentile(_) => Acc::Pct(DDSketch::default()),
                AggKind::CountDistinct => Acc::Distinct(Hll::default()),
                AggKind::TopK(k) => Acc::Top(TopK::new(*k)),
                AggKind::ZScore { .. } | AggKind::Ewma { .. } => Acc::Anom {
                    last: None,
                    max_abs: 0.0,
                    anomalies: 0,
                    value: None,
                },
            })
            .collect()
    }

    /// `src` is the record `ev` was parsed from (for a late output).
    pub fn on_event(
        &mut self,
        ev: &Arc<Event>,
        src: &SourceRecord<'_>,
        limits: &Limits,
        st: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        let Some(t0) = self.time.time_of(ev) else {
            st.invalid_time += 1;
            return;
        };
        let t = match &self.time.event {
            None => {
                let t = self.clock.max_seen.max(t0);
                self.clock.max_seen = t;
                self.clock.watermark = t;
                t
            }
            Some(es) => {
                let w = self.clock.watermark;
                let al = es.lateness;
                let newest_end = match self.win {
                    Win::Tumbling(size) => t0.div_euclid(size) * size + size,
                    Win::Hopping(size, slide) => t0.div_euclid(slide) * slide + size,
                    Win::Session(gap) => t0.saturating_add(gap),
                };
                if newest_end.saturating_add(al) <= w {
                    st.late += 1;
                    if let Some(topic) = &es.late_topic {
                        out.push(late_output(&self.id, topic, src));
                    }
                    return;
                }
                t0
            }
        };
        let ctx = EventCtx(ev);
        if let Some(f) = &self.filter {
            if !f.test(&ctx) {
                self.advance(limits, st, out);
                return;
            }
        }
        st.events_in += 1;
        let mut key = std::mem::take(&mut self.scratch);
        key.clear();
        for (i, (_, g)) in self.group.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            g.eval(&ctx).key_text(&mut key);
        }
        if !self.groups.contains_key(key.as_str()) {
            if self.groups.len() >= limits.max_window_groups.max(1) {
                self.evict_groups(limits, st);
            }
            let g = Group {
                vals: self
                    .group
                    .iter()
                    .map(|(_, g)| g.eval(&ctx).into_owned())
                    .collect(),
                windows: Vec::new(),
                hist: self
                    .aggs
                    .iter()
                    .map(|a| match a.kind {
                        AggKind::ZScore { .. } => Hist::Z {
                            buf: VecDeque::new(),
                            sum: 0.0,
                            sumsq: 0.0,
                        },
                        AggKind::Ewma { .. } => Hist::Ewma {
                            mean: None,
                            var: 0.0,
                        },
                        _ => Hist::None,
                    })
                    .collect(),
                last: t,
            };
            self.groups.insert(key.as_str().into(), g);
        }
        let lateness = self.lateness();
        let w = self.clock.watermark;
        let aggs = &self.aggs;
        // Fresh accumulators, built only when the event opens a window.
        let new_accs = || Self::new_accs(aggs);
        let Some(g) = self.groups.get_mut(key.as_str()) else {
            self.scratch = key;
            return;
        };
        g.last = g.last.max(t);
        // per-event values and anomaly scores (history is per group, across windows)
        // Per-event scratch vectors inline (a handful of aggregates and windows).
        let vals: SmallVec<[Val; 4]> = aggs
            .iter()
            .map(|a| {
                a.arg
                    .as_ref()
                    .map(|e| e.eval(&ctx).into_owned())
                    .unwrap_or(Val::Null)
            })
            .collect();
        let scores: SmallVec<[Option<(f64, f64, bool)>; 4]> = aggs
            .iter()
            .zip(g.hist.iter_mut())
            .zip(vals.iter())
            .map(|((a, h), v)| anomaly(&a.kind, h, v.as_num()))
            .collect();
        // windows of this event
        let mut touched: SmallVec<[usize; 4]> = SmallVec::new();
        let mut timers: Timers = SmallVec::new();
        match self.win {
            Win::Tumbling(size) => {
                let s = t.div_euclid(size) * size;
                touched.push(find_or_add(g, s, s + size, &new_accs, &mut timers));
            }
            Win::Hopping(size, slide) => {
                let mut s = t.div_euclid(slide) * slide;
                while s + size > t {
                    if s.saturating_add(size).saturating_add(lateness) > w {
                        touched.push(find_or_add(g, s, s + size, &new_accs, &mut timers));
                    }
                    s -= slide;
                }
            }
            Win::Session(gap) => {
                let (mut s, mut e) = (t, t.saturating_add(gap));
                let mut merged = Win1 {
                    start: s,
                    end: e,
                    fired: false,
                    accs: new_accs(),
                };
                let mut i = 0;
                while i < g.windows.len() {
                    let x = &g.windows[i];
                    if x.start < e && s < x.end {
                        let x = g.windows.remove(i);
                        s = s.min(x.start);
                        e = e.max(x.end);
                        merged.fired |= x.fired;
                        for (a, b) in merged.accs.iter_mut().zip(x.accs.iter()) {
                            merge_acc(a, b);
                        }
                    } else {
                        i += 1;
                    }
                }
                merged.start = s;
                merged.end = e;
                g.windows.push(merged);
                timers.push((e, s));
                touched.push(g.windows.len() - 1);
            }
        }
        let mut refire: SmallVec<[usize; 4]> = SmallVec::new();
        for &wi in &touched {
            let Some(win) = g.windows.get_mut(wi) else {
                continue;
            };
            for ((acc, v), sc) in win.accs.iter_mut().zip(vals.iter()).zip(scores.iter()) {
                update_acc(acc, v, *sc);
            }
            if win.fired {
                refire.push(wi);
            }
        }
        for (end, start) in timers {
            self.timers
                .entry(end)
                .or_default()
                .push((key.as_str().into(), start, false));
        }
        let g = &self.groups[key.as_str()];
        let mut results: SmallVec<[Output; 1]> = SmallVec::new();
        for wi in refire {
            if let Some(win) = g.windows.get(wi) {
                results.push(self.result(&key, g, win));
            }
        }
        for r in results {
            st.outputs += 1;
            out.push(r);
        }
        self.scratch = key;
        if self.time.event.is_some() {
            self.clock.observe(t0, &self.time);
        }
        self.advance(limits, st, out);
    }

    fn evict_groups(&mut self, limits: &Limits, st: &mut Stats) {
        let target = limits.max_window_groups.max(1) - limits.max_window_groups.max(1) / 8;
        let mut all: Vec<(i64, Box<str>)> = self
            .groups
            .iter()
            .map(|(k, g)| (g.last, k.clone()))
            .collect();
        all.sort();
        let n = self.groups.len().saturating_sub(target);
        for (_, k) in all.into_iter().take(n) {
            if let Some(g) = self.groups.remove(&k) {
                st.evictions += g.windows.len().max(1) as u64;
            }
        }
    }

    /// Fires windows whose end is at or before the watermark.
    fn advance(&mut self, _limits: &Limits, st: &mut Stats, out: &mut Vec<Output>) {
        let w = self.clock.watermark;
        let lateness = self.lateness();
        while let Some((&end, _)) = self.timers.iter().next() {
            if end > w {
                break;
            }
            let Some(list) = self.timers.remove(&end) else {
                break;
            };
            for (gk, start, purge) in list {
                let Some(g) = self.groups.get_mut(&gk) else {
                    continue;
                };
                let Some(wi) = g
                    .windows
                    .iter()
                    .position(|x| x.start == start && (x.end == end || purge))
                else {
                    continue;
                };
                if purge {
                    if g.windows[wi].end.saturating_add(lateness) <= end {
                        g.windows.remove(wi);
                    }
                } else {
                    if g.windows[wi].fired {
                        continue;
                    }
                    g.windows[wi].fired = true;
                    let g = &self.groups[&gk];
                    let r = self.result(&gk, g, &g.windows[wi]);
                    st.outputs += 1;
                    out.push(r);
                    if lateness > 0 {
                        self.timers
                            .entry(end.saturating_add(lateness))
                            .or_default()
                            .push((gk.clone(), start, true));
                    } else if let Some(g) = self.groups.get_mut(&gk) {
                        g.windows.remove(wi);
                    }
                }
                if let Some(g) = self.groups.get(&gk) {
                    if g.windows.is_empty() && !self.has_hist {
                        self.groups.remove(&gk);
                    }
                }
            }
        }
    }

    fn result(&self, key: &str, g: &Group, win: &Win1) -> Output {
        let mut v = String::with_capacity(96);
        v.push_str("{\"window_start\":");
        write_num(win.start as f64, &mut v);
        v.push_str(",\"window_end\":");
        write_num(win.end as f64, &mut v);
        for ((name, _), val) in self.group.iter().zip(g.vals.iter()) {
            v.push(',');
            write_str(name, &mut v);
            v.push(':');
            write_json(val, &mut v);
        }
        for (a, acc) in self.aggs.iter().zip(win.accs.iter()) {
            v.push(',');
            write_str(&a.name, &mut v);
            v.push(':');
            write_acc(&a.kind, acc, &mut v);
        }
        v.push('}');
        Output {
            topic: self.emit_topic.clone(),
            key: if self.group.is_empty() {
                None
            } else {
                Some(key.as_bytes().to_vec())
            },
            value: v.into_bytes(),
            definition_id: self.id.clone(),
            kind: OutputKind::WindowResult,
            timestamp_ms: win.end,
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
            self.advance(limits, st, out);
        }
    }

    pub fn finish(&mut self, limits: &Limits, st: &mut Stats, out: &mut Vec<Output>) {
        self.clock.watermark = i64::MAX;
        self.advance(limits, st, out);
    }

    pub fn windows_open(&self) -> u64 {
        self.groups.values().map(|g| g.windows.len() as u64).sum()
    }
    pub fn keys(&self) -> u64 {
        self.groups.len() as u64
    }

    pub fn snapshot(&self) -> QuerySnap {
        let mut groups: Vec<(String, Group)> = self
            .groups
            .iter()
            .map(|(k, g)| (k.to_string(), g.clone()))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        QuerySnap {
            clock: self.clock.clone(),
            groups,
            timers: self
                .timers
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        v.iter().map(|(g, s, p)| (g.to_string(), *s, *p)).collect(),
                    )
                })
                .collect(),
        }
    }

    pub fn restore(&mut self, s: QuerySnap) {
        self.clock = s.clock;
        self.groups = s
            .groups
            .into_iter()
            .map(|(k, g)| (k.into_boxed_str(), g))
            .collect();
        self.timers = s
            .timers
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.into_iter()
                        .map(|(g, s, p)| (g.into_boxed_str(), s, p))
                        .collect(),
                )
            })
            .collect();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::type_complexity)]
pub struct QuerySnap {
    clock: Clock,
    groups: Vec<(String, Group)>,
    timers: Vec<(i64, Vec<(String, i64, bool)>)>,
}

/// Windows an event opened: (end, start).
type Timers = SmallVec<[(i64, i64); 4]>;

fn find_or_add(
    g: &mut Group,
    start: i64,
    end: i64,
    accs: &dyn Fn() -> Vec<Acc>,
    timers: &mut Timers,
) -> usize {
    if let Some(i) = g.windows.iter().position(|w| w.start == start) {
        return i;
    }
    g.windows.push(Win1 {
        start,
        end,
        fired: false,
        accs: accs(),
    });
    timers.push((end, start));
    g.windows.len() - 1
}

/// Returns (score, current smoothed value, anomalous).
fn anomaly(kind: &AggKind, h: &mut Hist, x: Option<f64>) -> Option<(f64, f64, bool)> {
    let x = x?;
    match (kind, h) {
        (AggKind::ZScore { threshold, history }, Hist::Z { buf, sum, sumsq }) => {
            let n = buf.len() as f64;
            let z = if n >= 2.0 {
                let mean = *sum / n;
                let var = (*sumsq / n - mean * mean).max(0.0);
                let sd = var.sqrt();
                if sd > 1e-12 {
                    (x - mean) / sd
                } else {
                    0.0
                }
            } else {
                0.0
            };
            buf.push_back(x);
            *sum += x;
            *sumsq += x * x;
            if buf.len() > *history {
                if let Some(old) = buf.pop_front() {
                    *sum -= old;
                    *sumsq -= old * old;
                }
            }
            let mean = *sum / buf.len().max(1) as f64;
            Some((z, mean, z.abs() > *threshold))
        }
        (AggKind::Ewma { alpha, threshold }, Hist::Ewma { mean, var }) => {
            let (z, m) = match *mean {
                None => (0.0, x),
                Some(m) => {
                    let sd = var.sqrt();
                    let z = if sd > 1e-12 { (x - m) / sd } else { 0.0 };
                    let d = x - m;
                    let nm = m + alpha * d;
                    *var = (1.0 - alpha) * (*var + alpha * d * d);
                    (z, nm)
                }
            };
            *mean = Some(m);
            Some((z, m, z.abs() > *threshold))
        }
        _ => None,
    }
}

fn update_acc(acc: &mut Acc, v: &Val, score: Option<(f64, f64, bool)>) {
    match acc {
        Acc::Count(n) => *n += 1,
        Acc::Sum(s) => {
            if let Some(x) = v.as_num() {
                *s += x
            }
        }
        Acc::Avg(s, n) => {
            if let Some(x) = v.as_num() {
                *s += x;
                *n += 1;
            }
        }
        Acc::Min(m) | Acc::Max(m) => {
            if !matches!(v, Val::Null) {
                let is_min = matches!(acc, Acc::Min(_));
                let (Acc::Min(m) | Acc::Max(m)) = acc else {
                    return;
                };
                let better = match m {
                    None => true,
                    Some(b) => match v.loose_cmp(b) {
                        Some(std::cmp::Ordering::Less) => is_min,
                        Some(std::cmp::Ordering::Greater) => !is_min,
                        _ => false,
                    },
                };
                if better {
                    *m = Some(v.clone());
                }
            } else {
                let _ = m;
            }
        }
        Acc::Pct(s) => {
            if let Some(x) = v.as_num() {
                s.add(x)
            }
        }
        Acc::Distinct(h) => {
            if !matches!(v, Val::Null) {
                let mut s = String::new();
                v.key_text(&mut s);
                h.add_hash(hash64(&s));
            }
        }
        Acc::Top(t) => {
            if !matches!(v, Val::Null) {
                let mut s = String::new();
                v.key_text(&mut s);
                t.add(&s, 1);
            }
        }
        Acc::Anom {
            last,
            max_abs,
            anomalies,
            value,
        } => {
            if let Some((z, m, a)) = score {
                *last = Some(z);
                *max_abs = max_abs.max(z.abs());
                *value = Some(m);
                if a {
                    *anomalies += 1;
                }
            }
        }
    }
}

fn merge_acc(a: &mut Acc, b: &Acc) {
    match (a, b) {
        (Acc::Count(x), Acc::Count(y)) => *x += y,
        (Acc::Sum(x), Acc::Sum(y)) => *x += y,
        (Acc::Avg(s, n), Acc::Avg(s2, n2)) => {
            *s += s2;
            *n += n2;
        }
        (Acc::Min(x), Acc::Min(Some(y)))
            if x.as_ref()
                .is_none_or(|x| y.loose_cmp(x) == Some(std::cmp::Ordering::Less)) =>
        {
            *x = Some(y.clone())
        }
        (Acc::Max(x), Acc::Max(Some(y)))
            if x.as_ref()
                .is_none_or(|x| y.loose_cmp(x) == Some(std::cmp::Ordering::Greater)) =>
        {
            *x = Some(y.clone())
        }
        (Acc::Pct(x), Acc::Pct(y)) => x.merge(y),
        (Acc::Distinct(x), Acc::Distinct(y)) => x.merge(y),
        (Acc::Top(x), Acc::Top(y)) => {
            for (k, n) in y.top(usize::MAX) {
                x.add(&k, n);
            }
        }
        (
            Acc::Anom {
                last,
                max_abs,
                anomalies,
                value,
            },
            Acc::Anom {
                last: l2,
                max_abs: m2,
                anomalies: a2,
                value: v2,
            },
        ) => {
            if last.is_none() {
                *last = *l2;
                *value = *v2;
            }
            *max_abs = max_abs.max(*m2);
            *anomalies += a2;
        }
        _ => {}
    }
}

fn write_acc(kind: &AggKind, acc: &Acc, v: &mut String) {
    match acc {
        Acc::Count(n) => write_num(*n as f64, v),
        Acc::Sum(s) => write_num(*s, v),
        Acc::Avg(s, n) => {
            if *n == 0 {
                v.push_str("null")
            } else {
                write_num(s / *n as f64, v)
            }
        }
        Acc::Min(m) | Acc::Max(m) => match m {
            Some(x) => write_json(x, v),
            None => v.push_str("null"),
        },
        Acc::Pct(s) => {
            let p = if let AggKind::Percentile(p) = kind {
                *p
            } else {
                0.5
            };
            match s.quantile(p) {
                Some(q) => write_num(q, v),
                None => v.push_str("null"),
            }
        }
        Acc::Distinct(h) => write_num(h.estimate().round(), v),
        Acc::Top(t) => {
            let k = if let AggKind::TopK(k) = kind { *k } else { 10 };
            v.push('[');
            for (i, (item, n)) in t.top(k).iter().enumerate() {
                if i > 0 {
                    v.push(',');
                }
                v.push_str("{\"value\":");
                write_str(item, v);
                v.push_str(",\"count\":");
                write_num(*n as f64, v);
                v.push('}');
            }
            v.push(']');
        }
        Acc::Anom {
            last,
            max_abs,
            anomalies,
            value,
        } => {
            v.push_str("{\"score\":");
            match last {
                Some(z) => write_num(*z, v),
                None => v.push_str("null"),
            }
            v.push_str(",\"max_abs_score\":");
            write_num(*max_abs, v);
            v.push_str(",\"anomalies\":");
            write_num(*anomalies as f64, v);
            v.push_str(if matches!(kind, AggKind::Ewma { .. }) {
                ",\"ewma\":"
            } else {
                ",\"mean\":"
            });
            match value {
                Some(x) => write_num(*x, v),
                None => v.push_str("null"),
            }
            v.push('}');
        }
    }
}
