//! A documented subset of JSON Schema (the `jsonschema` crate pulls in an HTTP
//! client and dozens of crates; this keeps builds fast): `type` (a name or a list),
//! `required`, `properties` (nested), `items`, `enum`, `const`, `minimum`,
//! `maximum`, `minLength`, `maxLength` and `pattern` (Rust regex, unanchored like
//! ECMA-262 `pattern`). Other keywords are rejected when the schema is compiled,
//! except the annotations `$schema`, `$id`, `title`, `description` and
//! `additionalProperties: true`, so that a schema never silently checks less than
//! it says.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema: {0}")]
pub struct SchemaError(pub String);

#[derive(Debug, Clone, Default)]
pub struct Schema {
    types: Option<Vec<String>>,
    required: Vec<String>,
    properties: Vec<(String, Schema)>,
    items: Option<Box<Schema>>,
    enumeration: Option<Vec<Value>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<regex::Regex>,
}

const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

impl Schema {
    pub fn compile(schema: &Value) -> Result<Schema, SchemaError> {
        Self::compile_at(schema, "#")
    }

    fn compile_at(schema: &Value, at: &str) -> Result<Schema, SchemaError> {
        let err = |m: String| SchemaError(format!("{at}: {m}"));
        let Some(obj) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok(Schema::default()),
                _ => Err(err("a schema must be an object".into())),
            };
        };
        let mut s = Schema::default();
        for (key, v) in obj {
            match key.as_str() {
                "$schema" | "$id" | "title" | "description" | "$comment" | "examples"
                | "default" => {}
                "additionalProperties" if v == &Value::Bool(true) => {}
                "type" => {
                    let names: Vec<String> = match v {
                        Value::String(t) => vec![t.clone()],
                        Value::Array(ts) => ts
                            .iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect(),
                        _ => return Err(err("type must be a string or a list of strings".into())),
                    };
                    if let Some(bad) = names.iter().find(|t| !TYPES.contains(&t.as_str())) {
                        return Err(err(format!("unknown type {bad:?}")));
                    }
                    s.types = Some(names);
                }
                "required" => {
                    let Some(list) = v.as_array() else {
                        return Err(err("required must be a list".into()));
                    };
                    s.required = list
                        .iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect();
                }
                "properties" => {
                    let Some(props) = v.as_object() else {
                        return Err(err("properties must be an object".into()));
                    };
                    for (name, sub) in props {
                        s.properties.push((
                            name.clone(),
                            Self::compile_at(sub, &format!("{at}/properties/{name}"))?,
                        ));
                    }
                }
                "items" => s.items = Some(Box::new(Self::compile_at(v, &format!("{at}/items"))?)),
                "enum" => {
                    let Some(list) = v.as_array() else {
                        return Err(err("enum must be a list".into()));
                    };
                    s.enumeration = Some(list.clone());
                }
                "const" => s.enumeration = Some(vec![v.clone()]),
                "minimum" => {
                    s.minimum = Some(
                        v.as_f64()
                            .ok_or_else(|| err("minimum must be a number".into()))?,
                    )
                }
                "maximum" => {
                    s.maximum = Some(
                        v.as_f64()
                            .ok_or_else(|| err("maximum must be a number".into()))?,
                    )
                }
                "minLength" => {
                    s.min_length = Some(
                        v.as_u64()
                            .ok_or_else(|| err("minLength must be a count".into()))?
                            as usize,
                    )
                }
                "maxLength" => {
                    s.max_length = Some(
                        v.as_u64()
                            .ok_or_else(|| err("maxLength must be a count".into()))?
                            as usize,
                    )
                }
                "pattern" => {
                    let Some(p) = v.as_str() else {
                        return Err(err("pattern must be a string".into()));
                    };
                    s.pattern =
                        Some(regex::Regex::new(p).map_err(|e| err(format!("pattern: {e}")))?);
                }
                other => {
                    return Err(err(format!(
                        "keyword {other:?} is not supported (see weir_ingest::schema)"
                    )))
                }
            }
        }
        Ok(s)
    }

    /// Checks an event; the error names the failing location and rule.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        self.validate_at(value, "$")
    }

    fn validate_at(&self, value: &Value, at: &str) -> Result<(), String> {
        if let Some(types) = &self.types {
            if !types.iter().any(|t| type_matches(t, value)) {
                return Err(format!(
                    "{at}: expected type {}, got {}",
                    types.join(" or "),
                    type_name(value)
                ));
            }
        }
        if let Some(allowed) = &self.enumeration {
            if !allowed.contains(value) {
                return Err(format!(
                    "{at}: {value} is not one of {}",
                    Value::Array(allowed.clone())
                ));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = self.minimum {
                if n < min {
                    return Err(format!("{at}: {n} is less than the minimum {min}"));
                }
            }
            if let Some(max) = self.maximum {
                if n > max {
                    return Err(format!("{at}: {n} is more than the maximum {max}"));
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count();
            if self.min_length.is_some_and(|m| len < m) || self.max_length.is_some_and(|m| len > m)
            {
                return Err(format!("{at}: string length {len} is out of bounds"));
            }
            if let Some(p) = &self.pattern {
                if !p.is_match(s) {
                    return Err(format!(
                        "{at}: {s:?} does not match the pattern {:?}",
                        p.as_str()
                    ));
                }
            }
        }
        if let Some(obj) = value.as_object() {
            self.validate_object(obj, at)?;
        }
        if let (Some(items), Some(list)) = (&self.items, value.as_array()) {
            for (i, item) in list.iter().enumerate() {
                items.validate_at(item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    fn validate_object(&self, obj: &Map<String, Value>, at: &str) -> Result<(), String> {
        for field in &self.required {
            if !obj.contains_key(field) {
                return Err(format!("{at}: missing required property {field:?}"));
            }
        }
        for (name, sub) in &self.properties {
            if let Some(v) = obj.get(name) {
                sub.validate_at(v, &format!("{at}.{name}"))?;
            }
        }
        Ok(())
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "required": ["id", "level"],
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 1000},
                "level": {"enum": ["info", "warn", "error"]},
                "host": {"type": "string", "pattern": "^[a-z]+[0-9]*$", "maxLength": 10},
                "tags": {"type": "array", "items": {"type": "string"}},
                "user": {"type": "object", "required": ["name"]}
            }
        }))
        .unwrap()
    }

    #[test]
    fn accepts_valid_events() {
        let s = schema();
        s.validate(&json!({"id": 5, "level": "info"})).unwrap();
        s.validate(&json!({"id": 5, "level": "warn", "host": "web1", "tags": ["a"], "user": {"name": "x"}})).unwrap();
    }

    #[test]
    fn rejects_with_reasons() {
        let s = schema();
        let cases = [
            (json!([1]), "expected type object"),
            (json!({"level": "info"}), "missing required property \"id\""),
            (
                json!({"id": "5", "level": "info"}),
                "$.id: expected type integer",
            ),
            (json!({"id": -1, "level": "info"}), "less than the minimum"),
            (
                json!({"id": 1001, "level": "info"}),
                "more than the maximum",
            ),
            (json!({"id": 1, "level": "debug"}), "is not one of"),
            (
                json!({"id": 1, "level": "info", "host": "Web"}),
                "does not match the pattern",
            ),
            (
                json!({"id": 1, "level": "info", "tags": ["a", 2]}),
                "$.tags[1]",
            ),
            (
                json!({"id": 1, "level": "info", "user": {}}),
                "$.user: missing required property",
            ),
        ];
        for (event, want) in cases {
            let got = s.validate(&event).unwrap_err();
            assert!(got.contains(want), "{event}: {got} lacks {want}");
        }
    }

    #[test]
    fn unsupported_keywords_fail_to_compile() {
        assert!(Schema::compile(&json!({"oneOf": []}))
            .unwrap_err()
            .0
            .contains("oneOf"));
        assert!(Schema::compile(&json!({"type": "str"})).is_err());
        assert!(Schema::compile(&json!({"pattern": "("})).is_err());
        assert!(Schema::compile(&json!(true)).is_ok());
    }
}
