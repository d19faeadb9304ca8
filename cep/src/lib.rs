//! Weir CEP engine (work in progress).
pub mod def;
pub mod error;
pub mod event;
pub mod expr;
pub mod pattern;
pub mod value;
pub use error::{CepError, Position};
