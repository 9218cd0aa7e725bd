//! A shard: one core's share of the broker. It owns the logs of the partitions placed on it
//! and a copy of the topic table; other shards reach its partitions only by message over the
//! channel mesh (`ShardMessage`), never by sharing them.
//!
//! Shard 0 also owns topic creation: it checks the request, places the partitions, persists
//! the table and tells every shard (itself included) before it answers.

mod cluster;
mod coordination;
pub use cluster::CoordinatorAddress;
mod peer;
mod producer_ids;
mod replication;
pub mod topics;

use crate::config::BrokerConfig;
use crate::controller::topics::TopicChange;
use crate::controller::{ClusterView, ControllerHandle};
use crate::group::{self, Coordinator};
use crate::io::{self, Mesh};
use crate::log::producers::AbortedTransaction;
use crate::log::{AppendError, Bound, Log, LogError, ReadError, ReadLimits};
use crate::txn;
use crate::types::{LeaderEpoch, Offset, TimestampMs};
use bytes::Bytes;
use futures_channel::oneshot;
use producer_ids::ProducerIds;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use topics::{TopicMeta, TopicTable};

/// The shard that owns the topic table.
pub const METADATA_SHARD: usize = 0;
/// How long a transaction marker waits for the in-sync replicas before it is tried again.
const MARKER_REPLICATION_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Messages in flight between any two shards before a sender waits.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Work run on another shard (with that shard's state): how group requests reach the core
/// that owns the group.
pub type RemoteTask =
    Box<dyn FnOnce(Rc<Shard>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// What one shard asks of another. Every request carries the channel its answer comes back on.
pub enum ShardMessage {
    Run(RemoteTask),
    CreateTopic {
        topic: NewTopic,
        reply: oneshot::Sender<Result<TopicMeta, CreateTopicError>>,
    },
    TopicCreated {
        topic: TopicMeta,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Produce {
        topic: String,
        partition: i32,
        records: Bytes,
        acks: i16,
        deadline: Instant,
        reply: oneshot::Sender<ProduceResult>,
    },
    Fetch {
        read: PartitionRead,
        reply: oneshot::Sender<Fetched>,
    },
    /// Answer once any of these partitions has records at its offset, or at the deadline.
    WaitForRecords {
        partitions: Vec<(String, i32, Offset)>,
        bound: Bound,
        deadline: Instant,
        reply: oneshot::Sender<()>,
    },
    ListOffsets {
        topic: String,
        partition: i32,
        timestamp: i64,
        committed_only: bool,
        reply: oneshot::Sender<ListedOffset>,
    },
    /// To shard 0: delete a topic (answered once every shard dropped it).
    DeleteTopic {
        name: String,
        reply: oneshot::Sender<Result<TopicMeta, CreateTopicError>>,
    },
    /// From shard 0: drop a deleted topic, closing and removing the partitions placed here.
    TopicDeleted {
        topic: TopicMeta,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// To shard 0: grow a topic to `partitions` partitions.
    CreatePartitions {
        name: String,
        partitions: i32,
        validate_only: bool,
        reply: oneshot::Sender<Result<TopicMeta, CreateTopicError>>,
    },
    /// To shard 0: replace a topic's config overrides.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        reply: oneshot::Sender<Result<TopicMeta, CreateTopicError>>,
    },
    /// DeleteRecords on the owning shard: move the log start to `offset` (-1: the high watermark).
    DeleteRecords {
        topic: String,
        partition: i32,
        offset: i64,
        reply: oneshot::Sender<Result<i64, DeleteRecordsError>>,
    },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum DeleteRecordsError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("another broker leads this partition")]
    NotLeader,
    #[error("offset {0} is beyond the high watermark")]
    OffsetOutOfRange(i64),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the owning shard is unavailable")]
    ShardUnavailable,
}

/// One partition's part of a fetch.
#[derive(Clone, Debug)]
pub struct PartitionRead {
    pub topic: String,
    pub partition: i32,
    pub offset: Offset,
    pub bytes_max: usize,
    /// Return one batch even if it is larger than `bytes_max`.
    pub min_one: bool,
    /// `read_committed`: read up to the last stable offset, and list aborted transactions.
    pub committed_only: bool,
    /// Read by a follower: its broker id and the leader epoch it follows.
    pub replica: Option<(i32, i32)>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("another broker leads this partition")]
    NotLeader,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the owning shard is unavailable")]
    ShardUnavailable,
    /// A follower's fetch refused (a stale or unknown leader epoch).
    #[error("follower fetch refused: {0:?}")]
    Replica(kafka_protocol::error::ResponseError),
}

/// What a fetch of one partition found: its batches (chunks to send as they are) and positions.
#[derive(Debug, Default)]
pub struct Fetched {
    pub error: Option<FetchError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// For `read_committed`: aborted transactions among the records returned.
    pub aborted: Vec<AbortedTransaction>,
    pub chunks: Vec<Bytes>,
    pub bytes: usize,
}

impl Fetched {
    fn failed(error: FetchError) -> Fetched {
        Fetched {
            error: Some(error),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            ..Fetched::default()
        }
    }
}

/// The answer to ListOffsets for one partition: an offset and the timestamp it was found by
/// (-1 for each when none applies).
pub type ListedOffset = Result<(i64, i64), FetchError>;

/// The `isolation_level` of Fetch and ListOffsets that reads only committed records.
pub const READ_COMMITTED: i8 = 1;

/// ListOffsets' special timestamps. The last two name tiered storage (KIP-405, KIP-1005),
/// which this broker has not: every segment is local and none is tiered.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
pub const LATEST_TIERED_TIMESTAMP: i64 = -5;

#[derive(Clone, Debug)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// -1 for the default; a one-node broker keeps one copy only.
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// Check everything, create nothing (CreateTopics' validate_only).
    pub validate_only: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum CreateTopicError {
    #[error("topic `{0}` already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("a topic needs 1 to {max} partitions, not {0}", max = topics::PARTITIONS_MAX)]
    InvalidPartitions(i32),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    Storage(String),
    #[error("the metadata shard is unavailable")]
    ShardUnavailable,
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("{0}")]
    InvalidPartitionCount(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    ControllerUnavailable(String),
}

/// Where a produce went.
#[derive(Clone, Debug)]
pub struct Produced {
    pub base_offset: Offset,
    pub log_append_time: Option<TimestampMs>,
    pub log_start_offset: Offset,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("another broker leads this partition")]
    NotLeader,
    #[error("clients cannot write to an internal topic")]
    InternalTopic,
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("the owning shard is unavailable")]
    ShardUnavailable,
    #[error("fewer in-sync replicas than min.insync.replicas")]
    NotEnoughReplicas,
    #[error("the in-sync replicas shrank below min.insync.replicas while the records were replicated")]
    NotEnoughReplicasAfterAppend,
    #[error("the in-sync replicas did not all take the records in time")]
    TimedOut,
}

