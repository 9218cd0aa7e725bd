"""One Python client against ringmq: create a topic, produce keyed records, consume them all
back from the beginning, list metadata; or, for the -group-split and -group-resume checks,
the same through consumer groups.

Usage: clients.py CHECK HOST:PORT, CHECK one of confluent, confluent-idempotent, kafka-python,
kafka-python-defaults, confluent-transactions, kafka-python-transactions,
confluent-group-split, kafka-python-group-split, confluent-group-resume,
kafka-python-group-resume, kafka-python-reassign (a three-broker cluster).

kafka-python-defaults uses kafka-python's default producer, which is idempotent;
confluent-idempotent sets enable.idempotence. Both check that the partitions hold exactly the
records produced, no duplicate. -transactions: rounds of records in transactions, every other
one aborted; read_committed readers see only the committed rounds.

group-split: two members of one group, each polling in its own thread, share a 4-partition
topic once the group has settled; together they read every record exactly once, and each
partition goes to one member. group-resume: a member reads part of the records, commits
synchronously and closes; a new member of the group resumes exactly at the committed offsets.
group-admin: the resume check, then the client's admin API lists and describes the group,
reads its committed offsets and deletes it. kip848-*: confluent-kafka with
group.protocol=consumer (the broker assigns the partitions)."""
import os
import sys
import threading
import time
import uuid

RECORDS = 1000


# Replicas of each topic made here: 3 against the three-node cluster (run.sh sets it).
REPLICATION = int(os.environ.get("COMPAT_REPLICATION_FACTOR", "1"))


def confluent(address, topic, **producer_settings):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=REPLICATION)])[topic].result(10)
    producer = Producer({"bootstrap.servers": address, "compression.type": "zstd", "acks": "all", **producer_settings})
    errors = []
    for i in range(RECORDS):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", on_delivery=lambda e, m: e and errors.append(e))
    assert producer.flush(30) == 0 and not errors, errors
    consumer = Consumer({"bootstrap.servers": address, "group.id": "compat", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    got = {}
    deadline = time.time() + 60
    while len(got) < RECORDS and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got[message.key().decode()] = message.value().decode()
    assert got == {f"k{i}": f"v{i}" for i in range(RECORDS)}, f"consumed {len(got)} of {RECORDS}"
    stored = sum(high - low for low, high in (consumer.get_watermark_offsets(TopicPartition(topic, p)) for p in range(3)))
    assert stored == RECORDS, f"{stored} records stored for {RECORDS} produced"
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 3


def kafka_python(address, topic, **producer_settings):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=address)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=REPLICATION)])
    producer = KafkaProducer(bootstrap_servers=address, acks="all", compression_type="gzip", **producer_settings)
    futures = [producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(RECORDS)]
    for future in futures:
        future.get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(3)])
    consumer.seek_to_beginning()
    got = {}
    deadline = time.time() + 60
    while len(got) < RECORDS and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                got[record.key.decode()] = record.value.decode()
    assert got == {f"k{i}": f"v{i}" for i in range(RECORDS)}, f"consumed {len(got)} of {RECORDS}"
    partitions = [TopicPartition(topic, p) for p in range(3)]
    stored = sum(consumer.end_offsets(partitions).values()) - sum(consumer.beginning_offsets(partitions).values())
    assert stored == RECORDS, f"{stored} records stored for {RECORDS} produced"
    assert consumer.partitions_for_topic(topic) == {0, 1, 2}


GROUP_RECORDS = 1000
GROUP_PARTITIONS = 4
GROUP_FIRST = 400


def wait_until(what, condition, seconds=60):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"gave up waiting until {what}"
        time.sleep(0.05)


class Member(threading.Thread):
    """Polls one consumer in its own thread (the clients are not shared across threads) until
    stopped; keeps what it read as (partition, offset, key) and its latest assignment."""

    def __init__(self, open_consumer, poll, assignment):
        super().__init__(daemon=True)
        self.open_consumer, self.poll, self.assignment_of = open_consumer, poll, assignment
        self.reads, self.assignment, self.error = [], set(), None
        self.stopping = threading.Event()

    def run(self):
        try:
            consumer = self.open_consumer()
            while not self.stopping.is_set():
                self.reads.extend(self.poll(consumer))
                self.assignment = self.assignment_of(consumer)
            consumer.close()
        except Exception as error:  # reported by the main thread
            self.error = error
            raise

    def stop(self):
        self.stopping.set()
        self.join(60)
        assert not self.is_alive(), "a member stops"
        assert self.error is None, self.error


