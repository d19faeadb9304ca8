//! DescribeLogDirs: one log dir (the data dir) holding every partition, each
//! with its size on disk; no replica movement, so offset_lag is 0 and there is
//! no future replica. v4 adds the file system's total and usable bytes.

use super::RequestContext;
use crate::state::Broker;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::path::Path;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let version = ctx.version();
    // (topic, partitions) to describe; null means everything.
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        None => broker
            .meta
            .topics()
            .into_iter()
            .map(|t| (t.name, (0..t.partitions).collect()))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .filter_map(|(name, indexes)| {
            // Partitions this broker does not host are left out, as Kafka does.
            let partitions: Vec<DescribeLogDirsPartition> = indexes
                .into_iter()
                .filter_map(|index| {
                    let partition = broker.partition(&name, index)?;
                    Some(
                        DescribeLogDirsPartition::default()
                            .with_partition_index(index)
                            .with_partition_size(
                                i64::try_from(partition.log.size_bytes()).unwrap_or(i64::MAX),
                            )
                            .with_offset_lag(0)
                            .with_is_future_key(false),
                    )
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(partitions)
            })
        })
        .collect();
    let data_dir = &broker.config.data_dir;
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(dir.display().to_string()))
        .with_topics(topics);
    // total_bytes and usable_bytes exist from v4.
    if version >= 4 {
        let (total, usable) = disk_space(&dir).unwrap_or((-1, -1));
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// (total, available to unprivileged users) bytes of the file system holding `dir`.
fn disk_space(dir: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable
    // statvfs that the call fills in; both outlive the call.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        stat
    };
    let block = stat.f_frsize as u128;
    let clamp = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
    Some((
        clamp(stat.f_blocks as u128 * block),
        clamp(stat.f_bavail as u128 * block),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, append, assert_encodes, broker, create, ctx,
    };
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    #[test]
    fn one_dir_with_every_partition_in_every_version() {
        for version in advertised_versions(ApiKey::DescribeLogDirs) {
            let b = broker();
            create(&b, "a", 2);
            create(&b, "b", 1);
            append(&b, "a", 1, 3);
            let expected_size = b.partition("a", 1).unwrap().log.size_bytes() as i64;
            assert!(expected_size > 0);

            let resp = handle(
                &b,
                &ctx(ApiKey::DescribeLogDirs, version),
                DescribeLogDirsRequest::default().with_topics(None),
            );
            assert_encodes(
                ApiKey::DescribeLogDirs,
                version,
                ResponseKind::DescribeLogDirs(resp.clone()),
            );
            assert_eq!(resp.error_code, 0);
            assert_eq!(resp.results.len(), 1);
            let dir = &resp.results[0];
            assert_eq!(dir.error_code, 0);
            assert_eq!(
                dir.log_dir.as_str(),
                std::fs::canonicalize(b.dir.path())
                    .unwrap()
                    .display()
                    .to_string()
            );
            // The group coordinator's internal topic may be there too.
            let names: Vec<&str> = dir
                .topics
                .iter()
                .map(|t| t.name.0.as_str())
                .filter(|n| !n.starts_with("__"))
                .collect();
            assert_eq!(names, vec!["a", "b"]);
            let a = dir
                .topics
                .iter()
                .find(|t| t.name.0.as_str() == "a")
                .unwrap();
            let a1 = &a.partitions[1];
            assert_eq!(
                (
                    a1.partition_index,
                    a1.partition_size,
                    a1.offset_lag,
                    a1.is_future_key
                ),
                (1, expected_size, 0, false)
            );
            if version >= 4 {
                assert!(
                    dir.total_bytes > 0
                        && dir.usable_bytes >= 0
                        && dir.usable_bytes <= dir.total_bytes
                );
            } else {
                assert_eq!((dir.total_bytes, dir.usable_bytes), (-1, -1));
            }

            let req = DescribeLogDirsRequest::default().with_topics(Some(vec![
                DescribableLogDirTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("a")))
                    .with_partitions(vec![1, 5]),
                DescribableLogDirTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("zz")))
                    .with_partitions(vec![0]),
            ]));
            let resp = handle(&b, &ctx(ApiKey::DescribeLogDirs, version), req);
            assert_encodes(
                ApiKey::DescribeLogDirs,
                version,
                ResponseKind::DescribeLogDirs(resp.clone()),
            );
            let topics = &resp.results[0].topics;
            assert_eq!(topics.len(), 1);
            assert_eq!(topics[0].partitions.len(), 1);
            assert_eq!(topics[0].partitions[0].partition_size, expected_size);
        }
    }
}
