"""Where a Kafka read starts: start positions and their resolution to offsets, on any broker.

``StartPosition`` says where to start (earliest, latest, a consumer group's committed offsets, explicit
offsets, a timestamp); ``resolve_start_offset`` turns it into an offset for one partition.

Partition ends and timestamps are the broker's answers to ListOffsets (high watermark / last stable
offset, and the time index).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import Mapping

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from orderflow.io.retry import DEFAULT_RETRY_SECONDS

__all__ = ["COMMITTED", "PartitionReader", "StartPosition", "commit_offsets", "resolve_start_offset"]

# Answers of a group coordinator that is loading or moving: the request is retried.
_COORDINATOR_NOT_READY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                          KafkaError.COORDINATOR_NOT_AVAILABLE}
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
    """A small consumer for offset look-ups (partitions, ends, committed offsets, times, one record)."""

    def __init__(self, bootstrap_servers: str, group_id: str | None = None, consumer_config: dict | None = None,
                 timeout: float = 30.0):
        config = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id or "orderflow-offset-lookup",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
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

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """``(low_offset, end_offset)`` from one look-up (a look-up is a broker round trip)."""
        low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout)
        return max(low, 0), max(high, 0)

    def low_offset(self, topic: str, partition: int) -> int:
        """The first offset the partition still holds (older records were removed by retention)."""
        return self.watermarks(topic, partition)[0]

    def read_at(self, topic: str, partition: int, offset: int):
        """The first record at or after ``offset`` as ``(offset, timestamp_ms)``, or ``(end, None)`` at EOF."""
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        msg = self.consumer.poll(self.timeout)
        if msg is None:
            raise TimeoutError(f"no record nor partition end from {topic}/{partition}@{offset} in {self.timeout}s")
        error = msg.error()
        if error is None:
            return msg.offset(), msg.timestamp()[1]
        if error.code() == KafkaError._PARTITION_EOF:
            return msg.offset(), None
        raise KafkaException(error)

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset after the last readable record: the high watermark, or under ``read_committed`` (the
        default isolation level) the last stable offset, so an open transaction's records are not "in"."""
        return self.watermarks(topic, partition)[1]

    def committed_offset(self, topic: str, partition: int) -> int | None:
        """The group's committed offset, None where it has none. A group coordinator that is still loading
        (a broker just started or restarted) answers with a retriable error: asked again for as long as the
        outage rule allows (``orderflow.io.retry``: after a broker SIGKILL under load, the coordinator was
        seen answering NOT_COORDINATOR for over a minute, and a pipeline starting then failed)."""
        deadline = time.monotonic() + max(self.timeout, DEFAULT_RETRY_SECONDS)
        while True:
            try:
                [tp] = self.consumer.committed([TopicPartition(topic, partition)], timeout=self.timeout)
                if tp.error is not None:
                    raise KafkaException(tp.error)
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_NOT_READY or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            return None if tp.offset == OFFSET_INVALID or tp.offset < 0 else tp.offset

    def offset_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The offset of the first record with timestamp >= ``timestamp_ms`` (the end offset if none),
        by the broker's time index (ListOffsets by timestamp)."""
        [answer] = self.consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)],
                                                   timeout=self.timeout)
        if answer.error is not None:
            raise KafkaException(answer.error)
        return answer.offset if answer.offset >= 0 else self.end_offset(topic, partition)


def resolve_start_offset(reader: PartitionReader, topic: str, partition: int, start: StartPosition,
                         watermarks: tuple[int, int] | None = None) -> int:
    """The offset at which to start reading ``topic/partition`` for ``start``; ``watermarks``: the
    partition's ``reader.watermarks()`` if the caller has them already (saves a look-up)."""
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
        assert start.timestamp_ms is not None  # StartPosition checks it on creation
        return reader.offset_for_timestamp(topic, partition, start.timestamp_ms)
    low, end = watermarks or reader.watermarks(topic, partition)
    return end if kind == LATEST else low


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
