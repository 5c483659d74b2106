"""The pricing reference data read from its stores (memcached codes + DynamoDB prices), kept fresh per worker.

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

``read_reference_data`` reads a snapshot of some days.

``ReferenceData`` says which trading days to load and how often to reload; each pricing DoFn instance opens
its own ``ReferenceDataCache``, which loads a snapshot ``{day: {asset: (pricing_code | None, price | None)}}``
on first use, reloads it when it is older than ``refresh_seconds`` (streaming) and, at most every
``miss_reload_seconds``, when an order asks for a day or asset the snapshot lacks (a new trading day after
midnight, an asset listed during the day), so such an order is priced instead of dead-lettered.

Why a cache and not a side input: on Prism (Beam 2.77), the runner the pipelines stream on locally, a
windowed side input is served only for windows the *main input's* watermark has passed, and a main-input
element whose side-input window is still open is processed with an empty side input instead of waiting
(``engine/elementmanager.go``: ``bundleReady``, ``GetSideData``); triggered global-window side inputs are
refused (apache/beam#31438). Orders are in event time, possibly long past, and must be priced with the
latest snapshot as soon as they arrive: no window mapping gives that. A per-worker cache does, on every
runner, with no extra latency. See ``docs/runners.md``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Callable
from decimal import Decimal

from apache_beam.metrics import Metrics

from orderflow import clients
from orderflow.config import Settings
from orderflow.model.pricing import Snapshot, trading_days

_LOG = logging.getLogger(__name__)


def assets_key(day: datetime.date | str) -> str:
    return f"assets:{day}"


def pricing_code_key(asset: str, day: datetime.date | str) -> str:
    return f"pricing-code:{asset}:{day}"


def read_reference_data(settings: Settings, days: list[datetime.date | str]) -> Snapshot:
    """``{day: {asset: (pricing_code | None, price | None)}}`` for the days that have an asset index.

    Three round trips whatever the number of assets: the day indexes, all pricing codes (memcached
    ``get_many``), all prices (DynamoDB BatchGetItem, 100 keys per request).
    """
    days = [str(day) for day in days]
    client = clients.memcached(settings)
    try:
        indexes = client.get_many([assets_key(day) for day in days])
        listed = {day: json.loads(indexes[assets_key(day)]) for day in days if assets_key(day) in indexes}
        keys = [pricing_code_key(asset, day) for day, assets in listed.items() for asset in assets]
        codes = {}
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
        request = {settings.prices_table: {"Keys": [{"pricing_code": {"S": c}} for c in codes[start:start + 100]]}}
        while request:
            response = client.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(settings.prices_table, []):
                prices[item["pricing_code"]["S"]] = Decimal(item["price"]["N"])
            request = response.get("UnprocessedKeys") or None
    return prices


@dataclasses.dataclass(frozen=True)
class ReferenceData:
    """Which reference data pricing uses and how fresh it is kept (picklable; the cache is per worker).

    Args:
      settings: endpoints of memcached (pricing codes) and DynamoDB (prices).
      days: explicit trading days (YYYY-MM-DD); default today and ``lookback_days`` before it, recomputed
        at every load so the snapshot follows the calendar.
      lookback_days: trading days before today to load when ``days`` is not given.
      refresh_seconds: reload a snapshot this old; None loads once (bounded runs).
      miss_reload_seconds: an order whose day or asset is missing reloads the snapshot, at most this often.
    """

    settings: Settings
    days: tuple[str, ...] | None = None
    lookback_days: int = 1
    refresh_seconds: float | None = None
    miss_reload_seconds: float = 10.0

    def open(self, clock: Callable[[], float] = time.monotonic) -> ReferenceDataCache:
        return ReferenceDataCache(self, clock)


class ReferenceDataCache:
    """One worker's snapshot of the reference data (see the module doc). Metrics (namespace ``orders``):
    ``reference_data_loads``, ``reference_data_load_failures``, gauge ``reference_data_assets``."""

    def __init__(self, source: ReferenceData, clock: Callable[[], float] = time.monotonic):
        self._source = source
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._loaded_at = 0.0   # clock time of the last load attempt
        self._loads = Metrics.counter("orders", "reference_data_loads")
        self._failures = Metrics.counter("orders", "reference_data_load_failures")
        self._assets = Metrics.gauge("orders", "reference_data_assets")

    def current(self) -> Snapshot:
        """The snapshot, loaded first if there is none or it is older than ``refresh_seconds``."""
        refresh = self._source.refresh_seconds
        if self._snapshot is None or (refresh is not None and self._clock() - self._loaded_at >= refresh):
            self._load()
        return self._snapshot

    def reload_after_miss(self) -> bool:
        """Reloads unless the last load is more recent than ``miss_reload_seconds``; True if it reloaded."""
        if self._snapshot is not None and self._clock() - self._loaded_at < self._source.miss_reload_seconds:
            return False
        self._load()
        return True

    def _load(self) -> None:
        source = self._source
        days = trading_days(source.settings, list(source.days) if source.days else None, source.lookback_days)
        started = self._clock()
        self._loaded_at = started
        try:
            snapshot = read_reference_data(source.settings, days)
        except Exception as exc:  # noqa: BLE001 - any store failure: keep the last snapshot if there is one
            self._failures.inc()
            if self._snapshot is None:
                raise
            _LOG.warning("reference data reload for %s failed, pricing keeps the snapshot loaded before: %s",
                         days, exc)
            return
        self._snapshot = snapshot
        self._loads.inc()
        assets = sum(len(a) for a in snapshot.values())
        self._assets.set(assets)
        _LOG.info("reference data for %s: %d days with assets, %d assets, %.2fs", days, len(snapshot), assets,
                  self._clock() - started)