def split_between_two(produce, open_consumer, poll, assignment):
    members = [Member(open_consumer, poll, assignment) for _ in range(2)]
    for member in members:
        member.start()

    def settled():
        assert all(member.error is None for member in members), [m.error for m in members]
        sets = [member.assignment for member in members]
        return all(sets) and not (sets[0] & sets[1]) and sets[0] | sets[1] == set(range(GROUP_PARTITIONS))

    wait_until("the two members share the partitions", settled)
    assignments = [set(member.assignment) for member in members]
    produce()
    wait_until("every record is read", lambda: sum(len(m.reads) for m in members) >= GROUP_RECORDS)
    # Taken before stopping: the first member to stop leaves, and the other then rebalances.
    assignments_at_end = [set(member.assignment) for member in members]
    for member in members:
        member.stop()
    keys = [key for member in members for (_, _, key) in member.reads]
    assert sorted(keys) == sorted(f"k{i}" for i in range(GROUP_RECORDS)), f"{len(keys)} reads, not each once"
    for member, assigned, at_end in zip(members, assignments, assignments_at_end):
        assert {partition for (partition, _, _) in member.reads} <= assigned, "a member read only its own"
        assert at_end == assigned, "no rebalance while reading"


def read_until(consumer, poll, count):
    reads = []
    deadline = time.time() + 60
    while len(reads) < count and time.time() < deadline:
        reads.extend(poll(consumer))
    assert len(reads) >= count, f"read {len(reads)} of {count}"
    return reads


def resume_after_commit(produce, open_consumer, poll, commit, committed):
    produce()
    first = open_consumer()
    first_reads = read_until(first, poll, GROUP_FIRST)
    next_offsets = {}
    for partition, offset, _ in first_reads:
        next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
    commit(first, next_offsets)
    first.close()
    second = open_consumer()
    assert committed(second) == next_offsets, f"committed {committed(second)}, expected {next_offsets}"
    second_reads = read_until(second, poll, GROUP_RECORDS - len(first_reads))
    second.close()
    for partition in range(GROUP_PARTITIONS):
        offsets = [offset for (p, offset, _) in second_reads if p == partition]
        resume_at = next_offsets.get(partition, 0)
        assert not offsets or min(offsets) == resume_at, f"partition {partition} resumed at {min(offsets)}"
    keys = [key for (_, _, key) in first_reads + second_reads]
    assert sorted(keys) == sorted(f"k{i}" for i in range(GROUP_RECORDS)), "every record once across both"


def admin_after_resume(list_groups, describe, offsets, delete, group):
    """After the resume check left `group` empty with committed offsets: the admin client lists
    and describes it, reads its offsets, and deletes it; then it is gone."""
    assert group in list_groups(), f"{group} listed"
    assert describe(group) == "Empty", f"{group} is empty, not {describe(group)}"
    assert len(offsets(group)) > 0, "its committed offsets are readable"
    delete(group)
    assert group not in list_groups(), f"{group} deleted"


def run_group_check(check, group, produce, open_consumer, poll, commit, committed, group_admin):
    """One client's group check: "split", "resume", or "admin" (resume, then the admin calls
    `group_admin()` returns: list, describe, offsets, delete)."""
    if check == "split":
        split_between_two(produce, open_consumer, poll, lambda c: {tp.partition for tp in c.assignment()})
        return
    resume_after_commit(produce, open_consumer, poll, commit, committed)
    if check == "admin":
        admin_after_resume(*group_admin(), group)


