//! Consumer groups against the real `ringmq serve` process, through librdkafka (the rdkafka
//! crate): members sharing partitions, a member process SIGKILLed mid-stream, two groups each
//! reading everything, committed offsets across broker restarts (SIGTERM and SIGKILL), static
//! membership, cooperative-sticky rebalancing and the group admin calls.
//!
//! This binary is also its own group member: `child_consumer` consumes when
//! `RINGMQ_TEST_CHILD_CONSUMER` is set (see `ChildConsumer`).

mod common;

use common::{Broker, produce_all, read_response, request_frame};
use futures_lite::future::block_on;
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, GroupId, OffsetDeleteRequest, OffsetDeleteResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What every test's broker runs with: groups form at once, and partitions and groups spread
/// over two cores.
const BROKER_ARGS: [&str; 4] = ["--cores", "2", "--set", "group_initial_rebalance_delay_ms=0"];
const SESSION_TIMEOUT_MS: u64 = 6000;
/// How long any single wait in these tests may take before it fails.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

const CHILD_ENV: &str = "RINGMQ_TEST_CHILD_CONSUMER";

/// Every rebalance event a member's librdkafka reported, in order.
#[derive(Default)]
struct Rebalances {
    events: Mutex<Vec<Event>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Assign(BTreeSet<i32>),
    Revoke(BTreeSet<i32>),
    Error(String),
}

/// librdkafka's own warnings and errors go to the test's stderr (shown when it fails).
impl ClientContext for Rebalances {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!("librdkafka {level:?} {facility}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("librdkafka error {error}: {reason}");
    }
}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(partitions) => Event::Assign(partition_set(partitions)),
            Rebalance::Revoke(partitions) => Event::Revoke(partition_set(partitions)),
            Rebalance::Error(error) => Event::Error(error.to_string()),
        };
        self.events.lock().expect("events").push(event);
    }
}

impl Rebalances {
    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }
}

type Member = BaseConsumer<Rebalances>;

/// One record as a member read it.
#[derive(Clone, Debug)]
struct Read {
    partition: i32,
    offset: i64,
    key: String,
}

fn start_broker() -> Broker {
    Broker::start(&BROKER_ARGS)
}

fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", broker.address.to_string()).create().expect("admin");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let created = block_on(admin.create_topics([&new_topic], &AdminOptions::new())).expect("create_topics");
    assert_eq!(created, vec![Ok(topic.to_string())]);
}

/// A group member's settings: short sessions, no automatic commits, read from the beginning.
fn member_config(address: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "500")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if let Ok(debug) = std::env::var("RINGMQ_TEST_DEBUG") {
        config.set("debug", debug).set_log_level(RDKafkaLogLevel::Debug);
    }
    config
}

fn subscribed(config: &ClientConfig, topic: &str) -> Member {
    let member: Member = config.create_with_context(Rebalances::default()).expect("consumer");
    member.subscribe(&[topic]).expect("subscribe");
    member
}

fn member(broker: &Broker, group: &str, topic: &str) -> Member {
    subscribed(&member_config(&broker.address.to_string(), group), topic)
}

fn partition_set(partitions: &TopicPartitionList) -> BTreeSet<i32> {
    partitions.elements().iter().map(|element| element.partition()).collect()
}

fn assigned(member: &Member) -> BTreeSet<i32> {
    partition_set(&member.assignment().expect("assignment"))
}

/// Unsubscribes `members` and polls until their partitions are revoked, then drops them. Closing
/// a consumer that still holds partitions runs the revoke inside librdkafka's close, where its
/// `rd_kafka_assign` can wait forever (librdkafka issue 4884): a test run hung there, its checks
/// all passed.
fn close(members: impl IntoIterator<Item = Member>) {
    for member in members {
        let seen = member.context().events().len();
        member.unsubscribe();
        // The revoke has run once the member reported it (the assignment may look empty
        // before the event is served).
        let deadline = Instant::now() + Duration::from_secs(10);
        while (member.context().events().len() == seen || !assigned(&member).is_empty())
            && Instant::now() < deadline
        {
            let _ = member.poll(Duration::from_millis(50));
        }
    }
}