pub type ProduceResult = Result<Produced, ProduceError>;

/// The marker ending a producer's transaction, as written to each of its partitions.
#[derive(Clone, Copy, Debug)]
pub struct Marker {
    pub producer_id: i64,
    pub epoch: i16,
    /// Commit, or abort.
    pub commits: bool,
}

/// Why a transaction marker was not written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MarkerError {
    /// Try again (storage trouble, a busy or unreachable core).
    #[error("{0}")]
    Retry(String),
    /// The partition will never take it (a newer epoch of the producer wrote there).
    #[error("{0}")]
    Refused(String),
}

/// One core's state. Lives on that core (`Rc`); everything in it is touched only there.
pub struct Shard {
    id: usize,
    shards: usize,
    config: Arc<BrokerConfig>,
    topics: RefCell<TopicTable>,
    logs: RefCell<HashMap<(String, i32), Rc<Log>>>,
    mesh: Mesh<ShardMessage>,
    groups: Rc<Coordinator>,
    txns: Rc<txn::Coordinator>,
    /// Shard 0 only: the producer id allocator.
    producer_ids: Option<ProducerIds>,
    /// Shard 0 only: names being created, and the next shard to place a partition on.
    creating: RefCell<BTreeSet<String>>,
    next_owner: Cell<usize>,
    /// The newest view of the cluster this core was sent; `None` on a one-node broker.
    cluster: RefCell<Option<ClusterView>>,
    /// Where topic changes go in a cluster.
    controller: std::cell::OnceCell<ControllerHandle>,
    /// Bumped at every change this shard applies to its topic table.
    topics_changed: tokio::sync::watch::Sender<u64>,
    /// Shard 0, in a cluster: topics set or dropped here whose change some shard failed to
    /// apply; tried again with the next view.
    unsettled: RefCell<BTreeMap<String, TopicMeta>>,
    replication: replication::Replication,
}

impl Shard {
    /// Joins the mesh, opens the logs of the partitions placed on this shard and starts
    /// serving other shards' messages.
    pub async fn start(
        mut mesh: Mesh<ShardMessage>,
        config: Arc<BrokerConfig>,
        topics: TopicTable,
    ) -> Result<Rc<Shard>, String> {
        let inboxes = mesh.take_inboxes();
        let offsets_partitions = topics.get(group::OFFSETS_TOPIC).map_or(1, TopicMeta::partitions);
        let groups = Coordinator::new(config.groups.clone(), offsets_partitions);
        let txn_partitions = topics.get(txn::TRANSACTION_TOPIC).map_or(1, TopicMeta::partitions);
        let txns = txn::Coordinator::new(config.transactions.clone(), txn_partitions);
        let producer_ids =
            if mesh.shard() == 0 { Some(ProducerIds::load(&config.data_dir).await?) } else { None };
        let shard = Rc::new(Shard {
            id: mesh.shard(),
            shards: mesh.shards(),
            config,
            topics: RefCell::new(TopicTable::default()),
            logs: RefCell::new(HashMap::new()),
            mesh,
            groups,
            txns,
            producer_ids,
            creating: RefCell::new(BTreeSet::new()),
            next_owner: Cell::new(0),
            cluster: RefCell::new(None),
            controller: std::cell::OnceCell::new(),
            topics_changed: tokio::sync::watch::Sender::new(0),
            unsettled: RefCell::new(BTreeMap::new()),
            replication: replication::Replication::default(),
        });
        for topic in topics.iter() {
            shard.apply_topic_created(topic.clone()).await?;
        }
        shard.load_groups().await?;
        shard.load_transactions().await?;
        for (_, inbox) in inboxes {
            let shard = shard.clone();
            io::spawn_detached(async move {
                while let Some(message) = inbox.recv().await {
                    io::spawn_detached(shard.clone().handle(message));
                }
            });
        }
        Ok(shard)
    }

