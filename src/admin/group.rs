//! `ringmq group …`: consumer groups of any Kafka-compatible cluster. Listing asks every
//! broker; the rest goes to the group's coordinator (FindCoordinator). Offsets and lag come
//! from each partition's leader.

use super::table::Table;
use super::{check, metadata, name};
use crate::bench::wire;
use bytes::Buf;
use clap::Subcommand;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Every consumer group of the cluster, with its state.
    List,
    /// A group's members and assignments, and per partition its committed offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets on TOPIC (the group must have no members). A dry run
    /// that prints the new offsets unless --execute.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset", "to_datetime"])]
        to_earliest: bool,
        #[arg(long, conflicts_with_all = ["to_offset", "to_datetime"])]
        to_latest: bool,
        #[arg(long, value_name = "OFFSET", conflicts_with = "to_datetime")]
        to_offset: Option<i64>,
        /// Milliseconds since the epoch: the first record at or after it.
        #[arg(long, value_name = "EPOCH_MS")]
        to_datetime: Option<i64>,
        #[arg(long)]
        execute: bool,
    },
    /// Delete a group with no members, and its committed offsets.
    Delete { group: String },
}

const GROUP_KEY: i8 = 0;

pub fn run(command: GroupCommand, address: SocketAddr) -> Result<(Value, Table), String> {
    match command {
        GroupCommand::List => list(address),
        GroupCommand::Describe { group } => describe(address, &group),
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            execute,
        } => {
            let target = match (to_earliest, to_latest, to_offset, to_datetime) {
                (true, ..) => Target::Timestamp(-2),
                (_, true, ..) => Target::Timestamp(-1),
                (_, _, Some(offset), _) => Target::Offset(offset),
                (_, _, _, Some(ms)) => Target::Timestamp(ms),
                _ => return Err("give one of --to-earliest, --to-latest, --to-offset, --to-datetime".into()),
            };
            reset_offsets(address, &group, &topic, target, execute)
        }
        GroupCommand::Delete { group } => delete(address, &group),
    }
}

/// The address of every broker of the cluster.
fn brokers(address: SocketAddr) -> Result<BTreeMap<i32, SocketAddr>, String> {
    super::broker_addresses(&metadata(address, Some(&[]))?)
}

fn coordinator(address: SocketAddr, group: &str) -> Result<SocketAddr, String> {
    let request = FindCoordinatorRequest::default().with_key(name(group)).with_key_type(GROUP_KEY);
    let response: FindCoordinatorResponse = wire::call(address, ApiKey::FindCoordinator, 3, &request)?;
    check(response.error_code, response.error_message.as_ref(), &format!("find the coordinator of {group}"))?;
    wire::resolve(&format!("{}:{}", response.host.as_str(), response.port))
}

fn list(address: SocketAddr) -> Result<(Value, Table), String> {
    let mut groups: Vec<(String, String, String)> = Vec::new();
    for broker in brokers(address)?.values() {
        let response: ListGroupsResponse =
            wire::call(*broker, ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
        check(response.error_code, None, "list groups")?;
        for g in response.groups {
            groups.push((g.group_id.to_string(), g.group_state.to_string(), g.protocol_type.to_string()));
        }
    }
    groups.sort();
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
    let mut json = Vec::new();
    for (group, state, protocol_type) in groups {
        json.push(json!({"group": group, "state": state, "protocol_type": protocol_type}));
        table.row(vec![group, state, protocol_type]);
    }
    Ok((Value::Array(json), table))
}

/// The partitions a member was assigned (Kafka's consumer protocol), by topic.
fn assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut buf = bytes;
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16();
    let mut body = bytes::Bytes::copy_from_slice(buf);
    ConsumerProtocolAssignment::decode(&mut body, version)
        .map(|a| {
            a.assigned_partitions
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |&p| (t.topic.to_string(), p)))
                .collect()
        })
        .unwrap_or_default()
}

/// (earliest or latest or at-a-time) offsets of every partition of `topic`, each asked of its
/// leader.
fn list_offsets(address: SocketAddr, topic: &str, timestamp: i64) -> Result<BTreeMap<i32, i64>, String> {
    let layout = super::console::Layout::of(address, topic, false)?;
    let partitions: Vec<i32> = layout.leaders.keys().copied().collect();
    super::console::list_offsets(&layout, topic, &partitions, timestamp)
}

/// The group's committed offsets: (topic, partition) → offset.
fn committed(coordinator: SocketAddr, group: &str) -> Result<BTreeMap<(String, i32), i64>, String> {
    let request = OffsetFetchRequest::default().with_group_id(GroupId(name(group))).with_topics(None);
    let response: OffsetFetchResponse = wire::call(coordinator, ApiKey::OffsetFetch, 7, &request)?;
    check(response.error_code, None, &format!("committed offsets of {group}"))?;
    Ok(response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| ((t.name.to_string(), p.partition_index), p.committed_offset))
        })
        .filter(|(_, offset)| *offset >= 0)
        .collect())
}

