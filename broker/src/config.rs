//! Broker configuration: embedded defaults, then a TOML file (`--config`), then
//! `WEIR_*` environment variables, then flags; later sources win.
//!
//! Kafka-level settings keep Kafka's names (`auto.create.topics.enable`,
//! `log.segment.bytes`, ...) in the `[kafka]` table of the TOML file, or with
//! `--set KEY=VALUE` on the command line.

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML configuration file (see conf/weir.toml for every key and its default).
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id.
    #[arg(long, env = "WEIR_NODE_ID")]
    pub node_id: Option<i32>,
    /// Where logs and metadata are stored.
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the Kafka protocol listener binds.
    #[arg(long, env = "WEIR_KAFKA_LISTEN")]
    pub kafka_listen: Option<SocketAddr>,
    /// HOST:PORT that clients are told to connect to (defaults to the listen address).
    #[arg(long, env = "WEIR_ADVERTISED_KAFKA")]
    pub advertised_kafka: Option<String>,
    /// Address of the HTTP listener (/health, /metrics, APIs).
    #[arg(long, env = "WEIR_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Cluster mode: address the Raft (node-to-node) listener binds.
    #[arg(long, env = "WEIR_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// Cluster mode: every voter's id and Raft address, this node included:
    /// `1=10.0.0.1:9193,2=10.0.0.2:9193,3=10.0.0.3:9193`.
    #[arg(long, env = "WEIR_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Cluster mode: this node joins a running cluster (`weir cluster add-node`
    /// admits it) instead of founding one; `--peers` lists the running nodes
    /// and this one.
    #[arg(long, env = "WEIR_JOIN")]
    pub join: bool,
    /// A Kafka-named broker setting, e.g. `--set auto.create.topics.enable=false` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The `[kafka]` settings Weir understands, with Kafka's defaults.
pub const KAFKA_DEFAULTS: &[(&str, &str, &str)] = &[
    ("auto.create.topics.enable", "true", "Create a topic when a client asks for metadata of, or produces to, a missing topic."),
    ("num.partitions", "1", "Partitions of an auto-created topic."),
    ("default.replication.factor", "1", "Replication factor of an auto-created topic."),
    ("message.max.bytes", "1048588", "Largest record batch a topic accepts unless it sets max.message.bytes."),
    ("socket.request.max.bytes", "104857600", "Largest request frame; a bigger one closes the connection."),
    ("log.segment.bytes", "1073741824", "Default segment.bytes."),
    ("log.roll.ms", "604800000", "Default segment.ms."),
    ("log.retention.ms", "604800000", "Default retention.ms (-1: keep forever)."),
    ("log.retention.bytes", "-1", "Default retention.bytes per partition (-1: no limit)."),
    ("log.cleanup.policy", "delete", "Default cleanup.policy: delete, compact or compact,delete."),
    ("log.cleaner.delete.retention.ms", "86400000", "Default delete.retention.ms: how long tombstones survive compaction."),
    ("log.flush.interval.ms", "-1", "Default flush.ms: fsync acks=0/1 data at this interval (-1: leave it to the OS). acks=all always waits for fsync."),
    ("log.flush.interval.messages", "-1", "Default flush.messages; 1 fsyncs every append before any acknowledgement."),
    ("log.message.timestamp.type", "CreateTime", "Default message.timestamp.type: CreateTime or LogAppendTime."),
    ("log.index.interval.bytes", "4096", "Default index.interval.bytes."),
    ("min.insync.replicas", "1", "Default min.insync.replicas."),
    ("compression.type", "producer", "Default compression.type (producer keeps batches as sent)."),
    ("log.retention.check.interval.ms", "300000", "How often retention and compaction run."),
    ("transaction.max.timeout.ms", "900000", "Largest transaction.timeout.ms InitProducerId accepts."),
    ("offsets.topic.num.partitions", "16", "Partitions of __consumer_offsets when a cluster creates it; each partition's Raft leader coordinates its groups (a single node keeps one partition)."),
    ("offsets.topic.replication.factor", "3", "Replication factor of __consumer_offsets in a cluster (at most the number of nodes)."),
    ("offsets.retention.minutes", "10080", "How long committed offsets of an empty group are kept."),
    ("group.initial.rebalance.delay.ms", "0", "Delay before the first rebalance of a new group."),
    ("ingest.max.body.bytes", "10485760", "Largest body POST /ingest/{topic} accepts (413 past it), and largest WebSocket message."),
    ("ingest.max.in.flight.requests", "64", "Ingest requests served at once; more get 503 with Retry-After."),
    ("group.consumer.heartbeat.interval.ms", "5000", "Heartbeat interval of consumer-protocol (KIP-848) group members."),
    ("group.consumer.session.timeout.ms", "45000", "Session timeout of consumer-protocol (KIP-848) group members."),
];

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<i32>,
    data_dir: Option<PathBuf>,
    kafka_listen: Option<SocketAddr>,
    advertised_kafka: Option<String>,
    http_listen: Option<SocketAddr>,
    raft_listen: Option<SocketAddr>,
    /// `peers = { 1 = "127.0.0.1:9193", 2 = ... }` or the flag's string form.
    peers: Option<toml::Value>,
    join: Option<bool>,
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
    #[serde(default)]
    ingest: weir_ingest::IngestConfig,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub kafka_listen: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub http_listen: SocketAddr,
    /// Every `[kafka]` setting, defaults filled in, as strings.
    pub kafka: BTreeMap<String, String>,
    /// The `[ingest]` table: file collectors and per-topic ingest pipelines.
    pub ingest: weir_ingest::IngestConfig,
    /// Cluster mode (peers given): this node's Raft listener and every voter.
    pub raft_listen: Option<SocketAddr>,
    /// HOST:PORT per voter, resolved at each connection attempt (a peer's DNS
    /// name may not resolve until it starts, as in a Kubernetes StatefulSet).
    pub peers: BTreeMap<u64, String>,
    /// Joining a running cluster (not founding it).
    pub join: bool,
    /// The metadata group's founding voters when they differ from `peers` (a
    /// joining node learns them from its peers before opening the group).
    pub founders: Option<Vec<u64>>,
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("peer id in {part:?}"))?;
        if id == 0 {
            bail!("peer ids start at 1 (got 0 in {part:?})");
        }
        let addr = addr.trim();
        let (host, port) = addr
            .rsplit_once(':')
            .with_context(|| format!("peer address in {part:?} is not HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!("peer address in {part:?} is not HOST:PORT");
        }
        if peers.insert(id, addr.to_string()).is_some() {
            bail!("peer {id} is listed twice");
        }
    }
    Ok(peers)
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

