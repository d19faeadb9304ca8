//! `weir groups`: list, describe, reset offsets of and delete consumer groups over
//! the Kafka protocol (works against any Kafka broker).

use crate::cli::client_config;
use crate::client::{Client, ClientError, Connection, OffsetSpec};
use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use clap::{ArgGroup, Subcommand};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum GroupsCommand {
    /// List consumer groups with their state.
    List,
    /// Describe a group: state, protocol, members and their assignments, and per
    /// partition the committed offset, log end offset and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Plan (and with --execute, commit) new offsets for a group without active members.
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_datetime", "shift_by"])))]
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic whose partitions are reset.
        #[arg(long)]
        topic: String,
        /// To the log start offset.
        #[arg(long)]
        to_earliest: bool,
        /// To the log end offset.
        #[arg(long)]
        to_latest: bool,
        /// To the first record at or after this time: YYYY-MM-DDTHH:MM:SS[.mmm] (UTC) or epoch ms.
        #[arg(long)]
        to_datetime: Option<String>,
        /// Move the committed offsets by N (negative: back), within the log.
        #[arg(long, allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets (without it, only print the plan).
        #[arg(long)]
        execute: bool,
    },
    /// Delete groups without members (and their committed offsets).
    Delete {
        /// Group ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn check(code: i16, context: impl Into<String>) -> anyhow::Result<()> {
    match ClientError::from_code(code, None, context) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Sends `body` at the highest version both sides speak.
async fn call(
    conn: &Connection,
    api: ApiKey,
    body: impl Fn(i16) -> RequestKind,
) -> anyhow::Result<(i16, ResponseKind)> {
    let version = conn.version(api).with_context(|| {
        format!("the broker does not support {api:?} at a version this client speaks")
    })?;
    let resp = conn
        .send(api, version, &body(version), true, Duration::ZERO)?
        .response()
        .await
        .with_context(|| format!("{api:?} request"))?;
    Ok((version, resp))
}

/// The connection to a group's coordinator.
async fn coordinator(client: &Client, group: &str) -> anyhow::Result<Arc<Connection>> {
    let conn = client.any_connection().await?;
    let (version, resp) = call(&conn, ApiKey::FindCoordinator, |v| {
        let req = FindCoordinatorRequest::default().with_key_type(0);
        if v >= 4 {
            RequestKind::FindCoordinator(req.with_coordinator_keys(vec![s(group)]))
        } else {
            RequestKind::FindCoordinator(req.with_key(s(group)))
        }
    })
    .await?;
    let ResponseKind::FindCoordinator(r) = resp else {
        bail!("unexpected FindCoordinator answer")
    };
    let node = if version >= 4 {
        let c = r
            .coordinators
            .first()
            .context("FindCoordinator answered no coordinator")?;
        check(c.error_code, format!("finding the coordinator of {group}"))?;
        c.node_id.0
    } else {
        check(r.error_code, format!("finding the coordinator of {group}"))?;
        r.node_id.0
    };
    client.metadata(Some(&[])).await?;
    Ok(client.connection(node).await?)
}

pub async fn run(bootstrap: &str, cmd: GroupsCommand) -> anyhow::Result<()> {
    let client = Client::connect(bootstrap, client_config())
        .await
        .with_context(|| format!("connecting to {bootstrap}"))?;
    match cmd {
        GroupsCommand::List => list(&client).await,
        GroupsCommand::Describe { group } => describe(&client, &group).await,
        GroupsCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_datetime,
            shift_by,
            execute,
        } => {
            let target = if to_earliest {
                Target::Earliest
            } else if to_latest {
                Target::Latest
            } else if let Some(ts) = to_datetime {
                Target::Time(parse_datetime(&ts)?)
            } else {
                Target::Shift(shift_by.unwrap_or(0))
            };
            reset_offsets(&client, &group, &topic, target, execute).await
        }
        GroupsCommand::Delete { groups } => delete(&client, &groups).await,
    }
}

async fn list(client: &Client) -> anyhow::Result<()> {
    let md = client.metadata(Some(&[])).await?;
    let mut rows = Vec::new();
    for node in md.brokers.keys() {
        let conn = client.connection(*node).await?;
        let (_, resp) = call(&conn, ApiKey::ListGroups, |_| {
            RequestKind::ListGroups(ListGroupsRequest::default())
        })
        .await?;
        let ResponseKind::ListGroups(r) = resp else {
            bail!("unexpected ListGroups answer")
        };
        check(r.error_code, "listing groups")?;
        for g in r.groups {
            let state = if g.group_state.is_empty() {
                "-".to_string()
            } else {
                g.group_state.to_string()
            };
            rows.push((g.group_id.0.to_string(), state, g.protocol_type.to_string()));
        }
    }
    rows.sort();
    let mut out = format!("{:<40} {:<20} {}\n", "GROUP", "STATE", "PROTOCOL-TYPE");
    for (g, st, pt) in rows {
        out.push_str(&format!("{g:<40} {st:<20} {pt}\n"));
    }
    crate::cli::write_stdout(out.as_bytes())?;
    Ok(())
}

