//! The expression language: lexer, parser (to [`Ast`]), compiler (to [`Expr`], with field
//! paths interned and step references resolved) and evaluator.
//!
//! Grammar (JSON definitions and SQL `DEFINE`/`MEASURES` share it):
//! ```text
//! or      := and (('||' | OR) and)*
//! and     := cmp (('&&' | AND) cmp)*
//! cmp     := add [ ('=='|'='|'!='|'<>'|'<'|'<='|'>'|'>=') add
//!                | [NOT] IN '[' expr, ... ']' | [NOT] IN '(' expr, ... ')'
//!                | (contains|starts_with|ends_with|matches|LIKE) add ]
//! add     := mul (('+'|'-') mul)*
//! mul     := unary (('*'|'/'|'%') unary)*
//! unary   := ('!' | NOT | '-') unary | postfix
//! postfix := primary ('.' ident)*
//! primary := number | 'string' | "string" | true | false | null | path
//!          | name '(' args ')' | '(' expr ')' | '[' expr, ... ']'
//! path    := ident ('.' ident)* ['.' '*']
//! ```

use crate::error::CepError;
use crate::event::{Event, FieldTable};
use crate::value::{VStr, Val};
use regex::Regex;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
    Eof,
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    end: usize,
}

const OPS: [&str; 23] = [
    "==", "!=", "<>", "<=", ">=", "&&", "||", "=", "<", ">", "!", "+", "-", "*", "/", "%", "(",
    ")", "[", "]", ",", ".", "?",
];

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Result<(Tok, usize), CepError> {
        let b = self.text.as_bytes();
        while self.pos < self.end && b[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        if self.pos >= self.end {
            return Ok((Tok::Eof, start));
        }
        let c = b[self.pos];
        if c.is_ascii_digit() {
            while self.pos < self.end && (b[self.pos].is_ascii_digit() || b[self.pos] == b'.') {
                // a '.' followed by a non-digit ends the number (e.g. `1.` is not allowed)
                if b[self.pos] == b'.'
                    && !(self.pos + 1 < self.end && b[self.pos + 1].is_ascii_digit())
                {
                    break;
                }
                self.pos += 1;
            }
            if self.pos < self.end && (b[self.pos] == b'e' || b[self.pos] == b'E') {
                let save = self.pos;
                self.pos += 1;
                if self.pos < self.end && (b[self.pos] == b'+' || b[self.pos] == b'-') {
                    self.pos += 1;
                }
                if self.pos < self.end && b[self.pos].is_ascii_digit() {
                    while self.pos < self.end && b[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                } else {
                    self.pos = save;
                }
            }
            let s = &self.text[start..self.pos];
            let n: f64 = s
                .parse()
                .map_err(|_| CepError::at(format!("invalid number {s:?}"), self.text, start))?;
            return Ok((Tok::Num(n), start));
        }
        if c == b'\'' || c == b'"' {
            let quote = c as char;
            let mut out = String::new();
            let mut chars = self.text[self.pos + 1..self.end].char_indices();
            loop {
                let Some((i, ch)) = chars.next() else {
                    return Err(CepError::at("unterminated string", self.text, start));
                };
                if ch == quote {
                    // SQL style '' escape
                    let after = self.pos + 1 + i + 1;
                    if quote == '\'' && after < self.end && b[after] == b'\'' {
                        out.push('\'');
                        chars.next();
                        continue;
                    }
                    self.pos = after;
                    return Ok((Tok::Str(out), start));
                }
                if ch == '\\' {
                    match chars.next() {
                        Some((_, 'n')) => out.push('\n'),
                        Some((_, 't')) => out.push('\t'),
                        Some((_, 'r')) => out.push('\r'),
                        Some((_, e)) => out.push(e),
                        None => return Err(CepError::at("unterminated string", self.text, start)),
                    }
                    continue;
                }
                out.push(ch);
            }
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'`' {
            if c == b'`' {
                let rest = &self.text[self.pos + 1..self.end];
                let Some(close) = rest.find('`') else {
                    return Err(CepError::at("unterminated `identifier`", self.text, start));
                };
                let id = rest[..close].to_string();
                self.pos += close + 2;
                return Ok((Tok::Ident(id), start));
            }
            while self.pos < self.end
                && (b[self.pos].is_ascii_alphanumeric()
                    || b[self.pos] == b'_'
                    || b[self.pos] == b'$')
            {
                self.pos += 1;
            }
            return Ok((Tok::Ident(self.text[start..self.pos].to_string()), start));
        }
        for op in OPS {
            if self.text[self.pos..self.end].starts_with(op) {
                self.pos += op.len();
                return Ok((Tok::Op(op), start));
            }
        }
        let ch = self.text[self.pos..].chars().next().unwrap_or('?');
        Err(CepError::at(
            format!("unexpected character {ch:?}"),
            self.text,
            start,
        ))
    }
}

// ---------------------------------------------------------------- AST

/// Parsed, unresolved expression. `pos` is a byte offset in the source text.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Lit(Val, usize),
    Path(Vec<String>, usize),
    Unary(&'static str, Box<Ast>, usize),
    Bin(&'static str, Box<Ast>, Box<Ast>, usize),
    In(Box<Ast>, Vec<Ast>, bool, usize),
    Call(String, Vec<Ast>, usize),
    /// `call(...).a.b`
    Member(Box<Ast>, Vec<String>, usize),
    List(Vec<Ast>, usize),
}

impl Ast {
    pub fn pos(&self) -> usize {
        match self {
            Ast::Lit(_, p)
            | Ast::Path(_, p)
            | Ast::Unary(_, _, p)
            | Ast::Bin(_, _, _, p)
            | Ast::In(_, _, _, p)
            | Ast::Call(_, _, p)
            | Ast::Member(_, _, p)
            | Ast::List(_, p) => *p,
        }
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    tok_pos: usize,
    depth: usize,
}

/// Parses `text[start..end]` (positions in errors are relative to `text`).
pub fn parse_range(text: &str, start: usize, end: usize) -> Result<Ast, CepError> {
    let end = end.min(text.len());
    let start = start.min(end);
    let mut p = Parser {
        lex: Lexer {
            text,
            pos: start,
            end,
        },
        tok: Tok::Eof,
        tok_pos: start,
        depth: 0,
    };
    p.bump()?;
    if p.tok == Tok::Eof {
        return Err(CepError::at("empty expression", text, start));
    }
    let e = p.expr()?;
    if p.tok != Tok::Eof {
        return Err(p.err(format!("unexpected {}", p.describe())));
    }
    Ok(e)
}

/// Parses a whole string as an expression.
pub fn parse(text: &str) -> Result<Ast, CepError> {
    parse_range(text, 0, text.len())
}

impl Parser<'_> {
    fn bump(&mut self) -> Result<(), CepError> {
        let (t, p) = self.lex.next()?;
        self.tok = t;
        self.tok_pos = p;
        Ok(())
    }
    fn err(&self, msg: String) -> CepError {
        CepError::at(msg, self.lex.text, self.tok_pos)
    }
    fn describe(&self) -> String {
        match &self.tok {
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Op(o) => format!("{o:?}"),
            Tok::Eof => "end of expression".into(),
        }
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(&self.tok, Tok::Op(o) if *o == op)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }
    fn expect(&mut self, op: &str) -> Result<(), CepError> {
        if self.is_op(op) {
            self.bump()
        } else {
            Err(self.err(format!("expected {op:?}, found {}", self.describe())))
        }
    }
    fn expr(&mut self) -> Result<Ast, CepError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(self.err("expression nested too deeply".into()));
        }
        let r = self.or();
        self.depth -= 1;
        r
    }
    fn or(&mut self) -> Result<Ast, CepError> {
        let mut l = self.and()?;
        while self.is_op("||") || self.is_kw("or") {
            let p = self.tok_pos;
            self.bump()?;
            let r = self.and()?;
            l = Ast::Bin("||", Box::new(l), Box::new(r), p);
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Ast, CepError> {
        let mut l = self.cmp()?;
        while self.is_op("&&") || self.is_kw("and") {
            let p = self.tok_pos;
            self.bump()?;
            let r = self.cmp()?;
            l = Ast::Bin("&&", Box::new(l), Box::new(r), p);
        }
        Ok(l)
    }
    fn cmp(&mut self) -> Result<Ast, CepError> {
        let l = self.add()?;
        let p = self.tok_pos;
        let op = match &self.tok {
            Tok::Op("==") | Tok::Op("=") => Some("=="),
            Tok::Op("!=") | Tok::Op("<>") => Some("!="),
            Tok::Op("<") => Some("<"),
            Tok::Op("<=") => Some("<="),
            Tok::Op(">") => Some(">"),
            Tok::Op(">=") => Some(">="),
            Tok::Ident(s) => match s.to_ascii_lowercase().as_str() {
                "contains" => Some("contains"),
                "starts_with" => Some("starts_with"),
                "ends_with" => Some("ends_with"),
                "matches" => Some("matches"),
                "like" => Some("like"),
                _ => None,
            },
            _ => None,
        };
        if let Some(op) = op {
            self.bump()?;
            let r = self.add()?;
            return Ok(Ast::Bin(op, Box::new(l), Box::new(r), p));
        }
        let mut negated = false;
        if self.is_kw("not") {
            negated = true;
            self.bump()?;
            if !self.is_kw("in") {
                return Err(self.err(format!("expected IN after NOT, found {}", self.describe())));
            }
        }
        if self.is_kw("in") {
            self.bump()?;
            let close = if self.is_op("[") {
                "]"
            } else if self.is_op("(") {
                ")"
            } else {
                return Err(self.err(format!(
                    "expected a list after IN, found {}",
                    self.describe()
                )));
            };
            self.bump()?;
            let items = self.items(close)?;
            return Ok(Ast::In(Box::new(l), items, negated, p));
        }
        Ok(l)
    }
    fn items(&mut self, close: &str) -> Result<Vec<Ast>, CepError> {
        let mut items = Vec::new();
        if self.is_op(close) {
            self.bump()?;
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.is_op(",") {
                self.bump()?;
                continue;
            }
            self.expect(close)?;
            return Ok(items);
        }
    }
    fn add(&mut self) -> Result<Ast, CepError> {
        let mut l = self.mul()?;
        loop {
            let op = if self.is_op("+") {
                "+"
            } else if self.is_op("-") {
                "-"
            } else {
                return Ok(l);
            };
            let p = self.tok_pos;
            self.bump()?;
            let r = self.mul()?;
            l = Ast::Bin(op, Box::new(l), Box::new(r), p);
        }
    }
    fn mul(&mut self) -> Result<Ast, CepError> {
        let mut l = self.unary()?;
        loop {
            let op = if self.is_op("*") {
                "*"
            } else if self.is_op("/") {
                "/"
            } else if self.is_op("%") {
                "%"
            } else {
                return Ok(l);
            };
            let p = self.tok_pos;
            self.bump()?;
            let r = self.unary()?;
            l = Ast::Bin(op, Box::new(l), Box::new(r), p);
        }
    }
    fn unary(&mut self) -> Result<Ast, CepError> {
        let p = self.tok_pos;
        if self.is_op("!") || self.is_kw("not") {
            self.bump()?;
            self.depth += 1;
            if self.depth > 64 {
                return Err(self.err("expression nested too deeply".into()));
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Ast::Unary("!", Box::new(e), p));
        }
        if self.is_op("-") {
            self.bump()?;
            self.depth += 1;
            if self.depth > 64 {
                return Err(self.err("expression nested too deeply".into()));
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Ast::Unary("-", Box::new(e), p));
        }
        let mut e = self.primary()?;
        if matches!(e, Ast::Call(..)) && self.is_op(".") {
            let mut path = Vec::new();
            while self.is_op(".") {
                self.bump()?;
                match &self.tok {
                    Tok::Ident(s) => path.push(s.clone()),
                    Tok::Num(n) if n.fract() == 0.0 => path.push(format!("{}", *n as i64)),
                    _ => {
                        return Err(
                            self.err(format!("expected a field name, found {}", self.describe()))
                        )
                    }
                }
                self.bump()?;
            }
            e = Ast::Member(Box::new(e), path, p);
        }
        Ok(e)
    }
    fn primary(&mut self) -> Result<Ast, CepError> {
        let p = self.tok_pos;
        match self.tok.clone() {
            Tok::Num(n) => {
                self.bump()?;
                Ok(Ast::Lit(Val::Num(n), p))
            }
            Tok::Str(s) => {
                self.bump()?;
                Ok(Ast::Lit(Val::str(&s), p))
            }
            Tok::Op("(") => {
                self.bump()?;
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => {
                self.bump()?;
                let items = self.items("]")?;
                Ok(Ast::List(items, p))
            }
            Tok::Ident(id) => {
                self.bump()?;
                let lower = id.to_ascii_lowercase();
                match lower.as_str() {
                    "true" => return Ok(Ast::Lit(Val::Bool(true), p)),
                    "false" => return Ok(Ast::Lit(Val::Bool(false), p)),
                    "null" => return Ok(Ast::Lit(Val::Null, p)),
                    _ => {}
                }
                if self.is_op("(") {
                    self.bump()?;
                    let args = self.items(")")?;
                    return Ok(Ast::Call(lower, args, p));
                }
                let mut path = vec![id];
                while self.is_op(".") {
                    self.bump()?;
                    match &self.tok {
                        Tok::Ident(s) => path.push(s.clone()),
                        Tok::Op("*") => path.push("*".into()),
                        Tok::Num(n) if n.fract() == 0.0 && *n >= 0.0 => {
                            path.push(format!("{}", *n as i64))
                        }
                        _ => {
                            return Err(self
                                .err(format!("expected a field name, found {}", self.describe())))
                        }
                    }
                    self.bump()?;
                }
                Ok(Ast::Path(path, p))
            }
            _ => Err(self.err(format!("expected a value, found {}", self.describe()))),
        }
    }
}

// ---------------------------------------------------------------- compiled form

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    First,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAggOp {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Lower,
    Upper,
    Len,
    Abs,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Lit(Val),
    /// A field of the current event (in an emit expression: of the match's last event).
    Field(u32),
    StepField(usize, Which, u32),
    StepAgg(usize, StepAggOp, Option<u32>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// Fast path: field == string literal.
    FieldEqStr(u32, VStr, bool),
    In(Box<Expr>, Vec<Expr>, bool),
    Matches(Box<Expr>, Arc<Regex>),
    Call(Func, Box<Expr>),
    List(Vec<Expr>),
}

/// What names mean while compiling.
pub struct Scope<'a> {
    pub fields: &'a mut FieldTable,
    /// Step names of a pattern (empty elsewhere).
    pub steps: &'a [String],
    /// The step whose condition is being compiled: `S.x` then means the current event.
    pub current_step: Option<usize>,
    /// Full text (for error positions).
    pub text: &'a str,
}

impl Scope<'_> {
    fn step(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s == name)
    }
    fn err(&self, msg: impl Into<String>, pos: usize) -> CepError {
        CepError::at(msg, self.text, pos)
    }
}

fn bin_op(op: &str) -> Option<BinOp> {
    Some(match op {
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        "%" => BinOp::Rem,
        "contains" => BinOp::Contains,
        "starts_with" => BinOp::StartsWith,
        "ends_with" => BinOp::EndsWith,
        _ => return None,
    })
}

/// SQL LIKE pattern to an anchored regex.
fn like_to_regex(p: &str) -> String {
    let mut r = String::from("^");
    for c in p.chars() {
        match c {
            '%' => r.push_str(".*"),
            '_' => r.push('.'),
            c => r.push_str(&regex::escape(&c.to_string())),
        }
    }
    r.push('$');
    r
}

pub fn compile(ast: &Ast, sc: &mut Scope<'_>) -> Result<Expr, CepError> {
    Ok(match ast {
        Ast::Lit(v, _) => Expr::Lit(v.clone()),
        Ast::List(items, _) => {
            let c: Result<Vec<_>, _> = items.iter().map(|a| compile(a, sc)).collect();
            let c = c?;
            if c.iter().all(|e| matches!(e, Expr::Lit(_))) {
                Expr::Lit(Val::List(Arc::new(
                    c.into_iter()
                        .map(|e| match e {
                            Expr::Lit(v) => v,
                            _ => Val::Null,
                        })
                        .collect(),
                )))
            } else {
                Expr::List(c)
            }
        }
        Ast::Path(path, pos) => compile_path(path, *pos, Which::Last, sc)?,
        Ast::Unary(op, e, _) => {
            let c = compile(e, sc)?;
            if *op == "!" {
                Expr::Not(Box::new(c))
            } else {
                Expr::Neg(Box::new(c))
            }
        }
        Ast::Bin(op, l, r, pos) => {
            let lc = compile(l, sc)?;
            match *op {
                "&&" => Expr::And(Box::new(lc), Box::new(compile(r, sc)?)),
                "||" => Expr::Or(Box::new(lc), Box::new(compile(r, sc)?)),
                "matches" | "like" => {
                    let Ast::Lit(Val::Str(pat), ppos) = &**r else {
                        return Err(sc.err(format!("{op} needs a string literal pattern"), r.pos()));
                    };
                    let src = if *op == "like" {
                        like_to_regex(pat)
                    } else {
                        pat.to_string()
                    };
                    let re = Regex::new(&src)
                        .map_err(|e| sc.err(format!("invalid regex {pat:?}: {e}"), *ppos))?;
                    Expr::Matches(Box::new(lc), Arc::new(re))
                }
                other => {
                    let Some(b) = bin_op(other) else {
                        return Err(sc.err(format!("unknown operator {other}"), *pos));
                    };
                    let rc = compile(r, sc)?;
                    match (b, &lc, &rc) {
                        (BinOp::Eq | BinOp::Ne, Expr::Field(f), Expr::Lit(Val::Str(s)))
                        | (BinOp::Eq | BinOp::Ne, Expr::Lit(Val::Str(s)), Expr::Field(f)) => {
                            Expr::FieldEqStr(*f, s.clone(), b == BinOp::Ne)
                        }
                        _ => Expr::Bin(b, Box::new(lc), Box::new(rc)),
                    }
                }
            }
        }
        Ast::In(e, items, neg, _) => {
            let c = compile(e, sc)?;
            let items: Result<Vec<_>, _> = items.iter().map(|a| compile(a, sc)).collect();
            Expr::In(Box::new(c), items?, *neg)
        }
        Ast::Member(call, path, pos) => {
            let Ast::Call(name, args, cpos) = &**call else {
                return Err(sc.err("unexpected field access", *pos));
            };
            let which = match name.as_str() {
                "first" => Which::First,
                "last" => Which::Last,
                _ => return Err(sc.err(format!("cannot access a field of {name}(...)"), *pos)),
            };
            let [Ast::Path(steppath, spos)] = args.as_slice() else {
                return Err(sc.err(format!("{name}(...) takes one step name"), *cpos));
            };
            if steppath.len() != 1 || sc.step(&steppath[0]).is_none() {
                return Err(sc.err(
                    format!(
                        "{name}(...) needs a step name, found {:?}",
                        steppath.join(".")
                    ),
                    *spos,
                ));
            }
            let mut full = steppath.clone();
            full.extend(path.iter().cloned());
            compile_path(&full, *pos, which, sc)?
        }
        Ast::Call(name, args, pos) => compile_call(name, args, *pos, sc)?,
    })
}

fn compile_path(
    path: &[String],
    pos: usize,
    which: Which,
    sc: &mut Scope<'_>,
) -> Result<Expr, CepError> {
    if path.iter().any(|s| s == "*") {
        return Err(sc.err("`.*` is only allowed in count(STEP.*)", pos));
    }
    if let Some(step) = sc.step(&path[0]) {
        if path.len() == 1 {
            return Err(sc.err(
                format!(
                    "step {:?} used as a value: use a field (e.g. {}.x) or count({})",
                    path[0], path[0], path[0]
                ),
                pos,
            ));
        }
        let field = sc.fields.intern(&path[1..].join("."));
        if sc.current_step == Some(step) && which == Which::Last {
            return Ok(Expr::Field(field));
        }
        return Ok(Expr::StepField(step, which, field));
    }
    Ok(Expr::Field(sc.fields.intern(&path.join("."))))
}

fn compile_call(
    name: &str,
    args: &[Ast],
    pos: usize,
    sc: &mut Scope<'_>,
) -> Result<Expr, CepError> {
    let step_agg = match name {
        "count" => Some(StepAggOp::Count),
        "sum" => Some(StepAggOp::Sum),
        "avg" => Some(StepAggOp::Avg),
        "min" => Some(StepAggOp::Min),
        "max" => Some(StepAggOp::Max),
        _ => None,
    };
    if let Some(op) = step_agg {
        if sc.steps.is_empty() {
            return Err(sc.err(format!("{name}(...) is an aggregate: allowed in patterns (over a step) and in window aggregates"), pos));
        }
        let [Ast::Path(path, ppos)] = args else {
            return Err(sc.err(
                format!(
                    "{name}(...) takes one argument: a step (count(s)) or a step field (sum(s.x))"
                ),
                pos,
            ));
        };
        let Some(step) = sc.step(&path[0]) else {
            return Err(sc.err(format!("unknown step {:?} in {name}(...)", path[0]), *ppos));
        };
        let rest = &path[1..];
        let field = if rest.is_empty() || rest == ["*"] {
            if op != StepAggOp::Count {
                return Err(sc.err(
                    format!("{name}(...) needs a field, e.g. {name}({}.x)", path[0]),
                    *ppos,
                ));
            }
            None
        } else {
            if rest.iter().any(|s| s == "*") {
                return Err(sc.err("`.*` must be alone after the step name", *ppos));
            }
            Some(sc.fields.intern(&rest.join(".")))
        };
        return Ok(Expr::StepAgg(step, op, field));
    }
    match name {
        "first" | "last" => {
            let which = if name == "first" {
                Which::First
            } else {
                Which::Last
            };
            let [Ast::Path(path, ppos)] = args else {
                return Err(sc.err(
                    format!("{name}(...) takes one step field, e.g. {name}(s.x) or {name}(s).x"),
                    pos,
                ));
            };
            if sc.step(&path[0]).is_none() || path.len() < 2 {
                return Err(sc.err(
                    format!("{name}(...) needs a step field such as {name}(s).x"),
                    *ppos,
                ));
            }
            compile_path(path, *ppos, which, sc)
        }
        "lower" | "upper" | "len" | "length" | "abs" => {
            let [a] = args else {
                return Err(sc.err(format!("{name}(...) takes one argument"), pos));
            };
            let f = match name {
                "lower" => Func::Lower,
                "upper" => Func::Upper,
                "abs" => Func::Abs,
                _ => Func::Len,
            };
            Ok(Expr::Call(f, Box::new(compile(a, sc)?)))
        }
        "contains" | "starts_with" | "ends_with" | "matches" => {
            let [a, b] = args else {
                return Err(sc.err(format!("{name}(...) takes two arguments"), pos));
            };
            compile(
                &Ast::Bin(
                    match name {
                        "contains" => "contains",
                        "starts_with" => "starts_with",
                        "ends_with" => "ends_with",
                        _ => "matches",
                    },
                    Box::new(a.clone()),
                    Box::new(b.clone()),
                    pos,
                ),
                sc,
            )
        }
        _ => Err(sc.err(format!("unknown function {name}(...)"), pos)),
    }
}

// ---------------------------------------------------------------- evaluation

/// What an expression can see: the current event and the events matched so far by step.
pub trait Ctx {
    fn current(&self) -> Option<&Event>;
    fn first(&self, step: usize) -> Option<&Event>;
    fn last(&self, step: usize) -> Option<&Event>;
    fn each(&self, step: usize, f: &mut dyn FnMut(&Event));
}

/// A context with just one event.
pub struct EventCtx<'a>(pub &'a Event);

impl Ctx for EventCtx<'_> {
    fn current(&self) -> Option<&Event> {
        Some(self.0)
    }
    fn first(&self, _: usize) -> Option<&Event> {
        None
    }
    fn last(&self, _: usize) -> Option<&Event> {
        None
    }
    fn each(&self, _: usize, _: &mut dyn FnMut(&Event)) {}
}

