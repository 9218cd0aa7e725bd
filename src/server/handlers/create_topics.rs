//! CreateTopics: new topics with their partition counts and config overrides.

use crate::server::errors;
use crate::shard::{NewTopic, Shard};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

pub async fn handle(shard: &Shard, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let alone = shard.controller().is_none();
        if (alone && topic.replication_factor > 1) || !topic.assignments.is_empty() {
            let message = match alone {
                true => "this broker runs alone: replication factor 1 only, no manual assignment",
                false => "replicas are placed by the controller: no manual assignment",
            };
            results.push(
                result
                    .with_error_code(ResponseError::InvalidReplicationFactor.code())
                    .with_error_message(Some(StrBytes::from_static_str(message))),
            );
            continue;
        }
        let partitions =
            if topic.num_partitions == -1 { shard.config().num_partitions } else { topic.num_partitions };
        let configs = topic
            .configs
            .iter()
            .filter_map(|config| {
                config.value.as_ref().map(|value| (config.name.to_string(), value.to_string()))
            })
            .collect();
        // -1 asks for the default, one replica.
        let replication_factor = topic.replication_factor.max(1);
        let new = NewTopic {
            name: topic.name.to_string(),
            partitions,
            replication_factor: topic.replication_factor,
            configs,
            validate_only: request.validate_only,
        };
        results.push(match shard.create_topic(new).await {
            Ok(created) => result
                .with_topic_id(created.id)
                .with_num_partitions(created.partitions())
                .with_replication_factor(replication_factor),
            Err(error) => result
                .with_error_code(errors::create_topic(&error).code())
                .with_error_message(Some(StrBytes::from_string(error.to_string()))),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}
