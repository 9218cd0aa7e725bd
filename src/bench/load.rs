//! The load itself: producer connections (open loop at a scheduled rate, so latency is
//! measured from when a batch was due and a slow broker cannot hide its stalls, or closed loop
//! with a window of requests in flight) and fetching consumers. Every connection is a writer
//! thread and a reader thread; each reader keeps its own histogram, merged at the end.

use super::wire::{self, PRODUCE_VERSION, Reader, Writer};
use super::{Counters, LoadSettings, Measured};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FETCH_VERSION: i16 = 11;
const LIST_OFFSETS_VERSION: i16 = 5;
/// Requests one producer connection keeps in flight in open loop (where the schedule, not a
/// window, sets the pace); beyond it the generator itself would be the bottleneck.
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 1024;

/// Latencies in µs, 1 µs to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu
        && let Err(error) = affinity::set_thread_affinity([cpu])
    {
        eprintln!("ringmq bench: cannot pin to core {cpu}: {error}");
    }
}

/// A batch of `count` records of the configured sizes; each value starts with the wall-clock
/// time it was made (ns), which the e2e consumer reads back.
fn encode_batch(
    settings: &LoadSettings,
    count: usize,
    sequence: u64,
    filler: &Bytes,
) -> Result<(Bytes, u64), String> {
    let stamp = now_ns().to_be_bytes();
    let timestamp_ms = (now_ns() / 1_000_000) as i64;
    let keys: Vec<Option<String>> = (0..count as u64)
        .map(|i| (settings.keys > 0).then(|| format!("key-{}", (sequence + i) % settings.keys)))
        .collect();
    let value_filler =
        |i: usize| &filler[..settings.record_size(sequence + i as u64).saturating_sub(8).min(filler.len())];
    let bytes = (0..count)
        .map(|i| (8 + value_filler(i).len() + keys[i].as_ref().map_or(0, String::len)) as u64)
        .sum();
    if settings.compression == Compression::None {
        let records = (0..count).map(|i| super::batch::RecordShape {
            key: keys[i].as_deref().map(str::as_bytes),
            stamp,
            filler: value_filler(i),
        });
        return Ok((super::batch::encode_plain(records, timestamp_ms), bytes));
    }
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let mut value = BytesMut::with_capacity(8 + value_filler(i).len());
            value.extend_from_slice(&stamp);
            value.extend_from_slice(value_filler(i));
            let key = keys[i].clone().map(Bytes::from);
            crate::record::plain(i as i64, timestamp_ms, key, Some(value.freeze()))
        })
        .collect();
    let mut out = BytesMut::with_capacity(bytes as usize + 128);
    let options = RecordEncodeOptions { version: 2, compression: settings.compression };
    RecordBatchEncoder::encode(&mut out, &records, &options).map_err(|e| format!("encode a batch: {e}"))?;
    Ok((out.freeze(), bytes))
}

/// One produce request on its way: when it was due, and what it carries.
struct InFlight {
    due: Instant,
    records: u64,
    bytes: u64,
}

/// Runs `settings.connections` producer connections until the deadline (or the record
/// budget); returns what was measured after the warm-up.
pub fn produce(settings: &Arc<LoadSettings>, counters: &Arc<Counters>) -> Result<Measured, String> {
    let mut threads = Vec::new();
    for connection in 0..settings.connections {
        let (settings, counters) = (settings.clone(), counters.clone());
        threads.push(std::thread::spawn(move || produce_connection(&settings, &counters, connection)));
    }
    let mut measured = Measured::new();
    for thread in threads {
        measured.merge(thread.join().map_err(|_| "a producer thread panicked".to_string())??);
    }
    Ok(measured)
}

