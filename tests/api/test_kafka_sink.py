"""The API's Kafka sink (orderflow/api/kafka_sink.py) on the session's broker: what the served API's tests cannot
hold still, a producer of the pool made stale at a known moment."""
from __future__ import annotations

import asyncio

from confluent_kafka import Producer

from orderflow.api.kafka_sink import KafkaSink
from tests.support.kafka_check import read_all
from tests.support.waiting import wait_for


def test_a_request_that_meets_a_stale_producer_is_written_by_a_rebuilt_one(stack_settings, make_topic):
    topic = make_topic("sink-stale", partitions=1)
    sink = KafkaSink(stack_settings.kafka_bootstrap, producers=1, timeout=10.0)
    try:
        assert [d.offset for d in asyncio.run(sink.produce(topic, [(b"k", b"before")]))] == [0]
        # Another producer initialised with the pool's one transactional.id (read from the sink's only slot)
        # fences the sink's producer, as a broker restart can leave one stale: its next transaction fails.
        # The answer may come a moment before the slot is back in the pool.
        [slot], _ = wait_for(lambda: list(sink._slots.queue), 10, "the slot back in the pool")
        fencer = Producer({"bootstrap.servers": stack_settings.kafka_bootstrap,
                           "transactional.id": slot.config["transactional.id"]})
        fencer.init_transactions(10)
        stale = slot.producer
        delivered = asyncio.run(sink.produce(topic, [(b"k", b"after-1"), (b"k", b"after-2")]))
        assert len(delivered) == 2 and slot.producer is not stale  # answered, by a rebuilt producer
    finally:
        sink.close()
    # Each record once, for a read_committed reader: the failed transaction left nothing visible.
    assert [m.value() for m in read_all(stack_settings.kafka_bootstrap, topic, 1)] == [b"before", b"after-1", b"after-2"]
