//! `ringmq topic …` and `ringmq group …`: the admin CLI, speaking the Kafka protocol to any
//! Kafka-compatible broker (`--bootstrap`, default 127.0.0.1:9092). Human tables by default,
//! one JSON document with `--json`.

mod cluster;
mod console;
mod group;
mod reassign;
mod table;

pub use console::{ConsumeArgs, ProduceArgs, consume, partition_for_key, produce};
pub use group::GroupCommand;
pub use table::Table;

use crate::bench::wire;
use clap::{Args, Subcommand};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// Where to connect and how to print.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// A broker of the cluster.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT", global = true)]
    pub bootstrap: String,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long = "replication-factor", default_value_t = 1)]
        replication_factor: i16,
        /// A topic setting, KEY=VALUE (e.g. retention.ms=86400000); may be repeated.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics (internal ones too with --internal).
    List {
        #[arg(long)]
        internal: bool,
    },
    /// Partitions (leader, replicas, offsets) and settings of a topic.
    Describe { name: String },
    /// Change settings of a topic: --set KEY=VALUE, --delete KEY (back to the default).
    AlterConfig {
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Delete a topic and its records.
    Delete { name: String },
    /// Grow a topic to COUNT partitions.
    AddPartitions {
        name: String,
        #[arg(long)]
        count: i32,
    },
    /// Move partitions to other brokers (all of the topic's unless --partition is given):
    /// the new replicas copy the log, catch up, and then the old ones leave.
    Reassign {
        name: String,
        /// A partition to move; may be repeated or comma-separated.
        #[arg(long = "partition", value_delimiter = ',')]
        partitions: Vec<i32>,
        /// The brokers to hold the partitions, preferred leader first (e.g. 4,2,3).
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel", conflicts_with = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the moves under way instead.
        #[arg(long)]
        cancel: bool,
        /// Wait until the moves are done, at most SECONDS (default 3600).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "3600")]
        wait: Option<u64>,
    },
    /// The partition moves under way (of one topic, if named).
    Reassignments { name: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Brokers, controller and partitions needing attention.
    Info,
    /// Move every replica off BROKER onto the other live brokers, before it is retired.
    Decommission {
        broker: i32,
        /// Wait until the moves are done, at most SECONDS (default 3600).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "3600")]
        wait: Option<u64>,
    },
}

/// Runs a topic command and prints its outcome.
pub fn topic(command: TopicCommand, connection: &Connection) -> Result<(), String> {
    let address = wire::resolve(&connection.bootstrap)?;
    let (output, table) = match command {
        TopicCommand::Create { name, partitions, replication_factor, configs } => {
            create(address, &name, partitions, replication_factor, &configs)?
        }
        TopicCommand::List { internal } => list(address, internal)?,
        TopicCommand::Describe { name } => describe(address, &name)?,
        TopicCommand::AlterConfig { name, set, delete } => alter_config(address, &name, &set, &delete)?,
        TopicCommand::Delete { name } => delete_topic(address, &name)?,
        TopicCommand::AddPartitions { name, count } => add_partitions(address, &name, count)?,
        TopicCommand::Reassign { name, partitions, replicas, cancel, wait } => {
            let target = (!cancel).then_some(replicas);
            reassign::reassign(address, &name, &partitions, target, wait.map(Duration::from_secs))?
        }
        TopicCommand::Reassignments { name } => reassign::list(address, name.as_deref())?,
    };
    print(&output, &table, connection);
    Ok(())
}

/// Runs a group command and prints its outcome.
pub fn group(command: GroupCommand, connection: &Connection) -> Result<(), String> {
    let address = wire::resolve(&connection.bootstrap)?;
    let (output, table) = group::run(command, address)?;
    print(&output, &table, connection);
    Ok(())
}

/// Runs a cluster command and prints its outcome.
pub fn cluster(command: ClusterCommand, connection: &Connection) -> Result<(), String> {
    let address = wire::resolve(&connection.bootstrap)?;
    let (output, table) = match command {
        ClusterCommand::Info => cluster::info(address)?,
        ClusterCommand::Decommission { broker, wait } => {
            reassign::decommission(address, broker, wait.map(Duration::from_secs))?
        }
    };
    print(&output, &table, connection);
    Ok(())
}

fn print(output: &Value, table: &Table, connection: &Connection) {
    if connection.json {
        println!("{output}");
    } else {
        print!("{}", table.render());
    }
}

fn name(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// `Err` with Kafka's name and message for a non-zero error code.
fn check(code: i16, message: Option<&StrBytes>, what: &str) -> Result<(), String> {
    if code == 0 {
        return Ok(());
    }
    let error =
        ResponseError::try_from_code(code).map_or_else(|| format!("error code {code}"), |e| format!("{e:?}"));
    let detail = message.map(|m| format!(": {}", m.as_str())).unwrap_or_default();
    Err(format!("{what}: {error}{detail}"))
}

fn key_value(setting: &str) -> Result<(&str, &str), String> {
    setting.split_once('=').ok_or_else(|| format!("{setting}: expected KEY=VALUE"))
}

const CREATE_TOPICS_VERSION: i16 = 5;

fn create(
    address: SocketAddr,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[String],
) -> Result<(Value, Table), String> {
    let configs = configs
        .iter()
        .map(|setting| {
            let (key, value) = key_value(setting)?;
            Ok(CreatableTopicConfig::default().with_name(name(key)).with_value(Some(name(value))))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let creatable = CreatableTopic::default()
        .with_name(TopicName(name(topic)))
        .with_num_partitions(partitions)
        .with_replication_factor(replication_factor)
        .with_configs(configs);
    let request = CreateTopicsRequest::default().with_topics(vec![creatable]).with_timeout_ms(30_000);
    let response: CreateTopicsResponse =
        wire::call(address, ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)?;
    let result = response.topics.first().ok_or("the broker answered for no topic")?;
    check(result.error_code, result.error_message.as_ref(), &format!("create {topic}"))?;
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICATION", "STATUS"]);
    table.row(vec![
        topic.into(),
        result.num_partitions.to_string(),
        result.replication_factor.to_string(),
        "created".into(),
    ]);
    let json = json!({"topic": topic, "partitions": result.num_partitions, "replication_factor": result.replication_factor});
    Ok((json, table))
}

const METADATA_VERSION: i16 = 9;

fn metadata(address: SocketAddr, topics: Option<&[&str]>) -> Result<MetadataResponse, String> {
    metadata_creating(address, topics, false)
}

/// Metadata of `topics` (every topic with `None`); `create` lets a broker that creates topics
/// on first use create them.
fn metadata_creating(
    address: SocketAddr,
    topics: Option<&[&str]>,
    create: bool,
) -> Result<MetadataResponse, String> {
    let topics = topics.map(|names| {
        names.iter().map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(name(n))))).collect()
    });
    let request = MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(create);
    wire::call(address, ApiKey::Metadata, METADATA_VERSION, &request)
}

/// The address of every broker a Metadata answer lists, by node id.
fn broker_addresses(
    response: &MetadataResponse,
) -> Result<std::collections::BTreeMap<i32, SocketAddr>, String> {
    response
        .brokers
        .iter()
        .map(|b| Ok((b.node_id.0, wire::resolve(&format!("{}:{}", b.host.as_str(), b.port))?)))
        .collect()
}

fn list(address: SocketAddr, internal: bool) -> Result<(Value, Table), String> {
    let response = metadata(address, None)?;
    let mut topics: Vec<&metadata_response::MetadataResponseTopic> =
        response.topics.iter().filter(|t| internal || !t.is_internal).collect();
    topics.sort_by(|a, b| a.name.as_ref().map(|n| n.as_str()).cmp(&b.name.as_ref().map(|n| n.as_str())));
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "INTERNAL"]);
    let mut json = Vec::new();
    for topic in topics {
        let topic_name = topic.name.as_ref().map_or("", |n| n.as_str());
        table.row(vec![topic_name.into(), topic.partitions.len().to_string(), topic.is_internal.to_string()]);
        json.push(
            json!({"topic": topic_name, "partitions": topic.partitions.len(), "internal": topic.is_internal}),
        );
    }
    Ok((Value::Array(json), table))
}

