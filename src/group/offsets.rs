//! Committed offsets: OffsetCommit (from group members, checked against the generation, or
//! from consumers that assign partitions themselves), OffsetFetch and OffsetDelete. A commit is
//! answered once its records are durable in the offsets topic under its flush policy.

use super::assignor::TopicPartition;
use super::state::{Group, GroupState};
use super::store::{Entry, OffsetValue};
use super::{Coordinator, GROUP_ID_BYTES_MAX, OFFSET_METADATA_BYTES_MAX};
use crate::log::{AppendError, Origin};
use crate::types::TimestampMs;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, OffsetCommitRequest, OffsetCommitResponse, TopicName,
    TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::Decodable;
use std::collections::BTreeSet;
use std::rc::Rc;

/// Which offsets an OffsetFetch asks for: named partitions by topic, or (None) all of them.
pub type OffsetQuery = Option<Vec<(String, Vec<i32>)>>;
/// The committed offsets found, by topic: (partition, offset if committed).
/// A partition whose offset a transaction has committed but not settled is UNSTABLE_OFFSET_COMMIT
/// when the fetch requires stable offsets (KIP-447).
pub type FetchedOffsets = Vec<(String, Vec<(i32, Result<Option<OffsetValue>, ResponseError>)>)>;

/// One partition of an offset commit, whichever request (OffsetCommit, TxnOffsetCommit)
/// carries it.
struct CommittedOffset<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: &'a str,
}

/// The entries of a commit, and the (topic, partition) index of each. A partition is refused,
/// its code set in `codes`, when the whole commit is (`refused`), when its metadata is too
/// long, or when `check` says so, in that order.
fn stage_commit<'a>(
    group_id: &str,
    partitions: impl Iterator<Item = ((usize, usize), CommittedOffset<'a>)>,
    refused: Option<ResponseError>,
    codes: &mut [Vec<i16>],
    check: impl Fn(&CommittedOffset<'a>) -> Option<ResponseError>,
) -> (Vec<Entry>, Vec<(usize, usize)>) {
    let (mut entries, mut written) = (Vec::new(), Vec::new());
    let now = TimestampMs::now().0;
    for ((t, p), committed) in partitions {
        let error = refused.or_else(|| {
            if committed.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                Some(ResponseError::OffsetMetadataTooLarge)
            } else {
                check(&committed)
            }
        });
        if let Some(error) = error {
            codes[t][p] = error.code();
            continue;
        }
        let value = OffsetValue {
            offset: committed.offset,
            leader_epoch: committed.leader_epoch,
            metadata: committed.metadata.to_string(),
            commit_timestamp: now,
        };
        let (topic, partition) = (committed.topic.to_string(), committed.partition);
        entries.push(Entry::Offset { group: group_id.to_string(), topic, partition, value: Some(value) });
        written.push((t, p));
    }
    (entries, written)
}

impl Coordinator {
    /// OffsetCommit. `topic_id(topic, partition)` is the partition's topic id if it exists.
    pub async fn commit(
        self: &Rc<Self>,
        request: OffsetCommitRequest,
        topic_id: impl Fn(&str, i32) -> Option<uuid::Uuid>,
    ) -> OffsetCommitResponse {
        let group_id = request.group_id.to_string();
        let mut codes: Vec<Vec<i16>> =
            request.topics.iter().map(|topic| vec![0; topic.partitions.len()]).collect();
        let (refused, only) = match self.check_commit(&request) {
            Ok(only) => (None, only),
            Err(error) => (Some(error), None),
        };
        let partitions = request.topics.iter().enumerate().flat_map(|(t, topic)| {
            topic.partitions.iter().enumerate().map(move |(p, partition)| {
                let metadata = partition.committed_metadata.as_deref().unwrap_or_default();
                let committed = CommittedOffset {
                    topic: topic.name.as_str(),
                    partition: partition.partition_index,
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata,
                };
                ((t, p), committed)
            })
        });
        let (entries, written) = stage_commit(&group_id, partitions, refused, &mut codes, |committed| {
            match topic_id(committed.topic, committed.partition) {
                Some(id) => {
                    let allowed = only.as_ref().is_none_or(|only| only.contains(&(id, committed.partition)));
                    (!allowed).then_some(ResponseError::StaleMemberEpoch)
                }
                None => Some(ResponseError::UnknownTopicOrPartition),
            }
        });
        if !entries.is_empty()
            && let Err(error) = self.store_offsets(&group_id, entries).await
        {
            tracing::warn!(group = group_id, %error, "storing committed offsets failed");
            for (t, p) in written {
                codes[t][p] = ResponseError::CoordinatorNotAvailable.code();
            }
        }
        commit_response(commit_shape(&request), |t, p| codes[t][p])
    }

