//! Kafka records this process writes itself (the group coordinator's offsets topic, the load
//! generator's batches), built for the kafka-protocol crate's batch encoder. Client batches
//! pass through the broker as bytes and never become `Record`s.

use bytes::Bytes;
use bytes::BytesMut;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// `records` as one uncompressed v2 batch (several if their producer fields differ).
pub fn encode(records: &[Record]) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut out, records, &options)
        .map_err(|e| format!("encode a record batch: {e}"))?;
    Ok(out.freeze())
}

/// A batch of plain records with these keys and values (a `None` value is a tombstone), stamped
/// `now`: how the coordinators write their internal topics.
pub fn encode_keyed(
    entries: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    now: i64,
) -> Result<Bytes, String> {
    let records: Vec<Record> =
        entries.enumerate().map(|(i, (key, value))| plain(i as i64, now, Some(key), value)).collect();
    encode(&records)
}

/// The control batch ending producer `producer_id`'s transaction at `epoch`: one record whose
/// key is (version 0, type 1 commit / 0 abort) and value (version 0, coordinator epoch).
pub fn transaction_marker(
    producer_id: i64,
    epoch: i16,
    commits: bool,
    coordinator_epoch: i32,
    now: i64,
) -> Record {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&i16::from(commits).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    Record {
        transactional: true,
        control: true,
        producer_id,
        producer_epoch: epoch,
        ..plain(0, now, Some(Bytes::from(key)), Some(Bytes::from(value)))
    }
}

/// A plain record (no transaction, no producer id, no headers) at `offset` within its batch.
/// Its `sequence` follows the crate's convention for a batch without sequence numbers (base
/// sequence -1, plus the offset delta): the encoder keeps records in one batch only while
/// offset minus sequence stays the same, so a constant -1 made a batch of every record.
pub fn plain(offset: i64, timestamp: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: (offset as i32).wrapping_sub(1),
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_records_share_one_batch() {
        let records: Vec<_> =
            (0..5).map(|i| super::plain(i, 1, None, Some(bytes::Bytes::from_static(b"v")))).collect();
        let mut bytes = super::encode(&records).expect("encoded");
        let batches = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).expect("decoded");
        assert_eq!(batches.len(), 1, "one batch, not one per record");
        let decoded = &batches[0].records;
        assert_eq!(decoded.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(decoded[0].sequence, -1, "the batch has no base sequence");
    }
}
