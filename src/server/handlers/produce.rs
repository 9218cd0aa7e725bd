//! Produce: each partition's record batches go to the shard that owns the partition; the
//! answer lists every partition in request order.
//!
//! A produce is answered in two steps (as Redpanda does) so that a connection can pipeline
//! them: `start` gives every partition's batches their place in its log, in request order,
//! and returns the answer to come. The connection reads the next request once `start`
//! returns, so the batches of one connection's requests land in the order they were sent.

use crate::server::errors;
use crate::shard::{ProduceResult, Shard};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

type Answer = Pin<Box<dyn Future<Output = ProduceResult>>>;

/// Places every partition's batches, then returns the response to come: `None` for acks=0
/// (Kafka sends none).
pub async fn start(
    shard: &Rc<Shard>,
    request: ProduceRequest,
) -> Pin<Box<dyn Future<Output = Option<ProduceResponse>>>> {
    let acks = request.acks;
    // How long acks=all waits for the in-sync replicas.
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(TopicName, Vec<(i32, Answer)>)> = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let topic = shard.topic_or_auto_create(&topic_data.name).await;
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let answer: Answer = match (&topic, data.records) {
                (Some(topic), Some(records)) => {
                    shard.start_produce(topic, data.index, records, acks, deadline).await
                }
                _ => Box::pin(std::future::ready(Err(crate::shard::ProduceError::UnknownTopicOrPartition))),
            };
            partitions.push((data.index, answer));
        }
        pending.push((topic_data.name, partitions));
    }
    Box::pin(answer(pending, acks))
}

/// Awaits each partition's answer in turn: they progress together, since every partition's
/// batches were appended (or handed to their owner) in `start` and only wait here to be
/// durable or replicated.
async fn answer(pending: Vec<(TopicName, Vec<(i32, Answer)>)>, acks: i16) -> Option<ProduceResponse> {
    let mut responses = Vec::with_capacity(pending.len());
    for (name, partitions) in pending {
        let mut partition_responses = Vec::with_capacity(partitions.len());
        for (index, answer) in partitions {
            let response = PartitionProduceResponse::default().with_index(index);
            partition_responses.push(match answer.await {
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
