//! `weir bench cep`: end-to-end latency of a CEP pattern, from producing the event
//! that completes a match to reading the match from the pattern's output topic.
//!
//! Registers the issue's brute-force pattern (3+ failed logins then a success, per
//! user, within 60 s; event time from `ts`, no out-of-orderness bound, so a match is
//! released as soon as its last event is read) through the broker's HTTP API, then
//! produces JSON login events open loop at `--rate` (1 ms ticks, one batch per tick,
//! 75% failures over `--keys` users, each user in one partition of the source topic)
//! with Weir's own client, while a consumer per partition reads the output topic. Each match carries the `sent_us` of its last event: latency is
//! the time the match was read minus that (one clock: both ends run here). Like
//! `benches/cep_latency.py`, but with no Python and against any running broker.

use super::report::{self, Latency, Row, Throughput};
use super::{bench_client_config, BenchArgs};
use crate::cep::httpc;
use crate::client::{Client, OffsetSpec};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_protocol::compression::Compression;
use weir_protocol::records::{decode_records, BatchBuilder, BatchHeader};

#[derive(Args, Debug, Clone)]
pub struct CepBenchArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// The broker's HTTP API (host:port), where the pattern is registered.
    #[arg(long)]
    pub http: String,
    /// Distinct users the login events are spread over.
    #[arg(long, default_value_t = 1000)]
    pub keys: u32,
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the consumer keeps reading after the last event was produced.
const DRAIN: Duration = Duration::from_secs(3);

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The issue's brute-force pattern, reading `source` and writing to `sink`.
pub fn pattern(id: &str, source: &str, sink: &str) -> Value {
    json!({
        "id": id, "source": {"topic": source}, "partition_by": "user",
        "event_time": {"field": "ts", "max_out_of_orderness": "0s"},
        "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
                  {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
        "within": "60s", "skip": "past_last_event",
        "emit": {"topic": sink, "key": "user",
                 "value": {"user": "ok.user", "fails": "count(fail)", "sent_us": "ok.sent_us"}}
    })
}

pub async fn run_cep(bootstrap: &str, args: &CepBenchArgs) -> anyhow::Result<()> {
    let a = &args.common;
    let rate = a.rate.unwrap_or(10_000.0);
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    let run_id = format!("{}-{}", std::process::id(), now_us());
    let source = a.topic.clone();
    let sink = format!("{}-matches", a.topic);
    let pattern_id = format!("bench-{run_id}");
    let client = Client::connect(bootstrap, bench_client_config(a, "cep"))
        .await
        .with_context(|| format!("connecting to {bootstrap}"))?;
    for t in [&source, &sink] {
        // Already there is fine (a re-run); anything else shows up when producing.
        let _ = client
            .create_topic(t, a.partitions, a.replication_factor, &[], false)
            .await;
    }
    // Users are spread over the source's partitions (a user always in one), as keyed
    // producers do; in a cluster each partition's matching runs on its own shard.
    let partitions = match client.partition_count(&source).await {
        Ok(n) if n > 0 => i32::try_from(n).unwrap_or(i32::MAX),
        _ => a.partitions.max(1),
    };
    let sink_partitions = match client.partition_count(&sink).await {
        Ok(n) if n > 0 => i32::try_from(n).unwrap_or(i32::MAX),
        _ => a.partitions.max(1),
    };
    let body = pattern(&pattern_id, &source, &sink).to_string();
    let r = httpc::request(
        &args.http,
        "POST",
        "/api/cep/patterns",
        Some(("application/json", body.as_bytes())),
        HTTP_TIMEOUT,
    )
    .await
    .with_context(|| format!("registering the pattern at http://{}", args.http))?;
    if !r.is_success() {
        bail!(
            "registering the pattern at http://{}: HTTP {}: {}",
            args.http,
            r.status,
            r.text()
        );
    }
    let produced_done = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for partition in 0..sink_partitions {
        // Matches of earlier runs on the same topics are skipped: start at the end.
        let (start, _) = client
            .list_offset(&sink, partition, OffsetSpec::Latest)
            .await
            .with_context(|| format!("finding the end of {sink}-{partition}"))?;
        let hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| anyhow!("latency histogram: {e}"))?;
        consumers.push(tokio::spawn(consume_matches(
            client.clone(),
            sink.clone(),
            partition,
            start,
            hist,
            produced_done.clone(),
            a.timeout(),
        )));
    }
    let probe = super::baseline::WakeupProbe::start();
    let produced = produce_events(&client, &source, partitions, rate, a, args.keys).await;
    let (wakeup, cpu) = probe.finish_with_cpu();
    produced_done.store(true, Ordering::Release);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| anyhow!("latency histogram: {e}"))?;
    let (mut matches, mut read_error) = (0u64, None);
    for c in consumers {
        let (n, h, e) = c
            .await
            .map_err(|e| anyhow!("the match consumer failed: {e}"))?;
        matches += n;
        hist.add(&h)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
        read_error = read_error.or(e);
    }
    let produced = produced?;
    // Where the broker's stage spent a match's time (its histograms since the broker
    // started; absent from brokers without them).
    let stage = match httpc::request(&args.http, "GET", "/api/cep/stats", None, HTTP_TIMEOUT).await
    {
        Ok(r) if r.is_success() => serde_json::from_str::<Value>(&r.text())
            .ok()
            .and_then(|v| v.get("timings").cloned()),
        _ => None,
    };
    let path = format!("/api/cep/patterns/{}", httpc::encode_segment(&pattern_id));
    if let Err(e) = httpc::request(&args.http, "DELETE", &path, None, HTTP_TIMEOUT).await {
        tracing::warn!(error = %e, "could not remove the benchmark's pattern");
    }
    if let Some(e) = read_error {
        bail!("reading matches from {sink}: {e}");
    }
    let latency = Latency::of(&hist);
    if a.json {
        let v = json!({
            "mode": "cep",
            "args": a.json(),
            "http": args.http,
            "keys": args.keys,
            "target_rate": rate,
            "source_topic": source,
            "sink_topic": sink,
            "partitions": partitions,
            "produce": produced.json(None),
            "matches": matches,
            "latency_ms": latency.map(|l| l.json()),
            "wakeup_delay_ms": wakeup.map(|l| l.json()),
            "machine_cpu": cpu.map(|c| c.json()),
            "stage_timings": stage,
        });
        println!("{v}");
    } else {
        report::print_table(
            &format!(
                "weir bench cep  pattern brute-force (3+ failed logins then a success)  \
                 {source} -> {sink}  target {rate} events/s  {} users",
                args.keys
            ),
            &[
                Row {
                    name: "events".into(),
                    records: Some(produced.records),
                    records_per_sec: Some(produced.records_per_sec()),
                    mib_per_sec: Some(produced.mib_per_sec()),
                    ratio: None,
                    latency: None,
                },
                Row {
                    name: "matches".into(),
                    records: Some(matches),
                    records_per_sec: None,
                    mib_per_sec: None,
                    ratio: None,
                    latency,
                },
            ],
            &std::iter::once(
                "latency: from producing a match's last event to reading the match".to_string(),
            )
            .chain(
                wakeup
                    .as_ref()
                    .map(|l| super::baseline::describe_wakeup(l, "during the run")),
            )
            .chain(cpu.as_ref().map(super::baseline::describe_cpu))
            .chain(stage.as_ref().map(describe_stage))
            .collect::<Vec<_>>(),
        );
    }
    Ok(())
}

