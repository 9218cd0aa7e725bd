//! Topic changes brokers ask the active controller for: checked against the image, placed on
//! the live brokers, and turned into the log command that makes them.

use super::state::{Command, Image, IsrChange, PartitionRecord, TopicRecord};
use std::collections::BTreeMap;

/// A change to the cluster's topics, as a broker asks for it. Names, partition counts and
/// configs were checked by the asking broker; what needs the whole cluster is checked here.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum TopicChange {
    Create {
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    },
    Delete {
        name: String,
    },
    /// Grows the topic to `total` partitions.
    AddPartitions {
        name: String,
        total: i32,
    },
    AlterConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A partition's leader changes its in-sync replicas.
    AlterIsr(IsrChange),
    /// Moves a partition to the `target` replicas, or cancels its move (`None`). Unless
    /// `resize` (AlterPartitionReassignments v1, KIP-860), the target keeps the replica count.
    Reassign {
        name: String,
        partition: u32,
        target: Option<Vec<i32>>,
        resize: bool,
    },
    /// A block of producer ids for `broker` (not a topic change, but asked the same way).
    AllocateProducerIds {
        broker: i32,
    },
}

/// Why the active controller refused a change.
#[derive(
    Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, thiserror::Error,
)]
pub enum Refusal {
    #[error("topic `{0}` already exists")]
    AlreadyExists(String),
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// No active controller answered in time, or it lost its leadership mid-change.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    NoReassignmentInProgress(String),
}

impl TopicChange {
    pub fn name(&self) -> &str {
        match self {
            TopicChange::Create { name, .. }
            | TopicChange::Delete { name }
            | TopicChange::AddPartitions { name, .. }
            | TopicChange::AlterConfigs { name, .. }
            | TopicChange::AlterIsr(IsrChange { name, .. })
            | TopicChange::Reassign { name, .. } => name,
            TopicChange::AllocateProducerIds { .. } => "",
        }
    }
}

/// The command that makes `change`, placing new partitions on the live brokers, each
/// partition's replicas on consecutive brokers from a random start (Kafka's placement).
pub fn plan(image: &Image, change: TopicChange) -> Result<Command, Refusal> {
    let existing = image.topics.get(change.name());
    match change {
        TopicChange::Create { name, partitions, replication_factor, configs } => {
            if existing.is_some() {
                return Err(Refusal::AlreadyExists(name));
            }
            let replicas = replicas_per_partition(image, replication_factor)?;
            let partitions = place(image, 0..partitions, replicas);
            let topic = TopicRecord { id: *uuid::Uuid::new_v4().as_bytes(), partitions, configs };
            Ok(Command::CreateTopic { name, topic })
        }
        TopicChange::Delete { name } => match existing {
            Some(topic) => Ok(Command::DeleteTopic { name, id: topic.id }),
            None => Err(Refusal::UnknownTopic(name)),
        },
        TopicChange::AddPartitions { name, total } => {
            let Some(topic) = existing else { return Err(Refusal::UnknownTopic(name)) };
            let current = topic.partitions.len() as i32;
            if total <= current {
                let reason = format!("`{name}` has {current} partitions; it can only grow");
                return Err(Refusal::InvalidPartitions(reason));
            }
            let replicas = topic.partitions.first().map_or(1, |p| p.replicas.len() as i16);
            let partitions = place(image, current..total, replicas_per_partition(image, replicas)?);
            Ok(Command::AddPartitions { name, id: topic.id, from: current as u32, partitions })
        }
        TopicChange::AlterConfigs { name, configs } => match existing {
            Some(topic) => Ok(Command::AlterTopicConfigs { name, id: topic.id, configs }),
            None => Err(Refusal::UnknownTopic(name)),
        },
        // Checked when applied: the image may change before the command is.
        TopicChange::AlterIsr(change) => Ok(Command::AlterIsr(change)),
        TopicChange::Reassign { name, partition, target, resize } => {
            let Some(topic) = existing else { return Err(Refusal::UnknownTopic(name)) };
            let Some(record) = topic.partitions.get(partition as usize) else {
                return Err(Refusal::UnknownTopic(format!("{name}-{partition}")));
            };
            check_move(image, (&name, partition), record, target.as_deref(), resize)?;
            Ok(Command::Reassign { name, id: topic.id, partition, target })
        }
        TopicChange::AllocateProducerIds { broker } => Ok(Command::AllocateProducerIds { broker }),
    }
}

