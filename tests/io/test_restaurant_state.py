"""RestaurantStateStore against the session's real Redis."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest
import redis

from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.model.presence import AvailabilityChange, OpeningHours

SP = OpeningHours()
TZ = SP.tz


def at(hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, 10, hh, mm, ss, tzinfo=TZ)


def ms(d: dt.datetime) -> int:
    return int(d.timestamp() * 1000)


class CountingConnection(redis.Connection):
    """Counts writes to the socket: a pipeline is one write, so this counts round trips."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture
def store(stack_settings):
    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    s = RestaurantStateStore(stack_settings.redis_url, key_prefix=prefix)
    yield s
    s.close()


def change(rid, kind, occurred, *, status=None, schedule_id=None, reason=None, starts=None, ends=None):
    return AvailabilityChange(uuid.uuid4().hex, rid, kind, status, schedule_id, reason,
                              None if starts is None else ms(starts), None if ends is None else ms(ends), ms(occurred))


def test_keepalive_moves_only_forward_and_drives_online(store):
    store.record_keepalives({"r1": ms(at(12, 0, 30)), "r2": ms(at(12))})
    store.record_keepalives({"r1": ms(at(12, 0, 0))})  # older: ignored
    got = store.statuses(["r1", "r2", "never-seen"], now=at(12, 2, 0))
    assert got["r1"]["status"] == "online" and got["r1"]["reasons"] == []
    assert got["r1"]["last_keepalive"] == at(12, 0, 30).astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    assert got["r2"] == got["r2"] | {"status": "offline", "reasons": ["no_keepalive"]}  # exactly 2 min: timed out
    assert got["never-seen"]["reasons"] == ["no_keepalive"] and got["never-seen"]["last_keepalive"] is None


def test_outside_opening_hours_is_offline_even_when_pinging(store):
    store.record_keepalives({"r1": ms(at(23, 0, 10))})
    got = store.statuses(["r1"], now=at(23, 0, 20))["r1"]
    assert got["status"] == "offline" and got["reasons"] == ["outside_opening_hours"]


def test_status_latest_occurred_at_wins_and_schedules(store):
    store.record_keepalives({"r1": ms(at(15))})
    store.apply_changes([
        change("r1", "SET_STATUS", at(14, 30), status="AVAILABLE"),
        change("r1", "SET_STATUS", at(14, 0), status="UNAVAILABLE"),  # older, arrives later: ignored
        change("r1", "SCHEDULE_CREATED", at(13), schedule_id="s1", reason="HOLIDAYS", starts=at(15), ends=at(16)),
        change("r1", "SCHEDULE_CANCELLED", at(14), schedule_id="s2"),  # cancellation before its creation
        change("r1", "SCHEDULE_CREATED", at(13), schedule_id="s2", reason="OVERLOADED_OFFLINE_ORDERS",
               starts=at(15), ends=at(17)),
    ])
    got = store.statuses(["r1"], now=at(15, 1))["r1"]
    assert got["status"] == "offline"
    assert got["reasons"] == ["scheduled_unavailability:HOLIDAYS"]
    assert got["availability"]["status"] == "UNAVAILABLE" and got["availability"]["set_status"] == "AVAILABLE"
    assert [s["schedule_id"] for s in got["availability"]["scheduled"]] == ["s1"]
    store.apply_changes([change("r1", "SET_STATUS", at(16, 30), status="UNAVAILABLE", reason="CONNECTION_ISSUES")])
    store.record_keepalives({"r1": ms(at(16, 30))})
    got = store.statuses(["r1"], now=at(16, 31))["r1"]
    assert got["reasons"] == ["unavailable"] and got["availability"]["reason"] == "CONNECTION_ISSUES"


def test_a_thousand_statuses_in_one_round_trip(stack_settings):
    pool = redis.ConnectionPool.from_url(stack_settings.redis_url, connection_class=CountingConnection)
    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    store = RestaurantStateStore(stack_settings.redis_url, key_prefix=prefix, client=redis.Redis(connection_pool=pool))
    ids = [f"r{i}" for i in range(1000)]
    store.record_keepalives({rid: ms(at(12)) for rid in ids[::2]})
    store.client.ping()  # the connection (and its handshake) exists before counting
    before = CountingConnection.sends
    got = store.statuses(ids, now=at(12, 1))
    assert CountingConnection.sends - before == 1
    assert len(got) == 1000
    assert sum(v["status"] == "online" for v in got.values()) == 500


