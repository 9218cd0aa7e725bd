//! KIP-848 consumer groups (`group.protocol=consumer`): members only heartbeat
//! (ConsumerGroupHeartbeat); the coordinator computes the target assignment itself (assignor
//! `uniform` or `range`) and walks every member towards it. A member first gives up the
//! partitions it must lose (keeping its epoch), then moves to the new epoch and receives the
//! partitions that are free: a partition is never handed to a member while another one may
//! still own it.
//!
//! Membership is kept in memory only: after a coordinator restart members are told
//! UNKNOWN_MEMBER_ID and join again, resuming from their committed offsets.

use super::assignor::{self, AssignmentSpec, TopicPartition};
use super::state::{Group, GroupState};
use super::{ClientInfo, Coordinator, GROUP_ID_BYTES_MAX, spawn_timer};
use crate::io;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response as describe;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Member epochs with a meaning of their own in a heartbeat.
const JOIN: i32 = 0;
const LEAVE: i32 = -1;
const LEAVE_STATIC_FOR_NOW: i32 = -2;

/// The topics of the cluster as an assignor needs them: name → (id, partitions).
pub type TopicMap = BTreeMap<String, (uuid::Uuid, i32)>;

#[derive(Default)]
pub struct ConsumerGroup {
    /// Bumped whenever membership, subscriptions or the subscribed topics change.
    pub epoch: i32,
    /// The group epoch the target assignment was computed for.
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    pub targets: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// The subscribed topics (id, partitions) the target was computed from.
    pub topics: BTreeMap<String, (uuid::Uuid, i32)>,
    pub assignor: String,
}

pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client: ClientInfo,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub rebalance_timeout: Duration,
    pub topic_names: BTreeSet<String>,
    pub regex: Option<String>,
    /// `regex`, compiled once, anchored to whole topic names.
    pattern: Option<regex::Regex>,
    pub assignor: Option<String>,
    /// What the member last said it owns.
    pub owned: BTreeSet<TopicPartition>,
    /// What the member should own now (its share of the target, less what others still hold).
    pub assigned: BTreeSet<TopicPartition>,
    /// The assignment the member was last sent.
    pub sent: Option<BTreeSet<TopicPartition>>,
    /// Since when the member has been asked to give partitions up.
    pub revoking_since: Option<Instant>,
    pub deadline: Instant,
    /// A static member that left for now (epoch -2): its partitions wait for it.
    pub away: bool,
}

impl ConsumerGroup {
    /// The KIP-848 state names.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.revoking_since.is_some())
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The topics a member's subscription names (and its regex matches).
    fn subscribed(member: &ConsumerMember, topics: &TopicMap) -> BTreeSet<String> {
        let mut names: BTreeSet<String> =
            member.topic_names.iter().filter(|name| topics.contains_key(*name)).cloned().collect();
        if let Some(pattern) = &member.pattern {
            names.extend(topics.keys().filter(|name| pattern.is_match(name)).cloned());
        }
        names
    }

    /// Bumps the group epoch if the subscribed topics changed (created, deleted, grown).
    fn refresh_topics(&mut self, topics: &TopicMap) {
        let mut wanted = BTreeMap::new();
        for member in self.members.values() {
            for name in Self::subscribed(member, topics) {
                if let Some(&topic) = topics.get(&name) {
                    wanted.insert(name, topic);
                }
            }
        }
        if wanted != self.topics {
            self.topics = wanted;
            self.epoch += 1;
        }
    }

