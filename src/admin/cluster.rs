//! `ringmq cluster info`: the brokers (with the controller), and the partitions that need
//! attention: without a leader, or with fewer in-sync replicas than replicas.

use super::metadata;
use super::table::Table;
use serde_json::{Value, json};
use std::net::SocketAddr;

pub fn info(address: SocketAddr) -> Result<(Value, Table), String> {
    let response = metadata(address, None)?;
    let controller = response.controller_id.0;
    let mut brokers: Vec<_> = response.brokers.iter().collect();
    brokers.sort_by_key(|b| b.node_id.0);
    let mut table = Table::new(&["BROKER", "HOST", "PORT", "RACK", "CONTROLLER"]);
    let mut json_brokers = Vec::new();
    for b in &brokers {
        let rack = b.rack.as_ref().map_or("-".to_string(), |r| r.to_string());
        let is_controller = b.node_id.0 == controller;
        table.row(vec![
            b.node_id.0.to_string(),
            b.host.to_string(),
            b.port.to_string(),
            rack.clone(),
            is_controller.to_string(),
        ]);
        json_brokers.push(json!({"id": b.node_id.0, "host": b.host.as_str(), "port": b.port, "rack": b.rack.as_ref().map(|r| r.as_str()), "controller": is_controller}));
    }
    let (mut leaderless, mut under_replicated) = (Vec::new(), Vec::new());
    let mut partitions = 0;
    for topic in &response.topics {
        let name = topic.name.as_ref().map_or("", |n| n.as_str());
        for p in &topic.partitions {
            partitions += 1;
            if p.leader_id.0 < 0 {
                leaderless.push(format!("{name}/{}", p.partition_index));
            }
            if p.isr_nodes.len() < p.replica_nodes.len() {
                under_replicated.push(format!("{name}/{}", p.partition_index));
            }
        }
    }
    let cluster_id = response.cluster_id.as_ref().map_or("", |id| id.as_str());
    table.note(format!(
        "cluster {cluster_id}: {} broker(s), {} topic(s), {partitions} partition(s)",
        brokers.len(),
        response.topics.len()
    ));
    table.note(format!(
        "partitions without a leader: {}",
        if leaderless.is_empty() { "none".into() } else { leaderless.join(" ") }
    ));
    table.note(format!(
        "under-replicated partitions: {}",
        if under_replicated.is_empty() { "none".into() } else { under_replicated.join(" ") }
    ));
    let json = json!({"cluster_id": cluster_id, "controller": controller, "brokers": json_brokers,
        "topics": response.topics.len(), "partitions": partitions,
        "leaderless": leaderless, "under_replicated": under_replicated});
    Ok((json, table))
}
