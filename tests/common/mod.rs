//! The real-process harness shared by the integration tests: a `ringmq serve` child on an
//! ephemeral port with its own data directory, and helpers that speak to it with librdkafka or
//! hand-made frames. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod proxy;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::future::block_on;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A loopback port for an address that must be named before anything binds it (a controller
/// quorum's voters, a broker to be restarted where it was). Taken below the kernel's ephemeral
/// range (`ip_local_port_range` starts at 32768), so that no port-0 listener or outgoing
/// connection of a test running alongside can take it between here and the bind, and checked
/// free now. Each test binary starts at its own place in 20000..32000 (by pid) and counts on.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = u16::try_from(FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// A broker process on an ephemeral port with its own data directory; killed on drop.
pub struct Broker {
    child: Child,
    pub address: SocketAddr,
    /// The admin HTTP listener (metrics, health, readiness).
    pub admin: SocketAddr,
    pub data: tempfile::TempDir,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Broker {
    pub fn start(extra: &[&str]) -> Broker {
        Broker::start_in(tempfile::tempdir().expect("data dir"), extra)
    }

    /// Starts a broker on an existing data directory and waits for its ready line.
    pub fn start_in(data: tempfile::TempDir, extra: &[&str]) -> Broker {
        Broker::launch(Command::new(env!("CARGO_BIN_EXE_ringmq")), data, extra)
    }

    /// Starts a broker inside network namespace `namespace` (`ip netns exec`, which execs it:
    /// the child's pid is the broker's).
    pub fn start_in_namespace(namespace: &str, data: tempfile::TempDir, extra: &[&str]) -> Broker {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace, env!("CARGO_BIN_EXE_ringmq")]);
        Broker::launch(command, data, extra)
    }

    fn launch(mut command: Command, data: tempfile::TempDir, extra: &[&str]) -> Broker {
        // An ephemeral port unless the caller names one (a broker restarted where it was).
        let listen = if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] };
        let mut child = command
            .arg("serve")
            .args(listen)
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ringmq serve");
        let stdout = child.stdout.take().expect("stdout");
        let lines = lines_of(stdout);
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("the broker reports ready");
        let address = line
            .split_whitespace()
            .skip_while(|word| *word != "listener")
            .nth(1)
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("ready line names the listener: {line}"));
        let admin = line
            .split("admin listener ")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("ready line names the admin listener: {line}"));
        Broker { child, address, admin, data, lines }
    }

    /// SIGTERMs the broker and waits for it to exit; returns whether it exited 0 after saying
    /// it stopped, and its data directory.
    pub fn terminate(mut self) -> (bool, tempfile::TempDir) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let sent = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM sent");
        let status = self.child.wait().expect("wait");
        let said_stopped =
            self.lines.recv_timeout(Duration::from_secs(5)).is_ok_and(|l| l.contains("stopped"));
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("placeholder"));
        (status.success() && said_stopped, data)
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream
    }

    /// SIGKILLs the broker and returns its data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.data, data)
    }

    /// Sends `signal` to the broker (SIGSTOP to freeze it, SIGCONT to let it go on).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} sent");
    }

    pub fn assert_alive(&mut self) {
        assert!(self.child.try_wait().expect("try_wait").is_none(), "the broker is still running");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request frame (size, header, body) as a client would send it.
pub fn request_frame(api: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")));
    header.encode(&mut frame, api.request_header_version(version)).expect("header");
    body.encode(&mut frame, version).expect("body");
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    frame.freeze()
}

/// One response frame, without its size.
pub fn read_response(stream: &mut TcpStream) -> Bytes {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("response size");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).expect("response body");
    Bytes::from(body)
}

/// A raw Produce (v9) to `topic` of one record per `(partition, value)`.
pub fn produce_frame(topic: &str, acks: i16, correlation_id: i32, records: &[(i32, &str)]) -> bytes::Bytes {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let data = records.iter().map(|(partition, value)| {
        let record = ringmq::record::plain(0, 0, None, Some(Bytes::copy_from_slice(value.as_bytes())));
        let batch = ringmq::record::encode(&[record]).expect("batch");
        PartitionProduceData::default().with_index(*partition).with_records(Some(batch))
    });
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_data(data.collect());
    let request =
        ProduceRequest::default().with_acks(acks).with_timeout_ms(120_000).with_topic_data(vec![topic]);
    request_frame(ApiKey::Produce, 9, correlation_id, &request)
}

