//! `ringmq topic …` against a real broker: every subcommand, its table and its JSON.

mod common;

use common::Broker;
use serde_json::Value;
use std::process::Command;

/// Runs `ringmq topic ARGS --bootstrap <broker>`: (success, stdout, stderr).
fn topic(broker: &Broker, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("topic")
        .args(args)
        .args(["--bootstrap", &broker.address.to_string()])
        .output()
        .expect("run ringmq topic");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (output.status.success(), text(output.stdout), text(output.stderr))
}

fn json(broker: &Broker, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (ok, stdout, stderr) = topic(broker, &with_json);
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