/// Whether a partition may move to `target` (or have its move cancelled, `None`): only to
/// registered brokers, each once, keeping the replica count unless `resize`.
fn check_move(
    image: &Image,
    (name, partition): (&str, u32),
    record: &PartitionRecord,
    target: Option<&[i32]>,
    resize: bool,
) -> Result<(), Refusal> {
    let invalid = |reason: String| Err(Refusal::InvalidReplicaAssignment(reason));
    let Some(target) = target else {
        if record.is_moving() {
            return Ok(());
        }
        return Err(Refusal::NoReassignmentInProgress(format!("{name}-{partition} is not moving")));
    };
    if target.is_empty() {
        return invalid("a partition needs at least one replica".into());
    }
    let distinct: std::collections::BTreeSet<&i32> = target.iter().collect();
    if distinct.len() != target.len() {
        return invalid(format!("{target:?} names a broker twice"));
    }
    if let Some(unknown) = target.iter().find(|id| !image.brokers.contains_key(id)) {
        return invalid(format!("broker {unknown} is not registered"));
    }
    let count = record.original_replicas().len();
    if !resize && target.len() != count {
        let reason = format!("{} replicas for a partition of {count}", target.len());
        return Err(Refusal::InvalidReplicationFactor(reason));
    }
    Ok(())
}

/// The replication factor to place with: -1 asks for the default, 1. No more replicas than
/// live brokers.
fn replicas_per_partition(image: &Image, replication_factor: i16) -> Result<usize, Refusal> {
    let factor = if replication_factor == -1 { 1 } else { replication_factor };
    let live = image.live_brokers().count();
    if factor < 1 || factor as usize > live {
        let reason = format!("replication factor {factor} with {live} live brokers");
        return Err(Refusal::InvalidReplicationFactor(reason));
    }
    Ok(factor as usize)
}

/// Each replica also gets the least loaded core of its broker.
fn place(image: &Image, indexes: std::ops::Range<i32>, replicas: usize) -> Vec<PartitionRecord> {
    let live = rack_alternated(image);
    let start = (uuid::Uuid::new_v4().as_u128() % live.len().max(1) as u128) as usize;
    let mut load = image.core_load();
    indexes
        .map(|index| {
            let replicas: Vec<i32> =
                (0..replicas).map(|r| live[(start + index as usize + r) % live.len()]).collect();
            let mut record = PartitionRecord::new(replicas);
            image.give_cores(&record.replicas, &mut record.cores, &mut load);
            record
        })
        .collect()
}

