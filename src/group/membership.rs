//! Group membership: JoinGroup, SyncGroup, Heartbeat and LeaveGroup, and the timers that end a
//! rebalance and expire members whose sessions lapse. Requests that must wait (a JoinGroup
//! until the rebalance completes, a SyncGroup until the leader's assignment arrives) park a
//! reply channel in the member and are answered when the group moves on.

use super::state::{Group, GroupState, Member, PendingJoin};
use super::store::Entry;
use super::{ClientInfo, Coordinator, GROUP_ID_BYTES_MAX, spawn_timer};
use crate::io;
use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What a JoinGroup does next.
enum JoinStep {
    Respond(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
    /// Store the group, then answer (a static member rejoining a stable group).
    StoreThenRespond(Vec<Entry>, JoinGroupResponse),
}

/// What a SyncGroup does next.
enum SyncStep {
    Respond(SyncGroupResponse),
    Wait(oneshot::Receiver<SyncGroupResponse>),
    /// The leader's assignment arrived: store the group, then answer every member.
    Store(Vec<Entry>, i32, oneshot::Receiver<SyncGroupResponse>),
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn join_error(version: i16, error: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error.code())
        .with_generation_id(-1)
        .with_protocol_name((version < 7).then(StrBytes::default))
        .with_member_id(text(member_id))
}

fn sync_error(error: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error.code())
}

/// The JoinGroup answer for `member_id` in the group's current generation: the leader gets
/// every member's metadata to compute the assignment from.
fn join_response(group: &Group, member_id: &str, version: i16) -> JoinGroupResponse {
    let protocol = group.protocol.clone().unwrap_or_default();
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        let member = |m: &Member| {
            JoinGroupResponseMember::default()
                .with_member_id(text(&m.id))
                .with_group_instance_id(m.instance_id.as_deref().filter(|_| version >= 5).map(text))
                .with_metadata(m.metadata(&protocol))
        };
        group.members.values().map(member).collect()
    } else {
        Vec::new()
    };
    JoinGroupResponse::default()
        .with_generation_id(group.generation)
        .with_protocol_type(group.protocol_type.as_deref().filter(|_| version >= 7).map(text))
        .with_protocol_name(Some(text(&protocol)))
        .with_leader(text(&leader))
        .with_member_id(text(member_id))
        .with_members(members)
}

/// A member's SyncGroup answer: its assignment, with the group's protocol (which only v5+
/// encodes).
fn sync_response(group: &Group, assignment: Bytes) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_protocol_type(group.protocol_type.as_deref().map(text))
        .with_protocol_name(group.protocol.as_deref().map(text))
        .with_assignment(assignment)
}

fn protocols_of(request: &JoinGroupRequest) -> Vec<(String, Bytes)> {
    request.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect()
}

impl Coordinator {
    pub async fn join(
        self: &Rc<Self>,
        request: JoinGroupRequest,
        version: i16,
        client: &ClientInfo,
    ) -> JoinGroupResponse {
        let group_id = request.group_id.0.to_string();
        match self.join_step(&request, version, client) {
            JoinStep::Respond(response) => response,
            JoinStep::Wait(answer) => answer.await.unwrap_or_else(|_| {
                // Removed while waiting (it left, or the group was deleted).
                join_error(version, ResponseError::UnknownMemberId, "")
            }),
            JoinStep::StoreThenRespond(entries, response) => match self.write(&group_id, &entries).await {
                Ok(()) => response,
                Err(error) => {
                    tracing::warn!(group = group_id, %error, "storing a static member's rejoin failed");
                    join_error(version, ResponseError::CoordinatorNotAvailable, &response.member_id)
                }
            },
        }
    }

