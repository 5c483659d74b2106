"""The presence pipeline streaming on Prism: a restaurant that stops pinging turns offline in
``GET /restaurants/status`` after the gap, and when its day closes its offline interval is in the ranking."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
import uuid
import zoneinfo

import psycopg
import pytest

from orderflow.config import ApiConfig
from tests.support.served_api import ServedApi
from tests.support.served_api import restaurant_status as _status
from tests.support.waiting import START_TIMEOUT, wait_for

GAP = 5.0                    # --keepalive_timeout_seconds: the pipeline's session gap and the API's timeout
ZONE = "America/Sao_Paulo"
UTC = dt.timezone.utc
SUFFIX = uuid.uuid4().hex[:6]


# The pipeline takes its opening hours when it starts, and the closing time must come after it streams, the
# pings and the gap. It is picked before the start, so it follows the start's own bound: a pipeline not
# streaming within START_TIMEOUT fails the fixture, and one that is has at least this long before closing.
AFTER_START = 30.0


def _opening_hours_closing_after_the_start(now: dt.datetime) -> tuple[str, dt.datetime]:
    """Opening hours that close at the first whole minute at least START_TIMEOUT + AFTER_START s from ``now``,
    and opened two hours before; and that closing instant."""
    local = now.astimezone(zoneinfo.ZoneInfo(ZONE))
    closes = local.replace(second=0, microsecond=0) + dt.timedelta(
        minutes=math.ceil((local.second + START_TIMEOUT + AFTER_START) / 60))
    return f"{closes - dt.timedelta(hours=2):%H:%M}-{closes:%H:%M}", closes


@pytest.fixture(scope="module")
def presence(run_pipeline, live_settings):
    hours, closes = _opening_hours_closing_after_the_start(dt.datetime.now(UTC))
    # The API evaluates statuses with the same rules as the pipeline: one configuration, read by both.
    missing = {"opening_hours", "presence_timezone", "keepalive_timeout_seconds"} - {
        f.name for f in dataclasses.fields(live_settings)}
    if missing:
        pytest.fail(f"Settings lacks the shared presence rules {sorted(missing)} (issue 18): the API cannot "
                    "evaluate statuses with the pipeline's gap and opening hours")
    settings = dataclasses.replace(live_settings, opening_hours=hours, presence_timezone=ZONE,
                                   keepalive_timeout_seconds=GAP)
    api = ServedApi(settings, ApiConfig(key_cache_seconds=0.0)).start()
    with api.client(api.key("read", "ingest")) as client:
        started = time.monotonic()
        pipeline = run_pipeline("presence", f"--keepalive_timeout_seconds={GAP}", f"--opening_hours={hours}",
                                f"--presence_timezone={ZONE}", "--status_timer_granularity_seconds=1",
                                settings=settings)
        warmup = f"warmup-{SUFFIX}"
        assert client.post(f"/restaurants/{warmup}/keepalive", json={}).status_code == 202
        wait_for(lambda: _status(client, warmup)["last_keepalive"], START_TIMEOUT, "the first keep-alive in Redis",
                 pipeline)
        # Holds by construction (the wait above is bounded by START_TIMEOUT): a failure here is a broken test.
        assert dt.datetime.now(UTC) <= closes - dt.timedelta(seconds=GAP + 10), (dt.datetime.now(UTC), closes)
        print(f"\npresence pipeline: start to first keep-alive in the hot state {time.monotonic() - started:.1f} s")
        yield client, pipeline, closes, settings
    api.stop()


def test_silent_restaurant_turns_offline_after_the_gap_and_its_offline_time_is_ranked(presence):
    client, pipeline, closes, settings = presence
    restaurant = f"rest-{SUFFIX}"
    for _ in range(3):
        now = dt.datetime.now(UTC)
        sent = now.replace(microsecond=now.microsecond // 1000 * 1000)  # keep-alives carry milliseconds
        answer = client.post(f"/restaurants/{restaurant}/keepalive", json={"sent_at": sent.isoformat()})
        assert answer.status_code == 202, answer.text
        time.sleep(1)
    last_ping = sent

    # Online until the gap has passed since its last ping, then offline for lack of keep-alives.
    seen = []

    def offline():
        status = _status(client, restaurant)
        seen.append((dt.datetime.now(UTC), status["status"]))
        return status if status["status"] == "offline" else None

    status, _ = wait_for(offline, GAP + 60, "offline after the gap", pipeline)
    went_offline = seen[-1][0]
    assert status["reasons"] == ["no_keepalive"]
    assert status["last_keepalive"] is not None and dt.datetime.fromisoformat(status["last_keepalive"]) == last_ping
    # Not offline before the gap: each status was evaluated before the test noted its time, so one noted
    # earlier than the gap's end (less the clocks' rounding) was evaluated earlier too. How late after the gap
    # it turned offline depends on the machine's speed: only a hang breaks the wait's bound above.
    assert all(state == "online" for when, state in seen if when < last_ping + dt.timedelta(seconds=GAP - 0.5))
    print(f"\nlast keep-alive -> offline in GET /restaurants/status: "
          f"{(went_offline - last_ping).total_seconds():.2f} s (gap {GAP} s)")

    # When the day closes (closing time + gap, as the watermark passes it), the restaurant's timeline is final:
    # online from its first ping to the last ping + gap, then offline (unexplained) until closing time.
    def ranked():
        answer = client.get("/reports/offline-ranking", params={"limit": 1000})
        assert answer.status_code == 200, answer.text
        # The ranking lists restaurants with zero unexplained time too: wait for the day's final figure.
        entry = next((e for e in answer.json()["ranking"] if e["restaurant_id"] == restaurant), None)
        return entry if entry and entry["unexplained_offline_seconds"] > 0 else None

    wait_left = (closes - dt.datetime.now(UTC)).total_seconds() + GAP + 20
    entry, _ = wait_for(ranked, wait_left, "the offline interval in the ranking", pipeline, interval=0.5)
    print(f"ranking entry {(dt.datetime.now(UTC) - closes).total_seconds():.1f} s after closing time")
    offline_from = last_ping + dt.timedelta(seconds=GAP)
    assert entry["unexplained_offline_seconds"] == round((closes - offline_from).total_seconds())
    with psycopg.connect(settings.postgres_dsn) as conn:
        intervals = conn.execute(
            "SELECT start_at, end_at, status, reason FROM restaurant_status_intervals WHERE restaurant_id = %s"
            " ORDER BY start_at", (restaurant,)).fetchall()
    assert intervals[-1] == (offline_from, closes, "offline_unexplained", "no_keepalive")
    assert [status for _, _, status, _ in intervals[:-1]] == ["online"] * (len(intervals) - 1)
    assert intervals[-2][1] == offline_from  # the online time ends where the offline time starts


def test_a_restaurant_whose_clock_is_an_hour_behind_gets_its_keepalives_at_the_servers_time(presence):
    """Its keep-alives are recorded at the server's time, so the live pipeline's hot state has them as recent:
    the restaurant is as online as any other (this runs after closing time, so the status itself says
    outside_hours; the rule that turns a recent keep-alive into online is the same for every restaurant)."""
    client, pipeline, _, _ = presence
    restaurant = f"skewed-{SUFFIX}"
    sent = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    answer = client.post(f"/restaurants/{restaurant}/keepalive", json={"sent_at": sent.isoformat()})
    assert answer.status_code == 202, answer.text
    assert answer.json()["clock_skew_seconds"] < -3500
    stamped = dt.datetime.fromisoformat(answer.json()["sent_at"])
    assert stamped > sent + dt.timedelta(minutes=59)

    def recorded():
        status = _status(client, restaurant)
        return status if status["last_keepalive"] else None

    status, _ = wait_for(recorded, 30, "the keep-alive of the restaurant with the wrong clock in Redis", pipeline)
    assert dt.datetime.fromisoformat(status["last_keepalive"]) == stamped
