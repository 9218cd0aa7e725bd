//! Kafka records this process writes itself (the group coordinator's offsets topic, the load
//! generator's batches), built for the kafka-protocol crate's batch encoder. Client batches
//! pass through the broker as bytes and never become `Record`s.

use bytes::Bytes;
use kafka_protocol::records::{Record, TimestampType};

/// A plain record (no transaction, no producer id, no headers) at `offset` within its batch.
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
        sequence: -1,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}