    fn compute_target(&mut self, topics: &TopicMap) {
        let subscriptions: BTreeMap<String, BTreeSet<uuid::Uuid>> = self
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    Self::subscribed(m, topics).iter().filter_map(|n| topics.get(n)).map(|t| t.0).collect(),
                )
            })
            .collect();
        let partitions: BTreeMap<uuid::Uuid, i32> = self.topics.values().copied().collect();
        let assignor =
            self.members.values().find_map(|m| m.assignor.clone()).unwrap_or(assignor::UNIFORM.to_string());
        let spec = AssignmentSpec {
            subscriptions: &subscriptions,
            partitions: &partitions,
            previous: &self.targets,
        };
        self.targets = assignor::assign(&assignor, &spec);
        self.assignor = assignor;
        self.assignment_epoch = self.epoch;
    }

    /// Moves `member_id` towards its target: first revoke, then advance the epoch and take
    /// the target partitions nobody else may still own.
    fn reconcile(&mut self, member_id: &str) {
        let target = self.targets.get(member_id).cloned().unwrap_or_default();
        let held_by_others: BTreeSet<TopicPartition> = self
            .members
            .values()
            .filter(|m| m.id != member_id)
            .flat_map(|m| m.owned.iter().chain(m.assigned.iter()))
            .copied()
            .collect();
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get_mut(member_id) else { return };
        let revoke: BTreeSet<TopicPartition> = member.owned.difference(&target).copied().collect();
        if !revoke.is_empty() {
            member.assigned = member.owned.intersection(&target).copied().collect();
            member.revoking_since.get_or_insert_with(Instant::now);
            return;
        }
        member.revoking_since = None;
        member.assigned = target.difference(&held_by_others).copied().collect();
        if member.epoch != assignment_epoch {
            member.previous_epoch = member.epoch;
            member.epoch = assignment_epoch;
        }
    }
}

/// Checks what a heartbeat asks for before anything changes: a known server assignor and a
/// valid regex, which comes back compiled and anchored to whole topic names.
fn subscription_pattern(
    request: &ConsumerGroupHeartbeatRequest,
) -> Result<Option<regex::Regex>, (ResponseError, String)> {
    if let Some(assignor) = request.server_assignor.as_deref()
        && !assignor::known(assignor)
    {
        return Err((ResponseError::UnsupportedAssignor, format!("no server assignor `{assignor}`")));
    }
    let pattern = match request.subscribed_topic_regex.as_deref().filter(|r| !r.is_empty()) {
        Some(regex) => match regex::Regex::new(&format!("^(?:{regex})$")) {
            Ok(pattern) => Some(pattern),
            Err(_) => {
                let message = format!("`{regex}` is not a valid regex");
                return Err((ResponseError::InvalidRegularExpression, message));
            }
        },
        None => None,
    };
    Ok(pattern)
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn heartbeat_error(error: ResponseError, message: &str) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(error.code())
        .with_error_message(Some(text(message)))
}

fn assignment(partitions: &BTreeSet<TopicPartition>) -> Assignment {
    let mut by_topic: BTreeMap<uuid::Uuid, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(*topic).or_default().push(*partition);
    }
    let topics = by_topic.into_iter().map(|(topic, partitions)| {
        TopicPartitions::default().with_topic_id(topic).with_partitions(partitions)
    });
    Assignment::default().with_topic_partitions(topics.collect())
}

