//! `weir serve`: opens the broker state, binds the Kafka and HTTP listeners,
//! and shuts down cleanly on SIGTERM or Ctrl-C.

use crate::config::{BrokerConfig, ServeArgs};
use crate::state::Broker;
use anyhow::Context;
use tokio::net::TcpListener;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = BrokerConfig::load(&args)?;
    let kafka_listen = config.kafka_listen;
    let http_listen = config.http_listen;
    // A single node is a one-voter cluster: the same replication code path,
    // with no listener and no peer to talk to.
    let listen = if config.peers.is_empty() {
        config.peers.insert(config.node_id as u64, String::new());
        None
    } else {
        config.raft_listen
    };
    let raft = match listen {
        listen if !config.peers.is_empty() => {
            // The metadata group's founding voters: recorded in its state once
            // it exists; a founding node's peers; a joining node learns them
            // from the running nodes' hellos below.
            let meta_dir = config
                .data_dir
                .join(format!("{}-0", crate::metadata::METADATA_TOPIC));
            let founders =
                crate::replication::RaftLog::founders_in(&meta_dir).unwrap_or_else(|| {
                    if config.join {
                        Vec::new()
                    } else {
                        config.peers.keys().copied().collect()
                    }
                });
            let me = crate::replication::transport::PeerInfo {
                node_id: config.node_id as u64,
                kafka_host: config.advertised_host.clone(),
                kafka_port: config.advertised_port,
                founders: founders.clone(),
                http: if config.http_listen.ip().is_unspecified() {
                    format!("{}:{}", config.advertised_host, config.http_listen.port())
                } else {
                    config.http_listen.to_string()
                },
            };
            let peers = config.peers.iter().map(|(k, v)| (*k, v.clone())).collect();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let transport =
                crate::replication::transport::Transport::start(me, listen, &peers, tx).await?;
            let founders = if founders.is_empty() {
                tracing::info!("joining: waiting for a running node to describe the cluster");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
                loop {
                    if let Some(f) = transport.founders_from_peers() {
                        break f;
                    }
                    if std::time::Instant::now() > deadline {
                        anyhow::bail!(
                            "no running node of the cluster answered within 300 s; check --peers"
                        );
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            } else {
                founders
            };
            config.founders = Some(founders);
            let node = crate::replication::node::RaftNode::new(config.node_id as u64, transport);
            match listen {
                Some(listen) => {
                    tracing::info!(node_id = config.node_id, raft = %listen, voters = config.peers.len(), "cluster mode")
                }
                None => tracing::info!(
                    node_id = config.node_id,
                    "single node (a one-voter cluster)"
                ),
            }
            Some((node, rx))
        }
        _ => None,
    };
    let broker = tokio::task::block_in_place(|| {
        Broker::open_with(config, raft.as_ref().map(|(n, _)| n.clone()))
    })?;
    if let Some((node, inbox)) = raft {
        node.run(inbox);
    }
    let kafka = TcpListener::bind(kafka_listen)
        .await
        .with_context(|| format!("binding the Kafka listener {kafka_listen}"))?;
    let http = TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener {http_listen}"))?;
    tracing::info!(
        node_id = broker.node_id(),
        kafka = %kafka_listen,
        http = %http_listen,
        data_dir = %broker.config.data_dir.display(),
        "weir is serving"
    );

    let ingest = tokio::task::block_in_place(|| crate::ingest::Ingest::start(broker.clone()))
        .context("starting ingest")?;
    if broker.meta_group.is_some() {
        // CEP keeps its definitions in a topic: wait for a controller first.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while broker.controller_id() < 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::info!(controller = broker.controller_id(), "controller elected");
        // Consumer groups live in the replicated __consumer_offsets; a node that
        // loses the race to create it finds it created.
        let mut created = tokio::task::block_in_place(|| broker.ensure_offsets_topic());
        for _ in 0..10 {
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            created = tokio::task::block_in_place(|| broker.ensure_offsets_topic());
        }
        if let Err((code, msg)) = created {
            tracing::error!(
                ?code,
                msg,
                "creating __consumer_offsets failed; groups are unavailable until it exists"
            );
        }
        broker
            .follow_group_coordination()
            .context("following group coordination")?;
        broker
            .follow_reassignments()
            .context("following partition reassignments")?;
    }
    let mut opened = tokio::task::block_in_place(|| crate::cep::CepNode::open(broker.clone()));
    // Cluster mode: every node creates CEP's internal topic at start and all but
    // one lose the race; the topic then exists, so try again.
    for _ in 0..5 {
        if opened.is_ok() || broker.meta_group.is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        opened = tokio::task::block_in_place(|| crate::cep::CepNode::open(broker.clone()));
    }
    let cep = match opened {
        Ok(cep) => {
            cep.start_stage();
            Some(cep)
        }
        Err(e) if broker.meta_group.is_some() => {
            tracing::error!(error = %format!("{e:#}"), "CEP is disabled on this node");
            None
        }
        Err(e) => return Err(e).context("starting CEP"),
    };
    let http_task = tokio::spawn({
        let mut router =
            crate::http::router(broker.clone()).merge(crate::ingest::router(ingest.clone()));
        if let Some(cep) = &cep {
            router = router.merge(crate::cep::router(cep.clone()));
        }
        async move {
            if let Err(e) = axum::serve(http, router).await {
                tracing::error!(error = %e, "HTTP listener failed");
            }
        }
    });
    let accept_broker = broker.clone();
    let accept_task = tokio::spawn(async move {
        loop {
            match kafka.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(crate::connection::run(accept_broker.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    accept_task.abort();
    http_task.abort();
    tokio::task::block_in_place(|| ingest.stop());
    if let Some(cep) = cep {
        cep.stop().await;
    }
    tokio::task::block_in_place(|| broker.shutdown()).context("clean shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
