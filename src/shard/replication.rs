//! Replication of partitions placed on more than one broker.
//!
//! The leader's owning core serves its followers' fetches (Kafka's Fetch with a replica id)
//! and keeps what each has: the high watermark, below which consumers read and acks=all
//! producers are answered, is the lowest log end among the in-sync replicas. The leader asks
//! the controller to drop a follower that stopped catching up from the in-sync replicas, and
//! to add one that caught up; until the controller's answer is in its view, it counts both
//! sets, so a record is never acknowledged without every replica that may lead next.
//!
//! On a follower, the partition's owning core copies it through a link: one connection per
//! (core, leader broker) carrying every partition that core follows from that leader, in one
//! fetch. A follower fetches again only once what it appended is durable under its flush
//! policy, so the offset it fetches from is what it may be trusted to keep. At each new leader
//! epoch it first truncates its log to where it agrees with the new leader's
//! (OffsetForLeaderEpoch, KIP-101 and KIP-279), so replicas never diverge.

use super::Shard;
use super::peer::Link;
use crate::batch;
use crate::controller::state::{IsrChange, NO_LEADER, PartitionRecord};
use crate::controller::topics::{Refusal, TopicChange};
use crate::io;
use crate::log::{Durable, Log};
use crate::types::{LeaderEpoch, Offset};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a follower's fetch waits at the leader for records.
const FETCH_WAIT: Duration = Duration::from_millis(500);
const FETCH_BYTES_MAX: i32 = 32 << 20;
const PARTITION_FETCH_BYTES_MAX: i32 = 4 << 20;
/// How long a request to a leader may take beyond its wait.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a link waits after its leader failed to answer, or a partition after its leader
/// refused it, before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// Fetch v12 has the replica id at the top and the current leader epoch per partition;
/// OffsetForLeaderEpoch v3+ has the replica id.
const FETCH_VERSION: i16 = 12;
const EPOCH_VERSION: i16 = 4;
/// An in-sync replica change the controller has not answered within this long is asked again
/// (it is never forgotten: it may still be committed).
const ALTER_PENDING_MAX: Duration = Duration::from_secs(15);

type Key = (String, i32);

