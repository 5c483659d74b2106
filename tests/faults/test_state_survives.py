"""State that survives: on the live system (both pipelines streaming on Prism, the feed running), a pipeline is
killed, stopped or redeployed in the middle of alarm windows and presence sessions; each case crosses a
threshold or closes a session *after* the fault, and the stores are checked against what the test produced
(window sums from the stored orders, exact by the feed's own record; presence intervals from the recorded
keep-alive times), not against the pipelines' own counts.

The cases run in order on one system. Its restaurants' opening hours close a few minutes after it starts: the
last case waits for the day to close and checks the day's intervals and ranking of every restaurant the cases
pinged, so a restaurant that fell silent just before a crash must still be charged its offline time.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from decimal import Decimal

import psycopg
import pytest

from orderflow.config import settings_environment
from orderflow.io.presence_queries import offline_ranking
from orderflow_dev.local.processes import RUNNING
from tests.support.sns_testing import relay_tick_passed, sent_sms

ZONE = "America/Sao_Paulo"
UTC = dt.timezone.utc
GAP_MS = 5_000                     # --keepalive_timeout_seconds=5
CLOSES_AFTER = dt.timedelta(minutes=4)  # after the system is set up: time for the cases (about 3 min) before the day closes
DAY_THRESHOLD = Decimal(10) ** 10       # st-day and st-fixed (per client): far beyond what a feed client trades
ALL_THRESHOLD = Decimal(10) ** 12       # st-all (every client): far beyond the feed and the per-client orders
ADDED_THRESHOLD = DAY_THRESHOLD / 2     # st-added, the rule a redeploy adds
RULES = [
    {"id": "st-day", "scope": "client", "window": "day", "threshold": str(DAY_THRESHOLD)},
    {"id": "st-all", "scope": "all", "window": {"size_seconds": 600, "period_seconds": 60}, "threshold": str(ALL_THRESHOLD)},
    {"id": "st-fixed", "scope": "client", "window": {"size_seconds": 300}, "threshold": str(DAY_THRESHOLD)},
]
ADDED_RULE = {"id": "st-added", "scope": "client", "window": "day", "threshold": str(ADDED_THRESHOLD)}
WINDOWS = {"st-day": None, "st-all": (600, 60), "st-fixed": (300, 300), "st-added": None}
THRESHOLDS = {"st-day": DAY_THRESHOLD, "st-all": ALL_THRESHOLD, "st-fixed": DAY_THRESHOLD, "st-added": ADDED_THRESHOLD}
CLOSES: dict[str, dt.datetime] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def pipeline_args():
    local = dt.datetime.now(zoneinfo.ZoneInfo(ZONE))
    closes = local.replace(second=0, microsecond=0) + CLOSES_AFTER + dt.timedelta(minutes=1)
    CLOSES["at"] = closes
    hours = f"{closes - dt.timedelta(hours=2):%H:%M}-{closes:%H:%M}"
    return {"orders": ("--outbox_relay_seconds=2", f"--alarm_rules={json.dumps(RULES)}", "--orders_batch_size=200"),
            "presence": ("--keepalive_timeout_seconds=5", "--status_timer_granularity_seconds=1",
                         f"--opening_hours={hours}", f"--presence_timezone={ZONE}")}


# -- alarms: what must have fired, from the stored orders -------------------------------------------------------
def _windows_of(rule_id: str, event: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    if WINDOWS[rule_id] is None:
        local = event.astimezone(zoneinfo.ZoneInfo(ZONE))
        start = dt.datetime(local.year, local.month, local.day, tzinfo=zoneinfo.ZoneInfo(ZONE))
        return [(start.astimezone(UTC), (start + dt.timedelta(days=1)).astimezone(UTC))]
    size, period = WINDOWS[rule_id]
    epoch = int(event.timestamp())
    last = epoch - epoch % period
    return [(dt.datetime.fromtimestamp(s, UTC), dt.datetime.fromtimestamp(s + size, UTC))
            for s in range(last, epoch - size, -period)]


def _should_have_fired(conn, rule_ids) -> set[tuple[str, str, dt.datetime]]:
    """(rule, scope, window start) of every window of ``rule_ids`` whose stored orders sum to its threshold or
    more, summed here (the module's database holds this module's orders only)."""
    sums: dict[tuple[str, str, dt.datetime], Decimal] = {}
    for client, event, total in conn.execute("SELECT client_token, event_time, total FROM orders"):
        for rule_id in rule_ids:
            scope = "*" if rule_id == "st-all" else client
            for start, _ in _windows_of(rule_id, event):
                sums[(rule_id, scope, start)] = sums.get((rule_id, scope, start), Decimal(0)) + total
    return {key for key, total in sums.items() if total >= THRESHOLDS[key[0]]}


def _alarms(system) -> dict[tuple[str, str, dt.datetime], Decimal]:
    with psycopg.connect(system.settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT rule_id, scope, window_start, total FROM alarms WHERE rule_id LIKE 'st-%'")
        return {(r, s, w): t for r, s, w, t in rows}


def _quantity(system, asset: str, value: Decimal) -> int:
    return math.ceil(value / system.feed.prices[asset][1])


def _orders(system, asset: str, event_ms: int, *values: tuple[str, Decimal]) -> list[str]:
    """One order per ``(client, value)``, at ``event_ms``, of about that value; returns their ids."""
    return [system.feed.produce_order(client, asset, _quantity(system, asset, value), event_ms)
            for client, value in values]


def _first_halves(system, after: str, asset: str, *values: tuple[str, Decimal]) -> int:
    """From an exact state after ``after``, with the feed running: the orders of ``values`` at one instant,
    stored, and every SMS of before sent; returns that instant (the second halves go there too)."""
    system.settle(after)
    system.resume()
    event_ms = _now_ms()
    _wait_stored(system, _orders(system, asset, event_ms, *values))
    _wait_outbox_sent(system)
    return event_ms


def _wait_stored(system, order_ids: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(system.settings.postgres_dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM orders WHERE order_id = ANY(%s)", (order_ids,)).fetchone()[0]
        if stored == len(order_ids):
            return
        system.assert_running()
        assert time.monotonic() < deadline, f"{len(order_ids) - stored} of the orders never stored"
        time.sleep(0.5)


def _wait_outbox_sent(system, timeout: float = 60.0) -> None:
    """Waits until no SMS is pending. A run killed between SNS accepting an SMS and the commit of its outbox row
    sends it again on restart (the relay is at-least-once, docs/reliability.md): the cases kill a pipeline once
    the alarms of before are sent, as they are about the windows that cross after."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(system.settings.postgres_dsn) as conn:
            pending = conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NULL").fetchone()[0]
        if not pending:
            return
        assert time.monotonic() < deadline, f"{pending} SMS still pending"
        time.sleep(0.5)


