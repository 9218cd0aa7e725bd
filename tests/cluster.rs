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

fn voters(ids: &[i32]) -> String {
    ids.iter().map(|id| format!("{id}@127.0.0.1:{}", common::reserved_port())).collect::<Vec<_>>().join(",")
}

/// A node killed (SIGKILL): its Kafka address and data directory, to restart it on.
type Killed = (std::net::SocketAddr, tempfile::TempDir);

fn kill(broker: Broker) -> Killed {
    (broker.address, broker.kill())
}

/// Starts node `id` of the cluster whose quorum is `voters`; a killed node again on its
/// address and data, as an operator restarts a broker.
fn node(id: i32, voters: &str, killed: Option<Killed>) -> Broker {
    node_with_session(id, voters, killed, 1000)
}

fn node_with_session(id: i32, voters: &str, killed: Option<Killed>, session_ms: u64) -> Broker {
    node_with(id, voters, killed, session_ms, &[])
}

/// `node_with_session` with `extra` flags for `ringmq serve`.
fn node_with(id: i32, voters: &str, killed: Option<Killed>, session_ms: u64, extra: &[&str]) -> Broker {
    let id = id.to_string();
    let session = format!("broker_session_timeout_ms={session_ms}");
    // Restarts come back where they were: outside the ephemeral range, so nothing else took it.
    let listen = match &killed {
        Some((address, _)) => address.to_string(),
        None => format!("127.0.0.1:{}", common::reserved_port()),
    };
    let mut args = vec![
        "--cores",
        "1",
        "--node-id",
        &id,
        "--controllers",
        voters,
        "--set",
        "broker_heartbeat_interval_ms=100",
        "--set",
        &session,
        "--listen",
        &listen,
    ];
    args.extend(extra);
    match killed {
        Some((_, data)) => Broker::start_in(data, &args),
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
    // /metrics: one active controller, three live brokers, seen alike from every broker.
    let gauge = |broker: &Broker, name: &str| common::scrape(broker).get(name).copied().unwrap_or(-1.0);
    let active: Vec<f64> =
        all.iter().map(|broker| gauge(broker, "ringmq_cluster_active_controller")).collect();
    assert_eq!(active.iter().sum::<f64>(), 1.0, "{active:?}");
    assert!(all.iter().all(|broker| gauge(broker, "ringmq_cluster_brokers") == 3.0));

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
    let lost_data = kill(nodes.remove(&lost).expect("the controller is a node"));
    let survivors: Vec<&Broker> = nodes.values().collect();
    let (successor, id_after) = agreed(&survivors, &listing(&nodes));
    assert_ne!(successor, controller);
    assert_eq!(id_after, cluster_id);
    let successor_node = &nodes[&i32::try_from(successor).expect("node id")];
    assert_eq!(gauge(successor_node, "ringmq_cluster_active_controller"), 1.0);
    assert_eq!(gauge(successor_node, "ringmq_cluster_fenced_brokers"), 1.0);

    // It comes back on its data directory (on a new Kafka port) and is listed again.
    nodes.insert(lost, node(lost, &quorum, Some(lost_data)));
    let all: Vec<&Broker> = nodes.values().collect();
    agreed(&all, &listing(&nodes));

    // Every node dies at once; the quorum's log brings the same cluster back.
    let data: Vec<(i32, Killed)> =
        std::mem::take(&mut nodes).into_iter().map(|(id, broker)| (id, kill(broker))).collect();
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

/// How many distinct keys of `topic` a member of consumer group `group` reads, until it has
/// `count` or `patience` passes; its offsets are committed on the way out.
fn group_read(bootstrap: &str, group: &str, topic: &str, count: usize, patience: Duration) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut keys = std::collections::BTreeSet::new();
    let deadline = Instant::now() + patience;
    while keys.len() < count && Instant::now() < deadline {
        // Failed connections to a killed broker are reported, and polled past.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            keys.extend(rdkafka::Message::key(&message).map(|k| String::from_utf8_lossy(k).into_owned()));
        }
    }
    if keys.len() == count {
        // The group's coordinator may be a broker just killed: the commit waits until its
        // offsets partition's new leader has read it. NoOffset: the automatic commit already
        // committed these positions.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) {
                break;
            }
            assert!(Instant::now() < deadline, "commit: {error}");
            let _ = consumer.poll(Duration::from_millis(100));
        }
    }
    keys.len()
}

/// Three voters agreeing on their cluster, with `topic` created through node 1 (`ringmq topic
/// create` with `options`) and every node seeing each of its `partitions` led by the same
/// live broker: the quorum, the nodes by id, and each partition's leader.
fn cluster_with_topic(
    topic: &str,
    partitions: usize,
    options: &[&str],
) -> (String, BTreeMap<i32, Broker>, Vec<i32>) {
    let quorum = voters(&[1, 2, 3]);
    let nodes: BTreeMap<i32, Broker> = (1..=3).map(|id| (id, node(id, &quorum, None))).collect();
    agreed(&nodes.values().collect::<Vec<_>>(), &listing(&nodes));
    let (count, bootstrap) = (partitions.to_string(), nodes[&1].address.to_string());
    let mut create = vec!["topic", "create", topic, "--partitions", &count, "--bootstrap", &bootstrap];
    create.extend(options);
    ringmq(&create);
    let placed = await_leaders(&nodes[&1], topic, |leaders| {
        leaders.len() == partitions && leaders.iter().all(|l| *l > 0)
    });
    for broker in nodes.values() {
        await_leaders(broker, topic, |leaders| leaders == placed.as_slice());
    }
    (quorum, nodes, placed)
}

/// What `read` takes from each partition of `topic`, as a Kafka client bootstrapped from
/// `broker` sees it.
fn partitions<T>(
    broker: &Broker,
    topic: &str,
    read: fn(&rdkafka::metadata::MetadataPartition) -> T,
) -> Vec<T> {
    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", broker.address.to_string()).create().expect("client");
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    metadata.topics()[0].partitions().iter().map(read).collect()
}

