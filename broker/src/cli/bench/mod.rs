//! `weir bench`: a load generator that prints throughput and tail latency beside
//! the machine's own limits.
//!
//! - `produce`: producers send pre-built record batches (encoded once, reused by
//!   reference) with several Produce requests in flight per connection. Without
//!   `--rate` it runs closed loop (as fast as the window allows); with `--rate`
//!   it runs open loop: records are scheduled at fixed intervals, a batch closes
//!   when full or `--linger-ms` after its first record (like Kafka's producer),
//!   and each record's latency is measured from its INTENDED time, so a stalled
//!   broker shows up in the tail instead of slowing the generator down
//!   (no coordinated omission).
//! - `consume`: fetches a topic from the earliest offset (filling it first with
//!   `--records` if it holds fewer), counting records from batch headers.
//! - `e2e`: producers and consumers at once; a record's end-to-end latency runs
//!   from its intended send time to the fetch response that carried it.
//! - `cep`: registers a CEP pattern over HTTP, produces events open loop and
//!   reports the latency from an event to the match it completes ([`cep`]).
//! - `baseline`: loopback TCP copy, sequential file write with and without
//!   fsync, and fsync latency ([`baseline`]).
//!
//! `produce` and `consume` also copy the same volume over loopback TCP in the
//! same run (skip with `--no-baseline`) and print the ratio.
//!
//! Everything speaks plain Kafka through [`crate::client`], so `--bootstrap`
//! benchmarks Apache Kafka or Redpanda the same way.

pub mod baseline;
pub mod cep;
pub mod consume;
pub mod produce;
pub mod report;

use crate::client::{codes, Client, ClientConfig, ClientError};
use anyhow::Context;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use weir_protocol::compression::Compression;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce throughput and latency (closed loop, or open loop with --rate).
    Produce(BenchArgs),
    /// Consume throughput from the earliest offset (page cache).
    Consume(BenchArgs),
    /// Producers and consumers together: end-to-end latency.
    E2e(BenchArgs),
    /// Complex event processing throughput (needs the CEP engine).
    Cep(cep::CepBenchArgs),
    /// The machine's limits: loopback TCP copy, file write, fsync latency.
    Baseline(baseline::BaselineArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Topic to use (created with --partitions if missing).
    #[arg(long, default_value = "weir-bench")]
    pub topic: String,
    /// Bytes of each record's value (keys are null).
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Bytes of records per batch (Kafka's batch.size).
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_size: usize,
    /// With --rate: a batch is sent at most this long after its first record.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    pub acks: i16,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor of the topic when it is created (-1: the broker's
    /// `default.replication.factor`, as `kafka-topics` does; in a cluster with
    /// `min.insync.replicas=2`, a factor of 1 would refuse every acks=all write,
    /// the CEP stage's outputs included).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i16,
    /// Producers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers, each with its own connection and a share of the partitions.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Records to produce (consume: to read from the earliest offset, producing the
    /// shortfall first). Without it, produce runs for --duration and consume reads
    /// what the topic holds.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds to produce for when --records is not given.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Target rate in records per second over all producers (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Fetch size per partition (Kafka's max.partition.fetch.bytes).
    #[arg(long, default_value_t = 4 << 20)]
    pub fetch_bytes: i32,
    /// Longest a fetch waits at the broker for data.
    #[arg(long, default_value_t = 100)]
    pub fetch_wait_ms: u64,
    /// Skip the baselines measured in the same run (loopback TCP copy; for produce
    /// also a plain file write).
    #[arg(long)]
    pub no_baseline: bool,
    /// Directory of produce's file-write baseline (use the broker's data disk).
    /// Default: the temp dir.
    #[arg(long)]
    pub baseline_dir: Option<PathBuf>,
    /// Request timeout.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Print the results as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.record_size == 0 {
            anyhow::bail!("--record-size must be at least 1");
        }
        if self.producers == 0 || self.consumers == 0 {
            anyhow::bail!("--producers and --consumers must be at least 1");
        }
        if self.partitions < 1 {
            anyhow::bail!("--partitions must be at least 1");
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            anyhow::bail!("--duration must be a positive number of seconds");
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                anyhow::bail!("--rate must be a positive number of records per second");
            }
        }
        if self.records == Some(0) {
            anyhow::bail!("--records must be at least 1");
        }
        if self.fetch_bytes < 1 {
            anyhow::bail!("--fetch-bytes must be positive");
        }
        Ok(())
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The settings, for the report.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "topic": self.topic,
            "record_size": self.record_size,
            "batch_size": self.batch_size,
            "linger_ms": self.linger_ms,
            "acks": acks_name(self.acks),
            "compression": self.compression.name(),
            "partitions": self.partitions,
            "producers": self.producers,
            "consumers": self.consumers,
            "records": self.records,
            "duration_s": self.duration,
            "rate": self.rate,
            "max_in_flight": self.max_in_flight,
            "fetch_bytes": self.fetch_bytes,
        })
    }
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(format!("acks must be 0, 1 or all, not {s:?}")),
    }
}

