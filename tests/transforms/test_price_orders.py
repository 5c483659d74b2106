"""PriceOrders with the reference data loaded from real memcached + DynamoDB."""
from __future__ import annotations

import datetime
from decimal import Decimal

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from orderflow import refdata
from orderflow.io.reference_data_cache import ReferenceData
from orderflow.model.orders import parse_orders
from orderflow.transforms.price_orders import PriceOrders

DAY = datetime.date(2026, 11, 18)
UTC = datetime.timezone.utc


def _order(order_id, asset, quantity, when):
    return {"order_id": order_id, "client_token": "c", "asset": asset, "quantity": quantity,
            "event_time": when, "source_format": "JSON", "source": f"t/0/{order_id}#0"}


def test_prices_exactly_and_dead_letters_each_gap(module_settings):
    refdata.load_reference_data(module_settings, DAY, {
        "WEGE3": ("W-18", Decimal("0.1")), "PETR4": ("P-18", Decimal("38.123457")),
        "NOCODE3": (None, None), "NOPRICE3": ("NP-18", None), "FINE3": ("F-18", Decimal("1.0000001"))})
    # 02:30 UTC on the 19th is still the 18th in São Paulo (UTC-3).
    late_evening = datetime.datetime(2026, 11, 19, 2, 30, tzinfo=UTC)
    batch = [
        _order("1", "WEGE3", 3, late_evening),
        _order("2", "PETR4", 1_000_000_007, datetime.datetime(2026, 11, 18, 15, tzinfo=UTC)),
        _order("3", "UNKNOWN3", 1, late_evening),
        _order("4", "NOCODE3", 1, late_evening),
        _order("5", "NOPRICE3", 1, late_evening),
        _order("6", "WEGE3", 1, datetime.datetime(2026, 11, 19, 3, 30, tzinfo=UTC)),  # the 19th: not loaded
        _order("7", "FINE3", 1, late_evening),
    ]
    with TestPipeline() as p:
        reference = ReferenceData(module_settings, days=(str(DAY),))
        out = p | beam.Create([batch]) | PriceOrders(reference, module_settings.exchange_timezone)
        assert_that(out.priced | beam.FlatMap(lambda b: [(o["order_id"], o["trade_day"], o["pricing_code"],
                                                          o["price"], o["total"]) for o in b]),
                    equal_to([("1", DAY, "W-18", Decimal("0.1"), Decimal("0.3")),
                              ("2", DAY, "P-18", Decimal("38.123457"), Decimal("38123457266.864199"))]),
                    label="priced")
        assert_that(out.dead_letter | beam.Map(lambda d: (d.source, d.reason, d.stage)),
                    equal_to([("t/0/3", "unknown_asset", "price_orders"), ("t/0/4", "no_pricing_code", "price_orders"),
                              ("t/0/5", "no_price", "price_orders"), ("t/0/6", "no_pricing_code", "price_orders"),
                              ("t/0/7", "invalid_price", "price_orders")]), label="dead")
        # A dead letter's payload is the order as canonical Avro, ready to be replayed once fixed.
        assert_that(out.dead_letter | beam.Map(lambda d: parse_orders(d.payload)[0]["order_id"]),
                    equal_to(["3", "4", "5", "6", "7"]), label="replayable")


def test_total_is_exact_decimal_not_float(module_settings):
    refdata.load_reference_data(module_settings, DAY, {"TINY3": ("T-18", Decimal("0.000001"))})
    batch = [_order("x", "TINY3", 3, datetime.datetime(2026, 11, 18, 15, tzinfo=UTC))]
    with TestPipeline() as p:
        out = p | beam.Create([batch]) | PriceOrders(ReferenceData(module_settings, days=(str(DAY),)))
        assert_that(out.priced | beam.Map(lambda b: (type(b[0]["total"]), str(b[0]["total"]))),
                    equal_to([(Decimal, "0.000003")]))
