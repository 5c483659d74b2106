"""NormalizeOrders over Kafka record batches (parse_orders' rules: tests/model/test_orders.py)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from orderflow.model.kafka_record import KafkaRecord
from orderflow.transforms.normalize_orders import NormalizeOrders

TS = 1_763_700_000_000  # a Kafka record timestamp, epoch millis


def test_normalize_orders_batches_and_dead_letters():
    records = [
        KafkaRecord("in", 0, 0, None, b'{"ativo": "WEGE3", "quantidade": 1, "token": "a"}', TS),
        KafkaRecord("in", 0, 1, None, b"garbage line", TS),
        KafkaRecord("in", 0, 2, None, b"PETR4,2,b", TS),
    ]
    with TestPipeline() as p:
        out = p | beam.Create([records]) | NormalizeOrders()
        assert_that(out.orders | beam.Map(lambda batch: sorted((o["order_id"], o["source"]) for o in batch)),
                    equal_to([[("in/0/0#0", "in/0/0#0"), ("in/0/2#0", "in/0/2#0")]]), label="orders")
        assert_that(out.dead_letter | beam.Map(lambda d: (d.reason, d.source, d.payload, d.stage)),
                    equal_to([("unparseable", "in/0/1", b"garbage line", "normalize_orders")]), label="dead")


def test_normalize_orders_counts_each_reason_and_keeps_records_in_equal_to_orders_plus_dead_letters():
    from apache_beam.metrics.metric import MetricsFilter

    good = b'{"ativo": "WEGE3", "quantidade": 1, "token": "a"}'
    records = [KafkaRecord("in", 0, i, None, payload, TS) for i, payload in enumerate([
        good, b"WEGE3,1,an\x00a", b"WEGE3,5_000,b", b"WEGE3,1,c,o\x00", good, b"WEGE3,99999999999999,d"])]
    p = TestPipeline()
    out = p | beam.Create([records]) | NormalizeOrders()
    assert_that(out.orders | beam.Map(len), equal_to([2]), label="orders")
    assert_that(out.dead_letter | beam.Map(lambda d: (d.source, d.reason)), equal_to([
        ("in/0/1", "invalid_token"), ("in/0/2", "invalid_quantity"), ("in/0/3", "invalid_order_id"),
        ("in/0/5", "quantity_out_of_range")]), label="dead")
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    assert counters["records_in"] == 6 == counters["orders_normalized"] + counters["dead_letters_normalize"]
    assert {name: counters[name] for name in counters if name.startswith("dead_letter_")} == {
        "dead_letter_invalid_token": 1, "dead_letter_invalid_quantity": 1, "dead_letter_invalid_order_id": 1,
        "dead_letter_quantity_out_of_range": 1}
