"""``PriceOrders``: batches of Orders priced with the reference data, code and price of the order's day.

The price rule and the trading day are ``orderflow.model.pricing.price_order``; the reference data comes from
a ``ReferenceSource`` (in the pipeline ``orderflow.io.reference_data_cache.ReferenceData``).
"""
from __future__ import annotations

import functools
import zoneinfo

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.config import DEFAULT_TIMEZONE
from orderflow.model.dead_letter import DEAD_LETTER_TAG, ReasonCounters, Stage
from orderflow.model.orders import OrderBatch, order_dead_letter
from orderflow.model.pricing import ReferenceSource, UnpricedOrder, price_order
from orderflow.transforms import order_batch  # noqa: F401 - registers OrderBatch's coder

__all__ = ["ORDERS_PRICED", "PriceOrders"]

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
ORDERS_PRICED = ("orders", "orders_priced")

STAGE = Stage.PRICE_ORDERS


class _PriceBatchFn(beam.DoFn):
    def __init__(self, reference: ReferenceSource, timezone: str):
        self.reference = reference
        self.timezone = timezone
        self.priced = Metrics.counter(*ORDERS_PRICED)
        self.dead_letters = Metrics.counter("orders", "dead_letters_pricing")
        self.by_reason = ReasonCounters(functools.partial(Metrics.counter, "orders"))

    def setup(self):
        self._zone = zoneinfo.ZoneInfo(self.timezone)
        self._reference = self.reference.open()

    def _dead(self, order: dict, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
        self.by_reason.inc(reason)
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
      reference: the ``ReferenceSource`` to price with, e.g. ``orderflow.io.reference_data_cache.ReferenceData``
        (one fresh snapshot per worker process).
      timezone: the exchange time zone; an order's trading day is its event time's date there.
    """

    def __init__(self, reference: ReferenceSource, timezone: str = DEFAULT_TIMEZONE):
        super().__init__()
        self.reference = reference
        self.timezone = timezone

    def expand(self, batches):
        return batches | "Price" >> beam.ParDo(
            _PriceBatchFn(self.reference, self.timezone)
        ).with_output_types(OrderBatch).with_outputs(DEAD_LETTER_TAG, main="priced")