    pub fn cluster(&self) -> Option<ClusterView> {
        self.cluster.borrow().clone()
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// How many shards (cores) the broker runs.
    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn groups(&self) -> &Rc<Coordinator> {
        &self.groups
    }

    /// Rebuilds the groups of the offsets partitions this shard owns. In a cluster they are
    /// read once this broker leads them (`follow_coordination`).
    async fn load_groups(&self) -> Result<(), String> {
        if self.config.cluster.is_clustered() {
            return Ok(());
        }
        let Some(topic) = self.topic(group::OFFSETS_TOPIC) else { return Ok(()) };
        for partition in 0..topic.partitions() {
            if self.owner(&topic, partition) != Some(self.id) {
                continue;
            }
            let Some(log) = self.log(&topic.name, partition) else { continue };
            let records = self.groups.load(partition, log).await?;
            tracing::debug!(shard = self.id, partition, records, "loaded an offsets partition");
        }
        Ok(())
    }

    pub fn txns(&self) -> &Rc<txn::Coordinator> {
        &self.txns
    }

    /// Rebuilds the transactional ids of the transaction partitions this shard owns, and
    /// completes the transactions a crash left prepared. In a cluster they are read once this
    /// broker leads them (`follow_coordination`).
    async fn load_transactions(self: &Rc<Self>) -> Result<(), String> {
        if self.config.cluster.is_clustered() {
            return Ok(());
        }
        let Some(topic) = self.topic(txn::TRANSACTION_TOPIC) else { return Ok(()) };
        for partition in 0..topic.partitions() {
            if self.owner(&topic, partition) != Some(self.id) {
                continue;
            }
            let Some(log) = self.log(&topic.name, partition) else { continue };
            for id in self.txns.load(partition, log).await? {
                let shard = self.clone();
                io::spawn_detached(async move { shard.txns.resume(&shard, &id).await });
            }
        }
        Ok(())
    }

    /// The shard that coordinates `transactional_id`: the owner of its transaction partition.
    pub fn txn_shard(&self, transactional_id: &str) -> Option<usize> {
        let topics = self.topics.borrow();
        let topic = topics.get(txn::TRANSACTION_TOPIC)?;
        let partition = txn::partition_for(transactional_id, topic.partitions());
        if !self.coordinates(txn::TRANSACTION_TOPIC, partition) {
            return None;
        }
        self.owner(topic, partition)
    }

    /// Writes the marker ending producer `producer_id`'s transaction to `partition` of `topic`,
    /// on the shard that owns it, and waits until it is durable. On the offsets topic the
    /// group coordinator settles the transaction's offsets as the marker is appended. A topic
    /// deleted meanwhile needs no marker.
    pub async fn write_marker(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        marker: Marker,
    ) -> Result<(), MarkerError> {
        let Some(meta) = self.topic(topic) else { return Ok(()) };
        let Some(owner) = self.leader_owner(&meta, partition) else {
            if meta.has_partition(partition) && self.controller().is_some() {
                return self.write_marker_elsewhere(topic, partition, marker).await;
            }
            return Ok(());
        };
        let Marker { producer_id, epoch, commits } = marker;
        let topic = topic.to_string();
        let written = self.run_on(owner, move |shard| async move {
            let Some(log) = shard.log(&topic, partition) else { return Ok(()) };
            if !shard.leads(&topic, partition) {
                return Err(MarkerError::Retry(format!("{topic}-{partition}: no longer led here")));
            }
            // Its group coordinator must have read the pending offsets the marker settles.
            if topic == group::OFFSETS_TOPIC && !shard.groups.is_loaded(partition) {
                return Err(MarkerError::Retry(format!("{topic}-{partition}: still being read")));
            }
            let leader_epoch = shard.leader_epoch(&topic, partition);
            let replicated = shard.replication_of(&topic, partition).is_some();
            let appended = match log.append_marker(producer_id, epoch, commits, 0, leader_epoch) {
                Ok(appended) => appended,
                Err(error @ AppendError::Sequence(_)) => return Err(MarkerError::Refused(error.to_string())),
                Err(error) => return Err(MarkerError::Retry(error.to_string())),
            };
            if topic == group::OFFSETS_TOPIC {
                shard.groups.complete_transaction(partition, producer_id, commits);
            }
            appended.durable.await.map_err(|error| MarkerError::Retry(error.to_string()))?;
            // On every in-sync replica, as an acks=all write, or a new leader would miss it.
            if replicated {
                let deadline = Instant::now() + MARKER_REPLICATION_MAX;
                let last = appended.last_offset;
                shard
                    .await_replicated(&topic, partition, &log, last, leader_epoch, deadline)
                    .await
                    .map_err(|error| MarkerError::Retry(error.to_string()))?;
            }
            Ok(())
        });
        written.await.unwrap_or_else(|| Err(MarkerError::Retry(format!("shard {owner} is unavailable"))))
    }

    /// The shard that coordinates `group`: the owner of its offsets partition.
    pub fn group_shard(&self, group: &str) -> Option<usize> {
        // Asked on every group request: borrow the table rather than copy the topic out.
        let topics = self.topics.borrow();
        let topic = topics.get(group::OFFSETS_TOPIC)?;
        let partition = group::partition_for(group, topic.partitions());
        if !self.coordinates(group::OFFSETS_TOPIC, partition) {
            return None;
        }
        self.owner(topic, partition)
    }

    /// Runs `task` on `shard` (here if it is this one) and returns its result; `None` if that
    /// shard cannot be reached.
    pub async fn run_on<T, F, Fut>(self: &Rc<Self>, shard: usize, task: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        if shard == self.id {
            return Some(task(self.clone()).await);
        }
        let (reply, answer) = oneshot::channel();
        let remote: RemoteTask = Box::new(move |shard: Rc<Shard>| {
            Box::pin(async move {
                let _gone = reply.send(task(shard).await);
            })
        });
        self.mesh.send_to(shard, ShardMessage::Run(remote)).await.ok()?;
        answer.await.ok()
    }

    /// `run_on`, if `ready` holds on that shard when the task's turn comes (a coordinator has
    /// read the partition of the task's key); `None` otherwise, as when it cannot be reached.
    pub async fn run_on_when<T, R, F, Fut>(self: &Rc<Self>, shard: usize, ready: R, task: F) -> Option<T>
    where
        T: Send + 'static,
        R: FnOnce(&Shard) -> bool + Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let ran = self.run_on(shard, move |shard| async move {
            match ready(&shard) {
                true => Some(task(shard).await),
                false => None,
            }
        });
        ran.await.flatten()
    }

    /// A producer id never handed out before (InitProducerId), from shard 0's allocator;
    /// `None` if it cannot reserve one.
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Option<i64> {
        let allocated = self.run_on(0, |shard| async move {
            let ids = shard.producer_ids.as_ref()?;
            let cluster = shard.controller().map(|controller| (controller, shard.config.node_id));
            let allocated = ids.allocate(cluster).await;
            allocated.map_err(|error| tracing::error!(%error, "cannot reserve producer ids")).ok()
        });
        allocated.await.flatten()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.topics.borrow().get(name).cloned()
    }

    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<TopicMeta> {
        self.topics.borrow().by_id(id).cloned()
    }

    pub fn all_topics(&self) -> Vec<TopicMeta> {
        self.topics.borrow().iter().cloned().collect()
    }

