"""Produce then consume N records of a fixed size through librdkafka (confluent-kafka) and
print throughput. A stopgap until `ringmq bench` (issue 5); run it pinned apart from the broker:

    taskset -c 1 target/compat-venv/bin/python perf/librdkafka_throughput.py HOST:PORT [records] [bytes] [acks]
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

address = sys.argv[1]
records = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
size = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
acks = sys.argv[4] if len(sys.argv) > 4 else "1"
topic = f"perf-{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": address})  # kept alive until the topic exists
admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)

payload = b"x" * size
producer = Producer({
    "bootstrap.servers": address, "acks": acks, "linger.ms": 5, "batch.size": 16384,
    "queue.buffering.max.messages": 1_000_000, "compression.type": "none",
})
start = time.perf_counter()
for i in range(records):
    while True:
        try:
            producer.produce(topic, payload)
            break
        except BufferError:
            producer.poll(0.001)
    if i % 10_000 == 0:
        producer.poll(0)
assert producer.flush(60) == 0
produce_s = time.perf_counter() - start

consumer = Consumer({
    "bootstrap.servers": address, "group.id": "perf", "enable.auto.commit": False,
    "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760,
})
consumer.assign([TopicPartition(topic, 0, 0)])
start = time.perf_counter()
seen = 0
while seen < records:
    for message in consumer.consume(10_000, 1.0):
        if message.error() is None:
            seen += 1
consume_s = time.perf_counter() - start
mb = records * size / 1e6
print(f"produce acks={acks}: {records / produce_s:,.0f} records/s, {mb / produce_s:,.1f} MB/s")
print(f"consume: {records / consume_s:,.0f} records/s, {mb / consume_s:,.1f} MB/s")