/// Waits (up to `patience`) until what `read` takes from the partitions of `topic`, as
/// `broker` shows them, is `expected`.
fn await_partitions<T: std::fmt::Debug>(
    broker: &Broker,
    topic: &str,
    read: fn(&rdkafka::metadata::MetadataPartition) -> T,
    expected: impl Fn(&[T]) -> bool,
    patience: Duration,
) -> Vec<T> {
    let deadline = Instant::now() + patience;
    loop {
        let found = partitions(broker, topic, read);
        if expected(&found) {
            return found;
        }
        assert!(Instant::now() < deadline, "partitions of {topic} stayed {found:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `broker` shows in-sync replicas of `topic` that are `expected`.
fn await_isrs(broker: &Broker, topic: &str, expected: impl Fn(&[Vec<i32>]) -> bool) -> Vec<Vec<i32>> {
    await_partitions(broker, topic, |p| p.isr().to_vec(), expected, Duration::from_secs(60))
}

/// Waits until `broker` shows `topic` with `expected` leaders (by partition).
fn await_leaders(broker: &Broker, topic: &str, expected: impl Fn(&[i32]) -> bool) -> Vec<i32> {
    await_partitions(broker, topic, |p| p.leader(), expected, Duration::from_secs(30))
}

/// ListOffsets (latest) for one partition, asked of `broker` directly: (error code, offset).
fn latest_offset(broker: &Broker, topic: &'static str, partition: i32) -> (i16, i64) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{
        ApiKey, ListOffsetsRequest, ListOffsetsResponse, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use std::io::Write;
    let wanted = ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(-1);
    let topic = ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_static_str(topic)))
        .with_partitions(vec![wanted]);
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![topic]);
    let mut stream = broker.connect();
    stream.write_all(&common::request_frame(ApiKey::ListOffsets, 5, 1, &request)).expect("send");
    let mut response = common::read_response(&mut stream);
    ResponseHeader::decode(&mut response, ApiKey::ListOffsets.response_header_version(5)).expect("header");
    let response = ListOffsetsResponse::decode(&mut response, 5).expect("decode");
    let answer = &response.topics[0].partitions[0];
    (answer.error_code, answer.offset)
}

