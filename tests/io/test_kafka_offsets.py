"""StartPosition parsing, and offset look-ups against the session's Kafka broker."""
from __future__ import annotations

import datetime as dt

import pytest

from orderflow.io.kafka_offsets import PartitionReader, StartPosition, commit_offsets, resolve_start_offset
from tests.support.kafka_testing import produce


@pytest.mark.parametrize("text, kind", [("earliest", "earliest"), ("latest", "latest"), ("committed", "committed")])
def test_parse_named_positions(text, kind):
    assert StartPosition.parse(text).kind == kind


def test_parse_a_time_naive_as_utc_and_aware_as_given():
    assert StartPosition.parse("2026-11-21T10:00:00Z").timestamp_ms == 1_795_255_200_000
    assert StartPosition.parse("2026-11-21T10:00:00").timestamp_ms == 1_795_255_200_000
    assert StartPosition.parse("2026-11-21T07:00:00-03:00").timestamp_ms == 1_795_255_200_000
    assert StartPosition.timestamp(dt.datetime(2026, 11, 21, 10, tzinfo=dt.timezone.utc)).timestamp_ms == 1_795_255_200_000
    assert StartPosition.timestamp(1_795_255_200.5).timestamp_ms == 1_795_255_200_500


def test_parse_explicit_offsets_of_several_topics():
    start = StartPosition.parse("orders:0=12,3=40;other.topic-x:1=7", fallback="latest")
    assert start.kind == "offsets" and start.fallback == "latest"
    assert (start.explicit_offset("orders", 0), start.explicit_offset("orders", 3)) == (12, 40)
    assert start.explicit_offset("other.topic-x", 1) == 7
    assert start.explicit_offset("orders", 1) is None and start.explicit_offset("nope", 0) is None
    assert start == StartPosition.offsets({"other.topic-x": {1: 7}, "orders": {3: 40, 0: 12}}, fallback="latest")


@pytest.mark.parametrize("text", ["", "yesterday", "orders:0=x", "orders:=1", "2026-13-01"])
def test_parse_rejects_anything_else_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="earliest, latest, committed"):
        StartPosition.parse(text)


def test_invalid_positions_are_rejected():
    with pytest.raises(ValueError):
        StartPosition("sometime")
    with pytest.raises(ValueError):
        StartPosition.committed(fallback="committed")
    with pytest.raises(ValueError):
        StartPosition("timestamp")


def test_resolution_of_each_kind(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("offsets", partitions=1)
    base = 1_780_000_000_000
    # Several producer batches: the end is the offset after the last record, not after the first batch.
    for chunk in range(5):
        produce(bootstrap, topic, [(b"k", b"v", base + 100 * (chunk * 20 + i)) for i in range(20)], partition=0)
    group = f"g-{topic}"
    with PartitionReader(bootstrap, group) as reader:
        assert reader.end_offset(topic, 0) == 100
        assert reader.low_offset(topic, 0) == 0
        assert resolve_start_offset(reader, topic, 0, StartPosition.earliest()) == 0
        assert resolve_start_offset(reader, topic, 0, StartPosition.latest()) == 100
        assert resolve_start_offset(reader, topic, 0, StartPosition.committed()) == 0      # none: fallback
        assert resolve_start_offset(reader, topic, 0, StartPosition.committed("latest")) == 100
        for target, expected in [(base, 0), (base + 1, 1), (base + 100 * 57, 57), (base + 100 * 57 - 30, 57),
                                 (base + 100 * 99, 99), (base + 100 * 99 + 1, 100), (base - 10**6, 0)]:
            assert reader.offset_for_timestamp(topic, 0, target) == expected, target
        assert resolve_start_offset(reader, topic, 0, StartPosition.offsets({topic: {0: 42}})) == 42
        commit_offsets(bootstrap, group, {(topic, 0): 64})
        assert resolve_start_offset(reader, topic, 0, StartPosition.committed()) == 64
