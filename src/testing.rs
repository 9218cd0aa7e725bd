//! Deterministic Kafka record batches for tests, benchmarks and the crash-test child: the
//! payload of every record is a pure function of a seed, so a reader can check it byte for byte.

use bytes::Bytes;
use kafka_protocol::records::Record;

/// A v2 batch of `count` records of `value_bytes` each, encoded by the kafka-protocol crate
/// (as a producer would), with record payloads derived from `seed`.
pub fn encode_batch(seed: u64, count: usize, value_bytes: usize, timestamp: i64) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let key = Some(Bytes::from(format!("key-{seed}-{i}")));
            let value = Some(payload(seed.wrapping_mul(1_000_003).wrapping_add(i as u64), value_bytes));
            // kafka-protocol batches records whose offset - sequence agree.
            Record { sequence: i as i32, ..crate::record::plain(i as i64, timestamp + i as i64, key, value) }
        })
        .collect();
    encode_records(&records)
}

/// Like `encode_batch`, written by idempotent producer `producer_id` at `epoch`, its first
/// record carrying sequence `base_sequence`.
pub fn encode_idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, count: usize) -> Bytes {
    encode_producer_batch(producer_id, epoch, base_sequence, count, false)
}

/// Like `encode_idempotent_batch`, inside a transaction.
pub fn encode_transactional_batch(producer_id: i64, epoch: i16, base_sequence: i32, count: usize) -> Bytes {
    encode_producer_batch(producer_id, epoch, base_sequence, count, true)
}

fn encode_producer_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    count: usize,
    transactional: bool,
) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let value = Some(payload(producer_id as u64 ^ (base_sequence as u64 + i as u64), 40));
            Record {
                transactional,
                producer_id,
                producer_epoch: epoch,
                sequence: base_sequence.wrapping_add(i as i32),
                ..crate::record::plain(i as i64, 1_000 + i as i64, None, value)
            }
        })
        .collect();
    encode_records(&records)
}

fn encode_records(records: &[Record]) -> Bytes {
    crate::record::encode(records).unwrap_or_else(|error| panic!("encoding a test batch failed: {error}"))
}

/// `len` pseudo-random bytes determined by `seed` (xorshift).
pub fn payload(seed: u64, len: usize) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}
