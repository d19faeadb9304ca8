//! InitProducerId: hands out producer ids for idempotent producers, and bumps
//! the epoch of an existing one (KIP-360).

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let fail = |e: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.is_some() {
        let max = broker
            .config
            .i64("transaction.max.timeout.ms")
            .unwrap_or(900_000);
        if req.transaction_timeout_ms <= 0 || i64::from(req.transaction_timeout_ms) > max {
            return fail(ResponseError::InvalidTransactionTimeout);
        }
        // Transactions are a later milestone; say so with a Kafka error the
        // client reports, rather than half-working.
        tracing::warn!(
            "a transactional producer asked for an id; transactions are not supported yet"
        );
        return fail(ResponseError::TransactionalIdAuthorizationFailed);
    }
    // An idempotent producer that already has an id asks for an epoch bump.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return InitProducerIdResponse::default()
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match broker.meta.allocate_producer_id(broker.node_id()) {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "allocating a producer id");
            fail(ResponseError::KafkaStorageError)
        }
    }
}
