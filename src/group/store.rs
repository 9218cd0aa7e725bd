//! What the group coordinator writes to its internal topic, `__consumer_offsets`, in Kafka's own
//! key and value formats (so tools that read Kafka's offsets topic read ours): committed offsets
//! (key v1, value v3) and group metadata (key v2, value v3). A record with no value is a
//! tombstone. Every byte read back is bounds-checked; a record this code cannot read is
//! skipped with a warning, never a panic.

use crate::codec::{Reader, put_bytes, put_nullable_string, put_string};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchDecoder};

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

impl Key {
    pub fn group(&self) -> &str {
        match self {
            Key::Offset { group, .. } | Key::Group { group } => group,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// One entry of the offsets topic: a key and its value, or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Offset { group: String, topic: String, partition: i32, value: Option<OffsetValue> },
    Group { group: String, value: Option<GroupValue> },
}

impl Entry {
    pub fn group(&self) -> &str {
        match self {
            Entry::Offset { group, .. } | Entry::Group { group, .. } => group,
        }
    }

    fn key(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Entry::Offset { group, topic, partition, .. } => {
                out.put_i16(OFFSET_KEY_VERSION);
                put_string(&mut out, group);
                put_string(&mut out, topic);
                out.put_i32(*partition);
            }
            Entry::Group { group, .. } => {
                out.put_i16(GROUP_KEY_VERSION);
                put_string(&mut out, group);
            }
        }
        out.freeze()
    }

    fn value(&self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        match self {
            Entry::Offset { value: None, .. } | Entry::Group { value: None, .. } => return None,
            Entry::Offset { value: Some(value), .. } => {
                out.put_i16(OFFSET_VALUE_VERSION);
                out.put_i64(value.offset);
                out.put_i32(value.leader_epoch);
                put_string(&mut out, &value.metadata);
                out.put_i64(value.commit_timestamp);
            }
            Entry::Group { value: Some(value), .. } => {
                out.put_i16(GROUP_VALUE_VERSION);
                put_string(&mut out, &value.protocol_type);
                out.put_i32(value.generation);
                put_nullable_string(&mut out, value.protocol.as_deref());
                put_nullable_string(&mut out, value.leader.as_deref());
                out.put_i64(value.state_timestamp);
                out.put_i32(value.members.len() as i32);
                for member in &value.members {
                    put_string(&mut out, &member.member_id);
                    put_nullable_string(&mut out, member.instance_id.as_deref());
                    put_string(&mut out, &member.client_id);
                    put_string(&mut out, &member.client_host);
                    out.put_i32(member.rebalance_timeout_ms);
                    out.put_i32(member.session_timeout_ms);
                    put_bytes(&mut out, &member.subscription);
                    put_bytes(&mut out, &member.assignment);
                }
            }
        }
        Some(out.freeze())
    }
}

/// A record batch (uncompressed, v2) holding `entries`, stamped `now`.
pub fn encode(entries: &[Entry], now: i64) -> Result<Bytes, String> {
    crate::record::encode_keyed(entries.iter().map(|entry| (entry.key(), entry.value())), now)
}

/// The batch of a transactional offset commit (TxnOffsetCommit): `entries` written by producer
/// `producer_id` at `epoch`, visible only once the transaction's commit marker follows.
pub fn encode_transactional(
    entries: &[Entry],
    producer_id: i64,
    epoch: i16,
    now: i64,
) -> Result<Bytes, String> {
    let records: Vec<Record> = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| Record {
            transactional: true,
            producer_id,
            producer_epoch: epoch,
            ..crate::record::plain(i as i64, now, Some(entry.key()), entry.value())
        })
        .collect();
    crate::record::encode(&records)
}

/// What one record of the offsets topic says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// An entry that applies when read.
    Entry(Entry),
    /// An offset commit of producer `producer_id`'s transaction: applies at its commit marker.
    Transactional { producer_id: i64, epoch: i16, entry: Entry },
    /// The end of producer `producer_id`'s transaction.
    Marker { producer_id: i64, commits: bool },
}

/// The records of the batches in `chunk`; records that are not ours are skipped.
pub fn decode(chunk: &Bytes) -> Result<Vec<Decoded>, String> {
    let mut buf = chunk.clone();
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| e.to_string())?;
    let mut decoded = Vec::new();
    for record in sets.into_iter().flat_map(|set| set.records) {
        if record.control {
            let commits = record.key.as_deref().and_then(|key| key.get(2..4)).map(|kind| kind == [0, 1]);
            if let Some(commits) = commits {
                decoded.push(Decoded::Marker { producer_id: record.producer_id, commits });
            }
            continue;
        }
        match decode_record(record.key.as_deref(), record.value.as_deref()) {
            Ok(entry) if record.transactional => decoded.push(Decoded::Transactional {
                producer_id: record.producer_id,
                epoch: record.producer_epoch,
                entry,
            }),
            Ok(entry) => decoded.push(Decoded::Entry(entry)),
            Err(reason) => tracing::warn!(offset = record.offset, reason, "skipping an offsets-topic record"),
        }
    }
    Ok(decoded)
}