def confluent_group(address, topic, check, protocol="classic"):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(topic, num_partitions=GROUP_PARTITIONS, replication_factor=REPLICATION)])[topic].result(10)

    def produce():
        producer = Producer({"bootstrap.servers": address, "acks": "all"})
        for i in range(GROUP_RECORDS):
            producer.produce(topic, key=f"k{i}", value=f"v{i}")
        assert producer.flush(30) == 0

    def open_consumer():
        settings = {
            "bootstrap.servers": address, "group.id": f"{topic}-group", "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        if protocol == "consumer":
            # KIP-848: the broker assigns partitions and sets the session and heartbeat timing.
            settings["group.protocol"] = "consumer"
        else:
            settings.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        consumer = Consumer(settings)
        consumer.subscribe([topic])
        return consumer

    def poll(consumer):
        message = consumer.poll(0.1)
        if message is None:
            return []
        assert message.error() is None, message.error()
        return [(message.partition(), message.offset(), message.key().decode())]

    def commit(consumer, next_offsets):
        offsets = [TopicPartition(topic, p, o) for p, o in next_offsets.items()]
        consumer.commit(offsets=offsets, asynchronous=False)

    def committed(consumer):
        partitions = [TopicPartition(topic, p) for p in range(GROUP_PARTITIONS)]
        return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10) if tp.offset >= 0}

    def group_admin():
        from confluent_kafka import ConsumerGroupTopicPartitions

        return (
            lambda: {g.group_id for g in admin.list_consumer_groups().result(10).valid},
            lambda g: admin.describe_consumer_groups([g])[g].result(10).state.name.title(),
            lambda g: admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)])[g].result(10).topic_partitions,
            lambda g: admin.delete_consumer_groups([g])[g].result(10),
        )

    run_group_check(check, f"{topic}-group", produce, open_consumer, poll, commit, committed, group_admin)


def kafka_python_group(address, topic, check):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=address)
    admin.create_topics([NewTopic(topic, num_partitions=GROUP_PARTITIONS, replication_factor=REPLICATION)])

    def produce():
        producer = KafkaProducer(bootstrap_servers=address, acks="all", enable_idempotence=False)
        futures = [producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(GROUP_RECORDS)]
        for future in futures:
            future.get(timeout=30)
        producer.close()

    def open_consumer():
        return KafkaConsumer(
            topic, bootstrap_servers=address, group_id=f"{topic}-group", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=500,
            max_poll_records=50,
        )

    def poll(consumer):
        batches = consumer.poll(timeout_ms=100).values()
        return [(record.partition, record.offset, record.key.decode()) for batch in batches for record in batch]

    def commit(consumer, next_offsets):
        offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in next_offsets.items()}
        consumer.commit(offsets)

    def committed(consumer):
        offsets = {p: consumer.committed(TopicPartition(topic, p)) for p in range(GROUP_PARTITIONS)}
        return {p: o for p, o in offsets.items() if o is not None}

    def group_admin():
        return (
            lambda: {g["group_id"] for g in admin.list_groups()},
            lambda g: admin.describe_groups([g])[g]["group_state"],
            lambda g: admin.list_group_offsets(g),
            lambda g: admin.delete_groups([g]),
        )

    run_group_check(check, f"{topic}-group", produce, open_consumer, poll, commit, committed, group_admin)


TXN_ROUNDS = 6
TXN_RECORDS = 50
TXN_PARTITIONS = 3


