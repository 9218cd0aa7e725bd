//! The broker's per-request hot paths, each alone: decoding a Produce request (records stay
//! `Bytes`), validating a batch (CRC32C), assigning offsets (the header rewrite), looking up
//! the batch cache, encoding a Fetch response around cached batches, and an idempotent
//! producer's sequence check.
//!
//! `cargo bench --bench hot_paths`; pin with `taskset -c 1`.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use ringmq::batch::{self, HEADER_BYTES};
use ringmq::batch_cache::{BatchCache, StoredBatch};
use ringmq::log::producers::Producers;
use ringmq::server::fetch_response::{self, Head, PartitionResult, TopicResult};
use ringmq::types::Offset;
use std::hint::black_box;

const BATCH_RECORDS: usize = 16;
const RECORD_BYTES: usize = 1024;

fn batch() -> Bytes {
    ringmq::testing::encode_batch(7, BATCH_RECORDS, RECORD_BYTES, 1_700_000_000_000)
}

/// A Produce v9 frame (without its size prefix) carrying one batch for each of `partitions`.
fn produce_frame(partitions: i32) -> Bytes {
    let data = (0..partitions)
        .map(|p| PartitionProduceData::default().with_index(p).with_records(Some(batch())))
        .collect();
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("t")))
        .with_partition_data(data);
    let request = ProduceRequest::default().with_acks(1).with_timeout_ms(30_000).with_topic_data(vec![topic]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("bench")));
    let mut frame = BytesMut::new();
    header.encode(&mut frame, ApiKey::Produce.request_header_version(9)).expect("header");
    request.encode(&mut frame, 9).expect("request");
    frame.freeze()
}

fn stored(batch: &Bytes, base: i64) -> StoredBatch {
    let header = batch::rewrite_header(batch, base, 0, None);
    StoredBatch {
        base: Offset(base),
        last: Offset(base + BATCH_RECORDS as i64 - 1),
        max_timestamp: 0,
        records: BATCH_RECORDS as u32,
        header: Bytes::copy_from_slice(&header),
        body: batch.slice(HEADER_BYTES..),
    }
}

fn hot_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_paths");
    let frame = produce_frame(8);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode_produce_8x16KiB", |b| {
        b.iter(|| ringmq::server::decode_request(black_box(frame.clone())).map(|_| ()).map_err(|_| ()))
    });
    let one = batch();
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("validate_crc32c_16KiB", |b| {
        b.iter(|| batch::validate(black_box(&one), 1 << 20).map(|_| ()))
    });
    group.bench_function("assign_offsets", |b| {
        b.iter(|| batch::rewrite_header(black_box(&one), 1000, 3, None))
    });
    group.bench_function("assign_offsets_log_append_time", |b| {
        b.iter(|| batch::rewrite_header(black_box(&one), 1000, 3, Some(1_700_000_000_000)))
    });
    let mut cache = BatchCache::new(64 << 20);
    for i in 0..2048 {
        cache.push(stored(&one, i * BATCH_RECORDS as i64));
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("cache_lookup_1MiB_of_2048_batches", |b| {
        b.iter(|| {
            cache
                .read(black_box(Offset(1000 * BATCH_RECORDS as i64 + 3)), Offset(i64::MAX), 1 << 20, true)
                .map(|v| v.len())
        })
    });
    let records: Vec<Bytes> = (0..64)
        .flat_map(|i| {
            let s = stored(&one, i * BATCH_RECORDS as i64);
            [s.header, s.body]
        })
        .collect();
    let topics = vec![TopicResult {
        name: "t".into(),
        id: uuid::Uuid::nil(),
        partitions: vec![PartitionResult {
            partition: 0,
            error_code: 0,
            high_watermark: 1 << 20,
            last_stable_offset: 1 << 20,
            log_start_offset: 0,
            aborted: Vec::new(),
            records,
        }],
    }];
    group.throughput(Throughput::Bytes(64 * one.len() as u64));
    group.bench_function("encode_fetch_v12_1MiB", |b| {
        b.iter(|| fetch_response::encode(12, 1, Head::default(), black_box(&topics)).len())
    });
    // What an idempotent producer's batch costs beyond a plain one: the sequence check and
    // recording it (one producer, in sequence, as in a steady stream).
    let idempotent = ringmq::testing::encode_idempotent_batch(9, 0, 0, BATCH_RECORDS);
    let header = batch::validate(&idempotent, usize::MAX).expect("valid batch");
    group.throughput(Throughput::Elements(1));
    group.bench_function("idempotent_sequence_check", |b| {
        let (mut producers, mut next) = (Producers::default(), 0i64);
        b.iter(|| {
            let batch = batch::BatchHeader { base_sequence: next as i32, ..header };
            let verdict = producers.check(&[], black_box(&batch));
            producers.record([producers.stage_data(&[], &batch, next)], 0);
            next += BATCH_RECORDS as i64;
            verdict
        })
    });
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