/// The live brokers ordered so that consecutive ones are on different racks while racks last
/// (Kafka's rack-alternated list): the first broker of each rack, then the second of each, and
/// so on. Consecutive replicas, and consecutive partitions' leaders, thus spread over racks.
/// Brokers without a rack count as one rack.
fn rack_alternated(image: &Image) -> Vec<i32> {
    let mut racks: BTreeMap<Option<&str>, Vec<i32>> = BTreeMap::new();
    for broker in image.live_brokers() {
        racks.entry(broker.rack.as_deref()).or_default().push(broker.id);
    }
    let deepest = racks.values().map(Vec::len).max().unwrap_or(0);
    (0..deepest).flat_map(|depth| racks.values().filter_map(move |ids| ids.get(depth).copied())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_alternate_between_racks() {
        let mut image = Image::default();
        let racks = [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "c")];
        for (at, (id, rack)) in racks.iter().enumerate() {
            let register = Command::Register(crate::controller::state::Registration {
                id: *id,
                incarnation: [0; 16],
                host: "h".into(),
                port: 1,
                rack: Some(rack.to_string()),
                peer: None,
                cores: 1,
            });
            image.apply(at as u64 + 1, &register);
        }
        assert_eq!(rack_alternated(&image), [1, 4, 6, 2, 5, 3]);
    }
    use crate::controller::state::Outcome;

    fn image_with_brokers(ids: &[i32]) -> Image {
        let mut image = Image::default();
        for (at, id) in ids.iter().enumerate() {
            let register = Command::Register(crate::controller::state::Registration {
                id: *id,
                incarnation: [0; 16],
                host: "h".into(),
                port: 1,
                rack: None,
                peer: None,
                cores: 1,
            });
            image.apply(at as u64 + 1, &register);
        }
        image
    }

    #[test]
    fn partitions_spread_over_the_live_brokers_and_move_with_fencing() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        let create = TopicChange::Create {
            name: "t".into(),
            partitions: 6,
            replication_factor: -1,
            configs: BTreeMap::new(),
        };
        let command = plan(&image, create.clone()).expect("planned");
        assert_eq!(image.apply(10, &command), Outcome::Applied);
        let leaders: Vec<i32> = image.topics["t"].partitions.iter().map(|p| p.leader).collect();
        for broker in [1, 2, 3] {
            assert_eq!(leaders.iter().filter(|l| **l == broker).count(), 2, "{leaders:?}");
        }
        assert_eq!(plan(&image, create), Err(Refusal::AlreadyExists("t".into())));

        let epoch = image.brokers[&2].epoch;
        image.apply(11, &Command::Fence { id: 2, epoch });
        let on_two: Vec<&PartitionRecord> =
            image.topics["t"].partitions.iter().filter(|p| p.replicas == [2]).collect();
        assert!(on_two.iter().all(|p| p.leader == -1 && p.leader_epoch == 1 && p.isr == [2]), "{on_two:?}");
        image.apply(12, &Command::Unfence { id: 2, epoch });
        let on_two: Vec<&PartitionRecord> =
            image.topics["t"].partitions.iter().filter(|p| p.replicas == [2]).collect();
        assert!(on_two.iter().all(|p| p.leader == 2 && p.leader_epoch == 2), "{on_two:?}");

        let grow = plan(&image, TopicChange::AddPartitions { name: "t".into(), total: 9 }).expect("grow");
        let again = plan(&image, TopicChange::AddPartitions { name: "t".into(), total: 9 }).expect("grow");
        image.apply(13, &grow);
        assert_eq!(image.apply(13, &again), Outcome::Stale, "planned against 6 partitions, not 9");
        assert_eq!(image.topics["t"].partitions.len(), 9);
        let shrink = plan(&image, TopicChange::AddPartitions { name: "t".into(), total: 9 });
        assert!(matches!(shrink, Err(Refusal::InvalidPartitions(_))));
        let replicated = TopicChange::Create {
            name: "r".into(),
            partitions: 1,
            replication_factor: 4,
            configs: BTreeMap::new(),
        };
        assert!(matches!(plan(&image, replicated), Err(Refusal::InvalidReplicationFactor(_))));
        let delete = plan(&image, TopicChange::Delete { name: "t".into() }).expect("delete");
        image.apply(14, &delete);
        assert!(image.topics.is_empty());
        let create = TopicChange::Create {
            name: "t".into(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
        };
        image.apply(15, &plan(&image, create).expect("create again"));
        assert_eq!(image.apply(16, &delete), Outcome::Stale, "the old delete does not touch the new topic");
        assert_eq!(image.topics.len(), 1);

        // A broker's new process (not fenced in between) leads its partitions in a new epoch.
        let leader = image.topics["t"].partitions[0].leader;
        let epoch = image.topics["t"].partitions[0].leader_epoch;
        let restart = Command::Register(crate::controller::state::Registration {
            id: leader,
            incarnation: [9; 16],
            host: "h".into(),
            port: 1,
            rack: None,
            peer: None,
            cores: 1,
        });
        image.apply(17, &restart);
        assert_eq!(image.topics["t"].partitions[0].leader_epoch, epoch + 1);
    }
}

