//! Definitions in their JSON form (what `register` takes and `definitions()` returns).

use crate::error::CepError;
use serde::{Deserialize, Serialize};

/// Where a definition reads from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// A topic name (patterns, queries, and alert rules over events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Alert rules only: the id of a pattern or query whose outputs the rule watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// Records that are not JSON objects go to this topic (else they are only counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeDef {
    /// Field holding the event time in epoch milliseconds; absent: the record timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_orderness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<String>,
    /// Late events go to this topic (else they are only counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimesDef {
    Exactly(u32),
    Range {
        #[serde(default)]
        min: Option<u32>,
        #[serde(default)]
        max: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub name: String,
    /// Condition; absent means every event qualifies.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<TimesDef>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub one_or_more: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub greedy: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub reluctant: bool,
    /// strict | relaxed | any: how this step's first event follows the previous step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contiguity: Option<String>,
    /// strict | relaxed | any: how repetitions of a looping step follow each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_contiguity: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub not: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitDef {
    pub topic: String,
    /// Expression for the output key; absent: the partition key (patterns) or group key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Output fields: name -> expression string (or a nested object of those, or a JSON
    /// literal that is not a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Map<String, serde_json::Value>>,
    /// Alert rules: a webhook URL the broker delivers the alert to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternDef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub source: SourceDef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeDef>,
    /// "event" (default when event_time is given) or "processing".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub steps: Vec<StepDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    pub emit: EmitDef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDef {
    /// tumbling | hopping | session
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
}

/// One aggregate: `{"name": "p99", "fn": "percentile", "field": "latency", "p": 0.99}` or
/// the string form in a map: `"p99": "percentile(latency, 0.99)"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDef {
    pub name: String,
    #[serde(rename = "fn")]
    pub func: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// percentile: p in [0, 1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// top_k: k
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
    /// zscore / ewma: anomaly threshold (in standard deviations, default 3)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// ewma: smoothing factor in (0, 1], default 0.3
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AggregatesDef {
    List(Vec<AggregateDef>),
    Map(serde_json::Map<String, serde_json::Value>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryDef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub source: SourceDef,
    /// Only events satisfying this expression are aggregated.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub window: WindowDef,
    #[serde(default)]
    pub group_by: Vec<String>,
    pub aggregates: AggregatesDef,
    pub emit: EmitDef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertDef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub source: SourceDef,
    pub condition: String,
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Expression whose value identifies "the same alert" for suppression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// After an alert fires for a dedup key, further ones are suppressed for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub emit: EmitDef,
}

fn default_severity() -> String {
    "warning".into()
}

/// Anything the engine can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Definition {
    Pattern(PatternDef),
    Query(QueryDef),
    Alert(AlertDef),
}

impl Definition {
    pub fn id(&self) -> &str {
        match self {
            Definition::Pattern(p) => &p.id,
            Definition::Query(q) => &q.id,
            Definition::Alert(a) => &a.id,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Definition::Pattern(_) => "pattern",
            Definition::Query(_) => "query",
            Definition::Alert(_) => "alert",
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses a definition from JSON. The kind is taken from `"kind"` (`pattern`, `query`,
/// `alert`) or guessed: `steps` means a pattern, `window` a query, `condition` an alert rule.
/// This only checks the shape; `Engine::register` compiles and validates the rest.
pub fn parse_definition_json(text: &str) -> Result<Definition, CepError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| json_err(text, e))?;
    let Some(obj) = v.as_object() else {
        return Err(CepError::new("a definition must be a JSON object"));
    };
    let kind = obj
        .get("kind")
        .and_then(|k| k.as_str())
        .map(|s| s.to_string())
        .or_else(|| {
            if obj.contains_key("steps") {
                Some("pattern".into())
            } else if obj.contains_key("window") {
                Some("query".into())
            } else if obj.contains_key("condition") {
                Some("alert".into())
            } else {
                None
            }
        });
    let r = match kind.as_deref() {
        Some("pattern") => serde_json::from_str::<PatternDef>(text).map(Definition::Pattern),
        Some("query") => serde_json::from_str::<QueryDef>(text).map(Definition::Query),
        Some("alert") => serde_json::from_str::<AlertDef>(text).map(Definition::Alert),
        Some(k) => {
            return Err(CepError::new(format!(
                "unknown kind {k:?}: expected pattern, query or alert"
            )))
        }
        None => {
            return Err(CepError::new(
                "cannot tell the definition's kind: give \"kind\" or one of \"steps\" (pattern), \"window\" (query), \"condition\" (alert)",
            ))
        }
    };
    r.map_err(|e| json_err(text, e))
}

fn json_err(text: &str, e: serde_json::Error) -> CepError {
    let line = e.line();
    let col = e.column();
    let mut offset = 0;
    for (i, l) in text.split('\n').enumerate() {
        if i + 1 == line {
            offset += col.saturating_sub(1).min(l.len());
            break;
        }
        offset += l.len() + 1;
    }
    let mut err = CepError::new(format!("invalid definition: {e}"));
    if line > 0 {
        err.position = Some(crate::error::Position {
            line,
            column: col,
            offset: offset.min(text.len()),
        });
    }
    err
}
