//! The admin listener of a real broker: `/metrics` counters move with what librdkafka produced
//! and fetched (Fetch copies no record byte), consumer lag follows commits, and `/health`,
//! `/ready` and bad requests are answered as they should be.

mod common;

use common::{Broker, assigned_from_start, http, metric_sum as sum, produce_all, scrape};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

#[test]
fn metrics_follow_what_was_produced_and_fetched() {
    let broker = Broker::start(&["--cores", "2", "--set", "num_partitions=4"]);
    produce_all(&broker, "metered", 0..2000);
    let before = scrape(&broker);
    assert_eq!(sum(&before, "ringmq_topic_produced_records_total", &["topic=\"metered\""]), 2000.0);
    assert_eq!(sum(&before, "ringmq_high_watermark", &["topic=\"metered\""]), 2000.0);
    let produced_bytes = sum(&before, "ringmq_topic_produced_bytes_total", &["topic=\"metered\""]);
    assert!(produced_bytes > 2000.0 * 4.0, "{produced_bytes} bytes of batches");
    let produces = sum(&before, "ringmq_requests_total", &["api=\"Produce\""]);
    assert!(produces >= 1.0);
    assert_eq!(sum(&before, "ringmq_request_duration_seconds_count", &["api=\"Produce\""]), produces);
    let writes = sum(&before, "ringmq_disk_writes_total", &[]);
    assert!(writes >= 1.0);
    let timed = sum(&before, "ringmq_disk_write_duration_seconds_count", &[]);
    assert!(timed >= 1.0 && timed <= writes, "{timed} of {writes} writes timed (some may be in flight)");
    assert!(sum(&before, "ringmq_log_size_bytes", &["topic=\"metered\""]) >= produced_bytes);

    let consumer = assigned_from_start(&broker, "metered", 4);
    let (mut read, give_up) = (0, Instant::now() + Duration::from_secs(60));
    while read < 2000 && Instant::now() < give_up {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.expect("message");
            read += 1;
        }
    }
    assert_eq!(read, 2000);
    let after = scrape(&broker);
    let fetched = sum(&after, "ringmq_topic_fetched_bytes_total", &["topic=\"metered\""]);
    assert!(fetched >= produced_bytes, "fetched {fetched} of {produced_bytes} bytes");
    let sent = sum(&after, "ringmq_fetch_record_bytes_total", &[])
        - sum(&before, "ringmq_fetch_record_bytes_total", &[]);
    assert!(sent >= produced_bytes, "{sent} record bytes sent by Fetch");
    let copied = |samples| sum(samples, "ringmq_log_read_copied_bytes_total", &[]);
    assert_eq!(copied(&after) - copied(&before), 0.0, "Fetch copies no record byte");
    assert!(sum(&after, "ringmq_network_sent_bytes_total", &[]) > sent);
    assert!(sum(&after, "ringmq_connections", &[]) >= 1.0);
}

#[test]
fn consumer_lag_follows_commits() {
    let broker = Broker::start(&["--set", "num_partitions=2"]);
    produce_all(&broker, "lagged", 0..500);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("group.id", "behind")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    for partition in 0..2 {
        offsets.add_partition_offset("lagged", partition, Offset::Offset(100)).expect("offset");
    }
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    let samples = scrape(&broker);
    let lag = sum(&samples, "ringmq_consumer_group_lag", &["group=\"behind\"", "topic=\"lagged\""]);
    assert_eq!(lag, 500.0 - 200.0);
}

#[test]
fn health_readiness_and_bad_requests() {
    let broker = Broker::start(&[]);
    assert_eq!(http(&broker, "GET /health HTTP/1.1\r\n\r\n").0, 200);
    assert_eq!(http(&broker, "GET /ready HTTP/1.0\r\n\r\n"), (200, "ready\n".to_string()));
    assert_eq!(http(&broker, "GET /nothing-here HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&broker, "POST /metrics HTTP/1.1\r\n\r\n").0, 400);
    assert_eq!(http(&broker, "\u{1}\u{2}garbage\r\n\r\n").0, 400);
    let oversized = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_ne!(http(&broker, &oversized).0, 200, "a head over 8 KiB is refused");
    assert_eq!(http(&broker, "GET /health HTTP/1.1\r\n\r\n").0, 200, "the listener still answers");
}

/// The broker's stderr with `flags`, from start to a SIGTERM once it is ready.
fn logs_with(flags: &[&str]) -> String {
    let data = tempfile::tempdir().expect("data dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--data-dir",
        ])
        .arg(data.path())
        .args(flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ringmq serve");
    let lines = common::lines_of(child.stdout.take().expect("stdout"));
    lines.recv_timeout(Duration::from_secs(30)).expect("the broker reports ready");
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().expect("the broker exits");
    String::from_utf8(output.stderr).expect("utf-8")
}

#[test]
fn logs_follow_the_level_and_format_flags() {
    let json = logs_with(&["--log-level", "debug", "--log-format", "json"]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(events.iter().any(|e| e["level"] == "DEBUG"), "debug events at --log-level debug: {json}");
    assert!(events.iter().all(|e| e["fields"]["message"].is_string() && e["target"].is_string()));
    let quiet = logs_with(&["--log-level", "warn"]);
    assert!(!quiet.contains("DEBUG") && !quiet.contains("INFO"), "nothing below warn: {quiet}");
}
