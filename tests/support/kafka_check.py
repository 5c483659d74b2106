"""Reading back what the API produced, straight from the broker."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def _consumer(bootstrap: str, isolation: str = "read_committed") -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"api-test-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": isolation})


def read_at(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 10.0):
    """The record at ``topic/partition/offset`` (a confluent_kafka Message), read ``read_committed``.

    A committed transaction's markers reach its partitions a moment after the commit is acknowledged,
    so the record may become visible a little after the API's 202: partition EOF before it is waited
    past, up to ``timeout``."""
    consumer = _consumer(bootstrap)
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            msg = consumer.poll(max(deadline - time.monotonic(), 0.1))
            if msg is not None and msg.error() and msg.error().code() == KafkaError._PARTITION_EOF \
                    and time.monotonic() < deadline:
                continue
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
