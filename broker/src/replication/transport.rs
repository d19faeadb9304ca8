//! Node-to-node transport: one outbound TCP connection per peer carrying the
//! Raft messages of every group. A writer drains everything queued for its peer
//! into one buffer per `write`, so a Ready loop over many groups costs one
//! syscall per peer, not one per message.
//!
//! Frames are `[u32 length][kind u8][body]`. The first frame on a connection is a
//! `Hello` (JSON: node id and the Kafka address clients should use for it); then
//! `Raft` frames: `[u16 topic length][topic][i32 partition][raft Message, protobuf]`.
//! Messages lost with a broken connection are not retried here: Raft resends.
//! `Leaders` frames (JSON: the groups the sender leads, with their terms) are
//! sent every half second so that a node can name the leader of a partition it
//! holds no replica of (Metadata, FindCoordinator).

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const KIND_HELLO: u8 = 0;
const KIND_RAFT: u8 = 1;
const KIND_LEADERS: u8 = 2;
/// A leader report older than this is not trusted (reports come every 500 ms).
const LEADER_REPORT_TTL: Duration = Duration::from_secs(2);
/// Raft messages are bounded by `max_size_per_msg` (1 MiB of entries) plus headers.
const MAX_FRAME: usize = 64 << 20;

/// A group is named by its partition: `(topic, partition)`.
pub type GroupKey = (Arc<str>, i32);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: u64,
    pub kafka_host: String,
    pub kafka_port: i32,
    /// The metadata group's founding voters (its configuration before its first
    /// entry), which a joining node needs to replay the group's log.
    #[serde(default)]
    pub founders: Vec<u64>,
    /// The node's HTTP listener (host:port), for the CEP API's cluster-wide views
    /// (absent from nodes of an older version).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http: String,
}

pub struct Inbound {
    pub group: GroupKey,
    pub msg: Message,
}

enum Outbound {
    Raft(GroupKey, Box<Message>),
    Leaders(Arc<Vec<u8>>),
}

/// Groups a peer reported leading: key -> (node, term, when reported).
type LeaderReports = Arc<RwLock<HashMap<GroupKey, (u64, u64, std::time::Instant)>>>;

#[derive(Serialize, Deserialize)]
struct LeaderReport {
    topic: String,
    partition: i32,
    term: u64,
}

pub struct Transport {
    me: PeerInfo,
    runtime: tokio::runtime::Handle,
    outbound: RwLock<HashMap<u64, mpsc::UnboundedSender<Outbound>>>,
    /// What each peer said about itself in its Hello (known once it connected).
    peers: Arc<RwLock<HashMap<u64, PeerInfo>>>,
    reports: LeaderReports,
}

impl Transport {
    /// Binds the Raft listener and starts one writer per peer. Received messages
    /// go to `inbox`.
    /// Without `listen` (a single node: a one-voter cluster) nothing is bound.
    pub async fn start(
        me: PeerInfo,
        listen: Option<SocketAddr>,
        peers: &HashMap<u64, String>,
        inbox: mpsc::UnboundedSender<Inbound>,
    ) -> anyhow::Result<Arc<Transport>> {
        let known = Arc::new(RwLock::new(HashMap::new()));
        known.write().insert(me.node_id, me.clone());
        let reports: LeaderReports = Arc::new(RwLock::new(HashMap::new()));
        if let Some(listen) = listen {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the raft listener {listen}"))?;
            tokio::spawn(accept_loop(listener, inbox, known.clone(), reports.clone()));
        }
        let mut outbound = HashMap::new();
        for (&id, addr) in peers {
            if id == me.node_id {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            outbound.insert(id, tx);
            tokio::spawn(writer(me.clone(), id, addr.clone(), rx));
        }
        Ok(Arc::new(Transport {
            me,
            runtime: tokio::runtime::Handle::current(),
            outbound: RwLock::new(outbound),
            peers: known,
            reports,
        }))
    }

    /// Starts sending to a node that joined the cluster (no-op if known).
    pub fn add_peer(&self, id: u64, addr: &str) {
        if id == self.me.node_id || self.outbound.read().contains_key(&id) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.outbound.write().insert(id, tx);
        tracing::info!(peer = id, %addr, "new raft peer");
        self.runtime
            .spawn(writer(self.me.clone(), id, addr.to_string(), rx));
    }

    /// Stops sending to a node that left the cluster and forgets its address.
    pub fn remove_peer(&self, id: u64) {
        if self.outbound.write().remove(&id).is_some() {
            tracing::info!(peer = id, "raft peer removed");
        }
        self.peers.write().remove(&id);
        self.reports.write().retain(|_, (node, _, _)| *node != id);
    }

    /// Node ids this node sends to.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.outbound.read().keys().copied().collect()
    }

