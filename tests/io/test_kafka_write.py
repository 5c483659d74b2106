"""WriteToKafka against the session's Kafka broker, and the Avro round trip through Kafka."""
from __future__ import annotations

import datetime as dt
import decimal
import pathlib

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from confluent_kafka.admin import AdminClient, NewTopic

from orderflow.io.avro import DecodeAvro
from orderflow.io.kafka_read import ReadFromKafka
from orderflow.io.kafka_write import WriteToKafka
from orderflow.model.avro import AvroCodec
from tests.support.avro_history import encode_v1, encode_v1_confluent, widget_codec
from tests.support.kafka_testing import read_partition
from tests.support.naming import unique_name
from tests.support.waiting import wait_for

SCHEMAS = pathlib.Path(__file__).parent / "schemas"


def _all_records(bootstrap: str, topic: str, partitions: int = 4) -> list:
    return [(p, *r) for p in range(partitions) for r in read_partition(bootstrap, topic, p)]


def test_write_to_kafka_writes_tuples_with_keys_and_headers(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("write", partitions=4)
    elements = [(f"key{i % 5}".encode(), f"value{i}".encode()) for i in range(500)]
    elements.append((None, b"no key", [("h1", b"x"), ("h2", b"y")]))
    with TestPipeline() as p:
        _ = p | beam.Create(elements) | WriteToKafka(bootstrap, topic)
    written = _all_records(bootstrap, topic)
    assert sorted(v for _, _, _, v, _, _ in written) == sorted(e[1] for e in elements)
    by_value = {v: (part, k, h) for part, _, k, v, _, h in written}
    assert by_value[b"no key"][1] is None and by_value[b"no key"][2] == [("h1", b"x"), ("h2", b"y")]
    # One key, one partition: keys choose the partition.
    partitions_of_key = {}
    for part, _, key, _, _, _ in written:
        partitions_of_key.setdefault(key, set()).add(part)
    assert all(len(parts) == 1 for key, parts in partitions_of_key.items() if key is not None)
    assert len({part for part, *_ in written}) > 1


def test_write_to_kafka_takes_lists_of_tuples(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("write-batch", partitions=4)
    batches = [[(f"b{b}-{i}".encode(), f"{b}:{i}".encode()) for i in range(100)] for b in range(7)]
    with TestPipeline() as p:
        _ = p | beam.Create(batches) | WriteToKafka(bootstrap, topic)
    values = sorted(v for _, _, _, v, _, _ in _all_records(bootstrap, topic))
    assert values == sorted(v for batch in batches for _, v in batch)


def _librdkafka_threads() -> int:
    """librdkafka's threads in this process (``rdk:main``, ``rdk:broker…``): a producer left open keeps them."""
    count = 0
    for task in pathlib.Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().startswith("rdk:")
        except OSError:  # the thread ended while listed
            pass
    return count


def test_a_delivery_failure_fails_the_bundle_instead_of_vanishing():
    before = _librdkafka_threads()
    # Nothing listens on port 1: no record can be delivered within message.timeout.ms.
    with pytest.raises(Exception, match=r"WriteToKafka\(nowhere\).*undelivered"):
        with TestPipeline() as p:
            _ = (p | beam.Create([(b"k", b"v")])
                 | WriteToKafka("127.0.0.1:1", "nowhere", delivery_timeout=1.5))
    # The failed bundle's producer is closed, not left reconnecting to the dead broker for the rest of the process.
    wait_for(lambda: _librdkafka_threads() <= before, 30, "the failed bundle's producer threads to end")


def test_a_record_the_broker_refuses_fails_the_bundle(stack_settings, make_topic):
    # The topic takes record batches of at most 200 bytes; the producer's limit (1 MB) lets the big one go, so the
    # refusal comes back from the broker as a failed delivery report, the only kind the producer asks for.
    bootstrap, topic = stack_settings.kafka_bootstrap, unique_name("small-records")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "200"})]).values()
    future.result(30)
    refused = rf"WriteToKafka\({topic}\): [1-3] records failed, 0 undelivered.*[Tt]oo [Ll]arge"
    with pytest.raises(Exception, match=refused):
        with TestPipeline() as p:
            _ = (p | beam.Create([[(b"k", b"small"), (b"k", b"x" * 1000), (b"k", b"small too")]])
                 | WriteToKafka(bootstrap, topic, delivery_timeout=10))


def test_avro_round_trip_through_kafka_with_an_old_schema_and_corrupt_bytes(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("avro", partitions=4)
    codec = widget_codec(stack_settings.schema_registry_url, f"{topic}-value")
    made_at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    widgets = [{"id": f"w{i}", "size": i, "made_at": made_at, "price": decimal.Decimal(f"{i}.2500"),
                "colour": "blue"} for i in range(200)]
    old_record = {"id": "old", "size": 3, "made_at": made_at, "price": decimal.Decimal("9.0000")}
    old = encode_v1(old_record)  # written before the registry (single-object encoding)
    old_confluent = encode_v1_confluent(stack_settings.schema_registry_url, f"{topic}-v1-value",
                                        {**old_record, "id": "old-confluent"})
    with TestPipeline() as p:
        _ = (p | beam.Create(widgets)
             | beam.Map(lambda w: (w["id"].encode(), codec.encode(w)))
             | WriteToKafka(bootstrap, topic))
    with TestPipeline() as p:
        _ = p | beam.Create([(b"old", old), (b"old-confluent", old_confluent),
                                    (b"bad", b"\xc3\x01\x00\x00")]) | WriteToKafka(bootstrap, topic)

    with TestPipeline() as p:
        decoded, dead = (p | ReadFromKafka(bootstrap, topic, bounded=True)
                         | DecodeAvro(AvroCodec("widget", SCHEMAS, registry=codec.registry)))
        assert_that(decoded | beam.Map(lambda w: (w["id"], w["price"], w["colour"])),
                    equal_to([(w["id"], w["price"], "blue") for w in widgets]
                             + [("old", decimal.Decimal("9"), None), ("old-confluent", decimal.Decimal("9"), None)]),
                    label="decoded")

        def check_dead(letters):
            if [(d.reason, d.payload) for d in letters] != [("avro_truncated", b"\xc3\x01\x00\x00")]:
                raise BeamAssertException(f"unexpected dead letters {letters}")
            if not letters[0].source.startswith(topic + "/"):
                raise BeamAssertException(f"dead letter lost its Kafka coordinates: {letters[0].source}")
        assert_that(dead, check_dead, label="dead")