/// Polls `member` (waiting up to 20 ms for the first record, then taking what is already
/// there, up to 500 records) and keeps what it read; commits each record when `commit`. A short
/// first wait keeps an idle member from slowing down the others polled in the same loop.
fn poll_into(member: &Member, reads: &mut Vec<Read>, commit: bool) {
    let mut wait = Duration::from_millis(20);
    for _ in 0..500 {
        let Some(message) = member.poll(wait) else { return };
        wait = Duration::ZERO;
        let message = message.unwrap_or_else(|error| panic!("a member's poll failed: {error}"));
        let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
        reads.push(Read { partition: message.partition(), offset: message.offset(), key });
        if commit {
            member.commit_message(&message, CommitMode::Sync).expect("commit acknowledged");
        }
    }
}

fn poll_all(members: &[Member], reads: &mut [Vec<Read>], commit: bool) {
    for (member, reads) in members.iter().zip(reads.iter_mut()) {
        poll_into(member, reads, commit);
    }
}

/// Calls `step` (which must block briefly, e.g. by polling) until it returns true; fails after
/// `WAIT_LIMIT`.
fn await_condition(what: &str, mut step: impl FnMut() -> bool) {
    let give_up = Instant::now() + WAIT_LIMIT;
    while !step() {
        assert!(Instant::now() < give_up, "gave up after {WAIT_LIMIT:?} waiting until {what}");
    }
}

/// Calls `step` (which must block briefly, e.g. by polling, and return each member's current
/// assignment) until the members split `0..partitions` between them; fails after `WAIT_LIMIT`,
/// naming the assignments it saw last.
fn await_split(what: &str, partitions: i32, mut step: impl FnMut() -> Vec<BTreeSet<i32>>) {
    let give_up = Instant::now() + WAIT_LIMIT;
    loop {
        let sets = step();
        if split_exactly(&sets, partitions) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "gave up after {WAIT_LIMIT:?} waiting until {what}; last seen {sets:?}"
        );
    }
}

/// Whether the sets are non-empty, disjoint and together exactly `0..partitions`.
fn split_exactly(sets: &[BTreeSet<i32>], partitions: i32) -> bool {
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    sets.iter().all(|set| !set.is_empty()) && total == union.len() && union == (0..partitions).collect()
}

/// How many distinct keys the members and the child read together.
fn key_count(reads: &[Vec<Read>], child_reads: &[Read]) -> usize {
    reads.iter().flatten().chain(child_reads).map(|read| &read.key).collect::<BTreeSet<_>>().len()
}

fn keys(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("k{i}")).collect()
}

/// The group generation librdkafka last joined with (it is in the consumer group metadata).
fn generation(member: &Member) -> i32 {
    use rdkafka::bindings::{
        rd_kafka_consumer_group_metadata, rd_kafka_consumer_group_metadata_destroy,
        rd_kafka_consumer_group_metadata_generation_id,
    };
    // SAFETY: the client handle lives as long as `member`; the metadata copy it returns is read
    // once and destroyed before returning.
    unsafe {
        let metadata = rd_kafka_consumer_group_metadata(member.client().native_ptr());
        assert!(!metadata.is_null(), "a consumer has group metadata");
        let generation = rd_kafka_consumer_group_metadata_generation_id(metadata);
        rd_kafka_consumer_group_metadata_destroy(metadata);
        generation
    }
}

#[test]
fn three_members_split_the_partitions_and_read_every_record_once() {
    const RECORDS: usize = 3000;
    let broker = start_broker();
    create_topic(&broker, "split", 12);
    let members: Vec<Member> = (0..3).map(|_| member(&broker, "split-group", "split")).collect();
    let mut reads = vec![Vec::new(); 3];
    await_split("the three members share the 12 partitions", 12, || {
        poll_all(&members, &mut reads, false);
        members.iter().map(assigned).collect()
    });
    let assignments: Vec<BTreeSet<i32>> = members.iter().map(assigned).collect();
    let placed = produce_all(&broker, "split", 0..RECORDS);
    await_condition("every record is read", || {
        poll_all(&members, &mut reads, false);
        reads.iter().map(Vec::len).sum::<usize>() >= RECORDS
    });

    assert_eq!(members.iter().map(assigned).collect::<Vec<_>>(), assignments, "no rebalance meanwhile");
    let mut seen = BTreeMap::new();
    for (m, reads) in reads.iter().enumerate() {
        for read in reads {
            assert!(
                assignments[m].contains(&read.partition),
                "member {m} read only its partitions: {read:?}"
            );
            assert!(seen.insert(read.key.clone(), (read.partition, read.offset)).is_none(), "once: {read:?}");
        }
    }
    let expected: BTreeMap<String, (i32, i64)> =
        placed.into_iter().enumerate().map(|(i, place)| (format!("k{i}"), place)).collect();
    assert_eq!(seen, expected, "every record, where it was produced");
    for (m, member) in members.iter().enumerate() {
        let events = member.context().events();
        assert!(!events.iter().any(|e| matches!(e, Event::Error(_))), "member {m}: {events:?}");
    }
}

