//! `ringmq topic …` and `ringmq group …` against a real broker: every subcommand, its table
//! and its JSON.

mod common;

use common::Broker;
use serde_json::Value;
use std::process::Command;

/// Runs `ringmq topic ARGS --bootstrap <broker>`: (success, stdout, stderr).
fn topic(broker: &Broker, args: &[&str]) -> (bool, String, String) {
    ringmq(broker, "topic", args)
}

fn ringmq(broker: &Broker, command: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg(command)
        .args(args)
        .args(["--bootstrap", &broker.address.to_string()])
        .output()
        .expect("run ringmq topic");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (output.status.success(), text(output.stdout), text(output.stderr))
}

fn json(broker: &Broker, args: &[&str]) -> Value {
    json_of(broker, "topic", args)
}

fn json_of(broker: &Broker, command: &str, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (ok, stdout, stderr) = ringmq(broker, command, &with_json);
    assert!(ok, "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"))
}

#[test]
fn topics_are_created_listed_described_altered_grown_and_deleted() {
    let broker = Broker::start(&["--cores", "2"]);
    let (ok, table, stderr) =
        topic(&broker, &["create", "orders", "--partitions", "3", "--config", "retention.ms=60000"]);
    assert!(ok, "{stderr}");
    assert_eq!(table, "TOPIC   PARTITIONS  REPLICATION  STATUS\norders  3           1            created\n");

    let listed = json(&broker, &["list"]);
    assert_eq!(listed, serde_json::json!([{"topic": "orders", "partitions": 3, "internal": false}]));
    let all = json(&broker, &["list", "--internal"]);
    assert_eq!(all.as_array().map(Vec::len), Some(3), "the two internal topics too: {all}");
    let (_, table, _) = topic(&broker, &["list"]);
    assert!(table.starts_with("TOPIC   PARTITIONS  INTERNAL\norders  3           false\n"), "{table}");

    common::produce_all(&broker, "orders", 0..30);
    let described = json(&broker, &["describe", "orders"]);
    assert_eq!(described["configs"]["retention.ms"], "60000");
    let partitions = described["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 3);
    assert!(partitions.iter().all(|p| p["leader"] == 0 && p["replicas"] == serde_json::json!([0])));
    let stored: i64 = partitions.iter().map(|p| p["high_watermark"].as_i64().expect("offset")).sum();
    assert_eq!(stored, 30);
    let (_, table, _) = topic(&broker, &["describe", "orders"]);
    assert!(table.contains("PARTITION  LEADER  REPLICAS  ISR  LOG-START  HIGH-WATERMARK"), "{table}");
    assert!(table.contains("retention.ms = 60000"), "{table}");

    json(&broker, &["alter-config", "orders", "--set", "retention.ms=120000", "--set", "segment.ms=600000"]);
    let described = json(&broker, &["describe", "orders"]);
    assert_eq!(described["configs"]["retention.ms"], "120000");
    assert_eq!(described["configs"]["segment.ms"], "600000");
    json(&broker, &["alter-config", "orders", "--delete", "segment.ms"]);
    assert_eq!(json(&broker, &["describe", "orders"])["configs"].get("segment.ms"), None);

    json(&broker, &["add-partitions", "orders", "--count", "5"]);
    assert_eq!(json(&broker, &["describe", "orders"])["partitions"].as_array().map(Vec::len), Some(5));

    json(&broker, &["delete", "orders"]);
    assert_eq!(json(&broker, &["list"]), serde_json::json!([]));
}

#[test]
fn refusals_name_the_kafka_error_and_exit_non_zero() {
    let broker = Broker::start(&[]);
    let (ok, _, stderr) = topic(&broker, &["describe", "missing"]);
    assert!(!ok);
    assert!(stderr.contains("UnknownTopicOrPartition"), "{stderr}");
    let (ok, _, stderr) = topic(&broker, &["create", "bad", "--partitions", "0"]);
    assert!(!ok);
    assert!(stderr.contains("InvalidPartitions"), "{stderr}");
    topic(&broker, &["create", "twice"]);
    let (ok, _, stderr) = topic(&broker, &["create", "twice"]);
    assert!(!ok);
    assert!(stderr.contains("TopicAlreadyExists"), "{stderr}");
    let (ok, _, stderr) = topic(&broker, &["alter-config", "twice"]);
    assert!(!ok && stderr.contains("nothing to change"), "{stderr}");
}

#[test]
fn groups_are_listed_described_with_lag_reset_and_deleted() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let broker = Broker::start(&["--set", "num_partitions=2", "--set", "group_initial_rebalance_delay_ms=0"]);
    common::produce_all(&broker, "events", 0..100);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("group.id", "readers")
        .set("client.id", "reader-1")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["events"]).expect("subscribe");
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while consumer.assignment().map_or(0, |a| a.count()) < 2 && std::time::Instant::now() < give_up {
        consumer.poll(std::time::Duration::from_millis(100));
    }
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset("events", 0, Offset::Offset(10)).expect("offset");
    offsets.add_partition_offset("events", 1, Offset::Offset(20)).expect("offset");
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");

    let listed = json_of(&broker, "group", &["list"]);
    assert_eq!(
        listed,
        serde_json::json!([{"group": "readers", "state": "Stable", "protocol_type": "consumer"}])
    );
    let described = json_of(&broker, "group", &["describe", "readers"]);
    assert_eq!(described["state"], "Stable");
    let partitions = described["partitions"].as_array().expect("partitions");
    let lag: i64 = partitions.iter().map(|p| p["lag"].as_i64().expect("lag")).sum();
    assert_eq!(lag, 100 - 30);
    assert!(partitions.iter().all(|p| p["member_id"].as_str().is_some_and(|m| !m.is_empty())), "{described}");
    let (_, table, _) = ringmq(&broker, "group", &["describe", "readers"]);
    assert!(table.contains("reader-1"), "the client id of the owner: {table}");
    let (ok, _, stderr) = ringmq(
        &broker,
        "group",
        &["reset-offsets", "readers", "--topic", "events", "--to-earliest", "--execute"],
    );
    assert!(!ok && stderr.contains("Stable"), "refused while members are in: {stderr}");

    drop(consumer);
    let wait = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while json_of(&broker, "group", &["describe", "readers"])["state"] != "Empty"
        && std::time::Instant::now() < wait
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let dry = json_of(&broker, "group", &["reset-offsets", "readers", "--topic", "events", "--to-latest"]);
    assert_eq!(dry["executed"], false);
    let after_dry = json_of(&broker, "group", &["describe", "readers"]);
    assert_eq!(after_dry["partitions"][0]["committed_offset"], 10, "a dry run changes nothing");
    json_of(
        &broker,
        "group",
        &["reset-offsets", "readers", "--topic", "events", "--to-offset", "3", "--execute"],
    );
    let reset = json_of(&broker, "group", &["describe", "readers"]);
    assert!(
        reset["partitions"].as_array().expect("partitions").iter().all(|p| p["committed_offset"] == 3),
        "{reset}"
    );
    json_of(&broker, "group", &["delete", "readers"]);
    assert_eq!(json_of(&broker, "group", &["list"]), serde_json::json!([]));
}

#[test]
fn cluster_info_names_the_broker_and_nothing_needs_attention() {
    let broker = Broker::start(&[]);
    topic(&broker, &["create", "small", "--partitions", "2"]);
    let info = json_of(&broker, "cluster", &["info"]);
    assert_eq!(info["brokers"][0]["id"], 0);
    assert_eq!(info["brokers"][0]["port"], broker.address.port());
    assert_eq!(info["controller"], 0);
    assert_eq!(info["leaderless"], serde_json::json!([]));
    assert_eq!(info["under_replicated"], serde_json::json!([]));
    assert_eq!(info["partitions"], 2 + 16 + 16, "the internal topics' partitions too");
    let (ok, table, _) = ringmq(&broker, "cluster", &["info"]);
    assert!(ok && table.contains("under-replicated partitions: none"), "{table}");
}
