//! `ringmq produce` and `ringmq consume` against a real broker, cross-checked with librdkafka:
//! what produce writes (keys, values, headers, partitions) is what librdkafka reads and where
//! its murmur2 partitioner puts the same keys; consume prints what librdkafka wrote, in each
//! format, from each kind of start.

mod common;

use common::{Broker, assigned_from_start};
use futures_lite::future::block_on;
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `ringmq COMMAND ARGS --bootstrap <broker>` with `input` on stdin: (success, stdout, stderr).
fn ringmq(broker: &Broker, command: &str, args: &[&str], input: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg(command)
        .args(args)
        .args(["--bootstrap", &broker.address.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringmq");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    let output = child.wait_with_output().expect("ringmq ran");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (output.status.success(), text(output.stdout), text(output.stderr))
}

/// Every record of `topic` as librdkafka reads it: (partition, key, value, headers).
fn read_back(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<(i32, String, String, String)> {
    let consumer: BaseConsumer = assigned_from_start(broker, topic, partitions);
    let mut records = Vec::new();
    while records.len() < count {
        let message =
            consumer.poll(Duration::from_secs(10)).expect("a record within 10 s").expect("no error");
        let text =
            |bytes: Option<&[u8]>| String::from_utf8(bytes.unwrap_or_default().to_vec()).expect("utf-8");
        let headers = message.headers().map_or_else(String::new, |headers| {
            headers.iter().map(|h| format!("{}={}", h.key, text(h.value))).collect::<Vec<_>>().join(",")
        });
        records.push((message.partition(), text(message.key()), text(message.payload()), headers));
    }
    records.sort();
    records
}

#[test]
fn produce_writes_lines_as_records_where_kafkas_partitioner_would() {
    let broker = Broker::start(&["--cores", "2", "--set", "num_partitions=5"]);
    let lines: String = (0..200).map(|i| format!("user-{i}:event {i}\n")).collect();
    let (ok, stdout, stderr) = ringmq(
        &broker,
        "produce",
        &["clicks", "--key-separator", ":", "--header", "source=cli", "--compression", "zstd", "--json"],
        lines.as_bytes(),
    );
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["records"], 200, "{report}");

    // The same keys through librdkafka's murmur2 partitioner (the Java client's) land on the
    // same partitions.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("partitioner", "murmur2")
        .create()
        .expect("producer");
    let mut expected = BTreeMap::new();
    for i in 0..200 {
        let key = format!("user-{i}");
        let delivery = producer.send_result(FutureRecord::to("clicks-rdkafka").key(&key).payload("x"));
        let delivered = block_on(delivery.map_err(|(e, _)| e).expect("enqueue"))
            .expect("report")
            .map_err(|(e, _)| e)
            .expect("delivered");
        expected.insert(key, delivered.partition);
    }
    let records = read_back(&broker, "clicks", 5, 200);
    for (partition, key, value, headers) in &records {
        assert_eq!(Some(partition), expected.get(key), "{key} lands where Kafka's partitioner puts it");
        assert_eq!(value, &format!("event {}", &key[5..]));
        assert_eq!(headers, "source=cli");
    }
    assert_eq!(records.len(), 200);

    // Keyless lines into one partition; an unknown partition is refused before anything is sent.
    let (ok, stdout, _) = ringmq(&broker, "produce", &["clicks", "--partition", "3"], b"a\nb\nc\n");
    assert!(ok);
    assert_eq!(stdout, "produced 3 records to clicks (partition: records 3: 3)\n");
    let (ok, _, stderr) = ringmq(&broker, "produce", &["clicks", "--partition", "9"], b"a\n");
    assert!(!ok && stderr.contains("no partition 9"), "{stderr}");
}

#[test]
fn consume_prints_records_in_each_format_from_each_start() {
    let broker = Broker::start(&["--cores", "2"]);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("compression.codec", "lz4")
        .create()
        .expect("producer");
    for i in 0..50i64 {
        let headers = OwnedHeaders::new().insert(Header { key: "n", value: Some(&i.to_string()) });
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        let record = FutureRecord::to("looked")
            .partition(0)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(1_000 + i);
        block_on(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"))
            .expect("report")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    let consume = |args: &[&str]| {
        let mut all = vec!["looked"];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = ringmq(&broker, "consume", &all, b"");
        assert!(ok, "{args:?}: {stderr}");
        stdout
    };

    let everything = consume(&[]);
    assert_eq!(everything.lines().count(), 50, "stops at the end by default");
    assert!(everything.starts_with("v0\nv1\n"), "the value alone by default: {everything}");

    let formatted = consume(&["--format", "%t %p %o %T %k=%s [%h] %K/%S\\n", "--offset", "-2"]);
    assert_eq!(formatted, "looked 0 48 1048 k48=v48 [n=48] 3/3\nlooked 0 49 1049 k49=v49 [n=49] 3/3\n");

    let from_offset = consume(&["--offset", "10", "--count", "3"]);
    assert_eq!(from_offset, "v10\nv11\nv12\n");
    let from_time = consume(&["--offset", "@1045"]);
    assert_eq!(from_time, "v45\nv46\nv47\nv48\nv49\n");
    assert_eq!(consume(&["--offset", "end"]), "", "nothing after the end");

    let lines = consume(&["--json", "--count", "1", "--offset", "7", "--partition", "0"]);
    let record: Value = serde_json::from_str(lines.trim_end()).expect("one JSON object per record");
    assert_eq!(
        record,
        serde_json::json!({"topic": "looked", "partition": 0, "offset": 7, "timestamp": 1007,
            "key": "k7", "value": "v7", "headers": {"n": "7"}})
    );

    let (ok, _, stderr) = ringmq(&broker, "consume", &["looked", "--format", "%q"], b"");
    assert!(!ok && stderr.contains("unknown token %q"), "{stderr}");
    let (ok, _, stderr) = ringmq(&broker, "consume", &["missing-topic"], b"");
    assert!(!ok && stderr.contains("UnknownTopicOrPartition"), "{stderr}");
}
