"""Dead letters to a Kafka topic (``DeadLetter`` itself is ``orderflow.model.dead_letter``).

``dead_letter_to_kafka`` is ``DeadLetter.to_kafka`` inside a pipeline: it also counts the dead letters stored
truncated to fit ``DLQ_MAX_MESSAGE_BYTES`` (Beam counter ``dead_letters/truncated``).
"""
from __future__ import annotations

from apache_beam.metrics import Metrics

from orderflow.model.dead_letter import TRUNCATED_HEADER, DeadLetter

__all__ = ["dead_letter_to_kafka"]

_truncated = Metrics.counter("dead_letters", "truncated")


def dead_letter_to_kafka(letter: DeadLetter) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of ``letter`` for the dead-letter topic (``DeadLetter.to_kafka``), counted when
    truncated."""
    key, value, headers = letter.to_kafka()
    if len(headers) > 4 and headers[4][0] == TRUNCATED_HEADER:
        _truncated.inc()
    return key, value, headers