/// One line on the broker's stage timings (`GET /api/cep/stats`, "timings").
fn describe_stage(t: &Value) -> String {
    let phase = |name: &str, label: &str| {
        let p = |q: &str| {
            t[name][q]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v:.2}"))
        };
        format!("{label} {} / {}", p("p50_ms"), p("p99_ms"))
    };
    format!(
        "broker's stage since it started, p50 / p99 ms: {}, {}, {}, {}",
        phase("record_age", "record age when read"),
        phase("process", "matching"),
        phase("checkpoint", "checkpoint commit"),
        phase("write", "outputs commit"),
    )
}

/// Produces login events open loop: every 1 ms tick, the events due by then go out
/// as one batch; the acknowledgement is awaited off the schedule so that a slow
/// broker delays matches (and shows in their latency) rather than the generator.
async fn produce_events(
    client: &Client,
    topic: &str,
    partitions: i32,
    rate: f64,
    a: &BenchArgs,
    keys: u32,
) -> anyhow::Result<Throughput> {
    // A fixed seed: the event mix is the same every run.
    let mut rng = super::produce::Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let duration = Duration::from_secs_f64(a.duration);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut owed = 0.0f64;
    let mut due_total = 0.0f64;
    let mut out = Throughput::default();
    let errors = Arc::new(AtomicU64::new(0));
    let mut acks = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let due = started.elapsed().as_secs_f64() * rate;
        owed += due - due_total;
        due_total = due;
        let n = owed as u64;
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        let mut batches: Vec<BatchBuilder> = (0..partitions)
            .map(|_| BatchBuilder::new(Compression::None))
            .collect();
        let ts_ms = now_us() / 1000;
        for _ in 0..n {
            let r = rng.next();
            let index = r % u64::from(keys);
            let user = format!("u{index}");
            let b = &mut batches[(index % partitions as u64) as usize];
            // One event in four is a success, as in benches/cep_latency.py.
            let success = (r >> 32).is_multiple_of(4);
            let v = format!(
                r#"{{"user":"{user}","type":"login","success":{success},"ts":{ts_ms},"sent_us":{}}}"#,
                now_us()
            );
            b.push(ts_ms, Some(user.as_bytes()), Some(v.as_bytes()), &[]);
        }
        out.records += n;
        for (partition, b) in batches.into_iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            let batch = Bytes::from(b.build().map_err(|e| anyhow!("building a batch: {e}"))?);
            out.batches += 1;
            out.bytes += batch.len() as u64;
            let pending = client
                .send_produce(topic, partition as i32, batch, a.acks, a.timeout())
                .await
                .with_context(|| format!("producing to {topic}-{partition}"))?;
            let errors = errors.clone();
            acks.spawn(async move {
                if let Err(e) = pending.wait().await {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "produce failed");
                    }
                }
            });
        }
        while acks.try_join_next().is_some() {}
    }
    while acks.join_next().await.is_some() {}
    out.seconds = started.elapsed().as_secs_f64();
    out.errors = errors.load(Ordering::Relaxed);
    if out.errors > 0 {
        out.first_error = Some(format!("{} produce requests failed", out.errors));
    }
    Ok(out)
}