fn produce_connection(
    settings: &LoadSettings,
    counters: &Arc<Counters>,
    connection: usize,
) -> Result<Measured, String> {
    pin(settings.cpu);
    let (writer, reader) = wire::connect(settings.bootstrap)?;
    let window = if settings.rate.is_some() { OPEN_LOOP_IN_FLIGHT_MAX } else { settings.in_flight.max(1) };
    let (tokens, permits) = mpsc::sync_channel::<()>(window);
    for _ in 0..window {
        let _ = tokens.send(());
    }
    let (pending, in_flight) = mpsc::channel::<InFlight>();
    let acks = settings.acks;
    let reading = {
        let (counters, warm_end) = (counters.clone(), settings.warm_end());
        let cpu = settings.cpu;
        std::thread::spawn(move || {
            pin(cpu);
            read_produce_responses(reader, in_flight, tokens, &counters, warm_end, acks)
        })
    };
    let sent = send_produce_requests(settings, counters, writer, &permits, &pending, connection);
    drop(pending);
    let measured = reading.join().map_err(|_| "a producer reader panicked".to_string())??;
    sent?;
    Ok(measured)
}

fn send_produce_requests(
    settings: &LoadSettings,
    counters: &Counters,
    mut writer: Writer,
    permits: &mpsc::Receiver<()>,
    pending: &mpsc::Sender<InFlight>,
    connection: usize,
) -> Result<(), String> {
    let per_batch = settings.records_per_batch();
    let per_request = per_batch * settings.batches_per_request;
    let interval = settings
        .rate
        .map(|rate| Duration::from_secs_f64(per_request as f64 * settings.connections as f64 / rate));
    let filler = super::filler(settings.record_bytes_max.max(settings.record_bytes));
    let (deadline, mut next_due) = (settings.deadline(), Instant::now());
    let mut sequence = (connection as u64) << 40;
    let mut partition = connection as i32;
    while Instant::now() < deadline && !settings.budget_spent(counters) {
        let due = match interval {
            Some(interval) => {
                std::thread::sleep(next_due.saturating_duration_since(Instant::now()));
                let due = next_due;
                next_due += interval;
                due
            }
            None => Instant::now(),
        };
        if permits.recv_timeout(Duration::from_secs(30)).is_err() {
            return Err("no produce response for 30 s".into());
        }
        let mut data = Vec::with_capacity(settings.batches_per_request);
        let mut bytes = 0;
        for _ in 0..settings.batches_per_request.min(settings.partitions.max(1) as usize) {
            let (batch, batch_bytes) = encode_batch(settings, per_batch, sequence, &filler)?;
            sequence += per_batch as u64;
            bytes += batch_bytes;
            partition = (partition + 1) % settings.partitions;
            data.push((partition, batch));
        }
        let records = (data.len() * per_batch) as u64;
        writer.send_produce(settings.acks, 30_000, &settings.topic, &data)?;
        counters.sent.fetch_add(records, Ordering::Relaxed);
        if pending.send(InFlight { due, records, bytes }).is_err() {
            return Err("the response reader stopped".into());
        }
    }
    Ok(())
}

fn read_produce_responses(
    mut reader: Reader,
    in_flight: mpsc::Receiver<InFlight>,
    tokens: mpsc::SyncSender<()>,
    counters: &Counters,
    warm_end: Instant,
    acks: i16,
) -> Result<Measured, String> {
    let mut measured = Measured::new();
    for request in in_flight {
        let errors = if acks == 0 {
            0
        } else {
            let (_, response): (i32, ProduceResponse) = reader.receive(ApiKey::Produce, PRODUCE_VERSION)?;
            let partitions = response.responses.iter().flat_map(|t| t.partition_responses.iter());
            partitions.filter(|p| p.error_code != 0).count() as u64
        };
        let _ = tokens.try_send(());
        counters.errors.fetch_add(errors, Ordering::Relaxed);
        if errors > 0 {
            measured.errors += errors;
            continue;
        }
        counters.records.fetch_add(request.records, Ordering::Relaxed);
        counters.bytes.fetch_add(request.bytes, Ordering::Relaxed);
        if request.due >= warm_end {
            measured.record(request.records, request.bytes, request.due.elapsed());
        }
    }
    Ok(measured)
}

