//! One Kafka client connection. Requests are read and started in arrival
//! order; their responses are written in the same order, while later requests
//! proceed (pipelining). Bad input closes this connection only.

use crate::handlers::{self, api_versions, RequestContext};
use crate::metrics::{Metrics, TimedApi};
use crate::state::Broker;
use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weir_protocol::frame::FrameDecoder;
use weir_protocol::request::{
    decode_request, encode_response_chunks, peek_header_prefix, RequestError,
};

/// Requests in flight per connection before the broker stops reading from it.
const MAX_IN_FLIGHT: usize = 128;

/// Chunks handed to one `writev` call (well under Linux's IOV_MAX of 1024).
const MAX_IOVECS: usize = 64;

struct Reply {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: JoinHandle<Option<ResponseKind>>,
    /// When the request's frame was taken from the read buffer.
    received: Instant,
}

pub async fn run(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    Metrics::inc(&broker.metrics.connections_opened);
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);

    let times = broker.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let response = match reply.response.await {
                Ok(Some(r)) => r,
                Ok(None) => continue, // acks=0
                Err(e) => {
                    tracing::error!(%peer, error = %e, "request handler failed; closing connection");
                    return;
                }
            };
            // Fetch records stay in the storage `Bytes` (segment map slices): the
            // frame is the encoded pieces around them, written with one writev, so
            // the only copy of a fetched byte is the kernel's into the socket.
            let frame = match encode_response_chunks(
                reply.api_key,
                reply.version,
                reply.correlation_id,
                &response,
            ) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(%peer, error = %e, "cannot encode response; closing connection");
                    return;
                }
            };
            drop(response);
            if let Err(e) = write_chunks(&mut writer, frame).await {
                tracing::debug!(%peer, error = %e, "write failed; closing connection");
                return;
            }
            let api = match reply.api_key {
                ApiKey::Produce => TimedApi::Produce,
                ApiKey::Fetch => TimedApi::Fetch,
                _ => TimedApi::Other,
            };
            times
                .metrics
                .request_time
                .record(api, reply.received.elapsed());
        }
    });

    let max_frame = broker
        .config
        .i64("socket.request.max.bytes")
        .unwrap_or(100 << 20)
        .max(1024) as usize;
    let mut frames = FrameDecoder::new(max_frame);
    'read: loop {
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    Metrics::inc(&broker.metrics.bad_frames);
                    tracing::warn!(%peer, error = %e, "bad frame; closing connection");
                    break 'read;
                }
            };
            Metrics::inc(&broker.metrics.requests);
            match start_request(&broker, frame, peer).await {
                Ok(Some(reply)) => {
                    if tx.send(reply).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    Metrics::inc(&broker.metrics.request_errors);
                    tracing::warn!(%peer, %reason, "closing connection");
                    break 'read;
                }
            }
        }
        match reader.read_buf(frames.buffer_mut()).await {
            Ok(0) => {
                if frames.buffered() > 0 {
                    tracing::debug!(%peer, buffered = frames.buffered(), "connection closed inside a frame");
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
        }
    }
    // Let already-accepted requests finish and be answered, then close.
    drop(tx);
    let _ = writer_task.await;
    Metrics::inc(&broker.metrics.connections_closed);
}

/// Writes `chunks` in order with vectored writes, resuming after short writes.
pub(crate) async fn write_chunks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut next = 0;
    while next < chunks.len() {
        if chunks[next].is_empty() {
            next += 1;
            continue;
        }
        let slices: Vec<IoSlice<'_>> = chunks[next..]
            .iter()
            .filter(|c| !c.is_empty())
            .take(MAX_IOVECS)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        drop(slices);
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && next < chunks.len() {
            let len = chunks[next].len();
            if written >= len {
                written -= len;
                next += 1;
            } else {
                chunks[next].advance(written);
                written = 0;
            }
        }
    }
    writer.flush().await
}

