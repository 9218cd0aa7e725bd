//! A shard's part in a cluster. Topic changes clients ask for go to the active controller
//! instead of being made here; shard 0 then makes this broker's topic table follow the
//! controller's image: each topic with the image's id and partition count, the partitions
//! placed on this broker owned by a shard, the others marked as held elsewhere.

use super::topics::{self, NOT_HOSTED, TopicMeta};
use super::{CreateTopicError, METADATA_SHARD, Marker, MarkerError, NewTopic, Shard, peer};
use crate::controller::state::{Image, TopicRecord};
use crate::controller::topics::{Refusal, TopicChange};
use crate::controller::{ClusterView, ControllerHandle};
use crate::io;
use crate::types::LeaderEpoch;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{
    ApiKey, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// How long a change waits for this broker to apply what the controller committed.
const LOCAL_APPLY_MAX: Duration = Duration::from_secs(10);

impl Shard {
    pub fn set_controller(&self, controller: ControllerHandle) {
        // Set once, when the shard starts.
        let _set_already = self.controller.set(controller);
    }

    pub fn controller(&self) -> Option<&ControllerHandle> {
        self.controller.get()
    }

    /// Takes a newer view of the cluster; on shard 0, brings the topic table in line with it.
    /// Whether every change applied (a failed one, say a full disk, is tried again).
    pub async fn follow(self: &Rc<Self>, view: ClusterView) -> bool {
        let image = view.image.clone();
        *self.cluster.borrow_mut() = Some(view);
        self.update_roles();
        // At once, before anything is awaited: a coordinator must not write to a partition
        // this broker now only follows.
        self.follow_coordination();
        let applied = self.id != METADATA_SHARD || self.follow_image(&image).await;
        self.update_roles();
        self.follow_coordination();
        applied
    }

    /// CreateTopics in a cluster: checked here as on a one-node broker, placed by the active
    /// controller.
    pub(super) async fn create_topic_in_cluster(
        &self,
        controller: &ControllerHandle,
        topic: NewTopic,
    ) -> Result<TopicMeta, CreateTopicError> {
        topics::validate_name(&topic.name).map_err(CreateTopicError::InvalidName)?;
        if !(1..=topics::PARTITIONS_MAX).contains(&topic.partitions) {
            return Err(CreateTopicError::InvalidPartitions(topic.partitions));
        }
        topics::log_config(&self.config, &topic.configs).map_err(CreateTopicError::InvalidConfig)?;
        if topic.validate_only {
            let known = self.cluster().is_some_and(|view| view.image.topics.contains_key(&topic.name));
            if known {
                return Err(CreateTopicError::AlreadyExists(topic.name));
            }
            let owners = vec![NOT_HOSTED; topic.partitions as usize];
            return Ok(TopicMeta { name: topic.name, id: uuid::Uuid::nil(), owners, configs: topic.configs });
        }
        let name = topic.name.clone();
        let change = TopicChange::Create {
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: topic.configs,
        };
        let created = self.change_in_cluster(controller, change).await?;
        created.ok_or(CreateTopicError::UnknownTopic(name))
    }

    /// Asks the active controller for `change`, then waits until this shard's topic table
    /// shows it; answers the topic as it now is here (none once deleted).
    pub(super) async fn change_in_cluster(
        &self,
        controller: &ControllerHandle,
        change: TopicChange,
    ) -> Result<Option<TopicMeta>, CreateTopicError> {
        let name = change.name().to_string();
        let image = controller.change(change).await.map_err(refused)?;
        let wanted = image.topics.get(&name);
        self.await_table(|| self.shows(&name, wanted)).await;
        Ok(wanted.map(|record| self.topic(&name).unwrap_or_else(|| self.meta_for(&name, record, None))))
    }

    /// Waits (a while at most) until this shard's topic table is `shown`.
    async fn await_table(&self, shown: impl Fn() -> bool) {
        let mut changes = self.topics_changed.subscribe();
        let applied = async {
            while !shown() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        futures_lite::future::or(applied, io::sleep(LOCAL_APPLY_MAX)).await;
    }

    /// A topic, by name. In a cluster, one this broker does not know may be one its image has
    /// not caught up with yet (it was just created through another broker): the active
    /// controller is asked for its newest image first, so no client is told a topic that
    /// exists is unknown.
    pub async fn topic_in_cluster(&self, name: &str) -> Option<TopicMeta> {
        if let Some(topic) = self.topic(name) {
            return Some(topic);
        }
        let image = self.controller()?.sync().await?;
        let id = uuid::Uuid::from_bytes(image.topics.get(name)?.id);
        self.await_table(|| self.topic(name).is_some_and(|topic| topic.id == id)).await;
        self.topic(name)
    }

    /// Whether this shard's table has `name` as the image has it (`None`: deleted).
    fn shows(&self, name: &str, wanted: Option<&TopicRecord>) -> bool {
        match (self.topic(name), wanted) {
            (None, None) => true,
            (Some(local), Some(record)) => {
                local.id.as_bytes() == &record.id
                    && local.partitions() as usize == record.partitions.len()
                    && local.configs == record.configs
            }
            _ => false,
        }
    }

    /// The topic table entry for `record`: partitions with a replica on this broker get a
    /// shard (the one they had, or the core the controller placed them on), the others none.
    fn meta_for(&self, name: &str, record: &TopicRecord, local: Option<&TopicMeta>) -> TopicMeta {
        let node = self.config.node_id;
        let owners = record
            .partitions
            .iter()
            .enumerate()
            .map(|(index, partition)| {
                if !partition.replicas.contains(&node) {
                    return NOT_HOSTED;
                }
                match local.and_then(|local| local.owners.get(index)).filter(|owner| **owner != NOT_HOSTED) {
                    Some(owner) => *owner,
                    // Placed by a controller that knew another core count (this broker restarted
                    // with fewer cores, say): wrapped onto the cores it has.
                    None => match partition.cores.get(&node) {
                        Some(core) => (usize::from(*core) % self.shards) as u16,
                        None => {
                            let next = self.next_owner.get();
                            self.next_owner.set(next + 1);
                            (next % self.shards) as u16
                        }
                    },
                }
            })
            .collect();
        TopicMeta {
            name: name.to_string(),
            id: uuid::Uuid::from_bytes(record.id),
            owners,
            configs: record.configs.clone(),
        }
    }

    /// Creates, grows, reconfigures and deletes topics here until the table matches `image`
    /// (shard 0 only). The internal topics stay as each broker made them.
    async fn follow_image(&self, image: &Image) -> bool {
        let mut applied = true;
        for (name, record) in &image.topics {
            if topics::is_internal(name) {
                continue;
            }
            let local = self.topic(name);
            if local.as_ref().is_some_and(|local| local.id.as_bytes() != &record.id) {
                // Deleted and made again while this broker was away: the old data goes.
                applied &= self.drop_topic(local).await;
            }
            let local = self.topic(name);
            let meta = self.meta_for(name, record, local.as_ref());
            let unsettled = self.unsettled.borrow_mut().remove(name).is_some();
            if local.as_ref() != Some(&meta) || unsettled {
                applied &= self.set_topic(meta).await;
            }
        }
        let gone: Vec<String> = self
            .unsettled
            .borrow()
            .keys()
            .filter(|name| !image.topics.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            let dropped = self.unsettled.borrow_mut().remove(&name);
            applied &= self.drop_topic(dropped).await;
        }
        for local in self.all_topics() {
            if !topics::is_internal(&local.name) && !image.topics.contains_key(&local.name) {
                applied &= self.drop_topic(Some(local)).await;
            }
        }
        applied
    }

    /// Persists `meta` and has every shard apply it; one that failed is remembered, to be
    /// applied again (shard 0's own table may already show it).
    async fn set_topic(&self, meta: TopicMeta) -> bool {
        let set = async {
            self.persist_with(Some(&meta), None).await?;
            let set = |reply| super::ShardMessage::TopicCreated { topic: meta.clone(), reply };
            self.announce(set, || self.apply_topic_created(meta.clone())).await
        };
        match set.await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(topic = meta.name, %error, "applying the controller's topic failed");
                self.unsettled.borrow_mut().insert(meta.name.clone(), meta);
                false
            }
        }
    }

    /// Drops `topic` (one the controller no longer has), with its data, on every shard.
    async fn drop_topic(&self, topic: Option<TopicMeta>) -> bool {
        let Some(topic) = topic else { return true };
        let dropped = async {
            self.persist_with(None, Some(&topic.name)).await?;
            let deleted = |reply| super::ShardMessage::TopicDeleted { topic: topic.clone(), reply };
            self.announce(deleted, || self.apply_topic_deleted(&topic)).await
        };
        match dropped.await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(topic = topic.name, %error, "dropping a topic the controller deleted failed");
                self.unsettled.borrow_mut().insert(topic.name.clone(), topic);
                false
            }
        }
    }
}