/// Reads matches from `sink` until the producer is done and nothing new arrived for
/// [`DRAIN`]; returns the count, the latency histogram (µs) and a read error if any.
async fn consume_matches(
    client: Client,
    sink: String,
    partition: i32,
    mut offset: i64,
    mut hist: Histogram<u64>,
    produced_done: Arc<AtomicBool>,
    timeout: Duration,
) -> (u64, Histogram<u64>, Option<String>) {
    let mut matches = 0u64;
    let mut idle_since: Option<Instant> = None;
    loop {
        let fetched = client
            .fetch(&sink, partition, offset, 4 << 20, Duration::from_millis(50))
            .await;
        let part = match fetched {
            Ok(p) => p,
            Err(e) => return (matches, hist, Some(e.to_string())),
        };
        let read_at = now_us();
        let mut got = 0;
        let mut rest = part.records.clone();
        while rest.len() >= weir_protocol::records::BATCH_HEADER_LEN {
            let Ok(h) = BatchHeader::parse(&rest) else {
                break;
            };
            let len = h.total_len();
            if rest.len() < len {
                break;
            }
            let batch = rest.split_to(len);
            if h.last_offset() < offset {
                continue;
            }
            let records = match decode_records(&batch, 64 << 20) {
                Ok(r) => r,
                Err(e) => return (matches, hist, Some(format!("decoding a match batch: {e}"))),
            };
            for rec in records {
                if rec.offset < offset {
                    continue;
                }
                let sent = rec
                    .value
                    .as_ref()
                    .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                    .and_then(|v| v.get("sent_us").and_then(Value::as_i64));
                if let Some(sent) = sent {
                    let _ = hist.record((read_at - sent).max(1) as u64);
                }
                matches += 1;
                got += 1;
            }
            offset = h.last_offset() + 1;
        }
        if got > 0 {
            idle_since = None;
        } else if produced_done.load(Ordering::Acquire) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= DRAIN.min(timeout) {
                return (matches, hist, None);
            }
        }
    }
}
