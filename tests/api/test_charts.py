"""The dashboard's chart endpoints over the API's isolated stack: each answers what is stored (orders, status
intervals, alarms and their SMS), the live history fills as the API samples, and none answers without a key."""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from zoneinfo import ZoneInfo

import psycopg
import pytest

from orderflow.model.pricing import today
from tests.support.served_api import ServedApi


def _zone_at_midday() -> str:
    """A fixed-offset zone where it is now about noon: the client-volume test puts orders an hour apart earlier
    in the exchange's day, which the first hour after its midnight does not have (the test failed at 00:05 there)."""
    offset = dt.datetime.now(dt.timezone.utc).hour - 12  # Etc/GMT+N is N hours behind UTC
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{offset:+d}"


@pytest.fixture(scope="module")
def sampled_api(api_settings, api_config):
    served = ServedApi(api_settings, dataclasses.replace(api_config, chart_sample_seconds=0.2)).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def chart_reader(sampled_api):
    with sampled_api.client(sampled_api.key("read")) as client:
        yield client


def test_chart_endpoints_need_a_key(sampled_api):
    with sampled_api.client() as anonymous:
        for path in ("/dashboard/history", "/dashboard/pipelines", "/dashboard/client-volume",
                     "/dashboard/restaurant-timeline?restaurant_id=r-1", "/dashboard/alarms"):
            assert anonymous.get(path).status_code == 401, path


def test_history_fills_as_the_api_samples(chart_reader, state_store):
    state_store.record_keepalives({f"hist-{i}": int(time.time() * 1000) for i in range(3)})
    time.sleep(1.0)
    history = chart_reader.get("/dashboard/history", params={"minutes": 1}).json()
    assert len(history["t"]) >= 3 and history["t"] == sorted(history["t"])
    assert len(history["online"]) == len(history["offline"]) == len(history["t"])
    assert history["online"][-1] + history["offline"][-1] >= 3


@pytest.fixture
def midday_api(api_settings, api_config):
    """The API with its exchange in a zone where it is now about noon (see ``_zone_at_midday``)."""
    served = ServedApi(dataclasses.replace(api_settings, exchange_timezone=_zone_at_midday()), api_config).start()
    yield served
    served.stop()


def test_client_volume_is_cumulative_through_the_day(midday_api):
    day = today(midday_api.app.state.resources.settings)
    zone = ZoneInfo(midday_api.settings.exchange_timezone)
    start = dt.datetime.combine(day, dt.time(), zone)
    rows = [("cv-1", "big", 100, start + dt.timedelta(minutes=10)), ("cv-2", "big", 50, start + dt.timedelta(minutes=70)),
            ("cv-3", "small", 30, start + dt.timedelta(minutes=20))]
    with psycopg.connect(midday_api.settings.postgres_dsn, autocommit=True) as conn:
        for order_id, client, total, at in rows:
            conn.execute("INSERT INTO orders (order_id, client_token, asset, quantity, pricing_code, price, total,"
                         " event_time, trade_day, source_format) VALUES (%s, %s, 'X', 1, 'X', %s, %s, %s, %s, 'json')",
                         (order_id, client, total, total, at, day))
    with midday_api.client(midday_api.key("read")) as chart_reader:
        body = chart_reader.get("/dashboard/client-volume", params={"top": 2, "bucket_minutes": 60}).json()
    assert [c["client_token"] for c in body["clients"]] == ["big", "small"]
    big = body["clients"][0]
    # From the day's first order on (its bucket is the first), cumulative per hour.
    assert big["total"] == "150" and big["cumulative"][:2] == [100.0, 150.0] and big["cumulative"][-1] == 150.0
    assert body["clients"][1]["cumulative"][:2] == [30.0, 30.0]
    assert len(big["cumulative"]) == len(body["t"]) and body["t"][0] == (start + dt.timedelta(hours=1)).timestamp()