/// Where a client finds a coordinator.
pub struct CoordinatorAddress {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl Shard {
    /// In a cluster, the broker coordinating `key`: the leader of its partition of the internal
    /// `topic` (the offsets or transaction topic), as the controller placed it. The first
    /// lookup has the controller place the topic. `None` while that broker is unavailable.
    pub async fn coordinator_in_cluster(
        &self,
        topic: &str,
        partition_for: impl Fn(i32) -> i32,
    ) -> Option<CoordinatorAddress> {
        let controller = self.controller()?;
        let local = self.topic(topic)?;
        let mut image = self.cluster()?.image;
        if !image.topics.contains_key(topic) {
            // Replicated, so groups and transactions survive a broker's loss. As in Kafka, not
            // placed (the coordinator is not available) until that many brokers are live.
            let replication_factor = match topic {
                crate::group::OFFSETS_TOPIC => self.config.groups.offsets_topic_replication,
                _ => self.config.transactions.state_topic_replication,
            };
            let live = image.live_brokers().count();
            if usize::try_from(replication_factor).unwrap_or(0) > live {
                tracing::warn!(
                    topic,
                    replication_factor,
                    live,
                    "too few live brokers to place an internal topic"
                );
                return None;
            }
            let change = TopicChange::Create {
                name: topic.to_string(),
                partitions: local.partitions(),
                replication_factor,
                configs: local.configs.clone(),
            };
            // Asked by several brokers at once, one creation wins; the others ask again.
            image = controller.change(change).await.ok()?;
        }
        let record = image.topics.get(topic)?;
        if record.partitions.len() != local.partitions() as usize {
            tracing::error!(topic, "the cluster has another partition count than this broker's config");
            return None;
        }
        let leader = record.partitions.get(partition_for(local.partitions()) as usize)?.leader;
        let broker = image.brokers.get(&leader).filter(|broker| !broker.fenced)?;
        Some(CoordinatorAddress { id: broker.id, host: broker.host.clone(), port: broker.port })
    }

