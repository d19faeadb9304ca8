//! `weir produce`: lines from standard input to a topic.
//!
//! Each line (without its `\n` or `\r\n`) is one record. With `--key-separator`,
//! the text before the first separator is the key and the rest the value; a line
//! without the separator is a value with a null key. Keyed records go to
//! `murmur2(key) % partitions` like with Kafka's Java client; null-key records
//! stick to one partition per batch. Records are batched per partition and a batch
//! is sent when it reaches `--batch-records` or `--batch-bytes`, after
//! `--linger-ms`, or at end of input.

use crate::cli::client_config;
use crate::client::partitioner::Partitioner;
use crate::client::{Client, PendingProduce};
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use weir_protocol::compression::Compression;
use weir_protocol::records::BatchBuilder;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to produce to.
    pub topic: String,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Send every record to this partition instead of using the partitioner.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Acknowledgements: 0 (none), 1 (leader) or all.
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    pub acks: i16,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Send a partition's batch once it holds this many records.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Send a partition's batch once its records take this many bytes (before compression).
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// Send batches at most this long after their first record.
    #[arg(long, default_value_t = 10)]
    pub linger_ms: u64,
    /// Produce requests in flight at once.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Produce request timeout.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(format!("acks must be 0, 1 or all, not {s:?}")),
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    Compression::from_name(s)
        .ok_or_else(|| format!("compression must be none, gzip, snappy, lz4 or zstd, not {s:?}"))
}

/// Splits a line into key and value at the first separator.
pub fn split_line<'a>(line: &'a [u8], sep: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(sep) = sep.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct InFlight {
    partition: i32,
    records: usize,
    bytes: Bytes,
    pending: PendingProduce,
}

struct Producer {
    client: Client,
    topic: String,
    acks: i16,
    timeout: Duration,
    compression: Compression,
    max_in_flight: usize,
    batches: BTreeMap<i32, BatchBuilder>,
    in_flight: VecDeque<InFlight>,
    partitioner: Partitioner,
    sent_records: u64,
    sent_batches: u64,
}

impl Producer {
    async fn flush_partition(&mut self, partition: i32) -> anyhow::Result<()> {
        let Some(builder) = self.batches.remove(&partition) else {
            return Ok(());
        };
        if builder.is_empty() {
            return Ok(());
        }
        self.partitioner.batch_sent(partition);
        let records = builder.len();
        let bytes = Bytes::from(builder.build().context("compressing a batch")?);
        while self.in_flight.len() >= self.max_in_flight.max(1) {
            self.complete_one().await?;
        }
        let pending = match self
            .client
            .send_produce(
                &self.topic,
                partition,
                bytes.clone(),
                self.acks,
                self.timeout,
            )
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_retriable() => {
                // Could not even queue it (no leader yet, connection refused): the
                // retrying path refreshes metadata and tries again.
                self.drain().await?;
                self.client
                    .produce(&self.topic, partition, bytes, self.acks, self.timeout)
                    .await?;
                self.sent_records += records as u64;
                self.sent_batches += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.in_flight.push_back(InFlight {
            partition,
            records,
            bytes,
            pending,
        });
        Ok(())
    }

    async fn complete_one(&mut self) -> anyhow::Result<()> {
        let Some(f) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match f.pending.wait().await {
            Ok(_) => {}
            Err(e) if e.kafka_code().is_some() && e.is_retriable() => {
                // Not appended (leader moved, ...): resend with metadata refresh and retries.
                self.client
                    .produce(&self.topic, f.partition, f.bytes, self.acks, self.timeout)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.sent_records += f.records as u64;
        self.sent_batches += 1;
        Ok(())
    }

    async fn drain(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.complete_one().await?;
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> anyhow::Result<()> {
        let parts: Vec<i32> = self.batches.keys().copied().collect();
        for p in parts {
            self.flush_partition(p).await?;
        }
        Ok(())
    }
}

pub async fn run(bootstrap: &str, args: ProduceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cfg = client_config();
    // Like Kafka's console producer: a broker with auto.create.topics.enable creates the topic.
    cfg.allow_auto_topic_creation = true;
    cfg.request_timeout = Duration::from_millis(args.timeout_ms);
    let client = Client::connect(bootstrap, cfg)
        .await
        .with_context(|| format!("connecting to {bootstrap}"))?;
    let partitions = client.partition_count(&args.topic).await?;
    if partitions == 0 {
        anyhow::bail!("topic {} has no partitions", args.topic);
    }
    if let Some(p) = args.partition {
        if p < 0 || p as usize >= partitions {
            anyhow::bail!(
                "partition {p} does not exist: topic {} has {partitions} partitions",
                args.topic
            );
        }
    }

    // Standard input is read on its own thread, a line at a time.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4096);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });

    let mut producer = Producer {
        client,
        topic: args.topic.clone(),
        acks: args.acks,
        timeout: Duration::from_millis(args.timeout_ms),
        compression: args.compression,
        max_in_flight: args.max_in_flight,
        batches: BTreeMap::new(),
        in_flight: VecDeque::new(),
        partitioner: Partitioner::new(partitions),
        sent_records: 0,
        sent_batches: 0,
    };
    let sep = args.key_separator.as_deref().map(str::as_bytes);
    let linger = Duration::from_millis(args.linger_ms);
    let mut linger_deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match linger_deadline {
            Some(deadline) => tokio::select! {
                line = rx.recv() => Some(line),
                _ = tokio::time::sleep_until(deadline) => None,
            },
            None => Some(rx.recv().await),
        };
        match next {
            // Linger expired.
            None => {
                producer.flush_all().await?;
                linger_deadline = None;
            }
            // End of input.
            Some(None) => break,
            Some(Some(Err(e))) => return Err(anyhow::anyhow!("reading standard input: {e}")),
            Some(Some(Ok(line))) => {
                let (key, value) = split_line(&line, sep);
                let partition = args
                    .partition
                    .unwrap_or_else(|| producer.partitioner.partition(key));
                let compression = producer.compression;
                let builder = producer
                    .batches
                    .entry(partition)
                    .or_insert_with(|| BatchBuilder::new(compression));
                builder.push(now_ms(), key, Some(value), &[]);
                if builder.len() >= args.batch_records
                    || builder.uncompressed_size() >= args.batch_bytes
                {
                    producer.flush_partition(partition).await?;
                }
                if producer.batches.is_empty() {
                    linger_deadline = None;
                } else if linger_deadline.is_none() {
                    linger_deadline = Some(tokio::time::Instant::now() + linger);
                }
            }
        }
    }
    producer.flush_all().await?;
    producer.drain().await?;
    eprintln!(
        "Produced {} records in {} batches to {} in {:.2}s.",
        producer.sent_records,
        producer.sent_batches,
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_keys() {
        assert_eq!(split_line(b"k:v", Some(b":")), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(
            split_line(b"k::v:w", Some(b"::")),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(split_line(b"novalue", Some(b":")), (None, &b"novalue"[..]));
        assert_eq!(split_line(b":v", Some(b":")), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_line(b"k:v", None), (None, &b"k:v"[..]));
        assert_eq!(split_line(b"k:v", Some(b"")), (None, &b"k:v"[..]));
    }

    #[test]
    fn parses_acks_and_codecs() {
        assert_eq!(parse_acks("all"), Ok(-1));
        assert_eq!(parse_acks("0"), Ok(0));
        assert!(parse_acks("2").is_err());
        assert_eq!(parse_compression("zstd"), Ok(Compression::Zstd));
        assert!(parse_compression("brotli").is_err());
    }
}
