//! Weir CEP engine.
pub mod alert;
pub mod clock;
pub mod def;
pub mod emit;
pub mod engine;
pub mod error;
pub mod event;
pub mod expr;
pub mod patrt;
pub mod pattern;
pub mod sketch;
pub mod sql;
pub mod value;
pub mod window;

pub use def::{parse_definition_json, Definition};
pub use emit::{Output, OutputKind};
pub use engine::{DefinitionInfo, DefinitionStats, Engine, Limits, Stats};
pub use error::{CepError, Position};
pub use event::SourceRecord;
pub use sql::parse_sql;