    /// The leader epoch of `partition` of `topic` as the controller has it; 0 on a one-node
    /// broker (and for the internal topics each broker keeps). Batches are stamped with it.
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> LeaderEpoch {
        LeaderEpoch(self.placed(topic, partition, |record, _| record.leader_epoch).unwrap_or(0))
    }

    /// Whether, in a cluster, this broker leads `partition` of the internal `topic`, and so
    /// coordinates the groups or transactions hashed to it. Always so on a one-node broker.
    pub(super) fn coordinates(&self, topic: &str, partition: i32) -> bool {
        let Some(view) = self.cluster() else { return self.controller().is_none() };
        let record = view.image.topics.get(topic);
        let leader = record.and_then(|record| record.partitions.get(partition as usize)).map(|p| p.leader);
        leader == Some(self.config.node_id)
    }
}

/// How long a transaction marker may take to reach another broker's partition.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

impl Shard {
    /// Writes a transaction marker to a partition another broker leads, by WriteTxnMarkers.
    pub(super) async fn write_marker_elsewhere(
        &self,
        topic: &str,
        partition: i32,
        marker: Marker,
    ) -> Result<(), MarkerError> {
        let address = self
            .leader_address(topic, partition)
            .ok_or_else(|| MarkerError::Retry(format!("{topic}-{partition} has no leader")))?;
        let marker = WritableTxnMarker::default()
            .with_producer_id(ProducerId(marker.producer_id))
            .with_producer_epoch(marker.epoch)
            .with_transaction_result(marker.commits)
            .with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_indexes(vec![partition]),
            ]);
        let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
        let answer: WriteTxnMarkersResponse =
            peer::call(address, ApiKey::WriteTxnMarkers, 1, &request, MARKER_TIMEOUT)
                .await
                .map_err(MarkerError::Retry)?;
        let code = answer
            .markers
            .first()
            .and_then(|marker| marker.topics.first())
            .and_then(|topic| topic.partitions.first())
            .map(|partition| partition.error_code)
            .ok_or_else(|| MarkerError::Retry(format!("{address} answered no partition")))?;
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(error @ (ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced)) => {
                Err(MarkerError::Refused(format!("{address}: {error:?}")))
            }
            Some(error) => Err(MarkerError::Retry(format!("{address}: {error:?}"))),
        }
    }

    /// The Kafka address of the broker leading `partition` of `topic`, if it is live.
    fn leader_address(&self, topic: &str, partition: i32) -> Option<SocketAddr> {
        let leader = self.placed(topic, partition, |record, _| record.leader)?;
        self.broker_address(leader)
    }
}

fn refused(refusal: Refusal) -> CreateTopicError {
    match refusal {
        Refusal::AlreadyExists(name) => CreateTopicError::AlreadyExists(name),
        Refusal::UnknownTopic(name) => CreateTopicError::UnknownTopic(name),
        Refusal::InvalidPartitions(reason) => CreateTopicError::InvalidPartitionCount(reason),
        Refusal::InvalidReplicationFactor(reason) => CreateTopicError::InvalidReplicationFactor(reason),
        Refusal::Unavailable(reason) => CreateTopicError::ControllerUnavailable(reason),
        // Only moves are refused so; no topic change is a move.
        Refusal::InvalidReplicaAssignment(reason) | Refusal::NoReassignmentInProgress(reason) => {
            CreateTopicError::InvalidConfig(reason)
        }
    }
}
