//! Fetch: every partition is read on its owning shard at once; if less than `min_bytes` came
//! back, the fetch waits (up to `max_wait_ms`) until any of its partitions gets records, then
//! reads again. Record batches reach the socket without being copied (`fetch_response`).

use crate::io;
use crate::server::fetch_response::{self, PartitionResult, TopicResult};
use crate::shard::topics::TopicMeta;
use crate::shard::{FetchError, Fetched, PartitionRead, READ_COMMITTED, Shard};
use crate::types::Offset;
use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::messages::fetch_request::FetchPartition;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A topic of the request, resolved against this shard's topic table.
struct Wanted {
    topic: Option<TopicMeta>,
    name: String,
    id: uuid::Uuid,
    partitions: Vec<FetchPartition>,
}

pub async fn handle(
    shard: &Rc<Shard>,
    request: FetchRequest,
    version: i16,
    correlation_id: i32,
) -> Vec<Bytes> {
    let wanted: Vec<Wanted> = request
        .topics
        .into_iter()
        .map(|topic| {
            let found =
                if version >= 13 { shard.topic_by_id(topic.topic_id) } else { shard.topic(&topic.topic) };
            let name = found.as_ref().map_or_else(|| topic.topic.to_string(), |found| found.name.clone());
            Wanted {
                name,
                id: found.as_ref().map_or(topic.topic_id, |found| found.id),
                topic: found,
                partitions: topic.partitions,
            }
        })
        .collect();
    let committed_only = request.isolation_level == READ_COMMITTED;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let mut fetched = read_all(shard, &wanted, committed_only).await;
    loop {
        let bytes: usize = fetched.iter().flatten().map(|f| f.bytes).sum();
        let failed = fetched.iter().flatten().any(|f| f.error.is_some());
        if bytes >= min_bytes.max(1) || failed || Instant::now() >= deadline {
            break;
        }
        shard.wait_for_records(waiting_positions(&wanted), committed_only, deadline).await;
        fetched = read_all(shard, &wanted, committed_only).await;
    }
    let bytes_max = usize::try_from(request.max_bytes).unwrap_or(usize::MAX);
    fetch_response::encode(version, correlation_id, &results(wanted, fetched, bytes_max))
}

/// Reads every wanted partition, all at once, each on its owning shard.
async fn read_all(shard: &Rc<Shard>, wanted: &[Wanted], committed_only: bool) -> Vec<Vec<Fetched>> {
    let tasks: Vec<Vec<io::Task<Fetched>>> = wanted
        .iter()
        .map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| {
                    let (shard, meta) = (shard.clone(), topic.topic.clone());
                    let read = PartitionRead {
                        topic: topic.name.clone(),
                        partition: partition.partition,
                        offset: Offset(partition.fetch_offset),
                        bytes_max: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
                        min_one: true,
                        committed_only,
                    };
                    io::spawn_local(async move {
                        match meta {
                            Some(meta) => shard.fetch(&meta, read).await,
                            None => Fetched {
                                error: Some(FetchError::UnknownTopicOrPartition),
                                ..Fetched::default()
                            },
                        }
                    })
                })
                .collect()
        })
        .collect();
    let mut fetched = Vec::with_capacity(tasks.len());
    for topic in tasks {
        let mut partitions = Vec::with_capacity(topic.len());
        for task in topic {
            partitions.push(task.await);
        }
        fetched.push(partitions);
    }
    fetched
}

fn waiting_positions(wanted: &[Wanted]) -> Vec<(TopicMeta, i32, Offset)> {
    wanted
        .iter()
        .filter_map(|topic| topic.topic.as_ref().map(|meta| (meta, &topic.partitions)))
        .flat_map(|(meta, partitions)| {
            partitions.iter().map(move |p| (meta.clone(), p.partition, Offset(p.fetch_offset)))
        })
        .collect()
}

/// The response's topics, keeping the request's order; records past `bytes_max` (the whole
/// response's limit) are left out, except that the first partition with records always has them.
fn results(wanted: Vec<Wanted>, fetched: Vec<Vec<Fetched>>, bytes_max: usize) -> Vec<TopicResult> {
    let mut bytes = 0usize;
    wanted
        .into_iter()
        .zip(fetched)
        .map(|(topic, fetched)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(fetched)
                .map(|(partition, fetched)| {
                    let fits = bytes == 0 || bytes + fetched.bytes <= bytes_max;
                    let records = if fits { fetched.chunks } else { Vec::new() };
                    if fits && fetched.bytes > 0 {
                        bytes += fetched.bytes;
                        count_fetched(&topic.name, fetched.bytes as u64);
                    }
                    PartitionResult {
                        partition: partition.partition,
                        error_code: fetched
                            .error
                            .as_ref()
                            .map_or(0, |e| crate::server::errors::fetch(e).code()),
                        high_watermark: fetched.high_watermark,
                        last_stable_offset: fetched.last_stable_offset,
                        log_start_offset: fetched.log_start_offset,
                        aborted: if fits { fetched.aborted } else { Vec::new() },
                        records,
                    }
                })
                .collect();
            TopicResult { name: topic.name, id: topic.id, partitions }
        })
        .collect()
}

/// Counts record bytes a Fetch answer sends, per topic and per core.
fn count_fetched(topic: &str, bytes: u64) {
    crate::metrics::count(|c| {
        c.fetch_record_bytes += bytes;
        c.topic_mut(topic).fetched_bytes += bytes;
    });
}
