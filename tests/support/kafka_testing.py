"""Helpers shared by the Kafka connector tests: produce known records, read a partition back directly."""
from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def produce(bootstrap: str, topic: str, records, partition: int | None = None) -> list[tuple[int, int]]:
    """Produces ``(key, value[, timestamp_ms])`` records; returns their ``(partition, offset)`` in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered: dict[int, tuple[int, int]] = {}
    errors = []

    def report(index):
        def on_delivery(error, message):
            if error is not None:
                errors.append(error)
            else:
                delivered[index] = (message.partition(), message.offset())
        return on_delivery

    for i, record in enumerate(records):
        key, value, *rest = record
        kwargs = {"timestamp": rest[0]} if rest else {}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=report(i), **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors
    return [delivered[i] for i in range(len(delivered))]


def read_partition(bootstrap: str, topic: str, partition: int, start: int = 0) -> list:
    """(offset, key, value, timestamp_ms, headers) of every record from ``start`` to the partition end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, partition, start)])
    out = []
    try:
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "no partition EOF within 10 s"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return out
            out.append((msg.offset(), msg.key(), msg.value(), msg.timestamp()[1], msg.headers()))
    finally:
        consumer.close()


def stored_records(bootstrap: str, topic: str) -> int:
    """How many records the broker holds in ``topic`` (every partition's high minus low watermark): what a
    reader from the beginning gets, counted by the broker rather than by whoever wrote them. Only for
    topics written without transactions (their commit markers take offsets too)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-counter", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(high - low for low, high in (
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions))
    finally:
        consumer.close()
