//! Differential test: the engine against a brute-force reference matcher that enumerates
//! every subsequence (with a step for each event) of a key's stream and checks the
//! declarative semantics documented in the crate docs, then applies the skip strategy.
mod common;

use proptest::prelude::*;
use weir_cep::def::{parse_definition_json, Definition, PatternDef};
use weir_cep::event::{Event, FieldTable, RawRecord};
use weir_cep::pattern::{Contig, Pattern, Skip, SliceCtx};
use weir_cep::{Engine, Limits, SourceRecord};

const CONDS: &[&str] = &[
    "v == 'a'",
    "v == 'b'",
    "v == 'c'",
    "v != 'a'",
    "v in ['a', 'b']",
    "n > 2",
    "n <= 2 || v == 'c'",
    "true",
];

#[derive(Debug, Clone)]
struct StepGen {
    cond: usize,
    quant: u8,
    contig: u8,
    inner: u8,
    pref: u8,
    not: bool,
}

fn step_json(i: usize, s: &StepGen, last: bool, first: bool) -> String {
    let contig = ["strict", "relaxed", "any"][s.contig as usize % 3];
    let inner = ["strict", "relaxed", "any"][s.inner as usize % 3];
    if s.not && !first && !last {
        let c = ["strict", "relaxed"][s.contig as usize % 2];
        return format!(
            r#"{{"name":"s{i}","where":"{}","not":true,"contiguity":"{c}"}}"#,
            CONDS[s.cond]
        );
    }
    let quant = match s.quant % 6 {
        0 | 1 => String::new(),
        2 => r#","optional":true"#.into(),
        3 => r#","one_or_more":true"#.into(),
        4 => r#","times":{"min":2,"max":3}"#.into(),
        _ => r#","times":{"min":0,"max":2}"#.into(),
    };
    let pref = match s.pref % 4 {
        1 => r#","greedy":true"#,
        2 => r#","reluctant":true"#,
        _ => "",
    };
    format!(
        r#"{{"name":"s{i}","where":"{}"{quant}{pref},"contiguity":"{contig}","inner_contiguity":"{inner}"}}"#,
        CONDS[s.cond]
    )
}

fn pattern_json(steps: &[StepGen], within: Option<u32>, skip: u8) -> String {
    let n = steps.len();
    let steps_json: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_json(i, s, i + 1 == n, i == 0))
        .collect();
    let skip = match skip % 7 {
        0 => "no_skip".to_string(),
        1 => "skip_to_next".into(),
        2 | 3 => "past_last_event".into(),
        4 => "skip_to_first:s0".into(),
        5 => format!("skip_to_last:s{}", n - 1),
        _ => "skip_to_first:s1".into(),
    };
    let within = within
        .map(|w| format!(r#","within":"{w}s""#))
        .unwrap_or_default();
    format!(
        r#"{{"id":"p","source":{{"topic":"t"}},"partition_by":"k","steps":[{}]{within},"skip":"{skip}","emit":{{"topic":"out"}}}}"#,
        steps_json.join(",")
    )
}

type Items = Vec<(usize, usize)>; // (position in key stream, step)

struct Ref<'a> {
    p: &'a Pattern,
    evs: &'a [Event],
    ts: &'a [i64],
}

