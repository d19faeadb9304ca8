//! `weir serve`: opens the broker state, binds the Kafka and HTTP listeners,
//! and shuts down cleanly on SIGTERM or Ctrl-C.

use crate::config::{BrokerConfig, ServeArgs};
use crate::state::Broker;
use anyhow::Context;
use tokio::net::TcpListener;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = BrokerConfig::load(&args)?;
    let kafka_listen = config.kafka_listen;
    let http_listen = config.http_listen;
    let broker = tokio::task::block_in_place(|| Broker::open(config))?;
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
    let cep = tokio::task::block_in_place(|| crate::cep::Cep::open(broker.clone()))
        .context("starting CEP")?;
    cep.start_stage();
    let http_task = tokio::spawn({
        let router = crate::http::router(broker.clone())
            .merge(crate::ingest::router(ingest.clone()))
            .merge(crate::cep::router(cep.clone()));
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
    cep.stop().await;
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