impl BrokerConfig {
    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut kafka: BTreeMap<String, String> = KAFKA_DEFAULTS
            .iter()
            .map(|(k, v, _)| (k.to_string(), v.to_string()))
            .collect();
        for (key, value) in &file.kafka {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            set_kafka(&mut kafka, key, &value)?;
        }
        for pair in &args.set {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--set takes KEY=VALUE, got {pair:?}");
            };
            set_kafka(&mut kafka, key.trim(), value.trim())?;
        }
        let kafka_listen = args
            .kafka_listen
            .or(file.kafka_listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
        let advertised = args
            .advertised_kafka
            .clone()
            .or(file.advertised_kafka)
            .unwrap_or_else(|| kafka_listen.to_string());
        let (host, port) = advertised
            .rsplit_once(':')
            .with_context(|| format!("advertised address {advertised:?} is not HOST:PORT"))?;
        let advertised_port: i32 = port
            .parse()
            .with_context(|| format!("advertised port in {advertised:?}"))?;
        let peers = match (&args.peers, &file.peers) {
            (Some(text), _) => parse_peers(text)?,
            (None, Some(toml::Value::String(text))) => parse_peers(text)?,
            (None, Some(toml::Value::Table(t))) => {
                let text: Vec<String> = t
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                parse_peers(&text.join(","))?
            }
            (None, Some(other)) => bail!("peers must be a string or a table, got {other}"),
            (None, None) => BTreeMap::new(),
        };
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        let raft_listen = args.raft_listen.or(file.raft_listen);
        if !peers.is_empty() {
            let Some(me) = peers.get(&(node_id as u64)) else {
                bail!("node id {node_id} is not among the peers");
            };
            if raft_listen.is_none() {
                tracing::info!(raft = %me, "raft listener defaults to this node's peer address");
            }
        }
        let raft_listen = match raft_listen {
            Some(a) => Some(a),
            None => match peers.get(&(node_id as u64)) {
                Some(own) => Some(resolve(own).context("this node's own peer address")?),
                None => None,
            },
        };
        let config = BrokerConfig {
            node_id,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            kafka_listen,
            advertised_host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            advertised_port,
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            kafka,
            ingest: file.ingest,
            raft_listen,
            peers,
            join: args.join || file.join.unwrap_or(false),
            founders: None,
        };
        // Parse every numeric setting once now so that a typo fails at start, not later.
        for (key, value, _) in KAFKA_DEFAULTS {
            if value.parse::<i64>().is_ok() {
                config.i64(key)?;
            }
        }
        config.bool("auto.create.topics.enable")?;
        Ok(config)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.kafka.get(key).map(String::as_str)
    }

    pub fn i64(&self, key: &str) -> anyhow::Result<i64> {
        let raw = self
            .get(key)
            .with_context(|| format!("missing setting {key}"))?;
        raw.parse()
            .with_context(|| format!("setting {key}={raw:?} is not a whole number"))
    }

    pub fn bool(&self, key: &str) -> anyhow::Result<bool> {
        let raw = self
            .get(key)
            .with_context(|| format!("missing setting {key}"))?;
        match raw {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => bail!("setting {key}={raw:?} is not true or false"),
        }
    }
}

fn set_kafka(kafka: &mut BTreeMap<String, String>, key: &str, value: &str) -> anyhow::Result<()> {
    if !kafka.contains_key(key) {
        let known: Vec<&str> = KAFKA_DEFAULTS.iter().map(|(k, _, _)| *k).collect();
        bail!(
            "unknown setting {key:?}; known settings: {}",
            known.join(", ")
        );
    }
    kafka.insert(key.to_string(), value.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "node_id = 3\n[kafka]\n\"num.partitions\" = 4\n\"auto.create.topics.enable\" = false\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            set: vec!["num.partitions=6".into()],
            kafka_listen: Some("127.0.0.1:9999".parse().unwrap()),
            ..Default::default()
        };
        let c = BrokerConfig::load(&args).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.i64("num.partitions").unwrap(), 6);
        assert!(!c.bool("auto.create.topics.enable").unwrap());
        assert_eq!(
            (c.advertised_host.as_str(), c.advertised_port),
            ("127.0.0.1", 9999)
        );
    }

    #[test]
    fn unknown_and_malformed_settings_are_errors() {
        let bad_key = ServeArgs {
            set: vec!["no.such.thing=1".into()],
            ..Default::default()
        };
        assert!(BrokerConfig::load(&bad_key)
            .unwrap_err()
            .to_string()
            .contains("unknown setting"));
        let bad_value = ServeArgs {
            set: vec!["num.partitions=lots".into()],
            ..Default::default()
        };
        assert!(format!("{:#}", BrokerConfig::load(&bad_value).unwrap_err())
            .contains("not a whole number"));
    }
}