fn describe(address: SocketAddr, group: &str) -> Result<(Value, Table), String> {
    let coordinator = coordinator(address, group)?;
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(name(group))]);
    let response: DescribeGroupsResponse = wire::call(coordinator, ApiKey::DescribeGroups, 5, &request)?;
    let described = response.groups.first().ok_or("the coordinator described no group")?;
    check(described.error_code, described.error_message.as_ref(), &format!("describe {group}"))?;
    let mut owners: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for member in &described.members {
        for partition in assignment(&member.member_assignment) {
            let who =
                (member.member_id.to_string(), member.client_host.to_string(), member.client_id.to_string());
            owners.insert(partition, who);
        }
    }
    let committed = committed(coordinator, group)?;
    let mut topics: Vec<&String> = committed.keys().chain(owners.keys()).map(|(t, _)| t).collect();
    topics.dedup();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in topics.into_iter().collect::<std::collections::BTreeSet<_>>() {
        for (partition, end) in list_offsets(address, topic, -1)? {
            ends.insert((topic.clone(), partition), end);
        }
    }
    let keys: std::collections::BTreeSet<&(String, i32)> = committed.keys().chain(owners.keys()).collect();
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]);
    let mut json_partitions = Vec::new();
    for key in keys {
        let current = committed.get(key).copied();
        let end = ends.get(key).copied();
        let lag = current.zip(end).map(|(c, e)| (e - c).max(0));
        let (member, host, client) = owners.get(key).cloned().unwrap_or_default();
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        table.row(vec![
            key.0.clone(),
            key.1.to_string(),
            show(current),
            show(end),
            show(lag),
            member.clone(),
            host,
            client,
        ]);
        json_partitions.push(json!({"topic": key.0, "partition": key.1, "committed_offset": current,
            "log_end_offset": end, "lag": lag, "member_id": (!member.is_empty()).then_some(member)}));
    }
    table.note(format!(
        "group {group}: {} with {} member(s)",
        described.group_state.as_str(),
        described.members.len()
    ));
    let json = json!({"group": group, "state": described.group_state.as_str(), "members": described.members.len(),
        "partitions": json_partitions});
    Ok((json, table))
}

enum Target {
    Timestamp(i64),
    Offset(i64),
}

fn reset_offsets(
    address: SocketAddr,
    group: &str,
    topic: &str,
    target: Target,
    execute: bool,
) -> Result<(Value, Table), String> {
    let new: BTreeMap<i32, i64> = match target {
        Target::Timestamp(ms) => {
            let found = list_offsets(address, topic, ms)?;
            // A time after every record resets to the end, as Kafka's tool does.
            let ends = list_offsets(address, topic, -1)?;
            found
                .into_iter()
                .map(|(p, o)| (p, if o < 0 { ends.get(&p).copied().unwrap_or(0) } else { o }))
                .collect()
        }
        Target::Offset(offset) => {
            list_offsets(address, topic, -1)?.into_keys().map(|p| (p, offset)).collect()
        }
    };
    let coordinator = coordinator(address, group)?;
    if execute {
        let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(name(group))]);
        let response: DescribeGroupsResponse = wire::call(coordinator, ApiKey::DescribeGroups, 5, &request)?;
        let state = response.groups.first().map_or("Dead", |g| g.group_state.as_str());
        if state != "Empty" && state != "Dead" {
            return Err(format!(
                "group {group} is {state}: its members must stop before its offsets are reset"
            ));
        }
        let partitions = new
            .iter()
            .map(|(&p, &o)| {
                OffsetCommitRequestPartition::default().with_partition_index(p).with_committed_offset(o)
            })
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(name(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(name(topic)))
                    .with_partitions(partitions),
            ]);
        let response: OffsetCommitResponse = wire::call(coordinator, ApiKey::OffsetCommit, 7, &request)?;
        for p in response.topics.iter().flat_map(|t| &t.partitions) {
            check(p.error_code, None, &format!("reset {group} on {topic}/{}", p.partition_index))?;
        }
    }
    let status = if execute { "reset" } else { "dry run (add --execute)" };
    let mut table = Table::new(&["TOPIC", "PARTITION", "NEW-OFFSET"]);
    for (p, o) in &new {
        table.row(vec![topic.to_string(), p.to_string(), o.to_string()]);
    }
    table.note(format!("group {group}: {status}"));
    let offsets: Vec<Value> = new.iter().map(|(p, o)| json!({"partition": p, "offset": o})).collect();
    Ok((json!({"group": group, "topic": topic, "executed": execute, "offsets": offsets}), table))
}

fn delete(address: SocketAddr, group: &str) -> Result<(Value, Table), String> {
    let coordinator = coordinator(address, group)?;
    let request = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(name(group))]);
    let response: DeleteGroupsResponse = wire::call(coordinator, ApiKey::DeleteGroups, 2, &request)?;
    let result = response.results.first().ok_or("the coordinator answered for no group")?;
    check(result.error_code, None, &format!("delete {group}"))?;
    let mut table = Table::new(&["GROUP", "STATUS"]);
    table.row(vec![group.to_string(), "deleted".into()]);
    Ok((json!({"group": group, "deleted": true}), table))
}
