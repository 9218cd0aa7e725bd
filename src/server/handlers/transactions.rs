//! Idempotent and transactional producers' APIs. InitProducerId without a transactional id is
//! answered here with a fresh producer id (shard 0's allocator). Everything naming a
//! transactional id goes to the core coordinating it (`txn::Coordinator`); TxnOffsetCommit
//! goes to the group's coordinator, like any offset commit.

use crate::shard::Shard;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;

/// Runs `task` on the core coordinating `transactional_id`; `None` if no core can take it.
async fn on_txn_core<T, F, Fut>(shard: &Rc<Shard>, transactional_id: &str, task: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let owner = shard.txn_shard(transactional_id)?;
    let id = transactional_id.to_string();
    // Served only once the core has read the id's transaction partition.
    shard.run_on_when(owner, move |shard| shard.txns().serves(&id), task).await
}

/// PRODUCER_FENCED exists from these request versions on (KIP-588); older clients are told
/// INVALID_PRODUCER_EPOCH, as Kafka does.
fn fenced_for(error: ResponseError, version: i16, fenced_from: i16) -> ResponseError {
    match error {
        ResponseError::ProducerFenced if version < fenced_from => ResponseError::InvalidProducerEpoch,
        other => other,
    }
}

fn code(result: Result<(), ResponseError>) -> i16 {
    result.err().map_or(0, |error| error.code())
}

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let answer = match request.transactional_id.map(|id| id.to_string()) {
        None => {
            shard.allocate_producer_id().await.map(|id| (id, 0)).ok_or(ResponseError::CoordinatorNotAvailable)
        }
        // As Kafka: an empty id is neither idempotent-only nor a transactional id.
        Some(id) if id.is_empty() => Err(ResponseError::InvalidRequest),
        Some(id) => {
            let (timeout_ms, expected) =
                (request.transaction_timeout_ms, (request.producer_id.0, request.producer_epoch));
            let key = id.clone();
            let answer = on_txn_core(shard, &key, move |shard| async move {
                let txns = shard.txns().clone();
                txns.init_producer_id(&shard, &id, timeout_ms, Some(expected)).await
            });
            answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
        }
    };
    match answer {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(fenced_for(error, version, 4).code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

pub async fn add_partitions(
    shard: &Rc<Shard>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let id = request.v3_and_below_transactional_id.to_string();
    let (producer_id, epoch) = (request.v3_and_below_producer_id.0, request.v3_and_below_producer_epoch);
    let topics = request.v3_and_below_topics;
    // In a cluster the partition may be another broker's: its marker goes there.
    let exists =
        |topic: &str, partition: i32| shard.topic(topic).is_some_and(|meta| meta.has_partition(partition));
    let unknown = topics.iter().any(|t| t.partitions.iter().any(|&p| !exists(t.name.as_str(), p)));
    let result = if unknown {
        Err(ResponseError::UnknownTopicOrPartition)
    } else {
        let partitions: Vec<(String, i32)> =
            topics.iter().flat_map(|t| t.partitions.iter().map(|&p| (t.name.to_string(), p))).collect();
        let key = id.clone();
        let answer = on_txn_core(shard, &key, move |shard| async move {
            shard.txns().add_partitions(&id, producer_id, epoch, partitions).await
        });
        answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
    };
    // With an unknown partition, the others are not attempted (Kafka's rule).
    let partition_code = |topic: &str, partition: i32| match &result {
        Err(ResponseError::UnknownTopicOrPartition) if exists(topic, partition) => {
            ResponseError::OperationNotAttempted.code()
        }
        Err(error) => fenced_for(*error, version, 2).code(),
        Ok(()) => 0,
    };
    let results = topics
        .iter()
        .map(|topic| {
            let partitions = topic.partitions.iter().map(|&partition| {
                AddPartitionsToTxnPartitionResult::default()
                    .with_partition_index(partition)
                    .with_partition_error_code(partition_code(topic.name.as_str(), partition))
            });
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(partitions.collect())
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub async fn add_offsets(
    shard: &Rc<Shard>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let id = request.transactional_id.to_string();
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    let offsets_partitions = shard.topic(crate::group::OFFSETS_TOPIC).map_or(1, |meta| meta.partitions());
    let partition = crate::group::partition_for(request.group_id.as_str(), offsets_partitions);
    let key = id.clone();
    let answer = on_txn_core(shard, &key, move |shard| async move {
        let partitions = vec![(crate::group::OFFSETS_TOPIC.to_string(), partition)];
        shard.txns().add_partitions(&id, producer_id, epoch, partitions).await
    });
    let result = answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable));
    AddOffsetsToTxnResponse::default().with_error_code(code(result.map_err(|e| fenced_for(e, version, 2))))
}

/// WriteTxnMarkers, from another broker's transaction coordinator: the markers go to the
/// partitions this broker holds; any other is refused (never passed on).
pub async fn write_markers(shard: &Rc<Shard>, request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let written = crate::shard::Marker {
            producer_id: marker.producer_id.0,
            epoch: marker.producer_epoch,
            commits: marker.transaction_result,
        };
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in marker.topics {
            let meta = shard.topic(&topic.name);
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for partition in topic.partition_indexes {
                let error = match &meta {
                    None => Some(ResponseError::UnknownTopicOrPartition),
                    Some(meta) if meta.owner(partition).is_some() => {
                        match shard.write_marker(&topic.name, partition, written).await {
                            Ok(()) => None,
                            Err(crate::shard::MarkerError::Refused(_)) => {
                                Some(ResponseError::InvalidProducerEpoch)
                            }
                            Err(crate::shard::MarkerError::Retry(_)) => {
                                Some(ResponseError::KafkaStorageError)
                            }
                        }
                    }
                    Some(meta) if meta.has_partition(partition) => Some(ResponseError::NotLeaderOrFollower),
                    Some(_) => Some(ResponseError::UnknownTopicOrPartition),
                };
                let code = error.map_or(0, |error| error.code());
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(partition)
                        .with_error_code(code),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default().with_name(topic.name).with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default().with_producer_id(marker.producer_id).with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}

pub async fn end_txn(shard: &Rc<Shard>, request: EndTxnRequest, version: i16) -> EndTxnResponse {
    let id = request.transactional_id.to_string();
    let (producer_id, epoch, commits) = (request.producer_id.0, request.producer_epoch, request.committed);
    let key = id.clone();
    let answer = on_txn_core(shard, &key, move |shard| async move {
        let txns = shard.txns().clone();
        txns.end_transaction(&shard, &id, producer_id, epoch, commits).await
    });
    let result = answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable));
    EndTxnResponse::default()
        .with_error_code(code(result.map_err(|e| fenced_for(e, version, 2))))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    request: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let shape: Vec<(TopicName, Vec<i32>)> = request
        .topics
        .iter()
        .map(|topic| (topic.name.clone(), topic.partitions.iter().map(|p| p.partition_index).collect()))
        .collect();
    let codes = match shard.group_shard(request.group_id.as_str()) {
        Some(owner) => {
            let committed = shard.run_on(owner, move |shard| async move {
                let exists = |topic: &str, partition: i32| {
                    shard.topic(topic).is_some_and(|meta| (0..meta.partitions()).contains(&partition))
                };
                let groups = shard.groups().clone();
                groups.txn_commit(&request, exists).await
            });
            committed.await
        }
        None => None,
    };
    let unavailable = ResponseError::CoordinatorNotAvailable.code();
    let fenced = ResponseError::ProducerFenced.code();
    let topics = shape
        .into_iter()
        .enumerate()
        .map(|(t, (name, partitions))| {
            let partitions = partitions.into_iter().enumerate().map(|(p, partition)| {
                let code = codes.as_ref().map_or(unavailable, |codes| codes[t][p]);
                let code = if code == fenced && version < 3 {
                    ResponseError::InvalidProducerEpoch.code()
                } else {
                    code
                };
                TxnOffsetCommitResponsePartition::default()
                    .with_partition_index(partition)
                    .with_error_code(code)
            });
            TxnOffsetCommitResponseTopic::default().with_name(name).with_partitions(partitions.collect())
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub async fn describe(
    shard: &Rc<Shard>,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(request.transactional_ids.len());
    for id in request.transactional_ids {
        let key = id.to_string();
        let asked = key.clone();
        let found = on_txn_core(shard, &key, move |shard| async move { shard.txns().describe(&asked) }).await;
        let state = TransactionState::default().with_transactional_id(id);
        states.push(match found {
            None => state.with_error_code(ResponseError::CoordinatorNotAvailable.code()),
            Some(None) => state.with_error_code(ResponseError::TransactionalIdNotFound.code()),
            Some(Some(txn)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (topic, partition) in &txn.partitions {
                    match topics.last_mut() {
                        Some(last) if last.topic.as_str() == topic => last.partitions.push(*partition),
                        _ => topics.push(
                            TopicData::default()
                                .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                                .with_partitions(vec![*partition]),
                        ),
                    }
                }
                state
                    .with_transaction_state(StrBytes::from_static_str(txn.status.name()))
                    .with_transaction_timeout_ms(txn.timeout_ms)
                    .with_transaction_start_time_ms(txn.start_ms)
                    .with_producer_id(ProducerId(txn.producer_id))
                    .with_producer_epoch(txn.epoch)
                    .with_topics(topics)
            }
        });
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub async fn list(shard: &Rc<Shard>, request: ListTransactionsRequest) -> ListTransactionsResponse {
    let known = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
        "Dead",
        "PrepareEpochFence",
    ];
    let (states, unknown): (Vec<String>, Vec<String>) =
        request.state_filters.iter().map(|s| s.to_string()).partition(|s| known.contains(&s.as_str()));
    let pattern =
        match request.transactional_id_pattern.as_deref().filter(|p| !p.is_empty()).map(regex::Regex::new) {
            Some(Ok(pattern)) => Some(pattern),
            Some(Err(_)) => {
                return ListTransactionsResponse::default()
                    .with_error_code(ResponseError::InvalidRegularExpression.code());
            }
            None => None,
        };
    let producers: Vec<i64> = request.producer_id_filters.iter().map(|id| id.0).collect();
    let duration = request.duration_filter;
    let mut listed = Vec::new();
    for core in 0..shard.shards() {
        let (states, producers) = (states.clone(), producers.clone());
        let found =
            shard.run_on(core, move |shard| async move { shard.txns().list(&states, &producers, duration) });
        listed.extend(found.await.unwrap_or_default());
    }
    let listed = listed
        .into_iter()
        .filter(|described| pattern.as_ref().is_none_or(|p| p.is_match(&described.transactional_id)))
        .map(|described| {
            ListedTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(described.transactional_id)))
                .with_producer_id(ProducerId(described.transaction.producer_id))
                .with_transaction_state(StrBytes::from_static_str(described.transaction.status.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown.into_iter().map(StrBytes::from_string).collect())
        .with_transaction_states(listed)
}
