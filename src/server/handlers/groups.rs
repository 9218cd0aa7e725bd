//! The group APIs: each request goes to the core that coordinates its group (the owner of the
//! group's `__consumer_offsets` partition) and is answered there by `group::Coordinator`.
//! Requests naming several groups are split by core and their answers merged in request order.

use crate::group::ClientInfo;
use crate::group::consumer::TopicMap;
use crate::group::offsets::{self, FetchedOffsets, OffsetQuery};
use crate::group::store::OffsetValue;
use crate::server::Broker;
use crate::shard::{CoordinatorAddress, Shard, topics};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;

/// FindCoordinator key types.
const GROUP_KEY: i8 = 0;
const TRANSACTION_KEY: i8 = 1;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// Runs `task` with the coordinator of `group`; `None` if no core can take it.
async fn on_group_core<T, F, Fut>(shard: &Rc<Shard>, group: &str, task: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let owner = shard.group_shard(group)?;
    let group = group.to_string();
    // Served only once the core has read the group's offsets partition.
    shard.run_on_when(owner, move |shard| shard.groups().serves(&group), task).await
}

pub async fn find_coordinator(
    broker: &Broker,
    shard: &Shard,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys = if version >= 4 { request.coordinator_keys.clone() } else { vec![request.key.clone()] };
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        found.push(coordinator(broker, shard, request.key_type, key).await);
    }
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(found);
    }
    let one = found.pop().unwrap_or_default();
    FindCoordinatorResponse::default()
        .with_error_code(one.error_code)
        .with_node_id(one.node_id)
        .with_host(one.host)
        .with_port(one.port)
}

/// The coordinator of one key: this broker when it runs alone (each of its cores coordinates
/// its share); in a cluster, the leader of the key's partition of the internal topic.
async fn coordinator(broker: &Broker, shard: &Shard, key_type: i8, key: StrBytes) -> FoundCoordinator {
    let coordinator = FoundCoordinator::default().with_key(key.clone());
    let unavailable = |coordinator: FoundCoordinator| {
        coordinator
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
    };
    type PartitionFor = fn(&str, i32) -> i32;
    let (topic, partition_for): (&str, PartitionFor) = match key_type {
        GROUP_KEY => (crate::group::OFFSETS_TOPIC, crate::group::partition_for),
        TRANSACTION_KEY => (crate::txn::TRANSACTION_TOPIC, crate::txn::partition_for),
        _ => {
            return coordinator
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::InvalidRequest.code());
        }
    };
    let address = match shard.controller() {
        None => CoordinatorAddress {
            id: broker.node_id,
            host: broker.advertised.ip().to_string(),
            port: broker.advertised.port(),
        },
        Some(_) => match shard.coordinator_in_cluster(topic, |n| partition_for(&key, n)).await {
            Some(address) => address,
            None => return unavailable(coordinator),
        },
    };
    coordinator
        .with_node_id(BrokerId(address.id))
        .with_host(text(&address.host))
        .with_port(i32::from(address.port))
}

pub async fn join(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client: ClientInfo,
) -> JoinGroupResponse {
    let group = request.group_id.to_string();
    let answer = on_group_core(shard, &group, move |shard| async move {
        let groups = shard.groups().clone();
        groups.join(request, version, &client).await
    });
    answer.await.unwrap_or_else(|| {
        JoinGroupResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_generation_id(-1)
            .with_protocol_name((version < 7).then(StrBytes::default))
    })
}

pub async fn sync(shard: &Rc<Shard>, request: SyncGroupRequest) -> SyncGroupResponse {
    let group = request.group_id.to_string();
    let answer = on_group_core(shard, &group, move |shard| async move {
        let groups = shard.groups().clone();
        groups.sync(request).await
    });
    answer.await.unwrap_or_else(|| {
        SyncGroupResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code())
    })
}

pub async fn heartbeat(shard: &Rc<Shard>, request: HeartbeatRequest) -> HeartbeatResponse {
    let group = request.group_id.to_string();
    let answer = on_group_core(shard, &group, move |shard| async move { shard.groups().heartbeat(request) });
    answer.await.unwrap_or_else(|| {
        HeartbeatResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code())
    })
}