fn decode_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Entry, String> {
    let mut key = Reader(key.ok_or("a record without a key")?);
    let version = key.i16()?;
    let entry = match version {
        0 | OFFSET_KEY_VERSION => {
            let (group, topic, partition) = (key.string()?, key.string()?, key.i32()?);
            let value = value.map(|value| offset_value(&mut Reader(value))).transpose()?;
            Entry::Offset { group, topic, partition, value }
        }
        GROUP_KEY_VERSION => {
            let group = key.string()?;
            let value = value.map(|value| group_value(&mut Reader(value))).transpose()?;
            Entry::Group { group, value }
        }
        other => return Err(format!("unknown key version {other}")),
    };
    Ok(entry)
}

fn offset_value(value: &mut Reader<'_>) -> Result<OffsetValue, String> {
    let version = value.i16()?;
    if !(0..=OFFSET_VALUE_VERSION).contains(&version) {
        return Err(format!("unknown offset value version {version}"));
    }
    let offset = value.i64()?;
    let leader_epoch = if version >= 3 { value.i32()? } else { -1 };
    let metadata = value.string()?;
    let commit_timestamp = value.i64()?;
    Ok(OffsetValue { offset, leader_epoch, metadata, commit_timestamp })
}

fn group_value(value: &mut Reader<'_>) -> Result<GroupValue, String> {
    let version = value.i16()?;
    if !(0..=GROUP_VALUE_VERSION).contains(&version) {
        return Err(format!("unknown group value version {version}"));
    }
    let protocol_type = value.string()?;
    let generation = value.i32()?;
    let protocol = value.nullable_string()?;
    let leader = value.nullable_string()?;
    let state_timestamp = if version >= 2 { value.i64()? } else { -1 };
    let count = value.i32()?;
    // Each member takes at least 28 bytes: a count beyond what is left is a lie.
    if count < 0 || count as usize > value.0.len() / 28 {
        return Err(format!("{count} members in {} bytes", value.0.len()));
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let member_id = value.string()?;
        let instance_id = if version >= 3 { value.nullable_string()? } else { None };
        let client_id = value.string()?;
        let client_host = value.string()?;
        let rebalance_timeout_ms = if version >= 1 { value.i32()? } else { -1 };
        let session_timeout_ms = value.i32()?;
        let subscription = Bytes::copy_from_slice(value.bytes()?);
        let assignment = Bytes::copy_from_slice(value.bytes()?);
        members.push(MemberValue {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue { protocol_type, generation, protocol, leader, state_timestamp, members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group_entry() -> Entry {
        let member = MemberValue {
            member_id: "m-1".into(),
            instance_id: Some("instance".into()),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            rebalance_timeout_ms: 300_000,
            session_timeout_ms: 45_000,
            subscription: Bytes::from_static(b"sub"),
            assignment: Bytes::from_static(b"assign"),
        };
        let value = GroupValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            state_timestamp: 1234,
            members: vec![member],
        };
        Entry::Group { group: "g".into(), value: Some(value) }
    }

    #[test]
    fn entries_round_trip_through_a_record_batch() {
        let offset =
            OffsetValue { offset: 42, leader_epoch: 3, metadata: "meta".into(), commit_timestamp: 99 };
        let entries = vec![
            Entry::Offset { group: "g".into(), topic: "t".into(), partition: 5, value: Some(offset) },
            group_entry(),
            Entry::Offset { group: "g".into(), topic: "t".into(), partition: 6, value: None },
            Entry::Group { group: "g".into(), value: None },
        ];
        let batch = encode(&entries, 1000).expect("encode");
        let decoded: Vec<Decoded> = entries.iter().cloned().map(Decoded::Entry).collect();
        assert_eq!(decode(&batch).expect("decode"), decoded);
        let transactional = encode_transactional(&entries, 77, 3, 5).expect("encode");
        let decoded: Vec<Decoded> = entries
            .into_iter()
            .map(|entry| Decoded::Transactional { producer_id: 77, epoch: 3, entry })
            .collect();
        assert_eq!(decode(&transactional).expect("decode"), decoded);
    }

    #[test]
    fn the_offset_key_is_kafkas_v1_layout() {
        let entry = Entry::Offset { group: "ab".into(), topic: "t".into(), partition: 1, value: None };
        assert_eq!(&entry.key()[..], &[0, 1, 0, 2, b'a', b'b', 0, 1, b't', 0, 0, 0, 1]);
    }

    proptest! {
        #[test]
        fn garbage_values_are_refused_not_panicked_on(key in proptest::collection::vec(any::<u8>(), 0..64),
                                                      value in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(Some(&key), Some(&value));
            let valid = group_entry().key();
            let _ = decode_record(Some(&valid), Some(&value));
        }
    }
}