/// A group member in its own process (this test binary run as `child_consumer`), which prints
/// `assigned P,P,..`, `record P OFFSET KEY` before committing each record and
/// `committed P NEXT_OFFSET` once the commit is acknowledged. SIGKILLed on drop.
struct ChildConsumer {
    child: Child,
    lines: Receiver<String>,
    assigned: BTreeSet<i32>,
    reads: Vec<Read>,
    committed: BTreeMap<i32, i64>,
}

impl ChildConsumer {
    fn spawn(broker: &Broker, group: &str, topic: &str) -> ChildConsumer {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child_consumer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{} {group} {topic}", broker.address))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child consumer");
        let stdout = child.stdout.take().expect("stdout");
        let lines = common::lines_of(stdout);
        ChildConsumer {
            child,
            lines,
            assigned: BTreeSet::new(),
            reads: Vec::new(),
            committed: BTreeMap::new(),
        }
    }

    fn take(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["assigned", list @ ..] => {
                self.assigned = list.iter().map(|p| p.parse().expect("partition")).collect();
            }
            ["record", partition, offset, key] => self.reads.push(Read {
                partition: partition.parse().expect("partition"),
                offset: offset.parse().expect("offset"),
                key: key.to_string(),
            }),
            ["committed", partition, offset] => {
                self.committed.insert(partition.parse().expect("partition"), offset.parse().expect("offset"));
            }
            _ => eprintln!("child consumer: {line}"), // its events and the test harness's lines
        }
    }

    /// Takes every line the child printed so far.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.take(&line);
        }
    }

    /// SIGKILLs the child, then takes every line it printed before it died.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the child consumer");
        self.child.wait().expect("reap the child consumer");
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => self.take(&line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("the dead child's stdout ends"),
            }
        }
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child side of `ChildConsumer`; does nothing unless `RINGMQ_TEST_CHILD_CONSUMER` is set.
#[test]
fn child_consumer() {
    let Ok(setting) = std::env::var(CHILD_ENV) else { return };
    let [address, group, topic]: [&str; 3] =
        setting.split_whitespace().collect::<Vec<_>>().try_into().expect("address, group, topic");
    let member = subscribed(&member_config(address, group), topic);
    let mut out = std::io::stdout().lock();
    writeln!(out).expect("stdout"); // ends the harness's "test child_consumer ... " line
    let (mut reported, mut events_reported) = (BTreeSet::new(), 0);
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let events = member.context().events();
        if events.len() != events_reported {
            writeln!(out, "rebalance events {:?}", &events[events_reported..]).expect("stdout");
            events_reported = events.len();
        }
        let now = assigned(&member);
        if now != reported {
            let list: Vec<String> = now.iter().map(i32::to_string).collect();
            writeln!(out, "assigned {}", list.join(" ")).expect("stdout");
            out.flush().expect("stdout");
            reported = now;
        }
        let Some(message) = member.poll(Duration::from_millis(100)) else { continue };
        let message = message.expect("child poll");
        let key = String::from_utf8_lossy(message.key().expect("key")).to_string();
        writeln!(out, "record {} {} {key}", message.partition(), message.offset()).expect("stdout");
        out.flush().expect("stdout");
        member.commit_message(&message, CommitMode::Sync).expect("child commit");
        writeln!(out, "committed {} {}", message.partition(), message.offset() + 1).expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn a_sigkilled_member_process_loses_its_partitions_to_the_others_and_no_record_is_missed() {
    const RECORDS: usize = 3000;
    let broker = start_broker();
    create_topic(&broker, "handover", 12);
    let survivors: Vec<Member> = (0..2).map(|_| member(&broker, "handover-group", "handover")).collect();
    let mut child = ChildConsumer::spawn(&broker, "handover-group", "handover");
    let mut reads = vec![Vec::new(); 2];
    await_split("two members here and one in the child share the 12 partitions", 12, || {
        poll_all(&survivors, &mut reads, true);
        child.drain();
        let mut sets: Vec<BTreeSet<i32>> = survivors.iter().map(assigned).collect();
        sets.push(child.assigned.clone());
        sets
    });
    let child_partitions = child.assigned.clone();

    produce_all(&broker, "handover", 0..RECORDS / 2);
    await_condition("the child has read 50 records", || {
        poll_all(&survivors, &mut reads, true);
        child.drain();
        child.reads.len() >= 50
    });
    child.kill();
    let killed_at = Instant::now();
    produce_all(&broker, "handover", RECORDS / 2..RECORDS);
    let mut took_over = None;
    let give_up = Instant::now() + WAIT_LIMIT;
    loop {
        poll_all(&survivors, &mut reads, true);
        let sets: Vec<BTreeSet<i32>> = survivors.iter().map(assigned).collect();
        if took_over.is_none() && split_exactly(&sets, 12) {
            took_over = Some(killed_at.elapsed());
        }
        let read = key_count(&reads, &child.reads);
        if took_over.is_some() && read == RECORDS {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "gave up after {WAIT_LIMIT:?} waiting until the survivors take the child's partitions \
             {child_partitions:?} and every record is read: they hold {sets:?}, {read} of {RECORDS} keys read; \
             rebalance events {:?}; {}",
            survivors.iter().map(|s| s.context().events()).collect::<Vec<_>>(),
            handover_state(&broker, &survivors, &reads, &child)
        );
    }
    eprintln!(
        "the child held {child_partitions:?}, read {} records and committed {:?}; the survivors held all 12 \
         partitions {:?} after the SIGKILL",
        child.reads.len(),
        child.committed,
        took_over.expect("took over")
    );

    let mut by_place: BTreeMap<(i32, i64), Vec<(&str, &Read)>> = BTreeMap::new();
    let readers = reads.iter().map(|r| ("survivor", r)).chain([("child", &child.reads)]);
    for (reader, reads) in readers {
        for read in reads {
            by_place.entry((read.partition, read.offset)).or_default().push((reader, read));
        }
    }
    for ((partition, offset), readers) in &by_place {
        if readers.len() == 1 {
            continue;
        }
        let committed_by_child = child.committed.get(partition).copied().unwrap_or(0);
        let survivor_reads = readers.iter().filter(|(reader, _)| *reader == "survivor").count();
        assert!(
            readers.len() == 2 && survivor_reads == 1 && *offset >= committed_by_child,
            "only the child's uncommitted records are read twice: {partition}/{offset} by {readers:?}, the \
             child committed up to {committed_by_child}"
        );
    }
    let read_keys: BTreeSet<String> = by_place.values().flatten().map(|(_, read)| read.key.clone()).collect();
    assert_eq!(read_keys, keys(0..RECORDS), "no record is missed");
}

/// What each partition of the handover test looks like, for its failure message.
fn handover_state(
    broker: &Broker,
    survivors: &[Member],
    reads: &[Vec<Read>],
    child: &ChildConsumer,
) -> String {
    let probe: BaseConsumer =
        member_config(&broker.address.to_string(), "handover-group").create().expect("probe");
    let committed = probe.committed_offsets(all_partitions("handover", 12), Duration::from_secs(10));
    let committed = committed.map(|list| offsets_in(&list));
    let positions: Vec<String> = survivors
        .iter()
        .map(|s| {
            s.position().map(|list| format!("{:?}", offsets_in(&list))).unwrap_or_else(|e| e.to_string())
        })
        .collect();
    let mut lines = vec![format!("group committed {committed:?}; survivor positions {positions:?}")];
    for partition in 0..12 {
        let range = |reads: &mut dyn Iterator<Item = &Read>| {
            let offsets: Vec<i64> = reads.filter(|r| r.partition == partition).map(|r| r.offset).collect();
            format!("{} reads {:?}..={:?}", offsets.len(), offsets.iter().min(), offsets.iter().max())
        };
        let watermarks = probe.fetch_watermarks("handover", partition, Duration::from_secs(10));
        lines.push(format!(
            "partition {partition}: watermarks {watermarks:?}, survivors {}, child {} (committed {:?})",
            range(&mut reads.iter().flatten()),
            range(&mut child.reads.iter()),
            child.committed.get(&partition)
        ));
    }
    lines.join("\n")
}

#[test]
fn two_groups_each_read_every_record() {
    const RECORDS: usize = 1000;
    let broker = start_broker();
    create_topic(&broker, "fanout", 4);
    produce_all(&broker, "fanout", 0..RECORDS);
    let members = vec![member(&broker, "fanout-a", "fanout"), member(&broker, "fanout-b", "fanout")];
    let mut reads = vec![Vec::new(); 2];
    await_condition("both groups read every record", || {
        poll_all(&members, &mut reads, false);
        reads.iter().all(|reads| reads.len() >= RECORDS)
    });
    for (group, reads) in ["fanout-a", "fanout-b"].iter().zip(&reads) {
        let read_keys: BTreeSet<String> = reads.iter().map(|read| read.key.clone()).collect();
        assert_eq!((read_keys, reads.len()), (keys(0..RECORDS), RECORDS), "{group}: every record once");
        assert_eq!(partition_set_of(reads), (0..4).collect(), "{group}: every partition");
    }
}

fn partition_set_of(reads: &[Read]) -> BTreeSet<i32> {
    reads.iter().map(|read| read.partition).collect()
}

/// Each partition's next offset to read after `reads` (for partitions with any).
fn next_offsets(reads: &[Read]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for read in reads {
        let at = next.entry(read.partition).or_insert(0);
        *at = (*at).max(read.offset + 1);
    }
    next
}

/// The committed offsets in `list`, for partitions with one.
fn offsets_in(list: &TopicPartitionList) -> BTreeMap<i32, i64> {
    let mut offsets = BTreeMap::new();
    for element in list.elements() {
        match element.offset() {
            Offset::Offset(offset) => {
                offsets.insert(element.partition(), offset);
            }
            Offset::Invalid => {}
            other => panic!("partition {}: unexpected committed offset {other:?}", element.partition()),
        }
    }
    offsets
}

fn all_partitions(topic: &str, partitions: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    list
}

/// Commits what one member read of 1000 records, stops the broker with `stop`, restarts it on
/// the same data and checks that a new member of the group resumes exactly there.
fn committed_offsets_survive(stop: impl FnOnce(Broker) -> tempfile::TempDir) {
    const RECORDS: usize = 1000;
    const FIRST: usize = 400;
    let broker = start_broker();
    create_topic(&broker, "resumed", 4);
    produce_all(&broker, "resumed", 0..RECORDS);
    let first = member(&broker, "resumed-group", "resumed");
    let mut first_reads = Vec::new();
    await_condition("the first member reads 400 records", || {
        poll_into(&first, &mut first_reads, false);
        first_reads.len() >= FIRST
    });
    first.commit_consumer_state(CommitMode::Sync).expect("commit acknowledged");
    let committed = next_offsets(&first_reads);
    assert_eq!(offsets_in(&first.committed(Duration::from_secs(10)).expect("committed")), committed);
    drop(first); // leaves the group

    let data = stop(broker);
    let broker = Broker::start_in(data, &BROKER_ARGS);
    let second = member(&broker, "resumed-group", "resumed");
    let fetched = second.committed_offsets(all_partitions("resumed", 4), Duration::from_secs(10));
    assert_eq!(offsets_in(&fetched.expect("OffsetFetch after the restart")), committed);
    let mut second_reads = Vec::new();
    // The first member read at least FIRST records (a poll takes what has arrived).
    let rest = RECORDS - first_reads.len();
    await_condition("the new member reads the records the first one did not", || {
        poll_into(&second, &mut second_reads, false);
        second_reads.len() >= rest
    });
    for partition in 0..4 {
        let first_offset = second_reads.iter().filter(|r| r.partition == partition).map(|r| r.offset).min();
        let resume_at = committed.get(&partition).copied().unwrap_or(0);
        assert!(
            first_offset.is_none_or(|offset| offset == resume_at),
            "partition {partition} resumes at its committed offset {resume_at}, not {first_offset:?}"
        );
    }
    let first_keys: BTreeSet<String> = first_reads.iter().map(|r| r.key.clone()).collect();
    let second_keys: BTreeSet<String> = second_reads.iter().map(|r| r.key.clone()).collect();
    assert_eq!(second_reads.len(), rest, "nothing read twice");
    assert!(first_keys.is_disjoint(&second_keys));
    assert_eq!(first_keys.union(&second_keys).cloned().collect::<BTreeSet<_>>(), keys(0..RECORDS));
    assert_eq!(
        offsets_in(&second.committed(Duration::from_secs(10)).expect("committed")),
        committed,
        "the new member's view of the group's offsets"
    );
}

#[test]
fn committed_offsets_survive_a_sigterm_restart() {
    committed_offsets_survive(|broker| {
        let (clean, data) = broker.terminate();
        assert!(clean, "exit status 0 after the stopped line");
        data
    });
}

#[test]
fn acknowledged_commits_survive_a_sigkill_restart() {
    committed_offsets_survive(Broker::kill);
}

#[test]
fn a_static_member_rejoins_without_a_rebalance() {
    let broker = start_broker();
    create_topic(&broker, "static", 6);
    let address = broker.address.to_string();
    let mut static_config = member_config(&address, "static-group");
    static_config.set("group.instance.id", "static-a");
    let first = subscribed(&static_config, "static");
    let other = member(&broker, "static-group", "static");
    let members = [first, other];
    let mut reads = vec![Vec::new(); 2];
    await_split("the two members share the 6 partitions", 6, || {
        poll_all(&members, &mut reads, false);
        members.iter().map(assigned).collect()
    });
    let [first, other] = members;
    let (static_partitions, generation_before) = (assigned(&first), generation(&other));
    let other_events = other.context().events();
    assert_eq!(generation(&first), generation_before);

    drop(first); // a static member closes without LeaveGroup
    let closed_at = Instant::now();
    let again = subscribed(&static_config, "static");
    let members = [again, other];
    await_condition("the static member is back with its partitions", || {
        poll_all(&members, &mut reads, false);
        assigned(&members[0]) == static_partitions
    });
    eprintln!("the static member was back {:?} after closing", closed_at.elapsed());
    // Past the old session's timeout too: nothing may expire it and rebalance later.
    let quiet_until = closed_at + Duration::from_millis(SESSION_TIMEOUT_MS + 2000);
    while Instant::now() < quiet_until {
        poll_all(&members, &mut reads, false);
    }
    let [again, other] = members;
    assert_eq!(other.context().events(), other_events, "the other member saw no revoke or assign");
    assert_eq!(assigned(&other), (0..6).filter(|p| !static_partitions.contains(p)).collect());
    assert_eq!((generation(&again), generation(&other)), (generation_before, generation_before));
    let groups = other.fetch_group_list(Some("static-group"), Duration::from_secs(10)).expect("describe");
    let group = &groups.groups()[0];
    assert_eq!((group.state(), group.members().len()), ("Stable", 2));
    close([again, other]);
}

#[test]
fn cooperative_sticky_members_give_up_only_some_partitions() {
    let broker = start_broker();
    create_topic(&broker, "sticky", 12);
    let mut config = member_config(&broker.address.to_string(), "sticky-group");
    config.set("partition.assignment.strategy", "cooperative-sticky");
    let first = subscribed(&config, "sticky");
    let mut reads = vec![Vec::new(); 2];
    await_condition("the first member holds all 12 partitions", || {
        poll_into(&first, &mut reads[0], false);
        assigned(&first) == (0..12).collect()
    });
    assert!(matches!(first.rebalance_protocol(), RebalanceProtocol::Cooperative), "cooperative protocol");
    let before = first.context().events().len();
    let members = [first, subscribed(&config, "sticky")];
    await_split("the two members share the 12 partitions", 12, || {
        poll_all(&members, &mut reads, false);
        members.iter().map(assigned).collect()
    });
    let events = members[0].context().events().split_off(before);
    let mut revoked = BTreeSet::new();
    for event in &events {
        match event {
            Event::Revoke(partitions) => revoked.extend(partitions),
            Event::Assign(partitions) => {
                assert!(partitions.is_empty(), "nothing new for the first: {events:?}")
            }
            Event::Error(error) => panic!("rebalance error {error}: {events:?}"),
        }
    }
    assert!(!revoked.is_empty() && revoked.len() < 12, "an incremental revoke of some: {events:?}");
    assert_eq!(assigned(&members[1]), revoked, "the second member got exactly what the first gave up");
    let kept: BTreeSet<i32> = (0..12).filter(|p| !revoked.contains(p)).collect();
    assert_eq!(assigned(&members[0]), kept, "the first member kept the others throughout");
}

fn offset_delete(broker: &Broker, group: &str, topic: &str, partition: i32) -> (i16, i16) {
    let request = OffsetDeleteRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(partition),
                ]),
        ]);
    let mut stream = broker.connect();
    stream.write_all(&request_frame(ApiKey::OffsetDelete, 0, 1, &request)).expect("send");
    let mut response = read_response(&mut stream);
    ResponseHeader::decode(&mut response, ApiKey::OffsetDelete.response_header_version(0)).expect("header");
    let response = OffsetDeleteResponse::decode(&mut response, 0).expect("decode");
    let partition_error =
        response.topics.first().and_then(|t| t.partitions.first()).map_or(-1, |p| p.error_code);
    (response.error_code, partition_error)
}