pub async fn leave(shard: &Rc<Shard>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = request.group_id.to_string();
    let answer =
        on_group_core(shard, &group, move |shard| async move { shard.groups().leave(request, version) });
    answer.await.unwrap_or_else(|| {
        LeaveGroupResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code())
    })
}

pub async fn offset_commit(shard: &Rc<Shard>, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = request.group_id.to_string();
    let shape = offsets::commit_shape(&request);
    let answer = on_group_core(shard, &group, move |shard| async move {
        let topic_id = |topic: &str, partition: i32| {
            shard.topic(topic).filter(|meta| (0..meta.partitions()).contains(&partition)).map(|meta| meta.id)
        };
        let groups = shard.groups().clone();
        groups.commit(request, topic_id).await
    });
    let unavailable = ResponseError::CoordinatorNotAvailable.code();
    answer.await.unwrap_or_else(|| offsets::commit_response(shape, |_, _| unavailable))
}

/// The committed offsets of one group, from its core.
async fn fetch_group_offsets(
    shard: &Rc<Shard>,
    group: String,
    query: OffsetQuery,
    member: Option<(String, i32)>,
    require_stable: bool,
) -> Result<FetchedOffsets, i16> {
    let key = group.clone();
    let answer = on_group_core(shard, &key, move |shard| async move {
        let member = member.as_ref().map(|(id, epoch)| (id.as_str(), *epoch));
        shard.groups().fetch_offsets(&group, &query, member, require_stable).map_err(|e| e.code())
    });
    answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable.code()))
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let query: OffsetQuery = group.topics.map(|topics| {
                topics.into_iter().map(|t| (t.name.to_string(), t.partition_indexes)).collect()
            });
            // A KIP-848 member says who it is; its epoch must be current.
            let member = group.member_id.as_ref().filter(|id| !id.is_empty() && group.member_epoch >= 0);
            let member = member.map(|id| (id.to_string(), group.member_epoch));
            let group_id = group.group_id.to_string();
            let found = fetch_group_offsets(shard, group_id, query, member, request.require_stable).await;
            let response = OffsetFetchResponseGroup::default().with_group_id(group.group_id);
            groups.push(match found {
                Ok(offsets) => response.with_topics(offsets_v8(offsets)),
                Err(code) => response.with_error_code(code),
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let query: OffsetQuery = request
        .topics
        .clone()
        .map(|topics| topics.into_iter().map(|t| (t.name.to_string(), t.partition_indexes)).collect());
    let require_stable = request.require_stable;
    match fetch_group_offsets(shard, request.group_id.to_string(), query.clone(), None, require_stable).await
    {
        Ok(offsets) => OffsetFetchResponse::default().with_topics(offsets_v0(offsets, version)),
        // Before v2 errors can only be told per partition.
        Err(code) if version < 2 => {
            let offsets = query.unwrap_or_default().into_iter().map(|(topic, partitions)| {
                (topic, partitions.into_iter().map(|partition| (partition, Ok(None))).collect())
            });
            let mut topics = offsets_v0(offsets.collect(), version);
            for partition in topics.iter_mut().flat_map(|topic| topic.partitions.iter_mut()) {
                partition.error_code = code;
            }
            OffsetFetchResponse::default().with_topics(topics)
        }
        Err(code) => OffsetFetchResponse::default().with_error_code(code),
    }
}

/// A partition's committed offset, or none with its error code.
fn split_found(found: Result<Option<OffsetValue>, ResponseError>) -> (Option<OffsetValue>, i16) {
    match found {
        Ok(value) => (value, 0),
        Err(error) => (None, error.code()),
    }
}

fn offsets_v0(offsets: FetchedOffsets, version: i16) -> Vec<OffsetFetchResponseTopic> {
    offsets
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions.into_iter().map(|(partition, found)| {
                let (value, code) = split_found(found);
                OffsetFetchResponsePartition::default()
                    .with_partition_index(partition)
                    .with_error_code(code)
                    .with_committed_offset(value.as_ref().map_or(-1, |v| v.offset))
                    .with_committed_leader_epoch(
                        value.as_ref().filter(|_| version >= 5).map_or(-1, |v| v.leader_epoch),
                    )
                    .with_metadata(Some(text(value.as_ref().map_or("", |v| v.metadata.as_str()))))
            });
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(text(&topic)))
                .with_partitions(partitions.collect())
        })
        .collect()
}

