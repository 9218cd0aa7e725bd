//! Group administration: DescribeGroups, ListGroups, DeleteGroups, for the groups this core
//! owns (the request handler asks every owning core and merges the answers).

use super::Coordinator;
use super::state::GroupState;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::GroupId;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::protocol::StrBytes;

/// What DescribeGroups reports for authorized operations when they were not asked for.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

impl Coordinator {
    /// DescribeGroups for one group. A group that does not exist is reported as Dead (and, from
    /// version 6, with GROUP_ID_NOT_FOUND).
    pub fn describe(&self, group_id: &str, version: i16) -> DescribedGroup {
        let described = DescribedGroup::default()
            .with_group_id(GroupId(text(group_id)))
            .with_authorized_operations(OPERATIONS_NOT_REQUESTED);
        let group = self.group(group_id).filter(|group| group.borrow().consumer.is_none());
        let Some(group) = group else {
            let described = described.with_group_state(text(GroupState::Dead.name()));
            if version >= 6 {
                return described.with_error_code(ResponseError::GroupIdNotFound.code());
            }
            return described;
        };
        let group = group.borrow();
        let protocol = group.protocol.clone().unwrap_or_default();
        // Kafka shows member metadata and assignments only once the group is stable.
        let stable = group.state == GroupState::Stable;
        let members = group
            .members
            .values()
            .map(|member| {
                let (metadata, assignment) = if stable {
                    (member.metadata(&protocol), member.assignment.clone())
                } else {
                    Default::default()
                };
                DescribedGroupMember::default()
                    .with_member_id(text(&member.id))
                    .with_group_instance_id(member.instance_id.as_deref().filter(|_| version >= 4).map(text))
                    .with_client_id(text(&member.client_id))
                    .with_client_host(text(&member.client_host))
                    .with_member_metadata(metadata)
                    .with_member_assignment(assignment)
            })
            .collect();
        described
            .with_group_state(text(group.state.name()))
            .with_protocol_type(text(group.protocol_type.as_deref().unwrap_or_default()))
            .with_protocol_data(text(if stable { &protocol } else { "" }))
            .with_members(members)
    }

    /// ListGroups: the groups here whose state is in `states` (all if empty) and whose type
    /// ("classic" or "consumer") is in `types` (all if empty).
    pub fn list(&self, states: &[String], types: &[String]) -> Vec<ListedGroup> {
        let state_wanted =
            |state: &str| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(state));
        let mut listed: Vec<ListedGroup> = self
            .groups
            .borrow()
            .values()
            .filter_map(|group| {
                let group = group.borrow();
                let (kind, state, protocol_type) = match &group.consumer {
                    Some(consumer) => ("consumer", consumer.state(), "consumer"),
                    None => {
                        ("classic", group.state.name(), group.protocol_type.as_deref().unwrap_or_default())
                    }
                };
                let type_wanted = types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case(kind));
                (type_wanted && state_wanted(state)).then(|| {
                    ListedGroup::default()
                        .with_group_id(GroupId(text(&group.id)))
                        .with_protocol_type(text(protocol_type))
                        .with_group_state(text(state))
                        .with_group_type(text(kind))
                })
            })
            .collect();
        listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listed
    }

    /// DeleteGroups for one group: only a group without members can be deleted.
    pub async fn delete(&self, group_id: &str) -> Result<(), ResponseError> {
        let group = self.group(group_id).ok_or(ResponseError::GroupIdNotFound)?;
        let (state, empty) = {
            let group = group.borrow();
            (group.state, group.is_empty())
        };
        if state == GroupState::Dead {
            return Err(ResponseError::GroupIdNotFound);
        }
        if !empty {
            return Err(ResponseError::NonEmptyGroup);
        }
        self.delete_group(group_id).await.map_err(|error| {
            tracing::warn!(group = group_id, %error, "deleting a group failed");
            ResponseError::CoordinatorNotAvailable
        })
    }
}
