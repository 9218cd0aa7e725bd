//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs. Topic configs are dynamic (kept
//! in the topic table, applied to open logs); broker settings are static and read-only.

use crate::config::SETTINGS;
use crate::server::{Broker, errors};
use crate::shard::Shard;
use crate::shard::topics::{self, TopicMeta};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, alter_configs_response,
    incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const OPERATION_SET: i8 = 0;
const OPERATION_DELETE: i8 = 1;

pub async fn describe(
    broker: &Broker,
    shard: &Shard,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let entries: Result<Vec<Described>, Refusal> = match resource.resource_type {
                RESOURCE_TOPIC => match shard.topic(&resource.resource_name) {
                    Some(topic) => topics::describe(shard.config(), &topic.configs)
                        .map(|configs| {
                            configs
                                .into_iter()
                                .map(|(name, value, set)| {
                                    let source = if set { SOURCE_DYNAMIC_TOPIC } else { SOURCE_DEFAULT };
                                    (name, value, false, source)
                                })
                                .collect()
                        })
                        .map_err(|reason| (ResponseError::InvalidConfig, reason)),
                    None => Err((ResponseError::UnknownTopicOrPartition, "no such topic".into())),
                },
                RESOURCE_BROKER if resource.resource_name.as_str() == broker.node_id.to_string() => {
                    Ok(SETTINGS
                        .iter()
                        .map(|s| (s.key.to_string(), broker_value(shard, s.key), true, SOURCE_STATIC_BROKER))
                        .collect())
                }
                RESOURCE_BROKER => {
                    Err((ResponseError::InvalidRequest, format!("this broker is node {}", broker.node_id)))
                }
                other => {
                    Err((ResponseError::InvalidRequest, format!("resource type {other} has no configs here")))
                }
            };
            match entries {
                Ok(entries) => result.with_configs(
                    entries
                        .into_iter()
                        .filter(|(name, ..)| wanted(name))
                        .map(|(name, value, read_only, source)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_string(name))
                                .with_value(Some(StrBytes::from_string(value)))
                                .with_read_only(read_only)
                                .with_config_source(source)
                        })
                        .collect(),
                ),
                Err((error, message)) => result
                    .with_error_code(error.code())
                    .with_error_message(Some(StrBytes::from_string(message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A broker setting's value as the running broker has it.
fn broker_value(shard: &Shard, key: &str) -> String {
    let config = shard.config();
    match key {
        "listen" => config.listen.to_string(),
        "advertised_listener" => config.advertised_listener.map(|a| a.to_string()).unwrap_or_default(),
        "data_dir" => config.data_dir.display().to_string(),
        "cores" => config.cores.to_string(),
        "node_id" => config.node_id.to_string(),
        "num_partitions" => config.num_partitions.to_string(),
        "auto_create_topics_enable" => config.auto_create_topics.to_string(),
        "socket_request_max_bytes" => config.socket_request_max_bytes.to_string(),
        _ => SETTINGS.iter().find(|s| s.key == key).map(|s| s.default.to_string()).unwrap_or_default(),
    }
}

/// A config entry as described: name, value, read-only, source.
type Described = (String, String, bool, i8);
/// A refusal: the Kafka error and a message for the client.
type Refusal = (ResponseError, String);

/// The error code and message fields of a resource's response.
fn error_fields(outcome: Result<(), Refusal>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((error, message)) => (error.code(), Some(StrBytes::from_string(message))),
    }
}

/// Applies `change` to a topic's overrides on shard 0; the error code and message if refused.
async fn alter_topic(
    shard: &Shard,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&TopicMeta) -> Result<BTreeMap<String, String>, String>,
) -> Result<(), Refusal> {
    if resource_type != RESOURCE_TOPIC {
        return Err((
            ResponseError::InvalidRequest,
            "only topic configs can change while the broker runs".into(),
        ));
    }
    let topic =
        shard.topic(name).ok_or((ResponseError::UnknownTopicOrPartition, "no such topic".to_string()))?;
    let configs = change(&topic).map_err(|reason| (ResponseError::InvalidConfig, reason))?;
    shard
        .alter_topic_configs(name, configs, validate_only)
        .await
        .map(|_| ())
        .map_err(|error| (errors::create_topic(&error), error.to_string()))
}

pub async fn alter(shard: &Shard, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        // AlterConfigs replaces every override with the ones given.
        let configs: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let outcome = alter_topic(
            shard,
            resource.resource_type,
            &resource.resource_name,
            request.validate_only,
            |_| Ok(configs),
        )
        .await;
        let (error_code, error_message) = error_fields(outcome);
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(error_code)
                .with_error_message(error_message),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter(
    shard: &Shard,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let changes = resource.configs.clone();
        let outcome = alter_topic(
            shard,
            resource.resource_type,
            &resource.resource_name,
            request.validate_only,
            |topic| {
                let mut configs = topic.configs.clone();
                for change in changes {
                    match (change.config_operation, change.value) {
                        (OPERATION_SET, Some(value)) => {
                            configs.insert(change.name.to_string(), value.to_string());
                        }
                        (OPERATION_DELETE, _) => {
                            configs.remove(change.name.as_str());
                        }
                        (operation, _) => {
                            return Err(format!(
                                "operation {operation} on `{}` is not supported",
                                change.name
                            ));
                        }
                    }
                }
                Ok(configs)
            },
        )
        .await;
        let (error_code, error_message) = error_fields(outcome);
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(error_code)
                .with_error_message(error_message),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
