//! ListOffsets: the earliest or latest offset of a partition, or the first batch at or after a
//! timestamp.

use crate::server::errors;
use crate::shard::{READ_COMMITTED, Shard};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

pub async fn handle(shard: &Shard, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let committed_only = request.isolation_level == READ_COMMITTED;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let meta = shard.topic(&topic.name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let response =
                ListOffsetsPartitionResponse::default().with_partition_index(partition.partition_index);
            let listed = match &meta {
                Some(meta) => {
                    let (index, timestamp) = (partition.partition_index, partition.timestamp);
                    shard.list_offset(meta, index, timestamp, committed_only).await
                }
                None => Err(crate::shard::FetchError::UnknownTopicOrPartition),
            };
            partitions.push(match listed {
                Ok((offset, timestamp)) => {
                    // leader_epoch stays -1 (unknown): a value would not encode before v4.
                    response.with_offset(offset).with_timestamp(timestamp)
                }
                Err(error) => {
                    response.with_error_code(errors::fetch(&error).code()).with_offset(-1).with_timestamp(-1)
                }
            });
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}
