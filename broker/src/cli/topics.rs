//! `weir topics`: create, list, describe, alter and delete topics over the Kafka protocol.

use crate::cli::{client_config, parse_config};
use crate::client::{AlterOp, Client, OffsetSpec};
use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions (the broker's default if not given).
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
        /// Replication factor (the broker's default if not given).
        #[arg(long, short = 'r')]
        replication_factor: Option<i16>,
        /// Topic config as KEY=VALUE (repeatable), e.g. --config retention.ms=60000.
        #[arg(long = "config", short = 'c', value_parser = parse_config)]
        configs: Vec<(String, String)>,
        /// Only validate the request; create nothing.
        #[arg(long)]
        validate_only: bool,
    },
    /// List topics, one per line.
    List {
        /// Also list internal topics (such as __consumer_offsets).
        #[arg(long)]
        internal: bool,
    },
    /// Describe a topic: partitions with leaders, replicas, ISR and offsets, and its configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change topic configs (IncrementalAlterConfigs SET; --delete-config to remove).
    Alter {
        /// Topic name.
        name: String,
        /// Config to set as KEY=VALUE (repeatable).
        #[arg(long = "config", short = 'c', value_parser = parse_config)]
        configs: Vec<(String, String)>,
        /// Config to reset to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
        /// Grow the topic to this many partitions (CreatePartitions).
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Delete a topic.
    Delete {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(bootstrap: &str, cmd: TopicsCommand) -> anyhow::Result<()> {
    let client = Client::connect(bootstrap, client_config())
        .await
        .with_context(|| format!("connecting to {bootstrap}"))?;
    match cmd {
        TopicsCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            validate_only,
        } => {
            client
                .create_topic(
                    &name,
                    partitions.unwrap_or(-1),
                    replication_factor.unwrap_or(-1),
                    &configs,
                    validate_only,
                )
                .await?;
            if validate_only {
                println!("Topic {name} would be created (validate only).");
            } else {
                println!("Created topic {name}.");
            }
        }
        TopicsCommand::List { internal } => {
            let md = client.metadata(None).await?;
            let mut names: Vec<&str> = md
                .topics
                .iter()
                .filter(|t| internal || !t.is_internal)
                .map(|t| t.name.as_str())
                .collect();
            names.sort_unstable();
            let mut out = String::new();
            for n in names {
                out.push_str(n);
                out.push('\n');
            }
            crate::cli::write_stdout(out.as_bytes())?;
        }
        TopicsCommand::Describe { name } => describe(&client, &name).await?,
        TopicsCommand::Alter {
            name,
            configs,
            delete_configs,
            partitions,
        } => {
            if configs.is_empty() && delete_configs.is_empty() && partitions.is_none() {
                anyhow::bail!("nothing to alter: give --config KEY=VALUE, --delete-config KEY or --partitions N");
            }
            if let Some(n) = partitions {
                client.create_partitions(&name, n, false).await?;
                println!("Topic {name} now has {n} partitions.");
            }
            if !configs.is_empty() || !delete_configs.is_empty() {
                let mut ops: Vec<(String, AlterOp, Option<String>)> = configs
                    .into_iter()
                    .map(|(k, v)| (k, AlterOp::Set, Some(v)))
                    .collect();
                ops.extend(
                    delete_configs
                        .into_iter()
                        .map(|k| (k, AlterOp::Delete, None)),
                );
                client
                    .incremental_alter_topic_configs(&name, &ops, false)
                    .await?;
                println!("Altered configs of topic {name}.");
            }
        }
        TopicsCommand::Delete { names } => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut failed = 0;
            for (n, r) in client.delete_topics(&refs).await? {
                match r {
                    Ok(()) => println!("Deleted topic {n}."),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} topics could not be deleted", names.len());
            }
        }
    }
    Ok(())
}

async fn describe(client: &Client, name: &str) -> anyhow::Result<()> {
    let md = client.metadata(Some(&[name])).await?;
    let topic = md
        .topics
        .into_iter()
        .find(|t| t.name == name)
        .with_context(|| format!("the broker did not describe topic {name}"))?;
    if let Some(e) = topic.error() {
        return Err(e.into());
    }
    let specs: Vec<_> = topic
        .partitions
        .keys()
        .flat_map(|&p| [(p, OffsetSpec::Earliest), (p, OffsetSpec::Latest)])
        .collect();
    let offsets = client.list_offsets(name, &specs).await?;
    let offset_of = |p: i32, spec: OffsetSpec| -> String {
        specs
            .iter()
            .zip(&offsets)
            .find(|((sp, ss), _)| *sp == p && *ss == spec)
            .map(|(_, (_, r))| match r {
                Ok((o, _)) => o.to_string(),
                Err(e) => format!(
                    "?({})",
                    e.kafka_code()
                        .map(crate::client::error_name)
                        .unwrap_or_else(|| e.to_string())
                ),
            })
            .unwrap_or_else(|| "?".into())
    };
    let rf = topic
        .partitions
        .values()
        .map(|p| p.replicas.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let id = if topic.id.is_nil() {
        String::new()
    } else {
        format!("\tTopicId: {}", topic.id)
    };
    out.push_str(&format!(
        "Topic: {name}{id}\tPartitionCount: {}\tReplicationFactor: {rf}\n",
        topic.partitions.len()
    ));
    let list = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    for p in topic.partitions.values() {
        out.push_str(&format!(
            "\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tLogStartOffset: {}\tLogEndOffset: {}",
            p.partition,
            if p.leader < 0 { "none".to_string() } else { p.leader.to_string() },
            list(&p.replicas),
            list(&p.isr),
            offset_of(p.partition, OffsetSpec::Earliest),
            offset_of(p.partition, OffsetSpec::Latest),
        ));
        if !p.offline.is_empty() {
            out.push_str(&format!("\tOffline: {}", list(&p.offline)));
        }
        if p.error_code != 0 {
            out.push_str(&format!(
                "\tError: {}",
                crate::client::error_name(p.error_code)
            ));
        }
        out.push('\n');
    }
    match client.describe_topic_configs(name).await {
        Ok(mut configs) => {
            configs.sort_by(|a, b| a.name.cmp(&b.name));
            out.push_str("Configs:\n");
            for c in configs {
                let value = if c.is_sensitive {
                    "(sensitive)".to_string()
                } else {
                    c.value.clone().unwrap_or_default()
                };
                out.push_str(&format!("\t{}={}\t({})\n", c.name, value, c.source_name()));
            }
        }
        Err(e) => out.push_str(&format!("Configs: unavailable: {e}\n")),
    }
    crate::cli::write_stdout(out.as_bytes())?;
    Ok(())
}