fn num(v: f64) -> Val {
    if v.is_finite() {
        Val::Num(v)
    } else {
        Val::Null
    }
}

impl Expr {
    #[inline]
    pub fn test<C: Ctx>(&self, c: &C) -> bool {
        match self {
            Expr::FieldEqStr(f, s, neg) => {
                let eq = match c.current().map(|e| e.get(*f)) {
                    // Short strings compared as words (no `memcmp` call per event).
                    Some(Val::Str(v)) => crate::event::bytes_eq(v.as_bytes(), s.as_bytes()),
                    _ => false,
                };
                eq != *neg
            }
            Expr::And(a, b) => a.test(c) && b.test(c),
            Expr::Or(a, b) => a.test(c) || b.test(c),
            Expr::Not(a) => !a.test(c),
            // The same as `eval(..).truthy()` below, without building a `Cow`.
            Expr::Field(f) => c.current().is_some_and(|e| e.get(*f).truthy()),
            Expr::Lit(v) => v.truthy(),
            _ => self.test_eval(c),
        }
    }

    /// The general case of [`Expr::test`], out of line: inlined, `eval` made every
    /// `test` call (twice per event and partial match) pay for its large frame.
    #[inline(never)]
    fn test_eval<C: Ctx>(&self, c: &C) -> bool {
        self.eval(c).truthy()
    }