def check_transactions(produce_round, read):
    """Rounds of TXN_RECORDS records, each in its own transaction; odd rounds are aborted after
    their records reached the broker. read_committed readers see the committed rounds, each
    record once; read_uncommitted readers see every round."""
    for round in range(TXN_ROUNDS):
        produce_round(round, commit=round % 2 == 0)
    committed = read("read_committed", TXN_RECORDS * TXN_ROUNDS // 2)
    expected = sorted(f"r{r}-{i}" for r in range(0, TXN_ROUNDS, 2) for i in range(TXN_RECORDS))
    assert sorted(committed) == expected, f"read_committed saw {len(committed)} records, wanted {len(expected)}"
    everything = read("read_uncommitted", TXN_RECORDS * TXN_ROUNDS)
    assert len(everything) == TXN_RECORDS * TXN_ROUNDS, f"read_uncommitted saw {len(everything)}"


def confluent_transactions(address, topic):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(topic, num_partitions=TXN_PARTITIONS, replication_factor=REPLICATION)])[topic].result(10)
    producer = Producer({"bootstrap.servers": address, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(30)

    def produce_round(round, commit):
        producer.begin_transaction()
        for i in range(TXN_RECORDS):
            producer.produce(topic, key=f"r{round}-{i}", value=b"v")
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)

    def read(isolation, count):
        consumer = Consumer({"bootstrap.servers": address, "group.id": f"{topic}-{isolation}",
                             "isolation.level": isolation, "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(TXN_PARTITIONS)])
        keys = []
        wait_until(f"{count} records", lambda: keys.extend(
            m.key().decode() for m in consumer.consume(100, 0.2) if m.error() is None) or len(keys) >= count)
        time.sleep(1)
        keys.extend(m.key().decode() for m in consumer.consume(100, 0.5) if m.error() is None)
        consumer.close()
        return keys

    check_transactions(produce_round, read)


def kafka_python_transactions(address, topic):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    KafkaAdminClient(bootstrap_servers=address).create_topics(
        [NewTopic(topic, num_partitions=TXN_PARTITIONS, replication_factor=REPLICATION)])
    producer = KafkaProducer(bootstrap_servers=address, transactional_id=f"{topic}-tx")
    producer.init_transactions()

    def produce_round(round, commit):
        producer.begin_transaction()
        futures = [producer.send(topic, key=f"r{round}-{i}".encode(), value=b"v") for i in range(TXN_RECORDS)]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
        (producer.commit_transaction if commit else producer.abort_transaction)()

    def read(isolation, count):
        consumer = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False, isolation_level=isolation)
        consumer.assign([TopicPartition(topic, p) for p in range(TXN_PARTITIONS)])
        consumer.seek_to_beginning()
        keys = []

        def poll():
            for records in consumer.poll(timeout_ms=200).values():
                keys.extend(record.key.decode() for record in records)
            return len(keys) >= count

        wait_until(f"{count} records", poll)
        time.sleep(1)
        poll()
        consumer.close()
        return keys

    check_transactions(produce_round, read)


def kafka_python_reassign(address, topic):
    """A partition of two replicas moves to the broker without one (KIP-455): the admin client
    asks, the move completes once the new replica is in sync, and every record stays."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import NoReassignmentInProgressError

    admin = KafkaAdminClient(bootstrap_servers=address)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=2)])
    producer = KafkaProducer(bootstrap_servers=address, acks="all")

    def produce(keys):
        for future in [producer.send(topic, key=f"k{i}".encode(), value=b"v") for i in keys]:
            future.get(timeout=30)

    def replicas():
        described = admin.describe_topics([topic])[0]["partitions"][0]
        return described["replica_nodes"], described["isr_nodes"]

    produce(range(200))
    tp = TopicPartition(topic, 0)
    assert admin.alter_partition_reassignments({tp: None}) == {tp: NoReassignmentInProgressError}
    brokers = sorted(b["broker_id"] for b in admin.describe_cluster()["brokers"])
    before, _ = replicas()
    spare = next(b for b in brokers if b not in before)
    target = [spare, before[0]]
    assert admin.alter_partition_reassignments({tp: target}) == {tp: None}
    wait_until("the move completes", lambda: not admin.list_partition_reassignments([tp]))
    wait_until(f"{topic} is on {target}", lambda: replicas() == (target, target))
    produce(range(200, 400))
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    consumer.assign([tp])
    consumer.seek_to_beginning()
    got = set()
    deadline = time.time() + 60
    while len(got) < 400 and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.update(record.key.decode() for record in records)
    assert got == {f"k{i}" for i in range(400)}, f"read {len(got)} of 400 after the move"


if __name__ == "__main__":
    client, address = sys.argv[1], sys.argv[2]
    topic = f"{client}-{uuid.uuid4().hex[:8]}"
    clients = {
        "confluent": confluent,
        "kafka-python": lambda a, t: kafka_python(a, t, enable_idempotence=False),
        "kafka-python-defaults": kafka_python,
        "confluent-idempotent": lambda a, t: confluent(a, t, **{"enable.idempotence": True}),
        "confluent-transactions": confluent_transactions,
        "kafka-python-transactions": kafka_python_transactions,
        "confluent-group-split": lambda a, t: confluent_group(a, t, "split"),
        "confluent-group-resume": lambda a, t: confluent_group(a, t, "resume"),
        "confluent-kip848-split": lambda a, t: confluent_group(a, t, "split", protocol="consumer"),
        "confluent-kip848-resume": lambda a, t: confluent_group(a, t, "resume", protocol="consumer"),
        "kafka-python-group-split": lambda a, t: kafka_python_group(a, t, "split"),
        "kafka-python-group-resume": lambda a, t: kafka_python_group(a, t, "resume"),
        "confluent-group-admin": lambda a, t: confluent_group(a, t, "admin"),
        "kafka-python-group-admin": lambda a, t: kafka_python_group(a, t, "admin"),
        "kafka-python-reassign": kafka_python_reassign,
    }
    clients[client](address, topic)