    fn join_step(self: &Rc<Self>, request: &JoinGroupRequest, version: i16, client: &ClientInfo) -> JoinStep {
        let error = |error| JoinStep::Respond(join_error(version, error, &request.member_id));
        let group_id = request.group_id.as_str();
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return error(ResponseError::InvalidGroupId);
        }
        let session = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
        if request.session_timeout_ms < 0
            || session < self.config.session_timeout_min
            || session > self.config.session_timeout_max
        {
            return error(ResponseError::InvalidSessionTimeout);
        }
        let rebalance_ms =
            if version == 0 { request.session_timeout_ms } else { request.rebalance_timeout_ms };
        let fresh = Member {
            id: request.member_id.to_string(),
            instance_id: request.group_instance_id.as_ref().map(|id| id.to_string()),
            client_id: client.client_id.clone(),
            client_host: client.client_host.clone(),
            session_timeout: session,
            rebalance_timeout: Duration::from_millis(rebalance_ms.max(0) as u64),
            protocols: protocols_of(request),
            assignment: Bytes::new(),
            join: None,
            sync: None,
            deadline: Instant::now() + session,
        };
        let protocol_type = request.protocol_type.as_str();
        let group =
            if fresh.id.is_empty() { Some(self.group_or_new(group_id)) } else { self.group(group_id) };
        let Some(group) = group else { return error(ResponseError::UnknownMemberId) };
        let mut group = group.borrow_mut();
        if group.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if group.consumer.as_ref().is_some_and(|consumer| !consumer.members.is_empty()) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        if fresh.id.is_empty() {
            self.join_new_member(&mut group, fresh, protocol_type, version)
        } else {
            self.join_known_member(&mut group, fresh, protocol_type, version)
        }
    }

    fn join_new_member(
        self: &Rc<Self>,
        group: &mut Group,
        mut fresh: Member,
        protocol_type: &str,
        version: i16,
    ) -> JoinStep {
        let error = |error| JoinStep::Respond(join_error(version, error, ""));
        let known_instance = fresh.instance_id.as_ref().and_then(|i| group.instances.get(i)).cloned();
        if !group.supports(protocol_type, &fresh.protocols, known_instance.as_deref()) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let prefix = fresh.instance_id.clone().unwrap_or_else(|| fresh.client_id.clone());
        fresh.id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        if let Some(old_id) = known_instance {
            return self.replace_static_member(group, old_id, fresh, version);
        }
        if group.members.len() + group.pending.len() >= self.config.size_max {
            return error(ResponseError::GroupMaxSizeReached);
        }
        if fresh.instance_id.is_none() && version >= 4 {
            // KIP-394: the member learns its id first and joins with it.
            group.pending.insert(fresh.id.clone());
            self.watch_pending(&group.id, &fresh.id, fresh.session_timeout);
            return JoinStep::Respond(join_error(version, ResponseError::MemberIdRequired, &fresh.id));
        }
        group.protocol_type.get_or_insert_with(|| protocol_type.to_string());
        self.add_member_and_wait(group, fresh, version)
    }

    fn join_known_member(
        self: &Rc<Self>,
        group: &mut Group,
        fresh: Member,
        protocol_type: &str,
        version: i16,
    ) -> JoinStep {
        let error = |error| JoinStep::Respond(join_error(version, error, &fresh.id));
        if let Some(instance) = &fresh.instance_id
            && group.instances.get(instance).is_some_and(|id| *id != fresh.id)
        {
            return error(ResponseError::FencedInstanceId);
        }
        if group.pending.remove(&fresh.id) {
            if !group.supports(protocol_type, &fresh.protocols, None) {
                return error(ResponseError::InconsistentGroupProtocol);
            }
            group.protocol_type.get_or_insert_with(|| protocol_type.to_string());
            return self.add_member_and_wait(group, fresh, version);
        }
        if !group.members.contains_key(&fresh.id) {
            return error(ResponseError::UnknownMemberId);
        }
        if !group.supports(protocol_type, &fresh.protocols, Some(&fresh.id)) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let is_leader = group.leader.as_deref() == Some(fresh.id.as_str());
        let Some(member) = group.members.get_mut(&fresh.id) else {
            return error(ResponseError::UnknownMemberId);
        };
        let changed = member.protocols != fresh.protocols;
        member.protocols = fresh.protocols;
        member.session_timeout = fresh.session_timeout;
        member.rebalance_timeout = fresh.rebalance_timeout;
        member.touch();
        let unchanged_follower = !changed && !is_leader;
        match group.state {
            GroupState::CompletingRebalance if !changed => {
                JoinStep::Respond(join_response(group, &fresh.id, version))
            }
            GroupState::Stable if unchanged_follower => {
                JoinStep::Respond(join_response(group, &fresh.id, version))
            }
            _ => self.park_join(group, &fresh.id, version),
        }
    }

    fn add_member_and_wait(self: &Rc<Self>, group: &mut Group, member: Member, version: i16) -> JoinStep {
        let id = member.id.clone();
        if let Some(instance) = &member.instance_id {
            group.instances.insert(instance.clone(), id.clone());
        }
        group.members.insert(id.clone(), member);
        self.watch_member(group, &id);
        self.park_join(group, &id, version)
    }

    /// Parks the member's JoinGroup and starts a rebalance if none is under way.
    fn park_join(self: &Rc<Self>, group: &mut Group, member_id: &str, version: i16) -> JoinStep {
        let (reply, answer) = oneshot::channel();
        if let Some(member) = group.members.get_mut(member_id)
            && let Some(old) = member.join.replace(PendingJoin { version, reply })
        {
            let _gone = old.reply.send(join_error(old.version, ResponseError::UnknownMemberId, member_id));
        }
        if group.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(group);
        }
        self.maybe_complete_join(group);
        JoinStep::Wait(answer)
    }

    /// A static member came back with a new member id: it takes the old one's place (and
    /// assignment); the old id is fenced. A stable group whose protocol does not change keeps
    /// its generation: no rebalance.
    fn replace_static_member(
        self: &Rc<Self>,
        group: &mut Group,
        old_id: String,
        mut fresh: Member,
        version: i16,
    ) -> JoinStep {
        if let Some(mut old) = group.members.remove(&old_id) {
            if let Some(join) = old.join.take() {
                let _gone =
                    join.reply.send(join_error(join.version, ResponseError::FencedInstanceId, &old_id));
            }
            if let Some(sync) = old.sync.take() {
                let _gone = sync.send(sync_error(ResponseError::FencedInstanceId));
            }
            fresh.assignment = old.assignment;
        }
        let id = fresh.id.clone();
        if let Some(instance) = &fresh.instance_id {
            group.instances.insert(instance.clone(), id.clone());
        }
        if group.leader.as_deref() == Some(old_id.as_str()) {
            group.leader = Some(id.clone());
        }
        group.members.insert(id.clone(), fresh);
        self.watch_member(group, &id);
        if group.state == GroupState::Stable && group.select_protocol() == group.protocol {
            let mut response = join_response(group, &id, version);
            response.skip_assignment = version >= 9 && group.leader.as_deref() == Some(id.as_str());
            let entries = vec![Entry::Group { group: group.id.clone(), value: Some(group.to_value()) }];
            return JoinStep::StoreThenRespond(entries, response);
        }
        self.park_join(group, &id, version)
    }

    /// Starts a rebalance: every member must join again within the rebalance timeout.
    fn prepare_rebalance(self: &Rc<Self>, group: &mut Group) {
        if group.state == GroupState::CompletingRebalance {
            for member in group.members.values_mut() {
                if let Some(sync) = member.sync.take() {
                    let _gone = sync.send(sync_error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let initial = group.state == GroupState::Empty && !self.config.initial_rebalance_delay.is_zero();
        group.set_state(GroupState::PreparingRebalance);
        group.round += 1;
        group.initial_delay = initial;
        let timeout = group.rebalance_timeout();
        let delay = if initial { self.config.initial_rebalance_delay.min(timeout) } else { Duration::ZERO };
        let timer = self.clone().end_rebalance_in_time(group.id.clone(), group.round, delay, timeout);
        spawn_timer(timer);
    }

    /// The rebalance timer: after the initial delay (a new group), the join completes if every
    /// member is in; after the rebalance timeout it completes with those that are. (Timer tasks
    /// may first run while their spawner still holds the group: they touch it only after a
    /// sleep.)
    async fn end_rebalance_in_time(
        self: Rc<Self>,
        group_id: String,
        round: u64,
        delay: Duration,
        timeout: Duration,
    ) {
        let current = |coordinator: &Coordinator| {
            coordinator.group(&group_id).filter(|g| {
                let g = g.borrow();
                g.round == round && g.state == GroupState::PreparingRebalance
            })
        };
        if !delay.is_zero() {
            io::sleep(delay).await;
            let Some(group) = current(&self) else { return };
            let mut group = group.borrow_mut();
            group.initial_delay = false;
            self.maybe_complete_join(&mut group);
        }
        io::sleep(timeout.saturating_sub(delay)).await;
        if let Some(group) = current(&self) {
            self.complete_join(&mut group.borrow_mut());
        }
    }

    fn maybe_complete_join(self: &Rc<Self>, group: &mut Group) {
        if group.state == GroupState::PreparingRebalance && !group.initial_delay && group.all_joined() {
            self.complete_join(group);
        }
    }

    /// Ends the join phase: members that did not join are dropped, the generation advances,
    /// the protocol is chosen and every waiting JoinGroup is answered.
    fn complete_join(self: &Rc<Self>, group: &mut Group) {
        let absent: Vec<String> =
            group.members.values().filter(|m| m.join.is_none()).map(|m| m.id.clone()).collect();
        for id in absent {
            tracing::info!(group = group.id, member = id, "member did not rejoin in time");
            group.remove_member(&id);
        }
        group.pending.clear();
        group.generation += 1;
        if group.members.is_empty() {
            group.protocol = None;
            group.leader = None;
            group.set_state(GroupState::Empty);
            self.store_in_background(group);
            return;
        }
        group.protocol = group.select_protocol();
        if group.leader.as_ref().is_none_or(|leader| !group.members.contains_key(leader)) {
            group.leader = group.members.keys().next().cloned();
        }
        group.set_state(GroupState::CompletingRebalance);
        let joins: Vec<(String, PendingJoin)> = group
            .members
            .values_mut()
            .filter_map(|m| m.join.take().map(|join| (m.id.clone(), join)))
            .collect();
        for (id, join) in joins {
            let _gone = join.reply.send(join_response(group, &id, join.version));
        }
        tracing::info!(
            group = group.id,
            generation = group.generation,
            members = group.members.len(),
            "rebalanced"
        );
        let timeout = group.rebalance_timeout();
        spawn_timer(self.clone().await_assignment(group.id.clone(), group.generation, timeout));
    }

    /// If the leader's assignment has not arrived within the rebalance timeout, the members
    /// that never sent SyncGroup are dropped and the group rebalances again.
    async fn await_assignment(self: Rc<Self>, group_id: String, generation: i32, timeout: Duration) {
        io::sleep(timeout).await;
        let Some(group) = self.group(&group_id) else { return };
        let mut group = group.borrow_mut();
        if group.state != GroupState::CompletingRebalance || group.generation != generation {
            return;
        }
        let silent: Vec<String> =
            group.members.values().filter(|m| m.sync.is_none()).map(|m| m.id.clone()).collect();
        for id in silent {
            group.remove_member(&id);
        }
        self.prepare_rebalance(&mut group);
    }

    /// Writes the group's metadata without anyone waiting for it (state changes no client
    /// request depends on).
    fn store_in_background(self: &Rc<Self>, group: &Group) {
        let entries = vec![Entry::Group { group: group.id.clone(), value: Some(group.to_value()) }];
        let (coordinator, id) = (self.clone(), group.id.clone());
        spawn_timer(async move {
            if let Err(error) = coordinator.write(&id, &entries).await {
                tracing::warn!(group = id, %error, "storing group metadata failed");
            }
        });
    }

    /// After members left: a stable group rebalances; a rebalancing one may now be complete.
    fn members_left(self: &Rc<Self>, group: &mut Group) {
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(group),
            GroupState::PreparingRebalance => self.maybe_complete_join(group),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Expires the member if its session lapses (no heartbeat in time); waiting in a JoinGroup
    /// or SyncGroup keeps it alive, as the rebalance timers bound those waits.
    fn watch_member(self: &Rc<Self>, group: &Group, member_id: &str) {
        let Some(mut deadline) = group.members.get(member_id).map(|m| m.deadline) else { return };
        let (coordinator, group_id, member_id) = (self.clone(), group.id.clone(), member_id.to_string());
        spawn_timer(async move {
            loop {
                io::sleep(deadline.saturating_duration_since(Instant::now())).await;
                let Some(group) = coordinator.group(&group_id) else { return };
                deadline = {
                    let mut group = group.borrow_mut();
                    let Some(member) = group.members.get_mut(&member_id) else { return };
                    if member.join.is_some() || member.sync.is_some() {
                        member.touch();
                    }
                    member.deadline
                };
                if deadline > Instant::now() {
                    continue;
                }
                let mut group = group.borrow_mut();
                tracing::info!(group = group_id, member = member_id, "session expired");
                group.remove_member(&member_id);
                coordinator.members_left(&mut group);
                return;
            }
        });
    }

    /// Forgets a member id handed out with MEMBER_ID_REQUIRED that never joined.
    fn watch_pending(self: &Rc<Self>, group_id: &str, member_id: &str, session: Duration) {
        let (coordinator, group_id, member_id) = (self.clone(), group_id.to_string(), member_id.to_string());
        spawn_timer(async move {
            io::sleep(session).await;
            let Some(group) = coordinator.group(&group_id) else { return };
            let mut group = group.borrow_mut();
            if group.pending.remove(&member_id) {
                coordinator.maybe_complete_join(&mut group);
            }
        });
    }

    /// Starts session watches for the members of a group restored from the offsets topic.
    pub(super) fn watch_members(self: &Rc<Self>, group_id: &str) {
        let Some(group) = self.group(group_id) else { return };
        let group = group.borrow();
        for member_id in group.members.keys() {
            self.watch_member(&group, member_id);
        }
    }

    pub async fn sync(self: &Rc<Self>, request: SyncGroupRequest) -> SyncGroupResponse {
        let group_id = request.group_id.0.to_string();
        let Some(group) = self.group(&group_id) else { return sync_error(ResponseError::UnknownMemberId) };
        let step = self.sync_step(&group, &request);
        let answer = match step {
            SyncStep::Respond(response) => return response,
            SyncStep::Wait(answer) => answer,
            SyncStep::Store(entries, generation, answer) => {
                let stored = self.write(&group_id, &entries).await;
                self.assignment_stored(&group, generation, stored.map_err(|e| e.to_string()));
                answer
            }
        };
        answer.await.unwrap_or_else(|_| sync_error(ResponseError::UnknownMemberId))
    }

    fn sync_step(self: &Rc<Self>, group: &RefCell<Group>, request: &SyncGroupRequest) -> SyncStep {
        let mut group = group.borrow_mut();
        let error = |error| SyncStep::Respond(sync_error(error));
        let member_id = request.member_id.as_str();
        if let Err(fault) =
            check_member(&group, member_id, request.group_instance_id.as_deref(), request.generation_id)
        {
            return error(fault);
        }
        let type_differs =
            request.protocol_type.as_ref().is_some_and(|t| group.protocol_type.as_deref() != Some(t));
        let name_differs =
            request.protocol_name.as_ref().is_some_and(|n| group.protocol.as_deref() != Some(n));
        if type_differs || name_differs {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let assignment =
                    group.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default();
                SyncStep::Respond(sync_response(&group, assignment))
            }
            GroupState::CompletingRebalance => {
                let (reply, answer) = oneshot::channel();
                if let Some(member) = group.members.get_mut(member_id) {
                    member.sync = Some(reply);
                    member.touch();
                }
                if group.leader.as_deref() != Some(member_id) {
                    return SyncStep::Wait(answer);
                }
                for member in group.members.values_mut() {
                    member.assignment = Bytes::new();
                }
                for assignment in &request.assignments {
                    if let Some(member) = group.members.get_mut(assignment.member_id.as_str()) {
                        member.assignment = assignment.assignment.clone();
                    }
                }
                let entries = vec![Entry::Group { group: group.id.clone(), value: Some(group.to_value()) }];
                SyncStep::Store(entries, group.generation, answer)
            }
            GroupState::Empty | GroupState::Dead => error(ResponseError::UnknownMemberId),
        }
    }

    /// The leader's assignment is stored (or failed to be): the group becomes stable and every
    /// waiting member gets its share, or everyone rejoins.
    fn assignment_stored(
        self: &Rc<Self>,
        group: &RefCell<Group>,
        generation: i32,
        stored: Result<(), String>,
    ) {
        let mut group = group.borrow_mut();
        if group.state != GroupState::CompletingRebalance || group.generation != generation {
            return;
        }
        if let Err(error) = stored {
            tracing::warn!(group = group.id, %error, "storing the assignment failed; rebalancing");
            for member in group.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(sync) = member.sync.take() {
                    let _gone = sync.send(sync_error(ResponseError::CoordinatorNotAvailable));
                }
            }
            self.prepare_rebalance(&mut group);
            return;
        }
        group.set_state(GroupState::Stable);
        let waiting: Vec<_> = group
            .members
            .values_mut()
            .filter_map(|m| m.sync.take().map(|sync| (sync, m.assignment.clone())))
            .collect();
        for (sync, assignment) in waiting {
            let _gone = sync.send(sync_response(&group, assignment));
        }
    }

    pub fn heartbeat(&self, request: HeartbeatRequest) -> HeartbeatResponse {
        let error = |error: ResponseError| HeartbeatResponse::default().with_error_code(error.code());
        let Some(group) = self.group(request.group_id.as_str()) else {
            return error(ResponseError::UnknownMemberId);
        };
        let mut group = group.borrow_mut();
        let member_id = request.member_id.as_str();
        if let Err(fault) =
            check_member(&group, member_id, request.group_instance_id.as_deref(), request.generation_id)
        {
            return error(fault);
        }
        if let Some(member) = group.members.get_mut(member_id) {
            member.touch();
        }
        match group.state {
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => HeartbeatResponse::default(),
            GroupState::Empty | GroupState::Dead => error(ResponseError::UnknownMemberId),
        }
    }

    pub fn leave(self: &Rc<Self>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            request
                .members
                .iter()
                .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
                .collect()
        } else {
            vec![(request.member_id.to_string(), None)]
        };
        let Some(group) = self.group(request.group_id.as_str()) else {
            return LeaveGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code());
        };
        let mut group = group.borrow_mut();
        let mut responses = Vec::with_capacity(leaving.len());
        let mut removed = false;
        for (member_id, instance) in leaving {
            let outcome = leave_one(&mut group, &member_id, instance.as_deref());
            removed |= outcome.is_ok();
            let code = outcome.err().map_or(0, |e| e.code());
            responses.push(
                MemberResponse::default()
                    .with_member_id(text(&member_id))
                    .with_group_instance_id(instance.as_deref().map(text))
                    .with_error_code(code),
            );
        }
        if removed {
            self.members_left(&mut group);
        }
        if version >= 3 {
            return LeaveGroupResponse::default().with_members(responses);
        }
        LeaveGroupResponse::default().with_error_code(responses.first().map_or(0, |r| r.error_code))
    }
}

