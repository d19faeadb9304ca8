//! The Weir broker: the Kafka-protocol server and its request handlers, the
//! cluster state, and the client side used by the `weir` CLI tools.

pub mod cep;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod coordinator;
pub mod fetch_session;
pub mod handlers;
pub mod http;
pub mod ingest;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod producer_state;
pub mod reassign;
pub mod replication;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod topic_config;
