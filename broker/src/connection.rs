//! One Kafka client connection. Requests are read and started in arrival
//! order; their responses are written in the same order, while later requests
//! proceed (pipelining). Bad input closes this connection only.

use crate::handlers::{self, api_versions, RequestContext};
use crate::metrics::Metrics;
use crate::state::Broker;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weir_protocol::frame::FrameDecoder;
use weir_protocol::request::{decode_request, encode_response, peek_header_prefix, RequestError};

/// Requests in flight per connection before the broker stops reading from it.
const MAX_IN_FLIGHT: usize = 128;

struct Reply {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: JoinHandle<Option<ResponseKind>>,
}

pub async fn run(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    Metrics::inc(&broker.metrics.connections_opened);
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);

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
            let frame = match encode_response(
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
            if let Err(e) = writer.write_all(&frame).await {
                tracing::debug!(%peer, error = %e, "write failed; closing connection");
                return;
            }
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

/// Decodes a frame and starts its handler. `Err` closes the connection.
async fn start_request(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: SocketAddr,
) -> Result<Option<Reply>, String> {
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
    }))
}
