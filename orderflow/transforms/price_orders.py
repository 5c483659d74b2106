"""Prices batches of Orders with the reference data (``ReferenceData``): code and price of the order's day.

The order's trading day is its event time's calendar day in the exchange time zone. ``total`` is
``price * quantity`` in exact decimal at the scale of ``schemas/priced_order.avsc`` (never float).
"""
from __future__ import annotations

import zoneinfo
from decimal import Decimal

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.transforms.normalize_orders import order_dead_letter
from orderflow.transforms.order_batch import OrderBatch
from orderflow.transforms.reference_data import ReferenceData

DEAD_LETTER_TAG = "dead_letter"
STAGE = "price_orders"
PRICE_SCALE = Decimal("0.000001")  # scale 6, as the decimal logical types of PricedOrder


class _PriceBatch(beam.DoFn):
    def __init__(self, reference: ReferenceData, timezone: str):
        self.reference = reference
        self.timezone = timezone
        self.priced = Metrics.counter("orders", "orders_priced")
        self.dead_letters = Metrics.counter("orders", "dead_letters_pricing")
        self._reason_counters = {}

    def setup(self):
        self._zone = zoneinfo.ZoneInfo(self.timezone)
        self._reference = self.reference.open()

    def _dead(self, order: dict, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
        counter = self._reason_counters.get(reason)
        if counter is None:
            counter = self._reason_counters[reason] = Metrics.counter("orders", f"dead_letter_{reason}")
        counter.inc()
        self.dead_letters.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, order_dead_letter(order, reason, detail, STAGE))

    def process(self, orders):
        priced = OrderBatch()
        zone = self._zone
        cache = self._reference
        reference = cache.current()
        reloaded = False
        quantized = {}  # price -> quantized price, once per distinct price in the batch
        for order in orders:
            day = order["event_time"].astimezone(zone).date()
            assets = reference.get(str(day))
            entry = assets.get(order["asset"]) if assets is not None else None
            if (entry is None or entry[0] is None or entry[1] is None) and not reloaded:
                # A day or asset the snapshot lacks (a new trading day, an asset listed since): reload once
                # per batch (rate-limited by the cache) before calling it a dead letter.
                reloaded = True
                if cache.reload_after_miss():
                    reference = cache.current()
                    assets = reference.get(str(day))
                    entry = assets.get(order["asset"]) if assets is not None else None
            if assets is None:
                yield self._dead(order, "no_pricing_code", f"no reference data loaded for trading day {day}")
                continue
            if entry is None:
                yield self._dead(order, "unknown_asset", f"asset {order['asset']} is not traded on {day}")
                continue
            code, price = entry
            if code is None:
                yield self._dead(order, "no_pricing_code", f"no pricing code for {order['asset']} on {day}")
                continue
            if price is None:
                yield self._dead(order, "no_price", f"no price for pricing code {code} ({order['asset']}, {day})")
                continue
            exact = quantized.get(price)
            if exact is None:
                exact = quantized[price] = price.quantize(PRICE_SCALE)
            if exact != price:
                yield self._dead(order, "invalid_price", f"price {price} of {code} has more than 6 decimals")
                continue
            priced.append({**order, "trade_day": day, "pricing_code": code, "price": exact,
                           "total": exact * order["quantity"]})
        self.priced.inc(len(priced))
        if priced:
            yield priced


class PriceOrders(beam.PTransform):
    """``list[Order]`` batches -> ``list[PricedOrder]`` batches (+ ``"dead_letter"``), priced by ``reference``.

    Args:
      reference: the ``ReferenceData`` to price with (each worker keeps its own fresh snapshot).
      timezone: the exchange time zone; an order's trading day is its event time's date there.
    """

    def __init__(self, reference: ReferenceData, timezone: str = "America/Sao_Paulo"):
        super().__init__()
        self.reference = reference
        self.timezone = timezone

    def expand(self, batches):
        return batches | "Price" >> beam.ParDo(
            _PriceBatch(self.reference, self.timezone)
        ).with_output_types(OrderBatch).with_outputs(DEAD_LETTER_TAG, main="priced")
