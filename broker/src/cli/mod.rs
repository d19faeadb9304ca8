//! The client-side subcommands of `weir`. They speak the Kafka protocol through
//! [`crate::client`], so they work against Apache Kafka and Redpanda too.

pub mod consume;
pub mod produce;
pub mod topics;
