//! Moving partitions between brokers (KIP-455) from the CLI: `ringmq topic reassign`,
//! `ringmq topic reassignments` and `ringmq cluster decommission`. Any Kafka-compatible
//! broker that takes AlterPartitionReassignments works.

use super::table::Table;
use super::{check, metadata, name};
use crate::bench::wire;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A partition's move: where to (`None` cancels the move under way).
pub struct Move {
    pub topic: String,
    pub partition: i32,
    pub target: Option<Vec<i32>>,
}

const ALTER_VERSION: i16 = 0;
/// How long the broker may take to hand a move to its controller.
const ALTER_TIMEOUT_MS: i32 = 30_000;
/// How often `--wait` asks whether the moves are done.
const POLL: Duration = Duration::from_millis(200);

/// Asks for `moves`; fails naming every move the broker refused.
pub fn alter(address: SocketAddr, moves: &[Move]) -> Result<(), String> {
    let mut topics: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
    for each in moves {
        let replicas = each.target.as_ref().map(|ids| ids.iter().copied().map(BrokerId).collect());
        let partition =
            ReassignablePartition::default().with_partition_index(each.partition).with_replicas(replicas);
        topics.entry(each.topic.as_str()).or_default().push(partition);
    }
    let topics = topics
        .into_iter()
        .map(|(topic, partitions)| {
            ReassignableTopic::default().with_name(TopicName(name(topic))).with_partitions(partitions)
        })
        .collect();
    let request =
        AlterPartitionReassignmentsRequest::default().with_timeout_ms(ALTER_TIMEOUT_MS).with_topics(topics);
    let response: AlterPartitionReassignmentsResponse =
        wire::call(address, ApiKey::AlterPartitionReassignments, ALTER_VERSION, &request)?;
    check(response.error_code, response.error_message.as_ref(), "move partitions")?;
    let mut refused = Vec::new();
    for topic in &response.responses {
        for partition in &topic.partitions {
            let what = format!("{}/{}", topic.name.as_str(), partition.partition_index);
            if let Err(error) = check(partition.error_code, partition.error_message.as_ref(), &what) {
                refused.push(error);
            }
        }
    }
    if refused.is_empty() { Ok(()) } else { Err(refused.join("; ")) }
}

