//! Pattern compilation and the NFA matcher.
//!
//! A partial match ("run") is the list of events taken so far (a shared, persistent
//! linked list, so forks are O(1)) plus a small state: the step of the last taken event
//! and its repetition count, and whether the run is *waiting* (it ignored at least one
//! event since its last take and can only take at that step next). See the crate docs for
//! the exact semantics; `cep/tests/differential.rs` checks them against a brute-force
//! enumeration.

use crate::def::StepDef;
use crate::error::{parse_duration, CepError};
use crate::event::{Event, FieldTable};
use crate::expr::{self, Ctx, Expr, Scope};
use crate::value::{VStr, Val};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contig {
    Strict,
    Relaxed,
    Any,
}

impl Contig {
    fn parse(s: Option<&str>, default: Contig) -> Result<Contig, CepError> {
        Ok(match s {
            None => default,
            Some("strict") | Some("next") => Contig::Strict,
            Some("relaxed") | Some("followed_by") => Contig::Relaxed,
            Some("any") | Some("followed_by_any") => Contig::Any,
            Some(o) => {
                return Err(CepError::new(format!(
                    "unknown contiguity {o:?}: expected strict, relaxed or any"
                )))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NoSkip,
    ToNext,
    PastLast,
    ToFirst(usize),
    ToLast(usize),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub cond: Option<Expr>,
    pub min: u32,
    pub max: u32,
    pub greedy: bool,
    pub reluctant: bool,
    pub contiguity: Contig,
    pub inner: Contig,
    pub negated: bool,
    /// `cond` flattened, when it is a conjunction of tests on the current event's
    /// fields (`type == 'login' && !success`): evaluated in a loop, without the
    /// recursive [`Expr::test`] (built from `cond` at compile time).
    pub fast: Option<Vec<FastTest>>,
}

/// One test of a flattened condition (see [`Step::fast`]).
#[derive(Debug, Clone)]
pub enum FastTest {
    /// `field == 'text'` (`!=` when the flag is set), as `Expr::FieldEqStr`.
    EqStr(u32, VStr, bool),
    /// The same for a text of at most 8 bytes: its length and word (see
    /// [`VStr::eq_word`]), compared without reading the literal.
    EqWord(u32, usize, u64, bool),
    /// The field is truthy (falsy when the flag is set), as `Expr::Field` / `!field`.
    Truthy(u32, bool),
}

/// `field == 'text'` as a test: by word when the text has at most 8 bytes.
fn eq_test(f: u32, v: &VStr, neg: bool) -> FastTest {
    match crate::event::word8(v.as_bytes()) {
        Some(w) => FastTest::EqWord(f, v.len(), w, neg),
        None => FastTest::EqStr(f, v.clone(), neg),
    }
}

/// Appends the tests of `e` if it is a conjunction of field tests (else `false`).
fn flatten_cond(e: &Expr, out: &mut Vec<FastTest>) -> bool {
    match e {
        Expr::And(a, b) => flatten_cond(a, out) && flatten_cond(b, out),
        Expr::FieldEqStr(f, v, neg) => {
            out.push(eq_test(*f, v, *neg));
            true
        }
        Expr::Field(f) => {
            out.push(FastTest::Truthy(*f, false));
            true
        }
        Expr::Not(x) => match &**x {
            // !(eq != neg) == (eq != !neg)
            Expr::FieldEqStr(f, v, neg) => {
                out.push(eq_test(*f, v, !*neg));
                true
            }
            Expr::Field(f) => {
                out.push(FastTest::Truthy(*f, true));
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// [`fast_test`] with a current event (the matcher's case), inlined there.
#[inline(always)]
fn fast_test_on(tests: &[FastTest], ev: &Event) -> bool {
    tests.iter().all(|t| match t {
        FastTest::EqWord(f, len, w, neg) => {
            matches!(ev.get(*f), Val::Str(x) if x.eq_word(*len, *w)) != *neg
        }
        FastTest::EqStr(f, v, neg) => matches!(ev.get(*f), Val::Str(x) if x == v) != *neg,
        FastTest::Truthy(f, neg) => ev.get(*f).truthy() != *neg,
    })
}

/// What `Expr::test` gives for the flattened condition `tests` on current event `ev`.
#[inline]
fn fast_test(tests: &[FastTest], ev: Option<&Event>) -> bool {
    tests.iter().all(|t| match t {
        FastTest::EqStr(f, v, neg) => {
            let eq = matches!(ev.map(|e| e.get(*f)), Some(Val::Str(x)) if x == v);
            eq != *neg
        }
        FastTest::EqWord(f, len, w, neg) => {
            let eq = matches!(ev.map(|e| e.get(*f)), Some(Val::Str(x)) if x.eq_word(*len, *w));
            eq != *neg
        }
        FastTest::Truthy(f, neg) => ev.is_some_and(|e| e.get(*f).truthy()) != *neg,
    })
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub steps: Vec<Step>,
    pub within: Option<i64>,
    pub skip: Skip,
    /// First non-negated step after each step.
    pub next_real: Vec<Option<usize>>,
    /// True when every step after this one is optional (a match may end here).
    pub complete_after: Vec<bool>,
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

impl Pattern {
    /// Compiles steps, `within` and `skip` (the JSON forms). Field paths are interned in
    /// `fields`.
    pub fn compile(
        defs: &[StepDef],
        within: Option<&str>,
        skip: Option<&str>,
        fields: &mut FieldTable,
    ) -> Result<Pattern, CepError> {
        if defs.is_empty() {
            return Err(CepError::new("a pattern needs at least one step").in_field("steps"));
        }
        if defs.len() > 64 {
            return Err(CepError::new("a pattern has at most 64 steps").in_field("steps"));
        }
        let names: Vec<String> = defs.iter().map(|d| d.name.clone()).collect();
        let mut steps = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let ctx = format!("steps[{i}]");
            let e = |m: String| CepError::new(m).in_field(ctx.clone());
            if !valid_name(&d.name) {
                return Err(e(format!("step name {:?} must be an identifier", d.name)));
            }
            if names[..i].contains(&d.name) {
                return Err(e(format!("duplicate step name {:?}", d.name)));
            }
            let (mut min, mut max) = (1u32, 1u32);
            if let Some(t) = &d.times {
                match t {
                    crate::def::TimesDef::Exactly(n) => {
                        min = *n;
                        max = *n;
                    }
                    crate::def::TimesDef::Range { min: a, max: b } => {
                        min = a.unwrap_or(1);
                        max = b.unwrap_or(u32::MAX);
                    }
                }
            }
            if d.one_or_more {
                if d.times.is_some() {
                    return Err(e("give either times or one_or_more".into()));
                }
                min = 1;
                max = u32::MAX;
            }
            if d.optional {
                min = 0;
            }
            if max == 0 || min > max {
                return Err(e(format!("invalid repetition: min {min}, max {max}")));
            }
            if d.greedy && d.reluctant {
                return Err(e("a step cannot be both greedy and reluctant".into()));
            }
            let contiguity = Contig::parse(d.contiguity.as_deref(), Contig::Strict)
                .map_err(|x| x.in_field(format!("{ctx}.contiguity")))?;
            let inner = Contig::parse(d.inner_contiguity.as_deref(), Contig::Relaxed)
                .map_err(|x| x.in_field(format!("{ctx}.inner_contiguity")))?;
            if d.not {
                if i == 0 {
                    return Err(e("the first step cannot be negated".into()));
                }
                if d.times.is_some() || d.one_or_more || d.optional || d.greedy || d.reluctant {
                    return Err(e("a negated step cannot have a quantifier".into()));
                }
                if contiguity == Contig::Any {
                    return Err(e(
                        "a negated step is strict (notNext) or relaxed (notFollowedBy)".into(),
                    ));
                }
                if !defs[i + 1..].iter().any(|n| {
                    !n.not
                        && !n.optional
                        && n.times.as_ref().is_none_or(|t| {
                            !matches!(
                                t,
                                crate::def::TimesDef::Exactly(0)
                                    | crate::def::TimesDef::Range { min: Some(0), .. }
                            )
                        })
                }) {
                    return Err(e(
                        "a negated step must be followed by a required step".into()
                    ));
                }
            }
            let cond = match &d.condition {
                None => None,
                Some(text) => {
                    let ast = expr::parse(text).map_err(|x| x.in_field(format!("{ctx}.where")))?;
                    let mut sc = Scope {
                        fields,
                        steps: &names,
                        current_step: Some(i),
                        text,
                    };
                    Some(
                        expr::compile(&ast, &mut sc)
                            .map_err(|x| x.in_field(format!("{ctx}.where")))?,
                    )
                }
            };
            let fast = cond.as_ref().and_then(|c| {
                let mut v = Vec::new();
                flatten_cond(c, &mut v).then_some(v)
            });
            steps.push(Step {
                name: d.name.clone(),
                fast,
                cond,
                min,
                max,
                greedy: d.greedy,
                reluctant: d.reluctant,
                contiguity,
                inner,
                negated: d.not,
            });
        }
        let within = match within {
            None => None,
            Some(w) => {
                let ms = parse_duration(w).map_err(|e| e.in_field("within"))?;
                if ms <= 0 {
                    return Err(CepError::new("within must be positive").in_field("within"));
                }
                Some(ms)
            }
        };
        let step_idx = |name: &str| -> Result<usize, CepError> {
            match names.iter().position(|n| n == name) {
                Some(i) if !steps[i].negated => Ok(i),
                Some(_) => Err(
                    CepError::new(format!("cannot skip to negated step {name:?}")).in_field("skip"),
                ),
                None => Err(CepError::new(format!("unknown step {name:?}")).in_field("skip")),
            }
        };
        let skip = match skip.unwrap_or("no_skip") {
            "no_skip" => Skip::NoSkip,
            "skip_to_next" => Skip::ToNext,
            "past_last_event" | "skip_past_last_event" => Skip::PastLast,
            s => {
                if let Some(n) = s.strip_prefix("skip_to_first:") {
                    Skip::ToFirst(step_idx(n.trim())?)
                } else if let Some(n) = s.strip_prefix("skip_to_last:") {
                    Skip::ToLast(step_idx(n.trim())?)
                } else {
                    return Err(CepError::new(format!(
                        "unknown skip strategy {s:?}: expected no_skip, skip_to_next, past_last_event, skip_to_first:STEP or skip_to_last:STEP"
                    ))
                    .in_field("skip"));
                }
            }
        };
        let n = steps.len();
        let next_real = (0..n)
            .map(|i| (i + 1..n).find(|&j| !steps[j].negated))
            .collect();
        let complete_after = (0..n)
            .map(|i| steps[i + 1..].iter().all(|s| s.min == 0 && !s.negated))
            .collect();
        Ok(Pattern {
            steps,
            within,
            skip,
            next_real,
            complete_after,
        })
    }

    /// Evaluates step `j`'s condition.
    #[inline]
    pub fn test<C: Ctx>(&self, j: usize, ctx: &C) -> bool {
        match self.steps.get(j) {
            None => true,
            Some(s) => match (&s.fast, &s.cond) {
                (Some(f), _) => fast_test(f, ctx.current()),
                (None, None) => true,
                (None, Some(c)) => c.test(ctx),
            },
        }
    }

    fn deferred(&self) -> bool {
        matches!(
            self.skip,
            Skip::PastLast | Skip::ToFirst(_) | Skip::ToLast(_)
        )
    }
}

// ---------------------------------------------------------------- runtime state

/// One taken event of a partial match (newest first, shared between forks).
#[derive(Debug)]
pub struct Node {
    pub ev: Arc<Event>,
    pub seq: u64,
    pub time: i64,
    pub step: u16,
    pub prev: Option<Arc<Node>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Iterative drop: long chains must not overflow the stack.
        let mut cur = self.prev.take();
        while let Some(n) = cur {
            match Arc::try_unwrap(n) {
                Ok(mut inner) => cur = inner.prev.take(),
                Err(_) => break,
            }
        }
    }
}

impl Node {
    pub fn iter(&self) -> NodeIter<'_> {
        NodeIter { cur: Some(self) }
    }
    /// Events oldest first.
    pub fn to_vec(&self) -> Vec<&Node> {
        let mut v: Vec<&Node> = self.iter().collect();
        v.reverse();
        v
    }
}

pub struct NodeIter<'a> {
    cur: Option<&'a Node>,
}

impl<'a> Iterator for NodeIter<'a> {
    type Item = &'a Node;
    fn next(&mut self) -> Option<&'a Node> {
        let c = self.cur?;
        self.cur = c.prev.as_deref();
        Some(c)
    }
}

/// Context over a run's path plus the event being tested (as step `cur.1`).
pub struct PathCtx<'a> {
    pub path: Option<&'a Node>,
    pub cur: Option<(&'a Event, usize)>,
}

impl Ctx for PathCtx<'_> {
    #[inline]
    fn current(&self) -> Option<&Event> {
        self.cur.map(|c| c.0)
    }
    fn first(&self, step: usize) -> Option<&Event> {
        let mut found = None;
        let mut n = self.path;
        while let Some(x) = n {
            if x.step as usize == step {
                found = Some(&*x.ev);
            }
            n = x.prev.as_deref();
        }
        found.or(match self.cur {
            Some((e, s)) if s == step => Some(e),
            _ => None,
        })
    }
    fn last(&self, step: usize) -> Option<&Event> {
        if let Some((e, s)) = self.cur {
            if s == step {
                return Some(e);
            }
        }
        let mut n = self.path;
        while let Some(x) = n {
            if x.step as usize == step {
                return Some(&x.ev);
            }
            n = x.prev.as_deref();
        }
        None
    }
    fn each(&self, step: usize, f: &mut dyn FnMut(&Event)) {
        if let Some((e, s)) = self.cur {
            if s == step {
                f(e);
            }
        }
        let mut n = self.path;
        while let Some(x) = n {
            if x.step as usize == step {
                f(&x.ev);
            }
            n = x.prev.as_deref();
        }
    }
}

/// A context over a slice of (event, step) in order, plus an optional current event.
pub struct SliceCtx<'a> {
    pub items: &'a [(&'a Event, usize)],
    pub cur: Option<(&'a Event, usize)>,
}

impl Ctx for SliceCtx<'_> {
    fn current(&self) -> Option<&Event> {
        self.cur.map(|c| c.0)
    }
    fn first(&self, step: usize) -> Option<&Event> {
        self.items
            .iter()
            .find(|(_, s)| *s == step)
            .map(|(e, _)| *e)
            .or(match self.cur {
                Some((e, s)) if s == step => Some(e),
                _ => None,
            })
    }
    fn last(&self, step: usize) -> Option<&Event> {
        if let Some((e, s)) = self.cur {
            if s == step {
                return Some(e);
            }
        }
        self.items
            .iter()
            .rev()
            .find(|(_, s)| *s == step)
            .map(|(e, _)| *e)
    }
    fn each(&self, step: usize, f: &mut dyn FnMut(&Event)) {
        for (e, s) in self.items {
            if *s == step {
                f(e);
            }
        }
        if let Some((e, s)) = self.cur {
            if s == step {
                f(e);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    pub step: u16,
    pub count: u32,
    pub waiting: bool,
    pub mask: u64,
    pub start_seq: u64,
    pub start_time: i64,
    pub len: u32,
    pub path: Arc<Node>,
}

/// A complete match.
#[derive(Debug, Clone)]
pub struct Completed {
    /// (sequence number, step) of each event, oldest first.
    pub items: Vec<(u64, u16)>,
    pub path: Arc<Node>,
}

impl Completed {
    pub fn from_path(path: Arc<Node>) -> Completed {
        Completed::new(path)
    }
    fn new(path: Arc<Node>) -> Completed {
        // Newest first along the path, then reversed: one allocation.
        let mut items: Vec<(u64, u16)> = path.iter().map(|n| (n.seq, n.step)).collect();
        items.reverse();
        Completed { items, path }
    }
    pub fn start(&self) -> u64 {
        self.items.first().map(|x| x.0).unwrap_or(0)
    }
    pub fn last(&self) -> u64 {
        self.items.last().map(|x| x.0).unwrap_or(0)
    }
    fn order_key(&self) -> (u64, u64, &[(u64, u16)]) {
        (self.start(), self.last(), &self.items)
    }
}

/// The partial matches of one key: one inline (most keys hold one at a time), so that a
/// key's first partial match needs no allocation of its own.
pub type Runs = SmallVec<[Run; 1]>;

/// Partial matches and not-yet-emitted matches of one key.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    pub runs: Runs,
    pub pending: Vec<Completed>,
}

impl KeyState {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.pending.is_empty()
    }
}

/// Counters updated by the matcher.
#[derive(Debug, Default, Clone, Copy)]
pub struct MatchCounters {
    pub evictions: u64,
}

pub struct Matcher<'a> {
    pub pat: &'a Pattern,
    pub max_runs: usize,
    pub max_len: u32,
}

