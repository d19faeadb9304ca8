//! SQL MATCH_RECOGNIZE (placeholder, replaced below).
use crate::def::Definition;
use crate::error::CepError;
pub fn parse_sql(_text: &str) -> Result<Definition, CepError> {
    Err(CepError::new("SQL not yet supported"))
}
