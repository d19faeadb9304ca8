//! SQL `MATCH_RECOGNIZE`, compiled to the same pattern definition as the JSON form.
//!
//! ```sql
//! INSERT INTO alerts SELECT * FROM auth MATCH_RECOGNIZE (
//!   PARTITION BY user ORDER BY ts
//!   MEASURES F.user AS user, COUNT(F.*) AS fails, FIRST(F.ts) AS first_fail
//!   ONE ROW PER MATCH
//!   AFTER MATCH SKIP PAST LAST ROW
//!   PATTERN (F{3,} S) WITHIN INTERVAL '1' MINUTE
//!   DEFINE F AS type = 'login' AND NOT success, S AS type = 'login' AND success)
//! ```
//! Pattern variables are strict (consecutive rows, as in SQL); quantifiers `*`, `+`, `?`,
//! `{n}`, `{n,}`, `{n,m}`, `{,m}`, each optionally followed by `?` (reluctant; otherwise
//! greedy). `AFTER MATCH SKIP` accepts `PAST LAST ROW`, `TO NEXT ROW`, `TO FIRST v`,
//! `TO LAST v` and `TO v`. `ORDER BY f` makes `f` the event-time field (`_timestamp`: the
//! record timestamp). Without `INSERT INTO`, matches go to `<source>-matches`.
//! Errors carry the line/column and byte offset in the SQL text.

use crate::def::{Definition, EmitDef, EventTimeDef, PatternDef, SourceDef, StepDef, TimesDef};
use crate::error::CepError;
use crate::event::FieldTable;
use crate::expr;

#[derive(Debug, Clone, PartialEq)]
enum T {
    Word(String),
    Str(String),
    Num(String),
    Sym(char),
}

struct Tok {
    t: T,
    start: usize,
    end: usize,
}

fn lex(text: &str) -> Result<Vec<Tok>, CepError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        if c == b'\'' || c == b'"' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(ch) = text[i..].chars().next() else {
                    return Err(CepError::at("unterminated string", text, start));
                };
                i += ch.len_utf8();
                if ch as u32 == c as u32 {
                    if b.get(i) == Some(&c) {
                        s.push(ch);
                        i += 1;
                        continue;
                    }
                    break;
                }
                s.push(ch);
            }
            out.push(Tok {
                t: T::Str(s),
                start,
                end: i,
            });
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok {
                t: T::Word(text[start..i].to_string()),
                start,
                end: i,
            });
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok {
                t: T::Num(text[start..i].to_string()),
                start,
                end: i,
            });
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        i += ch.len_utf8();
        out.push(Tok {
            t: T::Sym(ch),
            start,
            end: i,
        });
    }
    Ok(out)
}

struct P<'a> {
    text: &'a str,
    toks: Vec<Tok>,
    i: usize,
}

const CLAUSES: &[&str] = &[
    "partition",
    "order",
    "measures",
    "one",
    "all",
    "after",
    "pattern",
    "within",
    "define",
];