fn ringmq(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq")).args(args).output().expect("run ringmq");
    assert!(output.status.success(), "ringmq {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn topics_are_placed_across_the_brokers_and_kafka_clients_follow_them() {
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    // Created through one broker, the topic's partitions are spread over all three.
    let (quorum, mut nodes, placed) = cluster_with_topic("spread", 6, &[]);
    for broker in 1..=3 {
        assert_eq!(placed.iter().filter(|l| **l == broker).count(), 2, "two partitions each: {placed:?}");
    }
    // A broker that does not lead a partition says so, and the leader answers for it.
    let elsewhere = nodes.keys().copied().find(|id| *id != placed[0]).expect("another broker");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until its next heartbeat brings the topic, the broker does not know it.
        match latest_offset(&nodes[&elsewhere], "spread", 0).0 {
            NOT_LEADER_OR_FOLLOWER => break,
            UNKNOWN_TOPIC_OR_PARTITION if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => panic!("broker {elsewhere} answered {other} for a partition it does not lead"),
        }
    }

    // librdkafka, bootstrapped from one broker, writes to every leader; a consumer group
    // bootstrapped from another reads everything back through the group's coordinator.
    let written = common::produce_all(&nodes[&2], "spread", 0..300);
    let mut per_partition = [0i64; 6];
    for (partition, _) in &written {
        per_partition[*partition as usize] += 1;
    }
    assert!(per_partition.iter().all(|count| *count > 0), "keys reach every partition: {per_partition:?}");
    assert_eq!(latest_offset(&nodes[&placed[0]], "spread", 0), (0, per_partition[0]));
    let read =
        group_read(&nodes[&3].address.to_string(), "spread-readers", "spread", 300, Duration::from_secs(60));
    assert_eq!(read, 300, "every record read once through the group");

    // The leader of partition 0 dies: its partitions have no leader (one replica, no unclean
    // election) until it returns with its data.
    let lost = placed[0];
    let data = kill(nodes.remove(&lost).expect("leader"));
    let gone = await_leaders(&nodes[&elsewhere], "spread", |leaders| leaders[0] == -1);
    assert!(gone.iter().zip(&placed).all(|(now, before)| (*before == lost) == (*now == -1)), "{gone:?}");
    let offline = common::scrape(&nodes[&elsewhere]).get("ringmq_cluster_offline_partitions").copied();
    assert!(offline.is_some_and(|offline| offline >= 2.0), "the lost broker's partitions: {offline:?}");
    nodes.insert(lost, node(lost, &quorum, Some(data)));
    await_leaders(&nodes[&elsewhere], "spread", |leaders| leaders == placed.as_slice());
    assert_eq!(latest_offset(&nodes[&lost], "spread", 0), (0, per_partition[0]), "its records survived");

    // Losing and regaining its leader raised the partition's leader epoch (0 to 2); what is
    // written now is stamped with it, and OffsetForLeaderEpoch tells where epoch 0 ended.
    const FENCED_LEADER_EPOCH: i16 = 74;
    let before = per_partition[0];
    assert_eq!(common::end_offset_for_epoch(&nodes[&lost], "spread", 0, 1, 0).0, FENCED_LEADER_EPOCH);
    common::produce_all(&nodes[&elsewhere], "spread", 0..300);
    assert_eq!(common::end_offset_for_epoch(&nodes[&lost], "spread", 0, 2, 0), (0, 0, before));
    assert_eq!(common::end_offset_for_epoch(&nodes[&lost], "spread", 0, 2, 1), (0, 0, before));
    assert_eq!(common::end_offset_for_epoch(&nodes[&lost], "spread", 0, 2, 2), (0, 2, 2 * before));

    // Deleted through one broker, the topic's data goes from every broker.
    ringmq(&["topic", "delete", "spread", "--bootstrap", &nodes[&elsewhere].address.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let holds = |broker: &Broker| {
        std::fs::read_dir(broker.data.path())
            .expect("data dir")
            .any(|entry| entry.expect("entry").file_name().to_string_lossy().starts_with("spread-"))
    };
    while nodes.values().any(holds) {
        assert!(Instant::now() < deadline, "the partitions' directories remain");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The keys a `read_committed` consumer of `topic` reads from the start, once `enough` says
/// it has read enough.
fn committed_keys(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    enough: impl Fn(&std::collections::BTreeSet<String>) -> bool,
) -> std::collections::BTreeSet<String> {
    let consumer = common::assigned_from_start(broker, topic, partitions);
    let mut keys = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !enough(&keys) {
        assert!(Instant::now() < deadline, "read only {keys:?}");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("message");
            let key = rdkafka::Message::key(&message).map(|k| String::from_utf8_lossy(k).into_owned());
            keys.extend(key);
        }
    }
    keys
}

#[test]
fn a_transaction_spanning_brokers_is_committed_or_aborted_on_each() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let (_, nodes, mut placed) = cluster_with_topic("ledger", 3, &[]);
    placed.sort_unstable();
    assert_eq!(placed, [1, 2, 3], "one partition led by each broker");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", nodes[&2].address.to_string())
        .set("transactional.id", "ledger-writer")
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init_transactions");
    let write = |prefix: &str| {
        for partition in 0..3 {
            for i in 0..5 {
                let key = format!("{prefix}-{partition}-{i}");
                let record = BaseRecord::to("ledger").partition(partition).key(&key).payload(&key);
                producer.send(record).map_err(|(error, _)| error).expect("send");
            }
        }
    };
    // The coordinator is one broker; the partitions are led by all three, so two of the three
    // markers of each transaction go to other brokers.
    producer.begin_transaction().expect("begin");
    write("kept");
    producer.commit_transaction(timeout).expect("commit");
    producer.begin_transaction().expect("begin");
    write("dropped");
    producer.flush(timeout).expect("flush"); // the records reach their leaders, then are aborted
    producer.abort_transaction(timeout).expect("abort");
    producer.begin_transaction().expect("begin");
    write("last");
    producer.commit_transaction(timeout).expect("commit");

    // Each partition's last transaction comes after the aborted one: once all of it is read,
    // so is everything before it.
    let last_read = |keys: &std::collections::BTreeSet<String>| {
        keys.iter().filter(|k| k.starts_with("last")).count() == 15
    };
    let keys = committed_keys(&nodes[&3], "ledger", 3, last_read);
    assert_eq!(keys.len(), 30, "{keys:?}");
    assert!(keys.iter().all(|key| !key.starts_with("dropped")), "{keys:?}");
}

#[test]
fn a_stopping_broker_leaves_at_once_and_comes_back_without_waiting_out_its_session() {
    // Sessions of a minute: only leaving on SIGTERM (Kafka's controlled shutdown) takes the
    // broker out, and lets its next process in, within the 30 s `agreed` waits.
    const SESSION_MS: u64 = 60_000;
    let quorum = voters(&[1]);
    let controller = node_with_session(1, &quorum, None, SESSION_MS);
    let broker = node_with_session(2, &quorum, None, SESSION_MS);
    let port = |broker: &Broker| i64::from(broker.address.port());
    agreed(&[&controller, &broker], &BTreeMap::from([(1, port(&controller)), (2, port(&broker))]));

    let address = broker.address;
    let (clean, data) = broker.terminate();
    assert!(clean, "stopped cleanly");
    agreed(&[&controller], &BTreeMap::from([(1, port(&controller))]));

    let broker = node_with_session(2, &quorum, Some((address, data)), SESSION_MS);
    agreed(&[&controller, &broker], &BTreeMap::from([(1, port(&controller)), (2, port(&broker))]));
}

/// Every record of every partition of `topic`, read from the start to `ends` (by partition):
/// (partition, offset, key).
fn read_back(broker: &Broker, topic: &str, ends: &[i64]) -> Vec<(i32, i64, String)> {
    let consumer = common::assigned_from_start_reading(broker, topic, ends.len() as i32, "read_uncommitted");
    let mut records = Vec::new();
    let mut next = vec![0i64; ends.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(ends).any(|(at, end)| at < end) {
        assert!(Instant::now() < deadline, "read up to {next:?} of {ends:?}");
        // A broker just restarted may still be listed at its old address for a moment:
        // librdkafka reports the failed connection and goes on; so does this loop.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let (partition, offset) =
                (rdkafka::Message::partition(&message), rdkafka::Message::offset(&message));
            let key = rdkafka::Message::key(&message)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            next[partition as usize] = offset + 1;
            records.push((partition, offset, key));
        }
    }
    records
}

/// Reads `topic` back through `broker` up to the last of the `written` records (key,
/// partition, offset as acknowledged) and checks each is at its offset, one record per offset;
/// answers what was read.
fn stored_once(
    broker: &Broker,
    topic: &str,
    partitions: usize,
    written: &[(String, i32, i64)],
) -> Vec<(i32, i64, String)> {
    let mut ends = vec![0i64; partitions];
    for (_, partition, offset) in written {
        ends[*partition as usize] = ends[*partition as usize].max(offset + 1);
    }
    let stored = read_back(broker, topic, &ends);
    let at: std::collections::HashMap<(i32, i64), &str> =
        stored.iter().map(|(partition, offset, key)| ((*partition, *offset), key.as_str())).collect();
    assert_eq!(at.len(), stored.len(), "one record per offset");
    for (key, partition, offset) in written {
        assert_eq!(
            at.get(&(*partition, *offset)).copied(),
            Some(key.as_str()),
            "{key} at {partition}/{offset}"
        );
    }
    stored
}

/// An idempotent acks=all librdkafka producer bootstrapped from every one of `bootstrap`.
fn idempotent_producer(bootstrap: &[String]) -> rdkafka::producer::FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap.join(","))
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "90000")
        .create()
        .expect("producer")
}

