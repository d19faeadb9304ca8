//! One pipelined connection to one broker.
//!
//! A writer task and a reader task share a FIFO of pending requests. The writer
//! queues a request's pending entry before it writes the frame; Kafka answers the
//! requests of one connection in order, so the reader matches each response to
//! the front of the queue (and checks the correlation id). Any I/O or protocol
//! failure kills the connection and fails every pending request; the client opens
//! a new connection on next use.

use super::error::{ClientError, Result};
use super::versions::ApiVersionTable;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use weir_protocol::frame::FrameDecoder;
use weir_protocol::request::{decode_response, encode_request};

/// Settings a connection needs.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub client_id: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Largest response frame accepted.
    pub max_response_bytes: usize,
}

type Reply = oneshot::Sender<Result<ResponseKind>>;

struct Pending {
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    reply: Reply,
}

struct Outgoing {
    frame: Bytes,
    pending: Option<Pending>,
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<Pending>,
    dead: Option<String>,
    tasks: Vec<AbortHandle>,
}

impl Shared {
    /// Marks the connection dead and fails everything in flight.
    fn kill(&mut self, addr: &str, reason: String) {
        if self.dead.is_some() {
            return;
        }
        for p in self.queue.drain(..) {
            let _ = p.reply.send(Err(ClientError::Disconnected {
                addr: addr.to_string(),
                reason: reason.clone(),
            }));
        }
        self.dead = Some(reason);
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

pub struct Connection {
    addr: String,
    versions: ApiVersionTable,
    tx: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Mutex<Shared>>,
    next_correlation_id: AtomicI32,
    client_id: StrBytes,
    request_timeout: Duration,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut shared = self.shared.lock();
        for t in shared.tasks.drain(..) {
            t.abort();
        }
    }
}

/// A request on its way; await [`PendingResponse::recv`] for the answer.
pub struct PendingResponse {
    rx: Option<oneshot::Receiver<Result<ResponseKind>>>,
    addr: String,
    what: String,
    timeout: Duration,
}

impl PendingResponse {
    /// The response, or `Ok(None)` for a request that gets no response (Produce acks=0).
    pub async fn recv(self) -> Result<Option<ResponseKind>> {
        let Some(rx) = self.rx else { return Ok(None) };
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(ClientError::Timeout {
                what: format!("{} to {}", self.what, self.addr),
                after: self.timeout,
            }),
            Ok(Err(_)) => Err(ClientError::Disconnected {
                addr: self.addr,
                reason: "connection closed".into(),
            }),
            Ok(Ok(r)) => r.map(Some),
        }
    }

    /// Like [`recv`](Self::recv) for requests that always get a response.
    pub async fn response(self) -> Result<ResponseKind> {
        let what = self.what.clone();
        self.recv()
            .await?
            .ok_or_else(|| ClientError::Protocol(format!("{what}: no response expected")))
    }
}

