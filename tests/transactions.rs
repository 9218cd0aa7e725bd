//! Transactions through librdkafka against the real broker: a consume-transform-produce loop
//! with aborts in between delivers each input record exactly once to read_committed readers;
//! a transaction left open is aborted by a new producer with the same id (also after a
//! SIGKILL of the broker) or by its timeout.

mod common;

use common::{Broker, produce_all, read_response, request_frame};
use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, ListTransactionsRequest,
    ListTransactionsResponse, ResponseHeader, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

fn transactional_producer(broker: &Broker, id: &str, timeout_ms: u32) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    producer.init_transactions(TIMEOUT).expect("init_transactions");
    producer
}

fn send(producer: &BaseProducer, topic: &str, key: &str, value: &str) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((error, back)) => {
                assert!(matches!(error, rdkafka::error::KafkaError::MessageProduction(_)), "{error}");
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
    }
}

/// Every (key, value) of `topic` (`partitions` partitions) as a consumer with `isolation`
/// reads it, once it has read `at_least` records or nothing new came for a while.
fn read_all(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    isolation: &str,
    at_least: usize,
) -> Vec<(String, String)> {
    let consumer = common::assigned_from_start_reading(broker, topic, partitions, isolation);
    let mut records = Vec::new();
    let give_up = Instant::now() + TIMEOUT;
    let mut quiet_since = Instant::now();
    while Instant::now() < give_up {
        match consumer.poll(Duration::from_millis(100)) {
            Some(message) => {
                let message = message.expect("message");
                let text = |bytes: Option<&[u8]>| {
                    String::from_utf8(bytes.unwrap_or_default().to_vec()).expect("utf-8")
                };
                records.push((text(message.key()), text(message.payload())));
                quiet_since = Instant::now();
            }
            None if records.len() >= at_least && quiet_since.elapsed() > Duration::from_secs(2) => break,
            None => {}
        }
    }
    records
}

/// The next offset to consume of each partition of `messages`, for the transaction's commit.
fn next_offsets(topic: &str, messages: &[(i32, i64)]) -> TopicPartitionList {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for &(partition, offset) in messages {
        let entry = next.entry(partition).or_insert(0);
        *entry = (*entry).max(offset + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset)).expect("offset");
    }
    offsets
}

