//! The API versions this broker serves: what ApiVersions advertises and what every request is
//! checked against before it is decoded.

use kafka_protocol::messages::ApiKey;

/// (API, lowest advertised version, lowest version decoded, highest version). Only APIs whose
/// handlers exist are listed. Produce is advertised from v0 because librdkafka derives features
/// (compression among them) from the advertised range; it then uses the highest version, and
/// a request below the decodable one closes the connection.
pub const SUPPORTED: &[(ApiKey, i16, i16, i16)] = &[
    (ApiKey::Produce, 0, 3, 12),
    (ApiKey::Fetch, 4, 4, 16),
    (ApiKey::ListOffsets, 1, 1, 10),
    // v0-1 were removed in Kafka 4 (KIP-896); clients ask from v2.
    (ApiKey::OffsetForLeaderEpoch, 2, 2, 4),
    (ApiKey::Metadata, 0, 0, 12),
    (ApiKey::ApiVersions, 0, 0, 4),
    (ApiKey::CreateTopics, 2, 2, 7),
    (ApiKey::DeleteTopics, 1, 1, 6),
    (ApiKey::DeleteRecords, 0, 0, 2),
    (ApiKey::CreatePartitions, 0, 0, 3),
    (ApiKey::DescribeCluster, 0, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0, 0),
    (ApiKey::DescribeConfigs, 1, 1, 4),
    (ApiKey::AlterConfigs, 0, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 0, 1),
    (ApiKey::FindCoordinator, 0, 0, 6),
    (ApiKey::JoinGroup, 0, 0, 9),
    (ApiKey::SyncGroup, 0, 0, 5),
    (ApiKey::Heartbeat, 0, 0, 4),
    (ApiKey::LeaveGroup, 0, 0, 5),
    (ApiKey::OffsetCommit, 2, 2, 9),
    (ApiKey::OffsetFetch, 1, 1, 9),
    (ApiKey::OffsetDelete, 0, 0, 0),
    (ApiKey::DescribeGroups, 0, 0, 6),
    (ApiKey::ListGroups, 0, 0, 5),
    (ApiKey::DeleteGroups, 0, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 0, 1),
    (ApiKey::InitProducerId, 0, 0, 5),
    // AddPartitionsToTxn v4+ is broker-to-broker (KIP-890); clients use up to v3.
    (ApiKey::AddPartitionsToTxn, 0, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 0, 4),
    // Broker to broker: markers for partitions another broker's coordinator ends.
    (ApiKey::WriteTxnMarkers, 1, 1, 1),
    (ApiKey::EndTxn, 0, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 0, 4),
    (ApiKey::DescribeTransactions, 0, 0, 0),
    (ApiKey::ListTransactions, 0, 0, 2),
];

/// Whether requests of `api` at `version` are decoded and answered.
pub fn supported(api: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|&(key, _, decoded_min, max)| key == api && (decoded_min..=max).contains(&version))
}