/// This core's part in replication.
#[derive(Default)]
pub(super) struct Replication {
    /// Replicated partitions this core leads.
    led: RefCell<HashMap<Key, Led>>,
    /// Partitions this core follows.
    followed: RefCell<HashMap<Key, Followed>>,
    /// One task per leader broker this core follows partitions of.
    links: RefCell<HashMap<i32, io::Task<()>>>,
    /// Bumped whenever a partition's role here changes: links and acks=all producers look again.
    roles: tokio::sync::watch::Sender<u64>,
    /// Numbers in-sync replica changes, so an answer settles only the request it answers.
    requests: std::cell::Cell<u64>,
    /// Internal partitions this core's coordinators are reading, to serve their groups or
    /// transactional ids.
    pub(super) loading: RefCell<BTreeSet<(&'static str, i32)>>,
    /// The leader epoch each loaded internal partition was read in: one led again in another
    /// epoch is read again.
    pub(super) coordinated: RefCell<BTreeMap<(&'static str, i32), i32>>,
}

struct Led {
    leader_epoch: i32,
    since: Instant,
    followers: HashMap<i32, Progress>,
    /// An in-sync replica change sent to the controller that this core's view does not show
    /// yet.
    pending: Option<PendingIsr>,
}

struct Progress {
    /// The follower's log end, as its last fetch said.
    end: Offset,
    /// The leader's log end when that fetch came.
    leader_end: Offset,
    /// When the follower last fetched from the leader's log end (as of then or of its
    /// previous fetch): Kafka's `lastCaughtUpTime`.
    caught_up_at: Instant,
}

struct PendingIsr {
    request: u64,
    from: Vec<i32>,
    isr: Vec<i32>,
    asked_at: Instant,
    /// The image version the controller answered with; `None` until it answered.
    answered: Option<u64>,
}

#[derive(Clone)]
struct Followed {
    leader: i32,
    leader_epoch: i32,
    /// Must agree with the leader (truncate) before fetching in this epoch.
    truncated: bool,
    /// The epoch to ask the leader about next, when not our latest: the leader's answer named
    /// an epoch this log does not have, so the one before it is asked (KIP-279).
    probe: Option<i32>,
    /// The leader refused us; ask again at this time.
    retry_at: Option<Instant>,
}

/// A partition a link works on this round.
struct Work {
    key: Key,
    log: Rc<Log>,
    leader_epoch: i32,
    probe: Option<i32>,
}

impl Led {
    fn new(leader_epoch: i32) -> Led {
        Led { leader_epoch, since: Instant::now(), followers: HashMap::new(), pending: None }
    }

    /// The replicas acks wait for: the in-sync set in the view, and the one asked for.
    fn counted(&self, isr: &[i32], me: i32) -> BTreeSet<i32> {
        let asked = self.pending.iter().flat_map(|pending| pending.isr.iter());
        isr.iter().chain(asked).copied().filter(|id| *id != me).collect()
    }
}

impl Shard {
    /// The partition's record in this core's view of the cluster.
    fn placement(&self, topic: &str, partition: i32) -> Option<(PartitionRecord, [u8; 16])> {
        self.placed(topic, partition, |record, id| (record.clone(), id))
    }

    /// `read` of the partition's record (and its topic's id) in this core's view, without
    /// copying it: produce and fetch ask this for every partition.
    pub(super) fn placed<T>(
        &self,
        topic: &str,
        partition: i32,
        read: impl FnOnce(&PartitionRecord, [u8; 16]) -> T,
    ) -> Option<T> {
        let view = self.cluster.borrow();
        let record = view.as_ref()?.image.topics.get(topic)?;
        Some(read(record.partitions.get(usize::try_from(partition).ok()?)?, record.id))
    }

    /// Whether this broker answers clients for `partition` of `topic`: always on a one-node
    /// broker; in a cluster, when it leads the partition.
    pub(super) fn leads(&self, topic: &str, partition: i32) -> bool {
        if self.controller().is_none() {
            return true;
        }
        self.placed(topic, partition, |record, _| record.leader == self.config.node_id) == Some(true)
    }

    /// Brings the roles of this core's partitions in line with its view: which it leads with
    /// followers, which it follows and from whom; starts and stops the links.
    pub(super) fn update_roles(self: &Rc<Self>) {
        let Some(view) = self.cluster() else { return };
        let me = self.config.node_id;
        let logs: Vec<(Key, Rc<Log>)> =
            self.logs.borrow().iter().map(|(k, log)| (k.clone(), log.clone())).collect();
        let mut changed = false;
        let mut led = self.replication.led.borrow_mut();
        let mut followed = self.replication.followed.borrow_mut();
        let mut seen = BTreeSet::new();
        for (key, log) in logs {
            let Some((record, _)) = self.placement(&key.0, key.1) else { continue };
            seen.insert(key.clone());
            if record.leader == me {
                changed |= followed.remove(&key).is_some();
                log.begin_epoch(LeaderEpoch(record.leader_epoch));
                if record.replicas.len() < 2 {
                    changed |= led.remove(&key).is_some();
                    log.set_high_watermark(None);
                    continue;
                }
                let entry = led.entry(key.clone()).or_insert_with(|| Led::new(record.leader_epoch));
                if entry.leader_epoch != record.leader_epoch {
                    *entry = Led::new(record.leader_epoch);
                    changed = true;
                }
                // Settled once this view shows the answer, or any change of the set.
                let settled = entry.pending.as_ref().is_some_and(|pending| {
                    pending.answered.is_some_and(|version| view.image.applied >= version)
                        || record.isr != pending.from
                });
                if settled {
                    entry.pending = None;
                }
                refresh_high_watermark(&log, entry, &record.isr, me);
            } else if record.leader != NO_LEADER && record.replicas.contains(&me) {
                changed |= led.remove(&key).is_some();
                let current = followed.get(&key);
                if current.is_none_or(|f| f.leader != record.leader || f.leader_epoch != record.leader_epoch)
                {
                    let follow = Followed {
                        leader: record.leader,
                        leader_epoch: record.leader_epoch,
                        truncated: false,
                        probe: None,
                        retry_at: None,
                    };
                    followed.insert(key, follow);
                    changed = true;
                }
                if log.high_watermark().is_none() {
                    // What it showed as the leader (or on opening) stays shown; the leader's
                    // fetch answers move it from here.
                    log.set_high_watermark(Some(log.stable_offset()));
                }
            } else {
                changed |= led.remove(&key).is_some() | followed.remove(&key).is_some();
            }
        }
        led.retain(|key, _| seen.contains(key));
        followed.retain(|key, _| seen.contains(key));
        let leaders: BTreeSet<i32> = followed.values().map(|f| f.leader).collect();
        drop((led, followed));
        let mut links = self.replication.links.borrow_mut();
        links.retain(|leader, _| leaders.contains(leader));
        for leader in leaders {
            links.entry(leader).or_insert_with(|| io::spawn_local(run_link(self.clone(), leader)));
        }
        if changed {
            self.replication.roles.send_modify(|version| *version += 1);
        }
    }

    /// A follower fetched `partition` of `topic` from `offset`, its log end: records its
    /// progress, moves the high watermark, and asks to add it to the in-sync replicas once
    /// it has caught up.
    pub(super) fn follower_fetched(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        follower: i32,
        offset: Offset,
    ) {
        let (Some(log), Some((record, id))) = (self.log(topic, partition), self.placement(topic, partition))
        else {
            return;
        };
        let key = (topic.to_string(), partition);
        let me = self.config.node_id;
        let mut led = self.replication.led.borrow_mut();
        let Some(entry) = led.get_mut(&key) else { return };
        let leader_end = log.log_end_offset();
        if offset > leader_end || !record.replicas.contains(&follower) {
            // A follower that has not truncated yet, or not a replica: nothing to count.
            return;
        }
        let now = Instant::now();
        let since = entry.since;
        let progress = entry.followers.entry(follower).or_insert(Progress {
            end: offset,
            leader_end,
            caught_up_at: since,
        });
        if offset >= leader_end || offset >= progress.leader_end {
            progress.caught_up_at = now;
        }
        progress.end = offset;
        progress.leader_end = leader_end;
        let joins = !entry.counted(&record.isr, me).contains(&follower)
            && entry.pending.is_none()
            && offset >= log.stable_offset();
        if joins {
            let mut isr = record.isr.clone();
            isr.push(follower);
            self.ask_isr(key.clone(), id, &record, entry, isr);
        }
        refresh_high_watermark(&log, entry, &record.isr, me);
    }

    /// Asks the controller to drop followers that have not caught up for
    /// `replica_lag_time_max_ms` from the in-sync replicas of the partitions this core leads.
    pub fn shrink_lagging_isrs(self: &Rc<Self>) {
        let lag_max = self.config.cluster.replica_lag_max;
        let me = self.config.node_id;
        let mut led = self.replication.led.borrow_mut();
        for (key, entry) in led.iter_mut() {
            let Some((record, id)) = self.placement(&key.0, key.1) else { continue };
            if record.leader != me || record.leader_epoch != entry.leader_epoch {
                continue;
            }
            if let Some(pending) = &entry.pending {
                // No answer (no active controller): ask again; it may have been lost.
                if pending.answered.is_none() && pending.asked_at.elapsed() > ALTER_PENDING_MAX {
                    let isr = pending.isr.clone();
                    self.ask_isr(key.clone(), id, &record, entry, isr);
                }
                continue;
            }
            let lagging = |follower: &i32| {
                let caught_up_at = entry.followers.get(follower).map_or(entry.since, |p| p.caught_up_at);
                *follower != me && caught_up_at.elapsed() > lag_max
            };
            if !record.isr.iter().any(lagging) {
                continue;
            }
            let isr: Vec<i32> = record.isr.iter().copied().filter(|f| !lagging(f)).collect();
            tracing::info!(topic = key.0, partition = key.1, from = ?record.isr, to = ?isr, "a follower fell behind");
            self.ask_isr(key.clone(), id, &record, entry, isr);
        }
    }

    /// Records `isr` as the pending set of `led` and sends the change to the controller. Its
    /// answer is noted, so the pending set is dropped once this core's view shows it; a
    /// change the controller could not decide on (unavailable) stays pending, to be asked
    /// again, since it may still be committed.
    fn ask_isr(
        self: &Rc<Self>,
        key: Key,
        id: [u8; 16],
        record: &PartitionRecord,
        led: &mut Led,
        isr: Vec<i32>,
    ) {
        let Some(controller) = self.controller().cloned() else { return };
        let request = self.replication.requests.get() + 1;
        self.replication.requests.set(request);
        led.pending = Some(PendingIsr {
            request,
            from: record.isr.clone(),
            isr: isr.clone(),
            asked_at: Instant::now(),
            answered: None,
        });
        let change = TopicChange::AlterIsr(IsrChange {
            name: key.0.clone(),
            id,
            partition: key.1 as u32,
            leader: record.leader,
            leader_epoch: record.leader_epoch,
            from: record.isr.clone(),
            isr,
        });
        let shard = self.clone();
        io::spawn_detached(async move {
            let answer = controller.change(change).await;
            let version = match &answer {
                Ok(image) => Some(image.applied),
                Err(refusal) => {
                    tracing::debug!(topic = key.0, partition = key.1, %refusal, "in-sync replica change not made");
                    // Stale (never applied) is settled now; unavailable is not known.
                    (!matches!(refusal, Refusal::Unavailable(_))).then_some(0)
                }
            };
            let mut led = shard.replication.led.borrow_mut();
            let pending = led.get_mut(&key).and_then(|e| e.pending.as_mut()).filter(|p| p.request == request);
            if let Some(pending) = pending {
                pending.answered = version;
            }
            drop(led);
            shard.update_roles();
        });
    }

    /// For a replicated partition this broker leads: the in-sync replica count and
    /// `min.insync.replicas`; `None` for one kept on one broker.
    pub(super) fn replication_of(&self, topic: &str, partition: i32) -> Option<(usize, usize)> {
        let me = self.config.node_id;
        let insync = self.placed(topic, partition, |record, _| {
            (record.replicas.len() > 1 && record.leader == me).then_some(record.isr.len())
        })??;
        let topics = self.topics.borrow();
        let configured = topics.get(topic).and_then(|meta| meta.configs.get("min.insync.replicas"));
        let min = configured.and_then(|value| value.parse::<usize>().ok()).unwrap_or(1);
        Some((insync, min))
    }

    /// Waits until `log` (of a partition this broker leads at `leader_epoch`) shows
    /// everything up to `last`, i.e. every in-sync replica has it; `false` if leadership
    /// moved or `deadline` passed first.
    pub(super) async fn await_replicated(
        &self,
        topic: &str,
        partition: i32,
        log: &Log,
        last: Offset,
        leader_epoch: LeaderEpoch,
        deadline: Instant,
    ) -> Result<(), super::ProduceError> {
        let mut roles = self.replication.roles.subscribe();
        loop {
            // Leadership first: a follower's high watermark may pass `last` with records of
            // the new leader at those offsets.
            if !self.leads(topic, partition) || self.leader_epoch(topic, partition) != leader_epoch {
                return Err(super::ProduceError::NotLeader);
            }
            if log.stable_offset() > last {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(super::ProduceError::TimedOut);
            }
            let shown = log.wait_for_records_at(last, crate::log::Bound::HighWatermark);
            let moved = async {
                let _closed = roles.changed().await;
            };
            futures_lite::future::or(shown, futures_lite::future::or(moved, io::sleep(deadline - now))).await;
        }
    }

    /// Checks a follower's fetch of a partition this broker should lead at `leader_epoch`.
    pub(super) fn check_leader_epoch(
        &self,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
    ) -> Result<(), ResponseError> {
        let placed = self.placed(topic, partition, |record, _| (record.leader, record.leader_epoch));
        let Some((leader, current)) = placed else {
            return Err(ResponseError::UnknownTopicOrPartition);
        };
        if leader != self.config.node_id {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        match leader_epoch {
            // A follower always names the epoch it follows in.
            epoch if epoch < 0 => Err(ResponseError::UnknownLeaderEpoch),
            epoch if epoch < current => Err(ResponseError::FencedLeaderEpoch),
            epoch if epoch > current => Err(ResponseError::UnknownLeaderEpoch),
            _ => Ok(()),
        }
    }

    /// Partitions this core follows from `leader` that are due for work.
    fn work_from(&self, leader: i32) -> (Vec<Work>, Vec<Work>, Option<Instant>) {
        let now = Instant::now();
        let (mut truncate, mut fetch, mut next_retry) = (Vec::new(), Vec::new(), None::<Instant>);
        for (key, followed) in self.replication.followed.borrow().iter().filter(|(_, f)| f.leader == leader) {
            if let Some(at) = followed.retry_at.filter(|at| *at > now) {
                next_retry = Some(next_retry.map_or(at, |next| next.min(at)));
                continue;
            }
            let Some(log) = self.log(&key.0, key.1) else { continue };
            let work =
                Work { key: key.clone(), log, leader_epoch: followed.leader_epoch, probe: followed.probe };
            if followed.truncated { fetch.push(work) } else { truncate.push(work) }
        }
        (truncate, fetch, next_retry)
    }

    /// Updates what this core knows of a followed partition, if it still follows it from
    /// `leader_epoch`.
    fn update_followed(&self, key: &Key, leader_epoch: i32, change: impl FnOnce(&mut Followed)) {
        if let Some(followed) =
            self.replication.followed.borrow_mut().get_mut(key).filter(|f| f.leader_epoch == leader_epoch)
        {
            change(followed);
        }
    }

    fn refused(&self, key: &Key, leader_epoch: i32, error: ResponseError) {
        tracing::debug!(topic = key.0, partition = key.1, ?error, "the leader refused a follower request");
        self.update_followed(key, leader_epoch, |followed| {
            followed.retry_at = Some(Instant::now() + RETRY_AFTER);
            if error == ResponseError::OffsetOutOfRange {
                followed.truncated = false;
            }
        });
    }

    /// Where this broker reaches broker `id` (its peer listener, if it has one), while it is
    /// live.
    pub(super) fn broker_address(&self, id: i32) -> Option<SocketAddr> {
        let view = self.cluster.borrow();
        view.as_ref()?.image.brokers.get(&id).filter(|broker| !broker.fenced)?.peer_address()
    }
}

/// Sets a led partition's high watermark: the lowest log end among the replicas counted
/// (never lower than it was); none bounds it when the leader is the only one.
fn refresh_high_watermark(log: &Log, led: &Led, isr: &[i32], me: i32) {
    let counted = led.counted(isr, me);
    if counted.is_empty() {
        log.set_high_watermark(None);
        return;
    }
    let ends: Option<Vec<Offset>> = counted.iter().map(|id| led.followers.get(id).map(|p| p.end)).collect();
    let floor = log.high_watermark().unwrap_or_else(|| log.stable_offset());
    match ends.and_then(|ends| ends.into_iter().min()) {
        Some(lowest) => log.set_high_watermark(Some(floor.max(lowest))),
        // A follower counted has not fetched in this epoch yet: hold the watermark.
        None => log.set_high_watermark(Some(floor)),
    }
}

/// A follower core's link to one leader broker: truncates the partitions that start a new
/// epoch, then fetches all of them, over and over, until this core follows nothing from it.
async fn run_link(shard: Rc<Shard>, leader: i32) {
    let mut roles = shard.replication.roles.subscribe();
    let mut link: Option<Link> = None;
    loop {
        let (truncate, fetch, next_retry) = shard.work_from(leader);
        let Some(address) = shard.broker_address(leader) else {
            let _changed = roles.changed().await;
            continue;
        };
        if truncate.is_empty() && fetch.is_empty() {
            let retry = async {
                match next_retry {
                    Some(at) => io::sleep(at.saturating_duration_since(Instant::now())).await,
                    None => std::future::pending().await,
                }
            };
            futures_lite::future::or(
                async {
                    let _changed = roles.changed().await;
                },
                retry,
            )
            .await;
            continue;
        }
        if link.as_ref().is_none_or(|link| link.address() != address) {
            link = Some(Link::new(address));
        }
        let Some(current) = link.as_mut() else { continue };
        let round = async {
            if !truncate.is_empty() {
                shard.truncate_to_leader(current, truncate).await?;
            }
            if !fetch.is_empty() {
                shard.fetch_from_leader(current, fetch).await?;
            }
            Ok::<(), String>(())
        };
        if let Err(error) = round.await {
            tracing::debug!(leader, %error, "replication link failed; trying again");
            link = None;
            io::sleep(RETRY_AFTER).await;
        }
    }
}

impl Shard {
    /// Truncates each partition to where its log agrees with the leader's, by
    /// OffsetForLeaderEpoch for its latest epoch (KIP-279): to the smaller of the leader's and
    /// its own end of the latest epoch both have.
    async fn truncate_to_leader(&self, link: &mut Link, work: Vec<Work>) -> Result<(), String> {
        let mut topics: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
        for item in &work {
            let latest =
                item.probe.map_or_else(|| item.log.latest_epoch().unwrap_or(LeaderEpoch(-1)), LeaderEpoch);
            topics.entry(&item.key.0).or_default().push(
                OffsetForLeaderPartition::default()
                    .with_partition(item.key.1)
                    .with_current_leader_epoch(item.leader_epoch)
                    .with_leader_epoch(latest.0),
            );
        }
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(self.config.node_id))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetForLeaderTopic::default()
                            .with_topic(topic_name(name))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let answer: OffsetForLeaderEpochResponse =
            link.call(ApiKey::OffsetForLeaderEpoch, EPOCH_VERSION, &request, LINK_TIMEOUT).await?;
        let mut answers = HashMap::new();
        for topic in answer.topics {
            for partition in topic.partitions {
                answers.insert((topic.topic.to_string(), partition.partition), partition);
            }
        }
        for item in work {
            let Some(answer) = answers.remove(&item.key) else { continue };
            if let Some(error) = ResponseError::try_from_code(answer.error_code) {
                self.refused(&item.key, item.leader_epoch, error);
                continue;
            }
            let cut = match agreed_end(&item.log, answer.leader_epoch, Offset(answer.end_offset)) {
                Agreement::Below(cut) => cut,
                Agreement::Ask(epoch) => {
                    self.update_followed(&item.key, item.leader_epoch, |followed| {
                        followed.probe = Some(epoch)
                    });
                    continue;
                }
            };
            if cut < item.log.log_end_offset() {
                tracing::info!(
                    topic = item.key.0,
                    partition = item.key.1,
                    to = cut.0,
                    "truncating to the leader's log"
                );
                if let Err(error) = item.log.truncate_to(cut).await {
                    tracing::warn!(topic = item.key.0, partition = item.key.1, %error, "truncation failed");
                    self.refused(&item.key, item.leader_epoch, ResponseError::KafkaStorageError);
                    continue;
                }
            }
            self.update_followed(&item.key, item.leader_epoch, |followed| {
                followed.truncated = true;
                followed.probe = None;
                followed.retry_at = None;
            });
        }
        Ok(())
    }

    /// One fetch of every partition in `work` from the leader: appends what came, takes the
    /// leader's high watermark, and returns once the appends are durable here.
    async fn fetch_from_leader(&self, link: &mut Link, work: Vec<Work>) -> Result<(), String> {
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for item in &work {
            topics.entry(&item.key.0).or_default().push(
                FetchPartition::default()
                    .with_partition(item.key.1)
                    .with_current_leader_epoch(item.leader_epoch)
                    // What is durable here: the leader counts it as kept. (Batches above it
                    // but already appended come again and are skipped.)
                    .with_fetch_offset(item.log.durable_offset().0)
                    .with_log_start_offset(item.log.log_start_offset().0)
                    .with_partition_max_bytes(PARTITION_FETCH_BYTES_MAX),
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(self.config.node_id))
            .with_max_wait_ms(FETCH_WAIT.as_millis() as i32)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES_MAX)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        FetchTopic::default().with_topic(topic_name(name)).with_partitions(partitions)
                    })
                    .collect(),
            );
        let answer: FetchResponse =
            link.call(ApiKey::Fetch, FETCH_VERSION, &request, FETCH_WAIT + LINK_TIMEOUT).await?;
        if let Some(error) = ResponseError::try_from_code(answer.error_code) {
            return Err(format!("fetch refused: {error:?}"));
        }
        let mut answers = HashMap::new();
        for topic in answer.responses {
            for partition in topic.partitions {
                answers.insert((topic.topic.to_string(), partition.partition_index), partition);
            }
        }
        let mut durable: Vec<(Key, Durable)> = Vec::new();
        for item in work {
            let Some(answer) = answers.remove(&item.key) else { continue };
            if let Some(error) = ResponseError::try_from_code(answer.error_code) {
                self.fetch_refused(&item, error, Offset(answer.log_start_offset)).await;
                continue;
            }
            let batches = answer.records.as_ref().map_or(Ok(Vec::new()), batch::whole_batches);
            let appended =
                batches.map_err(crate::log::AppendError::from).and_then(|b| item.log.append_replica(b));
            match appended {
                Ok(Some(written)) => durable.push((item.key.clone(), written)),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(topic = item.key.0, partition = item.key.1, %error, "replicated batches refused");
                    self.refused(&item.key, item.leader_epoch, ResponseError::CorruptMessage);
                    continue;
                }
            }
            item.log.set_high_watermark(Some(Offset(answer.high_watermark)));
            // Records the leader deleted (DeleteRecords) go here too, as far as they are here.
            let leader_start = Offset(answer.log_start_offset).min(item.log.stable_offset());
            if leader_start > item.log.log_start_offset()
                && let Err(error) = item.log.delete_records_before(leader_start).await
            {
                tracing::debug!(topic = item.key.0, partition = item.key.1, %error, "log start not moved");
            }
        }
        for (key, written) in durable {
            if let Err(error) = written.await {
                tracing::warn!(topic = key.0, partition = key.1, %error, "replicated batches not durable");
            }
        }
        Ok(())
    }

    /// The leader refused a partition's fetch. If it no longer has what follows this log (its
    /// log start is beyond our end), the log starts again at the leader's log start.
    async fn fetch_refused(&self, item: &Work, error: ResponseError, leader_start: Offset) {
        if error == ResponseError::OffsetOutOfRange && item.log.log_end_offset() < leader_start {
            let (topic, partition) = (&item.key.0, item.key.1);
            tracing::info!(
                topic,
                partition,
                at = leader_start.0,
                "restarting the log at the leader's log start"
            );
            match item.log.restart_at(leader_start).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(topic, partition, %error, "restart failed"),
            }
        }
        self.refused(&item.key, item.leader_epoch, error);
    }
}

