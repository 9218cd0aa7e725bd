//! The group coordinator (Kafka's classic consumer-group protocol). Every group belongs to one
//! partition of the internal `__consumer_offsets` topic, chosen as Kafka chooses it (the Java
//! hash of the group id), and so to the core that owns that partition: that core holds the
//! group's state machine and writes its offsets and metadata to that partition. Nothing here
//! is shared between cores; a request for a group on another core travels there by message.
//!
//! - `state`: one group's members, generation, assignment and offsets.
//! - `membership`: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, and the timers that expire
//!   sessions and end rebalances.
//! - `offsets`: OffsetCommit, OffsetFetch, OffsetDelete.
//! - `admin`: DescribeGroups, ListGroups, DeleteGroups.
//! - `store`: the records of the offsets topic, in Kafka's formats.

mod admin;
pub mod assignor;
pub mod consumer;
mod membership;
pub mod offsets;
pub mod state;
pub mod store;

use crate::config::GroupConfig;
use crate::log::Appended;
use crate::log::{AppendError, Log};
use crate::types::{LeaderEpoch, TimestampMs};
use state::{Group, GroupState};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use store::{Decoded, Entry};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Longest metadata string an offset commit may carry (Kafka's offset.metadata.max.bytes).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Longest group id accepted (group ids are written into the offsets topic's keys).
pub const GROUP_ID_BYTES_MAX: usize = 1024;

/// The partition of `__consumer_offsets` that holds `group`: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, so tools that locate a group in Kafka's offsets
/// topic find it in ours.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash =
        group.encode_utf16().fold(0i32, |hash, unit| hash.wrapping_mul(31).wrapping_add(i32::from(unit)));
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

/// Spawns one of the coordinator's background tasks. It first yields, so it never runs while
/// its spawner (which holds the group) is still running.
fn spawn_timer(task: impl std::future::Future<Output = ()> + 'static) {
    crate::io::spawn_detached(async move {
        futures_lite::future::yield_now().await;
        task.await;
    });
}

/// Who sent a request: the client id from its header and the address it came from.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this core does not own the group's offsets partition")]
    NotOwned,
    #[error("encode: {0}")]
    Encode(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("not on every in-sync replica in time")]
    NotReplicated,
}