    /// The logs this shard owns, taken out of the map so callers can await on each.
    fn owned_logs(&self) -> Vec<((String, i32), Rc<Log>)> {
        self.logs.borrow().iter().map(|(key, log)| (key.clone(), log.clone())).collect()
    }

    /// The topic, created with the broker's defaults if it does not exist and
    /// `auto_create_topics_enable` is on (Metadata and Produce create topics on first use).
    pub async fn topic_or_auto_create(&self, name: &str) -> Option<TopicMeta> {
        if let Some(topic) = self.topic(name) {
            return Some(topic);
        }
        if !self.config.auto_create_topics {
            return self.topic_in_cluster(name).await;
        }
        let partitions = self.config.num_partitions;
        let new = NewTopic {
            name: name.to_string(),
            partitions,
            replication_factor: -1,
            configs: BTreeMap::new(),
            validate_only: false,
        };
        // An invalid name or a concurrent creation of the same topic: the table says which.
        let _created_or_refused = self.create_topic(new).await;
        self.topic_in_cluster(name).await
    }

    /// Closes every log this shard owns: queued appends written, synced, clean-shutdown
    /// checkpoints written. For a graceful stop, once no request is in flight.
    pub async fn close_logs(&self) {
        for ((topic, partition), log) in self.owned_logs() {
            if let Err(error) = log.close().await {
                tracing::error!(topic, partition, %error, "closing a partition log failed");
            }
        }
    }

    /// The shard that owns `partition` of `topic` (placements survive a change of core count).
    fn owner(&self, topic: &TopicMeta, partition: i32) -> Option<usize> {
        topic.owner(partition).map(|owner| owner % self.shards)
    }

    /// The owner of `partition` of `topic` if this broker leads it: where clients' and
    /// followers' requests for it go.
    fn leader_owner(&self, topic: &TopicMeta, partition: i32) -> Option<usize> {
        self.owner(topic, partition).filter(|_| self.leads(&topic.name, partition))
    }

    async fn handle(self: Rc<Self>, message: ShardMessage) {
        // A requester that stopped waiting (its connection closed) is not an error.
        match message {
            ShardMessage::Run(task) => task(self).await,
            ShardMessage::CreateTopic { topic, reply } => {
                let _gone = reply.send(self.create_topic(topic).await);
            }
            ShardMessage::TopicCreated { topic, reply } => {
                let applied = self.apply_topic_created(topic).await;
                self.update_roles();
                let _gone = reply.send(applied);
            }
            ShardMessage::Produce { topic, partition, records, acks, deadline, reply } => {
                let _gone = reply.send(self.produce_here(&topic, partition, &records, acks, deadline).await);
            }
            ShardMessage::Fetch { read, reply } => {
                let _gone = reply.send(self.fetch_here(&read).await);
            }
            ShardMessage::WaitForRecords { partitions, bound, deadline, mut reply } => {
                futures_lite::future::or(self.wait_here(&partitions, bound, deadline), async {
                    reply.cancellation().await;
                })
                .await;
                let _gone = reply.send(());
            }
            ShardMessage::ListOffsets { topic, partition, timestamp, committed_only, reply } => {
                let listed = self.list_offset_here(&topic, partition, timestamp, committed_only).await;
                let _gone = reply.send(listed);
            }
            ShardMessage::DeleteTopic { name, reply } => {
                let _gone = reply.send(self.delete_topic(&name).await);
            }
            ShardMessage::TopicDeleted { topic, reply } => {
                let applied = self.apply_topic_deleted(&topic).await;
                self.update_roles();
                let _gone = reply.send(applied);
            }
            ShardMessage::CreatePartitions { name, partitions, validate_only, reply } => {
                let _gone = reply.send(self.create_partitions(&name, partitions, validate_only).await);
            }
            ShardMessage::AlterTopicConfigs { name, configs, validate_only, reply } => {
                let _gone = reply.send(self.alter_topic_configs(&name, configs, validate_only).await);
            }
            ShardMessage::DeleteRecords { topic, partition, offset, reply } => {
                let _gone = reply.send(self.delete_records_here(&topic, partition, offset).await);
            }
        }
    }

    fn log(&self, topic: &str, partition: i32) -> Option<Rc<Log>> {
        self.logs.borrow().get(&(topic.to_string(), partition)).cloned()
    }

    /// Reads one partition on the shard that owns it.
    pub async fn fetch(self: &Rc<Self>, topic: &TopicMeta, read: PartitionRead) -> Fetched {
        let Some(owner) = self.leader_owner(topic, read.partition) else {
            let elsewhere = topic.has_partition(read.partition);
            return Fetched::failed(if elsewhere {
                FetchError::NotLeader
            } else {
                FetchError::UnknownTopicOrPartition
            });
        };
        if owner == self.id {
            return self.fetch_here(&read).await;
        }
        let unavailable = || Fetched::failed(FetchError::ShardUnavailable);
        self.ask(owner, |reply| ShardMessage::Fetch { read, reply }, unavailable).await
    }

    async fn fetch_here(self: &Rc<Self>, read: &PartitionRead) -> Fetched {
        let Some(log) = self.log(&read.topic, read.partition) else {
            return Fetched::failed(FetchError::UnknownTopicOrPartition);
        };
        let result = match read.replica {
            Some((follower, leader_epoch)) => {
                if let Err(error) = self.check_leader_epoch(&read.topic, read.partition, leader_epoch) {
                    return Fetched::failed(FetchError::Replica(error));
                }
                self.follower_fetched(&read.topic, read.partition, follower, read.offset);
                log.read_for_replica(read.offset, read.bytes_max).await
            }
            None => {
                let upper = if read.committed_only { log.last_stable_offset() } else { log.stable_offset() };
                let limits = ReadLimits { bytes_max: read.bytes_max, min_one: read.min_one, upper };
                log.read(read.offset, limits).await
            }
        };
        let (high_watermark, log_start_offset) = (log.stable_offset().0, log.log_start_offset().0);
        let last_stable_offset = log.last_stable_offset().0;
        match result {
            Ok(batches) => Fetched {
                error: None,
                high_watermark,
                last_stable_offset,
                log_start_offset,
                aborted: if read.committed_only && batches.bytes > 0 {
                    log.aborted_transactions(read.offset, batches.next_offset)
                } else {
                    Vec::new()
                },
                chunks: batches.chunks,
                bytes: batches.bytes,
            },
            Err(error) => Fetched {
                error: Some(error.into()),
                high_watermark,
                last_stable_offset,
                log_start_offset,
                ..Fetched::default()
            },
        }
    }

