//! Weir's ingest collectors, independent of the broker: request body parsing,
//! per-record transforms (drop, rename, mask, salted hash), a JSON Schema subset,
//! the [`Sink`] the broker implements, and a file tailer with durable checkpoints.
//!
//! Dependencies point broker -> ingest: the broker implements [`Sink`] and serves
//! the HTTP and WebSocket endpoints; everything here is plain data and files.

pub mod glob;
pub mod parse;
pub mod pipeline;
pub mod schema;
pub mod sink;
pub mod tailer;
pub mod transform;

pub use parse::{parse_body, BodyFormat, ParseError};
pub use pipeline::{Pipeline, PipelineConfig, Routed};
pub use schema::{Schema, SchemaError};
pub use sink::{IngestRecord, Sink, SinkError};
pub use tailer::{FileCollectorConfig, FileFormat, Tailer};
pub use transform::{Transform, TransformError};

/// The `[ingest]` table of the broker's TOML file.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// `[[ingest.file]]`: file collectors.
    #[serde(default)]
    pub file: Vec<FileCollectorConfig>,
    /// `[[ingest.topic]]`: transforms, schema and dead-letter topic for events
    /// posted over HTTP or WebSocket to a topic.
    #[serde(default)]
    pub topic: Vec<TopicRule>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TopicRule {
    pub topic: String,
    #[serde(flatten)]
    pub pipeline: PipelineConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_with_pipeline_fields() {
        let c: IngestConfig = serde_json::from_value(serde_json::json!({
            "file": [{"path": "/var/log/*.log", "topic": "logs", "format": "json", "dead_letter_topic": "dlq",
                      "transforms": [{"op": "drop", "field": "x"}], "schema": {"type": "object"}}],
            "topic": [{"topic": "events", "transforms": [{"op": "hash", "field": "email", "salt": "s"}]}]
        }))
        .unwrap();
        assert_eq!(c.file[0].pipeline.dead_letter_topic.as_deref(), Some("dlq"));
        assert_eq!(c.file[0].pipeline.transforms.len(), 1);
        assert_eq!(c.topic[0].pipeline.transforms.len(), 1);
        let typo = serde_json::from_value::<FileCollectorConfig>(
            serde_json::json!({"path": "a", "topic": "b", "fromat": "json"}),
        );
        assert!(typo.is_err(), "unknown keys are refused");
    }
}
