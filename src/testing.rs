//! Deterministic Kafka record batches for tests, benchmarks and the crash-test child: the
//! payload of every record is a pure function of a seed, so a reader can check it byte for byte.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

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
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    if let Err(error) = RecordBatchEncoder::encode(&mut buf, &records, &options) {
        panic!("encoding a test batch failed: {error}");
    }
    buf.freeze()
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
