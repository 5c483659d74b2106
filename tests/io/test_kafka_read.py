"""ReadFromKafka against the session's Kafka broker: bounded reads, batches, start positions, commits."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.coders import registry as coder_registry
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from confluent_kafka import Producer

from orderflow.io.kafka_read import KafkaBatch, KafkaBatchCoder, ReadFromKafka, StartPosition
from orderflow.model.kafka_record import KafkaRecord
from tests.support.kafka_testing import produce, read_partition


def _records(n: int, prefix: str = "v"):
    return [(f"k{i % 13}".encode(), f"{prefix}{i}".encode(), 1_700_000_000_000 + i) for i in range(n)]


def _run_read(bootstrap: str, topic: str, check, **kwargs) -> None:
    with TestPipeline() as p:
        out = p | ReadFromKafka(bootstrap, topic, bounded=True, **kwargs)
        assert_that(out, check)


def _expect_exactly(expected: set, project=lambda r: (r.partition, r.offset, r.key, r.value)):
    """A matcher: the projected records are exactly ``expected``, each once."""
    def check(actual):
        got = [project(r) for r in actual]
        if len(got) != len(set(got)):
            raise BeamAssertException(f"duplicates: {len(got)} records, {len(set(got))} distinct")
        if set(got) != expected:
            raise BeamAssertException(
                f"expected {len(expected)} records, got {len(got)}; missing {sorted(expected - set(got))[:5]}, "
                f"unexpected {sorted(set(got) - expected)[:5]}")
    return check


def test_bounded_read_yields_every_record_once_with_offsets_and_keys(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("read", partitions=4)
    records = _records(2000)
    positions = produce(bootstrap, topic, records)
    assert len({p for p, _ in positions}) == 4  # keys spread the records over all 4 partitions
    expected = {(p, o, k, v) for (p, o), (k, v, _) in zip(positions, records, strict=True)}

    def check(actual):
        _expect_exactly(expected)(actual)
        if not all(isinstance(r, KafkaRecord) and r.topic == topic for r in actual):
            raise BeamAssertException("elements are not KafkaRecords of the topic")

    _run_read(bootstrap, topic, check)


def test_batched_read_emits_lists_of_one_partition_up_to_batch_size(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("batched", partitions=4)
    records = _records(3000)
    positions = produce(bootstrap, topic, records)
    expected = {(p, o, k, v) for (p, o), (k, v, _) in zip(positions, records, strict=True)}

    def check(batches):
        if not batches or not all(isinstance(b, list) and 0 < len(b) <= 100 for b in batches):
            raise BeamAssertException(f"expected non-empty lists of at most 100, got sizes {[len(b) for b in batches][:20]}")
        if any(len({r.partition for r in b}) != 1 for b in batches):
            raise BeamAssertException("a batch mixes partitions")
        _expect_exactly(expected)([r for b in batches for r in b])

    _run_read(bootstrap, topic, check, batch_size=100)


def test_batches_keep_every_field_through_a_stage_boundary_with_their_own_coder(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("batch-coder", partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(300):
        headers = [("trace", f"t{i}".encode()), ("empty", b"")] if i % 3 == 0 else None
        producer.produce(topic, None if i % 7 == 0 else f"value-{i}".encode(),
                         None if i % 5 == 0 else f"k{i % 11}".encode(), timestamp=1_700_000_000_000 + i,
                         headers=headers)
    assert producer.flush(30) == 0
    expected = {(topic, p, offset, key, value, ts, tuple(headers or ()))
                for p in range(2) for offset, key, value, ts, headers in read_partition(bootstrap, topic, p)}
    assert len(expected) == 300

    def check(batches):
        if not all(type(b) is KafkaBatch and all(type(r) is KafkaRecord for r in b) for b in batches):
            raise BeamAssertException(f"not KafkaBatches of KafkaRecords: {[type(b) for b in batches][:5]}")
        _expect_exactly(expected, project=tuple)([r for b in batches for r in b])

    with TestPipeline() as p:
        batches = p | ReadFromKafka(bootstrap, topic, bounded=True, batch_size=40)
        # The runner sizes and encodes batches with their coder: O(1) to size, no class path in the bytes.
        assert batches.element_type is KafkaBatch
        assert isinstance(coder_registry.get_coder(batches.element_type), KafkaBatchCoder)
        assert_that(batches | beam.Reshuffle(), check)


def test_kafka_batch_coder_round_trips_records_and_sizes_without_encoding():
    coder = KafkaBatchCoder()
    batch = KafkaBatch([KafkaRecord("t", 3, 10, None, b"v" * 100, 5, (("h", b"x"),)),
                        KafkaRecord("t", 3, 11, b"key", None, 6)])
    encoded = coder.encode(batch)
    decoded = coder.decode(encoded)
    assert type(decoded) is KafkaBatch and decoded == batch and all(type(r) is KafkaRecord for r in decoded)
    assert b"orderflow" not in encoded and b"KafkaRecord" not in encoded  # plain fields, no class path
    # Sized from the first record and the length: within a factor of two of the real size for such a batch.
    many = KafkaBatch(KafkaRecord("t", 3, i, b"k%d" % i, b"v%099d" % i, 5) for i in range(1000))
    assert len(coder.encode(many)) / 2 < coder.estimate_size(many) < 2 * len(coder.encode(many))
    assert coder.estimate_size(KafkaBatch()) > 0


def test_bounded_read_of_an_empty_topic_finishes_with_nothing(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("empty", partitions=4)

    def check(actual):
        if list(actual):
            raise BeamAssertException(f"expected nothing, got {len(list(actual))}")

    _run_read(bootstrap, topic, check)


def test_bounded_read_of_transactions_yields_the_committed_records_and_ends_at_the_markers(stack_settings,
                                                                                          make_topic):
    # Offsets of transaction markers and aborted records are never delivered: the read must end anyway,
    # with exactly the committed records (what the API's transactional writes leave in a topic).
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("transactions", partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    committed = set()
    for batch, commit in ((range(0, 150), True), (range(150, 200), False), (range(200, 230), True)):
        producer.begin_transaction()
        for i in batch:
            producer.produce(topic, f"value-{i}".encode(), f"k{i % 7}".encode())
        if commit:
            producer.commit_transaction(30)
            committed |= {f"value-{i}".encode() for i in batch}
        else:
            producer.abort_transaction(30)
    check = _expect_exactly(committed, project=lambda r: r.value)
    _run_read(bootstrap, topic, check)
    _run_read(bootstrap, topic, lambda batches: check([r for b in batches for r in b]), batch_size=40)


def _values_check(expected_values: set):
    return _expect_exactly(expected_values, project=lambda r: r.value)


def test_a_rerun_with_the_group_reads_only_what_was_produced_since_its_commit(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("resume", partitions=4)
    group = f"group-{topic}"
    first = _records(400, "first-")
    produce(bootstrap, topic, first)
    _run_read(bootstrap, topic, _values_check({v for _, v, _ in first}), group_id=group)

    second = _records(300, "second-")
    produce(bootstrap, topic, second)
    # Default start with a group: its committed offsets (the first run's ends).
    _run_read(bootstrap, topic, _values_check({v for _, v, _ in second}), group_id=group)
    # Nothing new: nothing read.
    _run_read(bootstrap, topic, _values_check(set()), group_id=group)


def test_without_commits_a_group_rerun_reads_everything_again(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("nocommit", partitions=4)
    records = _records(200)
    produce(bootstrap, topic, records)
    for _ in range(2):
        _run_read(bootstrap, topic, _values_check({v for _, v, _ in records}), group_id=f"g-{topic}",
                  commit_offsets=False)


def test_explicit_offsets_replay_exactly_the_records_from_those_offsets(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("explicit", partitions=4)
    records = _records(800)
    positions = produce(bootstrap, topic, records)
    starts = {0: 10, 1: 0, 2: 57, 3: 10_000}   # partition 3 starts past its end: nothing from it
    expected = {v for (p, o), (_, v, _) in zip(positions, records, strict=True) if o >= starts[p]}
    assert 0 < len(expected) < len(records)
    _run_read(bootstrap, topic, _values_check(expected), start=StartPosition.offsets({topic: starts}))


def test_explicit_offsets_use_the_fallback_for_partitions_not_named(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("fallback", partitions=4)
    records = _records(400)
    positions = produce(bootstrap, topic, records)
    expected = {v for (p, o), (_, v, _) in zip(positions, records, strict=True) if p != 0 or o >= 5}
    _run_read(bootstrap, topic, _values_check(expected), start=StartPosition.offsets({topic: {0: 5}}))
    only_new = {v for (p, o), (_, v, _) in zip(positions, records, strict=True) if p == 0 and o >= 5}
    _run_read(bootstrap, topic, _values_check(only_new),
              start=StartPosition.offsets({topic: {0: 5}}, fallback="latest"))


def test_timestamp_replay_starts_at_the_first_record_at_or_after_the_time(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("bytime", partitions=4)
    base = 1_750_000_000_000
    # Timestamps step by 10 ms, so the chosen time (between two records) has a unique answer per partition.
    records = [(f"k{i % 13}".encode(), f"t{i}".encode(), base + 10 * i) for i in range(1200)]
    produce(bootstrap, topic, records)
    at_ms = base + 10 * 700 - 5
    expected = {v for _, v, ts in records if ts >= at_ms}
    _run_read(bootstrap, topic, _values_check(expected), start=StartPosition.timestamp(at_ms / 1000))
    # A time after every record: nothing; before every record: everything.
    _run_read(bootstrap, topic, _values_check(set()), start=StartPosition.timestamp((base + 10**7) / 1000))
    _run_read(bootstrap, topic, _values_check({v for _, v, _ in records}),
              start=StartPosition.timestamp((base - 1000) / 1000))


def test_element_timestamps_come_from_the_record_or_from_timestamp_fn(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("eltime", partitions=4)
    produce(bootstrap, topic, [(b"k", b"1700000123", 1_600_000_000_000 + i) for i in range(10)])

    def record_time(actual):
        if sorted(actual) != [1_600_000_000.0 + i / 1000 for i in range(10)]:
            raise BeamAssertException(f"unexpected element timestamps {sorted(actual)}")

    def payload_time(actual):
        if actual != [1_700_000_123.0] * 10:
            raise BeamAssertException(f"unexpected element timestamps {actual}")

    with TestPipeline() as p:
        by_record = (p | "ByRecord" >> ReadFromKafka(bootstrap, topic, bounded=True)
                     | "T1" >> beam.Map(lambda r, t=beam.DoFn.TimestampParam: float(t)))
        assert_that(by_record, record_time, label="record")
        by_payload = (p | "ByPayload" >> ReadFromKafka(bootstrap, topic, bounded=True,
                                                        timestamp_fn=lambda r: int(r.value))
                      | "T2" >> beam.Map(lambda r, t=beam.DoFn.TimestampParam: float(t)))
        assert_that(by_payload, payload_time, label="payload")


def test_committed_start_needs_a_group():
    with pytest.raises(ValueError, match="group_id"):
        ReadFromKafka("127.0.0.1:1", "t", start=StartPosition.committed())


def test_reading_a_missing_topic_fails_naming_it(stack_settings):
    with pytest.raises(Exception, match="no-such-topic-1f3a.*Unknown topic"):
        _run_read(stack_settings.kafka_bootstrap, "no-such-topic-1f3a", lambda actual: None)