    /// The founding voters of the metadata group, as a peer reported them.
    pub fn founders_from_peers(&self) -> Option<Vec<u64>> {
        self.peers
            .read()
            .values()
            .find(|p| p.node_id != self.me.node_id && !p.founders.is_empty())
            .map(|p| p.founders.clone())
    }

    pub fn send(&self, group: &GroupKey, msg: Message) {
        if let Some(tx) = self.outbound.read().get(&msg.to) {
            let _ = tx.send(Outbound::Raft(group.clone(), Box::new(msg)));
        }
    }

    /// Tells every peer which groups this node leads (with their terms).
    pub fn report_leaders(&self, led: &[(GroupKey, u64)]) {
        let report: Vec<LeaderReport> = led
            .iter()
            .map(|((topic, partition), term)| LeaderReport {
                topic: topic.to_string(),
                partition: *partition,
                term: *term,
            })
            .collect();
        let Ok(body) = serde_json::to_vec(&report) else {
            return;
        };
        let body = Arc::new(body);
        for tx in self.outbound.read().values() {
            let _ = tx.send(Outbound::Leaders(body.clone()));
        }
    }

    /// The leader a peer recently reported for `group` (node id, term); the
    /// highest term wins when two claim it.
    pub fn reported_leader(&self, group: &GroupKey) -> Option<(u64, u64)> {
        let reports = self.reports.read();
        let (node, term, at) = reports.get(group)?;
        (at.elapsed() < LEADER_REPORT_TTL).then_some((*node, *term))
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self.peers.read().values().cloned().collect();
        v.sort_by_key(|p| p.node_id);
        v
    }
}

fn encode_raft(buf: &mut BytesMut, group: &GroupKey, msg: &Message) -> anyhow::Result<()> {
    let body = msg.write_to_bytes().context("encoding a raft message")?;
    let topic = group.0.as_bytes();
    let len = 1 + 2 + topic.len() + 4 + body.len();
    buf.put_u32(len as u32);
    buf.put_u8(KIND_RAFT);
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic);
    buf.put_i32(group.1);
    buf.put_slice(&body);
    Ok(())
}

fn encode(buf: &mut BytesMut, out: Outbound) {
    match out {
        Outbound::Raft(g, m) => {
            if let Err(e) = encode_raft(buf, &g, &m) {
                tracing::error!(error = %e, "dropping a raft message");
            }
        }
        Outbound::Leaders(body) => {
            buf.put_u32(1 + body.len() as u32);
            buf.put_u8(KIND_LEADERS);
            buf.put_slice(&body);
        }
    }
}

