"""The keep-alive generator: deterministic plans, exact Avro bytes, expectations computed from the plan."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from orderflow.clients import avro_codec
from orderflow.model.avro import AvroCodec
from orderflow_dev.generate.keepalive import KeepaliveEncoder, Plan, RestaurantPlan, default_end, make_plan

SP = ZoneInfo("America/Sao_Paulo")


def test_same_seed_same_plan_other_seed_other_plan():
    start = dt.datetime(2026, 3, 10, 12, tzinfo=SP)
    a, b, c = (make_plan(200, start, 60, seed=s) for s in (1, 1, 2))
    assert list(a.pings()) == list(b.pings()) and a.changes == b.changes and a.expected() == b.expected()
    assert a.changes != c.changes


def test_pings_are_in_time_order_and_every_restaurant_starts_at_the_start():
    plan = make_plan(300, dt.datetime(2026, 3, 10, 12, tzinfo=SP), 30, seed=3)
    pings = list(plan.pings())
    assert [t for _, t in pings] == sorted(t for _, t in pings)
    assert {rid for rid, t in pings if t == plan.start_ms} == {r.restaurant_id for r in plan.restaurants}
    assert all(plan.start_ms <= t < plan.end_ms for _, t in pings)


CASES = [("rest-00001", 1773190200123), ("r", 0), ("x" * 200, 2**40 + 7), ("ç-ü", 1)]


def test_encoder_writes_exactly_what_the_codec_writes(stack_settings):
    codec = avro_codec(stack_settings, "keepalive")
    encoder = KeepaliveEncoder(codec)
    for rid, ms in CASES:
        assert encoder.encode(rid, ms) == codec.encode({"restaurant_id": rid, "sent_at": ms})
        assert encoder.encode(rid, ms)[:1] == b"\x00"
        assert codec.decode(encoder.encode(rid, ms))["restaurant_id"] == rid


def test_encoder_without_a_registry_writes_the_former_single_object_encoding():
    codec, encoder = AvroCodec("restaurant_keepalive"), KeepaliveEncoder()
    for rid, ms in CASES:
        assert encoder.encode(rid, ms) == codec.encode_single_object({"restaurant_id": rid, "sent_at": ms})
        assert codec.decode(encoder.encode(rid, ms))["restaurant_id"] == rid


def _plan(restaurants, start, minutes):
    start_ms = int(start.timestamp() * 1000)
    return Plan(start_ms, start_ms + minutes * 60_000, 30_000, 120_000, "America/Sao_Paulo", dt.time(10), dt.time(23),
                restaurants, [])


def test_expected_counts_only_opening_hours_and_splits_days():
    start = dt.datetime(2026, 3, 10, 22, 0, tzinfo=SP)
    ms = lambda d: int(d.timestamp() * 1000)  # noqa: E731
    outage = RestaurantPlan("a", 1000, unexplained=[(ms(start.replace(minute=50)), ms(start.replace(hour=23, minute=10)))])
    quiet = RestaurantPlan("b", 2000)
    plan = _plan([outage, quiet], start, 13 * 60)  # 22:00 -> 11:00 next day
    # the outage 22:50-23:10 counts 10 minutes on the 10th; nothing on the 11th
    assert plan.expected() == {("a", "2026-03-10"): 600, ("a", "2026-03-11"): 0,
                               ("b", "2026-03-10"): 0, ("b", "2026-03-11"): 0}


def test_outages_skip_pings_and_gone_restaurants_stop():
    plan = make_plan(400, dt.datetime(2026, 3, 10, 12, tzinfo=SP), 90, seed=5)
    by = {}
    for rid, t in plan.pings():
        by.setdefault(rid, []).append(t)
    for r in plan.restaurants:
        times = by[r.restaurant_id]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        longest = max(gaps)
        if r.skipped:
            assert longest > plan.gap_ms  # a real outage
        elif r.gone_after is None:
            assert longest <= plan.interval_ms  # never silent
        if r.gone_after is not None:
            assert times[-1] == plan.start_ms + r.gone_after * plan.interval_ms + r.phase_ms


def test_default_end_has_open_time():
    assert default_end(dt.datetime(2026, 3, 10, 16, 0, 31, tzinfo=SP)) == dt.datetime(2026, 3, 10, 16, 0, tzinfo=SP)
    assert default_end(dt.datetime(2026, 3, 10, 3, 0, tzinfo=SP)) == dt.datetime(2026, 3, 9, 22, 30, tzinfo=SP)
    assert default_end(dt.datetime(2026, 3, 10, 23, 5, tzinfo=SP)) == dt.datetime(2026, 3, 10, 22, 30, tzinfo=SP)
