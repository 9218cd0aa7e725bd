//! Metadata: the brokers of the cluster and the topics asked about.

use crate::server::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponseTopic};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;

pub fn handle(broker: &Broker, request: MetadataRequest) -> MetadataResponse {
    let this_broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(broker.node_id))
        .with_host(StrBytes::from_string(broker.advertised.ip().to_string()))
        .with_port(i32::from(broker.advertised.port()));
    // No topic exists until topics can be created (CreateTopics and auto-creation build on
    // the partition registry): every topic asked about is unknown.
    let topics = request
        .topics
        .unwrap_or_default()
        .into_iter()
        .map(|topic| {
            MetadataResponseTopic::default()
                .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![this_broker])
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.node_id))
        .with_topics(topics)
}
