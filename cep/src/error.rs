//! Errors returned when a definition is invalid or a checkpoint cannot be restored.

use std::fmt;

/// A position in a definition's text: 1-based line and column, plus the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
}

impl Position {
    /// The position of byte `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let mut line = 1;
        let mut col = 1;
        for (i, c) in text.char_indices() {
            if i >= offset {
                break;
            }
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        Position {
            line,
            column: col,
            offset,
        }
    }
}

/// Every error the engine reports. `message` names the problem; `position` is set for
/// errors inside SQL text or an expression (relative to that text), and `context` names the
/// definition field that holds it (e.g. `steps[1].where`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CepError {
    pub message: String,
    pub context: Option<String>,
    pub position: Option<Position>,
}

impl CepError {
    pub fn new(message: impl Into<String>) -> Self {
        CepError {
            message: message.into(),
            context: None,
            position: None,
        }
    }
    pub fn at(message: impl Into<String>, text: &str, offset: usize) -> Self {
        CepError {
            message: message.into(),
            context: None,
            position: Some(Position::of(text, offset)),
        }
    }
    /// Adds the name of the field this error was found in (outermost first).
    pub fn in_field(mut self, field: impl Into<String>) -> Self {
        let f = field.into();
        self.context = Some(match self.context.take() {
            Some(inner) if inner.starts_with('[') => format!("{f}{inner}"),
            Some(inner) => format!("{f}.{inner}"),
            None => f,
        });
        self
    }
}

impl fmt::Display for CepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(p) = &self.position {
            write!(
                f,
                " (line {}, column {}, byte {})",
                p.line, p.column, p.offset
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for CepError {}

/// Parses a duration such as `500ms`, `5s`, `1m`, `2h`, `1d` or a bare number of
/// milliseconds, into milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, CepError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        CepError::new(format!(
            "invalid duration {text:?}: expected e.g. 5s, 500ms, 1m"
        ))
    })?;
    let mult = match unit.trim() {
        "" | "ms" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        u => {
            return Err(CepError::new(format!(
                "invalid duration {text:?}: unknown unit {u:?}"
            )))
        }
    };
    let v = n * mult;
    if !v.is_finite() || !(0.0..=9.0e15).contains(&v) {
        return Err(CepError::new(format!(
            "invalid duration {text:?}: out of range"
        )));
    }
    Ok(v.round() as i64)
}
