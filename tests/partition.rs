//! A network partition between brokers, made of real network namespaces: each broker runs in
//! a namespace of its own, joined to the others by veth links on a bridge in a hub namespace,
//! where the test's clients run. Cutting a broker off is a blackhole route in its namespace, so
//! it loses its peers while clients can still reach it. Needs CAP_NET_ADMIN (root), as the
//! suite's machines have.

mod common;

use common::Broker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `ip` with `args`; panics with its stderr if it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(output.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The namespaces of one test: a hub with a bridge (and the clients), and one per broker.
/// Removed on drop, which also ends the links.
struct Network {
    hub: String,
    nodes: Vec<String>,
}

const SUBNET: &str = "10.77.0";

impl Network {
    fn new(brokers: usize) -> Network {
        let tag = std::process::id();
        let hub = format!("rmq{tag}hub");
        let network = Network { nodes: (1..=brokers).map(|n| format!("rmq{tag}n{n}")).collect(), hub };
        let hub = network.hub.as_str();
        ip(&["netns", "add", hub]);
        ip(&["-n", hub, "link", "set", "lo", "up"]);
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", hub, "addr", "add", &format!("{SUBNET}.100/24"), "dev", "br0"]);
        ip(&["-n", hub, "link", "set", "br0", "up"]);
        for (index, node) in network.nodes.iter().enumerate() {
            let port = format!("v{}", index + 1);
            ip(&["netns", "add", node]);
            ip(&["-n", node, "link", "set", "lo", "up"]);
            ip(&["-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", node]);
            ip(&["-n", hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", node, "addr", "add", &format!("{SUBNET}.{}/24", index + 1), "dev", "eth0"]);
            ip(&["-n", node, "link", "set", "eth0", "up"]);
        }
        network
    }

    fn address(id: i32, port: u16) -> String {
        format!("{SUBNET}.{id}:{port}")
    }

    /// Cuts broker `id` off from the other brokers (both ways: what it sends them is dropped,
    /// so their connections get no answer either); clients in the hub still reach it.
    fn isolate(&self, id: i32, others: &[i32], cut: bool) {
        for other in others {
            let verb = if cut { "add" } else { "del" };
            let route = format!("{SUBNET}.{other}/32");
            ip(&["-n", &self.nodes[id as usize - 1], "route", verb, "blackhole", &route]);
        }
    }

    /// Runs `work` on a thread inside the hub namespace: the clients it makes (and their
    /// threads) talk to the brokers over the bridge.
    fn in_hub<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        Network::inside(&self.hub, work)
    }

    /// Runs `work` inside broker `id`'s namespace, cut off with it.
    fn beside<T: Send + 'static>(&self, id: i32, work: impl FnOnce() -> T + Send + 'static) -> T {
        Network::inside(&self.nodes[id as usize - 1], work)
    }

    fn inside<T: Send + 'static>(namespace: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{namespace}");
        std::thread::spawn(move || {
            let namespace = std::fs::File::open(&path).expect("open the hub namespace");
            // SAFETY: setns(2) on a descriptor we own, for this thread only.
            let entered =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&namespace), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .expect("client thread")
    }

    /// `ringmq` run in the hub namespace; its standard output.
    fn ringmq(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.hub, env!("CARGO_BIN_EXE_ringmq")])
            .args(args)
            .output()
            .expect("run ringmq");
        assert!(output.status.success(), "ringmq {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in self.nodes.iter().chain([&self.hub]) {
            let _ = Command::new("ip").args(["netns", "del", namespace]).status();
        }
    }
}

const KAFKA_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9093;

/// Broker `id` of three, all voters, in its namespace.
fn start(network: &Network, id: i32) -> Broker {
    let voters: Vec<String> =
        (1..=3).map(|voter| format!("{voter}@{}", Network::address(voter, CONTROLLER_PORT))).collect();
    let node = id.to_string();
    let listen = Network::address(id, KAFKA_PORT);
    let args = [
        "--cores",
        "1",
        "--node-id",
        &node,
        "--controllers",
        &voters.join(","),
        "--listen",
        &listen,
        "--set",
        "broker_heartbeat_interval_ms=100",
        "--set",
        "broker_session_timeout_ms=1000",
        "--set",
        "replica_lag_time_max_ms=2000",
    ];
    Broker::start_in_namespace(&network.nodes[id as usize - 1], tempfile::tempdir().expect("data"), &args)
}

/// A partition's leader and in-sync replicas.
type Placed = (i32, Vec<i32>);

/// The leader and in-sync replicas of each partition of `topic`, as `bootstrap` says.
fn placement(bootstrap: &str, topic: &str) -> Vec<Placed> {
    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("client");
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    metadata.topics()[0].partitions().iter().map(|p| (p.leader(), p.isr().to_vec())).collect()
}

