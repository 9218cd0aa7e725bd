//! Idempotent producers through librdkafka: answers lost on the way back make it retry, and
//! every record still lands exactly once, also when the broker is SIGKILLed and restarted
//! between the write and the retry.

mod common;

use common::proxy::Proxy;
use common::{Broker, assigned_from_start, read_response, request_frame};
use futures_lite::future::block_on;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;

fn idempotent_producer(proxy: &Proxy) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", proxy.address.to_string())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.num.messages", "200")
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("producer")
}

fn send(producer: &FutureProducer, topic: &str, numbers: std::ops::Range<u32>) -> Vec<DeliveryFuture> {
    numbers
        .map(|n| {
            let value = n.to_string();
            let record = FutureRecord::to(topic).key(&value).payload(&value).partition(n as i32 % PARTITIONS);
            producer.send_result(record).map_err(|(error, _)| error).expect("enqueue")
        })
        .collect()
}

fn await_all(deliveries: Vec<DeliveryFuture>) {
    for delivery in deliveries {
        block_on(delivery).expect("delivery report").map_err(|(error, _)| error).expect("delivered");
    }
}

/// Reads the whole topic and checks it holds each of `0..count` exactly once, in order within
/// each partition, with nothing else (the high watermarks add up to `count`).
fn assert_exactly_once(broker: &Broker, topic: &str, count: u32) {
    let consumer = assigned_from_start(broker, topic, PARTITIONS);
    let mut stored = 0;
    for partition in 0..PARTITIONS {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
        stored += high - low;
    }
    assert_eq!(stored, i64::from(count), "records stored, duplicates included");
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let mut last_in_partition: HashMap<i32, u32> = HashMap::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    while seen.len() < count as usize && Instant::now() < give_up {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.expect("message");
        let number: u32 =
            std::str::from_utf8(message.payload().expect("value")).expect("utf-8").parse().expect("n");
        if let Some(previous) = last_in_partition.insert(message.partition(), number) {
            assert!(number > previous, "partition {} went from {previous} to {number}", message.partition());
        }
        *seen.entry(number).or_default() += 1;
    }
    assert_eq!(seen.len(), count as usize, "every record read back");
    assert!(seen.values().all(|&times| times == 1), "no record twice");
}

/// A broker that tells clients to reach it through a proxy, and the flags it was started with.
/// The proxy comes first: its port is what the broker advertises.
fn broker_behind_proxy() -> (Broker, Proxy, Vec<String>) {
    let proxy = Proxy::start("127.0.0.1:9".parse().expect("address"));
    let extra =
        ["--advertised-listener", &proxy.address.to_string(), "--set", "num_partitions=3"].map(String::from);
    let broker = Broker::start(&extra.iter().map(String::as_str).collect::<Vec<_>>());
    proxy.set_upstream(broker.address);
    (broker, proxy, extra.to_vec())
}

/// Records the broker holds in `topic` (the sum of its partitions' latest offsets), asked on a
/// connection of our own, not through the proxy.
fn stored(broker: &Broker, topic: &str) -> i64 {
    let partitions = (0..PARTITIONS)
        .map(|partition| ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(-1))
        .collect();
    let topic = ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(partitions);
    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
    let mut stream = broker.connect();
    stream.write_all(&request_frame(ApiKey::ListOffsets, 1, 1, &request)).expect("send");
    let mut response = read_response(&mut stream);
    ResponseHeader::decode(&mut response, 0).expect("header");
    let response = ListOffsetsResponse::decode(&mut response, 1).expect("ListOffsets response");
    response.topics.iter().flat_map(|topic| &topic.partitions).map(|partition| partition.offset.max(0)).sum()
}

#[test]
fn lost_answers_are_retried_without_duplicates() {
    let (broker, proxy, _) = broker_behind_proxy();

    let producer = idempotent_producer(&proxy);
    let mut next = 0;
    for _ in 0..6 {
        let deliveries = send(&producer, "retried", next..next + 5000);
        std::thread::sleep(Duration::from_millis(5));
        proxy.drop_next_answer();
        await_all(deliveries);
        next += 5000;
    }
    assert!(proxy.dropped_chunks() >= 1, "answers were lost on the way");
    assert_exactly_once(&broker, "retried", next);
}

#[test]
fn a_retry_after_a_broker_restart_is_still_recognised() {
    let (broker, proxy, extra) = broker_behind_proxy();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let producer = idempotent_producer(&proxy);
    await_all(send(&producer, "restarted", 0..2000));

    // The broker stores the next records but its answers are lost; then it is killed.
    proxy.blackhole(true);
    let deliveries = send(&producer, "restarted", 2000..4000);
    let give_up = Instant::now() + Duration::from_secs(30);
    let answered_unseen = || stored(&broker, "restarted") > 2000 && proxy.dropped_chunks() >= 1;
    while !answered_unseen() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(answered_unseen(), "the broker stored and answered records the producer never heard of");
    let data = broker.kill();
    let broker = Broker::start_in(data, &extra);
    proxy.set_upstream(broker.address);
    proxy.blackhole(false);
    proxy.cut_all();
    await_all(deliveries);
    assert_exactly_once(&broker, "restarted", 4000);
}
