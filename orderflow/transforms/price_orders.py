"""Prices batches of Orders with the reference data (``ReferenceData``): code and price of the order's day.

The order's trading day is its event time's calendar day in the exchange time zone. ``total`` is
``price * quantity`` in exact decimal at the scale of ``schemas/priced_order.avsc`` (never float).
"""
from __future__ import annotations

import zoneinfo
from decimal import Decimal

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.config import DEFAULT_TIMEZONE
from orderflow.io.dead_letter import DEAD_LETTER_TAG
from orderflow.transforms.normalize_orders import order_dead_letter
from orderflow.transforms.order_batch import OrderBatch
from orderflow.transforms.reference_data import ReferenceData

STAGE = "price_orders"
PRICE_SCALE = Decimal("0.000001")  # scale 6, as the decimal logical types of PricedOrder


class UnpricedOrder(ValueError):
    """An order the reference data cannot price: ``reason`` (the dead-letter reason) and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def price_order(order: dict, snapshot: dict, zone: zoneinfo.ZoneInfo, quantized: dict | None = None) -> dict:
    """The PricedOrder of ``order`` from ``snapshot`` (``{day: {asset: (pricing_code, price)}}``), or
    UnpricedOrder with the dead-letter reason (``no_pricing_code``, ``unknown_asset``, ``no_price``,
    ``invalid_price``).

    The trading day is the event time's date in ``zone``; ``total`` is ``price * quantity`` in exact
    decimal at scale 6. ``quantized`` (price -> quantized price), when given, is a cache the caller keeps
    across orders (a batch's few distinct prices are quantized once).
    """
    day = order["event_time"].astimezone(zone).date()
    assets = snapshot.get(str(day))
    if assets is None:
        raise UnpricedOrder("no_pricing_code", f"no reference data loaded for trading day {day}")
    entry = assets.get(order["asset"])
    if entry is None:
        raise UnpricedOrder("unknown_asset", f"asset {order['asset']} is not traded on {day}")
    code, price = entry
    if code is None:
        raise UnpricedOrder("no_pricing_code", f"no pricing code for {order['asset']} on {day}")
    if price is None:
        raise UnpricedOrder("no_price", f"no price for pricing code {code} ({order['asset']}, {day})")
    exact = quantized.get(price) if quantized is not None else None
    if exact is None:
        exact = price.quantize(PRICE_SCALE)
        if quantized is not None:
            quantized[price] = exact
    if exact != price:
        raise UnpricedOrder("invalid_price", f"price {price} of {code} has more than 6 decimals")
    return {**order, "trade_day": day, "pricing_code": code, "price": exact, "total": exact * order["quantity"]}


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
            try:
                priced.append(price_order(order, reference, zone, quantized))
                continue
            except UnpricedOrder as unpriced:
                if reloaded or unpriced.reason == "invalid_price":
                    yield self._dead(order, unpriced.reason, unpriced.detail)
                    continue
            # A day or asset the snapshot lacks (a new trading day, an asset listed since): reload once per
            # batch (rate-limited by the cache) before calling it a dead letter.
            reloaded = True
            if cache.reload_after_miss():
                reference = cache.current()
            try:
                priced.append(price_order(order, reference, zone, quantized))
            except UnpricedOrder as unpriced:
                yield self._dead(order, unpriced.reason, unpriced.detail)
        self.priced.inc(len(priced))
        if priced:
            yield priced


class PriceOrders(beam.PTransform):
    """``list[Order]`` batches -> ``list[PricedOrder]`` batches (+ ``"dead_letter"``), priced by ``reference``.

    Args:
      reference: the ``ReferenceData`` to price with (each worker keeps its own fresh snapshot).
      timezone: the exchange time zone; an order's trading day is its event time's date there.
    """

    def __init__(self, reference: ReferenceData, timezone: str = DEFAULT_TIMEZONE):
        super().__init__()
        self.reference = reference
        self.timezone = timezone

    def expand(self, batches):
        return batches | "Price" >> beam.ParDo(
            _PriceBatch(self.reference, self.timezone)
        ).with_output_types(OrderBatch).with_outputs(DEAD_LETTER_TAG, main="priced")
