//! DeleteRecords: raises a partition's log start offset (the low watermark) to
//! the requested offset and drops the segments wholly below it. -1 means the
//! high watermark; an offset beyond it is OFFSET_OUT_OF_RANGE.

use super::RequestContext;
use crate::partition::storage_error;
use crate::state::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

const HIGH_WATERMARK: i64 = -1;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let result = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
                    match delete_one(broker, &topic.name.0, p.partition_index, p.offset) {
                        Ok(low_watermark) => result.with_low_watermark(low_watermark),
                        Err((code, message)) => {
                            tracing::debug!(topic = %topic.name.0, partition = p.partition_index, ?code, %message, "DeleteRecords refused");
                            result.with_error_code(code.code()).with_low_watermark(-1)
                        }
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

fn delete_one(
    broker: &Broker,
    topic: &str,
    index: i32,
    offset: i64,
) -> Result<i64, (ResponseError, String)> {
    super::delete_topics::refuse_internal(topic, "records cannot be deleted")?;
    let partition = broker.partition(topic, index).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("this server does not host {topic}-{index}"),
        )
    })?;
    let high_watermark = partition.high_watermark();
    let offset = if offset == HIGH_WATERMARK {
        high_watermark
    } else {
        offset
    };
    if offset < 0 || offset > high_watermark {
        return Err((
            ResponseError::OffsetOutOfRange,
            format!("offset {offset} is outside 0..={high_watermark} (the high watermark) of {topic}-{index}"),
        ));
    }
    let low_watermark = partition.log.delete_before(offset).map_err(storage_error)?;
    tracing::info!(topic, partition = index, low_watermark, "deleted records");
    Ok(low_watermark)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, append, assert_encodes, broker, create, ctx, reopen,
    };
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::{ApiKey, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn topic(name: &str, partitions: &[(i32, i64)]) -> DeleteRecordsTopic {
        DeleteRecordsTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_partitions(
                partitions
                    .iter()
                    .map(|(i, o)| {
                        DeleteRecordsPartition::default()
                            .with_partition_index(*i)
                            .with_offset(*o)
                    })
                    .collect(),
            )
    }

    fn run(b: &Broker, version: i16, topics: Vec<DeleteRecordsTopic>) -> Vec<(i32, i64, i16)> {
        let req = DeleteRecordsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(1000);
        let resp = handle(b, &ctx(ApiKey::DeleteRecords, version), req);
        assert_encodes(
            ApiKey::DeleteRecords,
            version,
            ResponseKind::DeleteRecords(resp.clone()),
        );
        resp.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.low_watermark, p.error_code))
            })
            .collect()
    }

    #[test]
    fn raises_the_low_watermark_in_every_version() {
        for version in advertised_versions(ApiKey::DeleteRecords) {
            let b = broker();
            create(&b, "t", 3);
            append(&b, "t", 0, 10);
            append(&b, "t", 1, 4);
            let got = run(
                &b,
                version,
                vec![
                    topic("t", &[(0, 6), (1, -1), (2, 1), (7, 0)]),
                    topic("missing", &[(0, 0)]),
                ],
            );
            let out_of_range = ResponseError::OffsetOutOfRange.code();
            let unknown = ResponseError::UnknownTopicOrPartition.code();
            assert_eq!(
                got,
                vec![
                    (0, 6, 0),
                    (1, 4, 0),
                    (2, -1, out_of_range),
                    (7, -1, unknown),
                    (0, -1, unknown)
                ],
                "v{version}"
            );
            assert_eq!(b.partition("t", 0).unwrap().log.log_start_offset(), 6);
            // Lower than the current low watermark: nothing changes.
            assert_eq!(
                run(&b, version, vec![topic("t", &[(0, 2), (0, -5)])]),
                vec![(0, 6, 0), (0, -1, out_of_range)]
            );
            let b = reopen(b);
            assert_eq!(b.partition("t", 0).unwrap().log.log_start_offset(), 6);
            assert_eq!(b.partition("t", 1).unwrap().log.log_start_offset(), 4);
        }
    }
}
