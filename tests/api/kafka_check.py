"""Reading back what the API produced, straight from the broker."""
from __future__ import annotations

import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def read_at(bootstrap: str, topic: str, partition: int, offset: int):
    """The record at ``topic/partition/offset`` (a confluent_kafka Message)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"api-test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        msg = consumer.poll(10)
        assert msg is not None and not msg.error(), msg and msg.error()
        assert msg.offset() == offset
        return msg
    finally:
        consumer.close()


def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in the topic, counted by reading every partition to its end (partition EOF)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"api-test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count, at_end = 0, set()
    try:
        while len(at_end) < partitions:
            msg = consumer.poll(10)
            assert msg is not None, "no partition EOF within 10 s"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_end.add(msg.partition())
            else:
                count += 1
        return count
    finally:
        consumer.close()