    /// Whether this commit may be made: members commit in their current generation; a
    /// consumer outside any group (generation -1, no member id) only to a group with no members.
    /// `Some(partitions)`: only these may be committed (a KIP-848 member one epoch behind).
    fn check_commit(
        &self,
        request: &OffsetCommitRequest,
    ) -> Result<Option<BTreeSet<TopicPartition>>, ResponseError> {
        let group_id = request.group_id.as_str();
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(ResponseError::InvalidGroupId);
        }
        let generation = request.generation_id_or_member_epoch;
        let group = match self.group(group_id) {
            Some(group) => group,
            None if generation < 0 => self.group_or_new(group_id),
            None => return Err(ResponseError::IllegalGeneration),
        };
        let mut group = group.borrow_mut();
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && request.member_id.is_empty() && group.is_empty() {
            return Ok(None);
        }
        if let Some(allowed) = Coordinator::check_consumer_member(&group, &request.member_id, generation) {
            return allowed;
        }
        let instance = request.group_instance_id.as_deref();
        if let Some(instance) = instance
            && group.instances.get(instance).is_some_and(|id| id != request.member_id.as_str())
        {
            return Err(ResponseError::FencedInstanceId);
        }
        let Some(member) = group.members.get_mut(request.member_id.as_str()) else {
            return Err(ResponseError::UnknownMemberId);
        };
        member.touch();
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(None)
    }

    /// Appends offset entries and applies them at once (so the in-memory state follows log
    /// order), then waits until they are durable; if they are not, the values they replaced
    /// come back.
    async fn store_offsets(&self, group_id: &str, entries: Vec<Entry>) -> Result<(), super::WriteError> {
        let durable = self.append(group_id, &entries)?;
        let group = self.group_or_new(group_id);
        let mut replaced = Vec::with_capacity(entries.len());
        {
            let mut group = group.borrow_mut();
            for entry in &entries {
                if let Entry::Offset { topic, partition, value: Some(value), .. } = entry {
                    let key = (topic.clone(), *partition);
                    replaced.push((key.clone(), value.clone(), group.offsets.insert(key, value.clone())));
                }
            }
        }
        let result = durable.await;
        if result.is_err() {
            let mut group = group.borrow_mut();
            for (key, ours, before) in replaced {
                if group.offsets.get(&key) == Some(&ours) {
                    match before {
                        Some(before) => group.offsets.insert(key, before),
                        None => group.offsets.remove(&key),
                    };
                }
            }
        }
        result
    }

    /// OffsetFetch for one group. `member`: the KIP-848 member asking, with its epoch.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        query: &OffsetQuery,
        member: Option<(&str, i32)>,
        require_stable: bool,
    ) -> Result<FetchedOffsets, ResponseError> {
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(ResponseError::InvalidGroupId);
        }
        let unstable = if require_stable { self.pending_partitions(group_id) } else { BTreeSet::new() };
        let group = self.group(group_id);
        let group = group.as_ref().map(|group| group.borrow());
        if let (Some(group), Some((member_id, epoch))) = (&group, member)
            && group.consumer.is_some()
        {
            match Coordinator::check_consumer_member(group, member_id, epoch) {
                Some(allowed) => drop(allowed?),
                None => return Err(ResponseError::UnknownMemberId),
            }
        }
        let offsets = |topic: &str, partition: i32| {
            let key = (topic.to_string(), partition);
            if unstable.contains(&key) {
                return Err(ResponseError::UnstableOffsetCommit);
            }
            Ok(group.as_ref().and_then(|g| g.offsets.get(&key).cloned()))
        };
        let Some(query) = query else {
            let mut all: FetchedOffsets = Vec::new();
            for ((topic, partition), value) in group.iter().flat_map(|g| g.offsets.iter()) {
                if all.last().is_none_or(|(last, _)| last != topic) {
                    all.push((topic.clone(), Vec::new()));
                }
                if let Some((_, partitions)) = all.last_mut() {
                    partitions.push((*partition, offsets(topic, *partition).map(|_| Some(value.clone()))));
                }
            }
            return Ok(all);
        };
        Ok(query
            .iter()
            .map(|(topic, partitions)| {
                (
                    topic.clone(),
                    partitions.iter().map(|&partition| (partition, offsets(topic, partition))).collect(),
                )
            })
            .collect())
    }

    /// OffsetDelete: removes committed offsets of partitions the group is not consuming.
    /// Returns the group-level error, or each partition's.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<(String, i32, i16)>, ResponseError> {
        let group = self.group(group_id).ok_or(ResponseError::GroupIdNotFound)?;
        let (entries, outcome) = {
            let group = group.borrow();
            let subscribed = subscribed_topics(&group)?;
            let mut entries = Vec::new();
            let mut outcome = Vec::with_capacity(partitions.len());
            for (topic, partition) in partitions {
                if subscribed.contains(&topic) {
                    outcome.push((topic, partition, ResponseError::GroupSubscribedToTopic.code()));
                    continue;
                }
                if group.offsets.contains_key(&(topic.clone(), partition)) {
                    let entry = Entry::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition,
                        value: None,
                    };
                    entries.push(entry);
                }
                outcome.push((topic, partition, 0));
            }
            (entries, outcome)
        };
        if entries.is_empty() {
            return Ok(outcome);
        }
        let durable = self.append(group_id, &entries).map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        {
            let mut group = group.borrow_mut();
            for entry in &entries {
                if let Entry::Offset { topic, partition, .. } = entry {
                    group.offsets.remove(&(topic.clone(), *partition));
                }
            }
        }
        durable.await.map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        Ok(outcome)
    }
}