#[test]
fn acknowledged_records_survive_killed_and_restarted_leaders() {
    use rdkafka::producer::FutureRecord;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const RECORDS: usize = 3000;
    let (quorum, mut nodes, placed) = cluster_with_topic("stream", 6, &["--replication-factor", "3"]);
    let bootstrap: Vec<String> = nodes.values().map(|broker| broker.address.to_string()).collect();

    // An idempotent acks=all producer writes a numbered stream while leaders are killed.
    let producer = idempotent_producer(&bootstrap);
    let acked = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = acked.clone();
    let writer = std::thread::spawn(move || {
        let deliveries: Vec<_> = (0..RECORDS)
            .map(|i| {
                let key = format!("n{i}");
                let delivery = producer
                    .send_result(FutureRecord::to("stream").key(&key).payload(&key))
                    .map_err(|(error, _)| error)
                    .expect("enqueue");
                std::thread::sleep(Duration::from_millis(1));
                (key, delivery)
            })
            .collect();
        deliveries
            .into_iter()
            .filter_map(|(key, delivery)| {
                let delivered = futures_lite::future::block_on(delivery).expect("report").ok()?;
                counted.fetch_add(1, Ordering::Relaxed);
                Some((key, delivered.partition, delivered.offset))
            })
            .collect::<Vec<_>>()
    });
    // A consumer group reads along, through the failovers.
    let group_bootstrap = bootstrap.join(",");
    let reader = std::thread::spawn(move || {
        group_read(&group_bootstrap, "stream-readers", "stream", RECORDS, Duration::from_secs(120))
    });
    let await_acked = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while acked.load(Ordering::Relaxed) < count {
            assert!(Instant::now() < deadline, "only {} acknowledged", acked.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // SIGKILL the leader of partition 0, restart it; then the leader of another broker's
    // partition, restart it.
    let second = placed.iter().copied().find(|leader| *leader != placed[0]).expect("another leader");
    for (victim, after) in [(placed[0], RECORDS / 4), (second, RECORDS / 2)] {
        await_acked(after);
        let data = kill(nodes.remove(&victim).expect("victim"));
        nodes.insert(victim, node(victim, &quorum, Some(data)));
    }
    let written = writer.join().expect("writer");
    assert_eq!(written.len(), RECORDS, "every record acknowledged once its leader returned");
    assert_eq!(reader.join().expect("reader"), RECORDS, "the group read every record across the failovers");

    // Each acknowledged record is at its offset, once; offsets have no gaps.
    let stored = stored_once(&nodes[&1], "stream", 6, &written);
    let distinct: std::collections::BTreeSet<&str> = stored.iter().map(|(_, _, key)| key.as_str()).collect();
    assert_eq!(distinct.len(), stored.len(), "no record stored twice");
    assert_eq!(stored.len(), RECORDS);
    // The restarted brokers caught up and are in sync again.
    await_isrs(&nodes[&1], "stream", |isrs| isrs.iter().all(|isr| isr.len() == 3));
}

/// Produces `keys` with acks=all through `bootstrap`, without retries: each record's
/// partition and offset, or the error it was refused with.
fn produce_once(
    bootstrap: &str,
    topic: &str,
    keys: std::ops::Range<usize>,
) -> Vec<Result<(i32, i64), rdkafka::error::KafkaError>> {
    use rdkafka::producer::FutureProducer;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer");
    common::produce_keys(&producer, topic, keys)
}

#[test]
fn replicated_partitions_need_their_in_sync_replicas_and_lose_nothing_when_every_broker_dies() {
    const RECORDS: usize = 600;
    let options = ["--replication-factor", "3", "--config", "min.insync.replicas=2"];
    let (quorum, mut nodes, _) = cluster_with_topic("durable", 3, &options);
    let everyone: Vec<i32> = vec![1, 2, 3];
    let full = |isrs: &[Vec<i32>]| isrs.iter().all(|isr| isr.len() == 3);
    await_isrs(&nodes[&2], "durable", full);
    let bootstrap = |nodes: &BTreeMap<i32, Broker>| {
        nodes.values().map(|broker| broker.address.to_string()).collect::<Vec<_>>().join(",")
    };
    let first: Vec<(i32, i64)> = produce_once(&bootstrap(&nodes), "durable", 0..RECORDS)
        .into_iter()
        .map(|r| r.expect("acked"))
        .collect();

    // Every broker is SIGKILLed at once and restarted: every acknowledged record is there.
    let dirs: Vec<(i32, Killed)> =
        std::mem::take(&mut nodes).into_iter().map(|(id, b)| (id, kill(b))).collect();
    nodes = dirs.into_iter().map(|(id, data)| (id, node(id, &quorum, Some(data)))).collect();
    await_leaders(&nodes[&1], "durable", |leaders| leaders.iter().all(|l| everyone.contains(l)));
    let mut ends = vec![0i64; 3];
    for (partition, offset) in &first {
        ends[*partition as usize] = ends[*partition as usize].max(offset + 1);
    }
    let stored = read_back(&nodes[&1], "durable", &ends);
    let at: std::collections::HashMap<(i32, i64), String> =
        stored.into_iter().map(|(partition, offset, key)| ((partition, offset), key)).collect();
    for (i, (partition, offset)) in first.iter().enumerate() {
        assert_eq!(at.get(&(*partition, *offset)).map(String::as_str), Some(format!("k{i}").as_str()));
    }

    // One broker down: two in-sync replicas remain, enough for min.insync.replicas=2.
    await_isrs(&nodes[&1], "durable", full);
    let down = kill(nodes.remove(&3).expect("node 3"));
    await_isrs(&nodes[&1], "durable", |isrs| isrs.iter().all(|isr| isr.len() == 2 && !isr.contains(&3)));
    let second = produce_once(&bootstrap(&nodes), "durable", RECORDS..RECORDS + 30);
    assert!(second.iter().all(Result::is_ok), "{second:?}");

    // Asked for three in-sync replicas, the leaders refuse acks=all writes
    // (NOT_ENOUGH_REPLICAS) while one is down. (Two brokers down would take the controller
    // quorum with them: every node here is a voter.)
    let address = nodes[&1].address.to_string();
    ringmq(&["topic", "alter-config", "durable", "--set", "min.insync.replicas=3", "--bootstrap", &address]);
    // Configs reach the other brokers with their next image, as in Kafka: wait for every leader.
    for broker in nodes.values() {
        let address = broker.address.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ringmq(&["topic", "describe", "durable", "--bootstrap", &address])
            .contains("min.insync.replicas = 3")
        {
            assert!(Instant::now() < deadline, "{address} kept the old min.insync.replicas");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let refused = produce_once(&bootstrap(&nodes), "durable", 0..3);
    for outcome in &refused {
        let code = outcome.as_ref().err().and_then(rdkafka::error::KafkaError::rdkafka_error_code);
        assert_eq!(code, Some(rdkafka::types::RDKafkaErrorCode::NotEnoughReplicas), "{refused:?}");
    }

    // It comes back, catches up and rejoins: writes are taken again, and nothing acknowledged
    // went missing.
    nodes.insert(3, node(3, &quorum, Some(down)));
    await_isrs(&nodes[&3], "durable", full);
    let third = produce_once(&bootstrap(&nodes), "durable", RECORDS + 30..RECORDS + 60);
    assert!(third.iter().all(Result::is_ok), "{third:?}");
    let mut ends = vec![0i64; 3];
    let acked = second.iter().chain(&third).map(|r| r.as_ref().expect("acked"));
    for (partition, offset) in first.iter().chain(acked) {
        ends[*partition as usize] = ends[*partition as usize].max(offset + 1);
    }
    let stored = read_back(&nodes[&3], "durable", &ends);
    assert_eq!(stored.len(), RECORDS + 60, "every acknowledged record, once");
}

#[test]
fn a_follower_that_missed_deleted_records_starts_again_at_its_leaders_log_start() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let (quorum, mut nodes, placed) = cluster_with_topic("trimmed", 1, &["--replication-factor", "3"]);
    await_isrs(&nodes[&1], "trimmed", |isrs| isrs[0].len() == 3);
    let leader = placed[0];
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let bootstrap = |nodes: &BTreeMap<i32, Broker>| {
        nodes.values().map(|broker| broker.address.to_string()).collect::<Vec<_>>().join(",")
    };
    assert!(produce_once(&bootstrap(&nodes), "trimmed", 0..100).iter().all(Result::is_ok));

    // While the follower is down, the leader's log start moves past the follower's end.
    let away = kill(nodes.remove(&follower).expect("follower"));
    await_isrs(&nodes[&leader], "trimmed", |isrs| !isrs[0].contains(&follower));
    let acked = produce_once(&bootstrap(&nodes), "trimmed", 100..200);
    let end = acked.iter().map(|r| r.as_ref().expect("acked").1 + 1).max().expect("records");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap(&nodes)).create().expect("admin");
    let mut before = rdkafka::TopicPartitionList::new();
    before.add_partition_offset("trimmed", 0, rdkafka::Offset::Offset(end)).expect("offset");
    let deleted = futures_lite::future::block_on(admin.delete_records(&before, &AdminOptions::new()))
        .expect("delete records");
    assert_eq!(deleted.elements()[0].error(), Ok(()), "{deleted:?}");

    // Back, it cannot copy on from its end: it starts again at the leader's log start,
    // catches up and rejoins the in-sync replicas.
    nodes.insert(follower, node(follower, &quorum, Some(away)));
    await_isrs(&nodes[&leader], "trimmed", |isrs| isrs[0].len() == 3);
    let more = produce_once(&bootstrap(&nodes), "trimmed", 200..210);
    assert!(more.iter().all(Result::is_ok), "{more:?}");
    let dir = nodes[&follower].data.path().join("trimmed-0");
    let dump =
        Command::new(env!("CARGO_BIN_EXE_ringmq")).args(["log", "dump"]).arg(&dir).output().expect("dump");
    let dump = String::from_utf8_lossy(&dump.stdout);
    let first = dump.lines().find(|line| line.trim_start().starts_with("offsets")).expect("a batch");
    assert!(first.trim_start().starts_with(&format!("offsets {end}..")), "{dump}");
}

/// The batches `ringmq log dump` lists for `topic`'s `partition` in `broker`'s data directory
/// (offsets, leader epoch, CRC), or none if it holds no copy.
fn dumped_batches(broker: &Broker, topic: &str, partition: i32) -> Option<Vec<String>> {
    let dir = broker.data.path().join(format!("{topic}-{partition}"));
    if !dir.exists() {
        return None;
    }
    let output =
        Command::new(env!("CARGO_BIN_EXE_ringmq")).args(["log", "dump"]).arg(&dir).output().expect("dump");
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().filter(|l| l.trim_start().starts_with("offsets")).map(String::from).collect())
}

#[test]
fn a_fourth_broker_takes_over_a_decommissioned_brokers_partitions_under_load() {
    use rdkafka::producer::FutureRecord;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const PARTITIONS: i32 = 4;
    let (quorum, mut nodes, _) =
        cluster_with_topic("moving", PARTITIONS as usize, &["--replication-factor", "3"]);
    let bootstrap: Vec<String> = nodes.values().map(|broker| broker.address.to_string()).collect();

    // An idempotent acks=all producer writes numbered records until told to stop.
    let producer = idempotent_producer(&bootstrap);
    let (sent, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (counted, stopping) = (sent.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let mut deliveries = Vec::new();
        while !stopping.load(Ordering::Relaxed) {
            let key = format!("m{}", deliveries.len());
            let delivery = producer
                .send_result(FutureRecord::to("moving").key(&key).payload(&key))
                .map_err(|(error, _)| error)
                .expect("enqueue");
            deliveries.push((key, delivery));
            std::thread::sleep(Duration::from_millis(2));
            counted.store(deliveries.len(), Ordering::Relaxed);
        }
        deliveries
            .into_iter()
            .map(|(key, delivery)| {
                let delivered = futures_lite::future::block_on(delivery).expect("report");
                let delivered =
                    delivered.unwrap_or_else(|(error, _)| panic!("{key} not acknowledged: {error}"));
                (key, delivered.partition, delivered.offset)
            })
            .collect::<Vec<_>>()
    });
    let await_sent = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent.load(Ordering::Relaxed) < count {
            assert!(Instant::now() < deadline, "only {} sent", sent.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    await_sent(300);
    let refused = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["topic", "reassign", "moving", "--partition", "0", "--replicas", "1,1,2"])
        .args(["--bootstrap", &bootstrap[0]])
        .output()
        .expect("run ringmq");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("InvalidReplicaAssignment"), "{said}");
    // A group's offsets, in `__consumer_offsets` (three replicas, one on broker 1), move too.
    let committed = [1, 2, 3, 4];
    commit_offsets(&bootstrap.join(","), "movers", "moving", &committed);

    // A fourth broker joins; every replica on broker 1 moves to it while records flow.
    nodes.insert(4, node(4, &quorum, None));
    agreed(&nodes.values().collect::<Vec<_>>(), &listing(&nodes));
    let asked = nodes[&2].address.to_string();
    let moved: Value = serde_json::from_str(&ringmq(&[
        "cluster",
        "decommission",
        "1",
        "--wait",
        "120",
        "--json",
        "--bootstrap",
        &asked,
    ]))
    .expect("json");
    let moves = moved["moves"].as_array().expect("moves");
    let of = |topic: &str| moves.iter().filter(|m| m["topic"] == topic).count();
    assert_eq!(of("moving"), PARTITIONS as usize, "broker 1 held a replica of every partition: {moved}");
    assert_eq!(of("__consumer_offsets"), 16, "and of every offsets partition: {moved}");
    for planned in moves {
        let target: Vec<i64> = serde_json::from_value(planned["replicas"].clone()).expect("replicas");
        assert!(target.contains(&4) && !target.contains(&1), "{planned}");
    }
    let placed = await_partitions(
        &nodes[&2],
        "moving",
        |p| (p.replicas().to_vec(), p.isr().len()),
        |all| all.iter().all(|(replicas, isr)| replicas.contains(&4) && !replicas.contains(&1) && *isr == 3),
        Duration::from_secs(60),
    );
    let listed: Value =
        serde_json::from_str(&ringmq(&["topic", "reassignments", "--json", "--bootstrap", &asked]))
            .expect("json");
    assert_eq!(listed["reassignments"], serde_json::json!([]), "no move left under way: {placed:?}");
    // Broker 1 drops its copies; killed, it takes nothing with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..PARTITIONS).any(|p| dumped_batches(&nodes[&1], "moving", p).is_some()) {
        assert!(Instant::now() < deadline, "broker 1 kept a copy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = sent.load(Ordering::Relaxed);
    drop(kill(nodes.remove(&1).expect("broker 1")));
    await_sent(before + 300);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");

    // Every acknowledged record is at its offset, once.
    let stored = stored_once(&nodes[&2], "moving", PARTITIONS as usize, &written);
    assert_eq!(stored.len(), written.len());
    assert_eq!(
        committed_of(&nodes[&2], "movers", "moving", PARTITIONS),
        committed,
        "the group's offsets moved"
    );
    // The new broker's copies are the old replicas' batch for batch (offsets, epochs, CRCs).
    for partition in 0..PARTITIONS {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (new, old) = (
                dumped_batches(&nodes[&4], "moving", partition),
                dumped_batches(&nodes[&2], "moving", partition),
            );
            if new.is_some() && new == old {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {partition}: broker 4 has {new:?}, broker 2 {old:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Kafka's partition of `__consumer_offsets` for a group, or of `__transaction_state` for a
/// transactional id (Java's `String.hashCode` of `key`, made positive, modulo the partition
/// count).
fn offsets_partition(key: &str, partitions: i32) -> i32 {
    let hash =
        key.encode_utf16().fold(0i32, |hash, unit| hash.wrapping_mul(31).wrapping_add(i32::from(unit)));
    (if hash == i32::MIN { 0 } else { hash.abs() }) % partitions
}

/// A client of consumer group `group` that commits only when told to.
fn group_client(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The leader of the partition of internal `topic` that holds `key`, once `broker` shows it
/// with three in-sync replicas: the key's coordinator.
fn coordinator_of(broker: &Broker, topic: &str, key: &str) -> i32 {
    let partition = offsets_partition(key, 16) as usize;
    let placed = await_partitions(
        broker,
        topic,
        |p| (p.leader(), p.isr().len()),
        |all| all.get(partition).is_some_and(|(leader, isr)| *leader > 0 && *isr == 3),
        Duration::from_secs(60),
    );
    placed[partition].0
}

/// Commits `offsets` (by partition of `topic`) for `group`, retrying while the coordinator is
/// not found or still loading.
fn commit_offsets(bootstrap: &str, group: &str, topic: &str, offsets: &[i64]) {
    use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
    let consumer = group_client(bootstrap, group);
    let mut positions = TopicPartitionList::new();
    for (partition, offset) in offsets.iter().enumerate() {
        positions
            .add_partition_offset(topic, partition as i32, KafkaOffset::Offset(*offset))
            .expect("offset");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(error) = consumer.commit(&positions, rdkafka::consumer::CommitMode::Sync) {
        assert!(Instant::now() < deadline, "commit: {error}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The offsets `group` committed for the partitions of `topic`, asked through `broker` until
/// its coordinator answers them all.
fn committed_of(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer = group_client(&broker.address.to_string(), group);
    let mut asked = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        asked.add_partition(topic, partition);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = consumer.committed_offsets(asked.clone(), Duration::from_secs(5));
        let offsets: Option<Vec<i64>> = committed
            .ok()
            .map(|list| list.elements().iter().map(|e| e.offset().to_raw().unwrap_or(-1)).collect());
        match offsets {
            Some(offsets) if offsets.iter().all(|offset| *offset >= 0) => return offsets,
            _ => assert!(Instant::now() < deadline, "no committed offsets of {group}: {offsets:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_groups_committed_offsets_survive_the_loss_of_its_coordinator() {
    let (_quorum, mut nodes, _) = cluster_with_topic("kept", 2, &["--replication-factor", "3"]);
    let everyone = nodes.values().map(|broker| broker.address.to_string()).collect::<Vec<_>>().join(",");
    let written = produce_once(&everyone, "kept", 0..200);
    let mut ends = vec![0i64; 2];
    for (partition, offset) in written.iter().map(|r| *r.as_ref().expect("acknowledged")) {
        ends[partition as usize] = ends[partition as usize].max(offset + 1);
    }
    commit_offsets(&everyone, "keepers", "kept", &ends);

    // The group's offsets partition has three in-sync replicas; its leader coordinates.
    let coordinator = coordinator_of(&nodes[&1], "__consumer_offsets", "keepers");
    drop(kill(nodes.remove(&coordinator).expect("the coordinator")));

    // Another broker takes the group over, with its offsets.
    let survivors = nodes.values().map(|broker| broker.address.to_string()).collect::<Vec<_>>().join(",");
    let consumer = group_client(&survivors, "keepers");
    let survivor = nodes.values().next().expect("a survivor");
    assert_eq!(
        committed_of(survivor, "keepers", "kept", 2),
        ends,
        "committed offsets after the coordinator's loss"
    );
    // A member resumes there: it reads only what was written since.
    produce_once(&survivors, "kept", 200..250);
    consumer.subscribe(&["kept"]).expect("subscribe");
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.len() < 50 {
        assert!(Instant::now() < deadline, "read {} of 50 new records", keys.len());
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            keys.push(
                String::from_utf8_lossy(rdkafka::Message::key(&message).unwrap_or_default()).into_owned(),
            );
        }
    }
    keys.sort();
    let expected: Vec<String> = {
        let mut all: Vec<String> = (200..250).map(|i| format!("k{i}")).collect();
        all.sort();
        all
    };
    assert_eq!(keys, expected, "the member resumed at the committed offsets");
}

#[test]
fn an_open_transaction_is_aborted_by_the_next_producer_after_its_coordinator_dies() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let (_, mut nodes, _) = cluster_with_topic("journal", 3, &["--replication-factor", "3"]);
    let transactional = |bootstrap: &str| -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", "journal-writer")
            .create()
            .expect("producer")
    };
    let write = |producer: &BaseProducer, prefix: &str| {
        for partition in 0..3 {
            for i in 0..5 {
                let key = format!("{prefix}-{partition}-{i}");
                let record = BaseRecord::to("journal").partition(partition).key(&key).payload(&key);
                producer.send(record).map_err(|(error, _)| error).expect("send");
            }
        }
    };
    let timeout = Duration::from_secs(60);
    let everyone = nodes.values().map(|broker| broker.address.to_string()).collect::<Vec<_>>().join(",");
    let first = transactional(&everyone);
    first.init_transactions(timeout).expect("init_transactions");
    first.begin_transaction().expect("begin");
    write(&first, "kept");
    first.commit_transaction(timeout).expect("commit");
    first.begin_transaction().expect("begin");
    write(&first, "open");
    first.flush(timeout).expect("flush"); // on the partitions' leaders, in a transaction left open
    drop(first);

    // The id's transaction partition has three in-sync replicas; its leader coordinates. It dies.
    let coordinator = coordinator_of(&nodes[&1], "__transaction_state", "journal-writer");
    drop(kill(nodes.remove(&coordinator).expect("the coordinator")));

    // The next producer with the id finds the new coordinator, which knows the open
    // transaction: it is aborted, and the producer's own transaction commits.
    let survivors = nodes.values().map(|broker| broker.address.to_string()).collect::<Vec<_>>().join(",");
    let next = transactional(&survivors);
    next.init_transactions(timeout).expect("init_transactions after the coordinator's loss");
    next.begin_transaction().expect("begin");
    write(&next, "after");
    next.commit_transaction(timeout).expect("commit");
    let reader = nodes.values().next().expect("a survivor");
    let after_read = |keys: &std::collections::BTreeSet<String>| {
        keys.iter().filter(|k| k.starts_with("after")).count() == 15
    };
    let keys = committed_keys(reader, "journal", 3, after_read);
    assert_eq!(keys.len(), 30, "{keys:?}");
    assert!(keys.iter().all(|key| !key.starts_with("open")), "{keys:?}");
}

/// InitProducerId (v4, no transactional id) asked of `broker`: the producer id it hands out.
fn init_producer_id(broker: &Broker) -> i64 {
    use kafka_protocol::messages::{
        ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseHeader,
    };
    use kafka_protocol::protocol::Decodable;
    use std::io::Write;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let mut stream = broker.connect();
    stream.write_all(&common::request_frame(ApiKey::InitProducerId, 4, 1, &request)).expect("send");
    let mut response = common::read_response(&mut stream);
    ResponseHeader::decode(&mut response, ApiKey::InitProducerId.response_header_version(4)).expect("header");
    let response = InitProducerIdResponse::decode(&mut response, 4).expect("decode");
    assert_eq!(response.error_code, 0, "InitProducerId");
    response.producer_id.0
}

#[test]
fn brokers_of_a_cluster_never_hand_out_the_same_producer_id() {
    let quorum = voters(&[1, 2, 3]);
    let mut nodes: BTreeMap<i32, Broker> = (1..=3).map(|id| (id, node(id, &quorum, None))).collect();
    agreed(&nodes.values().collect::<Vec<_>>(), &listing(&nodes));
    let mut given = std::collections::BTreeSet::new();
    for broker in nodes.values() {
        for _ in 0..3 {
            assert!(given.insert(init_producer_id(broker)), "a producer id handed out twice: {given:?}");
        }
    }
    // A restarted broker takes a new block: its old one may have been partly handed out.
    let data = kill(nodes.remove(&2).expect("broker 2"));
    let restarted = node(2, &quorum, Some(data));
    assert!(given.insert(init_producer_id(&restarted)), "a producer id handed out twice: {given:?}");
}

/// The sum over cores of the `name` counter in `broker`'s metrics.
fn counted(broker: &Broker, name: &str) -> f64 {
    common::scrape(broker).iter().filter(|(series, _)| series.starts_with(name)).map(|(_, value)| value).sum()
}

#[test]
fn brokers_replicate_over_their_peer_listeners() {
    let quorum = voters(&[1, 2, 3]);
    let peer = ["--peer-listen", "127.0.0.1:0"];
    let nodes: BTreeMap<i32, Broker> =
        (1..=3).map(|id| (id, node_with(id, &quorum, None, 1000, &peer))).collect();
    // Clients are still told the Kafka listeners.
    agreed(&nodes.values().collect::<Vec<_>>(), &listing(&nodes));
    let bootstrap = nodes[&1].address.to_string();
    ringmq(&[
        "topic",
        "create",
        "peered",
        "--partitions",
        "1",
        "--replication-factor",
        "3",
        "--bootstrap",
        &bootstrap,
    ]);
    let leader = await_leaders(&nodes[&1], "peered", |leaders| leaders.first().is_some_and(|l| *l > 0))[0];
    let acknowledged = produce_once(&bootstrap, "peered", 0..50);
    assert!(acknowledged.iter().all(Result::is_ok), "{acknowledged:?}");
    // Both followers fetch from the leader's peer listener; nobody connects to the others'.
    let peers = |id: i32| counted(&nodes[&id], "ringmq_peer_connections_accepted_total");
    assert!(peers(leader) >= 2.0, "the leader's peer listener accepted {}", peers(leader));
    for follower in nodes.keys().filter(|id| **id != leader) {
        assert_eq!(peers(*follower), 0.0, "broker {follower} leads nothing, yet peers connected to it");
    }
}

/// Polls `check` every 100 ms until it gives a value; fails after 30 s with `what` and what
/// `check` last said.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) => assert!(Instant::now() < deadline, "{what}: {state}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ringmq cluster info --json` asked of `broker` until `done` holds of it (30 s at most).
fn cluster_info_until(broker: &Broker, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(what, || {
        let info = cluster_info(broker);
        if done(&info) { Ok(info) } else { Err(info.to_string()) }
    })
}

fn listed(info: &Value, key: &str) -> Vec<String> {
    info[key]
        .as_array()
        .expect(key)
        .iter()
        .map(|p| p.as_str().expect("topic/partition").to_string())
        .collect()
}

#[test]
fn cluster_info_lists_what_a_dead_broker_left_leaderless_or_under_replicated() {
    // "single": one replica per partition, one partition per broker; "safe": three replicas.
    let (quorum, mut nodes, single) = cluster_with_topic("single", 3, &[]);
    let bootstrap = nodes[&1].address.to_string();
    ringmq(&[
        "topic",
        "create",
        "safe",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
        "--bootstrap",
        &bootstrap,
    ]);
    for broker in nodes.values() {
        await_leaders(broker, "safe", |leaders| leaders.len() == 3 && leaders.iter().all(|l| *l > 0));
    }
    let healthy = cluster_info_until(&nodes[&1], "every partition led and in sync", |info| {
        listed(info, "leaderless").is_empty() && listed(info, "under_replicated").is_empty()
    });
    assert_eq!(healthy["brokers"].as_array().map(Vec::len), Some(3));
    // No group or transaction used the internal topics, so the controller placed none: no broker
    // lists them (each used to show them led by itself alone).
    assert_eq!(healthy["topics"], 2, "only the two topics made here: {healthy}");

    let lost = 3; // not broker 1, which the checks ask
    let killed = kill(nodes.remove(&lost).expect("a node"));
    let on_lost = single.iter().position(|leader| *leader == lost).expect("a partition on it");
    let orphan = format!("single/{on_lost}");
    let info = cluster_info_until(&nodes[&1], "the dead broker's partitions listed", |info| {
        let under = listed(info, "under_replicated");
        listed(info, "leaderless") == [orphan.clone()] && (0..3).all(|p| under.contains(&format!("safe/{p}")))
    });
    assert!(
        !listed(&info, "under_replicated").iter().any(|p| p.starts_with("single/")),
        "one replica of one is in sync, even with no leader: {info}"
    );
    let table = ringmq(&["cluster", "info", "--bootstrap", &bootstrap]);
    assert!(table.contains(&format!("partitions without a leader: {orphan}")), "{table}");
    // The survivors lead every "safe" partition now, each short of a replica.
    // Each survivor's gauges move once it has applied the image that fenced broker 3.
    let gauge = |broker: &Broker, name: &str| common::scrape(broker).get(name).copied().unwrap_or(-1.0);
    eventually("the survivors' gauges", || {
        let under: f64 =
            nodes.values().map(|broker| gauge(broker, "ringmq_under_replicated_partitions")).sum();
        let offline: Vec<f64> =
            nodes.values().map(|broker| gauge(broker, "ringmq_cluster_offline_partitions")).collect();
        match under >= 3.0 && offline.iter().all(|count| *count >= 1.0) {
            true => Ok(()),
            false => Err(format!("under-replicated led by survivors {under}, offline {offline:?}")),
        }
    });

    // Back again, the broker leads its partition and catches up: nothing is listed.
    nodes.insert(lost, node(lost, &quorum, Some(killed)));
    cluster_info_until(&nodes[&1], "a healthy cluster again", |info| {
        listed(info, "leaderless").is_empty() && listed(info, "under_replicated").is_empty()
    });
}

#[test]
fn a_connection_pipelines_produces_behind_one_waiting_for_its_replicas() {
    use std::io::Write;
    // Followers stay in the in-sync replicas and in the cluster for a minute without
    // answering, so an acks=all produce waits that long unless they come back.
    let quorum = voters(&[1, 2, 3]);
    let patient = ["--set", "replica_lag_time_max_ms=60000"];
    let nodes: BTreeMap<i32, Broker> =
        (1..=3).map(|id| (id, node_with(id, &quorum, None, 60_000, &patient))).collect();
    let (controller, _) = agreed(&nodes.values().collect::<Vec<_>>(), &listing(&nodes));
    let bootstrap = nodes[&1].address.to_string();
    ringmq(&[
        "topic",
        "create",
        "piped",
        "--partitions",
        "6",
        "--replication-factor",
        "3",
        "--bootstrap",
        &bootstrap,
    ]);
    await_isrs(&nodes[&1], "piped", |isrs| isrs.len() == 6 && isrs.iter().all(|isr| isr.len() == 3));
    let leaders =
        await_leaders(&nodes[&1], "piped", |leaders| leaders.len() == 6 && leaders.iter().all(|l| *l > 0));
    // Two partitions with one leader, and a follower of both that is not the controller (its
    // freeze leaves the controller alone).
    let (p, q) = (0..6)
        .flat_map(|p| (p + 1..6).map(move |q| (p, q)))
        .find(|(p, q)| leaders[*p] == leaders[*q])
        .expect("two partitions share a leader");
    let (p, q, leader) = (p as i32, q as i32, leaders[p]);
    let frozen = (1..=3).find(|id| *id != leader && i64::from(*id) != controller).expect("a follower");
    let (leader, frozen) = (&nodes[&leader], &nodes[&frozen]);

    frozen.signal(libc::SIGSTOP);
    let mut stream = leader.connect();
    // One connection: acks=all to both partitions (it waits for the frozen follower), then
    // acks=1 to the second partition, twice.
    stream
        .write_all(&common::produce_frame("piped", -1, 1, &[(p, "p-first"), (q, "q-first")]))
        .expect("send");
    stream.write_all(&common::produce_frame("piped", 1, 2, &[(q, "q-second")])).expect("send");
    stream.write_all(&common::produce_frame("piped", 1, 3, &[(q, "q-third")])).expect("send");
    // The later produces are read and appended while the first still waits: before pipelining
    // they waited in the socket until the first was answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::appended_records(leader, "piped") < 4.0 {
        assert!(Instant::now() < deadline, "the produces behind a waiting one were not appended");
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.set_nonblocking(true).expect("nonblocking");
    let early = std::io::Read::read(&mut stream, &mut [0u8; 1]);
    assert!(
        matches!(&early, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "nothing is answered before the first produce: {early:?}"
    );
    stream.set_nonblocking(false).expect("blocking");

    // Once the follower is back, answers come in request order, and each partition has the
    // batches in the order they were sent, the waiting request's first.
    frozen.signal(libc::SIGCONT);
    let answers: Vec<_> = (0..3).map(|_| common::produce_answer(&mut stream)).collect();
    let expected = vec![(1, vec![(p, 0, 0), (q, 0, 0)]), (2, vec![(q, 0, 1)]), (3, vec![(q, 0, 2)])];
    assert_eq!(answers, expected);
}
