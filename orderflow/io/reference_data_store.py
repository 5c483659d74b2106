"""The pricing reference data in its stores (memcached codes + DynamoDB prices) and its reader, without Beam.

The stores (one trading day ``D`` = ``YYYY-MM-DD`` in the exchange time zone; ``python -m orderflow.refdata
load`` writes them):

- memcached ``assets:{D}`` -> JSON list of the assets traded on ``D``. memcached cannot list its keys, so
  this index is how a reader learns which ``pricing-code`` keys exist for the day: one ``get`` for the
  index, then one ``get_many`` for all of the day's codes.
- memcached ``pricing-code:{ASSET}:{D}`` -> the asset's pricing code on ``D`` (codes change daily).
- DynamoDB ``Settings.prices_table`` item ``{pricing_code: S, price: N}`` -> the code's price (exact decimal).

An asset that is listed for the day but has no code, or whose code has no price, is a reference-data
gap: orders for it are dead-lettered with ``no_pricing_code`` / ``no_price``; an asset absent from the
day's list is ``unknown_asset`` (``orderflow.model.pricing.price_order``).

``read_reference_data`` reads a snapshot of some days; ``python -m orderflow.refdata load`` writes them;
``orderflow.io.reference_data_cache`` keeps a snapshot fresh in each pricing worker.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from decimal import Decimal

from orderflow import clients
from orderflow.config import Settings
from orderflow.model.pricing import Snapshot

__all__ = ["assets_key", "pricing_code_key", "read_reference_data"]


def assets_key(day: datetime.date | str) -> str:
    return f"assets:{day}"


def pricing_code_key(asset: str, day: datetime.date | str) -> str:
    return f"pricing-code:{asset}:{day}"


def read_reference_data(settings: Settings, days: Sequence[datetime.date | str]) -> Snapshot:
    """``{day: {asset: (pricing_code | None, price | None)}}`` for the days that have an asset index.

    Three round trips whatever the number of assets: the day indexes, all pricing codes (memcached
    ``get_many``), all prices (DynamoDB BatchGetItem, 100 keys per request).
    """
    day_names = [str(day) for day in days]
    client = clients.memcached(settings)
    try:
        indexes = client.get_many([assets_key(day) for day in day_names])
        listed = {day: json.loads(indexes[assets_key(day)]) for day in day_names if assets_key(day) in indexes}
        keys = [pricing_code_key(asset, day) for day, assets in listed.items() for asset in assets]
        codes: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):
            codes.update(client.get_many(keys[start:start + 500]))
    finally:
        client.close()
    prices = _batch_get_prices(settings, sorted({code.decode() for code in codes.values()}))
    result: Snapshot = {}
    for day, assets in listed.items():
        result[day] = {}
        for asset in assets:
            raw = codes.get(pricing_code_key(asset, day))
            code = raw.decode() if raw is not None else None
            result[day][asset] = (code, prices.get(code) if code else None)
    return result


def _batch_get_prices(settings: Settings, codes: list[str]) -> dict[str, Decimal]:
    client = clients.aws_client(settings, "dynamodb")
    prices = {}
    for start in range(0, len(codes), 100):
        request: dict | None = {settings.prices_table: {"Keys": [{"pricing_code": {"S": c}} for c in codes[start:start + 100]]}}
        while request:
            response = client.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(settings.prices_table, []):
                prices[item["pricing_code"]["S"]] = Decimal(item["price"]["N"])
            request = response.get("UnprocessedKeys") or None
    return prices
