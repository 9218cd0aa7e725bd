//! Brokers forming a cluster around a controller quorum (openraft), as real processes on
//! loopback: registration, heartbeats and fencing, leader loss, restarts, and a second process
//! claiming a live node id.

mod common;

use common::Broker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// A port free on loopback now, for a controller address every node must know up front.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

fn voters(ids: &[i32]) -> String {
    ids.iter().map(|id| format!("{id}@127.0.0.1:{}", free_port())).collect::<Vec<_>>().join(",")
}

/// Starts node `id` of the cluster whose quorum is `voters`, on `data` if given.
fn node(id: i32, voters: &str, data: Option<tempfile::TempDir>) -> Broker {
    let id = id.to_string();
    let args = [
        "--cores",
        "1",
        "--node-id",
        &id,
        "--controllers",
        voters,
        "--set",
        "broker_heartbeat_interval_ms=100",
        "--set",
        "broker_session_timeout_ms=1000",
    ];
    match data {
        Some(data) => Broker::start_in(data, &args),
        None => Broker::start(&args),
    }
}

/// `ringmq cluster info --json` asked of `broker`: DescribeCluster and Metadata over the wire.
fn cluster_info(broker: &Broker) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["cluster", "info", "--json", "--bootstrap", &broker.address.to_string()])
        .output()
        .expect("run ringmq cluster info");
    assert!(output.status.success(), "cluster info: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// The brokers `info` lists, id to port.
fn brokers(info: &Value) -> BTreeMap<i64, i64> {
    let listed = info["brokers"].as_array().expect("brokers");
    listed.iter().map(|b| (b["id"].as_i64().expect("id"), b["port"].as_i64().expect("port"))).collect()
}

/// Waits until every broker in `asked` lists exactly `expected` (id to Kafka port) and names
/// the same controller; returns that controller and the cluster id.
fn agreed(asked: &[&Broker], expected: &BTreeMap<i64, i64>) -> (i64, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let infos: Vec<Value> = asked.iter().map(|broker| cluster_info(broker)).collect();
        let controllers: Vec<i64> =
            infos.iter().map(|info| info["controller"].as_i64().expect("controller")).collect();
        let ids: Vec<&str> =
            infos.iter().map(|info| info["cluster_id"].as_str().expect("cluster id")).collect();
        let agree = infos.iter().all(|info| brokers(info) == *expected)
            && controllers.iter().all(|c| *c == controllers[0] && expected.contains_key(c))
            && ids.iter().all(|id| *id == ids[0]);
        if agree {
            return (controllers[0], ids[0].to_string());
        }
        assert!(Instant::now() < deadline, "no agreement on {expected:?}: {infos:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listing(nodes: &BTreeMap<i32, Broker>) -> BTreeMap<i64, i64> {
    nodes.iter().map(|(id, broker)| (i64::from(*id), i64::from(broker.address.port()))).collect()
}

#[test]
fn a_three_voter_quorum_fences_a_lost_leader_and_takes_back_restarted_nodes() {
    let quorum = voters(&[1, 2, 3]);
    let mut nodes: BTreeMap<i32, Broker> = (1..=3).map(|id| (id, node(id, &quorum, None))).collect();
    let all: Vec<&Broker> = nodes.values().collect();
    let (controller, cluster_id) = agreed(&all, &listing(&nodes));

    // A Kafka client sees every broker, whichever one it bootstraps from.
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", nodes[&2].address.to_string())
        .set("group.id", "cluster-test")
        .create()
        .expect("consumer");
    let metadata = client.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut seen: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3]);

    // The active controller dies: the others elect one of themselves and fence it.
    let lost = i32::try_from(controller).expect("node id");
    let lost_data = nodes.remove(&lost).expect("the controller is a node").kill();
    let survivors: Vec<&Broker> = nodes.values().collect();
    let (successor, id_after) = agreed(&survivors, &listing(&nodes));
    assert_ne!(successor, controller);
    assert_eq!(id_after, cluster_id);

    // It comes back on its data directory (on a new Kafka port) and is listed again.
    nodes.insert(lost, node(lost, &quorum, Some(lost_data)));
    let all: Vec<&Broker> = nodes.values().collect();
    agreed(&all, &listing(&nodes));

    // Every node dies at once; the quorum's log brings the same cluster back.
    let data: Vec<(i32, tempfile::TempDir)> =
        std::mem::take(&mut nodes).into_iter().map(|(id, broker)| (id, broker.kill())).collect();
    for (id, data) in data {
        nodes.insert(id, node(id, &quorum, Some(data)));
    }
    let all: Vec<&Broker> = nodes.values().collect();
    let (_, id_after_restart) = agreed(&all, &listing(&nodes));
    assert_eq!(id_after_restart, cluster_id, "the cluster id lives in the replicated log");
}

#[test]
fn a_broker_outside_the_quorum_joins_and_a_live_node_id_is_not_taken() {
    let quorum = voters(&[1]);
    let controller = node(1, &quorum, None);
    let first = node(7, &quorum, None);
    let expected =
        BTreeMap::from([(1, i64::from(controller.address.port())), (7, i64::from(first.address.port()))]);
    agreed(&[&controller, &first], &expected);

    // A second process claims node 7 while the first heartbeats: it is refused, and the
    // cluster keeps pointing clients at the first.
    let second = node(7, &quorum, None);
    let refused_for = Instant::now();
    while refused_for.elapsed() < Duration::from_millis(1500) {
        assert_eq!(brokers(&cluster_info(&controller)), expected);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Once the first is gone and its session expires, the second takes the id.
    drop(first.kill());
    let expected =
        BTreeMap::from([(1, i64::from(controller.address.port())), (7, i64::from(second.address.port()))]);
    agreed(&[&controller, &second], &expected);

    // A clustered broker still stops cleanly on SIGTERM.
    let (clean, _) = second.terminate();
    assert!(clean, "SIGTERM stops a clustered broker with every log closed");
}