#[test]
fn groups_are_listed_described_and_deleted_only_when_empty() {
    const RECORDS: usize = 300;
    let broker = start_broker();
    create_topic(&broker, "administered", 3);
    let placed = produce_all(&broker, "administered", 0..RECORDS);
    let mut ends = BTreeMap::new();
    for (partition, offset) in placed {
        let end = ends.entry(partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    let member = member(&broker, "admin-group", "administered");
    let mut reads = Vec::new();
    await_condition("the member reads every record", || {
        poll_into(&member, &mut reads, false);
        reads.len() >= RECORDS
    });
    member.commit_consumer_state(CommitMode::Sync).expect("commit acknowledged");
    let probe: BaseConsumer =
        member_config(&broker.address.to_string(), "admin-group").create().expect("probe");
    let committed = |probe: &BaseConsumer| {
        offsets_in(
            &probe
                .committed_offsets(all_partitions("administered", 3), Duration::from_secs(10))
                .expect("fetch"),
        )
    };
    assert_eq!(committed(&probe), ends, "any client reads the group's offsets");

    let listed = probe.fetch_group_list(None, Duration::from_secs(10)).expect("list groups");
    let group = listed.groups().iter().find(|g| g.name() == "admin-group").expect("the group is listed");
    assert_eq!((group.state(), group.protocol_type(), group.members().len()), ("Stable", "consumer", 1));
    assert!(!group.protocol().is_empty(), "the chosen assignor is named");
    assert!(group.members()[0].assignment().is_some_and(|a| !a.is_empty()), "the member's assignment");

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", broker.address.to_string()).create().expect("admin");
    let options = AdminOptions::new();
    let refused = block_on(admin.delete_groups(&["admin-group"], &options)).expect("delete_groups");
    assert_eq!(refused, vec![Err(("admin-group".to_string(), RDKafkaErrorCode::NonEmptyGroup))]);
    assert_eq!(
        offset_delete(&broker, "admin-group", "administered", 0),
        (0, 86),
        "GROUP_SUBSCRIBED_TO_TOPIC"
    );

    drop(member); // leaves the group
    await_condition("the group is empty", || {
        let described =
            probe.fetch_group_list(Some("admin-group"), Duration::from_secs(10)).expect("describe");
        described.groups()[0].state() == "Empty" || {
            std::thread::sleep(Duration::from_millis(100)); // the state is only asked for, never pushed
            false
        }
    });
    assert_eq!(
        offset_delete(&broker, "admin-group", "administered", 0),
        (0, 0),
        "OffsetDelete on an empty group"
    );
    let mut after_offset_delete = ends.clone();
    after_offset_delete.remove(&0);
    assert_eq!(committed(&probe), after_offset_delete, "only partition 0's offset is gone");

    let deleted =
        block_on(admin.delete_groups(&["admin-group", "never-was"], &options)).expect("delete_groups");
    assert_eq!(
        deleted,
        vec![
            Ok("admin-group".to_string()),
            Err(("never-was".to_string(), RDKafkaErrorCode::GroupIdNotFound))
        ]
    );
    assert_eq!(committed(&probe), BTreeMap::new(), "the deleted group's offsets are gone");
    let listed = probe.fetch_group_list(None, Duration::from_secs(10)).expect("list groups");
    assert!(listed.groups().iter().all(|g| g.name() != "admin-group"), "no longer listed");
}

/// A member of a KIP-848 consumer group: the broker assigns the partitions.
fn next_generation_member(broker: &Broker, group: &str, topic: &str) -> Member {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.address.to_string())
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if let Ok(debug) = std::env::var("RINGMQ_TEST_DEBUG") {
        config.set("debug", debug).set_log_level(RDKafkaLogLevel::Debug);
    }
    subscribed(&config, topic)
}

#[test]
fn kip848_members_get_their_partitions_from_the_broker_and_take_over_when_one_leaves() {
    const RECORDS: usize = 600;
    let mut args = BROKER_ARGS.to_vec();
    args.extend(["--set", "group_consumer_heartbeat_interval_ms=300"]);
    let broker = Broker::start(&args);
    create_topic(&broker, "next-gen", 6);
    let members: Vec<Member> =
        (0..2).map(|_| next_generation_member(&broker, "next-gen-group", "next-gen")).collect();
    let mut reads = vec![Vec::new(); 2];
    await_split("the broker splits the 6 partitions between the two members", 6, || {
        poll_all(&members, &mut reads, true);
        members.iter().map(assigned).collect()
    });
    let split: Vec<BTreeSet<i32>> = members.iter().map(assigned).collect();
    produce_all(&broker, "next-gen", 0..RECORDS);
    await_condition("the two members read every record", || {
        poll_all(&members, &mut reads, true);
        key_count(&reads, &[]) == RECORDS
    });
    for (member, reads) in split.iter().zip(&reads) {
        assert!(partition_set_of(reads).is_subset(member), "a member reads only its own partitions");
    }
    assert_eq!(reads.iter().map(Vec::len).sum::<usize>(), RECORDS, "no record is read twice");

    let mut members = members;
    let leaving = members.pop().expect("two members");
    leaving.unsubscribe();
    drop(leaving);
    produce_all(&broker, "next-gen", RECORDS..2 * RECORDS);
    let mut rest = vec![Vec::new()];
    await_condition("the remaining member takes every partition and reads the new records", || {
        poll_all(&members, &mut rest, true);
        assigned(&members[0]) == (0..6).collect() && key_count(&rest, &[]) >= RECORDS
    });
    let read_keys: BTreeSet<String> = rest[0].iter().map(|read| read.key.clone()).collect();
    assert_eq!(read_keys, keys(RECORDS..2 * RECORDS), "committed records are not read again");
}

/// Sends one request at `version` and decodes its response (for what the rdkafka crate does
/// not expose: the batched and multi-group forms the Java client uses).
fn exchange<Req: kafka_protocol::protocol::Encodable, Resp: Decodable>(
    broker: &Broker,
    api: ApiKey,
    version: i16,
    request: &Req,
) -> Resp {
    let mut stream = broker.connect();
    stream.write_all(&request_frame(api, version, 7, request)).expect("send");
    let mut response = read_response(&mut stream);
    ResponseHeader::decode(&mut response, api.response_header_version(version)).expect("header");
    Resp::decode(&mut response, version).expect("decode")
}

#[test]
fn batched_coordinator_lookups_and_multi_group_offset_fetches_answer_every_group() {
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    use kafka_protocol::messages::{
        FindCoordinatorRequest, FindCoordinatorResponse, OffsetFetchRequest, OffsetFetchResponse,
    };
    let broker = start_broker();
    create_topic(&broker, "multi", 2);
    let text = |value: &str| StrBytes::from_string(value.to_string());
    let lookup = FindCoordinatorRequest::default().with_coordinator_keys(vec![text("g-one"), text("g-two")]);
    let found: FindCoordinatorResponse = exchange(&broker, ApiKey::FindCoordinator, 4, &lookup);
    let coordinators: Vec<(String, i32, i16)> =
        found.coordinators.iter().map(|c| (c.key.to_string(), c.port, c.error_code)).collect();
    let port = i32::from(broker.address.port());
    assert_eq!(coordinators, vec![("g-one".into(), port, 0), ("g-two".into(), port, 0)]);

    // Commit for one group from outside any group (as `assign` users do), then ask for both.
    let committer: BaseConsumer =
        member_config(&broker.address.to_string(), "g-one").create().expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset("multi", 1, Offset::Offset(42)).expect("offset");
    committer.commit(&offsets, CommitMode::Sync).expect("commit");
    let wanted = |group: &str| {
        let topics = OffsetFetchRequestTopics::default()
            .with_name(TopicName(text("multi")))
            .with_partition_indexes(vec![0, 1]);
        OffsetFetchRequestGroup::default().with_group_id(GroupId(text(group))).with_topics(Some(vec![topics]))
    };
    let request = OffsetFetchRequest::default().with_groups(vec![wanted("g-one"), wanted("g-two")]);
    let fetched: OffsetFetchResponse = exchange(&broker, ApiKey::OffsetFetch, 8, &request);
    let by_group: Vec<(String, Vec<i64>)> = fetched
        .groups
        .iter()
        .map(|g| {
            let offsets = g.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.committed_offset));
            (g.group_id.to_string(), offsets.collect())
        })
        .collect();
    assert_eq!(by_group, vec![("g-one".into(), vec![-1, 42]), ("g-two".into(), vec![-1, -1])]);
}
