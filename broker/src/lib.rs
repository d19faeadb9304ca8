//! The Weir broker: the Kafka-protocol server and its request handlers, the
//! cluster state, and the client side used by the `weir` CLI tools.

pub mod cli;
pub mod client;
pub mod config;
pub mod server;
pub mod telemetry;