def _check_alarms(system, rule_ids, crossed_after: set) -> dict:
    """Exactly the windows that should have fired did, once each, with one SMS each; ``crossed_after`` among them."""
    with psycopg.connect(system.settings.postgres_dsn) as conn:
        expected = _should_have_fired(conn, rule_ids)
    assert crossed_after and crossed_after <= expected, "the case crosses no threshold after its fault"
    deadline = time.monotonic() + 60
    while not expected <= set(_alarms(system)) and time.monotonic() < deadline:
        time.sleep(1)
    alarms = _alarms(system)
    assert set(alarms) == expected
    assert all(total >= THRESHOLDS[rule_id] for (rule_id, _, _), total in alarms.items())
    # Each alarm's SMS is sent, and a repeated one would be sent, by the relay tick that sends a probe.
    relay_tick_passed(system.settings, "the alarms", 120, system.pipelines["orders"])
    texts = [text for _, text in sent_sms(system.settings.sns_endpoint_url, {system.phone}) if " st-" in text]
    assert len(texts) == len(set(texts)) == len(alarms), "one SMS per alarm, to the one phone"
    return alarms


def test_orders_killed_mid_window_fires_every_rule_kind_once_after_the_restart(fault_system):
    system = fault_system
    asset = "PETR4"
    # Before the kill, 60 % of each threshold in windows that no other order brings near it: 'st-a' (its day),
    # 'st-c' (its 5-minute window), 'st-b' (every client's 10-minute windows; its own day and 5 minutes
    # cross at once: those fire before the kill and must not fire again).
    event_ms = _first_halves(system, "the start", asset, ("st-a", DAY_THRESHOLD * 6 / 10),
                             ("st-c", DAY_THRESHOLD * 6 / 10), ("st-b", ALL_THRESHOLD * 6 / 10))
    before = _alarms(system)
    orders = system.pipelines["orders"]
    orders.kill()
    assert orders.status() != RUNNING
    # While it is down, the other 50 %: the totals cross only when the restarted pipeline adds these.
    second = _orders(system, asset, event_ms, ("st-a", DAY_THRESHOLD / 2), ("st-c", DAY_THRESHOLD / 2),
                     ("st-b", ALL_THRESHOLD / 2))
    time.sleep(3)
    system.restart("orders")
    took = system.settle("the orders pipeline was killed mid-window")
    _wait_stored(system, second)
    event = dt.datetime.fromtimestamp(event_ms / 1000, UTC)
    crossed_after = ({("st-day", "st-a", _windows_of("st-day", event)[0][0]),
                      ("st-fixed", "st-c", _windows_of("st-fixed", event)[0][0])}
                     | {("st-all", "*", start) for start, _ in _windows_of("st-all", event)})
    assert not crossed_after & set(before), "a window crossed before the kill: the case proves nothing"
    _check_alarms(system, ("st-day", "st-all", "st-fixed"), crossed_after)
    print(f"\norders SIGKILLed mid-window: stores exact {took:.1f} s after the feed paused; "
          f"{len(crossed_after)} windows crossed after the restart, each fired once (load {os.getloadavg()[0]:.1f})")