struct Step1<'a> {
    x: &'a Arc<Event>,
    time: i64,
    seq: u64,
}

impl Matcher<'_> {
    #[inline]
    fn cond(&self, j: usize, path: Option<&Node>, x: &Event) -> bool {
        // A flattened condition reads only the event: tested here, without a context.
        if let Some(Step { fast: Some(f), .. }) = self.pat.steps.get(j) {
            return fast_test_on(f, x);
        }
        self.pat.test(
            j,
            &PathCtx {
                path,
                cur: Some((x, j)),
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        new: &mut Runs,
        done: &mut Vec<Arc<Node>>,
        c: &mut MatchCounters,
        e: &Step1<'_>,
        start: (u64, i64),
        path: Option<&Arc<Node>>,
        len: u32,
        j: usize,
        count: u32,
    ) {
        if len >= self.max_len {
            c.evictions += 1;
            return;
        }
        let s = &self.pat.steps[j];
        let node = Arc::new(Node {
            ev: e.x.clone(),
            seq: e.seq,
            time: e.time,
            step: j as u16,
            prev: path.cloned(),
        });
        if count >= s.min && self.pat.complete_after[j] {
            done.push(node.clone());
        }
        if count < s.max || self.pat.next_real[j].is_some() {
            new.push(Run {
                step: j as u16,
                count,
                waiting: false,
                mask: 0,
                start_seq: start.0,
                start_time: start.1,
                len: len + 1,
                path: node,
            });
        }
    }

    fn mask_hits(&self, mask: u64, path: Option<&Node>, x: &Event) -> bool {
        let mut m = mask;
        while m != 0 {
            let k = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.cond(k, path, x) {
                return true;
            }
        }
        false
    }

    fn reluctant_block(&self, i: usize, count: u32, path: Option<&Node>, x: &Event) -> bool {
        let s = &self.pat.steps[i];
        s.reluctant
            && count >= s.min
            && count > 0
            && self.pat.next_real[i].is_some_and(|t| self.cond(t, path, x))
    }

    /// Proceeds from after step `from - 1` (or from the start) with event `e`.
    #[allow(clippy::too_many_arguments)]
    fn proceed(
        &self,
        new: &mut Runs,
        done: &mut Vec<Arc<Node>>,
        c: &mut MatchCounters,
        e: &Step1<'_>,
        from: usize,
        run: Option<&Run>,
    ) {
        let path = run.map(|r| &r.path);
        let pref = path.map(|p| &**p);
        let start = run
            .map(|r| (r.start_seq, r.start_time))
            .unwrap_or((e.seq, e.time));
        let len = run.map(|r| r.len).unwrap_or(0);
        let mut mask = 0u64;
        for j in from..self.pat.steps.len() {
            let s = &self.pat.steps[j];
            if s.negated {
                if run.is_none() {
                    continue;
                }
                match s.contiguity {
                    Contig::Strict => {
                        if self.cond(j, pref, e.x) {
                            return;
                        }
                    }
                    _ => mask |= 1u64 << j,
                }
                continue;
            }
            let cj = self.cond(j, pref, e.x);
            if cj {
                self.take(new, done, c, e, start, path, len, j, 1);
            }
            if let Some(r) = run {
                let can_ignore = match s.contiguity {
                    Contig::Strict => false,
                    Contig::Relaxed => !cj,
                    Contig::Any => true,
                };
                if can_ignore && !self.mask_hits(mask, pref, e.x) {
                    new.push(Run {
                        step: j as u16,
                        count: 0,
                        waiting: true,
                        mask,
                        ..r.clone()
                    });
                }
            }
            if s.min > 0 {
                break;
            }
        }
    }

    fn step_run(
        &self,
        r: Run,
        new: &mut Runs,
        done: &mut Vec<Arc<Node>>,
        c: &mut MatchCounters,
        e: &Step1<'_>,
    ) {
        let i = r.step as usize;
        let s = &self.pat.steps[i];
        let path = Some(&*r.path);
        let ci = self.cond(i, path, e.x);
        let start = (r.start_seq, r.start_time);
        if r.waiting {
            if ci && !self.reluctant_block(i, r.count, path, e.x) {
                self.take(new, done, c, e, start, Some(&r.path), r.len, i, r.count + 1);
            }
            let contig = if r.count == 0 { s.contiguity } else { s.inner };
            let can_ignore = match contig {
                Contig::Strict => false,
                Contig::Relaxed => !ci,
                Contig::Any => true,
            };
            if can_ignore && !self.mask_hits(r.mask, path, e.x) {
                new.push(r);
            }
            return;
        }
        if r.count < s.max {
            if ci && !self.reluctant_block(i, r.count, path, e.x) {
                self.take(new, done, c, e, start, Some(&r.path), r.len, i, r.count + 1);
            }
            let can_ignore = match s.inner {
                Contig::Strict => false,
                Contig::Relaxed => !ci,
                Contig::Any => true,
            };
            if can_ignore {
                new.push(Run {
                    waiting: true,
                    mask: 0,
                    ..r.clone()
                });
            }
        }
        if r.count >= s.min && !(s.greedy && r.count < s.max && ci) {
            self.proceed(new, done, c, e, i + 1, Some(&r));
        }
    }

    /// Feeds one event of this key; returns the matches to emit now, in order. `spare` is
    /// an empty vector the new runs are built in; it gets the key's old (emptied) one
    /// back, so that vectors are reused from event to event instead of allocated.
    pub fn on_event(
        &self,
        ks: &mut KeyState,
        x: &Arc<Event>,
        time: i64,
        seq: u64,
        c: &mut MatchCounters,
        spare: &mut Runs,
    ) -> Vec<Completed> {
        let e = Step1 { x, time, seq };
        if ks.runs.is_empty() {
            // No partial matches (most keys): only new starts, built in place, without
            // swapping run vectors. The same as below with `old` empty.
            let mut done = Vec::new();
            self.proceed(&mut ks.runs, &mut done, c, &e, 0, None);
            return self.settle(ks, done, c);
        }
        let mut old = std::mem::take(&mut ks.runs);
        let mut new = std::mem::take(spare);
        new.clear();
        if !old.is_empty() {
            // A key with partial matches usually ends up with one more (a new start);
            // growing one at a time would reallocate several times per event. A key
            // without any stays inline.
            new.reserve(old.len() + 1);
        }
        // Touch every run's last path node first. Each is its own allocation, usually
        // not in cache; these loads are independent, so their misses overlap, where the
        // loop below would wait for them one at a time (the reference count update in
        // `take` was ~85% of its time with ~10 runs per key).
        let mut warm = 0usize;
        for r in old.iter() {
            warm = warm.wrapping_add(Arc::strong_count(&r.path));
        }
        std::hint::black_box(warm);
        let mut done = Vec::new();
        for r in old.drain(..) {
            if let Some(w) = self.pat.within {
                if time.saturating_sub(r.start_time) >= w {
                    continue;
                }
            }
            self.step_run(r, &mut new, &mut done, c, &e);
        }
        *spare = old;
        self.proceed(&mut new, &mut done, c, &e, 0, None);
        ks.runs = new;
        self.settle(ks, done, c)
    }

    /// After an event: the runs over the limit are evicted, completed matches emitted.
    fn settle(
        &self,
        ks: &mut KeyState,
        done: Vec<Arc<Node>>,
        c: &mut MatchCounters,
    ) -> Vec<Completed> {
        if ks.runs.len() > self.max_runs {
            let excess = ks.runs.len() - self.max_runs;
            // the oldest partial matches go first
            ks.runs.sort_by_key(|r| r.start_seq);
            ks.runs.drain(..excess);
            c.evictions += excess as u64;
        }
        if done.is_empty() && ks.pending.is_empty() {
            // What `emit` returns for an empty batch and nothing held (the usual case).
            return Vec::new();
        }
        let mut batch: Vec<Completed> = done.into_iter().map(Completed::new).collect();
        batch.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.emit(ks, batch)
    }

    /// Drops partial matches that can no longer complete at time `now`, then releases
    /// matches they were holding back.
    /// Whether [`Matcher::expire`] could change `ks` at `now` (read only: the sweep
    /// leaves unchanged keys alone, so that it does not copy state a snapshot shares).
    /// The time from which [`Matcher::expire`] has work on this state: when its oldest
    /// run is older than `within`; at once for held matches (re-examined by `expire`
    /// even when no run expires) and for an empty state (to be dropped); never without
    /// `within` and held matches.
    pub fn expiry_due(&self, ks: &KeyState) -> i64 {
        if !ks.pending.is_empty() || ks.is_empty() {
            return i64::MIN;
        }
        match self.pat.within {
            Some(w) => ks
                .runs
                .iter()
                .map(|r| r.start_time.saturating_add(w))
                .min()
                .unwrap_or(i64::MAX),
            None => i64::MAX,
        }
    }

    pub fn expire(&self, ks: &mut KeyState, now: i64) -> Vec<Completed> {
        if let Some(w) = self.pat.within {
            ks.runs.retain(|r| now.saturating_sub(r.start_time) < w);
        }
        self.emit(ks, Vec::new())
    }

    /// End of input: every partial match is abandoned, held matches are released.
    pub fn finish(&self, ks: &mut KeyState) -> Vec<Completed> {
        ks.runs.clear();
        self.emit(ks, Vec::new())
    }

    fn prune_range(&self, m: &Completed) -> Option<(u64, u64)> {
        let start = m.start();
        let bound = |v: Option<u64>| match v {
            Some(p) if p > start => Some((start, p - 1)),
            _ => None,
        };
        match self.pat.skip {
            Skip::NoSkip => None,
            Skip::ToNext => Some((start, start)),
            Skip::PastLast => Some((start, m.last())),
            Skip::ToFirst(s) => bound(m.items.iter().find(|x| x.1 as usize == s).map(|x| x.0)),
            Skip::ToLast(s) => bound(
                m.items
                    .iter()
                    .rev()
                    .find(|x| x.1 as usize == s)
                    .map(|x| x.0),
            ),
        }
    }

    fn emit(&self, ks: &mut KeyState, batch: Vec<Completed>) -> Vec<Completed> {
        let mut out = Vec::new();
        if !self.pat.deferred() {
            let mut dead: Vec<(u64, u64)> = Vec::new();
            for m in batch {
                if dead.iter().any(|(lo, hi)| (*lo..=*hi).contains(&m.start())) {
                    continue;
                }
                if let Some((lo, hi)) = self.prune_range(&m) {
                    ks.runs.retain(|r| !(lo..=hi).contains(&r.start_seq));
                    dead.push((lo, hi));
                }
                out.push(m);
            }
            return out;
        }
        if !batch.is_empty() {
            ks.pending.extend(batch);
            ks.pending.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        }
        while let Some(first) = ks.pending.first() {
            let s = first.start();
            if ks.runs.iter().any(|r| r.start_seq < s) {
                break;
            }
            let m = ks.pending.remove(0);
            if let Some((lo, hi)) = self.prune_range(&m) {
                ks.runs.retain(|r| !(lo..=hi).contains(&r.start_seq));
                ks.pending.retain(|p| !(lo..=hi).contains(&p.start()));
            }
            out.push(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RawRecord;

    #[test]
    fn flattened_conditions_agree_with_expr_test() {
        let long = "a_type_name_longer_than_22_bytes";
        let conds = [
            "type == 'login' && !success".to_string(),
            "success".into(),
            "!success".into(),
            "type != 'login'".into(),
            "!(type == 'login')".into(),
            "!(type != 'x') && success && type == 'login'".into(),
            "type == 'login' || success".into(),
            "n > 1 && success".into(),
            "user == 'u1' && !(user != 'u1')".into(),
            format!("type == '{long}' && !(type != '{long}')"),
            "!!success".into(),
        ];
        let recs = [
            r#"{"type":"login","success":false}"#.to_string(),
            r#"{"type":"login","success":true}"#.into(),
            r#"{"type":"logout","success":1}"#.into(),
            r#"{"type":"x","success":0,"n":2}"#.into(),
            r#"{"success":"","user":"u1"}"#.into(),
            r#"{"type":["login"],"success":null,"user":"u12"}"#.into(),
            "{}".into(),
            r#"{"type":"login","success":"no","n":"2"}"#.into(),
            format!(r#"{{"type":"{long}","success":true}}"#),
            format!(r#"{{"type":"{long}x","success":true}}"#),
        ];
        let mut flattened = 0;
        for c in &conds {
            let mut fields = FieldTable::default();
            let def: StepDef =
                serde_json::from_value(serde_json::json!({"name": "a", "where": c})).unwrap();
            let p = Pattern::compile(&[def], None, None, &mut fields).unwrap();
            let step = &p.steps[0];
            let cond = step.cond.as_ref().unwrap();
            flattened += usize::from(step.fast.is_some());
            for r in &recs {
                let ev = fields
                    .parse(RawRecord::new(Arc::from("t"), 0, 0, 0, None, r.as_bytes()))
                    .unwrap();
                let ctx = PathCtx {
                    path: None,
                    cur: Some((&ev, 0)),
                };
                assert_eq!(p.test(0, &ctx), cond.test(&ctx), "{c} on {r}");
            }
            let none = PathCtx {
                path: None,
                cur: None,
            };
            assert_eq!(p.test(0, &none), cond.test(&none), "{c} without an event");
        }
        // All but `||`, `>` and `!!` are flattened.
        assert_eq!(flattened, conds.len() - 3);
    }
}