/// Where each partition starts: the log start (`earliest`) or end.
pub fn start_offsets(settings: &LoadSettings, earliest: bool) -> Result<Vec<i64>, String> {
    let timestamp = if earliest { -2 } else { -1 };
    let partitions = (0..settings.partitions)
        .map(|p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(timestamp));
    let topic = ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_string(settings.topic.clone())))
        .with_partitions(partitions.collect());
    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
    let response: ListOffsetsResponse =
        wire::call(settings.bootstrap, ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)?;
    let mut offsets = vec![0; settings.partitions as usize];
    for partition in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        if partition.error_code != 0 {
            return Err(format!(
                "ListOffsets of partition {}: error {}",
                partition.partition_index, partition.error_code
            ));
        }
        if let Some(slot) = offsets.get_mut(partition.partition_index as usize) {
            *slot = partition.offset;
        }
    }
    Ok(offsets)
}

/// Fetching consumers, one connection per `settings.connections`, each with its share of the
/// partitions. `e2e`: latency is now minus the time stamped in each record; otherwise it is
/// the time each fetch took.
pub fn consume(
    settings: &Arc<LoadSettings>,
    counters: &Arc<Counters>,
    offsets: Vec<i64>,
    e2e: bool,
) -> Result<Measured, String> {
    let ends = if settings.rewind { Some(start_offsets(settings, false)?) } else { None };
    let mut threads = Vec::new();
    for connection in 0..settings.connections {
        let mine: Vec<Position> = offsets
            .iter()
            .enumerate()
            .filter(|(p, _)| p % settings.connections == connection)
            .map(|(p, &offset)| Position {
                partition: p as i32,
                next: offset,
                start: offset,
                end: ends.as_ref().and_then(|ends| ends.get(p).copied()).filter(|&end| end > offset),
            })
            .collect();
        let (settings, counters) = (settings.clone(), counters.clone());
        threads.push(std::thread::spawn(move || consume_connection(&settings, &counters, mine, e2e)));
    }
    let mut measured = Measured::new();
    for thread in threads {
        measured.merge(thread.join().map_err(|_| "a consumer thread panicked".to_string())??);
    }
    Ok(measured)
}

/// Where a consumer connection reads a partition next; with `--rewind`, the range it reads
/// again and again.
struct Position {
    partition: i32,
    next: i64,
    start: i64,
    end: Option<i64>,
}

