//! The one place where ringmq's errors become Kafka error codes.

use crate::batch::BatchError;
use crate::log::AppendError;
use crate::log::ReadError;
use crate::log::producers::SequenceError;
use crate::shard::{CreateTopicError, DeleteRecordsError, FetchError, ProduceError};
use kafka_protocol::error::ResponseError;

pub fn produce(error: &ProduceError) -> ResponseError {
    match error {
        ProduceError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        ProduceError::NotLeader => ResponseError::NotLeaderOrFollower,
        ProduceError::InternalTopic => ResponseError::InvalidTopicException,
        ProduceError::ShardUnavailable => ResponseError::NotLeaderOrFollower,
        ProduceError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
        ProduceError::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
        ProduceError::TimedOut => ResponseError::RequestTimedOut,
        // Never from a client's produce: only replicated batches are checked for it.
        ProduceError::Append(AppendError::NotContiguous { .. }) => ResponseError::UnknownServerError,
        ProduceError::Append(AppendError::Batch(BatchError::TooLarge { .. })) => {
            ResponseError::MessageTooLarge
        }
        ProduceError::Append(AppendError::Batch(BatchError::BadMagic(_))) => {
            ResponseError::UnsupportedForMessageFormat
        }
        ProduceError::Append(AppendError::Batch(_)) => ResponseError::CorruptMessage,
        ProduceError::Append(AppendError::Storage(_)) => ResponseError::KafkaStorageError,
        // Retriable: the client tries again shortly.
        ProduceError::Append(AppendError::Backpressure) => ResponseError::RequestTimedOut,
        ProduceError::Append(AppendError::Closed | AppendError::Truncating) => {
            ResponseError::NotLeaderOrFollower
        }
        ProduceError::Append(AppendError::ControlBatchFromClient | AppendError::InvalidProducerBatch(_)) => {
            ResponseError::InvalidRecord
        }
        ProduceError::Append(AppendError::Encode(_)) => ResponseError::UnknownServerError,
        ProduceError::Append(AppendError::Sequence(SequenceError::InvalidEpoch { .. })) => {
            ResponseError::InvalidProducerEpoch
        }
        ProduceError::Append(AppendError::Sequence(SequenceError::OutOfOrder { .. })) => {
            ResponseError::OutOfOrderSequenceNumber
        }
    }
}

/// What a client is told when the active controller refused a partition move.
pub fn refusal(refusal: &crate::controller::topics::Refusal) -> ResponseError {
    use crate::controller::topics::Refusal;
    match refusal {
        Refusal::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        Refusal::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        Refusal::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        Refusal::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        Refusal::Unavailable(_) => ResponseError::RequestTimedOut,
        Refusal::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        Refusal::NoReassignmentInProgress(_) => ResponseError::NoReassignmentInProgress,
    }
}

pub fn create_topic(error: &CreateTopicError) -> ResponseError {
    match error {
        CreateTopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        CreateTopicError::InvalidName(_) => ResponseError::InvalidTopicException,
        CreateTopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        CreateTopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        CreateTopicError::Storage(_) => ResponseError::KafkaStorageError,
        CreateTopicError::ShardUnavailable => ResponseError::RequestTimedOut,
        CreateTopicError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        CreateTopicError::InvalidPartitionCount(_) => ResponseError::InvalidPartitions,
        CreateTopicError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        CreateTopicError::ControllerUnavailable(_) => ResponseError::RequestTimedOut,
    }
}

pub fn fetch(error: &FetchError) -> ResponseError {
    match error {
        FetchError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        FetchError::NotLeader => ResponseError::NotLeaderOrFollower,
        FetchError::Replica(error) => *error,
        FetchError::ShardUnavailable => ResponseError::NotLeaderOrFollower,
        FetchError::Read(ReadError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        FetchError::Read(ReadError::Storage(_) | ReadError::Corrupt { .. }) => {
            ResponseError::KafkaStorageError
        }
    }
}

pub fn delete_records(error: &DeleteRecordsError) -> ResponseError {
    match error {
        DeleteRecordsError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        DeleteRecordsError::NotLeader => ResponseError::NotLeaderOrFollower,
        DeleteRecordsError::OffsetOutOfRange(_) => ResponseError::OffsetOutOfRange,
        DeleteRecordsError::Log(crate::log::LogError::Truncating) => ResponseError::NotLeaderOrFollower,
        DeleteRecordsError::Log(_) => ResponseError::KafkaStorageError,
        DeleteRecordsError::ShardUnavailable => ResponseError::NotLeaderOrFollower,
    }
}