impl Connection {
    /// Connects and negotiates API versions (ApiVersions v3, falling back to v0).
    pub async fn connect(addr: &str, cfg: &ConnConfig) -> Result<Connection> {
        let versions = match handshake(addr, cfg, 3).await {
            Ok(v) => v,
            Err((None, e)) => return Err(e),
            Err((stream, e)) => {
                tracing::debug!(addr, error = %e, "ApiVersions v3 failed, retrying with v0");
                // Old brokers close the connection on an unknown ApiVersions version;
                // newer ones answer UNSUPPORTED_VERSION. Either way start again at v0.
                drop(stream);
                match handshake(addr, cfg, 0).await {
                    Ok(v) => v,
                    Err((_, e)) => return Err(e),
                }
            }
        };
        let (stream, table) = versions;
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(wr, rx, shared.clone(), addr.to_string()));
        let reader = tokio::spawn(read_loop(
            rd,
            shared.clone(),
            addr.to_string(),
            cfg.max_response_bytes,
        ));
        shared.lock().tasks = vec![writer.abort_handle(), reader.abort_handle()];
        Ok(Connection {
            addr: addr.to_string(),
            versions: table,
            tx,
            shared,
            next_correlation_id: AtomicI32::new(1),
            client_id: StrBytes::from_string(cfg.client_id.clone()),
            request_timeout: cfg.request_timeout,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_alive(&self) -> bool {
        self.shared.lock().dead.is_none() && !self.tx.is_closed()
    }

    pub fn versions(&self) -> &ApiVersionTable {
        &self.versions
    }

    /// The negotiated version of `api`, or an error naming the API.
    pub fn version(&self, api: ApiKey) -> Result<i16> {
        self.versions
            .version(api)
            .ok_or_else(|| ClientError::UnsupportedApi {
                api: format!("{api:?}"),
                addr: self.addr.clone(),
            })
    }

    /// Queues a request and returns at once; requests queued one after another on
    /// a connection are written (and answered) in that order. `extra_timeout` is
    /// added to the request timeout (a Fetch's max wait, a Produce's timeout).
    pub fn send(
        &self,
        api: ApiKey,
        version: i16,
        body: &RequestKind,
        expect_response: bool,
        extra_timeout: Duration,
    ) -> Result<PendingResponse> {
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let frame = encode_request(&header, body).map_err(ClientError::Protocol)?;
        let what = format!("{api:?} v{version} request");
        if let Some(reason) = &self.shared.lock().dead {
            return Err(ClientError::Disconnected {
                addr: self.addr.clone(),
                reason: reason.clone(),
            });
        }
        let (pending, rx) = if expect_response {
            let (reply, rx) = oneshot::channel();
            (
                Some(Pending {
                    correlation_id,
                    api,
                    version,
                    reply,
                }),
                Some(rx),
            )
        } else {
            (None, None)
        };
        self.tx
            .send(Outgoing { frame, pending })
            .map_err(|_| ClientError::Disconnected {
                addr: self.addr.clone(),
                reason: "connection closed".into(),
            })?;
        Ok(PendingResponse {
            rx,
            addr: self.addr.clone(),
            what,
            timeout: self.request_timeout + extra_timeout,
        })
    }

    /// Sends a request at the negotiated version built by `build` and waits for the response.
    pub async fn call(
        &self,
        api: ApiKey,
        build: impl FnOnce(i16) -> RequestKind,
    ) -> Result<(i16, ResponseKind)> {
        let version = self.version(api)?;
        let body = build(version);
        let resp = self
            .send(api, version, &body, true, Duration::ZERO)?
            .response()
            .await?;
        Ok((version, resp))
    }
}

async fn write_loop(
    wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Mutex<Shared>>,
    addr: String,
) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        {
            let mut s = shared.lock();
            if s.dead.is_some() {
                return;
            }
            for out in batch.iter_mut() {
                if let Some(p) = out.pending.take() {
                    s.queue.push_back(p);
                }
            }
        }
        for out in batch.drain(..) {
            if let Err(e) = wr.write_all(&out.frame).await {
                shared.lock().kill(&addr, format!("write failed: {e}"));
                return;
            }
        }
        if let Err(e) = wr.flush().await {
            shared.lock().kill(&addr, format!("write failed: {e}"));
            return;
        }
    }
    // Every sender is gone: the connection was dropped.
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    shared: Arc<Mutex<Shared>>,
    addr: String,
    max_frame: usize,
) {
    let mut decoder = FrameDecoder::new(max_frame);
    loop {
        let frame = match decoder.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => {
                match rd.read_buf(decoder.buffer_mut()).await {
                    Ok(0) => {
                        shared.lock().kill(&addr, "closed by the broker".into());
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        shared.lock().kill(&addr, format!("read failed: {e}"));
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                shared
                    .lock()
                    .kill(&addr, format!("bad response frame: {e}"));
                return;
            }
        };
        let pending = shared.lock().queue.pop_front();
        let Some(p) = pending else {
            shared
                .lock()
                .kill(&addr, "response with no request in flight".into());
            return;
        };
        if frame.len() < 4 {
            shared.lock().kill(&addr, "response frame too short".into());
            let _ = p.reply.send(Err(ClientError::Protocol(
                "response frame too short".into(),
            )));
            return;
        }
        let correlation_id = (&frame[..4]).get_i32();
        if correlation_id != p.correlation_id {
            let reason = format!(
                "correlation id mismatch: expected {}, got {correlation_id}",
                p.correlation_id
            );
            let _ = p.reply.send(Err(ClientError::Protocol(reason.clone())));
            shared.lock().kill(&addr, reason);
            return;
        }
        let result = decode_response(frame, p.api, p.version)
            .map(|(_, body)| body)
            .map_err(|e| {
                ClientError::Protocol(format!(
                    "cannot decode {:?} v{} response from {addr}: {e}",
                    p.api, p.version
                ))
            });
        let _ = p.reply.send(result);
    }
}

/// Opens a TCP connection and runs ApiVersions at `version` on it. On failure the
/// stream (if any) is handed back with the error so the caller can retry.
async fn handshake(
    addr: &str,
    cfg: &ConnConfig,
    version: i16,
) -> std::result::Result<(TcpStream, ApiVersionTable), (Option<TcpStream>, ClientError)> {
    let connect_err = |reason: String| ClientError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let mut stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await
    {
        Err(_) => {
            return Err((
                None,
                connect_err(format!("timed out after {:?}", cfg.connect_timeout)),
            ))
        }
        Ok(Err(e)) => return Err((None, connect_err(e.to_string()))),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(version)
        .with_correlation_id(0)
        .with_client_id(Some(StrBytes::from_string(cfg.client_id.clone())));
    let mut req = ApiVersionsRequest::default();
    if version >= 3 {
        req = req
            .with_client_software_name(StrBytes::from_static_str("weir"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
    }
    let frame = match encode_request(&header, &RequestKind::ApiVersions(req)) {
        Ok(f) => f,
        Err(e) => return Err((Some(stream), ClientError::Protocol(e))),
    };
    let exchange = async {
        stream.write_all(&frame).await?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = i32::from_be_bytes(len);
        if len < 4 || len as usize > cfg.max_response_bytes {
            return Err(std::io::Error::other(format!(
                "ApiVersions response declares {len} bytes"
            )));
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body).await?;
        Ok(Bytes::from(body))
    };
    let body = match tokio::time::timeout(cfg.request_timeout, exchange).await {
        Err(_) => {
            return Err((
                Some(stream),
                ClientError::Timeout {
                    what: format!("ApiVersions to {addr}"),
                    after: cfg.request_timeout,
                },
            ))
        }
        Ok(Err(e)) => {
            return Err((
                Some(stream),
                connect_err(format!("ApiVersions exchange failed: {e}")),
            ))
        }
        Ok(Ok(b)) => b,
    };
    // A broker that does not know our version answers with a v0 body.
    let decoded = decode_response(body.clone(), ApiKey::ApiVersions, version)
        .ok()
        .and_then(|(_, r)| match r {
            ResponseKind::ApiVersions(r) => Some(r),
            _ => None,
        })
        .or_else(|| match decode_response(body, ApiKey::ApiVersions, 0) {
            Ok((_, ResponseKind::ApiVersions(r))) => Some(r),
            _ => None,
        });
    let Some(resp) = decoded else {
        return Err((
            Some(stream),
            ClientError::Protocol(format!(
                "cannot decode the ApiVersions v{version} response from {addr}"
            )),
        ));
    };
    if resp.error_code != 0 {
        let e = ClientError::from_code(
            resp.error_code,
            None,
            format!("ApiVersions v{version} to {addr}"),
        )
        .unwrap_or_else(|| ClientError::Protocol("ApiVersions failed".into()));
        return Err((Some(stream), e));
    }
    Ok((stream, ApiVersionTable::from_response(&resp)))
}