/// A Produce (v9) answer on `stream`: its correlation id, and per partition (partition,
/// error code, base offset).
pub fn produce_answer(stream: &mut std::net::TcpStream) -> (i32, Vec<(i32, i16, i64)>) {
    use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let mut response = read_response(stream);
    let header =
        ResponseHeader::decode(&mut response, ApiKey::Produce.response_header_version(9)).expect("header");
    let response = ProduceResponse::decode(&mut response, 9).expect("decode");
    let partitions = response.responses[0].partition_responses.iter();
    (header.correlation_id, partitions.map(|p| (p.index, p.error_code, p.base_offset)).collect())
}

/// Produces the records `k<i>` (key and value) for every `i` in `keys` with acks=all and
/// returns where each landed, in the order of `keys`.
pub fn produce_all(broker: &Broker, topic: &str, keys: std::ops::Range<usize>) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("acks", "all")
        .create()
        .expect("producer");
    produce_keys(&producer, topic, keys).into_iter().map(|landed| landed.expect("delivered")).collect()
}

/// Produces the records `k<i>` (key and value) for every `i` in `keys` with `producer`:
/// where each landed, or the error it was refused with, in the order of `keys`.
pub fn produce_keys(
    producer: &FutureProducer,
    topic: &str,
    keys: std::ops::Range<usize>,
) -> Vec<Result<(i32, i64), rdkafka::error::KafkaError>> {
    let deliveries: Vec<_> = keys
        .map(|i| {
            let key = format!("k{i}");
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&key))
                .map_err(|(e, _)| e)
                .expect("enqueue")
        })
        .collect();
    deliveries
        .into_iter()
        .map(|d| {
            let delivered = block_on(d).expect("report");
            delivered.map(|d| (d.partition, d.offset)).map_err(|(error, _)| error)
        })
        .collect()
}

/// The lines a child process writes to `stdout`, as they come (read on a thread of their own).
pub fn lines_of(stdout: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A consumer assigned every partition of `topic` from the beginning (no group coordination).
pub fn assigned_from_start(broker: &Broker, topic: &str, partitions: i32) -> BaseConsumer {
    // librdkafka's default isolation.
    assigned_from_start_reading(broker, topic, partitions, "read_committed")
}

/// `assigned_from_start` with an `isolation.level` (`read_committed` or `read_uncommitted`).
pub fn assigned_from_start_reading(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> BaseConsumer {
    use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address.to_string())
        .set("group.id", "unused-for-assign")
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, KafkaOffset::Beginning).expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// OffsetForLeaderEpoch (v4) for one partition, asked of `broker` directly: (error code,
/// leader epoch, end offset). `current` is the leader epoch the client believes current.
pub fn end_offset_for_epoch(
    broker: &Broker,
    topic: &str,
    partition: i32,
    current: i32,
    epoch: i32,
) -> (i16, i32, i64) {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{
        OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::Decodable;
    let asked = OffsetForLeaderPartition::default()
        .with_partition(partition)
        .with_current_leader_epoch(current)
        .with_leader_epoch(epoch);
    let topic = OffsetForLeaderTopic::default()
        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(vec![asked]);
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![topic]);
    let mut stream = broker.connect();
    stream.write_all(&request_frame(ApiKey::OffsetForLeaderEpoch, 4, 1, &request)).expect("send");
    let mut response = read_response(&mut stream);
    ResponseHeader::decode(&mut response, ApiKey::OffsetForLeaderEpoch.response_header_version(4))
        .expect("header");
    let response = OffsetForLeaderEpochResponse::decode(&mut response, 4).expect("decode");
    let answer = &response.topics[0].partitions[0];
    (answer.error_code, answer.leader_epoch, answer.end_offset)
}

/// What the broker has appended to `topic`, by its metrics.
pub fn appended_records(broker: &Broker, topic: &str) -> f64 {
    let label = format!("topic=\"{topic}\"");
    metric_sum(&scrape(broker), "ringmq_topic_produced_records_total", &[&label])
}

/// The sum of every series of metric `name` in `samples` (a `scrape`) whose labels include
/// all of `labels`.
pub fn metric_sum(samples: &std::collections::HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter(|(series, _)| labels.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

/// The status code and body of `request` sent to the admin listener.
pub fn http(broker: &Broker, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(broker.admin).expect("connect to the admin listener");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _end_or_reset = stream.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string());
    (status, body)
}

/// Every sample of the scrape, by series (name and labels as written).
pub fn scrape(broker: &Broker) -> std::collections::HashMap<String, f64> {
    let (status, body) = http(broker, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200);
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("a number in {line}")))
        })
        .collect()
}
