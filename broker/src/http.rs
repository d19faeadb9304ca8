//! The HTTP listener: `/health` and Prometheus `/metrics` (CEP and ingest APIs
//! join it later).

use crate::state::Broker;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(broker)
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let mut extra = Vec::new();
    for ((topic, partition), log) in broker.logs.logs() {
        let labels = format!("topic=\"{topic}\",partition=\"{partition}\"");
        extra.push((
            "weir_log_end_offset".to_string(),
            labels.clone(),
            log.log_end_offset().max(0) as u64,
        ));
        extra.push((
            "weir_log_size_bytes".to_string(),
            labels.clone(),
            log.size_bytes(),
        ));
        extra.push((
            "weir_log_corrupt_batches".to_string(),
            labels,
            log.corrupt_batches(),
        ));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        broker.metrics.render(&extra),
    )
}
