//! Metadata: this broker, and the topics asked about (all of them if none are named),
//! creating unknown ones when auto-creation is on and the client allows it.

use crate::controller::state::{NO_LEADER, PartitionRecord};
use crate::server::Broker;
use crate::shard::Shard;
use crate::shard::topics::{self, TopicMeta};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

pub async fn handle(
    broker: &Broker,
    shard: &Shard,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let cluster = cluster(broker, shard);
    let brokers = cluster
        .brokers
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.map(StrBytes::from_string))
        })
        .collect();
    // v0 asks for every topic with an empty list; later versions with a null one.
    let requested = request.topics.filter(|topics| version > 0 || !topics.is_empty());
    let topics = match requested {
        None => shard.all_topics().iter().filter_map(|topic| describe(broker, shard, topic)).collect(),
        Some(requested) => {
            let auto_create = request.allow_auto_topic_creation || version < 4;
            let mut topics = Vec::with_capacity(requested.len());
            for wanted in requested {
                let found = match &wanted.name {
                    Some(name) if auto_create => shard.topic_or_auto_create(name).await,
                    Some(name) => shard.topic_in_cluster(name).await,
                    None => shard.topic_by_id(wanted.topic_id),
                };
                topics.push(match found.and_then(|topic| describe(broker, shard, &topic)) {
                    Some(described) => described,
                    None => MetadataResponseTopic::default()
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_name(wanted.name)
                        .with_topic_id(wanted.topic_id),
                });
            }
            topics
        }
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(cluster.id)))
        .with_controller_id(BrokerId(cluster.controller))
        .with_topics(topics)
}

/// A broker as Metadata and DescribeCluster list it.
pub struct BrokerAddress {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The cluster as clients see it.
pub struct Cluster {
    pub id: String,
    pub brokers: Vec<BrokerAddress>,
    pub controller: i32,
}

/// The brokers clients may be sent to, and the active controller: this broker alone on a
/// one-node broker; in a cluster, the live brokers of the newest metadata image (and this one,
/// which a client reached whatever the image says).
pub fn cluster(broker: &Broker, shard: &Shard) -> Cluster {
    let this = BrokerAddress {
        id: broker.node_id,
        host: broker.advertised.ip().to_string(),
        port: broker.advertised.port(),
        rack: shard.config().cluster.rack.clone(),
    };
    let Some(view) = shard.cluster() else {
        // Not registered with the quorum yet: the controller is unknown (-1) for now.
        let clustered = shard.config().cluster.is_clustered();
        let controller = if clustered { -1 } else { broker.node_id };
        return Cluster { id: broker.cluster_id.clone(), brokers: vec![this], controller };
    };
    let mut brokers: Vec<BrokerAddress> = view
        .image
        .live_brokers()
        .map(|b| BrokerAddress { id: b.id, host: b.host.clone(), port: b.port, rack: b.rack.clone() })
        .collect();
    if !brokers.iter().any(|b| b.id == this.id) {
        brokers.push(this);
        brokers.sort_by_key(|b| b.id);
    }
    let id = if view.image.cluster_id.is_empty() {
        broker.cluster_id.clone()
    } else {
        view.image.cluster_id.clone()
    };
    Cluster { id, brokers, controller: view.controller }
}

/// A topic as Metadata shows it: in a cluster, each partition's leader, replicas and in-sync
/// replicas as the controller placed them (the internal topics, which each broker made with an
/// id of its own, once placed); otherwise this broker leads every partition. `None` for an
/// internal topic the controller has not placed yet (no group or transaction used it, or too
/// few brokers are live): in a cluster it exists nowhere yet, as in Kafka, and this broker
/// does not lead it alone.
fn describe(broker: &Broker, shard: &Shard, topic: &TopicMeta) -> Option<MetadataResponseTopic> {
    let placed = shard.cluster().and_then(|view| view.image.topics.get(&topic.name).cloned());
    let internal = topics::is_internal(&topic.name);
    let partitions = match placed.filter(|record| record.id == *topic.id.as_bytes() || internal) {
        Some(record) => {
            record.partitions.iter().enumerate().map(|(index, p)| placed_partition(index, p)).collect()
        }
        None if internal && shard.config().cluster.is_clustered() => return None,
        None => led_here(broker, topic),
    };
    let described = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(internal)
        .with_partitions(partitions);
    Some(described)
}

fn placed_partition(index: usize, partition: &PartitionRecord) -> MetadataResponsePartition {
    let ids = |ids: &[i32]| ids.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let answer = MetadataResponsePartition::default()
        .with_partition_index(index as i32)
        .with_leader_id(BrokerId(partition.leader))
        .with_leader_epoch(partition.leader_epoch)
        .with_replica_nodes(ids(&partition.replicas))
        .with_isr_nodes(ids(&partition.isr));
    match partition.leader {
        NO_LEADER => answer.with_error_code(ResponseError::LeaderNotAvailable.code()),
        _ => answer,
    }
}

/// Every partition led by this broker (epoch 0, no other replicas).
fn led_here(broker: &Broker, topic: &TopicMeta) -> Vec<MetadataResponsePartition> {
    let node = BrokerId(broker.node_id);
    (0..topic.partitions())
        .map(|partition| {
            MetadataResponsePartition::default()
                .with_partition_index(partition)
                .with_leader_id(node)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect()
}
