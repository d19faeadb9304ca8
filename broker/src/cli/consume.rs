//! `weir consume`: records of a topic to standard output, one value per line.
//!
//! Output: each record's value followed by `\n`; with `--print-key`,
//! `key<TAB>value`. A null value (or null key) prints as an empty string, so a
//! record with a null value is an empty line. Values are written as raw bytes.
//!
//! Without `--from-beginning` consumption starts at the log end, like
//! kafka-console-consumer. It stops after `--count` records, when no record came
//! for `--timeout-ms`, on Ctrl-C, or when standard output is closed.

use crate::cli::{client_config, write_stdout, Output};
use crate::client::group::{GroupConfig, GroupMember};
use crate::client::{codes, Client, ClientError, FetchPartitionRequest, OffsetSpec};
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weir_protocol::records::{batches, decode_records};

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to consume from.
    pub topic: String,
    /// Start at the earliest offset instead of the log end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Consume only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Consume as a member of this consumer group (classic protocol; offsets are committed).
    #[arg(long)]
    pub group: Option<String>,
    /// Print `key<TAB>value` instead of just the value.
    #[arg(long)]
    pub print_key: bool,
    /// Stop when no record arrived for this long.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Longest a fetch waits at the broker for data.
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: u64,
    /// Per-partition fetch size.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_partition_bytes: i32,
}

/// Formats one record as a line of output.
pub fn format_record(out: &mut Vec<u8>, key: Option<&[u8]>, value: Option<&[u8]>, print_key: bool) {
    if print_key {
        out.extend_from_slice(key.unwrap_or_default());
        out.push(b'\t');
    }
    out.extend_from_slice(value.unwrap_or_default());
    out.push(b'\n');
}

/// Appends the records of `records` (a fetch answer's record batches) at or after
/// `*position` to `out`, advancing `*position`. Returns how many were written,
/// never more than `limit`.
pub fn append_records(
    records: &Bytes,
    position: &mut i64,
    print_key: bool,
    limit: u64,
    out: &mut Vec<u8>,
) -> Result<u64, weir_protocol::records::RecordError> {
    let mut written = 0;
    let mut at = 0usize;
    for batch in batches(records) {
        let (header, slice) = batch?;
        let range = at..at + slice.len();
        at += slice.len();
        if header.last_offset() < *position {
            continue;
        }
        if header.is_control() {
            *position = header.last_offset() + 1;
            continue;
        }
        for r in decode_records(&records.slice(range), 256 << 20)? {
            if r.offset < *position {
                continue;
            }
            if written >= limit {
                return Ok(written);
            }
            format_record(out, r.key.as_deref(), r.value.as_deref(), print_key);
            written += 1;
            *position = r.offset + 1;
        }
        if written < limit {
            *position = (*position).max(header.last_offset() + 1);
        }
    }
    Ok(written)
}

pub async fn run(bootstrap: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Client::connect(bootstrap, client_config())
        .await
        .with_context(|| format!("connecting to {bootstrap}"))?;
    let topic = client.topic(&args.topic).await?;
    let all: Vec<i32> = topic.partitions.keys().copied().collect();
    if let Some(p) = args.partition {
        if !all.contains(&p) {
            anyhow::bail!(
                "partition {p} does not exist: topic {} has {} partitions",
                args.topic,
                all.len()
            );
        }
        if args.group.is_some() {
            anyhow::bail!("--partition and --group cannot be combined");
        }
    }
    let reset = if args.from_beginning {
        OffsetSpec::Earliest
    } else {
        OffsetSpec::Latest
    };

    let mut member = None;
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    match &args.group {
        Some(group) => {
            let m = GroupMember::join(client.clone(), GroupConfig::new(group, &args.topic)).await?;
            let committed = m.committed().await?;
            let assigned = m.assignment();
            let missing: Vec<(i32, OffsetSpec)> = assigned
                .iter()
                .filter(|p| !committed.contains_key(p))
                .map(|&p| (p, reset))
                .collect();
            for (p, off) in committed.iter().filter(|(p, _)| assigned.contains(p)) {
                positions.insert(*p, *off);
            }
            for (p, r) in client.list_offsets(&args.topic, &missing).await? {
                positions.insert(p, r?.0);
            }
            member = Some(m);
        }
        None => {
            let parts: Vec<i32> = args.partition.map(|p| vec![p]).unwrap_or(all);
            let specs: Vec<(i32, OffsetSpec)> = parts.iter().map(|&p| (p, reset)).collect();
            for (p, r) in client.list_offsets(&args.topic, &specs).await? {
                positions.insert(p, r?.0);
            }
        }
    }

    let result = consume_loop(&client, &args, &mut positions, member.as_mut(), reset).await;
    if let Some(m) = member {
        let commit = m.commit(&positions).await;
        let leave = m.leave().await;
        if result.is_ok() {
            commit?;
            leave?;
        }
    }
    let total = result?;
    eprintln!("Processed a total of {total} messages");
    Ok(())
}