def test_sigterm_drains_and_a_redeploy_with_an_added_rule_fires_it_once(fault_system):
    system = fault_system
    asset = "VALE3"
    # 'st-d' at 60 % of the rule the redeploy adds, before; 50 % after it: it crosses under the new rule set.
    event_ms = _first_halves(system, "the kill before the redeploy", asset, ("st-d", ADDED_THRESHOLD * 6 / 10))
    orders = system.pipelines["orders"]
    rules = json.dumps([*RULES, ADDED_RULE])
    started = time.monotonic()
    redeploy = subprocess.run(
        [sys.executable, "-m", "orderflow_dev.local", "redeploy", "orders", "--root", str(orders.root), "--",
         f"--alarm_rules={rules}"], env={**os.environ, **settings_environment(system.settings)},
        capture_output=True, text=True, timeout=180)
    assert redeploy.returncode == 0, redeploy.stderr + redeploy.stdout
    orders.status()  # reaps the stopped run (this process started it)
    assert orders.exit_status == 0, f"the stopped run exited {orders.exit_status}:\n{orders.log_tail(40)}"
    log = orders.log_path.read_text()
    assert "orders pipeline drained in" in log and "stopped (exit 0)" in log, orders.log_tail(40)
    system.args["orders"] = (*system.args["orders"], f"--alarm_rules={rules}")
    second = _orders(system, asset, event_ms, ("st-d", ADDED_THRESHOLD / 2))
    took = system.settle("the redeploy")
    _wait_stored(system, second)
    event = dt.datetime.fromtimestamp(event_ms / 1000, UTC)
    crossed_after = {("st-added", "st-d", _windows_of("st-day", event)[0][0])}
    # The clients already over the new rule's threshold (st-a, st-b of the case before) fire it at the start.
    alarms = _check_alarms(system, ("st-day", "st-all", "st-fixed", "st-added"), crossed_after)
    assert {("st-a", "st-added"), ("st-b", "st-added")} <= {(s, r) for r, s, _ in alarms}
    print(f"\nSIGTERM drained and redeployed with a new rule in {time.monotonic() - started:.1f} s; stores exact "
          f"{took:.1f} s after the feed paused")


