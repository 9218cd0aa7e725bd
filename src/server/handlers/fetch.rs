//! Fetch: every partition is read on its owning shard at once; if less than `min_bytes` came
//! back, the fetch waits (up to `max_wait_ms`) until any of its partitions gets records, then
//! reads again. Record batches reach the socket without being copied (`fetch_response`).
//! Which partitions a request reads, and which its answer names, depend on its fetch session
//! (`fetch_session`, KIP-227).

use crate::io;
use crate::log::Bound;
use crate::server::fetch_response::{self, Head, PartitionResult, TopicResult};
use crate::server::fetch_session::{self, Context, Sent, TopicKey};
use crate::shard::topics::TopicMeta;
use crate::shard::{FetchError, Fetched, PartitionRead, READ_COMMITTED, Shard};
use crate::types::Offset;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::messages::fetch_request::FetchPartition;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A topic to read, resolved against this shard's topic table.
struct Wanted<'a> {
    topic: Option<TopicMeta>,
    name: String,
    id: uuid::Uuid,
    /// Named by an id this broker does not know (v13+): UNKNOWN_TOPIC_ID, as Kafka answers.
    unknown_id: bool,
    partitions: &'a [(FetchPartition, Sent)],
}

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: FetchRequest,
    version: i16,
    correlation_id: i32,
) -> Vec<Bytes> {
    let config = shard.config();
    let limits = fetch_session::Limits {
        slots: config.fetch_session_slots,
        eviction: config.fetch_session_eviction,
        cores: shard.shards(),
    };
    let context = match fetch_session::begin(&mut request, version, limits) {
        Ok(context) => context,
        Err(error) => {
            let head = Head { error_code: error.code(), session_id: 0 };
            return fetch_response::encode(version, correlation_id, head, &[]);
        }
    };
    let wanted = resolve(shard, &context);
    let committed_only = request.isolation_level == READ_COMMITTED;
    // A follower names itself (in `replica_state` from v15): it reads everything written,
    // not only what consumers see.
    let replica = if version >= 15 { request.replica_state.replica_id.0 } else { request.replica_id.0 };
    let replica = (replica >= 0).then_some(replica);
    let bound = match (replica, committed_only) {
        (Some(_), _) => Bound::Written,
        (None, true) => Bound::LastStable,
        (None, false) => Bound::HighWatermark,
    };
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let mut fetched = read_all(shard, &wanted, committed_only, replica).await;
    loop {
        let bytes: usize = fetched.iter().flatten().map(|f| f.bytes).sum();
        let failed = fetched.iter().flatten().any(|f| f.error.is_some());
        if bytes >= min_bytes.max(1) || failed || Instant::now() >= deadline {
            break;
        }
        shard.wait_for_records(waiting_positions(&wanted), bound, deadline).await;
        fetched = read_all(shard, &wanted, committed_only, replica).await;
    }
    let bytes_max = usize::try_from(request.max_bytes).unwrap_or(usize::MAX);
    let mut answer = results(wanted, fetched, bytes_max);
    fetch_session::settle(&context, &mut answer);
    fetch_response::encode(
        version,
        correlation_id,
        Head { error_code: 0, session_id: context.session_id },
        &answer,
    )
}

/// The context's topics, in its order, each looked up by id or by name.
fn resolve<'a>(shard: &Shard, context: &'a Context) -> Vec<Wanted<'a>> {
    context
        .topics
        .iter()
        .map(|(key, partitions)| {
            let (found, name, id) = match key {
                TopicKey::Id(id) => (shard.topic_by_id(*id), String::new(), *id),
                TopicKey::Name(name) => (shard.topic(name), name.clone(), uuid::Uuid::nil()),
            };
            Wanted {
                name: found.as_ref().map_or(name, |found| found.name.clone()),
                id: found.as_ref().map_or(id, |found| found.id),
                unknown_id: found.is_none() && matches!(key, TopicKey::Id(_)),
                topic: found,
                partitions,
            }
        })
        .collect()
}

/// Reads every wanted partition, all at once, each on its owning shard.
async fn read_all(
    shard: &Rc<Shard>,
    wanted: &[Wanted<'_>],
    committed_only: bool,
    replica: Option<i32>,
) -> Vec<Vec<Fetched>> {
    let tasks: Vec<Vec<io::Task<Fetched>>> = wanted
        .iter()
        .map(|topic| {
            topic
                .partitions
                .iter()
                .map(|(partition, _)| {
                    let (shard, meta) = (shard.clone(), topic.topic.clone());
                    let read = PartitionRead {
                        topic: topic.name.clone(),
                        partition: partition.partition,
                        offset: Offset(partition.fetch_offset),
                        bytes_max: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
                        min_one: true,
                        committed_only,
                        replica: replica.map(|id| (id, partition.current_leader_epoch)),
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

fn waiting_positions(wanted: &[Wanted<'_>]) -> Vec<(TopicMeta, i32, Offset)> {
    wanted
        .iter()
        .filter_map(|topic| topic.topic.as_ref().map(|meta| (meta, &topic.partitions)))
        .flat_map(|(meta, partitions)| {
            partitions.iter().map(move |(p, _)| (meta.clone(), p.partition, Offset(p.fetch_offset)))
        })
        .collect()
}

/// The response's topics, keeping the request's order; records past `bytes_max` (the whole
/// response's limit) are left out, except that the first partition with records always has them.
fn results(wanted: Vec<Wanted<'_>>, fetched: Vec<Vec<Fetched>>, bytes_max: usize) -> Vec<TopicResult> {
    let mut bytes = 0usize;
    wanted
        .into_iter()
        .zip(fetched)
        .map(|(topic, fetched)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(fetched)
                .map(|((partition, _), fetched)| {
                    let fits = bytes == 0 || bytes + fetched.bytes <= bytes_max;
                    let records = if fits { fetched.chunks } else { Vec::new() };
                    if fits && fetched.bytes > 0 {
                        bytes += fetched.bytes;
                        count_fetched(&topic.name, fetched.bytes as u64);
                    }
                    PartitionResult {
                        partition: partition.partition,
                        error_code: match &fetched.error {
                            _ if topic.unknown_id => ResponseError::UnknownTopicId.code(),
                            Some(error) => crate::server::errors::fetch(error).code(),
                            None => 0,
                        },
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