fn leave_one(group: &mut Group, member_id: &str, instance: Option<&str>) -> Result<(), ResponseError> {
    let id = match instance {
        Some(instance) => {
            let id = group.instances.get(instance).cloned().ok_or(ResponseError::UnknownMemberId)?;
            if !member_id.is_empty() && member_id != id {
                return Err(ResponseError::FencedInstanceId);
            }
            id
        }
        None if group.pending.remove(member_id) => return Ok(()),
        None => member_id.to_string(),
    };
    let member = group.remove_member(&id).ok_or(ResponseError::UnknownMemberId)?;
    tracing::info!(group = group.id, member = member.id, "member left");
    Ok(())
}

/// Whether `member_id` (with its static instance id, if any) may act in `generation`.
fn check_member(
    group: &Group,
    member_id: &str,
    instance: Option<&str>,
    generation: i32,
) -> Result<(), ResponseError> {
    if group.state == GroupState::Dead {
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    if let Some(instance) = instance
        && group.instances.get(instance).is_some_and(|id| id != member_id)
    {
        return Err(ResponseError::FencedInstanceId);
    }
    if !group.members.contains_key(member_id) {
        return Err(ResponseError::UnknownMemberId);
    }
    if generation != group.generation {
        return Err(ResponseError::IllegalGeneration);
    }
    Ok(())
}
