"""DeadLetter as a Kafka record: a letter that fits is its untouched payload, with its reason in headers."""
from __future__ import annotations

from orderflow.model.dead_letter import DeadLetter


def test_a_dead_letter_that_fits_is_the_untouched_payload():
    key, value, headers = DeadLetter("unparseable", "bad", b"x" * 1000, "t/0/5", "normalize_orders").to_kafka()
    assert (key, value) == (b"t/0/5", b"x" * 1000)
    assert dict(headers) == {"dlq.reason": b"unparseable", "dlq.detail": b"bad", "dlq.source": b"t/0/5",
                             "dlq.stage": b"normalize_orders"}


def test_reason_counters_make_one_counter_per_reason_on_first_use():
    from orderflow.model.dead_letter import ReasonCounters

    made: dict[str, list[int]] = {}

    class Counter:
        def __init__(self, name):
            self.name = name
            made[name] = []

        def inc(self, n=1):
            made[self.name].append(n)

    counters = ReasonCounters(Counter)
    counters.inc("unparseable")
    counters.inc("unparseable", 2)
    counters.inc("invalid_quantity")
    assert made == {"dead_letter_unparseable": [1, 2], "dead_letter_invalid_quantity": [1]}