/// The topics a group's members subscribe to (consumer protocol only); an error if the group
/// has members of another protocol type, whose subscriptions cannot be read.
fn subscribed_topics(group: &Group) -> Result<BTreeSet<String>, ResponseError> {
    let mut topics = BTreeSet::new();
    if let Some(consumer) = &group.consumer {
        topics.extend(consumer.members.values().flat_map(|member| member.topic_names.iter().cloned()));
        return Ok(topics);
    }
    if group.state == GroupState::Empty || group.members.is_empty() {
        return Ok(topics);
    }
    if group.protocol_type.as_deref() != Some("consumer") {
        return Err(ResponseError::NonEmptyGroup);
    }
    let protocol = group.protocol.clone().unwrap_or_default();
    for member in group.members.values() {
        let mut metadata = member.metadata(&protocol);
        if metadata.len() < 2 {
            continue;
        }
        let version = i16::from_be_bytes([metadata[0], metadata[1]]);
        let mut body = metadata.split_off(2);
        if let Ok(subscription) = ConsumerProtocolSubscription::decode(&mut body, version.clamp(0, 3)) {
            topics.extend(subscription.topics.iter().map(|topic| topic.to_string()));
        }
    }
    Ok(topics)
}

/// The topics and partitions a commit names, in request order: all an answer needs.
pub type CommitShape = Vec<(TopicName, Vec<i32>)>;

pub fn commit_shape(request: &OffsetCommitRequest) -> CommitShape {
    let partitions =
        |topic: &OffsetCommitRequestTopic| topic.partitions.iter().map(|p| p.partition_index).collect();
    request.topics.iter().map(|topic| (topic.name.clone(), partitions(topic))).collect()
}