impl Ref<'_> {
    fn cond(&self, step: usize, items: &Items, upto: usize, cur: usize) -> bool {
        let ctx_items: Vec<(&Event, usize)> = items[..upto]
            .iter()
            .map(|(p, s)| (&self.evs[*p], *s))
            .collect();
        self.p.test(
            step,
            &SliceCtx {
                items: &ctx_items,
                cur: Some((&self.evs[cur], step)),
            },
        )
    }

    fn valid(&self, items: &Items) -> bool {
        let p = self.p;
        let n = p.steps.len();
        let mut counts = vec![0u32; n];
        for (_, s) in items {
            counts[*s] += 1;
        }
        for (i, st) in p.steps.iter().enumerate() {
            if st.negated {
                if counts[i] > 0 {
                    return false;
                }
            } else if counts[i] < st.min || counts[i] > st.max {
                return false;
            }
        }
        if let Some(w) = p.within {
            if self.ts[items[items.len() - 1].0] - self.ts[items[0].0] >= w {
                return false;
            }
        }
        for j in 0..items.len() {
            let (pj, sj) = items[j];
            if !self.cond(sj, items, j, pj) {
                return false;
            }
            if j + 1 == items.len() {
                break;
            }
            let (pn, t) = items[j + 1];
            let kind = if sj == t {
                p.steps[t].inner
            } else {
                p.steps[t].contiguity
            };
            match kind {
                Contig::Strict => {
                    if pn != pj + 1 {
                        return false;
                    }
                }
                Contig::Relaxed => {
                    if (pj + 1..pn).any(|g| self.cond(t, items, j + 1, g)) {
                        return false;
                    }
                }
                Contig::Any => {}
            }
            let s = &p.steps[sj];
            let count_so_far = items[..=j].iter().filter(|x| x.1 == sj).count() as u32;
            if t != sj && s.greedy && count_so_far < s.max && self.cond(sj, items, j + 1, pj + 1) {
                return false;
            }
            if t == sj && s.reluctant && count_so_far >= s.min {
                if let Some(nx) = p.next_real[sj] {
                    if self.cond(nx, items, j + 1, pn) {
                        return false;
                    }
                }
            }
            for k in sj + 1..t {
                if p.steps[k].negated {
                    match p.steps[k].contiguity {
                        Contig::Strict => {
                            if self.cond(k, items, j + 1, pj + 1) {
                                return false;
                            }
                        }
                        _ => {
                            if (pj + 1..pn).any(|g| self.cond(k, items, j + 1, g)) {
                                return false;
                            }
                        }
                    }
                }
            }
        }
        true
    }

    fn enumerate(&self, items: &mut Items, from: usize, out: &mut Vec<Items>) {
        if !items.is_empty() && self.valid(items) {
            out.push(items.clone());
        }
        let min_step = items.last().map(|x| x.1).unwrap_or(0);
        for pos in from..self.evs.len() {
            for s in min_step..self.p.steps.len() {
                if self.p.steps[s].negated {
                    continue;
                }
                items.push((pos, s));
                self.enumerate(items, pos + 1, out);
                items.pop();
            }
        }
    }

    fn matches(&self) -> Vec<Items> {
        let mut all = Vec::new();
        self.enumerate(&mut Vec::new(), 0, &mut all);
        all.sort_by(|a, b| (a[0].0, a[a.len() - 1].0, a).cmp(&(b[0].0, b[b.len() - 1].0, b)));
        let mut dead: Vec<(usize, usize)> = Vec::new();
        let mut out = Vec::new();
        for m in all {
            let start = m[0].0;
            if dead.iter().any(|(lo, hi)| (*lo..=*hi).contains(&start)) {
                continue;
            }
            let bound = |v: Option<usize>| v.filter(|p| *p > start).map(|p| (start, p - 1));
            let range = match self.p.skip {
                Skip::NoSkip => None,
                Skip::ToNext => Some((start, start)),
                Skip::PastLast => Some((start, m[m.len() - 1].0)),
                Skip::ToFirst(s) => bound(m.iter().find(|x| x.1 == s).map(|x| x.0)),
                Skip::ToLast(s) => bound(m.iter().rev().find(|x| x.1 == s).map(|x| x.0)),
            };
            if let Some(r) = range {
                dead.push(r);
            }
            out.push(m);
        }
        out
    }
}

static STATS: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

/// Record `i` of a generated stream: offset `i`, one second after the one before.
fn record(i: usize, value: &str) -> SourceRecord<'_> {
    SourceRecord {
        topic: "t",
        partition: 0,
        offset: i as i64,
        timestamp_ms: i as i64 * 1000,
        key: None,
        value: value.as_bytes(),
        headers: &[],
    }
}

