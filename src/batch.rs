//! Kafka record batch format v2 ("magic 2"): the header fields the log reads and rewrites.
//!
//! Record bytes are never decoded here: the log stores batches byte for byte as received and
//! only looks at the fixed 61-byte header. The v2 CRC (CRC32C) covers everything from the
//! attributes field to the end of the batch, so the base offset and the partition leader epoch
//! can be rewritten without recomputing it.

use bytes::Bytes;

/// Bytes of the fixed v2 header before the first record.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the `batchLength` field's coverage begins: baseOffset (8) + batchLength (4).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Smallest legal `batchLength`: the header after the overhead, with zero records.
pub const BATCH_LENGTH_MIN: usize = HEADER_BYTES - LOG_OVERHEAD_BYTES;

const BASE_OFFSET_AT: usize = 0;
pub const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
/// Where the CRC32C sits, and where the bytes it covers begin (the attributes field).
pub const CRC_AT: usize = 17;
pub const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

/// The only record format ringmq stores. Older formats are rejected at the protocol layer.
pub const MAGIC_V2: i8 = 2;

const ATTRIBUTE_LOG_APPEND_TIME: i16 = 1 << 3;
const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x7;
const ATTRIBUTE_TRANSACTIONAL: i16 = 1 << 4;
const ATTRIBUTE_CONTROL: i16 = 1 << 5;

/// The producer id of a batch written without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;

/// The smallest encoding of one v2 record: seven one-byte varints and the attributes byte
/// (length, attributes, timestamp delta, offset delta, key length -1, value length -1, no
/// headers).
const RECORD_BYTES_MIN: usize = 7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: {have} of {need} bytes present")]
    Truncated { need: usize, have: usize },
    #[error("batch length {0} is below the v2 header size")]
    LengthTooSmall(i32),
    #[error("batch of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported record format magic {0}")]
    BadMagic(i8),
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    InconsistentCount { count: i32, last_offset_delta: i32 },
}

/// The header fields of one v2 batch, read from its first 61 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(word)
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(word)
}

impl BatchHeader {
    /// Reads the header at the start of `buf`. Checks only what is needed to know the batch's
    /// extent (length and magic); `validate` checks the rest.
    pub fn parse(buf: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
        // The magic byte decides how the rest reads: check it first, so an older message
        // format is reported as such rather than as a length that does not fit v2.
        if let Some(&magic) = buf.get(MAGIC_AT).filter(|&&magic| magic as i8 != MAGIC_V2) {
            return Err(BatchError::BadMagic(magic as i8));
        }
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated { need: HEADER_BYTES, have: buf.len() });
        }
        let batch_length = be_i32(buf, BATCH_LENGTH_AT);
        if batch_length < BATCH_LENGTH_MIN as i32 {
            return Err(BatchError::LengthTooSmall(batch_length));
        }
        let total = LOG_OVERHEAD_BYTES + batch_length as usize;
        if total > batch_bytes_max {
            return Err(BatchError::TooLarge { len: total, max: batch_bytes_max });
        }
        let magic = buf[MAGIC_AT] as i8;
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET_AT),
            batch_length,
            leader_epoch: be_i32(buf, LEADER_EPOCH_AT),
            magic,
            crc: be_i32(buf, CRC_AT) as u32,
            attributes: be_i16(buf, ATTRIBUTES_AT),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_AT),
            producer_id: be_i64(buf, PRODUCER_ID_AT),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(buf, BASE_SEQUENCE_AT),
            records_count: be_i32(buf, RECORDS_COUNT_AT),
        })
    }

    /// Bytes the whole batch occupies in the log.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// Written by an idempotent or transactional producer: its id, epoch and sequence count.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id != NO_PRODUCER_ID
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// A control batch (a transaction marker), not records of the application.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// The sequence number of the batch's last record; sequences wrap from `i32::MAX` to 0.
    pub fn last_sequence(&self) -> i32 {
        sequence_after(self.base_sequence, self.last_offset_delta)
    }
}

