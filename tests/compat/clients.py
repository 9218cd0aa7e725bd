"""One Python client against ringmq: create a topic, produce keyed records, consume them all
back from the beginning, list metadata.

Usage: clients.py confluent|kafka-python|kafka-python-defaults HOST:PORT

kafka-python-defaults uses kafka-python's default producer, which is idempotent (it needs
InitProducerId, see findings.md); kafka-python turns idempotence off."""
import sys
import time
import uuid

RECORDS = 1000


def confluent(address, topic):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": address, "compression.type": "zstd", "acks": "all"})
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
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 3


def kafka_python(address, topic, **producer_settings):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=address)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
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
    assert consumer.partitions_for_topic(topic) == {0, 1, 2}


if __name__ == "__main__":
    client, address = sys.argv[1], sys.argv[2]
    topic = f"{client}-{uuid.uuid4().hex[:8]}"
    clients = {
        "confluent": confluent,
        "kafka-python": lambda a, t: kafka_python(a, t, enable_idempotence=False),
        "kafka-python-defaults": kafka_python,
    }
    clients[client](address, topic)
