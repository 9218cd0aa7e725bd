//! The generator's uncompressed record batches, written straight into their bytes.
//!
//! The kafka-protocol crate's encoder takes a `Record` per record, each value a `Bytes` of its
//! own, and copies every value again into the batch: at max produce (8 connections, 1 KiB
//! records) that, the value buffers and the copy of each batch into the request frame kept the
//! generator's core busy (13.6% `memmove`, 3.3% `put_slice`, 1.8% record encoding, and the
//! allocator's), so the generator, not the broker, set the pace: with 10 or 20 requests in
//! flight instead of 5 the broker only idled more (iowait 7% -> 18% of its core) at the same
//! MB/s. Here each value is copied once, from the filler into the batch. Compressed batches
//! still go through the crate (`load::encode_batch`).

use crate::batch::{ATTRIBUTES_AT, CRC_AT, HEADER_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2, NO_PRODUCER_ID};
use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of a zigzag varint's largest encoding (a 64-bit value).
const VARINT_BYTES_MAX: usize = 10;
/// Bytes a record takes beyond its key and value: its length, attributes, timestamp and offset
/// deltas, key and value lengths, header count, each at its largest.
const RECORD_OVERHEAD_BYTES_MAX: usize = 1 + 6 * VARINT_BYTES_MAX;

/// One record to write: its key (if any) and its value, the stamp followed by filler bytes.
#[derive(Clone, Copy)]
pub struct RecordShape<'a> {
    pub key: Option<&'a [u8]>,
    pub stamp: [u8; 8],
    pub filler: &'a [u8],
}

/// An uncompressed v2 batch (no producer id, no headers) of `records`, all at `timestamp_ms`,
/// offsets 0.. within the batch. Each value is the record's stamp followed by its filler, so
/// the e2e consumer reads the stamp from the first 8 bytes of the value, as from the crate's.
pub fn encode_plain<'a>(
    records: impl ExactSizeIterator<Item = RecordShape<'a>> + Clone,
    timestamp_ms: i64,
) -> Bytes {
    let count = records.len();
    let capacity = HEADER_BYTES
        + records
            .clone()
            .map(|r| RECORD_OVERHEAD_BYTES_MAX + r.key.map_or(0, <[u8]>::len) + 8 + r.filler.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(capacity);
    out.put_i64(0); // base offset: the broker assigns it
    out.put_i32(0); // batch length, set below
    out.put_i32(-1); // partition leader epoch: a producer's batches carry none
    out.put_i8(MAGIC_V2);
    out.put_u32(0); // CRC32C, set below
    out.put_i16(0); // attributes: no compression, create time, not transactional
    out.put_i32(count.saturating_sub(1) as i32); // last offset delta
    out.put_i64(timestamp_ms); // base timestamp
    out.put_i64(timestamp_ms); // max timestamp
    out.put_i64(NO_PRODUCER_ID);
    out.put_i16(-1); // producer epoch
    out.put_i32(-1); // base sequence
    out.put_i32(count as i32);
    debug_assert_eq!(out.len(), HEADER_BYTES);
    for (offset_delta, record) in records.enumerate() {
        let key_len = record.key.map_or(0, <[u8]>::len);
        let value_len = 8 + record.filler.len();
        let mut fields = [0u8; 4 * VARINT_BYTES_MAX];
        let mut at = 1; // attributes: 0
        at += put_varint(&mut fields[at..], 0); // timestamp delta
        at += put_varint(&mut fields[at..], offset_delta as i64);
        at += put_varint(&mut fields[at..], record.key.map_or(-1, |key| key.len() as i64));
        let mut value_length = [0u8; VARINT_BYTES_MAX];
        let value_length_len = put_varint(&mut value_length, value_len as i64);
        let body = at + key_len + value_length_len + value_len + 1;
        let mut length = [0u8; VARINT_BYTES_MAX];
        let length_len = put_varint(&mut length, body as i64);
        out.put_slice(&length[..length_len]);
        out.put_slice(&fields[..at]);
        if let Some(key) = record.key {
            out.put_slice(key);
        }
        out.put_slice(&value_length[..value_length_len]);
        out.put_slice(&record.stamp);
        out.put_slice(record.filler);
        out.put_u8(0); // no headers
    }
    let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
    out[LOG_OVERHEAD_BYTES - 4..LOG_OVERHEAD_BYTES].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// Writes `value` as a zigzag varint at the start of `out`; returns the bytes it took.
fn put_varint(out: &mut [u8], value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut at = 0;
    while zigzag >= 0x80 {
        out[at] = (zigzag as u8) | 0x80;
        zigzag >>= 7;
        at += 1;
    }
    out[at] = zigzag as u8;
    at + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};

    /// What the crate's encoder makes of the same records.
    fn by_the_crate(shapes: &[RecordShape], timestamp_ms: i64) -> Bytes {
        let records: Vec<_> = shapes
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let mut value = shape.stamp.to_vec();
                value.extend_from_slice(shape.filler);
                let key = shape.key.map(Bytes::copy_from_slice);
                crate::record::plain(i as i64, timestamp_ms, key, Some(Bytes::from(value)))
            })
            .collect();
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut out, &records, &options).expect("encode");
        out.freeze()
    }

    #[test]
    fn batches_are_byte_for_byte_the_crates() {
        let filler = crate::testing::payload(7, 70_000);
        let keys: [&[u8]; 2] = [b"key-1", b"a-longer-key-that-needs-no-more-than-one-varint-byte"];
        fn shape<'a>(key: Option<&'a [u8]>, stamp: u64, filler: &'a [u8]) -> RecordShape<'a> {
            RecordShape { key, stamp: stamp.to_be_bytes(), filler }
        }
        let cases: Vec<Vec<RecordShape>> = vec![
            vec![shape(None, 1, &filler[..1016])],
            (0..16).map(|i| shape(None, i, &filler[..1016])).collect(),
            (0..200).map(|i| shape(Some(keys[i % 2]), i as u64 * 977, &filler[..i * 37])).collect(),
            vec![shape(Some(keys[0]), u64::MAX, &filler[..65_000]); 3],
            vec![shape(None, 0, &filler[..0])],
        ];
        for (case, shapes) in cases.iter().enumerate() {
            let ours = encode_plain(shapes.iter().copied(), 1_700_000_000_123);
            assert_eq!(ours, by_the_crate(shapes, 1_700_000_000_123), "case {case}");
            crate::batch::validate(&ours, 1 << 20).expect("valid");
        }
    }

    #[test]
    fn varints_are_zigzag() {
        for (value, bytes) in
            [(0i64, &[0u8][..]), (-1, &[1]), (1, &[2]), (63, &[126]), (64, &[128, 1]), (-65, &[129, 1])]
        {
            let mut out = [0u8; VARINT_BYTES_MAX];
            let len = put_varint(&mut out, value);
            assert_eq!(&out[..len], bytes, "{value}");
        }
        let mut out = [0u8; VARINT_BYTES_MAX];
        assert_eq!(put_varint(&mut out, i64::MIN), VARINT_BYTES_MAX);
    }
}
