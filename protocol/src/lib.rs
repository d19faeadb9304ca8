//! Weir's Kafka wire protocol, sans-io: no sockets, no files, no runtime.
//!
//! - [`frame`]: length-prefixed framing with a size limit.
//! - [`request`]: request and response headers and typed message bodies
//!   (through the `kafka-protocol` crate), for both the broker and Weir's own client.
//! - [`records`]: a zero-copy view of Kafka v2 record batches, CRC-32C checks,
//!   record iteration, and a batch builder.
//! - [`compression`]: gzip, snappy (xerial framing and raw), lz4 (frame) and zstd.
//! - [`varint`]: zig-zag varints as the record format uses them.

pub mod compression;
pub mod frame;
pub mod records;
pub mod request;
pub mod varint;

pub use kafka_protocol;
