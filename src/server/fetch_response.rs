//! The Fetch response, encoded by hand so record batches are never copied: the response is a
//! list of chunks, small encoded runs of fields between the record `Bytes` themselves (from the
//! batch cache or a DMA read buffer), written to the socket with one vectored write.
//! Versions 4 to 16; checked against the kafka-protocol crate's decoder in the tests.

use crate::log::producers::AbortedTransaction;
use bytes::{BufMut, Bytes, BytesMut};

pub struct PartitionResult {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// (producer id, first offset) of aborted transactions, for `read_committed` consumers.
    pub aborted: Vec<AbortedTransaction>,
    pub records: Vec<Bytes>,
}

pub struct TopicResult {
    pub name: String,
    pub id: uuid::Uuid,
    pub partitions: Vec<PartitionResult>,
}

/// The response's top-level error and the fetch session it belongs to (KIP-227; from v7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub error_code: i16,
    /// 0: the fetch has no session.
    pub session_id: i32,
}

/// Chunks being assembled: encoded fields accumulate in `current`, records join as they are.
struct Chunks {
    done: Vec<Bytes>,
    current: BytesMut,
}

impl Chunks {
    fn uvarint(&mut self, value: u64) {
        crate::codec::put_unsigned_varint(&mut self.current, value);
    }

    /// An array or string length: compact (unsigned varint of length + 1) in flexible versions.
    fn length(&mut self, flexible: bool, len: usize, wide: bool) {
        match (flexible, wide) {
            (true, _) => self.uvarint(len as u64 + 1),
            (false, true) => self.current.put_i32(len as i32),
            (false, false) => self.current.put_i16(len as i16),
        }
    }

    fn no_tagged_fields(&mut self, flexible: bool) {
        if flexible {
            self.uvarint(0);
        }
    }

    fn shared(&mut self, bytes: &[Bytes]) {
        if !self.current.is_empty() {
            self.done.push(self.current.split().freeze());
        }
        self.done.extend(bytes.iter().filter(|chunk| !chunk.is_empty()).cloned());
    }

    /// The frame: its size, then every chunk in order.
    fn finish(mut self) -> Vec<Bytes> {
        self.shared(&[]);
        let size: usize = self.done.iter().map(Bytes::len).sum();
        let mut frame = Vec::with_capacity(self.done.len() + 1);
        frame.push(Bytes::copy_from_slice(&(size as i32).to_be_bytes()));
        frame.extend(self.done);
        frame
    }
}

/// The whole response frame (header included) for `version`, 4..=16.
pub fn encode(version: i16, correlation_id: i32, head: Head, topics: &[TopicResult]) -> Vec<Bytes> {
    assert!((4..=16).contains(&version), "fetch response v{version} is not encoded here");
    let flexible = version >= 12;
    let mut out = Chunks { done: Vec::new(), current: BytesMut::with_capacity(256) };
    out.current.put_i32(correlation_id);
    out.no_tagged_fields(flexible); // response header v1
    out.current.put_i32(0); // throttle_time_ms
    if version >= 7 {
        out.current.put_i16(head.error_code);
        out.current.put_i32(head.session_id);
    }
    out.length(flexible, topics.len(), true);
    for topic in topics {
        if version >= 13 {
            out.current.put_slice(topic.id.as_bytes());
        } else {
            out.length(flexible, topic.name.len(), false);
            out.current.put_slice(topic.name.as_bytes());
        }
        out.length(flexible, topic.partitions.len(), true);
        for partition in &topic.partitions {
            encode_partition(&mut out, version, flexible, partition);
        }
        out.no_tagged_fields(flexible);
    }
    out.no_tagged_fields(flexible);
    out.finish()
}

fn encode_partition(out: &mut Chunks, version: i16, flexible: bool, partition: &PartitionResult) {
    out.current.put_i32(partition.partition);
    out.current.put_i16(partition.error_code);
    out.current.put_i64(partition.high_watermark);
    out.current.put_i64(partition.last_stable_offset);
    if version >= 5 {
        out.current.put_i64(partition.log_start_offset);
    }
    out.length(flexible, partition.aborted.len(), true);
    for aborted in &partition.aborted {
        out.current.put_i64(aborted.producer_id);
        out.current.put_i64(aborted.first_offset);
        out.no_tagged_fields(flexible);
    }
    if version >= 11 {
        out.current.put_i32(-1); // preferred_read_replica: none
    }
    let records_len: usize = partition.records.iter().map(Bytes::len).sum();
    out.length(flexible, records_len, true);
    out.shared(&partition.records);
    out.no_tagged_fields(flexible);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    fn sample() -> Vec<TopicResult> {
        let records = |n: u8| vec![Bytes::from(vec![n; 70]), Bytes::from(vec![n + 1; 130])];
        vec![
            TopicResult {
                name: "orders".into(),
                id: uuid::Uuid::from_u128(0x1234),
                partitions: vec![
                    PartitionResult {
                        partition: 0,
                        error_code: 0,
                        high_watermark: 42,
                        last_stable_offset: 42,
                        log_start_offset: 3,
                        aborted: vec![AbortedTransaction {
                            producer_id: 12,
                            first_offset: 40,
                            last_offset: 41,
                        }],
                        records: records(1),
                    },
                    PartitionResult {
                        partition: 5,
                        error_code: 1,
                        high_watermark: 7,
                        last_stable_offset: 7,
                        log_start_offset: 0,
                        aborted: vec![],
                        records: vec![],
                    },
                ],
            },
            TopicResult { name: "b".into(), id: uuid::Uuid::from_u128(9), partitions: vec![] },
        ]
    }

    #[test]
    fn every_version_decodes_with_kafka_protocol_and_records_are_not_copied() {
        let topics = sample();
        for version in 4..=16 {
            let head = Head { error_code: 71, session_id: 0x1234 };
            let chunks = encode(version, 77, head, &topics);
            assert!(
                chunks.iter().any(|chunk| chunk.as_ptr() == topics[0].partitions[0].records[1].as_ptr()),
                "v{version}: record bytes are sent from their own buffer"
            );
            let mut frame = Bytes::from(chunks.iter().flat_map(|c| c.iter().copied()).collect::<Vec<u8>>());
            let size = frame.get_i32() as usize;
            assert_eq!(size, frame.len(), "v{version}: size prefix");
            let header =
                ResponseHeader::decode(&mut frame, if version >= 12 { 1 } else { 0 }).expect("header");
            assert_eq!(header.correlation_id, 77);
            let response = FetchResponse::decode(&mut frame, version).expect("decodes");
            assert!(frame.is_empty(), "v{version}: nothing left over");
            if version >= 7 {
                assert_eq!((response.error_code, response.session_id), (71, 0x1234), "v{version}: head");
            }
            assert_eq!(response.responses.len(), 2);
            let orders = &response.responses[0];
            if version >= 13 {
                assert_eq!(orders.topic_id, topics[0].id);
            } else {
                assert_eq!(orders.topic.0.as_str(), "orders");
            }
            let first = &orders.partitions[0];
            assert_eq!((first.partition_index, first.high_watermark, first.last_stable_offset), (0, 42, 42));
            if version >= 5 {
                assert_eq!(first.log_start_offset, 3);
            }
            let aborted = first.aborted_transactions.as_deref().expect("aborted transactions");
            assert_eq!((aborted[0].producer_id.0, aborted[0].first_offset), (12, 40));
            let expected: Vec<u8> =
                topics[0].partitions[0].records.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(first.records.as_deref(), Some(&expected[..]));
            assert_eq!(orders.partitions[1].error_code, 1);
        }
    }
}
