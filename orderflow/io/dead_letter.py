"""Dead letters: input that could not be processed, kept with the reason instead of being dropped."""
from __future__ import annotations

import json
from typing import NamedTuple


class DeadLetter(NamedTuple):
    """A record that failed a stage, with a machine-readable ``reason`` and a human ``detail``."""

    reason: str          # e.g. "unparseable", "invalid_quantity", "unknown_asset", "avro_decode"
    detail: str          # what a person needs to understand the failure
    payload: bytes       # the original bytes, untouched, so the record can be fixed and replayed
    source: str = ""     # where it came from, e.g. Kafka coordinates "topic/partition/offset"
    stage: str = ""      # the transform that rejected it

    def to_kafka(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) for a dead-letter topic: the original payload, the reason in headers."""
        headers = [("dlq.reason", self.reason.encode()), ("dlq.detail", self.detail.encode()[:1000]),
                   ("dlq.source", self.source.encode()), ("dlq.stage", self.stage.encode())]
        return self.source.encode(), self.payload, headers

    def to_json(self) -> str:
        return json.dumps({"reason": self.reason, "detail": self.detail, "source": self.source,
                           "stage": self.stage, "payload": self.payload.decode("utf-8", "replace")})