fn run_case(
    steps: Vec<StepGen>,
    within: Option<u32>,
    skip: u8,
    stream: Vec<(u8, u8, u8)>,
) -> Result<(), TestCaseError> {
    let json = pattern_json(&steps, within, skip);
    let Ok(Definition::Pattern(def)) = parse_definition_json(&json) else {
        return Err(TestCaseError::fail(format!("bad json {json}")));
    };
    let mut engine = Engine::new(Limits {
        max_partial_matches_per_key: 1_000_000,
        ..Limits::default()
    });
    if engine.register(Definition::Pattern(def.clone())).is_err() {
        return Ok(()); // invalid combination (e.g. skip to a negated step)
    }
    let values: Vec<String> = stream
        .iter()
        .enumerate()
        .map(|(i, (k, v, n))| {
            format!(
                r#"{{"k":"k{}","v":"{}","n":{},"i":{i}}}"#,
                k % 2,
                ["a", "b", "c"][*v as usize % 3],
                n % 5
            )
        })
        .collect();
    let mut outs = Vec::new();
    for (i, v) in values.iter().enumerate() {
        outs.extend(engine.process(&record(i, v)));
    }
    outs.extend(engine.finish());
    // engine matches per key as (global index, step)
    let PatternDef { steps: sdefs, .. } = &def;
    let mut got: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    for o in &outs {
        let v: serde_json::Value =
            serde_json::from_slice(&o.value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let key = v["key"].as_str().unwrap_or("").to_string();
        let mut items = Vec::new();
        for (si, s) in sdefs.iter().enumerate() {
            if let Some(evs) = v["events"][&s.name].as_array() {
                for e in evs {
                    items.push((e["i"].as_u64().unwrap_or(0) as usize, si));
                }
            }
        }
        items.sort();
        got.push((key, items));
    }
    got.sort();
    // reference
    let mut fields = FieldTable::default();
    let pat = Pattern::compile(
        &def.steps,
        def.within.as_deref(),
        def.skip.as_deref(),
        &mut fields,
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    fields.intern("i");
    let mut want = Vec::new();
    for key in ["k0", "k1"] {
        let idx: Vec<usize> = (0..values.len())
            .filter(|i| format!("k{}", stream[*i].0 % 2) == key)
            .collect();
        let evs: Vec<Event> = idx
            .iter()
            .map(|&i| {
                fields
                    .parse(RawRecord::new(
                        "t".into(),
                        0,
                        i as i64,
                        i as i64 * 1000,
                        None,
                        values[i].as_bytes(),
                    ))
                    .map_err(|_| TestCaseError::fail("parse"))
            })
            .collect::<Result<_, _>>()?;
        let ts: Vec<i64> = idx.iter().map(|&i| i as i64 * 1000).collect();
        let r = Ref {
            p: &pat,
            evs: &evs,
            ts: &ts,
        };
        for m in r.matches() {
            want.push((
                key.to_string(),
                m.iter().map(|(p, s)| (idx[*p], *s)).collect::<Vec<_>>(),
            ));
        }
    }
    want.sort();
    STATS[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    STATS[1].fetch_add(want.len(), std::sync::atomic::Ordering::Relaxed);
    if std::env::var("DIFF_DEBUG").is_ok() && !want.is_empty() {
        eprintln!("{json}\n  {want:?}");
    }
    prop_assert_eq!(got, want, "pattern {}", json);
    Ok(())
}

fn step_strategy() -> impl Strategy<Value = StepGen> {
    (
        0..CONDS.len(),
        0u8..6,
        0u8..3,
        0u8..3,
        0u8..4,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(cond, quant, contig, inner, pref, not)| StepGen {
            cond,
            quant,
            contig,
            inner,
            pref,
            not,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_reference(
        steps in prop::collection::vec(step_strategy(), 1..4),
        within in prop::option::of(1u32..6),
        skip in 0u8..7,
        stream in prop::collection::vec((0u8..2, 0u8..3, 0u8..5), 0..14),
    ) {
        run_case(steps, within, skip, stream)?;
    }
}

#[test]
fn differential_covers_matches() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    let strat = (
        prop::collection::vec(step_strategy(), 1..4),
        prop::option::of(1u32..6),
        0u8..7,
        prop::collection::vec((0u8..2, 0u8..3, 0u8..5), 0..12),
    );
    let before = STATS[1].load(std::sync::atomic::Ordering::Relaxed);
    let r = runner.run(&strat, |(a, b, c, d)| run_case(a, b, c, d));
    assert!(r.is_ok(), "{r:?}");
    let cases = STATS[0].load(std::sync::atomic::Ordering::Relaxed);
    let matches = STATS[1].load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!("cases {cases}, matches {matches}");
    assert!(
        matches > 200,
        "random patterns should produce matches ({matches})"
    );
}

/// Runs `json` over the case's records: uninterrupted, and checkpointed after `cut` records
/// and restored into a new engine; both must give the same outputs (returned).
fn outputs_across_a_checkpoint(
    json: &str,
    values: &[String],
    cut: usize,
) -> Result<Option<Vec<weir_cep::Output>>, TestCaseError> {
    let limits = Limits {
        max_partial_matches_per_key: 1_000_000,
        ..Limits::default()
    };
    let new = || {
        let mut e = Engine::new(limits);
        e.register_text(json).ok().map(|_| e)
    };
    let run = |e: &mut Engine, range: std::ops::Range<usize>| {
        let mut out = Vec::new();
        for i in range {
            out.extend(e.process(&record(i, &values[i])));
        }
        out
    };
    let Some(mut whole) = new() else {
        return Ok(None); // invalid combination (e.g. skip to a negated step)
    };
    let mut expected = run(&mut whole, 0..values.len());
    expected.extend(whole.finish());
    let Some(mut first) = new() else {
        return Err(TestCaseError::fail("registered once, not twice"));
    };
    let cut = cut.min(values.len());
    let mut got = run(&mut first, 0..cut);
    let mut second = Engine::new(limits);
    second
        .restore(&first.checkpoint())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    got.extend(run(&mut second, cut..values.len()));
    got.extend(second.finish());
    prop_assert_eq!(
        &got,
        &expected,
        "checkpoint after {} records of {}",
        cut,
        json
    );
    Ok(Some(expected))
}

/// Per match: its key and, for each step, how many events it took and the first and
/// last of their `i`.
type Summary = (String, Vec<(u64, serde_json::Value, serde_json::Value)>);

/// The matches in `outs` as [`Summary`]s, sorted; `per_step` reads one step's from an
/// output value.
fn summaries(
    outs: &[weir_cep::Output],
    names: &[String],
    per_step: impl Fn(&serde_json::Value, &str) -> (u64, serde_json::Value, serde_json::Value),
) -> Result<Vec<Summary>, TestCaseError> {
    let mut all = Vec::new();
    for o in outs {
        let v: serde_json::Value =
            serde_json::from_slice(&o.value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let key = String::from_utf8_lossy(o.key.as_deref().unwrap_or(b"")).to_string();
        all.push((key, names.iter().map(|s| per_step(&v, s)).collect()));
    }
    all.sort_by_key(|x: &Summary| format!("{x:?}"));
    Ok(all)
}

/// Random patterns with `emit.value` (their events projected: only the fields in use are
/// kept, checkpointed by field path) find the same matches as the same patterns listing
/// whole events; and a checkpoint after any record changes no output of either.
fn run_projection_case(
    steps: Vec<StepGen>,
    within: Option<u32>,
    skip: u8,
    stream: Vec<(u8, u8, u8)>,
    cut: usize,
) -> Result<(), TestCaseError> {
    let whole = pattern_json(&steps, within, skip);
    let n = steps.len();
    let names: Vec<String> = (0..n)
        .filter(|&i| !(steps[i].not && i != 0 && i + 1 != n))
        .map(|i| format!("s{i}"))
        .collect();
    let template: Vec<String> = names
        .iter()
        .map(|s| format!(r#""{s}":{{"n":"count({s})","f":"first({s}).i","l":"last({s}).i"}}"#))
        .collect();
    let projected = whole.replacen(
        r#""emit":{"topic":"out"}"#,
        &format!(
            r#""emit":{{"topic":"out","value":{{{}}}}}"#,
            template.join(",")
        ),
        1,
    );
    prop_assert_ne!(&projected, &whole);
    let values: Vec<String> = stream
        .iter()
        .enumerate()
        .map(|(i, (k, v, n))| {
            format!(
                r#"{{"k":"k{}","v":"{}","n":{},"i":{i},"pad":"not used by any definition"}}"#,
                k % 2,
                ["a", "b", "c"][*v as usize % 3],
                n % 5
            )
        })
        .collect();
    let (Some(w), Some(p)) = (
        outputs_across_a_checkpoint(&whole, &values, cut)?,
        outputs_across_a_checkpoint(&projected, &values, cut)?,
    ) else {
        return Ok(());
    };
    let from_whole = summaries(&w, &names, |v, s| {
        let evs = v["events"][s].as_array().cloned().unwrap_or_default();
        let i = |e: Option<&serde_json::Value>| e.map(|e| e["i"].clone()).unwrap_or_default();
        (evs.len() as u64, i(evs.first()), i(evs.last()))
    })?;
    let from_projected = summaries(&p, &names, |v, s| {
        (
            v[s]["n"].as_u64().unwrap_or(u64::MAX),
            v[s]["f"].clone(),
            v[s]["l"].clone(),
        )
    })?;
    prop_assert_eq!(from_projected, from_whole, "projected {}", projected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn projected_events_match_like_whole_ones_across_checkpoints(
        steps in prop::collection::vec(step_strategy(), 1..4),
        within in prop::option::of(1u32..6),
        skip in 0u8..7,
        stream in prop::collection::vec((0u8..2, 0u8..3, 0u8..5), 0..16),
        cut in 0usize..16,
    ) {
        run_projection_case(steps, within, skip, stream, cut)?;
    }
}
