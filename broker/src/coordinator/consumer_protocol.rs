//! The parts of the "consumer" embedded protocol the coordinator reads: the
//! topics a member subscribes to (OffsetDelete refuses to delete their offsets).

use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;

/// Topics of a ConsumerProtocolSubscription; `None` if it does not parse.
pub fn subscribed_topics(mut metadata: Bytes) -> Option<Vec<String>> {
    if metadata.remaining() < 2 {
        return None;
    }
    let version = metadata.get_i16();
    // Newer versions only append fields: read what version 3 knows.
    let version = version.clamp(0, 3);
    let sub = ConsumerProtocolSubscription::decode(&mut metadata, version).ok()?;
    Some(sub.topics.into_iter().map(|t| t.to_string()).collect())
}