    /// Waits until any of `partitions` (topic, partition, offset) has records at its offset,
    /// or until `deadline`.
    pub async fn wait_for_records(
        &self,
        partitions: Vec<(TopicMeta, i32, Offset)>,
        bound: Bound,
        deadline: Instant,
    ) {
        let mut by_owner: BTreeMap<usize, Vec<(String, i32, Offset)>> = BTreeMap::new();
        for (topic, partition, offset) in partitions {
            if let Some(owner) = self.owner(&topic, partition) {
                by_owner.entry(owner).or_default().push((topic.name.clone(), partition, offset));
            }
        }
        let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> = Vec::new();
        for (owner, partitions) in by_owner {
            if owner == self.id {
                waits.push(Box::pin(async move { self.wait_here(&partitions, bound, deadline).await }));
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let message = ShardMessage::WaitForRecords { partitions, bound, deadline, reply };
            if self.mesh.send_to(owner, message).await.is_ok() {
                waits.push(Box::pin(async move {
                    let _answered_or_gone = answer.await;
                }));
            }
        }
        if waits.is_empty() {
            return;
        }
        let sleep = deadline.saturating_duration_since(Instant::now());
        futures_lite::future::or(first_of(waits), io::sleep(sleep)).await;
    }

    async fn wait_here(&self, partitions: &[(String, i32, Offset)], bound: Bound, deadline: Instant) {
        let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> = Vec::new();
        for (topic, partition, offset) in partitions {
            if let Some(log) = self.log(topic, *partition) {
                let offset = *offset;
                waits.push(Box::pin(async move { log.wait_for_records_at(offset, bound).await }));
            }
        }
        let sleep = deadline.saturating_duration_since(Instant::now());
        futures_lite::future::or(first_of(waits), io::sleep(sleep)).await;
    }

    /// ListOffsets for one partition: the earliest or latest offset, or the first batch at or
    /// after a timestamp.
    /// `committed_only`: the latest offset is the last stable one (`read_committed`).
    pub async fn list_offset(
        &self,
        topic: &TopicMeta,
        partition: i32,
        timestamp: i64,
        committed_only: bool,
    ) -> ListedOffset {
        let owner =
            self.leader_owner(topic, partition).ok_or_else(|| match topic.has_partition(partition) {
                true => FetchError::NotLeader,
                false => FetchError::UnknownTopicOrPartition,
            })?;
        if owner == self.id {
            return self.list_offset_here(&topic.name, partition, timestamp, committed_only).await;
        }
        let name = topic.name.clone();
        let message =
            |reply| ShardMessage::ListOffsets { topic: name, partition, timestamp, committed_only, reply };
        self.ask(owner, message, || Err(FetchError::ShardUnavailable)).await
    }

    async fn list_offset_here(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
        committed_only: bool,
    ) -> ListedOffset {
        let log = self.log(topic, partition).ok_or(FetchError::UnknownTopicOrPartition)?;
        // read_committed readers see nothing at or beyond the last stable offset.
        let visible = if committed_only { log.last_stable_offset() } else { log.stable_offset() };
        let found = match timestamp {
            EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => return Ok((log.log_start_offset().0, -1)),
            LATEST_TIMESTAMP => return Ok((visible.0, -1)),
            // Nothing is tiered: Kafka answers "no offset" when tiered storage is off.
            LATEST_TIERED_TIMESTAMP => return Ok((-1, -1)),
            MAX_TIMESTAMP => log.offset_of_max_timestamp().await?,
            _ => log.offset_for_timestamp(timestamp).await?,
        };
        Ok(found
            .filter(|found| found.offset < visible)
            .map_or((-1, -1), |found| (found.offset.0, found.timestamp)))
    }

    /// OffsetForLeaderEpoch for one partition, on the shard that owns it: the largest epoch at
    /// or below `epoch` and the offset where the next began.
    pub async fn end_offset_for_epoch(
        self: &Rc<Self>,
        topic: &TopicMeta,
        partition: i32,
        epoch: i32,
    ) -> Result<(i32, i64), FetchError> {
        let owner =
            self.leader_owner(topic, partition).ok_or_else(|| match topic.has_partition(partition) {
                true => FetchError::NotLeader,
                false => FetchError::UnknownTopicOrPartition,
            })?;
        let name = topic.name.clone();
        let answer = self.run_on(owner, move |shard| async move {
            let log = shard.log(&name, partition).ok_or(FetchError::UnknownTopicOrPartition)?;
            let (epoch, offset) = log.end_offset_for_epoch(LeaderEpoch(epoch));
            Ok((epoch.0, offset.0))
        });
        answer.await.unwrap_or(Err(FetchError::ShardUnavailable))
    }

    /// Creates a topic (asking shard 0 if this is not shard 0); returns it once every shard
    /// knows it and the owners of its partitions have opened their logs.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<TopicMeta, CreateTopicError> {
        if let Some(controller) = self.controller() {
            return self.create_topic_in_cluster(controller, topic).await;
        }
        if self.id != METADATA_SHARD {
            return self.ask_metadata_shard(|reply| ShardMessage::CreateTopic { topic, reply }).await;
        }
        topics::validate_name(&topic.name).map_err(CreateTopicError::InvalidName)?;
        if !(1..=topics::PARTITIONS_MAX).contains(&topic.partitions) {
            return Err(CreateTopicError::InvalidPartitions(topic.partitions));
        }
        topics::log_config(&self.config, &topic.configs).map_err(CreateTopicError::InvalidConfig)?;
        if self.topics.borrow().get(&topic.name).is_some()
            || !self.creating.borrow_mut().insert(topic.name.clone())
        {
            return Err(CreateTopicError::AlreadyExists(topic.name));
        }
        let result = if topic.validate_only {
            // Everything checked; the topic that would be made, with no id since none is.
            let owners = vec![0; topic.partitions as usize];
            Ok(TopicMeta {
                name: topic.name.clone(),
                id: uuid::Uuid::nil(),
                owners,
                configs: topic.configs.clone(),
            })
        } else {
            self.place_and_announce(&topic).await
        };
        self.creating.borrow_mut().remove(&topic.name);
        result
    }

