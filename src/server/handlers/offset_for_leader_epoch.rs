//! OffsetForLeaderEpoch: where a leader epoch ended in a partition's log (KIP-101, KIP-279),
//! which consumers ask after a leader change to find whether their position was truncated
//! away (KIP-320). A request naming the partition's current leader epoch is checked against it.

use crate::server::errors;
use crate::shard::{FetchError, Shard};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let meta = shard.topic(&topic.topic);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for asked in topic.partitions {
            let answer = EpochEndOffset::default().with_partition(asked.partition);
            let current = shard.leader_epoch(&topic.topic, asked.partition).0;
            let found = match &meta {
                // -1: the client does not know the current epoch, so nothing to check.
                Some(_) if asked.current_leader_epoch >= 0 && asked.current_leader_epoch < current => {
                    Err(ResponseError::FencedLeaderEpoch)
                }
                Some(_) if asked.current_leader_epoch > current => Err(ResponseError::UnknownLeaderEpoch),
                Some(meta) => shard
                    .end_offset_for_epoch(meta, asked.partition, asked.leader_epoch)
                    .await
                    .map_err(|error| errors::fetch(&error)),
                None => Err(errors::fetch(&FetchError::UnknownTopicOrPartition)),
            };
            partitions.push(match found {
                Ok((epoch, offset)) => answer.with_leader_epoch(epoch).with_end_offset(offset),
                Err(error) => answer.with_error_code(error.code()).with_leader_epoch(-1).with_end_offset(-1),
            });
        }
        topics
            .push(OffsetForLeaderTopicResult::default().with_topic(topic.topic).with_partitions(partitions));
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