/// Decodes a frame and starts its handler. `Err` closes the connection.
async fn start_request(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: SocketAddr,
) -> Result<Option<Reply>, String> {
    let received = Instant::now();
    let request = match decode_request(frame.clone(), api_versions::handles) {
        Ok(r) => r,
        Err(RequestError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            version,
        }) => {
            // A client newer than us: answer in v0 with the versions we have.
            tracing::debug!(%peer, version, "ApiVersions version not supported; answering v0");
            let response = ResponseKind::ApiVersions(api_versions::response(Some(
                ResponseError::UnsupportedVersion,
            )));
            return Ok(Some(Reply {
                api_key: ApiKey::ApiVersions,
                version: 0,
                correlation_id,
                response: tokio::spawn(async move { Some(response) }),
                received,
            }));
        }
        Err(RequestError::UnsupportedVersion {
            api_key: ApiKey::Produce,
            version,
            ..
        }) if version < 3 => {
            return Err(format!(
                "Produce v{version} carries message format v0/v1, which Weir does not accept; \
                 use a client that sends record batches (Kafka 0.11 or later)"
            ));
        }
        Err(e) => {
            let prefix = peek_header_prefix(&frame).ok();
            return Err(format!("undecodable request ({e}); header {prefix:?}"));
        }
    };
    let ctx = RequestContext {
        api_key: request.api_key,
        header: request.header,
        peer,
    };
    let Some(pending) = handlers::dispatch(broker, &ctx, request.body).await else {
        return Err(format!(
            "{:?} is advertised but has no handler",
            ctx.api_key
        ));
    };
    Ok(Some(Reply {
        api_key: ctx.api_key,
        version: ctx.version(),
        correlation_id: ctx.header.correlation_id,
        response: tokio::spawn(pending),
        received,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{BrokerId, FetchResponse, ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use tokio::net::TcpListener;
    use weir_protocol::request::encode_response;

    /// A Fetch response shaped like the handler's, with records that are slices of
    /// one buffer (as storage hands out slices of a segment map): null, empty,
    /// short, and long enough that the socket takes it in several writes.
    fn fetch_response(version: i16, map: &Bytes, read_committed: bool) -> ResponseKind {
        let partition = |index: i32, records: Option<Bytes>| {
            PartitionData::default()
                .with_partition_index(index)
                .with_error_code(if records.is_none() { 6 } else { 0 })
                .with_high_watermark(500)
                .with_last_stable_offset(500)
                .with_log_start_offset(0)
                .with_aborted_transactions(read_committed.then(|| {
                    vec![AbortedTransaction::default()
                        .with_producer_id(ProducerId(9))
                        .with_first_offset(3)]
                }))
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(records)
        };
        let topic = |name: &'static str, id: u128, partitions| {
            let t = FetchableTopicResponse::default().with_partitions(partitions);
            if version >= 13 {
                t.with_topic_id(uuid::Uuid::from_u128(id))
            } else {
                t.with_topic(TopicName(StrBytes::from_static_str(name)))
            }
        };
        ResponseKind::Fetch(
            FetchResponse::default()
                .with_session_id(if version >= 7 { 17 } else { 0 })
                .with_responses(vec![
                    topic(
                        "a",
                        1,
                        vec![
                            partition(0, Some(map.slice(0..3 << 20))),
                            partition(1, None),
                            partition(2, Some(Bytes::new())),
                        ],
                    ),
                    topic(
                        "b",
                        2,
                        vec![
                            partition(0, Some(map.slice(100..400))),
                            partition(3, Some(map.slice(5000..70_000))),
                        ],
                    ),
                ]),
        )
    }

    /// Every Fetch version the broker advertises: the chunks written with
    /// `write_chunks` over a real TCP connection arrive as exactly the bytes of
    /// kafka-protocol's own encoding of the same response.
    #[tokio::test]
    async fn vectored_fetch_frames_match_kafka_protocol_for_every_advertised_version() {
        let (min, max) = api_versions::advertised(ApiKey::Fetch).unwrap();
        let map = Bytes::from(
            (0..(4u32 << 20))
                .map(|i| (i * 7) as u8)
                .collect::<Vec<u8>>(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        for version in min..=max {
            for read_committed in [false, true] {
                let body = fetch_response(version, &map, read_committed);
                let expected = encode_response(ApiKey::Fetch, version, 99, &body).unwrap();
                let chunks = encode_response_chunks(ApiKey::Fetch, version, 99, &body).unwrap();
                assert!(
                    chunks
                        .iter()
                        .any(|c| c.len() == 3 << 20 && c.as_ptr() == map.as_ptr()),
                    "v{version}: the large records were copied"
                );
                let reader = async {
                    let mut got = vec![0u8; expected.len()];
                    client.read_exact(&mut got).await.map(|_| got)
                };
                let (written, got) = tokio::join!(write_chunks(&mut server, chunks), reader);
                written.unwrap();
                assert!(got.unwrap() == expected[..], "Fetch v{version}");
            }
        }
    }
}