    async fn place_and_announce(&self, topic: &NewTopic) -> Result<TopicMeta, CreateTopicError> {
        let mut meta = TopicMeta {
            name: topic.name.clone(),
            id: uuid::Uuid::new_v4(),
            owners: Vec::new(),
            configs: topic.configs.clone(),
        };
        self.place_partitions(&mut meta, topic.partitions);
        self.persist_with(Some(&meta), None).await?;
        self.announce(
            |reply| ShardMessage::TopicCreated { topic: meta.clone(), reply },
            || self.apply_topic_created(meta.clone()),
        )
        .await?;
        Ok(meta)
    }

    /// Sends a topic-table change to shard 0 and waits for its answer.
    async fn ask_metadata_shard<T>(
        &self,
        message: impl FnOnce(oneshot::Sender<Result<T, CreateTopicError>>) -> ShardMessage,
    ) -> Result<T, CreateTopicError> {
        self.ask(METADATA_SHARD, message, || Err(CreateTopicError::ShardUnavailable)).await
    }

    /// Sends a request to another shard and waits for its answer; `unavailable()` if the
    /// shard cannot be reached or drops the request.
    async fn ask<T, M: FnOnce(oneshot::Sender<T>) -> ShardMessage>(
        &self,
        shard: usize,
        message: M,
        unavailable: fn() -> T,
    ) -> T {
        self.send_request(shard, message, unavailable).await.await
    }

    /// Sends a request to another shard and returns its answer to come (`unavailable()` if
    /// the shard cannot be reached or drops the request). Once this returns, the request is
    /// in the shard's inbox, behind every one this shard sent it before.
    async fn send_request<T, M: FnOnce(oneshot::Sender<T>) -> ShardMessage>(
        &self,
        shard: usize,
        message: M,
        unavailable: fn() -> T,
    ) -> impl Future<Output = T> + use<T, M> {
        let (reply, answer) = oneshot::channel();
        let sent = self.mesh.send_to(shard, message(reply)).await.is_ok();
        async move {
            match sent {
                true => answer.await.unwrap_or_else(|_| unavailable()),
                false => unavailable(),
            }
        }
    }

    /// Places new partitions up to `partitions` on the shards, round-robin.
    fn place_partitions(&self, topic: &mut TopicMeta, partitions: i32) {
        while topic.partitions() < partitions {
            let next = self.next_owner.get();
            topic.owners.push((next % self.shards) as u16);
            self.next_owner.set(next + 1);
        }
    }

    /// Writes the topic table with `changed` put in and `deleted` taken out (shard 0 only).
    async fn persist_with(
        &self,
        changed: Option<&TopicMeta>,
        deleted: Option<&str>,
    ) -> Result<(), CreateTopicError> {
        let mut table = self.topics.borrow().clone();
        if let Some(topic) = changed {
            table.insert(topic.clone());
        }
        if let Some(name) = deleted {
            table.remove(name);
        }
        let encoded = table.encode().map_err(CreateTopicError::Storage)?;
        io::write_file_atomic(&self.config.data_dir.join(topics::TOPICS_FILE), encoded)
            .await
            .map_err(|e| CreateTopicError::Storage(format!("write topic table: {e}")))
    }

    /// Tells every shard of a change (`message` for the others, `here` for this one) and waits
    /// until each has applied it.
    async fn announce<F, M>(&self, message: M, here: impl FnOnce() -> F) -> Result<(), CreateTopicError>
    where
        F: std::future::Future<Output = Result<(), String>>,
        M: Fn(oneshot::Sender<Result<(), String>>) -> ShardMessage,
    {
        let mut here = Some(here);
        for shard in 0..self.shards {
            let applied = if shard == self.id {
                match here.take() {
                    Some(apply) => apply().await,
                    None => Ok(()),
                }
            } else {
                let (reply, answer) = oneshot::channel();
                match self.mesh.send_to(shard, message(reply)).await {
                    Ok(()) => answer.await.unwrap_or(Err(format!("shard {shard} did not answer"))),
                    Err(_) => Err(format!("shard {shard} is unavailable")),
                }
            };
            applied.map_err(CreateTopicError::Storage)?;
        }
        Ok(())
    }

    /// Deletes a topic and its partitions' data (asking shard 0 if this is not shard 0).
    pub async fn delete_topic(&self, name: &str) -> Result<TopicMeta, CreateTopicError> {
        if self.id != METADATA_SHARD {
            return self
                .ask_metadata_shard(|reply| ShardMessage::DeleteTopic { name: name.into(), reply })
                .await;
        }
        let topic = self.topic(name).ok_or_else(|| CreateTopicError::UnknownTopic(name.into()))?;
        if topics::is_internal(name) {
            return Err(CreateTopicError::InvalidName(format!("`{name}` is internal and cannot be deleted")));
        }
        if let Some(controller) = self.controller() {
            let change = TopicChange::Delete { name: name.to_string() };
            return self.change_in_cluster(controller, change).await.map(|_| topic);
        }
        self.persist_with(None, Some(name)).await?;
        let deleted = |reply| ShardMessage::TopicDeleted { topic: topic.clone(), reply };
        self.announce(deleted, || self.apply_topic_deleted(&topic)).await?;
        Ok(topic)
    }

    /// Drops a deleted topic here: its logs are closed and their directories removed.
    async fn apply_topic_deleted(&self, topic: &TopicMeta) -> Result<(), String> {
        self.topics.borrow_mut().remove(&topic.name);
        self.topics_changed.send_modify(|version| *version += 1);
        for partition in 0..topic.partitions() {
            self.drop_partition(&topic.name, partition).await?;
        }
        Ok(())
    }

