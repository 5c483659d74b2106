"""Dead letters: input that could not be processed, kept with the reason instead of being dropped.

A dead letter goes to the dead-letter topic as the original payload with the reason, detail, source
(Kafka coordinates) and stage in headers. A record must fit the producer's maximum message size
(``DLQ_MAX_MESSAGE_BYTES``, librdkafka's default ``message.max.bytes``): a payload that would not, e.g. a
1 MB value that just fitted ``ordem-ativo`` before headers were added, is stored truncated to fit, with
headers ``dlq.truncated: true``, ``dlq.original_size`` (bytes) and ``dlq.sha256`` (hex digest of the whole
original payload), so that the original can be found again by its coordinates and verified. The pipeline
counts truncations as ``dead_letters/truncated`` (``orderflow.io.dead_letter.dead_letter_to_kafka``).

``Stage`` is the one vocabulary of ``DeadLetter.stage``: the stage that refused a record.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["DEAD_LETTER_METRIC_PREFIX", "DEAD_LETTER_TAG", "DLQ_MAX_MESSAGE_BYTES", "DeadLetter", "ReasonCounters",
           "Stage", "TRUNCATED_HEADER", "dead_letter_metric"]

DLQ_MAX_MESSAGE_BYTES = 1_000_000
# Room left for the record's own framing (lengths, attributes, timestamps) that the producer counts
# against message.max.bytes besides key, value and headers.
_RECORD_OVERHEAD_BYTES = 512
_MAX_DETAIL_BYTES = 1000

# The tag of the dead-letter output of every multi-output transform (``result.dead_letter``).
DEAD_LETTER_TAG = "dead_letter"
TRUNCATED_HEADER = "dlq.truncated"


class Stage:
    """The stages that produce dead letters (``DeadLetter.stage``, header ``dlq.stage``, column
    ``presence_dead_letters.stage``). Plain strings: they are stored and sent as they are."""

    # orders pipeline
    NORMALIZE_ORDERS = "normalize_orders"
    PRICE_ORDERS = "price_orders"
    POSTGRES_ORDERS = "postgres_orders"
    DYNAMODB_VOLUME = "dynamodb_volume"
    # presence pipeline
    DECODE_AVRO = "DecodeAvro"
    DECODE_AVAILABILITY_CHANGES = "DecodeAvailabilityChanges"
    REDIS_KEEPALIVES = "restaurant_state/keepalives"
    REDIS_AVAILABILITY = "restaurant_state/availability"
    POSTGRES_STATUS_INTERVALS = "presence_postgres/status_intervals"
    POSTGRES_UNAVAILABILITY = "presence_postgres/unavailability"


def _text(value: str, limit: int | None = None) -> bytes:
    encoded = value.encode("utf-8", "backslashreplace")  # never fails, whatever the text holds
    return encoded if limit is None else encoded[:limit]


class DeadLetter(NamedTuple):
    """A record that failed a stage, with a machine-readable ``reason`` and a human ``detail``."""

    reason: str          # e.g. "unparseable", "invalid_quantity", "unknown_asset", "avro_decode"
    detail: str          # what a person needs to understand the failure
    payload: bytes       # the original bytes, untouched, so the record can be fixed and replayed
    source: str = ""     # where it came from, e.g. Kafka coordinates "topic/partition/offset"
    stage: str = ""      # the stage that rejected it, one of ``Stage``

    def to_kafka(self, max_message_bytes: int = DLQ_MAX_MESSAGE_BYTES
                 ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) for a dead-letter topic: the original payload, the reason in headers.

        The record fits ``max_message_bytes``: a payload too large is truncated, with its original size
        and SHA-256 digest in headers (``dlq.truncated``, ``dlq.original_size``, ``dlq.sha256``).
        """
        key = _text(self.source)
        payload = bytes(self.payload)
        headers = [("dlq.reason", _text(self.reason)), ("dlq.detail", _text(self.detail, _MAX_DETAIL_BYTES)),
                   ("dlq.source", key), ("dlq.stage", _text(self.stage))]
        framing = len(key) + sum(len(name) + len(value) for name, value in headers) + _RECORD_OVERHEAD_BYTES
        if framing + len(payload) <= max_message_bytes:
            return key, payload, headers
        headers += [(TRUNCATED_HEADER, b"true"), ("dlq.original_size", str(len(payload)).encode()),
                    ("dlq.sha256", hashlib.sha256(payload).hexdigest().encode())]
        framing += sum(len(name) + len(value) for name, value in headers[-3:])
        return key, payload[:max(0, max_message_bytes - framing)], headers

    def to_json(self) -> str:
        return json.dumps({"reason": self.reason, "detail": self.detail, "source": self.source,
                           "stage": self.stage, "payload": self.payload.decode("utf-8", "replace")})


DEAD_LETTER_METRIC_PREFIX = "dead_letter_"


def dead_letter_metric(reason: str) -> str:
    """The name of the counter of one dead-letter reason (``<namespace>/dead_letter_<reason>``)."""
    return f"{DEAD_LETTER_METRIC_PREFIX}{reason}"


class ReasonCounters:
    """One counter per dead-letter reason, named by ``dead_letter_metric`` and made on first use.

    ``make_counter(name)`` makes a counter with an ``inc(n)`` method, e.g. Beam's ``Metrics.counter`` bound to
    a namespace: the reasons are open-ended (a parser's or a store's), so the counters cannot be declared up
    front, and the model stays free of Beam.
    """

    def __init__(self, make_counter: Callable[[str], Any]):
        self._make_counter = make_counter
        self._counters: dict[str, Any] = {}

    def inc(self, reason: str, n: int = 1) -> None:
        counter = self._counters.get(reason)
        if counter is None:
            counter = self._counters[reason] = self._make_counter(dead_letter_metric(reason))
        counter.inc(n)