def test_writes_redis_refuses_become_dead_letters_and_the_others_are_written(stack_settings):
    """A key that holds a string (WRONGTYPE) and a schedule field with corrupt JSON (script error): refused
    alone, with Redis' message; every other restaurant's state is written."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from orderflow.io.presence_redis import WriteAvailabilityToRedis, WriteKeepalivesToRedis

    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    client = redis.Redis.from_url(stack_settings.redis_url)
    client.set(f"{prefix}not-a-hash", "x")
    client.hset(f"{prefix}corrupt", "schedule:s1", "{not json")
    pings = [{"restaurant_id": f"k{i}", "sent_at": ms(at(12)) + i} for i in range(40)]
    pings.insert(23, {"restaurant_id": "not-a-hash", "sent_at": ms(at(12))})
    changes = [change(f"k{i}", "SET_STATUS", at(12), status="UNAVAILABLE") for i in range(5)]
    changes.insert(2, change("not-a-hash", "SET_STATUS", at(12), status="UNAVAILABLE"))
    changes.append(change("corrupt", "SCHEDULE_CANCELLED", at(12), schedule_id="s1"))
    with TestPipeline() as p:
        refused_pings = p | "Pings" >> beam.Create([pings]) | WriteKeepalivesToRedis(stack_settings.redis_url, prefix)
        refused_changes = (p | "Changes" >> beam.Create([changes])
                           | WriteAvailabilityToRedis(stack_settings.redis_url, prefix))
        assert_that(refused_pings | beam.Map(lambda d: (d.reason, d.stage, d.source.split("@")[0], d.detail[:9])),
                    equal_to([("redis_rejected", "restaurant_state/keepalives", "keepalive:not-a-hash", "WRONGTYPE")]),
                    label="pings")
        assert_that(refused_changes | beam.Map(lambda d: (d.stage, d.detail[:9] == "WRONGTYPE")),
                    equal_to([("restaurant_state/availability", True), ("restaurant_state/availability", False)]),
                    label="changes")
    store = RestaurantStateStore(stack_settings.redis_url, key_prefix=prefix)
    try:
        got = store.statuses([f"k{i}" for i in range(40)], now=at(12, 1))
    finally:
        store.close()
    assert all(got[f"k{i}"]["last_keepalive"] is not None for i in range(40))
    assert [got[f"k{i}"]["availability"]["set_status"] for i in range(5)] == ["UNAVAILABLE"] * 5


def test_recent_sessions_merge_as_session_windows_do_whatever_order_pings_arrive_in(store):
    gap = store.keepalive_timeout_ms
    base = ms(at(12))
    # Three sessions, written in four calls out of order: [0, 90 s + gap), [300 s, 300 s + gap) touching
    # nothing, and [600 s, 660 s + gap), where a ping exactly `gap` after 300 s starts a session of its own.
    calls = [[base + 60_000, base + 600_000], [base], [base + 300_000, base + 90_000, base + 300_000 + gap],
             [base + 660_000, base + 30_000]]
    for pings in calls:
        store.record_keepalives({"r1": pings})
    assert dict(store.recent_sessions()) == {"r1": [
        (base, base + 90_000 + gap), (base + 300_000, base + 300_000 + gap),
        (base + 300_000 + gap, base + 300_000 + 2 * gap), (base + 600_000, base + 660_000 + gap)]}
    assert store.statuses(["r1"], now=at(12, 11))["r1"]["last_keepalive"].endswith("15:11:00Z")
    # Only the latest SESSIONS_KEPT are kept: 20 sessions an hour apart leave the last 16.
    store.record_keepalives({"r2": [base + h * 3_600_000 for h in range(20)]})
    kept = dict(store.recent_sessions())["r2"]
    assert kept == [(base + h * 3_600_000, base + h * 3_600_000 + gap) for h in range(4, 20)]
