"""The ``make demo`` Kafka connector step on the test stack: offsets, a replay plan, a decoded priced order."""
from __future__ import annotations

import datetime as dt
import decimal

from orderflow.clients import avro_codec
from orderflow_dev.demo.kafka import demo
from tests.support.kafka_testing import produce

BASE_MS = 1_760_000_000_000


def test_prints_offsets_a_replay_plan_and_a_decoded_priced_order(module_settings, capsys):
    topics = module_settings.topics
    bootstrap = module_settings.kafka_bootstrap
    produce(bootstrap, topics.orders, [(b"c1", b'{"x":1}', BASE_MS), (b"c1", b'{"x":2}', BASE_MS + 120_000)])
    priced = {"order_id": "o1", "client_token": "c1", "asset": "PETR4", "quantity": 10,
              "event_time": dt.datetime(2026, 11, 21, 13, tzinfo=dt.timezone.utc), "source_format": "JSON",
              "trade_day": dt.date(2026, 11, 21), "pricing_code": "PC1", "price": decimal.Decimal("38.5"),
              "total": decimal.Decimal("385")}
    produce(bootstrap, topics.priced_orders, [(b"c1", avro_codec(module_settings, "priced_orders").encode(priced))], partition=0)
    demo(module_settings)
    out = capsys.readouterr().out
    # The registry's subjects, as bootstrap left them: BACKWARD, the priced order's schema by name and id.
    assert f"{topics.priced_orders}-value" in out and "PricedOrder" in out and "BACKWARD" in out
    assert f"curl -s {module_settings.schema_registry_url}/subjects" in out
    assert "consumer group orderflow-orders" in out
    assert "would start at offsets" in out
    assert '"order_id": "o1"' in out and '"total": "385.000000"' in out