async fn writer(me: PeerInfo, peer: u64, addr: String, mut rx: mpsc::UnboundedReceiver<Outbound>) {
    let hello = match serde_json::to_vec(&me) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "encoding hello");
            return;
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut stream = match TcpStream::connect(addr.as_str()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, %addr, error = %e, "raft peer unreachable");
                // Drop what queued up meanwhile: it is stale, Raft will resend.
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return; // the peer left the cluster
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        backoff = Duration::from_millis(50);
        let mut buf = BytesMut::with_capacity(64 << 10);
        buf.put_u32(1 + hello.len() as u32);
        buf.put_u8(KIND_HELLO);
        buf.put_slice(&hello);
        tracing::debug!(peer, %addr, "raft connection up");
        loop {
            if buf.is_empty() {
                match rx.recv().await {
                    Some(out) => encode(&mut buf, out),
                    None => return,
                }
            }
            // Coalesce everything already queued into this write.
            while buf.len() < (4 << 20) {
                match rx.try_recv() {
                    Ok(out) => encode(&mut buf, out),
                    Err(_) => break,
                }
            }
            if let Err(e) = stream.write_all(&buf).await {
                tracing::debug!(peer, %addr, error = %e, "raft connection lost");
                buf.clear();
                break;
            }
            buf.clear();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inbox: mpsc::UnboundedSender<Inbound>,
    known: Arc<RwLock<HashMap<u64, PeerInfo>>>,
    reports: LeaderReports,
) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let inbox = inbox.clone();
                let known = known.clone();
                let reports = reports.clone();
                tokio::spawn(async move {
                    if let Err(e) = reader(stream, inbox, known, reports).await {
                        tracing::debug!(%addr, error = %e, "raft connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "raft accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn reader(
    mut stream: TcpStream,
    inbox: mpsc::UnboundedSender<Inbound>,
    known: Arc<RwLock<HashMap<u64, PeerInfo>>>,
    reports: LeaderReports,
) -> anyhow::Result<()> {
    let mut topics: HashMap<Vec<u8>, Arc<str>> = HashMap::new();
    let mut hello_seen = false;
    let mut peer: Option<u64> = None;
    loop {
        let len = match stream.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if len == 0 || len > MAX_FRAME {
            bail!("raft frame of {len} bytes");
        }
        let mut frame = vec![0u8; len];
        stream.read_exact(&mut frame).await?;
        let mut body = Bytes::from(frame);
        let kind = body.get_u8();
        match kind {
            KIND_HELLO => {
                let info: PeerInfo = serde_json::from_slice(&body).context("bad hello")?;
                tracing::info!(peer = info.node_id, kafka = %format!("{}:{}", info.kafka_host, info.kafka_port), "raft peer said hello");
                peer = Some(info.node_id);
                known.write().insert(info.node_id, info);
                hello_seen = true;
            }
            KIND_RAFT if hello_seen => {
                if body.remaining() < 2 {
                    bail!("short raft frame");
                }
                let tlen = body.get_u16() as usize;
                if body.remaining() < tlen + 4 {
                    bail!("short raft frame");
                }
                let topic_bytes = body.split_to(tlen);
                let topic = match topics.get(topic_bytes.as_ref()) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = std::str::from_utf8(&topic_bytes)
                            .context("topic name is not UTF-8")?
                            .into();
                        topics.insert(topic_bytes.to_vec(), t.clone());
                        t
                    }
                };
                let partition = body.get_i32();
                let msg = Message::parse_from_carllerche_bytes(&body)
                    .context("decoding a raft message")?;
                if inbox
                    .send(Inbound {
                        group: (topic, partition),
                        msg,
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            KIND_LEADERS if hello_seen => {
                let Some(from) = peer else {
                    bail!("leader report before hello");
                };
                let report: Vec<LeaderReport> =
                    serde_json::from_slice(&body).context("bad leader report")?;
                let now = std::time::Instant::now();
                let mut reports = reports.write();
                // What the peer no longer claims is forgotten at once.
                reports.retain(|_, (node, _, _)| *node != from);
                for r in report {
                    let key: GroupKey = (Arc::from(r.topic.as_str()), r.partition);
                    let newer = reports.get(&key).is_none_or(|(_, term, _)| r.term >= *term);
                    if newer {
                        reports.insert(key, (from, r.term, now));
                    }
                }
            }
            other => bail!("unexpected raft frame kind {other}"),
        }
    }
}