/// How long a coordinator's write may wait for the partition's in-sync replicas (Kafka's
/// `offsets.commit.timeout.ms`).
pub const REPLICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves once `appended` is durable here and, in a cluster, on every in-sync replica (the
/// high watermark passed it): only then may the write be acknowledged, or a new leader could
/// lack it.
pub(crate) async fn replicated(
    log: Rc<Log>,
    appended: Appended,
    epoch: LeaderEpoch,
) -> Result<(), WriteError> {
    appended.durable.await?;
    // In the epoch it was written in: a new leader's records may pass the high watermark
    // after this one was truncated away.
    log.await_committed(appended.last_offset, epoch, REPLICATION_TIMEOUT)
        .await
        .map_err(|_| WriteError::NotReplicated)
}

/// Offsets a producer committed in its open transaction, with its epoch.
type PendingOffsets = (i16, Vec<Entry>);

/// One core's share of the group coordinator.
pub struct Coordinator {
    config: GroupConfig,
    groups: RefCell<HashMap<String, Rc<RefCell<Group>>>>,
    /// The partitions of the offsets topic this core owns, by index.
    logs: RefCell<BTreeMap<i32, Rc<Log>>>,
    /// How many partitions the offsets topic has.
    partitions: i32,
    /// Offsets committed inside transactions not yet ended, by (offsets partition, producer
    /// id): they apply when the commit marker reaches that partition.
    /// The producer's epoch is kept to write them again when the partition is compacted.
    pending: RefCell<HashMap<(i32, i64), PendingOffsets>>,
}

impl Coordinator {
    pub fn new(config: GroupConfig, partitions: i32) -> Rc<Coordinator> {
        Rc::new(Coordinator {
            config,
            groups: RefCell::new(HashMap::new()),
            logs: RefCell::new(BTreeMap::new()),
            partitions,
            pending: RefCell::new(HashMap::new()),
        })
    }

    fn group(&self, id: &str) -> Option<Rc<RefCell<Group>>> {
        self.groups.borrow().get(id).cloned()
    }

    fn group_or_new(&self, id: &str) -> Rc<RefCell<Group>> {
        self.groups
            .borrow_mut()
            .entry(id.to_string())
            .or_insert_with(|| Rc::new(RefCell::new(Group::new(id))))
            .clone()
    }

    fn log_for(&self, group: &str) -> Result<Rc<Log>, WriteError> {
        let partition = partition_for(group, self.partitions);
        self.logs.borrow().get(&partition).cloned().ok_or(WriteError::NotOwned)
    }

    /// Appends `entries` to the group's offsets partition; the future says when they are durable
    /// under the partition's flush policy and on its in-sync replicas.
    fn append(
        &self,
        group: &str,
        entries: &[Entry],
    ) -> Result<impl std::future::Future<Output = Result<(), WriteError>> + use<>, WriteError> {
        let log = self.log_for(group)?;
        let batch = store::encode(entries, TimestampMs::now().0).map_err(WriteError::Encode)?;
        let epoch = log.current_epoch();
        let appended = log.append(&batch, epoch)?;
        Ok(replicated(log, appended, epoch))
    }

    /// Whether this core coordinates `group` now: it leads the group's offsets partition and
    /// has read it.
    pub fn serves(&self, group: &str) -> bool {
        self.is_loaded(partition_for(group, self.partitions))
    }

    pub fn is_loaded(&self, partition: i32) -> bool {
        self.logs.borrow().contains_key(&partition)
    }

    /// Gives up `partition` of the offsets topic (another broker leads it now): its groups
    /// leave this core's memory, and writes for them fail until it is loaded again.
    pub fn unload(&self, partition: i32) {
        self.logs.borrow_mut().remove(&partition);
        let partitions = self.partitions;
        self.groups.borrow_mut().retain(|id, _| partition_for(id, partitions) != partition);
        self.pending.borrow_mut().retain(|(of, _), _| *of != partition);
    }

    /// Writes `entries` and waits until they are durable.
    async fn write(&self, group: &str, entries: &[Entry]) -> Result<(), WriteError> {
        self.append(group, entries)?.await
    }

    /// Takes over `partition` of the offsets topic: reads it from its start and rebuilds the
    /// groups it holds. Members of restored groups keep their session; those that do not
    /// heartbeat expire as usual.
    pub async fn load(self: &Rc<Self>, partition: i32, log: Rc<Log>) -> Result<usize, String> {
        // Nothing left from an earlier time this core coordinated the partition.
        self.unload(partition);
        let mut records = 0;
        for chunk in read_partition(&log).await? {
            for decoded in store::decode(&chunk)? {
                records += 1;
                match decoded {
                    Decoded::Entry(entry) => self.replay(entry),
                    Decoded::Transactional { producer_id, epoch, entry } => {
                        self.hold_pending(partition, producer_id, epoch, [entry])
                    }
                    Decoded::Marker { producer_id, commits } => {
                        self.complete_transaction(partition, producer_id, commits)
                    }
                }
            }
        }
        self.logs.borrow_mut().insert(partition, log);
        let restored: Vec<String> = self
            .groups
            .borrow()
            .iter()
            .filter(|(id, group)| {
                partition_for(id, self.partitions) == partition && !group.borrow().members.is_empty()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in restored {
            self.watch_members(&id);
        }
        Ok(records)
    }

    /// Producer `producer_id`'s transaction ended on offsets partition `partition` (its marker
    /// was appended there): its offsets apply if it committed, and are dropped if not.
    pub fn complete_transaction(&self, partition: i32, producer_id: i64, commits: bool) {
        let (_, entries) = self.pending.borrow_mut().remove(&(partition, producer_id)).unwrap_or_default();
        if commits {
            entries.into_iter().for_each(|entry| self.replay(entry));
        }
    }

    /// Holds offsets committed in producer `producer_id`'s transaction until it ends.
    fn hold_pending(
        &self,
        partition: i32,
        producer_id: i64,
        epoch: i16,
        entries: impl IntoIterator<Item = Entry>,
    ) {
        let mut pending = self.pending.borrow_mut();
        let (held_epoch, held) = pending.entry((partition, producer_id)).or_default();
        *held_epoch = epoch;
        held.extend(entries);
    }

    /// The partitions whose offsets `group` committed in a transaction that has not ended.
    fn pending_partitions(&self, group: &str) -> std::collections::BTreeSet<(String, i32)> {
        let pending = self.pending.borrow();
        let entries = pending.values().flat_map(|(_, entries)| entries);
        entries
            .filter_map(|entry| match entry {
                Entry::Offset { group: of, topic, partition, .. } if of == group => {
                    Some((topic.clone(), *partition))
                }
                _ => None,
            })
            .collect()
    }

    /// (group, topic, partition, offset) of every committed offset of the groups here.
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let groups = self.groups.borrow();
        let mut committed = Vec::new();
        for (id, group) in groups.iter() {
            for ((topic, partition), value) in &group.borrow().offsets {
                committed.push((id.clone(), topic.clone(), *partition, value.offset));
            }
        }
        committed
    }

    fn replay(&self, entry: Entry) {
        match entry {
            Entry::Offset { group, topic, partition, value: Some(value) } => {
                self.group_or_new(&group).borrow_mut().offsets.insert((topic, partition), value);
            }
            Entry::Offset { group, topic, partition, value: None } => {
                if let Some(group) = self.group(&group) {
                    group.borrow_mut().offsets.remove(&(topic, partition));
                }
            }
            Entry::Group { group, value: Some(value) } => {
                self.group_or_new(&group).borrow_mut().restore(value)
            }
            Entry::Group { group, value: None } => {
                self.groups.borrow_mut().remove(&group);
            }
        }
    }

    /// Periodic upkeep: drops the offsets of groups that have been empty longer than the
    /// offsets retention (as Kafka does), then compacts each offsets partition this core owns.
    pub async fn maintain(&self) {
        let now = TimestampMs::now();
        let retention = self.config.offsets_retention.as_millis() as i64;
        let expired: Vec<String> = self
            .groups
            .borrow()
            .iter()
            .filter(|(_, group)| {
                // Idle since it emptied or since its last commit, whichever is later (groups
                // of consumers that assign partitions themselves are always empty).
                let group = group.borrow();
                let last_commit = group.offsets.values().map(|offset| offset.commit_timestamp).max();
                let idle_since = last_commit.unwrap_or(0).max(group.state_since.0);
                group.is_empty() && now.0.saturating_sub(idle_since) >= retention
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Err(error) = self.delete_group(&id).await {
                tracing::warn!(group = id, %error, "expiring an empty group's offsets failed");
            } else {
                tracing::info!(group = id, "offsets of an empty group expired");
            }
        }
        let logs: Vec<(i32, Rc<Log>)> = self.logs.borrow().iter().map(|(p, log)| (*p, log.clone())).collect();
        for (partition, log) in logs {
            if let Err(error) = self.compact(partition, &log).await {
                tracing::warn!(partition, %error, "compacting an offsets partition failed");
            }
        }
    }

    /// The live entries of the groups on one offsets partition.
    fn live_entries(&self, partition: i32) -> Vec<Entry> {
        let mut entries = Vec::new();
        for (id, group) in self.groups.borrow().iter() {
            if partition_for(id, self.partitions) != partition {
                continue;
            }
            let group = group.borrow();
            if group.protocol_type.is_some() || !group.members.is_empty() {
                entries.push(Entry::Group { group: id.clone(), value: Some(group.to_value()) });
            }
            for ((topic, index), value) in &group.offsets {
                let (topic, partition) = (topic.clone(), *index);
                entries.push(Entry::Offset {
                    group: id.clone(),
                    topic,
                    partition,
                    value: Some(value.clone()),
                });
            }
        }
        entries
    }

    /// The offsets topic is append-only; without compaction it would grow with every commit.
    /// When most of a partition is superseded, the live entries are written again at its end
    /// and everything before them is deleted. In-memory state changes when an entry is
    /// appended (in log order), so the copy is never older than what precedes it.
    async fn compact(&self, partition: i32, log: &Log) -> Result<(), WriteError> {
        let entries = self.live_entries(partition);
        let records = log.log_end_offset().0 - log.log_start_offset().0;
        if records <= 2 * entries.len() as i64 + COMPACT_SLACK_RECORDS {
            return Ok(());
        }
        let now = TimestampMs::now().0;
        let mut batches = entries
            .chunks(COMPACT_BATCH_RECORDS)
            .map(|chunk| store::encode(chunk, now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(WriteError::Encode)?;
        // Offsets of transactions still open are written again too, as the transactional
        // batches they were, so that their marker still settles them after a restart.
        for ((of, producer_id), (epoch, held)) in self.pending.borrow().iter() {
            if *of == partition {
                let batch = store::encode_transactional(held, *producer_id, *epoch, now)
                    .map_err(WriteError::Encode)?;
                batches.push(batch);
            }
        }
        log.supersede_with(&batches).await.map_err(|e| WriteError::Encode(e.to_string()))?;
        tracing::info!(partition, records, live = entries.len(), "compacted an offsets partition");
        Ok(())
    }

    /// Deletes a group: tombstones for its offsets and metadata, then it is gone.
    async fn delete_group(&self, id: &str) -> Result<(), WriteError> {
        let Some(group) = self.group(id) else { return Ok(()) };
        let entries: Vec<Entry> = {
            let mut group = group.borrow_mut();
            group.set_state(GroupState::Dead);
            let offsets = group.offsets.keys().map(|(topic, partition)| Entry::Offset {
                group: id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            });
            offsets.chain([Entry::Group { group: id.to_string(), value: None }]).collect()
        };
        self.groups.borrow_mut().remove(id);
        self.write(id, &entries).await
    }
}

/// Every batch of an internal partition readable now, from its start: what a coordinator
/// replays when it takes the partition over. One `Bytes` per read, whole batches.
pub async fn read_partition(log: &Log) -> Result<Vec<bytes::Bytes>, String> {
    let mut from = log.log_start_offset();
    let mut chunks = Vec::new();
    // To the log's end as it is when the last read returns (nothing is awaited after it), not
    // the high watermark: a new leader's may lag behind what its log holds from the old
    // leader (Kafka loads a coordinator's partition to its end).
    while from < log.log_end_offset() {
        let read = log
            .read_for_replica(from, READ_BYTES_MAX)
            .await
            .map_err(|e| format!("read {}: {e}", log.dir().display()))?;
        if read.next_offset <= from {
            // Appended, not yet in the segment file.
            log.wait_for_records_at(from, crate::log::Bound::Written).await;
            continue;
        }
        chunks.push(match read.chunks.as_slice() {
            [one] => one.clone(),
            _ => bytes::Bytes::from(read.to_vec()),
        });
        from = read.next_offset;
    }
    Ok(chunks)
}

/// Bytes one read of an internal partition takes at most.
const READ_BYTES_MAX: usize = 1 << 20;

/// Records beyond twice the live ones a partition may hold before it is compacted.
const COMPACT_SLACK_RECORDS: i64 = 10_000;
/// Entries per batch when a partition's live entries are written again.
const COMPACT_BATCH_RECORDS: usize = 1_000;

#[cfg(test)]
mod tests;
