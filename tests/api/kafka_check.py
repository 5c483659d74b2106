"""Reading back what the API produced, straight from the broker."""
from __future__ import annotations

import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def _consumer(bootstrap: str, isolation: str = "read_committed") -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"api-test-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": isolation})


def read_at(bootstrap: str, topic: str, partition: int, offset: int):
    """The record at ``topic/partition/offset`` (a confluent_kafka Message)."""
    consumer = _consumer(bootstrap)
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        msg = consumer.poll(10)
        assert msg is not None and not msg.error(), msg and msg.error()
        assert msg.offset() == offset
        return msg
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, partitions: int, isolation: str = "read_committed") -> list:
    """Every record of the topic a reader with ``isolation`` gets, each partition read to its end (partition
    EOF: under read_committed, the last stable offset)."""
    consumer = _consumer(bootstrap, isolation)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records, at_end = [], set()
    try:
        while len(at_end) < partitions:
            msg = consumer.poll(10)
            assert msg is not None, "no partition EOF within 10 s"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_end.add(msg.partition())
            else:
                records.append(msg)
        return records
    finally:
        consumer.close()


def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in the topic that a read_committed reader gets."""
    return len(read_all(bootstrap, topic, partitions))
