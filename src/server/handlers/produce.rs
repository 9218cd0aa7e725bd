//! Produce: each partition's record batches go to the shard that owns the partition, all
//! partitions at once; the answer lists every partition in request order.

use crate::io;
use crate::server::errors;
use crate::shard::{ProduceError, Shard};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The response, or `None` for acks=0 (Kafka sends none).
pub async fn handle(shard: &Rc<Shard>, request: ProduceRequest) -> Option<ProduceResponse> {
    let acks = request.acks;
    // How long acks=all waits for the in-sync replicas.
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    let deadline = Instant::now() + timeout;
    let mut pending = Vec::new();
    for topic_data in request.topic_data {
        let name = topic_data.name.to_string();
        let topic = shard.topic_or_auto_create(&name).await;
        let partitions = topic_data.partition_data.into_iter().map(|data| {
            let (shard, topic) = (shard.clone(), topic.clone());
            let task = io::spawn_local(async move {
                let (Some(topic), Some(records)) = (topic, data.records) else {
                    return Err(ProduceError::UnknownTopicOrPartition);
                };
                shard.produce(&topic, data.index, records, acks, deadline).await
            });
            (data.index, task)
        });
        pending.push((topic_data.name, partitions.collect::<Vec<_>>()));
    }
    let mut responses = Vec::with_capacity(pending.len());
    for (name, partitions) in pending {
        let mut partition_responses = Vec::with_capacity(partitions.len());
        for (index, task) in partitions {
            let response = PartitionProduceResponse::default().with_index(index);
            partition_responses.push(match task.await {
                Ok(produced) => response
                    .with_base_offset(produced.base_offset.0)
                    .with_log_append_time_ms(produced.log_append_time.map_or(-1, |time| time.0))
                    .with_log_start_offset(produced.log_start_offset.0),
                Err(error) => {
                    tracing::debug!(topic = %name.0, partition = index, %error, "produce refused");
                    response.with_error_code(errors::produce(&error).code()).with_base_offset(-1)
                }
            });
        }
        responses.push(
            TopicProduceResponse::default().with_name(name).with_partition_responses(partition_responses),
        );
    }
    (acks != 0).then(|| ProduceResponse::default().with_responses(responses))
}
