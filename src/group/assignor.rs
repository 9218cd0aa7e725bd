//! Server-side assignors of KIP-848 consumer groups: `uniform` (the default: balanced and
//! sticky, it moves as few partitions as it can) and `range` (per topic, contiguous ranges in
//! member order, as the classic client-side range assignor does).

use std::collections::{BTreeMap, BTreeSet};

/// A partition: topic id and index.
pub type TopicPartition = (uuid::Uuid, i32);

pub const UNIFORM: &str = "uniform";
pub const RANGE: &str = "range";

pub fn known(name: &str) -> bool {
    name == UNIFORM || name == RANGE
}

/// What an assignor works from: each member's subscribed topics (as ids), the partition count
/// of each topic, and the previous target (for stickiness).
pub struct AssignmentSpec<'a> {
    pub subscriptions: &'a BTreeMap<String, BTreeSet<uuid::Uuid>>,
    pub partitions: &'a BTreeMap<uuid::Uuid, i32>,
    pub previous: &'a BTreeMap<String, BTreeSet<TopicPartition>>,
}

pub fn assign(assignor: &str, spec: &AssignmentSpec<'_>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    if assignor == RANGE { range(spec) } else { uniform(spec) }
}

fn range(spec: &AssignmentSpec<'_>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> =
        spec.subscriptions.keys().map(|member| (member.clone(), BTreeSet::new())).collect();
    for (&topic, &count) in spec.partitions {
        let members: Vec<&String> =
            spec.subscriptions.iter().filter(|(_, topics)| topics.contains(&topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let (each, extra) = (count as usize / members.len(), count as usize % members.len());
        let mut next = 0;
        for (i, member) in members.into_iter().enumerate() {
            let take = each + usize::from(i < extra);
            let owned = target.entry(member.clone()).or_default();
            owned.extend((next..next + take).map(|partition| (topic, partition as i32)));
            next += take;
        }
    }
    target
}

fn uniform(spec: &AssignmentSpec<'_>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let subscribed = |member: &str, partition: &TopicPartition| {
        spec.subscriptions.get(member).is_some_and(|topics| topics.contains(&partition.0))
            && spec.partitions.get(&partition.0).is_some_and(|&count| partition.1 < count)
    };
    // Keep what each member had and still may have.
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = spec
        .subscriptions
        .keys()
        .map(|member| {
            let kept = spec.previous.get(member).into_iter().flatten().filter(|p| subscribed(member, p));
            (member.clone(), kept.copied().collect())
        })
        .collect();
    let taken: BTreeSet<TopicPartition> = target.values().flatten().copied().collect();
    // Hand out the rest, each to the least loaded member that wants it.
    let all = spec.partitions.iter().flat_map(|(&topic, &count)| (0..count).map(move |p| (topic, p)));
    for partition in all.filter(|p| !taken.contains(p)) {
        let least = target
            .iter()
            .filter(|(member, _)| subscribed(member, &partition))
            .min_by_key(|(member, owned)| (owned.len(), (*member).clone()))
            .map(|(member, _)| member.clone());
        if let Some(member) = least {
            target.entry(member).or_default().insert(partition);
        }
    }
    balance(&mut target, &subscribed);
    target
}

/// Moves partitions from the most to the least loaded members (among those that may take
/// them) until no move brings two members closer.
fn balance(
    target: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
    subscribed: &dyn Fn(&str, &TopicPartition) -> bool,
) {
    let moves_max: usize = target.values().map(BTreeSet::len).sum();
    for _ in 0..moves_max {
        let mut best: Option<(String, String, TopicPartition)> = None;
        let mut gap_best = 1;
        for (from, owned) in target.iter() {
            for (to, theirs) in target.iter() {
                let gap = owned.len().saturating_sub(theirs.len());
                if gap <= gap_best {
                    continue;
                }
                if let Some(partition) = owned.iter().rev().find(|p| subscribed(to, p)) {
                    gap_best = gap;
                    best = Some((from.clone(), to.clone(), *partition));
                }
            }
        }
        let Some((from, to, partition)) = best else { return };
        target.entry(from).or_default().remove(&partition);
        target.entry(to).or_default().insert(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topics(n: u128) -> Vec<uuid::Uuid> {
        (1..=n).map(uuid::Uuid::from_u128).collect()
    }

    #[test]
    fn range_gives_each_member_a_contiguous_run_per_topic() {
        let ids = topics(1);
        let subscriptions: BTreeMap<String, BTreeSet<uuid::Uuid>> =
            ["a", "b"].iter().map(|m| (m.to_string(), ids.iter().copied().collect())).collect();
        let partitions = [(ids[0], 5)].into();
        let previous = BTreeMap::new();
        let target = assign(
            RANGE,
            &AssignmentSpec { subscriptions: &subscriptions, partitions: &partitions, previous: &previous },
        );
        let of = |m: &str| target[m].iter().map(|p| p.1).collect::<Vec<_>>();
        assert_eq!((of("a"), of("b")), (vec![0, 1, 2], vec![3, 4]));
    }

    proptest! {
        /// Every partition someone subscribes to goes to exactly one subscriber; loads differ by
        /// at most one when everyone subscribes to everything; members that stay keep what they
        /// had unless balance requires otherwise.
        #[test]
        fn uniform_is_complete_exclusive_balanced_and_sticky(members in 1usize..7, counts in proptest::collection::vec(1i32..13, 1..4), leaving in 0usize..7) {
            let ids = topics(counts.len() as u128);
            let partitions: BTreeMap<uuid::Uuid, i32> = ids.iter().copied().zip(counts.iter().copied()).collect();
            let everyone: BTreeSet<uuid::Uuid> = ids.iter().copied().collect();
            let subscriptions: BTreeMap<String, BTreeSet<uuid::Uuid>> = (0..members).map(|m| (format!("m{m}"), everyone.clone())).collect();
            let none = BTreeMap::new();
            let first = assign(UNIFORM, &AssignmentSpec { subscriptions: &subscriptions, partitions: &partitions, previous: &none });
            let total: i32 = counts.iter().sum();
            let all: Vec<TopicPartition> = first.values().flatten().copied().collect();
            prop_assert_eq!(all.len(), total as usize);
            prop_assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), total as usize);
            let loads: Vec<usize> = first.values().map(BTreeSet::len).collect();
            prop_assert!(loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0) <= 1);

            // One member leaves: the others keep everything they had.
            let gone = format!("m{}", leaving % members);
            let mut rest = subscriptions.clone();
            rest.remove(&gone);
            let second = assign(UNIFORM, &AssignmentSpec { subscriptions: &rest, partitions: &partitions, previous: &first });
            if !rest.is_empty() {
                prop_assert_eq!(second.values().flatten().count(), total as usize);
                for (member, owned) in &rest {
                    let _ = owned;
                    prop_assert!(first[member].is_subset(&second[member]), "{} lost partitions", member);
                }
            }
        }
    }
}
