"""Where a Kafka read starts: start positions and their resolution to offsets, on any broker.

``StartPosition`` says where to start (earliest, latest, a consumer group's committed offsets, explicit
offsets, a timestamp); ``resolve_start_offset`` turns it into an offset for one partition.

Partition ends are found by fetching to partition EOF rather than trusting ListOffsets: some brokers
(Tansu) answer ListOffsets wrongly (the high watermark is the base offset of the last batch + 1 and
``offsets_for_times`` answers 0), while Fetch and ``enable.partition.eof`` are right everywhere. For the
same reason a timestamp is resolved with ListOffsets, then *verified* by reading the records there, and
resolved by a binary search over offsets (by fetching) when the broker's answer is wrong.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import Mapping

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

EARLIEST, LATEST, COMMITTED, OFFSETS, TIMESTAMP = "earliest", "latest", "committed", "offsets", "timestamp"
_FALLBACKS = (EARLIEST, LATEST)


@dataclasses.dataclass(frozen=True)
class StartPosition:
    """Where ``ReadFromKafka`` starts reading each partition.

    Build one with ``StartPosition.earliest()``, ``.latest()``, ``.committed(fallback="earliest")``,
    ``.offsets({topic: {partition: offset}}, fallback="earliest")``, ``.timestamp(when)``, or parse the
    command-line form with ``StartPosition.parse(text)``. ``fallback`` applies to partitions without a
    committed offset / not named in the explicit map.
    """

    kind: str
    offsets_by_topic: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    timestamp_ms: int | None = None
    fallback: str = EARLIEST

    def __post_init__(self):
        if self.kind not in (EARLIEST, LATEST, COMMITTED, OFFSETS, TIMESTAMP):
            raise ValueError(f"unknown start position kind {self.kind!r}")
        if self.fallback not in _FALLBACKS:
            raise ValueError(f"fallback must be one of {_FALLBACKS}, got {self.fallback!r}")
        if self.kind == TIMESTAMP and self.timestamp_ms is None:
            raise ValueError("a timestamp start position needs timestamp_ms")

    @classmethod
    def earliest(cls) -> StartPosition:
        return cls(EARLIEST)

    @classmethod
    def latest(cls) -> StartPosition:
        return cls(LATEST)

    @classmethod
    def committed(cls, fallback: str = EARLIEST) -> StartPosition:
        return cls(COMMITTED, fallback=fallback)

    @classmethod
    def offsets(cls, offsets: Mapping[str, Mapping[int, int]], fallback: str = EARLIEST) -> StartPosition:
        frozen = tuple(sorted((topic, tuple(sorted((int(p), int(o)) for p, o in parts.items())))
                              for topic, parts in offsets.items()))
        return cls(OFFSETS, offsets_by_topic=frozen, fallback=fallback)

    @classmethod
    def timestamp(cls, when: dt.datetime | float | int) -> StartPosition:
        """``when``: an aware datetime (naive = UTC) or epoch seconds."""
        if isinstance(when, dt.datetime):
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            millis = int(when.timestamp() * 1000)
        else:
            millis = int(round(float(when) * 1000))
        return cls(TIMESTAMP, timestamp_ms=millis)

    @classmethod
    def parse(cls, text: str, fallback: str = EARLIEST) -> StartPosition:
        """``earliest`` | ``latest`` | ``committed`` | ISO-8601 time | ``topic:0=12,1=40[;topic2:0=5]``."""
        text = text.strip()
        if text in (EARLIEST, LATEST):
            return cls(text)
        if text == COMMITTED:
            return cls.committed(fallback)
        if re.fullmatch(r"[^:;=]+:\d+=\d+(,\d+=\d+)*(;[^:;=]+:\d+=\d+(,\d+=\d+)*)*", text):
            offsets: dict[str, dict[int, int]] = {}
            for part in text.split(";"):
                topic, _, pairs = part.partition(":")
                for pair in pairs.split(","):
                    p, _, o = pair.partition("=")
                    offsets.setdefault(topic, {})[int(p)] = int(o)
            return cls.offsets(offsets, fallback)
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(
                f"start position {text!r}: expected earliest, latest, committed, an ISO-8601 time or "
                "topic:partition=offset[,partition=offset...]"
            ) from exc
        return cls.timestamp(when)

    def explicit_offset(self, topic: str, partition: int) -> int | None:
        for name, parts in self.offsets_by_topic:
            if name == topic:
                return dict(parts).get(partition)
        return None


class PartitionReader:
    """A small consumer for offset look-ups (single records, partition ends); not for bulk reading."""

    def __init__(self, bootstrap_servers: str, group_id: str | None = None, consumer_config: dict | None = None,
                 timeout: float = 30.0):
        config = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id or "orderflow-offset-lookup",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Look-ups read one record: small fetches make each seek cheap.
            "fetch.wait.max.ms": 10,
            "max.partition.fetch.bytes": 65536,
            **(consumer_config or {}),
        }
        self.consumer = Consumer(config)
        self.timeout = timeout

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def partitions(self, topic: str) -> list[int]:
        md = self.consumer.list_topics(topic, timeout=self.timeout).topics.get(topic)
        error = md.error if md is not None else None
        if md is None or error is not None or not md.partitions:
            code = error.code() if error is not None else KafkaError.UNKNOWN_TOPIC_OR_PART
            reason = error.str() if error is not None else "no partitions"
            raise KafkaException(KafkaError(code, f"topic {topic!r}: {reason}"))
        return sorted(md.partitions)

    def low_offset(self, topic: str, partition: int) -> int:
        low, _ = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout)
        return max(low, 0)

    def read_at(self, topic: str, partition: int, offset: int):
        """The first record at or after ``offset`` as ``(offset, timestamp_ms)``, or ``(end, None)`` at EOF."""
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(1.0)
            if msg is None:
                continue
            error = msg.error()
            if error is None:
                return msg.offset(), msg.timestamp()[1]
            if error.code() == KafkaError._PARTITION_EOF:
                return msg.offset(), None
            raise KafkaException(error)
        raise TimeoutError(f"no record nor partition end from {topic}/{partition} at offset {offset} "
                           f"in {self.timeout}s")

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset after the last record, found by fetching to partition EOF (ListOffsets may be wrong)."""
        _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout)
        # A wrong high watermark is at most too low (base of the last batch + 1): fetch on from there.
        self.consumer.assign([TopicPartition(topic, partition, max(high - 1, 0))])
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(10_000, 0.05):
                error = msg.error()
                if error is None:
                    continue
                if error.code() == KafkaError._PARTITION_EOF:
                    return msg.offset()
                raise KafkaException(error)
        raise TimeoutError(f"no partition end from {topic}/{partition} in {self.timeout}s")

    def committed_offset(self, topic: str, partition: int) -> int | None:
        [tp] = self.consumer.committed([TopicPartition(topic, partition)], timeout=self.timeout)
        if tp.error is not None:
            raise KafkaException(tp.error)
        return None if tp.offset == OFFSET_INVALID or tp.offset < 0 else tp.offset

    def offset_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The offset of the first record with timestamp >= ``timestamp_ms`` (the end offset if none).

        Asks ListOffsets first and keeps its answer only if reading there confirms it (the record there
        is at or after the time and the record before it is earlier); otherwise binary-searches offsets
        by fetching. Assumes timestamps do not decrease along a partition (producer CreateTime within
        clock skew), which is the premise of time-based replay in Kafka itself.
        """
        low = self.low_offset(topic, partition)
        end = self.end_offset(topic, partition)
        if end <= low:
            return end
        try:
            [answer] = self.consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)],
                                                       timeout=self.timeout)
            candidate = answer.offset if answer.error is None else None
        except KafkaException:
            candidate = None
        if candidate is not None and self._verify(topic, partition, candidate, timestamp_ms, low, end):
            return candidate if candidate >= 0 else end
        return self._binary_search(topic, partition, timestamp_ms, low, end)

    def _verify(self, topic, partition, candidate, timestamp_ms, low, end) -> bool:
        if candidate < 0 or candidate >= end:
            # "no record at or after the time": true only if the last record is earlier.
            _, last_ts = self.read_at(topic, partition, end - 1)
            return last_ts is not None and last_ts < timestamp_ms
        offset, ts = self.read_at(topic, partition, candidate)
        if ts is None or ts < timestamp_ms:
            return False
        if offset <= low:
            return True
        _, before_ts = self.read_at(topic, partition, offset - 1)
        return before_ts is not None and before_ts < timestamp_ms

    def _binary_search(self, topic, partition, timestamp_ms, low, end) -> int:
        lo, hi = low, end  # invariant: records before lo are earlier than the time; the answer is <= hi
        while lo < hi:
            mid = (lo + hi) // 2
            offset, ts = self.read_at(topic, partition, mid)
            if ts is None or ts >= timestamp_ms:
                hi = mid            # nothing in [mid, offset) exists, so the answer is <= mid
            else:
                lo = offset + 1
        return lo


def resolve_start_offset(reader: PartitionReader, topic: str, partition: int, start: StartPosition) -> int:
    """The offset at which to start reading ``topic/partition`` for ``start``."""
    kind = start.kind
    if kind == OFFSETS:
        explicit = start.explicit_offset(topic, partition)
        if explicit is not None:
            return explicit
        kind = start.fallback
    elif kind == COMMITTED:
        committed = reader.committed_offset(topic, partition)
        if committed is not None:
            return committed
        kind = start.fallback
    if kind == TIMESTAMP:
        return reader.offset_for_timestamp(topic, partition, start.timestamp_ms)
    if kind == LATEST:
        return reader.end_offset(topic, partition)
    return reader.low_offset(topic, partition)


def commit_offsets(bootstrap_servers: str, group_id: str, offsets: Mapping[tuple[str, int], int],
                   consumer_config: dict | None = None, timeout: float = 30.0) -> None:
    """Sets ``group_id``'s committed offsets to ``{(topic, partition): next_offset_to_read}``."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id,
                         "enable.auto.commit": False, **(consumer_config or {})})
    try:
        result = consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=False)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise KafkaException(failed[0].error)
    finally:
        consumer.close()
