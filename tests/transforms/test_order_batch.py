"""OrderBatchCoder: batches of orders and priced orders survive encoding, and the bytes name no class."""
from __future__ import annotations

import datetime
from decimal import Decimal

import apache_beam as beam
import pytest

from orderflow.model.orders import OrderBatch, parse_orders
from orderflow.transforms.order_batch import OrderBatchCoder

SAO_PAULO = datetime.timezone(datetime.timedelta(hours=-3))


def test_orders_and_priced_orders_round_trip_with_their_types():
    (order,) = parse_orders(b'{"ativo": "WEGE3", "quantidade": 5, "token": "c", "order_id": "o-1", '
                            b'"event_time": "2026-11-18T12:30:00.123456-03:00"}',
                            now=datetime.datetime(2026, 11, 18, 16, tzinfo=datetime.timezone.utc))
    order["source"] = "t/0/1#0"
    priced = {**order, "trade_day": datetime.date(2026, 11, 18), "pricing_code": "W-18",
              "price": Decimal("38.123457"), "total": Decimal("190.617285")}
    batch = OrderBatch([order, priced, {"order_id": "bare", "event_time": None}])
    coder = beam.coders.registry.get_coder(OrderBatch)
    assert isinstance(coder, OrderBatchCoder)

    encoded = coder.encode(batch)
    decoded = coder.decode(encoded)

    assert type(decoded) is OrderBatch
    assert decoded == batch
    assert decoded[0]["event_time"].isoformat() == "2026-11-18T12:30:00.123456-03:00"
    assert decoded[1]["event_time"].utcoffset() == SAO_PAULO.utcoffset(None)
    assert type(decoded[1]["price"]) is Decimal and type(decoded[1]["trade_day"]) is datetime.date
    # Plain values only: no module path that a rename would break.
    assert b"orderflow" not in encoded and b"datetime" not in encoded and b"decimal" not in encoded


def test_a_field_the_coder_does_not_know_is_refused_not_dropped():
    with pytest.raises(TypeError, match="surprise"):
        OrderBatchCoder().encode(OrderBatch([{"order_id": "o", "surprise": 1}]))


def test_size_is_estimated_without_encoding():
    assert OrderBatchCoder().estimate_size(OrderBatch([{}] * 10)) == 64 + 320 * 10