/// Moves the consumer back to its committed offsets (after an abort, its position is ahead).
fn rewind(consumer: &BaseConsumer, topic: &str, partitions: i32) {
    let committed = consumer.committed(TIMEOUT).expect("committed offsets");
    for partition in 0..partitions {
        let offset = committed
            .find_partition(topic, partition)
            .map(|element| element.offset())
            .filter(|offset| matches!(offset, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning);
        consumer.seek(topic, partition, offset, TIMEOUT).expect("seek");
    }
}

#[test]
fn consume_transform_produce_with_aborts_delivers_each_record_once() {
    let broker = Broker::start(&["--set", "num_partitions=3", "--set", "group_initial_rebalance_delay_ms=0"]);
    produce_all(&broker, "input", 0..600);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("group.id", "etl")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["input"]).expect("subscribe");
    let producer = transactional_producer(&broker, "etl-1", 60_000);
    let (mut committed, mut aborted_rounds, mut round) = (0usize, 0, 0);
    let give_up = Instant::now() + Duration::from_secs(120);
    while committed < 600 && Instant::now() < give_up {
        let mut batch = Vec::new();
        let gather_until = Instant::now() + Duration::from_millis(300);
        while batch.len() < 50 && Instant::now() < gather_until {
            if let Some(message) = consumer.poll(Duration::from_millis(50)) {
                let message = message.expect("input message");
                let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8");
                batch.push((message.partition(), message.offset(), key));
            }
        }
        if batch.is_empty() {
            continue;
        }
        round += 1;
        producer.begin_transaction().expect("begin");
        for (_, _, key) in &batch {
            send(&producer, "output", key, &format!("out-{key}"));
        }
        producer.flush(TIMEOUT).expect("flush");
        let positions: Vec<(i32, i64)> = batch.iter().map(|(p, o, _)| (*p, *o)).collect();
        let metadata = consumer.group_metadata().expect("group metadata");
        producer
            .send_offsets_to_transaction(&next_offsets("input", &positions), &metadata, TIMEOUT)
            .expect("offsets");
        if round % 3 == 0 {
            producer.abort_transaction(TIMEOUT).expect("abort");
            aborted_rounds += 1;
            rewind(&consumer, "input", 3);
        } else {
            producer.commit_transaction(TIMEOUT).expect("commit");
            committed += batch.len();
        }
    }
    assert_eq!(committed, 600, "every input record went through a committed transaction");
    assert!(aborted_rounds >= 2, "transactions were aborted in between");

    let output = read_all(&broker, "output", 3, "read_committed", 600);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (key, value) in &output {
        assert_eq!(value, &format!("out-{key}"));
        *seen.entry(key.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 600, "every input record is in the output");
    assert!(seen.values().all(|&times| times == 1), "read_committed sees each record once");
    let everything = read_all(&broker, "output", 3, "read_uncommitted", 601);
    assert!(everything.len() > 600, "read_uncommitted also sees the aborted records ({})", everything.len());
}

#[test]
fn a_new_producer_aborts_the_open_transaction_of_its_predecessor_after_a_broker_kill() {
    let extra = ["--set", "num_partitions=2"];
    let broker = Broker::start(&extra);
    let first = transactional_producer(&broker, "handover", 60_000);
    first.begin_transaction().expect("begin");
    for i in 0..10 {
        send(&first, "handover-out", &format!("old-{i}"), "old");
    }
    first.flush(TIMEOUT).expect("flush");
    let data = broker.kill();
    drop(first);

    let broker = Broker::start_in(data, &extra);
    let second = transactional_producer(&broker, "handover", 60_000);
    second.begin_transaction().expect("begin");
    for i in 0..10 {
        send(&second, "handover-out", &format!("new-{i}"), "new");
    }
    second.commit_transaction(TIMEOUT).expect("commit");

    let committed = read_all(&broker, "handover-out", 2, "read_committed", 10);
    assert_eq!(committed.len(), 10, "{committed:?}");
    assert!(committed.iter().all(|(_, value)| value == "new"), "the predecessor's records were aborted");
    assert_eq!(read_all(&broker, "handover-out", 2, "read_uncommitted", 20).len(), 20);
}

#[test]
fn a_transaction_that_outlives_its_timeout_is_aborted_and_its_producer_fenced() {
    let broker = Broker::start(&["--set", "transaction_abort_timed_out_transaction_cleanup_interval_ms=200"]);
    let slow = transactional_producer(&broker, "slow", 1_500);
    slow.begin_transaction().expect("begin");
    for i in 0..5 {
        send(&slow, "timed", &format!("slow-{i}"), "slow");
    }
    slow.flush(TIMEOUT).expect("flush");
    // Committed after the open transaction: a read_committed reader sees it only once the
    // transaction has ended.
    let plain: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", broker.address.to_string()).create().expect("producer");
    send(&plain, "timed", "after", "plain");
    plain.flush(TIMEOUT).expect("flush");

    let seen = read_all(&broker, "timed", 1, "read_committed", 1);
    assert_eq!(seen, vec![("after".to_string(), "plain".to_string())], "the timed-out records were aborted");
    assert!(slow.commit_transaction(TIMEOUT).is_err(), "the timed-out producer is fenced");
}

/// One request and its decoded answer, on a raw connection (rdkafka has no transaction admin).
fn ask<R: Decodable>(broker: &Broker, api: ApiKey, version: i16, body: &impl Encodable) -> R {
    let mut stream = broker.connect();
    stream.write_all(&request_frame(api, version, 1, body)).expect("send");
    let mut response = read_response(&mut stream);
    ResponseHeader::decode(&mut response, api.response_header_version(version)).expect("header");
    R::decode(&mut response, version).expect("response")
}

#[test]
fn open_transactions_are_listed_and_described() {
    let broker = Broker::start(&["--set", "num_partitions=2"]);
    let producer = transactional_producer(&broker, "visible", 60_000);
    producer.begin_transaction().expect("begin");
    send(&producer, "described", "k", "v");
    producer.flush(TIMEOUT).expect("flush");

    let ongoing = StrBytes::from_static_str("Ongoing");
    let listed: ListTransactionsResponse = ask(
        &broker,
        ApiKey::ListTransactions,
        1,
        &ListTransactionsRequest::default()
            .with_state_filters(vec![ongoing.clone()])
            .with_duration_filter(-1),
    );
    let ids: Vec<&str> = listed.transaction_states.iter().map(|t| t.transactional_id.as_str()).collect();
    assert_eq!(ids, ["visible"]);
    let id = TransactionalId(StrBytes::from_static_str("visible"));
    let missing = TransactionalId(StrBytes::from_static_str("never-used"));
    let described: DescribeTransactionsResponse = ask(
        &broker,
        ApiKey::DescribeTransactions,
        0,
        &DescribeTransactionsRequest::default().with_transactional_ids(vec![id, missing]),
    );
    let state = &described.transaction_states[0];
    assert_eq!((state.error_code, state.transaction_state.as_str()), (0, "Ongoing"));
    assert_eq!(state.transaction_timeout_ms, 60_000);
    assert!(state.transaction_start_time_ms > 0);
    let topics: Vec<(&str, &Vec<i32>)> =
        state.topics.iter().map(|t| (t.topic.as_str(), &t.partitions)).collect();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].0, "described");
    assert_eq!(described.transaction_states[1].error_code, 105, "TRANSACTIONAL_ID_NOT_FOUND");

    producer.commit_transaction(TIMEOUT).expect("commit");
    let listed: ListTransactionsResponse = ask(
        &broker,
        ApiKey::ListTransactions,
        0,
        &ListTransactionsRequest::default().with_state_filters(vec![ongoing]),
    );
    assert!(listed.transaction_states.is_empty(), "committed: no longer ongoing");
}