    /// Closes this shard's log of a partition it no longer holds and removes its data.
    async fn drop_partition(&self, topic: &str, partition: i32) -> Result<(), String> {
        let removed = self.logs.borrow_mut().remove(&(topic.to_string(), partition));
        let Some(log) = removed else { return Ok(()) };
        if let Err(error) = log.close().await {
            tracing::warn!(topic, partition, %error, "closing a dropped partition failed");
        }
        let dir = topics::partition_dir(&self.config.data_dir, topic, partition);
        io::remove_dir_all(&dir).await.map_err(|e| format!("remove {}: {e}", dir.display()))
    }

    /// Grows a topic to `partitions` partitions (asking shard 0 if this is not shard 0).
    pub async fn create_partitions(
        &self,
        name: &str,
        partitions: i32,
        validate_only: bool,
    ) -> Result<TopicMeta, CreateTopicError> {
        if self.id != METADATA_SHARD {
            let message = |reply| ShardMessage::CreatePartitions {
                name: name.into(),
                partitions,
                validate_only,
                reply,
            };
            return self.ask_metadata_shard(message).await;
        }
        let mut topic = self.topic(name).ok_or_else(|| CreateTopicError::UnknownTopic(name.into()))?;
        if topics::is_internal(name) {
            return Err(CreateTopicError::InvalidName(format!(
                "`{name}` is internal; its partitions are fixed"
            )));
        }
        if partitions <= topic.partitions() || partitions > topics::PARTITIONS_MAX {
            return Err(CreateTopicError::InvalidPartitions(partitions));
        }
        if validate_only {
            return Ok(topic);
        }
        if let Some(controller) = self.controller() {
            let change = TopicChange::AddPartitions { name: name.to_string(), total: partitions };
            let grown = self.change_in_cluster(controller, change).await?;
            return grown.ok_or_else(|| CreateTopicError::UnknownTopic(name.into()));
        }
        self.place_partitions(&mut topic, partitions);
        self.persist_with(Some(&topic), None).await?;
        let grown = |reply| ShardMessage::TopicCreated { topic: topic.clone(), reply };
        self.announce(grown, || self.apply_topic_created(topic.clone())).await?;
        Ok(topic)
    }

