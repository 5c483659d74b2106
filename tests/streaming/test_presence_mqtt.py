"""Restaurants over MQTT, seen where users meet them: through the bridge and the presence pipeline streaming on
Prism, in ``GET /restaurants/status``, the unavailability history and the status intervals.

A restaurant whose process is SIGKILLed reads offline / ``disconnected`` (the will: within its MQTT keep-alive x
1.5 + 5 s, printed), before the keep-alive timeout (GAP) would say ``no_keepalive``; reconnecting makes it online
again. A clean disconnect sends no will:
the restaurant stays online until the keep-alive timeout, then reads ``no_keepalive``."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import signal
import time
import uuid
import zoneinfo

import psycopg
import pytest

from orderflow.config import ApiConfig, settings_environment
from orderflow_dev.generate.mqtt_fleet import RestaurantFleet
from orderflow_dev.local.processes import DetachedProcess
from tests.support.mqtt_testing import Bridge, decoded
from tests.support.served_api import ServedApi
from tests.support.served_api import restaurant_status as _status
from tests.support.waiting import START_TIMEOUT, wait_for

GAP = 20.0             # the keep-alive timeout (pipeline and API): far longer than the will's bound below
MQTT_KEEPALIVE = 4     # s: the restaurants' MQTT keep-alive; the broker drops a silent connection after 1.5x
WILL_BOUND = MQTT_KEEPALIVE * 1.5 + 5
ZONE = "America/Sao_Paulo"
UTC = dt.timezone.utc
SUFFIX = uuid.uuid4().hex[:6]


def _open_now() -> str:
    """Opening hours from an hour ago to three hours ahead (crossing midnight if need be)."""
    local = dt.datetime.now(zoneinfo.ZoneInfo(ZONE))
    return f"{local - dt.timedelta(hours=1):%H:%M}-{local + dt.timedelta(hours=3):%H:%M}"


@pytest.fixture(scope="module")
def presence(run_pipeline, live_settings, stack, tmp_path_factory):
    hours = _open_now()
    settings = dataclasses.replace(live_settings, opening_hours=hours, presence_timezone=ZONE,
                                   keepalive_timeout_seconds=GAP, mqtt_share_group=f"test-{SUFFIX}")
    root = tmp_path_factory.mktemp("mqtt")
    api = ServedApi(settings, ApiConfig(key_cache_seconds=0.0)).start()
    bridge = Bridge.start(settings, root)
    try:
        with api.client(api.key("read", "ingest")) as client:
            pipeline = run_pipeline("presence", f"--keepalive_timeout_seconds={GAP}", f"--opening_hours={hours}",
                                    f"--presence_timezone={ZONE}", "--status_timer_granularity_seconds=1",
                                    settings=settings)
            wait_for(bridge.connected, 60, "the bridge connected to the broker", bridge.process)
            warmup = f"warmup-{SUFFIX}"
            assert client.post(f"/restaurants/{warmup}/keepalive", json={}).status_code == 202
            wait_for(lambda: _status(client, warmup)["last_keepalive"], START_TIMEOUT, "the first keep-alive in Redis",
                     pipeline)
            yield client, pipeline, settings, stack, root
    finally:
        DetachedProcess("mqtt-feed", root).stop()  # a test's restaurant process, if a failure left it running
        bridge.process.stop()
        api.stop()


def test_a_killed_restaurant_reads_disconnected_at_once_and_online_again_after_reconnecting(presence):
    client, pipeline, settings, stack, root = presence
    restaurant = f"mqtt-{SUFFIX}"
    credentials = root / "credentials"
    credentials.write_text("".join(f"{r} {p}\n" for r, p in stack.issue_mqtt_credentials([restaurant]).items()))
    feed = DetachedProcess("mqtt-feed", root)

    def start_feed():
        feed.start(["--credentials", str(credentials), "--interval", "1", "--keepalive", str(MQTT_KEEPALIVE)],
                   env=settings_environment(settings))

    start_feed()
    wait_for(lambda: _status(client, restaurant)["status"] == "online", 60, "online over MQTT", pipeline)

    feed.kill(signal.SIGKILL)  # the restaurant's process dies: no DISCONNECT, the broker publishes its will
    killed = time.monotonic()
    last_ping = dt.datetime.fromisoformat(_status(client, restaurant)["last_keepalive"])
    # Offline for the will (reason "disconnected"), not for the keep-alive timeout: the reasons say which. The
    # wait ends where the timeout would give another reason anyway; how soon it came is printed.
    status, took = wait_for(lambda: (lambda s: s if s["status"] == "offline" else None)(_status(client, restaurant)),
                            GAP, "offline after the SIGKILL", pipeline)
    print(f"\nSIGKILL -> offline/disconnected in GET /restaurants/status: {time.monotonic() - killed:.2f} s "
          f"(expected within {WILL_BOUND} s, keep-alive timeout {GAP} s)")
    assert status["reasons"] == ["disconnected"]  # not yet no_keepalive: the will, not the timeout
    assert dt.datetime.now(UTC) < last_ping + dt.timedelta(seconds=GAP)
    assert status["connection"]["state"] == "DISCONNECTED"

    start_feed()  # it comes back: online, then pings
    wait_for(lambda: _status(client, restaurant)["status"] == "online", 60, "online again after reconnecting",
             pipeline)
    wait_for(lambda: (lambda h: h and h[0]["ends_at"])(
        client.get(f"/restaurants/{restaurant}/unavailability").json()["history"]), 30,
        "the disconnection closed in the history", pipeline)
    history = client.get(f"/restaurants/{restaurant}/unavailability").json()["history"]
    changes = [c for c in decoded(settings, "availability")
               if c["restaurant_id"] == restaurant]
    disconnected = next(c["occurred_at"] for c in changes if c["kind"] == "DISCONNECTED")
    reconnected = min(c["occurred_at"] for c in changes if c["kind"] == "CONNECTED" and c["occurred_at"] > disconnected)
    assert [(h["kind"], h["reason"], dt.datetime.fromisoformat(h["starts_at"]), dt.datetime.fromisoformat(h["ends_at"]))
            for h in history] == [("connection", "disconnected", disconnected, reconnected)]

    # A clean stop (DISCONNECT, no will) ends its session after the keep-alive timeout: the pipeline finalises it,
    # with the disconnected stretch as unexplained offline time.
    feed.stop()

    def intervals():
        with psycopg.connect(settings.postgres_dsn) as conn:
            rows = conn.execute("SELECT start_at, end_at, status, reason FROM restaurant_status_intervals"
                                " WHERE restaurant_id = %s ORDER BY start_at", (restaurant,)).fetchall()
        return rows if any(r[3] == "disconnected" for r in rows) and rows[-1][1] > reconnected else None

    rows, _ = wait_for(intervals, GAP + 60, "the disconnected interval in restaurant_status_intervals", pipeline,
                       interval=0.5)
    assert [r for r in rows if r[3] == "disconnected"] == [(disconnected, reconnected, "offline_unexplained",
                                                            "disconnected")]
    # Besides it, only the instant between its first connection and its first ping is not online: bounded by
    # those two events' own times, however long the machine took between them.
    first_connected = min(c["occurred_at"] for c in changes if c["kind"] == "CONNECTED")
    first_ping = min(p["sent_at"] for p in decoded(settings, "keepalive")
                     if p["restaurant_id"] == restaurant and p["sent_at"] >= first_connected)
    others = [r for r in rows if r[2] != "online" and r[3] != "disconnected"]
    assert all(first_connected <= start and end <= first_ping for start, end, _, _ in others), (
        first_connected, first_ping, rows)
    ranking = client.get("/reports/offline-ranking", params={"limit": 1000}).json()["ranking"]
    entry = next(e for e in ranking if e["restaurant_id"] == restaurant)
    offline = (reconnected - disconnected) + sum((end - start for start, end, _, _ in others), dt.timedelta())
    assert abs(entry["unexplained_offline_seconds"] - offline.total_seconds()) <= 1


def test_a_clean_disconnect_is_online_until_the_keepalive_timeout(presence):
    client, pipeline, settings, stack, _ = presence
    restaurant = f"clean-{SUFFIX}"
    fleet = RestaurantFleet([("127.0.0.1", stack.ports.mosquitto)], stack.issue_mqtt_credentials([restaurant]),
                            keepalive=MQTT_KEEPALIVE)

    async def connect_ping_disconnect():
        assert await fleet.connect_all() == 1
        assert await fleet.ping([restaurant]) == 1
        await fleet.disconnect([restaurant])

    asyncio.run(connect_ping_disconnect())
    disconnected = dt.datetime.now(UTC)
    seen = []

    def offline():
        status = _status(client, restaurant)
        seen.append((dt.datetime.now(UTC), status))
        return status if status["status"] == "offline" and status["last_keepalive"] else None

    status, _ = wait_for(offline, GAP + 30, "offline after the keep-alive timeout", pipeline, interval=0.5)
    last_ping = dt.datetime.fromisoformat(status["last_keepalive"])
    assert status["reasons"] == ["no_keepalive"]
    assert all("disconnected" not in s["reasons"] for _, s in seen)
    assert all(s["status"] == "online" for when, s in seen
               if s["last_keepalive"] and when < last_ping + dt.timedelta(seconds=GAP - 0.5))
    assert seen[-1][0] >= last_ping + dt.timedelta(seconds=GAP) - dt.timedelta(seconds=0.5)
    print(f"\nclean disconnect -> offline/no_keepalive after {(seen[-1][0] - disconnected).total_seconds():.1f} s "
          f"(keep-alive timeout {GAP} s)")

