//! Records of the internal `__consumer_offsets` topic, in Apache Kafka's binary
//! schema so that compaction keys match Kafka's:
//!
//! - offset commit: key v1 `(group, topic, partition)`, value v3
//!   `(offset, leader epoch, metadata, commit timestamp)`;
//! - group metadata: key v2 `(group)`, value v3 (protocol type, generation,
//!   protocol, leader, state timestamp, members with subscription and assignment).
//!
//! - consumer-protocol (KIP-848) group: key v3 `(group)` as Kafka's
//!   ConsumerGroupMetadataKey, but with a Weir value: version
//!   [`CONSUMER_GROUP_VALUE_VERSION`] then the whole group state as JSON
//!   (epochs, assignor, topic snapshot, members with subscriptions, epochs,
//!   assignments and targets). Kafka splits this over record types 3-8; a
//!   Kafka broker reading Weir's log skips these values.
//!
//! A null value (tombstone) deletes the key.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const OFFSET_KEY_VERSION: i16 = 1;
pub const GROUP_KEY_VERSION: i16 = 2;
pub const CONSUMER_GROUP_KEY_VERSION: i16 = 3;
/// Weir's own value version for consumer group state (no Kafka value uses it).
pub const CONSUMER_GROUP_VALUE_VERSION: i16 = 0x5700;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
    ConsumerGroup {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&bytes[..len]);
}

fn put_opt_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

pub fn encode_key(key: &RecordKey) -> Vec<u8> {
    let mut buf = BytesMut::new();
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            buf.put_i16(OFFSET_KEY_VERSION);
            put_str(&mut buf, group);
            put_str(&mut buf, topic);
            buf.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            buf.put_i16(GROUP_KEY_VERSION);
            put_str(&mut buf, group);
        }
        RecordKey::ConsumerGroup { group } => {
            buf.put_i16(CONSUMER_GROUP_KEY_VERSION);
            put_str(&mut buf, group);
        }
    }
    buf.to_vec()
}

pub fn encode_offset(v: &OffsetValue) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i16(OFFSET_VALUE_VERSION);
    buf.put_i64(v.offset);
    buf.put_i32(v.leader_epoch);
    put_str(&mut buf, &v.metadata);
    buf.put_i64(v.commit_timestamp);
    buf.to_vec()
}

pub fn encode_group(v: &GroupValue) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i16(GROUP_VALUE_VERSION);
    put_str(&mut buf, &v.protocol_type);
    buf.put_i32(v.generation);
    put_opt_str(&mut buf, v.protocol.as_deref());
    put_opt_str(&mut buf, v.leader.as_deref());
    buf.put_i64(v.state_timestamp);
    buf.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_str(&mut buf, &m.member_id);
        put_opt_str(&mut buf, m.group_instance_id.as_deref());
        put_str(&mut buf, &m.client_id);
        put_str(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.to_vec()
}

/// A reader that fails instead of panicking on short input.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.0.remaining() < n {
            return Err(format!(
                "record truncated: need {n} bytes, have {}",
                self.0.remaining()
            ));
        }
        Ok(())
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn opt_str(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        self.need(len as usize)?;
        let b = self.0.split_to(len as usize);
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| "string is not UTF-8".to_string())
    }
    fn str(&mut self) -> Result<String, String> {
        self.opt_str()?
            .ok_or_else(|| "null string where a string is required".to_string())
    }
    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        self.need(len as usize)?;
        Ok(self.0.split_to(len as usize))
    }
}

pub fn decode_key(b: Bytes) -> Result<RecordKey, String> {
    let mut r = Reader(b);
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.str()?,
            topic: r.str()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.str()? }),
        3 => Ok(RecordKey::ConsumerGroup { group: r.str()? }),
        v => Err(format!("unknown __consumer_offsets key version {v}")),
    }
}

pub fn decode_offset(b: Bytes) -> Result<OffsetValue, String> {
    let mut r = Reader(b);
    let version = r.i16()?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.str()?;
    let commit_timestamp = r.i64()?;
    if version == 1 {
        let _expire = r.i64()?;
    }
    if !(0..=4).contains(&version) {
        return Err(format!("unknown offset value version {version}"));
    }
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

pub fn decode_group(b: Bytes) -> Result<GroupValue, String> {
    let mut r = Reader(b);
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return Err(format!("unknown group metadata value version {version}"));
    }
    let protocol_type = r.str()?;
    let generation = r.i32()?;
    let protocol = r.opt_str()?;
    let leader = r.opt_str()?;
    let state_timestamp = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let member_id = r.str()?;
        let group_instance_id = if version >= 3 { r.opt_str()? } else { None };
        let client_id = r.str()?;
        let client_host = r.str()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        let rebalance_timeout_ms = if rebalance_timeout_ms < 0 {
            session_timeout_ms
        } else {
            rebalance_timeout_ms
        };
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

pub fn encode_consumer_group(json: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(json.len() + 2);
    buf.put_i16(CONSUMER_GROUP_VALUE_VERSION);
    buf.put_slice(json);
    buf.to_vec()
}

/// The JSON of a consumer group value.
pub fn decode_consumer_group(b: Bytes) -> Result<Bytes, String> {
    let mut r = Reader(b);
    match r.i16()? {
        CONSUMER_GROUP_VALUE_VERSION => Ok(r.0),
        v => Err(format!("consumer group value version {v} is not Weir's")),
    }
}

/// Java's `String.hashCode`, for Kafka's group -> partition mapping.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The `__consumer_offsets` partition that holds a group, as Kafka computes it.
pub fn partition_for(group: &str, partitions: usize) -> usize {
    if partitions == 0 {
        return 0;
    }
    // Kafka's Utils.abs: i32::MIN maps to 0.
    let h = java_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs as usize % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let k = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        };
        assert_eq!(decode_key(Bytes::from(encode_key(&k))).unwrap(), k);
        let k = RecordKey::Group {
            group: "grp".into(),
        };
        assert_eq!(decode_key(Bytes::from(encode_key(&k))).unwrap(), k);
        let v = OffsetValue {
            offset: 42,
            leader_epoch: 7,
            metadata: "meta".into(),
            commit_timestamp: 1000,
        };
        assert_eq!(decode_offset(Bytes::from(encode_offset(&v))).unwrap(), v);
        let g = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 99,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300,
                session_timeout_ms: 100,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(decode_group(Bytes::from(encode_group(&g))).unwrap(), g);
    }

    #[test]
    fn truncated_records_are_errors() {
        let v = encode_offset(&OffsetValue {
            offset: 1,
            leader_epoch: -1,
            metadata: "x".into(),
            commit_timestamp: 1,
        });
        for cut in 0..v.len() {
            assert!(decode_offset(Bytes::copy_from_slice(&v[..cut])).is_err());
        }
        assert!(decode_key(Bytes::from_static(&[0, 9])).is_err());
    }

    #[test]
    fn group_partition_matches_kafka() {
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("ab"), 97 * 31 + 98);
        assert_eq!(partition_for("anything", 1), 0);
        assert!(partition_for("test-group", 50) < 50);
    }
}
