//! Request and response framing around `kafka-protocol`'s typed messages.
//!
//! The broker side decodes a request frame into a [`DecodedRequest`] and encodes a
//! [`ResponseKind`] with the right header version. The client side (Weir's CLI and
//! `weir bench`) does the reverse.

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable};
use std::ops::Range;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RequestError {
    #[error("request frame of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("unsupported version {version} of {api_key:?} (correlation id {correlation_id})")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error(
        "malformed {api_key:?} v{version} request (correlation id {correlation_id}): {reason}"
    )]
    Malformed {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
    #[error("malformed request header: {0}")]
    MalformedHeader(String),
}

impl RequestError {
    /// The correlation id, when the header got far enough to have one.
    pub fn correlation_id(&self) -> Option<i32> {
        match self {
            RequestError::UnknownApiKey { correlation_id, .. }
            | RequestError::UnsupportedVersion { correlation_id, .. }
            | RequestError::Malformed { correlation_id, .. } => Some(*correlation_id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecodedRequest {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
}

impl DecodedRequest {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
}

/// The fixed prefix every request header starts with, readable before the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

pub fn peek_header_prefix(frame: &[u8]) -> Result<HeaderPrefix, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort(frame.len()));
    }
    Ok(HeaderPrefix {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// Decodes one request frame (without its size prefix). `supported` says which
/// versions the broker serves; others are rejected before the body is decoded.
pub fn decode_request(
    mut frame: Bytes,
    supported: impl Fn(ApiKey, i16) -> bool,
) -> Result<DecodedRequest, RequestError> {
    let prefix = peek_header_prefix(&frame)?;
    let api_key = ApiKey::try_from(prefix.api_key).map_err(|_| RequestError::UnknownApiKey {
        api_key: prefix.api_key,
        correlation_id: prefix.correlation_id,
    })?;
    if !supported(api_key, prefix.api_version) {
        return Err(RequestError::UnsupportedVersion {
            api_key,
            version: prefix.api_version,
            correlation_id: prefix.correlation_id,
        });
    }
    let header_version = api_key.request_header_version(prefix.api_version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| RequestError::MalformedHeader(e.to_string()))?;
    let malformed = |reason: String| RequestError::Malformed {
        api_key,
        version: prefix.api_version,
        correlation_id: prefix.correlation_id,
        reason,
    };
    let body = RequestKind::decode(api_key, &mut frame, prefix.api_version)
        .map_err(|e| malformed(e.to_string()))?;
    Ok(DecodedRequest {
        api_key,
        header,
        body,
    })
}

/// Encodes a response frame, size prefix included.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, String> {
    // ApiVersions responses always use header v0 so that a client that asked with
    // a version the broker does not know can still read the error.
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("encoding {api_key:?} v{version}: {e}"))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Record payloads at least this long are passed through by reference by
/// [`encode_response_chunks`]; shorter ones are cheaper to copy than to give the
/// socket write an iovec of their own.
pub const SPLICE_MIN: usize = 1024;

/// Encodes a response frame, size prefix included, as a list of chunks to be
/// written in order (a vectored write): byte for byte what [`encode_response`]
/// produces, but the record payloads of a Fetch response (storage `Bytes`, usually
/// slices of a segment map) are not copied into the frame. They become chunks of
/// their own between the encoded pieces around them.
///
/// The body is encoded by kafka-protocol's own encoder into a buffer that
/// recognises those payloads when the encoder copies them in (by address and
/// length) and keeps a reference instead, so the field order, length prefixes and
/// tagged fields stay kafka-protocol's for every version.
pub fn encode_response_chunks(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Vec<Bytes>, String> {
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    let mut payloads = Vec::new();
    if let ResponseKind::Fetch(fetch) = body {
        for topic in &fetch.responses {
            for partition in &topic.partitions {
                if let Some(records) = partition.records.as_ref().filter(|r| r.len() >= SPLICE_MIN)
                {
                    payloads.push(records.clone());
                }
            }
        }
    }
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = SpliceBuf::new(&payloads);
    buf.head.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    // `ResponseKind::encode` only takes a `BytesMut`; the Fetch body goes through
    // the generic encoder so that its records can be spliced, the rest copy nothing
    // worth splicing.
    match body {
        ResponseKind::Fetch(fetch) => Encodable::encode(fetch, &mut buf, version),
        other => other.encode(&mut buf.head, version),
    }
    .map_err(|e| format!("encoding {api_key:?} v{version}: {e}"))?;
    let total = buf.offset();
    let len = i32::try_from(total - 4)
        .map_err(|_| format!("{api_key:?} v{version} response of {total} bytes is too large"))?;
    let mut chunks = buf.finish();
    // The size prefix sits in the first chunk, which ends before the first payload:
    // only the response header and the fields before it are copied to patch it.
    let first = chunks
        .first_mut()
        .ok_or_else(|| "empty response frame".to_string())?;
    let mut patched = BytesMut::from(&first[..]);
    patched[0..4].copy_from_slice(&len.to_be_bytes());
    *first = patched.freeze();
    Ok(chunks)
}

/// The buffer behind [`encode_response_chunks`]: encoded bytes go to `head`; a
/// `put_slice` of one of `payloads` (same address and length) closes `head` as a
/// chunk and adds the payload itself as the next one.
struct SpliceBuf<'a> {
    done: Vec<Bytes>,
    done_len: usize,
    head: BytesMut,
    payloads: &'a [Bytes],
}

impl<'a> SpliceBuf<'a> {
    fn new(payloads: &'a [Bytes]) -> Self {
        SpliceBuf {
            done: Vec::new(),
            done_len: 0,
            head: BytesMut::with_capacity(256),
            payloads,
        }
    }

    fn payload_for(&self, src: &[u8]) -> Option<&'a Bytes> {
        if src.len() < SPLICE_MIN {
            return None;
        }
        self.payloads
            .iter()
            .find(|p| p.as_ptr() == src.as_ptr() && p.len() == src.len())
    }

    /// Copies everything into `head` again, for the (unused by message encoders)
    /// case of seeking back into bytes already handed over as chunks.
    fn materialize(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let mut all = BytesMut::with_capacity(self.done_len + self.head.len());
        for c in self.done.drain(..) {
            all.extend_from_slice(&c);
        }
        all.extend_from_slice(&self.head);
        self.head = all;
        self.done_len = 0;
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.head.is_empty() || self.done.is_empty() {
            self.done.push(self.head.freeze());
        }
        self.done
    }
}

// SAFETY: every method delegates to `head`, a `BytesMut`, whose `BufMut` contract
// holds; `put_slice` only adds whole chunks beside it.
unsafe impl BufMut for SpliceBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `head.chunk_mut()`.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.payload_for(src) {
            Some(payload) => {
                if !self.head.is_empty() {
                    let piece = self.head.split().freeze();
                    self.done_len += piece.len();
                    self.done.push(piece);
                }
                self.done_len += payload.len();
                self.done.push(payload.clone());
            }
            None => self.head.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for SpliceBuf<'_> {
    fn offset(&self) -> usize {
        self.done_len + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        if offset < self.done_len {
            self.materialize();
        }
        self.head.resize(offset - self.done_len, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        if r.start < self.done_len {
            self.materialize();
        }
        let at = self.done_len;
        &mut self.head[r.start - at..r.end - at]
    }
}

/// Client side: encodes a request frame, size prefix included.
pub fn encode_request(header: &RequestHeader, body: &RequestKind) -> Result<Bytes, String> {
    let api_key =
        ApiKey::try_from(header.request_api_key).map_err(|_| "unknown api key".to_string())?;
    let version = header.request_api_version;
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("encoding {api_key:?} v{version}: {e}"))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Client side: decodes a response frame (without size prefix) for a request of
/// `api_key` at `version`. Returns the correlation id and the body.
pub fn decode_response(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<(i32, ResponseKind), String> {
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    if frame.remaining() < 4 {
        return Err("response too short".into());
    }
    let header = ResponseHeader::decode(&mut frame, header_version).map_err(|e| e.to_string())?;
    let body = ResponseKind::decode(api_key, &mut frame, version).map_err(|e| e.to_string())?;
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    fn all_versions(_: ApiKey, _: i16) -> bool {
        true
    }

    #[test]
    fn request_round_trips() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(12)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        let body = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("x")))),
        ])));
        let mut frame = encode_request(&header, &body).unwrap();
        frame.advance(4);
        let decoded = decode_request(frame, all_versions).unwrap();
        assert_eq!(decoded.correlation_id(), 42);
        assert_eq!(decoded.body, body);
    }

    /// A Fetch response like the broker's, for every case the chunked encoder must
    /// reproduce: records null, empty, short (copied) and long (passed through),
    /// several topics and partitions, aborted transactions, and the fields that
    /// exist only in some versions.
    pub(crate) fn sample_fetch_response(version: i16, payloads: &[Bytes]) -> ResponseKind {
        use kafka_protocol::messages::fetch_response::*;
        use kafka_protocol::messages::{BrokerId, FetchResponse, ProducerId, TopicName};
        let partition = |index: i32, records: Option<Bytes>, aborted: bool| {
            PartitionData::default()
                .with_partition_index(index)
                .with_error_code(if records.is_none() { 1 } else { 0 })
                .with_high_watermark(1000 + i64::from(index))
                .with_last_stable_offset(990)
                .with_log_start_offset(3)
                .with_aborted_transactions(aborted.then(|| {
                    vec![
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(77))
                            .with_first_offset(12),
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(78))
                            .with_first_offset(40),
                    ]
                }))
                .with_preferred_read_replica(BrokerId(if version >= 11 { 2 } else { -1 }))
                .with_records(records)
        };
        let topic = |name: &'static str, id: u128, partitions: Vec<PartitionData>| {
            let t = FetchableTopicResponse::default().with_partitions(partitions);
            if version >= 13 {
                t.with_topic_id(uuid_from(id))
            } else {
                t.with_topic(TopicName(StrBytes::from_static_str(name)))
            }
        };
        let mut response = FetchResponse::default()
            .with_throttle_time_ms(5)
            .with_responses(vec![
                topic(
                    "orders",
                    1,
                    vec![
                        partition(0, None, false),
                        partition(1, Some(Bytes::new()), true),
                        partition(2, Some(payloads[0].clone()), true),
                        partition(3, Some(Bytes::from_static(&[9u8; 100])), false),
                    ],
                ),
                topic(
                    "payments",
                    2,
                    vec![
                        partition(0, Some(payloads[1].clone()), false),
                        partition(7, Some(payloads[2].clone()), true),
                    ],
                ),
            ]);
        if version >= 7 {
            response = response.with_error_code(0).with_session_id(1234);
        }
        ResponseKind::Fetch(response)
    }

    fn uuid_from(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    pub(crate) fn sample_payloads() -> Vec<Bytes> {
        vec![
            Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<u8>>()),
            Bytes::from(vec![0xabu8; 70_000]),
            // Exactly the threshold: passed through.
            Bytes::from(vec![0x5au8; SPLICE_MIN]),
        ]
    }

    #[test]
    fn chunked_fetch_responses_match_kafka_protocol_for_every_version() {
        use kafka_protocol::messages::FetchResponse;
        use kafka_protocol::protocol::Message;
        let payloads = sample_payloads();
        let versions = FetchResponse::VERSIONS.min..=FetchResponse::VERSIONS.max;
        assert!(versions.contains(&4) && versions.contains(&16));
        for version in versions {
            let body = sample_fetch_response(version, &payloads);
            let reference = encode_response(ApiKey::Fetch, version, 42, &body).unwrap();
            let chunks = encode_response_chunks(ApiKey::Fetch, version, 42, &body).unwrap();
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, reference.to_vec(), "Fetch v{version}");
            // Zero copy: each long payload is one of the chunks, not a copy of it.
            for p in &payloads {
                assert!(
                    chunks
                        .iter()
                        .any(|c| c.as_ptr() == p.as_ptr() && c.len() == p.len()),
                    "Fetch v{version}: payload of {} bytes was copied",
                    p.len()
                );
            }
            // 3 payloads and the encoded pieces between them; before v12 (not
            // flexible) nothing follows the last partition's records.
            let expected = if version >= 12 { 7 } else { 6 };
            assert_eq!(chunks.len(), expected, "Fetch v{version}");
        }
    }

    #[test]
    fn chunked_encoding_of_other_responses_is_one_chunk() {
        use kafka_protocol::messages::ApiVersionsResponse;
        let body = ResponseKind::ApiVersions(ApiVersionsResponse::default().with_error_code(35));
        for version in 0..=3 {
            let reference = encode_response(ApiKey::ApiVersions, version, 7, &body).unwrap();
            let chunks = encode_response_chunks(ApiKey::ApiVersions, version, 7, &body).unwrap();
            assert_eq!(chunks, vec![reference]);
        }
    }

    #[test]
    fn unknown_key_keeps_correlation_id() {
        let frame = Bytes::from_static(&[0x7f, 0x00, 0, 1, 0, 0, 0, 9, 0, 0]);
        let err = decode_request(frame, all_versions).unwrap_err();
        assert_eq!(err.correlation_id(), Some(9));
    }

    /// Valid requests of several APIs, encoded at every version kafka-protocol
    /// knows, to be mutated by the fuzz test below.
    fn seed_frames() -> Vec<Vec<u8>> {
        use kafka_protocol::messages::*;
        let topic = || TopicName(StrBytes::from_static_str("orders"));
        let bodies: Vec<(ApiKey, RequestKind, std::ops::RangeInclusive<i16>)> = vec![
            (
                ApiKey::Metadata,
                RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
                ]))),
                0..=13,
            ),
            (
                ApiKey::Produce,
                RequestKind::Produce(ProduceRequest::default().with_acks(-1).with_topic_data(
                    vec![produce_request::TopicProduceData::default()
                            .with_name(topic())
                            .with_partition_data(vec![
                                produce_request::PartitionProduceData::default()
                                    .with_records(Some(Bytes::from_static(&[0u8; 70]))),
                            ])],
                )),
                3..=12,
            ),
            (
                ApiKey::Fetch,
                RequestKind::Fetch(FetchRequest::default().with_topics(vec![
                fetch_request::FetchTopic::default().with_topic(topic()).with_partitions(vec![
                    fetch_request::FetchPartition::default().with_fetch_offset(5),
                ]),
            ])),
                4..=12,
            ),
            (
                ApiKey::CreateTopics,
                RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                        create_topics_request::CreatableTopic::default()
                            .with_name(topic())
                            .with_num_partitions(3)
                            .with_configs(vec![
                                create_topics_request::CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_static_str("retention.ms"))
                                    .with_value(Some(StrBytes::from_static_str("1000"))),
                            ]),
                    ])),
                2..=7,
            ),
            (
                ApiKey::JoinGroup,
                RequestKind::JoinGroup(
                    JoinGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("g")))
                        .with_protocol_type(StrBytes::from_static_str("consumer"))
                        .with_protocols(vec![
                            join_group_request::JoinGroupRequestProtocol::default()
                                .with_name(StrBytes::from_static_str("range"))
                                .with_metadata(Bytes::from_static(b"meta")),
                        ]),
                ),
                0..=9,
            ),
            (
                ApiKey::ApiVersions,
                RequestKind::ApiVersions(ApiVersionsRequest::default()),
                0..=4,
            ),
        ];
        let mut frames = Vec::new();
        for (key, body, versions) in bodies {
            for version in versions {
                let header = RequestHeader::default()
                    .with_request_api_key(key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(7);
                if let Ok(frame) = encode_request(&header, &body) {
                    frames.push(frame[4..].to_vec());
                }
            }
        }
        assert!(frames.len() > 40, "seed frames encode");
        frames
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Fuzz: valid frames of many APIs, mutated (byte flips, planted huge
        /// length prefixes, truncation), decode or fail but never panic or
        /// abort on a giant allocation.
        #[test]
        fn mutated_valid_frames_never_panic(seed in any::<prop::sample::Index>(),
                                            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                                            planted in proptest::option::of((any::<prop::sample::Index>(), any::<u32>())),
                                            cut in any::<prop::sample::Index>()) {
            let frames = seed_frames();
            let mut frame = frames[seed.index(frames.len())].clone();
            for (at, byte) in flips {
                let i = at.index(frame.len());
                frame[i] = byte;
            }
            if let Some((at, value)) = planted {
                let i = at.index(frame.len());
                let end = (i + 4).min(frame.len());
                frame[i..end].copy_from_slice(&value.to_be_bytes()[..end - i]);
            }
            let keep = cut.index(frame.len() + 1).max(frame.len().saturating_sub(8));
            frame.truncate(keep);
            let _ = decode_request(Bytes::from(frame), all_versions);
        }

        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(bytes), all_versions);
        }

        #[test]
        fn random_bodies_never_panic(key in 0i16..70, version in 0i16..18,
                                     body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut frame = Vec::new();
            frame.extend_from_slice(&key.to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&1i32.to_be_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_request(Bytes::from(frame), all_versions);
        }
    }

    #[test]
    fn a_tiny_frame_declaring_two_billion_topics_is_refused() {
        // Metadata v1: header (key, version, correlation id, client id null), then
        // the topics array length 0x7fffffff and nothing else.
        let mut frame = vec![0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff];
        frame.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        assert!(decode_request(Bytes::from(frame), all_versions).is_err());
    }
}
