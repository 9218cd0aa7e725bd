//! Incremental fetch sessions (KIP-227) over a raw connection to the real broker: a full fetch
//! opens a session, incremental fetches name only changed partitions and are answered with
//! only the partitions that have something new; forgotten partitions leave the session; a
//! wrong epoch or an unknown session id is refused, and the client can start over.

mod common;

use common::{Broker, read_response, request_frame};
use futures_lite::future::block_on;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::io::Write;
use std::net::TcpStream;

const TOPIC: &str = "sessions";

/// Writes `count` records to `partition`.
fn produce(broker: &Broker, partition: i32, count: usize) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", broker.address.to_string()).create().expect("producer");
    let deliveries: Vec<_> = (0..count)
        .map(|i| {
            let payload = format!("v{i}");
            let record = FutureRecord::to(TOPIC).partition(partition).key("k").payload(&payload);
            producer.send_result(record).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    for delivery in deliveries {
        block_on(delivery).expect("report").map_err(|(e, _)| e).expect("delivered");
    }
}

fn topic_id(stream: &mut TcpStream) -> uuid::Uuid {
    let request = MetadataRequest::default().with_topics(None);
    stream.write_all(&request_frame(ApiKey::Metadata, 12, 1, &request)).expect("send");
    let mut response = read_response(stream);
    ResponseHeader::decode(&mut response, ApiKey::Metadata.response_header_version(12)).expect("header");
    let metadata = MetadataResponse::decode(&mut response, 12).expect("metadata");
    let topic = metadata.topics.iter().find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(TOPIC));
    topic.expect("the topic is listed").topic_id
}

/// A client of one session: the version it speaks and how it names the topic.
struct Client {
    stream: TcpStream,
    version: i16,
    id: uuid::Uuid,
    /// The whole response's limit.
    max_bytes: i32,
}

/// What one answer said: (top-level error, session id, [(partition, record bytes, high watermark)]).
type Answer = (i16, i32, Vec<(i32, usize, i64)>);

