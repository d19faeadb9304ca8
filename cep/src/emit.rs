//! Output records and `emit.value` templates.

use crate::error::CepError;
use crate::event::FieldTable;
use crate::expr::{self, Ctx, Expr, Scope};
use crate::value::{write_json, write_str};

/// What an output record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// A pattern match.
    Match,
    /// An event that arrived after the watermark (minus allowed lateness); the original
    /// record, sent to the definition's `event_time.late_topic`.
    Late,
    /// A record whose value is not a JSON object; the original record, sent to
    /// `source.dead_letter`.
    DeadLetter,
    /// One window result (per window and group).
    WindowResult,
    /// An alert; the broker delivers it to `webhook` when set.
    Alert { webhook: Option<String> },
}

/// A record the engine wants written to `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// JSON (the original bytes for Late and DeadLetter).
    pub value: Vec<u8>,
    pub definition_id: String,
    pub kind: OutputKind,
    pub timestamp_ms: i64,
}

/// A compiled `emit.value` template.
#[derive(Debug, Clone)]
pub enum Template {
    Expr(Expr),
    Obj(Vec<(String, Template)>),
    Lit(serde_json::Value),
}

impl Template {
    pub fn compile(
        v: &serde_json::Map<String, serde_json::Value>,
        fields: &mut FieldTable,
        steps: &[String],
        path: &str,
    ) -> Result<Template, CepError> {
        let mut out = Vec::new();
        for (k, x) in v {
            let p = format!("{path}.{k}");
            let t = match x {
                serde_json::Value::String(s) => {
                    let ast = expr::parse(s).map_err(|e| e.in_field(p.clone()))?;
                    let mut sc = Scope {
                        fields,
                        steps,
                        current_step: None,
                        text: s,
                    };
                    Template::Expr(expr::compile(&ast, &mut sc).map_err(|e| e.in_field(p.clone()))?)
                }
                serde_json::Value::Object(m) => Template::compile(m, fields, steps, &p)?,
                other => Template::Lit(other.clone()),
            };
            out.push((k.clone(), t));
        }
        Ok(Template::Obj(out))
    }

    pub fn write<C: Ctx>(&self, c: &C, out: &mut String) {
        match self {
            Template::Expr(e) => write_json(&e.eval(c), out),
            Template::Lit(v) => out.push_str(&v.to_string()),
            Template::Obj(items) => {
                out.push('{');
                for (i, (k, t)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(k, out);
                    out.push(':');
                    t.write(c, out);
                }
                out.push('}');
            }
        }
    }
}

pub fn compile_expr(
    text: &str,
    fields: &mut FieldTable,
    steps: &[String],
    field: &str,
) -> Result<Expr, CepError> {
    let ast = expr::parse(text).map_err(|e| e.in_field(field))?;
    let mut sc = Scope {
        fields,
        steps,
        current_step: None,
        text,
    };
    expr::compile(&ast, &mut sc).map_err(|e| e.in_field(field))
}
