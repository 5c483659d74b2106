"""DeadLetter as a Kafka record: a letter that fits is its untouched payload, with its reason in headers."""
from __future__ import annotations

from orderflow.model.dead_letter import DeadLetter


def test_a_dead_letter_that_fits_is_the_untouched_payload():
    key, value, headers = DeadLetter("unparseable", "bad", b"x" * 1000, "t/0/5", "normalize_orders").to_kafka()
    assert (key, value) == (b"t/0/5", b"x" * 1000)
    assert dict(headers) == {"dlq.reason": b"unparseable", "dlq.detail": b"bad", "dlq.source": b"t/0/5",
                             "dlq.stage": b"normalize_orders"}
