//! The producer side of `weir bench`.
//!
//! Each producer has its own [`Client`] (one connection per broker) and a pacing
//! thread. The batches are encoded once before the clock starts (a few distinct
//! payloads, reused by reference: `Bytes` clones), so the generator does no
//! per-record work. The pacing thread sleeps until a batch's send time (an OS
//! sleep, ~0.1 ms precise, rather than tokio's 1 ms timer wheel), takes one of
//! `--max-in-flight` permits and queues the Produce request on the connection;
//! a task per request awaits the answer, records the latencies and returns the
//! permit. Answers of one connection arrive in order, but a task per request
//! keeps brokers of a cluster from delaying each other's latencies.

use super::baseline;
use super::report::{print_table, Latency, Progress, Row, Throughput};
use super::{connect, ensure_topic, new_histogram, record, BenchArgs};
use crate::client::Client;
use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use weir_protocol::compression::Compression;
use weir_protocol::records::{BatchBuilder, BATCH_HEADER_LEN};

/// Distinct pre-built batches per producer (so compression sees varied data).
const DISTINCT_BATCHES: usize = 8;

/// How a producer run is driven.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Records over all producers; `None` = run for `duration`.
    pub records: Option<u64>,
    pub duration: Duration,
    /// Records per second over all producers (open loop); `None` = closed loop.
    pub rate: Option<f64>,
    /// Keep each acknowledged batch's offsets and intended times (for e2e).
    pub keep_batches: bool,
    pub label: &'static str,
    pub progress: bool,
}

/// An acknowledged batch.
#[derive(Debug, Clone, Copy)]
pub struct AckedBatch {
    pub partition: i32,
    pub base_offset: i64,
    pub records: u32,
    /// Intended send time of its first record, and the interval between records.
    pub first_intended: Instant,
    pub interval: Duration,
}

pub struct ProduceOutcome {
    pub throughput: Throughput,
    pub latency: Histogram<u64>,
    pub acked: Vec<AckedBatch>,
    /// Per partition: one past the last acknowledged offset.
    pub ends: HashMap<i32, i64>,
    pub records_per_batch: usize,
}

#[derive(Default)]
struct Shared {
    tp: Throughput,
    hist: Option<Histogram<u64>>,
    acked: Vec<AckedBatch>,
    ends: HashMap<i32, i64>,
    last_ack: Option<Instant>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// xorshift64*: payload bytes and event mixes without a rand dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Random upper-case letters, like Kafka's producer-perf-test payloads.
    fn fill_letters(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut r = self.next();
            for b in chunk {
                *b = b'A' + (r % 26) as u8;
                r >>= 8;
            }
        }
    }
}

/// Encoded size of one record of `record_size` value bytes (null key, no headers).
pub fn record_len(record_size: usize) -> usize {
    let value = vec![0u8; record_size];
    let mut b = BatchBuilder::new(Compression::None);
    b.push(0, None, Some(&value), &[]);
    b.uncompressed_size()
}

/// Records in a full batch of `batch_size` bytes (at least one).
pub fn records_per_batch(record_size: usize, batch_size: usize) -> usize {
    (batch_size.saturating_sub(BATCH_HEADER_LEN) / record_len(record_size)).max(1)
}

fn build_batch(
    rng: &mut Rng,
    record_size: usize,
    count: usize,
    compression: Compression,
    timestamp: i64,
) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new(compression);
    let mut value = vec![0u8; record_size];
    for _ in 0..count {
        rng.fill_letters(&mut value);
        b.push(timestamp, None, Some(&value), &[]);
    }
    Ok(Bytes::from(b.build().context("encoding a batch")?))
}

/// Records each producer sends: `total` split as evenly as possible.
fn quota(total: u64, producers: usize, index: usize) -> u64 {
    let n = producers as u64;
    total / n + u64::from((index as u64) < total % n)
}

struct Producer {
    index: usize,
    client: Client,
    batches: Vec<Bytes>,
    rng: Rng,
}

