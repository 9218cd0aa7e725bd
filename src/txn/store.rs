//! What the transaction coordinator writes to `__transaction_state`, in Kafka's TransactionLog
//! formats (key v0: the transactional id; value v0: producer id and epoch, timeout, status,
//! partitions, timestamps), so tools that read Kafka's transaction log read ours. A record with
//! no value is a tombstone (an expired transactional id).

use crate::codec::{Reader, put_string};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::BTreeSet;

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// Kafka's TransactionState, with its ids as written to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl Status {
    pub fn id(self) -> i8 {
        match self {
            Status::Empty => 0,
            Status::Ongoing => 1,
            Status::PrepareCommit => 2,
            Status::PrepareAbort => 3,
            Status::CompleteCommit => 4,
            Status::CompleteAbort => 5,
            Status::Dead => 6,
            Status::PrepareEpochFence => 7,
        }
    }

    fn from_id(id: i8) -> Result<Status, String> {
        Ok(match id {
            0 => Status::Empty,
            1 => Status::Ongoing,
            2 => Status::PrepareCommit,
            3 => Status::PrepareAbort,
            4 => Status::CompleteCommit,
            5 => Status::CompleteAbort,
            6 => Status::Dead,
            7 => Status::PrepareEpochFence,
            other => return Err(format!("unknown transaction status {other}")),
        })
    }

    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            Status::Empty => "Empty",
            Status::Ongoing => "Ongoing",
            Status::PrepareCommit => "PrepareCommit",
            Status::PrepareAbort => "PrepareAbort",
            Status::CompleteCommit => "CompleteCommit",
            Status::CompleteAbort => "CompleteAbort",
            Status::Dead => "Dead",
            Status::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// One transactional id's state as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionValue {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub status: Status,
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// -1 when no transaction is running.
    pub start_ms: i64,
}

/// One record of the transaction log: a transactional id and its state, or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub transactional_id: String,
    pub value: Option<TransactionValue>,
}

impl Entry {
    fn key(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i16(KEY_VERSION);
        put_string(&mut out, &self.transactional_id);
        out.freeze()
    }

    fn value(&self) -> Option<Bytes> {
        let value = self.value.as_ref()?;
        let mut out = BytesMut::new();
        out.put_i16(VALUE_VERSION);
        out.put_i64(value.producer_id);
        out.put_i16(value.epoch);
        out.put_i32(value.timeout_ms);
        out.put_i8(value.status.id());
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (topic, partition) in &value.partitions {
            match topics.last_mut() {
                Some((last, partitions)) if *last == topic => partitions.push(*partition),
                _ => topics.push((topic, vec![*partition])),
            }
        }
        out.put_i32(topics.len() as i32);
        for (topic, partitions) in topics {
            put_string(&mut out, topic);
            out.put_i32(partitions.len() as i32);
            partitions.iter().for_each(|&partition| out.put_i32(partition));
        }
        out.put_i64(value.last_update_ms);
        out.put_i64(value.start_ms);
        Some(out.freeze())
    }
}

/// A record batch (uncompressed, v2) holding `entries`, stamped `now`.
pub fn encode(entries: &[Entry], now: i64) -> Result<Bytes, String> {
    crate::record::encode_keyed(entries.iter().map(|entry| (entry.key(), entry.value())), now)
}

/// The entries of the record batches in `chunk`; records that are not ours are skipped.
pub fn decode(chunk: &Bytes) -> Result<Vec<Entry>, String> {
    let mut buf = chunk.clone();
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for record in sets.into_iter().flat_map(|set| set.records).filter(|record| !record.control) {
        match decode_record(record.key.as_deref(), record.value.as_deref()) {
            Ok(entry) => entries.push(entry),
            Err(reason) => {
                tracing::warn!(offset = record.offset, reason, "skipping a transaction-log record")
            }
        }
    }
    Ok(entries)
}

fn decode_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Entry, String> {
    let mut key = Reader(key.ok_or("a record without a key")?);
    let version = key.i16()?;
    if version != KEY_VERSION {
        return Err(format!("unknown key version {version}"));
    }
    let transactional_id = key.string()?;
    let value = value.map(|value| transaction_value(&mut Reader(value))).transpose()?;
    Ok(Entry { transactional_id, value })
}

fn transaction_value(value: &mut Reader<'_>) -> Result<TransactionValue, String> {
    let version = value.i16()?;
    if version != VALUE_VERSION {
        return Err(format!("unknown value version {version}"));
    }
    let (producer_id, epoch, timeout_ms) = (value.i64()?, value.i16()?, value.i32()?);
    let status = Status::from_id(value.take(1)?[0] as i8)?;
    let mut partitions = BTreeSet::new();
    let topics = value.i32()?;
    for _ in 0..topics.max(0) {
        let topic = value.string()?;
        let count = value.i32()?;
        for _ in 0..count.max(0) {
            partitions.insert((topic.clone(), value.i32()?));
        }
    }
    let (last_update_ms, start_ms) = (value.i64()?, value.i64()?);
    Ok(TransactionValue { producer_id, epoch, timeout_ms, status, partitions, last_update_ms, start_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_round_trip_through_a_record_batch() {
        let value = TransactionValue {
            producer_id: 4000,
            epoch: 3,
            timeout_ms: 60_000,
            status: Status::Ongoing,
            partitions: [("a".to_string(), 0), ("a".to_string(), 2), ("b".to_string(), 1)].into(),
            last_update_ms: 17,
            start_ms: 11,
        };
        let entries = vec![
            Entry { transactional_id: "tx-1".into(), value: Some(value) },
            Entry { transactional_id: "tx-2".into(), value: None },
        ];
        let batch = encode(&entries, 5).expect("encode");
        assert_eq!(decode(&batch).expect("decode"), entries);
    }

    proptest! {
        #[test]
        fn garbage_values_are_refused_not_panicked_on(value in proptest::collection::vec(any::<u8>(), 0..80)) {
            let key = Entry { transactional_id: "t".into(), value: None }.key();
            let _refused_or_read = decode_record(Some(&key), Some(&value));
        }
    }
}
