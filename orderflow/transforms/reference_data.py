"""The pricing reference data as a side input (memcached codes + DynamoDB prices, see ``orderflow.refdata``).

Bounded: loaded once, for the configured trading days. Streaming: the slowly-changing side input pattern,
a ``PeriodicImpulse`` every ``refresh_seconds`` reloads the days around today into the global window with
a repeated trigger, so the pricing step always sees the latest snapshot.

The element is ``{day: {asset: (pricing_code | None, price | None)}}`` (see ``read_reference_data``);
use it with ``beam.pvalue.AsSingleton``.
"""
from __future__ import annotations

import datetime
import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from orderflow.config import Settings
from orderflow.refdata import read_reference_data, today

_LOG = logging.getLogger(__name__)


def trading_days(settings: Settings, days: list[str] | None, lookback_days: int) -> list[str]:
    """Explicit ``days`` if given, else today (exchange time zone) and the ``lookback_days`` before it."""
    if days:
        return [str(datetime.date.fromisoformat(str(day))) for day in days]
    current = today(settings)
    return [str(current - datetime.timedelta(days=n)) for n in range(lookback_days, -1, -1)]


class _LoadReferenceData(beam.DoFn):
    def __init__(self, settings: Settings, days: list[str] | None, lookback_days: int):
        self.settings = settings
        self.days = days
        self.lookback_days = lookback_days
        self.loads = Metrics.counter("orders", "reference_data_loads")
        self.assets = Metrics.gauge("orders", "reference_data_assets")

    def process(self, _tick):
        days = trading_days(self.settings, self.days, self.lookback_days)
        started = time.monotonic()
        snapshot = read_reference_data(self.settings, days)
        self.loads.inc()
        self.assets.set(sum(len(assets) for assets in snapshot.values()))
        _LOG.info("reference data for %s: %d days with assets, %d assets, %.2fs", days, len(snapshot),
                  sum(len(a) for a in snapshot.values()), time.monotonic() - started)
        yield snapshot


class ReferenceDataSideInput(beam.PTransform):
    """PBegin -> PCollection of reference-data snapshots (one when bounded, one per refresh when streaming).

    ``days``: explicit trading days (YYYY-MM-DD); default today and ``lookback_days`` before it, recomputed
    at every refresh in streaming so the snapshot follows the calendar.
    """

    def __init__(self, settings: Settings, *, days: list[str] | None = None, lookback_days: int = 1,
                 refresh_seconds: float | None = None):
        super().__init__()
        self.settings = settings
        self.days = days
        self.lookback_days = lookback_days
        self.refresh_seconds = refresh_seconds

    def expand(self, pbegin):
        load = _LoadReferenceData(self.settings, self.days, self.lookback_days)
        if not self.refresh_seconds:
            return pbegin | "Once" >> beam.Create([None]) | "Load" >> beam.ParDo(load)
        return (
            pbegin
            | "Every" >> PeriodicImpulse(start_timestamp=time.time(), fire_interval=self.refresh_seconds)
            | "Latest" >> beam.WindowInto(window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                                          accumulation_mode=trigger.AccumulationMode.DISCARDING)
            | "Load" >> beam.ParDo(load)
        )
