"""Pricing: an order's trading day, the reference-data snapshot it is priced from, and the price rule.

The reference data of one trading day ``D`` (``YYYY-MM-DD`` in the exchange time zone) maps each asset traded
on ``D`` to its pricing code on ``D`` and that code's price; a snapshot holds a few days:
``{day: {asset: (pricing_code | None, price | None)}}``. ``orderflow.io.reference_data_store`` reads it from
memcached and DynamoDB and keeps it fresh per worker.

An order's trading day is its event time's calendar day in the exchange time zone. ``total`` is
``price * quantity`` in exact decimal at the scale of ``schemas/priced_order.avsc`` (never float).
"""
from __future__ import annotations

import datetime
import zoneinfo
from decimal import Decimal
from typing import Protocol

from orderflow.config import Settings

__all__ = ["ReferenceSource", "Snapshot", "UnpricedOrder", "price_order", "today", "trading_days"]

Snapshot = dict[str, dict[str, tuple]]
PRICE_SCALE = Decimal("0.000001")  # scale 6, as the decimal logical types of PricedOrder


def today(settings: Settings) -> datetime.date:
    """Today's trading day: the current date in the exchange time zone (``Settings.exchange_timezone``)."""
    return datetime.datetime.now(zoneinfo.ZoneInfo(settings.exchange_timezone)).date()


def trading_days(settings: Settings, days: list[str] | None, lookback_days: int) -> list[str]:
    """Explicit ``days`` if given, else today (exchange time zone) and the ``lookback_days`` before it."""
    if days:
        return [str(datetime.date.fromisoformat(str(day))) for day in days]
    current = today(settings)
    return [str(current - datetime.timedelta(days=n)) for n in range(lookback_days, -1, -1)]


class ReferenceSnapshots(Protocol):
    """One worker's view of the reference data (``orderflow.io.reference_data_cache.ReferenceDataCache``)."""

    def current(self) -> Snapshot:
        """The snapshot to price with, loaded or refreshed as needed."""

    def reload_after_miss(self) -> bool:
        """Reloads after an order found no day or asset (rate-limited); True if it reloaded."""


class ReferenceSource(Protocol):
    """Where pricing reads reference data from (``orderflow.io.reference_data_cache.ReferenceData``): picklable,
    opened once per worker."""

    def open(self) -> ReferenceSnapshots:
        """This worker's snapshots."""


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
