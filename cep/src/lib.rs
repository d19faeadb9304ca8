//! Placeholder: CEP engine lands with its issue.
