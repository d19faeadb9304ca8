//! Weir's own async Kafka client (lands with the CLI tools).
