//! Topic-level configs, with Kafka's names, validation and the broker defaults
//! they fall back to.

use crate::config::BrokerConfig;
use std::collections::BTreeMap;
use weir_protocol::compression::Compression;
use weir_storage::{CleanupPolicy, FlushPolicy, LogConfig};

/// (topic config, broker setting it defaults to)
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("compression.type", "compression.type"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
];

pub fn is_known(name: &str) -> bool {
    TOPIC_CONFIGS.iter().any(|(k, _)| *k == name)
}

/// Checks one topic config value; the error names the problem.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let int = |min: i64| -> Result<(), String> {
        match value.parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            Ok(v) => Err(format!("{name}={v} is below the minimum {min}")),
            Err(_) => Err(format!("{name}={value:?} is not a whole number")),
        }
    };
    match name {
        "cleanup.policy" => match normalized_policy(value) {
            Some(_) => Ok(()),
            None => Err(format!(
                "cleanup.policy={value:?}: expected delete, compact or compact,delete"
            )),
        },
        "compression.type" => {
            if value == "producer"
                || value == "uncompressed"
                || Compression::from_name(value).is_some()
            {
                Ok(())
            } else {
                Err(format!("compression.type={value:?}: expected producer, uncompressed, gzip, snappy, lz4 or zstd"))
            }
        }
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!(
                "message.timestamp.type={value:?}: expected CreateTime or LogAppendTime"
            )),
        },
        "retention.ms" | "retention.bytes" | "flush.ms" | "flush.messages" => int(-1),
        "segment.bytes" => int(14),
        "segment.ms" | "min.insync.replicas" => int(1),
        "max.message.bytes" | "delete.retention.ms" | "index.interval.bytes" => int(0),
        other => Err(format!("unknown topic config {other:?}")),
    }
}

fn normalized_policy(value: &str) -> Option<CleanupPolicy> {
    let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
    parts.sort_unstable();
    parts.dedup();
    match parts.as_slice() {
        ["delete"] => Some(CleanupPolicy::Delete),
        ["compact"] => Some(CleanupPolicy::Compact),
        ["compact", "delete"] => Some(CleanupPolicy::CompactDelete),
        _ => None,
    }
}

/// Where a config value came from, as DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic (Kafka's DYNAMIC_TOPIC_CONFIG = 1).
    Topic,
    /// The broker's setting or default (STATIC_BROKER_CONFIG = 4 / DEFAULT_CONFIG = 5).
    Default,
}

impl ConfigSource {
    pub fn kafka_code(self) -> i8 {
        match self {
            ConfigSource::Topic => 1,
            ConfigSource::Default => 5,
        }
    }
}

/// A topic's effective configuration: its overrides over the broker's defaults.
#[derive(Debug, Clone)]
pub struct EffectiveConfig {
    pub values: BTreeMap<String, (String, ConfigSource)>,
}

impl EffectiveConfig {
    pub fn resolve(broker: &BrokerConfig, overrides: &BTreeMap<String, String>) -> Self {
        let values = TOPIC_CONFIGS
            .iter()
            .map(|(name, broker_key)| {
                let entry = match overrides.get(*name) {
                    Some(v) => (v.clone(), ConfigSource::Topic),
                    None => (
                        broker.get(broker_key).unwrap_or_default().to_string(),
                        ConfigSource::Default,
                    ),
                };
                (name.to_string(), entry)
            })
            .collect();
        EffectiveConfig { values }
    }

    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map(|(v, _)| v.as_str()).unwrap_or("")
    }

    fn i64_or(&self, name: &str, default: i64) -> i64 {
        self.get(name).parse().unwrap_or(default)
    }

    pub fn max_message_bytes(&self) -> usize {
        self.i64_or("max.message.bytes", 1_048_588).max(0) as usize
    }

    pub fn min_insync_replicas(&self) -> i32 {
        self.i64_or("min.insync.replicas", 1) as i32
    }

    pub fn log_append_time(&self) -> bool {
        self.get("message.timestamp.type") == "LogAppendTime"
    }

    /// flush.messages=1 means every append is fsync'd before it is acknowledged.
    pub fn flush_every_append(&self) -> bool {
        self.i64_or("flush.messages", -1) == 1
    }

    pub fn log_config(&self) -> LogConfig {
        let positive = |v: i64| if v < 0 { None } else { Some(v) };
        let flush_ms = self.i64_or("flush.ms", -1);
        let flush = if self.flush_every_append() {
            FlushPolicy::EveryAppend
        } else if flush_ms >= 0 {
            FlushPolicy::IntervalMs(flush_ms as u64)
        } else {
            FlushPolicy::Os
        };
        LogConfig {
            segment_bytes: self.i64_or("segment.bytes", 1 << 30).max(14) as u64,
            segment_ms: positive(self.i64_or("segment.ms", 604_800_000)).map(|v| v as u64),
            retention_ms: positive(self.i64_or("retention.ms", 604_800_000)),
            retention_bytes: positive(self.i64_or("retention.bytes", -1)).map(|v| v as u64),
            cleanup_policy: normalized_policy(self.get("cleanup.policy"))
                .unwrap_or(CleanupPolicy::Delete),
            delete_retention_ms: self.i64_or("delete.retention.ms", 86_400_000),
            index_interval_bytes: self
                .i64_or("index.interval.bytes", 4096)
                .clamp(1, u32::MAX as i64) as u32,
            flush,
            ..LogConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "soon")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(validate("cleanup.policy", "delete,compact").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("no.such", "1").unwrap_err().contains("unknown"));
    }
}