/// What a leader's OffsetForLeaderEpoch answer says of a follower's log.
enum Agreement {
    /// The logs agree below this offset: truncate to it.
    Below(Offset),
    /// The leader's epoch is not in this log: ask about this one, the largest below it here.
    Ask(i32),
}

/// Where a follower's log agrees with its leader's, from the leader's answer for an epoch the
/// follower has: the leader's `epoch` (the largest it has at or below the one asked) ends at
/// `end` there. If this log has that epoch too, they agree up to where the first of the two
/// ends; if not, the largest epoch it has below is asked about next (KIP-279).
fn agreed_end(log: &Log, epoch: i32, end: Offset) -> Agreement {
    if epoch < 0 || end.0 < 0 {
        // The leader has no epoch this old: nothing here is known to agree.
        return Agreement::Below(log.log_start_offset());
    }
    let (ours, our_end) = log.end_offset_for_epoch(LeaderEpoch(epoch));
    match ours.0 {
        ours if ours < 0 => Agreement::Below(log.log_start_offset()),
        ours if ours == epoch => Agreement::Below(end.min(our_end)),
        ours => Agreement::Ask(ours),
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::block_on;
    use crate::log::LogConfig;
    use crate::testing::encode_batch;

    /// A log holding `runs` of (leader epoch, records).
    async fn log_with(dir: &std::path::Path, runs: &[(i32, usize)]) -> Log {
        let log = Log::open(dir, LogConfig::default()).await.expect("open");
        for (seed, (epoch, records)) in runs.iter().enumerate() {
            let appended = log.append(&encode_batch(seed as u64, *records, 10, 1_000), LeaderEpoch(*epoch));
            appended.expect("append").durable.await.expect("durable");
        }
        log
    }

    #[test]
    fn a_follower_agrees_with_its_leader_up_to_the_end_of_the_last_epoch_both_have() {
        let dir = tempfile::tempdir().expect("tempdir");
        block_on(async {
            // Here: epoch 1 over [0, 70), epoch 4 over [70, 90). The leader has epoch 1 over
            // [0, 50) and epoch 3 over [50, 100).
            let follower = log_with(dir.path(), &[(1, 70), (4, 20)]).await;
            // Asked about 4, the leader names 3, which this log lacks: ask about 1 next.
            assert!(matches!(agreed_end(&follower, 3, Offset(100)), Agreement::Ask(1)));
            // Epoch 1 ended at 50 there: cut to 50, not to 70 where it ended here.
            assert!(matches!(agreed_end(&follower, 1, Offset(50)), Agreement::Below(Offset(50))));
            // The same latest epoch on both sides, the leader's log longer: nothing to cut.
            assert!(matches!(agreed_end(&follower, 4, Offset(120)), Agreement::Below(Offset(90))));
            // The leader has no epoch this old: nothing is known to agree.
            assert!(matches!(agreed_end(&follower, -1, Offset(-1)), Agreement::Below(Offset(0))));
        });
    }
}