    pub fn eval<'a, C: Ctx>(&'a self, c: &'a C) -> Cow<'a, Val> {
        match self {
            Expr::Lit(v) => Cow::Borrowed(v),
            Expr::Field(f) => match c.current() {
                Some(e) => Cow::Borrowed(e.get(*f)),
                None => Cow::Owned(Val::Null),
            },
            Expr::StepField(s, w, f) => {
                let e = match w {
                    Which::First => c.first(*s),
                    Which::Last => c.last(*s),
                };
                match e {
                    Some(e) => Cow::Borrowed(e.get(*f)),
                    None => Cow::Owned(Val::Null),
                }
            }
            Expr::StepAgg(s, op, f) => Cow::Owned(step_agg(c, *s, *op, *f)),
            Expr::Not(_) | Expr::And(..) | Expr::Or(..) | Expr::FieldEqStr(..) => {
                Cow::Owned(Val::Bool(self.test(c)))
            }
            Expr::Neg(a) => Cow::Owned(match a.eval(c).as_num() {
                Some(n) => num(-n),
                None => Val::Null,
            }),
            Expr::Bin(op, a, b) => {
                let x = a.eval(c);
                let y = b.eval(c);
                Cow::Owned(bin(*op, &x, &y))
            }
            Expr::In(a, items, neg) => {
                let x = a.eval(c);
                let found = if let [Expr::Lit(Val::List(l))] = items.as_slice() {
                    // `x in [..]` written as a single list literal
                    l.iter().any(|v| v.loose_eq(&x))
                } else {
                    items.iter().any(|i| {
                        let v = i.eval(c);
                        match &*v {
                            Val::List(l) if items.len() == 1 => l.iter().any(|v| v.loose_eq(&x)),
                            v => v.loose_eq(&x),
                        }
                    })
                };
                Cow::Owned(Val::Bool(found != *neg))
            }
            Expr::Matches(a, re) => Cow::Owned(Val::Bool(match &*a.eval(c) {
                Val::Str(s) => re.is_match(s),
                _ => false,
            })),
            Expr::Call(f, a) => {
                let x = a.eval(c);
                Cow::Owned(match (f, &*x) {
                    (Func::Lower, Val::Str(s)) => Val::str(&s.to_lowercase()),
                    (Func::Upper, Val::Str(s)) => Val::str(&s.to_uppercase()),
                    (Func::Len, Val::Str(s)) => Val::Num(s.chars().count() as f64),
                    (Func::Len, Val::List(l)) => Val::Num(l.len() as f64),
                    (Func::Len, Val::Json(j)) => match &**j {
                        serde_json::Value::Object(m) => Val::Num(m.len() as f64),
                        _ => Val::Null,
                    },
                    (Func::Abs, Val::Num(n)) => Val::Num(n.abs()),
                    _ => Val::Null,
                })
            }
            Expr::List(items) => Cow::Owned(Val::List(Arc::new(
                items.iter().map(|i| i.eval(c).into_owned()).collect(),
            ))),
        }
    }
}