/// A partition move under way, as ListPartitionReassignments shows it.
pub struct Ongoing {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// The moves under way (of `topic` only, if given).
pub fn ongoing(address: SocketAddr, topic: Option<&str>) -> Result<Vec<Ongoing>, String> {
    let topics = match topic {
        Some(topic) => {
            let response = metadata(address, Some(&[topic]))?;
            let found = response.topics.first().ok_or("the broker answered for no topic")?;
            check(found.error_code, None, &format!("topic {topic}"))?;
            let indexes = found.partitions.iter().map(|p| p.partition_index).collect();
            Some(vec![
                ListPartitionReassignmentsTopics::default()
                    .with_name(TopicName(name(topic)))
                    .with_partition_indexes(indexes),
            ])
        }
        None => None,
    };
    let request =
        ListPartitionReassignmentsRequest::default().with_timeout_ms(ALTER_TIMEOUT_MS).with_topics(topics);
    let response: ListPartitionReassignmentsResponse =
        wire::call(address, ApiKey::ListPartitionReassignments, 0, &request)?;
    check(response.error_code, response.error_message.as_ref(), "list moves")?;
    let ids = |ids: &[BrokerId]| ids.iter().map(|id| id.0).collect::<Vec<_>>();
    let mut moves = Vec::new();
    for topic in &response.topics {
        for p in &topic.partitions {
            moves.push(Ongoing {
                topic: topic.name.to_string(),
                partition: p.partition_index,
                replicas: ids(&p.replicas),
                adding: ids(&p.adding_replicas),
                removing: ids(&p.removing_replicas),
            });
        }
    }
    Ok(moves)
}

/// Waits until none of `moves` is under way, printing how many are left each second.
pub fn await_moves(address: SocketAddr, moves: &[Move], patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    let mut shown = Instant::now();
    loop {
        let left = ongoing(address, None)?
            .into_iter()
            .filter(|under_way| {
                moves.iter().any(|m| m.topic == under_way.topic && m.partition == under_way.partition)
            })
            .count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{left} partition(s) still moving after {}s", patience.as_secs()));
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            eprintln!("moving: {left} of {} partition(s) left", moves.len());
            shown = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}

fn moves_table(moves: &[Move], status: &str) -> (Value, Table) {
    let mut table = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "STATUS"]);
    let mut listed = Vec::new();
    for each in moves {
        let replicas = each.target.as_ref().map_or("-".to_string(), |ids| join(ids));
        table.row(vec![each.topic.clone(), each.partition.to_string(), replicas, status.into()]);
        listed.push(json!({"topic": each.topic, "partition": each.partition, "replicas": each.target, "status": status}));
    }
    (json!({"moves": listed}), table)
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// `ringmq topic reassign`: moves `partitions` of `topic` (all with none named) to
/// `replicas`, or cancels their moves; with `wait`, until they are done.
pub fn reassign(
    address: SocketAddr,
    topic: &str,
    partitions: &[i32],
    replicas: Option<Vec<i32>>,
    wait: Option<Duration>,
) -> Result<(Value, Table), String> {
    let partitions = if partitions.is_empty() {
        let response = metadata(address, Some(&[topic]))?;
        let found = response.topics.first().ok_or("the broker answered for no topic")?;
        check(found.error_code, None, &format!("topic {topic}"))?;
        found.partitions.iter().map(|p| p.partition_index).collect()
    } else {
        partitions.to_vec()
    };
    let moves: Vec<Move> = partitions
        .into_iter()
        .map(|partition| Move { topic: topic.to_string(), partition, target: replicas.clone() })
        .collect();
    alter(address, &moves)?;
    let status = match (wait, replicas.is_some()) {
        (Some(patience), true) => {
            await_moves(address, &moves, patience)?;
            "moved"
        }
        (_, true) => "moving",
        (_, false) => "cancelled",
    };
    Ok(moves_table(&moves, status))
}

/// `ringmq topic reassignments`: the moves under way.
pub fn list(address: SocketAddr, topic: Option<&str>) -> Result<(Value, Table), String> {
    let mut table = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]);
    let mut listed = Vec::new();
    for Ongoing { topic, partition, replicas, adding, removing } in ongoing(address, topic)? {
        table.row(vec![
            topic.clone(),
            partition.to_string(),
            join(&replicas),
            join(&adding),
            join(&removing),
        ]);
        listed.push(json!({"topic": topic, "partition": partition, "replicas": replicas, "adding": adding, "removing": removing}));
    }
    Ok((json!({"reassignments": listed}), table))
}

/// `ringmq cluster decommission`: moves every replica `broker` holds to the live broker that
/// holds the fewest replicas among those the partition is not on; with `wait`, until done.
pub fn decommission(
    address: SocketAddr,
    broker: i32,
    wait: Option<Duration>,
) -> Result<(Value, Table), String> {
    let response = metadata(address, None)?;
    let live: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).filter(|id| *id != broker).collect();
    let mut load: BTreeMap<i32, usize> = live.iter().map(|id| (*id, 0)).collect();
    for p in response.topics.iter().flat_map(|t| &t.partitions) {
        for replica in &p.replica_nodes {
            load.entry(replica.0).and_modify(|count| *count += 1);
        }
    }
    let mut moves = Vec::new();
    for topic in &response.topics {
        let topic_name = topic.name.as_ref().map_or(String::new(), |n| n.to_string());
        for p in topic.partitions.iter().filter(|p| p.replica_nodes.contains(&BrokerId(broker))) {
            let replicas: Vec<i32> = p.replica_nodes.iter().map(|id| id.0).collect();
            let spare = load
                .iter()
                .filter(|(id, _)| !replicas.contains(id))
                .min_by_key(|(id, count)| (**count, **id))
                .map(|(id, _)| *id)
                .ok_or_else(|| {
                    format!("{topic_name}/{}: no live broker without a replica of it", p.partition_index)
                })?;
            *load.entry(spare).or_default() += 1;
            let target = replicas.iter().map(|id| if *id == broker { spare } else { *id }).collect();
            moves.push(Move {
                topic: topic_name.clone(),
                partition: p.partition_index,
                target: Some(target),
            });
        }
    }
    if !moves.is_empty() {
        alter(address, &moves)?;
    }
    let status = match wait {
        Some(patience) => {
            await_moves(address, &moves, patience)?;
            "moved"
        }
        None => "moving",
    };
    let (mut json, mut table) = moves_table(&moves, status);
    json["broker"] = json!(broker);
    table.note(format!("broker {broker}: {} replica(s) {status} away", moves.len()));
    Ok((json, table))
}
