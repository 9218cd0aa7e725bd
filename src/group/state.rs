//! One consumer group's state, as Kafka's classic group protocol defines it: the members, the
//! generation, the chosen protocol, the assignment and the committed offsets. Only the core
//! that owns the group touches it; the coordinator drives the transitions.

use super::consumer::ConsumerGroup;
use super::store::{GroupValue, MemberValue, OffsetValue};
use crate::types::TimestampMs;
use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka gives the state in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup waiting for the rebalance to complete: its version and where its answer goes.
pub struct PendingJoin {
    pub version: i16,
    pub reply: oneshot::Sender<JoinGroupResponse>,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub join: Option<PendingJoin>,
    pub sync: Option<oneshot::Sender<SyncGroupResponse>>,
    /// The member is gone if no heartbeat (or other request) comes before this.
    pub deadline: Instant,
}

impl Member {
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    pub fn touch(&mut self) {
        self.deadline = Instant::now() + self.session_timeout;
    }

    pub fn to_value(&self, protocol: Option<&str>) -> MemberValue {
        MemberValue {
            member_id: self.id.clone(),
            instance_id: self.instance_id.clone(),
            client_id: self.client_id.clone(),
            client_host: self.client_host.clone(),
            rebalance_timeout_ms: self.rebalance_timeout.as_millis() as i32,
            session_timeout_ms: self.session_timeout.as_millis() as i32,
            subscription: protocol.map(|p| self.metadata(p)).unwrap_or_default(),
            assignment: self.assignment.clone(),
        }
    }

    pub fn from_value(value: MemberValue, protocol: Option<&str>) -> Member {
        let session_timeout = Duration::from_millis(value.session_timeout_ms.max(0) as u64);
        Member {
            id: value.member_id,
            instance_id: value.instance_id,
            client_id: value.client_id,
            client_host: value.client_host,
            session_timeout,
            rebalance_timeout: Duration::from_millis(value.rebalance_timeout_ms.max(0) as u64),
            protocols: protocol.map(|p| vec![(p.to_string(), value.subscription)]).unwrap_or_default(),
            assignment: value.assignment,
            join: None,
            sync: None,
            deadline: Instant::now() + session_timeout,
        }
    }
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub state_since: TimestampMs,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED that have not joined with them yet.
    pub pending: HashSet<String>,
    /// group.instance.id → member id, for static members.
    pub instances: HashMap<String, String>,
    pub offsets: BTreeMap<(String, i32), OffsetValue>,
    /// Counts rebalances, so a timer set for one does nothing to the next.
    pub round: u64,
    /// The first rebalance of an empty group waits this long for more members.
    pub initial_delay: bool,
    /// Set when the group is (or was) a KIP-848 consumer group.
    pub consumer: Option<ConsumerGroup>,
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            state_since: TimestampMs::now(),
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: HashSet::new(),
            instances: HashMap::new(),
            offsets: BTreeMap::new(),
            round: 0,
            initial_delay: false,
            consumer: None,
        }
    }

    /// Whether the group has no members of either protocol (so it may be deleted, and its
    /// offsets expire).
    pub fn is_empty(&self) -> bool {
        self.state == GroupState::Empty && self.consumer.as_ref().is_none_or(|c| c.members.is_empty())
    }

    pub fn set_state(&mut self, state: GroupState) {
        self.state = state;
        self.state_since = TimestampMs::now();
    }

    /// The protocols every member supports (all of a new member's, if there are none yet).
    pub fn candidates(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else { return Vec::new() };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(name, _)| name.clone()).collect();
        for member in members {
            candidates.retain(|name| member.protocols.iter().any(|(n, _)| n == name));
        }
        candidates
    }

    /// Whether a member with these protocols may join (Kafka's INCONSISTENT_GROUP_PROTOCOL
    /// otherwise). `replacing`: the member id it takes over, whose protocols do not count.
    pub fn supports(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        replacing: Option<&str>,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> =
            self.members.values().filter(|m| Some(m.id.as_str()) != replacing).collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols
            .iter()
            .any(|(name, _)| others.iter().all(|member| member.protocols.iter().any(|(n, _)| n == name)))
    }

    /// The protocol the members vote for: each votes for its most preferred candidate.
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidates();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(name, _)| candidates.contains(name)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        // Ties go to the protocol listed first by the candidates (the first member's preference).
        candidates.into_iter().find(|name| votes.get(name.as_str()) == Some(&best))
    }

    pub fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|member| member.join.is_some())
    }

    /// The longest rebalance timeout among the members.
    pub fn rebalance_timeout(&self) -> Duration {
        self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::ZERO)
    }

    pub fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.remove(member_id)?;
        if let Some(instance) = &member.instance_id {
            self.instances.remove(instance);
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        Some(member)
    }

    pub fn to_value(&self) -> GroupValue {
        let protocol = self.protocol.as_deref();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_since.0,
            members: self.members.values().map(|member| member.to_value(protocol)).collect(),
        }
    }

    /// Restores a group from its stored metadata: Stable with its members if it had any (they
    /// keep heartbeating as if nothing happened), Empty otherwise.
    pub fn restore(&mut self, value: GroupValue) {
        let protocol = value.protocol.clone();
        self.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
        self.generation = value.generation;
        self.protocol = value.protocol;
        self.leader = value.leader;
        self.members.clear();
        self.instances.clear();
        for member in value.members {
            let member = Member::from_value(member, protocol.as_deref());
            if let Some(instance) = &member.instance_id {
                self.instances.insert(instance.clone(), member.id.clone());
            }
            self.members.insert(member.id.clone(), member);
        }
        self.state = if self.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
        self.state_since = TimestampMs(value.state_timestamp.max(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, protocols: &[&str]) -> Member {
        Member {
            id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::new())).collect(),
            assignment: Bytes::new(),
            join: None,
            sync: None,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn the_protocol_is_the_one_most_members_prefer_among_those_all_support() {
        let mut group = Group::new("g");
        group.protocol_type = Some("consumer".into());
        for (id, protocols) in
            [("a", &["range", "roundrobin"][..]), ("b", &["roundrobin", "range"]), ("c", &["roundrobin"])]
        {
            group.members.insert(id.into(), member(id, protocols));
        }
        assert_eq!(group.candidates(), vec!["roundrobin".to_string()]);
        assert_eq!(group.select_protocol().as_deref(), Some("roundrobin"));
        let sticky = [("cooperative-sticky".to_string(), Bytes::new())];
        assert!(!group.supports("consumer", &sticky, None));
        assert!(!group.supports("connect", &[("roundrobin".into(), Bytes::new())], None));
        assert!(group.supports("consumer", &[("roundrobin".into(), Bytes::new())], None));
    }
}
