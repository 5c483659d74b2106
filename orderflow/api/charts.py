"""The dashboard's charts: JSON endpoints under ``/dashboard/`` (signed in as the page is: an API key with
``read`` or the dashboard session cookie), drawn by the page with uPlot (vendored, see ``static_assets``).

- ``/dashboard/history``: restaurants online/offline, orders priced per second and dead letters per second by
  reason, and each pipeline's consumer lag, sampled by the API every ``chart_sample_seconds`` for the last
  ``chart_history_minutes`` (kept in the API process's memory: the history starts when the API starts);
- ``/dashboard/pipelines``: each pipeline's health now (``pipelines.py``), as ``/healthz`` and ``/metrics`` see it;
- ``/dashboard/client-volume``: the day's top clients' cumulative volume through the day (stored orders);
- ``/dashboard/restaurant-timeline``: one restaurant's day as stored intervals (online / offline scheduled /
  offline unexplained);
- ``/dashboard/alarms``: recent alarms with their window and SMS state (queued / sent per phone).
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import threading
import time
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from orderflow.api.contract import Day
from orderflow.api.dashboard import Viewer, status_counts
from orderflow.api.deps import Res
from orderflow.api.errors import AUTHENTICATED, responses
from orderflow.api.pipelines import watch_of
from orderflow.api.queries import AlarmOut
from orderflow.api.resources import Resources
from orderflow.model.money import money
from orderflow.model.pricing import today

__all__ = ["LiveHistory"]

router = APIRouter(tags=["dashboard"])
_LOG = logging.getLogger("orderflow.api")
RATE_WINDOW_SECONDS = 10.0
# At most this share of the API process's time goes to the live history: a sample evaluates every restaurant
# (100,000 take about a second), and a sampler that took its 5 s period in full would leave keep-alives and
# status requests less than they need (issue 26). A slow sample spaces the next one out instead.
SAMPLER_SHARE = 0.05
RESTAURANT_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class LiveHistory:
    """Samples of what changes by the second, in memory: ``(time, restaurants online, offline, pipelines'
    counters and lag)``, one every ``sample_seconds``, the last ``minutes`` kept."""

    def __init__(self, sample_seconds: float, minutes: float):
        self.sample_seconds = sample_seconds
        self.samples: collections.deque = collections.deque(maxlen=max(2, int(minutes * 60 / sample_seconds)))
        self._lock = threading.Lock()

    def take(self, app_state, res: Resources) -> None:
        sample = {"at": time.time(), "online": None, "offline": None, "pipelines": {}}
        try:
            counts = status_counts(res)
            sample["online"], sample["offline"] = counts["online"], counts["offline"]
        except Exception as exc:  # noqa: BLE001 - a gap in the chart; the dashboard shows the source's error
            _LOG.debug("history: restaurant status unavailable: %s", exc)
        try:
            for state in watch_of(app_state, res).health(res):
                sample["pipelines"][state.pipeline] = {
                    "records_in": state.records_in, "out": dict(state.records_out),
                    "dead_letters": dict(state.dead_letters), "lag": state.lag}
        except Exception as exc:  # noqa: BLE001
            _LOG.debug("history: pipeline reports unavailable: %s", exc)
        with self._lock:
            self.samples.append(sample)

    def series(self, minutes: float) -> dict:
        """Columns for uPlot: times, online, offline, orders priced/s, dead letters/s per reason (both
        pipelines), lag per pipeline. A rate is the counter's rise over the last ``RATE_WINDOW_SECONDS`` (0 across
        a restart, whose counters start again)."""
        with self._lock:
            samples = list(self.samples)
        since = time.time() - minutes * 60
        out = {"t": [], "online": [], "offline": [], "orders_priced_per_s": [], "dead_letters_per_s": {}, "lag": {}}
        kept = [sample for sample in samples if sample["at"] >= since]
        base_index = -1  # the newest sample at least RATE_WINDOW_SECONDS older than the current one
        for n, sample in enumerate(kept):
            out["t"].append(round(sample["at"], 3))
            out["online"].append(sample["online"])
            out["offline"].append(sample["offline"])
            # Rates over at least RATE_WINDOW_SECONDS: the pipelines report every few seconds, so a rate
            # between two neighbouring samples would swing between 0 and a burst.
            while base_index + 1 < len(samples) and samples[base_index + 1]["at"] <= sample["at"] - RATE_WINDOW_SECONDS:
                base_index += 1
            base = samples[base_index] if base_index >= 0 else None
            out["orders_priced_per_s"].append(_rise(sample, base, "orders", "out", "orders/orders_priced"))
            for name, state in sample["pipelines"].items():
                out["lag"].setdefault(name, [None] * n).append(state["lag"])
                for reason in state["dead_letters"]:
                    out["dead_letters_per_s"].setdefault(f"{name}/{reason}", [None] * n).append(
                        _rise(sample, base, name, "dead_letters", reason))
            for columns in (out["lag"], out["dead_letters_per_s"]):
                for values in columns.values():
                    if len(values) < n + 1:
                        values.append(None)
        return out

    async def run(self, app_state, res: Resources) -> None:
        """Samples until cancelled (the app's lifespan): one sample every ``sample_seconds``, or less often when
        a sample takes more than ``SAMPLER_SHARE`` of that (then every ``took / SAMPLER_SHARE`` seconds)."""
        while True:
            started = time.monotonic()
            await run_in_threadpool(self.take, app_state, res)
            took = time.monotonic() - started
            await asyncio.sleep(max(self.sample_seconds, took / SAMPLER_SHARE) - took)


def _rise(sample: dict, base: dict | None, pipeline: str, part: str, key: str) -> float | None:
    """Per second, how much a pipeline's counter rose from ``base`` to ``sample`` (never negative)."""
    now = sample["pipelines"].get(pipeline)
    was = base["pipelines"].get(pipeline) if base else None
    if not now or not was or sample["at"] <= base["at"]:
        return None
    return max(0, now[part].get(key, 0) - was[part].get(key, 0)) / (sample["at"] - base["at"])


class HistoryOut(BaseModel):
    sample_seconds: float
    t: list[float]
    online: list[int | None]
    offline: list[int | None]
    orders_priced_per_s: list[float | None]
    dead_letters_per_s: dict[str, list[float | None]]
    lag: dict[str, list[int | None]]


@router.get("/dashboard/history", response_model=HistoryOut, responses=responses(*AUTHENTICATED, 422),
            summary="Restaurants online/offline, orders priced/s, dead letters/s by reason and consumer lag over "
                    "the last minutes (sampled by the API since it started)")
def dashboard_history(request: Request, who: Viewer,
                      minutes: Annotated[float, Query(gt=0, le=24 * 60)] = 60.0):
    history: LiveHistory = request.app.state.live_history
    return HistoryOut(sample_seconds=history.sample_seconds, **history.series(minutes))


class PartitionLagOut(BaseModel):
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


class PipelineOut(BaseModel):
    pipeline: str
    group_id: str
    topics: list[str]
    workers: int
    heartbeat_age_seconds: float
    progress_age_seconds: float | None
    newest_event_age_seconds: float | None
    records_in: int
    records_out: dict[str, int]
    dead_letters: dict[str, int]
    partitions: list[PartitionLagOut]
    lag: int | None
    lag_error: str | None
    failing: str | None


class PipelinesOut(BaseModel):
    stall_seconds: float
    pipelines: list[PipelineOut]


@router.get("/dashboard/pipelines", response_model=PipelinesOut, responses=responses(*AUTHENTICATED),
            summary="Each streaming pipeline's health: heartbeat, freshness, records, dead letters, consumer lag")
def dashboard_pipelines(request: Request, who: Viewer, res: Res):
    states = watch_of(request.app.state, res).health(res)
    return PipelinesOut(stall_seconds=res.config.pipeline_stall_seconds,
                        pipelines=[PipelineOut(**s.as_json()) for s in states])


class ClientSeries(BaseModel):
    client_token: str
    total: str
    cumulative: list[float]


class ClientVolumeOut(BaseModel):
    day: str
    bucket_minutes: int
    t: list[float]
    clients: list[ClientSeries]


@router.get("/dashboard/client-volume", response_model=ClientVolumeOut, responses=responses(*AUTHENTICATED, 422),
            summary="The day's top clients by volume, their cumulative volume through the day (stored orders), "
                    "from one bucket before the day's first order")
def client_volume(who: Viewer, res: Res, top: Annotated[int, Query(ge=1, le=20)] = 5,
                  bucket_minutes: Annotated[int, Query(ge=1, le=240)] = 15):
    day = today(res.settings)
    zone = ZoneInfo(res.settings.exchange_timezone)
    start = dt.datetime.combine(day, dt.time(), zone)
    end = min(start + dt.timedelta(days=1), dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=bucket_minutes))
    with res.pg.connection() as conn:
        rows = conn.execute(
            "WITH top AS (SELECT client_token, sum(total) AS total FROM orders WHERE trade_day = %s"
            "  GROUP BY client_token ORDER BY sum(total) DESC, client_token LIMIT %s)"
            " SELECT o.client_token, top.total, floor(extract(epoch FROM o.event_time - %s) / %s)::int AS bucket,"
            "  sum(o.total) FROM orders o JOIN top USING (client_token) WHERE o.trade_day = %s"
            " GROUP BY 1, 2, 3 ORDER BY top.total DESC, 1, 3",
            (day, top, start, bucket_minutes * 60, day)).fetchall()
    buckets = max(1, int((end - start).total_seconds() // (bucket_minutes * 60)))
    times = [(start + dt.timedelta(minutes=bucket_minutes * (i + 1))).timestamp() for i in range(buckets)]
    clients: dict[str, ClientSeries] = {}
    per_bucket: dict[str, list[float]] = {}
    for token, total, bucket, amount in rows:
        if token not in clients:
            clients[token] = ClientSeries(client_token=token, total=money(total), cumulative=[])
            per_bucket[token] = [0.0] * buckets
        per_bucket[token][min(max(bucket, 0), buckets - 1)] += float(amount)
    # The day starts one bucket before its first order (not at midnight, hours before the market opens).
    first = max(0, min((min(max(r[2], 0), buckets - 1) for r in rows), default=0) - 1)
    for token, series in clients.items():
        running = 0.0
        for amount in per_bucket[token]:
            running += amount
            series.cumulative.append(round(running, 2))
        series.cumulative = series.cumulative[first:]
    return ClientVolumeOut(day=day.isoformat(), bucket_minutes=bucket_minutes, t=times[first:],
                           clients=list(clients.values()))


class TimelineInterval(BaseModel):
    start: str
    end: str
    status: str
    reason: str | None


class TimelineOut(BaseModel):
    restaurant_id: str
    day: str
    day_start: str
    day_end: str
    intervals: list[TimelineInterval]
    seconds: dict[str, int]


@router.get("/dashboard/restaurant-timeline", response_model=TimelineOut, responses=responses(*AUTHENTICATED, 422),
            summary="One restaurant's day as stored intervals: online / offline scheduled / offline unexplained")
def restaurant_timeline(who: Viewer, res: Res,
                        restaurant_id: Annotated[str, Query(pattern=RESTAURANT_ID)],
                        day: Annotated[Day | None, Query(description="local day, YYYY-MM-DD; default today")] = None):
    day = day or today(res.settings)
    with res.pg.connection() as conn:
        rows = conn.execute("SELECT start_at, end_at, status, reason FROM restaurant_status_intervals"
                            " WHERE restaurant_id = %s AND day = %s ORDER BY start_at",
                            (restaurant_id, day)).fetchall()
    seconds: dict[str, int] = {"online": 0, "offline_scheduled": 0, "offline_unexplained": 0}
    for start, end, status, _ in rows:
        seconds[status] = seconds.get(status, 0) + int((end - start).total_seconds())
    zone = ZoneInfo(res.settings.presence_timezone)
    day_start = dt.datetime.combine(day, dt.time(), zone)
    day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
    return TimelineOut(restaurant_id=restaurant_id, day=day.isoformat(), day_start=day_start.isoformat(),
                       day_end=day_end.isoformat(), seconds=seconds, intervals=[
        TimelineInterval(start=r[0].isoformat(), end=r[1].isoformat(), status=r[2], reason=r[3]) for r in rows])


class DashboardAlarm(AlarmOut):
    """An alarm as ``GET /alarms`` gives it, with the state of its SMS; its window in the exchange's zone."""

    fired_at: str
    sms_queued: int
    sms_sent: int
    timezone: str = Field(description="the exchange's time zone (IANA name), where alarm windows are days and "
                                      "hours; window_start and window_end carry its UTC offset",
                          examples=["America/Sao_Paulo"])


@router.get("/dashboard/alarms", response_model=list[DashboardAlarm], responses=responses(*AUTHENTICATED, 422),
            summary="Recent alarms, newest first, with their window and SMS state")
def dashboard_alarms(who: Viewer, res: Res, limit: Annotated[int, Query(ge=1, le=200)] = 20):
    with res.pg.connection() as conn:
        rows = conn.execute(
            "SELECT a.rule_id, a.scope, a.window_start, a.window_end, a.total, a.threshold, a.fired_at,"
            " count(s.phone), count(s.sent_at) FROM alarms a LEFT JOIN sms_outbox s"
            " USING (rule_id, scope, window_start) GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY a.fired_at DESC LIMIT %s",
            (limit,)).fetchall()
    zone_name = res.settings.exchange_timezone
    zone = ZoneInfo(zone_name)
    return [DashboardAlarm(rule_id=r[0], scope=r[1], window_start=r[2].astimezone(zone).isoformat(),
                           window_end=r[3].astimezone(zone).isoformat(), total=money(r[4]), threshold=money(r[5]),
                           fired_at=r[6].isoformat(), sms_queued=r[7], sms_sent=r[8], timezone=zone_name)
            for r in rows]
