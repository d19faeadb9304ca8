//! Client errors. Kafka error codes keep their protocol name
//! (`TOPIC_ALREADY_EXISTS`, `NOT_LEADER_OR_FOLLOWER`, ...) so that messages match
//! what Kafka's own tools print.

use kafka_protocol::ResponseError;
use std::time::Duration;
use thiserror::Error;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum ClientError {
    /// Could not open a connection (nothing was sent, so any request is safe to retry).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The connection broke after the request may have been sent.
    #[error("connection to {addr} failed: {reason}")]
    Disconnected { addr: String, reason: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The broker answered with a Kafka error code.
    #[error("{context}: {name} (error code {code}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        code: i16,
        name: String,
        message: Option<String>,
        context: String,
    },
    /// The broker does not support any version of an API that this client can speak.
    #[error("the broker at {addr} does not support {api} in any version this client speaks")]
    UnsupportedApi { api: String, addr: String },
    /// The broker sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Bad arguments or state on the client side.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// A Kafka error from a response error code; `None` for code 0.
    pub fn from_code(code: i16, message: Option<&str>, context: impl Into<String>) -> Option<Self> {
        if code == 0 {
            return None;
        }
        Some(ClientError::Kafka {
            code,
            name: error_name(code),
            message: message.filter(|m| !m.is_empty()).map(str::to_string),
            context: context.into(),
        })
    }

    /// The Kafka error code, if this error came from the broker.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether refreshing metadata and trying again may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Kafka { code, .. } => is_retriable_code(*code),
            _ => false,
        }
    }

    /// Whether the error says the cached leader is stale.
    pub fn needs_metadata_refresh(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Disconnected { .. } => true,
            ClientError::Kafka { code, .. } => needs_refresh_code(*code),
            _ => false,
        }
    }
}

pub mod codes {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const OFFSET_NOT_AVAILABLE: i16 = 78;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const INCONSISTENT_TOPIC_ID: i16 = 103;
}

fn needs_refresh_code(code: i16) -> bool {
    use codes::*;
    matches!(
        code,
        UNKNOWN_TOPIC_OR_PARTITION
            | LEADER_NOT_AVAILABLE
            | NOT_LEADER_OR_FOLLOWER
            | NOT_CONTROLLER
            | KAFKA_STORAGE_ERROR
            | FENCED_LEADER_EPOCH
            | UNKNOWN_LEADER_EPOCH
            | OFFSET_NOT_AVAILABLE
            | UNKNOWN_TOPIC_ID
            | INCONSISTENT_TOPIC_ID
    )
}

fn is_retriable_code(code: i16) -> bool {
    needs_refresh_code(code) || ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

/// Kafka's name for an error code, as in `Errors.java`: `TOPIC_ALREADY_EXISTS`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => screaming_snake(&e.to_string()),
    }
}

/// `TopicAlreadyExists` -> `TOPIC_ALREADY_EXISTS`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    let chars: Vec<char> = camel.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev_lower = chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev_lower || (next_lower && chars[i - 1].is_uppercase()) {
                out.push('_');
            }
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_match_kafka() {
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn kafka_error_display_has_name_and_context() {
        let e = ClientError::from_code(36, Some("Topic 'x' already exists."), "creating topic x")
            .unwrap();
        assert_eq!(
            e.to_string(),
            "creating topic x: TOPIC_ALREADY_EXISTS (error code 36): Topic 'x' already exists."
        );
        assert_eq!(e.kafka_code(), Some(36));
        assert!(!e.is_retriable());
        assert!(ClientError::from_code(0, None, "x").is_none());
        assert!(ClientError::from_code(6, None, "x")
            .unwrap()
            .needs_metadata_refresh());
    }
}