async fn consume_loop(
    client: &Client,
    args: &ConsumeArgs,
    positions: &mut BTreeMap<i32, i64>,
    mut member: Option<&mut GroupMember>,
    reset: OffsetSpec,
) -> anyhow::Result<u64> {
    let topic = args.topic.as_str();
    let limit = args.count.unwrap_or(u64::MAX);
    let idle = args.timeout_ms.map(Duration::from_millis);
    let max_wait = Duration::from_millis(args.max_wait_ms).min(idle.unwrap_or(Duration::MAX));
    let mut total = 0u64;
    let mut last_record = Instant::now();
    let mut last_commit = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while total < limit {
        if let Some(idle) = idle {
            if last_record.elapsed() >= idle {
                break;
            }
        }
        if let Some(m) = member.as_deref_mut() {
            if m.needs_rejoin() {
                m.commit(positions).await.ok();
                m.rejoin().await?;
                let committed = m.committed().await?;
                let assigned = m.assignment();
                positions.retain(|p, _| assigned.contains(p));
                let mut missing = Vec::new();
                for p in assigned {
                    match committed.get(&p) {
                        Some(o) => {
                            positions.insert(p, *o);
                        }
                        None => missing.push((p, reset)),
                    }
                }
                for (p, r) in client.list_offsets(topic, &missing).await? {
                    positions.insert(p, r?.0);
                }
            }
            if last_commit.elapsed() >= Duration::from_secs(5) {
                m.commit(positions).await?;
                last_commit = Instant::now();
            }
        }
        if positions.is_empty() {
            tokio::time::sleep(max_wait).await;
            continue;
        }
        // One fetch per leader, all at once.
        let mut by_leader: BTreeMap<i32, Vec<FetchPartitionRequest>> = BTreeMap::new();
        for (&p, &offset) in positions.iter() {
            let leader = match client.leader(topic, p).await {
                Ok((l, _)) => l,
                Err(e) if e.is_retriable() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            by_leader
                .entry(leader)
                .or_default()
                .push(FetchPartitionRequest {
                    topic: topic.to_string(),
                    partition: p,
                    offset,
                    max_bytes: args.max_partition_bytes,
                });
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (leader, parts) in by_leader {
            let client = client.clone();
            let max_bytes = args
                .max_partition_bytes
                .saturating_mul(parts.len() as i32)
                .max(args.max_partition_bytes);
            tasks.spawn(async move {
                client
                    .fetch_from(leader, &parts, max_wait, 1, max_bytes)
                    .await
            });
        }
        let mut out = Vec::new();
        let mut refresh = false;
        let mut out_of_range = Vec::new();
        let results = tokio::select! {
            r = collect(&mut tasks) => r,
            _ = &mut ctrl_c => break,
        };
        for r in results {
            let parts = match r {
                Ok(parts) => parts,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "fetch failed, retrying");
                    refresh = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for fp in parts {
                let Some(pos) = positions.get_mut(&fp.partition) else {
                    continue;
                };
                if let Some(e) = fp.error() {
                    if fp.error_code == codes::OFFSET_OUT_OF_RANGE {
                        out_of_range.push((fp.partition, reset));
                    } else if e.is_retriable() {
                        refresh = true;
                    } else {
                        return Err(e.into());
                    }
                    continue;
                }
                let n = append_records(&fp.records, pos, args.print_key, limit - total, &mut out)
                    .with_context(|| format!("decoding records of {topic}-{}", fp.partition))?;
                total += n;
                if n > 0 {
                    last_record = Instant::now();
                }
            }
        }
        if !out.is_empty() && write_stdout(&out)? == Output::Closed {
            break;
        }
        if !out_of_range.is_empty() {
            for (p, r) in client.list_offsets(topic, &out_of_range).await? {
                let off = r?.0;
                eprintln!("Offset of {topic}-{p} is out of range; resetting to {off}");
                positions.insert(p, off);
            }
        }
        if refresh {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = client.metadata(Some(&[topic])).await {
                tracing::debug!(error = %e, "metadata refresh failed");
            }
        }
    }
    Ok(total)
}

async fn collect<T: 'static>(
    tasks: &mut tokio::task::JoinSet<Result<T, ClientError>>,
) -> Vec<Result<T, ClientError>> {
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(
            r.unwrap_or_else(|e| Err(ClientError::Invalid(format!("fetch task failed: {e}")))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::compression::Compression;
    use weir_protocol::records::BatchBuilder;

    fn batch(base: i64, recs: &[(Option<&str>, Option<&str>)]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).base_offset(base);
        for (k, v) in recs {
            b.push(1, k.map(str::as_bytes), v.map(str::as_bytes), &[]);
        }
        b.build().unwrap()
    }

    #[test]
    fn prints_from_position_inside_a_batch() {
        let mut set = batch(
            10,
            &[(Some("a"), Some("1")), (None, Some("2")), (Some("c"), None)],
        );
        set.extend(batch(13, &[(Some("d"), Some("4"))]));
        set.extend_from_slice(&batch(14, &[(None, Some("partial"))])[..20]);
        let set = Bytes::from(set);
        let mut pos = 11;
        let mut out = Vec::new();
        assert_eq!(
            append_records(&set, &mut pos, false, u64::MAX, &mut out).unwrap(),
            3
        );
        assert_eq!(out, b"2\n\n4\n");
        assert_eq!(pos, 14);
        let (mut pos, mut out) = (0, Vec::new());
        assert_eq!(
            append_records(&set, &mut pos, true, 2, &mut out).unwrap(),
            2
        );
        assert_eq!(out, b"a\t1\n\t2\n");
        assert_eq!(pos, 12, "stops right after the last printed record");
    }
}