/// Runs the producers; returns when every request is answered.
pub async fn produce_load(
    bootstrap: &str,
    args: &BenchArgs,
    partitions: usize,
    spec: &LoadSpec,
) -> anyhow::Result<ProduceOutcome> {
    let full = records_per_batch(args.record_size, args.batch_size);
    let producers = args.producers;
    let rate_each = spec.rate.map(|r| r / producers as f64);
    let linger = Duration::from_millis(args.linger_ms);
    // Open loop: a batch holds the records that arrive within the linger (or is full).
    let per_batch = match rate_each {
        Some(r) => ((r * linger.as_secs_f64()).floor() as usize + 1).min(full),
        None => full,
    };
    // Connect and encode everything before the clock starts.
    let ts = now_ms();
    let mut ready = Vec::with_capacity(producers);
    for index in 0..producers {
        let client = connect(bootstrap, args, &format!("producer-{index}")).await?;
        client
            .topic(&args.topic)
            .await
            .with_context(|| format!("looking up topic {}", args.topic))?;
        let mut rng =
            Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x1234_5678_9abc));
        let mut batches = Vec::with_capacity(DISTINCT_BATCHES);
        for _ in 0..DISTINCT_BATCHES {
            batches.push(build_batch(
                &mut rng,
                args.record_size,
                per_batch,
                args.compression,
                ts,
            )?);
        }
        ready.push(Producer {
            index,
            client,
            batches,
            rng,
        });
    }
    let shared = Arc::new(Mutex::new(Shared {
        hist: Some(new_histogram()),
        ..Shared::default()
    }));
    let acked_records = Arc::new(AtomicU64::new(0));
    let progress = if spec.progress {
        Some(Progress::start(
            spec.label,
            acked_records.clone(),
            spec.records,
            spec.duration,
        ))
    } else {
        None
    };
    let t0 = Instant::now();
    let handle = tokio::runtime::Handle::current();
    let mut threads = Vec::new();
    for p in ready {
        let ctx = PaceCtx {
            handle: handle.clone(),
            topic: args.topic.clone(),
            acks: args.acks,
            timeout: args.timeout(),
            record_size: args.record_size,
            compression: args.compression,
            partitions,
            per_batch,
            full,
            quota: spec.records.map(|t| quota(t, producers, p.index)),
            duration: spec.duration,
            rate: rate_each,
            linger,
            t0,
            ts,
            max_in_flight: args.max_in_flight.max(1),
            keep_batches: spec.keep_batches,
            shared: shared.clone(),
            acked_records: acked_records.clone(),
        };
        threads.push(tokio::task::spawn_blocking(move || pace(ctx, p)));
    }
    let mut failure = None;
    for t in threads {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("producer thread failed: {e}")),
        }
    }
    if let Some(p) = progress {
        p.finish().await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut s = std::mem::take(&mut *shared.lock());
    s.tp.seconds = s
        .last_ack
        .map_or(0.0, |t| t.duration_since(t0).as_secs_f64());
    Ok(ProduceOutcome {
        throughput: s.tp,
        latency: s.hist.take().unwrap_or_else(new_histogram),
        acked: s.acked,
        ends: s.ends,
        records_per_batch: per_batch,
    })
}

struct PaceCtx {
    handle: tokio::runtime::Handle,
    topic: String,
    acks: i16,
    timeout: Duration,
    record_size: usize,
    compression: Compression,
    partitions: usize,
    per_batch: usize,
    full: usize,
    quota: Option<u64>,
    duration: Duration,
    rate: Option<f64>,
    linger: Duration,
    t0: Instant,
    ts: i64,
    max_in_flight: usize,
    keep_batches: bool,
    shared: Arc<Mutex<Shared>>,
    acked_records: Arc<AtomicU64>,
}