impl Coordinator {
    /// ConsumerGroupHeartbeat: join, stay, change subscription, acknowledge an assignment, or
    /// leave. `topics` is this core's view of the cluster's topics.
    pub fn consumer_heartbeat(
        self: &Rc<Self>,
        request: ConsumerGroupHeartbeatRequest,
        topics: &TopicMap,
        client: &ClientInfo,
    ) -> ConsumerGroupHeartbeatResponse {
        let group_id = request.group_id.as_str();
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return heartbeat_error(ResponseError::InvalidRequest, "the group id must not be empty");
        }
        let group = if request.member_epoch == JOIN {
            Some(self.group_or_new(group_id))
        } else {
            self.group(group_id)
        };
        let Some(group) = group else {
            return heartbeat_error(ResponseError::UnknownMemberId, "no such group");
        };
        let mut group = group.borrow_mut();
        if !group.members.is_empty() || group.state != GroupState::Empty {
            return heartbeat_error(ResponseError::GroupIdNotFound, "the group uses the classic protocol");
        }
        match self.consumer_heartbeat_in(&mut group, &request, topics, client) {
            Ok(response) => response,
            Err((error, message)) => heartbeat_error(error, &message),
        }
    }

    fn consumer_heartbeat_in(
        self: &Rc<Self>,
        group: &mut Group,
        request: &ConsumerGroupHeartbeatRequest,
        topics: &TopicMap,
        client: &ClientInfo,
    ) -> Result<ConsumerGroupHeartbeatResponse, (ResponseError, String)> {
        let pattern = subscription_pattern(request)?;
        let group_id = group.id.clone();
        let consumer = group.consumer.get_or_insert_with(ConsumerGroup::default);
        let member_id = match request.member_epoch {
            LEAVE | LEAVE_STATIC_FOR_NOW => return Ok(self.consumer_leave(consumer, request)),
            JOIN => self.consumer_join(consumer, &group_id, request, client)?,
            epoch => {
                let member = consumer.members.get(request.member_id.as_str()).ok_or_else(|| {
                    (
                        ResponseError::UnknownMemberId,
                        format!("member {} is not in the group", request.member_id),
                    )
                })?;
                let reported: Option<BTreeSet<TopicPartition>> =
                    request.topic_partitions.as_ref().map(|owned| {
                        owned
                            .iter()
                            .flat_map(|t| t.partitions.iter().map(move |&p| (t.topic_id, p)))
                            .collect()
                    });
                let behind_but_safe = epoch == member.previous_epoch
                    && reported.as_ref().is_none_or(|owned| owned.is_subset(&member.assigned));
                if epoch != member.epoch && !behind_but_safe {
                    let message = format!("epoch {epoch} is not the member's epoch {}", member.epoch);
                    return Err((ResponseError::FencedMemberEpoch, message));
                }
                member.id.clone()
            }
        };
        self.consumer_update(consumer, &member_id, request, pattern)?;
        consumer.refresh_topics(topics);
        if consumer.assignment_epoch < consumer.epoch {
            consumer.compute_target(topics);
        }
        consumer.reconcile(&member_id);
        let interval = self.config.consumer_heartbeat_interval.as_millis() as i32;
        let Some(member) = consumer.members.get_mut(&member_id) else {
            return Err((ResponseError::UnknownMemberId, "the member left".into()));
        };
        // Sent when it changed, and in answer to a full heartbeat (one naming the subscription
        // and the owned partitions, as after a reconnect).
        let full = request.subscribed_topic_names.is_some() && request.topic_partitions.is_some();
        let send = member.sent.as_ref() != Some(&member.assigned) || full;
        let response = ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(text(&member_id)))
            .with_member_epoch(member.epoch)
            .with_heartbeat_interval_ms(interval)
            .with_assignment(send.then(|| assignment(&member.assigned)));
        if send {
            member.sent = Some(member.assigned.clone());
        }
        Ok(response)
    }

    /// A member joins (epoch 0): new, rejoining after being fenced, or a static member coming
    /// back (it takes over its old self's epoch and partitions, so nobody rebalances).
    fn consumer_join(
        self: &Rc<Self>,
        consumer: &mut ConsumerGroup,
        group_id: &str,
        request: &ConsumerGroupHeartbeatRequest,
        client: &ClientInfo,
    ) -> Result<String, (ResponseError, String)> {
        if request.subscribed_topic_names.is_none() && request.subscribed_topic_regex.is_none() {
            return Err((
                ResponseError::InvalidRequest,
                "a joining member must name its subscription".into(),
            ));
        }
        let member_id = if request.member_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            request.member_id.to_string()
        };
        let instance_id = request.instance_id.as_ref().map(|id| id.to_string());
        let previous = instance_id
            .as_ref()
            .and_then(|instance| consumer.members.values().find(|m| m.instance_id.as_ref() == Some(instance)))
            .map(|m| (m.id.clone(), m.away));
        let session = self.config.consumer_session_timeout;
        let mut member = ConsumerMember {
            id: member_id.clone(),
            instance_id,
            rack_id: None,
            client: client.clone(),
            epoch: 0,
            previous_epoch: -1,
            rebalance_timeout: Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64),
            topic_names: BTreeSet::new(),
            regex: None,
            pattern: None,
            assignor: None,
            owned: BTreeSet::new(),
            assigned: BTreeSet::new(),
            sent: None,
            revoking_since: None,
            deadline: Instant::now() + session,
            away: false,
        };
        match previous {
            Some((old_id, away)) if old_id != member_id => {
                if !away {
                    let message = "the static member is still in the group".to_string();
                    return Err((ResponseError::UnreleasedInstanceId, message));
                }
                if let Some(old) = consumer.members.remove(&old_id) {
                    (member.epoch, member.previous_epoch) = (old.epoch, old.previous_epoch);
                    member.assigned = old.assigned;
                    member.owned = old.owned;
                }
                if let Some(target) = consumer.targets.remove(&old_id) {
                    consumer.targets.insert(member_id.clone(), target);
                }
            }
            _ => {
                let known = consumer.members.contains_key(&member_id);
                if !known && consumer.members.len() >= self.config.size_max {
                    return Err((ResponseError::GroupMaxSizeReached, "the group is full".into()));
                }
                consumer.epoch += 1;
            }
        }
        consumer.members.insert(member_id.clone(), member);
        self.watch_consumer_member(group_id, &member_id, session);
        Ok(member_id)
    }

    /// Applies what the heartbeat says about the member (fields left null keep their value).
    fn consumer_update(
        &self,
        consumer: &mut ConsumerGroup,
        member_id: &str,
        request: &ConsumerGroupHeartbeatRequest,
        pattern: Option<regex::Regex>,
    ) -> Result<(), (ResponseError, String)> {
        let session = self.config.consumer_session_timeout;
        let Some(member) = consumer.members.get_mut(member_id) else {
            return Err((ResponseError::UnknownMemberId, "the member left".into()));
        };
        member.deadline = Instant::now() + session;
        member.away = false;
        let mut changed = false;
        if let Some(names) = &request.subscribed_topic_names {
            let names: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
            changed |= names != member.topic_names;
            member.topic_names = names;
        }
        if let Some(regex) = &request.subscribed_topic_regex {
            let regex = Some(regex.to_string()).filter(|r| !r.is_empty());
            changed |= regex != member.regex;
            member.regex = regex;
            member.pattern = pattern;
        }
        if let Some(assignor) = &request.server_assignor {
            changed |= member.assignor.as_deref() != Some(assignor.as_str());
            member.assignor = Some(assignor.to_string());
        }
        if request.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout = Duration::from_millis(request.rebalance_timeout_ms as u64);
        }
        member.rack_id = request.rack_id.as_ref().map(|r| r.to_string()).or(member.rack_id.take());
        if let Some(owned) = &request.topic_partitions {
            member.owned =
                owned.iter().flat_map(|t| t.partitions.iter().map(move |&p| (t.topic_id, p))).collect();
        }
        if changed {
            consumer.epoch += 1;
        }
        Ok(())
    }

    fn consumer_leave(
        &self,
        consumer: &mut ConsumerGroup,
        request: &ConsumerGroupHeartbeatRequest,
    ) -> ConsumerGroupHeartbeatResponse {
        let member_id = request.member_id.to_string();
        let response = ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(text(&member_id)))
            .with_member_epoch(request.member_epoch);
        let is_static = consumer.members.get(&member_id).is_some_and(|m| m.instance_id.is_some());
        if request.member_epoch == LEAVE_STATIC_FOR_NOW && is_static {
            if let Some(member) = consumer.members.get_mut(&member_id) {
                member.away = true;
            }
            return response;
        }
        if consumer.members.remove(&member_id).is_some() {
            tracing::info!(member = member_id, "consumer-group member left");
            consumer.targets.remove(&member_id);
            consumer.epoch += 1;
        }
        response
    }

    /// Removes the member once its session lapses, or once it has held partitions it was asked
    /// to give up for longer than its rebalance timeout.
    fn watch_consumer_member(self: &Rc<Self>, group_id: &str, member_id: &str, session: Duration) {
        let (coordinator, group_id, member_id) = (self.clone(), group_id.to_string(), member_id.to_string());
        spawn_timer(async move {
            let mut wait = session;
            loop {
                io::sleep(wait).await;
                let Some(group) = coordinator.group(&group_id) else { return };
                let mut group = group.borrow_mut();
                let Some(consumer) = group.consumer.as_mut() else { return };
                let Some(member) = consumer.members.get(&member_id) else { return };
                let now = Instant::now();
                let revoke_deadline = member.revoking_since.map(|since| since + member.rebalance_timeout);
                let deadline = revoke_deadline.map_or(member.deadline, |d| d.min(member.deadline));
                if deadline > now {
                    wait = deadline - now;
                    continue;
                }
                tracing::info!(group = group_id, member = member_id, "consumer-group member expired");
                consumer.members.remove(&member_id);
                consumer.targets.remove(&member_id);
                consumer.epoch += 1;
                return;
            }
        });
    }
}