impl Client {
    fn fetch(&mut self, session: (i32, i32), wanted: &[(i32, i64)], forgotten: &[i32]) -> Answer {
        let name = TopicName(StrBytes::from_static_str(TOPIC));
        let partitions = wanted
            .iter()
            .map(|&(partition, offset)| {
                FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        let topics = if wanted.is_empty() {
            Vec::new()
        } else {
            vec![
                FetchTopic::default()
                    .with_topic(name.clone())
                    .with_topic_id(self.id)
                    .with_partitions(partitions),
            ]
        };
        let forgotten = if forgotten.is_empty() {
            Vec::new()
        } else {
            let topic = ForgottenTopic::default().with_topic(name).with_topic_id(self.id);
            vec![topic.with_partitions(forgotten.to_vec())]
        };
        let request = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(self.max_bytes)
            .with_session_id(session.0)
            .with_session_epoch(session.1)
            .with_topics(topics)
            .with_forgotten_topics_data(forgotten);
        self.stream.write_all(&request_frame(ApiKey::Fetch, self.version, 7, &request)).expect("send");
        let mut response = read_response(&mut self.stream);
        ResponseHeader::decode(&mut response, ApiKey::Fetch.response_header_version(self.version))
            .expect("head");
        let response = FetchResponse::decode(&mut response, self.version).expect("fetch response");
        let partitions = response
            .responses
            .iter()
            .flat_map(|topic| {
                if self.version >= 13 {
                    assert_eq!(topic.topic_id, self.id, "topics are named by id");
                } else {
                    assert_eq!(topic.topic.as_str(), TOPIC, "topics are named by name");
                }
                topic.partitions.iter()
            })
            .map(|p| (p.partition_index, p.records.as_ref().map_or(0, |r| r.len()), p.high_watermark))
            .collect();
        (response.error_code, response.session_id, partitions)
    }
}

fn named(answer: &Answer) -> Vec<i32> {
    answer.2.iter().map(|&(partition, _, _)| partition).collect()
}

#[test]
fn incremental_fetches_name_only_what_changed() {
    let broker = Broker::start(&["--cores", "2", "--set", "num_partitions=3"]);
    for partition in 0..3 {
        produce(&broker, partition, 10);
    }
    let mut stream = broker.connect();
    let id = topic_id(&mut stream);
    for version in [7, 12, 13, 16] {
        let mut client = Client { stream: broker.connect(), version, id, max_bytes: 50 << 20 };

        // A full fetch opens a session and names every partition.
        let opened = client.fetch((0, 0), &[(0, 0), (1, 0), (2, 0)], &[]);
        let session = opened.1;
        assert_eq!(opened.0, 0, "v{version}");
        assert_ne!(session, 0, "v{version}: a session is opened");
        assert_eq!(named(&opened), [0, 1, 2], "v{version}");
        assert!(opened.2.iter().all(|&(_, bytes, hw)| bytes > 0 && hw >= 10), "v{version}: {opened:?}");
        let mut ends: Vec<i64> = opened.2.iter().map(|&(_, _, hw)| hw).collect();

        // Every position moved to the end: nothing new, so the answer names no partition.
        let moved = client.fetch((session, 1), &[(0, ends[0]), (1, ends[1]), (2, ends[2])], &[]);
        assert_eq!((moved.0, moved.1, named(&moved)), (0, session, vec![]), "v{version}");

        // New records on partition 1 only: an empty incremental request gets just partition 1.
        produce(&broker, 1, 3);
        ends[1] += 3;
        let news = client.fetch((session, 2), &[], &[]);
        assert_eq!(named(&news), [1], "v{version}");
        assert!(news.2[0].1 > 0 && news.2[0].2 == ends[1], "v{version}: records and the new high watermark");

        // Partition 1 was answered, so it went to the back: with records everywhere, the
        // session reads (and answers) 0, 2, 1.
        for partition in 0..3 {
            produce(&broker, partition, 1);
            ends[partition as usize] += 1;
        }
        let rotated = client.fetch((session, 3), &[], &[]);
        assert_eq!(named(&rotated), [0, 2, 1], "v{version}: {rotated:?}");

        // Partition 1 is forgotten: records written to it are no longer answered.
        let forgot = client.fetch((session, 4), &[(0, ends[0]), (2, ends[2])], &[1]);
        assert_eq!(named(&forgot), Vec::<i32>::new(), "v{version}: {forgot:?}");
        produce(&broker, 1, 1);
        produce(&broker, 0, 1);
        ends[0] += 1;
        let after = client.fetch((session, 5), &[], &[]);
        assert_eq!(named(&after), [0], "v{version}: {after:?}");

        // A wrong epoch and an unknown session are refused with no partitions.
        let stale = client.fetch((session, 5), &[], &[]);
        assert_eq!(
            (stale.0, stale.1, named(&stale)),
            (71, 0, vec![]),
            "INVALID_FETCH_SESSION_EPOCH v{version}"
        );
        let unknown = client.fetch((session ^ 0x5a5a, 1), &[], &[]);
        assert_eq!(unknown.0, 70, "FETCH_SESSION_ID_NOT_FOUND v{version}");

        // A sessionless full fetch (epoch -1) closes the session; it is then unknown.
        let closing = client.fetch((session, -1), &[(0, ends[0])], &[]);
        assert_eq!((closing.0, closing.1, named(&closing)), (0, 0, vec![0]), "v{version}");
        assert_eq!(client.fetch((session, 6), &[], &[]).0, 70, "v{version}: closed");
    }
}

/// A response is filled to its `max_bytes` as Kafka fills it: the first partition with records
/// has them whatever their size, each next one the whole batches that still fit.
#[test]
fn a_response_is_filled_to_its_max_bytes_with_whole_batches() {
    let broker = Broker::start(&["--cores", "2", "--set", "num_partitions=2"]);
    produce(&broker, 0, 10);
    for _ in 0..6 {
        produce(&broker, 1, 1); // one batch each: every call waits for its delivery
    }
    let mut stream = broker.connect();
    let id = topic_id(&mut stream);
    let mut client = Client { stream, version: 12, id, max_bytes: 50 << 20 };
    let sessionless = (0, -1);
    let all = client.fetch(sessionless, &[(0, 0), (1, 0)], &[]);
    let (first, second) = (all.2[0].1, all.2[1].1);
    assert!(first > 0 && second > 0, "{all:?}");

    client.max_bytes = (first + second / 2) as i32;
    let limited = client.fetch(sessionless, &[(0, 0), (1, 0)], &[]);
    assert_eq!(limited.2[0].1, first, "the first partition whole: {limited:?}");
    let partial = limited.2[1].1;
    assert!(partial > 0 && partial <= second / 2, "whole batches that fit: {limited:?} of {all:?}");
    assert_eq!(partial % (second / 6), 0, "equal batches, none cut: {limited:?} of {all:?}");

    client.max_bytes = 1;
    let tiny = client.fetch(sessionless, &[(0, 0), (1, 0)], &[]);
    assert_eq!((tiny.2[0].1, tiny.2[1].1), (first, 0), "the first partition even past the limit");
}

#[test]
fn sessions_can_be_turned_off() {
    let broker = Broker::start(&[
        "--cores",
        "1",
        "--set",
        "num_partitions=1",
        "--set",
        "max_incremental_fetch_session_cache_slots=0",
    ]);
    produce(&broker, 0, 5);
    let mut stream = broker.connect();
    let id = topic_id(&mut stream);
    let mut client = Client { stream, version: 12, id, max_bytes: 50 << 20 };
    let full = client.fetch((0, 0), &[(0, 0)], &[]);
    assert_eq!((full.0, full.1, named(&full)), (0, 0, vec![0]), "a full fetch, without a session");
}