def test_restaurant_timeline_and_alarms_with_sms_state(sampled_api, chart_reader):
    zone = ZoneInfo(sampled_api.settings.presence_timezone)
    day = dt.date(2026, 3, 2)
    at = lambda h: dt.datetime.combine(day, dt.time(h), zone)  # noqa: E731
    window = dt.datetime(2026, 3, 2, 15, tzinfo=dt.timezone.utc)
    with psycopg.connect(sampled_api.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO restaurant_status_intervals (restaurant_id, start_at, end_at, status, reason, day)"
                     " VALUES ('tl-1', %s, %s, 'online', NULL, %s), ('tl-1', %s, %s, 'offline_scheduled', 'HOLIDAYS', %s)",
                     (at(10), at(12), day, at(12), at(13), day))
        conn.execute("INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold)"
                     " VALUES ('r', 'c', %s, %s, 12.50, 10)", (window, window + dt.timedelta(hours=1)))
        conn.execute("INSERT INTO sms_outbox (rule_id, scope, window_start, phone, message, sent_at) VALUES"
                     " ('r', 'c', %s, '+1', 'm', now()), ('r', 'c', %s, '+2', 'm', NULL)", (window, window))
    timeline = chart_reader.get("/dashboard/restaurant-timeline",
                                params={"restaurant_id": "tl-1", "day": day.isoformat()}).json()
    assert [(i["status"], i["reason"]) for i in timeline["intervals"]] == [("online", None),
                                                                           ("offline_scheduled", "HOLIDAYS")]
    assert timeline["seconds"] == {"online": 7200, "offline_scheduled": 3600, "offline_unexplained": 0}
    assert dt.datetime.fromisoformat(timeline["day_start"]) == at(0)
    alarm = next(a for a in chart_reader.get("/dashboard/alarms").json() if a["rule_id"] == "r")
    assert (alarm["total"], alarm["threshold"], alarm["sms_queued"], alarm["sms_sent"]) == ("12.5", "10", 2, 1)
    assert dt.datetime.fromisoformat(alarm["window_start"]) == window
    # In the exchange's zone (São Paulo, UTC-3 in March 2026): the offset the dashboard shows it with.
    assert alarm["timezone"] == sampled_api.settings.exchange_timezone == "America/Sao_Paulo"
    assert (alarm["window_start"], alarm["window_end"]) == ("2026-03-02T12:00:00-03:00", "2026-03-02T13:00:00-03:00")
    assert chart_reader.get("/dashboard/restaurant-timeline", params={"restaurant_id": "bad id!"}).status_code == 422
    # A day is YYYY-MM-DD, as the schema says (pydantic alone would read 0.0 as 1970-01-01; schemathesis found it).
    assert chart_reader.get("/dashboard/restaurant-timeline", params={"restaurant_id": "r", "day": "0.0"}).status_code == 422


def test_pipelines_endpoint_lists_what_reported(sampled_api, chart_reader):
    body = chart_reader.get("/dashboard/pipelines").json()
    assert body["stall_seconds"] == sampled_api.config.pipeline_stall_seconds
    assert body["pipelines"] == []  # no pipeline runs against this module's database


def test_a_slow_sample_spaces_the_next_one_out():
    """The live history takes at most SAMPLER_SHARE of the API's time, however many restaurants a sample
    evaluates: a 0.1 s sample with a 0.2 s period comes every 2 s, not every 0.3 s."""
    import asyncio
    import itertools

    from orderflow.api.charts import SAMPLER_SHARE, LiveHistory

    samples: list[tuple[float, float]] = []  # (start, end) of each sample

    class Slow(LiveHistory):
        def take(self, app_state, res) -> None:
            started = time.monotonic()
            time.sleep(0.1)
            samples.append((started, time.monotonic()))

    async def run_for(seconds: float) -> None:
        sampler = asyncio.create_task(Slow(0.2, 1).run(None, None))
        await asyncio.sleep(seconds)
        sampler.cancel()

    asyncio.run(run_for(4.5))
    assert 2 <= len(samples) <= 3, samples  # every 0.3 s would be 15
    for (start, end), (next_start, _) in itertools.pairwise(samples):
        # The next sample starts took / SAMPLER_SHARE after this one did (took: as the sampler measured it).
        assert next_start - start >= (end - start) / SAMPLER_SHARE - 0.05, samples