impl Coordinator {
    /// ConsumerGroupDescribe for one group; a classic group (or none) is GROUP_ID_NOT_FOUND.
    pub fn describe_consumer(&self, group_id: &str, topics: &TopicMap) -> describe::DescribedGroup {
        let described = describe::DescribedGroup::default()
            .with_group_id(kafka_protocol::messages::GroupId(text(group_id)))
            .with_authorized_operations(i32::MIN);
        let group = self.group(group_id);
        let group = group.as_ref().map(|group| group.borrow());
        let Some(consumer) = group.as_ref().and_then(|group| group.consumer.as_ref()) else {
            return described
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(text(&format!("{group_id} is not a consumer group"))));
        };
        let names: BTreeMap<uuid::Uuid, &str> =
            topics.iter().map(|(name, (id, _))| (*id, name.as_str())).collect();
        let listed = |partitions: &BTreeSet<TopicPartition>| {
            let mut by_topic: BTreeMap<uuid::Uuid, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in partitions {
                by_topic.entry(*topic).or_default().push(*partition);
            }
            let topics = by_topic.into_iter().map(|(id, partitions)| {
                describe::TopicPartitions::default()
                    .with_topic_id(id)
                    .with_topic_name(kafka_protocol::messages::TopicName(text(
                        names.get(&id).copied().unwrap_or(""),
                    )))
                    .with_partitions(partitions)
            });
            describe::Assignment::default().with_topic_partitions(topics.collect())
        };
        let members = consumer.members.values().map(|member| {
            let names = member.topic_names.iter().map(|n| kafka_protocol::messages::TopicName(text(n)));
            describe::Member::default()
                .with_member_id(text(&member.id))
                .with_instance_id(member.instance_id.as_deref().map(text))
                .with_rack_id(member.rack_id.as_deref().map(text))
                .with_member_epoch(member.epoch)
                .with_client_id(text(&member.client.client_id))
                .with_client_host(text(&member.client.client_host))
                .with_subscribed_topic_names(names.collect())
                .with_subscribed_topic_regex(member.regex.as_deref().map(text))
                .with_assignment(listed(&member.assigned))
                .with_target_assignment(listed(
                    &consumer.targets.get(&member.id).cloned().unwrap_or_default(),
                ))
                .with_member_type(1)
        });
        described
            .with_group_state(text(consumer.state()))
            .with_group_epoch(consumer.epoch)
            .with_assignment_epoch(consumer.assignment_epoch)
            .with_assignor_name(text(&consumer.assignor))
            .with_members(members.collect())
    }

    /// Whether `member_id` at `epoch` may commit or fetch offsets of a consumer group: at its
    /// current epoch, anything; one epoch behind (its heartbeat moved it forward while the
    /// commit was on its way), only the partitions it still holds (returned); otherwise
    /// STALE_MEMBER_EPOCH. `None` if it is not a member of a consumer group.
    pub(super) fn check_consumer_member(
        group: &Group,
        member_id: &str,
        epoch: i32,
    ) -> Option<Result<Option<BTreeSet<TopicPartition>>, ResponseError>> {
        let consumer = group.consumer.as_ref()?;
        let member = consumer.members.get(member_id)?;
        Some(if member.epoch == epoch {
            Ok(None)
        } else if member.previous_epoch == epoch {
            Ok(Some(member.assigned.intersection(&member.owned).copied().collect()))
        } else {
            Err(ResponseError::StaleMemberEpoch)
        })
    }
}