/// (earliest, latest) offset of each of `partitions` of `topic`, each asked of its leader.
fn offsets(address: SocketAddr, topic: &str, partitions: &[i32]) -> Result<Vec<(i32, i64, i64)>, String> {
    let layout = console::Layout::of(address, topic, false)?;
    let earliest = console::list_offsets(&layout, topic, partitions, -2)?;
    let latest = console::list_offsets(&layout, topic, partitions, -1)?;
    Ok(earliest.into_iter().map(|(p, low)| (p, low, latest.get(&p).copied().unwrap_or(-1))).collect())
}

fn describe(address: SocketAddr, topic: &str) -> Result<(Value, Table), String> {
    let response = metadata(address, Some(&[topic]))?;
    let found = response.topics.first().ok_or("the broker answered for no topic")?;
    check(found.error_code, None, &format!("describe {topic}"))?;
    let mut partitions: Vec<&metadata_response::MetadataResponsePartition> =
        found.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition_index);
    let indexes: Vec<i32> = partitions.iter().map(|p| p.partition_index).collect();
    let offsets = offsets(address, topic, &indexes)?;
    let mut table = Table::new(&["PARTITION", "LEADER", "REPLICAS", "ISR", "LOG-START", "HIGH-WATERMARK"]);
    let mut json_partitions = Vec::new();
    let ids = |ids: &[BrokerId]| ids.iter().map(|id| id.0.to_string()).collect::<Vec<_>>().join(",");
    for p in &partitions {
        let (_, low, high) =
            offsets.iter().find(|(q, _, _)| *q == p.partition_index).copied().unwrap_or((0, -1, -1));
        table.row(vec![
            p.partition_index.to_string(),
            p.leader_id.0.to_string(),
            ids(&p.replica_nodes),
            ids(&p.isr_nodes),
            low.to_string(),
            high.to_string(),
        ]);
        json_partitions.push(json!({
            "partition": p.partition_index, "leader": p.leader_id.0,
            "replicas": p.replica_nodes.iter().map(|id| id.0).collect::<Vec<_>>(),
            "isr": p.isr_nodes.iter().map(|id| id.0).collect::<Vec<_>>(),
            "log_start_offset": low, "high_watermark": high,
        }));
    }
    let configs = topic_configs(address, topic)?;
    for (key, value) in &configs {
        table.note(format!("{key} = {}", value.as_str().unwrap_or("null")));
    }
    let json = json!({"topic": topic, "internal": found.is_internal, "partitions": json_partitions,
        "configs": configs.into_iter().collect::<serde_json::Map<String, Value>>()});
    Ok((json, table))
}

