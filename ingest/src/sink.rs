//! Where ingested records go: the broker implements [`Sink`].

/// One record to append. `partition: None` lets the sink choose (murmur2 of the
/// key like Kafka's default partitioner; null keys stick to one partition per call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub partition: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("{0}")]
    InvalidPartition(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
    /// Temporarily unable to take the records (retry later).
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Storage(String),
}

pub trait Sink: Send + Sync {
    /// Appends the records, all or nothing, and returns (partition, offset) per
    /// record in input order once they are durable. Blocks until then.
    fn append(&self, topic: &str, records: Vec<IngestRecord>)
        -> Result<Vec<(i32, i64)>, SinkError>;

    /// Log end offset of every partition of `topic` (empty if it does not exist).
    fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, SinkError>;
}
