//! The cluster metadata the controller quorum replicates: the commands its log carries and the
//! image they build. Applying a command is deterministic (no clock, no I/O), so every
//! controller that applies the same log holds the same image.

use std::collections::BTreeMap;

/// A broker as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerRecord {
    pub id: i32,
    /// Chosen by the broker process when it starts: a second process with the same node id has
    /// another one, and is refused while the first one's session lives.
    pub incarnation: [u8; 16],
    /// The index of the log entry that registered this incarnation; heartbeats and fences
    /// name it, so a stale one cannot touch a newer registration.
    pub epoch: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Where other brokers reach it (replica fetches, transaction markers), when that is not
    /// its Kafka address (`--peer-listen`).
    pub peer: Option<(String, u16)>,
    /// Its cores (shards): each replica placed on it is given one.
    pub cores: u16,
    /// Missed its heartbeats: clients are not sent to it.
    pub fenced: bool,
}

impl BrokerRecord {
    /// Where other brokers reach this one: its peer listener, or its Kafka listener.
    pub fn peer_address(&self) -> Option<std::net::SocketAddr> {
        let (host, port) = self.peer.as_ref().map_or((&self.host, self.port), |(host, port)| (host, *port));
        Some(std::net::SocketAddr::new(host.parse().ok()?, port))
    }
}

/// Everything the metadata log has said so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Image {
    /// The index of the last log entry applied: the image's version.
    pub applied: u64,
    /// Chosen by the first active controller; empty until then.
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, BrokerRecord>,
    /// Every topic, by name.
    pub topics: BTreeMap<String, TopicRecord>,
    /// The first producer id no broker was given yet (KIP-730: blocks of ids come from here,
    /// so no two brokers hand out the same one).
    pub next_producer_id: i64,
    /// The start of the latest block of producer ids each broker was given.
    pub producer_id_blocks: BTreeMap<i32, i64>,
}

/// Producer ids a broker is given at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// A topic as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicRecord {
    pub id: [u8; 16],
    /// By partition index.
    pub partitions: Vec<PartitionRecord>,
    /// Topic config overrides, by Kafka name.
    pub configs: BTreeMap<String, String>,
}

/// Where a partition lives and who leads it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionRecord {
    pub replicas: Vec<i32>,
    /// -1 while no in-sync replica is alive.
    pub leader: i32,
    /// Raised at every change of leader.
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    /// While the partition moves (KIP-455): the replicas it is moving to that were not among
    /// the ones it moves from. They are in `replicas` too, and follow the leader until they
    /// are in sync.
    pub adding: Vec<i32>,
    /// While the partition moves: the replicas it leaves once every target replica is in sync.
    pub removing: Vec<i32>,
    /// The core (shard) of each replica on its broker.
    pub cores: BTreeMap<i32, u16>,
}

impl PartitionRecord {
    /// A partition placed on `replicas`, led by the first.
    pub fn new(replicas: Vec<i32>) -> PartitionRecord {
        let leader = replicas.first().copied().unwrap_or(NO_LEADER);
        PartitionRecord {
            leader,
            leader_epoch: 0,
            isr: replicas.clone(),
            replicas,
            adding: Vec::new(),
            removing: Vec::new(),
            cores: BTreeMap::new(),
        }
    }

    pub fn is_moving(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas a move started from (the replicas themselves while none is under way).
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.adding.contains(r)).collect()
    }

    /// The replicas a move goes to (the replicas themselves while none is under way).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.removing.contains(r)).collect()
    }
}

/// The topic config allowing unclean leader election.
const UNCLEAN_ELECTION: &str = crate::shard::topics::UNCLEAN_ELECTION;

/// The leader Metadata shows when a partition has none.
pub const NO_LEADER: i32 = -1;

/// How many replicas each (broker, core) holds.
pub type CoreLoad = BTreeMap<(i32, u16), usize>;

impl Image {
    /// How many replicas each (broker, core) holds now.
    pub fn core_load(&self) -> CoreLoad {
        let mut load = CoreLoad::new();
        let partitions = self.topics.values().flat_map(|topic| &topic.partitions);
        for (broker, core) in partitions.flat_map(|partition| &partition.cores) {
            *load.entry((*broker, *core)).or_default() += 1;
        }
        load
    }