impl P<'_> {
    fn pos(&self) -> usize {
        self.toks
            .get(self.i)
            .map(|t| t.start)
            .unwrap_or(self.text.len())
    }
    fn err(&self, m: impl Into<String>) -> CepError {
        CepError::at(m, self.text, self.pos())
    }
    fn is_kw(&self, k: &str) -> bool {
        matches!(self.toks.get(self.i), Some(Tok { t: T::Word(w), .. }) if w.eq_ignore_ascii_case(k))
    }
    fn is_sym(&self, c: char) -> bool {
        matches!(self.toks.get(self.i), Some(Tok { t: T::Sym(s), .. }) if *s == c)
    }
    fn kw(&mut self, k: &str) -> Result<(), CepError> {
        if self.is_kw(k) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected {}", k.to_uppercase())))
        }
    }
    fn sym(&mut self, c: char) -> Result<(), CepError> {
        if self.is_sym(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected {c:?}")))
        }
    }
    fn ident(&mut self) -> Result<String, CepError> {
        match self.toks.get(self.i) {
            Some(Tok { t: T::Word(w), .. }) => {
                self.i += 1;
                Ok(w.clone())
            }
            _ => Err(self.err("expected a name")),
        }
    }
    /// A dotted name (topic names may contain '.', '-').
    fn name(&mut self) -> Result<String, CepError> {
        let mut s = self.ident()?;
        while self.is_sym('.') || self.is_sym('-') {
            let Some(Tok { t: T::Sym(c), .. }) = self.toks.get(self.i) else {
                break;
            };
            s.push(*c);
            self.i += 1;
            s.push_str(&self.ident()?);
        }
        Ok(s)
    }
    /// Byte range of an expression ending at a top-level ',' / clause keyword / ')'.
    fn expr_range(&mut self, stop_at_as: bool) -> Result<(usize, usize), CepError> {
        let start = self.pos();
        let mut depth = 0i32;
        let first = self.i;
        while let Some(t) = self.toks.get(self.i) {
            match &t.t {
                T::Sym('(') | T::Sym('[') => depth += 1,
                T::Sym(')') | T::Sym(']') => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                }
                T::Sym(',') if depth == 0 => break,
                T::Word(w) if depth == 0 && self.i > first => {
                    let l = w.to_ascii_lowercase();
                    if (stop_at_as && l == "as") || CLAUSES.contains(&l.as_str()) {
                        break;
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        if self.i == first {
            return Err(self.err("expected an expression"));
        }
        let end = self.toks[self.i - 1].end;
        Ok((start, end))
    }
}

/// Parses a `MATCH_RECOGNIZE` statement into a pattern definition.
pub fn parse_sql(text: &str) -> Result<Definition, CepError> {
    let toks = lex(text)?;
    let mut p = P { text, toks, i: 0 };
    let mut sink = None;
    if p.is_kw("insert") {
        p.i += 1;
        p.kw("into")?;
        sink = Some(p.name()?);
    }
    p.kw("select")?;
    p.sym('*')
        .map_err(|_| p.err("only SELECT * is supported (use MEASURES for output fields)"))?;
    p.kw("from")?;
    let source = p.name()?;
    p.kw("match_recognize")?;
    p.sym('(')?;
    let mut partition_by = None;
    let mut order_by = None;
    let mut measures: Vec<(String, usize, usize)> = Vec::new();
    let mut skip = "past_last_event".to_string();
    let mut skip_pos = 0;
    let mut steps: Vec<(String, u32, Option<u32>, bool, usize)> = Vec::new();
    let mut within = None;
    let mut defines: Vec<(String, usize, usize)> = Vec::new();
    let mut within_pos = 0;
    loop {
        if p.is_sym(')') {
            p.i += 1;
            break;
        }
        if p.is_kw("partition") {
            p.i += 1;
            p.kw("by")?;
            let (s, e) = p.expr_range(false)?;
            partition_by = Some((s, e));
        } else if p.is_kw("order") {
            p.i += 1;
            p.kw("by")?;
            order_by = Some(p.name()?);
            if p.is_kw("asc") {
                p.i += 1;
            }
        } else if p.is_kw("measures") {
            p.i += 1;
            loop {
                let (s, e) = p.expr_range(true)?;
                p.kw("as")?;
                let name = p.ident()?;
                measures.push((name, s, e));
                if p.is_sym(',') {
                    p.i += 1;
                } else {
                    break;
                }
            }
        } else if p.is_kw("one") {
            p.i += 1;
            p.kw("row")?;
            p.kw("per")?;
            p.kw("match")?;
        } else if p.is_kw("all") {
            return Err(p.err("ALL ROWS PER MATCH is not supported: use ONE ROW PER MATCH"));
        } else if p.is_kw("after") {
            p.i += 1;
            p.kw("match")?;
            p.kw("skip")?;
            skip_pos = p.pos();
            if p.is_kw("past") {
                p.i += 1;
                p.kw("last")?;
                p.kw("row")?;
                skip = "past_last_event".into();
            } else {
                p.kw("to")?;
                if p.is_kw("next") {
                    p.i += 1;
                    p.kw("row")?;
                    skip = "skip_to_next".into();
                } else if p.is_kw("first") {
                    p.i += 1;
                    skip = format!("skip_to_first:{}", p.ident()?);
                } else if p.is_kw("last") {
                    p.i += 1;
                    skip = format!("skip_to_last:{}", p.ident()?);
                } else {
                    skip = format!("skip_to_last:{}", p.ident()?);
                }
            }
        } else if p.is_kw("pattern") {
            p.i += 1;
            p.sym('(')?;
            while !p.is_sym(')') {
                let pos = p.pos();
                let name = p
                    .ident()
                    .map_err(|_| p.err("expected a pattern variable"))?;
                let (mut min, mut max) = (1u32, Some(1u32));
                if p.is_sym('*') {
                    p.i += 1;
                    min = 0;
                    max = None;
                } else if p.is_sym('+') {
                    p.i += 1;
                    max = None;
                } else if p.is_sym('?') {
                    p.i += 1;
                    min = 0;
                } else if p.is_sym('{') {
                    p.i += 1;
                    let num = |p: &mut P<'_>| -> Result<Option<u32>, CepError> {
                        match p.toks.get(p.i) {
                            Some(Tok { t: T::Num(n), .. }) => {
                                let v = n
                                    .parse::<u32>()
                                    .map_err(|_| p.err("expected a whole number"))?;
                                p.i += 1;
                                Ok(Some(v))
                            }
                            _ => Ok(None),
                        }
                    };
                    let a = num(&mut p)?;
                    if p.is_sym(',') {
                        p.i += 1;
                        let b = num(&mut p)?;
                        min = a.unwrap_or(0);
                        max = b;
                    } else {
                        let Some(a) = a else {
                            return Err(p.err("expected {n}, {n,}, {n,m} or {,m}"));
                        };
                        min = a;
                        max = Some(a);
                    }
                    p.sym('}')?;
                }
                let mut reluctant = false;
                if p.is_sym('?') {
                    p.i += 1;
                    reluctant = true;
                }
                if steps.iter().any(|s| s.0 == name) {
                    return Err(CepError::at(
                        format!("pattern variable {name} appears twice"),
                        text,
                        pos,
                    ));
                }
                steps.push((name, min, max, reluctant, pos));
                if p.i >= p.toks.len() {
                    return Err(p.err("unterminated PATTERN"));
                }
            }
            p.i += 1;
            if steps.is_empty() {
                return Err(p.err("PATTERN is empty"));
            }
        } else if p.is_kw("within") {
            p.i += 1;
            within_pos = p.pos();
            p.kw("interval")?;
            let n = match p.toks.get(p.i) {
                Some(Tok { t: T::Str(s), .. }) | Some(Tok { t: T::Num(s), .. }) => {
                    s.trim().to_string()
                }
                _ => return Err(p.err("expected INTERVAL '<n>' <unit>")),
            };
            p.i += 1;
            let unit = p.ident()?.to_ascii_lowercase();
            let u = match unit.trim_end_matches('s') {
                "millisecond" => "ms",
                "second" => "s",
                "minute" => "m",
                "hour" => "h",
                "day" => "d",
                _ => return Err(p.err(format!("unknown interval unit {unit}"))),
            };
            within = Some(format!("{n}{u}"));
        } else if p.is_kw("define") {
            p.i += 1;
            loop {
                let name = p.ident()?;
                p.kw("as")?;
                let (s, e) = p.expr_range(false)?;
                defines.push((name, s, e));
                if p.is_sym(',') {
                    p.i += 1;
                } else {
                    break;
                }
            }
        } else {
            return Err(p.err("expected PARTITION BY, ORDER BY, MEASURES, ONE ROW PER MATCH, AFTER MATCH SKIP, PATTERN, WITHIN, DEFINE or ')'"));
        }
    }
    if p.is_sym(';') {
        p.i += 1;
    }
    if p.i < p.toks.len() {
        return Err(p.err("unexpected text after MATCH_RECOGNIZE (...)"));
    }
    if steps.is_empty() {
        return Err(CepError::at("PATTERN is required", text, text.len()));
    }
    // validate expressions with positions in the SQL text
    let names: Vec<String> = steps.iter().map(|s| s.0.clone()).collect();
    let mut fields = FieldTable::default();
    let check =
        |s: usize, e: usize, cur: Option<usize>, fields: &mut FieldTable| -> Result<(), CepError> {
            let ast = expr::parse_range(text, s, e)?;
            let mut sc = expr::Scope {
                fields,
                steps: &names,
                current_step: cur,
                text,
            };
            expr::compile(&ast, &mut sc).map(|_| ())
        };
    for (name, s, e) in &defines {
        let Some(idx) = names.iter().position(|n| n == name) else {
            return Err(CepError::at(
                format!("DEFINE {name}: not a variable of PATTERN"),
                text,
                *s,
            ));
        };
        check(*s, *e, Some(idx), &mut fields)?;
    }
    for (_, s, e) in &measures {
        check(*s, *e, None, &mut fields)?;
    }
    if let Some((s, e)) = partition_by {
        let ast = expr::parse_range(text, s, e)?;
        let mut sc = expr::Scope {
            fields: &mut fields,
            steps: &[],
            current_step: None,
            text,
        };
        expr::compile(&ast, &mut sc)?;
    }
    let step_defs: Vec<StepDef> = steps
        .iter()
        .enumerate()
        .map(|(i, (name, min, max, reluctant, _))| StepDef {
            name: name.clone(),
            condition: defines
                .iter()
                .find(|d| &d.0 == name)
                .map(|d| text[d.1..d.2].to_string()),
            times: if (*min, *max) == (1, Some(1)) {
                None
            } else {
                Some(TimesDef::Range {
                    min: Some(*min),
                    max: *max,
                })
            },
            one_or_more: false,
            optional: false,
            greedy: !*reluctant && *max != Some(*min),
            reluctant: *reluctant,
            contiguity: if i == 0 { None } else { Some("strict".into()) },
            inner_contiguity: Some("strict".into()),
            not: false,
        })
        .collect();
    let value = if measures.is_empty() {
        None
    } else {
        let mut m = serde_json::Map::new();
        for (name, s, e) in &measures {
            m.insert(
                name.clone(),
                serde_json::Value::String(text[*s..*e].to_string()),
            );
        }
        Some(m)
    };
    let event_time = order_by.as_ref().map(|f| EventTimeDef {
        field: if f == "_timestamp" || f.eq_ignore_ascii_case("rowtime") {
            None
        } else {
            Some(f.clone())
        },
        max_out_of_orderness: None,
        allowed_lateness: None,
        late_topic: None,
    });
    let id = match &sink {
        Some(s) => format!("{source}-to-{s}"),
        None => format!("{source}-match"),
    };
    let def = PatternDef {
        id,
        kind: None,
        source: SourceDef {
            topic: Some(source.clone()),
            definition: None,
            dead_letter: None,
        },
        partition_by: partition_by.map(|(s, e)| text[s..e].to_string()),
        event_time,
        time: None,
        steps: step_defs,
        within,
        skip: Some(skip.clone()),
        emit: EmitDef {
            topic: sink.unwrap_or_else(|| format!("{source}-matches")),
            key: None,
            value,
            webhook: None,
        },
    };
    // whole-pattern checks (quantifiers, skip target, within) with a position
    let mut f2 = FieldTable::default();
    if let Err(e) = crate::pattern::Pattern::compile(
        &def.steps,
        def.within.as_deref(),
        def.skip.as_deref(),
        &mut f2,
    ) {
        let pos = match e.context.as_deref() {
            Some("skip") => skip_pos,
            Some("within") => within_pos,
            Some(c) => c
                .strip_prefix("steps[")
                .and_then(|r| r.split(']').next())
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|i| steps.get(i))
                .map(|s| s.4)
                .unwrap_or(0),
            None => 0,
        };
        return Err(CepError {
            position: Some(crate::error::Position::of(text, pos)),
            ..e
        });
    }
    Ok(Definition::Pattern(def))
}
