//! `weir cluster info`: the cluster as a Kafka client sees it (any broker:
//! Weir, Kafka or Redpanda): its id, controller, brokers, and how partition
//! leadership and replicas are spread over the brokers.
//!
//! `cluster add-node` / `remove-node` change membership (AddRaftVoter /
//! RemoveRaftVoter; removal first moves the node's replicas elsewhere with
//! AlterPartitionReassignments); `cluster reassign` moves one partition or
//! changes its replication factor, `cluster reassignments` lists those running.

use crate::cli::client_config;
use crate::client::Client;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, controller, brokers, and leaders/replicas per broker.
    Info,
    /// Admit a node started with `weir serve --join` (its id and Raft address).
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: i32,
        /// The new node's Raft listener, HOST:PORT.
        #[arg(long)]
        raft: String,
    },
    /// Move every replica off a node, then take it out of the cluster.
    RemoveNode {
        /// The node's id.
        id: i32,
    },
    /// Move a partition to other replicas, or change its replication factor.
    Reassign {
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new replicas, e.g. `1,2,3` (the first is the preferred leader).
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the partition's reassignment instead.
        #[arg(long)]
        cancel: bool,
        /// Return at once instead of waiting for the move to finish.
        #[arg(long)]
        no_wait: bool,
    },
    /// Reassignments in progress.
    Reassignments,
}

/// Waits until no reassignment is running, with a progress bar on a terminal.
async fn wait_reassignments(client: &Client, total: u64) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "moving replicas [{elapsed_precise}] {wide_bar} {pos}/{len}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    loop {
        let running = client.list_reassignments().await?.len() as u64;
        if let Some(b) = &bar {
            b.set_position(total.saturating_sub(running));
        }
        if running == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{running} reassignment(s) still running after an hour");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

pub async fn run(bootstrap: &str, cmd: ClusterCommand) -> anyhow::Result<()> {
    let client = Client::connect(bootstrap, client_config()).await?;
    match cmd {
        ClusterCommand::Info => {
            let md = client.metadata(None).await?;
            let mut leaders: BTreeMap<i32, usize> = BTreeMap::new();
            let mut replicas: BTreeMap<i32, usize> = BTreeMap::new();
            let mut leaderless = 0;
            let mut partitions = 0;
            for t in &md.topics {
                for p in t.partitions.values() {
                    partitions += 1;
                    if p.leader >= 0 {
                        *leaders.entry(p.leader).or_default() += 1;
                    } else {
                        leaderless += 1;
                    }
                    for r in &p.replicas {
                        *replicas.entry(*r).or_default() += 1;
                    }
                }
            }
            let mut out = String::new();
            writeln!(
                out,
                "Cluster: {}\tController: {}\tTopics: {}\tPartitions: {partitions}\tWithout leader: {leaderless}",
                md.cluster_id.as_deref().unwrap_or("-"),
                md.controller_id,
                md.topics.len()
            )?;
            for (id, b) in &md.brokers {
                writeln!(
                    out,
                    "\tBroker: {id}\tAddress: {}\tLeader of: {}\tReplicas: {}",
                    b.addr(),
                    leaders.get(id).copied().unwrap_or(0),
                    replicas.get(id).copied().unwrap_or(0)
                )?;
            }
            crate::cli::write_stdout(out.as_bytes())?;
            Ok(())
        }
        ClusterCommand::AddNode { id, raft } => {
            let (host, port) = raft
                .rsplit_once(':')
                .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
                .ok_or_else(|| anyhow::anyhow!("--raft must be HOST:PORT, got {raft}"))?;
            client.add_raft_voter(id, &host, port).await?;
            // The node shows up once the others connected to it and it answered.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let md = client.metadata(Some(&[])).await?;
                if md.brokers.contains_key(&id) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("node {id} was admitted but has not connected within 60 s: is it running with --join?");
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            crate::cli::write_stdout(
                format!("Node {id} joined; new topics place replicas on it (move existing ones with `weir cluster reassign`)\n").as_bytes(),
            )?;
            Ok(())
        }
        ClusterCommand::RemoveNode { id } => {
            let md = client.metadata(None).await?;
            let mut load: BTreeMap<i32, usize> = md
                .brokers
                .keys()
                .filter(|&&b| b != id)
                .map(|&b| (b, 0))
                .collect();
            for t in &md.topics {
                for p in t.partitions.values() {
                    for r in &p.replicas {
                        if let Some(n) = load.get_mut(r) {
                            *n += 1;
                        }
                    }
                }
            }
            let mut moves = Vec::new();
            let mut shrunk = Vec::new();
            for t in &md.topics {
                for p in t.partitions.values() {
                    if !p.replicas.contains(&id) {
                        continue;
                    }
                    // The least loaded node not holding the partition replaces it.
                    let candidate = load
                        .iter()
                        .filter(|(b, _)| !p.replicas.contains(b))
                        .min_by_key(|(b, n)| (**n, **b))
                        .map(|(b, _)| *b);
                    let target: Vec<i32> = match candidate {
                        Some(c) => {
                            *load.entry(c).or_default() += 1;
                            p.replicas
                                .iter()
                                .map(|&r| if r == id { c } else { r })
                                .collect()
                        }
                        None => {
                            shrunk.push(format!("{}-{}", t.name, p.partition));
                            p.replicas.iter().copied().filter(|&r| r != id).collect()
                        }
                    };
                    if target.is_empty() {
                        anyhow::bail!(
                            "{}-{} has no replica but node {id}: nowhere to move it",
                            t.name,
                            p.partition
                        );
                    }
                    moves.push((t.name.clone(), p.partition, Some(target)));
                }
            }
            if !shrunk.is_empty() {
                eprintln!(
                    "warning: no other node can take a replica of {} partition(s) (e.g. {}); their replication factor drops by one",
                    shrunk.len(),
                    shrunk[0]
                );
            }
            let total = moves.len() as u64;
            for chunk in moves.chunks(500) {
                for (topic, partition, result) in client.alter_reassignments(chunk).await? {
                    result.map_err(|e| anyhow::anyhow!("moving {topic}-{partition}: {e}"))?;
                }
            }
            wait_reassignments(&client, total).await?;
            client.remove_raft_voter(id).await?;
            crate::cli::write_stdout(
                format!("Moved {total} replica(s) off node {id} and removed it from the cluster; it can be stopped\n").as_bytes(),
            )?;
            Ok(())
        }
        ClusterCommand::Reassign {
            topic,
            partition,
            replicas,
            cancel,
            no_wait,
        } => {
            let target = if cancel { None } else { Some(replicas) };
            for (t, p, result) in client
                .alter_reassignments(&[(topic.clone(), partition, target)])
                .await?
            {
                result.map_err(|e| anyhow::anyhow!("{t}-{p}: {e}"))?;
            }
            if !no_wait {
                wait_reassignments(&client, 1).await?;
            }
            Ok(())
        }
        ClusterCommand::Reassignments => {
            let mut out = String::new();
            for (t, p, replicas, adding, removing) in client.list_reassignments().await? {
                writeln!(
                    out,
                    "{t}\t{p}\treplicas: {replicas:?}\tadding: {adding:?}\tremoving: {removing:?}"
                )?;
            }
            crate::cli::write_stdout(out.as_bytes())?;
            Ok(())
        }
    }
}