fn consume_connection(
    settings: &LoadSettings,
    counters: &Counters,
    mut positions: Vec<Position>,
    e2e: bool,
) -> Result<Measured, String> {
    pin(settings.cpu);
    let (mut writer, mut reader) = wire::connect(settings.bootstrap)?;
    let mut measured = Measured::new();
    // e2e consumers drain what the producers sent before the deadline; others stop there, as
    // what they read after it would count against the measured time.
    let deadline = if e2e { settings.consume_deadline() } else { settings.deadline() };
    let warm_end = settings.warm_end();
    let topic = TopicName(StrBytes::from_string(settings.topic.clone()));
    while Instant::now() < deadline && !settings.consumed_enough(counters) && !positions.is_empty() {
        let partitions = positions.iter().map(|position| {
            FetchPartition::default()
                .with_partition(position.partition)
                .with_fetch_offset(position.next)
                .with_partition_max_bytes(8 << 20)
        });
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(200)
            .with_min_bytes(1)
            .with_max_bytes(64 << 20)
            .with_topics(vec![
                FetchTopic::default().with_topic(topic.clone()).with_partitions(partitions.collect()),
            ]);
        let asked = Instant::now();
        writer.send(ApiKey::Fetch, FETCH_VERSION, &request)?;
        let (_, response): (i32, FetchResponse) = reader.receive(ApiKey::Fetch, FETCH_VERSION)?;
        let took = asked.elapsed();
        let (mut records, mut bytes) = (0u64, 0u64);
        for partition in response.responses.iter().flat_map(|t| t.partitions.iter()) {
            if partition.error_code != 0 {
                measured.errors += 1;
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(data) = &partition.records else { continue };
            let wire::Extent { records: count, next, .. } = wire::batch_extent(data);
            if let Some(position) = positions.iter_mut().find(|p| p.partition == partition.partition_index)
                && let Some(next) = next
            {
                position.next =
                    if position.end.is_some_and(|end| next >= end) { position.start } else { next };
            }
            records += count;
            bytes += data.len() as u64;
            if e2e && asked >= warm_end {
                record_e2e(&mut measured, data)?;
            }
        }
        counters.records.fetch_add(records, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        if asked >= warm_end && records > 0 {
            if e2e {
                measured.count(records, bytes);
            } else {
                measured.record(records, bytes, took);
            }
        }
    }
    Ok(measured)
}

/// Records each record's produce-to-consume latency from the time stamped in its value.
/// Uncompressed batches are walked in place; compressed ones are decoded.
fn record_e2e(measured: &mut Measured, data: &Bytes) -> Result<(), String> {
    let now = now_ns();
    let mut rest = &data[..];
    while rest.len() >= 61 {
        let total = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize + 12;
        if total > rest.len() || total < 61 {
            break;
        }
        let (batch, next) = rest.split_at(total);
        rest = next;
        let compressed = i16::from_be_bytes([batch[21], batch[22]]) & 0x7 != 0;
        let stamps =
            if compressed { decoded_stamps(data.slice_ref(batch))? } else { plain_stamps(&batch[61..]) };
        for stamp in stamps {
            measured.latency_us.saturating_record(now.saturating_sub(stamp) / 1000);
        }
    }
    Ok(())
}

fn decoded_stamps(batch: Bytes) -> Result<Vec<u64>, String> {
    let mut buf = batch;
    let sets =
        RecordBatchDecoder::decode_all(&mut buf).map_err(|e| format!("decode fetched records: {e}"))?;
    let values = sets.into_iter().flat_map(|set| set.records).filter_map(|record| record.value);
    Ok(values.filter_map(|value| stamp_of(&value)).collect())
}

fn stamp_of(value: &[u8]) -> Option<u64> {
    value.get(..8).map(|head| u64::from_be_bytes(head.try_into().unwrap_or([0; 8])))
}

/// The stamps at the start of each record value of an uncompressed batch's records section.
fn plain_stamps(mut records: &[u8]) -> Vec<u64> {
    let mut stamps = Vec::new();
    while let Some((length, used)) = varint(records) {
        let Some(record) = records.get(used..used + length.max(0) as usize) else { break };
        records = &records[used + record.len()..];
        // attributes (1 byte), timestamp delta, offset delta, key length + key, value length.
        let mut at = 1;
        for _ in 0..2 {
            let Some((_, n)) = varint(&record[at.min(record.len())..]) else { return stamps };
            at += n;
        }
        let Some((key, n)) = varint(&record[at.min(record.len())..]) else { return stamps };
        at += n + key.max(0) as usize;
        let Some((value, n)) = varint(&record[at.min(record.len())..]) else { return stamps };
        at += n;
        if value >= 8
            && let Some(stamp) = record.get(at..).and_then(stamp_of)
        {
            stamps.push(stamp);
        }
    }
    stamps
}

/// A zigzag varint (Kafka's record fields) and the bytes it took.
fn varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((value >> 1) as i64) ^ -((value & 1) as i64), i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_back_from_plain_and_compressed_batches() {
        for compression in
            [kafka_protocol::records::Compression::None, kafka_protocol::records::Compression::Lz4]
        {
            let mut settings = crate::bench::tests::settings();
            settings.compression = compression;
            settings.keys = 3;
            let before = now_ns();
            let (batch, _) = encode_batch(&settings, 5, 0, &crate::bench::filler(2048)).expect("encode");
            let mut measured = Measured::new();
            record_e2e(&mut measured, &batch).expect("parse");
            assert_eq!(measured.latency_us.len(), 5, "{compression:?}");
            assert!(measured.latency_us.max() <= (now_ns() - before) / 1000 + 1, "{compression:?}");
        }
    }
}