# -- presence: keep-alives the test sends itself, with their exact times ------------------------------------------
class _Pinger:
    """Pings restaurants every ``every`` s from a thread, remembering each keep-alive's time."""

    def __init__(self, feed, every: float = 1.0):
        self.feed, self.every = feed, every
        self.pings: dict[str, list[int]] = {}
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start(self, *restaurants: str) -> None:
        with self._lock:
            for restaurant in restaurants:
                self._active.add(restaurant)
                self.pings.setdefault(restaurant, [])

    def silence(self, restaurant: str) -> int:
        """Stops pinging ``restaurant``; returns its last keep-alive's time."""
        with self._lock:
            self._active.discard(restaurant)
            return self.pings[restaurant][-1]

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                now = _now_ms()
                for restaurant in sorted(self._active):
                    self.feed.produce_keepalive(restaurant, now)
                    self.pings[restaurant].append(now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


PRESENCE: dict[str, object] = {}


def _expected_intervals(pings: list[int], changes: list[tuple[int, str]], closes_ms: int) -> list[tuple]:
    """A restaurant's (start, end, status, reason) from its first keep-alive to closing time, worked out here:
    connected while a keep-alive is under 5 s old, UNAVAILABLE between its own status changes."""
    connected: list[list[int]] = []
    for p in sorted(pings):
        if connected and p < connected[-1][1]:
            connected[-1][1] = max(connected[-1][1], p + GAP_MS)
        else:
            connected.append([p, p + GAP_MS])
    cuts = sorted({pings[0], closes_ms, *(t for iv in connected for t in iv), *(t for t, _ in changes)})
    cuts = [t for t in cuts if pings[0] <= t <= closes_ms]
    out: list[tuple] = []
    for a, b in itertools.pairwise(cuts):
        available = ([s for t, s in sorted(changes) if t <= a] or ["AVAILABLE"])[-1] == "AVAILABLE"
        if not any(s <= a < e for s, e in connected):
            piece = (a, b, "offline_unexplained", "no_keepalive")
        elif not available:
            piece = (a, b, "offline_unexplained", "unavailable")
        else:
            piece = (a, b, "online", None)
        if out and out[-1][1] == a and out[-1][2:] == piece[2:]:
            out[-1] = (out[-1][0], b, *piece[2:])
        else:
            out.append(piece)
    return out


def _stored_intervals(system, restaurant: str) -> list[tuple]:
    """The stored intervals, adjacent rows of one status joined (a row never spans local midnight)."""
    with psycopg.connect(system.settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT start_at, end_at, status, reason FROM restaurant_status_intervals "
                            "WHERE restaurant_id = %s ORDER BY start_at", (restaurant,)).fetchall()
    out: list[tuple] = []
    for start, end, status, reason in rows:
        piece = (int(start.timestamp() * 1000), int(end.timestamp() * 1000), status, reason)
        if out and out[-1][1] == piece[0] and out[-1][2:] == piece[2:]:
            out[-1] = (out[-1][0], piece[1], *piece[2:])
        else:
            out.append(piece)
    return out


def test_presence_killed_with_restaurants_online_silent_and_unavailable(fault_system):
    system = fault_system
    closes = CLOSES["at"]
    tag = system.feed.tag
    online, silent, unavailable = f"{tag}-on", f"{tag}-silent", f"{tag}-unav"
    pinger = PRESENCE["pinger"] = _Pinger(system.feed)
    PRESENCE["changes"] = {unavailable: []}
    pinger.start(online, silent, unavailable)
    time.sleep(4)
    went = _now_ms()
    system.feed.produce_status(unavailable, "UNAVAILABLE", went, reason="HOLIDAYS")
    PRESENCE["changes"][unavailable].append((went, "UNAVAILABLE"))
    time.sleep(4)
    PRESENCE["silent_last"] = pinger.silence(silent)  # its session is open when the pipeline dies
    time.sleep(1.5)
    presence = system.pipelines["presence"]
    presence.kill()
    assert presence.status() != RUNNING
    time.sleep(4)
    system.restart("presence")
    took = system.settle("the presence pipeline was killed")
    came_back = _now_ms()
    system.feed.produce_status(unavailable, "AVAILABLE", came_back)
    PRESENCE["changes"][unavailable].append((came_back, "AVAILABLE"))
    assert dt.datetime.now(UTC) < closes - dt.timedelta(seconds=30), (
        "the restaurants' day closes before the case is done: the system took too long to start")
    print(f"\npresence SIGKILLed with restaurants online, silent and unavailable: stores exact {took:.1f} s after "
          f"the feed paused; the day closes at {closes:%H:%M} local")


def test_both_pipelines_killed_at_once_cross_and_close_after(fault_system):
    system = fault_system
    pinger = PRESENCE["pinger"]
    both = f"{system.feed.tag}-both"
    pinger.start(both)
    asset = "ITUB4"
    event_ms = _first_halves(system, "the presence kill", asset, ("st-e", DAY_THRESHOLD * 6 / 10))
    time.sleep(2)
    for pipeline in system.pipelines.values():
        pipeline.kill(signal.SIGKILL)
    second = _orders(system, asset, event_ms, ("st-e", DAY_THRESHOLD / 2))
    time.sleep(3)
    for name in system.pipelines:
        system.restart(name)
    took = system.settle("both pipelines were killed at once")
    _wait_stored(system, second)
    PRESENCE["both_last"] = pinger.silence(both)  # its session, open across the kill, closes now
    event = dt.datetime.fromtimestamp(event_ms / 1000, UTC)
    _check_alarms(system, ("st-day", "st-all", "st-fixed", "st-added"),
                  {("st-day", "st-e", _windows_of("st-day", event)[0][0])})
    deadline = time.monotonic() + 60
    expected = [(pinger.pings[both][0], PRESENCE["both_last"] + GAP_MS, "online", None)]
    while _stored_intervals(system, both) != expected and time.monotonic() < deadline:
        time.sleep(1)
    assert _stored_intervals(system, both) == expected, "a session open across both kills is not one interval"
    print(f"\nboth pipelines SIGKILLed: stores exact {took:.1f} s after the feed paused")


def test_the_day_closes_exactly_for_every_restaurant_across_the_faults(fault_system):
    system = fault_system
    pinger = PRESENCE["pinger"]
    closes = CLOSES["at"]
    closes_ms = int(closes.timestamp() * 1000)
    while _now_ms() < closes_ms:  # keep the online ones pinging until closing time
        system.assert_running()
        time.sleep(1)
    pinger.close()
    tag = system.feed.tag
    expected = {
        restaurant: _expected_intervals([p for p in pinger.pings[restaurant] if p < closes_ms],
                                        PRESENCE["changes"].get(restaurant, []), closes_ms)
        for restaurant in (f"{tag}-on", f"{tag}-silent", f"{tag}-unav")}
    silent_last = PRESENCE["silent_last"]
    assert expected[f"{tag}-silent"][-1] == (silent_last + GAP_MS, closes_ms, "offline_unexplained", "no_keepalive")
    deadline = time.monotonic() + 120
    got = {}
    while time.monotonic() < deadline:
        got = {r: _stored_intervals(system, r) for r in expected}
        if got == expected:
            break
        time.sleep(1)
    assert got == expected
    # The restaurant online throughout has one interval for the day, across the crash.
    on_pings = pinger.pings[f"{tag}-on"]
    assert len(got[f"{tag}-on"]) == 1 or any(b - a >= GAP_MS for a, b in itertools.pairwise(on_pings))
    # The ranking charges the silent restaurant its offline time (rounded to the second, as stored).
    with psycopg.connect(system.settings.postgres_dsn) as conn:
        ranking = dict(offline_ranking(conn, closes.date(), closes.date(), limit=1000))
    assert ranking[f"{tag}-silent"] == round((closes_ms - silent_last - GAP_MS) / 1000)
    assert ranking[f"{tag}-on"] == 0