/// Settings of `topic` that differ from the broker's defaults.
fn topic_configs(address: SocketAddr, topic: &str) -> Result<Vec<(String, Value)>, String> {
    const TOPIC_RESOURCE: i8 = 2;
    const DEFAULT_CONFIG: i8 = 5;
    let resource = DescribeConfigsResource::default()
        .with_resource_type(TOPIC_RESOURCE)
        .with_resource_name(name(topic))
        .with_configuration_keys(None);
    let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
    let response: DescribeConfigsResponse = wire::call(address, ApiKey::DescribeConfigs, 4, &request)?;
    let result = response.results.first().ok_or("the broker described no topic")?;
    check(result.error_code, result.error_message.as_ref(), &format!("describe the settings of {topic}"))?;
    Ok(result
        .configs
        .iter()
        .filter(|c| c.config_source != DEFAULT_CONFIG)
        .map(|c| (c.name.to_string(), Value::from(c.value.as_ref().map(|v| v.to_string()))))
        .collect())
}

fn alter_config(
    address: SocketAddr,
    topic: &str,
    set: &[String],
    delete: &[String],
) -> Result<(Value, Table), String> {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let mut changes = Vec::new();
    for setting in set {
        let (key, value) = key_value(setting)?;
        changes.push(
            AlterableConfig::default()
                .with_name(name(key))
                .with_config_operation(SET)
                .with_value(Some(name(value))),
        );
    }
    for key in delete {
        changes.push(AlterableConfig::default().with_name(name(key)).with_config_operation(DELETE));
    }
    if changes.is_empty() {
        return Err("nothing to change: give --set KEY=VALUE or --delete KEY".into());
    }
    let resource = AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(name(topic))
        .with_configs(changes);
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![resource]);
    let response: IncrementalAlterConfigsResponse =
        wire::call(address, ApiKey::IncrementalAlterConfigs, 1, &request)?;
    let result = response.responses.first().ok_or("the broker answered for no topic")?;
    check(result.error_code, result.error_message.as_ref(), &format!("alter the settings of {topic}"))?;
    let mut table = Table::new(&["TOPIC", "STATUS"]);
    table.row(vec![topic.into(), "altered".into()]);
    Ok((json!({"topic": topic, "set": set, "deleted": delete}), table))
}

fn delete_topic(address: SocketAddr, topic: &str) -> Result<(Value, Table), String> {
    let request =
        DeleteTopicsRequest::default().with_topic_names(vec![TopicName(name(topic))]).with_timeout_ms(30_000);
    let response: DeleteTopicsResponse = wire::call(address, ApiKey::DeleteTopics, 4, &request)?;
    let result = response.responses.first().ok_or("the broker answered for no topic")?;
    check(result.error_code, result.error_message.as_ref(), &format!("delete {topic}"))?;
    let mut table = Table::new(&["TOPIC", "STATUS"]);
    table.row(vec![topic.into(), "deleted".into()]);
    Ok((json!({"topic": topic, "deleted": true}), table))
}

fn add_partitions(address: SocketAddr, topic: &str, count: i32) -> Result<(Value, Table), String> {
    let grow = CreatePartitionsTopic::default().with_name(TopicName(name(topic))).with_count(count);
    let request = CreatePartitionsRequest::default().with_topics(vec![grow]).with_timeout_ms(30_000);
    let response: CreatePartitionsResponse = wire::call(address, ApiKey::CreatePartitions, 2, &request)?;
    let result = response.results.first().ok_or("the broker answered for no topic")?;
    check(result.error_code, result.error_message.as_ref(), &format!("grow {topic}"))?;
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "STATUS"]);
    table.row(vec![topic.into(), count.to_string(), "grown".into()]);
    Ok((json!({"topic": topic, "partitions": count}), table))
}
