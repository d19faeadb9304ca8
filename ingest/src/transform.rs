//! Per-record transforms applied before a record is stored: drop a field, rename
//! it, mask it (keeping the first or last N characters), or replace it with the
//! hex SHA-256 of a secret salt followed by its value. Field names may be dotted
//! paths into nested objects (`user.email`). A missing field is left alone.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    Drop {
        field: String,
    },
    Rename {
        field: String,
        to: String,
    },
    /// Replaces every character with `mask_char` except the first `keep_first`
    /// and the last `keep_last` ones. Non-strings are masked as their JSON text.
    Mask {
        field: String,
        #[serde(default)]
        keep_first: usize,
        #[serde(default)]
        keep_last: usize,
        #[serde(default = "default_mask_char")]
        mask_char: char,
    },
    /// Hex SHA-256 of `salt` bytes followed by the value (its string, or its JSON
    /// text for non-strings). The salt comes from `salt` or from the environment
    /// variable named by `salt_env`.
    Hash {
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        salt: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        salt_env: Option<String>,
    },
}

fn default_mask_char() -> char {
    '*'
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("transform on an empty field name")]
    EmptyField,
    #[error("hash of {0}: set `salt` or `salt_env`")]
    NoSalt(String),
    #[error("hash of {field}: environment variable {var} is not set")]
    SaltEnvMissing { field: String, var: String },
}

impl Transform {
    fn field(&self) -> &str {
        match self {
            Transform::Drop { field } | Transform::Rename { field, .. } => field,
            Transform::Mask { field, .. } | Transform::Hash { field, .. } => field,
        }
    }

    /// Checks the transform and resolves its salt once.
    pub fn prepare(&self) -> Result<Prepared, TransformError> {
        if self.field().is_empty() {
            return Err(TransformError::EmptyField);
        }
        let salt = match self {
            Transform::Hash {
                field,
                salt: Some(s),
                ..
            } => {
                let _ = field;
                Some(s.clone().into_bytes())
            }
            Transform::Hash {
                field,
                salt: None,
                salt_env: Some(var),
            } => match std::env::var(var) {
                Ok(s) => Some(s.into_bytes()),
                Err(_) => {
                    return Err(TransformError::SaltEnvMissing {
                        field: field.clone(),
                        var: var.clone(),
                    })
                }
            },
            Transform::Hash { field, .. } => return Err(TransformError::NoSalt(field.clone())),
            _ => None,
        };
        Ok(Prepared {
            transform: self.clone(),
            salt,
        })
    }
}

/// A transform ready to run (salt resolved).
#[derive(Debug, Clone)]
pub struct Prepared {
    transform: Transform,
    salt: Option<Vec<u8>>,
}

impl Prepared {
    pub fn apply(&self, event: &mut Value) {
        match &self.transform {
            Transform::Drop { field } => {
                take(event, field);
            }
            Transform::Rename { field, to } => {
                if let Some(v) = take(event, field) {
                    put(event, to, v);
                }
            }
            Transform::Mask {
                field,
                keep_first,
                keep_last,
                mask_char,
            } => {
                if let Some(v) = get_mut(event, field) {
                    *v = Value::String(mask(&text_of(v), *keep_first, *keep_last, *mask_char));
                }
            }
            Transform::Hash { field, .. } => {
                if let Some(v) = get_mut(event, field) {
                    *v = Value::String(hash(self.salt.as_deref().unwrap_or_default(), &text_of(v)));
                }
            }
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn mask(s: &str, keep_first: usize, keep_last: usize, mask_char: char) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_first || i + keep_last >= n {
                *c
            } else {
                mask_char
            }
        })
        .collect()
}

/// Lower-case hex SHA-256 of `salt || value`.
pub fn hash(salt: &[u8], value: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(value.as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn parent_mut<'a>(
    event: &'a mut Value,
    path: &'a str,
) -> Option<(&'a mut Map<String, Value>, &'a str)> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop()?;
    let mut cur = event.as_object_mut()?;
    for p in parts {
        cur = cur.get_mut(p)?.as_object_mut()?;
    }
    Some((cur, last))
}

fn get_mut<'a>(event: &'a mut Value, path: &'a str) -> Option<&'a mut Value> {
    let (map, last) = parent_mut(event, path)?;
    map.get_mut(last)
}

fn take(event: &mut Value, path: &str) -> Option<Value> {
    let (map, last) = parent_mut(event, path)?;
    map.remove(last)
}

/// Sets a (dotted) field, creating intermediate objects.
fn put(event: &mut Value, path: &str, value: Value) {
    let Some(mut cur) = event.as_object_mut() else {
        return;
    };
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), value);
            return;
        }
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Some(next) = entry.as_object_mut() else {
            return;
        };
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(t: Transform, mut v: Value) -> Value {
        t.prepare().unwrap().apply(&mut v);
        v
    }

    #[test]
    fn drop_and_rename() {
        let v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        assert_eq!(
            run(
                Transform::Drop {
                    field: "b.c".into()
                },
                v.clone()
            ),
            json!({"a": 1, "b": {"d": 3}})
        );
        assert_eq!(
            run(
                Transform::Rename {
                    field: "a".into(),
                    to: "x.y".into()
                },
                v.clone()
            )["x"]["y"],
            json!(1)
        );
        assert_eq!(run(Transform::Drop { field: "zz".into() }, v.clone()), v);
    }

    #[test]
    fn mask_keeps_ends() {
        let t = |first, last| Transform::Mask {
            field: "card".into(),
            keep_first: first,
            keep_last: last,
            mask_char: '*',
        };
        let v = json!({"card": "4111111111111111"});
        assert_eq!(run(t(0, 4), v.clone())["card"], json!("************1111"));
        assert_eq!(run(t(2, 0), v.clone())["card"], json!("41**************"));
        assert_eq!(run(t(0, 4), json!({"card": "abc"}))["card"], json!("abc"));
        assert_eq!(run(t(0, 0), json!({"card": 12345}))["card"], json!("*****"));
        assert_eq!(mask("héllo", 1, 1, '#'), "h###o");
    }

    #[test]
    fn hash_is_salted_sha256() {
        let t = Transform::Hash {
            field: "email".into(),
            salt: Some("s3cret".into()),
            salt_env: None,
        };
        let out = run(t, json!({"email": "a@b.c"}));
        assert_eq!(out["email"], json!(hash(b"s3cret", "a@b.c")));
        // sha256("abc")
        assert_eq!(
            hash(b"a", "bc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Transform::Hash {
            field: "e".into(),
            salt: None,
            salt_env: None
        }
        .prepare()
        .is_err());
        let parsed: Transform =
            serde_json::from_value(json!({"op": "mask", "field": "x", "keep_last": 4})).unwrap();
        assert!(matches!(
            parsed,
            Transform::Mask {
                keep_last: 4,
                keep_first: 0,
                mask_char: '*',
                ..
            }
        ));
    }
}