async fn describe_group(
    conn: &Connection,
    group: &str,
) -> anyhow::Result<describe_groups_response::DescribedGroup> {
    let (_, resp) = call(conn, ApiKey::DescribeGroups, |_| {
        RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
        )
    })
    .await?;
    let ResponseKind::DescribeGroups(r) = resp else {
        bail!("unexpected DescribeGroups answer")
    };
    let g = r
        .groups
        .into_iter()
        .next()
        .context("DescribeGroups answered no group")?;
    check(g.error_code, format!("describing group {group}"))?;
    Ok(g)
}

/// Committed offsets of a group: (topic, partition) -> (offset, metadata).
async fn committed(
    conn: &Connection,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), (i64, String)>> {
    let (version, resp) = call(conn, ApiKey::OffsetFetch, |v| {
        let req = if v >= 8 {
            OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(group)))
                    .with_topics(None),
            ])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_topics(None)
        };
        RequestKind::OffsetFetch(req)
    })
    .await?;
    let ResponseKind::OffsetFetch(r) = resp else {
        bail!("unexpected OffsetFetch answer")
    };
    let mut out = BTreeMap::new();
    if version >= 8 {
        for g in r.groups {
            check(g.error_code, format!("fetching offsets of {group}"))?;
            for t in g.topics {
                for p in t.partitions {
                    if p.committed_offset >= 0 {
                        out.insert(
                            (t.name.0.to_string(), p.partition_index),
                            (
                                p.committed_offset,
                                p.metadata.map(|m| m.to_string()).unwrap_or_default(),
                            ),
                        );
                    }
                }
            }
        }
    } else {
        check(r.error_code, format!("fetching offsets of {group}"))?;
        for t in r.topics {
            for p in t.partitions {
                if p.committed_offset >= 0 {
                    out.insert(
                        (t.name.0.to_string(), p.partition_index),
                        (
                            p.committed_offset,
                            p.metadata.map(|m| m.to_string()).unwrap_or_default(),
                        ),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Partitions of a consumer-protocol assignment.
fn decode_assignment(mut b: Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, version).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect(),
    )
}

async fn describe(client: &Client, group: &str) -> anyhow::Result<()> {
    let conn = coordinator(client, group).await?;
    let g = describe_group(&conn, group).await?;
    let consumer = g.protocol_type.as_str() == "consumer";
    let mut out = format!(
        "Group {group}: state {}, protocol type {}, protocol {}, {} member(s)\n",
        g.group_state.as_str(),
        if g.protocol_type.is_empty() {
            "-"
        } else {
            g.protocol_type.as_str()
        },
        if g.protocol_data.is_empty() {
            "-"
        } else {
            g.protocol_data.as_str()
        },
        g.members.len()
    );
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    if !g.members.is_empty() {
        out.push_str(&format!(
            "\n{:<50} {:<16} {:<20} {:<16} {}\n",
            "MEMBER", "INSTANCE", "CLIENT-ID", "HOST", "ASSIGNMENT"
        ));
        for m in &g.members {
            let assignment = if consumer {
                decode_assignment(m.member_assignment.clone())
            } else {
                None
            };
            let text = match &assignment {
                Some(parts) if !parts.is_empty() => parts
                    .iter()
                    .map(|(t, ps)| {
                        format!(
                            "{t}:{}",
                            ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(_) => "-".into(),
                None => format!("{} bytes", m.member_assignment.len()),
            };
            for (t, ps) in assignment.unwrap_or_default() {
                for p in ps {
                    owner.insert((t.clone(), p), m.member_id.to_string());
                }
            }
            out.push_str(&format!(
                "{:<50} {:<16} {:<20} {:<16} {}\n",
                m.member_id.as_str(),
                m.group_instance_id.as_deref().unwrap_or("-"),
                m.client_id.as_str(),
                m.client_host.as_str(),
                text
            ));
        }
    }
    let offsets = committed(&conn, group).await?;
    let mut partitions: Vec<(String, i32)> = offsets.keys().cloned().collect();
    partitions.extend(owner.keys().cloned());
    partitions.sort();
    partitions.dedup();
    if !partitions.is_empty() {
        out.push_str(&format!(
            "\n{:<30} {:>9} {:>16} {:>16} {:>10}  {:<24} {}\n",
            "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "METADATA", "OWNER"
        ));
        for (t, p) in partitions {
            let end = client
                .list_offset(&t, p, OffsetSpec::Latest)
                .await
                .map(|(o, _)| o)
                .ok();
            let c = offsets.get(&(t.clone(), p));
            let lag = match (c, end) {
                (Some((o, _)), Some(e)) => (e - o).max(0).to_string(),
                (None, Some(e)) => e.to_string(),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "{:<30} {:>9} {:>16} {:>16} {:>10}  {:<24} {}\n",
                t,
                p,
                c.map_or("-".to_string(), |(o, _)| o.to_string()),
                end.map_or("-".to_string(), |e| e.to_string()),
                lag,
                c.map_or("", |(_, m)| m.as_str()),
                owner.get(&(t.clone(), p)).map_or("-", String::as_str)
            ));
        }
    }
    crate::cli::write_stdout(out.as_bytes())?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Earliest,
    Latest,
    Time(i64),
    Shift(i64),
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm][Z]` (UTC), or milliseconds since the epoch.
fn parse_datetime(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad =
        || anyhow::anyhow!("{s:?} is not YYYY-MM-DDTHH:MM:SS[.mmm] (UTC) or epoch milliseconds");
    let t = s.trim_end_matches('Z');
    let (date, time) = t
        .split_once('T')
        .or_else(|| t.split_once(' '))
        .ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (hms, millis) = match time.split_once('.') {
        Some((hms, frac)) => {
            let frac: String = frac.chars().chain("000".chars()).take(3).collect();
            (hms, frac.parse::<i64>().map_err(|_| bad())?)
        }
        None => (time, 0),
    };
    let h: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3
        || h.len() != 3
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || h[0] > 23
        || h[1] > 59
        || h[2] > 60
    {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Ok(((days * 24 + h[0]) * 60 + h[1]) * 60_000 + h[2] * 1000 + millis)
}

async fn reset_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    target: Target,
    execute: bool,
) -> anyhow::Result<()> {
    let conn = coordinator(client, group).await?;
    let g = describe_group(&conn, group).await?;
    if !matches!(g.group_state.as_str(), "Empty" | "Dead") {
        bail!(
            "group {group} is {} with {} member(s); stop its consumers first",
            g.group_state.as_str(),
            g.members.len()
        );
    }
    let partitions = client.partition_count(topic).await? as i32;
    let current = committed(&conn, group).await?;
    let mut plan = Vec::new();
    for p in 0..partitions {
        let earliest = client.list_offset(topic, p, OffsetSpec::Earliest).await?.0;
        let latest = client.list_offset(topic, p, OffsetSpec::Latest).await?.0;
        let now = current.get(&(topic.to_string(), p)).map(|(o, _)| *o);
        let new = match target {
            Target::Earliest => earliest,
            Target::Latest => latest,
            Target::Time(ts) => match client
                .list_offset(topic, p, OffsetSpec::Timestamp(ts))
                .await?
                .0
            {
                o if o < 0 => latest,
                o => o,
            },
            Target::Shift(n) => now
                .unwrap_or(earliest)
                .saturating_add(n)
                .clamp(earliest, latest),
        };
        plan.push((p, now, new));
    }
    let mut out = format!(
        "{:<30} {:>9} {:>16} {:>16}\n",
        "TOPIC", "PARTITION", "CURRENT", "NEW"
    );
    for (p, now, new) in &plan {
        out.push_str(&format!(
            "{topic:<30} {p:>9} {:>16} {new:>16}\n",
            now.map_or("-".to_string(), |o| o.to_string())
        ));
    }
    if !execute {
        out.push_str("\n(dry run: add --execute to commit these offsets)\n");
        crate::cli::write_stdout(out.as_bytes())?;
        return Ok(());
    }
    let (_, resp) = call(&conn, ApiKey::OffsetCommit, |_| {
        let partitions = plan
            .iter()
            .map(|(p, _, new)| {
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*new)
            })
            .collect();
        RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id_or_member_epoch(-1)
                .with_member_id(s(""))
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(partitions),
                ]),
        )
    })
    .await?;
    let ResponseKind::OffsetCommit(r) = resp else {
        bail!("unexpected OffsetCommit answer")
    };
    for t in &r.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                format!("committing {topic}-{} for {group}", p.partition_index),
            )?;
        }
    }
    out.push_str("\nCommitted.\n");
    crate::cli::write_stdout(out.as_bytes())?;
    Ok(())
}

async fn delete(client: &Client, groups: &[String]) -> anyhow::Result<()> {
    let mut failed = 0;
    for group in groups {
        let conn = coordinator(client, group).await?;
        let (_, resp) = call(&conn, ApiKey::DeleteGroups, |_| {
            RequestKind::DeleteGroups(
                DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
            )
        })
        .await?;
        let ResponseKind::DeleteGroups(r) = resp else {
            bail!("unexpected DeleteGroups answer")
        };
        for res in r.results {
            match check(
                res.error_code,
                format!("deleting group {}", res.group_id.0.as_str()),
            ) {
                Ok(()) => println!("Deleted group {}.", res.group_id.0.as_str()),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} group(s) not deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("0").unwrap(), 0);
        assert_eq!(parse_datetime("1970-01-01T00:00:00").unwrap(), 0);
        assert_eq!(
            parse_datetime("2024-02-29T12:34:56.789Z").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(
            parse_datetime("2000-01-01 00:00:01").unwrap(),
            946_684_801_000
        );
        assert!(parse_datetime("yesterday").is_err());
        assert!(parse_datetime("2024-13-01T00:00:00").is_err());
    }
}
