//! Request bodies: one JSON value, a JSON array of values, or NDJSON (one value per
//! line). Errors name the 1-based line of the body they were found on.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON value or an array of them; a body with several top-level values on
    /// separate lines is read as NDJSON.
    Json,
    /// Newline-delimited JSON: one value per line, blank lines skipped.
    Ndjson,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the body.
    pub line: usize,
    pub message: String,
}

/// Parses a body into events. A top-level array is split into its elements.
pub fn parse_body(body: &[u8], format: BodyFormat) -> Result<Vec<Value>, ParseError> {
    match format {
        BodyFormat::Ndjson => parse_ndjson(body),
        BodyFormat::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(v) => Ok(vec![v]),
            Err(e) => {
                // `{..}\n{..}` is NDJSON sent without its content type.
                if e.classify() == serde_json::error::Category::Syntax
                    && e.line() > 1
                    && looks_like_ndjson(body)
                {
                    return parse_ndjson(body);
                }
                if e.classify() == serde_json::error::Category::Eof
                    && body.iter().all(u8::is_ascii_whitespace)
                {
                    return Err(ParseError {
                        line: 1,
                        message: "empty body".into(),
                    });
                }
                Err(ParseError {
                    line: e.line().max(1),
                    message: strip_position(&e),
                })
            }
        },
    }
}

fn looks_like_ndjson(body: &[u8]) -> bool {
    let first = body
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace));
    first.is_some_and(|l| serde_json::from_slice::<Value>(l).is_ok())
}

/// Parses NDJSON; every non-blank line must be one JSON value.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<Value>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => out.push(v),
            Err(e) => {
                return Err(ParseError {
                    line: i + 1,
                    message: strip_position(&e),
                })
            }
        }
    }
    if out.is_empty() {
        return Err(ParseError {
            line: 1,
            message: "no events in the body".into(),
        });
    }
    Ok(out)
}

/// serde_json's message without its "at line L column C" (the line is ours).
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    format!("invalid JSON at column {}: {message}", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(
            parse_body(br#"{"a":1}"#, BodyFormat::Json).unwrap(),
            vec![json!({"a":1})]
        );
        assert_eq!(
            parse_body(br#"[{"a":1},{"a":2}]"#, BodyFormat::Json)
                .unwrap()
                .len(),
            2
        );
        let nd = b"{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}\n";
        assert_eq!(parse_body(nd, BodyFormat::Ndjson).unwrap().len(), 3);
        // NDJSON without its content type is still understood.
        assert_eq!(parse_body(nd, BodyFormat::Json).unwrap().len(), 3);
    }

    #[test]
    fn errors_name_the_line() {
        let mut body = String::new();
        for i in 1..=10 {
            if i == 7 {
                body.push_str("{\"a\": oops}\n");
            } else {
                body.push_str(&format!("{{\"a\":{i}}}\n"));
            }
        }
        let e = parse_body(body.as_bytes(), BodyFormat::Ndjson).unwrap_err();
        assert_eq!(e.line, 7);
        assert!(e.to_string().starts_with("line 7: "), "{e}");
        let e = parse_body(body.as_bytes(), BodyFormat::Json).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        let e = parse_body(b"[{\"a\":1},\n{\"a\":}]", BodyFormat::Json).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse_body(b"  \n", BodyFormat::Ndjson).is_err());
        assert!(parse_body(b"", BodyFormat::Json).is_err());
    }
}