pub(crate) fn acks_name(acks: i16) -> &'static str {
    match acks {
        0 => "0",
        1 => "1",
        _ => "all",
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    Compression::from_name(s)
        .ok_or_else(|| format!("compression must be none, gzip, snappy, lz4 or zstd, not {s:?}"))
}

pub async fn run(bootstrap: &str, cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Produce(a) => {
            a.validate()?;
            produce::run_produce(bootstrap, &a).await
        }
        BenchCommand::Consume(a) => {
            a.validate()?;
            consume::run_consume(bootstrap, &a).await
        }
        BenchCommand::E2e(a) => {
            a.validate()?;
            consume::run_e2e(bootstrap, &a).await
        }
        BenchCommand::Cep(a) => {
            a.common.validate()?;
            cep::run_cep(bootstrap, &a).await
        }
        BenchCommand::Baseline(a) => baseline::run(&a).await,
    }
}

/// Client settings for the benchmark: one client (so one connection per broker)
/// per producer or consumer.
pub(crate) fn bench_client_config(args: &BenchArgs, role: &str) -> ClientConfig {
    ClientConfig {
        client_id: format!("weir-bench-{role}"),
        request_timeout: args.timeout(),
        allow_auto_topic_creation: true,
        ..ClientConfig::default()
    }
}

pub(crate) async fn connect(
    bootstrap: &str,
    args: &BenchArgs,
    role: &str,
) -> anyhow::Result<Client> {
    Client::connect(bootstrap, bench_client_config(args, role))
        .await
        .with_context(|| format!("connecting to {bootstrap}"))
}

/// Creates the topic if needed (CreateTopics, or auto-creation through Metadata
/// on brokers without CreateTopics) and returns its partition count.
pub(crate) async fn ensure_topic(client: &Client, args: &BenchArgs) -> anyhow::Result<usize> {
    match client
        .create_topic(
            &args.topic,
            args.partitions,
            args.replication_factor,
            &[],
            false,
        )
        .await
    {
        Ok(()) => {}
        Err(e) if e.kafka_code() == Some(codes::TOPIC_ALREADY_EXISTS) => {}
        Err(e @ ClientError::UnsupportedApi { .. }) => {
            tracing::debug!(error = %e, "no CreateTopics: relying on auto-creation");
        }
        Err(e) => {
            return Err(e).with_context(|| format!("creating topic {}", args.topic));
        }
    }
    let n = client
        .partition_count(&args.topic)
        .await
        .with_context(|| format!("looking up topic {}", args.topic))?;
    if n == 0 {
        anyhow::bail!("topic {} has no partitions", args.topic);
    }
    if n != args.partitions as usize {
        eprintln!(
            "note: topic {} has {n} partitions (not {}); using all {n}",
            args.topic, args.partitions
        );
    }
    Ok(n)
}

/// A latency histogram in microseconds (1 us .. 1 hour, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// Records `micros` (clamped into the histogram's range) `count` times.
pub(crate) fn record(h: &mut Histogram<u64>, micros: u64, count: u64) {
    let v = micros.clamp(1, h.high());
    let _ = h.record_n(v, count);
}

/// Whether to draw progress bars (stderr is a terminal).
pub(crate) fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// Where the file baselines write by default.
pub(crate) fn default_baseline_dir() -> PathBuf {
    std::env::temp_dir()
}
