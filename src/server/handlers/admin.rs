//! The small admin APIs: DescribeCluster, DeleteTopics, CreatePartitions, DeleteRecords.

use crate::server::{Broker, errors};
use crate::shard::Shard;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

pub fn describe_cluster(broker: &Broker, shard: &Shard) -> DescribeClusterResponse {
    let cluster = super::metadata::cluster(broker, shard);
    let brokers = cluster
        .brokers
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.map(StrBytes::from_string))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(cluster.id))
        .with_controller_id(BrokerId(cluster.controller))
        .with_brokers(brokers)
}

pub async fn delete_topics(shard: &Shard, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // v6 names topics by name or id in `topics`; earlier versions list names.
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> =
        request.topic_names.into_iter().map(|name| (Some(name), uuid::Uuid::nil())).collect();
    wanted.extend(request.topics.into_iter().map(|topic| (topic.name, topic.topic_id)));
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let found = match &name {
            Some(name) => shard.topic(name),
            None => shard.topic_by_id(id),
        };
        let result = DeletableTopicResult::default().with_name(name.clone()).with_topic_id(id);
        let Some(topic) = found else {
            responses.push(result.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
            continue;
        };
        responses.push(match shard.delete_topic(&topic.name).await {
            Ok(deleted) => result.with_topic_id(deleted.id),
            Err(error) => result
                .with_error_code(errors::create_topic(&error).code())
                .with_error_message(Some(StrBytes::from_string(error.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(shard: &Shard, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match shard.create_partitions(&topic.name, topic.count, request.validate_only).await {
            Ok(_) => result,
            Err(error) => result
                .with_error_code(errors::create_topic(&error).code())
                .with_error_message(Some(StrBytes::from_string(error.to_string()))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

pub async fn delete_records(shard: &Shard, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let meta = shard.topic(&topic.name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(partition.partition_index);
            let deleted = match &meta {
                Some(meta) => shard.delete_records(meta, partition.partition_index, partition.offset).await,
                None => Err(crate::shard::DeleteRecordsError::UnknownTopicOrPartition),
            };
            partitions.push(match deleted {
                Ok(low_watermark) => result.with_low_watermark(low_watermark),
                Err(error) => {
                    result.with_error_code(errors::delete_records(&error).code()).with_low_watermark(-1)
                }
            });
        }
        topics.push(DeleteRecordsTopicResult::default().with_name(topic.name).with_partitions(partitions));
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
