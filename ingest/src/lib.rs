//! Placeholder: ingest collectors land with their issue.