fn offsets_v8(offsets: FetchedOffsets) -> Vec<OffsetFetchResponseTopics> {
    offsets
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions.into_iter().map(|(partition, found)| {
                let (value, code) = split_found(found);
                OffsetFetchResponsePartitions::default()
                    .with_partition_index(partition)
                    .with_error_code(code)
                    .with_committed_offset(value.as_ref().map_or(-1, |v| v.offset))
                    .with_committed_leader_epoch(value.as_ref().map_or(-1, |v| v.leader_epoch))
                    .with_metadata(Some(text(value.as_ref().map_or("", |v| v.metadata.as_str()))))
            });
            OffsetFetchResponseTopics::default()
                .with_name(TopicName(text(&topic)))
                .with_partitions(partitions.collect())
        })
        .collect()
}

pub async fn offset_delete(shard: &Rc<Shard>, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = request.group_id.to_string();
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), p.partition_index)))
        .collect();
    let key = group.clone();
    let answer = on_group_core(shard, &key, move |shard| async move {
        let groups = shard.groups().clone();
        groups.delete_offsets(&group, partitions).await.map_err(|e| e.code())
    });
    let outcome = match answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable.code())) {
        Ok(outcome) => outcome,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
    for (topic, partition, code) in outcome {
        if topics.last().is_none_or(|last| last.name.as_str() != topic) {
            topics.push(OffsetDeleteResponseTopic::default().with_name(TopicName(text(&topic))));
        }
        if let Some(last) = topics.last_mut() {
            let response = OffsetDeleteResponsePartition::default()
                .with_partition_index(partition)
                .with_error_code(code);
            last.partitions.push(response);
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

pub async fn describe(
    shard: &Rc<Shard>,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group in request.groups {
        let id = group.to_string();
        let key = id.clone();
        let answer =
            on_group_core(shard, &key, move |shard| async move { shard.groups().describe(&id, version) });
        groups.push(answer.await.unwrap_or_else(|| {
            DescribedGroup::default()
                .with_group_id(group)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
        }));
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn list(shard: &Rc<Shard>, request: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = request.states_filter.iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = request.types_filter.iter().map(|t| t.to_string()).collect();
    let mut groups = Vec::new();
    let mut error = 0;
    for core in 0..shard.shards() {
        let (states, types) = (states.clone(), types.clone());
        match shard.run_on(core, move |shard| async move { shard.groups().list(&states, &types) }).await {
            Some(listed) => groups.extend(listed),
            None => error = ResponseError::CoordinatorNotAvailable.code(),
        }
    }
    ListGroupsResponse::default().with_error_code(error).with_groups(groups)
}

pub async fn delete(shard: &Rc<Shard>, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group in request.groups_names {
        let id = group.to_string();
        let key = id.clone();
        let answer = on_group_core(shard, &key, move |shard| async move {
            let groups = shard.groups().clone();
            groups.delete(&id).await.map_err(|e| e.code())
        });
        let code =
            answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable.code())).err().unwrap_or(0);
        results.push(
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(group)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// This core's view of the topics consumer groups may subscribe to.
fn topic_map(shard: &Shard) -> TopicMap {
    let topics = shard.all_topics().into_iter().filter(|topic| !topics::is_internal(&topic.name));
    topics.map(|topic| (topic.name.clone(), (topic.id, topic.partitions()))).collect()
}

pub async fn consumer_heartbeat(
    shard: &Rc<Shard>,
    request: ConsumerGroupHeartbeatRequest,
    client: ClientInfo,
) -> ConsumerGroupHeartbeatResponse {
    let group = request.group_id.to_string();
    let answer = on_group_core(shard, &group, move |shard| async move {
        shard.groups().consumer_heartbeat(request, &topic_map(&shard), &client)
    });
    answer.await.unwrap_or_else(|| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
    })
}

pub async fn consumer_describe(
    shard: &Rc<Shard>,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group in request.group_ids {
        let (id, key) = (group.to_string(), group.to_string());
        let answer = on_group_core(shard, &key, move |shard| async move {
            shard.groups().describe_consumer(&id, &topic_map(&shard))
        });
        groups.push(answer.await.unwrap_or_else(|| {
            consumer_group_describe_response::DescribedGroup::default()
                .with_group_id(group)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
        }));
    }
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