#[cfg(test)]
mod replication_tests {
    use super::*;
    use crate::controller::state::{Outcome, Registration};

    fn register(image: &mut Image, at: u64, id: i32, incarnation: u8) {
        let registration = Registration {
            id,
            incarnation: [incarnation; 16],
            host: "h".into(),
            port: 1,
            rack: None,
            peer: None,
            cores: 1,
        };
        image.apply(at, &Command::Register(registration));
    }

    fn alter(image: &Image, from: Vec<i32>, isr: Vec<i32>) -> Command {
        let record = &image.topics["r"];
        let partition = &record.partitions[0];
        let change = TopicChange::AlterIsr(IsrChange {
            name: "r".into(),
            id: record.id,
            partition: 0,
            leader: partition.leader,
            leader_epoch: partition.leader_epoch,
            from,
            isr,
        });
        plan(image, change).expect("planned")
    }

    #[test]
    fn in_sync_replicas_shrink_and_grow_only_from_what_the_leader_saw() {
        let mut image = Image::default();
        for id in 1..=3 {
            register(&mut image, id as u64, id, 0);
        }
        let create = TopicChange::Create {
            name: "r".into(),
            partitions: 1,
            replication_factor: 3,
            configs: BTreeMap::new(),
        };
        image.apply(10, &plan(&image, create).expect("three replicas"));
        let placed = image.topics["r"].partitions[0].clone();
        assert_eq!(placed.replicas.len(), 3);
        assert_eq!(placed.isr, placed.replicas);
        let (leader, follower, other) = (placed.replicas[0], placed.replicas[1], placed.replicas[2]);

        // The leader drops a lagging follower; a second change planned on the old set is stale.
        let shrink = alter(&image, placed.isr.clone(), vec![leader, other]);
        let stale = alter(&image, placed.isr.clone(), vec![leader]);
        assert_eq!(image.apply(11, &shrink), Outcome::Applied);
        assert_eq!(image.apply(12, &stale), Outcome::Stale);
        assert_eq!(image.topics["r"].partitions[0].isr, [leader, other]);
        let outsider = alter(&image, vec![leader, other], vec![leader, other, 7]);
        assert_eq!(image.apply(13, &outsider), Outcome::Stale, "not a replica");
        let grow = alter(&image, vec![leader, other], vec![leader, other, follower]);
        assert_eq!(image.apply(14, &grow), Outcome::Applied);

        // A fenced leader leaves the set; the next in-sync replica leads in a new epoch.
        let epoch = image.brokers[&leader].epoch;
        image.apply(15, &Command::Fence { id: leader, epoch });
        let now = &image.topics["r"].partitions[0];
        assert_eq!((now.leader, now.leader_epoch), (other, placed.leader_epoch + 1));
        assert_eq!(now.isr, [other, follower]);
        // Its return does not put it back: its leader adds it once it has caught up.
        image.apply(16, &Command::Unfence { id: leader, epoch });
        assert_eq!(image.topics["r"].partitions[0].isr, [other, follower]);
        // A restarted process (never fenced) leaves the set too: it may have lost a tail.
        register(&mut image, 17, follower, 1);
        let now = &image.topics["r"].partitions[0];
        assert_eq!((now.leader, now.isr.clone()), (other, vec![other]));
        // The last in-sync replica stays one while down: the partition waits for it.
        let epoch = image.brokers[&other].epoch;
        image.apply(18, &Command::Fence { id: other, epoch });
        let now = &image.topics["r"].partitions[0];
        assert_eq!((now.leader, now.isr.clone()), (crate::controller::state::NO_LEADER, vec![other]));
        // Unless the topic allows unclean election: a live replica outside the set leads alone.
        let configs = BTreeMap::from([("unclean.leader.election.enable".to_string(), "true".to_string())]);
        let allow = plan(&image, TopicChange::AlterConfigs { name: "r".into(), configs }).expect("planned");
        image.apply(19, &allow);
        let now = &image.topics["r"].partitions[0];
        assert_eq!((now.leader, now.isr.clone()), (leader, vec![leader]));
    }
}