    /// Replaces a topic's config overrides (asking shard 0 if this is not shard 0); every
    /// shard's copy changes and the owners reconfigure their open logs.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta, CreateTopicError> {
        if self.id != METADATA_SHARD {
            let message =
                |reply| ShardMessage::AlterTopicConfigs { name: name.into(), configs, validate_only, reply };
            return self.ask_metadata_shard(message).await;
        }
        let mut topic = self.topic(name).ok_or_else(|| CreateTopicError::UnknownTopic(name.into()))?;
        topics::log_config(&self.config, &configs).map_err(CreateTopicError::InvalidConfig)?;
        if validate_only {
            return Ok(topic);
        }
        if let Some(controller) = self.controller() {
            let change = TopicChange::AlterConfigs { name: name.to_string(), configs };
            let altered = self.change_in_cluster(controller, change).await?;
            return altered.ok_or_else(|| CreateTopicError::UnknownTopic(name.into()));
        }
        topic.configs = configs;
        self.persist_with(Some(&topic), None).await?;
        let changed = |reply| ShardMessage::TopicCreated { topic: topic.clone(), reply };
        self.announce(changed, || self.apply_topic_created(topic.clone())).await?;
        Ok(topic)
    }

    /// DeleteRecords for one partition, on the shard that owns it: the new low watermark.
    pub async fn delete_records(
        &self,
        topic: &TopicMeta,
        partition: i32,
        offset: i64,
    ) -> Result<i64, DeleteRecordsError> {
        let owner =
            self.leader_owner(topic, partition).ok_or_else(|| match topic.has_partition(partition) {
                true => DeleteRecordsError::NotLeader,
                false => DeleteRecordsError::UnknownTopicOrPartition,
            })?;
        if owner == self.id {
            return self.delete_records_here(&topic.name, partition, offset).await;
        }
        let message =
            |reply| ShardMessage::DeleteRecords { topic: topic.name.clone(), partition, offset, reply };
        self.ask(owner, message, || Err(DeleteRecordsError::ShardUnavailable)).await
    }

    async fn delete_records_here(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64, DeleteRecordsError> {
        let log = self.log(topic, partition).ok_or(DeleteRecordsError::UnknownTopicOrPartition)?;
        let high_watermark = log.stable_offset().0;
        let offset = if offset == -1 { high_watermark } else { offset };
        if offset < 0 || offset > high_watermark {
            return Err(DeleteRecordsError::OffsetOutOfRange(offset));
        }
        Ok(log.delete_records_before(Offset(offset)).await?.0)
    }

    /// This core's metrics: its counters, the gauges of the partitions it owns, and the
    /// committed offsets of the groups it coordinates (for consumer lag).
    pub fn metrics_snapshot(&self) -> crate::metrics::CoreSnapshot {
        let partitions = self
            .owned_logs()
            .into_iter()
            .map(|((topic, partition), log)| {
                let (cache_bytes, (cache_hits, cache_misses)) = log.cache_stats();
                crate::metrics::PartitionGauges {
                    topic,
                    partition,
                    size_bytes: log.size_bytes(),
                    segments: log.segment_count(),
                    log_start: log.log_start_offset().0,
                    high_watermark: log.stable_offset().0,
                    last_stable: log.last_stable_offset().0,
                    cache_bytes,
                    cache_hits,
                    cache_misses,
                    producers: log.producer_count(),
                }
            })
            .collect();
        crate::metrics::CoreSnapshot {
            core: self.id,
            counters: crate::metrics::counters(),
            partitions,
            committed: self.groups.committed_offsets(),
        }
    }

    /// Applies retention (time and size) to every log placed here, and forgets idempotent
    /// producers idle for longer than `producer_id_expiration_ms`.
    pub async fn enforce_retention(&self) {
        let expiration_ms = self.config.producer_id_expiration.as_millis() as i64;
        for ((topic, partition), log) in self.owned_logs() {
            let expired = log.expire_producers(TimestampMs::now().0.saturating_sub(expiration_ms));
            if expired > 0 {
                tracing::debug!(topic, partition, expired, "idle producer ids forgotten");
            }
            match log.enforce_retention(TimestampMs::now()).await {
                Ok(outcome) if outcome.segments_deleted > 0 => {
                    let bytes = outcome.bytes_deleted;
                    tracing::info!(topic, partition, segments = outcome.segments_deleted, bytes, "retention");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(topic, partition, %error, "retention failed"),
            }
        }
    }

    /// Records a topic in this shard's table and opens the logs of its partitions placed here.
    async fn apply_topic_created(&self, topic: TopicMeta) -> Result<(), String> {
        let log_config = topics::log_config(&self.config, &topic.configs)?;
        for partition in 0..topic.partitions() {
            if self.owner(&topic, partition) != Some(self.id) {
                // A replica moved to other brokers: its copy here goes.
                self.drop_partition(&topic.name, partition).await?;
                continue;
            }
            if let Some(log) = self.log(&topic.name, partition) {
                log.reconfigure(log_config.clone()).map_err(|e| e.to_string())?;
                continue;
            }
            let dir = topics::partition_dir(&self.config.data_dir, &topic.name, partition);
            let log = Log::open(&dir, log_config.clone())
                .await
                .map_err(|e| format!("open {}: {e}", dir.display()))?;
            self.logs.borrow_mut().insert((topic.name.clone(), partition), Rc::new(log));
        }
        self.topics.borrow_mut().insert(topic);
        self.topics_changed.send_modify(|version| *version += 1);
        Ok(())
    }

    /// Appends `records` to `partition` of `topic` on the shard that owns it, in two steps so
    /// that a connection can pipeline produce requests: once this returns, the batches have
    /// their place in the partition (appended here, or in the owner's inbox, whose messages
    /// the owner appends from in order, each task appending on its first poll), so batches
    /// produced after them land after them. The answer
    /// comes from the returned future: with `acks` 0 once the batches are queued, otherwise
    /// once they are durable (and replicated, for acks=all).
    pub async fn start_produce(
        self: &Rc<Self>,
        topic: &TopicMeta,
        partition: i32,
        records: Bytes,
        acks: i16,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = ProduceResult>>> {
        let owner = match self.produce_owner(topic, partition, acks) {
            Ok(owner) => owner,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        if owner == self.id {
            return Box::pin(self.produce_here(&topic.name, partition, &records, acks, deadline));
        }
        let topic = topic.name.clone();
        let message = move |reply| ShardMessage::Produce { topic, partition, records, acks, deadline, reply };
        Box::pin(self.send_request(owner, message, || Err(ProduceError::ShardUnavailable)).await)
    }

    /// The shard that appends a produce to `partition` of `topic`, or why none may.
    fn produce_owner(&self, topic: &TopicMeta, partition: i32, acks: i16) -> Result<usize, ProduceError> {
        if topics::is_internal(&topic.name) {
            return Err(ProduceError::InternalTopic);
        }
        if acks == -1
            && let Some((insync, min)) = self.replication_of(&topic.name, partition)
            && insync < min
        {
            return Err(ProduceError::NotEnoughReplicas);
        }
        self.leader_owner(topic, partition).ok_or_else(|| match topic.has_partition(partition) {
            true => ProduceError::NotLeader,
            false => ProduceError::UnknownTopicOrPartition,
        })
    }

    /// Appends `records` before returning and returns the answer to come: produces started
    /// in some order are in the log in that order.
    fn produce_here(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        records: &Bytes,
        acks: i16,
        deadline: Instant,
    ) -> impl Future<Output = ProduceResult> + 'static {
        let appended = self.append_here(topic, partition, records, acks);
        let (shard, topic) = (self.clone(), topic.to_string());
        async move {
            let AppendedHere { log, appended, leader_epoch, replicated } = appended?;
            let log_append_time = log.log_append_time_enabled().then_some(appended.log_append_time);
            if acks != 0 {
                appended.durable.await?;
            }
            if replicated {
                let last = appended.last_offset;
                shard.await_replicated(&topic, partition, &log, last, leader_epoch, deadline).await?;
                if shard.replication_of(&topic, partition).is_some_and(|(insync, min)| insync < min) {
                    return Err(ProduceError::NotEnoughReplicasAfterAppend);
                }
            }
            Ok(Produced {
                base_offset: appended.base_offset,
                log_append_time,
                log_start_offset: log.log_start_offset(),
            })
        }
    }

    fn append_here(
        &self,
        topic: &str,
        partition: i32,
        records: &Bytes,
        acks: i16,
    ) -> Result<AppendedHere, ProduceError> {
        let log = self.log(topic, partition).ok_or(ProduceError::UnknownTopicOrPartition)?;
        if !self.leads(topic, partition) {
            return Err(ProduceError::NotLeader);
        }
        let leader_epoch = self.leader_epoch(topic, partition);
        // Decided before appending: a leader change while the batches are being synced must not
        // turn an acks=all answer into a local one.
        let replicated = acks == -1 && self.replication_of(topic, partition).is_some();
        let appended = log.append(records, leader_epoch)?;
        if !appended.duplicate {
            let produced = (appended.last_offset.0 - appended.base_offset.0 + 1) as u64;
            crate::metrics::count(|c| {
                let counters = c.topic_mut(topic);
                counters.produced_bytes += records.len() as u64;
                counters.produced_records += produced;
            });
        }
        Ok(AppendedHere { log, appended, leader_epoch, replicated })
    }
}

/// Batches this shard appended, waiting to be answered for.
struct AppendedHere {
    log: Rc<Log>,
    appended: crate::log::Appended,
    leader_epoch: LeaderEpoch,
    /// Whether the answer waits for the in-sync replicas.
    replicated: bool,
}

/// Resolves when the first of `futures` does; never if there are none.
async fn first_of(mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>>) {
    std::future::poll_fn(|cx| {
        for future in futures.iter_mut() {
            if future.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
