//! Storage engine: lands with issue 2.