/// The sequence `steps` after `sequence`, wrapping from `i32::MAX` to 0 as Kafka's producers do.
pub fn sequence_after(sequence: i32, steps: i32) -> i32 {
    if sequence > i32::MAX - steps { steps - (i32::MAX - sequence) - 1 } else { sequence + steps }
}

/// Whether a control batch's marker commits (`Some(true)`), aborts (`Some(false)`), or is not
/// a transaction marker this code can read (`None`). The marker is the key of the batch's
/// first record: version (i16) and type (i16: 0 abort, 1 commit). Bounds-checked throughout.
pub fn control_commits(batch: &[u8]) -> Option<bool> {
    let mut at = HEADER_BYTES;
    let _length = varint(batch, &mut at)?;
    at += 1; // attributes
    let _timestamp_delta = varint(batch, &mut at)?;
    let _offset_delta = varint(batch, &mut at)?;
    let key_length = varint(batch, &mut at)?;
    if key_length < 4 {
        return None;
    }
    let key = batch.get(at..at + 4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// A zigzag varint (Kafka's record fields) at `at`, advancing it; at most 10 bytes.
fn varint(buf: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// Parses and fully checks the batch at the start of `buf`: header, that all its bytes are
/// present, and its CRC32C. Returns the header; the batch is `buf[..header.total_bytes()]`.
pub fn validate(buf: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf, batch_bytes_max)?;
    let total = header.total_bytes();
    if buf.len() < total {
        return Err(BatchError::Truncated { need: total, have: buf.len() });
    }
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_AT..total]);
    if computed != header.crc {
        return Err(BatchError::BadCrc { stored: header.crc, computed });
    }
    Ok(header)
}