/// The OffsetCommit answer: `code(t, p)` for the p-th partition of the t-th topic.
pub fn commit_response(shape: CommitShape, code: impl Fn(usize, usize) -> i16) -> OffsetCommitResponse {
    let topics = shape
        .into_iter()
        .enumerate()
        .map(|(t, (name, partitions))| {
            let partitions = partitions
                .into_iter()
                .enumerate()
                .map(|(p, index)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(code(t, p))
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(name).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

impl Coordinator {
    /// TxnOffsetCommit: offsets committed inside producer `producer_id`'s transaction. They are
    /// written to the group's offsets partition now, as a transactional batch, and apply when
    /// the transaction's commit marker reaches that partition (`complete_transaction`).
    /// `exists(topic, partition)`: whether the partition exists. Returns each partition's error.
    pub async fn txn_commit(
        self: &Rc<Self>,
        request: &TxnOffsetCommitRequest,
        exists: impl Fn(&str, i32) -> bool,
    ) -> Vec<Vec<i16>> {
        let refused = self.check_txn_commit(request).err();
        let mut codes: Vec<Vec<i16>> =
            request.topics.iter().map(|topic| vec![0; topic.partitions.len()]).collect();
        let group_id = request.group_id.to_string();
        let partitions = request.topics.iter().enumerate().flat_map(|(t, topic)| {
            topic.partitions.iter().enumerate().map(move |(p, partition)| {
                let metadata = partition.committed_metadata.as_deref().unwrap_or_default();
                let committed = CommittedOffset {
                    topic: topic.name.as_str(),
                    partition: partition.partition_index,
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata,
                };
                ((t, p), committed)
            })
        });
        let (entries, written) = stage_commit(&group_id, partitions, refused, &mut codes, |committed| {
            (!exists(committed.topic, committed.partition)).then_some(ResponseError::UnknownTopicOrPartition)
        });
        if entries.is_empty() {
            return codes;
        }
        let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
        if let Err(error) = self.store_transactional(&group_id, entries, producer_id, epoch).await {
            tracing::warn!(group = group_id, %error, "storing transactional offsets failed");
            let code = match error {
                super::WriteError::Append(AppendError::Sequence(_)) => ResponseError::ProducerFenced,
                _ => ResponseError::CoordinatorNotAvailable,
            };
            for (t, p) in written {
                codes[t][p] = code.code();
            }
        }
        codes
    }

    /// A transactional commit from a group member (KIP-447: member id and generation given)
    /// must come from a current member; one without them (or for a group that has no members)
    /// is accepted as Kafka accepts it.
    fn check_txn_commit(&self, request: &TxnOffsetCommitRequest) -> Result<(), ResponseError> {
        let group_id = request.group_id.as_str();
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(ResponseError::InvalidGroupId);
        }
        let Some(group) = self.group(group_id) else { return Ok(()) };
        let group = group.borrow();
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if request.member_id.is_empty() || request.generation_id < 0 || group.consumer.is_some() {
            return Ok(());
        }
        if let Some(instance) = request.group_instance_id.as_deref()
            && group.instances.get(instance).is_some_and(|id| id != request.member_id.as_str())
        {
            return Err(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(request.member_id.as_str()) {
            return Err(ResponseError::UnknownMemberId);
        }
        if request.generation_id != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Appends transactional offset entries and holds them as pending until the transaction
    /// ends; if they do not become durable they are dropped again.
    async fn store_transactional(
        &self,
        group_id: &str,
        entries: Vec<Entry>,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(), super::WriteError> {
        let log = self.log_for(group_id)?;
        let batch = super::store::encode_transactional(&entries, producer_id, epoch, TimestampMs::now().0)
            .map_err(super::WriteError::Encode)?;
        let leader_epoch = log.current_epoch();
        let appended = log.append_from(&batch, leader_epoch, Origin::Coordinator)?;
        let key = (super::partition_for(group_id, self.partitions), producer_id);
        self.hold_pending(key.0, producer_id, epoch, entries.iter().cloned());
        let result = super::replicated(log, appended, leader_epoch).await;
        if result.is_err()
            && let Some((_, pending)) = self.pending.borrow_mut().get_mut(&key)
        {
            pending.retain(|entry| !entries.contains(entry));
        }
        result
    }
}