    /// Gives each of `replicas` without a core in `cores` the least loaded core of its broker,
    /// counted in `load` as taken.
    pub fn give_cores(&self, replicas: &[i32], cores: &mut BTreeMap<i32, u16>, load: &mut CoreLoad) {
        for broker in replicas {
            if !cores.contains_key(broker) {
                cores.insert(*broker, self.least_loaded_core(*broker, load));
            }
        }
    }

    /// The core of `broker` holding the fewest replicas (the lowest of those tied), counted in
    /// `load` as taken.
    fn least_loaded_core(&self, broker: i32, load: &mut CoreLoad) -> u16 {
        let cores = self.brokers.get(&broker).map_or(1, |b| b.cores.max(1));
        let core = (0..cores).min_by_key(|core| (load.get(&(broker, *core)).copied().unwrap_or(0), *core));
        let core = core.unwrap_or(0);
        *load.entry((broker, core)).or_default() += 1;
        core
    }

    /// The brokers clients may be sent to, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|broker| !broker.fenced)
    }
}

/// Ends a partition's move once every target replica is in sync: the replicas and the
/// in-sync set become the target (in its order). Whether it ended; the caller then elects a
/// leader if the old one left.
fn complete_move(record: &mut PartitionRecord) -> bool {
    let target = record.target_replicas();
    if !record.is_moving() || !target.iter().all(|r| record.isr.contains(r)) {
        return false;
    }
    record.cores.retain(|broker, _| target.contains(broker));
    record.isr = target.clone();
    record.replicas = target;
    record.adding.clear();
    record.removing.clear();
    true
}

/// A broker process, as it registers.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Registration {
    pub id: i32,
    pub incarnation: [u8; 16],
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    pub peer: Option<(String, u16)>,
    pub cores: u16,
}

/// A change to the metadata, as the log carries it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// A broker (re)started: its registration replaces any earlier one and is unfenced.
    Register(Registration),
    /// The broker registered at `epoch` missed its heartbeats.
    Fence { id: i32, epoch: u64 },
    /// The broker registered at `epoch`, fenced, heartbeats again.
    Unfence { id: i32, epoch: u64 },
    /// Names the cluster, once: a later one is ignored.
    NameCluster { id: String },
    /// A new topic, placed by the active controller.
    CreateTopic { name: String, topic: TopicRecord },
    /// Each change to a topic names the topic by id too: planned against one image, it must
    /// not touch a topic deleted and made again before it is applied.
    DeleteTopic { name: String, id: [u8; 16] },
    /// Partitions appended to a topic that has `from` of them, placed by the active controller.
    AddPartitions { name: String, id: [u8; 16], from: u32, partitions: Vec<PartitionRecord> },
    /// Replaces a topic's config overrides.
    AlterTopicConfigs { name: String, id: [u8; 16], configs: BTreeMap<String, String> },
    /// A partition's leader changes its in-sync replicas: a follower fell behind or caught up.
    AlterIsr(IsrChange),
    /// Starts moving a partition to the `target` replicas, replacing any move under way, or
    /// with `None` cancels the move under way (KIP-455).
    Reassign { name: String, id: [u8; 16], partition: u32, target: Option<Vec<i32>> },
    /// Gives `broker` the next block of `PRODUCER_ID_BLOCK` producer ids.
    AllocateProducerIds { broker: i32 },
}

/// A leader's change of its partition's in-sync replicas from `from` to `isr`. Applied only if
/// the leader, its epoch and the set it started from are still current.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct IsrChange {
    pub name: String,
    pub id: [u8; 16],
    pub partition: u32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub from: Vec<i32>,
    pub isr: Vec<i32>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Register(broker) => {
                write!(f, "register broker {} at {}:{}", broker.id, broker.host, broker.port)
            }
            Command::Fence { id, epoch } => write!(f, "fence broker {id} (epoch {epoch})"),
            Command::Unfence { id, epoch } => write!(f, "unfence broker {id} (epoch {epoch})"),
            Command::NameCluster { id } => write!(f, "name the cluster {id}"),
            Command::CreateTopic { name, topic } => {
                write!(f, "create topic {name} with {} partitions", topic.partitions.len())
            }
            Command::DeleteTopic { name, .. } => write!(f, "delete topic {name}"),
            Command::AddPartitions { name, partitions, .. } => {
                write!(f, "add {} partitions to {name}", partitions.len())
            }
            Command::AlterTopicConfigs { name, .. } => write!(f, "alter the configs of {name}"),
            Command::AlterIsr(IsrChange { name, partition, isr, .. }) => {
                write!(f, "in-sync replicas of {name}-{partition}: {isr:?}")
            }
            Command::Reassign { name, partition, target: Some(target), .. } => {
                write!(f, "move {name}-{partition} to {target:?}")
            }
            Command::Reassign { name, partition, target: None, .. } => {
                write!(f, "cancel the move of {name}-{partition}")
            }
            Command::AllocateProducerIds { broker } => {
                write!(f, "a block of producer ids for broker {broker}")
            }
        }
    }
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The broker's registration, with its epoch.
    Registered {
        epoch: u64,
    },
    Applied,
    /// The command named an epoch that is no longer the broker's: nothing changed.
    Stale,
}