/// Checks what Kafka's log validator requires of a batch a producer sends: the offsets it
/// claims are exactly the records it holds, and (uncompressed) that its bytes can hold that
/// many records, so a lying count cannot claim offsets it does not use.
pub fn validate_from_producer(header: &BatchHeader) -> Result<(), BatchError> {
    let uncompressed = header.attributes & ATTRIBUTE_COMPRESSION_MASK == 0;
    let records_bytes = header.total_bytes().saturating_sub(HEADER_BYTES);
    let too_many =
        uncompressed && (header.records_count as usize).saturating_mul(RECORD_BYTES_MIN) > records_bytes;
    let inconsistent = header.records_count <= 0
        || header.last_offset_delta < 0
        || too_many
        || i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1;
    if inconsistent {
        return Err(BatchError::InconsistentCount {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(())
}

/// Splits a produce request's record set into its batches, validating each. Either every batch
/// is valid and all are returned, or nothing is.
pub fn split_validated(
    records: &Bytes,
    batch_bytes_max: usize,
) -> Result<Vec<(BatchHeader, Bytes)>, BatchError> {
    let mut batches = Vec::new();
    let mut position = 0;
    while position < records.len() {
        let header = validate(&records[position..], batch_bytes_max)?;
        validate_from_producer(&header)?;
        let end = position + header.total_bytes();
        batches.push((header, records.slice(position..end)));
        position = end;
    }
    if batches.is_empty() {
        return Err(BatchError::Truncated { need: HEADER_BYTES, have: 0 });
    }
    Ok(batches)
}

/// The whole batches of a fetched partition's records, checked (CRC included); a batch cut
/// short at the end (a fetch may end inside one) is left for the next fetch.
pub fn whole_batches(records: &Bytes) -> Result<Vec<(BatchHeader, Bytes)>, BatchError> {
    let mut batches = Vec::new();
    let mut position = 0;
    while position < records.len() {
        let header = match validate(&records[position..], usize::MAX) {
            Ok(header) => header,
            Err(BatchError::Truncated { .. }) => break,
            Err(error) => return Err(error),
        };
        let end = position + header.total_bytes();
        batches.push((header, records.slice(position..end)));
        position = end;
    }
    Ok(batches)
}

/// The first `HEADER_BYTES` of a batch, rewritten for the log: offsets assigned, leader epoch
/// stamped and, for LogAppendTime topics, the broker's time set with the CRC recomputed.
/// The rest of the batch is stored from the producer's buffer unchanged.
pub fn rewrite_header(
    batch: &[u8],
    base_offset: i64,
    leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) -> [u8; HEADER_BYTES] {
    assert!(batch.len() >= HEADER_BYTES, "rewrite_header on a batch shorter than its header");
    let mut header = [0u8; HEADER_BYTES];
    header.copy_from_slice(&batch[..HEADER_BYTES]);
    header[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    header[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(now_ms) = log_append_time_ms {
        let attributes = be_i16(&header, ATTRIBUTES_AT) | ATTRIBUTE_LOG_APPEND_TIME;
        header[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        header[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[ATTRIBUTES_AT..]), &batch[HEADER_BYTES..]);
        header[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::encode_batch;

    #[test]
    fn parses_a_batch_encoded_by_kafka_protocol() {
        let batch = encode_batch(7, 3, 100, 1_700_000_000_000);
        let header = validate(&batch, usize::MAX).expect("valid batch");
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.total_bytes(), batch.len());
        validate_from_producer(&header).expect("producer batch");
    }

    #[test]
    fn rejects_every_single_bit_flip_after_the_leader_epoch() {
        let batch = encode_batch(0, 2, 40, 1);
        for byte in MAGIC_AT..batch.len() {
            for bit in 0..8 {
                let mut flipped = batch.to_vec();
                flipped[byte] ^= 1 << bit;
                assert!(validate(&flipped, usize::MAX).is_err(), "flip at {byte}:{bit}");
            }
        }
    }

    #[test]
    fn rejects_lengths_that_lie() {
        let batch = encode_batch(0, 1, 10, 1);
        let mut short = batch.to_vec();
        short[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(validate(&short, usize::MAX), Err(BatchError::LengthTooSmall(10)));
        let mut long = batch.to_vec();
        long[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(validate(&long, 1 << 20), Err(BatchError::TooLarge { .. })));
        assert!(matches!(validate(&batch[..batch.len() - 1], usize::MAX), Err(BatchError::Truncated { .. })));
    }

    #[test]
    fn rewriting_offsets_keeps_the_crc_valid_and_log_append_time_recomputes_it() {
        let batch = encode_batch(0, 4, 32, 5);
        let header = rewrite_header(&batch, 1234, 9, None);
        let mut stored = header.to_vec();
        stored.extend_from_slice(&batch[HEADER_BYTES..]);
        let parsed = validate(&stored, usize::MAX).expect("still valid");
        assert_eq!((parsed.base_offset, parsed.leader_epoch), (1234, 9));

        let header = rewrite_header(&batch, 1234, 9, Some(77));
        let mut stored = header.to_vec();
        stored.extend_from_slice(&batch[HEADER_BYTES..]);
        let parsed = validate(&stored, usize::MAX).expect("crc recomputed");
        assert!(parsed.is_log_append_time());
        assert_eq!(parsed.max_timestamp, 77);
    }

    #[test]
    fn a_record_count_the_bytes_cannot_hold_is_rejected() {
        let batch = encode_batch(0, 2, 10, 1);
        let mut header = validate(&batch, usize::MAX).expect("valid");
        header.records_count = 1_000_000;
        header.last_offset_delta = 999_999;
        assert!(matches!(validate_from_producer(&header), Err(BatchError::InconsistentCount { .. })));
    }

    #[test]
    fn split_is_all_or_nothing() {
        let mut two = encode_batch(0, 2, 10, 1).to_vec();
        two.extend_from_slice(&encode_batch(0, 3, 10, 1));
        let two = Bytes::from(two);
        assert_eq!(split_validated(&two, usize::MAX).expect("valid").len(), 2);
        let mut broken = two.to_vec();
        let last = broken.len() - 1;
        broken[last] ^= 0xff;
        assert!(split_validated(&Bytes::from(broken), usize::MAX).is_err());
        assert!(split_validated(&Bytes::new(), usize::MAX).is_err());
    }
}
