//! The consumer side of `weir bench`: `consume` (throughput from the earliest
//! offset) and `e2e` (producers and consumers together).
//!
//! Each consumer has its own [`Client`], a share of the partitions (partition
//! `p` goes to consumer `p % consumers`) and one Fetch in flight per leader.
//! Records are counted from batch headers (no per-record decoding), as the
//! fetched bytes are what is measured.

use super::baseline;
use super::produce::{latency_note, produce_load, title, LoadSpec};
use super::report::{print_table, round3, Latency, Progress, Row, Throughput};
use super::{connect, ensure_topic, new_histogram, record, BenchArgs};
use crate::client::{Client, FetchPartitionRequest, OffsetSpec};
use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_protocol::records::batches;

/// Give up when a consumer that still expects records got none for this long.
const STALL: Duration = Duration::from_secs(15);

/// Where each partition's consumption ends.
#[derive(Clone)]
pub enum Ends {
    /// Known up front (consume).
    Fixed(HashMap<i32, i64>),
    /// Known once the producers are done (e2e).
    Later(Arc<Mutex<Option<HashMap<i32, i64>>>>),
}

impl Ends {
    fn get(&self) -> Option<HashMap<i32, i64>> {
        match self {
            Ends::Fixed(m) => Some(m.clone()),
            Ends::Later(m) => m.lock().clone(),
        }
    }
}

pub struct ConsumeOutcome {
    pub throughput: Throughput,
    /// Fetch round trips, microseconds.
    pub fetch_latency: Histogram<u64>,
    /// (partition, batch base offset) -> when the fetch that carried it returned.
    pub arrivals: HashMap<(i32, i64), Instant>,
}

#[derive(Default)]
struct Totals {
    tp: Throughput,
    last: Option<Instant>,
}

/// Runs the consumers from `starts` until `ends`.
pub async fn consume_load(
    bootstrap: &str,
    args: &BenchArgs,
    starts: &HashMap<i32, i64>,
    ends: Ends,
    keep_arrivals: bool,
    progress_total: Option<u64>,
    t0_out: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<ConsumeOutcome> {
    let consumers = args.consumers;
    let mut clients = Vec::with_capacity(consumers);
    for c in 0..consumers {
        clients.push(connect(bootstrap, args, &format!("consumer-{c}")).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let progress = progress_total
        .map(|total| Progress::start("consume", done.clone(), Some(total), Duration::ZERO));
    let t0 = Instant::now();
    if let Some(tx) = t0_out {
        let _ = tx.send(());
    }
    let mut tasks = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        let mine: BTreeMap<i32, i64> = starts
            .iter()
            .filter(|(p, _)| **p as usize % consumers == c)
            .map(|(p, o)| (*p, *o))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let args = args.clone();
        let ends = ends.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            consume_one(client, args, mine, ends, keep_arrivals, done).await
        }));
    }
    let mut total = Totals::default();
    let mut hist = new_histogram();
    let mut arrivals = HashMap::new();
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(one)) => {
                total.tp.records += one.tp.records;
                total.tp.batches += one.tp.batches;
                total.tp.bytes += one.tp.bytes;
                total.last = total.last.max(one.last);
                let _ = hist.add(&one.hist);
                arrivals.extend(one.arrivals);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("consumer task failed: {e}")),
        }
    }
    if let Some(p) = progress {
        p.finish().await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    total.tp.seconds = total
        .last
        .map_or(0.0, |t| t.duration_since(t0).as_secs_f64());
    Ok(ConsumeOutcome {
        throughput: total.tp,
        fetch_latency: hist,
        arrivals,
    })
}

struct OneConsumer {
    tp: Throughput,
    last: Option<Instant>,
    hist: Histogram<u64>,
    arrivals: HashMap<(i32, i64), Instant>,
}

