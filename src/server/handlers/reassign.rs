//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455): moving partitions
//! between brokers. Any broker takes them and asks the active controller, as KRaft brokers
//! forward them.

use crate::controller::state::Image;
use crate::controller::topics::{Refusal, TopicChange};
use crate::server::errors;
use crate::shard::Shard;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

pub async fn alter(
    shard: &Shard,
    request: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    // Before v1 a move could change the replica count; from v1 only when asked (KIP-860).
    let resize = version == 0 || request.allow_replication_factor_change;
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let target = partition.replicas.map(|ids| ids.into_iter().map(|id| id.0).collect::<Vec<_>>());
            let moved = move_partition(shard, &topic.name, partition.partition_index, target, resize).await;
            let answer =
                ReassignablePartitionResponse::default().with_partition_index(partition.partition_index);
            partitions.push(match moved {
                Ok(()) => answer,
                Err(refusal) => answer
                    .with_error_code(errors::refusal(&refusal).code())
                    .with_error_message(Some(StrBytes::from_string(refusal.to_string()))),
            });
        }
        responses
            .push(ReassignableTopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}

async fn move_partition(
    shard: &Shard,
    topic: &TopicName,
    partition: i32,
    target: Option<Vec<i32>>,
    resize: bool,
) -> Result<(), Refusal> {
    let unknown = || Refusal::UnknownTopic(format!("{}-{partition}", topic.as_str()));
    let index = u32::try_from(partition).map_err(|_| unknown())?;
    let Some(controller) = shard.controller() else {
        // One broker alone: its partitions stay where they are.
        let known = shard.topic(topic).is_some_and(|meta| meta.has_partition(partition));
        let here = vec![shard.config().node_id];
        return match target {
            _ if !known => Err(unknown()),
            None => Err(Refusal::NoReassignmentInProgress(format!(
                "{}-{partition} is not moving",
                topic.as_str()
            ))),
            Some(target) if target == here => Ok(()),
            Some(target) => {
                Err(Refusal::InvalidReplicaAssignment(format!("this broker alone holds {target:?}")))
            }
        };
    };
    let change = TopicChange::Reassign { name: topic.to_string(), partition: index, target, resize };
    controller.change(change).await.map(drop)
}

pub async fn list(
    shard: &Shard,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let Some(controller) = shard.controller() else {
        return ListPartitionReassignmentsResponse::default();
    };
    // The active controller's newest image, so a move just asked for through another broker
    // shows.
    let Some(image) = controller.sync().await else {
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::RequestTimedOut.code())
            .with_error_message(Some(StrBytes::from_static_str("no active controller answered")));
    };
    let wanted: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics.into_iter().map(|topic| (topic.name.to_string(), topic.partition_indexes)).collect()
    });
    let topics = ongoing(&image, wanted.as_deref());
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

/// The moves under way in `image`: of every topic, or of the `wanted` partitions.
fn ongoing(image: &Image, wanted: Option<&[(String, Vec<i32>)]>) -> Vec<OngoingTopicReassignment> {
    let ids = |ids: &[i32]| ids.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let asked = |name: &str, index: i32| {
        wanted.is_none_or(|wanted| {
            wanted.iter().any(|(topic, indexes)| topic == name && indexes.contains(&index))
        })
    };
    image
        .topics
        .iter()
        .filter_map(|(name, topic)| {
            let partitions: Vec<OngoingPartitionReassignment> = topic
                .partitions
                .iter()
                .enumerate()
                .filter(|(index, record)| record.is_moving() && asked(name, *index as i32))
                .map(|(index, record)| {
                    OngoingPartitionReassignment::default()
                        .with_partition_index(index as i32)
                        .with_replicas(ids(&record.replicas))
                        .with_adding_replicas(ids(&record.adding))
                        .with_removing_replicas(ids(&record.removing))
                })
                .collect();
            let name = TopicName(StrBytes::from_string(name.clone()));
            (!partitions.is_empty())
                .then(|| OngoingTopicReassignment::default().with_name(name).with_partitions(partitions))
        })
        .collect()
}