/// One producer's sending loop, on its own thread.
fn pace(ctx: PaceCtx, mut p: Producer) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(ctx.max_in_flight));
    let interval = ctx
        .rate
        .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
    let mut sent: u64 = 0;
    let mut seq: usize = 0;
    let mut tail: Option<(usize, Bytes)> = None;
    loop {
        let count = match ctx.quota {
            Some(q) if sent >= q => break,
            Some(q) => (q - sent).min(ctx.per_batch as u64) as usize,
            None => ctx.per_batch,
        };
        // When is this batch due, and when were its records meant to be sent?
        let first_intended = match ctx.rate {
            Some(r) => ctx.t0 + Duration::from_secs_f64(sent as f64 / r),
            None => Instant::now(),
        };
        if ctx.quota.is_none() && first_intended.duration_since(ctx.t0) >= ctx.duration {
            break;
        }
        if ctx.rate.is_some() {
            let due = if count < ctx.full && count == ctx.per_batch {
                first_intended + ctx.linger
            } else {
                first_intended + interval * (count as u32).saturating_sub(1)
            };
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let permit = match ctx.handle.block_on(permits.clone().acquire_owned()) {
            Ok(p) => p,
            Err(_) => break,
        };
        // Closed loop: the batch was meant to go when the window let it.
        let first_intended = if ctx.rate.is_some() {
            first_intended
        } else {
            Instant::now()
        };
        let bytes = if count == ctx.per_batch {
            p.batches[seq % p.batches.len()].clone()
        } else {
            match &tail {
                Some((n, b)) if *n == count => b.clone(),
                _ => {
                    let b =
                        build_batch(&mut p.rng, ctx.record_size, count, ctx.compression, ctx.ts)?;
                    tail = Some((count, b.clone()));
                    b
                }
            }
        };
        let partition = ((p.index + seq) % ctx.partitions) as i32;
        let len = bytes.len() as u64;
        let pending = match ctx.handle.block_on(p.client.send_produce(
            &ctx.topic,
            partition,
            bytes,
            ctx.acks,
            ctx.timeout,
        )) {
            Ok(pending) => pending,
            Err(e) => {
                let mut s = ctx.shared.lock();
                s.tp.errors += 1;
                s.tp.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        };
        let shared = ctx.shared.clone();
        let acked_records = ctx.acked_records.clone();
        let keep = ctx.keep_batches;
        ctx.handle.spawn(async move {
            let result = pending.wait().await;
            let now = Instant::now();
            let mut s = shared.lock();
            match result {
                Ok(r) => {
                    s.tp.records += count as u64;
                    s.tp.batches += 1;
                    s.tp.bytes += len;
                    s.last_ack = Some(s.last_ack.map_or(now, |t| t.max(now)));
                    if let Some(h) = s.hist.as_mut() {
                        if interval.is_zero() {
                            let us =
                                now.saturating_duration_since(first_intended).as_micros() as u64;
                            record(h, us, count as u64);
                        } else {
                            for i in 0..count as u32 {
                                let intended = first_intended + interval * i;
                                let us = now.saturating_duration_since(intended).as_micros() as u64;
                                record(h, us, 1);
                            }
                        }
                    }
                    if r.base_offset >= 0 {
                        let end = s.ends.entry(partition).or_insert(0);
                        *end = (*end).max(r.base_offset + count as i64);
                        if keep {
                            s.acked.push(AckedBatch {
                                partition,
                                base_offset: r.base_offset,
                                records: count as u32,
                                first_intended,
                                interval,
                            });
                        }
                    }
                    acked_records.fetch_add(count as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    s.tp.errors += 1;
                    s.tp.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            drop(s);
            drop(permit);
        });
        sent += count as u64;
        seq += 1;
        if ctx.shared.lock().tp.errors > 0 {
            break;
        }
    }
    // Every request answered: all permits back.
    let _ = ctx
        .handle
        .block_on(permits.acquire_many(ctx.max_in_flight as u32));
    Ok(())
}

/// `weir bench produce`.
pub async fn run_produce(bootstrap: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let admin = connect(bootstrap, args, "admin").await?;
    let partitions = ensure_topic(&admin, args).await?;
    let spec = LoadSpec {
        records: args.records,
        duration: Duration::from_secs_f64(args.duration),
        rate: args.rate,
        keep_batches: false,
        label: "produce",
        progress: true,
    };
    let probe = baseline::WakeupProbe::start();
    let out = produce_load(bootstrap, args, partitions, &spec).await;
    let (wakeup, cpu) = probe.finish_with_cpu();
    let out = out?;
    let tp = &out.throughput;
    let lat = Latency::of(&out.latency);
    let base = if args.no_baseline {
        None
    } else {
        Some(baseline::in_run_loopback(tp.bytes).await?)
    };
    let file = if args.no_baseline {
        None
    } else {
        let dir = args
            .baseline_dir
            .clone()
            .unwrap_or_else(super::default_baseline_dir);
        Some(baseline::in_run_file_write(dir, tp.bytes).await?)
    };
    let ratio_to = |b: &Option<baseline::Measured>| {
        b.as_ref()
            .filter(|b| b.mib_per_sec() > 0.0)
            .map(|b| tp.mib_per_sec() / b.mib_per_sec())
    };
    let (ratio, file_ratio) = (ratio_to(&base), ratio_to(&file));
    if args.json {
        let v = serde_json::json!({
            "mode": "produce",
            "config": args.json(),
            "partitions": partitions,
            "records_per_batch": out.records_per_batch,
            "produce": tp.json(lat.as_ref()),
            "baseline": base.map(|b| serde_json::json!({
                "loopback_tcp": b.json(),
                "file_write": file.map(|f| f.json()),
            })),
            "ratio_to_loopback": ratio.map(super::report::round3),
            "ratio_to_file_write": file_ratio.map(super::report::round3),
            "wakeup_delay_ms": wakeup.map(|l| l.json()),
            "machine_cpu": cpu.map(|c| c.json()),
        });
        println!("{v}");
    } else {
        let mut rows = vec![Row {
            name: "produce".into(),
            records: Some(tp.records),
            records_per_sec: Some(tp.records_per_sec()),
            mib_per_sec: Some(tp.mib_per_sec()),
            ratio,
            latency: lat,
        }];
        let mut notes = vec![];
        if let Some(b) = &base {
            rows.push(Row {
                name: "loopback TCP".into(),
                records: None,
                records_per_sec: None,
                mib_per_sec: Some(b.mib_per_sec()),
                ratio: Some(1.0),
                latency: None,
            });
            notes.push(baseline::describe(b));
        }
        if let (Some(f), Some(r)) = (&file, file_ratio) {
            rows.push(Row {
                name: "file write".into(),
                records: None,
                records_per_sec: None,
                mib_per_sec: Some(f.mib_per_sec()),
                ratio: base
                    .as_ref()
                    .map(|b| f.mib_per_sec() / b.mib_per_sec().max(1e-9)),
                latency: None,
            });
            notes.push(format!(
                "plain file write (page cache, 1 MiB writes) of {} MiB in the same run: {:.1} MiB/s; produce = {r:.2}x of it",
                f.bytes >> 20,
                f.mib_per_sec()
            ));
        }
        notes.push(latency_note(args));
        if let Some(l) = &wakeup {
            notes.push(baseline::describe_wakeup(l, "during the run"));
        }
        if let Some(c) = &cpu {
            notes.push(baseline::describe_cpu(c));
        }
        print_table(
            &title("produce", args, partitions, out.records_per_batch),
            &rows,
            &notes,
        );
    }
    if tp.errors > 0 {
        anyhow::bail!(
            "{} produce request(s) failed; first: {}",
            tp.errors,
            tp.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

pub(crate) fn latency_note(args: &BenchArgs) -> String {
    match (args.acks, args.rate) {
        (0, _) => "acks=0: latency is the time until the request was queued".into(),
        (_, Some(r)) => format!(
            "open loop at {r:.0} records/s: latency runs from each record's intended send time"
        ),
        (_, None) => "closed loop: latency runs from sending a batch to its acknowledgement".into(),
    }
}

pub(crate) fn title(mode: &str, args: &BenchArgs, partitions: usize, per_batch: usize) -> String {
    let producing = if per_batch > 0 {
        format!(
            "  {} producer(s)  {} B records  {per_batch} records/batch  linger {} ms  acks={}  \
             compression={}  in-flight {}",
            args.producers,
            args.record_size,
            args.linger_ms,
            super::acks_name(args.acks),
            args.compression.name(),
            args.max_in_flight
        )
    } else {
        String::new()
    };
    let consuming = if mode == "produce" {
        String::new()
    } else {
        format!(
            "  {} consumer(s)  fetch {} KiB",
            args.consumers,
            args.fetch_bytes >> 10
        )
    };
    format!(
        "weir bench {mode}  topic {}  {partitions} partition(s){producing}{consuming}",
        args.topic
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quota() {
        assert_eq!(quota(10, 3, 0), 4);
        assert_eq!(quota(10, 3, 1), 3);
        assert_eq!(quota(10, 3, 2), 3);
        assert_eq!((0..7).map(|i| quota(20_000, 7, i)).sum::<u64>(), 20_000);
    }

    #[test]
    fn batch_sizes() {
        // 1 KiB values take 1024 + 8 bytes each: 63 fit in 64 KiB with the header.
        assert_eq!(records_per_batch(1024, 64 * 1024), 63);
        assert_eq!(records_per_batch(1 << 20, 16 * 1024), 1);
        let mut rng = Rng(7);
        let b = build_batch(&mut rng, 100, 5, Compression::Lz4, 1).unwrap();
        let h = weir_protocol::records::verify_batch(&b).unwrap();
        assert_eq!(h.record_count, 5);
    }
}
