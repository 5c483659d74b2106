"""ReadFromKafka against the session's Tansu broker: bounded reads, batches, start positions, commits."""
from __future__ import annotations

from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from orderflow.io.kafka_read import ReadFromKafka
from orderflow.io.kafka_record import KafkaRecord
from tests.io.kafka_testing import produce


def _records(n: int, prefix: str = "v"):
    return [(f"k{i % 13}".encode(), f"{prefix}{i}".encode(), 1_700_000_000_000 + i) for i in range(n)]


def _run_read(bootstrap: str, topic: str, check, **kwargs) -> None:
    with TestPipeline() as p:
        out = p | ReadFromKafka(bootstrap, topic, bounded=True, **kwargs)
        assert_that(out, check)


def _expect_exactly(expected: set):
    def check(actual):
        got = [(r.partition, r.offset, r.key, r.value) for r in actual]
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


def test_bounded_read_of_an_empty_topic_finishes_with_nothing(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("empty", partitions=4)

    def check(actual):
        if list(actual):
            raise BeamAssertException(f"expected nothing, got {len(list(actual))}")

    _run_read(bootstrap, topic, check)