async fn consume_one(
    client: Client,
    args: BenchArgs,
    mut positions: BTreeMap<i32, i64>,
    ends: Ends,
    keep_arrivals: bool,
    done: Arc<AtomicU64>,
) -> anyhow::Result<OneConsumer> {
    let topic = args.topic.clone();
    let mut leaders: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in positions.keys() {
        let (leader, _) = client
            .leader(&topic, *p)
            .await
            .with_context(|| format!("finding the leader of {topic}-{p}"))?;
        leaders.entry(leader).or_default().push(*p);
    }
    let wait = Duration::from_millis(args.fetch_wait_ms);
    let mut out = OneConsumer {
        tp: Throughput::default(),
        last: None,
        hist: new_histogram(),
        arrivals: HashMap::new(),
    };
    let mut last_progress = Instant::now();
    loop {
        let known = ends.get();
        let open = |p: &i32, pos: &i64| match &known {
            Some(e) => *pos < e.get(p).copied().unwrap_or(0),
            None => true,
        };
        if !positions.iter().any(|(p, pos)| open(p, pos)) {
            break;
        }
        let mut progressed = false;
        for (node, parts) in &leaders {
            let reqs: Vec<FetchPartitionRequest> = parts
                .iter()
                .filter_map(|p| positions.get(p).map(|pos| (p, pos)))
                .filter(|(p, pos)| open(p, pos))
                .map(|(p, pos)| FetchPartitionRequest {
                    topic: topic.clone(),
                    partition: *p,
                    offset: *pos,
                    max_bytes: args.fetch_bytes,
                })
                .collect();
            if reqs.is_empty() {
                continue;
            }
            let max_bytes = args.fetch_bytes.saturating_mul(reqs.len() as i32);
            let sent = Instant::now();
            let answer = client
                .fetch_from(*node, &reqs, wait, 1, max_bytes)
                .await
                .with_context(|| format!("fetching from broker {node}"))?;
            let arrived = Instant::now();
            record(
                &mut out.hist,
                arrived.duration_since(sent).as_micros() as u64,
                1,
            );
            for part in answer {
                if let Some(e) = part.error() {
                    return Err(e.into());
                }
                let Some(pos) = positions.get_mut(&part.partition) else {
                    continue;
                };
                let end = known
                    .as_ref()
                    .map(|e| e.get(&part.partition).copied().unwrap_or(0));
                for batch in batches(&part.records) {
                    let (h, slice) = batch.context("a fetched batch is corrupt")?;
                    if h.last_offset() < *pos {
                        continue;
                    }
                    if end.is_some_and(|e| h.base_offset >= e) {
                        break;
                    }
                    if !h.is_control() {
                        let first = h.base_offset.max(*pos);
                        let last = match end {
                            Some(e) => h.last_offset().min(e - 1),
                            None => h.last_offset(),
                        };
                        let n = if first == h.base_offset && last == h.last_offset() {
                            h.record_count as u64
                        } else {
                            (last - first + 1) as u64
                        };
                        out.tp.records += n;
                        out.tp.batches += 1;
                        out.tp.bytes += slice.len() as u64;
                        done.fetch_add(n, Ordering::Relaxed);
                        if keep_arrivals {
                            out.arrivals
                                .insert((part.partition, h.base_offset), arrived);
                        }
                    }
                    *pos = h.last_offset() + 1;
                    progressed = true;
                    out.last = Some(arrived);
                }
            }
        }
        if progressed {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL && ends.get().is_some() {
            anyhow::bail!(
                "consumer got no records for {STALL:?} while expecting more (positions {positions:?})"
            );
        }
    }
    Ok(out)
}

async fn offsets(
    client: &Client,
    topic: &str,
    partitions: usize,
    spec: OffsetSpec,
) -> anyhow::Result<HashMap<i32, i64>> {
    let req: Vec<(i32, OffsetSpec)> = (0..partitions as i32).map(|p| (p, spec)).collect();
    let mut out = HashMap::new();
    for (p, r) in client.list_offsets(topic, &req).await? {
        let (off, _) = r.with_context(|| format!("listing offsets of {topic}-{p}"))?;
        out.insert(p, off);
    }
    Ok(out)
}

/// `weir bench consume`.
pub async fn run_consume(bootstrap: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let admin = connect(bootstrap, args, "admin").await?;
    let partitions = if args.records.is_some() {
        ensure_topic(&admin, args).await?
    } else {
        admin.partition_count(&args.topic).await.with_context(|| {
            format!(
                "looking up topic {} (pass --records N to create and fill it)",
                args.topic
            )
        })?
    };
    let starts = offsets(&admin, &args.topic, partitions, OffsetSpec::Earliest).await?;
    let mut latest = offsets(&admin, &args.topic, partitions, OffsetSpec::Latest).await?;
    let available: i64 = latest
        .iter()
        .map(|(p, l)| l - starts.get(p).copied().unwrap_or(0))
        .sum();
    let mut filled = 0u64;
    if let Some(n) = args.records {
        if (available.max(0) as u64) < n {
            let fill = n - available.max(0) as u64;
            let spec = LoadSpec {
                records: Some(fill),
                duration: Duration::from_secs(3600),
                rate: None,
                keep_batches: false,
                label: "fill",
                progress: true,
            };
            let out = produce_load(bootstrap, args, partitions, &spec).await?;
            if out.throughput.errors > 0 {
                anyhow::bail!(
                    "filling the topic failed: {}",
                    out.throughput.first_error.as_deref().unwrap_or("?")
                );
            }
            filled = out.throughput.records;
            latest = offsets(&admin, &args.topic, partitions, OffsetSpec::Latest).await?;
        }
    }
    // Where each partition stops: its end, or --records spread from partition 0 on.
    let mut ends = HashMap::new();
    let mut left = args.records.map(|n| n as i64);
    for p in 0..partitions as i32 {
        let start = starts.get(&p).copied().unwrap_or(0);
        let end = latest.get(&p).copied().unwrap_or(start).max(start);
        let end = match left.as_mut() {
            Some(l) => {
                let take = (*l).min(end - start);
                *l -= take;
                start + take
            }
            None => end,
        };
        ends.insert(p, end);
    }
    let expected: u64 = ends
        .iter()
        .map(|(p, e)| (e - starts.get(p).copied().unwrap_or(0)).max(0) as u64)
        .sum();
    if expected == 0 {
        anyhow::bail!(
            "topic {} holds no records; pass --records N to fill it first",
            args.topic
        );
    }
    let out = consume_load(
        bootstrap,
        args,
        &starts,
        Ends::Fixed(ends),
        false,
        Some(expected),
        None,
    )
    .await?;
    let tp = &out.throughput;
    let lat = Latency::of(&out.fetch_latency);
    let base = if args.no_baseline {
        None
    } else {
        Some(baseline::in_run_loopback(tp.bytes).await?)
    };
    let ratio = base
        .as_ref()
        .filter(|b| b.mib_per_sec() > 0.0)
        .map(|b| tp.mib_per_sec() / b.mib_per_sec());
    if args.json {
        let v = serde_json::json!({
            "mode": "consume",
            "config": args.json(),
            "partitions": partitions,
            "filled": filled,
            "expected": expected,
            "consume": tp.json(lat.as_ref()),
            "baseline": base.map(|b| serde_json::json!({"loopback_tcp": b.json()})),
            "ratio_to_loopback": ratio.map(round3),
        });
        println!("{v}");
    } else {
        let mut rows = vec![Row {
            name: "consume".into(),
            records: Some(tp.records),
            records_per_sec: Some(tp.records_per_sec()),
            mib_per_sec: Some(tp.mib_per_sec()),
            ratio,
            latency: lat,
        }];
        let mut notes = vec!["latency: fetch round trips".to_string()];
        if filled > 0 {
            notes.push(format!(
                "filled the topic with {filled} records first (not measured)"
            ));
        }
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
        print_table(&title("consume", args, partitions, 0), &rows, &notes);
    }
    if tp.records != expected {
        anyhow::bail!("consumed {} records, expected {expected}", tp.records);
    }
    Ok(())
}

/// `weir bench e2e`.
pub async fn run_e2e(bootstrap: &str, args: &BenchArgs) -> anyhow::Result<()> {
    if args.acks == 0 {
        anyhow::bail!("e2e needs acknowledgements to match records: use --acks 1 or all");
    }
    let admin = connect(bootstrap, args, "admin").await?;
    let partitions = ensure_topic(&admin, args).await?;
    let starts = offsets(&admin, &args.topic, partitions, OffsetSpec::Latest).await?;
    let ends = Arc::new(Mutex::new(None));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let consumers = {
        let (bootstrap, args, starts, ends) = (
            bootstrap.to_string(),
            args.clone(),
            starts.clone(),
            Ends::Later(ends.clone()),
        );
        tokio::spawn(async move {
            consume_load(
                &bootstrap,
                &args,
                &starts,
                ends,
                true,
                None,
                Some(started_tx),
            )
            .await
        })
    };
    // Producers start once the consumers are connected.
    let _ = started_rx.await;
    let spec = LoadSpec {
        records: args.records,
        duration: Duration::from_secs_f64(args.duration),
        rate: args.rate,
        keep_batches: true,
        label: "e2e",
        progress: true,
    };
    let probe = super::baseline::WakeupProbe::start();
    let produced = produce_load(bootstrap, args, partitions, &spec).await;
    let (wakeup, cpu) = probe.finish_with_cpu();
    // Whatever happened, tell the consumers where to stop.
    let produced_ends = match &produced {
        Ok(p) => starts
            .iter()
            .map(|(part, s)| (*part, p.ends.get(part).copied().unwrap_or(*s).max(*s)))
            .collect(),
        Err(_) => starts.clone(),
    };
    *ends.lock() = Some(produced_ends);
    let produced = produced?;
    let consumed = consumers.await.context("consumer task")??;
    let mut e2e = new_histogram();
    let mut unmatched = 0u64;
    for b in &produced.acked {
        match consumed.arrivals.get(&(b.partition, b.base_offset)) {
            Some(at) => {
                if b.interval.is_zero() {
                    let us = at.saturating_duration_since(b.first_intended).as_micros() as u64;
                    record(&mut e2e, us, u64::from(b.records));
                } else {
                    for i in 0..b.records {
                        let us = at
                            .saturating_duration_since(b.first_intended + b.interval * i)
                            .as_micros() as u64;
                        record(&mut e2e, us, 1);
                    }
                }
            }
            None => unmatched += u64::from(b.records),
        }
    }
    let ptp = &produced.throughput;
    let ctp = &consumed.throughput;
    let (plat, clat, elat) = (
        Latency::of(&produced.latency),
        Latency::of(&consumed.fetch_latency),
        Latency::of(&e2e),
    );
    if args.json {
        let v = serde_json::json!({
            "mode": "e2e",
            "config": args.json(),
            "partitions": partitions,
            "produce": ptp.json(plat.as_ref()),
            "consume": ctp.json(clat.as_ref()),
            "e2e": {
                "records": e2e.len(),
                "unmatched_records": unmatched,
                "latency_ms": elat.map(|l| l.json()),
            },
            "wakeup_delay_ms": wakeup.map(|l| l.json()),
            "machine_cpu": cpu.map(|c| c.json()),
        });
        println!("{v}");
    } else {
        let rows = vec![
            Row {
                name: "produce".into(),
                records: Some(ptp.records),
                records_per_sec: Some(ptp.records_per_sec()),
                mib_per_sec: Some(ptp.mib_per_sec()),
                ratio: None,
                latency: plat,
            },
            Row {
                name: "consume".into(),
                records: Some(ctp.records),
                records_per_sec: Some(ctp.records_per_sec()),
                mib_per_sec: Some(ctp.mib_per_sec()),
                ratio: None,
                latency: clat,
            },
            Row {
                name: "end to end".into(),
                records: Some(e2e.len()),
                records_per_sec: None,
                mib_per_sec: None,
                ratio: None,
                latency: elat,
            },
        ];
        let mut notes = vec![
            latency_note(args),
            "consume latency: fetch round trips; end to end: intended send time to the fetch that returned the record".into(),
        ];
        if unmatched > 0 {
            notes.push(format!(
                "{unmatched} acknowledged records were not seen by a consumer"
            ));
        }
        if let Some(l) = &wakeup {
            notes.push(super::baseline::describe_wakeup(l, "during the run"));
        }
        if let Some(c) = &cpu {
            notes.push(super::baseline::describe_cpu(c));
        }
        print_table(
            &title("e2e", args, partitions, produced.records_per_batch),
            &rows,
            &notes,
        );
    }
    if ptp.errors > 0 {
        anyhow::bail!(
            "{} produce request(s) failed; first: {}",
            ptp.errors,
            ptp.first_error.as_deref().unwrap_or("?")
        );
    }
    if ctp.records != ptp.records {
        anyhow::bail!(
            "produced {} records but consumed {}",
            ptp.records,
            ctp.records
        );
    }
    Ok(())
}
