//! DeleteTopics: by name (v1-5 `topic_names`, v6 `topics[].name`) or, from v6,
//! by topic id. One result per requested topic.

use super::RequestContext;
use crate::state::{Broker, TopicError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

/// Internal topics (the broker keeps its state in them) cannot be deleted,
/// grown or have records deleted by clients.
pub(crate) fn refuse_internal(name: &str, what: &str) -> Result<(), TopicError> {
    if crate::metadata::is_internal_topic(name) {
        return Err((
            ResponseError::InvalidTopicException,
            format!("'{name}' is an internal topic; its {what}"),
        ));
    }
    Ok(())
}

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let version = ctx.version();
    let requested: Vec<(Option<TopicName>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()))
            .collect()
    };
    let responses = requested
        .into_iter()
        .map(|(name, id)| {
            let (name, id, outcome) = delete_one(broker, name, id);
            if let Err((code, message)) = &outcome {
                tracing::debug!(topic = ?name, %id, ?code, %message, "DeleteTopics refused");
            }
            let mut result = DeletableTopicResult::default().with_name(name);
            if version >= 6 {
                result = result.with_topic_id(id);
            }
            match outcome {
                Ok(()) => result,
                Err((code, message)) => {
                    let result = result.with_error_code(code.code());
                    // error_message exists from v5.
                    if version >= 5 {
                        result.with_error_message(Some(StrBytes::from_string(message)))
                    } else {
                        result
                    }
                }
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Resolves the name or id and deletes; returns the name and id to report.
fn delete_one(
    broker: &Broker,
    name: Option<TopicName>,
    id: Uuid,
) -> (Option<TopicName>, Uuid, Result<(), TopicError>) {
    let name = match (name, id.is_nil()) {
        (Some(n), false) => {
            return (
                Some(n),
                id,
                Err((
                    ResponseError::InvalidRequest,
                    "give either a topic name or a topic id, not both".to_string(),
                )),
            )
        }
        (Some(n), true) => n,
        (None, false) => match broker.meta.topic_name_by_id(&id) {
            Some(n) => TopicName(StrBytes::from_string(n)),
            None => {
                return (
                    None,
                    id,
                    Err((
                        ResponseError::UnknownTopicId,
                        format!("no topic has the id {id}"),
                    )),
                )
            }
        },
        (None, true) => {
            return (
                None,
                id,
                Err((
                    ResponseError::InvalidRequest,
                    "neither a topic name nor a topic id".to_string(),
                )),
            )
        }
    };
    let id = broker.topic(&name.0).map_or(id, |t| t.id);
    let outcome = refuse_internal(&name.0, "deletion is not allowed")
        .and_then(|()| broker.delete_topic(&name.0));
    (Some(name), id, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::admin_test_support::{
        advertised_versions, append, assert_encodes, broker, create, ctx, reopen,
    };
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::{ApiKey, ResponseKind};

    fn name(n: &str) -> TopicName {
        TopicName(StrBytes::from_string(n.to_string()))
    }

    fn run(b: &Broker, version: i16, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let resp = handle(b, &ctx(ApiKey::DeleteTopics, version), req);
        assert_encodes(
            ApiKey::DeleteTopics,
            version,
            ResponseKind::DeleteTopics(resp.clone()),
        );
        resp
    }

    #[test]
    fn delete_by_name_in_every_version() {
        for version in advertised_versions(ApiKey::DeleteTopics) {
            let b = broker();
            create(&b, "a", 2);
            append(&b, "a", 1, 3);
            let id = b.topic("a").unwrap().id;
            let req = if version >= 6 {
                DeleteTopicsRequest::default().with_topics(vec![
                    DeleteTopicState::default().with_name(Some(name("a"))),
                    DeleteTopicState::default().with_name(Some(name("missing"))),
                ])
            } else {
                DeleteTopicsRequest::default().with_topic_names(vec![name("a"), name("missing")])
            };
            let resp = run(&b, version, req);
            assert_eq!(resp.responses.len(), 2);
            assert_eq!(resp.responses[0].error_code, 0, "v{version}");
            assert_eq!(resp.responses[0].name, Some(name("a")));
            assert_eq!(
                resp.responses[1].error_code,
                ResponseError::UnknownTopicOrPartition.code()
            );
            if version >= 5 {
                assert!(resp.responses[1]
                    .error_message
                    .as_ref()
                    .unwrap()
                    .contains("does not exist"));
            }
            if version >= 6 {
                assert_eq!(resp.responses[0].topic_id, id);
            }
            assert!(b.topic("a").is_none());
            assert!(b.partition("a", 1).is_none());
            let b = reopen(b);
            assert!(b.topic("a").is_none());
            assert!(b.partition("a", 0).is_none());
        }
    }

    #[test]
    fn internal_topics_are_kept() {
        let b = broker();
        if b.topic("__consumer_offsets").is_none() {
            create(&b, "__consumer_offsets", 1);
        }
        let req = DeleteTopicsRequest::default().with_topic_names(vec![name("__consumer_offsets")]);
        let resp = run(&b, 5, req);
        assert_eq!(
            resp.responses[0].error_code,
            ResponseError::InvalidTopicException.code()
        );
        assert!(resp.responses[0]
            .error_message
            .as_ref()
            .unwrap()
            .contains("internal topic"));
        assert!(b.topic("__consumer_offsets").is_some());
    }

    #[test]
    fn delete_by_id() {
        let b = broker();
        create(&b, "a", 1);
        let id = b.topic("a").unwrap().id;
        let unknown = Uuid::new_v4();
        let req = DeleteTopicsRequest::default().with_topics(vec![
            DeleteTopicState::default()
                .with_name(None)
                .with_topic_id(id),
            DeleteTopicState::default()
                .with_name(None)
                .with_topic_id(unknown),
            DeleteTopicState::default()
                .with_name(Some(name("x")))
                .with_topic_id(unknown),
        ]);
        let resp = run(&b, 6, req);
        assert_eq!(resp.responses[0].error_code, 0);
        assert_eq!(resp.responses[0].name, Some(name("a")));
        assert_eq!(resp.responses[0].topic_id, id);
        assert_eq!(
            resp.responses[1].error_code,
            ResponseError::UnknownTopicId.code()
        );
        assert_eq!(resp.responses[1].topic_id, unknown);
        assert_eq!(
            resp.responses[2].error_code,
            ResponseError::InvalidRequest.code()
        );
        assert!(b.topic("a").is_none());
    }
}