/// A broker registration for the tests: node `id` with `cores` cores.
#[cfg(test)]
fn test_broker(id: i32, cores: u16) -> crate::controller::state::Registration {
    crate::controller::state::Registration {
        id,
        incarnation: [0; 16],
        host: "h".into(),
        port: 1,
        rack: None,
        peer: None,
        cores,
    }
}

#[cfg(test)]
mod move_tests {
    use super::*;
    use crate::controller::state::Outcome;

    fn image_with_topic(brokers: i32, replication_factor: i16) -> Image {
        let mut image = Image::default();
        for id in 1..=brokers {
            image.apply(id as u64, &Command::Register(test_broker(id, 1)));
        }
        let create = TopicChange::Create {
            name: "m".into(),
            partitions: 1,
            replication_factor,
            configs: BTreeMap::new(),
        };
        image.apply(10, &plan(&image, create).expect("created"));
        image
    }

    fn reassign(target: Option<Vec<i32>>) -> TopicChange {
        TopicChange::Reassign { name: "m".into(), partition: 0, target, resize: false }
    }

    fn grow_isr(image: &mut Image, at: u64, follower: i32) -> Outcome {
        let record = image.topics["m"].partitions[0].clone();
        let mut isr = record.isr.clone();
        isr.push(follower);
        let change = IsrChange {
            name: "m".into(),
            id: image.topics["m"].id,
            partition: 0,
            leader: record.leader,
            leader_epoch: record.leader_epoch,
            from: record.isr,
            isr,
        };
        image.apply(at, &Command::AlterIsr(change))
    }

    #[test]
    fn a_partition_moves_once_its_new_replicas_are_in_sync_and_its_leader_follows() {
        let mut image = image_with_topic(4, 2);
        let placed = image.topics["m"].partitions[0].clone();
        let (leader, follower) = (placed.replicas[0], placed.replicas[1]);
        let newcomer = (1..=4).find(|id| !placed.replicas.contains(id)).expect("a broker without it");
        // The leader moves away: the new set is the follower and the newcomer.
        let target = vec![follower, newcomer];
        image.apply(11, &plan(&image, reassign(Some(target.clone()))).expect("planned"));
        let moving = image.topics["m"].partitions[0].clone();
        assert_eq!(moving.replicas, [follower, newcomer, leader]);
        assert_eq!((moving.adding.clone(), moving.removing.clone()), (vec![newcomer], vec![leader]));
        assert_eq!((moving.leader, moving.isr.clone()), (leader, placed.isr.clone()), "nothing moves yet");
        // The newcomer catches up: the move completes and the follower leads, in a new epoch.
        assert_eq!(grow_isr(&mut image, 12, newcomer), Outcome::Applied);
        let moved = image.topics["m"].partitions[0].clone();
        assert_eq!((moved.replicas.clone(), moved.isr.clone()), (target.clone(), target));
        assert!(!moved.is_moving());
        assert_eq!((moved.leader, moved.leader_epoch), (follower, placed.leader_epoch + 1));
        assert_eq!(
            plan(&image, reassign(None)),
            Err(Refusal::NoReassignmentInProgress("m-0 is not moving".into()))
        );
    }