fn await_placement(
    network: &Network,
    bootstrap: &str,
    topic: &'static str,
    wanted: fn(&[Placed]) -> bool,
) -> Vec<Placed> {
    let bootstrap = bootstrap.to_string();
    network.in_hub(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = placement(&bootstrap, topic);
            if wanted(&found) {
                return found;
            }
            assert!(Instant::now() < deadline, "{topic} stayed placed as {found:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Produces the keys `prefix<i>` to `partition` with acks=all through `bootstrap`, without
/// retries: where each was acknowledged, or `None`.
fn produce(bootstrap: &str, partition: i32, prefix: &str, count: usize) -> Vec<Option<(String, i64)>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("retries", "0")
        .set("request.timeout.ms", "3000")
        .set("message.timeout.ms", "6000")
        .create()
        .expect("producer");
    let sent: Vec<_> = (0..count)
        .map(|i| {
            let key = format!("{prefix}{i}");
            let record = FutureRecord::to("split").partition(partition).key(&key).payload(&key);
            (key.clone(), producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"))
        })
        .collect();
    sent.into_iter()
        .map(|(key, delivery)| {
            let delivered = futures_lite::future::block_on(delivery).expect("report").ok()?;
            Some((key, delivered.offset))
        })
        .collect()
}

/// Every key of `partition` of `split`, by offset, read from its leader up to its end.
fn read(bootstrap: &str, partition: i32) -> BTreeMap<i64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "partition-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset("split", partition, rdkafka::Offset::Beginning).expect("assign");
    consumer.assign(&assignment).expect("assign");
    let mut keys = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "partition {partition} read to {} records", keys.len());
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let key = rdkafka::Message::key(&message).map(|k| String::from_utf8_lossy(k).into_owned());
                keys.insert(rdkafka::Message::offset(&message), key.unwrap_or_default());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return keys,
            _ => {}
        }
    }
}

/// The batches of `partition` of `split` in a broker's data directory, as `ringmq log dump`
/// lists them (offsets, leader epoch, CRC). The dump of a live log also reports the unwritten
/// end of its last block as a tail recovery would cut, and exits non-zero: only the batch lines
/// count here.
fn batches(broker: &Broker, partition: i32) -> Vec<String> {
    let dir = broker.data.path().join(format!("split-{partition}"));
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["log", "dump"])
        .arg(&dir)
        .output()
        .expect("run ringmq log dump");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("offsets"))
        .map(String::from)
        .collect()
}

#[test]
fn a_cut_off_leader_acknowledges_nothing_and_its_log_converges_after_healing() {
    let network = Network::new(3);
    let brokers: BTreeMap<i32, Broker> = (1..=3).map(|id| (id, start(&network, id))).collect();
    let everyone = (1..=3).map(|id| Network::address(id, KAFKA_PORT)).collect::<Vec<_>>().join(",");
    let first = Network::address(1, KAFKA_PORT);
    {
        let first = first.clone();
        network.in_hub(move || {
            let client: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &first).create().expect("client");
            let deadline = Instant::now() + Duration::from_secs(30);
            while client.fetch_metadata(None, Duration::from_secs(5)).map_or(0, |m| m.brokers().len()) < 3 {
                assert!(Instant::now() < deadline, "the three brokers did not register");
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    network.ringmq(&[
        "topic",
        "create",
        "split",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
        "--config",
        "min.insync.replicas=2",
        "--bootstrap",
        &first,
    ]);
    let placed = await_placement(&network, &everyone, "split", |p| {
        p.len() == 3 && p.iter().all(|(leader, isr)| *leader > 0 && isr.len() == 3)
    });
    // Three partitions on three brokers: each leads one. The one broker 3 leads is cut off.
    let partition = placed.iter().position(|(leader, _)| *leader == 3).expect("broker 3 leads one") as i32;
    let (all, majority, minority) = (
        everyone.clone(),
        [1, 2].map(|id| Network::address(id, KAFKA_PORT)).join(","),
        Network::address(3, KAFKA_PORT),
    );
    let before = {
        let all = all.clone();
        network.in_hub(move || produce(&all, partition, "before", 100))
    };
    assert!(before.iter().all(Option::is_some), "acknowledged while whole: {before:?}");

    network.isolate(3, &[1, 2], true);
    // The majority fences broker 3 and elects another leader from the in-sync replicas.
    let moved = await_placement(&network, &majority, "split", |p| {
        p.iter().all(|(leader, isr)| *leader != 3 && *leader > 0 && !isr.contains(&3))
    });
    // Broker 3 still believes it leads: a client cut off with it (in its namespace, so it
    // cannot learn better from the others) writes to it. It takes the records, but its
    // followers are gone, so it acknowledges none of them.
    let cut_off = {
        let minority = minority.clone();
        network.beside(3, move || produce(&minority, partition, "minority", 20))
    };
    assert!(cut_off.iter().all(Option::is_none), "the cut-off leader acknowledged {cut_off:?}");
    let during = {
        let majority = majority.clone();
        network.in_hub(move || produce(&majority, partition, "during", 100))
    };
    assert!(
        during.iter().all(Option::is_some),
        "the majority's leader {} acknowledged: {during:?}",
        moved[partition as usize].0
    );

    network.isolate(3, &[1, 2], false);
    // Asked of the majority: just healed, broker 3 may still answer Metadata from its old
    // image (all in sync, itself leading) until the controller's reaches it.
    await_placement(&network, &majority, "split", |p| {
        p.iter().all(|(leader, isr)| *leader > 0 && isr.len() == 3)
    });

    // Every acknowledged record is there once, at the offset it was acknowledged at; none of
    // the cut-off leader's.
    let stored = {
        let majority = majority.clone();
        network.in_hub(move || read(&majority, partition))
    };
    for (key, offset) in before.iter().chain(&during).flatten() {
        assert_eq!(stored.get(offset), Some(key), "{key} at {offset}");
    }
    assert_eq!(stored.len(), 200, "{stored:?}");
    assert!(stored.values().all(|key| !key.starts_with("minority")), "{stored:?}");
    // The three replicas hold the same batches, epochs and CRCs included.
    let leader = &brokers[&moved[partition as usize].0];
    let expected = batches(leader, partition);
    for broker in brokers.values() {
        assert_eq!(batches(broker, partition), expected, "the replica on {}", broker.address);
    }
}
