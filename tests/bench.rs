//! `ringmq bench` against the real broker: what it reports matches what the broker stored, its
//! JSON carries the documented fields, its files are written, and an open-loop rate is kept.
//! Correctness only: no assertion here depends on how fast this machine is.

mod common;

use common::Broker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn bench(args: &[&str]) -> Value {
    bench_with(args, &[])
}

fn bench_with(args: &[&str], more: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("bench")
        .args(args)
        .args(more)
        .arg("--json")
        .output()
        .expect("run ringmq bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ringmq bench {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("one JSON object, not {stdout:?}: {e}"))
}

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[*key];
    }
    value.as_f64().unwrap_or_else(|| panic!("{path:?} is a number in {report}"))
}

/// No warm-up, no baseline: runs that count records rather than time them.
const COUNTING: [&str; 3] = ["--warmup=0s", "--no-baseline", "--duration=60s"];

/// The sum of the partitions' high watermarks: every record the broker stored.
fn stored(broker: &Broker, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", broker.address.to_string()).create().expect("consumer");
    (0..partitions)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)
        .sum()
}

#[test]
fn produce_and_consume_report_what_the_broker_stored() {
    let broker = Broker::start(&["--cores", "2"]);
    let address = broker.address.to_string();
    let produced = bench_with(
        &[
            "produce",
            "--bootstrap",
            &address,
            "--topic",
            "counted",
            "--partitions",
            "3",
            "--records",
            "5000",
            "--record-size",
            "100",
        ],
        &COUNTING,
    );
    let records = number(&produced, &["records"]);
    assert!(records >= 5000.0, "at least the budget: {produced}");
    assert_eq!(stored(&broker, "counted", 3) as f64, records, "every acknowledged record is stored, once");
    assert_eq!(number(&produced, &["bytes"]), records * 100.0, "bytes are the record values sent");
    assert_eq!(number(&produced, &["errors"]), 0.0);

    let consumed = bench_with(
        &["consume", "--bootstrap", &address, "--topic", "counted", "--records", &records.to_string()],
        &COUNTING,
    );
    assert_eq!(
        number(&consumed, &["records"]),
        records,
        "the consumer reads every stored record: {consumed}"
    );
    // --rewind reads each partition again from its start once it reaches its end: a budget of
    // three times what is stored is met by reading everything three times (the last fetch
    // may begin a fourth round), which a reader stopping at the end never does.
    let budget = 3.0 * records;
    let reread = bench_with(
        &[
            "consume",
            "--bootstrap",
            &address,
            "--topic",
            "counted",
            "--rewind",
            "--records",
            &budget.to_string(),
        ],
        &COUNTING,
    );
    let reread_records = number(&reread, &["records"]);
    assert!(
        (budget..budget + records).contains(&reread_records),
        "three rounds of every stored record: {reread}"
    );
    assert_eq!(number(&reread, &["errors"]), 0.0);

    // Requests holding a batch for each of 3 partitions, as a Kafka client's do: 163 records
    // of 100 bytes fill a 16 KiB batch, so every request carries 489.
    let multi = bench_with(
        &["produce", "--bootstrap", &address, "--topic", "multi", "--partitions", "3", "--records", "5000"],
        &["--record-size=100", "--batches-per-request=3", COUNTING[0], COUNTING[1], COUNTING[2]],
    );
    let records = number(&multi, &["records"]);
    assert_eq!(records % 489.0, 0.0, "whole requests of three 163-record batches: {multi}");
    assert_eq!(stored(&broker, "multi", 3) as f64, records, "every acknowledged record is stored, once");
}

#[test]
fn the_json_report_has_percentiles_a_baseline_ratio_and_files_beside_it() {
    let broker = Broker::start(&["--cores", "1"]);
    let dir = tempfile::tempdir().expect("dir");
    let (hgrm, svg) = (dir.path().join("run.hgrm"), dir.path().join("run.svg"));
    let report = bench(&[
        "e2e",
        "--bootstrap",
        &broker.address.to_string(),
        "--partitions",
        "2",
        "--rate",
        "1000",
        "--warmup",
        "200ms",
        "--duration",
        "1s",
        "--baseline-dir",
        &dir.path().display().to_string(),
        "--hgrm",
        &hgrm.display().to_string(),
        "--plot",
        &svg.display().to_string(),
    ]);
    for field in ["records_per_s", "mb_per_s", "baseline_ratio"] {
        assert!(number(&report, &[field]) > 0.0, "{field} in {report}");
    }
    let percentiles: Vec<f64> = ["p50", "p90", "p99", "p99_9", "p99_99", "max"]
        .iter()
        .map(|p| number(&report, &["latency_us", p]))
        .collect();
    assert!(percentiles.windows(2).all(|w| w[0] <= w[1]) && percentiles[0] > 0.0, "{percentiles:?}");
    // e2e reports the same run's produce latency beside its own.
    assert!(number(&report, &["produce_latency_us", "count"]) > 0.0, "produce latency in {report}");
    assert!(number(&report, &["produce_latency_us", "p50"]) > 0.0, "produce latency in {report}");
    for field in ["write_mb_per_s", "read_mb_per_s", "fdatasync_us_p50", "loopback_mb_per_s"] {
        assert!(number(&report, &["baseline", field]) > 0.0, "baseline {field} in {report}");
    }
    let rows = ringmq::bench::report::parse_hgrm(&std::fs::read_to_string(&hgrm).expect("hgrm written"));
    assert!(rows.len() > 5 && rows.iter().all(|(q, _)| (0.0..=1.0).contains(q)), "{rows:?}");
    assert!(std::fs::read_to_string(&svg).expect("svg written").contains("<polyline"));
}

#[test]
fn an_open_loop_run_never_sends_ahead_of_its_schedule() {
    let broker = Broker::start(&["--cores", "1"]);
    // 2000 records/s in batches of 16 records: one batch every 8 ms, for 2 s.
    let report = bench(&[
        "produce",
        "--bootstrap",
        &broker.address.to_string(),
        "--partitions",
        "1",
        "--rate",
        "2000",
        "--record-size",
        "1024",
        "--batch-bytes",
        "16384",
        "--warmup",
        "0s",
        "--duration",
        "2s",
        "--no-baseline",
    ]);
    let records = number(&report, &["records"]);
    assert!(records <= 2.0 * 2000.0 + 16.0, "the schedule bounds what is sent: {report}");
    assert!(records >= 2000.0, "and a loaded machine still keeps at least half of it: {report}");
}
