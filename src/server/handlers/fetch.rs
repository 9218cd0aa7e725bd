//! Fetch: every partition is read on its owning shard at once; if less than `min_bytes` came
//! back, the fetch waits (up to `max_wait_ms`) until any of its partitions gets records, then
//! reads again. Record batches reach the socket without being copied (`fetch_response`).
//! Which partitions a request reads, and which its answer names, depend on its fetch session
//! (`fetch_session`, KIP-227).

use crate::batch::{BATCH_LENGTH_AT, LOG_OVERHEAD_BYTES};
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

/// The response's topics, keeping the request's order, filled as Kafka fills them: the first
/// partition with records has them whatever their size, each next one the whole batches that
/// still fit under `bytes_max` (the whole response's limit).
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
                    let room = if bytes == 0 { usize::MAX } else { bytes_max.saturating_sub(bytes) };
                    let (records, taken) = match fetched.bytes <= room {
                        true => (fetched.chunks, fetched.bytes),
                        false => whole_batches_within(fetched.chunks, room),
                    };
                    let fits = taken > 0 || fetched.bytes == 0;
                    if taken > 0 {
                        bytes += taken;
                        count_fetched(&topic.name, taken as u64);
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

/// The leading whole batches of `chunks` (batches in order, a batch possibly split over
/// several chunks, as the cache keeps header and body apart) that fit in `room` bytes, and
/// their size.
fn whole_batches_within(chunks: Vec<Bytes>, room: usize) -> (Vec<Bytes>, usize) {
    let stream: usize = chunks.iter().map(Bytes::len).sum();
    // Where each batch ends in the chunks' concatenation, up to the last one that fits.
    let mut cursor = Cursor { chunks: &chunks, chunk: 0, start: 0 };
    let mut cut = 0usize;
    while cut + LOG_OVERHEAD_BYTES <= stream {
        let mut length = [0u8; 4];
        for (i, byte) in length.iter_mut().enumerate() {
            *byte = cursor.byte_at(cut + BATCH_LENGTH_AT + i);
        }
        let Ok(length) = usize::try_from(i32::from_be_bytes(length)) else { break };
        let end = cut + LOG_OVERHEAD_BYTES + length;
        if end > stream || end > room {
            break;
        }
        cut = end;
    }
    let mut kept = Vec::new();
    let mut at = 0usize;
    for chunk in chunks {
        if at >= cut {
            break;
        }
        let take = chunk.len().min(cut - at);
        at += take;
        kept.push(chunk.slice(..take));
    }
    (kept, cut)
}

/// Reads bytes of the chunks' concatenation at rising positions, in one pass.
struct Cursor<'a> {
    chunks: &'a [Bytes],
    /// The chunk last read from, and where it starts in the concatenation.
    chunk: usize,
    start: usize,
}

impl Cursor<'_> {
    /// Byte `index` (at or past the previous one's chunk) of the concatenation, which holds it.
    fn byte_at(&mut self, index: usize) -> u8 {
        while let Some(chunk) = self.chunks.get(self.chunk) {
            if index < self.start + chunk.len() {
                return chunk[index - self.start];
            }
            self.start += chunk.len();
            self.chunk += 1;
        }
        0
    }
}

/// Counts record bytes a Fetch answer sends, per topic and per core.
fn count_fetched(topic: &str, bytes: u64) {
    crate::metrics::count(|c| {
        c.fetch_record_bytes += bytes;
        c.topic_mut(topic).fetched_bytes += bytes;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::encode_batch;

    /// Three batches as the cache returns them (each header and body apart) and as a disk
    /// read does (one chunk).
    fn batches() -> (Vec<Bytes>, Vec<usize>) {
        let encoded: Vec<Bytes> = (0..3).map(|seed| encode_batch(seed, 2, 300, 1)).collect();
        let sizes = encoded.iter().map(Bytes::len).collect();
        let mut split = Vec::new();
        for batch in &encoded[..2] {
            split.push(batch.slice(..61));
            split.push(batch.slice(61..));
        }
        split.push(encoded[2].clone());
        (split, sizes)
    }

    #[test]
    fn only_whole_batches_that_fit_are_taken() {
        let (chunks, sizes) = batches();
        let all: usize = sizes.iter().sum();
        let concatenated: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for (room, expected) in [
            (0, 0),
            (sizes[0] - 1, 0),
            (sizes[0], sizes[0]),
            (sizes[0] + sizes[1] - 1, sizes[0]),
            (sizes[0] + sizes[1], sizes[0] + sizes[1]),
            (all - 1, sizes[0] + sizes[1]),
            (all, all),
            (usize::MAX, all),
        ] {
            let (kept, taken) = whole_batches_within(chunks.clone(), room);
            assert_eq!(taken, expected, "room {room}");
            let bytes: Vec<u8> = kept.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(bytes, concatenated[..expected], "room {room}");
        }
    }

    #[test]
    fn a_damaged_length_ends_the_walk_without_panicking() {
        let (mut chunks, sizes) = batches();
        let mut body = chunks[2].to_vec();
        body[8..12].copy_from_slice(&(-5i32).to_be_bytes()); // the second batch's length
        chunks[2] = Bytes::from(body);
        assert_eq!(whole_batches_within(chunks.clone(), usize::MAX).1, sizes[0]);
        let truncated = vec![chunks[0].slice(..10)];
        assert_eq!(whole_batches_within(truncated, usize::MAX).1, 0);
    }
}