    #[test]
    fn moves_are_checked_and_can_be_cancelled() {
        let mut image = image_with_topic(3, 1);
        let placed = image.topics["m"].partitions[0].clone();
        let other = (1..=3).find(|id| *id != placed.leader).expect("another broker");
        let invalid = |target: Vec<i32>| {
            matches!(plan(&image, reassign(Some(target))), Err(Refusal::InvalidReplicaAssignment(_)))
        };
        assert!(invalid(vec![]), "empty");
        assert!(invalid(vec![9]), "not registered");
        assert!(invalid(vec![other, other]), "twice");
        let resize = reassign(Some(vec![placed.leader, other]));
        assert!(matches!(plan(&image, resize), Err(Refusal::InvalidReplicationFactor(_))));
        let resize = TopicChange::Reassign {
            name: "m".into(),
            partition: 0,
            target: Some(vec![placed.leader, other]),
            resize: true,
        };
        assert!(plan(&image, resize).is_ok(), "allowed when asked");
        let missing = TopicChange::Reassign { name: "m".into(), partition: 1, target: None, resize: false };
        assert!(matches!(plan(&image, missing), Err(Refusal::UnknownTopic(_))));

        // Started, then cancelled before the new replica caught up: back where it was.
        image.apply(11, &plan(&image, reassign(Some(vec![other]))).expect("planned"));
        assert_eq!(image.topics["m"].partitions[0].replicas, [other, placed.leader]);
        image.apply(12, &plan(&image, reassign(None)).expect("cancel"));
        assert_eq!(image.topics["m"].partitions[0], placed);
        // A move within the in-sync replicas (a new order) completes at once; the leader stays.
        let mut image = image_with_topic(3, 3);
        let placed = image.topics["m"].partitions[0].clone();
        let reversed: Vec<i32> = placed.replicas.iter().rev().copied().collect();
        assert_eq!(
            image.apply(11, &plan(&image, reassign(Some(reversed.clone()))).expect("planned")),
            Outcome::Applied
        );
        let now = &image.topics["m"].partitions[0];
        assert_eq!((now.replicas.clone(), now.leader, now.is_moving()), (reversed, placed.leader, false));
    }
}

#[cfg(test)]
mod core_tests {
    use super::*;

    #[test]
    fn replicas_spread_over_their_brokers_cores_and_a_moved_one_gets_a_core_there() {
        let mut image = Image::default();
        for (id, cores) in [(1, 2), (2, 2), (3, 4)] {
            image.apply(id as u64, &Command::Register(test_broker(id, cores)));
        }
        let create = TopicChange::Create {
            name: "c".into(),
            partitions: 4,
            replication_factor: 2,
            configs: BTreeMap::new(),
        };
        image.apply(10, &plan(&image, create).expect("created"));
        let load = image.core_load();
        // 8 replicas over 3 brokers: each core of brokers 1 and 2 holds one or two, none idles
        // while another of its broker holds more than one more.
        for broker in [1, 2] {
            let counts: Vec<usize> =
                (0..2).map(|core| load.get(&(broker, core)).copied().unwrap_or(0)).collect();
            assert!(counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1, "{load:?}");
        }
        for partition in &image.topics["c"].partitions {
            let placed: Vec<i32> = partition.cores.keys().copied().collect();
            let mut replicas = partition.replicas.clone();
            replicas.sort_unstable();
            assert_eq!(placed, replicas, "every replica has a core");
        }
        // A partition not on broker 3 moves there: it gets one of broker 3's cores; the broker it
        // left keeps none once the move completes.
        let (index, record) = image.topics["c"]
            .partitions
            .iter()
            .enumerate()
            .find(|(_, p)| !p.replicas.contains(&3))
            .expect("one");
        let (kept, left) = (record.replicas[0], record.replicas[1]);
        let target = Some(vec![kept, 3]);
        let change =
            TopicChange::Reassign { name: "c".into(), partition: index as u32, target, resize: false };
        image.apply(11, &plan(&image, change).expect("planned"));
        assert!(image.topics["c"].partitions[index].cores.get(&3).is_some_and(|core| *core < 4));
        let record = image.topics["c"].partitions[index].clone();
        let grow = IsrChange {
            name: "c".into(),
            id: image.topics["c"].id,
            partition: index as u32,
            leader: record.leader,
            leader_epoch: record.leader_epoch,
            from: record.isr.clone(),
            isr: [record.isr.clone(), vec![3]].concat(),
        };
        image.apply(12, &Command::AlterIsr(grow));
        let moved = &image.topics["c"].partitions[index];
        assert_eq!(moved.cores.keys().copied().collect::<Vec<_>>(), {
            let mut ids = vec![kept, 3];
            ids.sort_unstable();
            ids
        });
        assert!(!moved.cores.contains_key(&left));
    }
}
