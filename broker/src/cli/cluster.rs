//! `weir cluster info`: the cluster as a Kafka client sees it (any broker:
//! Weir, Kafka or Redpanda): its id, controller, brokers, and how partition
//! leadership and replicas are spread over the brokers.

use crate::cli::client_config;
use crate::client::Client;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, controller, brokers, and leaders/replicas per broker.
    Info,
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
    }
}
