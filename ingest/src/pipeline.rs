//! What happens to one event between parsing and the sink: the key is taken,
//! the schema checked, the transforms run, and events that fail the schema are
//! routed to the dead-letter topic as `{"reason": ..., "record": ...}`.
//!
//! The schema sees the event as it arrived; the transforms run before anything
//! is stored, dead letters included, so masked and hashed fields never reach a
//! topic in the clear. The key is read from the event as it arrived.

use crate::schema::Schema;
use crate::sink::IngestRecord;
use crate::transform::{Prepared, Transform};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
    /// A JSON Schema (subset, see [`crate::schema`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Field whose value becomes the record key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    transforms: Vec<Prepared>,
    schema: Option<Schema>,
    pub dead_letter_topic: Option<String>,
    pub key_field: Option<String>,
}

/// Where one event goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    Record(IngestRecord),
    /// To the dead-letter topic (already encoded).
    DeadLetter(IngestRecord, String),
    /// Failed the schema and there is no dead-letter topic.
    Rejected(String),
}

impl Pipeline {
    pub fn new(config: &PipelineConfig) -> Result<Pipeline, String> {
        let transforms = config
            .transforms
            .iter()
            .map(|t| t.prepare().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let schema = match &config.schema {
            Some(s) => Some(Schema::compile(s).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Pipeline {
            transforms,
            schema,
            dead_letter_topic: config.dead_letter_topic.clone(),
            key_field: config.key_field.clone(),
        })
    }

    pub fn is_identity(&self) -> bool {
        self.transforms.is_empty() && self.schema.is_none()
    }

    /// `key_field` overrides the configured key field (HTTP `?key=`).
    pub fn route(
        &self,
        mut event: Value,
        key_field: Option<&str>,
        partition: Option<i32>,
    ) -> Routed {
        let key = key_field
            .or(self.key_field.as_deref())
            .and_then(|f| key_of(&event, f));
        let failure = self.schema.as_ref().and_then(|s| s.validate(&event).err());
        for t in &self.transforms {
            t.apply(&mut event);
        }
        match failure {
            None => Routed::Record(IngestRecord {
                key,
                value: encode(&event),
                partition,
            }),
            Some(reason) => match &self.dead_letter_topic {
                Some(_) => {
                    let dead = json!({"reason": reason, "record": event});
                    Routed::DeadLetter(
                        IngestRecord {
                            key,
                            value: encode(&dead),
                            partition: None,
                        },
                        reason,
                    )
                }
                None => Routed::Rejected(reason),
            },
        }
    }
}

fn encode(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A field's value as key bytes: strings as they are, anything else as JSON text.
/// Dotted paths reach into nested objects.
pub fn key_of(event: &Value, field: &str) -> Option<Vec<u8>> {
    let mut cur = event;
    for part in field.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::Null => None,
        Value::String(s) => Some(s.clone().into_bytes()),
        other => Some(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_transforms() {
        let cfg: PipelineConfig = serde_json::from_value(json!({
            "transforms": [{"op": "hash", "field": "email", "salt": "pepper"}, {"op": "drop", "field": "secret"}],
            "schema": {"type": "object", "required": ["id"]},
            "dead_letter_topic": "dlq",
            "key_field": "id"
        }))
        .unwrap();
        let p = Pipeline::new(&cfg).unwrap();
        let Routed::Record(r) = p.route(json!({"id": 7, "email": "a@b", "secret": 1}), None, None)
        else {
            panic!()
        };
        assert_eq!(r.key.as_deref(), Some(&b"7"[..]));
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(
            v,
            json!({"id": 7, "email": crate::transform::hash(b"pepper", "a@b")})
        );
        let Routed::DeadLetter(d, reason) = p.route(json!({"email": "a@b"}), None, None) else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&d.value).unwrap();
        assert_eq!(v["reason"], json!(reason));
        assert!(reason.contains("id"));
        assert_eq!(
            v["record"]["email"],
            json!(crate::transform::hash(b"pepper", "a@b"))
        );
        let strict = Pipeline::new(&PipelineConfig {
            dead_letter_topic: None,
            ..cfg
        })
        .unwrap();
        assert!(matches!(
            strict.route(json!({}), None, None),
            Routed::Rejected(_)
        ));
        assert_eq!(
            key_of(&json!({"u": {"n": "x"}}), "u.n"),
            Some(b"x".to_vec())
        );
    }
}
