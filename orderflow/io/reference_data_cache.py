"""The pricing reference data (``orderflow.io.reference_data_store``), kept fresh per worker.

``ReferenceData`` says which trading days to load and how often to reload. Every pricing DoFn instance of a
worker process shares one ``ReferenceDataCache`` (Beam's ``apache_beam.utils.shared.Shared``), which loads a
snapshot ``{day: {asset: (pricing_code | None, price | None)}}`` on first use, reloads it when it is older
than ``refresh_seconds`` (streaming) and, at most every ``miss_reload_seconds``, when an order asks for a day
or asset the snapshot lacks (a new trading day after midnight, an asset listed during the day), so such an
order is priced instead of dead-lettered.

Outages follow the sinks' rule (``orderflow.io.retry``): the first load retries an unavailable memcached or
DynamoDB for up to ``retry_seconds``; a later reload that fails keeps the snapshot it has. Sharing matters
here: a runner creates new DoFn instances while the pipeline runs (a second bundle processor for a busy
stage, or one replacing an idle one); were each to load its own snapshot, one starting during a DynamoDB
outage would fail its bundle, which on Prism fails the job.

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
import logging
import threading
import time
from collections.abc import Callable

from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from orderflow.config import Settings
from orderflow.io.reference_data_store import read_reference_data
from orderflow.io.retry import DEFAULT_RETRY_SECONDS, call_with_retry
from orderflow.model.pricing import Snapshot, trading_days

__all__ = ["ReferenceData"]

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReferenceData:
    """Which reference data pricing uses and how fresh it is kept (picklable; the cache is per worker process).

    Args:
      settings: endpoints of memcached (pricing codes) and DynamoDB (prices).
      days: explicit trading days (YYYY-MM-DD); default today and ``lookback_days`` before it, recomputed
        at every load so the snapshot follows the calendar.
      lookback_days: trading days before today to load when ``days`` is not given.
      refresh_seconds: reload a snapshot this old; None loads once (bounded runs).
      miss_reload_seconds: an order whose day or asset is missing reloads the snapshot, at most this often.
      retry_seconds: how long the first load retries an unavailable store (the sinks' outage budget).
    """

    settings: Settings
    days: tuple[str, ...] | None = None
    lookback_days: int = 1
    refresh_seconds: float | None = None
    miss_reload_seconds: float = 10.0
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    # One cache per worker process for this source, whichever DoFn instance opens it first.
    _shared: Shared = dataclasses.field(default_factory=Shared, init=False, compare=False, repr=False)

    def open(self, clock: Callable[[], float] = time.monotonic) -> ReferenceDataCache:
        """This worker process's cache of this source (the same object for every caller)."""
        return self._shared.acquire(lambda: ReferenceDataCache(self, clock))


class ReferenceDataCache:
    """One worker's snapshot of the reference data (see the module doc), safe to share between bundle
    threads. Metrics (namespace ``orders``): ``reference_data_loads``, ``reference_data_load_failures``,
    gauge ``reference_data_assets``."""

    def __init__(self, source: ReferenceData, clock: Callable[[], float] = time.monotonic):
        self._source = source
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._loaded_at = 0.0   # clock time of the last load attempt
        self._loading = threading.Lock()  # one load at a time; the others price with the snapshot they have
        self._loads = Metrics.counter("orders", "reference_data_loads")
        self._failures = Metrics.counter("orders", "reference_data_load_failures")
        self._assets = Metrics.gauge("orders", "reference_data_assets")

    def current(self) -> Snapshot:
        """The snapshot, loaded first if there is none or it is older than ``refresh_seconds``."""
        refresh = self._source.refresh_seconds

        def stale() -> bool:
            return refresh is not None and self._clock() - self._loaded_at >= refresh

        if self._snapshot is None or stale():
            self._load(stale)
        assert self._snapshot is not None  # _load() keeps the last snapshot or raises when there is none
        return self._snapshot

    def reload_after_miss(self) -> bool:
        """Reloads unless the last load is more recent than ``miss_reload_seconds``; True if it reloaded
        (or another thread was reloading: its snapshot is the one to look at again)."""
        def due() -> bool:
            return self._clock() - self._loaded_at >= self._source.miss_reload_seconds

        if self._snapshot is not None and not due():
            return False
        self._load(due)
        return True

    def _load(self, due: Callable[[], bool]) -> None:
        """Loads the snapshot; with one already loaded, only if ``due()`` still holds once this thread has the
        lock, and not at all while another thread loads (this one goes on with the current snapshot)."""
        if self._snapshot is None:
            with self._loading:
                if self._snapshot is None:
                    self._read()
            return
        if not self._loading.acquire(blocking=False):
            return
        try:
            if due():
                self._read()
        finally:
            self._loading.release()

    def _read(self) -> None:
        source = self._source
        days = trading_days(source.settings, list(source.days) if source.days else None, source.lookback_days)
        started = self._clock()
        self._loaded_at = started

        def read() -> Snapshot:
            return read_reference_data(source.settings, days)

        try:
            # The first load rides out an outage like a sink; a reload keeps the snapshot it has instead.
            snapshot = read() if self._snapshot is not None else call_with_retry(
                f"reference data for {days}", read, source.retry_seconds)
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
