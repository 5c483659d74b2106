"""The typed element that ReadFromKafka emits and the key/value pair WriteToKafka consumes."""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["KafkaRecord"]


class KafkaRecord(NamedTuple):
    """One Kafka record with its coordinates; ``(topic, partition, offset)`` identifies it for ever."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"