impl Image {
    /// Applies the command at log index `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        self.applied = index;
        match command {
            Command::Register(broker) => self.register(index, broker),
            Command::NameCluster { id } if self.cluster_id.is_empty() => {
                self.cluster_id = id.clone();
                Outcome::Applied
            }
            Command::NameCluster { .. } => Outcome::Stale,
            Command::Fence { id, epoch } | Command::Unfence { id, epoch } => {
                match self.brokers.get_mut(id).filter(|broker| broker.epoch == *epoch) {
                    Some(broker) => {
                        let fenced = matches!(command, Command::Fence { .. });
                        broker.fenced = fenced;
                        if fenced {
                            self.leave_isrs(*id);
                        }
                        self.elect_leaders();
                        Outcome::Applied
                    }
                    None => Outcome::Stale,
                }
            }
            Command::CreateTopic { name, topic } if !self.topics.contains_key(name) => {
                self.topics.insert(name.clone(), topic.clone());
                self.elect_leaders();
                Outcome::Applied
            }
            Command::DeleteTopic { name, id } if self.topics.get(name).is_some_and(|t| t.id == *id) => {
                self.topics.remove(name);
                Outcome::Applied
            }
            Command::AddPartitions { name, id, from, partitions } => {
                let current =
                    self.topics.get_mut(name).filter(|t| t.id == *id && t.partitions.len() == *from as usize);
                match current {
                    Some(topic) => {
                        topic.partitions.extend(partitions.iter().cloned());
                        self.elect_leaders();
                        Outcome::Applied
                    }
                    None => Outcome::Stale,
                }
            }
            Command::AlterTopicConfigs { name, id, configs } => {
                match self.topics.get_mut(name).filter(|topic| topic.id == *id) {
                    Some(topic) => {
                        topic.configs = configs.clone();
                        // Unclean election may just have been allowed.
                        self.elect_leaders();
                        Outcome::Applied
                    }
                    None => Outcome::Stale,
                }
            }
            Command::AlterIsr(change) => self.alter_isr(change),
            Command::Reassign { name, id, partition, target } => {
                self.reassign(name, *id, *partition, target.as_deref())
            }
            Command::AllocateProducerIds { broker } => {
                self.producer_id_blocks.insert(*broker, self.next_producer_id);
                self.next_producer_id += PRODUCER_ID_BLOCK;
                Outcome::Applied
            }
            Command::CreateTopic { .. } | Command::DeleteTopic { .. } => Outcome::Stale,
        }
    }

    /// A broker's registration at log index `index`, replacing any earlier one.
    fn register(&mut self, index: u64, broker: &Registration) -> Outcome {
        let record = BrokerRecord {
            id: broker.id,
            incarnation: broker.incarnation,
            epoch: index,
            host: broker.host.clone(),
            port: broker.port,
            rack: broker.rack.clone(),
            peer: broker.peer.clone(),
            cores: broker.cores,
            fenced: false,
        };
        let restarted = self
            .brokers
            .insert(broker.id, record)
            .is_some_and(|old| old.incarnation != broker.incarnation && !old.fenced);
        if restarted {
            // A new process may have lost an unsynced tail: it leaves the in-sync replicas it
            // shares with others (it rejoins once caught up), and the partitions it still
            // leads get a new epoch, so clients can tell (KIP-320).
            self.leave_isrs(broker.id);
            self.bump_epochs_led_by(broker.id);
        }
        self.elect_leaders();
        Outcome::Registered { epoch: index }
    }

    /// A leader's change of its partition's in-sync replicas, if the leader, its epoch and the
    /// set it started `from` are still current, and every member is a live replica.
    fn alter_isr(&mut self, change: &IsrChange) -> Outcome {
        let IsrChange { name, id, partition, leader, leader_epoch, from, isr } = change;
        let (id, partition, leader, leader_epoch) = (*id, *partition, *leader, *leader_epoch);
        let live = |broker: &i32| self.brokers.get(broker).is_some_and(|broker| !broker.fenced);
        let admissible = isr.contains(&leader) && isr.iter().all(live);
        let current = self
            .partition_mut(name, id, partition)
            .filter(|p| p.leader == leader && p.leader_epoch == leader_epoch && p.isr == *from);
        match current {
            Some(record) if admissible && isr.iter().all(|broker| record.replicas.contains(broker)) => {
                record.isr = isr.clone();
                if complete_move(record) {
                    self.elect_leaders();
                }
                Outcome::Applied
            }
            _ => Outcome::Stale,
        }
    }

    /// Partition `partition` of topic `name`, if the topic still has id `id`.
    fn partition_mut(&mut self, name: &str, id: [u8; 16], partition: u32) -> Option<&mut PartitionRecord> {
        let topic = self.topics.get_mut(name).filter(|topic| topic.id == id)?;
        topic.partitions.get_mut(partition as usize)
    }

    /// Starts moving a partition to `target` (replacing a move under way: it starts from the
    /// same original replicas), or cancels the move under way. Its replicas are the target's
    /// then the original's others; it completes once every target replica is in sync. A
    /// move or cancel that would leave no in-sync replica is refused (`Stale`).
    fn reassign(&mut self, name: &str, id: [u8; 16], partition: u32, target: Option<&[i32]>) -> Outcome {
        let Some(record) = self.partition_mut(name, id, partition) else { return Outcome::Stale };
        let original = record.original_replicas();
        let (replicas, adding, removing) = match target {
            Some(target) => {
                let mut replicas = target.to_vec();
                replicas.extend(original.iter().filter(|r| !target.contains(r)));
                let adding = target.iter().copied().filter(|r| !original.contains(r)).collect();
                let removing = original.iter().copied().filter(|r| !target.contains(r)).collect();
                (replicas, adding, removing)
            }
            None if record.is_moving() => (original, Vec::new(), Vec::new()),
            None => return Outcome::Stale,
        };
        let isr: Vec<i32> = record.isr.iter().copied().filter(|r| replicas.contains(r)).collect();
        if isr.is_empty() {
            return Outcome::Stale;
        }
        let mut cores = record.cores.clone();
        cores.retain(|broker, _| replicas.contains(broker));
        self.give_cores(&replicas, &mut cores, &mut self.core_load());
        let Some(record) = self.partition_mut(name, id, partition) else { return Outcome::Stale };
        (record.replicas, record.isr, record.adding, record.removing) = (replicas, isr, adding, removing);
        record.cores = cores;
        complete_move(record);
        self.elect_leaders();
        Outcome::Applied
    }

    /// Takes `broker` out of every in-sync set it shares with another broker (fenced, or
    /// restarted without being fenced): only replicas known to hold every acknowledged record
    /// stay eligible to lead. A set's last member stays, so a partition is never left without
    /// one (it waits for that broker instead: no unclean election).
    fn leave_isrs(&mut self, broker: i32) {
        let partitions = self.topics.values_mut().flat_map(|topic| topic.partitions.iter_mut());
        for partition in partitions.filter(|p| p.isr.len() > 1 && p.isr.contains(&broker)) {
            partition.isr.retain(|member| *member != broker);
        }
    }

    fn bump_epochs_led_by(&mut self, broker: i32) {
        let led = self.topics.values_mut().flat_map(|topic| topic.partitions.iter_mut());
        for partition in led.filter(|partition| partition.leader == broker) {
            partition.leader_epoch += 1;
        }
    }

    /// Gives every partition whose leader is gone (fenced, out of the in-sync replicas, or
    /// never set) the first live broker of its in-sync replicas, raising its leader epoch; without one it has no leader.
    /// The in-sync set keeps its last member, so only a broker holding every acknowledged
    /// record can lead again, unless the topic sets `unclean.leader.election.enable`: then,
    /// with no live member, the first live replica leads with itself as the in-sync set.
    fn elect_leaders(&mut self) {
        let live = |id: &i32| self.brokers.get(id).is_some_and(|broker| !broker.fenced);
        let mut changes = Vec::new();
        for (name, topic) in &self.topics {
            for (index, partition) in topic.partitions.iter().enumerate() {
                let sound = partition.leader != NO_LEADER && partition.isr.contains(&partition.leader);
                if sound && live(&partition.leader) {
                    continue;
                }
                let clean = partition.isr.iter().copied().find(|id| live(id));
                // Only if the topic allows it: a live replica outside the set, which may lack
                // acknowledged records, leads alone.
                let unclean = || {
                    let allowed = topic.configs.get(UNCLEAN_ELECTION).is_some_and(|v| v == "true");
                    partition.replicas.iter().copied().filter(|_| allowed).find(|id| live(id))
                };
                match (clean, clean.or_else(unclean)) {
                    (Some(leader), _) if leader != partition.leader => {
                        changes.push((name.clone(), index, leader, None))
                    }
                    (None, Some(leader)) => changes.push((name.clone(), index, leader, Some(vec![leader]))),
                    (None, None) if partition.leader != NO_LEADER => {
                        changes.push((name.clone(), index, NO_LEADER, None))
                    }
                    _ => {}
                }
            }
        }
        for (name, index, leader, isr) in changes {
            if let Some(partition) = self.topics.get_mut(&name).and_then(|t| t.partitions.get_mut(index)) {
                partition.leader = leader;
                partition.leader_epoch += 1;
                if let Some(isr) = isr {
                    tracing::warn!(topic = name, partition = index, leader, "unclean leader election");
                    partition.isr = isr;
                }
            }
        }
    }

    /// Marks a log entry without a command (a leader's first entry, a membership change).
    pub fn skip(&mut self, index: u64) {
        self.applied = index;
    }

    pub fn encode(&self) -> Result<Vec<u8>, rkyv::rancor::Error> {
        Ok(rkyv::to_bytes::<rkyv::rancor::Error>(self)?.into_vec())
    }

    pub fn decode(bytes: &[u8]) -> Result<Image, rkyv::rancor::Error> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<Image, rkyv::rancor::Error>(&aligned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(id: i32, incarnation: u8) -> Command {
        Command::Register(Registration {
            id,
            incarnation: [incarnation; 16],
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
            peer: None,
            cores: 1,
        })
    }

    #[test]
    fn fences_name_the_registration_they_mean() {
        let mut image = Image::default();
        assert_eq!(image.apply(3, &register(1, 7)), Outcome::Registered { epoch: 3 });
        assert_eq!(image.apply(4, &Command::Fence { id: 1, epoch: 3 }), Outcome::Applied);
        assert_eq!(image.live_brokers().count(), 0);
        assert_eq!(image.apply(5, &register(1, 8)), Outcome::Registered { epoch: 5 });
        assert_eq!(image.apply(6, &Command::Fence { id: 1, epoch: 3 }), Outcome::Stale, "an old epoch");
        assert_eq!(image.live_brokers().map(|b| b.incarnation[0]).collect::<Vec<_>>(), [8]);
        assert_eq!(image.apply(7, &Command::Fence { id: 2, epoch: 5 }), Outcome::Stale, "no such broker");
        assert_eq!(image.applied, 7);
        assert_eq!(image.apply(8, &Command::NameCluster { id: "a".into() }), Outcome::Applied);
        assert_eq!(image.apply(9, &Command::NameCluster { id: "b".into() }), Outcome::Stale, "named once");
        assert_eq!(image.cluster_id, "a");
        // Producer id blocks never overlap, whoever asks.
        image.apply(10, &Command::AllocateProducerIds { broker: 1 });
        image.apply(11, &Command::AllocateProducerIds { broker: 2 });
        image.apply(12, &Command::AllocateProducerIds { broker: 1 });
        assert_eq!(
            image.producer_id_blocks,
            BTreeMap::from([(1, 2 * PRODUCER_ID_BLOCK), (2, PRODUCER_ID_BLOCK)])
        );
        assert_eq!(image.next_producer_id, 3 * PRODUCER_ID_BLOCK);
        let decoded = Image::decode(&image.encode().expect("encode")).expect("decode");
        assert_eq!(decoded, image);
    }
}