fn step_agg<C: Ctx>(c: &C, s: usize, op: StepAggOp, f: Option<u32>) -> Val {
    let mut count = 0usize;
    let mut sum = 0.0;
    let mut n = 0usize;
    let mut best: Option<Val> = None;
    c.each(s, &mut |e| {
        count += 1;
        if let Some(f) = f {
            let v = e.get(f);
            if let Some(x) = v.as_num() {
                sum += x;
                n += 1;
            }
            if !matches!(v, Val::Null) {
                let better = match &best {
                    None => true,
                    Some(b) => match v.loose_cmp(b) {
                        Some(Ordering::Less) => op == StepAggOp::Min,
                        Some(Ordering::Greater) => op == StepAggOp::Max,
                        _ => false,
                    },
                };
                if better {
                    best = Some(v.clone());
                }
            }
        }
    });
    match op {
        StepAggOp::Count => Val::Num(count as f64),
        StepAggOp::Sum => num(sum),
        StepAggOp::Avg => {
            if n == 0 {
                Val::Null
            } else {
                num(sum / n as f64)
            }
        }
        StepAggOp::Min | StepAggOp::Max => best.unwrap_or(Val::Null),
    }
}

pub(crate) fn bin(op: BinOp, x: &Val, y: &Val) -> Val {
    match op {
        BinOp::Eq => Val::Bool(x.loose_eq(y)),
        BinOp::Ne => Val::Bool(!x.loose_eq(y)),
        BinOp::Lt => Val::Bool(x.loose_cmp(y) == Some(Ordering::Less)),
        BinOp::Le => Val::Bool(matches!(
            x.loose_cmp(y),
            Some(Ordering::Less | Ordering::Equal)
        )),
        BinOp::Gt => Val::Bool(x.loose_cmp(y) == Some(Ordering::Greater)),
        BinOp::Ge => Val::Bool(matches!(
            x.loose_cmp(y),
            Some(Ordering::Greater | Ordering::Equal)
        )),
        BinOp::Add => match (x, y) {
            (Val::Str(a), Val::Str(b)) => Val::str(&format!("{a}{b}")),
            _ => arith(x, y, |a, b| a + b),
        },
        BinOp::Sub => arith(x, y, |a, b| a - b),
        BinOp::Mul => arith(x, y, |a, b| a * b),
        BinOp::Div => arith(x, y, |a, b| if b == 0.0 { f64::NAN } else { a / b }),
        BinOp::Rem => arith(x, y, |a, b| if b == 0.0 { f64::NAN } else { a % b }),
        BinOp::Contains => Val::Bool(match (x, y) {
            (Val::Str(a), Val::Str(b)) => a.contains(&**b),
            (Val::List(l), v) => l.iter().any(|e| e.loose_eq(v)),
            _ => false,
        }),
        BinOp::StartsWith => {
            Val::Bool(matches!((x, y), (Val::Str(a), Val::Str(b)) if a.starts_with(&**b)))
        }
        BinOp::EndsWith => {
            Val::Bool(matches!((x, y), (Val::Str(a), Val::Str(b)) if a.ends_with(&**b)))
        }
    }
}

fn arith(x: &Val, y: &Val, f: impl Fn(f64, f64) -> f64) -> Val {
    match (x.as_num(), y.as_num()) {
        (Some(a), Some(b)) => num(f(a, b)),
        _ => Val::Null,
    }
}

/// Collects the field ids an expression reads from the current event.
pub fn is_constant(e: &Expr) -> bool {
    matches!(e, Expr::Lit(_))
}
